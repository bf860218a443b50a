//! raftd: a Raft-replicated filesystem.
//!
//! Each node keeps a data directory with its identity (`info`), its Raft log (`log`, one
//! checksummed text line per entry), its vote, snapshots, and the replicated files
//! (`files/`). openraft runs consensus; raftd supplies the pieces around it:
//!
//! - [`raft`]: the log store over the text log, and peer RPC over HTTP;
//! - [`store`]: the state machine, which applies committed commands to `files/`;
//! - [`node`]: the one door for front ends: writes go to the leader (forwarded from any node),
//!   reads are linearizable through a read-index barrier, or stale from local files;
//! - [`http`]: the client API (`/files/...`, `/status`, `/log`), membership admin and peer
//!   routes on one port;
//! - [`server`]: wiring and lifecycle; [`identity`] and [`cli`]: first-run prompts and flags.
//!
//! A write is acknowledged only after its entry is fsynced on a majority and applied on the
//! leader; see `docs/architecture.md` for the write and read paths.

// openraft's StorageError is large and is what its storage traits return; boxing it at our
// call sites would only add allocations on the apply path.
#![allow(clippy::result_large_err)]

pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod fsutil;
pub mod fuse;
pub mod http;
pub mod identity;
pub mod names;
pub mod node;
pub mod raft;
pub mod server;
pub mod store;
pub mod tls;

pub use error::{Error, Result};
