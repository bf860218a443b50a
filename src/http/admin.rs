//! Membership for operators and joining nodes: `POST /cluster/join`, `POST /cluster/remove`,
//! `POST /cluster/transfer-leader`.
//! Any member accepts them and routes them to the leader. Bodies are JSON whatever the
//! Content-Type says, so `curl -d '{"name":"host:port"}'` works as typed.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;

use crate::error::Result;
use crate::node::{JoinRequest, Node, RemoveRequest, TransferRequest};

/// `POST /cluster/join {"id": …, "name": "host:port"}`: add a node as a voting member.
pub(crate) async fn join(State(node): State<Arc<Node>>, body: Bytes) -> Result<StatusCode> {
    let req: JoinRequest = serde_json::from_slice(&body)?;
    node.join(req).await?;
    Ok(StatusCode::OK)
}

/// `POST /cluster/remove {"name": "host:port"}`: remove a member.
pub(crate) async fn remove(State(node): State<Arc<Node>>, body: Bytes) -> Result<StatusCode> {
    let req: RemoveRequest = serde_json::from_slice(&body)?;
    node.remove(req).await?;
    Ok(StatusCode::OK)
}

/// `POST /cluster/transfer-leader {"name": "host:port"}`: make that voting member the leader.
pub(crate) async fn transfer(State(node): State<Arc<Node>>, body: Bytes) -> Result<StatusCode> {
    let req: TransferRequest = serde_json::from_slice(&body)?;
    node.transfer_leader(req).await?;
    Ok(StatusCode::OK)
}
