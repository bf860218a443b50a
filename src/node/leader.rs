//! The leader-side halves of operations: what runs on the leader, whether the request came
//! from a front end on this node or was forwarded by another node.
//!
//! A leader refuses work once it has not heard from a majority for the quorum lease
//! (openraft 0.9 has no check-quorum): a partitioned leader answers 503 quickly instead of
//! accepting writes that cannot commit.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, info};

use super::{JoinRequest, LeaderReply, Node, Refusal, RemoveRequest};
use crate::config::check_name;
use crate::error::CommandResult;
use crate::raft::command::Command;
use crate::raft::routes::PeerRoute;
use crate::raft::{NodeId, PeerNode};

/// A command's outcome and the log index it was applied at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    /// Log index of the entry.
    pub index: u64,
    /// What applying it produced.
    pub result: CommandResult,
    /// Applied on this node already: the leader answers a proposal only after applying it, so
    /// its own callers need not wait for the state machine again. Never sent (a forwarded
    /// answer arrives `false`: the asking node applies the entry on its own time).
    #[serde(skip)]
    pub here: bool,
}

impl Node {
    /// Refuses if this node is not a leader in good standing.
    pub(super) fn check_leader(&self) -> LeaderReply<()> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state != ServerState::Leader {
            return Err(Refusal::NotLeader);
        }
        if let Some(to) = self.transferring.lock().expect("transfer lock poisoned").as_ref() {
            return Err(Refusal::Transient(format!("leadership is moving to {to}")));
        }
        let lease = self.config.quorum_lease();
        match m.millis_since_quorum_ack {
            Some(ms) if ms > lease.as_millis() as u64 => Err(Refusal::Unavailable(format!(
                "no quorum: leader {} has not heard from a majority for {ms} ms",
                self.name
            ))),
            _ => Ok(()),
        }
    }

    // ---- leader-side halves (also the targets of forwarded requests) ------------------

    /// Appends and commits a command on this node, which must be the leader.
    pub(crate) async fn propose_local(&self, cmd: Command, timeout: Duration) -> LeaderReply<Applied> {
        self.check_leader()?;
        if cmd.adds_data() {
            self.check_space().map_err(Refusal::NoSpace)?;
        }
        debug!(name = cmd.name(), "propose");
        let late = || {
            Refusal::Unavailable(format!(
                "not committed within {timeout:?} (no quorum?); the write may still be applied later"
            ))
        };
        let (term, sent) = (self.raft.metrics().borrow().current_term, Instant::now());
        let applied = if super::batch::Batcher::takes(&cmd) {
            let batcher = self
                .batcher
                .get_or_init(|| super::batch::Batcher::start(self.raft.clone()));
            tokio::time::timeout(timeout, batcher.propose(cmd))
                .await
                .unwrap_or_else(|_| Err(late()))
        } else {
            match tokio::time::timeout(timeout, self.raft.client_write(cmd)).await {
                Ok(Ok(resp)) => Ok(Applied {
                    index: resp.log_id.index,
                    result: resp.data.into_iter().next().unwrap_or(Ok(())),
                    here: true,
                }),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(Refusal::NotLeader),
                Ok(Err(e)) => Err(Refusal::Unavailable(e.to_string())),
                Err(_) => Err(late()),
            }
        };
        // Committed: a majority accepted the entry, which was sent after `sent`.
        if applied.is_ok() {
            self.lease.renew(term, sent);
        }
        applied
    }

    /// Whether a linearizable read may be served from this node's files at once: it leads
    /// under its lease and the read index that gives is applied here already. Lets a caller
    /// off the runtime (a FUSE thread) skip the trip through it.
    pub(crate) fn reads_current_here(&self) -> bool {
        let current = self.check_leader().is_ok()
            && self
                .lease_read_index()
                .is_some_and(|index| index <= Some(self.state.applied_index()));
        if current {
            crate::metrics::events().lease_reads.inc();
        }
        current
    }

    /// The read index under this leader's lease, without a round of heartbeats; `None` when
    /// the lease does not hold.
    fn lease_read_index(&self) -> Option<Option<u64>> {
        let (term, last_log, applied) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_term, m.last_log_index, m.last_applied)
        };
        // Under the lease no other leader can have committed anything: the last log index
        // covers every committed entry (see `lease`).
        if !self.lease.holds(term, self.config.read_lease()) {
            return None;
        }
        // Better still, what is applied here already covers every acknowledged write once an
        // entry of this term is applied: a write is answered only after the leader of its
        // term applied it, and what earlier leaders committed precedes this term's first
        // entry. So a read need not wait for entries still in flight (a lookup of a new name
        // while others write would wait for their commit). But a leader restarted in its
        // term rebuilt its files from a snapshot: what it answered before the restart is
        // covered by the log as it was at the start. The index is the state machine's own,
        // never behind what was answered; openraft's metrics (which tell the term) can lag it
        // by a moment.
        if applied.is_some_and(|a| a.leader_id.term == term) {
            return Some(Some(self.state.applied_index()).max(self.started_at_log));
        }
        Some(last_log.max(self.started_at_log))
    }

    /// Confirms leadership with a quorum and returns the index a linearizable read must see.
    pub(crate) async fn read_index_local(&self, timeout: Duration) -> LeaderReply<Option<u64>> {
        self.check_leader()?;
        if let Some(index) = self.lease_read_index() {
            crate::metrics::events().lease_reads.inc();
            return Ok(index);
        }
        let term = self.raft.metrics().borrow().current_term;
        let sent = Instant::now();
        match tokio::time::timeout(timeout, self.raft.get_read_log_id()).await {
            Ok(Ok((read, _applied))) => {
                // A majority answered heartbeats sent after `sent`.
                self.lease.renew(term, sent);
                Ok(read.map(|l| l.index).max(self.started_at_log))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => Err(Refusal::NotLeader),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(Refusal::Unavailable(format!("no quorum: {e}")))
            }
            Ok(Err(e)) => Err(Refusal::Unavailable(e.to_string())),
            Err(_) => Err(Refusal::Unavailable(format!(
                "no quorum confirmed leadership within {timeout:?}"
            ))),
        }
    }

    /// Adds a learner and promotes it to voter; idempotent.
    pub(crate) async fn join_local(&self, req: JoinRequest, timeout: Duration) -> LeaderReply<()> {
        check_name(&req.name).map_err(Refusal::Rejected)?;
        self.check_leader()?;
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        if let Some((other, _)) = membership
            .nodes()
            .find(|(id, n)| n.name == req.name && **id != req.id)
        {
            return Err(Refusal::Rejected(format!(
                "{} is already the name of member {other}; remove it first (POST /cluster/remove)",
                req.name
            )));
        }
        if membership.voter_ids().any(|id| id == req.id) {
            return Ok(());
        }
        info!(id = req.id, name = %req.name, "adding node");
        let node = PeerNode {
            name: req.name.clone(),
        };
        let deadline = Instant::now() + timeout;
        let added = tokio::time::timeout(timeout, self.raft.add_learner(req.id, node, true)).await;
        membership_outcome(added)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([req.id]));
        membership_outcome(tokio::time::timeout(remaining, self.raft.change_membership(change, false)).await)
    }

    /// Removes a member; tells it so, so it stops campaigning.
    pub(crate) async fn remove_local(&self, req: RemoveRequest, timeout: Duration) -> LeaderReply<()> {
        self.check_leader()?;
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        let Some(id) = member_named(membership, &req.name) else {
            return Err(Refusal::Rejected(format!("no member is named {}", req.name)));
        };
        let is_voter = membership.voter_ids().any(|v| v == id);
        if is_voter && membership.voter_ids().count() == 1 {
            return Err(Refusal::Rejected(format!(
                "{} is the last voting member; a cluster cannot remove it",
                req.name
            )));
        }
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        info!(id, name = %req.name, "removing node");
        membership_outcome(tokio::time::timeout(timeout, self.raft.change_membership(change, false)).await)?;
        if id != self.id {
            let path = PeerRoute::Removed.to(id);
            if let Err(e) = self
                .client
                .post_json(&req.name, &path, &(), Duration::from_secs(1))
                .await
            {
                debug!(cause = %e, "could not tell the removed node");
            }
        }
        Ok(())
    }
}

/// The id of the member advertised as `name`, if any.
pub(super) fn member_named(
    membership: &openraft::Membership<NodeId, PeerNode>,
    name: &str,
) -> Option<NodeId> {
    membership
        .nodes()
        .find(|(_, n)| n.name == name)
        .map(|(id, _)| *id)
}

type MembershipResult<T> = std::result::Result<
    std::result::Result<T, RaftError<NodeId, ClientWriteError<NodeId, PeerNode>>>,
    tokio::time::error::Elapsed,
>;

fn membership_outcome<T>(r: MembershipResult<T>) -> LeaderReply<()> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(Refusal::NotLeader),
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )))) => Err(Refusal::Busy),
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(Refusal::Rejected(e.to_string()))
        }
        Ok(Err(e)) => Err(Refusal::Unavailable(e.to_string())),
        Err(_) => Err(Refusal::Unavailable(
            "membership change did not commit in time".into(),
        )),
    }
}
