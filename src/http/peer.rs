//! Peer RPC under `/raft/`: openraft's messages into the local Raft, and the leader-side
//! halves of forwarded operations. Answers are 200 with a JSON `Result`; a message that is
//! malformed (see `raft::inbound`), misdirected or over the limits gets a 4xx and never
//! reaches Raft. The guard in front of these routes has already checked who is calling.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest};
use serde::Deserialize;
use tracing::debug;

use crate::client::DEADLINE_HEADER;
use crate::node::{JoinRequest, Node, RemoveRequest, TransferRequest, TransferStep};
use crate::raft::command::Command;
use crate::raft::inbound::{check_append, check_vote};
use crate::raft::{NodeId, TypeConfig};

/// Every Raft RPC names the node it is meant for.
#[derive(Debug, Deserialize)]
pub(crate) struct Target {
    target: NodeId,
}

fn refuse(status: StatusCode, why: impl std::fmt::Display) -> Response {
    debug!(%why, "refused a peer message");
    (status, format!("{why}\n")).into_response()
}

/// How long a forwarded request may take: what its caller has left (the deadline header),
/// never more than this node's own request timeout.
fn caller_deadline(node: &Node, headers: &HeaderMap) -> Duration {
    deadline_within(node.config().request_timeout, headers)
}

fn deadline_within(own: Duration, headers: &HeaderMap) -> Duration {
    let left = headers
        .get(DEADLINE_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    left.map_or(own, |ms| own.min(Duration::from_millis(ms)))
}

fn misdirected(node: &Node, target: NodeId) -> Option<Response> {
    (target != node.id).then(|| {
        let msg = format!("this is node {} ({}), not node {target}\n", node.id, node.name);
        (StatusCode::MISDIRECTED_REQUEST, msg).into_response()
    })
}

/// `POST /raft/append`
pub(crate) async fn append(
    State(node): State<Arc<Node>>,
    Query(t): Query<Target>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    if let Some(r) = misdirected(&node, t.target) {
        return r;
    }
    if let Err(why) = check_append(&req) {
        return refuse(StatusCode::BAD_REQUEST, why);
    }
    debug!(
        term = req.vote.leader_id().term,
        entries = req.entries.len(),
        "recv append"
    );
    // The leader is heard from when its message arrives, not once its entries are on this
    // node's disk: counted only after the append, an fsync slowed by a snapshot's writeback
    // looked like a silent leader, and this node campaigned against a live one.
    let current = node.raft().metrics().borrow().vote;
    if req.vote.is_committed() && req.vote >= current {
        node.leader_contact().touch();
    }
    let answer = node.raft().append_entries(req).await;
    if matches!(
        answer,
        Ok(AppendEntriesResponse::Success
            | AppendEntriesResponse::PartialSuccess(_)
            | AppendEntriesResponse::Conflict)
    ) {
        node.leader_contact().touch();
    }
    Json(answer).into_response()
}

/// `POST /raft/vote`
pub(crate) async fn vote(
    State(node): State<Arc<Node>>,
    Query(t): Query<Target>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Response {
    if let Some(r) = misdirected(&node, t.target) {
        return r;
    }
    let membership = node.raft().metrics().borrow().membership_config.clone();
    if let Err(why) = check_vote(&req, &membership) {
        return refuse(StatusCode::FORBIDDEN, why);
    }
    if !node.voting_allowed() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "just started: not voting for one leader lease (a leader this node acknowledged before it stopped may still hold one)",
        );
    }
    debug!(vote = %req.vote, "recv vote request");
    Json(node.raft().vote(req).await).into_response()
}

/// `POST /raft/snapshot`
pub(crate) async fn snapshot(
    State(node): State<Arc<Node>>,
    Query(t): Query<Target>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    if let Some(r) = misdirected(&node, t.target) {
        return r;
    }
    if let Err(why) = node.check_snapshot_chunk(&req) {
        return refuse(StatusCode::BAD_REQUEST, why);
    }
    debug!(offset = req.offset, done = req.done, "recv snapshot chunk");
    Json(node.raft().install_snapshot(req).await).into_response()
}

/// `POST /raft/propose`: a forwarded command, run only if this node leads.
pub(crate) async fn propose(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Json(cmd): Json<Command>,
) -> Response {
    if let Err(e) = node.check_forwarded(&cmd) {
        return e.into_response();
    }
    let timeout = caller_deadline(&node, &headers);
    Json(node.propose_local(cmd, timeout).await).into_response()
}

/// `POST /raft/read-index`: confirm leadership, answer the read index.
pub(crate) async fn read_index(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let timeout = caller_deadline(&node, &headers);
    Json(node.read_index_local(timeout).await).into_response()
}

/// `POST /raft/join`: a forwarded join.
pub(crate) async fn join(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Json(req): Json<JoinRequest>,
) -> Response {
    let timeout = caller_deadline(&node, &headers);
    Json(node.join_local(req, timeout).await).into_response()
}

/// `POST /raft/remove`: a forwarded removal.
pub(crate) async fn remove(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Json(req): Json<RemoveRequest>,
) -> Response {
    let timeout = caller_deadline(&node, &headers);
    Json(node.remove_local(req, timeout).await).into_response()
}

/// `POST /raft/transfer`: a forwarded leadership transfer.
pub(crate) async fn transfer(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Json(req): Json<TransferRequest>,
) -> Response {
    let timeout = caller_deadline(&node, &headers);
    Json(node.transfer_local(req, timeout).await).into_response()
}

/// `POST /raft/transfer-step`: the leader's instruction during a transfer.
pub(crate) async fn transfer_step(
    State(node): State<Arc<Node>>,
    Query(t): Query<Target>,
    Json(step): Json<TransferStep>,
) -> Response {
    if let Some(r) = misdirected(&node, t.target) {
        return r;
    }
    node.transfer_step(step);
    StatusCode::OK.into_response()
}

/// `POST /raft/removed`: the leader says this node is no longer a member.
pub(crate) async fn removed(State(node): State<Arc<Node>>, Query(t): Query<Target>) -> Response {
    if let Some(r) = misdirected(&node, t.target) {
        return r;
    }
    node.mark_removed();
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_forwarded_request_waits_no_longer_than_its_caller() {
        let own = Duration::from_millis(5000);
        let deadline = |header: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(v) = header {
                headers.insert(DEADLINE_HEADER, HeaderValue::from_str(v).unwrap());
            }
            deadline_within(own, &headers)
        };
        assert_eq!(
            deadline(Some("120")),
            Duration::from_millis(120),
            "the caller's time left"
        );
        assert_eq!(
            deadline(Some("60000")),
            own,
            "never longer than this node's own timeout"
        );
        assert_eq!(deadline(None), own);
        assert_eq!(deadline(Some("soon")), own);
    }
}
