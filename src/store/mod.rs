//! The replicated state: a file tree on local disk, changed only by applying committed entries.
//!
//! `state_machine` is openraft's side (apply, snapshots); [`FileStore`] is the read side that
//! the front ends use. Reads go straight to the files: every change is an atomic rename, so a
//! reader sees a whole version of a file, never a partly written one.

pub mod backup;
pub(crate) mod beneath;
pub mod dedup;
pub mod files;
pub mod recycle;
pub mod snapshot;
pub mod sparse;
pub(crate) mod state_machine;

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::broadcast;

pub use files::Tree;
pub use state_machine::{StateHandle, StateMachine};

use crate::error::{Error, FileError, Result};

/// How many change notices a slow subscriber may lag before it is told to reset.
pub const CHANGE_FEED_CAPACITY: usize = 4096;

/// A notice that applied state changed, for caches (the FUSE kernel cache) to drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This name (file or directory) may have changed.
    Path(String),
    /// `from` (and everything below it) is now `to`; what `to` named before is gone.
    Renamed {
        /// The old name.
        from: String,
        /// The new name.
        to: String,
    },
    /// Anything may have changed (a snapshot was installed).
    Reset,
}

/// The feed of applied changes. It counts what it sent, so a subscriber that counts what it
/// handled can tell a waiter when every change applied so far has been handled (the FUSE
/// mount answers `open` only once the kernel's cache has dropped what changed before it).
#[derive(Clone)]
pub struct ChangeFeed {
    inner: Arc<Feed>,
}

struct Feed {
    tx: broadcast::Sender<Change>,
    /// Notices sent. std lock: held for one increment and one send, so a subscriber starts
    /// from an exact count.
    sent: Mutex<u64>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        ChangeFeed {
            inner: Arc::new(Feed {
                tx: broadcast::channel(CHANGE_FEED_CAPACITY).0,
                sent: Mutex::new(0),
            }),
        }
    }
}

impl ChangeFeed {
    /// Publishes a notice (to nobody, if nobody subscribed).
    pub(crate) fn send(&self, change: Change) {
        let mut sent = self.inner.sent.lock().expect("feed lock");
        *sent += 1;
        let _ = self.inner.tx.send(change);
    }

    /// A receiver of every notice from now on, and how many were sent before it.
    pub fn subscribe(&self) -> (broadcast::Receiver<Change>, u64) {
        let sent = self.inner.sent.lock().expect("feed lock");
        (self.inner.tx.subscribe(), *sent)
    }

    /// How many notices were sent so far.
    pub fn sent(&self) -> u64 {
        *self.inner.sent.lock().expect("feed lock")
    }
}

/// What `stat` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Directory or file.
    pub is_dir: bool,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Last modification, as replicated.
    pub mtime: SystemTime,
    /// Last access as set explicitly (`utimensat`), replicated; reads do not move it. A
    /// directory shows its modification time.
    pub atime: SystemTime,
    /// Last change of the local copy (contents or metadata), by this node's clock.
    pub ctime: SystemTime,
    /// Links: for a directory 2 + its subdirectories (as POSIX tools expect); 1 for a file.
    pub links: u64,
    /// 512-byte blocks the local copy occupies (what `du` adds up).
    pub blocks: u64,
}

/// Read access to the local replica, shared by the HTTP API and FUSE.
#[derive(Clone)]
pub struct FileStore {
    tree: Tree,
    changes: ChangeFeed,
}

fn not_found(name: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| match e.kind() {
        io::ErrorKind::NotFound => FileError::NotFound(name.to_string()).into(),
        _ if e.raw_os_error() == Some(libc::ENOTDIR) => FileError::NotFound(name.to_string()).into(),
        _ => Error::io(format!("read {name}"), e),
    }
}

impl FileStore {
    /// The read side of the state machine's tree; `StateMachine::open` makes it.
    pub(crate) fn new(tree: Tree, changes: ChangeFeed) -> Self {
        FileStore { tree, changes }
    }

    /// The directory holding the tree (`DATA_DIR/files`), e.g. for `statfs`.
    pub fn root(&self) -> &Path {
        &self.tree.root
    }

    /// The feed of applied changes.
    pub fn changes(&self) -> &ChangeFeed {
        &self.changes
    }

    /// A file's contents (`name` must be validated). Resolved beneath `files/`: a symlink
    /// planted there is refused, never followed.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let mut file = self.open_file(name)?;
        let mut bytes = Vec::new();
        match io::Read::read_to_end(&mut file, &mut bytes) {
            Ok(_) => Ok(bytes),
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                Err(FileError::IsADirectory(name.to_string()).into())
            }
            Err(e) => Err(not_found(name)(e)),
        }
    }

    /// Opens a file for reading (`name` must be validated); the version it opened stays
    /// whole while the handle lives.
    pub fn open_file(&self, name: &str) -> Result<recycle::ReadFile> {
        self.tree.open_read(name).map_err(not_found(name))
    }

    /// Opens the live file, following changes applied to it in place (see
    /// [`recycle`]): what a write handle reads where it has not written.
    pub fn open_live(&self, name: &str) -> Result<recycle::ReadFile> {
        self.tree.open_follow(name).map_err(not_found(name))
    }

    /// A name's metadata; the empty name is the root.
    pub fn stat(&self, name: &str) -> Result<Stat> {
        let meta = self.tree.files().stat(name).map_err(not_found(name))?;
        Ok(Stat {
            is_dir: meta.is_dir,
            size: if meta.is_dir { 0 } else { meta.size },
            mtime: files::time_from_nanos(meta.mtime),
            atime: files::time_from_nanos(if meta.is_dir { meta.mtime } else { meta.atime }),
            ctime: files::time_from_nanos(meta.ctime),
            // A file's other links are snapshots' or backups' staging copies, not names.
            links: if meta.is_dir { meta.nlink } else { 1 },
            blocks: meta.blocks,
        })
    }

    /// A directory's entries as (name, stat), sorted by name; the empty name is the root.
    pub fn list(&self, name: &str) -> Result<Vec<(String, Stat)>> {
        let names = match self.tree.files().list(name) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(FileError::NotADirectory(name.to_string()).into())
            }
            r => r.map_err(not_found(name))?,
        };
        let mut out = Vec::new();
        for child in names {
            let full = if name.is_empty() {
                child.clone()
            } else {
                format!("{name}/{child}")
            };
            match self.stat(&full) {
                Ok(stat) => out.push((child, stat)),
                Err(Error::File(FileError::NotFound(_))) => continue, // removed meanwhile
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}
