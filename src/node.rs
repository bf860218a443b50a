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

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::raft::InstallSnapshotRequest;
use openraft::{ChangeMembers, ServerState};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::client::{HttpClient, SendError};
use crate::config::{check_name, Config};
use crate::error::CommandResult;
use crate::error::{Error, Result};
use crate::names;
use crate::raft::command::{Chunk, Command, Commit, Data, Delete, Dir, Rename, Touch, Write};
use crate::raft::log_store::LogReader;
use crate::raft::{NodeId, PeerNode, Raft, TypeConfig, PEER_PREFIX};
use crate::store::snapshot::Validator;
use crate::store::{files, FileStore};

/// Pause between attempts while no leader is known or the leader is unreachable.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// Why the leader-side half of an operation did not run; travels between nodes as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Refusal {
    /// This node is not the leader (any more): find the leader and retry.
    NotLeader,
    /// A membership change is in progress: retry shortly.
    Busy,
    /// A transient failure reaching the leader (it is down, an election is under way): retry.
    Transient(String),
    /// The cluster cannot do it now (no quorum, timeout): give up with 503.
    Unavailable(String),
    /// The request itself is wrong (e.g. joining under a name another member has).
    Rejected(String),
}

/// A command's outcome and the log index it was applied at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    /// Log index of the entry.
    pub index: u64,
    /// What applying it produced.
    pub result: CommandResult,
}

/// What a leader-side operation answers.
pub type LeaderReply<T> = std::result::Result<T, Refusal>;

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

/// The handle front ends share.
pub struct Node {
    /// This node's Raft id.
    pub id: NodeId,
    /// This node's advertised name.
    pub name: String,
    raft: Raft,
    store: FileStore,
    log: LogReader,
    committed: Arc<AtomicU64>,
    client: HttpClient,
    config: Config,
    /// Signalled when the cluster removes this node, so the server shuts down.
    removed: tokio::sync::Notify,
    /// The snapshot being received from the leader, checked piece by piece before openraft
    /// stores it. std lock: held only while checking one piece.
    incoming_snapshot: std::sync::Mutex<Option<(String, Validator)>>,
}

impl Node {
    /// Wires the handle; `server` builds the parts.
    pub fn new(
        id: NodeId,
        raft: Raft,
        store: FileStore,
        log: LogReader,
        committed: Arc<AtomicU64>,
        client: HttpClient,
        config: Config,
    ) -> Self {
        let name = config.name();
        Node {
            id,
            name,
            raft,
            store,
            log,
            committed,
            client,
            config,
            removed: Default::default(),
            incoming_snapshot: Default::default(),
        }
    }

    /// The local replica's read API.
    pub fn store(&self) -> &FileStore {
        &self.store
    }

    /// The Raft handle, for peer RPC handlers.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The log file's text, as `GET /log` serves it.
    pub fn log_text(&self) -> Result<Vec<u8>> {
        self.log.text().map_err(|e| Error::io("read log", e))
    }

    /// Resolves when the cluster has removed this node.
    pub async fn removed(&self) {
        self.removed.notified().await
    }

    /// Marks this node removed (told so by the leader).
    pub fn mark_removed(&self) {
        warn!("this node was removed from the cluster; shutting down");
        self.removed.notify_one();
    }

    // ---- operations any front end may call on any node -------------------------------

    /// Replaces a whole file, in chunks if it is larger than one entry may carry.
    pub async fn write_file(&self, name: &str, body: Bytes) -> Result<()> {
        names::validate(name)?;
        let mut pieces = body.chunks(self.config.chunk_size.max(1));
        let next = || Ok(pieces.next().map(<[u8]>::to_vec));
        self.write_pieces(name, body.len() as u64, files::now_nanos(), next).await
    }

    /// Replaces a whole file with the contents of a local file, reading one chunk at a time so
    /// memory stays bounded whatever the size (FUSE buffers writes in such files).
    /// `mtime` defaults to now.
    pub async fn write_file_from(&self, name: &str, file: &std::fs::File, mtime: Option<u64>) -> Result<()> {
        use std::os::unix::fs::FileExt;
        names::validate(name)?;
        let len = file.metadata().map_err(|e| Error::io("stat write buffer", e))?.len();
        let chunk = self.config.chunk_size.max(1) as u64;
        let mut offset = 0;
        let next = || {
            if offset >= len {
                return Ok(None);
            }
            let mut buf = vec![0; chunk.min(len - offset) as usize];
            file.read_exact_at(&mut buf, offset).map_err(|e| Error::io("read write buffer", e))?;
            offset += buf.len() as u64;
            Ok(Some(buf))
        };
        self.write_pieces(name, len, mtime.unwrap_or_else(files::now_nanos), next).await
    }

    /// One `file:write` when `len` fits in an entry; else `file:chunk`s and a `file:commit`
    /// (or an abort if any piece fails).
    async fn write_pieces(
        &self,
        name: &str,
        len: u64,
        mtime: u64,
        mut next: impl FnMut() -> Result<Option<Vec<u8>>>,
    ) -> Result<()> {
        if len <= self.config.chunk_size as u64 {
            let data = Data(next()?.unwrap_or_default());
            return self.propose(Command::Write(Write { filename: name.into(), data, mtime, req: None })).await;
        }
        let upload: u64 = rand::random();
        let staged = async {
            let mut seq = 0;
            while let Some(piece) = next()? {
                self.propose(Command::Chunk(Chunk { upload, seq, data: Data(piece) })).await?;
                seq += 1;
            }
            let commit = Commit { upload, filename: Some(name.into()), mtime, req: None };
            self.propose(Command::Commit(commit)).await
        };
        let result = staged.await;
        if result.is_err() {
            let abort = Commit { upload, filename: None, mtime, req: None };
            if let Err(e) = self.propose(Command::Commit(abort)).await {
                debug!(cause = %e, upload, "could not abort upload");
            }
        }
        result
    }

    /// Sets a file's or directory's modification time.
    pub async fn touch(&self, name: &str, mtime: u64) -> Result<()> {
        names::validate(name)?;
        self.propose(Command::Touch(Touch { filename: name.into(), mtime })).await
    }

    /// Removes a file, or an empty directory.
    pub async fn delete(&self, name: &str) -> Result<()> {
        names::validate(name)?;
        let cmd = match self.store.stat(name) {
            Ok(s) if s.is_dir => Command::Rmdir(Dir { dirname: name.into(), mtime: 0, req: None }),
            _ => Command::Delete(Delete { filename: name.into(), req: None }),
        };
        self.propose(cmd).await
    }

    /// Removes a file (not a directory).
    pub async fn unlink(&self, name: &str) -> Result<()> {
        names::validate(name)?;
        self.propose(Command::Delete(Delete { filename: name.into(), req: None })).await
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, name: &str) -> Result<()> {
        names::validate(name)?;
        self.propose(Command::Rmdir(Dir { dirname: name.into(), mtime: 0, req: None })).await
    }

    /// Creates a directory.
    pub async fn mkdir(&self, name: &str) -> Result<()> {
        names::validate(name)?;
        self.propose(Command::Mkdir(Dir { dirname: name.into(), mtime: files::now_nanos(), req: None })).await
    }

    /// Renames a file or directory.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        names::validate(from)?;
        names::validate(to)?;
        self.propose(Command::Rename(Rename { from: from.into(), to: to.into(), req: None })).await
    }

    /// Replicates one command through the leader and returns its replicated outcome once
    /// this node has applied it too, so the caller's next local read sees it.
    pub async fn propose(&self, mut cmd: Command) -> Result<()> {
        if cmd.req().is_none() {
            cmd.set_req(rand::random());
        }
        let started = Instant::now();
        let applied: Applied =
            self.on_leader("propose", &cmd, |timeout| self.propose_local(cmd.clone(), timeout)).await?;
        self.wait_applied(applied.index, started).await?;
        applied.result.map_err(Error::from)
    }

    /// Waits (within the request deadline counted from `started`) until this node has
    /// applied `index`.
    async fn wait_applied(&self, index: u64, started: Instant) -> Result<()> {
        if self.raft.metrics().borrow().last_applied.is_some_and(|l| l.index >= index) {
            return Ok(());
        }
        let remaining = self.config.request_timeout.saturating_sub(started.elapsed());
        self.raft.wait(Some(remaining)).applied_index_at_least(Some(index), "apply locally").await.map(|_| ()).map_err(
            |e| Error::Unavailable(format!("committed, but this node did not apply index {index} in time: {e}")),
        )
    }

    /// Waits until this node's files reflect every write committed before the call began
    /// (read-index through the leader, then wait for the local apply).
    pub async fn read_barrier(&self) -> Result<()> {
        let started = Instant::now();
        let index: Option<u64> = self.on_leader("read-index", &(), |timeout| self.read_index_local(timeout)).await?;
        match index {
            Some(index) => self.wait_applied(index, started).await,
            None => Ok(()),
        }
    }

    /// Adds a node to the cluster (through the leader).
    pub async fn join(&self, req: JoinRequest) -> Result<()> {
        check_name(&req.name).map_err(Error::BadRequest)?;
        self.on_leader("join", &req, |timeout| self.join_local(req.clone(), timeout)).await
    }

    /// Removes a member by name (through the leader).
    pub async fn remove(&self, req: RemoveRequest) -> Result<()> {
        self.on_leader("remove", &req, |timeout| self.remove_local(req.clone(), timeout)).await
    }

    /// Runs `local` here if this node leads, else forwards `body` to the leader's
    /// `/raft/<route>`; retries through elections until the request deadline.
    async fn on_leader<T, B, F, Fut>(&self, route: &str, body: &B, local: F) -> Result<T>
    where
        T: DeserializeOwned,
        B: Serialize,
        F: Fn(Duration) -> Fut,
        Fut: Future<Output = LeaderReply<T>>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        let mut why = String::from("no leader is elected");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Unavailable(format!("gave up after {:?}: {why}", self.config.request_timeout)));
            }
            let (leader_id, leader_name) = self.leader();
            let reply = if leader_id == Some(self.id) {
                local(remaining).await
            } else if let Some(name) = leader_name {
                self.forward(&name, route, body, remaining).await
            } else {
                Err(Refusal::NotLeader)
            };
            match reply {
                Ok(v) => return Ok(v),
                Err(Refusal::NotLeader) => {}
                Err(Refusal::Busy) => why = "a membership change is in progress".into(),
                Err(Refusal::Transient(msg)) => why = msg,
                Err(Refusal::Unavailable(msg)) => return Err(Error::Unavailable(msg)),
                Err(Refusal::Rejected(msg)) => return Err(Error::BadRequest(msg)),
            }
            tokio::time::sleep(RETRY_INTERVAL.min(remaining)).await;
        }
    }

    async fn forward<T: DeserializeOwned>(
        &self,
        leader: &str,
        route: &str,
        body: &impl Serialize,
        timeout: Duration,
    ) -> LeaderReply<T> {
        let path = format!("{PEER_PREFIX}/{route}");
        match self.client.post_json(leader, &path, body, timeout).await {
            Ok(resp) if resp.status.is_success() => resp.json::<LeaderReply<T>>().unwrap_or_else(|e| {
                Err(Refusal::Unavailable(format!("leader {leader} sent an unreadable answer: {e}")))
            }),
            Ok(resp) if resp.status == hyper::StatusCode::UNAUTHORIZED => Err(Refusal::Unavailable(format!(
                "leader {leader} refused this node's credentials: {} (do all nodes share the cluster token?)",
                resp.text()
            ))),
            // The leader judged the request itself (a bad name, a body over its limits).
            Ok(resp) if resp.status.is_client_error() => Err(Refusal::Rejected(resp.text())),
            Ok(resp) => Err(Refusal::Transient(format!("leader {leader} answered {}: {}", resp.status, resp.text()))),
            // Nothing was sent: the leader is down; an election will name another.
            Err(e @ SendError::Connect(..)) => Err(Refusal::Transient(e.to_string())),
            Err(e @ SendError::Timeout(..)) => Err(Refusal::Unavailable(format!(
                "no answer from leader {leader} in time; the outcome is unknown ({e})"
            ))),
            Err(e) => Err(Refusal::Transient(e.to_string())),
        }
    }

    /// The current leader's id and name, as this node believes.
    pub fn leader(&self) -> (Option<NodeId>, Option<String>) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader;
        let name = id.and_then(|id| m.membership_config.membership().get_node(&id).map(|n| n.name.clone()));
        (id, name)
    }

    /// Refuses if this node is not a leader in good standing.
    fn check_leader(&self) -> LeaderReply<()> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state != ServerState::Leader {
            return Err(Refusal::NotLeader);
        }
        let lease = self.config.quorum_lease();
        match m.millis_since_quorum_ack {
            Some(ms) if ms > lease.as_millis() as u64 => Err(Refusal::Unavailable(format!(
                "no quorum: leader {} has not heard from a majority for {ms} ms",
                self.name
            ))),
            _ => Ok(()),
        }
    }

    // ---- leader-side halves (also the targets of forwarded requests) ------------------

    /// Appends and commits a command on this node, which must be the leader.
    pub async fn propose_local(&self, cmd: Command, timeout: Duration) -> LeaderReply<Applied> {
        self.check_leader()?;
        debug!(name = cmd.name(), "propose");
        match tokio::time::timeout(timeout, self.raft.client_write(cmd)).await {
            Ok(Ok(resp)) => Ok(Applied { index: resp.log_id.index, result: resp.data }),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(Refusal::NotLeader),
            Ok(Err(e)) => Err(Refusal::Unavailable(e.to_string())),
            Err(_) => Err(Refusal::Unavailable(format!(
                "not committed within {timeout:?} (no quorum?); the write may still be applied later"
            ))),
        }
    }

    /// Confirms leadership with a quorum and returns the index a linearizable read must see.
    pub async fn read_index_local(&self, timeout: Duration) -> LeaderReply<Option<u64>> {
        self.check_leader()?;
        match tokio::time::timeout(timeout, self.raft.get_read_log_id()).await {
            Ok(Ok((read, _applied))) => Ok(read.map(|l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => Err(Refusal::NotLeader),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(Refusal::Unavailable(format!("no quorum: {e}")))
            }
            Ok(Err(e)) => Err(Refusal::Unavailable(e.to_string())),
            Err(_) => Err(Refusal::Unavailable(format!("no quorum confirmed leadership within {timeout:?}"))),
        }
    }

    /// Checks a command that arrived from a peer with the rules the public API applies to a
    /// client's request: clean names, content within one entry's size.
    pub fn check_forwarded(&self, cmd: &Command) -> Result<()> {
        for name in cmd.names() {
            names::validate(name)?;
        }
        let limit = (self.config.chunk_size as u64).min(self.config.max_body);
        if cmd.data_len() as u64 > limit {
            return Err(Error::TooLarge { limit });
        }
        Ok(())
    }

    /// Checks the next piece of a snapshot from the leader before openraft stores it: pieces
    /// must arrive in order and form a valid archive, or the piece is refused and the node
    /// keeps its state (openraft would treat a failed install as fatal).
    pub fn check_snapshot_chunk(&self, req: &InstallSnapshotRequest<TypeConfig>) -> std::result::Result<(), String> {
        let mut incoming = self.incoming_snapshot.lock().expect("snapshot check lock poisoned");
        if req.offset == 0 {
            *incoming = Some((req.meta.snapshot_id.clone(), Validator::default()));
        }
        let Some((id, validator)) = incoming.as_mut() else {
            return Err(format!("snapshot piece at offset {} without its beginning", req.offset));
        };
        if *id != req.meta.snapshot_id || validator.position() != req.offset {
            let want = validator.position();
            *incoming = None;
            return Err(format!("snapshot piece out of order (offset {}, expected {want})", req.offset));
        }
        let checked = validator.feed(&req.data).and_then(|()| if req.done { validator.finish() } else { Ok(()) });
        if checked.is_err() || req.done {
            *incoming = None;
        }
        checked.map_err(|e| format!("refusing snapshot {}: {e}", req.meta.snapshot_id))
    }

    /// Adds a learner and promotes it to voter; idempotent.
    pub async fn join_local(&self, req: JoinRequest, timeout: Duration) -> LeaderReply<()> {
        check_name(&req.name).map_err(Refusal::Rejected)?;
        self.check_leader()?;
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        if let Some((other, _)) = membership.nodes().find(|(id, n)| n.name == req.name && **id != req.id) {
            return Err(Refusal::Rejected(format!(
                "{} is already the name of member {other}; remove it first (POST /cluster/remove)",
                req.name
            )));
        }
        if membership.voter_ids().any(|id| id == req.id) {
            return Ok(());
        }
        info!(id = req.id, name = %req.name, "adding node");
        let node = PeerNode { name: req.name.clone() };
        let deadline = Instant::now() + timeout;
        let added = tokio::time::timeout(timeout, self.raft.add_learner(req.id, node, true)).await;
        membership_outcome(added)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([req.id]));
        membership_outcome(tokio::time::timeout(remaining, self.raft.change_membership(change, false)).await)
    }

    /// Removes a member; tells it so, so it stops campaigning.
    pub async fn remove_local(&self, req: RemoveRequest, timeout: Duration) -> LeaderReply<()> {
        self.check_leader()?;
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        let Some(id) = membership.nodes().find(|(_, n)| n.name == req.name).map(|(id, _)| *id) else {
            return Err(Refusal::Rejected(format!("no member is named {}", req.name)));
        };
        let is_voter = membership.voter_ids().any(|v| v == id);
        if is_voter && membership.voter_ids().count() == 1 {
            return Err(Refusal::Rejected(format!(
                "{} is the last voting member; a cluster cannot remove it",
                req.name
            )));
        }
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        info!(id, name = %req.name, "removing node");
        membership_outcome(tokio::time::timeout(timeout, self.raft.change_membership(change, false)).await)?;
        if id != self.id {
            let path = format!("{PEER_PREFIX}/removed?target={id}");
            if let Err(e) = self.client.post_json(&req.name, &path, &(), Duration::from_secs(1)).await {
                debug!(cause = %e, "could not tell the removed node");
            }
        }
        Ok(())
    }

    // ---- status -------------------------------------------------------------------------

    /// A snapshot of this node's view of the cluster.
    pub fn status(&self) -> Status {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let name_of = |id: &NodeId| membership.get_node(id).map(|n| n.name.clone()).unwrap_or_else(|| id.to_string());
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let committed = self.committed.load(Ordering::Relaxed);
        Status {
            name: self.name.clone(),
            id: self.id,
            state: format!("{:?}", m.state).to_lowercase(),
            leader: m.current_leader.as_ref().map(name_of),
            term: m.current_term,
            commit_index: committed.checked_sub(1),
            applied_index: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            snapshot_index: m.snapshot.map(|l| l.index),
            members: voters.iter().map(name_of).collect(),
            learners: membership.learner_ids().filter(|id| !voters.contains(id)).map(|id| name_of(&id)).collect(),
            millis_since_quorum_ack: if m.state == ServerState::Leader { m.millis_since_quorum_ack } else { None },
        }
    }
}

type MembershipResult<T> = std::result::Result<
    std::result::Result<T, RaftError<NodeId, ClientWriteError<NodeId, PeerNode>>>,
    tokio::time::error::Elapsed,
>;

fn membership_outcome<T>(r: MembershipResult<T>) -> LeaderReply<()> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(Refusal::NotLeader),
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_))))) => {
            Err(Refusal::Busy)
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(Refusal::Rejected(e.to_string()))
        }
        Ok(Err(e)) => Err(Refusal::Unavailable(e.to_string())),
        Err(_) => Err(Refusal::Unavailable("membership change did not commit in time".into())),
    }
}
