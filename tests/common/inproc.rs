//! An in-process cluster: N nodes in this test's tokio runtime, each on a listener bound to
//! `127.0.0.1:0` before it starts (no port race), each with a [`Links`] set through which the
//! test cuts and heals network links between nodes. Waits are on Raft metrics, with deadlines.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use raftd::client::Links;
use raftd::config::Config;
use raftd::identity::{Identity, Start};
use raftd::node::Node;
use raftd::server::{launch, RunningNode};
use tokio::net::TcpListener;

/// How long any wait on the cluster may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Nodes running in this process.
pub struct InProc {
    pub tmp: tempfile::TempDir,
    pub nodes: Vec<RunningNode>,
    pub links: Vec<Links>,
    pub names: Vec<String>,
}

impl InProc {
    /// Starts `n` nodes (the first initializes, the others join it), each config adjusted by
    /// `tweak`, and waits until all are voters.
    pub async fn start(n: usize, tweak: impl Fn(&mut Config)) -> InProc {
        let tmp = tempfile::tempdir().unwrap();
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let names: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        let mut cluster = InProc {
            tmp,
            nodes: Vec::new(),
            links: Vec::new(),
            names,
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            let dir = cluster.tmp.path().join(format!("node.{}", i + 1));
            std::fs::create_dir_all(&dir).unwrap();
            let port = listener.local_addr().unwrap().port();
            let mut config = Config::new(dir, "127.0.0.1".into(), port);
            tweak(&mut config);
            let identity = Identity {
                id: i as u64 + 1,
                name: cluster.names[i].clone(),
                host: "127.0.0.1".into(),
                port,
            };
            let start = if i == 0 {
                Start::Initialize
            } else {
                Start::Join(cluster.names[0].clone())
            };
            let links = Links::default();
            let node = launch(
                listener,
                config,
                identity,
                start,
                links.clone(),
                std::future::pending(),
            )
            .await
            .unwrap();
            cluster.nodes.push(node);
            cluster.links.push(links);
        }
        let leader = cluster.leader().await;
        cluster
            .node(leader)
            .raft()
            .wait(Some(WAIT))
            .metrics(
                |m| m.membership_config.membership().voter_ids().count() == n,
                "all nodes are voters",
            )
            .await
            .unwrap();
        cluster
    }

    /// Node `i`'s handle.
    pub fn node(&self, i: usize) -> &Arc<Node> {
        self.nodes[i].node()
    }

    /// Waits until node `i` names a leader that leads, and returns its position.
    pub async fn leader_seen_by(&self, i: usize) -> usize {
        let m = self
            .node(i)
            .raft()
            .wait(Some(WAIT))
            .metrics(|m| m.current_leader.is_some(), "a known leader")
            .await
            .unwrap();
        let leader = (m.current_leader.unwrap() - 1) as usize;
        self.node(leader)
            .raft()
            .wait(Some(WAIT))
            .state(ServerState::Leader, "the leader leads")
            .await
            .unwrap();
        leader
    }

    /// Waits for a leader (as node 0, or any node that knows one, sees it).
    pub async fn leader(&self) -> usize {
        self.leader_seen_by(0).await
    }

    /// Cuts the link between `a` and `b` both ways.
    pub fn cut(&self, a: usize, b: usize) {
        self.links[a].cut(&self.names[b]);
        self.links[b].cut(&self.names[a]);
    }

    /// Restores the link between `a` and `b`.
    pub fn heal(&self, a: usize, b: usize) {
        self.links[a].heal(&self.names[b]);
        self.links[b].heal(&self.names[a]);
    }

    /// Positions other than `i`.
    pub fn others(&self, i: usize) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&j| j != i).collect()
    }

    /// Stops every node.
    pub async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
    }
}
