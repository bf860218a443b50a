//! Outbound peer RPC: openraft's network factory over HTTP.
//!
//! Every call is a JSON POST to `/raft/<rpc>?target=<id>` on the peer's advertised address; the
//! peer answers 200 with openraft's own `Result` as JSON. The target id lets a node refuse an
//! RPC meant for someone else (an address reused by another node), which openraft's docs warn
//! would otherwise make a leader replicate to the wrong member.
//! Failures are classified for openraft: nothing sent (connect failed) is `Unreachable`, so it
//! backs off; anything else is `Network`.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{de::DeserializeOwned, Serialize};
use tracing::debug;

use super::{NodeId, PeerNode, PeerRoute, TypeConfig};
use crate::client::{HttpClient, SendError};
use crate::raft::log_store::Durable;

/// Hands out per-peer connections that share one pool.
pub(crate) struct Network {
    client: HttpClient,
    durable: Durable,
}

impl Network {
    /// A factory over the node's shared client and this node's log's progress to disk.
    pub(crate) fn new(client: HttpClient, durable: Durable) -> Self {
        Network { client, durable }
    }
}

/// openraft's handle to one peer; creating it does no I/O.
pub(crate) struct PeerConn {
    client: HttpClient,
    target: NodeId,
    addr: String,
    durable: Durable,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerConn {
        PeerConn {
            client: self.client.clone(),
            target,
            addr: node.name.clone(),
            durable: self.durable.clone(),
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>>;

impl PeerConn {
    async fn call<Req, Resp, E>(&self, rpc: PeerRoute, req: &Req, ttl: Duration) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let path = rpc.to(self.target);
        let response = self
            .client
            .post_json(&self.addr, &path, req, ttl)
            .await
            .map_err(|e| match e {
                SendError::Connect(..) => RPCError::Unreachable(Unreachable::new(&e)),
                other => RPCError::Network(NetworkError::new(&other)),
            })?;
        if !response.status.is_success() {
            let msg = format!("{} answered {}: {}", self.addr, response.status, response.text());
            return Err(RPCError::Network(NetworkError::new(&std::io::Error::other(msg))));
        }
        let answer: Result<Resp, RaftError<NodeId, E>> = response
            .json()
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        debug!(to = %self.addr, term = rpc.vote.leader_id().term, entries = rpc.entries.len(), commit = ?rpc.leader_commit.map(|c| c.index), "send append");
        // This node's own appends do not wait for its disk (see `log_store::durable`): no
        // commit index beyond its disk goes out (it is held back, not waited for: a read's
        // round of heartbeats must not wait for an fsync), and a follower's acknowledgment
        // of entries counts only once they are durable here too.
        let ttl = option.hard_ttl();
        let not_durable = |e| RPCError::Network(NetworkError::new(&e));
        let below = self.durable.below();
        if rpc.leader_commit.is_some_and(|c| c.index >= below) {
            rpc.leader_commit = rpc.prev_log_id.filter(|p| p.index < below);
        }
        let last = rpc.entries.last().map(|e| e.log_id.index);
        let answer: AppendEntriesResponse<NodeId> = self.call(PeerRoute::Append, &rpc, ttl).await?;
        let accepted = matches!(
            answer,
            AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_)
        );
        if let (Some(last), true) = (last, accepted) {
            self.durable.wait(last, ttl).await.map_err(not_durable)?;
        }
        Ok(answer)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        debug!(to = %self.addr, offset = rpc.offset, len = rpc.data.len(), done = rpc.done, "send snapshot chunk");
        self.call(PeerRoute::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        debug!(to = %self.addr, vote = %rpc.vote, "send vote request");
        self.call(PeerRoute::Vote, &rpc, option.hard_ttl()).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, Vote};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    use super::*;
    use crate::raft::{Entry, LogId};

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(2, 1), index)
    }

    /// A follower that accepts every AppendEntries at once and hands each request it got to
    /// the test.
    async fn follower() -> (String, mpsc::UnboundedReceiver<AppendEntriesRequest<TypeConfig>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let body = loop {
                    let n = conn.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the request ended early");
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    let Some(head) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    if request.len() >= head + 4 + len {
                        break request[head + 4..head + 4 + len].to_vec();
                    }
                };
                tx.send(serde_json::from_slice(&body).unwrap()).unwrap();
                let answer = br#"{"Ok":"Success"}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    answer.len()
                );
                conn.write_all(head.as_bytes()).await.unwrap();
                conn.write_all(answer).await.unwrap();
            }
        });
        (addr, rx)
    }

    fn append(prev: u64, entries: std::ops::Range<u64>, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(prev)),
            entries: entries
                .map(|i| Entry {
                    log_id: log_id(i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: Some(log_id(commit)),
        }
    }

    /// A leader's own appends are answered before their fsync, so what it sends must make up
    /// for it: no commit index beyond its disk leaves it, and a follower's acknowledgment of
    /// entries counts only once the leader holds them on disk too (else a majority of two,
    /// the leader's page cache and one follower's disk, would commit what a power cut loses).
    #[tokio::test]
    async fn a_follower_hears_of_and_acknowledges_only_what_the_leaders_disk_holds() {
        let (addr, mut got) = follower().await;
        let durable = Durable::new(3);
        let generation = durable.generation();
        let mut conn = Network::new(HttpClient::plain(), durable.clone())
            .new_client(2, &PeerNode { name: addr })
            .await;
        let option = || RPCOption::new(Duration::from_secs(30));

        // Entries 3..6 are written but not yet on disk here; commit says 5.
        let mut send = tokio::spawn(async move {
            let answer = conn.append_entries(append(2, 3..6, 5), option()).await;
            (conn, answer)
        });
        let sent = got.recv().await.unwrap();
        assert_eq!(
            sent.leader_commit,
            Some(log_id(2)),
            "the commit index is held back to what the disk holds"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut send)
                .await
                .is_err(),
            "the follower's acknowledgment is held until the leader's disk holds the entries"
        );
        durable.synced(generation, 6);
        let (mut conn, answer) = send.await.unwrap();
        assert!(matches!(answer, Ok(AppendEntriesResponse::Success)), "{answer:?}");

        // A heartbeat whose commit index the disk does not hold yet carries none at all
        // (its previous entry is beyond the disk too), and does not wait.
        let answer = conn.append_entries(append(7, 8..8, 7), option()).await;
        assert!(matches!(answer, Ok(AppendEntriesResponse::Success)), "{answer:?}");
        assert_eq!(got.recv().await.unwrap().leader_commit, None);
        // Once on disk, the commit index goes out as it is.
        durable.synced(generation, 8);
        conn.append_entries(append(7, 8..8, 7), option()).await.unwrap();
        assert_eq!(got.recv().await.unwrap().leader_commit, Some(log_id(7)));
    }
}
