//! raftd: a Raft-replicated filesystem.
//!
//! Each node keeps a data directory with its identity (`info`), its Raft log (`log`, one
//! checksummed text line per entry), its vote, snapshots, and the replicated files
//! (`files/`). openraft runs consensus; raftd supplies the pieces around it. Dependencies
//! point down this list:
//!
//! - front ends: `http` (client API `/files`, `/status`, `/log`; membership `/cluster/*`;
//!   peer RPC `/raft/*`; all on one port, plain or TLS) and `fuse` (the tree as a mount);
//! - [`node`]: the one door for front ends: writes go to the leader (forwarded from any
//!   node), reads are linearizable through a read-index barrier, or stale from local files;
//! - [`raft`]: openraft's types, the log store over the text log, peer RPC, route names;
//! - [`store`]: the state machine, which applies committed commands to `files/`, and the
//!   read side the front ends use;
//! - at the bottom: [`error`], [`names`] (the naming rules), [`config`], [`client`] (the
//!   pooled peer client).
//!
//! [`server`] wires them together and runs the lifecycle; [`identity`] and [`cli`] settle
//! who a node is from its data directory, flags and first-run prompts; [`metrics`] and
//! [`logging`] say what it does. [`tools`] are the operator's commands (`raftd ctl`,
//! `backup`, `restore`, `log verify`), clients of the HTTP API or readers of a stopped
//! node's files.
//!
//! A write is acknowledged only after its entry is fsynced on a majority and applied on the
//! node that answers; see `docs/architecture.md` for the write and read paths.

#![warn(missing_docs, unreachable_pub)]
// openraft's StorageError is large and is what its storage traits return; boxing it at our
// call sites would only add allocations on the apply path.
#![allow(clippy::result_large_err)]

pub mod cli;
pub mod client;
pub mod config;
pub mod error;
mod fsutil;
mod fuse;
mod http;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod node;
pub mod raft;
pub mod server;
pub mod store;
mod tls;
pub mod tools;

pub use error::{Error, Result};
