//! Open files. A read handle pins the version of the file that was current at `open`; a write
//! handle buffers the contents in a local file (disk, not memory) until they are committed.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::raft::command::RequestId;
use crate::store::recycle::ReadFile;

/// One open file.
pub(crate) enum Handle {
    /// Opened for reading.
    Read(ReadFile),
    /// Opened for writing.
    Write(Writer),
}

/// Buffered contents of a file opened for writing.
pub(crate) struct Writer {
    /// The inode being written.
    pub ino: u64,
    buffer: File,
    buffer_path: PathBuf,
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

impl Writer {
    fn changed(&mut self) {
        self.dirty = true;
        self.version += 1;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.buffer_path);
    }
}

/// What a commit sends: the inode, a handle on the buffered contents, and the time to stamp.
pub(crate) struct Pending {
    /// The inode written.
    pub ino: u64,
    /// The buffered contents.
    pub contents: File,
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
    /// The file reads are served from.
    pub(crate) fn file(&self) -> &File {
        match self {
            Handle::Read(file) => file,
            Handle::Write(w) => &w.buffer,
        }
    }

    /// Whether uncommitted writes are buffered.
    pub(crate) fn is_dirty(&self) -> bool {
        matches!(self, Handle::Write(Writer { dirty: true, .. }))
    }

    /// Buffers `data` at `offset`; EBADF on a read handle.
    pub(crate) fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), libc::c_int> {
        match self {
            Handle::Write(w) => {
                w.buffer
                    .write_all_at(data, offset)
                    .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                w.changed();
                Ok(())
            }
            Handle::Read(_) => Err(libc::EBADF),
        }
    }

    /// Buffers `data` at the end (a write to a file opened with `O_APPEND`).
    pub(crate) fn append(&mut self, data: &[u8]) -> Result<(), libc::c_int> {
        let end = self
            .file()
            .metadata()
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?
            .len();
        self.write_at(data, end)
    }

    /// Sets the buffered size; EBADF on a read handle.
    pub(crate) fn resize(&mut self, size: u64) -> Result<(), libc::c_int> {
        match self {
            Handle::Write(w) => {
                w.buffer
                    .set_len(size)
                    .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                w.changed();
                Ok(())
            }
            Handle::Read(_) => Err(libc::EBADF),
        }
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
            }
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
    buffers: PathBuf,
}

fn lock(h: &Shared) -> std::sync::MutexGuard<'_, Handle> {
    h.lock().expect("handle lock poisoned")
}

impl Handles {
    /// A table whose write buffers live in `buffers` (emptied first: leftovers of a crash).
    pub(crate) fn open(buffers: PathBuf) -> io::Result<Self> {
        let _ = std::fs::remove_dir_all(&buffers);
        std::fs::create_dir_all(&buffers)?;
        Ok(Handles {
            table: Mutex::default(),
            next: AtomicU64::new(1),
            buffers,
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
            if let Handle::Write(w) = &mut *handle {
                w.existed = exists;
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

    /// The size of `ino`'s buffered contents, if some handle is writing it.
    pub(crate) fn buffered_size(&self, ino: u64) -> Option<u64> {
        self.table().values().find_map(|h| match &*lock(h) {
            Handle::Write(w) if w.ino == ino => w.buffer.metadata().ok().map(|m| m.len()),
            _ => None,
        })
    }

    /// A write handle for `ino`, starting from the `committed` contents unless `truncate`
    /// (or the file does not exist yet).
    pub(crate) fn new_writer(
        &self,
        ino: u64,
        committed: Option<impl io::Read>,
        truncate: bool,
    ) -> io::Result<Handle> {
        let buffer_path = self.buffers.join(format!("{:016x}", rand::random::<u64>()));
        let mut buffer = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&buffer_path)?;
        let existed = committed.is_some();
        if let (false, Some(mut committed)) = (truncate, committed) {
            io::copy(&mut committed, &mut buffer)?;
        }
        Ok(Handle::Write(Writer {
            ino,
            buffer,
            buffer_path,
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

    /// A file deleted, then created again through the mount before the last handle's release
    /// arrived: the new writer joins the old buffer, and its commit must create the file, not
    /// be skipped as the commit of a file deleted under it (the fault suite lost such writes).
    #[test]
    fn a_writer_joined_after_a_delete_creates_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let handles = Handles::open(dir.path().join("buffers")).unwrap();
        let make = || Ok(handles.new_writer(3, Some(&b"old"[..]), false).unwrap());
        let (_, first) = handles.open_writer(3, false, || true, make).unwrap();
        assert!(locked(&first).take_pending().unwrap().is_none());
        locked(&first).write_at(b"x", 0).unwrap();
        assert!(locked(&first).take_pending().unwrap().unwrap().existing);
        let (_, joined) = handles.open_writer(3, true, || false, || unreachable!()).unwrap();
        assert!(Arc::ptr_eq(&first, &joined), "one buffer per inode");
        locked(&joined).write_at(b"new", 0).unwrap();
        let pending = locked(&joined).take_pending().unwrap().unwrap();
        assert!(!pending.existing, "the file is gone: this commit creates it");
    }

    #[test]
    fn writers_buffer_on_disk_and_commit_once() {
        let dir = tempfile::tempdir().unwrap();
        let committed = dir.path().join("committed");
        std::fs::write(&committed, b"old contents").unwrap();
        let handles = Handles::open(dir.path().join("buffers")).unwrap();
        let (fh, h) = handles.insert(
            handles
                .new_writer(7, Some(File::open(&committed).unwrap()), false)
                .unwrap(),
        );
        assert!(!locked(&h).is_dirty(), "opening without O_TRUNC changes nothing");
        locked(&h).write_at(b"new", 0).unwrap();
        assert_eq!(handles.buffered_size(7), Some(12));
        assert!(locked(&h).set_pending_mtime(5));
        let pending = locked(&h).take_pending().unwrap().expect("dirty");
        let retry = locked(&h)
            .take_pending()
            .unwrap()
            .expect("still pending until committed");
        assert_eq!(
            retry.req, pending.req,
            "a retry of the same version is the same request"
        );
        locked(&h).write_at(b"N", 0).unwrap();
        let changed = locked(&h).take_pending().unwrap().unwrap();
        assert_ne!(changed.req, pending.req, "new contents are a new request");
        locked(&h).write_at(b"n", 0).unwrap();
        let pending = locked(&h).take_pending().unwrap().unwrap();
        locked(&h).committed(pending.version);
        assert_eq!((pending.ino, pending.mtime), (7, Some(5)));
        let mut buf = vec![0; 12];
        pending.contents.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"new contents");
        assert!(locked(&h).take_pending().unwrap().is_none(), "committed once");
        handles.remove(fh);
        drop((h, pending));
        assert_eq!(
            std::fs::read_dir(dir.path().join("buffers")).unwrap().count(),
            0,
            "buffer deleted"
        );
    }
}
