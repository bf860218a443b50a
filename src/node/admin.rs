//! Operator actions that go past the client API: build a snapshot now, hand leadership to
//! another member.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{LeaderReply, Node, Refusal};
use crate::error::{Error, Result};
use crate::raft::routes::PeerRoute;
use crate::raft::NodeId;

impl Node {
    /// Builds a snapshot of everything applied so far (compacting the log behind it) and
    /// waits, up to `wait`, until it is in place. Returns the index it covers.
    pub async fn snapshot_now(&self, wait: Duration) -> Result<Option<u64>> {
        let applied = self.raft.metrics().borrow().last_applied.map(|l| l.index);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Error::Raft(format!("trigger a snapshot: {e}")))?;
        let Some(applied) = applied else {
            return Ok(None); // nothing applied: nothing to snapshot
        };
        let metrics = self
            .raft
            .wait(Some(wait))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot built",
            )
            .await
            .map_err(|e| Error::Unavailable(format!("the snapshot was not built in time: {e}")))?;
        Ok(metrics.snapshot.map(|s| s.index))
    }
}

/// `POST /cluster/transfer-leader` (and its forwarded form): hand leadership to this member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferRequest {
    /// The member's advertised `host:port`.
    pub name: String,
}

/// What the leader asks of the other voters during a transfer (`POST /raft/transfer-step`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum TransferStep {
    /// Start no election of your own for this long (0: from now on you may again).
    Hold {
        /// How long, in milliseconds.
        millis: u64,
    },
    /// You are the target: campaign until you lead, for at most this long.
    Campaign {
        /// How long, in milliseconds.
        millis: u64,
    },
}

/// Pause between a campaigning target's checks of whether it leads.
const CAMPAIGN_POLL: Duration = Duration::from_millis(20);

impl Node {
    /// Hands leadership to the voting member named in `req` (through the leader).
    ///
    /// openraft 0.9 has no leadership transfer, so the leader arranges one from what it has:
    /// it waits until the target holds its whole log, stops serving and heartbeating, asks
    /// the other voters to start no election of their own for a while, and tells the target
    /// to campaign. Once the followers' leases run out (one maximum election timeout) the
    /// target wins the next term — it is as up to date as anyone. Client requests meanwhile
    /// wait (a retry moves them to the new leader); if the target has not won by the end,
    /// everything is switched back and the transfer fails.
    pub async fn transfer_leader(&self, req: TransferRequest) -> Result<()> {
        self.on_leader(PeerRoute::Transfer, &req, |timeout| {
            self.transfer_local(req.clone(), timeout)
        })
        .await
    }

    /// The leader's side of [`transfer_leader`](Self::transfer_leader).
    pub(crate) async fn transfer_local(&self, req: TransferRequest, timeout: Duration) -> LeaderReply<()> {
        self.check_leader()?;
        let deadline = Instant::now() + timeout;
        let (target, others) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let Some(target) = super::leader::member_named(membership, &req.name) else {
                return Err(Refusal::Rejected(format!("no member is named {}", req.name)));
            };
            if !membership.voter_ids().any(|v| v == target) {
                return Err(Refusal::Rejected(format!(
                    "{} is a learner; only a voting member can lead",
                    req.name
                )));
            }
            let others: Vec<(NodeId, String)> = membership
                .voter_ids()
                .filter(|v| *v != target && *v != self.id)
                .filter_map(|v| membership.get_node(&v).map(|n| (v, n.name.clone())))
                .collect();
            (target, others)
        };
        if target == self.id {
            return Ok(());
        }
        // The target must hold everything this leader has, or it cannot win.
        let caught_up = self
            .raft
            .wait(Some(deadline.saturating_duration_since(Instant::now())))
            .metrics(
                |m| {
                    let last = m.last_log_index;
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&target).cloned())
                        .flatten()
                        .map(|l| l.index);
                    matched.is_some() && matched >= last
                },
                "transfer target caught up",
            )
            .await;
        if caught_up.is_err() {
            return Err(Refusal::Unavailable(format!(
                "{} did not catch up with the leader's log in time",
                req.name
            )));
        }
        let hold = self.config.quorum_lease() * 3 + Duration::from_secs(1);
        let millis = hold.as_millis() as u64;
        info!(to = %req.name, "transferring leadership");
        *self.transferring.lock().expect("transfer lock poisoned") = Some(req.name.clone());
        let runtime = self.raft.runtime_config();
        runtime.heartbeat(false);
        runtime.elect(false);
        let step = |addr: String, id: NodeId, step: TransferStep| async move {
            let path = PeerRoute::TransferStep.to(id);
            if let Err(e) = self
                .client
                .post_json(&addr, &path, &step, Duration::from_secs(1))
                .await
            {
                warn!(peer = %addr, cause = %e, "transfer: could not reach a voter");
            }
        };
        futures_util::future::join_all(
            others
                .iter()
                .map(|(id, name)| step(name.clone(), *id, TransferStep::Hold { millis })),
        )
        .await;
        step(req.name.clone(), target, TransferStep::Campaign { millis }).await;
        let won = self
            .raft
            .wait(Some(hold))
            .metrics(|m| m.current_leader == Some(target), "the target leads")
            .await
            .is_ok();
        runtime.heartbeat(true);
        runtime.elect(true);
        *self.transferring.lock().expect("transfer lock poisoned") = None;
        futures_util::future::join_all(
            others
                .iter()
                .map(|(id, name)| step(name.clone(), *id, TransferStep::Hold { millis: 0 })),
        )
        .await;
        if won {
            info!(to = %req.name, "leadership transferred");
            Ok(())
        } else {
            warn!(to = %req.name, "leadership transfer failed: the target did not win in time");
            Err(Refusal::Unavailable(format!(
                "{} did not win an election within {hold:?}; leadership stays where it is",
                req.name
            )))
        }
    }

    /// A voter's part in a transfer (see [`TransferStep`]).
    pub(crate) fn transfer_step(self: &Arc<Self>, step: TransferStep) {
        let generation = self.hold_generation.fetch_add(1, Ordering::SeqCst) + 1;
        match step {
            TransferStep::Hold { millis: 0 } => self.raft.runtime_config().elect(true),
            TransferStep::Hold { millis } => {
                self.raft.runtime_config().elect(false);
                let node = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(millis)).await;
                    // Only the newest hold ends the hold.
                    if node.hold_generation.load(Ordering::SeqCst) == generation {
                        node.raft.runtime_config().elect(true);
                    }
                });
            }
            TransferStep::Campaign { millis } => {
                let node = self.clone();
                tokio::spawn(async move { node.campaign(Duration::from_millis(millis)).await });
            }
        }
    }

    /// Campaigns until this node leads or `within` has passed: first once the other voters'
    /// leases on the old leader have run out, then again after every failed round.
    async fn campaign(&self, within: Duration) {
        let deadline = Instant::now() + within;
        tokio::time::sleep(self.config.quorum_lease() + CAMPAIGN_POLL).await;
        while Instant::now() < deadline {
            if self.raft.metrics().borrow().current_leader == Some(self.id) {
                return;
            }
            debug!("transfer: campaigning");
            if self.raft.trigger().elect().await.is_err() {
                return;
            }
            let round = Instant::now() + self.config.election_timeout;
            while Instant::now() < round.min(deadline) {
                if self.raft.metrics().borrow().current_leader == Some(self.id) {
                    return;
                }
                tokio::time::sleep(CAMPAIGN_POLL).await;
            }
        }
    }
}
