//! When to snapshot: a policy proportional to the state, as Raft's log-compaction chapter
//! advises, so the cost of snapshots per write stays flat however large the tree grows.
//!
//! A snapshot archives the whole tree. Taking one every fixed number of entries makes each
//! write pay a share of O(tree): measured, throughput halved between 10k and 47k files with a
//! snapshot every 1,000 entries. Here a snapshot is taken once both hold:
//!
//! - at least `--snapshot-every` entries were applied since the last one, scaled by a factor
//!   drawn per node in [½, 1) (ZooKeeper's trick: members do not all snapshot at once), and
//! - the log written since the last snapshot is at least as large as that snapshot (the
//!   state), so the bytes a snapshot writes are paid for by as many bytes of log.
//!
//! openraft's own policy is off (`SnapshotPolicy::Never`); this task triggers snapshots.

use std::path::{Path, PathBuf};

use tracing::debug;

use super::log_store::LogReader;
use super::Raft;

/// Watches applied entries until Raft stops, and triggers a snapshot when the policy says so.
pub(crate) async fn snapshot_policy(raft: Raft, log: LogReader, snapshots: PathBuf, every: u64) {
    let every = (every as f64 * (0.5 + rand::random::<f64>() / 2.0)).max(1.0) as u64;
    let mut metrics = raft.metrics();
    // The snapshot index a trigger was sent at, until a newer snapshot shows up.
    let mut requested: Option<Option<u64>> = None;
    // The newest snapshot's size, read from disk once per snapshot, not once per apply.
    let mut state_size: Option<(Option<u64>, u64)> = None;
    loop {
        if metrics.changed().await.is_err() {
            return;
        }
        let (applied, snapshot) = {
            let m = metrics.borrow();
            (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
        };
        if requested.is_some_and(|at| at == snapshot) {
            continue;
        }
        requested = None;
        let Some(applied) = applied else { continue };
        let from = snapshot.map_or(0, |s| s + 1);
        if applied + 1 < from + every {
            continue;
        }
        let state_bytes = match state_size {
            Some((at, size)) if at == snapshot => size,
            _ => {
                let size = newest_snapshot_size(&snapshots);
                state_size = Some((snapshot, size));
                size
            }
        };
        let log_bytes = log.bytes_between(from, applied + 1);
        if log_bytes < state_bytes {
            continue;
        }
        debug!(applied, log_bytes, state_bytes, "snapshot due");
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
        requested = Some(snapshot);
    }
}

/// Size of the newest complete snapshot archive, 0 if there is none.
fn newest_snapshot_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
        .filter_map(|e| e.metadata().ok())
        .max_by_key(|m| m.modified().ok())
        .map_or(0, |m| m.len())
}
