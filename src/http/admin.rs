//! Membership for operators and joining nodes: `POST /cluster/join`, `POST /cluster/remove`.
//! Any member accepts them and routes them to the leader.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::error::Result;
use crate::node::{JoinRequest, Node, RemoveRequest};

/// `POST /cluster/join {"id": …, "name": "host:port"}`: add a node as a voting member.
pub async fn join(State(node): State<Arc<Node>>, Json(req): Json<JoinRequest>) -> Result<StatusCode> {
    node.join(req).await?;
    Ok(StatusCode::OK)
}

/// `POST /cluster/remove {"name": "host:port"}`: remove a member.
pub async fn remove(State(node): State<Arc<Node>>, Json(req): Json<RemoveRequest>) -> Result<StatusCode> {
    node.remove(req).await?;
    Ok(StatusCode::OK)
}
