//! Linearizable reads in rounds: concurrent reads on a node share one read-index round trip.
//!
//! A read is linearizable if it waits for a read index obtained by a request that *started
//! after the read began*. So a read that arrives while a round is in flight cannot use that
//! round's answer (it may have been decided before the read began); it joins the next round,
//! which starts as soon as the current one ends and serves every read that arrived meanwhile.
//! Under 16 readers a node makes about one round trip to the leader per round-trip time
//! instead of sixteen — what etcd does for its linearizable reads.
//!
//! No task of its own: one of the waiting reads drives each round. If that read is dropped
//! (its client went away), its guard hands the round over to another waiting read.

use std::future::Future;
use std::sync::Mutex;

use tokio::sync::watch;

/// The rounds of one node.
pub(crate) struct Rounds {
    /// std lock: held for a few assignments, never across an await.
    state: Mutex<State>,
    /// The last finished round and its read index (`None`: it failed).
    finished: watch::Sender<(u64, Option<Option<u64>>)>,
}

#[derive(Default)]
struct State {
    /// The number of the newest round started (rounds count from 1).
    started: u64,
    /// A round is in flight.
    running: bool,
}

/// Marks the round as no longer running when the read driving it ends, finished or dropped.
struct Driving<'a>(&'a Rounds);

impl Drop for Driving<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("rounds lock").running = false;
        // Wake the waiting reads: one of them drives the next round.
        self.0.finished.send_modify(|_| {});
    }
}

impl Default for Rounds {
    fn default() -> Self {
        Rounds {
            state: Mutex::default(),
            finished: watch::Sender::new((0, None)),
        }
    }
}

impl Rounds {
    /// The read index for a read beginning now: from a round started after this call, run
    /// by `ask` (one real read-index request). A failed round is not shared: each of its
    /// reads asks alone, to get its own answer or error.
    pub(crate) async fn read_index<F, Fut, E>(&self, ask: F) -> Result<Option<u64>, E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<u64>, E>>,
    {
        let mut finished = self.finished.subscribe();
        let needed = self.state.lock().expect("rounds lock").started + 1;
        loop {
            let round = {
                let (done, index) = *finished.borrow_and_update();
                if done >= needed {
                    return match index {
                        Some(index) => Ok(index),
                        None => ask().await,
                    };
                }
                let mut state = self.state.lock().expect("rounds lock");
                if state.running {
                    None
                } else {
                    state.running = true;
                    state.started += 1;
                    Some(state.started)
                }
            };
            let Some(round) = round else {
                // Someone else drives: wait for the round to end (or its driver to go).
                if finished.changed().await.is_err() {
                    return ask().await;
                }
                continue;
            };
            let driving = Driving(self);
            let result = ask().await;
            let shared = result.as_ref().ok().copied();
            self.finished.send_modify(|f| *f = (round.max(f.0), shared));
            drop(driving);
            return result;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Reads that arrive together share a round; a read that arrives during a round waits
    /// for the next one (whose answer reflects everything before it began).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_share_rounds_that_start_after_them() {
        let rounds = Arc::new(Rounds::default());
        let asked = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let ask = {
            let (asked, gate) = (asked.clone(), gate.clone());
            move || {
                let (asked, gate) = (asked.clone(), gate.clone());
                async move {
                    let n = asked.fetch_add(1, Ordering::SeqCst) + 1;
                    gate.acquire().await.unwrap().forget();
                    Ok::<_, ()>(Some(n * 100))
                }
            }
        };
        // The first read starts round 1 and holds it open.
        let first = tokio::spawn({
            let (rounds, ask) = (rounds.clone(), ask.clone());
            async move { rounds.read_index(ask).await }
        });
        while asked.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Ten reads arrive during round 1: they need round 2.
        let later: Vec<_> = (0..10)
            .map(|_| {
                let (rounds, ask) = (rounds.clone(), ask.clone());
                tokio::spawn(async move { rounds.read_index(ask).await })
            })
            .collect();
        // Each read subscribes and learns which round it needs in its first poll; wait until
        // all ten have (a read first polled after round 2 began would rightly need round 3).
        while rounds.finished.receiver_count() < 11 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(1);
        assert_eq!(first.await.unwrap(), Ok(Some(100)));
        gate.add_permits(1);
        for read in later {
            assert_eq!(
                read.await.unwrap(),
                Ok(Some(200)),
                "the round that began after them"
            );
        }
        assert_eq!(asked.load(Ordering::SeqCst), 2, "eleven reads, two round trips");
    }

    /// A dropped driver hands the round over; a failed round is asked again by each read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_or_failed_round_does_not_strand_the_others() {
        let rounds = Rounds::default();
        let never = || std::future::pending::<Result<Option<u64>, ()>>();
        let dropped =
            tokio::time::timeout(std::time::Duration::from_millis(20), rounds.read_index(never)).await;
        assert!(dropped.is_err());
        assert_eq!(
            rounds.read_index(|| async { Ok::<_, ()>(Some(7)) }).await,
            Ok(Some(7))
        );
        assert_eq!(
            rounds
                .read_index(|| async { Err::<Option<u64>, _>("no quorum") })
                .await,
            Err("no quorum")
        );
    }
}
