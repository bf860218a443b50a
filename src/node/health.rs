//! Is the node alive, is it ready, and what do its gauges read — for `/healthz`, `/readyz`
//! and `/metrics`.
//!
//! Liveness is the Raft core running. Readiness is stricter, for a load balancer: a leader is
//! known (and, on the leader, a majority heard from within the quorum lease), the node has
//! applied at least the commit index the leader gave it after it started (a restarted node
//! replaying its log is not ready), and no snapshot is being received or installed.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Node;
use crate::metrics;

/// Pause between attempts to learn the cluster's commit index after a start.
const FLOOR_RETRY: Duration = Duration::from_millis(100);

/// The cluster's commit index as the leader first told it after this node started.
#[derive(Debug, Default)]
pub(crate) struct ReadyFloor(AtomicU64);

impl ReadyFloor {
    /// `None` until learned; then the index, if anything was committed.
    fn get(&self) -> Option<Option<u64>> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            1 => Some(None),
            v => Some(Some(v - 2)),
        }
    }

    fn set(&self, index: Option<u64>) {
        self.0.store(index.map_or(1, |i| i + 2), Ordering::Relaxed);
    }
}

/// Label of a follower in the leader's replication gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Follower {
    follower: String,
}

impl Node {
    /// `Ok` while the Raft core runs; otherwise why not.
    pub fn health(&self) -> Result<(), String> {
        if let Some(fatal) = self.fatal_error() {
            return Err(format!("the Raft core stopped: {fatal}"));
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        match (&m.running_state, m.state) {
            (Err(e), _) => Err(format!("the Raft core stopped: {e}")),
            (Ok(()), ServerState::Shutdown) => Err("the Raft core is shutting down".into()),
            (Ok(()), _) => Ok(()),
        }
    }

    /// `Ok` when this node can serve linearizable reads and writes without first catching
    /// up; otherwise the reason, in one line.
    pub fn readiness(&self) -> Result<(), String> {
        self.health()?;
        if self.receiving_snapshot() || self.state.installing() {
            return Err("installing a snapshot from the leader".into());
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.current_leader.is_none() {
            return Err(format!("no leader known (term {})", m.current_term));
        }
        let lease = self.config.quorum_lease().as_millis() as u64;
        if let Some(ms) = m.millis_since_quorum_ack.filter(|&ms| ms > lease) {
            if m.state == ServerState::Leader {
                return Err(format!(
                    "no quorum: this leader has not heard from a majority for {ms} ms"
                ));
            }
        }
        let Some(floor) = self.ready_floor.get() else {
            return Err("has not yet learned the commit index from the leader".into());
        };
        let applied = m.last_applied.map(|l| l.index);
        if let Some(floor) = floor.filter(|&f| applied < Some(f)) {
            return Err(format!(
                "catching up: applied {} of {floor}",
                applied.map_or("none".into(), |a| a.to_string())
            ));
        }
        Ok(())
    }

    fn receiving_snapshot(&self) -> bool {
        self.incoming_snapshot
            .lock()
            .expect("snapshot check lock poisoned")
            .is_some()
    }

    /// The Prometheus text of this node: its gauges, read now, and the process's events.
    /// Walks the tree to count files and bytes, so call it off the async threads.
    pub fn metrics_text(&self) -> String {
        let mut registry = Registry::default();
        self.register_gauges(&mut registry);
        metrics::events().register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }

    fn register_gauges(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("raftd");
        let gauge = |r: &mut Registry, name: &str, help: &str, value: i64| {
            let g: Gauge = Gauge::default();
            g.set(value);
            r.register(name, help, g);
        };
        let index = |i: Option<u64>| i.map_or(-1, |i| i as i64);
        let status = self.status();
        let is_leader = status.state == "leader";
        gauge(r, "term", "Current Raft term", status.term as i64);
        gauge(
            r,
            "commit_index",
            "Highest log index known committed (-1: none)",
            index(status.commit_index),
        );
        gauge(
            r,
            "applied_index",
            "Highest log index applied to the files (-1: none)",
            index(status.applied_index),
        );
        gauge(
            r,
            "last_log_index",
            "Highest index in the local log (-1: none)",
            index(status.last_log_index),
        );
        gauge(
            r,
            "snapshot_index",
            "Index the newest snapshot covers (-1: none)",
            index(status.snapshot_index),
        );
        gauge(r, "is_leader", "1 on the leader, else 0", is_leader as i64);
        gauge(
            r,
            "has_leader",
            "1 when this node knows a leader",
            status.leader.is_some() as i64,
        );
        gauge(r, "members", "Voting members", status.members.len() as i64);
        gauge(r, "learners", "Non-voting members", status.learners.len() as i64);
        gauge(
            r,
            "ready",
            "1 when /readyz answers 200",
            self.readiness().is_ok() as i64,
        );
        if let Some(age) = status.millis_since_quorum_ack {
            gauge(
                r,
                "quorum_ack_age_milliseconds",
                "On the leader: time since a majority last acknowledged it",
                age as i64,
            );
        }
        let (files, bytes) = tree_size(self.store.root());
        gauge(r, "tree_files", "Files in the replicated tree", files as i64);
        gauge(
            r,
            "tree_bytes",
            "Bytes of file content in the replicated tree",
            bytes as i64,
        );
        let log_bytes = std::fs::metadata(self.config.data_dir.join(crate::raft::log_store::LOG_FILE))
            .map_or(0, |m| m.len());
        gauge(r, "log_bytes", "Size of the log file", log_bytes as i64);
        if is_leader {
            let lag: Family<Follower, Gauge> = Family::default();
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let last = m.last_log_index.unwrap_or(0);
            let membership = m.membership_config.membership();
            for (id, matched) in m.replication.iter().flatten() {
                if *id == self.id {
                    continue;
                }
                let follower = membership
                    .get_node(id)
                    .map_or_else(|| id.to_string(), |n| n.name.clone());
                let behind = last.saturating_sub(matched.map_or(0, |l| l.index));
                lag.get_or_create(&Follower { follower }).set(behind as i64);
            }
            r.register(
                "replication_lag_entries",
                "On the leader: entries each follower is behind the leader's log",
                lag,
            );
        }
    }
}

/// Files and bytes under `root` (a walk; unreadable parts are skipped).
fn tree_size(root: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => dirs.push(entry.path()),
                Ok(m) if m.is_file() => {
                    files += 1;
                    bytes += m.len();
                }
                _ => {}
            }
        }
    }
    (files, bytes)
}

/// Runs beside the node until Raft stops: learns the readiness floor, counts leader
/// changes, and keeps the term in the log lines current.
pub(crate) async fn watch(node: Arc<Node>) {
    tokio::spawn(learn_floor(node.clone()));
    let mut metrics = node.raft.metrics();
    // From no leader: the first leader this node learns of is a change too, whether it was
    // elected before or after this task first ran.
    let mut leader = None;
    loop {
        let (now, term) = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.current_term)
        };
        crate::logging::set_term(term);
        if now != leader {
            metrics::events().leader_changes.inc();
            leader = now;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Asks the leader, once, for the cluster's commit index (a read index, which is never
/// below what this node's own log held at start), retrying until one answers. What a node
/// may believe committed on its own after a restart is only what it applied before: too low.
async fn learn_floor(node: Arc<Node>) {
    loop {
        if node.health().is_err() {
            return;
        }
        match node.read_index().await {
            Ok(index) => {
                node.ready_floor.set(index);
                return;
            }
            Err(e) => tracing::debug!(cause = %e, "readiness: the commit index is not known yet"),
        }
        tokio::time::sleep(FLOOR_RETRY).await;
    }
}
