//! Breaking split votes that openraft 0.9 can fall into.
//!
//! openraft draws each node's election timeout once, when the node starts, and checks it on a
//! tick of 1.5 heartbeats. Two surviving nodes whose timeouts land on the same tick campaign in
//! lockstep: each votes for itself every round and neither wins (observed here: 8–16 s without
//! a leader after the leader was killed). Raft's safety does not depend on when elections
//! start, only its liveness does; so when elections keep failing, this task starts one after a
//! fresh random delay, which puts the nodes out of step.

use std::time::Duration;

use openraft::ServerState;
use rand::Rng;
use tracing::debug;

use super::Raft;

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
