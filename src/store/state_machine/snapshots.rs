//! The state machine's snapshots: building one from hard links of the tree, keeping the
//! newest, installing one received from the leader, and starting over from the newest after
//! a crash.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::{Dedup, Marker, Shared};
use crate::fsutil;
use crate::raft::SnapshotMeta;
use crate::store::snapshot::{self, Header};
use crate::store::Change;

impl Shared {
    pub(super) fn build(&self) -> std::io::Result<(SnapshotMeta, PathBuf)> {
        let started = std::time::Instant::now();
        let tag: u64 = rand::random();
        let staging = self.snapshots.join(format!("build-{tag:016x}"));
        // Taken under the lock, before linking, held until the archive is written.
        let archiving;
        let header = {
            let state = self.lock();
            archiving = self.tree.archiving();
            snapshot::link_tree(&self.tree.root, &staging.join("files"))?;
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
            Header {
                meta,
                dedup: state.dedup.save(),
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
        Ok((header.meta, path))
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
            fsutil::sync_parent(&self.tree.root)?;
            fsutil::sync_parent(&self.tree.uploads)?;
            state.marker = Marker {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
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
