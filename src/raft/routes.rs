//! The routes nodes call on each other, named once: the router mounts them and every caller
//! (openraft's network, forwarding, joining) builds its request path from the same value.

/// Prefix of the peer RPC routes; clients never need them.
pub const PEER_PREFIX: &str = "/raft";

/// A route that one node calls on another (or an operator calls on a member).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRoute {
    /// openraft AppendEntries.
    Append,
    /// openraft RequestVote.
    Vote,
    /// openraft InstallSnapshot (one piece).
    Snapshot,
    /// A command forwarded to the leader.
    Propose,
    /// A read-index request forwarded to the leader.
    ReadIndex,
    /// A join forwarded to the leader.
    Join,
    /// A removal forwarded to the leader.
    Remove,
    /// The leader telling a node it was removed.
    Removed,
    /// `POST /cluster/join`: what `--join` sends to a member.
    ClusterJoin,
    /// `POST /cluster/remove`: an operator removing a member.
    ClusterRemove,
    /// `POST /cluster/snapshot`: an operator asking this node to snapshot now.
    ClusterSnapshot,
    /// A leadership transfer forwarded to the leader.
    Transfer,
    /// The leader's instructions to a voter during a transfer.
    TransferStep,
    /// `POST /cluster/transfer-leader`: an operator moving leadership.
    ClusterTransfer,
}

impl PeerRoute {
    /// Every route, for the router.
    pub const ALL: [PeerRoute; 14] = [
        PeerRoute::Append,
        PeerRoute::Vote,
        PeerRoute::Snapshot,
        PeerRoute::Propose,
        PeerRoute::ReadIndex,
        PeerRoute::Join,
        PeerRoute::Remove,
        PeerRoute::Removed,
        PeerRoute::ClusterJoin,
        PeerRoute::ClusterRemove,
        PeerRoute::ClusterSnapshot,
        PeerRoute::Transfer,
        PeerRoute::TransferStep,
        PeerRoute::ClusterTransfer,
    ];

    /// The full request path, e.g. `/raft/append`.
    pub const fn path(self) -> &'static str {
        match self {
            PeerRoute::Append => "/raft/append",
            PeerRoute::Vote => "/raft/vote",
            PeerRoute::Snapshot => "/raft/snapshot",
            PeerRoute::Propose => "/raft/propose",
            PeerRoute::ReadIndex => "/raft/read-index",
            PeerRoute::Join => "/raft/join",
            PeerRoute::Remove => "/raft/remove",
            PeerRoute::Removed => "/raft/removed",
            PeerRoute::ClusterJoin => "/cluster/join",
            PeerRoute::ClusterRemove => "/cluster/remove",
            PeerRoute::ClusterSnapshot => "/cluster/snapshot",
            PeerRoute::Transfer => "/raft/transfer",
            PeerRoute::TransferStep => "/raft/transfer-step",
            PeerRoute::ClusterTransfer => "/cluster/transfer-leader",
        }
    }

    /// The path addressed to one node (`?target=<id>`): openraft's RPCs and the removal
    /// notice name their recipient, so a node reached at a reused address can refuse them.
    pub fn to(self, target: u64) -> String {
        format!("{}?target={target}", self.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_rpc_lives_under_the_prefix() {
        for route in PeerRoute::ALL {
            let p = route.path();
            assert!(p.starts_with(PEER_PREFIX) || p.starts_with("/cluster/"), "{p}");
        }
        assert_eq!(PeerRoute::Append.to(7), "/raft/append?target=7");
    }
}
