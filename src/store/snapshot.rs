//! Snapshot files: a point-in-time copy of the tree, streamed into one self-describing file.
//!
//! Building: under the state-machine lock (so no entry is half-applied) the tree is
//! hard-linked into a staging directory — cheap, and exact, because the tree is only ever
//! changed by renames and unlinks, never by writing into a file. The lock is then released and
//! the archive is written from the staging copy while `apply` carries on.
//!
//! Format (text header lines, raw contents), so `head` on a snapshot is informative:
//!
//! ```text
//! raftd-snapshot 1
//! {"meta":{…openraft SnapshotMeta…},"dedup":[…]}
//! {"path":"files/a","kind":"dir","mtime":…}
//! {"path":"files/a/b","kind":"file","mtime":…,"size":3}
//! <3 bytes>
//! {"kind":"end"}
//! ```
//!
//! Extraction validates every path with the same rules as client names, so a damaged or
//! hostile snapshot cannot write outside the directory it is unpacked into.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::files::{self, time_from_nanos};
use crate::raft::command::{CommandResult, RequestId};
use crate::raft::SnapshotMeta;

const MAGIC: &str = "raftd-snapshot 1";

/// The archive's header: openraft's metadata plus state-machine state that is not files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// Recently applied request ids and their results.
    pub dedup: Vec<(RequestId, CommandResult)>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
enum Record {
    Dir { path: String, mtime: u64 },
    File { path: String, mtime: u64, size: u64 },
    End,
}

fn mtime_nanos(meta: &fs::Metadata) -> u64 {
    meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Mirrors `src` into `dst` with hard links (directories are created, files linked).
pub fn link_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let target = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            link_tree(&entry.path(), &target)?;
        } else {
            fs::hard_link(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Writes the archive of `staging` (which holds `files/` and `uploads/`) to `out` and fsyncs it.
pub fn write_archive(staging: &Path, header: &Header, out: &Path) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(out)?);
    writeln!(w, "{MAGIC}")?;
    serde_json::to_writer(&mut w, header)?;
    writeln!(w)?;
    for top in ["files", "uploads"] {
        write_dir(&mut w, &staging.join(top), top)?;
    }
    serde_json::to_writer(&mut w, &Record::End)?;
    writeln!(w)?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

fn write_dir(w: &mut impl Write, dir: &Path, prefix: &str) -> io::Result<()> {
    let mut entries = fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().into_string().map_err(|_| io::Error::other("non-UTF-8 name in tree"))?;
        let path = format!("{prefix}/{name}");
        let meta = entry.metadata()?;
        if meta.is_dir() {
            serde_json::to_writer(&mut *w, &Record::Dir { path: path.clone(), mtime: mtime_nanos(&meta) })?;
            writeln!(w)?;
            write_dir(w, &entry.path(), &path)?;
        } else {
            let record = Record::File { path, mtime: mtime_nanos(&meta), size: meta.len() };
            serde_json::to_writer(&mut *w, &record)?;
            writeln!(w)?;
            let copied = io::copy(&mut File::open(entry.path())?.take(meta.len()), w)?;
            if copied != meta.len() {
                return Err(io::Error::other("file changed size while being archived"));
            }
        }
    }
    Ok(())
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 || !line.ends_with('\n') {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "snapshot archive is truncated"));
    }
    line.pop();
    Ok(line)
}

fn read_header_from(r: &mut impl BufRead) -> io::Result<Header> {
    if read_line(r)? != MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a raftd snapshot"));
    }
    Ok(serde_json::from_str(&read_line(r)?)?)
}

/// Reads only the header of the archive at `path`.
pub fn read_header(path: &Path) -> io::Result<Header> {
    read_header_from(&mut BufReader::new(File::open(path)?))
}

/// Unpacks an archive into `dest/files` and `dest/uploads`, returning its header.
pub fn extract(archive: impl Read, dest: &Path) -> io::Result<Header> {
    let mut r = BufReader::with_capacity(1 << 20, archive);
    let header = read_header_from(&mut r)?;
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    for top in ["files", "uploads"] {
        fs::create_dir_all(dest.join(top))?;
    }
    loop {
        let record: Record = serde_json::from_str(&read_line(&mut r)?)?;
        match record {
            Record::End => break,
            Record::Dir { path, mtime } => {
                let target = safe_join(dest, &path)?;
                fs::create_dir_all(&target)?;
                dir_times.push((target, mtime));
            }
            Record::File { path, mtime, size } => {
                let target = safe_join(dest, &path)?;
                let mut out = File::create(&target)?;
                if io::copy(&mut (&mut r).take(size), &mut out)? != size {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "snapshot archive is truncated"));
                }
                out.set_modified(time_from_nanos(mtime))?;
            }
        }
    }
    // Directory times last: creating entries inside a directory resets its mtime.
    for (dir, mtime) in dir_times.into_iter().rev() {
        File::open(&dir)?.set_modified(time_from_nanos(mtime))?;
    }
    Ok(header)
}

fn safe_join(dest: &Path, path: &str) -> io::Result<PathBuf> {
    let rest = path.strip_prefix("files/").or_else(|| path.strip_prefix("uploads/"));
    match rest.map(files::validate) {
        Some(Ok(())) => Ok(dest.join(path)),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad path {path:?} in snapshot"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_round_trips_a_tree() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("files/a/b")).unwrap();
        fs::create_dir_all(src.path().join("uploads/0000000000000001")).unwrap();
        fs::write(src.path().join("files/a/b/c"), [0u8, 1, 2, 255]).unwrap();
        fs::write(src.path().join("files/top"), b"hello\n").unwrap();
        fs::write(src.path().join("uploads/0000000000000001/00000000"), b"part").unwrap();
        let header = Header { meta: Default::default(), dedup: vec![(7, Ok(()))] };
        let archive = src.path().join("snap");
        write_archive(src.path(), &header, &archive).unwrap();

        let dest = tempfile::tempdir().unwrap();
        let back = extract(File::open(&archive).unwrap(), dest.path()).unwrap();
        assert_eq!(back.dedup, header.dedup);
        assert_eq!(fs::read(dest.path().join("files/a/b/c")).unwrap(), [0u8, 1, 2, 255]);
        assert_eq!(fs::read(dest.path().join("files/top")).unwrap(), b"hello\n");
        assert_eq!(fs::read(dest.path().join("uploads/0000000000000001/00000000")).unwrap(), b"part");
        assert_eq!(read_header(&archive).unwrap().dedup, header.dedup);
    }

    #[test]
    fn hostile_paths_are_refused() {
        let dest = tempfile::tempdir().unwrap();
        let header = serde_json::to_string(&Header { meta: Default::default(), dedup: vec![] }).unwrap();
        let archive =
            format!("{MAGIC}\n{header}\n{{\"kind\":\"file\",\"path\":\"files/../../evil\",\"mtime\":0,\"size\":1}}\nx");
        let err = extract(archive.as_bytes(), dest.path()).unwrap_err();
        assert!(err.to_string().contains("bad path"), "{err}");
        assert!(!dest.path().parent().unwrap().join("evil").exists());
    }
}
