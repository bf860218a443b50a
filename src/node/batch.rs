//! Group commit of proposals on the leader: concurrent small writes share one log entry.
//!
//! openraft 0.9 makes every `client_write` its own entry, with its own append (and fsync) on
//! the leader and its own trip through the Raft core: under many clients the leader spent its
//! time on per-entry work, one entry at a time, while the disk and the network sat idle
//! between them. The batcher keeps at most [`IN_FLIGHT`] entries being committed; requests
//! that arrive meanwhile wait in a queue and go together as one `file:batch` entry when a slot
//! frees. A lone request goes alone, as its own command, so a single client waits no longer
//! than before and the log stays as readable. Each command in a batch keeps its own outcome
//! and request id (the state machine applies them one by one).

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::leader::Applied;
use super::{LeaderReply, Refusal};
use crate::raft::command::{Batch, Command};
use crate::raft::Raft;

/// Entries being committed at once. One: requests that arrive meanwhile form the next batch
/// (measured with 1, 2, 4 and 8 in flight: more only made the batches smaller and slower).
const IN_FLIGHT: usize = 1;
/// Most commands in one batch.
const MAX_COMMANDS: usize = 512;
/// Most bytes of contents in one batch, and the largest command batched at all (a bigger
/// one goes alone: batching it would delay the small ones behind it).
const MAX_BYTES: usize = 1 << 20;
/// Requests queued before new ones wait to be queued.
const QUEUE: usize = 4096;

type Job = (Command, oneshot::Sender<LeaderReply<Applied>>);

/// The queue of proposals waiting for a slot, and the task that commits them.
pub(crate) struct Batcher {
    jobs: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the committing task (on the current runtime).
    pub(crate) fn start(raft: Raft) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, queue));
        Batcher { jobs }
    }

    /// Whether `cmd` may share an entry: small contents only.
    pub(crate) fn takes(cmd: &Command) -> bool {
        !matches!(cmd, Command::Chunk(_) | Command::Batch(_)) && cmd.data_len() <= MAX_BYTES / 4
    }

    /// Proposes `cmd` with whatever else is waiting; answers once its entry is applied here.
    pub(crate) async fn propose(&self, cmd: Command) -> LeaderReply<Applied> {
        let (tx, rx) = oneshot::channel();
        let stopped = || Refusal::Unavailable("the node is stopping".into());
        self.jobs.send((cmd, tx)).await.map_err(|_| stopped())?;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn run(raft: Raft, mut queue: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        // While every slot is busy, requests pile up in the queue: the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.0.data_len();
        let mut jobs = vec![first];
        while jobs.len() < MAX_COMMANDS && bytes < MAX_BYTES {
            match queue.try_recv() {
                Ok(job) => {
                    bytes += job.0.data_len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(&raft, jobs).await;
            drop(slot);
        });
    }
}

/// Commits the jobs as one entry and hands each its own outcome.
async fn commit(raft: &Raft, jobs: Vec<Job>) {
    let (mut commands, replies): (Vec<Command>, Vec<_>) = jobs.into_iter().unzip();
    let cmd = if commands.len() == 1 {
        commands.remove(0)
    } else {
        crate::metrics::events()
            .batch_commands
            .observe(commands.len() as f64);
        Command::Batch(Batch { commands })
    };
    match raft.client_write(cmd).await {
        Ok(resp) => {
            let index = resp.log_id.index;
            let mut results = resp.data.into_iter();
            for reply in replies {
                let result = results.next().unwrap_or(Ok(()));
                let _ = reply.send(Ok(Applied {
                    index,
                    result,
                    here: true,
                }));
            }
        }
        Err(e) => {
            let not_leader = matches!(e, RaftError::APIError(ClientWriteError::ForwardToLeader(_)));
            for reply in replies {
                let refusal = if not_leader {
                    Refusal::NotLeader
                } else {
                    Refusal::Unavailable(e.to_string())
                };
                let _ = reply.send(Err(refusal));
            }
        }
    }
}
