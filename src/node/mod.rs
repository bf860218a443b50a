//! The one door from the front ends (HTTP, FUSE) into consensus.
//!
//! Every mutation and every linearizable read needs the leader. A front end calls [`Node`]
//! on whichever node the client reached; `Node` runs the operation locally when this node
//! leads and otherwise forwards it to the leader over peer RPC (`/raft/propose`,
//! `/raft/read-index`, …), retrying across elections until the request deadline. Each
//! proposal carries a request id fixed before the first attempt, so a retry of a command
//! that did commit is answered from the state machine's de-duplication table, not re-applied.
//!
//! A leader refuses work once it has not heard from a majority for the quorum lease
//! (openraft 0.9 has no check-quorum): a partitioned leader answers 503 quickly instead of
//! accepting writes that cannot commit.

mod admin;
mod batch;
mod forward;
mod health;
mod inbound;
mod leader;
mod lease;
mod reads;
mod watch;

use std::collections::BTreeSet;

use bytes::Bytes;
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, instrument, warn};

pub use admin::{TransferRequest, TransferStep};
pub use forward::{LeaderReply, Refusal, RETRY_INTERVAL};
pub(crate) use health::watch;
pub use leader::Applied;
pub use watch::{Change as WatchChange, WatchEvent, WATCH_QUEUE};

use crate::client::HttpClient;
use crate::config::{check_name, Config};
use crate::error::{Error, Result};
use crate::names;
use crate::raft::command::{
    Chunk, Command, Commit, Data, Delete, Dir, Layout, Patch, Piece, Rename, RequestId, Span, StagedPatch,
    Touch, Write,
};
use crate::raft::log_store::LogReader;
use crate::raft::routes::PeerRoute;
use crate::raft::{NodeId, Raft};
use crate::store::snapshot::Validator;
use crate::store::{files, FileStore, StateHandle};

/// How a whole-file write is proposed.
#[derive(Debug, Clone, Copy, Default)]
pub struct How {
    /// Modification time, nanoseconds since the epoch.
    pub mtime: u64,
    /// The request id a retry reuses, so a write that did commit is answered, not applied again.
    pub req: Option<RequestId>,
    /// Write only if the file exists (see [`Write::existing`]).
    pub existing: bool,
}

/// Pieces of one large file proposed at once: enough to keep the log busy while each waits
/// for its commit, few enough to bound the memory held (pieces are `--chunk-size` each).
/// Eight rather than four: a 64 MiB `cp` through a follower's mount took 1.22–1.31 s
/// instead of 1.63–1.70 s (the follower forwards each piece to the leader).
const CHUNKS_IN_FLIGHT: usize = 8;

/// Reads `buf.len()` bytes of `file` at `offset`, zeros past its end (a write buffer may be
/// cut while a commit reads it; what was cut is sent again by the next commit).
fn read_filled(file: &std::fs::File, buf: &mut [u8], offset: u64) -> Result<()> {
    let filled =
        crate::fsutil::read_full_at(file, buf, offset).map_err(|e| Error::io("read write buffer", e))?;
    buf[filled..].fill(0);
    Ok(())
}

/// A join request: the new member's id and advertised name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Raft id of the joining node.
    pub id: NodeId,
    /// Its advertised `host:port`.
    pub name: String,
}

/// A removal request, by advertised name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveRequest {
    /// The member's `host:port`.
    pub name: String,
}

/// What `GET /status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// This node's advertised name.
    pub name: String,
    /// This node's Raft id.
    pub id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: String,
    /// The leader's name, if one is known.
    pub leader: Option<String>,
    /// Current term.
    pub term: u64,
    /// Highest index known committed.
    pub commit_index: Option<u64>,
    /// Highest index applied to the local files.
    pub applied_index: Option<u64>,
    /// Highest index in the local log.
    pub last_log_index: Option<u64>,
    /// Index up to which the log is compacted into the snapshot.
    pub snapshot_index: Option<u64>,
    /// Voting members' names.
    pub members: Vec<String>,
    /// Non-voting members' names.
    pub learners: Vec<String>,
    /// On a leader: time since a majority last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
}

/// One member's `/status`, or why it did not answer, as `GET /status/all` gathers them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member's name.
    pub name: String,
    /// Whether it answered.
    pub answers: bool,
    /// Its status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Why not, if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How long `GET /status/all` waits for each member.
const MEMBER_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The handle front ends share.
pub struct Node {
    /// This node's Raft id.
    pub id: NodeId,
    /// This node's advertised name.
    pub name: String,
    raft: Raft,
    store: FileStore,
    /// The state machine itself: backups, whether a snapshot is being installed.
    state: StateHandle,
    log: LogReader,
    client: HttpClient,
    config: Config,
    /// The first commit index learned after starting: readiness waits for its apply.
    ready_floor: health::ReadyFloor,
    /// On a leader handing over leadership: to whom (requests wait meanwhile).
    transferring: std::sync::Mutex<Option<String>>,
    /// Counts transfer holds, so only the newest one's timer ends a hold.
    hold_generation: std::sync::atomic::AtomicU64,
    /// When this node last accepted an AppendEntries from a leader.
    leader_contact: crate::raft::elections::LeaderContact,
    /// Signalled when the cluster removes this node, so the server shuts down.
    removed: tokio::sync::Notify,
    /// Set when the server begins to stop: endless answers (watch streams) end then, or
    /// the server would wait for them forever.
    stopping: tokio::sync::watch::Sender<bool>,
    /// The snapshot being received from the leader, checked piece by piece before openraft
    /// stores it. std lock: held only while checking one piece.
    incoming_snapshot: std::sync::Mutex<Option<(String, Validator)>>,
    /// The last log index when this process started. openraft restarts a former leader as
    /// leader in the same term, without knowing how far it had committed: its read index
    /// (the commit index, or its term's first entry) can then be below writes it acknowledged
    /// before the crash. A read index is never below this, so a linearizable read after a
    /// restart waits until those entries are committed and applied.
    started_at_log: Option<u64>,
    /// Groups concurrent proposals on the leader (started at the first one).
    batcher: std::sync::OnceLock<batch::Batcher>,
    /// Concurrent linearizable reads share read-index round trips.
    reads: reads::Rounds,
    /// On a leader: when a majority last acknowledged it (see [`lease`]).
    lease: lease::Lease,
    /// The data directory, open: free space is asked of it before every write, and a
    /// descriptor spares that a walk of its path.
    data_dir: Option<std::fs::File>,
    /// When this process started: it votes only a leader lease later (see [`lease`]).
    started: Instant,
}

impl Node {
    /// Wires the handle; `server` builds the parts.
    pub fn new(
        id: NodeId,
        raft: Raft,
        (store, state): (FileStore, StateHandle),
        log: LogReader,
        client: HttpClient,
        config: Config,
    ) -> Self {
        let name = config.name();
        let started_at_log = log.last_index();
        let data_dir = std::fs::File::open(&config.data_dir).ok();
        Node {
            id,
            name,
            raft,
            store,
            state,
            log,
            client,
            config,
            ready_floor: Default::default(),
            transferring: Default::default(),
            hold_generation: Default::default(),
            leader_contact: Default::default(),
            removed: Default::default(),
            stopping: tokio::sync::watch::Sender::new(false),
            incoming_snapshot: Default::default(),
            started_at_log,
            batcher: std::sync::OnceLock::new(),
            reads: Default::default(),
            lease: Default::default(),
            data_dir,
            started: Instant::now(),
        }
    }

    /// The local replica's read API.
    pub fn store(&self) -> &FileStore {
        &self.store
    }

    /// The state machine's handle (backups).
    pub fn state(&self) -> &StateHandle {
        &self.state
    }

    /// Whether this node may grant votes yet. Not for one leader lease after it started: it
    /// may have acknowledged a leader just before it stopped, and that leader may still be
    /// serving reads under the lease (see [`lease`]); openraft forgets across a restart.
    pub(crate) fn voting_allowed(&self) -> bool {
        self.started.elapsed() >= self.config.leader_lease()
    }

    /// When this node last heard from a leader (the peer append route records it).
    pub(crate) fn leader_contact(&self) -> &crate::raft::elections::LeaderContact {
        &self.leader_contact
    }

    /// The log's reader (for `GET /log` and the snapshot policy).
    pub(crate) fn log(&self) -> &LogReader {
        &self.log
    }

    /// The Raft handle, for peer RPC handlers.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The node's peer client (cluster scheme, token, TLS).
    pub(crate) fn client(&self) -> &HttpClient {
        &self.client
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The log file's text, as `GET /log` serves it.
    pub(crate) async fn log_text(&self) -> Result<Vec<u8>> {
        let log = self.log.clone();
        match tokio::task::spawn_blocking(move || log.text()).await {
            Ok(read) => read.map_err(|e| Error::io("read log", e)),
            Err(e) => Err(Error::io("read log", std::io::Error::other(e))),
        }
    }

    /// Resolves when the cluster has removed this node.
    pub(crate) async fn removed(&self) {
        self.removed.notified().await
    }

    /// Why the Raft core stopped on its own (a storage error: a disk fault, a full disk), if it
    /// did; `None` while it runs or after an ordinary shutdown.
    pub fn fatal_error(&self) -> Option<String> {
        match &self.raft.metrics().borrow().running_state {
            Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Resolves when the Raft core stops on a fatal error, with the cause.
    pub(crate) async fn failed(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(cause) = self.fatal_error() {
                return cause;
            }
            if metrics.changed().await.is_err() {
                // The core is gone without a recorded error; report what there is.
                return self
                    .fatal_error()
                    .unwrap_or_else(|| "the Raft core stopped".into());
            }
        }
    }

    /// Tells endless answers (watch streams) to end: the server is stopping.
    pub(crate) fn begin_stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once the server has begun to stop.
    pub(crate) async fn stopping(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(|s| *s).await;
    }

    /// Marks this node removed (told so by the leader).
    pub(crate) fn mark_removed(&self) {
        warn!("this node was removed from the cluster; shutting down");
        self.removed.notify_one();
    }

    // ---- operations any front end may call on any node -------------------------------

    /// Replaces a whole file, in chunks if it is larger than one entry may carry.
    #[instrument(level = "debug", skip(self, body), fields(len = body.len()))]
    pub async fn write_file(&self, name: &str, body: Bytes) -> Result<()> {
        self.write_file_with(name, body, None).await
    }

    /// [`write_file`](Self::write_file) under a request id the client chose (an
    /// `Idempotency-Key`): a retry of a write that did commit is answered, not applied again.
    pub async fn write_file_with(&self, name: &str, body: Bytes, req: Option<RequestId>) -> Result<()> {
        names::validate(name)?;
        let mut pieces = body.chunks(self.config.chunk_size.max(1));
        let next = || Ok(pieces.next().map(<[u8]>::to_vec));
        let how = How {
            mtime: files::now_nanos(),
            req,
            existing: false,
        };
        self.write_pieces(name, body.len() as u64, how, next).await
    }

    /// Replaces a whole file with the contents of a local file, reading one chunk at a time so
    /// memory stays bounded whatever the size (FUSE buffers writes in such files).
    /// See [`How`] for the options; `how.mtime` 0 means now.
    #[instrument(level = "debug", skip(self, file))]
    pub async fn write_file_from(&self, name: &str, file: &std::fs::File, mut how: How) -> Result<()> {
        use std::os::unix::fs::FileExt;
        names::validate(name)?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat write buffer", e))?
            .len();
        let chunk = self.config.chunk_size.max(1) as u64;
        let mut offset = 0;
        let next = || {
            if offset >= len {
                return Ok(None);
            }
            let mut buf = vec![0; chunk.min(len - offset) as usize];
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| Error::io("read write buffer", e))?;
            offset += buf.len() as u64;
            Ok(Some(buf))
        };
        if how.mtime == 0 {
            how.mtime = files::now_nanos();
        }
        self.write_pieces(name, len, how, next).await
    }

    /// Changes part of a file: the `spans` of `file` (a FUSE write buffer), written at the
    /// same offsets, after the cut, length and holes of `layout`. One `file:patch` when the
    /// bytes fit in an entry; else they are staged as `file:chunk`s and one `file:commit`
    /// places them, all or nothing. See [`How`] for the options; `how.mtime` 0 means now.
    #[instrument(level = "debug", skip(self, file, spans), fields(spans = spans.len()))]
    pub async fn patch_file_from(
        &self,
        name: &str,
        layout: Layout,
        spans: Vec<Span>,
        file: &std::fs::File,
        mut how: How,
    ) -> Result<()> {
        names::validate(name)?;
        if how.mtime == 0 {
            how.mtime = files::now_nanos();
        }
        let read = |span: Span| -> Result<Vec<u8>> {
            let mut buf = vec![0; span.1 as usize];
            read_filled(file, &mut buf, span.0)?;
            Ok(buf)
        };
        let total: u64 = spans.iter().map(|s| s.1).sum();
        let chunk = self.config.chunk_size.max(1) as u64;
        if total <= chunk {
            let writes = spans
                .iter()
                .map(|&span| {
                    let data = Data(read(span)?);
                    Ok(Piece { offset: span.0, data })
                })
                .collect::<Result<Vec<_>>>()?;
            return self
                .propose(Command::Patch(Patch {
                    filename: name.into(),
                    layout,
                    writes,
                    mtime: how.mtime,
                    req: how.req,
                    existing: how.existing,
                }))
                .await;
        }
        // Chunk-sized pieces of the spans' bytes, in order.
        let mut left = spans.clone().into_iter();
        let mut current: Option<Span> = None;
        let next = || -> Result<Option<Vec<u8>>> {
            let mut piece = Vec::new();
            while (piece.len() as u64) < chunk {
                let span = match current.take().or_else(|| left.next()) {
                    Some(span) => span,
                    None => break,
                };
                let take = span.1.min(chunk - piece.len() as u64);
                piece.extend(read(Span(span.0, take))?);
                if take < span.1 {
                    current = Some(Span(span.0 + take, span.1 - take));
                }
            }
            Ok((!piece.is_empty()).then_some(piece))
        };
        self.write_chunked(name, how, next, Some(StagedPatch { layout, spans }))
            .await
    }

    /// One `file:write` when `len` fits in an entry; else `file:chunk`s and a `file:commit`
    /// (or an abort if any piece fails).
    async fn write_pieces(
        &self,
        name: &str,
        len: u64,
        how: How,
        mut next: impl FnMut() -> Result<Option<Vec<u8>>>,
    ) -> Result<()> {
        if len <= self.config.chunk_size as u64 {
            let data = Data(next()?.unwrap_or_default());
            let filename = name.into();
            return self
                .propose(Command::Write(Write {
                    filename,
                    data,
                    mtime: how.mtime,
                    req: how.req,
                    existing: how.existing,
                }))
                .await;
        }
        self.write_chunked(name, how, next, None).await
    }

    /// `file:chunk`s staging the pieces under a fresh upload id, then a `file:commit` (that
    /// places them as `patch` says, or makes them the whole file); if any of it fails, a
    /// commit without a name drops what was staged. Up to [`CHUNKS_IN_FLIGHT`] pieces are
    /// proposed at once, so a large file streams instead of waiting a round trip per piece.
    async fn write_chunked(
        &self,
        name: &str,
        how: How,
        mut next: impl FnMut() -> Result<Option<Vec<u8>>>,
        patch: Option<StagedPatch>,
    ) -> Result<()> {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let How { mtime, req, existing } = how;
        let upload: u64 = rand::random();
        let staged = async {
            let mut seq = 0;
            let mut in_flight = FuturesUnordered::new();
            while let Some(piece) = next()? {
                if in_flight.len() >= CHUNKS_IN_FLIGHT {
                    if let Some(done) = in_flight.next().await {
                        done?;
                    }
                }
                let data = Data(piece);
                in_flight.push(self.propose(Command::Chunk(Chunk { upload, seq, data })));
                seq += 1;
            }
            while let Some(done) = in_flight.next().await {
                done?;
            }
            let filename = Some(name.into());
            self.propose(Command::Commit(Commit {
                upload,
                filename,
                mtime,
                req,
                existing,
                patch,
            }))
            .await
        };
        let result = staged.await;
        if result.is_err() {
            let abort = Commit {
                upload,
                filename: None,
                mtime,
                req: None,
                existing: false,
                patch: None,
            };
            if let Err(e) = self.propose(Command::Commit(abort)).await {
                debug!(cause = %e, upload, "could not abort upload");
            }
        }
        result
    }

    /// Sets a file's or directory's modification and/or access time (`None` leaves one).
    #[instrument(level = "debug", skip(self))]
    pub async fn touch(&self, name: &str, mtime: Option<u64>, atime: Option<u64>) -> Result<()> {
        names::validate(name)?;
        self.propose(Command::Touch(Touch {
            filename: name.into(),
            mtime,
            atime,
        }))
        .await
    }

    /// Removes a file, or an empty directory.
    #[instrument(level = "debug", skip(self))]
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.delete_with(name, None).await
    }

    /// [`delete`](Self::delete) under a request id the client chose (see
    /// [`write_file_with`](Self::write_file_with)).
    pub async fn delete_with(&self, name: &str, req: Option<RequestId>) -> Result<()> {
        names::validate(name)?;
        let cmd = match self.store.stat(name) {
            Ok(s) if s.is_dir => Command::Rmdir(Dir {
                dirname: name.into(),
                mtime: 0,
                req,
            }),
            _ => Command::Delete(Delete {
                filename: name.into(),
                req,
            }),
        };
        self.propose(cmd).await
    }

    /// Removes a file (not a directory).
    #[instrument(level = "debug", skip(self))]
    pub async fn unlink(&self, name: &str) -> Result<()> {
        names::validate(name)?;
        self.propose(Command::Delete(Delete {
            filename: name.into(),
            req: None,
        }))
        .await
    }

    /// Removes an empty directory.
    #[instrument(level = "debug", skip(self))]
    pub async fn rmdir(&self, name: &str) -> Result<()> {
        names::validate(name)?;
        self.propose(Command::Rmdir(Dir {
            dirname: name.into(),
            mtime: 0,
            req: None,
        }))
        .await
    }

    /// Creates a directory.
    #[instrument(level = "debug", skip(self))]
    pub async fn mkdir(&self, name: &str) -> Result<()> {
        names::validate(name)?;
        self.propose(Command::Mkdir(Dir {
            dirname: name.into(),
            mtime: files::now_nanos(),
            req: None,
        }))
        .await
    }

    /// Renames a file or directory.
    #[instrument(level = "debug", skip(self))]
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        names::validate(from)?;
        names::validate(to)?;
        self.propose(Command::Rename(Rename {
            from: from.into(),
            to: to.into(),
            req: None,
        }))
        .await
    }

    /// Replicates one command through the leader and returns its replicated outcome once
    /// this node has applied it too, so the caller's next local read sees it.
    #[instrument(level = "debug", skip_all, fields(cmd = cmd.name()))]
    pub async fn propose(&self, mut cmd: Command) -> Result<()> {
        if cmd.adds_data() {
            self.check_space().map_err(Error::NoSpace)?;
        }
        if cmd.req().is_none() {
            cmd.set_req(rand::random());
        }
        let started = Instant::now();
        let outcome = async {
            let applied: Applied = self
                .on_leader(PeerRoute::Propose, &cmd, |timeout| {
                    self.propose_local(cmd.clone(), timeout)
                })
                .await?;
            if !applied.here {
                self.wait_applied(applied.index, started).await?;
            }
            applied.result.map_err(Error::from)
        }
        .await;
        let events = crate::metrics::events();
        let label = match &outcome {
            Ok(()) => "ok",
            Err(Error::File(_)) => "refused",
            Err(Error::Unavailable(_)) => "unavailable",
            Err(_) => "error",
        };
        events
            .proposals
            .get_or_create(&crate::metrics::Outcome { outcome: label })
            .inc();
        if outcome.is_ok() {
            events.write_seconds.observe(started.elapsed().as_secs_f64());
        }
        outcome
    }

    /// Waits (within the request deadline counted from `started`) until this node has
    /// applied `index`.
    async fn wait_applied(&self, index: u64, started: Instant) -> Result<()> {
        if self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .is_some_and(|l| l.index >= index)
        {
            return Ok(());
        }
        let remaining = self.config.request_timeout.saturating_sub(started.elapsed());
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "apply locally")
            .await
            .map(|_| ())
            .map_err(|e| {
                Error::Unavailable(format!(
                    "committed, but this node did not apply index {index} in time: {e}"
                ))
            })
    }

    /// Waits until this node's files reflect every write committed before the call began
    /// (read-index through the leader, then wait for the local apply).
    #[instrument(level = "debug", skip_all)]
    pub async fn read_barrier(&self) -> Result<()> {
        let started = Instant::now();
        let index = self.read_index().await?;
        if let Some(index) = index {
            self.wait_applied(index, started).await?;
        }
        let events = crate::metrics::events();
        events
            .read_barrier_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// The cluster's read index: the leader's commit index, once it confirmed it still leads.
    /// Reads that overlap share one request (see [`reads`]).
    pub(crate) async fn read_index(&self) -> Result<Option<u64>> {
        let ask = || {
            self.on_leader(PeerRoute::ReadIndex, &(), |timeout| {
                self.read_index_local(timeout)
            })
        };
        self.reads.read_index(ask).await
    }

    /// Adds a node to the cluster (through the leader).
    #[instrument(level = "debug", skip(self), fields(name = %req.name))]
    pub async fn join(&self, req: JoinRequest) -> Result<()> {
        check_name(&req.name).map_err(Error::BadRequest)?;
        self.on_leader(PeerRoute::Join, &req, |timeout| {
            self.join_local(req.clone(), timeout)
        })
        .await
    }

    /// Removes a member by name (through the leader).
    #[instrument(level = "debug", skip(self), fields(name = %req.name))]
    pub async fn remove(&self, req: RemoveRequest) -> Result<()> {
        self.on_leader(PeerRoute::Remove, &req, |timeout| {
            self.remove_local(req.clone(), timeout)
        })
        .await
    }

    /// Refuses (with the reason) when this node's data directory has less free space than
    /// `--min-free`. Checked on the node a client reached and again on the leader.
    pub(crate) fn check_space(&self) -> std::result::Result<(), String> {
        let min = self.config.min_free;
        if min == 0 {
            return Ok(());
        }
        let stat = match &self.data_dir {
            Some(dir) => rustix::fs::fstatvfs(dir),
            None => rustix::fs::statvfs(&self.config.data_dir),
        };
        let free = match stat {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize),
            Err(_) => return Ok(()), // cannot tell: let the write try
        };
        if free < min {
            return Err(format!(
                "{}: {free} bytes free in {}, under --min-free {min}; delete files to make room",
                self.name,
                self.config.data_dir.display()
            ));
        }
        Ok(())
    }

    /// The current leader's id and name, as this node believes.
    pub fn leader(&self) -> (Option<NodeId>, Option<String>) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader;
        let name = id.and_then(|id| {
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.name.clone())
        });
        (id, name)
    }

    // ---- status -------------------------------------------------------------------------

    /// Every member's status (voters, then learners), asked of each at once; this node's own
    /// without a request.
    pub async fn cluster_status(&self) -> Vec<MemberStatus> {
        let own = self.status();
        let names: Vec<String> = own.members.iter().chain(&own.learners).cloned().collect();
        let ask = |name: String| {
            let own = own.clone();
            async move {
                if name == self.name {
                    return MemberStatus {
                        name,
                        answers: true,
                        status: Some(own),
                        error: None,
                    };
                }
                let answer = self
                    .client
                    .send(
                        hyper::Method::GET,
                        &name,
                        "/status",
                        bytes::Bytes::new(),
                        MEMBER_STATUS_TIMEOUT,
                    )
                    .await;
                let status = match answer {
                    Ok(r) if r.status.is_success() => {
                        r.json::<Status>().map_err(|e| format!("unreadable /status: {e}"))
                    }
                    Ok(r) => Err(format!("{} {}", r.status.as_u16(), r.text())),
                    Err(e) => Err(e.to_string()),
                };
                MemberStatus {
                    name,
                    answers: status.is_ok(),
                    error: status.as_ref().err().cloned(),
                    status: status.ok(),
                }
            }
        };
        futures_util::future::join_all(names.into_iter().map(ask)).await
    }

    /// A snapshot of this node's view of the cluster.
    pub fn status(&self) -> Status {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let name_of = |id: &NodeId| {
            membership
                .get_node(id)
                .map(|n| n.name.clone())
                .unwrap_or_else(|| id.to_string())
        };
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        Status {
            name: self.name.clone(),
            id: self.id,
            state: format!("{:?}", m.state).to_lowercase(),
            leader: m.current_leader.as_ref().map(name_of),
            term: m.current_term,
            commit_index: self.log.committed(),
            applied_index: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            snapshot_index: m.snapshot.map(|l| l.index),
            members: voters.iter().map(name_of).collect(),
            learners: membership
                .learner_ids()
                .filter(|id| !voters.contains(id))
                .map(|id| name_of(&id))
                .collect(),
            millis_since_quorum_ack: if m.state == ServerState::Leader {
                m.millis_since_quorum_ack
            } else {
                None
            },
        }
    }
}
