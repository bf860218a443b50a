//! The watch feed: committed changes under a prefix, in log order, read from the log itself.
//!
//! A watcher is a task that follows this node's applied index and reads the entries up to
//! it from the local log, so it needs no buffer in the apply path and can never slow the
//! cluster: a slow watcher only falls behind in the log. It resumes from any index still in
//! the log (`?from=`, `Last-Event-ID`); an index already compacted into a snapshot is gone,
//! and the watcher says so. Its queue to the client is bounded: a client that stops reading
//! is cut off with a final event rather than buffered without limit.

use std::sync::Arc;

use openraft::EntryPayload;
use serde::Serialize;
use tokio::sync::mpsc;

use super::Node;
use crate::error::{Error, Result};

/// Events a watcher may have queued for its client before it is cut off.
pub const WATCH_QUEUE: usize = 1024;
/// Bytes of log read per step.
const READ_BYTES: u64 = 1 << 20;

/// One committed change.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Change {
    /// Its log index (the SSE event id).
    pub index: u64,
    /// The term of the leader that appended it.
    pub term: u64,
    /// The command (`file:write`, `file:delete`, `file:rename`, `dir:mkdir`, …).
    pub op: &'static str,
    /// The names it touches (not the content).
    pub paths: Vec<String>,
}

/// What a watcher sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A committed change under the prefix.
    Change(Change),
    /// The watcher cannot go on: its next index was compacted away, or it fell too far
    /// behind; the text says which. Always the last event.
    End {
        /// `gone` (410: compacted) or `cutoff` (the client did not keep up).
        kind: &'static str,
        /// What happened, for people.
        message: String,
    },
}

/// Sends the final event (there is always room for it).
async fn finish(tx: &mpsc::Sender<WatchEvent>, kind: &'static str, message: String) {
    let _ = tx.send(WatchEvent::End { kind, message }).await;
}

/// Whether `path` is under `prefix` (the empty prefix holds everything).
fn under(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl Node {
    /// Starts a watcher of changes under `prefix` from log index `from` (default: the next
    /// entry this node applies). Fails with [`Error::Gone`] if `from` is already compacted.
    pub fn watch(self: &Arc<Self>, prefix: &str, from: Option<u64>) -> Result<mpsc::Receiver<WatchEvent>> {
        let applied = self.raft.metrics().borrow().last_applied.map(|l| l.index);
        let start = from.unwrap_or_else(|| applied.map_or(0, |a| a + 1));
        let first = self.log.first_index();
        if start < first && applied.is_some_and(|a| start <= a) {
            return Err(Error::Gone(format!(
                "entries before index {first} were compacted into a snapshot; watch from {first} or later"
            )));
        }
        let (tx, rx) = mpsc::channel(WATCH_QUEUE + 1);
        let node = self.clone();
        let prefix = prefix.trim_matches('/').to_string();
        tokio::spawn(async move { node.run_watch(prefix, start, tx).await });
        Ok(rx)
    }

    async fn run_watch(&self, prefix: String, mut next: u64, tx: mpsc::Sender<WatchEvent>) {
        let mut metrics = self.raft.metrics();
        loop {
            let applied = metrics.borrow().last_applied.map(|l| l.index);
            while applied.is_some_and(|a| next <= a) {
                let end = applied.map_or(0, |a| a + 1);
                let entries = match self.log.entries(next, end, READ_BYTES) {
                    Ok(entries) if entries.first().is_some_and(|e| e.log_id.index == next) => entries,
                    Ok(_) => {
                        let first = self.log.first_index();
                        let message = format!(
                            "410 Gone: index {next} was compacted into a snapshot; the log now starts at {first}"
                        );
                        return finish(&tx, "gone", message).await;
                    }
                    Err(e) => {
                        return finish(&tx, "error", format!("500: reading the log: {e}")).await;
                    }
                };
                for entry in entries {
                    next = entry.log_id.index + 1;
                    let EntryPayload::Normal(cmd) = &entry.payload else {
                        continue;
                    };
                    // A batch is one event per command, all with the entry's index.
                    let changes: Vec<Change> = cmd
                        .commands()
                        .into_iter()
                        .map(|cmd| Change {
                            index: entry.log_id.index,
                            term: entry.log_id.leader_id.term,
                            op: cmd.name(),
                            paths: cmd.names().into_iter().map(str::to_string).collect(),
                        })
                        .filter(|c| c.paths.iter().any(|p| under(&prefix, p)))
                        .collect();
                    if changes.is_empty() {
                        continue;
                    }
                    // Room for the whole entry (resuming starts after an index) and one slot
                    // for the final event.
                    if tx.capacity() <= changes.len() {
                        let message = format!(
                            "cut off: {WATCH_QUEUE} events were waiting for this client; reconnect with Last-Event-ID to resume"
                        );
                        return finish(&tx, "cutoff", message).await;
                    }
                    for change in changes {
                        if tx.send(WatchEvent::Change(change)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
                () = self.stopping() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::under;

    #[test]
    fn a_prefix_holds_its_own_subtree_only() {
        assert!(under("", "a/b"));
        assert!(under("a", "a"));
        assert!(under("a", "a/b/c"));
        assert!(!under("a", "ab"));
        assert!(!under("a/b", "a"));
    }
}
