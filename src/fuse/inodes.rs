//! Inode numbers for paths, and the attributes FUSE reports.
//!
//! The replicated tree is addressed by path; the kernel wants stable inode numbers. A path's
//! number is derived from the path itself, so a name the kernel forgot and looks up again —
//! or that a listing shows — has the number it had (tools that remember numbers, like
//! `git`'s index, `find` and `tar`, see the same file). A rename moves the number with the
//! file while the kernel holds it (as POSIX expects of an open file). A removed name's number
//! stays out of use while the kernel still holds it (an open descriptor), so a file created
//! again under that name is a different file.

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
}

#[derive(Debug)]
struct Entry {
    path: String,
    /// Lookups the kernel has not forgotten.
    lookups: u64,
    /// Its name was removed while the kernel still held it: it resolves to nothing.
    removed: bool,
    /// The kind the kernel was last told: a name that becomes the other kind must be dropped
    /// from its cache, not merely refreshed (an inode cannot change type).
    dir: bool,
}

/// Inode numbers are 63-bit (some tools keep them in signed integers).
const NUMBERS: u64 = u64::MAX >> 1;

/// The number a path is given unless it is taken: a fixed hash of the path.
fn number_for(path: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same number in every run.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    (h.finish() & NUMBERS).max(ROOT + 1)
}

impl Default for Inodes {
    fn default() -> Self {
        let mut t = Inodes {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
        };
        t.by_ino.insert(
            ROOT,
            Entry {
                path: String::new(),
                lookups: 1,
                removed: false,
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
        self.by_ino
            .get(&ino)
            .filter(|e| !e.removed)
            .map(|e| e.path.as_str())
    }

    /// The inode of a path, if it has been looked up.
    pub(crate) fn get(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The inode of a path, assigning one if needed (not yet counted as a lookup).
    #[cfg(test)]
    pub(crate) fn ino(&mut self, path: &str) -> u64 {
        self.ino_avoiding(path, |_| false)
    }

    /// The inode of a path, assigning one if needed, but never a number `taken` says is in use
    /// elsewhere: an open write handle of a removed file whose release the kernel has not
    /// sent yet (it may send the `forget` first), which a new file must not join.
    pub(crate) fn ino_avoiding(&mut self, path: &str, taken: impl Fn(u64) -> bool) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            return ino;
        }
        let mut ino = number_for(path);
        while self.by_ino.contains_key(&ino) || taken(ino) {
            ino = ((ino + 1) & NUMBERS).max(ROOT + 1);
        }
        let entry = Entry {
            path: path.to_string(),
            lookups: 0,
            removed: false,
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
    /// the one a lookup would give it (recording nothing).
    pub(crate) fn listed(&self, path: &str) -> u64 {
        self.by_path
            .get(path)
            .copied()
            .unwrap_or_else(|| number_for(path))
    }

    /// How many entries the table holds.
    pub(crate) fn len(&self) -> usize {
        self.by_ino.len()
    }

    /// Drops a removed name: its number no longer resolves to a path (an open handle of it
    /// answers from the handle, and its writes are not committed), and the name, if created
    /// again, gets another number while the kernel still holds this one — a new file, as
    /// POSIX has it.
    pub(crate) fn forget_path(&mut self, path: &str) {
        if let Some(ino) = self.by_path.remove(path) {
            self.release(ino);
        }
    }

    /// A number whose name is gone: kept (resolving to nothing) until the kernel forgets it.
    fn release(&mut self, ino: u64) {
        match self.by_ino.get_mut(&ino) {
            Some(e) if e.lookups > 0 => e.removed = true,
            _ => {
                self.by_ino.remove(&ino);
            }
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
            self.release(old);
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
        assert_eq!(t.listed("f"), f);
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
        assert_eq!(t.ino("f"), f, "a forgotten name comes back under its number");
        assert_eq!(Inodes::default().ino("f"), f, "in every run");
        assert_eq!(
            t.listed("g"),
            t.ino("g"),
            "a listing shows the number a lookup gives"
        );
    }

    #[test]
    fn a_removed_name_held_by_the_kernel_keeps_its_number_to_itself() {
        let mut t = Inodes::default();
        let f = t.ino("f");
        t.looked_up(f, false);
        t.forget_path("f");
        assert_eq!(t.path(f), None, "removed: resolves to nothing");
        let again = t.ino("f");
        assert_ne!(again, f, "created again while the old one is held: a new file");
        t.forget(f, 1);
        assert_eq!(t.len(), 2, "the old number goes once the kernel forgets it");
        t.forget_path("f");
        let held = |n| n == f;
        assert_ne!(t.ino_avoiding("f", held), f, "nor while a handle still holds it");
        let (a, b) = (t.ino("a"), t.ino("b"));
        t.looked_up(b, false);
        t.rename("a", "b");
        assert_eq!(
            (t.get("b"), t.path(b)),
            (Some(a), None),
            "the replaced one resolves to nothing"
        );
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
