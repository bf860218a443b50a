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
