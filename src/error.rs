//! The crate's one error type.
//!
//! Errors are grouped by what the caller can do about them, because the front ends map them to
//! HTTP statuses (`http/error.rs`) and errnos (`fuse/errno.rs`) in exactly one place each:
//! a client mistake (bad path, too large), a replicated outcome (not found, not empty), a cluster
//! condition (no leader, no quorum: retry later) or a local fault (disk, corrupt log).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::names::NameError;

/// Result alias used throughout raftd.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in raftd, by kind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client-supplied file name that is not a clean relative path.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The name as given.
        path: String,
        /// Which rule it broke.
        reason: NameError,
    },

    /// A deterministic outcome of applying a command (or of a local lookup).
    #[error(transparent)]
    File(#[from] FileError),

    /// A request body larger than the configured limit.
    #[error("body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit in bytes.
        limit: u64,
    },

    /// Malformed request (bad JSON, bad parameter).
    #[error("bad request: {0}")]
    BadRequest(String),

    /// What was asked for is no longer kept (a log index compacted into a snapshot).
    #[error("gone: {0}")]
    Gone(String),

    /// The cluster cannot serve the request now (no leader, no quorum, timeout); retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),

    /// Free space on a node's data directory is under `--min-free`: new data is refused
    /// (deletes still work) until space is freed.
    #[error("no space: {0}")]
    NoSpace(String),

    /// A filesystem operation on this node failed.
    #[error("{context}: {source}")]
    Io {
        /// What raftd was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The Raft log file failed verification on load.
    #[error("corrupt log {path}:{line}: {reason}")]
    CorruptLog {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong, including the entry index where known.
        reason: String,
    },

    /// Invalid configuration or command line.
    #[error("config: {0}")]
    Config(String),

    /// A peer answered with an error or garbage.
    #[error("peer {peer}: {message}")]
    Peer {
        /// The peer's advertised name.
        peer: String,
        /// What went wrong.
        message: String,
    },

    /// The Raft core stopped or reported an internal error.
    #[error("raft: {0}")]
    Raft(String),
}

impl Error {
    /// Wraps an io::Error with what raftd was doing at the time.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// A deterministic failure of a file operation: every replica reaches the same one, so it is
/// an answer to the client, never a storage fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum FileError {
    /// The path (or a parent) does not exist.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// The target already exists.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// A file was found where a directory was needed.
    #[error("{0}: not a directory")]
    NotADirectory(String),
    /// A directory was found where a file was needed.
    #[error("{0}: is a directory")]
    IsADirectory(String),
    /// The directory still has entries.
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    /// The operation makes no sense for these paths (e.g. moving a directory into itself).
    #[error("{0}: invalid argument")]
    Invalid(String),
    /// A name in the command breaks the naming rules; the message says which rule.
    #[error("{0}")]
    InvalidPath(String),
}

/// What applying one entry produced; `Ok` for raft-internal entries.
pub type CommandResult = std::result::Result<(), FileError>;

/// Adds context to io results, in the style of `anyhow::Context`, without anyhow.
pub trait IoContext<T> {
    /// Turns an io error into [`Error::Io`] with the given context.
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::BadRequest(format!("invalid JSON: {e}"))
    }
}
