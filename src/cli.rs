//! The command line: flags (each with a `RAFTD_*` environment fallback) into a [`Config`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::{self, Config, Tls};
use crate::error::{Error, Result};

/// raftd: a Raft-replicated filesystem. Each node keeps its identity, its Raft log and the
/// replicated files in DATA_DIR; on restart it rejoins its cluster on its own.
///
/// A new node asks (on a terminal) for its hostname, port and a node to join, unless flags
/// give them; without a terminal it uses localhost, 4001 and starts a new cluster.
#[derive(Debug, Parser)]
#[command(name = "raftd", version)]
pub struct Cli {
    /// The node's data directory (created if missing).
    #[arg(env = "RAFTD_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Hostname other nodes and clients use to reach this node [default: localhost].
    #[arg(long, env = "RAFTD_HOST")]
    pub host: Option<String>,

    /// Port for the HTTP API and peer RPC [default: 4001].
    #[arg(short, long, env = "RAFTD_PORT")]
    pub port: Option<u16>,

    /// A member (host:port) to join through, for a node with no log.
    #[arg(long, env = "RAFTD_JOIN")]
    pub join: Option<String>,

    /// Address to listen on, if not the advertised host:port (e.g. 0.0.0.0:4001 in a container).
    #[arg(long, env = "RAFTD_LISTEN")]
    pub listen: Option<String>,

    /// Log peer communication (elections, appends, votes); twice for openraft's internals.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Leader heartbeat interval in milliseconds (go-raft's raftd used 1000).
    #[arg(long, env = "RAFTD_HEARTBEAT_MS", default_value_t = config::DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_ms: u64,

    /// Minimum election timeout in milliseconds; the maximum is twice this (go-raft's raftd: 2000).
    #[arg(long, env = "RAFTD_ELECTION_TIMEOUT_MS", default_value_t = config::DEFAULT_ELECTION_TIMEOUT_MS)]
    pub election_timeout_ms: u64,

    /// How long a write or linearizable read waits for a quorum before failing with 503.
    #[arg(long, env = "RAFTD_REQUEST_TIMEOUT_MS", default_value_t = config::DEFAULT_REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,

    /// Largest accepted request body in bytes (larger gets 413).
    #[arg(long, env = "RAFTD_MAX_BODY", default_value_t = config::DEFAULT_MAX_BODY)]
    pub max_body: u64,

    /// Largest file content per log entry in bytes; larger files are replicated in chunks.
    #[arg(long, env = "RAFTD_CHUNK_SIZE", default_value_t = config::DEFAULT_CHUNK_SIZE)]
    pub chunk_size: usize,

    /// Mount the replicated tree here with FUSE (needs /dev/fuse and root or fuse permissions).
    #[arg(long, env = "RAFTD_MOUNT")]
    pub mount: Option<PathBuf>,

    /// FUSE: open files from the local replica without the read barrier through the leader
    /// (faster; may miss writes just committed elsewhere).
    #[arg(long, env = "RAFTD_STALE_READS")]
    pub stale_reads: bool,

    /// Let other users use the FUSE mount (mount option allow_other). Without it only the
    /// user who started raftd can see the mount.
    #[arg(long, env = "RAFTD_ALLOW_OTHER")]
    pub allow_other: bool,

    /// Shared secret of the cluster: every request to /raft/* and /cluster/* must carry
    /// `Authorization: Bearer <token>`, and this node sends it to its peers. Prefer
    /// --cluster-token-file or the environment: flags are visible in `ps`.
    #[arg(
        long,
        env = "RAFTD_CLUSTER_TOKEN",
        hide_env_values = true,
        conflicts_with = "cluster_token_file"
    )]
    pub cluster_token: Option<String>,

    /// Read the cluster token from this file (surrounding whitespace is ignored).
    #[arg(long, env = "RAFTD_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,

    /// Serve HTTPS with this PEM certificate chain (clients and peers alike); needs --tls-key.
    #[arg(long, env = "RAFTD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "RAFTD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA that peers' certificates must chain to: peer and membership routes then require a
    /// client certificate from it (mutual TLS), and peers are verified against it.
    #[arg(long, env = "RAFTD_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

    /// Refuse writes that add data (HTTP 507, ENOSPC through FUSE) while the data directory's
    /// filesystem has fewer free bytes than this; deletes still work. 0 turns it off.
    #[arg(long, env = "RAFTD_MIN_FREE", default_value_t = config::DEFAULT_MIN_FREE)]
    pub min_free: u64,

    /// Take a snapshot (and compact the log) after at least this many entries, once the log
    /// since the last snapshot is also as large as the snapshot (so the cost per write stays
    /// flat as the tree grows); each node draws its own threshold in [½, 1) of this.
    #[arg(long, env = "RAFTD_SNAPSHOT_EVERY", default_value_t = config::DEFAULT_SNAPSHOT_EVERY)]
    pub snapshot_every: u64,
}

impl Cli {
    /// Builds the config once host and port are known (from flags, the data dir or a prompt).
    pub fn into_config(self, host: String, port: u16) -> Result<Config> {
        let mut c = Config::new(self.data_dir, host, port);
        c.listen = self.listen;
        c.heartbeat = Duration::from_millis(self.heartbeat_ms);
        c.election_timeout = Duration::from_millis(self.election_timeout_ms);
        c.request_timeout = Duration::from_millis(self.request_timeout_ms);
        c.max_body = self.max_body;
        c.chunk_size = self.chunk_size;
        c.snapshot_every = self.snapshot_every;
        c.mount = self.mount;
        c.stale_reads = self.stale_reads;
        c.allow_other = self.allow_other;
        c.min_free = self.min_free;
        c.cluster_token = match (self.cluster_token, self.cluster_token_file) {
            (Some(token), _) => Some(token),
            (None, Some(path)) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| Error::io(format!("read cluster token file {}", path.display()), e))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        c.tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(Tls {
                cert,
                key,
                ca: self.tls_ca,
            }),
            _ => None,
        };
        Ok(c)
    }
}
