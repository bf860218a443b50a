//! HTTP: the client API, membership admin and peer RPC on one listener.
//!
//! One port per node keeps the go-raft interface (`host:port` is the node's name) and makes
//! container setups simple; peer routes live under their own prefix (`/raft/`).

pub mod admin;
pub mod api;
pub mod error;
pub mod peer;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::node::Node;

/// Largest peer message accepted (AppendEntries batches, snapshot chunks as JSON).
pub const MAX_PEER_BODY: usize = 256 << 20;

/// All routes of a node.
pub fn router(node: Arc<Node>) -> Router {
    let files = get(api::get_file).post(api::put_file).put(api::put_file).delete(api::delete_file);
    let peer = Router::new()
        .route("/append", post(peer::append))
        .route("/vote", post(peer::vote))
        .route("/snapshot", post(peer::snapshot))
        .route("/propose", post(peer::propose))
        .route("/read-index", post(peer::read_index))
        .route("/join", post(peer::join))
        .route("/remove", post(peer::remove))
        .route("/removed", post(peer::removed))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY));
    Router::new()
        .route("/files", get(api::get_file))
        .route("/files/", get(api::get_file))
        .route("/files/{*path}", files)
        .route("/status", get(api::status))
        .route("/log", get(api::log))
        .route("/cluster/join", post(admin::join))
        .route("/cluster/remove", post(admin::remove))
        .nest(crate::raft::PEER_PREFIX, peer)
        .with_state(node)
}
