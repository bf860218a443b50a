//! HTTP: the client API, membership admin and peer RPC on one listener.
//!
//! One port per node keeps the go-raft interface (`host:port` is the node's name) and makes
//! container setups simple. Two groups of routes share it:
//!
//! - client routes (`/files`, `/status`, `/log`, `/watch`, the page at `/`) and operator reads
//!   (`/metrics`, `/healthz`, `/readyz`, `/backup`): open to anyone who can reach the port;
//! - member routes (`/raft/*` peer RPC, `/cluster/*` membership): guarded by the cluster
//!   token and, with `--tls-ca`, a client certificate ([`guard`]); bodies capped near the
//!   largest replication message; a deadline on every request.
//!
//! Each group has its own cap on requests in flight, so client load cannot starve Raft.

pub(crate) mod admin;
pub(crate) mod api;
pub(crate) mod error;
pub(crate) mod guard;
pub(crate) mod listener;
pub(crate) mod ops;
pub(crate) mod page;
pub(crate) mod peer;
pub(crate) mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;

use crate::node::Node;
use crate::raft::PeerRoute;
use guard::{Limits, PeerGuard};

/// Extra time a peer request may take beyond the request timeout before it is cut off.
const PEER_DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// All routes of a node.
pub(crate) fn router(node: Arc<Node>) -> Router {
    let config = node.config();
    let files = get(api::get_file)
        .post(api::put_file)
        .put(api::put_file)
        .delete(api::delete_file);
    let client = Router::new()
        .route("/files", get(api::get_file))
        .route("/files/", get(api::get_file))
        .route("/files/{*path}", files)
        .route("/", get(page::index))
        .route("/status", get(api::status))
        .route("/status/all", get(api::status_all))
        .route("/watch", get(watch::watch))
        .route("/watch/", get(watch::watch))
        .route("/watch/{*prefix}", get(watch::watch))
        .route("/log", get(api::log))
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/backup", get(ops::backup))
        .layer(from_fn_with_state(
            Limits::new(guard::MAX_CLIENT_REQUESTS, None),
            guard::limit,
        ));
    let guard = Arc::new(PeerGuard::new(
        config.cluster_token.as_deref(),
        config.tls.as_ref().is_some_and(|t| t.ca.is_some()),
    ));
    let deadline = config.request_timeout + config.election_timeout * 2 + PEER_DEADLINE_SLACK;
    let member = PeerRoute::ALL.into_iter().fold(Router::new(), |router, route| {
        let handler = match route {
            PeerRoute::Append => post(peer::append),
            PeerRoute::Vote => post(peer::vote),
            PeerRoute::Snapshot => post(peer::snapshot),
            PeerRoute::Propose => post(peer::propose),
            PeerRoute::ReadIndex => post(peer::read_index),
            PeerRoute::Join => post(peer::join),
            PeerRoute::Remove => post(peer::remove),
            PeerRoute::Removed => post(peer::removed),
            PeerRoute::ClusterJoin => post(admin::join),
            PeerRoute::ClusterRemove => post(admin::remove),
            PeerRoute::ClusterSnapshot => post(ops::snapshot),
            PeerRoute::Transfer => post(peer::transfer),
            PeerRoute::TransferStep => post(peer::transfer_step),
            PeerRoute::ClusterTransfer => post(admin::transfer),
        };
        router.route(route.path(), handler)
    });
    let member = member
        .layer(DefaultBodyLimit::max(config.peer_body_limit()))
        .layer(from_fn_with_state(guard, guard::require_member))
        .layer(from_fn_with_state(
            Limits::new(guard::MAX_PEER_REQUESTS, Some(deadline)).max_body(config.peer_body_limit()),
            guard::limit,
        ));
    client
        .merge(member)
        .layer(axum::middleware::from_fn(ops::observe))
        .with_state(node)
}
