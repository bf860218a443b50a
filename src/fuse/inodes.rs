//! Inode numbers for paths, and the attributes FUSE reports.
//!
//! The replicated tree is addressed by path; the kernel wants stable inode numbers. Each path
//! gets a number the first time the kernel looks it up, and keeps it until a rename moves it
//! (the number follows the file, as POSIX expects of an open file). Numbers are never reused,
//! so a stale one simply no longer resolves.

use std::collections::HashMap;
use std::time::SystemTime;

use fuser::{FileAttr, FileType};

use crate::store::Stat;

/// The root directory's inode number (FUSE's convention).
pub(crate) const ROOT: u64 = 1;

/// Bidirectional path ↔ inode table. The root is the empty path.
///
/// An entry lives while the kernel holds it: every entry reply counts one lookup, `forget`
/// gives them back, and at zero the entry goes (the root stays). So the table holds what
/// the kernel caches, not every name ever listed: `readdir` hands out the number a name
/// already has, or a provisional one derived from its path, and records nothing.
#[derive(Debug)]
pub(crate) struct Inodes {
    by_ino: HashMap<u64, Entry>,
    by_path: HashMap<String, u64>,
    next: u64,
}

#[derive(Debug)]
struct Entry {
    path: String,
    /// Lookups the kernel has not forgotten.
    lookups: u64,
    /// The kind the kernel was last told: a name that becomes the other kind must be dropped
    /// from its cache, not merely refreshed (an inode cannot change type).
    dir: bool,
}

/// Provisional numbers (names listed, never looked up) have the top bit set; assigned ones
/// count up from 2 and never reach it.
const PROVISIONAL: u64 = 1 << 63;

impl Default for Inodes {
    fn default() -> Self {
        let mut t = Inodes {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
            next: ROOT + 1,
        };
        t.by_ino.insert(
            ROOT,
            Entry {
                path: String::new(),
                lookups: 1,
                dir: true,
            },
        );
        t.by_path.insert(String::new(), ROOT);
        t
    }
}

impl Inodes {
    /// The path of an inode.
    pub(crate) fn path(&self, ino: u64) -> Option<&str> {
        self.by_ino.get(&ino).map(|e| e.path.as_str())
    }

    /// The inode of a path, if it has been looked up.
    pub(crate) fn get(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The inode of a path, assigning one if needed (not yet counted as a lookup).
    pub(crate) fn ino(&mut self, path: &str) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        let entry = Entry {
            path: path.to_string(),
            lookups: 0,
            dir: false,
        };
        self.by_ino.insert(ino, entry);
        self.by_path.insert(path.to_string(), ino);
        ino
    }

    /// Counts one lookup of `ino`: the kernel was just given an entry for it, of this kind.
    pub(crate) fn looked_up(&mut self, ino: u64, dir: bool) {
        if let Some(e) = self.by_ino.get_mut(&ino) {
            e.lookups += 1;
            e.dir = dir;
        }
    }

    /// Whether the kernel was told `ino` is a directory.
    pub(crate) fn is_dir(&self, ino: u64) -> Option<bool> {
        self.by_ino.get(&ino).map(|e| e.dir)
    }

    /// Every path the table holds, but the root's.
    pub(crate) fn paths(&self) -> Vec<String> {
        self.by_path.keys().filter(|p| !p.is_empty()).cloned().collect()
    }

    /// Drops `path`'s entry if the kernel holds no lookup of it (a lookup that found nothing).
    pub(crate) fn unused(&mut self, path: &str) {
        if let Some(&ino) = self.by_path.get(path) {
            if ino != ROOT && self.by_ino.get(&ino).is_some_and(|e| e.lookups == 0) {
                self.by_path.remove(path);
                self.by_ino.remove(&ino);
            }
        }
    }

    /// The kernel forgot `n` lookups of `ino`; at zero the entry goes.
    pub(crate) fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let Some(e) = self.by_ino.get_mut(&ino) else {
            return;
        };
        e.lookups = e.lookups.saturating_sub(n);
        if e.lookups == 0 {
            let path = std::mem::take(&mut e.path);
            self.by_ino.remove(&ino);
            if self.by_path.get(&path) == Some(&ino) {
                self.by_path.remove(&path);
            }
        }
    }

    /// The number to list `path` under in a directory listing: its own if it has one, else
    /// a provisional one derived from the path (recording nothing).
    pub(crate) fn listed(&self, path: &str) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            return ino;
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        path.hash(&mut h);
        h.finish() | PROVISIONAL
    }

    /// How many entries the table holds.
    pub(crate) fn len(&self) -> usize {
        self.by_ino.len()
    }

    /// Drops a removed name: its number no longer resolves to a path (an open handle of it
    /// answers from the handle, and its writes are not committed), and the name, if created
    /// again, gets a new number — a new file, as POSIX has it.
    pub(crate) fn forget_path(&mut self, path: &str) {
        if let Some(ino) = self.by_path.remove(path) {
            self.by_ino.remove(&ino);
        }
    }

    /// Follows a rename applied to the tree (made through this mount or elsewhere): if the
    /// table still has `from`, its number (and those below it) move to `to`, so open files
    /// commit under their new names. Returns whether anything moved.
    pub(crate) fn follow_rename(&mut self, from: &str, to: &str) -> bool {
        if from == to || !self.by_path.contains_key(from) {
            return false;
        }
        self.rename(from, to);
        true
    }

    /// Records a rename of `from` (and everything below it) to `to`.
    pub(crate) fn rename(&mut self, from: &str, to: &str) {
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&prefix))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        // Whatever `to` named before is replaced.
        if let Some(old) = self.by_path.remove(to) {
            self.by_ino.remove(&old);
        }
        for (path, ino) in moved {
            self.by_path.remove(&path);
            let new_path = format!("{to}{}", &path[from.len()..]);
            self.by_path.insert(new_path.clone(), ino);
            if let Some(e) = self.by_ino.get_mut(&ino) {
                e.path = new_path;
            }
        }
    }
}

/// FUSE attributes for a replicated entry. Permissions are fixed (0755 directories, 0644
/// files, owned by the mounting user): the tree replicates contents and times, not modes.
pub(crate) fn attr(ino: u64, stat: &Stat, uid: u32, gid: u32) -> FileAttr {
    let (kind, perm) = if stat.is_dir {
        (FileType::Directory, 0o755)
    } else {
        (FileType::RegularFile, 0o644)
    };
    FileAttr {
        ino,
        size: stat.size,
        blocks: stat.blocks,
        atime: stat.atime,
        mtime: stat.mtime,
        ctime: stat.ctime,
        crtime: SystemTime::UNIX_EPOCH,
        kind,
        perm,
        nlink: stat.links.min(u64::from(u32::MAX)) as u32,
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_while_the_kernel_holds_them() {
        let mut t = Inodes::default();
        let f = t.ino("f");
        t.looked_up(f, false);
        t.looked_up(f, false);
        assert_ne!(t.listed("g"), t.listed("h"));
        assert!(t.listed("g") >= PROVISIONAL && t.listed("f") == f);
        assert_eq!(t.len(), 2, "listing records nothing");
        t.forget(f, 1);
        assert_eq!(t.path(f), Some("f"));
        t.forget(f, 1);
        assert_eq!((t.path(f), t.get("f")), (None, None), "forgotten");
        let missing = t.ino("missing");
        t.unused("missing");
        assert_eq!(t.path(missing), None, "a lookup that found nothing keeps nothing");
        t.forget(ROOT, 10);
        assert_eq!(t.path(ROOT), Some(""));
        assert_ne!(t.ino("f"), f, "numbers are never reused");
    }

    #[test]
    fn rename_moves_subtrees_and_keeps_numbers() {
        let mut t = Inodes::default();
        let (d, f, other) = (t.ino("d"), t.ino("d/f"), t.ino("dx"));
        let target = t.ino("e");
        t.rename("d", "e");
        assert_eq!(t.get("e"), Some(d));
        assert_eq!(t.get("e/f"), Some(f));
        assert_eq!(t.path(f), Some("e/f"));
        assert_eq!(
            t.get("dx"),
            Some(other),
            "a sibling sharing the prefix is untouched"
        );
        assert_eq!(
            t.path(target),
            None,
            "the replaced target's number no longer resolves"
        );
        assert_eq!(t.get("d"), None);
    }
}
