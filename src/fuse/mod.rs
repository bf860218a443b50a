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
use tokio::sync::broadcast::error::RecvError;
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
        let changes = node.store().subscribe();
        let fs = fs::RaftFs::new(node, tokio::runtime::Handle::current(), buffers, stale_reads)?;
        let shared = fs.shared();
        let mut options = vec![
            MountOption::FSName("raftd".into()),
            MountOption::Subtype("raftd".into()),
            MountOption::DefaultPermissions,
        ];
        if allow_other {
            options.push(MountOption::AllowOther);
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

/// Drops the kernel's cached pages and attributes of whatever each applied change touched.
fn invalidate(
    mut changes: tokio::sync::broadcast::Receiver<Change>,
    notifier: Notifier,
    shared: Arc<shared::Shared>,
) {
    loop {
        let paths = match changes.blocking_recv() {
            Ok(Change::Path(p)) => vec![p],
            Ok(Change::Reset) | Err(RecvError::Lagged(_)) => {
                for ino in shared.all_known() {
                    let _ = notifier.inval_inode(ino, 0, 0);
                }
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        // Names need no invalidation: entries are never cached (TTL 0), so the kernel asks
        // again on every lookup. Invalidating an entry would even detach a directory that is
        // some process's working directory (getcwd then fails with ENOENT).
        for path in paths {
            if let Some(ino) = shared.known(&path) {
                let _ = notifier.inval_inode(ino, 0, 0);
            }
        }
    }
}
