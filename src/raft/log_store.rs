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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Appends waiting for the next group fsync: each one's callback (none for a leader's
    /// own appends, see [`durable`]), with its number of entries (for the batch-size
    /// metric). Unbounded: at most one per append call, and openraft bounds in-flight appends.
    flush_tx: mpsc::Sender<(Option<LogFlushed<TypeConfig>>, usize)>,
    /// How far the log is on disk.
    durable: Durable,
    /// This node's id, once the node has said it (tools that open a log never do).
    me: std::sync::OnceLock<NodeId>,
    /// Whether the saved vote is this node's own, committed: it leads, and every entry
    /// appended is its own (another leader's entries come only after its vote is saved).
    leading: AtomicBool,
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
    /// The last `recent.len()` entries, decoded: a leader reads each new entry back once to
    /// apply it and once per follower to replicate it, and decoding its JSON line each time
    /// was a tenth of a busy leader's CPU. Bounded by [`RECENT_ENTRIES`] and [`RECENT_BYTES`]
    /// (of log lines); a lagging follower's older entries come from the file.
    recent: VecDeque<Entry>,
}

/// Most entries kept decoded in memory.
const RECENT_ENTRIES: usize = 1024;
/// Most bytes of log lines whose entries are kept decoded in memory.
const RECENT_BYTES: u64 = 8 << 20;

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

    /// The range of entries to read for `[start, end)`, clamped to what is present, and cut
    /// at the last whole line within `max_bytes` (but at least one entry).
    fn fitting(&self, start: u64, end: u64, max_bytes: u64) -> std::ops::Range<u64> {
        let start = start.max(self.first_index);
        let mut end = end.min(self.next_index());
        if start < end && self.offset_of(end) - self.offset_of(start) > max_bytes {
            let from = self.offset_of(start);
            let mut fits = start + 1;
            while fits < end && self.offset_of(fits + 1) - from <= max_bytes {
                fits += 1;
            }
            end = fits;
        }
        start..end.max(start)
    }

    /// The entries in `[start, end)` (see [`fitting`](Self::fitting)), from memory when they
    /// are recent, else decoded from the file.
    fn read(&self, start: u64, end: u64, max_bytes: u64) -> std::io::Result<Vec<Entry>> {
        let range = self.fitting(start, end, max_bytes);
        let first_recent = self.next_index() - self.recent.len() as u64;
        if range.start >= first_recent {
            let at = |index: u64| (index - first_recent) as usize;
            return Ok(self
                .recent
                .range(at(range.start)..at(range.end))
                .cloned()
                .collect());
        }
        let from = self.offset_of(range.start);
        let mut buf = vec![0; (self.offset_of(range.end) - from) as usize];
        self.file.read_exact_at(&mut buf, from)?;
        buf.split_inclusive(|&b| b == b'\n')
            .map(|line| log_format::decode(line).map_err(std::io::Error::other))
            .collect()
    }

    /// Drops decoded entries beyond the bounds, or no longer in the log.
    fn trim_recent(&mut self) {
        while self.recent.len() > self.entries.len()
            || self.recent.len() > RECENT_ENTRIES
            || self.end - self.offset_of(self.next_index() - self.recent.len() as u64) > RECENT_BYTES
        {
            self.recent.pop_front();
        }
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
        // What a previous run wrote may not have reached the disk yet (a leader does not wait
        // for its own appends): from here on it counts as durable.
        log.file.sync_data().context(|| "sync the log".into())?;
        let durable = Durable::new(log.next_index());
        let log = Arc::new(RwLock::new(log));
        let (flush_tx, flush_rx) = mpsc::channel();
        let flusher = Flusher {
            log: log.clone(),
            durable: durable.clone(),
        };
        std::thread::Builder::new()
            .name("raftd-log-flush".into())
            .spawn(move || flusher.run(flush_rx))
            .context(|| "spawn log flusher".into())?;
        let shared = Shared {
            dir: dir.to_path_buf(),
            log,
            flush_tx,
            durable,
            me: Default::default(),
            leading: Default::default(),
            committed: Arc::default(),
        };
        Ok(LogStore {
            shared: Arc::new(shared),
        })
    }

    /// Tells the store whose node it is: from then on a leader's own appends do not wait
    /// for the disk (see [`durable`]).
    pub(crate) fn set_node_id(&self, id: NodeId) -> Result<()> {
        let vote: Option<Vote<NodeId>> =
            fsutil::read_json(&self.shared.dir.join("vote")).context(|| "read the vote".into())?;
        let _ = self.shared.me.set(id);
        self.shared.note_vote(vote.as_ref());
        Ok(())
    }

    /// A reader for `GET /log` and tests.
    pub(crate) fn reader(&self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }
}

impl Shared {
    fn note_vote(&self, vote: Option<&Vote<NodeId>>) {
        let mine = vote.is_some_and(|v| v.committed && v.leader_id.voted_for() == self.me.get().copied());
        self.leading.store(mine, Ordering::SeqCst);
    }
}

impl LogReader {
    /// How far the log is on disk.
    pub(crate) fn durable(&self) -> Durable {
        self.shared.durable.clone()
    }

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
        let log = self.shared.log.read().expect("log lock poisoned");
        log.read(start, end, max_bytes)
            .map_err(|e| storage_io(ErrorSubject::Logs, ErrorVerb::Read, e))
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
        let saved = fsutil::write_atomic(&self.shared.dir.join("vote"), &bytes)
            .map_err(|e| storage_io(ErrorSubject::Vote, ErrorVerb::Write, e));
        self.shared.note_vote(saved.is_ok().then_some(vote));
        saved
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        fsutil::read_json(&self.shared.dir.join("vote"))
            .map_err(|e| storage_io(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Kept in memory for /status only: a restart resumes from the state machine's marker
        // (clean stop) or its snapshot (crash), and openraft re-learns the commit index from
        // the leader.
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
        let leading = self.shared.leading.load(Ordering::SeqCst);
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        let entries: Vec<Entry> = entries.into_iter().collect();
        let count = entries.len();
        for entry in &entries {
            let start = buf.len() as u64;
            log_format::encode(entry, &mut buf).map_err(|e| write_err(e.into()))?;
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
            log.recent.extend(entries);
            log.trim_recent();
        }
        // A leader's own entries go out to the followers while they are synced here.
        let waiting = if leading {
            callback.log_io_completed(Ok(()));
            None
        } else {
            Some(callback)
        };
        // The flusher stops at a failed fsync: openraft then stops at this error, as it
        // would have had it been told of the fsync.
        if let Err(mpsc::SendError((callback, _))) = self.shared.flush_tx.send((waiting, count)) {
            let stopped = || std::io::Error::other("log flusher stopped after a failed fsync");
            if let Some(callback) = callback {
                callback.log_io_completed(Err(stopped()));
            }
            return Err(write_err(stopped()));
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
        let dropped = log.entries.len() - keep.min(log.entries.len());
        log.entries.truncate(keep);
        log.end = offset;
        let recent = log.recent.len().saturating_sub(dropped);
        log.recent.truncate(recent);
        self.shared.durable.truncated(log.next_index());
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
        rewrite_from(&mut log, log_id.index + 1).map_err(err)?;
        log.trim_recent();
        // The rewritten file was synced whole.
        self.shared.durable.truncated(log.next_index());
        Ok(())
    }
}

/// Group commit: one fdatasync covers every append queued while the previous one ran.
struct Flusher {
    log: Arc<RwLock<LogFile>>,
    durable: Durable,
}

impl Flusher {
    fn run(self, rx: mpsc::Receiver<(Option<LogFlushed<TypeConfig>>, usize)>) {
        let events = crate::metrics::events();
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            // Everything written before the fsync begins is on disk after it.
            let (file, generation, below) = {
                let log = self.log.read().expect("log lock poisoned");
                (log.file.clone(), self.durable.generation(), log.next_index())
            };
            let started = std::time::Instant::now();
            let result = file.sync_data();
            events.fsync_seconds.observe(crate::metrics::since(started));
            events
                .fsync_entries
                .observe(batch.iter().map(|(_, n)| *n).sum::<usize>() as f64);
            match &result {
                Ok(()) => self.durable.synced(generation, below),
                Err(e) => tracing::error!(error = %e, "fsync of the log failed: appends stop"),
            }
            for (callback, _) in batch {
                let Some(callback) = callback else { continue };
                let r = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                };
                callback.log_io_completed(r);
            }
            if result.is_err() {
                return;
            }
        }
    }
}

pub mod check;
mod durable;
pub(crate) use durable::Durable;
mod load;
use load::{load, rewrite_from};
#[cfg(test)]
mod tests;
