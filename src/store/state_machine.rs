//! openraft's state machine: committed entries become changes to the file tree.
//!
//! Applying is deterministic (commands carry everything that varies); durability comes from the
//! log. The applied marker (`sm/applied`, the last applied log id and membership) is written
//! when a run stops cleanly and when a snapshot is installed, not per apply: only a clean
//! start trusts it. A clean shutdown saves it, syncs the files and leaves a flag (`sm/clean`);
//! a start without that flag
//! (kill -9, power failure) does not trust the files — which may be ahead of or behind the
//! marker — and rebuilds them from the newest snapshot, after which openraft re-applies the
//! log. So a crash can never leave a replica that silently differs from the others.
//!
//! Retried commands carry a request id; the results of recent ids are remembered for ten
//! minutes by the log's clock (see [`super::dedup`]) and travel in snapshots and, at a clean
//! stop, in `sm/dedup`, so a retry answers with the first outcome instead of applying twice.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::dedup::Dedup;
use super::files::Tree;
use super::snapshot;
use super::{Change, ChangeFeed, FileStore};
use crate::error::CommandResult;
use crate::raft::command::{Command, Commit};
use crate::raft::log_store::Durable;
use crate::raft::{storage_io, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// Flag file in `sm/` written at a clean shutdown, after all applied files are synced.
const CLEAN: &str = "clean";
/// File in `sm/` holding the de-duplication table as of a clean shutdown: entries applied
/// after the newest snapshot are not replayed after a clean stop, so their request ids must
/// come back from here, or a retry would be applied again on this node only.
const DEDUP_FILE: &str = "dedup";

/// Staged uploads untouched this long by the log's clock are dropped (see
/// [`Tree::reclaim_uploads`]); checked every [`RECLAIM_EVERY`] entries.
pub(crate) const UPLOAD_WINDOW_NANOS: u64 = 60 * 60 * 1_000_000_000;

/// How often, in log entries, abandoned uploads are looked for: at every index that is a
/// multiple of this, the same entries on every replica.
pub(crate) const RECLAIM_EVERY: u64 = 1024;

/// The temp-file tag of the `i`th command of the batch at `index`. Every command needs its
/// own: a deleted file set aside as a spare inode stays at its command's temp path, and the
/// next command of the same entry must not create its temp file there. Log indexes stay far
/// below 2^48.
pub(crate) fn batched_tag(index: u64, i: usize) -> u64 {
    index | ((i as u64 + 1) << 48)
}

/// Whether `tag` names a command of a batch (see [`batched_tag`]) rather than one alone in
/// its entry: one alone is a client waiting on it with nothing else in flight.
pub(crate) fn is_batched(tag: u64) -> bool {
    tag >> 48 != 0
}

/// What `sm/applied` records.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Marker {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

mod snapshots;

impl Marker {
    /// The marker saved at `path`, or the empty one for a new state machine.
    fn read(path: &Path) -> std::io::Result<Marker> {
        match fs::read(path) {
            // Created at open, written at the first apply: empty if nothing was applied yet.
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Marker::default()),
            Ok(bytes) => Ok(serde_json::from_slice(&bytes)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Marker::default()),
            Err(e) => Err(e),
        }
    }
}

/// Loads the table to start with: as saved at a clean stop, else as of the newest snapshot
/// (after a crash the log is replayed from that snapshot, rebuilding the rest).
fn load_dedup(sm_dir: &Path, clean: bool, snapshot: Option<&Path>) -> std::io::Result<Dedup> {
    if clean {
        if let Some(saved) = crate::fsutil::read_json(&sm_dir.join(DEDUP_FILE))? {
            return Ok(Dedup::restore(saved));
        }
    }
    match snapshot {
        Some(path) => Ok(Dedup::restore(snapshot::read_header(path)?.dedup)),
        None => Ok(Dedup::default()),
    }
}

struct State {
    marker: Marker,
    marker_file: File,
    /// Bytes last written to the marker; shorter records are padded to it with spaces, so one
    /// pwrite replaces the record with no truncate.
    marker_len: usize,
    dedup: Dedup,
    /// The newest complete snapshot file.
    current: Option<(SnapshotMeta, PathBuf)>,
    /// The file openraft is streaming a snapshot into.
    receiving: Option<PathBuf>,
    /// While a snapshot or backup links the tree without the lock: what was applied since.
    linking: Option<Touched>,
}

/// The paths changed while the tree was being linked (see `Shared::link_tree_at_applied`).
#[derive(Default)]
struct Touched {
    /// Each once however often it changed, and in order, so a directory comes before what
    /// is in it (it is relinked whole first; its entries then only refresh themselves).
    paths: BTreeSet<String>,
    /// Too many to relink one by one, or the whole tree was replaced: link it all again.
    everything: bool,
}

impl Touched {
    /// Beyond this many changed paths, linking the whole tree again is as cheap.
    const MAX_PATHS: usize = 1 << 16;

    fn note<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        if self.everything {
            return;
        }
        for name in names {
            if !self.paths.contains(name) {
                self.paths.insert(name.to_owned());
            }
        }
        if self.paths.len() > Self::MAX_PATHS {
            self.everything = true;
            self.paths = BTreeSet::new();
        }
    }
}

impl State {
    fn save_marker(&mut self) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(&self.marker)?;
        if bytes.len() < self.marker_len {
            bytes.resize(self.marker_len, b' ');
        }
        self.marker_file.write_all_at(&bytes, 0)?;
        self.marker_len = bytes.len();
        Ok(())
    }
}

struct Shared {
    tree: Tree,
    snapshots: PathBuf,
    /// `sm/`: the marker and the clean-shutdown flag.
    sm_dir: PathBuf,
    /// std lock: held across blocking file work only, never across an await.
    state: Mutex<State>,
    changes: ChangeFeed,
    /// Set while a snapshot from the leader replaces the tree (readiness reports it).
    installing: AtomicBool,
    /// The last applied index, stored before openraft hears the entries are applied (so
    /// before any of them is answered); openraft's metrics follow a moment later.
    applied_index: AtomicU64,
}

/// The state machine handed to openraft.
pub struct StateMachine {
    shared: Arc<Shared>,
    /// The log's progress to disk: nothing is applied before its entry is durable here (a
    /// leader's appends do not wait for it; see [`crate::raft::log_store::Durable`]).
    durable: Option<Durable>,
}

/// Longest an apply waits for its entries to reach the disk before the node gives up.
const DURABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Builds snapshots concurrently with `apply`.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb) -> impl Fn(std::io::Error) -> StorageError {
    move |e| storage_io(subject.clone(), verb, e)
}

impl StateMachine {
    /// Opens the state machine in `data_dir`, cleaning up what a crash mid-snapshot left, and
    /// the read side of its tree that the front ends use.
    pub fn open(data_dir: &Path) -> std::io::Result<(Self, FileStore)> {
        let tree = Tree::open(data_dir)?;
        let changes = ChangeFeed::default();
        let store = FileStore::new(tree.clone(), changes.clone());
        let snapshots = data_dir.join("snapshots");
        let current = snapshots::newest_snapshot(&snapshots)?;
        let marker_path = data_dir.join("sm").join("applied");
        let fresh = !marker_path.exists() && current.is_none();
        let marker = Marker::read(&marker_path)?;
        let applied_index = marker.last_applied.map_or(0, |l| l.index);
        let sm_dir = data_dir.join("sm");
        let was_clean = sm_dir.join(CLEAN).exists();
        let dedup = load_dedup(&sm_dir, was_clean, current.as_ref().map(|c| c.1.as_path()))?;
        info!(applied = ?marker.last_applied.map(|l| l.index), snapshot = ?current.as_ref().map(|c| c.0.snapshot_id.clone()), "state machine opened");
        let marker_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&marker_path)?;
        let marker_len = marker_file.metadata()?.len() as usize;
        let state = State {
            marker,
            marker_file,
            marker_len,
            dedup,
            current,
            receiving: None,
            linking: None,
        };
        let shared = Shared {
            tree,
            snapshots,
            sm_dir: sm_dir.clone(),
            state: Mutex::new(state),
            changes,
            installing: AtomicBool::new(false),
            applied_index: AtomicU64::new(applied_index),
        };
        // The flag is consumed now: from here on this run is unclean until `mark_clean`.
        if was_clean {
            fs::remove_file(sm_dir.join(CLEAN))?;
        }
        File::open(&sm_dir)?.sync_all()?;
        if !was_clean && !fresh {
            shared.recover()?;
        }
        Ok((
            StateMachine {
                shared: Arc::new(shared),
                durable: None,
            },
            store,
        ))
    }

    /// Applies entries only once `durable` says they are on disk in the log.
    pub(crate) fn wait_for_log(&mut self, durable: Durable) {
        self.durable = Some(durable);
    }

    /// A handle the server uses to record a clean stop, after Raft has stopped applying.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shared.clone())
    }

    /// A handle for the front ends' view of the state machine itself (backups, readiness).
    pub fn handle(&self) -> StateHandle {
        StateHandle(self.shared.clone())
    }
}

/// What the front ends may ask of the state machine beyond reading files.
#[derive(Clone)]
pub struct StateHandle(Arc<Shared>);

impl StateHandle {
    /// True while a snapshot from the leader is replacing the tree.
    pub fn installing(&self) -> bool {
        self.0.installing.load(Ordering::Relaxed)
    }

    /// The index of the last entry applied, as soon as it is applied: at least the index of
    /// every write this node has answered (openraft's metrics may still show less).
    pub fn applied_index(&self) -> u64 {
        self.0.applied_index.load(Ordering::Acquire)
    }

    /// Links the tree as it is at the last applied index into a staging copy, for
    /// [`Backup::write_tar`](super::backup::Backup::write_tar). Blocking.
    pub fn backup(&self, node: &str) -> std::io::Result<super::backup::Backup> {
        let tag: u64 = rand::random();
        let staging = self.0.snapshots.join(format!("backup-{tag:016x}"));
        let archiving = self.0.tree.archiving();
        let linked = self
            .0
            .link_tree_at_applied(&staging, |state| Ok(state.marker.last_applied));
        let applied = match linked {
            Ok(applied) => applied,
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        super::backup::Backup::new(staging, applied, node, archiving)
    }
}

/// Records a clean shutdown (see [`StateMachine::shutdown_handle`]).
pub struct ShutdownHandle(Arc<Shared>);

impl ShutdownHandle {
    /// Syncs the applied files and writes the clean-shutdown flag, so the next start trusts
    /// the applied marker instead of rebuilding from the snapshot.
    pub fn mark_clean(&self) -> std::io::Result<()> {
        self.0.mark_clean()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state machine lock poisoned")
    }

    fn apply_entries(&self, entries: Vec<Entry>) -> Result<Vec<Vec<CommandResult>>, StorageError> {
        let started = Instant::now();
        let events = crate::metrics::events();
        events.apply_entries.observe(entries.len() as f64);
        let mut state = self.lock();
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut results = Vec::new();
        for entry in entries {
            let result = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Membership(m) => {
                    state.marker.membership = StoredMembership::new(Some(entry.log_id), m);
                    None
                }
                EntryPayload::Normal(Command::Batch(batch)) => {
                    for (i, cmd) in batch.commands.iter().enumerate() {
                        let tag = batched_tag(entry.log_id.index, i);
                        results.push(self.apply_command(&mut state, cmd, entry.log_id, tag)?);
                    }
                    None
                }
                EntryPayload::Normal(cmd) => {
                    let tag = entry.log_id.index;
                    Some(self.apply_command(&mut state, &cmd, entry.log_id, tag)?)
                }
            };
            if entry.log_id.index % RECLAIM_EVERY == 0 {
                let dropped = self
                    .tree
                    .reclaim_uploads(state.dedup.clock(), UPLOAD_WINDOW_NANOS)
                    .map_err(io_err(ErrorSubject::Apply(entry.log_id), ErrorVerb::Write))?;
                if dropped > 0 {
                    info!(dropped, index = entry.log_id.index, "dropped abandoned uploads");
                }
            }
            state.marker.last_applied = Some(entry.log_id);
            // One outcome per command: none for Raft's own entries, several for a batch.
            results.extend(result);
            outcomes.push(std::mem::take(&mut results));
        }
        // The marker on disk is trusted only after a clean stop (a crash rebuilds from the
        // snapshot and the log), so it is saved then, not with every batch.
        if let Some(last) = state.marker.last_applied {
            self.applied_index.store(last.index, Ordering::Release);
        }
        events.apply_seconds.observe(crate::metrics::since(started));
        Ok(outcomes)
    }

    /// Applies one command (not a batch) unless its request id was seen: then answers the
    /// first outcome. `tag` names its temp files (unique per command, see [`batched_tag`]).
    fn apply_command(
        &self,
        state: &mut State,
        cmd: &Command,
        log_id: LogId,
        tag: u64,
    ) -> Result<CommandResult, StorageError> {
        let failed = || io_err(ErrorSubject::Apply(log_id), ErrorVerb::Write);
        if let Some(time) = cmd.time() {
            state.dedup.advance(time);
        }
        if let Some(first) = cmd.req().and_then(|id| state.dedup.get(id).cloned()) {
            debug!(index = log_id.index, "duplicate request, answering first result");
            // A retried large write staged its pieces again: drop them.
            if let Command::Commit(c) = cmd {
                let abort = Command::Commit(Commit {
                    filename: None,
                    ..c.clone()
                });
                self.tree.apply(&abort, tag).map_err(failed())?.ok();
            }
            return Ok(first);
        }
        let result = self.tree.apply(cmd, tag).map_err(failed())?;
        if let Some(touched) = &mut state.linking {
            touched.note(cmd.names());
        }
        if let Command::Chunk(c) = cmd {
            self.tree
                .stamp_upload(c.upload, state.dedup.clock())
                .map_err(failed())?;
        }
        if let Some(id) = cmd.req() {
            state.dedup.insert(id, result.clone());
        }
        match cmd {
            // A mount follows a rename (its open files commit under the new name).
            Command::Rename(r) if result.is_ok() => self.changes.send(Change::Renamed {
                from: r.from.clone(),
                to: r.to.clone(),
            }),
            _ => {
                for path in cmd.names() {
                    self.changes.send(Change::Path(path.to_string()));
                }
            }
        }
        Ok(result)
    }

    /// Makes everything applied durable, then records that this run stopped cleanly.
    fn mark_clean(&self) -> std::io::Result<()> {
        let mut state = self.lock();
        state.save_marker()?;
        let table = serde_json::to_vec(&state.dedup.save())?;
        crate::fsutil::write_atomic(&self.sm_dir.join(DEDUP_FILE), &table)?;
        let dir = File::open(&self.sm_dir)?;
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        File::create(self.sm_dir.join(CLEAN))?.sync_all()?;
        dir.sync_all()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(io_err(subject, verb)),
        Err(e) => Err(storage_io(subject, verb, std::io::Error::other(e))),
    }
}

async fn open_snapshot(meta: SnapshotMeta, path: &Path) -> Result<Snapshot<TypeConfig>, StorageError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(file),
    })
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        let (meta, path) = blocking(
            move || shared.build(),
            ErrorSubject::Snapshot(None),
            ErrorVerb::Write,
        )
        .await?;
        open_snapshot(meta, &path).await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.shared.lock();
        Ok((state.marker.last_applied, state.marker.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<CommandResult>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(durable), Some(last)) = (&self.durable, entries.last()) {
            durable
                .wait(last.log_id.index, DURABLE_WAIT)
                .await
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read)(std::io::Error::other(e)))?;
        }
        self.shared.apply_entries(entries)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self
            .shared
            .snapshots
            .join(format!("incoming-{:016x}", rand::random::<u64>()));
        let file = tokio::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        if let Some(old) = self.shared.lock().receiving.replace(path) {
            let _ = fs::remove_file(old);
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let received = self.shared.lock().receiving.take();
        let file = snapshot.into_std().await;
        let shared = self.shared.clone();
        let meta = meta.clone();
        blocking(
            move || {
                let started = Instant::now();
                shared.installing.store(true, Ordering::Relaxed);
                let installed = shared.keep_received(&meta, file, received).and_then(|archive| {
                    let size = fs::metadata(&archive).map_or(0, |m| m.len());
                    shared.install(&meta, archive).map(|()| size)
                });
                shared.installing.store(false, Ordering::Relaxed);
                let events = crate::metrics::events();
                events
                    .snapshot_install_seconds
                    .observe(crate::metrics::since(started));
                events.snapshot_install_bytes.observe(installed? as f64);
                Ok(())
            },
            subject,
            ErrorVerb::Write,
        )
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.shared.lock().current.clone();
        match current {
            Some((meta, path)) => open_snapshot(meta, &path).await.map(Some),
            None => Ok(None),
        }
    }
}
