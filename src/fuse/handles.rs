//! Open files. A read handle pins the version of the file that was current at `open`; a write
//! handle records what it changes — the bytes written (in a sparse buffer: memory for a small
//! file, a local file past `IN_MEMORY`), the ranges touched since the last commit, the
//! shortest length the file was cut to — and reads the rest from the committed file. A commit
//! sends only what changed: a `file:patch`, or a whole `file:write` when the handle rewrote
//! the file from empty.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::ranges::Ranges;
use crate::fsutil::read_full_at;
use crate::raft::command::{Layout, RequestId, Span};
use crate::store::recycle::ReadFile;
use crate::store::sparse;

/// One open file.
pub(crate) enum Handle {
    /// Opened for reading `ino` (the number kept so that `fstat` still answers once the file
    /// is unlinked).
    Read(u64, ReadFile),
    /// Opened for writing.
    Write(Writer),
}

/// What a file opened for writing changed, and what it reads through.
pub(crate) struct Writer {
    /// The inode being written.
    pub ino: u64,
    /// Every byte written through this handle, at its offset (a sparse file): a memfd until
    /// a write reaches past `IN_MEMORY`, then a file in `spill_dir`.
    buffer: File,
    /// The buffer's file once it moved to disk.
    buffer_path: Option<PathBuf>,
    spill_dir: Arc<Path>,
    /// The committed file as it was opened: read where nothing was written.
    base: Option<ReadFile>,
    /// Bytes of `base` at or past this read as zeros: the shortest length the file was cut
    /// to since it was opened.
    base_limit: u64,
    /// Ranges whose bytes are in `buffer`.
    written: Ranges,
    /// Ranges changed since the last successful commit (inside `written`).
    touched: Ranges,
    /// The shortest length the file was cut to since the last successful commit.
    cut: Option<u64>,
    /// The file's length as this handle sees it.
    size: u64,
    /// Changed since the last successful commit. A failed commit leaves it set, so the next
    /// fsync or close tries again instead of reporting success for data that never
    /// committed (the "fsyncgate" mistake).
    dirty: bool,
    /// Counts changes, so a commit that succeeds marks the handle clean only if nothing was
    /// written while it was in flight.
    version: u64,
    /// A time set (utimes) while contents were pending; committed with them.
    mtime: Option<u64>,
    /// The request id of the last commit attempt and the version it sent: a retry of the same
    /// version reuses the id, so a first attempt that did commit (its answer lost to a
    /// timeout) is answered, not applied a second time over someone else's later write.
    attempt: Option<(u64, RequestId)>,
    /// The file exists in the cluster (it did at open, or a commit created it): commits must
    /// find it there, so a delete or rename on another node is not undone by re-creating it.
    existed: bool,
}

fn os_err(e: io::Error) -> libc::c_int {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Writer {
    /// Contents changed: a time set before (utimes) gives way to the time of the commit, as
    /// a write after `futimens` moves a local file's mtime.
    fn changed(&mut self) {
        self.dirty = true;
        self.version += 1;
        self.mtime = None;
    }

    /// Moves the buffer to disk before it holds bytes at or past `end`, if they would lie
    /// past `IN_MEMORY`. Holes stay holes in the copy.
    fn make_room(&mut self, end: u64) -> io::Result<()> {
        if self.buffer_path.is_some() || end <= IN_MEMORY {
            return Ok(());
        }
        let path = self.spill_dir.join(format!("{:016x}", rand::random::<u64>()));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        if let Err(e) = sparse::copy(&self.buffer, &file, self.buffer.metadata()?.len()) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.buffer = file;
        self.buffer_path = Some(path);
        Ok(())
    }

    /// Records bytes written at `offset`.
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let end = offset + data.len() as u64;
        self.make_room(end)?;
        self.buffer.write_all_at(data, offset)?;
        self.written.insert(offset, end);
        self.touched.insert(offset, end);
        self.size = self.size.max(end);
        self.changed();
        Ok(())
    }

    /// Sets the length: what lay past a shorter one reads as zeros from now on.
    fn resize(&mut self, size: u64) -> io::Result<()> {
        if size < self.size {
            self.buffer.set_len(size.min(self.buffer.metadata()?.len()))?;
            self.written.remove(size, u64::MAX);
            self.touched.remove(size, u64::MAX);
            self.base_limit = self.base_limit.min(size);
            self.cut = Some(self.cut.map_or(size, |c| c.min(size)));
        }
        self.size = size;
        self.changed();
        Ok(())
    }

    /// Makes `[offset, end)` read as zeros, kept as a hole (`fallocate` punch or zero range).
    fn zero(&mut self, offset: u64, end: u64) -> io::Result<()> {
        let end = end.min(self.size);
        if offset >= end {
            return Ok(());
        }
        sparse::punch(&self.buffer, offset, end - offset)?;
        self.written.insert(offset, end);
        self.touched.insert(offset, end);
        self.changed();
        Ok(())
    }

    /// Reads what this handle sees at `offset`: its own bytes, else the committed file's
    /// below `base_limit`, else zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let end = (offset + buf.len() as u64).min(self.size);
        if offset >= end {
            return Ok(0);
        }
        for (start, stop, mine) in self.written.pieces(offset, end) {
            let part = &mut buf[(start - offset) as usize..(stop - offset) as usize];
            let source = match (&self.base, mine) {
                (_, true) => Some(&self.buffer),
                (Some(base), false) if start < self.base_limit => Some(&**base),
                _ => None,
            };
            let limit = if mine { stop } else { stop.min(self.base_limit) };
            let filled = match source {
                Some(file) => read_full_at(file, &mut part[..(limit - start) as usize], start)?,
                None => 0,
            };
            part[filled..].fill(0);
        }
        Ok((end - offset) as usize)
    }

    /// The first offset at or after `at` holding data (`whence` `SEEK_DATA`) or a hole
    /// (`SEEK_HOLE`), as this handle sees the file; `None` past the end (`ENXIO`).
    fn seek(&self, at: u64, data: bool) -> io::Result<Option<u64>> {
        if at >= self.size {
            return Ok(None);
        }
        for (start, stop, mine) in self.written.pieces(at, self.size) {
            // The part of the piece a file backs; the rest (past the cut) reads as a hole.
            let (file, backed) = match (&self.base, mine) {
                (_, true) => (Some(&self.buffer), stop),
                (Some(base), false) if start < self.base_limit => (Some(&**base), stop.min(self.base_limit)),
                _ => (None, start),
            };
            let found = match file {
                Some(file) if data => sparse::next_data(file, start)?.filter(|&d| d < backed),
                // Past a file's end is a hole too.
                Some(file) => Some(
                    sparse::next_hole(file, start)?
                        .unwrap_or(start)
                        .clamp(start, backed),
                ),
                None if data => None,
                None => Some(start),
            };
            if let Some(found) = found.filter(|&f| f < stop) {
                return Ok(Some(found));
            }
        }
        Ok(if data { None } else { Some(self.size) })
    }

    /// Bytes of local disk this handle's version occupies, in 512-byte blocks (for `du`).
    fn blocks(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let of = |f: &File| f.metadata().map(|m| m.blocks()).unwrap_or(0);
        of(&self.buffer) + self.base.as_ref().map_or(0, |b| of(b))
    }

    /// What a commit of the current state must send: the whole contents when the handle cut
    /// the file to nothing and wrote every byte since (a `file:write`), else a patch.
    fn change(&self) -> io::Result<Change> {
        let whole = self.cut == Some(0) && self.touched.covers(0, self.size);
        let mut spans = Vec::new();
        let mut zeros = Vec::new();
        for (start, stop) in self.touched.iter() {
            let stop = stop.min(self.size);
            let mut at = start;
            for (offset, len) in sparse::data_extents(&self.buffer, start, stop)? {
                if offset > at {
                    zeros.push(Span(at, offset - at));
                }
                spans.push(Span(offset, len));
                at = offset + len;
            }
            if at < stop {
                zeros.push(Span(at, stop - at));
            }
        }
        if whole && zeros.is_empty() {
            return Ok(Change::Whole);
        }
        let layout = Layout {
            cut: self.cut,
            size: self.size,
            zeros,
        };
        Ok(Change::Patch { layout, spans })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(path) = &self.buffer_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A write buffer starts in memory and moves to a file once a write reaches past this offset.
/// Most files written through a mount (what `tar`, `git` or an editor writes) are smaller:
/// their buffers then never create and delete an inode of the data directory's filesystem.
/// That churn cost more than the write itself — ext4 skips recently deleted inodes when it
/// allocates, so each new file searched past all the buffers deleted before it.
const IN_MEMORY: u64 = 1 << 20;

/// An empty anonymous file in memory (memfd): sparse, with `SEEK_DATA`/`SEEK_HOLE` and hole
/// punching like a file on disk.
fn memory_file() -> io::Result<File> {
    let fd = unsafe { libc::memfd_create(c"raftd-write-buffer".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just created and owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// What an open handle shows of its file, for `stat`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    /// Length.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Modification time, when the handle knows it.
    pub mtime: Option<std::time::SystemTime>,
    /// Access time, likewise.
    pub atime: Option<std::time::SystemTime>,
    /// Change time, likewise.
    pub ctime: Option<std::time::SystemTime>,
    /// The file was in the tree (opened there, or committed since).
    pub committed: bool,
}

/// How a commit changes the file.
#[derive(Debug)]
pub(crate) enum Change {
    /// Replace it with the contents, bytes `0..size` of the buffer.
    Whole,
    /// Shape it as `layout`, then write these ranges, read from the buffer.
    Patch {
        /// Cut, length and holes.
        layout: Layout,
        /// Ranges of the buffer to send, at the same offsets.
        spans: Vec<Span>,
    },
}

/// What a commit sends: the inode, what changed and where the bytes are, and the time.
pub(crate) struct Pending {
    /// The inode written.
    pub ino: u64,
    /// The handle's own bytes (read at the offsets `change` names).
    pub contents: File,
    /// The length of the file after the commit.
    pub size: u64,
    /// What changed.
    pub change: Change,
    /// A time set while the contents were pending.
    pub mtime: Option<u64>,
    /// The writer's version these contents are.
    pub version: u64,
    /// The same for every attempt to commit this version.
    pub req: RequestId,
    /// The commit must find the file in place (see `Writer::existed`).
    pub existing: bool,
}

impl Handle {
    /// Reads what the handle sees at `offset` (its own writes over the committed file).
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self {
            Handle::Read(_, file) => read_full_at(file, buf, offset),
            Handle::Write(w) => w.read_at(buf, offset),
        }
    }

    /// The file as this handle sees it.
    pub(crate) fn seen(&self) -> Option<Seen> {
        use std::os::unix::fs::MetadataExt;
        match self {
            Handle::Read(_, file) => file.metadata().ok().map(|m| Seen {
                size: m.len(),
                blocks: m.blocks(),
                mtime: m.modified().ok(),
                atime: m.accessed().ok(),
                ctime: Some(crate::store::files::time_from_nanos(
                    m.ctime() as u64 * 1_000_000_000 + m.ctime_nsec() as u64,
                )),
                committed: true,
            }),
            Handle::Write(w) => Some(Seen {
                size: w.size,
                blocks: w.blocks(),
                mtime: w.mtime.map(crate::store::files::time_from_nanos),
                atime: None,
                ctime: None,
                committed: w.existed,
            }),
        }
    }

    /// `SEEK_DATA` (`data`) or `SEEK_HOLE` from `at`; `None` past the end.
    pub(crate) fn seek(&self, at: u64, data: bool) -> io::Result<Option<u64>> {
        match self {
            Handle::Read(_, file) if data => sparse::next_data(file, at),
            Handle::Read(_, file) => sparse::next_hole(file, at),
            Handle::Write(w) => w.seek(at, data),
        }
    }

    /// Whether uncommitted writes are buffered.
    pub(crate) fn is_dirty(&self) -> bool {
        matches!(self, Handle::Write(Writer { dirty: true, .. }))
    }

    /// Buffers `data` at `offset`; EBADF on a read handle.
    pub(crate) fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), libc::c_int> {
        match self {
            Handle::Write(w) => w.write_at(data, offset).map_err(os_err),
            Handle::Read(..) => Err(libc::EBADF),
        }
    }

    /// Buffers `data` at the end (a write to a file opened with `O_APPEND`).
    pub(crate) fn append(&mut self, data: &[u8]) -> Result<(), libc::c_int> {
        match self {
            Handle::Write(w) => {
                let end = w.size;
                w.write_at(data, end).map_err(os_err)
            }
            Handle::Read(..) => Err(libc::EBADF),
        }
    }

    /// Sets the length; EBADF on a read handle.
    pub(crate) fn resize(&mut self, size: u64) -> Result<(), libc::c_int> {
        match self {
            Handle::Write(w) => w.resize(size).map_err(os_err),
            Handle::Read(..) => Err(libc::EBADF),
        }
    }

    /// `fallocate`: mode 0 (and `ZERO_RANGE`) may lengthen the file; `PUNCH_HOLE` (always
    /// with `KEEP_SIZE`) and `ZERO_RANGE` make the range read as zeros, kept as a hole. Space
    /// is not reserved on the replicas (mode 0 only sets the length). Others: EOPNOTSUPP.
    pub(crate) fn allocate(&mut self, offset: u64, len: u64, mode: i32) -> Result<(), libc::c_int> {
        let Handle::Write(w) = self else {
            return Err(libc::EBADF);
        };
        let end = offset.checked_add(len).ok_or(libc::EFBIG)?;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        let known = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (punch && (!keep || zero)) {
            return Err(libc::EOPNOTSUPP);
        }
        if !keep && end > w.size {
            w.resize(end).map_err(os_err)?;
        }
        if punch || zero {
            w.zero(offset, end).map_err(os_err)?;
        }
        Ok(())
    }

    /// Records a modification time for pending contents; false if none are pending.
    pub(crate) fn set_pending_mtime(&mut self, when: u64) -> bool {
        match self {
            Handle::Write(w) if w.dirty => {
                w.mtime = Some(when);
                w.version += 1;
                true
            }
            _ => false,
        }
    }

    /// What must be committed; `None` if nothing is pending. The handle stays dirty until
    /// [`committed`](Self::committed) says the commit succeeded.
    pub(crate) fn take_pending(&mut self) -> io::Result<Option<Pending>> {
        match self {
            Handle::Write(w) if w.dirty => {
                let req = match w.attempt {
                    Some((version, req)) if version == w.version => req,
                    _ => rand::random(),
                };
                w.attempt = Some((w.version, req));
                Ok(Some(Pending {
                    ino: w.ino,
                    contents: w.buffer.try_clone()?,
                    size: w.size,
                    change: w.change()?,
                    mtime: w.mtime,
                    version: w.version,
                    req,
                    existing: w.existed,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Marks the handle clean after `version` committed, unless it changed meanwhile.
    pub(crate) fn committed(&mut self, version: u64) {
        if let Handle::Write(w) = self {
            w.existed = true;
            if w.version == version {
                w.dirty = false;
                w.mtime = None;
                w.touched.clear();
                w.cut = None;
            }
        }
    }

    /// The file is gone from the tree (deleted, then opened again for writing): the next
    /// commit creates it from everything this handle sees, not only what it changed.
    fn recreate(&mut self) {
        if let Handle::Write(w) = self {
            w.existed = false;
            let kept = w.base_limit.min(w.size);
            // Kept in memory if it fits; if it cannot move to disk, memory still holds it.
            let _ = w.make_room(kept);
            if let (Some(base), true) = (&w.base, kept > 0) {
                // Bring the base's data (not its holes) into the buffer where this handle has
                // not written: it must travel with the commit.
                let mut buf = vec![0u8; 1 << 16];
                for (offset, len) in sparse::data_extents(base, 0, kept).unwrap_or_default() {
                    for (start, stop, mine) in w.written.pieces(offset, offset + len) {
                        let mut at = start;
                        while !mine && at < stop {
                            let n = (stop - at).min(buf.len() as u64) as usize;
                            let got = read_full_at(base, &mut buf[..n], at).unwrap_or(0);
                            buf[got..n].fill(0);
                            let _ = w.buffer.write_all_at(&buf[..n], at);
                            at += n as u64;
                        }
                    }
                }
                w.written.insert(0, kept);
            }
            w.base = None;
            w.base_limit = 0;
            w.touched.insert(0, w.size);
            w.cut = Some(0);
            w.changed();
        }
    }
}

/// A shared, lockable handle. std lock: held for a local pread/pwrite at most.
pub(crate) type Shared = Arc<Mutex<Handle>>;

/// The table of open handles, by FUSE file handle number.
pub(crate) struct Handles {
    /// std lock: table edits only.
    table: Mutex<HashMap<u64, Shared>>,
    next: AtomicU64,
    /// Where write buffers too large for memory go.
    buffers: Arc<Path>,
}

fn lock(h: &Shared) -> std::sync::MutexGuard<'_, Handle> {
    h.lock().expect("handle lock poisoned")
}

impl Handles {
    /// A table whose large write buffers live in `buffers` (emptied first: leftovers of a
    /// crash).
    pub(crate) fn open(buffers: PathBuf) -> io::Result<Self> {
        let _ = std::fs::remove_dir_all(&buffers);
        std::fs::create_dir_all(&buffers)?;
        Ok(Handles {
            table: Mutex::default(),
            next: AtomicU64::new(1),
            buffers: buffers.into(),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Shared>> {
        self.table.lock().expect("handle table lock poisoned")
    }

    /// Registers a handle; returns its number and a shared reference.
    pub(crate) fn insert(&self, handle: Handle) -> (u64, Shared) {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Mutex::new(handle));
        self.table().insert(fh, shared.clone());
        (fh, shared)
    }

    /// The handle with this number.
    pub(crate) fn get(&self, fh: u64) -> Option<Shared> {
        self.table().get(&fh).cloned()
    }

    /// Forgets a handle (its write buffer is deleted when the last reference goes).
    pub(crate) fn remove(&self, fh: u64) {
        self.table().remove(&fh);
    }

    /// A write handle for `ino`: the one already open on this node if there is one (so two
    /// writers of a file — two loggers appending — share one buffer instead of the last
    /// close winning), truncated if `truncate`; else a new one from `make`. `exists` says,
    /// when joining, whether the file is in the tree now: a writer joined after the file was
    /// deleted (its last handle's release can arrive after the next open) must create it
    /// again, not skip its commit as if the file had been deleted under it.
    pub(crate) fn open_writer(
        &self,
        ino: u64,
        truncate: bool,
        exists: impl FnOnce() -> bool,
        make: impl FnOnce() -> crate::Result<Handle>,
    ) -> crate::Result<(u64, Shared)> {
        let Some(existing) = self.writer_of(ino) else {
            return make().map(|handle| self.insert(handle));
        };
        let exists = exists();
        {
            let mut handle = lock(&existing);
            match &mut *handle {
                Handle::Write(w) if exists => w.existed = true,
                _ => handle.recreate(),
            }
            if truncate {
                handle
                    .resize(0)
                    .map_err(|e| crate::Error::io("truncate", io::Error::from_raw_os_error(e)))?;
            }
        }
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.table().insert(fh, existing.clone());
        Ok((fh, existing))
    }

    /// An open write handle of `ino`, if any.
    pub(crate) fn writer_of(&self, ino: u64) -> Option<Shared> {
        self.table()
            .values()
            .find(|h| matches!(&*lock(h), Handle::Write(w) if w.ino == ino))
            .cloned()
    }

    /// `ino` as its open writer sees it, if one is open.
    pub(crate) fn writing(&self, ino: u64) -> Option<Seen> {
        self.table().values().find_map(|h| match &*lock(h) {
            handle @ Handle::Write(w) if w.ino == ino => handle.seen(),
            _ => None,
        })
    }

    /// `ino` as a handle open on it sees it, its writer's view first: what `fstat` shows of
    /// a file unlinked while open.
    pub(crate) fn open_view(&self, ino: u64) -> Option<Seen> {
        self.writing(ino).or_else(|| {
            self.table().values().find_map(|h| match &*lock(h) {
                handle @ Handle::Read(i, _) if *i == ino => handle.seen(),
                _ => None,
            })
        })
    }

    /// Inodes written through this mount that are not in the tree yet (created, not yet
    /// committed): `readdir` lists them, `unlink` and `rename` find them.
    pub(crate) fn created(&self) -> Vec<u64> {
        let mut inos: Vec<u64> = self
            .table()
            .values()
            .filter_map(|h| match &*lock(h) {
                Handle::Write(w) if !w.existed => Some(w.ino),
                _ => None,
            })
            .collect();
        inos.dedup();
        inos
    }

    /// A write handle for `ino` over the `committed` file (`None`: it does not exist yet),
    /// reading nothing of it if `truncate`. Nothing is copied: the handle reads the committed
    /// file where it has not written.
    pub(crate) fn new_writer(
        &self,
        ino: u64,
        committed: Option<ReadFile>,
        truncate: bool,
    ) -> io::Result<Handle> {
        let buffer = memory_file()?;
        let existed = committed.is_some();
        let size = match (&committed, truncate) {
            (Some(base), false) => base.metadata()?.len(),
            _ => 0,
        };
        let cut = (truncate || !existed).then_some(0);
        Ok(Handle::Write(Writer {
            ino,
            buffer,
            buffer_path: None,
            spill_dir: self.buffers.clone(),
            base: committed.filter(|_| !truncate),
            base_limit: size,
            written: Ranges::default(),
            touched: Ranges::default(),
            cut,
            size,
            dirty: truncate,
            version: 0,
            mtime: None,
            attempt: None,
            existed,
        }))
    }
}

/// Locks a shared handle.
pub(crate) fn locked(h: &Shared) -> std::sync::MutexGuard<'_, Handle> {
    lock(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::recycle::Recycler;

    struct Fixture {
        dir: tempfile::TempDir,
        handles: Handles,
        recycler: Arc<Recycler>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let handles = Handles::open(dir.path().join("buffers")).unwrap();
        Fixture {
            dir,
            handles,
            recycler: Arc::default(),
        }
    }

    impl Fixture {
        /// A committed file with these contents, opened as a writer's base.
        fn committed(&self, contents: &[u8]) -> ReadFile {
            let path = self.dir.path().join("committed");
            std::fs::write(&path, contents).unwrap();
            self.recycler.open_follow(|| File::open(&path)).unwrap()
        }
    }

    fn view(h: &Shared) -> Vec<u8> {
        let mut buf = vec![0xAA; 64];
        let n = locked(h).read_at(&mut buf, 0).unwrap();
        buf.truncate(n);
        buf
    }

    fn patch_of(p: &Pending) -> (Option<u64>, u64, Vec<Span>, Vec<Span>) {
        match &p.change {
            Change::Patch { layout, spans } => (layout.cut, layout.size, layout.zeros.clone(), spans.clone()),
            Change::Whole => panic!("expected a patch"),
        }
    }

    /// A small file's buffer lives in memory (no file in the buffer directory, so creating
    /// many small files allocates no inodes for buffers); a write past `IN_MEMORY` moves it
    /// to disk with its bytes and holes, and the commit still reads it whole.
    #[test]
    fn small_buffers_stay_in_memory_and_large_ones_move_to_disk() {
        let f = fixture();
        let buffers = || std::fs::read_dir(f.dir.path().join("buffers")).unwrap().count();
        let (fh, h) = f.handles.insert(f.handles.new_writer(9, None, true).unwrap());
        locked(&h).write_at(b"head", 0).unwrap();
        locked(&h).write_at(b"tail", IN_MEMORY - 4).unwrap();
        assert_eq!(buffers(), 0, "a file of IN_MEMORY bytes is buffered in memory");
        let before = locked(&h).take_pending().unwrap().unwrap();

        locked(&h).write_at(b"far", 3 * IN_MEMORY).unwrap();
        assert_eq!(buffers(), 1, "a write past IN_MEMORY moved the buffer to disk");
        let mut got = vec![0u8; 4];
        assert_eq!(locked(&h).read_at(&mut got, IN_MEMORY - 4).unwrap(), 4);
        assert_eq!(got, b"tail", "bytes written before the move are kept");
        let pending = locked(&h).take_pending().unwrap().unwrap();
        assert_eq!(pending.size, 3 * IN_MEMORY + 3);
        let (cut, size, _zeros, spans) = patch_of(&pending);
        assert_eq!((cut, size), (Some(0), 3 * IN_MEMORY + 3));
        let sent: u64 = spans.iter().map(|s| s.1).sum();
        assert!(
            sent < 64 << 10,
            "only the written blocks travel, not the holes: {spans:?}"
        );
        let blocks = std::os::unix::fs::MetadataExt::blocks(&pending.contents.metadata().unwrap());
        assert!(blocks < 1024, "holes stay holes on disk: {blocks} blocks");
        let mut head = [0u8; 4];
        pending.contents.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(&head, b"head");
        // A commit taken before the move still reads the memory buffer.
        before.contents.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(&head, b"head");

        f.handles.remove(fh);
        drop((h, pending, before));
        assert_eq!(buffers(), 0, "the disk buffer is deleted with the handle");
    }

    /// A writer copies nothing at open, reads the committed file where it has not written,
    /// and commits only what it changed.
    #[test]
    fn a_writer_sends_what_it_changed() {
        let f = fixture();
        let base = f.committed(b"old contents");
        let (fh, h) = f
            .handles
            .insert(f.handles.new_writer(7, Some(base), false).unwrap());
        assert!(!locked(&h).is_dirty(), "opening without O_TRUNC changes nothing");
        assert_eq!(f.handles.writing(7).map(|w| w.size), Some(12));
        locked(&h).write_at(b"new", 0).unwrap();
        assert_eq!(view(&h), b"new contents");
        let pending = locked(&h).take_pending().unwrap().expect("dirty");
        assert_eq!(patch_of(&pending), (None, 12, vec![], vec![Span(0, 3)]));
        let retry = locked(&h).take_pending().unwrap().unwrap();
        assert_eq!(
            retry.req, pending.req,
            "a retry of the same version is the same request"
        );
        locked(&h).committed(pending.version);
        assert!(locked(&h).take_pending().unwrap().is_none(), "committed once");

        // Cut to 2, lengthened to 6, a byte written at 4: "ol\0\0x\0".
        locked(&h).resize(2).unwrap();
        locked(&h).resize(6).unwrap();
        locked(&h).write_at(b"x", 4).unwrap();
        assert_eq!(view(&h), b"ne\0\0x\0");
        let pending = locked(&h).take_pending().unwrap().unwrap();
        assert_ne!(pending.req, retry.req, "new contents are a new request");
        assert_eq!(patch_of(&pending), (Some(2), 6, vec![], vec![Span(4, 1)]));
        // A write while that commit is in flight keeps everything pending.
        locked(&h).write_at(b"y", 5).unwrap();
        locked(&h).committed(pending.version);
        let again = locked(&h).take_pending().unwrap().unwrap();
        assert_eq!(patch_of(&again), (Some(2), 6, vec![], vec![Span(4, 2)]));
        locked(&h).committed(again.version);

        // A punched range travels as a hole; far offsets cost nothing.
        let far = 1u64 << 33;
        locked(&h).write_at(b"z", far).unwrap();
        locked(&h)
            .allocate(0, 4096, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
            .unwrap();
        assert_eq!(
            locked(&h).allocate(0, 1, libc::FALLOC_FL_PUNCH_HOLE),
            Err(libc::EOPNOTSUPP),
            "a punch must keep the size"
        );
        let pending = locked(&h).take_pending().unwrap().unwrap();
        assert_eq!(
            patch_of(&pending),
            (None, far + 1, vec![Span(0, 4096)], vec![Span(far, 1)]),
        );
        assert_eq!(&view(&h)[..6], &[0; 6]);
        assert_eq!(
            locked(&h).seek(0, true).unwrap(),
            Some(far),
            "SEEK_DATA skips the hole"
        );
        assert_eq!(locked(&h).seek(0, false).unwrap(), Some(0));
        assert_eq!(
            locked(&h).seek(far + 1, true).unwrap(),
            None,
            "ENXIO past the end"
        );
        f.handles.remove(fh);
        drop((h, pending, again, retry));
        assert_eq!(
            std::fs::read_dir(f.dir.path().join("buffers")).unwrap().count(),
            0,
            "buffer deleted"
        );
    }

    /// Past a cut, the committed file's bytes are a hole: `SEEK_HOLE` finds it there.
    #[test]
    fn a_cut_leaves_a_hole_seek_can_find() {
        let f = fixture();
        let base = f.committed(b"old contents");
        let (_, h) = f
            .handles
            .insert(f.handles.new_writer(9, Some(base), false).unwrap());
        locked(&h).resize(4).unwrap();
        locked(&h).resize(8).unwrap();
        assert_eq!(view(&h), b"old \0\0\0\0");
        assert_eq!(locked(&h).seek(0, false).unwrap(), Some(4));
        assert_eq!(locked(&h).seek(0, true).unwrap(), Some(0));
        assert_eq!(locked(&h).seek(5, true).unwrap(), None);
    }

    /// Rewriting a file from empty commits it whole (one `file:write`), and an extension
    /// by `fallocate` lengthens it.
    #[test]
    fn a_rewrite_from_empty_is_a_whole_write() {
        let f = fixture();
        let base = f.committed(b"old");
        let (_, h) = f
            .handles
            .insert(f.handles.new_writer(3, Some(base), true).unwrap());
        locked(&h).write_at(b"brand new", 0).unwrap();
        assert_eq!(view(&h), b"brand new");
        let pending = locked(&h).take_pending().unwrap().unwrap();
        assert!(matches!(pending.change, Change::Whole));
        assert_eq!(pending.size, 9);
        locked(&h).allocate(0, 20, 0).unwrap();
        assert_eq!(view(&h).len(), 20);
        assert!(matches!(
            locked(&h).take_pending().unwrap().unwrap().change,
            Change::Patch { .. }
        ));
    }

    /// A file deleted, then created again through the mount before the last handle's release
    /// arrived: the new writer joins the old buffer, and its commit must create the file, not
    /// be skipped as the commit of a file deleted under it (the fault suite lost such writes),
    /// and must carry the committed bytes it still shows, not only its own.
    #[test]
    fn a_writer_joined_after_a_delete_creates_the_file() {
        let f = fixture();
        let make = || {
            Ok(f.handles
                .new_writer(3, Some(f.committed(b"old!")), false)
                .unwrap())
        };
        let (_, first) = f.handles.open_writer(3, false, || true, make).unwrap();
        assert!(locked(&first).take_pending().unwrap().is_none());
        locked(&first).write_at(b"x", 0).unwrap();
        assert!(locked(&first).take_pending().unwrap().unwrap().existing);
        let (_, joined) = f
            .handles
            .open_writer(3, false, || false, || unreachable!())
            .unwrap();
        assert!(Arc::ptr_eq(&first, &joined), "one buffer per inode");
        let pending = locked(&joined).take_pending().unwrap().unwrap();
        assert!(!pending.existing, "the file is gone: this commit creates it");
        assert!(matches!(pending.change, Change::Whole));
        let mut all = vec![0; 4];
        pending.contents.read_exact_at(&mut all, 0).unwrap();
        assert_eq!(&all, b"xld!");
    }
}
