//! The command line: `raftd DATA_DIR` runs a node (flags, each with a `RAFTD_*` environment
//! fallback, become a [`Config`]); `raftd <tool>` runs one of the operator's tools.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, Tls};
use crate::error::{Error, Result};

/// raftd: a Raft-replicated filesystem. Each node keeps its identity, its Raft log and the
/// replicated files in DATA_DIR; on restart it rejoins its cluster on its own.
///
/// A new node asks (on a terminal) for its hostname, port and a node to join, unless flags
/// give them; without a terminal it uses localhost, 4001 and starts a new cluster.
///
/// The tools (ctl, bench, backup, restore, log, completions, man) are subcommands; a data
/// directory that happens to be named like one is given as ./NAME.
#[derive(Debug, Parser)]
#[command(
    name = "raftd",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Raftd {
    /// A tool to run instead of a node.
    #[command(subcommand)]
    pub tool: Option<Tool>,

    /// The node to run.
    #[command(flatten)]
    pub node: Cli,
}

/// The operator's tools.
#[derive(Debug, Subcommand)]
pub enum Tool {
    /// Control a running cluster: status, membership, files, the log.
    Ctl(CtlArgs),
    /// Save a consistent backup of the tree (a tar archive) from a running node.
    Backup {
        /// A node to take the backup from (host:port).
        #[arg(long, env = "RAFTD_CTL_CLUSTER", value_delimiter = ',')]
        from: Vec<String>,
        /// Where to save it; a directory gets the name raftd-backup-TERM-INDEX.tar.
        file: PathBuf,
        /// Send `Authorization: Bearer` with this cluster token (or RAFTD_CLUSTER_TOKEN).
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Prepare a new data directory from a backup: it starts as a one-node cluster holding
    /// exactly the backup's files; other nodes then join it.
    Restore {
        /// The backup (a tar from `raftd backup` or `GET /backup`; - for standard input).
        file: PathBuf,
        /// The new node's data directory (must not exist, or be empty).
        data_dir: PathBuf,
        /// Hostname the restored node advertises [default: localhost].
        #[arg(long)]
        host: Option<String>,
        /// Port the restored node listens on [default: 4001].
        #[arg(short, long)]
        port: Option<u16>,
    },
    /// Load a running cluster (raftd, or etcd for comparison) or a FUSE mount, and report
    /// throughput and latency percentiles.
    Bench(BenchArgs),
    /// Check or repair a node's log file offline (the node must be stopped).
    Log {
        /// What to do.
        #[command(subcommand)]
        action: LogAction,
    },
    /// Print a shell completion script (e.g. `raftd completions bash > /etc/bash_completion.d/raftd`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `raftd man > raftd.1; man ./raftd.1`.
    Man,
}

/// `raftd bench` arguments.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Nodes to send to (host:port, comma-separated); clients are spread over them.
    #[arg(long, short, value_delimiter = ',', default_value = "localhost:4001")]
    pub cluster: Vec<String>,
    /// raftd: send to the leader or to followers only (found through /status/all), or any.
    #[arg(long, value_parser = ["leader", "follower", "any"])]
    pub via: Option<String>,
    /// The system under load: raftd's /files API or etcd's v3 JSON gateway.
    #[arg(long, value_enum, default_value_t = Target::Raftd)]
    pub target: Target,
    /// What to send.
    #[arg(long, short, value_enum, default_value_t = Workload::Overwrite)]
    pub workload: Workload,
    /// Concurrent clients (closed loop: each waits for its answer), or writer threads with --fuse.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds to run (unless --count is given).
    #[arg(long, short, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests instead.
    #[arg(long)]
    pub count: Option<u64>,
    /// Keys the overwrites and reads pick from.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 16)]
    pub value_size: usize,
    /// With `--workload mix`: the fraction of requests that are linearizable reads.
    #[arg(long, default_value_t = 0.5)]
    pub read_fraction: f64,
    /// Write every key once before measuring reads or overwrites.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub prefill: bool,
    /// A name for this run's new keys (bench/RUN/...), so runs do not overwrite each other.
    #[arg(long, default_value = "run")]
    pub run: String,
    /// Write files on this FUSE mount with --clients threads instead of using HTTP.
    #[arg(long)]
    pub fuse: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What `raftd bench` loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// raftd's HTTP API.
    Raftd,
    /// etcd's v3 JSON gateway (`/v3/kv/put`, `/v3/kv/range`).
    Etcd,
}

/// `raftd bench` workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// A new key per write.
    Write,
    /// Overwrites of --keys keys.
    Overwrite,
    /// Linearizable reads of --keys keys.
    Read,
    /// Stale (local, serializable) reads of --keys keys.
    StaleRead,
    /// Overwrites and linearizable reads, --read-fraction of them reads.
    Mix,
}

/// `raftd log` actions.
#[derive(Debug, Subcommand)]
pub enum LogAction {
    /// Check every line's checksum, format and index; report the first bad line.
    Verify {
        /// The node's data directory.
        data_dir: PathBuf,
    },
    /// Drop a torn tail (a damaged last stretch no valid line follows) after confirmation.
    Repair {
        /// The node's data directory.
        data_dir: PathBuf,
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
}

/// The cluster token, for nodes and tools alike.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Shared secret of the cluster: every request to /raft/* and /cluster/* must carry
    /// `Authorization: Bearer <token>`; nodes send it to their peers, tools with their
    /// requests. Prefer --cluster-token-file or the environment: flags are visible in `ps`.
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
}

impl TokenArgs {
    /// The token, if one was given.
    pub fn token(&self) -> Result<Option<String>> {
        Ok(match (&self.cluster_token, &self.cluster_token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| Error::io(format!("read cluster token file {}", path.display()), e))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        })
    }
}

/// `raftd ctl` arguments.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Members to talk to (host:port, comma-separated); the first that answers is used.
    #[arg(
        long,
        short,
        env = "RAFTD_CTL_CLUSTER",
        value_delimiter = ',',
        default_value = "localhost:4001"
    )]
    pub cluster: Vec<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// The cluster token.
    #[command(flatten)]
    pub token: TokenArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `raftd ctl` commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Every member's role, term, commit and applied index, and whether it answers.
    Status,
    /// The members and learners.
    Members,
    /// The current leader.
    Leader,
    /// Remove a member (by host:port).
    Remove {
        /// The member's name (host:port).
        name: String,
    },
    /// Hand leadership to another voting member (by host:port).
    TransferLeader {
        /// The member's name (host:port).
        name: String,
    },
    /// Have every member build a snapshot now (compacting its log).
    Snapshot,
    /// Write a file from a local file or standard input.
    Put {
        /// Path in the replicated tree.
        path: String,
        /// Local file to upload; - or nothing for standard input.
        file: Option<PathBuf>,
    },
    /// Print a file (linearizable read).
    Get {
        /// Path in the replicated tree.
        path: String,
    },
    /// List a directory (the root by default).
    Ls {
        /// Directory in the replicated tree.
        dir: Option<String>,
    },
    /// Remove a file or an empty directory.
    Rm {
        /// Path in the replicated tree.
        path: String,
    },
    /// Print committed changes under a prefix as they happen (the whole tree by default).
    Watch {
        /// Directory or file to watch.
        prefix: Option<String>,
        /// Start at this log index instead of now (it must still be in the log).
        #[arg(long)]
        from: Option<u64>,
    },
    /// Print the Raft log.
    Log {
        /// Keep printing new entries as they are appended.
        #[arg(long, short)]
        follow: bool,
    },
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of a node.
#[derive(Debug, Args)]
pub struct Cli {
    /// The node's data directory (created if missing).
    #[arg(env = "RAFTD_DATA_DIR", required = true)]
    pub data_dir: Option<PathBuf>,

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

    /// Log peer communication (elections, appends, votes) and every HTTP request; twice for
    /// openraft's internals.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log format: text lines, or one JSON object per line (for log shippers).
    #[arg(long, env = "RAFTD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

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

    /// The cluster's shared secret.
    #[command(flatten)]
    pub token: TokenArgs,

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

    /// Largest file a write, truncate or fallocate through the FUSE mount may make (larger
    /// gets EFBIG). Only what a handle changed travels through the log, so a sparse file of
    /// this size costs a few bytes.
    #[arg(long, env = "RAFTD_MAX_FILE_SIZE", default_value_t = config::DEFAULT_MAX_FILE_SIZE)]
    pub max_file_size: u64,

    /// Take a snapshot (and compact the log) after at least this many entries, once the log
    /// since the last snapshot is also as large as the snapshot (so the cost per write stays
    /// flat as the tree grows); each node draws its own threshold in [½, 1) of this.
    #[arg(long, env = "RAFTD_SNAPSHOT_EVERY", default_value_t = config::DEFAULT_SNAPSHOT_EVERY)]
    pub snapshot_every: u64,

    /// Threads running the node's network and Raft tasks (file I/O, fsync and the FUSE mount
    /// have threads of their own). One is fastest on small machines: a write's tasks then
    /// hand work to each other without waking another thread.
    #[arg(long, env = "RAFTD_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: u16,
}

impl Cli {
    /// The data directory (clap requires it whenever no tool is named).
    pub fn data_dir(&self) -> Result<PathBuf> {
        self.data_dir
            .clone()
            .ok_or_else(|| Error::Config("a data directory (DATA_DIR) is required".into()))
    }

    /// Builds the config once host and port are known (from flags, the data dir or a prompt).
    pub fn into_config(self, host: String, port: u16) -> Result<Config> {
        let mut c = Config::new(self.data_dir()?, host, port);
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
        c.max_file_size = self.max_file_size;
        c.cluster_token = self.token.token()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Raftd::command().debug_assert();
    }

    #[test]
    fn a_data_directory_runs_a_node_and_a_tool_name_runs_the_tool() {
        let node = Raftd::try_parse_from(["raftd", "/tmp/n1", "--port", "4002"]).unwrap();
        assert!(node.tool.is_none());
        assert_eq!(node.node.data_dir().unwrap(), PathBuf::from("/tmp/n1"));
        let ctl = Raftd::try_parse_from(["raftd", "ctl", "--json", "status"]).unwrap();
        assert!(matches!(ctl.tool, Some(Tool::Ctl(CtlArgs { json: true, .. }))));
        let named_like_a_tool = Raftd::try_parse_from(["raftd", "./ctl"]).unwrap();
        assert_eq!(named_like_a_tool.node.data_dir().unwrap(), PathBuf::from("./ctl"));
        assert!(
            Raftd::try_parse_from(["raftd"]).is_err(),
            "a node needs its data directory"
        );
    }
}
