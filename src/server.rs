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
use tracing::{error, info, warn};

use crate::client::{HttpClient, Links};
use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::fuse::Mount;
use crate::http::listener::{Listener, Remote};
use crate::identity::{Identity, Start};
use crate::node::{JoinRequest, Node};
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::{PeerNode, PeerRoute, Raft};
use crate::store::state_machine::ShutdownHandle;
use crate::store::{FileStore, StateHandle, StateMachine};

/// How long a new node keeps asking its seed to add it before giving up.
pub const JOIN_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between join attempts.
const JOIN_RETRY: Duration = Duration::from_millis(500);

/// Binds the configured address (or takes the socket the parent passed) and runs the node
/// until `shutdown` resolves.
pub async fn run(
    config: Config,
    identity: Identity,
    start: Start,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = match inherited_listener()? {
        Some(listener) => listener,
        None => {
            let addr = config.listen_addr();
            TcpListener::bind(&addr)
                .await
                .context(|| format!("listen on {addr}"))?
        }
    };
    serve(listener, config, identity, start, shutdown).await
}

/// First descriptor a parent passes, by the socket-activation convention.
const LISTEN_FD: std::os::fd::RawFd = 3;

/// A listening socket passed by the parent as descriptor 3 with `LISTEN_FDS=1` (systemd's
/// socket activation; `LISTEN_PID`, if set, must be this process). The parent has bound the
/// port already, so no one can take it between choosing and binding — what supervisors and
/// the tests rely on.
fn inherited_listener() -> Result<Option<TcpListener>> {
    use std::os::fd::FromRawFd;
    match std::env::var("LISTEN_FDS").as_deref() {
        Ok("1") => {}
        Ok("0") | Err(_) => return Ok(None),
        Ok(n) => {
            return Err(Error::Config(format!(
                "LISTEN_FDS={n}: raftd takes exactly one listening socket"
            )))
        }
    }
    if std::env::var("LISTEN_PID").is_ok_and(|pid| pid != std::process::id().to_string()) {
        return Ok(None);
    }
    // Safety: by the convention above, descriptor 3 is ours, open, and used by nothing else.
    let socket = unsafe { std::net::TcpListener::from_raw_fd(LISTEN_FD) };
    let checked = socket
        .local_addr()
        .and_then(|_| socket.set_nonblocking(true))
        .context(|| "LISTEN_FDS=1, but descriptor 3 is not a listening TCP socket".into());
    checked?;
    let listener = TcpListener::from_std(socket).context(|| "use the inherited socket".into())?;
    info!(addr = ?listener.local_addr().ok(), "listening on the socket passed by the parent");
    Ok(Some(listener))
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
    let mut node = launch(listener, config, identity, start, Links::default(), shutdown).await?;
    let served = node.served().await;
    match node.stop().await {
        Some(fatal) => Err(Error::Raft(format!("stopped after a fatal error: {fatal}"))),
        None => served,
    }
}

/// Starts a node on an already-bound listener — the start-up steps in order — and returns
/// it running; [`RunningNode::stop`] reverses the steps. `links` lets a test cut the node off
/// from chosen peers.
pub async fn launch(
    listener: TcpListener,
    config: Config,
    identity: Identity,
    start: Start,
    links: Links,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningNode> {
    crate::logging::set_node(&identity.name);
    let storage = open_storage(&config)?;
    let clean = storage.state_machine.shutdown_handle();
    let state = storage.state_machine.handle();
    let (raft, node) = start_raft(&config, &identity, storage, state, links).await?;
    let mut running = RunningNode {
        http: None,
        mount: None,
        raft,
        node: node.clone(),
        clean,
    };
    let started = async {
        running.http = Some(start_http(listener, node.clone(), shutdown)?);
        join_or_initialize(start, &running.raft, &node, &identity).await?;
        running.mount = start_mount(&node)?;
        Ok::<_, Error>(())
    }
    .await;
    if let Err(e) = started {
        running.stop().await;
        return Err(e);
    }
    tokio::spawn(crate::node::watch(node.clone()));
    tokio::spawn(crate::raft::elections::break_split_votes(
        running.raft.clone(),
        config.election_timeout,
    ));
    tokio::spawn(crate::raft::elections::campaign_after_lease(
        running.raft.clone(),
        node.leader_contact().clone(),
        crate::raft::elections::Timing {
            lease: config.leader_lease(),
            spread: config.election_timeout / 2,
            probe_after: config.read_lease() + config.heartbeat,
        },
    ));
    tokio::spawn(crate::raft::compaction::snapshot_policy(
        running.raft.clone(),
        node.log().clone(),
        config.data_dir.join("snapshots"),
        config.snapshot_every,
    ));
    info!(name = %identity.name, id = identity.id, "node running");
    Ok(running)
}

/// What the node stores, opened and checked, before Raft starts.
struct Storage {
    log: LogStore,
    state_machine: StateMachine,
    store: FileStore,
}

/// Opens the log (verifying every line) and the state machine (recovering after a crash).
fn open_storage(config: &Config) -> Result<Storage> {
    let dir = &config.data_dir;
    let log = LogStore::open(dir)?;
    let (state_machine, store) =
        StateMachine::open(dir).context(|| format!("open state machine in {}", dir.display()))?;
    Ok(Storage {
        log,
        state_machine,
        store,
    })
}

/// Builds the Raft core over the storage and the peer network, and the [`Node`] handle.
async fn start_raft(
    config: &Config,
    identity: &Identity,
    storage: Storage,
    state: StateHandle,
    links: Links,
) -> Result<(Raft, Arc<Node>)> {
    let client = HttpClient::for_cluster(config)?.with_links(links);
    let reader = storage.log.reader();
    let raft_config = Arc::new(config.raft_config()?);
    // The leader's own appends stop waiting for the disk once the store knows whose it is;
    // replication and the state machine wait for it instead.
    storage.log.set_node_id(identity.id)?;
    let mut state_machine = storage.state_machine;
    state_machine.wait_for_log(reader.durable());
    let network = Network::new(client.clone(), reader.durable());
    let raft = Raft::new(identity.id, raft_config, network, storage.log, state_machine)
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
    let node = Node::new(
        identity.id,
        raft.clone(),
        (storage.store, state),
        reader,
        client,
        config.clone(),
    );
    Ok((raft, Arc::new(node)))
}

type HttpTask = tokio::task::JoinHandle<std::io::Result<()>>;

/// Serves HTTP (clients, members, peers) on the listener until `shutdown` or removal.
fn start_http(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<HttpTask> {
    let config = node.config();
    let tls = config.tls.as_ref().map(crate::tls::server_config).transpose()?;
    let mutual_tls = config.tls.as_ref().is_some_and(|t| t.ca.is_some());
    if config.cluster_token.is_none() && !mutual_tls {
        warn!("no cluster token: peer and membership routes (/raft/*, /cluster/*) are open to anyone who can reach this port; set --cluster-token-file");
    }
    let app = crate::http::router(node.clone()).into_make_service_with_connect_info::<Remote>();
    let stopping = async move {
        tokio::select! {
            () = shutdown => {}
            () = node.removed() => {}
            cause = node.failed() => error!(%cause, "the Raft core stopped on a fatal error; shutting down"),
        }
        node.begin_stop();
    };
    let listener = Listener::new(listener, tls).context(|| "start listening".into())?;
    Ok(tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stopping)
            .into_future(),
    ))
}

/// A pristine node starts a cluster or joins one; a member resumes.
async fn join_or_initialize(start: Start, raft: &Raft, node: &Node, identity: &Identity) -> Result<()> {
    match start {
        Start::Resume => Ok(()),
        Start::Initialize => initialize(raft, identity).await,
        Start::Join(seed) => join(node.client(), &seed, identity).await,
    }
}

/// Mounts the tree with FUSE if the config asks for it.
fn start_mount(node: &Arc<Node>) -> Result<Option<Mount>> {
    let config = node.config();
    match &config.mount {
        Some(path) => Mount::start(node.clone(), path, config.stale_reads, config.allow_other).map(Some),
        None => Ok(None),
    }
}

/// A started node; stopped in the reverse order of starting.
pub struct RunningNode {
    http: Option<HttpTask>,
    mount: Option<Mount>,
    raft: Raft,
    node: Arc<Node>,
    clean: ShutdownHandle,
}

impl RunningNode {
    /// The node's handle (what the front ends use; its Raft handle has the metrics).
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Resolves when HTTP stops serving (shutdown requested, or the node was removed).
    pub async fn served(&mut self) -> Result<()> {
        match self.http.take() {
            Some(http) => match http.await {
                Ok(r) => r.context(|| "serve HTTP".into()),
                Err(e) => Err(Error::Raft(format!("server task failed: {e}"))),
            },
            None => Ok(()),
        }
    }

    /// Stops HTTP (if still running), unmounts, stops Raft, and records a clean stop — only
    /// if Raft was healthy: after a fatal error the applied files may be half-done, so the
    /// next start must rebuild them. Returns that fatal error, if there was one.
    pub async fn stop(mut self) -> Option<String> {
        if let Some(http) = self.http.take() {
            http.abort();
        }
        drop(self.mount.take());
        let fatal = self.node.fatal_error();
        info!("stopping raft");
        match (self.raft.shutdown().await, &fatal) {
            (Ok(()), None) => {
                if let Err(e) = self.clean.mark_clean() {
                    warn!(cause = %e, "could not record a clean shutdown; the next start rebuilds from the snapshot");
                }
            }
            (_, Some(cause)) => {
                warn!(%cause, "not a clean stop: the next start rebuilds the files from the snapshot and the log")
            }
            (Err(e), None) => warn!(cause = %e, "raft did not stop cleanly"),
        }
        fatal
    }
}

async fn initialize(raft: &Raft, identity: &Identity) -> Result<()> {
    let members = BTreeMap::from([(
        identity.id,
        PeerNode {
            name: identity.name.clone(),
        },
    )]);
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
    let req = JoinRequest {
        id: identity.id,
        name: identity.name.clone(),
    };
    let deadline = Instant::now() + JOIN_DEADLINE;
    loop {
        let why = match client
            .post_json(seed, PeerRoute::ClusterJoin.path(), &req, JOIN_DEADLINE)
            .await
        {
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
                return Err(Error::Peer {
                    peer: seed.into(),
                    message: format!("refused the join: {}", resp.text()),
                })
            }
            Ok(resp) => format!("{}: {}", resp.status, resp.text()),
            Err(e) => e.to_string(),
        };
        if Instant::now() + JOIN_RETRY > deadline {
            return Err(Error::Peer {
                peer: seed.into(),
                message: format!("could not join: {why}"),
            });
        }
        warn!(seed, cause = %why, "join failed, retrying");
        tokio::time::sleep(JOIN_RETRY).await;
    }
}
