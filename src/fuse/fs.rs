//! The FUSE filesystem: each kernel request is translated into a read of the local replica
//! or an operation through [`Node`], and replied to exactly once.
//!
//! The request loop (one thread, fuser's) never waits on consensus. Cheap local answers —
//! lookup, getattr, readdir, read, buffered write — reply inline; anything that needs the
//! leader (open's read barrier, flush/fsync/release commits, mkdir, unlink, rename, …) moves
//! its reply object into a task on the tokio runtime and replies from there, so many writers
//! through one mount proceed in parallel.
//!
//! Writes go to a per-handle buffer file under `DATA_DIR/fuse/` (disk, not memory) and are
//! proposed at `flush`, `fsync` and `release`, in chunks of `--chunk-size`. `close()` and
//! `fsync()` therefore return only after the contents are committed by a majority, and fail
//! with EIO if they cannot be. `open()`, and a lookup that finds nothing locally, first pass
//! a read barrier through the leader (unless `--stale-reads`), so they see every write whose
//! `close()` returned before they began; a read handle keeps the version it opened.
//!
//! The kernel caches entries and attributes (for [`TTL`]), so `stat`, `ls -l` and
//! `git status` are answered without a request per name. The cache is kept exact by the
//! invalidation thread (see [`super`]): every applied change, from any node, drops the
//! attributes and pages of what it touched and the entries of names it removed; `open`
//! waits until the invalidations of everything applied before it have been sent. A name
//! that is not there is never cached (a negative lookup asks again), so a file created on
//! another node is found as soon as it is applied here, or at once after a read barrier.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use fuser::{
    FileType, Filesystem, KernelConfig, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};
use tokio::runtime::Handle as Runtime;
use tracing::debug;

use super::errno::errno;
use super::handles::{locked, Handle, Handles};
use super::inodes;
use super::shared::Shared;
use crate::error::{Error, Result};
use crate::names::{self, child_path};
use crate::node::Node;

/// How long the kernel may cache attributes and entries. Invalidation, not this timeout,
/// keeps the cache right; the timeout only bounds how long a notice the kernel refused (it
/// does not happen, but a kernel is not ours to prove) could leave it stale.
const TTL: Duration = Duration::from_secs(30);

/// The `fuser::Filesystem` implementation.
pub(crate) struct RaftFs {
    shared: Arc<Shared>,
    runtime: Runtime,
}

impl RaftFs {
    /// A filesystem over `node`, buffering writes in `buffers` (emptied first).
    pub(crate) fn new(
        node: Arc<Node>,
        runtime: Runtime,
        buffers: PathBuf,
        stale_reads: bool,
    ) -> Result<Self> {
        let handles = Handles::open(buffers.clone())
            .map_err(|e| Error::io(format!("create {}", buffers.display()), e))?;
        let shared = Shared {
            node,
            inodes: Mutex::default(),
            handles,
            stale_reads,
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
            fence: RwLock::default(),
            handled: tokio::sync::watch::Sender::new(0),
        };
        Ok(RaftFs {
            shared: Arc::new(shared),
            runtime,
        })
    }

    /// The shared state, for the cache-invalidation thread.
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Runs `f` on the runtime; it owns the reply and answers when consensus has.
    fn later(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(f);
    }
}

impl Filesystem for RaftFs {
    fn init(
        &mut self,
        _req: &Request<'_>,
        _config: &mut KernelConfig,
    ) -> std::result::Result<(), libc::c_int> {
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        crate::metrics::events().fuse_op("lookup");
        let path = match self.shared.child(parent, name) {
            Ok(p) => p,
            Err(e) => return failed("lookup", reply).error(e),
        };
        let fence = self.shared.replying();
        match self.shared.lookup_attr(&path) {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            // Absent here may mean "not applied here yet": a name created elsewhere before
            // this lookup began must be found (close-to-open), so ask the leader first.
            // On a leader whose files are current, absent here is absent.
            Err(libc::ENOENT) if !self.shared.stale_reads && !self.shared.current_here() => {
                let shared = self.shared.clone();
                self.later(async move {
                    let barrier = shared.node.read_barrier().await;
                    let _fence = shared.replying();
                    match barrier
                        .map_err(|e| errno(&e))
                        .and_then(|()| shared.lookup_attr(&path))
                    {
                        Ok(attr) => reply.entry(&TTL, &attr, 0),
                        Err(e) => failed("lookup", reply).error(e),
                    }
                });
            }
            Err(e) => failed("lookup", reply).error(e),
        }
        drop(fence);
    }

    /// The kernel dropped its cached entries: so does the inode table.
    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        self.shared.forget(ino, nlookup);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, fh: Option<u64>, reply: ReplyAttr) {
        crate::metrics::events().fuse_op("getattr");
        let _fence = self.shared.replying();
        match self.shared.path(ino).and_then(|p| self.shared.stat(ino, &p)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            // Unlinked while open: `fstat` answers from the handle.
            Err(libc::ENOENT) => match self.shared.open_stat(ino, fh) {
                Some(attr) => reply.attr(&TTL, &attr),
                None => failed("getattr", reply).error(libc::ENOENT),
            },
            Err(e) => failed("getattr", reply).error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        crate::metrics::events().fuse_op("setattr");
        let shared = self.shared.clone();
        let path = match shared.path(ino) {
            Ok(p) => p,
            Err(e) => return failed("setattr", reply).error(e),
        };
        if let Err(e) = shared.check_unreplicated(ino, &path, mode, uid, gid) {
            return failed("setattr", reply).error(e);
        }
        let open_writer = fh
            .and_then(|fh| shared.handle(fh).ok())
            .filter(|h| matches!(&*locked(h), Handle::Write(_)))
            .or_else(|| shared.handles.writer_of(ino));
        if size.is_none() && shared.times_settled_here(open_writer.as_ref(), atime, mtime) {
            // Nothing to replicate (a mode or owner the file already has, an mtime kept by
            // its open writer): answered here, without a trip through the runtime.
            let _fence = shared.replying();
            return match shared.stat(ino, &path) {
                Ok(attr) => reply.attr(&TTL, &attr),
                Err(e) => failed("setattr", reply).error(e),
            };
        }
        self.later(async move {
            let result = async {
                if let Some(size) = size {
                    shared.resize(ino, &path, open_writer.as_ref(), size).await?;
                    if open_writer.is_none() {
                        return Ok(());
                    }
                }
                shared.set_times(&path, open_writer.as_ref(), atime, mtime).await
            }
            .await;
            let _fence = shared.replying();
            match result
                .map_err(|e| errno(&e))
                .and_then(|()| shared.stat(ino, &path))
            {
                Ok(attr) => reply.attr(&TTL, &attr),
                Err(e) => failed("setattr", reply).error(e),
            }
        });
    }

    fn mknod(
        &mut self,
        _req: &Request<'_>,
        _parent: u64,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        crate::metrics::events().fuse_op("mknod");
        failed("mknod", reply).error(libc::EPERM);
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        crate::metrics::events().fuse_op("mkdir");
        let shared = self.shared.clone();
        let path = match shared.child(parent, name) {
            Ok(p) => p,
            Err(e) => return failed("mkdir", reply).error(e),
        };
        self.later(async move {
            let made = shared.node.mkdir(&path).await;
            let _fence = shared.replying();
            match made
                .map_err(|e| errno(&e))
                .and_then(|()| shared.lookup_attr(&path))
            {
                Ok(attr) => reply.entry(&TTL, &attr, 0),
                Err(e) => failed("mkdir", reply).error(e),
            }
        });
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        crate::metrics::events().fuse_op("unlink");
        self.remove(parent, name, false, reply);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        crate::metrics::events().fuse_op("rmdir");
        self.remove(parent, name, true, reply);
    }

    fn symlink(
        &mut self,
        _req: &Request<'_>,
        _parent: u64,
        _link: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        crate::metrics::events().fuse_op("symlink");
        failed("symlink", reply).error(libc::EPERM);
    }

    fn link(&mut self, _req: &Request<'_>, _ino: u64, _newparent: u64, _newname: &OsStr, reply: ReplyEntry) {
        crate::metrics::events().fuse_op("link");
        failed("link", reply).error(libc::EPERM);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        crate::metrics::events().fuse_op("rename");
        if flags & libc::RENAME_EXCHANGE != 0 {
            return failed("rename", reply).error(libc::EINVAL);
        }
        let shared = self.shared.clone();
        let (from, to) = match (shared.child(parent, name), shared.child(newparent, newname)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return failed("rename", reply).error(e),
        };
        if flags & libc::RENAME_NOREPLACE != 0 && shared.node.store().stat(&to).is_ok() {
            return failed("rename", reply).error(libc::EEXIST);
        }
        let created = shared
            .known(&from)
            .filter(|ino| shared.handles.created().contains(ino))
            .and_then(|ino| shared.handles.writer_of(ino));
        self.later(async move {
            // Created here and not yet committed: commit it first, so there is a file to move.
            if let Some(writer) = created {
                if let Err(e) = shared.commit(&writer).await {
                    return failed("rename", reply).error(errno(&e));
                }
            }
            match shared.node.rename(&from, &to).await {
                Ok(()) => {
                    // Unless the invalidation thread has followed it already.
                    shared
                        .inodes
                        .lock()
                        .expect("inode lock")
                        .follow_rename(&from, &to);
                    reply.ok()
                }
                Err(e) => failed("rename", reply).error(errno(&e)),
            }
        });
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        crate::metrics::events().fuse_op("open");
        let shared = self.shared.clone();
        let path = match shared.path(ino) {
            Ok(p) => p,
            Err(e) => return failed("open", reply).error(e),
        };
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = flags & libc::O_TRUNC != 0;
        let open = move |shared: &Shared| -> Result<u64> {
            if writing {
                return shared.open_writer(ino, &path, truncate);
            }
            let file = shared.node.store().open_file(&path)?;
            Ok(shared.handles.insert(Handle::Read(ino, file)).0)
        };
        // A reader keeps the version it opened, but the kernel keeps one size per inode and
        // cuts cached reads at it: once it learns a newer, shorter size, a page-cached read of
        // the older version would come back truncated. Direct I/O hands every read of this
        // handle to us, whole (private mappings still work).
        let flags = if writing {
            0
        } else {
            fuser::consts::FOPEN_DIRECT_IO
        };
        let answer = move |opened: Result<u64>, reply: ReplyOpen| match opened {
            Ok(fh) => reply.opened(fh, flags),
            Err(e) => failed("open", reply).error(errno(&e)),
        };
        if shared.current_here() {
            return answer(open(&shared), reply);
        }
        self.later(async move {
            let opened = async {
                if !shared.stale_reads {
                    shared.node.read_barrier().await?;
                }
                // The kernel's cached size and pages must be as new as what this opens.
                shared.settled().await;
                open(&shared)
            }
            .await;
            answer(opened, reply);
        });
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        crate::metrics::events().fuse_op("create");
        let shared = &self.shared;
        let _fence = shared.replying();
        let created = shared.child(parent, name).and_then(|path| {
            // One hold of the table from the number's choice until its handle is open: the
            // invalidation of a change applied just before (the removal of an earlier file
            // of this name) would otherwise find the name numbered but no handle created
            // for it, and retire the number — and the new file's contents with it.
            let mut table = shared.inodes.lock().expect("inode lock");
            let ino = table.ino_avoiding(&path, |n| shared.handles.writer_of(n).is_some());
            let opened = shared
                .open_writer(ino, &path, true)
                .map_err(|e| errno(&e))
                .and_then(|fh| Ok((fh, shared.stat(ino, &path)?)));
            match &opened {
                Ok(_) => table.looked_up(ino, false),
                Err(_) => table.unused(&path),
            }
            opened
        });
        match created {
            Ok((fh, attr)) => reply.created(&TTL, &attr, 0, fh, 0),
            Err(e) => failed("create", reply).error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        crate::metrics::events().fuse_op("read");
        let handle = match self.shared.handle(fh) {
            Ok(h) => h,
            Err(e) => return failed("read", reply).error(e),
        };
        let mut buf = vec![0; size as usize];
        let filled = match locked(&handle).read_at(&mut buf, offset as u64) {
            Ok(n) => n,
            Err(_) => return failed("read", reply).error(libc::EIO),
        };
        reply.data(&buf[..filled]);
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        flags: i32,
        _lock: Option<u64>,
        reply: ReplyWrite,
    ) {
        crate::metrics::events().fuse_op("write");
        let handle = match self.shared.handle(fh) {
            Ok(h) => h,
            Err(e) => return failed("write", reply).error(e),
        };
        let end = (offset as u64).saturating_add(data.len() as u64);
        if flags & libc::O_APPEND == 0 && end > self.shared.node.config().max_file_size {
            return failed("write", reply).error(libc::EFBIG);
        }
        // A shared buffer's end is known only here, not to the kernel.
        let written = if flags & libc::O_APPEND != 0 {
            locked(&handle).append(data)
        } else {
            locked(&handle).write_at(data, offset as u64)
        };
        match written {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => failed("write", reply).error(e),
        }
    }

    /// Buffered like a write: lengthening, punching or zeroing a range is committed with the
    /// rest at close, and travels as a length or holes, not as zeros.
    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        crate::metrics::events().fuse_op("fallocate");
        let handle = match self.shared.handle(fh) {
            Ok(h) => h,
            Err(e) => return failed("fallocate", reply).error(e),
        };
        let (Ok(offset), Ok(length)) = (u64::try_from(offset), u64::try_from(length)) else {
            return failed("fallocate", reply).error(libc::EINVAL);
        };
        let end = offset.saturating_add(length);
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && end > self.shared.node.config().max_file_size {
            return failed("fallocate", reply).error(libc::EFBIG);
        }
        let allocated = locked(&handle).allocate(offset, length, mode);
        match allocated {
            Ok(()) => reply.ok(),
            Err(e) => failed("fallocate", reply).error(e),
        }
    }

    /// `SEEK_DATA` and `SEEK_HOLE` (the kernel answers the other kinds itself): holes are
    /// found as the handle sees the file.
    fn lseek(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        crate::metrics::events().fuse_op("lseek");
        let handle = match self.shared.handle(fh) {
            Ok(h) => h,
            Err(e) => return failed("lseek", reply).error(e),
        };
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return failed("lseek", reply).error(libc::EINVAL),
        };
        let Ok(at) = u64::try_from(offset) else {
            return failed("lseek", reply).error(libc::ENXIO);
        };
        let found = locked(&handle).seek(at, data);
        match found {
            Ok(Some(found)) => reply.offset(found as i64),
            Ok(None) => failed("lseek", reply).error(libc::ENXIO),
            Err(e) => failed("lseek", reply).error(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _lock: u64, reply: ReplyEmpty) {
        crate::metrics::events().fuse_op("flush");
        self.commit_then("flush", fh, false, reply);
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _datasync: bool, reply: ReplyEmpty) {
        crate::metrics::events().fuse_op("fsync");
        self.commit_then("fsync", fh, false, reply);
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        crate::metrics::events().fuse_op("release");
        self.commit_then("release", fh, true, reply);
    }

    /// Like `open`, a listing begins with the read barrier: it shows every name committed
    /// anywhere before `opendir` (`ls` after another node's `close` sees the file).
    fn opendir(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        crate::metrics::events().fuse_op("opendir");
        if self.shared.stale_reads || self.shared.node.reads_current_here() {
            return reply.opened(0, 0);
        }
        let shared = self.shared.clone();
        self.later(async move {
            match shared.node.read_barrier().await {
                Ok(()) => reply.opened(0, 0),
                Err(e) => failed("opendir", reply).error(errno(&e)),
            }
        });
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        crate::metrics::events().fuse_op("readdir");
        let shared = &self.shared;
        let path = match shared.path(ino) {
            Ok(p) => p,
            Err(e) => return failed("readdir", reply).error(e),
        };
        let children = match shared.node.store().list(&path) {
            Ok(c) => c,
            Err(e) => return failed("readdir", reply).error(errno(&e)),
        };
        let parent_ino = shared.known(names::split(&path).0).unwrap_or(inodes::ROOT);
        let mut entries = vec![
            (ino, FileType::Directory, ".".to_string()),
            (parent_ino, FileType::Directory, "..".to_string()),
        ];
        {
            let table = shared.inodes.lock().expect("inode lock");
            for (name, stat) in children {
                let kind = if stat.is_dir {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                entries.push((table.listed(&child_path(&path, &name)), kind, name));
            }
            // Created here and not yet committed: listed, as on a local disk.
            for ino in shared.handles.created() {
                let Some(created) = table.path(ino) else { continue };
                let (parent, name) = names::split(created);
                if parent == path && !entries.iter().any(|e| e.2 == name) {
                    entries.push((ino, FileType::RegularFile, name.to_string()));
                }
            }
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        crate::metrics::events().fuse_op("statfs");
        let root = self.shared.node.store().root().to_path_buf();
        let c_path = match std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) {
            Ok(p) => p,
            Err(_) => return failed("statfs", reply).error(libc::EIO),
        };
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
            return failed("statfs", reply).error(libc::EIO);
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            names::MAX_COMPONENT as u32,
            st.f_frsize as u32,
        );
    }
}

impl RaftFs {
    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let op = if dir { "rmdir" } else { "unlink" };
        let shared = self.shared.clone();
        let path = match shared.child(parent, name) {
            Ok(p) => p,
            Err(e) => return failed(op, reply).error(e),
        };
        // Created here and never committed: nothing in the cluster to remove; the open
        // handle lives on without a name and its writes are dropped.
        let uncommitted = !dir
            && shared
                .known(&path)
                .is_some_and(|ino| shared.handles.created().contains(&ino))
            && shared.node.store().stat(&path).is_err();
        if uncommitted {
            shared.inodes.lock().expect("inode lock").forget_path(&path);
            return reply.ok();
        }
        self.later(async move {
            let result = if dir {
                shared.node.rmdir(&path).await
            } else {
                shared.node.unlink(&path).await
            };
            match result {
                Ok(()) => {
                    shared.inodes.lock().expect("inode lock").forget_path(&path);
                    reply.ok()
                }
                Err(e) => failed(op, reply).error(errno(&e)),
            }
        });
    }

    /// Commits a handle's buffer (if dirty), then replies; `release` also drops the handle.
    fn commit_then(&mut self, op: &'static str, fh: u64, release: bool, reply: ReplyEmpty) {
        let shared = self.shared.clone();
        let handle = match shared.handle(fh) {
            Ok(h) => h,
            Err(e) => return failed(op, reply).error(e),
        };
        if !locked(&handle).is_dirty() {
            if release {
                shared.handles.remove(fh);
            }
            return reply.ok();
        }
        self.later(async move {
            let result = shared.commit(&handle).await;
            if release {
                shared.handles.remove(fh);
            }
            // A `stat` after `close` shows the committed attributes, not ones cached before.
            shared.settled().await;
            match result {
                Ok(()) => reply.ok(),
                Err(e) => {
                    debug!(cause = %e, "commit failed");
                    failed(op, reply).error(errno(&e))
                }
            }
        });
    }
}

/// Counts a FUSE operation's error, then hands back its reply to answer with.
fn failed<R>(op: &'static str, reply: R) -> R {
    crate::metrics::events().fuse_error(op);
    reply
}
