//! Prometheus metrics: what happened (counters and histograms, recorded where it happens) and
//! where the node stands (gauges, read from Raft and the disk when `/metrics` is scraped).
//!
//! The event metrics live in one process-wide [`Events`]: a node is one process, and the
//! storage layers that record fsyncs and applies need no handle threaded through openraft.
//! (Tests that run several nodes in one process share them; the metrics tests use processes.)
//! Every series is listed, with its meaning, in `docs/metrics.md`.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label of a proposal's outcome: `ok`, or the error's class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok`, `refused` (the state machine said no: missing file, bad name…), `unavailable`
    /// (no quorum, timeout), `error` (anything else).
    pub outcome: &'static str,
}

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRequest {
    /// The route pattern (`/files/{*path}`), not the path, so the series stay few.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Status code.
    pub status: u16,
}

/// Label of an HTTP route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    /// The route pattern.
    pub route: String,
}

/// Label of a FUSE operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FuseOp {
    /// The operation (`lookup`, `open`, `write`, `flush`, …).
    pub op: &'static str,
}

/// Histogram buckets for latencies: 50 µs to about 27 s, doubling.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Histogram buckets for counts (entries per batch): 1 to 4096.
fn counts() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// Histogram buckets for sizes in bytes: 1 KiB to 64 GiB, ×4.
fn bytes() -> Histogram {
    Histogram::new(exponential_buckets(1024.0, 4.0, 14))
}

/// The process's event metrics.
pub struct Events {
    /// Proposals (writes, deletes, renames…) by outcome.
    pub proposals: Family<Outcome, Counter>,
    /// From accepting a proposal to its being applied on the node that answers.
    pub write_seconds: Histogram,
    /// Linearizable read barriers: read index through the leader, then the local apply.
    pub read_barrier_seconds: Histogram,
    /// One group fsync of the log.
    pub fsync_seconds: Histogram,
    /// Log entries made durable by one group fsync.
    pub fsync_entries: Histogram,
    /// One batch of committed entries applied to the files.
    pub apply_seconds: Histogram,
    /// Entries per applied batch.
    pub apply_entries: Histogram,
    /// Commands per `file:batch` entry the leader proposed (group commit).
    pub batch_commands: Histogram,
    /// HTTP requests by route, method and status.
    pub http_requests: Family<HttpRequest, Counter>,
    /// HTTP request latency by route.
    pub http_seconds: Family<Route, Histogram>,
    /// FUSE operations by kind.
    pub fuse_ops: Family<FuseOp, Counter>,
    /// FUSE operations that answered with an error, by kind.
    pub fuse_errors: Family<FuseOp, Counter>,
    /// Snapshots built here.
    pub snapshot_build_seconds: Histogram,
    /// Sizes of the snapshots built here.
    pub snapshot_build_bytes: Histogram,
    /// Snapshots received from a leader and installed.
    pub snapshot_install_seconds: Histogram,
    /// Sizes of installed snapshots.
    pub snapshot_install_bytes: Histogram,
    /// Times this node saw the leader change (including to "none").
    pub leader_changes: Counter,
    /// Read indexes this node answered as leader from its lease, without heartbeats.
    pub lease_reads: Counter,
    /// Backups streamed by `GET /backup`.
    pub backups: Counter,
    /// Names the FUSE mount's inode table holds (what the kernel has not forgotten).
    pub fuse_inodes: prometheus_client::metrics::gauge::Gauge,
}

static EVENTS: LazyLock<Events> = LazyLock::new(|| Events {
    proposals: Family::default(),
    write_seconds: seconds(),
    read_barrier_seconds: seconds(),
    fsync_seconds: seconds(),
    fsync_entries: counts(),
    apply_seconds: seconds(),
    apply_entries: counts(),
    batch_commands: counts(),
    http_requests: Family::default(),
    http_seconds: Family::new_with_constructor(seconds),
    fuse_ops: Family::default(),
    fuse_errors: Family::default(),
    snapshot_build_seconds: seconds(),
    snapshot_build_bytes: bytes(),
    snapshot_install_seconds: seconds(),
    snapshot_install_bytes: bytes(),
    leader_changes: Counter::default(),
    lease_reads: Counter::default(),
    backups: Counter::default(),
    fuse_inodes: Default::default(),
});

/// The process's event metrics.
pub fn events() -> &'static Events {
    &EVENTS
}

/// Seconds since `start`, for histograms.
pub fn since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// A duration in seconds, for histograms.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Events {
    /// Registers every event metric (shared handles: the registry reads the live values).
    pub fn register(&self, r: &mut Registry) {
        let p = r.sub_registry_with_prefix("raftd");
        p.register("proposals", "Proposals by outcome", self.proposals.clone());
        p.register(
            "write_duration_seconds",
            "From accepting a proposal to its being applied on the answering node",
            self.write_seconds.clone(),
        );
        p.register(
            "read_barrier_duration_seconds",
            "Linearizable read barriers: read index through the leader, then the local apply",
            self.read_barrier_seconds.clone(),
        );
        p.register(
            "log_fsync_duration_seconds",
            "One group fsync of the log",
            self.fsync_seconds.clone(),
        );
        p.register(
            "log_fsync_batch_entries",
            "Log entries made durable by one group fsync",
            self.fsync_entries.clone(),
        );
        p.register(
            "apply_duration_seconds",
            "One batch of committed entries applied to the files",
            self.apply_seconds.clone(),
        );
        p.register(
            "apply_batch_entries",
            "Entries per applied batch",
            self.apply_entries.clone(),
        );
        p.register(
            "proposal_batch_commands",
            "Commands per file:batch entry the leader proposed (concurrent writes sharing one entry)",
            self.batch_commands.clone(),
        );
        p.register(
            "http_requests",
            "HTTP requests by route, method and status",
            self.http_requests.clone(),
        );
        p.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            self.http_seconds.clone(),
        );
        p.register(
            "fuse_operations",
            "FUSE operations by kind",
            self.fuse_ops.clone(),
        );
        p.register(
            "fuse_errors",
            "FUSE operations that answered with an error, by kind",
            self.fuse_errors.clone(),
        );
        p.register(
            "snapshot_build_duration_seconds",
            "Snapshots built on this node",
            self.snapshot_build_seconds.clone(),
        );
        p.register(
            "snapshot_build_size_bytes",
            "Sizes of the snapshots built on this node",
            self.snapshot_build_bytes.clone(),
        );
        p.register(
            "snapshot_install_duration_seconds",
            "Snapshots received from the leader and installed",
            self.snapshot_install_seconds.clone(),
        );
        p.register(
            "snapshot_install_size_bytes",
            "Sizes of the installed snapshots",
            self.snapshot_install_bytes.clone(),
        );
        p.register(
            "leader_changes",
            "Times this node saw the leader change",
            self.leader_changes.clone(),
        );
        p.register(
            "lease_reads",
            "Read indexes answered by the leader from its lease, without a round of heartbeats",
            self.lease_reads.clone(),
        );
        p.register("backups", "Backups streamed by GET /backup", self.backups.clone());
        p.register(
            "fuse_inodes",
            "Names the FUSE mount's inode table holds (those the kernel has not forgotten)",
            self.fuse_inodes.clone(),
        );
    }

    /// Counts a FUSE operation.
    pub fn fuse_op(&self, op: &'static str) {
        self.fuse_ops.get_or_create(&FuseOp { op }).inc();
    }

    /// Counts a FUSE operation that answered with an error.
    pub fn fuse_error(&self, op: &'static str) {
        self.fuse_errors.get_or_create(&FuseOp { op }).inc();
    }
}
