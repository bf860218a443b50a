//! The composition root: open storage, build Raft, serve HTTP, join or initialize, stop.
//!
//! Order follows openraft: log store, state machine, network, `Raft::new`; then the listener
//! (already bound by the caller, so tests can use port 0); then cluster membership. Shutdown
//! reverses it: stop accepting requests first, then unmount FUSE, then stop Raft, so no
//! handler calls into a stopped core.

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::client::HttpClient;
use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::fuse::Mount;
use crate::http::listener::{Listener, Remote};
use crate::identity::{Identity, Start};
use crate::node::{JoinRequest, Node};
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::{PeerNode, PeerRoute, Raft};
use crate::store::StateMachine;

/// How long a new node keeps asking its seed to add it before giving up.
pub const JOIN_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between join attempts.
const JOIN_RETRY: Duration = Duration::from_millis(500);

/// Binds the configured address and runs the node until `shutdown` resolves.
pub async fn run(
    config: Config,
    identity: Identity,
    start: Start,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = config.listen_addr();
    let listener = TcpListener::bind(&addr).await.context(|| format!("listen on {addr}"))?;
    serve(listener, config, identity, start, shutdown).await
}

/// Runs a node on an already-bound listener until `shutdown` resolves (or the cluster
/// removes the node).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    identity: Identity,
    start: Start,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let dir = &config.data_dir;
    let log_store = LogStore::open(dir)?;
    let log_reader = log_store.reader();
    let (state_machine, store) =
        StateMachine::open(dir).context(|| format!("open state machine in {}", dir.display()))?;
    let clean_shutdown = state_machine.shutdown_handle();
    let client = HttpClient::for_cluster(&config)?;
    let tls = config.tls.as_ref().map(crate::tls::server_config).transpose()?;
    let mutual_tls = config.tls.as_ref().is_some_and(|t| t.ca.is_some());
    if config.cluster_token.is_none() && !mutual_tls {
        warn!("no cluster token: peer and membership routes (/raft/*, /cluster/*) are open to anyone who can reach this port; set --cluster-token-file");
    }
    let raft_config = Arc::new(config.raft_config()?);
    let raft = Raft::new(identity.id, raft_config, Network::new(client.clone()), log_store, state_machine)
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
    let node = Arc::new(Node::new(identity.id, raft.clone(), store, log_reader, client.clone(), config.clone()));

    let app = crate::http::router(node.clone());
    let stopping = {
        let node = node.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                () = node.removed() => {}
            }
        }
    };
    let listener = Listener::new(listener, tls).context(|| "start listening".into())?;
    let app = app.into_make_service_with_connect_info::<Remote>();
    let server = tokio::spawn(axum::serve(listener, app).with_graceful_shutdown(stopping).into_future());

    let joined = match start {
        Start::Resume => Ok(()),
        Start::Initialize => initialize(&raft, &identity).await,
        Start::Join(seed) => join(&client, &seed, &identity).await,
    };
    let mount = joined.and_then(|()| match &config.mount {
        Some(path) => Mount::start(node.clone(), path, config.stale_reads, config.allow_other).map(Some),
        None => Ok(None),
    });
    let mount = match mount {
        Ok(m) => m,
        Err(e) => {
            server.abort();
            let _ = raft.shutdown().await;
            return Err(e);
        }
    };
    tokio::spawn(crate::raft::elections::break_split_votes(raft.clone(), config.election_timeout));
    info!(name = %identity.name, id = identity.id, "node running");

    let served = server.await;
    drop(mount);
    info!("stopping raft");
    match raft.shutdown().await {
        Ok(()) => {
            if let Err(e) = clean_shutdown.mark_clean() {
                warn!(cause = %e, "could not record a clean shutdown; the next start rebuilds from the snapshot");
            }
        }
        Err(e) => warn!(cause = %e, "raft did not stop cleanly"),
    }
    match served {
        Ok(r) => r.context(|| "serve HTTP".into()),
        Err(e) => Err(Error::Raft(format!("server task failed: {e}"))),
    }
}

async fn initialize(raft: &Raft, identity: &Identity) -> Result<()> {
    let members = BTreeMap::from([(identity.id, PeerNode { name: identity.name.clone() })]);
    match raft.initialize(members).await {
        Ok(()) => {
            info!("initialized a new cluster");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(Error::Raft(format!("initialize: {e}"))),
    }
}

async fn join(client: &HttpClient, seed: &str, identity: &Identity) -> Result<()> {
    let req = JoinRequest { id: identity.id, name: identity.name.clone() };
    let deadline = Instant::now() + JOIN_DEADLINE;
    loop {
        let why = match client.post_json(seed, PeerRoute::ClusterJoin.path(), &req, JOIN_DEADLINE).await {
            Ok(resp) if resp.status.is_success() => {
                info!(seed, "joined the cluster");
                return Ok(());
            }
            Ok(resp) if resp.status == hyper::StatusCode::UNAUTHORIZED => {
                return Err(Error::Peer {
                    peer: seed.into(),
                    message: format!(
                        "refused the join: {} — start this node with the cluster's token (--cluster-token-file)",
                        resp.text()
                    ),
                })
            }
            Ok(resp) if resp.status.is_client_error() => {
                return Err(Error::Peer { peer: seed.into(), message: format!("refused the join: {}", resp.text()) })
            }
            Ok(resp) => format!("{}: {}", resp.status, resp.text()),
            Err(e) => e.to_string(),
        };
        if Instant::now() + JOIN_RETRY > deadline {
            return Err(Error::Peer { peer: seed.into(), message: format!("could not join: {why}") });
        }
        warn!(seed, cause = %why, "join failed, retrying");
        tokio::time::sleep(JOIN_RETRY).await;
    }
}
