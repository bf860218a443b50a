//! Consensus: openraft's type configuration plus raftd's log store and peer network.
//!
//! openraft owns the protocol (elections, replication, commitment). This module gives it the
//! pieces it asks an application for: the log storage (`log_store`, over the text log file
//! whose line codec is `log_format`), and outbound peer RPC (`network`). The state machine
//! lives in `crate::store`, because it is the replicated file tree, not Raft machinery.

pub mod command;
pub(crate) mod compaction;
pub(crate) mod elections;
pub(crate) mod inbound;
pub mod log_format;
pub mod log_store;
pub(crate) mod network;
pub mod routes;

use serde::{Deserialize, Serialize};

pub use command::Command;

use crate::error::CommandResult;

/// A node's Raft identity: random at creation, kept in the data directory's `info` file.
/// Names (`host:port`) are for people and routing; ids never change, so a wiped node that
/// rejoins under the same name is a new member, as Raft requires.
pub type NodeId = u64;

/// What the cluster records about each member: the advertised `host:port` on which it serves
/// both the client API and peer RPC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// Advertised `host:port`.
    pub name: String,
}

openraft::declare_raft_types!(
    /// raftd's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = Vec<CommandResult>,
        NodeId = NodeId,
        Node = PeerNode,
        SnapshotData = tokio::fs::File,
);

/// The Raft handle every front end shares.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id: (term, index).
pub type LogId = openraft::LogId<NodeId>;
/// Membership as stored with the log id that introduced it.
pub type StoredMembership = openraft::StoredMembership<NodeId, PeerNode>;
/// Storage errors reported to openraft (all fatal to the Raft core).
pub type StorageError = openraft::StorageError<NodeId>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, PeerNode>;

pub use routes::{PeerRoute, PEER_PREFIX};

/// Builds a storage error from an io error, naming what was being done.
pub(crate) fn storage_io(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    err: std::io::Error,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&err)).into()
}
