//! Loading the log file: every line verified, a torn tail dropped (a damaged last line, or
//! a damaged region that can only be unsynced appends), anything else that is wrong refused
//! with the file, line and index; and rewriting the kept tail after a purge.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use tracing::warn;

use super::LogFile;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::raft::log_format::{self, DecodeError, Header};
use crate::raft::LogId;

/// Reads and verifies the whole log file.
pub(super) fn load(path: &Path, last_purged: Option<LogId>) -> Result<LogFile> {
    let file = open_rw(path).context(|| format!("open {}", path.display()))?;
    fsutil::sync_parent(path).context(|| "make the log file's creation durable".into())?;
    let reader = BufReader::new(file.try_clone().context(|| format!("open {}", path.display()))?);
    let scan = scan(path, reader)?;
    let first_index = last_purged.map(|p| p.index + 1).unwrap_or(0);
    let mut log = LogFile::empty(path, file, last_purged);
    match scan.damage {
        None => {}
        Some(Damage::Corrupt(e)) => return Err(e),
        Some(Damage::Torn { line, reason }) => {
            warn!(path = %path.display(), line, cause = %reason, "dropping the torn tail of the log from this line");
            log.file
                .set_len(scan.end)
                .context(|| format!("truncate {}", path.display()))?;
            log.file
                .sync_data()
                .context(|| format!("fsync {}", path.display()))?;
        }
    }
    for (offset, header) in scan.lines {
        if header.index >= first_index {
            if log.entries.is_empty() {
                log.first_index = header.index;
            }
            log.entries.push_back((offset, header.term));
        }
    }
    log.end = scan.end;
    check_purge_point(&log, path)?;
    Ok(log)
}

/// What is wrong with a log file, if anything.
#[derive(Debug)]
pub(crate) enum Damage {
    /// From this 1-based line on, what a crash leaves of unsynced appends: dropped at start.
    Torn {
        /// The first torn line.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Damage inside synced data: the log is refused.
    Corrupt(Error),
}

/// A log file read line by line.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Each good line's byte offset and header, in order.
    pub(crate) lines: Vec<(u64, Header)>,
    /// The offset just after the last good line.
    pub(crate) end: u64,
    /// What stopped the scan, if anything.
    pub(crate) damage: Option<Damage>,
}

/// Reads every line, checking checksum, format and index sequence, and stops at the first
/// damage; changes nothing.
pub(crate) fn scan(path: &Path, mut reader: impl BufRead) -> Result<Scan> {
    let mut scan = Scan {
        lines: Vec::new(),
        end: 0,
        damage: None,
    };
    let (mut line_no, mut line) = (0usize, Vec::new());
    let mut expected: Option<u64> = None;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let at_end = reader.fill_buf().map(|b| b.is_empty()).unwrap_or(false);
        let header = match log_format::decode_header(&line) {
            Ok(h) => h,
            Err(e) if at_end || torn_from_here(&line, &mut reader)? => {
                scan.damage = Some(Damage::Torn {
                    line: line_no,
                    reason: e.to_string(),
                });
                break;
            }
            Err(e) => {
                let hint = expected
                    .map(|e| format!(" (entry at index {e})"))
                    .unwrap_or_default();
                scan.damage = Some(Damage::Corrupt(corrupt(path, line_no, format!("{e}{hint}"))));
                break;
            }
        };
        if let Err(e) = check_entry(path, line_no, &line, header, expected) {
            scan.damage = Some(Damage::Corrupt(e));
            break;
        }
        expected = Some(header.index + 1);
        scan.lines.push((scan.end, header));
        scan.end += n as u64;
    }
    Ok(scan)
}

impl LogFile {
    /// An open log file with no entries yet, continuing after `last_purged`.
    fn empty(path: &Path, file: File, last_purged: Option<LogId>) -> LogFile {
        LogFile {
            path: path.to_path_buf(),
            file: Arc::new(file),
            first_index: last_purged.map(|p| p.index + 1).unwrap_or(0),
            entries: VecDeque::new(),
            end: 0,
            last_purged,
            recent: VecDeque::new(),
        }
    }
}

/// Whether a damaged line that is not the last starts a torn tail: what a crash leaves when
/// pages of the last, unsynced appends reach the disk out of order — as etcd's WAL reasons.
///
/// Zeros (a page whose data never reached the disk: no valid line holds a NUL) prove the line
/// was never covered by a completed fsync; every byte after it was written later, so it was
/// not synced either, and nothing from here on was acknowledged. Damage without zeros (stale
/// garbage) counts as torn only if no valid line follows; a valid line after it means damage
/// inside synced data, which is refused, never silently dropped.
fn torn_from_here(line: &[u8], rest: &mut impl BufRead) -> Result<bool> {
    if line.contains(&0) {
        return Ok(true);
    }
    let mut next = Vec::new();
    loop {
        next.clear();
        let n = rest
            .read_until(b'\n', &mut next)
            .context(|| "read the log after a damaged line".into())?;
        if n == 0 {
            return Ok(true);
        }
        if log_format::decode_header(&next).is_ok() {
            return Ok(false);
        }
    }
}

/// A line whose checksum verified must also continue the index sequence and decode.
pub(super) fn check_entry(
    path: &Path,
    line_no: usize,
    line: &[u8],
    header: Header,
    expected: Option<u64>,
) -> Result<()> {
    if let Some(want) = expected {
        if header.index != want {
            return Err(corrupt(
                path,
                line_no,
                format!("index {} follows index {}", header.index, want - 1),
            ));
        }
    }
    if let Err(e @ DecodeError::Malformed(_)) = log_format::decode(line).map(|_| ()) {
        return Err(corrupt(
            path,
            line_no,
            format!("{e} (entry at index {})", header.index),
        ));
    }
    Ok(())
}

/// The first entry kept must follow the purge point exactly.
pub(super) fn check_purge_point(log: &LogFile, path: &Path) -> Result<()> {
    if let (Some(p), Some(_)) = (log.last_purged, log.entries.front()) {
        if log.first_index != p.index + 1 {
            let reason = format!(
                "first entry is index {} but entries up to {} were purged",
                log.first_index, p.index
            );
            return Err(corrupt(path, 1, reason));
        }
    }
    Ok(())
}

pub(crate) fn corrupt(path: &Path, line: usize, reason: String) -> Error {
    Error::CorruptLog {
        path: path.to_path_buf(),
        line,
        reason,
    }
}

/// Rewrites the file to hold only entries from `keep_from` on: copy them to a temp file, fsync,
/// rename over the log, fsync the directory, then switch handles.
pub(super) fn rewrite_from(log: &mut LogFile, keep_from: u64) -> std::io::Result<()> {
    let keep_from = keep_from.max(log.first_index);
    let base = log.offset_of(keep_from.min(log.next_index()));
    // Copy the kept tail file to file, a piece at a time: it may be large, and memory is not
    // to grow with it.
    let tmp = log.path.with_extension("tmp");
    let mut out = File::create(&tmp)?;
    let mut tail = std::io::Read::take(&*log.file, log.end - base);
    std::io::Seek::seek(&mut tail.get_mut(), std::io::SeekFrom::Start(base))?;
    std::io::copy(&mut tail, &mut out)?;
    out.sync_all()?;
    std::fs::rename(&tmp, &log.path)?;
    fsutil::sync_parent(&log.path)?;
    log.file = Arc::new(open_rw(&log.path)?);
    let drop_count = (keep_from - log.first_index).min(log.entries.len() as u64) as usize;
    log.entries.drain(..drop_count);
    for entry in log.entries.iter_mut() {
        entry.0 -= base;
    }
    log.first_index = keep_from;
    log.end -= base;
    Ok(())
}

pub(super) fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}
