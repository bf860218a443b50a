//! The FUSE mount: `--mount DIR` shows the replicated tree as an ordinary directory.
//!
//! [`Mount::start`] prepares the mount point (a stale mount left by a crashed run is detached;
//! a live one or a non-directory is refused with a clear error), mounts through the kernel
//! directly (fuser, no libfuse), runs the session on its own thread, and starts a thread that
//! turns applied changes into kernel page/attribute invalidations. Dropping the `Mount`
//! unmounts.

pub(crate) mod errno;
pub(crate) mod fs;
pub(crate) mod handles;
pub(crate) mod inodes;
pub(crate) mod ranges;
pub(crate) mod shared;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, MountOption, Notifier};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::node::Node;
use crate::store::Change;

/// A live mount; unmounted on drop.
pub(crate) struct Mount {
    session: Option<BackgroundSession>,
    path: PathBuf,
}

impl Mount {
    /// Mounts the replicated tree of `node` at `path`.
    /// Only the mounting user may use it unless `allow_other` (which also lets the kernel check
    /// the permissions each file shows, with `default_permissions`).
    pub(crate) fn start(node: Arc<Node>, path: &Path, stale_reads: bool, allow_other: bool) -> Result<Mount> {
        prepare(path)?;
        let buffers = node.config().data_dir.join("fuse");
        let (changes, sent) = node.store().changes().subscribe();
        let fs = fs::RaftFs::new(node, tokio::runtime::Handle::current(), buffers, stale_reads)?;
        let shared = fs.shared();
        shared.handled.send_replace(sent);
        let mut options = vec![
            MountOption::FSName("raftd".into()),
            MountOption::Subtype("raftd".into()),
        ];
        // Without other users the modes (fixed, the mounting user's) deny that user nothing
        // but running a file, which the kernel checks anyway; checking them all would make it
        // fetch a directory's attributes for every path walk through it after each change
        // there (1.7 getattrs per file created by 16 writers in one directory).
        if allow_other {
            options.push(MountOption::AllowOther);
            options.push(MountOption::DefaultPermissions);
        }
        let session = fuser::Session::new(fs, path, &options)
            .and_then(|s| s.spawn())
            .map_err(|e| Error::io(format!("mount {}", path.display()), e))?;
        let notifier = session.notifier();
        std::thread::Builder::new()
            .name("raftd-fuse-inval".into())
            .spawn(move || invalidate(changes, notifier, shared))
            .map_err(|e| Error::io("spawn invalidation thread", e))?;
        info!(path = %path.display(), "mounted");
        Ok(Mount {
            session: Some(session),
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            drop(session);
            // If a process still holds files open the unmount fails with EBUSY: detach lazily.
            if is_mounted(&self.path) {
                detach(&self.path);
            }
            info!(path = %self.path.display(), "unmounted");
        }
    }
}

/// Makes `path` ready to mount on, or says precisely why it is not.
fn prepare(path: &Path) -> Result<()> {
    // A mount whose process died answers from the kernel's cache what it cached (the root's
    // attributes, for a while), but `statfs` always asks the process: ENOTCONN.
    if is_mounted(path) && statfs_errno(path) == Some(libc::ENOTCONN) {
        warn!(path = %path.display(), "detaching a stale mount left by a previous run");
        detach(path);
    }
    match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            warn!(path = %path.display(), "detaching a stale mount left by a previous run");
            detach(path);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(path)
            .map_err(|e| Error::io(format!("create mount point {}", path.display()), e)),
        Err(e) => Err(Error::io(format!("mount point {}", path.display()), e)),
        Ok(m) if !m.is_dir() => Err(Error::Config(format!(
            "mount point {} is not a directory",
            path.display()
        ))),
        Ok(_) if is_mounted(path) => Err(Error::Config(format!(
            "mount point {} is busy: something is already mounted there",
            path.display()
        ))),
        Ok(_) => Ok(()),
    }
}

/// The error `statfs(2)` of `path` fails with, if it fails.
fn statfs_errno(path: &Path) -> Option<i32> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } == 0 {
        None
    } else {
        std::io::Error::last_os_error().raw_os_error()
    }
}

fn detach(path: &Path) {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return;
    };
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
        warn!(path = %path.display(), cause = %std::io::Error::last_os_error(), "could not detach mount");
    }
}

/// Whether `path` is a mount point, per the kernel's mount table.
pub(crate) fn is_mounted(path: &Path) -> bool {
    let Ok(abs) = std::path::absolute(path) else {
        return false;
    };
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(&m.replace("\\040", " ")) == abs)
}

/// Most notices handled per pass (one fence, then their invalidations).
const BATCH: usize = 256;

/// Keeps the kernel's cache exact: for each applied change, drops the attributes and pages
/// of the name and of its directory, and the entry of a name that is gone or changed kind.
/// An entry that still names a directory is kept: invalidating it would detach the
/// directory from any process whose working directory it is (`getcwd` then fails).
fn invalidate(
    mut changes: tokio::sync::broadcast::Receiver<Change>,
    notifier: Notifier,
    shared: Arc<shared::Shared>,
) {
    loop {
        let mut paths = Vec::new();
        let mut moved = Vec::new();
        let mut everything = false;
        let mut count = 0u64;
        let mut next = changes.blocking_recv();
        loop {
            match next {
                Ok(Change::Path(p)) => {
                    count += 1;
                    paths.push(p);
                }
                Ok(Change::Renamed { from, to }) => {
                    count += 1;
                    let mut table = shared.inodes.lock().expect("inode lock");
                    let replaced = table.get(&to).is_some();
                    // Made elsewhere (a rename through this mount has moved the numbers
                    // already): the kernel's entries of the old name, and of the new one if
                    // it named something else, are stale.
                    if table.follow_rename(&from, &to) {
                        moved.push(from.clone());
                        if replaced {
                            moved.push(to.clone());
                        }
                    }
                    drop(table);
                    paths.push(from);
                    paths.push(to);
                }
                Ok(Change::Reset) => {
                    count += 1;
                    everything = true;
                }
                Err(RecvError::Lagged(n)) => {
                    count += n;
                    everything = true;
                }
                Err(RecvError::Closed) => return,
            }
            if paths.len() >= BATCH {
                break;
            }
            next = match changes.try_recv() {
                Ok(c) => Ok(c),
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return,
            };
        }
        if everything {
            paths = shared.inodes.lock().expect("inode lock").paths();
        }
        // Replies that read the state before these changes were applied are sent by now.
        drop(shared.fence.write().expect("fence lock"));
        for name in &moved {
            let (parent, name) = crate::names::split(name);
            if let Some(parent) = shared.known(parent) {
                let _ = notifier.inval_entry(parent, std::ffi::OsStr::new(name));
            }
        }
        let mut dirs = std::collections::BTreeSet::new();
        for path in &paths {
            forget_stale(&notifier, &shared, path);
            dirs.insert(crate::names::split(path).0.to_string());
        }
        for dir in dirs {
            if let Some(ino) = shared.known(&dir) {
                // Attributes only (a negative offset): a directory has no cached pages.
                let _ = notifier.inval_inode(ino, -1, 0);
            }
        }
        if everything {
            let _ = notifier.inval_inode(inodes::ROOT, -1, 0);
        }
        shared.handled.send_modify(|n| *n += count);
    }
}

/// Drops what the kernel caches of one changed name.
fn forget_stale(notifier: &Notifier, shared: &shared::Shared, path: &str) {
    let Some(ino) = shared.known(path) else { return };
    let _ = notifier.inval_inode(ino, 0, 0);
    // Still what the kernel was told, or created here and not yet committed (the name
    // lives on this mount: a change to an earlier file of that name, removed or renamed
    // away before it was created, must not take it).
    let current = || {
        let now = shared.node.store().stat(path).ok().map(|s| s.is_dir);
        let told = shared.inodes.lock().expect("inode lock").is_dir(ino);
        match now {
            Some(_) => now == told,
            None => shared.handles.created().contains(&ino),
        }
    };
    if current() {
        return;
    }
    // Gone, or now of another kind: the name must be looked up afresh, and under a new
    // number (an inode cannot change kind; a name created again is a new file).
    let (parent, name) = crate::names::split(path);
    if let Some(parent_ino) = shared.known(parent) {
        let _ = notifier.inval_entry(parent_ino, std::ffi::OsStr::new(name));
    }
    // The kernel may have held that back until an operation in the directory ended — a
    // new file of this name created meanwhile, perhaps under the same number (numbers come
    // from the path): look again before retiring the number.
    if current() {
        return;
    }
    let mut table = shared.inodes.lock().expect("inode lock");
    if table.get(path) == Some(ino) && !shared.handles.created().contains(&ino) {
        table.forget_path(path);
    }
}
