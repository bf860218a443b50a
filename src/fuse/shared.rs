//! The state the FUSE request loop shares with the tasks that answer later: the node, the
//! inode table and the open handles, and the helpers both sides use to turn a path into
//! attributes, a write buffer or a commit.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, TimeOrNow};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::errno::errno;
use super::handles::{self, locked, Change, Handle, Handles};
use super::inodes::{attr, Inodes};
use crate::error::{Error, FileError, Result};
use crate::names::{self, child_path};
use crate::node::{How, Node};
use crate::store::Stat;

/// State shared by the request loop and the tasks that reply later.
pub(crate) struct Shared {
    pub(super) node: Arc<Node>,
    /// std lock: table edits only, never across an await.
    pub(super) inodes: Mutex<Inodes>,
    pub(super) handles: Handles,
    pub(super) stale_reads: bool,
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// Held (shared) from reading what an entry or attribute reply says until it is sent;
    /// the invalidation thread takes it (exclusively, then lets go) before it drops what a
    /// batch of changes touched. So a reply that read the state before a change was applied
    /// reaches the kernel before that change's invalidation, never after it: the kernel
    /// cannot keep a stale answer for the length of its cache timeout.
    pub(super) fence: RwLock<()>,
    /// How many change notices the invalidation thread has handled (counted as the feed
    /// counts what it sent).
    pub(super) handled: watch::Sender<u64>,
}

/// How long a reply waits for the invalidation thread before going ahead anyway.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);

impl Shared {
    /// Holds off the invalidation thread while a reply is read and sent (see `fence`).
    pub(super) fn replying(&self) -> RwLockReadGuard<'_, ()> {
        self.fence.read().expect("fence lock")
    }

    /// Whether a read may go ahead here and now, without the runtime: it needs no barrier
    /// (stale reads) or the node's files are current (see [`Node::reads_current_here`]),
    /// and the kernel has been told of every change applied (see [`settled`](Self::settled)).
    pub(super) fn current_here(&self) -> bool {
        let settled = *self.handled.borrow() >= self.node.store().changes().sent();
        settled && (self.stale_reads || self.node.reads_current_here())
    }

    /// Waits until the kernel has been told to drop whatever every change applied so far
    /// touched: after a read barrier, the kernel's cache is then as new as the local state.
    /// Never called while the kernel holds a directory lock for the request (lookup,
    /// create, mkdir, unlink, rmdir, rename): an entry invalidation takes that lock.
    pub(super) async fn settled(&self) {
        let target = self.node.store().changes().sent();
        let mut handled = self.handled.subscribe();
        let caught_up = handled.wait_for(|&n| n >= target);
        if tokio::time::timeout(SETTLE_LIMIT, caught_up).await.is_err() {
            warn!(
                target,
                "the kernel cache invalidation is behind; answering anyway"
            );
        }
    }

    /// The path of an inode, or ENOENT.
    pub(crate) fn path(&self, ino: u64) -> std::result::Result<String, libc::c_int> {
        self.inodes
            .lock()
            .expect("inode lock")
            .path(ino)
            .map(str::to_string)
            .ok_or(libc::ENOENT)
    }

    /// Known inode of a path, for invalidation.
    pub(crate) fn known(&self, path: &str) -> Option<u64> {
        self.inodes.lock().expect("inode lock").get(path)
    }

    pub(super) fn child(&self, parent: u64, name: &OsStr) -> std::result::Result<String, libc::c_int> {
        let name = name.to_str().ok_or(libc::EINVAL)?;
        let path = child_path(&self.path(parent)?, name);
        names::validate(&path).map_err(|e| errno(&e))?;
        Ok(path)
    }

    pub(super) fn stat(&self, ino: u64, path: &str) -> std::result::Result<FileAttr, libc::c_int> {
        let stat = match (self.node.store().stat(path), self.handles.writing(ino)) {
            (Ok(mut s), Some(seen)) => {
                s.size = seen.size;
                s.blocks = seen.blocks;
                // A time set while contents are pending shows before the commit carries it.
                s.mtime = seen.mtime.unwrap_or(s.mtime);
                s
            }
            (Ok(s), None) => s,
            // Created through this mount and not yet committed (one link), or removed from
            // the tree elsewhere while open here (none).
            (Err(_), Some(seen)) => stat_of(seen, if seen.committed { 0 } else { 1 }),
            (Err(e), None) => return Err(errno(&e)),
        };
        Ok(attr(ino, &stat, self.uid, self.gid))
    }

    /// Attributes of an open file whose name no longer resolves (unlinked while open): what
    /// the handle shows, with no links, as `fstat` reports on any filesystem.
    pub(super) fn open_stat(&self, ino: u64, fh: Option<u64>) -> Option<FileAttr> {
        let seen = fh
            .and_then(|fh| self.handles.get(fh))
            .and_then(|h| locked(&h).seen())
            .or_else(|| self.handles.open_view(ino))?;
        Some(attr(ino, &stat_of(seen, 0), self.uid, self.gid))
    }

    /// Modes and owners are not replicated: a chmod or chown that would change them fails
    /// with EPERM rather than succeed without effect (`chmod 600 secret` must not pretend).
    /// Setting what the file already shows is allowed, so `cp -p` and `tar` of files with
    /// the usual modes work.
    pub(super) fn check_unreplicated(
        &self,
        ino: u64,
        path: &str,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> std::result::Result<(), libc::c_int> {
        if mode.is_none() && uid.is_none() && gid.is_none() {
            return Ok(());
        }
        let current = self.stat(ino, path)?;
        let same_mode = mode.is_none_or(|m| m & 0o7777 == u32::from(current.perm));
        let same_owner = uid.is_none_or(|u| u == current.uid) && gid.is_none_or(|g| g == current.gid);
        if same_mode && same_owner {
            Ok(())
        } else {
            Err(libc::EPERM)
        }
    }

    /// truncate/ftruncate: resizes the open writer's buffer (committed at close), or for
    /// truncate(2) on a path with no writer, a temporary writer committed at once.
    pub(super) async fn resize(
        &self,
        ino: u64,
        path: &str,
        open_writer: Option<&handles::Shared>,
        size: u64,
    ) -> Result<()> {
        let limit = self.node.config().max_file_size;
        if size > limit {
            return Err(Error::TooLarge { limit });
        }
        let resize_err = |e| Error::io("resize", std::io::Error::from_raw_os_error(e));
        if let Some(handle) = open_writer {
            return locked(handle).resize(size).map_err(resize_err);
        }
        let (fh, h) = self.handles.insert(self.writer(ino, path, false)?);
        let resized = locked(&h).resize(size);
        let committed = match resized {
            Ok(()) => self.commit(&h).await,
            Err(e) => Err(resize_err(e)),
        };
        self.handles.remove(fh);
        committed
    }

    /// utimes: a modification time set while contents are uncommitted travels with them;
    /// otherwise it is replicated at once (`file:touch`). An access time is replicated at
    /// once, after any pending contents (whose commit would otherwise come after it).
    pub(super) async fn set_times(
        &self,
        path: &str,
        open_writer: Option<&handles::Shared>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Result<()> {
        if self.times_settled_here(open_writer, atime, mtime) {
            return Ok(());
        }
        if let (Some(writer), Some(_)) = (open_writer, atime) {
            self.commit(writer).await?;
        }
        self.node
            .touch(path, mtime.map(time_of), atime.map(time_of))
            .await
    }

    /// Whether a change of times needs nothing replicated: none was asked for, or only an
    /// mtime for a file open for writing, now recorded in the handle to travel with its
    /// commit. (`tar` sets both on every file it unpacks, before closing it.)
    pub(super) fn times_settled_here(
        &self,
        open_writer: Option<&handles::Shared>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> bool {
        match (atime, mtime, open_writer) {
            (None, None, _) => true,
            (None, Some(t), Some(writer)) => locked(writer).set_pending_mtime(time_of(t)),
            _ => false,
        }
    }

    /// The attributes of `path` for an entry reply, counting the lookup the kernel will
    /// hold; a name that is not there leaves no entry behind.
    pub(super) fn lookup_attr(&self, path: &str) -> std::result::Result<FileAttr, libc::c_int> {
        // One hold of the table from number to count, so a `forget` handled meanwhile (this
        // may run on a task while the request loop handles one) cannot drop the entry between.
        let mut table = self.inodes.lock().expect("inode lock");
        let ino = table.ino_avoiding(path, |n| self.handles.writer_of(n).is_some());
        let attr = self.stat(ino, path);
        match &attr {
            Ok(a) => table.looked_up(ino, a.kind == fuser::FileType::Directory),
            Err(_) => table.unused(path),
        }
        crate::metrics::events().fuse_inodes.set(table.len() as i64);
        attr
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub(super) fn forget(&self, ino: u64, n: u64) {
        let mut table = self.inodes.lock().expect("inode lock");
        table.forget(ino, n);
        crate::metrics::events().fuse_inodes.set(table.len() as i64);
    }

    pub(super) fn handle(&self, fh: u64) -> std::result::Result<handles::Shared, libc::c_int> {
        self.handles.get(fh).ok_or(libc::EBADF)
    }

    /// A new write handle for `path`, over its committed contents unless `truncate`.
    pub(super) fn writer(&self, ino: u64, path: &str, truncate: bool) -> Result<Handle> {
        let committed = match self.node.store().open_live(path) {
            Ok(file) => Some(file),
            Err(Error::File(FileError::NotFound(_))) => None,
            Err(e) => return Err(e),
        };
        self.handles
            .new_writer(ino, committed, truncate)
            .map_err(|e| Error::io(format!("write buffer for {path}"), e))
    }

    /// Opens `ino` for writing: joins this node's open writer of it, or starts one holding
    /// its committed contents (none if `truncate`). Returns the new handle number.
    pub(super) fn open_writer(&self, ino: u64, path: &str, truncate: bool) -> Result<u64> {
        let exists = || self.node.store().stat(path).is_ok_and(|s| !s.is_dir);
        let (fh, _) = self
            .handles
            .open_writer(ino, truncate, exists, || self.writer(ino, path, truncate))?;
        Ok(fh)
    }

    /// Proposes a handle's buffered contents if they changed since the last commit.
    pub(super) async fn commit(&self, handle: &handles::Shared) -> Result<()> {
        let pending = locked(handle)
            .take_pending()
            .map_err(|e| Error::io("clone write buffer", e))?;
        let Some(pending) = pending else { return Ok(()) };
        let mut how = How {
            mtime: pending.mtime.unwrap_or(0),
            req: Some(pending.req),
            existing: pending.existing,
        };
        // Unlinked through this mount while open: like a local file, its data goes with it.
        let Ok(mut path) = self.path(pending.ino) else {
            locked(handle).committed(pending.version);
            return Ok(());
        };
        let mut written = self.propose(&path, &pending, how).await;
        if let Err(Error::File(FileError::NotFound(_))) = &written {
            if pending.existing {
                // Renamed elsewhere, the rename not yet followed here? Catch up; if the file
                // has a new name, commit under it (as a new request: the failed one is
                // remembered with its answer).
                self.node.read_barrier().await?;
                self.settled().await;
                match self.path(pending.ino) {
                    Ok(moved) if moved != path => {
                        path = moved;
                        how.req = Some(rand::random());
                        written = self.propose(&path, &pending, how).await;
                    }
                    _ => {}
                }
            }
        }
        match written {
            Ok(()) => {}
            // Deleted on another node while open here: not re-created.
            Err(Error::File(FileError::NotFound(why))) if pending.existing => {
                debug!(why, "contents of a file removed while open dropped");
            }
            Err(e) => return Err(e),
        }
        locked(handle).committed(pending.version);
        Ok(())
    }
}

impl Shared {
    /// Proposes pending contents as `path`.
    async fn propose(&self, path: &str, pending: &handles::Pending, how: How) -> Result<()> {
        debug!(path, change = ?pending.change, "commit");
        match &pending.change {
            Change::Whole => {
                // A hole punched at the end leaves the buffer short of the length.
                let whole = &pending.contents;
                let short = whole.metadata().map(|m| m.len() < pending.size);
                if short.map_err(|e| Error::io("stat write buffer", e))? {
                    whole
                        .set_len(pending.size)
                        .map_err(|e| Error::io("extend write buffer", e))?;
                }
                self.node.write_file_from(path, whole, how).await
            }
            Change::Patch { layout, spans } => {
                self.node
                    .patch_file_from(path, layout.clone(), spans.clone(), &pending.contents, how)
                    .await
            }
        }
    }
}

/// A file's attributes as an open handle shows them.
fn stat_of(seen: handles::Seen, links: u64) -> Stat {
    let mtime = seen.mtime.unwrap_or_else(SystemTime::now);
    Stat {
        is_dir: false,
        size: seen.size,
        mtime,
        atime: seen.atime.unwrap_or(mtime),
        ctime: seen.ctime.unwrap_or_else(SystemTime::now),
        links,
        blocks: seen.blocks,
    }
}

/// A time a caller set, in nanoseconds since the epoch.
fn time_of(t: TimeOrNow) -> u64 {
    nanos(match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    })
}

pub(super) fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
