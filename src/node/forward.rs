//! Forwarding: how an operation that needs the leader reaches it from any node.
//!
//! [`Node::on_leader`] runs the leader-side half here when this node leads, and otherwise
//! POSTs the request to the leader's peer route, retrying through elections until the
//! caller's deadline. A forwarded request carries the time the caller has left (the
//! `raftd-deadline-ms` header), so the leader never waits longer than the caller will.
//! What comes back is a [`LeaderReply`]: the answer, or a [`Refusal`] saying whether to look
//! for the leader again, retry, or give up.

use std::future::Future;
use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::time::Instant;

use super::Node;
use crate::client::SendError;
use crate::error::{Error, Result};
use crate::raft::routes::PeerRoute;

/// Pause between attempts while no leader is known or the leader is unreachable.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// Why the leader-side half of an operation did not run; travels between nodes as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Refusal {
    /// This node is not the leader (any more): find the leader and retry.
    NotLeader,
    /// A membership change is in progress: retry shortly.
    Busy,
    /// A transient failure reaching the leader (it is down, an election is under way): retry.
    Transient(String),
    /// The cluster cannot do it now (no quorum, timeout): give up with 503.
    Unavailable(String),
    /// The request itself is wrong (e.g. joining under a name another member has).
    Rejected(String),
    /// The leader is short of disk space (see `--min-free`): give up with 507.
    NoSpace(String),
}

/// What a leader-side operation answers.
pub type LeaderReply<T> = std::result::Result<T, Refusal>;

impl Node {
    /// Runs `local` here if this node leads, else forwards `body` to the leader's `route`;
    /// retries through elections until the request deadline.
    pub(super) async fn on_leader<T, B, F, Fut>(&self, route: PeerRoute, body: &B, local: F) -> Result<T>
    where
        T: DeserializeOwned,
        B: Serialize,
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = LeaderReply<T>>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        let mut why = String::from("no leader is elected");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Unavailable(format!(
                    "gave up after {:?}: {why}",
                    self.config.request_timeout
                )));
            }
            let (leader_id, leader_name) = self.leader();
            let reply = if leader_id == Some(self.id) {
                local(remaining).await
            } else if let Some(name) = leader_name {
                self.forward(&name, route, body, remaining).await
            } else {
                Err(Refusal::NotLeader)
            };
            match reply {
                Ok(v) => return Ok(v),
                Err(Refusal::NotLeader) => {}
                Err(Refusal::Busy) => why = "a membership change is in progress".into(),
                Err(Refusal::Transient(msg)) => why = msg,
                Err(Refusal::Unavailable(msg)) => return Err(Error::Unavailable(msg)),
                Err(Refusal::Rejected(msg)) => return Err(Error::BadRequest(msg)),
                Err(Refusal::NoSpace(msg)) => return Err(Error::NoSpace(msg)),
            }
            tokio::time::sleep(RETRY_INTERVAL.min(remaining)).await;
        }
    }

    async fn forward<T: DeserializeOwned>(
        &self,
        leader: &str,
        route: PeerRoute,
        body: &impl Serialize,
        timeout: Duration,
    ) -> LeaderReply<T> {
        match self
            .client
            .post_json_within(leader, route.path(), body, timeout)
            .await
        {
            Ok(resp) if resp.status.is_success() => resp.json::<LeaderReply<T>>().unwrap_or_else(|e| {
                Err(Refusal::Unavailable(format!(
                    "leader {leader} sent an unreadable answer: {e}"
                )))
            }),
            Ok(resp) if resp.status == hyper::StatusCode::UNAUTHORIZED => Err(Refusal::Unavailable(format!(
                "leader {leader} refused this node's credentials: {} (do all nodes share the cluster token?)",
                resp.text()
            ))),
            // The leader judged the request itself (a bad name, a body over its limits).
            Ok(resp) if resp.status.is_client_error() => Err(Refusal::Rejected(resp.text())),
            Ok(resp) => Err(Refusal::Transient(format!(
                "leader {leader} answered {}: {}",
                resp.status,
                resp.text()
            ))),
            // Nothing was sent: the leader is down; an election will name another.
            Err(e @ SendError::Connect(..)) => Err(Refusal::Transient(e.to_string())),
            Err(e @ SendError::Timeout(..)) => Err(Refusal::Unavailable(format!(
                "no answer from leader {leader} in time; the outcome is unknown ({e})"
            ))),
            Err(e) => Err(Refusal::Transient(e.to_string())),
        }
    }
}
