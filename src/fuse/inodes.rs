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
#[derive(Debug)]
pub(crate) struct Inodes {
    by_ino: HashMap<u64, String>,
    by_path: HashMap<String, u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut t = Inodes {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
            next: ROOT + 1,
        };
        t.by_ino.insert(ROOT, String::new());
        t.by_path.insert(String::new(), ROOT);
        t
    }
}

impl Inodes {
    /// The path of an inode.
    pub(crate) fn path(&self, ino: u64) -> Option<&str> {
        self.by_ino.get(&ino).map(String::as_str)
    }

    /// The inode of a path, if it has been looked up.
    pub(crate) fn get(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The inode of a path, assigning one if needed.
    pub(crate) fn ino(&mut self, path: &str) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_ino.insert(ino, path.to_string());
        self.by_path.insert(path.to_string(), ino);
        ino
    }

    /// Drops a removed name: its number no longer resolves to a path (an open handle of it
    /// answers from the handle, and its writes are not committed), and the name, if created
    /// again, gets a new number — a new file, as POSIX has it.
    pub(crate) fn forget(&mut self, path: &str) {
        if let Some(ino) = self.by_path.remove(path) {
            self.by_ino.remove(&ino);
        }
    }

    /// Every assigned inode number.
    pub(crate) fn all(&self) -> Vec<u64> {
        self.by_ino.keys().copied().collect()
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
            self.by_ino.insert(ino, new_path);
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
