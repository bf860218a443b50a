//! Offline checks of a stopped node's log: `raftd log verify` and `raftd log repair`.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use super::load::{corrupt, scan, Damage};
use super::LOG_FILE;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::raft::LogId;

/// What `raftd log verify` found in a log that is not corrupt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Entries on good lines.
    pub entries: usize,
    /// Index of the first and the last of them.
    pub first: Option<u64>,
    /// Index of the last.
    pub last: Option<u64>,
    /// A torn tail: its first line, why, and how many bytes it spans. A node drops it when
    /// it starts (it holds nothing that was acknowledged); `raftd log repair` drops it now.
    pub torn: Option<Torn>,
}

/// A torn tail of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torn {
    /// Its first line (1-based).
    pub line: usize,
    /// What is wrong with that line.
    pub reason: String,
    /// Byte offset where it starts.
    pub offset: u64,
    /// Bytes from there to the end of the file.
    pub bytes: u64,
}

/// Checks every line of `data_dir/log` (checksum, format, index sequence, the purge point)
/// without changing anything. A damaged line inside synced data is an
/// [`Error::CorruptLog`] naming the file, line and index.
pub fn verify(data_dir: &Path) -> Result<Report> {
    let path = data_dir.join(LOG_FILE);
    let file = File::open(&path).context(|| format!("open {}", path.display()))?;
    let size = file
        .metadata()
        .context(|| format!("stat {}", path.display()))?
        .len();
    let scan = scan(&path, BufReader::new(file))?;
    let torn = match scan.damage {
        None => None,
        Some(Damage::Corrupt(e)) => return Err(e),
        Some(Damage::Torn { line, reason }) => Some(Torn {
            line,
            reason,
            offset: scan.end,
            bytes: size - scan.end,
        }),
    };
    let last_purged: Option<LogId> = fsutil::read_json(&data_dir.join("purged"))
        .context(|| "read the purge point".into())?
        .flatten();
    let first = scan.lines.first().map(|(_, h)| h.index);
    let last = scan.lines.last().map(|(_, h)| h.index);
    if let (Some(p), Some(first)) = (last_purged, first) {
        if first > p.index + 1 {
            let reason = format!(
                "first entry is index {first} but entries up to {} were purged",
                p.index
            );
            return Err(corrupt(&path, 1, reason));
        }
    }
    Ok(Report {
        entries: scan.lines.len(),
        first,
        last,
        torn,
    })
}

/// Cuts the torn tail `torn` (as [`verify`] found it) off `data_dir/log` and syncs.
pub fn repair(data_dir: &Path, torn: &Torn) -> Result<()> {
    let path = data_dir.join(LOG_FILE);
    let file = File::options()
        .write(true)
        .open(&path)
        .context(|| format!("open {}", path.display()))?;
    let size = file
        .metadata()
        .context(|| format!("stat {}", path.display()))?
        .len();
    if size != torn.offset + torn.bytes {
        return Err(Error::Config(format!(
            "{} changed since it was checked; is the node running?",
            path.display()
        )));
    }
    file.set_len(torn.offset)
        .and_then(|()| file.sync_all())
        .context(|| format!("truncate {}", path.display()))
}
