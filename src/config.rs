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
/// Fewest entries applied between snapshots (see `raft::compaction` for the whole policy);
/// the log is compacted after each snapshot.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;
/// Free bytes a node keeps in its data directory's filesystem: below it, writes that add
/// data are refused (HTTP 507, ENOSPC) while deletes still work, so a full disk — which
/// every replica reaches at about the same time — never stops the cluster.
pub const DEFAULT_MIN_FREE: u64 = 64 << 20;

/// Largest file the FUSE mount lets a write or truncate make (larger: `EFBIG`). Every byte of
/// a file, zeros of a sparse one included, travels through the log today, so the bound keeps
/// one `truncate` from filling every node's disk.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 16 << 30;
/// Largest piece of a snapshot sent in one peer message, in bytes.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Largest batch of log lines one AppendEntries carries (a single larger entry still goes
/// alone); see `raft::log_store`.
pub const MAX_REPLICATION_BATCH: u64 = 1 << 20;

/// TLS for the one port: clients and peers alike.
#[derive(Debug, Clone)]
pub struct Tls {
    /// PEM certificate chain this node presents (to clients, and to peers when `ca` is set).
    pub cert: PathBuf,
    /// PEM private key for `cert`.
    pub key: PathBuf,
    /// PEM CA certificate(s) that peers' certificates must chain to. With it, peer and
    /// membership routes require a client certificate from this CA (mutual TLS), and this
    /// node verifies the peers it calls against it; without it, peers are verified against
    /// the system's trust store and no client certificate is asked for.
    pub ca: Option<PathBuf>,
}

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
    /// Let users other than the mounting one use the FUSE mount.
    pub allow_other: bool,
    /// See [`DEFAULT_MIN_FREE`]; 0 turns the guard off.
    pub min_free: u64,
    /// See [`DEFAULT_MAX_FILE_SIZE`].
    pub max_file_size: u64,
    /// Shared secret every request to peer and membership routes must carry.
    pub cluster_token: Option<String>,
    /// Serve HTTPS (and call peers over HTTPS) when set.
    pub tls: Option<Tls>,
}

impl Config {
    /// A config with defaults for everything but the identity.
    pub fn new(data_dir: PathBuf, host: String, port: u16) -> Self {
        Config {
            data_dir,
            host,
            port,
            listen: None,
            heartbeat: Duration::from_millis(DEFAULT_HEARTBEAT_MS),
            election_timeout: Duration::from_millis(DEFAULT_ELECTION_TIMEOUT_MS),
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            max_body: DEFAULT_MAX_BODY,
            chunk_size: DEFAULT_CHUNK_SIZE,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            mount: None,
            stale_reads: false,
            allow_other: false,
            min_free: DEFAULT_MIN_FREE,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            cluster_token: None,
            tls: None,
        }
    }

    /// `https` when TLS is on, else `http`: how every node of the cluster is reached.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The largest body a peer route accepts: a replication batch (or one entry holding a
    /// whole chunk, which JSON may escape up to 6 bytes per byte) or a snapshot piece (a JSON
    /// array of numbers, up to 4 bytes per byte), with room for the envelope.
    pub fn peer_body_limit(&self) -> usize {
        let batch = 2 * MAX_REPLICATION_BATCH as usize + 6 * self.chunk_size;
        batch.max(4 * SNAPSHOT_CHUNK) + (64 << 10)
    }

    /// The advertised `host:port`, the node's name in the cluster.
    pub fn name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The address to bind.
    pub fn listen_addr(&self) -> String {
        self.listen.clone().unwrap_or_else(|| self.name())
    }

    /// How long a voter refuses to vote after its leader's last message: openraft 0.9's
    /// leader lease, the maximum election timeout.
    pub fn leader_lease(&self) -> Duration {
        self.election_timeout * 2
    }

    /// How long after a majority acknowledged it a leader answers read indexes from its
    /// lease instead of a round of heartbeats: a quarter of the leader lease, the rest a
    /// margin for clocks that run at different rates and for scheduling delays.
    pub fn read_lease(&self) -> Duration {
        self.leader_lease() / 4
    }

    /// The longest a leader may go without hearing from a majority before it stops serving
    /// writes and linearizable reads (openraft 0.9 has no check-quorum of its own).
    pub fn quorum_lease(&self) -> Duration {
        self.election_timeout * 2
    }

    /// Checks the values against each other.
    pub fn validate(&self) -> Result<()> {
        check_host(&self.host)
            .map_err(|why| Error::Config(format!("invalid host {:?}: {why}", self.host)))?;
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
            return Err(Error::Config(
                "chunk size and snapshot interval must be positive".into(),
            ));
        }
        if let Some(token) = &self.cluster_token {
            if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::Config(
                    "the cluster token must be non-empty, without spaces".into(),
                ));
            }
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
            snapshot_max_chunk_size: SNAPSHOT_CHUNK as u64,
            // raft::compaction triggers snapshots, in proportion to the state.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: self.snapshot_every / 2,
            ..Default::default()
        };
        config.validate().map_err(|e| Error::Config(e.to_string()))
    }
}

/// Checks a host name as it may appear in a node's name: a DNS name, an IPv4 address or a
/// bracketed IPv6 address. Names go into peer URLs, so nothing else is allowed.
pub fn check_host(host: &str) -> std::result::Result<(), &'static str> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| "not an IPv6 address");
    }
    if host.is_empty() || host.len() > 253 {
        return Err("must be 1 to 253 characters");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("only letters, digits, `-` and `.` are allowed")
    }
}

/// Checks a node name: `host:port`, with a host [`check_host`] accepts and a port from 1.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let Some((host, port)) = name.rsplit_once(':') else {
        return Err(format!("{name:?} is not host:port"));
    };
    check_host(host).map_err(|why| format!("{name:?}: bad host: {why}"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(format!("{name:?}: the port must be a number from 1 to 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_host_and_port_only() {
        for good in [
            "localhost:4001",
            "127.0.0.1:1",
            "node-1.example.org:65535",
            "[::1]:4001",
        ] {
            check_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "localhost",
            "localhost:0",
            "localhost:65536",
            "localhost:+80",
            "evil/path:80",
            "a b:80",
            "host:80/x",
            "user@host:80",
            "[nope]:80",
            ":80",
            "-x:80",
            "h?q=1:80",
        ] {
            assert!(check_name(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn timing_is_checked() {
        let mut c = Config::new("d".into(), "localhost".into(), 4001);
        c.validate().unwrap();
        assert_eq!(
            c.raft_config().unwrap().election_timeout_max,
            2 * DEFAULT_ELECTION_TIMEOUT_MS
        );
        // go-raft's pace is reachable.
        c.heartbeat = Duration::from_millis(1000);
        c.election_timeout = Duration::from_millis(2000);
        c.validate().unwrap();
        c.raft_config().unwrap();
        c.election_timeout = Duration::from_millis(1000);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("must be longer than the heartbeat"));
    }
}
