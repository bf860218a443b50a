//! The replicated tree on disk: name rules, and the file operations that `apply` performs.
//!
//! Layout inside the data directory:
//!
//! ```text
//! files/            the replicated tree, exactly what clients see (nothing else lives here)
//! sm/applied        last applied log id and membership (the state machine's own marker)
//! sm/tmp/           temp files, renamed into files/ when complete
//! sm/spare/         empty files made ahead, whose inodes new files take
//! sm/uploads/<id>/  staged chunks of large files, assembled by file:commit
//! ```
//!
//! Every change to `files/` is a rename of a complete temp file, an unlink, a mkdir/rmdir or a
//! rename, a change to an inode that nothing else can see, or a new file written in place
//! while new readers wait. So readers always see whole
//! versions, and snapshots can hard-link the tree instead of copying it. An overwrite
//! (`file:write` of an existing file) and a `file:patch` go into the live inode only when no
//! reader holds it open and no snapshot or backup links it, and new readers wait while they
//! do; otherwise the new version is built aside (a patch copies the file, holes staying
//! holes) and swapped in. While a snapshot is being archived from hard links, a touch
//! first replaces the file with a copy, so the snapshot keeps the old time.
//!
//! Outcomes that depend only on the tree (missing file, not a directory, …) are
//! [`FileError`]s: every replica reaches the same one. Anything else (EIO, ENOSPC) is a local
//! fault and is returned as an io error, which stops this node rather than let it diverge.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::warn;

use super::beneath::{At, Beneath};
use super::recycle::{ReadFile, Recycler};
use crate::error::FileError;
use crate::fsutil::file_times;
use crate::names;
use crate::raft::command::{Chunk, Command, Commit, Data, Layout, Patch, Span};

/// Converts a command's nanosecond timestamp to a `SystemTime`.
pub fn time_from_nanos(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// Nanoseconds since the epoch now: what a proposer stamps on a command.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Maps an io error to the deterministic outcome it stands for, or keeps it as a local fault.
///
/// `ELOOP` and `EXDEV` come from a symlink or a mount point that someone planted inside the
/// tree by hand (raftd never creates either): the path is refused rather than followed, and
/// the node keeps running, since stopping it would not undo the tampering.
fn outcome(name: &str, e: io::Error) -> io::Result<FileError> {
    let name = name.to_string();
    Ok(match e.raw_os_error() {
        Some(libc::ENOENT) => FileError::NotFound(name),
        Some(libc::EEXIST) => FileError::AlreadyExists(name),
        Some(libc::ENOTDIR) => FileError::NotADirectory(name),
        Some(libc::EISDIR) => FileError::IsADirectory(name),
        Some(libc::ENOTEMPTY) => FileError::NotEmpty(name),
        Some(libc::EINVAL) => FileError::Invalid(name),
        Some(libc::ELOOP) | Some(libc::EXDEV) => {
            warn!(path = %name, "refusing a path that crosses a symlink or mount planted in the tree");
            FileError::Invalid(name)
        }
        _ => return Err(e),
    })
}

/// Result of one tree operation: outer `Err` is a local fault, inner `Err` a replicated outcome.
pub type Applied = io::Result<Result<(), FileError>>;

/// The outcome of failing to resolve or create the directories above `name`: a file in the
/// way is `NotADirectory`.
fn parent_outcome(name: &str, e: io::Error) -> io::Result<FileError> {
    match e.raw_os_error() {
        Some(libc::EEXIST) | Some(libc::ENOTDIR) => Ok(FileError::NotADirectory(name.to_string())),
        _ => outcome(name, e),
    }
}

fn settle(name: &str, r: io::Result<()>) -> Applied {
    match r {
        Ok(()) => Ok(Ok(())),
        Err(e) => outcome(name, e).map(Err),
    }
}

/// Makes `file`, which held `old_len` bytes, hold exactly `data`, both its times `mtime`. It
/// is written over and cut only where it was longer, never truncated to zero first: on ext4
/// a truncate to zero makes the close start writeback at once (the "replace via truncate"
/// heuristic), and on a filesystem mounted with `discard` the freed blocks are discarded
/// synchronously — together the largest cost of an overwrite in a profile.
fn rewrite(file: &File, data: &[u8], old_len: u64, mtime: u64) -> io::Result<()> {
    file.write_all_at(data, 0)?;
    if old_len > data.len() as u64 {
        file.set_len(data.len() as u64)?;
    }
    file.set_times(file_times(mtime, mtime))
}

/// Refuses a name that breaks the naming rules, as the deterministic outcome every replica
/// reaches: names are checked where commands are applied, not only where requests enter,
/// because a command can also arrive through peer RPC, a snapshot or the log file itself.
fn checked(name: &str) -> Result<(), FileError> {
    names::check(name).map_err(|why| FileError::InvalidPath(format!("invalid path {name:?}: {why}")))
}

/// The replicated tree and its staging areas.
#[derive(Debug, Clone)]
pub struct Tree {
    /// `files/`: the tree clients see.
    pub root: PathBuf,
    /// `sm/tmp/`: temp files for atomic replace.
    pub tmp: PathBuf,
    /// `sm/uploads/`: staged chunks.
    pub uploads: PathBuf,
    /// `sm/spare/`: empty files made ahead of time, for new files to take their inodes.
    spare: PathBuf,
    /// Every operation on `files/` resolves beneath it.
    files: Beneath,
    /// Snapshots being archived from hard links of the tree right now.
    archiving: Arc<AtomicUsize>,
    /// Old inodes kept for reuse, and who reads which.
    recycler: Arc<Recycler>,
}

/// Marks a snapshot build in progress until dropped (see [`Tree::archiving`]).
pub struct Archiving(Arc<AtomicUsize>);

impl Drop for Archiving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Tree {
    /// Opens the layout under `data_dir`, creating missing directories and clearing temp files
    /// left by a crash.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let root = data_dir.join("files");
        let tree = Tree {
            files: Beneath::new(root.clone()),
            root,
            tmp: data_dir.join("sm").join("tmp"),
            uploads: data_dir.join("sm").join("uploads"),
            spare: data_dir.join("sm").join("spare"),
            archiving: Arc::default(),
            recycler: Arc::default(),
        };
        let _ = fs::remove_dir_all(&tree.tmp);
        let _ = fs::remove_dir_all(&tree.spare);
        for dir in [&tree.root, &tree.tmp, &tree.uploads, &tree.spare] {
            fs::create_dir_all(dir)?;
        }
        tree.files.check_supported()?;
        // Detached: it ends with the tree's recycler.
        tree.recycler.start_filler(tree.spare.clone())?;
        Ok(tree)
    }

    /// Declares a snapshot build that hard-links the tree, until the guard is dropped. Take it
    /// before linking, under the state-machine lock, so no touch slips in between.
    pub fn archiving(&self) -> Archiving {
        self.archiving.fetch_add(1, Ordering::SeqCst);
        Archiving(self.archiving.clone())
    }

    /// Opens a file of the tree for reading; its inode is not reused while the handle lives.
    pub fn open_read(&self, name: &str) -> io::Result<ReadFile> {
        self.recycler.open_read(|| self.files.open_file(name))
    }

    /// Opens the live file for reading as it changes (a FUSE writer's base): its inode is not
    /// reused while the handle lives, but patches may change it in place.
    pub fn open_follow(&self, name: &str) -> io::Result<ReadFile> {
        self.recycler.open_follow(|| self.files.open_file(name))
    }

    /// The tree, for reads that must stay inside it.
    pub fn files(&self) -> &Beneath {
        &self.files
    }

    fn temp(&self, tag: u64) -> PathBuf {
        self.tmp.join(format!("{tag:016x}"))
    }

    /// Creates the parents of `name`; a file in the way is `NotADirectory`.
    fn make_parents(&self, name: &str) -> Applied {
        match self.files.make_parents(name) {
            Ok(()) => Ok(Ok(())),
            Err(e) => parent_outcome(name, e).map(Err),
        }
    }

    /// Moves a complete temp file into place as `name`, with its times set: a new version's
    /// access time is its modification time (reads never move it; only `file:touch` does).
    fn install(&self, temp: &Path, name: &str, mtime: u64) -> Applied {
        File::options()
            .write(true)
            .open(temp)?
            .set_times(file_times(mtime, mtime))?;
        self.install_timed(temp, name)
    }

    /// [`install`](Self::install) for a temp file whose time is already set. Replacing a
    /// file swaps the two and keeps the old inode for reuse (see [`super::recycle`]).
    fn install_timed(&self, temp: &Path, name: &str) -> Applied {
        let at = match self.files.at_made(name) {
            Ok(at) => at,
            Err(e) => {
                let _ = fs::remove_file(temp);
                return parent_outcome(name, e).map(Err);
            }
        };
        let replaces_file = at.stat().is_ok_and(|m| m.is_file);
        self.install_at(&at, name, temp, replaces_file)
    }

    fn install_at(&self, at: &At, name: &str, temp: &Path, replaces_file: bool) -> Applied {
        if replaces_file && at.exchange(temp).is_ok() {
            self.recycler.offer(temp.to_path_buf())?;
            return Ok(Ok(()));
        }
        let result = settle(name, at.install(temp));
        if !matches!(result, Ok(Ok(()))) {
            let _ = fs::remove_file(temp);
        }
        result
    }

    /// Applies one command; `tag` (the entry's index) names its temp file.
    pub fn apply(&self, cmd: &Command, tag: u64) -> Applied {
        match cmd {
            Command::Write(c) if c.existing && self.files.stat(&c.filename).is_err() => {
                Ok(Err(gone(&c.filename)))
            }
            Command::Write(c) => self.write(&c.filename, &c.data, c.mtime, tag),
            Command::Delete(c) => self.delete(&c.filename, tag),
            Command::Mkdir(c) => self.mkdir(&c.dirname, c.mtime),
            Command::Rmdir(c) => self.rmdir(&c.dirname),
            Command::Rename(c) => self.rename(&c.from, &c.to),
            Command::Touch(c) => self.touch(&c.filename, c.mtime, c.atime, tag),
            Command::Chunk(c) => self.chunk(c),
            Command::Commit(c) => self.commit(c, tag),
            Command::Patch(c) => self.patch(c, tag),
            // The state machine applies a batch's commands one by one, each with its own
            // outcome; here (replaying a log by hand) each is applied and the batch succeeds.
            Command::Batch(b) => {
                for (i, cmd) in b.commands.iter().enumerate() {
                    let tag = super::state_machine::batched_tag(tag, i);
                    self.apply(cmd, tag)?.ok();
                }
                Ok(Ok(()))
            }
        }
    }

    /// `file:patch`: change part of a file, or create it from the patch alone.
    pub fn patch(&self, patch: &Patch, tag: u64) -> Applied {
        let spans: Vec<Span> = patch
            .writes
            .iter()
            .map(|w| Span(w.offset, w.data.0.len() as u64))
            .collect();
        if let Err(e) = self.check_layout(&patch.filename, &patch.layout, &spans) {
            return Ok(Err(e));
        }
        self.patch_with(
            &patch.filename,
            &patch.layout,
            patch.mtime,
            tag,
            patch.existing,
            |file| {
                for w in &patch.writes {
                    file.write_all_at(&w.data.0, w.offset)?;
                }
                Ok(())
            },
        )
    }

    /// Refuses, the same way on every replica, a patch whose length or ranges make no sense.
    fn check_layout(&self, name: &str, layout: &Layout, spans: &[Span]) -> Result<(), FileError> {
        checked(name)?;
        let inside = |s: &Span| s.0.checked_add(s.1).is_some_and(|end| end <= layout.size);
        if layout.size > MAX_FILE_SIZE || !spans.iter().chain(&layout.zeros).all(inside) {
            return Err(FileError::Invalid(format!(
                "{name}: a patch to length {} with ranges past it or beyond {MAX_FILE_SIZE} bytes",
                layout.size
            )));
        }
        Ok(())
    }

    /// Applies a layout and `write` to `name`: in the live inode when nothing else can see it
    /// (see the module notes), else to a sparse copy swapped in; a missing file is created.
    /// The name's directory is resolved once for all the steps, as in [`write`](Self::write).
    fn patch_with(
        &self,
        name: &str,
        layout: &Layout,
        mtime: u64,
        tag: u64,
        existing: bool,
        write: impl FnOnce(&File) -> io::Result<()>,
    ) -> Applied {
        let found = self.files.at(name).and_then(|at| Ok((at.stat()?, at)));
        let current = match found {
            Ok((m, _)) if m.is_dir => return Ok(Err(FileError::IsADirectory(name.to_string()))),
            Ok((m, _)) if !m.is_file => return Ok(Err(FileError::Invalid(name.to_string()))),
            Ok(found) => Some(found),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return outcome(name, e).map(Err),
        };
        // A patch keeps the access time (a new file's is its modification time).
        let atime = current.as_ref().map_or(mtime, |(m, _)| m.atime);
        let shaped = |file: &File| -> io::Result<()> {
            shape(file, layout)?;
            write(file)?;
            file.set_times(file_times(atime, mtime))
        };
        let temp = self.temp(tag);
        let scratch = || {
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)
        };
        match current {
            None if existing => Ok(Err(gone(name))),
            None => {
                shaped(&scratch()?)?;
                self.install_timed(&temp, name)
            }
            Some((meta, at)) => {
                if meta.nlink == 1 {
                    if let Some(_no_new_readers) = self.recycler.exclusive(meta.ino) {
                        shaped(&at.open_rw()?)?;
                        return Ok(Ok(()));
                    }
                }
                let copy = scratch()?;
                let live = at.open_rw()?;
                super::sparse::copy(&live, &copy, layout.cut.unwrap_or(u64::MAX).min(meta.size))?;
                shaped(&copy)?;
                drop(copy);
                self.install_at(&at, name, &temp, true)
            }
        }
    }

    /// `file:write`: replace the whole file. The name's directory is resolved once for all
    /// the steps (each resolution walks the path from the root).
    pub fn write(&self, name: &str, data: &Data, mtime: u64, tag: u64) -> Applied {
        if let Err(e) = checked(name) {
            return Ok(Err(e));
        }
        let at = match self.files.at_made(name) {
            Ok(at) => at,
            Err(e) => return parent_outcome(name, e).map(Err),
        };
        let current = at.stat();
        // An overwrite of a file nothing else can see (no reader holds it, no snapshot or
        // backup links it) goes into the live inode, new readers waiting meanwhile: no temp
        // file and no rename, the largest costs of an overwrite once writes come in batches.
        if let Ok(m) = &current {
            if m.is_file && m.nlink == 1 {
                if let Some(_no_new_readers) = self.recycler.exclusive(m.ino) {
                    rewrite(&at.open_rw()?, &data.0, m.size, mtime)?;
                    return Ok(Ok(()));
                }
            }
        }
        // A new file is created in place, new readers waiting until it is whole — unless a
        // spare inode can be reused (one freed by an overwrite or a delete, or made ahead of
        // time): allocating one right after many were freed is what costs most on ext4 (see
        // [`super::recycle`]).
        let missing = current
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT));
        // A lone new file (a client waiting with nothing else in flight) may also take an
        // inode made ahead of time; one of a batch is created in place (see `recycle`).
        let spare = if missing && !crate::store::state_machine::is_batched(tag) {
            self.recycler.take_for_new()
        } else {
            self.recycler.take()
        };
        if missing && spare.is_none() {
            let _no_new_readers = self.recycler.hold_readers();
            rewrite(&at.create_new()?, &data.0, 0, mtime)?;
            return Ok(Ok(()));
        }
        // Otherwise the new version is built aside, into a spare inode when there is one,
        // and swapped in.
        let temp = match spare {
            Some(spare) => {
                let file = File::options().write(true).open(&spare)?;
                rewrite(&file, &data.0, file.metadata()?.len(), mtime)?;
                spare
            }
            None => {
                let temp = self.temp(tag);
                rewrite(&File::create(&temp)?, &data.0, 0, mtime)?;
                temp
            }
        };
        self.install_at(&at, name, &temp, current.is_ok_and(|m| m.is_file))
    }

    /// `file:delete`: unlink a file — by moving it aside as a spare inode when nothing reads
    /// it (see [`super::recycle`]).
    pub fn delete(&self, name: &str, tag: u64) -> Applied {
        if let Err(e) = checked(name) {
            return Ok(Err(e));
        }
        if self.files.stat(name).is_ok_and(|m| m.is_file) {
            let aside = self.temp(tag);
            if self.files.take_out(name, &aside).is_ok() {
                self.recycler.offer(aside)?;
                return Ok(Ok(()));
            }
        }
        settle(name, self.files.unlink(name))
    }

    /// `file:mkdir`: create one directory (parents must exist).
    pub fn mkdir(&self, name: &str, mtime: u64) -> Applied {
        if let Err(e) = checked(name) {
            return Ok(Err(e));
        }
        let r = settle(name, self.files.mkdir(name))?;
        if r.is_ok() {
            self.files.set_mtime(name, mtime)?;
        }
        Ok(r)
    }

    /// `file:rmdir`: remove an empty directory.
    pub fn rmdir(&self, name: &str) -> Applied {
        if let Err(e) = checked(name) {
            return Ok(Err(e));
        }
        settle(name, self.files.rmdir(name))
    }

    /// `file:rename`, with rename(2)'s rules for replacing targets.
    pub fn rename(&self, from: &str, to: &str) -> Applied {
        if let Err(e) = checked(from).and_then(|()| checked(to)) {
            return Ok(Err(e));
        }
        if to.starts_with(from) && to.as_bytes().get(from.len()) == Some(&b'/') {
            return Ok(Err(FileError::Invalid(to.to_string())));
        }
        if let Err(e) = self.files.stat(from) {
            return outcome(from, e).map(Err);
        }
        if let Err(e) = self.make_parents(to)? {
            return Ok(Err(e));
        }
        settle(to, self.files.rename(from, to))
    }

    /// `file:touch`: set the modification and/or access time — of the live inode, except
    /// while a snapshot is archiving hard links of the tree: then a file is replaced by a copy
    /// carrying the new times (directories are never linked, so they are always touched in
    /// place). A directory's access time is not replicated (listing it moves it).
    pub fn touch(&self, name: &str, mtime: Option<u64>, atime: Option<u64>, tag: u64) -> Applied {
        if let Err(e) = checked(name) {
            return Ok(Err(e));
        }
        let current = self.files.stat(name);
        let linked_file = current.as_ref().ok().filter(|m| m.is_file);
        if let (true, Some(old)) = (self.archiving.load(Ordering::SeqCst) > 0, linked_file) {
            let temp = self.temp(tag);
            let copy = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)?;
            super::sparse::copy(&self.files.open_file(name)?, &copy, old.size)?;
            copy.set_times(file_times(atime.unwrap_or(old.atime), mtime.unwrap_or(old.mtime)))?;
            drop(copy);
            return self.install_timed(&temp, name);
        }
        let atime = atime.filter(|_| current.as_ref().is_ok_and(|m| m.is_file));
        if mtime.is_none() && atime.is_none() {
            return match current {
                Ok(_) => Ok(Ok(())),
                Err(e) => outcome(name, e).map(Err),
            };
        }
        settle(name, self.files.set_times(name, atime, mtime))
    }

    fn upload_dir(&self, upload: u64) -> PathBuf {
        self.uploads.join(format!("{upload:016x}"))
    }

    /// `file:chunk`: stage one piece (rewriting it on replay is harmless). Written under a
    /// temporary name and renamed, so a snapshot linking the staging area never sees a piece
    /// half-written.
    pub fn chunk(&self, chunk: &Chunk) -> Applied {
        let dir = self.upload_dir(chunk.upload);
        fs::create_dir_all(&dir)?;
        let piece = dir.join(format!("{:08}", chunk.seq));
        let partial = piece.with_extension("partial");
        fs::write(&partial, &chunk.data.0)?;
        fs::rename(&partial, &piece)?;
        Ok(Ok(()))
    }

    /// Records the log's clock in an upload's staging directory: its last sign of life, for
    /// [`reclaim_uploads`](Self::reclaim_uploads). A file of its own (written and renamed,
    /// never rewritten in place) so it travels in snapshots like the pieces.
    pub fn stamp_upload(&self, upload: u64, clock: u64) -> io::Result<()> {
        let dir = self.upload_dir(upload);
        let partial = dir.join(format!("{UPLOAD_STAMP}.partial"));
        fs::write(&partial, clock.to_string())?;
        fs::rename(&partial, dir.join(UPLOAD_STAMP))
    }

    /// Drops staged uploads whose stamp is more than `window` behind `clock`: a client that
    /// died mid-upload leaves neither a commit nor an abort. Every replica decides from the
    /// same stamps and the same clock at the same entry, so they drop the same uploads; an
    /// upload without a stamp counts as stamped at 0. Returns how many were dropped.
    pub fn reclaim_uploads(&self, clock: u64, window: u64) -> io::Result<usize> {
        let mut dropped = 0;
        for entry in fs::read_dir(&self.uploads)? {
            let dir = entry?.path();
            let stamp = fs::read_to_string(dir.join(UPLOAD_STAMP))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            if stamp.saturating_add(window) < clock {
                fs::remove_dir_all(&dir)?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// `file:commit`: concatenate the staged pieces into `filename`, or drop them.
    pub fn commit(&self, commit: &Commit, tag: u64) -> Applied {
        let dir = self.upload_dir(commit.upload);
        let Some(name) = &commit.filename else {
            return match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(Ok(())),
            };
        };
        if let Err(e) = checked(name) {
            return Ok(Err(e));
        }
        if commit.existing && self.files.stat(name).is_err() {
            let dropped = Commit {
                filename: None,
                ..commit.clone()
            };
            return self.commit(&dropped, tag).map(|_| Err(gone(name)));
        }
        let mut pieces = match fs::read_dir(&dir) {
            Ok(entries) => entries
                .map(|e| e.map(|e| e.path()))
                .filter(|p| p.as_ref().map_or(true, |p| p.extension().is_none()))
                .collect::<io::Result<Vec<_>>>()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Err(FileError::NotFound(format!(
                    "upload {:016x} for {name}",
                    commit.upload
                ))))
            }
            Err(e) => return Err(e),
        };
        pieces.sort();
        if let Some(patch) = &commit.patch {
            let staged = pieces
                .iter()
                .map(|p| fs::metadata(p).map(|m| m.len()))
                .sum::<io::Result<u64>>()?;
            let placed: u64 = patch.spans.iter().map(|s| s.1).sum();
            let result = match self.check_layout(name, &patch.layout, &patch.spans) {
                Err(e) => Ok(Err(e)),
                Ok(()) if staged != placed => Ok(Err(FileError::Invalid(format!(
                    "{name}: {staged} staged bytes for {placed} bytes of ranges"
                )))),
                Ok(()) => self.patch_with(name, &patch.layout, commit.mtime, tag, false, |file| {
                    place(&pieces, &patch.spans, file)
                }),
            }?;
            fs::remove_dir_all(&dir)?;
            return Ok(result);
        }
        let temp = self.temp(tag);
        let mut out = File::create(&temp)?;
        for piece in &pieces {
            io::copy(&mut File::open(piece)?, &mut out)?;
        }
        drop(out);
        let result = self.install(&temp, name, commit.mtime)?;
        fs::remove_dir_all(&dir)?;
        Ok(result)
    }
}

/// The longest file a patch may make: ext4's limit with 4 KiB blocks. Checked where patches
/// apply, so every replica refuses an absurd length alike instead of one disk failing it.
pub const MAX_FILE_SIZE: u64 = 16 << 40;

/// Cuts, sizes and punches `file` as `layout` says (see [`Layout`]).
fn shape(file: &File, layout: &Layout) -> io::Result<()> {
    let len = file.metadata()?.len();
    let kept = layout.cut.map_or(len, |cut| cut.min(len));
    if kept < len {
        file.set_len(kept)?;
    }
    if kept != layout.size {
        file.set_len(layout.size)?;
    }
    for zero in &layout.zeros {
        super::sparse::punch(file, zero.0, zero.1)?;
    }
    Ok(())
}

/// Writes the staged `pieces`, read in order as one stream, into `spans` of `file`.
fn place(pieces: &[PathBuf], spans: &[Span], file: &File) -> io::Result<()> {
    let mut stream: Box<dyn io::Read> = Box::new(io::empty());
    for piece in pieces {
        stream = Box::new(io::Read::chain(stream, File::open(piece)?));
    }
    let mut buf = vec![0u8; 1 << 16];
    for span in spans {
        let mut at = span.0;
        while at < span.end() {
            let n = (span.end() - at).min(buf.len() as u64) as usize;
            io::Read::read_exact(&mut stream, &mut buf[..n])?;
            file.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
    }
    Ok(())
}

/// The file in an upload's staging directory holding its last chunk's log clock.
const UPLOAD_STAMP: &str = "clock.stamp";

/// Why a write of a file that had to exist did nothing.
fn gone(name: &str) -> FileError {
    FileError::NotFound(format!("{name} was deleted or renamed while open for writing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Overwrites and deletes reuse the old inode (no allocation) unless a reader holds it,
    /// and a reader keeps its whole version.
    #[test]
    fn overwrites_reuse_inodes_that_nobody_reads() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        let ino = || fs::metadata(tree.root.join("f")).unwrap().ino();
        let write = |v: &str, tag| tree.write("f", &Data(v.into()), 1, tag).unwrap().unwrap();
        write("v1", 1);
        let first = ino();
        write("v2", 2);
        assert_eq!(ino(), first, "nobody reads it: overwritten in place");
        assert_eq!(fs::read(tree.root.join("f")).unwrap(), b"v2");
        write("v3", 3);
        assert_eq!(ino(), first);
        let mut reader = tree.open_read("f").unwrap();
        let held = ino();
        write("v4", 4);
        write("v5", 5);
        assert_ne!(ino(), held, "an inode being read is not reused");
        assert_eq!(io::read_to_string(&mut reader).unwrap(), "v3");
        assert_eq!(fs::read(tree.root.join("f")).unwrap(), b"v5");
        // A deleted file's inode is kept too, and the next new file gets it.
        let before = ino();
        tree.delete("f", 6).unwrap().unwrap();
        assert!(!tree.root.join("f").exists());
        tree.write("g", &Data(b"new".to_vec()), 1, 7).unwrap().unwrap();
        assert_eq!(fs::metadata(tree.root.join("g")).unwrap().ino(), before);
        assert_eq!(fs::read(tree.root.join("g")).unwrap(), b"new");
    }

    #[test]
    fn a_reused_inode_holds_exactly_the_new_contents() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        let sizes = [4096 * 3, 5, 0, 20_000, 7, 7, 1];
        for (i, &n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..n).map(|b| (b % 251) as u8 ^ i as u8).collect();
            tree.write("f", &Data(data.clone()), 1_000 + i as u64, i as u64)
                .unwrap()
                .unwrap();
            assert_eq!(
                fs::read(tree.root.join("f")).unwrap(),
                data,
                "after writing {n} bytes"
            );
            let mtime = fs::metadata(tree.root.join("f")).unwrap().modified().unwrap();
            assert_eq!(mtime, time_from_nanos(1_000 + i as u64));
        }
    }

    fn patch(name: &str, cut: Option<u64>, size: u64, zeros: &[(u64, u64)], writes: &[(u64, &str)]) -> Patch {
        use crate::raft::command::Piece;
        Patch {
            filename: name.into(),
            layout: Layout {
                cut,
                size,
                zeros: zeros.iter().map(|&(o, l)| Span(o, l)).collect(),
            },
            writes: writes
                .iter()
                .map(|&(offset, text)| Piece {
                    offset,
                    data: Data(text.into()),
                })
                .collect(),
            mtime: 5_000_000_000,
            req: None,
            existing: false,
        }
    }

    /// A patch changes only what it names: bytes at offsets, a cut, a new length, holes; far
    /// offsets and long lengths cost no space.
    #[test]
    fn patches_change_what_they_name_and_keep_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        let path = tree.root.join("f");
        let far = (1u64 << 31) + 1;
        tree.patch(&patch("f", None, far + 1, &[], &[(far, "x")]), 1)
            .unwrap()
            .unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), far + 1);
        assert!(meta.blocks() <= 64, "sparse: {} blocks", meta.blocks());
        let mut byte = [0u8; 1];
        File::open(&path).unwrap().read_exact_at(&mut byte, far).unwrap();
        assert_eq!(&byte, b"x");
        assert_eq!(meta.mtime(), 5);

        tree.write("g", &Data(b"abcdefgh".to_vec()), 1, 2)
            .unwrap()
            .unwrap();
        let ino = fs::metadata(tree.root.join("g")).unwrap().ino();
        tree.patch(&patch("g", Some(2), 6, &[], &[(4, "X")]), 3)
            .unwrap()
            .unwrap();
        assert_eq!(fs::read(tree.root.join("g")).unwrap(), b"ab\0\0X\0");
        assert_eq!(
            fs::metadata(tree.root.join("g")).unwrap().ino(),
            ino,
            "changed in place: nobody was reading it"
        );

        // A reader keeps its whole version: the patch goes to a copy, holes and all.
        let reader = tree.open_read("f").unwrap();
        tree.patch(&patch("f", None, far + 1, &[(0, 4096)], &[(1, "y")]), 4)
            .unwrap()
            .unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_ne!(meta.ino(), reader.metadata().unwrap().ino());
        assert!(
            meta.blocks() <= 64,
            "the copy is sparse: {} blocks",
            meta.blocks()
        );
        let mut two = [0u8; 2];
        File::open(&path).unwrap().read_exact_at(&mut two, 0).unwrap();
        assert_eq!(&two, b"\0y");
        reader.read_exact_at(&mut two, 0).unwrap();
        assert_eq!(two, [0, 0]);
        File::open(&path).unwrap().read_exact_at(&mut byte, far).unwrap();
        assert_eq!(&byte, b"x", "the copy kept what the patch did not touch");

        let refused = |r: Applied| matches!(r.unwrap(), Err(FileError::Invalid(_)));
        assert!(refused(tree.patch(&patch("h", None, 2, &[], &[(2, "z")]), 5)));
        assert!(refused(
            tree.patch(&patch("h", None, MAX_FILE_SIZE + 1, &[], &[]), 6)
        ));
        assert!(refused(
            tree.patch(&patch("h", None, 2, &[(1, u64::MAX)], &[]), 7)
        ));
        assert!(!tree.root.join("h").exists());
        let mut gone_patch = patch("h", None, 1, &[], &[]);
        gone_patch.existing = true;
        assert!(matches!(
            tree.patch(&gone_patch, 8).unwrap(),
            Err(FileError::NotFound(_))
        ));
        tree.mkdir("d", 1).unwrap().unwrap();
        assert_eq!(
            tree.patch(&patch("d", None, 1, &[], &[]), 9).unwrap(),
            Err(FileError::IsADirectory("d".into()))
        );
    }

    /// A large patch stages its bytes as chunks; the commit places them by its spans.
    #[test]
    fn a_staged_patch_places_its_pieces() {
        use crate::raft::command::StagedPatch;
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        tree.write("f", &Data(b"0123456789".to_vec()), 1, 1)
            .unwrap()
            .unwrap();
        let stage = || {
            for (seq, text) in ["ab", "cde"].iter().enumerate() {
                let chunk = Chunk {
                    upload: 9,
                    seq: seq as u32,
                    data: Data(text.as_bytes().to_vec()),
                };
                tree.chunk(&chunk).unwrap().unwrap();
            }
        };
        stage();
        let commit = |spans: Vec<Span>| Commit {
            upload: 9,
            filename: Some("f".into()),
            mtime: 1,
            req: None,
            existing: true,
            patch: Some(StagedPatch {
                layout: Layout {
                    cut: None,
                    size: 12,
                    zeros: vec![],
                },
                spans,
            }),
        };
        assert!(matches!(
            tree.commit(&commit(vec![Span(0, 1)]), 2).unwrap(),
            Err(FileError::Invalid(_))
        ));
        assert_eq!(
            fs::read(tree.root.join("f")).unwrap(),
            b"0123456789",
            "refused whole"
        );
        stage();
        tree.commit(&commit(vec![Span(1, 1), Span(5, 3), Span(11, 1)]), 3)
            .unwrap()
            .unwrap();
        assert_eq!(fs::read(tree.root.join("f")).unwrap(), b"0a234bcd89\0e");
        assert_eq!(fs::read_dir(&tree.uploads).unwrap().count(), 0);
    }

    /// Access times are the replicated ones: set by a touch, kept by reads and patches, and a
    /// new version's is its modification time.
    #[test]
    fn access_times_move_only_when_set() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        let times = || {
            let m = fs::metadata(tree.root.join("f")).unwrap();
            (m.atime(), m.mtime())
        };
        tree.write("f", &Data(b"x".to_vec()), 5_000_000_000, 1)
            .unwrap()
            .unwrap();
        assert_eq!(times(), (5, 5));
        tree.touch("f", None, Some(7_000_000_000), 2).unwrap().unwrap();
        assert_eq!(
            times(),
            (7, 5),
            "an access time alone leaves the modification time"
        );
        let mut text = String::new();
        io::Read::read_to_string(&mut tree.open_read("f").unwrap(), &mut text).unwrap();
        assert_eq!(times(), (7, 5), "reading does not move it");
        tree.patch(&patch("f", None, 2, &[], &[(1, "y")]), 3)
            .unwrap()
            .unwrap();
        assert_eq!(times(), (7, 5), "a patch keeps it");
        tree.touch("f", Some(9_000_000_000), None, 4).unwrap().unwrap();
        assert_eq!(times(), (7, 9));
        tree.write("f", &Data(b"z".to_vec()), 11_000_000_000, 5)
            .unwrap()
            .unwrap();
        assert_eq!(times(), (11, 11), "a new version");
        assert!(matches!(
            tree.touch("gone", None, Some(1), 6).unwrap(),
            Err(FileError::NotFound(_))
        ));
    }

    #[test]
    fn operations_give_deterministic_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        let data = Data(b"x".to_vec());
        assert_eq!(tree.write("a/b", &data, 1, 1).unwrap(), Ok(()));
        assert_eq!(
            tree.write("a/b/c", &data, 1, 2).unwrap(),
            Err(FileError::NotADirectory("a/b/c".into()))
        );
        assert_eq!(
            tree.write("a", &data, 1, 3).unwrap(),
            Err(FileError::IsADirectory("a".into()))
        );
        assert_eq!(
            tree.delete("nope", 1).unwrap(),
            Err(FileError::NotFound("nope".into()))
        );
        assert_eq!(tree.rmdir("a").unwrap(), Err(FileError::NotEmpty("a".into())));
        assert_eq!(
            tree.rename("a", "a/x").unwrap(),
            Err(FileError::Invalid("a/x".into()))
        );
        assert_eq!(tree.rename("a/b", "c/d").unwrap(), Ok(()));
        assert_eq!(fs::read(tree.root.join("c/d")).unwrap(), b"x");
        assert!(
            fs::read_dir(&tree.tmp).unwrap().next().is_none(),
            "no temp files left"
        );
    }

    #[test]
    fn bad_names_are_refused_where_they_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        let data = Data(b"x".to_vec());
        let refused = |r: Applied| matches!(r.unwrap(), Err(FileError::InvalidPath(_)));
        for bad in ["../escaped", "/abs", "a/../../x", "", "a//b", "../log"] {
            assert!(refused(tree.write(bad, &data, 1, 1)), "write {bad:?}");
            assert!(refused(tree.delete(bad, 2)), "delete {bad:?}");
            assert!(refused(tree.mkdir(bad, 1)), "mkdir {bad:?}");
            assert!(refused(tree.rmdir(bad)), "rmdir {bad:?}");
            assert!(refused(tree.touch(bad, Some(1), None, 1)), "touch {bad:?}");
            assert!(refused(tree.rename("ok", bad)), "rename to {bad:?}");
            assert!(refused(tree.rename(bad, "ok")), "rename from {bad:?}");
            let commit = Commit {
                upload: 1,
                filename: Some(bad.into()),
                mtime: 0,
                req: None,
                existing: false,
                patch: None,
            };
            assert!(refused(tree.commit(&commit, 2)), "commit {bad:?}");
        }
        let entries: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries.len(), 2, "only files/ and sm/ exist: {entries:?}");
    }

    #[test]
    fn a_touch_during_a_snapshot_leaves_the_linked_inode_alone() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        assert_eq!(
            tree.write("f", &Data(b"x".to_vec()), 1_000_000_000, 1).unwrap(),
            Ok(())
        );
        let linked = dir.path().join("linked");
        let guard = tree.archiving();
        fs::hard_link(tree.root.join("f"), &linked).unwrap();
        assert_eq!(tree.touch("f", Some(2_000_000_000), None, 2).unwrap(), Ok(()));
        drop(guard);
        let mtime = |p: &Path| fs::metadata(p).unwrap().mtime();
        assert_eq!(
            (mtime(&linked), mtime(&tree.root.join("f"))),
            (1, 2),
            "the snapshot's link keeps its time"
        );
        assert_eq!(fs::read(tree.root.join("f")).unwrap(), b"x");
        assert_eq!(tree.touch("f", Some(3_000_000_000), None, 3).unwrap(), Ok(()));
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_ne!(ino(&linked), ino(&tree.root.join("f")));
        assert_eq!(mtime(&tree.root.join("f")), 3);
    }

    #[test]
    fn a_planted_symlink_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, tree.root.join("link")).unwrap();
        let data = Data(b"x".to_vec());
        assert_eq!(
            tree.write("link/f", &data, 1, 1).unwrap(),
            Err(FileError::Invalid("link/f".into()))
        );
        assert_eq!(
            tree.mkdir("link/d", 1).unwrap(),
            Err(FileError::Invalid("link/d".into()))
        );
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }
}
