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

use super::{NodeId, Raft};

/// When this node last heard from a leader (an AppendEntries of the current leader, as it
/// arrives), shared between the peer route that records it and the task that acts on its
/// absence.
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

/// When a survivor campaigns after its leader falls silent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// openraft's leader lease: no vote is granted before it runs out.
    pub lease: Duration,
    /// A random part of it is added to each wait, so survivors do not move together.
    pub spread: Duration,
    /// Silence after which the leader's address is probed: past every read lease the
    /// leader may still be serving from (see [`crate::node`]'s lease reads).
    pub probe_after: Duration,
}

/// How long a probe of the leader's address may take; no answer means "do not know".
const PROBE_LIMIT: Duration = Duration::from_millis(100);
/// How often a silent leader's address is probed.
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// Starts an election once the leader has been silent for its whole lease, plus a random
/// part of `spread` so the survivors do not campaign together — or sooner, once nothing
/// listens at the leader's address any more.
///
/// openraft 0.9 grants no vote while the voter's lease on the last leader (the maximum
/// election timeout since its last message) runs, and each node's election timer is drawn
/// once per process: after a leader dies, the first candidacy is refused for the lease and
/// the next comes only a whole timeout later, or collides with the other survivor's. Asking
/// right after the lease shortens failover to about the lease.
///
/// A leader whose process is gone is told apart from one that is slow, paused or cut off:
/// its address refuses connections, where the others only fail to answer. A survivor that
/// sees a refusal campaigns at once, and again after short random pauses until a leader is
/// known: a voter grants nothing while its own lease on the old leader runs, so the first
/// candidacy is refused unless the other survivor has campaigned too — once each has given
/// up the old leader by its own evidence, the next candidacy wins. This stays clear of lease
/// reads: probing starts only after `probe_after`, past the window in which the old leader
/// could still answer from its lease. Safe at any time: when to campaign is liveness, never
/// safety; a node that still hears its leader never asks.
pub(crate) async fn campaign_after_lease(raft: Raft, contact: LeaderContact, timing: Timing) {
    let Timing {
        lease,
        spread,
        probe_after,
    } = timing;
    let tick = Duration::from_millis(10);
    let mut jitter = random_below(spread);
    let mut probed: Option<Instant> = None;
    // The leader found gone, and when to campaign next without waiting out its lease.
    let mut hurry: Option<(NodeId, Instant)> = None;
    loop {
        tokio::time::sleep(tick).await;
        let (state, voters, is_voter, leader, leader_addr) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            if m.running_state.is_err() || m.state == ServerState::Shutdown {
                return;
            }
            let membership = m.membership_config.membership();
            let addr = m
                .current_leader
                .and_then(|l| membership.get_node(&l))
                .map(|n| n.name.clone());
            (
                m.state,
                membership.voter_ids().count(),
                membership.voter_ids().any(|v| v == m.id),
                m.current_leader,
                addr,
            )
        };
        let waiting = matches!(state, ServerState::Follower | ServerState::Candidate);
        if !waiting || !is_voter || voters < 2 || (leader.is_some() && state == ServerState::Leader) {
            hurry = None;
            continue;
        }
        let silent = contact.since();
        if let Some((gone, next)) = hurry {
            let settled = leader.is_some_and(|l| l != gone) || silent >= lease + jitter;
            if settled {
                hurry = None;
            } else {
                if Instant::now() >= next {
                    debug!(
                        gone,
                        "no leader yet after the last one's process went; campaigning again"
                    );
                    if raft.trigger().elect().await.is_err() {
                        return;
                    }
                    hurry = Some((gone, Instant::now() + between(spread / 8, spread / 2)));
                }
                continue;
            }
        }
        if silent >= probe_after && silent < lease + jitter && state == ServerState::Follower {
            if let (Some(l), Some(addr)) = (leader, leader_addr) {
                if probed.is_none_or(|at| at.elapsed() >= PROBE_EVERY) {
                    probed = Some(Instant::now());
                    if process_gone(&addr).await {
                        debug!(leader = l, %addr, ?silent, "nothing listens at the leader's address; campaigning without waiting out its lease");
                        if raft.trigger().elect().await.is_err() {
                            return;
                        }
                        hurry = Some((l, Instant::now() + between(spread / 8, spread / 2)));
                        continue;
                    }
                }
            }
        }
        if silent < lease + jitter {
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

/// Whether the process serving `addr` is gone: the connection is refused (nothing listens
/// there). A timeout or any other failure (a cut link, a paused process, a name that no
/// longer resolves) says nothing and gives `false`.
pub(crate) async fn process_gone(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(PROBE_LIMIT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

fn between(low: Duration, high: Duration) -> Duration {
    low + random_below(high.saturating_sub(low))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a refused connection says the leader's process is gone: a process that is alive
    /// but not answering (paused, overloaded: its connections wait in the backlog) is not.
    #[tokio::test]
    async fn a_process_is_gone_only_when_its_address_refuses_connections() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert!(
            !process_gone(&addr).await,
            "a listener that never accepts is alive"
        );
        drop(listener);
        assert!(process_gone(&addr).await, "nothing listens there any more");
        assert!(
            !process_gone("no-such-host.invalid:4001").await,
            "a name that does not resolve says nothing"
        );
    }
}
