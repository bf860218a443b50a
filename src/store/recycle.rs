//! Inodes reused instead of freed: what keeps an overwrite from costing an inode allocation.
//!
//! (An overwrite that nothing else can see is written into the live inode: see
//! [`super::files`]. What follows is the path for a file someone is reading.)
//!
//! Every apply used to write a fresh temp file and rename it over the old one, freeing the old
//! inode. On ext4, allocating an inode soon after thousands were freed is expensive (the
//! allocator skips recently deleted inodes, reading each one's inode-table block): under
//! overwrites that was about 70 % of all CPU. Now an overwrite swaps the new contents in with
//! `renameat2(RENAME_EXCHANGE)`, and the old inode — now at the temp path — becomes the next
//! temp file, truncated and rewritten, unless something may still read it:
//!
//! - a hard link (a snapshot archiving the tree links every file: `st_nlink` > 1), or
//! - a reader that opened it through [`FileStore`](super::FileStore) (HTTP GET, a FUSE read
//!   handle): readers are counted by inode, and the count is taken under the same lock as the
//!   open, so a reader that opened the old version before the swap is always seen.
//!
//! Then it is unlinked as before, and lives on until the reader closes it.
//!
//! A FUSE write handle holds the file it opened as the base of what it has not rewritten. It
//! must not see that inode reused for another file, but it need not see a frozen version
//! either (it reads the live file, as a writer on a local disk does), so it *follows* the
//! inode: followers block reuse, not patches in place. A program reading
//! `files/` directly (outside raftd) is not counted: it may see a file being rewritten, as
//! with any file replaced in place.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Most spare inodes kept at once; more are unlinked.
const MAX_SPARES: usize = 64;

/// Spare inodes and the count of readers of each open inode.
#[derive(Debug, Default)]
pub(crate) struct Recycler {
    /// std lock: pool edits only.
    spares: Mutex<Vec<PathBuf>>,
    /// Readers and followers per inode number (one filesystem: the data directory's). std
    /// lock: held across one `open`, or one patch in place, at most.
    readers: Mutex<HashMap<u64, Holders>>,
}

/// Who holds an inode open.
#[derive(Debug, Default, Clone, Copy)]
struct Holders {
    /// Need the version they opened to stay whole.
    readers: usize,
    /// Need only the inode not to be reused.
    followers: usize,
}

impl Recycler {
    /// A spare inode's path, to truncate and rewrite, if there is one.
    pub(crate) fn take(&self) -> Option<PathBuf> {
        self.spares.lock().expect("spares lock").pop()
    }

    /// Keeps the file at `path` (an old version just swapped out of the tree, or a deleted
    /// file moved aside) as a spare if nothing can still read it; else unlinks it.
    pub(crate) fn offer(&self, path: PathBuf) -> io::Result<()> {
        let meta = fs::symlink_metadata(&path)?;
        let reusable = meta.is_file() && meta.nlink() == 1 && {
            let readers = self.readers.lock().expect("readers lock");
            !readers.contains_key(&meta.ino())
        };
        if reusable {
            let mut spares = self.spares.lock().expect("spares lock");
            if spares.len() < MAX_SPARES {
                spares.push(path);
                return Ok(());
            }
        }
        fs::remove_file(&path)
    }

    /// Holds off new readers while the caller changes inode `ino` in place, if nobody reads it
    /// now; `None` if someone does (the change must then go to a copy).
    pub(crate) fn exclusive(&self, ino: u64) -> Option<impl Drop + '_> {
        let readers = self.readers.lock().expect("readers lock");
        (readers.get(&ino).is_none_or(|h| h.readers == 0)).then_some(readers)
    }

    /// Holds off new readers of any file (while the caller creates one in place).
    pub(crate) fn hold_readers(&self) -> impl Drop + '_ {
        self.readers.lock().expect("readers lock")
    }

    /// Opens a file with `open` and counts it as read until the returned handle is dropped.
    pub(crate) fn open_read(
        self: &Arc<Self>,
        open: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<ReadFile> {
        self.open_held(open, false)
    }

    /// Opens a file with `open` and keeps its inode from reuse until the handle is dropped,
    /// without stopping patches in place (see the module notes).
    pub(crate) fn open_follow(
        self: &Arc<Self>,
        open: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<ReadFile> {
        self.open_held(open, true)
    }

    fn open_held(
        self: &Arc<Self>,
        open: impl FnOnce() -> io::Result<File>,
        follow: bool,
    ) -> io::Result<ReadFile> {
        let mut readers = self.readers.lock().expect("readers lock");
        let file = open()?;
        let ino = file.metadata()?.ino();
        let holders = readers.entry(ino).or_default();
        if follow {
            holders.followers += 1;
        } else {
            holders.readers += 1;
        }
        Ok(ReadFile {
            file,
            ino,
            follow,
            recycler: self.clone(),
        })
    }
}

/// A file opened for reading through the store; while it is open its inode is not reused.
#[derive(Debug)]
pub struct ReadFile {
    file: File,
    ino: u64,
    follow: bool,
    recycler: Arc<Recycler>,
}

impl std::ops::Deref for ReadFile {
    type Target = File;
    fn deref(&self) -> &File {
        &self.file
    }
}

impl std::ops::DerefMut for ReadFile {
    fn deref_mut(&mut self) -> &mut File {
        &mut self.file
    }
}

impl io::Read for ReadFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Drop for ReadFile {
    fn drop(&mut self) {
        let mut readers = self.recycler.readers.lock().expect("readers lock");
        if let Some(h) = readers.get_mut(&self.ino) {
            if self.follow {
                h.followers = h.followers.saturating_sub(1);
            } else {
                h.readers = h.readers.saturating_sub(1);
            }
            if h.readers == 0 && h.followers == 0 {
                readers.remove(&self.ino);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unread_unlinked_inodes_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let r = Arc::new(Recycler::default());
        let path = |n: &str| dir.path().join(n);
        fs::write(path("a"), b"old").unwrap();
        // Read open: not reusable, unlinked instead.
        let reading = r.open_read(|| File::open(path("a"))).unwrap();
        r.offer(path("a")).unwrap();
        assert!(!path("a").exists() && r.take().is_none());
        let mut text = String::new();
        io::Read::read_to_string(&mut &*reading, &mut text).unwrap();
        assert_eq!(text, "old", "the reader keeps its version");
        drop(reading);
        // Hard-linked (a snapshot archiving it): not reusable.
        fs::write(path("b"), b"x").unwrap();
        fs::hard_link(path("b"), path("link")).unwrap();
        r.offer(path("b")).unwrap();
        assert!(r.take().is_none());
        // Nobody reads it: kept, once.
        fs::write(path("c"), b"x").unwrap();
        r.offer(path("c")).unwrap();
        assert_eq!(r.take(), Some(path("c")));
        assert!(r.take().is_none());
        // Followed (a FUSE writer's base): not reused, but open to patches in place.
        fs::write(path("d"), b"x").unwrap();
        let following = r.open_follow(|| File::open(path("d"))).unwrap();
        let ino = following.metadata().unwrap().ino();
        assert!(r.exclusive(ino).is_some(), "a follower allows a patch in place");
        let reading = r.open_read(|| File::open(path("d"))).unwrap();
        assert!(r.exclusive(ino).is_none(), "a reader does not");
        drop(reading);
        r.offer(path("d")).unwrap();
        assert!(r.take().is_none(), "a followed inode is not reused");
        drop(following);
    }
}
