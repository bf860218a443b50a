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
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, Weak};

/// Most spare inodes kept at once; more are unlinked.
const MAX_SPARES: usize = 64;
/// Below this many spares the filler thread is woken...
const LOW_WATER: usize = 16;
/// ...and creates empty files until there are this many.
const FILL_TO: usize = 48;

/// Spare inodes and the count of readers of each open inode.
#[derive(Debug, Default)]
pub(crate) struct Recycler {
    /// Inodes freed by overwrites and deletes. std lock: pool edits only.
    spares: Mutex<Vec<PathBuf>>,
    /// Empty files made ahead of time (see [`Recycler::start_filler`]). std lock: pool edits.
    made: Mutex<Vec<PathBuf>>,
    /// Wakes the thread that keeps `made` stocked.
    filler: Mutex<Option<SyncSender<()>>>,
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

    /// An inode for a new file: a spare, else one made ahead of time.
    pub(crate) fn take_for_new(&self) -> Option<PathBuf> {
        if let Some(spare) = self.take() {
            return Some(spare);
        }
        let mut made = self.made.lock().expect("made lock");
        let taken = made.pop();
        if made.len() < LOW_WATER {
            if let Some(filler) = &*self.filler.lock().expect("filler lock") {
                let _ = filler.try_send(());
            }
        }
        taken
    }

    /// Keeps a stock of empty files created in `dir` (same filesystem as the tree) by a
    /// thread of its own, so the apply of a lone new file renames a ready inode into place
    /// instead of allocating one on its client's path: on ext4, after many files were freed,
    /// allocating an inode took a quarter of the leader's CPU under one client's new files
    /// (1-client p50 1.30 → 0.83 ms on such a disk). Under load (commands in batches) files
    /// are created in place: the stock would only move the same allocations to another
    /// thread and add a rename. The thread ends with the recycler.
    pub(crate) fn start_filler(self: &Arc<Self>, dir: PathBuf) -> io::Result<std::thread::JoinHandle<()>> {
        let (wake, woken) = mpsc::sync_channel(1);
        let recycler: Weak<Self> = Arc::downgrade(self);
        let thread = std::thread::Builder::new()
            .name("raftd-inode-pool".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    let Some(recycler) = recycler.upgrade() else {
                        return;
                    };
                    if let Err(e) = recycler.fill(&dir) {
                        tracing::debug!(error = %e, "could not add spare inodes");
                    }
                }
            })?;
        let _ = wake.try_send(());
        *self.filler.lock().expect("filler lock") = Some(wake);
        Ok(thread)
    }

    fn fill(&self, dir: &Path) -> io::Result<()> {
        while self.made.lock().expect("made lock").len() < FILL_TO {
            let path = dir.join(format!("{:016x}", rand::random::<u64>()));
            File::options().write(true).create_new(true).open(&path)?;
            self.made.lock().expect("made lock").push(path);
        }
        Ok(())
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

    /// The pool is stocked ahead of time and restocked when it runs low, so new files find
    /// inodes ready; its thread ends with the recycler.
    #[test]
    fn the_pool_is_filled_ahead_and_refilled_when_low() {
        let dir = tempfile::tempdir().unwrap();
        let r = Arc::new(Recycler::default());
        let filler = r.start_filler(dir.path().to_path_buf()).unwrap();
        let stocked = |n: usize| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while r.made.lock().unwrap().len() < n {
                assert!(std::time::Instant::now() < deadline, "the pool never reached {n}");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        stocked(FILL_TO);
        assert!(r.take().is_none(), "made files are for new files only");
        let made: Vec<PathBuf> = (0..FILL_TO).map(|_| r.take_for_new().expect("a spare")).collect();
        assert!(made
            .iter()
            .all(|p| p.starts_with(dir.path()) && fs::metadata(p).unwrap().len() == 0));
        // Taken below the low-water mark: restocked.
        stocked(FILL_TO);
        drop(r);
        let (ended, ended_rx) = mpsc::channel();
        std::thread::spawn(move || ended.send(filler.join().is_ok()).unwrap());
        let joined = ended_rx.recv_timeout(std::time::Duration::from_secs(20));
        assert_eq!(joined, Ok(true), "the filler ends with its recycler");
    }

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
