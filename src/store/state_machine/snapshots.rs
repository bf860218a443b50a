//! The state machine's snapshots: building one from hard links of the tree, keeping the
//! newest, installing one received from the leader, and starting over from the newest after
//! a crash.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::{Dedup, Marker, Shared, State, Touched};
use crate::fsutil;
use crate::raft::SnapshotMeta;
use crate::store::snapshot::{self, Header};
use crate::store::Change;

impl Shared {
    pub(super) fn build(&self) -> std::io::Result<(SnapshotMeta, PathBuf)> {
        let started = std::time::Instant::now();
        let tag: u64 = rand::random();
        let staging = self.snapshots.join(format!("build-{tag:016x}"));
        // Taken before linking, held until the archive is written.
        let archiving = self.tree.archiving();
        let header = self.link_tree_at_applied(&staging.join("files"), |state| {
            // Staged chunks: few, and not among the paths commands name; linked here.
            snapshot::link_tree(&self.tree.uploads, &staging.join("uploads"))?;
            let last = state.marker.last_applied;
            let snapshot_id = match last {
                Some(l) => format!("{}-{}-{tag:x}", l.leader_id.term, l.index),
                None => format!("0-0-{tag:x}"),
            };
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: state.marker.membership.clone(),
                snapshot_id,
            };
            Ok(Header {
                meta,
                dedup: state.dedup.save(),
            })
        });
        let header = match header {
            Ok(h) => h,
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let path = self.snapshots.join(format!("{}.snap", header.meta.snapshot_id));
        let tmp = path.with_extension("tmp");
        // The rename must be durable before openraft purges the log this snapshot replaces.
        let written = snapshot::write_archive(&staging, &header, &tmp)
            .and_then(|()| fs::rename(&tmp, &path))
            .and_then(|()| fsutil::sync_parent(&path));
        drop(archiving);
        fs::remove_dir_all(&staging)?;
        written?;
        info!(id = %header.meta.snapshot_id, "snapshot built");
        let events = crate::metrics::events();
        events
            .snapshot_build_seconds
            .observe(crate::metrics::since(started));
        events
            .snapshot_build_bytes
            .observe(fs::metadata(&path).map_or(0, |m| m.len()) as f64);
        self.publish(header.meta.clone(), path.clone())?;
        fsutil::release_free_memory();
        Ok((header.meta, path))
    }

    /// Hard-links the tree into `dst` as it is at the applied index, then runs `at_applied`
    /// on the state at that same point, under the lock. Applies go on while the tree is
    /// linked, noting what they change; those paths are linked again (most of them without
    /// the lock, the last few with it), so the lock is held for a handful of paths, not for
    /// a walk of the whole tree: no write waits on a snapshot of a large tree. Only one
    /// build tracks changes at a time; another links under the lock throughout.
    pub(super) fn link_tree_at_applied<T>(
        &self,
        dst: &Path,
        at_applied: impl FnOnce(&mut State) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let root = &self.tree.root;
        {
            let mut state = self.lock();
            if state.linking.is_some() {
                snapshot::link_tree(root, dst)?;
                return at_applied(&mut state);
            }
            state.linking = Some(Default::default());
        }
        let relink_all = || -> std::io::Result<()> {
            if dst.exists() {
                fs::remove_dir_all(dst)?;
            }
            snapshot::link_tree(root, dst)
        };
        let catch_up = |touched: Touched| -> std::io::Result<()> {
            if touched.everything {
                return relink_all();
            }
            touched
                .paths
                .iter()
                .try_for_each(|p| snapshot::relink(root, dst, p))
        };
        let unlocked = snapshot::link_tree(root, dst).and_then(|()| {
            let touched = self.lock().linking.replace(Default::default());
            catch_up(touched.unwrap_or_default())
        });
        let mut state = self.lock();
        let touched = state.linking.take().unwrap_or_default();
        // A copy that could not be brought up to date piecemeal is made again, whole.
        let caught_up = unlocked.and_then(|()| catch_up(touched)).or_else(|e| {
            warn!(cause = %e, "relinking the whole tree for a snapshot");
            relink_all()
        });
        caught_up?;
        at_applied(&mut state)
    }

    /// Makes `path` the current snapshot if it is newer, deleting the one it replaces.
    pub(super) fn publish(&self, meta: SnapshotMeta, path: PathBuf) -> std::io::Result<()> {
        let mut state = self.lock();
        let newer = state
            .current
            .as_ref()
            .is_none_or(|(m, _)| m.last_log_id <= meta.last_log_id);
        let obsolete = if newer {
            state.current.replace((meta, path)).map(|c| c.1)
        } else {
            Some(path)
        };
        drop(state);
        match obsolete {
            Some(old) => fs::remove_file(old).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            }),
            None => Ok(()),
        }
    }

    /// Keeps the received snapshot as `<id>.snap`: renamed if it is the file openraft
    /// streamed into, else copied from the handle it was given.
    pub(super) fn keep_received(
        &self,
        meta: &SnapshotMeta,
        mut file: File,
        received: Option<PathBuf>,
    ) -> std::io::Result<PathBuf> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let target = self.snapshots.join(format!("{}.snap", meta.snapshot_id));
        let handle = file.metadata()?;
        let same =
            |p: &PathBuf| fs::metadata(p).is_ok_and(|m| m.ino() == handle.ino() && m.dev() == handle.dev());
        match received {
            Some(path) if same(&path) => {
                file.sync_all()?;
                fs::rename(&path, &target)?;
                fsutil::sync_parent(&target)?;
            }
            other => {
                let tmp = target.with_extension("tmp");
                file.seek(SeekFrom::Start(0))?;
                let mut out = File::create(&tmp)?;
                std::io::copy(&mut file, &mut out)?;
                out.sync_all()?;
                fs::rename(&tmp, &target)?;
                fsutil::sync_parent(&target)?;
                if let Some(path) = other {
                    let _ = fs::remove_file(path);
                }
            }
        }
        Ok(target)
    }

    /// Replaces the tree and staged uploads with an archive's contents (or with nothing) and
    /// points the applied marker at what that covers.
    pub(super) fn reset_to(&self, meta: &SnapshotMeta, archive: Option<&Path>) -> std::io::Result<()> {
        let tag: u64 = rand::random();
        let restore = self.snapshots.join(format!("restore-{tag:016x}"));
        let trash = self.snapshots.join(format!("trash-{tag:016x}"));
        let dedup = match archive {
            Some(archive) => snapshot::extract(File::open(archive)?, &restore)?.dedup,
            None => {
                fs::create_dir_all(restore.join("files"))?;
                fs::create_dir_all(restore.join("uploads"))?;
                Default::default()
            }
        };
        fs::create_dir_all(&trash)?;
        {
            let mut state = self.lock();
            fs::rename(&self.tree.root, trash.join("files"))?;
            fs::rename(restore.join("files"), &self.tree.root)?;
            fs::rename(&self.tree.uploads, trash.join("uploads"))?;
            fs::rename(restore.join("uploads"), &self.tree.uploads)?;
            // A build linking the old tree must link the new one whole.
            if let Some(touched) = &mut state.linking {
                touched.everything = true;
            }
            fsutil::sync_parent(&self.tree.root)?;
            fsutil::sync_parent(&self.tree.uploads)?;
            state.marker = Marker {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
            self.applied_index
                .store(meta.last_log_id.map_or(0, |l| l.index), Ordering::Release);
            state.dedup = Dedup::restore(dedup);
            state.save_marker()?;
            state.marker_file.sync_all()?;
        }
        fs::remove_dir_all(&trash)?;
        fs::remove_dir_all(&restore)?;
        self.changes.send(Change::Reset);
        Ok(())
    }

    pub(super) fn install(&self, meta: &SnapshotMeta, archive: PathBuf) -> std::io::Result<()> {
        self.reset_to(meta, Some(&archive))?;
        self.publish(meta.clone(), archive)?;
        info!(id = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    /// After a run that did not stop cleanly, the files may not match the applied marker
    /// (after a power failure, unsynced writes are lost in any order). Start over from the
    /// newest snapshot — or from nothing — and let openraft re-apply the log after it.
    pub(super) fn recover(&self) -> std::io::Result<()> {
        let current = self.lock().current.clone();
        match current {
            Some((meta, path)) => {
                warn!(snapshot = %meta.snapshot_id, "previous run did not stop cleanly: rebuilding files from the snapshot and the log");
                self.reset_to(&meta, Some(&path))
            }
            None => {
                warn!("previous run did not stop cleanly: rebuilding files from the log");
                self.reset_to(&SnapshotMeta::default(), None)
            }
        }
    }
}

/// The newest readable snapshot in `dir`, removing older ones, unreadable ones and whatever a
/// build or a transfer cut short left behind.
/// Extension given to a snapshot file that cannot be read; such files are kept for a person.
const BAD: &str = "bad";

pub(super) fn newest_snapshot(dir: &Path) -> std::io::Result<Option<(SnapshotMeta, PathBuf)>> {
    fs::create_dir_all(dir)?;
    let mut current: Option<(SnapshotMeta, PathBuf)> = None;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("snap") => {}
            Some(BAD) => continue,
            _ => {
                remove_any(&path)?;
                continue;
            }
        }
        match snapshot::read_header(&path) {
            Ok(h)
                if current
                    .as_ref()
                    .is_none_or(|(m, _)| m.last_log_id < h.meta.last_log_id) =>
            {
                if let Some((_, old)) = current.replace((h.meta, path)) {
                    fs::remove_file(old)?;
                }
            }
            Ok(_) => fs::remove_file(&path)?,
            Err(e) => {
                // Set aside, never deleted: it may be the only copy of something.
                let aside = path.with_extension(format!("snap.{BAD}"));
                warn!(path = %path.display(), aside = %aside.display(), cause = %e, "setting aside an unreadable snapshot");
                fs::rename(&path, &aside)?;
            }
        }
    }
    Ok(current)
}

pub(super) fn remove_any(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}
