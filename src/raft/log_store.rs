//! openraft's log storage over the human-readable `log` file.
//!
//! The file is the log: one line per entry (see `log_format`), appended in index order. Memory
//! holds only each present entry's byte offset and term, so reads are `pread`s of the file and
//! memory does not grow with the size of the contents being replicated.
//!
//! Durability: `append` writes the lines and returns at once (they are readable), then hands
//! openraft's callback to a flusher thread. The flusher takes every callback queued while the
//! previous `fdatasync` ran and covers them all with one more: group commit. openraft is told an
//! entry is stored only after an fsync that followed its write. `truncate` and `purge` sync
//! inline before returning, so no later write can overtake them. The vote and the purge point
//! are small JSON files replaced atomically (`vote`, `purged`).
//!
//! Loading verifies every line's checksum and that indexes are contiguous. A damaged *last*
//! line is a write torn by a crash (it was never acknowledged): it is cut off with a warning.
//! Damage anywhere else is corruption: the node refuses to start and names the line.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::File;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, Vote};
use tracing::{debug, info};

use super::log_format::{self};
use super::{storage_io, Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::error::{IoContext, Result};
use crate::fsutil;

/// Largest batch of entry bytes one read returns to a replication stream. openraft gives every
/// AppendEntries `heartbeat_interval` (100 ms by default) to complete, and heartbeats ride on
/// the same stream: a batch that cannot be sent, parsed and fsynced in time times out and is
/// sent again, and a follower that hears nothing calls an election. 1 MiB (four default-size
/// chunks) leaves a wide margin on a loaded machine. A single larger entry is still returned.
pub(crate) const MAX_READ_BYTES: u64 = 1 << 20;

/// Name of the log file inside the data directory.
pub(crate) const LOG_FILE: &str = "log";

/// The log store handed to openraft; also the place the commit index is observed.
pub(crate) struct LogStore {
    shared: Arc<Shared>,
}

/// A cheap, cloneable reader used by openraft's replication tasks and by `GET /log`.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    /// Readers share it; append, truncate and purge take it exclusively. std lock: nothing
    /// awaits while holding it.
    log: Arc<RwLock<LogFile>>,
    /// Callbacks waiting for the next group fsync. Unbounded: at most one per append call,
    /// and openraft bounds in-flight appends.
    /// Each append's callback, with its number of entries (for the batch-size metric).
    flush_tx: mpsc::Sender<(LogFlushed<TypeConfig>, usize)>,
    /// Highest committed index + 1 (0 = nothing committed yet), for `/status`.
    committed: Arc<AtomicU64>,
}

/// The open log file and the position of every entry in it.
struct LogFile {
    path: PathBuf,
    file: Arc<File>,
    /// Index of the first entry present (= last purged + 1, or 0 for a fresh log).
    first_index: u64,
    /// (byte offset, term) of each present entry, from `first_index` on. Invariant: indexes
    /// are contiguous; offsets increase.
    entries: VecDeque<(u64, u64)>,
    /// Length of the file in bytes: where the next line goes.
    end: u64,
    last_purged: Option<LogId>,
}

impl LogFile {
    fn next_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64
    }

    fn last_log_id(&self) -> Option<LogId> {
        match self.entries.back() {
            Some(&(_, term)) => Some(log_id(term, self.next_index() - 1)),
            None => self.last_purged,
        }
    }

    fn offset_of(&self, index: u64) -> u64 {
        match self.entries.get((index - self.first_index) as usize) {
            Some(&(offset, _)) => offset,
            None => self.end,
        }
    }

    /// Reads the lines of entries in `[start, end)`, clamped to what is present.
    fn read_lines(&self, start: u64, end: u64, max_bytes: u64) -> std::io::Result<Vec<u8>> {
        let start = start.max(self.first_index);
        let end = end.min(self.next_index());
        if start >= end {
            return Ok(Vec::new());
        }
        let from = self.offset_of(start);
        let mut to = self.offset_of(end);
        if to - from > max_bytes {
            // Keep whole lines: stop at the last entry boundary inside the budget, but always
            // return at least one entry.
            to = self.offset_of(start + 1);
            for index in start + 1..end {
                let next = self.offset_of(index + 1);
                if next - from > max_bytes {
                    break;
                }
                to = next;
            }
        }
        let mut buf = vec![0; (to - from) as usize];
        self.file.read_exact_at(&mut buf, from)?;
        Ok(buf)
    }
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(openraft::CommittedLeaderId::new(term, 0), index)
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, verifying every line.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let last_purged: Option<LogId> = fsutil::read_json(&dir.join("purged"))
            .context(|| "read the purge point".into())?
            .flatten();
        let mut log = load(&dir.join(LOG_FILE), last_purged)?;
        if log
            .entries
            .front()
            .map(|&(offset, _)| offset > 0)
            .unwrap_or(log.end > 0 && log.entries.is_empty())
        {
            // Lines at or below the purge point survived a crash during purge: finish it.
            let first = log.first_index;
            rewrite_from(&mut log, first).context(|| "finish interrupted purge".into())?;
        }
        info!(path = %log.path.display(), first = log.first_index, next = log.next_index(), "log loaded");
        let log = Arc::new(RwLock::new(log));
        let (flush_tx, flush_rx) = mpsc::channel();
        let flusher_log = log.clone();
        std::thread::Builder::new()
            .name("raftd-log-flush".into())
            .spawn(move || run_flusher(flusher_log, flush_rx))
            .context(|| "spawn log flusher".into())?;
        let shared = Shared {
            dir: dir.to_path_buf(),
            log,
            flush_tx,
            committed: Arc::default(),
        };
        Ok(LogStore {
            shared: Arc::new(shared),
        })
    }

    /// A reader for `GET /log` and tests.
    pub(crate) fn reader(&self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }
}

impl LogReader {
    /// Bytes of the log lines of entries in `[start, end)` that are still in the log.
    pub fn bytes_between(&self, start: u64, end: u64) -> u64 {
        let log = self.shared.log.read().expect("log lock poisoned");
        let start = start.clamp(log.first_index, log.next_index());
        let end = end.clamp(start, log.next_index());
        log.offset_of(end) - log.offset_of(start)
    }

    /// The index of the last entry in the log (purged ones count), if any.
    pub fn last_index(&self) -> Option<u64> {
        let log = self.shared.log.read().expect("log lock poisoned");
        log.last_log_id().map(|id| id.index)
    }

    /// The index of the first entry still in the log (entries before it are compacted into
    /// the snapshot).
    pub fn first_index(&self) -> u64 {
        self.shared.log.read().expect("log lock poisoned").first_index
    }

    /// The entries in `[start, end)` that are present, decoded, at most about `max_bytes` of
    /// them (always at least one): for readers of the log beside openraft (the watch feed).
    pub fn entries(&self, start: u64, end: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.read(start, end, max_bytes)
    }

    /// The highest index known committed (as openraft last saved it), if any.
    pub fn committed(&self) -> Option<u64> {
        self.shared.committed.load(Ordering::Relaxed).checked_sub(1)
    }

    /// The raw text of the present log, exactly as in the file. The lock is held only to
    /// find the byte range: the read itself (the log may be large) never blocks appends. A
    /// purge meanwhile swaps in a new file, which leaves this handle on the old one.
    pub fn text(&self) -> std::io::Result<Vec<u8>> {
        let (file, from, to) = {
            let log = self.shared.log.read().expect("log lock poisoned");
            (log.file.clone(), log.offset_of(log.first_index), log.end)
        };
        let mut buf = vec![0; to.saturating_sub(from) as usize];
        file.read_exact_at(&mut buf, from)?;
        Ok(buf)
    }

    fn read(&self, start: u64, end: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let bytes = {
            let log = self.shared.log.read().expect("log lock poisoned");
            log.read_lines(start, end, max_bytes)
        }
        .map_err(|e| storage_io(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        bytes
            .split_inclusive(|&b| b == b'\n')
            .map(|line| {
                log_format::decode(line)
                    .map_err(|e| storage_io(ErrorSubject::Logs, ErrorVerb::Read, std::io::Error::other(e)))
            })
            .collect()
    }
}

fn range_to_bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e + 1,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = range_to_bounds(&range);
        self.read(start, end, u64::MAX)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        self.read(start, end, MAX_READ_BYTES)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.reader().try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let log = self.shared.log.read().expect("log lock poisoned");
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: log.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        debug!(%vote, "save vote");
        let bytes = serde_json::to_vec(vote)
            .map_err(|e| storage_io(ErrorSubject::Vote, ErrorVerb::Write, e.into()))?;
        fsutil::write_atomic(&self.shared.dir.join("vote"), &bytes)
            .map_err(|e| storage_io(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        fsutil::read_json(&self.shared.dir.join("vote"))
            .map_err(|e| storage_io(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Kept in memory for /status only: the state machine's own applied marker is durable,
        // and openraft re-learns the commit index from the leader after a restart.
        let value = committed.map(|c| c.index + 1).unwrap_or(0);
        self.shared.committed.store(value, Ordering::Relaxed);
        Ok(())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let write_err = |e| storage_io(ErrorSubject::Logs, ErrorVerb::Write, e);
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        let mut count = 0;
        for entry in entries {
            count += 1;
            let start = buf.len() as u64;
            log_format::encode(&entry, &mut buf).map_err(|e| write_err(e.into()))?;
            lines.push((start, entry.log_id));
        }
        {
            let mut log = self.shared.log.write().expect("log lock poisoned");
            if log.entries.is_empty() {
                // An empty log may start anywhere (openraft decides, e.g. after a snapshot).
                if let Some((_, first)) = lines.first() {
                    log.first_index = first.index;
                }
            }
            let next = log.next_index();
            for (i, (_, id)) in lines.iter().enumerate() {
                let expected = next + i as u64;
                if id.index != expected {
                    let msg = format!("append of index {} but next index is {expected}", id.index);
                    return Err(write_err(std::io::Error::other(msg)));
                }
            }
            let base = log.end;
            log.file.write_all_at(&buf, base).map_err(write_err)?;
            for (start, id) in lines {
                log.entries.push_back((base + start, id.leader_id.term));
            }
            log.end = base + buf.len() as u64;
        }
        if let Err(mpsc::SendError((callback, _))) = self.shared.flush_tx.send((callback, count)) {
            callback.log_io_completed(Err(std::io::Error::other("log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        debug!(%log_id, "truncate log");
        let mut log = self.shared.log.write().expect("log lock poisoned");
        if log_id.index >= log.next_index() {
            return Ok(());
        }
        let keep = log_id.index.saturating_sub(log.first_index) as usize;
        let offset = log.offset_of(log_id.index.max(log.first_index));
        let err = |e| storage_io(ErrorSubject::Logs, ErrorVerb::Delete, e);
        log.file.set_len(offset).map_err(err)?;
        log.file.sync_data().map_err(err)?;
        log.entries.truncate(keep);
        log.end = offset;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        debug!(%log_id, "purge log");
        let err = |e: std::io::Error| storage_io(ErrorSubject::Logs, ErrorVerb::Delete, e);
        // Record the purge point first: a crash after this leaves stale lines that `open`
        // drops, never a log whose first entry has an unknown predecessor.
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(|e| err(e.into()))?;
        fsutil::write_atomic(&self.shared.dir.join("purged"), &bytes).map_err(err)?;
        let mut log = self.shared.log.write().expect("log lock poisoned");
        log.last_purged = Some(log_id);
        if log_id.index < log.first_index {
            return Ok(());
        }
        rewrite_from(&mut log, log_id.index + 1).map_err(err)
    }
}

/// Group commit: one fdatasync covers every append queued while the previous one ran.
fn run_flusher(log: Arc<RwLock<LogFile>>, rx: mpsc::Receiver<(LogFlushed<TypeConfig>, usize)>) {
    let events = crate::metrics::events();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let file = log.read().expect("log lock poisoned").file.clone();
        let started = std::time::Instant::now();
        let result = file.sync_data();
        events.fsync_seconds.observe(crate::metrics::since(started));
        events
            .fsync_entries
            .observe(batch.iter().map(|(_, n)| *n).sum::<usize>() as f64);
        for (callback, _) in batch {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            callback.log_io_completed(r);
        }
    }
}

pub mod check;
mod load;
use load::{load, rewrite_from};
#[cfg(test)]
mod tests;
