//! Backups: the tree at one applied index as a plain tar archive, and back again.
//!
//! A backup is taken like a snapshot — the tree hard-linked under the state-machine lock, so
//! it is exactly the state at one index, and then streamed while applies carry on — but it is
//! written as a tar that any `tar tvf` reads:
//!
//! ```text
//! raftd-backup.json        {"format":"raftd-backup 1","index":…,"term":…,"node":…,"files":…,"bytes":…}
//! files/a/                 directories, then their contents, sorted by name
//! files/a/b                mtimes to the nanosecond in PAX records
//! raftd-backup.end         {"files":…,"bytes":…}: a cut-short download is told apart
//! ```
//!
//! Restoring validates every name with the client rules, so a hostile archive cannot write
//! outside the directory it is unpacked into.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::{time_from_nanos, Archiving};
use super::snapshot;
use crate::names;
use crate::raft::{LogId, PeerNode, SnapshotMeta, StoredMembership};

/// The first entry of a backup.
pub const HEADER_ENTRY: &str = "raftd-backup.json";
/// The last entry of a backup.
pub const END_ENTRY: &str = "raftd-backup.end";
const FORMAT: &str = "raftd-backup 1";

/// What a backup holds, as its first entry says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// `raftd-backup 1`.
    pub format: String,
    /// The applied log index the tree is at.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// The node that served it.
    pub node: String,
    /// Files in the backup.
    pub files: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

impl BackupInfo {
    /// The file name a backup is saved under: `raftd-backup-<term>-<index>.tar`.
    pub fn file_name(&self) -> String {
        format!("raftd-backup-{}-{}.tar", self.term, self.index)
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct End {
    files: u64,
    bytes: u64,
}

/// A linked copy of the tree at one index, waiting to be streamed; removed when dropped.
pub struct Backup {
    staging: PathBuf,
    info: BackupInfo,
    /// Keeps overwrites from reusing the linked inodes while the copy is read.
    _archiving: Archiving,
}

impl Backup {
    /// Takes over `staging` (a hard-linked copy of the tree at `log_id`).
    pub(crate) fn new(
        staging: PathBuf,
        log_id: Option<LogId>,
        node: &str,
        archiving: Archiving,
    ) -> io::Result<Self> {
        let (files, bytes) = count(&staging)?;
        let info = BackupInfo {
            format: FORMAT.into(),
            index: log_id.map_or(0, |l| l.index),
            term: log_id.map_or(0, |l| l.leader_id.term),
            node: node.into(),
            files,
            bytes,
        };
        Ok(Backup {
            staging,
            info,
            _archiving: archiving,
        })
    }

    /// What the backup holds.
    pub fn info(&self) -> &BackupInfo {
        &self.info
    }

    /// Writes the tar archive to `out`.
    pub fn write_tar(&self, out: impl Write) -> io::Result<()> {
        let mut tar = tar::Builder::new(out);
        append_json(&mut tar, HEADER_ENTRY, &self.info)?;
        append_dir(&mut tar, &self.staging, "files")?;
        let end = End {
            files: self.info.files,
            bytes: self.info.bytes,
        };
        append_json(&mut tar, END_ENTRY, &end)?;
        tar.into_inner()?.flush()
    }
}

impl Drop for Backup {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.staging) {
            tracing::warn!(path = %self.staging.display(), cause = %e, "could not remove a backup's staging copy");
        }
    }
}

fn count(dir: &Path) -> io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let (f, b) = count(&entry.path())?;
            files += f;
            bytes += b;
        } else if meta.is_file() {
            files += 1;
            bytes += meta.len();
        }
    }
    Ok((files, bytes))
}

fn append_json<W: Write>(tar: &mut tar::Builder<W>, name: &str, value: &impl Serialize) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(bytes.len() as u64);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    tar.append_data(&mut header, name, bytes.as_slice())
}

fn nanos_of(meta: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    (meta.mtime() as u64).saturating_mul(1_000_000_000) + meta.mtime_nsec() as u64
}

/// Appends `dir`'s contents under `prefix`, sorted, each directory before its contents.
fn append_dir<W: Write>(tar: &mut tar::Builder<W>, dir: &Path, prefix: &str) -> io::Result<()> {
    snapshot::walk_sorted(dir, prefix, &mut |path, source, meta| {
        let nanos = nanos_of(meta);
        let pax = format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000);
        tar.append_pax_extensions([("mtime", pax.as_bytes())])?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(nanos / 1_000_000_000);
        if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, format!("{path}/"), io::empty())
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(meta.len());
            tar.append_data(
                &mut header,
                path,
                crate::fsutil::open_noatime(source)?.take(meta.len()),
            )
        }
    })
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Unpacks a backup's files into `dest` (created; must not exist), checking every name and
/// that the archive is whole. Returns what the backup says it holds.
pub fn unpack(archive: impl Read, dest: &Path) -> io::Result<BackupInfo> {
    fs::create_dir(dest)?;
    read_archive(archive, Some(dest))
}

/// Reads a whole backup, checking every name and that it is complete, writing nothing.
pub fn check(archive: impl Read) -> io::Result<BackupInfo> {
    read_archive(archive, None)
}

fn read_archive(archive: impl Read, dest: Option<&Path>) -> io::Result<BackupInfo> {
    let mut tar = tar::Archive::new(archive);
    let mut info: Option<BackupInfo> = None;
    let mut end: Option<End> = None;
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut dir_times = BTreeMap::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if end.is_some() {
            return Err(invalid(format!("{path}: entry after {END_ENTRY}")));
        }
        if info.is_none() {
            if path != HEADER_ENTRY {
                return Err(invalid(format!(
                    "not a raftd backup: first entry is {path}, not {HEADER_ENTRY}"
                )));
            }
            let header: BackupInfo = serde_json::from_reader(&mut entry)?;
            if header.format != FORMAT {
                return Err(invalid(format!("unknown backup format {:?}", header.format)));
            }
            info = Some(header);
            continue;
        }
        if path == END_ENTRY {
            end = Some(serde_json::from_reader(&mut entry)?);
            continue;
        }
        let name = path
            .strip_prefix("files/")
            .map(|n| n.trim_end_matches('/'))
            .ok_or_else(|| invalid(format!("{path}: not under files/")))?;
        names::validate(name).map_err(|e| invalid(format!("{path}: {e}")))?;
        let mtime = pax_mtime(&mut entry)?.unwrap_or(entry.header().mtime()?.saturating_mul(1_000_000_000));
        let kind = entry.header().entry_type();
        let Some(dest) = dest else {
            match kind {
                tar::EntryType::Directory => {}
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    bytes += io::copy(&mut entry, &mut io::sink())?;
                    files += 1;
                }
                other => return Err(invalid(format!("{path}: unsupported entry type {other:?}"))),
            }
            continue;
        };
        let target = dest.join(name);
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target)?;
                dir_times.insert(target, mtime);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)?;
                }
                let mut file = File::create(&target)?;
                bytes += io::copy(&mut entry, &mut file)?;
                file.set_times(crate::fsutil::file_times(mtime, mtime))?;
                files += 1;
            }
            other => return Err(invalid(format!("{path}: unsupported entry type {other:?}"))),
        }
    }
    let info = info.ok_or_else(|| invalid("empty archive: not a raftd backup"))?;
    let end = end.ok_or_else(|| invalid(format!("the backup is cut short: no {END_ENTRY} entry")))?;
    if end != (End { files, bytes }) || (info.files, info.bytes) != (files, bytes) {
        return Err(invalid(format!(
            "the backup is damaged: it says {} files / {} bytes, holds {files} / {bytes}",
            info.files, info.bytes
        )));
    }
    // Deepest first, after their contents were written.
    for (dir, mtime) in dir_times.iter().rev() {
        File::open(dir)?.set_modified(time_from_nanos(*mtime))?;
    }
    Ok(info)
}

fn pax_mtime<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Option<u64>> {
    let Some(extensions) = entry.pax_extensions()? else {
        return Ok(None);
    };
    for ext in extensions {
        let ext = ext?;
        if ext.key().ok() == Some("mtime") {
            let value = ext.value().map_err(|_| invalid("PAX mtime is not UTF-8"))?;
            let (secs, frac) = value.split_once('.').unwrap_or((value, "0"));
            let secs: u64 = secs
                .parse()
                .map_err(|_| invalid(format!("bad PAX mtime {value}")))?;
            let frac = format!("{frac:0<9}");
            let nanos: u64 = frac[..9]
                .parse()
                .map_err(|_| invalid(format!("bad PAX mtime {value}")))?;
            return Ok(Some(secs * 1_000_000_000 + nanos));
        }
    }
    Ok(None)
}

/// Makes `data_dir` (which holds a node's fresh identity, and nothing else yet) start as a
/// one-node cluster holding exactly the backup's files: a snapshot at the backup's index and
/// term whose membership is this node alone, and a vote in that term. On start the state
/// machine rebuilds its files from that snapshot, the node elects itself, and others join it.
pub fn prepare_restore(archive: impl Read, data_dir: &Path, id: u64, name: &str) -> io::Result<BackupInfo> {
    let snapshots = data_dir.join("snapshots");
    let staging = snapshots.join("restore-staging");
    fs::create_dir_all(&snapshots)?;
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    let info = unpack(archive, &staging.join("files"))?;
    fs::create_dir_all(staging.join("uploads"))?;
    let log_id = LogId::new(openraft::CommittedLeaderId::new(info.term, id), info.index);
    let membership = openraft::Membership::new(
        vec![std::collections::BTreeSet::from([id])],
        std::collections::BTreeMap::from([(id, PeerNode { name: name.into() })]),
    );
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
        snapshot_id: format!("{}-{}-restored", info.term, info.index),
    };
    let header = snapshot::Header {
        meta,
        dedup: Default::default(),
    };
    let path = snapshots.join(format!("{}.snap", header.meta.snapshot_id));
    snapshot::write_archive(&staging, &header, &path)?;
    fs::remove_dir_all(&staging)?;
    let vote = openraft::Vote::new(info.term, id);
    crate::fsutil::write_atomic(&data_dir.join("vote"), &serde_json::to_vec(&vote)?)?;
    crate::fsutil::sync_parent(&path)?;
    Ok(info)
}
