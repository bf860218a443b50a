//! The request-id table that makes retries exactly-once: the results of recent requests, kept
//! for a window of time and answered again when a request comes back.
//!
//! Whether an entry applies must be a function of the log alone, or replicas would diverge, so
//! the table's clock is not the wall clock of any node: it is the newest time written in an
//! applied command (the proposers' `mtime`s). Ids older than [`WINDOW_NANOS`] by that clock are
//! forgotten; [`CAPACITY`] bounds memory if the clock stands still (a run of deletes, which
//! carry no time). The clock and the table travel in snapshots and in `sm/dedup` at a clean
//! stop, so every replica forgets the same ids at the same entry.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::error::CommandResult;
use crate::raft::command::RequestId;

/// How long (by the log's clock) a request id is remembered: a client retrying within this
/// window gets the first answer.
pub const WINDOW_NANOS: u64 = 10 * 60 * 1_000_000_000;

/// The most ids remembered, whatever the clock says.
pub const CAPACITY: usize = 100_000;

/// Recent request ids and their results, oldest first.
#[derive(Default, Debug)]
pub(crate) struct Dedup {
    results: HashMap<RequestId, CommandResult>,
    /// Each id with the clock when it was recorded; the clock only grows, so this is sorted.
    order: VecDeque<(RequestId, u64)>,
    /// The newest command time applied.
    clock: u64,
}

impl Dedup {
    /// The log's clock: the newest command time applied (nanoseconds since the epoch).
    pub(crate) fn clock(&self) -> u64 {
        self.clock
    }

    /// The first result of request `id`, if it is remembered.
    pub(crate) fn get(&self, id: RequestId) -> Option<&CommandResult> {
        self.results.get(&id)
    }

    /// Moves the clock to an applied command's time (never back) and forgets what fell out of
    /// the window.
    pub(crate) fn advance(&mut self, time: u64) {
        self.clock = self.clock.max(time);
        self.evict();
    }

    /// Remembers the first result of request `id`.
    pub(crate) fn insert(&mut self, id: RequestId, result: CommandResult) {
        if self.results.insert(id, result).is_none() {
            self.order.push_back((id, self.clock));
            self.evict();
        }
    }

    fn evict(&mut self) {
        while let Some(&(id, at)) = self.order.front() {
            let expired = at.saturating_add(WINDOW_NANOS) < self.clock;
            if !expired && self.order.len() <= CAPACITY {
                break;
            }
            self.order.pop_front();
            self.results.remove(&id);
        }
    }

    pub(crate) fn save(&self) -> Saved {
        let requests = self
            .order
            .iter()
            .filter_map(|&(id, at)| Some((id, self.results.get(&id)?.clone(), at)))
            .collect();
        Saved {
            clock: self.clock,
            requests,
        }
    }

    pub(crate) fn restore(saved: Saved) -> Dedup {
        let mut d = Dedup {
            clock: saved.clock,
            ..Dedup::default()
        };
        for (id, result, at) in saved.requests {
            if d.results.insert(id, result).is_none() {
                d.order.push_back((id, at));
            }
        }
        d.evict();
        d
    }
}

/// The table as saved in snapshots and `sm/dedup`. Reads the older form too (a bare list of
/// `[id, result]`, remembered by count), as if recorded at clock 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "AnySaved")]
pub struct Saved {
    /// The log's clock (nanoseconds since the epoch).
    pub clock: u64,
    /// Request id, first result, clock when recorded; oldest first.
    pub requests: Vec<(RequestId, CommandResult, u64)>,
}

#[derive(Deserialize)]
struct SavedFields {
    clock: u64,
    requests: Vec<(RequestId, CommandResult, u64)>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AnySaved {
    Now(SavedFields),
    Before(Vec<(RequestId, CommandResult)>),
}

impl From<AnySaved> for Saved {
    fn from(any: AnySaved) -> Saved {
        match any {
            AnySaved::Now(f) => Saved {
                clock: f.clock,
                requests: f.requests,
            },
            AnySaved::Before(items) => Saved {
                clock: 0,
                requests: items.into_iter().map(|(id, r)| (id, r, 0)).collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FileError;

    const MIN: u64 = 60 * 1_000_000_000;

    #[test]
    fn ids_are_kept_for_the_window_by_the_logs_clock() {
        let mut d = Dedup::default();
        d.advance(100 * MIN);
        d.insert(1, Ok(()));
        d.advance(105 * MIN);
        d.insert(2, Err(FileError::NotFound("x".into())));
        // 20,000 requests within the window: all remembered (the old limit was 10,000).
        for id in 10..20_010 {
            d.insert(id, Ok(()));
        }
        assert!(d.get(1).is_some() && d.get(10).is_some());
        d.advance(110 * MIN);
        assert!(d.get(1).is_some(), "exactly 10 minutes old is still inside");
        d.advance(110 * MIN + 1);
        assert!(d.get(1).is_none(), "older than the window: forgotten");
        assert_eq!(d.get(2), Some(&Err(FileError::NotFound("x".into()))));
        // A command stamped earlier (another proposer's clock) never moves the clock back.
        d.advance(MIN);
        assert!(d.get(2).is_some());
        d.advance(116 * MIN);
        assert!(d.get(2).is_none() && d.get(10).is_none());
    }

    #[test]
    fn capacity_bounds_memory_when_the_clock_stands_still() {
        let mut d = Dedup::default();
        for id in 0..(CAPACITY as u64 + 5) {
            d.insert(id, Ok(()));
        }
        assert!(d.get(4).is_none() && d.get(5).is_some());
        assert_eq!(d.order.len(), CAPACITY);
    }

    #[test]
    fn saved_and_restored_forgets_at_the_same_entry() {
        let mut d = Dedup::default();
        d.advance(10 * MIN);
        d.insert(1, Ok(()));
        d.advance(15 * MIN);
        d.insert(2, Ok(()));
        let text = serde_json::to_string(&d.save()).unwrap();
        let mut back = Dedup::restore(serde_json::from_str(&text).unwrap());
        for t in [MIN, 20 * MIN + 1] {
            d.advance(t);
            back.advance(t);
            assert_eq!(d.save(), back.save());
        }
        assert!(back.get(1).is_none() && back.get(2).is_some());
    }

    #[test]
    fn reads_the_older_list_form() {
        let saved: Saved = serde_json::from_str(r#"[[7,{"Ok":null}]]"#).unwrap();
        assert_eq!(saved.requests, vec![(7, Ok(()), 0)]);
        assert!(Dedup::restore(saved).get(7).is_some());
    }
}
