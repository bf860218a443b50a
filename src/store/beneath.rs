//! File operations that cannot leave a directory, whatever the name or the tree holds.
//!
//! Names are validated before they get here (no `..`, no absolute paths), but validation only
//! looks at the string. A symlink planted inside `files/` by hand, or a race with someone who
//! can write there, could still redirect a write through an ordinary path join. So every
//! operation here resolves its path with `openat2(2)` and `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV` from a descriptor of the
//! root, then acts on the last component relative to its parent's descriptor with the `*at`
//! calls, which never follow a final symlink. A name that would cross a symlink or a mount
//! fails with `ELOOP` or `EXDEV` instead of touching anything outside the root.
//!
//! The root is opened afresh for each operation (one `open` with `O_NOFOLLOW`): installing a
//! snapshot swaps the whole `files/` directory, and a held descriptor would keep pointing at
//! the old one.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps};

/// How every path below the root is resolved.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Mode of directories raftd creates (modes are not replicated).
const DIR_MODE: u32 = 0o755;

/// What [`Beneath::stat`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Directory (true) or anything else.
    pub is_dir: bool,
    /// Regular file.
    pub is_file: bool,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch (0 before it).
    pub mtime: u64,
    /// Access time, likewise: set by raftd, never by reads.
    pub atime: u64,
    /// Change time of the local copy, likewise.
    pub ctime: u64,
    /// Hard links (a directory: 2 + its subdirectories).
    pub nlink: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Inode number.
    pub ino: u64,
}

#[allow(clippy::unnecessary_cast)] // the stat fields' types differ between targets
fn meta(st: &rfs::Stat) -> Meta {
    let kind = rfs::FileType::from_raw_mode(st.st_mode);
    let nanos = |secs: i64, nsec: i64| u64::try_from(secs).unwrap_or(0) * 1_000_000_000 + nsec as u64;
    Meta {
        is_dir: kind == rfs::FileType::Directory,
        is_file: kind == rfs::FileType::RegularFile,
        size: st.st_size as u64,
        mtime: nanos(st.st_mtime, st.st_mtime_nsec as i64),
        atime: nanos(st.st_atime, st.st_atime_nsec as i64),
        ctime: nanos(st.st_ctime, st.st_ctime_nsec as i64),
        nlink: st.st_nlink as u64,
        blocks: st.st_blocks as u64,
        ino: st.st_ino,
    }
}

/// A name in the tree with its directory open: what one apply does to one name resolves
/// the path once (each resolution is a walk of every component from the root).
pub struct At<'a> {
    dir: OwnedFd,
    base: &'a str,
}

impl At<'_> {
    /// Metadata of the name (not following a symlink).
    pub fn stat(&self) -> io::Result<Meta> {
        Ok(meta(&rfs::statat(
            &self.dir,
            self.base,
            AtFlags::SYMLINK_NOFOLLOW,
        )?))
    }

    /// Opens the file for changing in place, without moving its access time.
    pub fn open_rw(&self) -> io::Result<File> {
        let open = |flags: OFlags| rfs::openat(&self.dir, self.base, flags, Mode::empty());
        let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match open(flags | OFlags::NOATIME) {
            Err(e) if e == rustix::io::Errno::PERM => Ok(File::from(open(flags)?)),
            r => Ok(File::from(r?)),
        }
    }

    /// Creates the file, which must not exist yet, for writing.
    pub fn create_new(&self) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rfs::openat(
            &self.dir,
            self.base,
            flags,
            Mode::from_raw_mode(0o666),
        )?))
    }

    /// Moves the file at `source` (outside the tree, same filesystem) into place, replacing
    /// what is there as rename(2) does.
    pub fn install(&self, source: &Path) -> io::Result<()> {
        Ok(rfs::renameat(rfs::CWD, source, &self.dir, self.base)?)
    }

    /// Swaps the file at `source` with the name (`renameat2(RENAME_EXCHANGE)`): both must
    /// exist; afterwards `source` holds the old file.
    pub fn exchange(&self, source: &Path) -> io::Result<()> {
        let flags = rfs::RenameFlags::EXCHANGE;
        Ok(rfs::renameat_with(rfs::CWD, source, &self.dir, self.base, flags)?)
    }
}

/// A directory that operations stay beneath.
#[derive(Debug, Clone)]
pub struct Beneath {
    root: PathBuf,
}

impl Beneath {
    /// Operations beneath `root`, which must be a directory (not a symlink to one).
    pub fn new(root: PathBuf) -> Self {
        Beneath { root }
    }

    /// The root directory's path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks that this kernel resolves paths beneath a directory (`openat2`, Linux 5.6+).
    pub fn check_supported(&self) -> io::Result<()> {
        match rfs::openat2(
            self.root_fd()?,
            ".",
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        ) {
            Ok(_) => Ok(()),
            Err(e) if e == rustix::io::Errno::NOSYS => Err(io::Error::other(
                "this kernel lacks openat2(2) (Linux 5.6 or newer is needed)",
            )),
            Err(e) => Err(e.into()),
        }
    }

    fn root_fd(&self) -> io::Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(rfs::open(&self.root, flags, Mode::empty())?)
    }

    /// Opens `name` below the root; the empty name is the root itself.
    fn open_at(&self, name: &str, flags: OFlags) -> io::Result<OwnedFd> {
        let name = if name.is_empty() { "." } else { name };
        Ok(rfs::openat2(
            self.root_fd()?,
            name,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?)
    }

    /// The directory holding `name` (resolved beneath the root) and `name`'s last component.
    fn parent<'a>(&self, name: &'a str) -> io::Result<(OwnedFd, &'a str)> {
        match name.rsplit_once('/') {
            Some((dir, base)) => Ok((self.open_at(dir, OFlags::PATH | OFlags::DIRECTORY)?, base)),
            None => Ok((self.root_fd()?, name)),
        }
    }

    /// Opens a file without moving its access time (raftd replicates it; see
    /// [`crate::fsutil::open_noatime`]).
    fn open_noatime(&self, name: &str, flags: OFlags) -> io::Result<File> {
        match self.open_at(name, flags | OFlags::NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(File::from(self.open_at(name, flags)?)),
            r => Ok(File::from(r?)),
        }
    }

    /// Opens a file for reading.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        self.open_noatime(name, OFlags::RDONLY)
    }

    /// Opens a file for changing in place (a patch applied where nothing else can see it).
    pub fn open_rw(&self, name: &str) -> io::Result<File> {
        self.open_noatime(name, OFlags::RDWR)
    }

    /// Metadata of `name` (not following a final symlink); the empty name is the root.
    pub fn stat(&self, name: &str) -> io::Result<Meta> {
        if name.is_empty() {
            return Ok(meta(&rfs::fstat(self.root_fd()?)?));
        }
        let (dir, base) = self.parent(name)?;
        Ok(meta(&rfs::statat(dir, base, AtFlags::SYMLINK_NOFOLLOW)?))
    }

    /// `name`'s directory, resolved once for several operations on `name`.
    pub fn at<'a>(&self, name: &'a str) -> io::Result<At<'a>> {
        let (dir, base) = self.parent(name)?;
        Ok(At { dir, base })
    }

    /// `name`'s directory, resolved once for several operations on `name`; missing
    /// directories above it are created first (as [`make_parents`](Self::make_parents)).
    pub fn at_made<'a>(&self, name: &'a str) -> io::Result<At<'a>> {
        let (dir, base) = match self.parent(name) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.make_parents(name)?;
                self.parent(name)?
            }
            r => r?,
        };
        Ok(At { dir, base })
    }

    /// The names in directory `name` (the empty name is the root), without `.` and `..`,
    /// skipping names that are not UTF-8 (raftd never creates them).
    pub fn list(&self, name: &str) -> io::Result<Vec<String>> {
        let dir = self.open_at(name, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut names = Vec::new();
        for entry in rfs::Dir::new(dir)? {
            let entry = entry?;
            let raw: &CStr = entry.file_name();
            if matches!(raw.to_bytes(), b"." | b"..") {
                continue;
            }
            if let Ok(text) = raw.to_str() {
                names.push(text.to_string());
            }
        }
        Ok(names)
    }

    /// Creates every missing directory above `name`. A file in the way fails with
    /// `ENOTDIR`/`EEXIST`; a symlink in the way with `ELOOP`.
    pub fn make_parents(&self, name: &str) -> io::Result<()> {
        let Some((parents, _)) = name.rsplit_once('/') else {
            return Ok(());
        };
        let mut dir = self.root_fd()?;
        for component in parents.split('/') {
            match rfs::mkdirat(&dir, component, Mode::from_raw_mode(DIR_MODE)) {
                Ok(()) => {}
                Err(e) if e == rustix::io::Errno::EXIST => {}
                Err(e) => return Err(e.into()),
            }
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            dir = rfs::openat2(&dir, component, flags, Mode::empty(), RESOLVE)?;
        }
        Ok(())
    }

    /// Moves `name` out of the tree to `dest` (a path outside it on the same filesystem).
    pub fn take_out(&self, name: &str, dest: &Path) -> io::Result<()> {
        let (dir, base) = self.parent(name)?;
        Ok(rfs::renameat(dir, base, rfs::CWD, dest)?)
    }

    /// Renames `from` to `to`, both beneath the root.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (from_dir, from_base) = self.parent(from)?;
        let (to_dir, to_base) = self.parent(to)?;
        Ok(rfs::renameat(from_dir, from_base, to_dir, to_base)?)
    }

    /// Unlinks a file (not a directory).
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let (dir, base) = self.parent(name)?;
        Ok(rfs::unlinkat(dir, base, AtFlags::empty())?)
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, name: &str) -> io::Result<()> {
        let (dir, base) = self.parent(name)?;
        Ok(rfs::unlinkat(dir, base, AtFlags::REMOVEDIR)?)
    }

    /// Creates one directory (its parent must exist).
    pub fn mkdir(&self, name: &str) -> io::Result<()> {
        let (dir, base) = self.parent(name)?;
        Ok(rfs::mkdirat(dir, base, Mode::from_raw_mode(DIR_MODE))?)
    }

    /// Sets the modification time of `name`, leaving its access time alone.
    pub fn set_mtime(&self, name: &str, nanos: u64) -> io::Result<()> {
        self.set_times(name, None, Some(nanos))
    }

    /// Sets the access and/or modification time of `name` (`None` leaves one alone).
    pub fn set_times(&self, name: &str, atime: Option<u64>, mtime: Option<u64>) -> io::Result<()> {
        let (dir, base) = self.parent(name)?;
        let spec = |t: Option<u64>| match t {
            Some(nanos) => Timespec {
                tv_sec: (nanos / 1_000_000_000) as i64,
                tv_nsec: (nanos % 1_000_000_000) as _,
            },
            None => Timespec {
                tv_sec: 0,
                tv_nsec: rfs::UTIME_OMIT,
            },
        };
        let times = Timestamps {
            last_access: spec(atime),
            last_modification: spec(mtime),
        };
        Ok(rfs::utimensat(dir, base, &times, AtFlags::SYMLINK_NOFOLLOW)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Beneath) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("files");
        std::fs::create_dir(&root).unwrap();
        (dir, Beneath::new(root))
    }

    #[test]
    fn planted_symlinks_redirect_nothing() {
        let (dir, tree) = setup();
        tree.check_supported().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(&outside, tree.root().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), tree.root().join("file-link")).unwrap();

        let loops = |r: io::Result<()>| r.unwrap_err().raw_os_error() == Some(libc::ELOOP);
        assert!(
            loops(tree.make_parents("link/x/y")),
            "a directory symlink is not followed"
        );
        assert!(loops(tree.mkdir("link/new")));
        assert!(loops(tree.unlink("link/secret")));
        assert!(loops(tree.set_mtime("link/secret", 1)));
        assert!(
            tree.open_file("file-link").is_err(),
            "a final symlink is not followed"
        );
        assert!(tree.open_file("link/secret").is_err());
        assert!(tree.list("link").is_err());
        let temp = dir.path().join("temp");
        std::fs::write(&temp, b"evil").unwrap();
        assert!(tree
            .at_made("link/secret")
            .is_err_and(|e| e.raw_os_error() == Some(libc::ELOOP)));
        let at = tree.at_made("file-link").unwrap();
        assert!(at.create_new().is_err() && at.open_rw().is_err());
        assert!(!at.stat().unwrap().is_file, "the symlink itself, not its target");
        // Renaming or unlinking the symlink itself acts on the link, never its target.
        tree.rename("file-link", "moved").unwrap();
        tree.unlink("moved").unwrap();
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"s");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }

    #[test]
    fn ordinary_operations_work() {
        let (dir, tree) = setup();
        let temp = dir.path().join("t");
        std::fs::write(&temp, b"hi").unwrap();
        let at = tree.at_made("a/b/c").unwrap();
        assert_eq!(at.stat().unwrap_err().raw_os_error(), Some(libc::ENOENT));
        at.install(&temp).unwrap();
        std::fs::write(&temp, b"swapped").unwrap();
        at.exchange(&temp).unwrap();
        assert_eq!(std::fs::read(&temp).unwrap(), b"hi");
        std::fs::write(&temp, b"hi").unwrap();
        at.install(&temp).unwrap();
        let new = tree.at_made("x/new").unwrap();
        std::io::Write::write_all(&mut new.create_new().unwrap(), b"n").unwrap();
        assert_eq!(new.create_new().unwrap_err().raw_os_error(), Some(libc::EEXIST));
        assert_eq!(std::fs::read(tree.root().join("x/new")).unwrap(), b"n");
        tree.set_mtime("a/b/c", 1_500_000_000_123_456_789).unwrap();
        let meta = tree.stat("a/b/c").unwrap();
        assert!(meta.is_file && !meta.is_dir);
        assert_eq!((meta.size, meta.mtime), (2, 1_500_000_000_123_456_789));
        assert_eq!(tree.list("a/b").unwrap(), vec!["c".to_string()]);
        assert!(tree.stat("").unwrap().is_dir);
        tree.rename("a/b/c", "d").unwrap();
        assert_eq!(
            std::io::read_to_string(tree.open_file("d").unwrap()).unwrap(),
            "hi"
        );
        assert_eq!(tree.rmdir("a").unwrap_err().raw_os_error(), Some(libc::ENOTEMPTY));
        tree.mkdir("e").unwrap();
        tree.rmdir("e").unwrap();
        tree.unlink("d").unwrap();
    }
}
