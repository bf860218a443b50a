//! A node's validated configuration, independent of how it was given (flags, env, prompts).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Heartbeat interval: how often the leader contacts followers, in ms. openraft also uses it
/// as the deadline for every AppendEntries RPC, so it bounds how long one replication batch
/// may take on the wire.
pub const DEFAULT_HEARTBEAT_MS: u64 = 100;
/// Minimum election timeout in ms; the maximum is twice this. A follower that hears nothing
/// for longer campaigns: failover takes roughly max + a random value in [min, max].
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 300;
/// How long a write or linearizable read may wait for the cluster before failing with 503.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5000;
/// Largest accepted request body, in bytes.
pub const DEFAULT_MAX_BODY: u64 = 64 << 20;
/// Largest file content carried by one log entry; larger files are sent as chunks.
pub const DEFAULT_CHUNK_SIZE: usize = 256 << 10;
/// Entries applied between snapshots; the log is compacted after each snapshot.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 1000;

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// Advertised host name (what peers and forwarded clients connect to).
    pub host: String,
    /// Advertised port.
    pub port: u16,
    /// Address to bind; defaults to the advertised `host:port`.
    pub listen: Option<String>,
    /// A member to join through, for a pristine node; `None` initializes a new cluster.
    pub join: Option<String>,
    /// See [`DEFAULT_HEARTBEAT_MS`].
    pub heartbeat: Duration,
    /// See [`DEFAULT_ELECTION_TIMEOUT_MS`].
    pub election_timeout: Duration,
    /// See [`DEFAULT_REQUEST_TIMEOUT_MS`].
    pub request_timeout: Duration,
    /// See [`DEFAULT_MAX_BODY`].
    pub max_body: u64,
    /// See [`DEFAULT_CHUNK_SIZE`].
    pub chunk_size: usize,
    /// See [`DEFAULT_SNAPSHOT_EVERY`].
    pub snapshot_every: u64,
    /// Where to mount the replicated tree with FUSE, if anywhere.
    pub mount: Option<PathBuf>,
    /// Skip the read barrier when FUSE opens a file (faster; may see a lagging replica).
    pub stale_reads: bool,
}

impl Config {
    /// A config with defaults for everything but the identity.
    pub fn new(data_dir: PathBuf, host: String, port: u16) -> Self {
        Config {
            data_dir,
            host,
            port,
            listen: None,
            join: None,
            heartbeat: Duration::from_millis(DEFAULT_HEARTBEAT_MS),
            election_timeout: Duration::from_millis(DEFAULT_ELECTION_TIMEOUT_MS),
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            max_body: DEFAULT_MAX_BODY,
            chunk_size: DEFAULT_CHUNK_SIZE,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            mount: None,
            stale_reads: false,
        }
    }

    /// The advertised `host:port`, the node's name in the cluster.
    pub fn name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The address to bind.
    pub fn listen_addr(&self) -> String {
        self.listen.clone().unwrap_or_else(|| self.name())
    }

    /// The longest a leader may go without hearing from a majority before it stops serving
    /// writes and linearizable reads (openraft 0.9 has no check-quorum of its own).
    pub fn quorum_lease(&self) -> Duration {
        self.election_timeout * 2
    }

    /// Checks the values against each other.
    pub fn validate(&self) -> Result<()> {
        if self.host.is_empty() || self.host.contains(['/', ' ']) {
            return Err(Error::Config(format!("invalid host {:?}", self.host)));
        }
        if self.port == 0 {
            return Err(Error::Config("port must not be 0".into()));
        }
        if self.election_timeout <= self.heartbeat {
            return Err(Error::Config(format!(
                "election timeout ({:?}) must be longer than the heartbeat interval ({:?})",
                self.election_timeout, self.heartbeat
            )));
        }
        if self.chunk_size == 0 || self.snapshot_every == 0 {
            return Err(Error::Config("chunk size and snapshot interval must be positive".into()));
        }
        Ok(())
    }

    /// openraft's configuration derived from ours (validated by openraft too).
    pub fn raft_config(&self) -> Result<openraft::Config> {
        let min = self.election_timeout.as_millis() as u64;
        let config = openraft::Config {
            cluster_name: "raftd".into(),
            heartbeat_interval: self.heartbeat.as_millis() as u64,
            election_timeout_min: min,
            election_timeout_max: min * 2,
            // Snapshot chunks travel as JSON; give each a generous budget.
            install_snapshot_timeout: 10_000,
            snapshot_max_chunk_size: 1 << 20,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.snapshot_every / 2,
            ..Default::default()
        };
        config.validate().map_err(|e| Error::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_is_checked() {
        let mut c = Config::new("d".into(), "localhost".into(), 4001);
        c.validate().unwrap();
        assert_eq!(c.raft_config().unwrap().election_timeout_max, 2 * DEFAULT_ELECTION_TIMEOUT_MS);
        // go-raft's pace is reachable.
        c.heartbeat = Duration::from_millis(1000);
        c.election_timeout = Duration::from_millis(2000);
        c.validate().unwrap();
        c.raft_config().unwrap();
        c.election_timeout = Duration::from_millis(1000);
        assert!(c.validate().unwrap_err().to_string().contains("must be longer than the heartbeat"));
    }
}
