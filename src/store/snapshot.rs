//! Snapshot files: a point-in-time copy of the tree, streamed into one self-describing file.
//!
//! Building: the tree is hard-linked into a staging directory while `apply` carries on; the
//! paths applied meanwhile are noted, linked again, and under the state-machine lock (so no
//! entry is half-applied) the last of them, which makes the copy exactly the tree at the
//! applied index. Exact, because a linked file is never written into: apply replaces it, or
//! patches a copy (see [`super::files`]). The archive is then written from the staging copy,
//! again while `apply` carries on.
//!
//! Format (text header lines, raw contents), so `head` on a snapshot is informative:
//!
//! ```text
//! raftd-snapshot 1
//! {"meta":{…openraft SnapshotMeta…},"dedup":{"clock":…,"requests":[…]}}
//! {"path":"files/a","kind":"dir","mtime":…}
//! {"path":"files/a/b","kind":"file","mtime":…,"size":3}
//! <3 bytes>
//! {"path":"files/sparse","kind":"file","mtime":…,"size":1073741824,"data":[[0,4096]]}
//! <4096 bytes>
//! {"kind":"end"}
//! ```
//!
//! A file with holes lists the ranges that hold data; only those bytes follow, and the holes
//! stay holes where the archive is unpacked.
//!
//! Extraction validates every path with the same rules as client names, so a damaged or
//! hostile snapshot cannot write outside the directory it is unpacked into.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::files::time_from_nanos;
use crate::names;
use crate::raft::SnapshotMeta;

const MAGIC: &str = "raftd-snapshot 1";

/// The archive's header: openraft's metadata plus state-machine state that is not files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// Recently applied request ids and their results, with the log's clock.
    pub dedup: super::dedup::Saved,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
enum Record {
    Dir {
        path: String,
        mtime: u64,
    },
    File {
        path: String,
        mtime: u64,
        /// Access time, when it differs from `mtime`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        atime: Option<u64>,
        size: u64,
        /// `[offset, length]` of each range holding data, for a file with holes; the bytes
        /// of these ranges follow, in order. Absent: all `size` bytes follow.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Vec<(u64, u64)>>,
    },
    End,
}

impl Record {
    /// Bytes of contents that follow the record's line.
    fn content_len(&self) -> u64 {
        match self {
            Record::File { data: Some(d), .. } => d.iter().map(|e| e.1).sum(),
            Record::File { size, .. } => *size,
            _ => 0,
        }
    }
}

/// Checks that a file's data ranges are in order, apart and inside its length.
fn check_extents(path: &str, size: u64, data: &[(u64, u64)]) -> io::Result<()> {
    let mut at = 0u64;
    for &(offset, len) in data {
        match offset.checked_add(len) {
            Some(end) if offset >= at && end <= size => at = end,
            _ => return Err(invalid(format!("{path:?}: bad data ranges in snapshot"))),
        }
    }
    Ok(())
}

fn mtime_nanos(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Mirrors `src` into `dst` with hard links (directories are created, files linked), giving
/// each created directory its source's mtime.
/// Anything else (a symlink, a device, a socket planted by hand) is left out: raftd never
/// creates one, and following it could copy data from outside the tree into a snapshot.
///
/// Entries that vanish while it runs are skipped: the tree may change under it (see
/// [`relink`], which brings such a copy up to date).
pub fn link_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let target = dst.join(entry.file_name());
        let Some(kind) = gone_is_none(entry.file_type())? else {
            continue;
        };
        if kind.is_dir() {
            match link_tree(&entry.path(), &target) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        } else if kind.is_file() {
            gone_is_none(fs::hard_link(entry.path(), &target))?;
        } else {
            tracing::warn!(path = %entry.path().display(), "leaving a non-regular file out of the snapshot");
        }
    }
    File::open(dst)?.set_modified(fs::metadata(src)?.modified()?)
}

/// `Ok(None)` for "not found", the value otherwise.
fn gone_is_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes `dst/rel` mirror `src/rel` again, for a copy [`link_tree`] made while `rel` changed:
/// drops what the copy holds there, links what the source holds now (a file, or a directory
/// and everything in it), and gives the directories above it their source's times (an entry
/// came or went in them).
pub fn relink(src: &Path, dst: &Path, rel: &str) -> io::Result<()> {
    let (from, to) = (src.join(rel), dst.join(rel));
    match gone_is_none(fs::symlink_metadata(&to))? {
        Some(m) if m.is_dir() => fs::remove_dir_all(&to)?,
        Some(_) => fs::remove_file(&to)?,
        None => {}
    }
    match gone_is_none(fs::symlink_metadata(&from))? {
        Some(m) if m.is_dir() => link_tree(&from, &to)?,
        Some(m) if m.is_file() => {
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent)?;
            }
            gone_is_none(fs::hard_link(&from, &to))?;
        }
        _ => {}
    }
    let mut above = Path::new(rel);
    while let Some(parent) = above.parent() {
        if let (Some(m), Some(dir)) = (
            gone_is_none(fs::metadata(src.join(parent)))?,
            gone_is_none(File::open(dst.join(parent)))?,
        ) {
            dir.set_modified(m.modified()?)?;
        }
        above = parent;
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

/// Visits every directory and regular file under `dir` in name order, each directory before
/// its contents, as `prefix/…` paths; anything else (a symlink, a device) is skipped.
pub(crate) fn walk_sorted(
    dir: &Path,
    prefix: &str,
    visit: &mut impl FnMut(&str, &Path, &fs::Metadata) -> io::Result<()>,
) -> io::Result<()> {
    let mut entries = fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| io::Error::other("non-UTF-8 name in tree"))?;
        let path = format!("{prefix}/{name}");
        let meta = fs::symlink_metadata(entry.path())?;
        if meta.is_dir() {
            visit(&path, &entry.path(), &meta)?;
            walk_sorted(&entry.path(), &path, visit)?;
        } else if meta.is_file() {
            visit(&path, &entry.path(), &meta)?;
        }
    }
    Ok(())
}

fn write_dir(w: &mut impl Write, dir: &Path, prefix: &str) -> io::Result<()> {
    walk_sorted(dir, prefix, &mut |path, source, meta| {
        let mtime = mtime_nanos(meta);
        if meta.is_dir() {
            let path = path.to_string();
            serde_json::to_writer(&mut *w, &Record::Dir { path, mtime })?;
            return writeln!(w);
        }
        let path = path.to_string();
        let file = crate::fsutil::open_noatime(source)?;
        let size = meta.len();
        let atime = meta
            .accessed()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64)
            .filter(|&a| a != mtime);
        let extents = super::sparse::data_extents(&file, 0, size)?;
        let dense = extents.is_empty() && size == 0 || extents == [(0, size)];
        let record = Record::File {
            path,
            mtime,
            atime,
            size,
            data: (!dense).then(|| extents.clone()),
        };
        serde_json::to_writer(&mut *w, &record)?;
        writeln!(w)?;
        let ranges = if dense { vec![(0, size)] } else { extents };
        for (offset, len) in ranges {
            let mut part = io::Read::take(&file, 0);
            part.get_mut().seek(io::SeekFrom::Start(offset))?;
            part.set_limit(len);
            if io::copy(&mut part, w)? != len {
                return Err(io::Error::other("file changed size while being archived"));
            }
        }
        Ok(())
    })
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 || !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "snapshot archive is truncated",
        ));
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

/// Unpacks an archive into `dest/files` and `dest/uploads`, returning its header. Every
/// record passes the same layout checks as [`Validator`], so an archive the validator
/// accepted always unpacks.
pub fn extract(archive: impl Read, dest: &Path) -> io::Result<Header> {
    let mut r = BufReader::with_capacity(1 << 20, archive);
    let header = read_header_from(&mut r)?;
    let mut layout = Layout::default();
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    for top in ["files", "uploads"] {
        fs::create_dir_all(dest.join(top))?;
    }
    loop {
        let record: Record = serde_json::from_str(&read_line(&mut r)?)?;
        layout.check(&record)?;
        match record {
            Record::End => break,
            Record::Dir { path, mtime } => {
                let target = dest.join(&path);
                fs::create_dir_all(&target)?;
                dir_times.push((target, mtime));
            }
            Record::File {
                path,
                mtime,
                atime,
                size,
                data,
            } => {
                let mut out = File::create(dest.join(&path))?;
                for (offset, len) in data.unwrap_or_else(|| vec![(0, size)]) {
                    out.seek(io::SeekFrom::Start(offset))?;
                    if io::copy(&mut (&mut r).take(len), &mut out)? != len {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "snapshot archive is truncated",
                        ));
                    }
                }
                out.set_len(size)?;
                out.set_times(crate::fsutil::file_times(atime.unwrap_or(mtime), mtime))?;
            }
        }
    }
    // Directory times last: creating entries inside a directory resets its mtime.
    for (dir, mtime) in dir_times.into_iter().rev() {
        File::open(&dir)?.set_modified(time_from_nanos(mtime))?;
    }
    Ok(header)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The shape rules every record must follow, so that unpacking cannot fail on them: paths
/// are clean names under `files/` or `uploads/`, every parent was declared as a directory
/// before its children, and nothing is declared once as a file and once as a directory.
#[derive(Default)]
struct Layout {
    /// Declared paths: true for directories.
    kinds: HashMap<String, bool>,
}

impl Layout {
    fn check(&mut self, record: &Record) -> io::Result<()> {
        let (path, is_dir) = match record {
            Record::End => return Ok(()),
            Record::Dir { path, .. } => (path, true),
            Record::File {
                path,
                size,
                data: Some(data),
                ..
            } => {
                check_extents(path, *size, data)?;
                (path, false)
            }
            Record::File { path, .. } => (path, false),
        };
        let rest = path
            .strip_prefix("files/")
            .or_else(|| path.strip_prefix("uploads/"));
        if rest.is_none_or(|r| names::check(r).is_err()) {
            return Err(invalid(format!("bad path {path:?} in snapshot")));
        }
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        if !matches!(parent, "files" | "uploads") && self.kinds.get(parent) != Some(&true) {
            return Err(invalid(format!(
                "{path:?} in snapshot comes before its directory"
            )));
        }
        match self.kinds.insert(path.clone(), is_dir) {
            Some(was_dir) if was_dir != is_dir => {
                Err(invalid(format!("{path:?} is both a file and a directory")))
            }
            _ => Ok(()),
        }
    }
}

/// Longest header or record line accepted, in bytes (the header carries the de-duplication
/// table, a few hundred KiB at most).
const MAX_LINE: usize = 16 << 20;

/// Where a [`Validator`] is in the archive.
enum Expect {
    Magic,
    Header,
    Record,
    Content(u64),
    Nothing,
}

/// Checks an archive as it arrives, one piece at a time, without storing it.
///
/// A snapshot from a peer reaches the state machine only when its last piece arrives, and
/// openraft treats any failure to install it as fatal. So the peer route feeds every piece
/// through a validator first and refuses the piece (4xx) at the first byte that would make
/// unpacking fail: a truncated, garbled or hostile archive never reaches storage.
pub struct Validator {
    expect: Expect,
    line: Vec<u8>,
    layout: Layout,
    seen: u64,
}

impl Default for Validator {
    fn default() -> Self {
        Validator {
            expect: Expect::Magic,
            line: Vec::new(),
            layout: Layout::default(),
            seen: 0,
        }
    }
}

impl Validator {
    /// Bytes accepted so far: where the next piece must start.
    pub fn position(&self) -> u64 {
        self.seen
    }

    /// Accepts the next piece, or says what is wrong with it.
    pub fn feed(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.seen += data.len() as u64;
        while !data.is_empty() {
            match &mut self.expect {
                Expect::Nothing => return Err(invalid("data after the end of the snapshot".into())),
                Expect::Content(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[n as usize..];
                    if *left == 0 {
                        self.expect = Expect::Record;
                    }
                }
                _ => match data.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        self.line.extend_from_slice(&data[..end]);
                        data = &data[end + 1..];
                        let line = std::mem::take(&mut self.line);
                        self.accept_line(&line)?;
                    }
                    None => {
                        self.line.extend_from_slice(data);
                        if self.line.len() > MAX_LINE {
                            return Err(invalid("snapshot line too long".into()));
                        }
                        data = &[];
                    }
                },
            }
        }
        Ok(())
    }

    fn accept_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.expect = match self.expect {
            Expect::Magic if line == MAGIC.as_bytes() => Expect::Header,
            Expect::Magic => return Err(invalid("not a raftd snapshot".into())),
            Expect::Header => {
                serde_json::from_slice::<Header>(line)?;
                Expect::Record
            }
            _ => {
                let record: Record = serde_json::from_slice(line)?;
                self.layout.check(&record)?;
                match record.content_len() {
                    _ if matches!(record, Record::End) => Expect::Nothing,
                    0 => Expect::Record,
                    n => Expect::Content(n),
                }
            }
        };
        Ok(())
    }

    /// Succeeds only if everything fed so far is one complete archive.
    pub fn finish(&self) -> io::Result<()> {
        match self.expect {
            Expect::Nothing => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "snapshot archive is truncated",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dedup::Saved;

    #[test]
    fn archive_round_trips_a_tree() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("files/a/b")).unwrap();
        fs::create_dir_all(src.path().join("uploads/0000000000000001")).unwrap();
        fs::write(src.path().join("files/a/b/c"), [0u8, 1, 2, 255]).unwrap();
        fs::write(src.path().join("files/top"), b"hello\n").unwrap();
        fs::write(src.path().join("uploads/0000000000000001/00000000"), b"part").unwrap();
        let header = Header {
            meta: Default::default(),
            dedup: Saved {
                clock: 3,
                requests: vec![(7, Ok(()), 2)],
            },
        };
        let archive = src.path().join("snap");
        write_archive(src.path(), &header, &archive).unwrap();

        let dest = tempfile::tempdir().unwrap();
        let back = extract(File::open(&archive).unwrap(), dest.path()).unwrap();
        assert_eq!(back.dedup, header.dedup);
        assert_eq!(
            fs::read(dest.path().join("files/a/b/c")).unwrap(),
            [0u8, 1, 2, 255]
        );
        assert_eq!(fs::read(dest.path().join("files/top")).unwrap(), b"hello\n");
        assert_eq!(
            fs::read(dest.path().join("uploads/0000000000000001/00000000")).unwrap(),
            b"part"
        );
        assert_eq!(read_header(&archive).unwrap().dedup, header.dedup);
    }

    /// A sparse file travels as its data ranges and unpacks with its holes.
    #[test]
    fn holes_stay_holes_through_an_archive() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("files")).unwrap();
        fs::create_dir_all(src.path().join("uploads")).unwrap();
        let far = 256u64 << 20;
        let sparse = File::create(src.path().join("files/sparse")).unwrap();
        sparse.write_all_at(b"a", 0).unwrap();
        sparse.write_all_at(b"z", far).unwrap();
        sparse
            .set_times(crate::fsutil::file_times(3_000_000_000, 4_000_000_000))
            .unwrap();
        fs::write(src.path().join("files/dense"), b"dense").unwrap();
        let header = Header {
            meta: Default::default(),
            dedup: Saved::default(),
        };
        let archive = src.path().join("snap");
        write_archive(src.path(), &header, &archive).unwrap();
        assert!(
            fs::metadata(&archive).unwrap().len() < 1 << 20,
            "holes are not archived"
        );
        let mut v = Validator::default();
        for piece in fs::read(&archive).unwrap().chunks(7) {
            v.feed(piece).unwrap();
        }
        v.finish().unwrap();

        let dest = tempfile::tempdir().unwrap();
        extract(File::open(&archive).unwrap(), dest.path()).unwrap();
        let out = File::open(dest.path().join("files/sparse")).unwrap();
        let meta = out.metadata().unwrap();
        assert_eq!(meta.len(), far + 1);
        assert_eq!((meta.atime(), meta.mtime()), (3, 4), "times travel with the file");
        assert!(meta.blocks() < 1024, "unpacked sparse: {} blocks", meta.blocks());
        let mut byte = [0u8];
        out.read_exact_at(&mut byte, far).unwrap();
        assert_eq!(&byte, b"z");
        out.read_exact_at(&mut byte, 4096).unwrap();
        assert_eq!(byte, [0]);
        assert_eq!(fs::read(dest.path().join("files/dense")).unwrap(), b"dense");

        let bad = format!(
            "{MAGIC}\n{}\n{{\"kind\":\"file\",\"path\":\"files/x\",\"mtime\":0,\"size\":4,\"data\":[[2,4]]}}\n",
            serde_json::to_string(&header).unwrap()
        );
        assert!(
            Validator::default().feed(bad.as_bytes()).is_err(),
            "ranges past the length"
        );
    }

    #[test]
    fn hostile_paths_are_refused() {
        let dest = tempfile::tempdir().unwrap();
        let header = serde_json::to_string(&Header {
            meta: Default::default(),
            dedup: Saved::default(),
        })
        .unwrap();
        let archive =
            format!("{MAGIC}\n{header}\n{{\"kind\":\"file\",\"path\":\"files/../../evil\",\"mtime\":0,\"size\":1}}\nx");
        let err = extract(archive.as_bytes(), dest.path()).unwrap_err();
        assert!(err.to_string().contains("bad path"), "{err}");
        assert!(!dest.path().parent().unwrap().join("evil").exists());
        let mut v = Validator::default();
        assert!(
            v.feed(archive.as_bytes()).is_err(),
            "the validator refuses it too"
        );
    }

    /// A copy linked while the tree changed is made exact by relinking the changed paths:
    /// the same names, kinds, inodes (links, not copies) and directory times as the tree.
    #[test]
    fn relinking_the_changed_paths_makes_a_live_copy_exact() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (tree, copy) = (dir.path().join("tree"), dir.path().join("copy"));
        for d in ["a/b", "c", "gone"] {
            fs::create_dir_all(tree.join(d)).unwrap();
        }
        for f in ["a/b/f", "a/g", "c/h", "gone/x", "top"] {
            fs::write(tree.join(f), f).unwrap();
        }
        link_tree(&tree, &copy).unwrap();
        // Changes made after (or while) the copy was linked, as the state machine applies them.
        let mut changed = Vec::new();
        let mut note = |p: &str| changed.push(p.to_string());
        fs::rename(tree.join("a"), tree.join("moved")).unwrap();
        note("a");
        note("moved");
        fs::remove_dir_all(tree.join("gone")).unwrap();
        note("gone/x");
        note("gone");
        fs::create_dir_all(tree.join("new/deep")).unwrap();
        note("new");
        fs::write(tree.join("new/deep/n"), "n").unwrap();
        note("new/deep/n");
        let replacement = dir.path().join("replacement");
        fs::write(&replacement, "top v2").unwrap();
        fs::rename(&replacement, tree.join("top")).unwrap();
        note("top");
        fs::remove_file(tree.join("c/h")).unwrap();
        note("c/h");
        let old = UNIX_EPOCH + std::time::Duration::from_secs(2_000_000);
        File::open(tree.join("c")).unwrap().set_modified(old).unwrap();
        for p in &changed {
            relink(&tree, &copy, p).unwrap();
        }

        let listing = |root: &Path| {
            let mut seen = Vec::new();
            walk_sorted(root, "", &mut |path, full, meta| {
                let inode = if meta.is_dir() { 0 } else { meta.ino() };
                let mtime = fs::metadata(full).unwrap().modified().unwrap();
                seen.push((path.to_string(), meta.is_dir(), inode, mtime));
                Ok(())
            })
            .unwrap();
            seen
        };
        assert_eq!(listing(&copy), listing(&tree));
        assert_eq!(fs::read(copy.join("top")).unwrap(), b"top v2");
        assert_eq!(
            fs::metadata(copy.join("c")).unwrap().modified().unwrap(),
            old,
            "the times of a directory an entry left"
        );
    }

    #[test]
    fn linked_directories_keep_their_source_times() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("tree/d")).unwrap();
        fs::write(src.path().join("tree/d/f"), b"x").unwrap();
        let old = UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        File::open(src.path().join("tree/d"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        link_tree(&src.path().join("tree"), &src.path().join("staged")).unwrap();
        let mtime = |p: &str| fs::metadata(src.path().join(p)).unwrap().modified().unwrap();
        assert_eq!(
            mtime("staged/d"),
            old,
            "not the time the staging directory was made"
        );
        assert_eq!(mtime("staged"), mtime("tree"));
    }

    fn sample_archive() -> Vec<u8> {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("files/d")).unwrap();
        fs::create_dir_all(src.path().join("uploads")).unwrap();
        fs::write(src.path().join("files/d/f"), b"contents\nwith newline").unwrap();
        fs::write(src.path().join("files/empty"), b"").unwrap();
        let header = Header {
            meta: Default::default(),
            dedup: Saved {
                clock: 0,
                requests: vec![(1, Ok(()), 0)],
            },
        };
        write_archive(src.path(), &header, &src.path().join("a")).unwrap();
        fs::read(src.path().join("a")).unwrap()
    }

    #[test]
    fn validator_accepts_a_real_archive_in_any_pieces() {
        let archive = sample_archive();
        for piece in [1, 3, 7, 64, archive.len()] {
            let mut v = Validator::default();
            for chunk in archive.chunks(piece) {
                v.feed(chunk).unwrap();
            }
            v.finish().unwrap();
            assert_eq!(v.position(), archive.len() as u64);
        }
    }

    #[test]
    fn validator_refuses_what_extract_would_fail_on() {
        let archive = sample_archive();
        // Truncated anywhere: never finished.
        for cut in [0, 5, 20, archive.len() - 1] {
            let mut v = Validator::default();
            let fed = v.feed(&archive[..cut]);
            assert!(fed.is_err() || v.finish().is_err(), "cut at {cut}");
        }
        // Trailing garbage.
        let mut v = Validator::default();
        let mut long = archive.clone();
        long.extend_from_slice(b"junk");
        assert!(v.feed(&long).is_err());
        // A file whose directory was never declared, and a path that is both kinds.
        let header = serde_json::to_string(&Header {
            meta: Default::default(),
            dedup: Saved::default(),
        })
        .unwrap();
        for records in [
            "{\"kind\":\"file\",\"path\":\"files/nodir/f\",\"mtime\":0,\"size\":0}\n",
            "{\"kind\":\"file\",\"path\":\"files/x\",\"mtime\":0,\"size\":0}\n{\"kind\":\"dir\",\"path\":\"files/x\",\"mtime\":0}\n",
            "{\"kind\":\"dir\",\"path\":\"files/x\",\"mtime\":0}\n{\"kind\":\"file\",\"path\":\"files/x\",\"mtime\":0,\"size\":0}\n",
            "{\"kind\":\"dir\",\"path\":\"elsewhere/x\",\"mtime\":0}\n",
        ] {
            let text = format!("{MAGIC}\n{header}\n{records}{{\"kind\":\"end\"}}\n");
            let mut v = Validator::default();
            assert!(v.feed(text.as_bytes()).and_then(|()| v.finish()).is_err(), "{records}");
            let dest = tempfile::tempdir().unwrap();
            assert!(extract(text.as_bytes(), dest.path()).is_err(), "{records}");
        }
    }
}
