//! Breaking split votes that openraft 0.9 can fall into, and campaigning as soon as a lost
//! leader's lease has run out.
//!
//! openraft draws each node's election timeout once, when the node starts, and checks it on a
//! tick of 1.5 heartbeats. Two surviving nodes whose timeouts land on the same tick campaign in
//! lockstep: each votes for itself every round and neither wins (observed here: 8–16 s without
//! a leader after the leader was killed). Raft's safety does not depend on when elections
//! start, only its liveness does; so when elections keep failing, this task starts one after a
//! fresh random delay, which puts the nodes out of step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use openraft::ServerState;
use rand::Rng;
use tracing::debug;

use super::Raft;

/// When this node last heard from a leader (an AppendEntries it accepted), shared between
/// the peer route that records it and the task that acts on its absence.
#[derive(Debug, Clone, Default)]
pub(crate) struct LeaderContact(Arc<AtomicU64>);

/// A fixed origin for the contact times (monotonic).
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl LeaderContact {
    /// Records contact with the leader now.
    pub(crate) fn touch(&self) {
        self.0
            .store(origin().elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last contact (since the process started, if none).
    fn since(&self) -> Duration {
        let at = Duration::from_millis(self.0.load(Ordering::Relaxed));
        origin().elapsed().saturating_sub(at)
    }
}

/// Starts an election once the leader has been silent for its whole lease, plus a random
/// part of `spread` so the survivors do not campaign together.
///
/// openraft 0.9 grants no vote while the voter's lease on the last leader (the maximum
/// election timeout since its last message) runs, and each node's election timer is drawn
/// once per process: after a leader dies, the first candidacy is refused for the lease and
/// the next comes only a whole timeout later, or collides with the other survivor's. Asking
/// right after the lease shortens failover to about the lease. Safe at any time: when to
/// campaign is liveness, never safety; a node that still hears its leader never asks.
pub(crate) async fn campaign_after_lease(
    raft: Raft,
    contact: LeaderContact,
    lease: Duration,
    spread: Duration,
) {
    let tick = Duration::from_millis(10);
    let mut jitter = random_below(spread);
    loop {
        tokio::time::sleep(tick).await;
        let (state, voters, is_voter, leader) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            if m.running_state.is_err() || m.state == ServerState::Shutdown {
                return;
            }
            let membership = m.membership_config.membership();
            (
                m.state,
                membership.voter_ids().count(),
                membership.voter_ids().any(|v| v == m.id),
                m.current_leader,
            )
        };
        let waiting = matches!(state, ServerState::Follower | ServerState::Candidate);
        if !waiting || !is_voter || voters < 2 || (leader.is_some() && state == ServerState::Leader) {
            continue;
        }
        if contact.since() < lease + jitter {
            continue;
        }
        debug!(silent = ?contact.since(), "the leader's lease has run out; campaigning");
        if raft.trigger().elect().await.is_err() {
            return;
        }
        // Count the next silence from now, with a fresh draw.
        contact.touch();
        jitter = random_below(spread);
    }
}

fn random_below(spread: Duration) -> Duration {
    Duration::from_millis(rand::thread_rng().gen_range(0..spread.as_millis().max(1) as u64))
}

/// Failed elections (term increases with no leader) tolerated before nudging.
pub(crate) const FAILED_ROUNDS_BEFORE_NUDGE: u64 = 2;

/// Watches the node's metrics until Raft stops; nudges an election, after a random delay
/// below `spread`, whenever `FAILED_ROUNDS_BEFORE_NUDGE` elections in a row found no leader.
pub(crate) async fn break_split_votes(raft: Raft, spread: Duration) {
    let mut metrics = raft.metrics();
    let mut leaderless_since: Option<u64> = None;
    loop {
        if metrics.changed().await.is_err() {
            return;
        }
        let (state, term, leader, voters, is_voter) = {
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            (
                m.state,
                m.current_term,
                m.current_leader,
                membership.voter_ids().count(),
                membership.voter_ids().any(|v| v == m.id),
            )
        };
        if leader.is_some() || state == ServerState::Leader || voters < 2 || !is_voter {
            leaderless_since = None;
            continue;
        }
        let first = *leaderless_since.get_or_insert(term);
        if term < first + FAILED_ROUNDS_BEFORE_NUDGE {
            continue;
        }
        let delay = Duration::from_millis(rand::thread_rng().gen_range(0..spread.as_millis().max(1) as u64));
        tokio::time::sleep(delay).await;
        if metrics.borrow().current_leader.is_none() {
            debug!(term, ?delay, "elections keep failing; starting one out of step");
            if raft.trigger().elect().await.is_err() {
                return;
            }
        }
        leaderless_since = Some(metrics.borrow().current_term);
    }
}
