//! How far the log is on disk, for the leader's appends that do not wait for it.
//!
//! openraft 0.9's core waits for every append to be flushed before it does anything else, so
//! a leader used to fsync its log first and only then send the entries to its followers: one
//! fsync after another on every write's path (etcd does the two at once). A leader's own
//! appends are therefore reported flushed as soon as they are written, and the fsync runs
//! while the entries travel. What makes that safe is where the leader's durability is
//! awaited instead, so that an entry counts as committed, is applied, or is made known to
//! another node only once it is on disk on a majority — as if the leader had waited:
//!
//! - a follower's acknowledgment of entries is handed to openraft only once the leader's log
//!   holds them on disk too ([`crate::raft::network`]): every majority that includes the
//!   leader is then a majority of disks;
//! - the leader tells no follower a commit index beyond its own disk (a majority of one, a
//!   single voter, commits on the leader alone);
//! - the state machine applies nothing beyond the disk (so nothing is answered, read or
//!   snapshotted before it is durable).
//!
//! Followers' appends still wait for the fsync before openraft sees them: their answer to
//! the leader is the promise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// The index below which every entry of the log is on disk, shared by the log store (which
/// moves it) and whoever waits for it.
#[derive(Clone)]
pub(crate) struct Durable {
    below: watch::Sender<u64>,
    /// Bumped by every truncation: an fsync that began before one does not vouch for the
    /// entries written after it at the same indexes.
    generation: std::sync::Arc<AtomicU64>,
}

/// Why waiting for the disk ended without it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotDurable {
    #[error("the log was not on disk within {0:?} (fsync stalled or failed)")]
    Timeout(Duration),
}

impl Durable {
    /// Every entry below `below` is on disk.
    pub(crate) fn new(below: u64) -> Self {
        Durable {
            below: watch::Sender::new(below),
            generation: Default::default(),
        }
    }

    /// The generation to pass to [`synced`](Self::synced) for an fsync about to begin.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// An fsync that began at `generation` with the entries below `below` written finished.
    pub(crate) fn synced(&self, generation: u64, below: u64) {
        if self.generation() == generation {
            self.below.send_if_modified(|b| {
                let moved = below > *b;
                *b = (*b).max(below);
                moved
            });
        }
    }

    /// The log was cut (and synced) to the entries below `below`; call under the log's
    /// write lock, so no fsync records its view of the log as it was.
    pub(super) fn truncated(&self, below: u64) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.below.send_if_modified(|b| {
            let moved = below != *b;
            *b = below;
            moved
        });
    }

    /// The index below which every entry is on disk now.
    pub(crate) fn below(&self) -> u64 {
        *self.below.borrow()
    }

    /// Waits, up to `timeout`, until the entry at `index` is on disk.
    pub(crate) async fn wait(&self, index: u64, timeout: Duration) -> Result<(), NotDurable> {
        if self.below() > index {
            return Ok(());
        }
        let mut rx = self.below.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|b| *b > index))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(NotDurable::Timeout(timeout))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_fsync_from_before_a_truncation_vouches_for_nothing() {
        let d = Durable::new(5);
        d.wait(4, Duration::ZERO).await.unwrap();
        assert!(d.wait(5, Duration::from_millis(10)).await.is_err());
        let g = d.generation();
        d.truncated(3);
        d.synced(g, 9);
        assert_eq!(d.below(), 3, "the fsync began before the cut");
        let g = d.generation();
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.wait(7, Duration::from_secs(30)).await }
        });
        d.synced(g, 8);
        waiter.await.unwrap().unwrap();
        d.synced(g, 6);
        assert_eq!(d.below(), 8, "never moves back but by a truncation");
    }
}
