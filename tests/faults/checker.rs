//! Linearizability of one register (one file), by the Wing–Gong search with Lowe's
//! memoisation — the algorithm Knossos and Porcupine use.
//!
//! Each operation is an interval `[call, ret]` on one clock. The search walks the history in
//! time order and tries to linearize, at each point, one of the operations already called and
//! not yet linearized; it backtracks when it reaches an operation's return before that operation
//! could be placed. A memo of (set of linearized operations, register value) prunes the states
//! already explored, which keeps it fast for the few concurrent clients a test runs.
//!
//! An operation whose outcome is unknown (the client gave up) has `ret = u64::MAX`: it may take
//! effect at any point after its call, or never — placing it after everything else is the same
//! as never.

use std::collections::HashSet;

/// A register value: `None` when the file does not exist.
pub type Value = Option<u32>;

/// What an operation did to the register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Set the value (a write, or with `None` a delete that found the file).
    Write(Value),
    /// Observed the value (a read, or a delete answered "not found").
    Read(Value),
}

/// One completed or abandoned operation on the register.
#[derive(Clone, Copy, Debug)]
pub struct Op {
    pub call: u64,
    /// `u64::MAX` when the outcome is unknown.
    pub ret: u64,
    pub kind: Kind,
}

const NONE: usize = usize::MAX;

/// One call or return event in the doubly linked list the search lifts operations out of.
#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    /// The other event of the same operation.
    partner: usize,
    prev: usize,
    next: usize,
}

/// Checks that `ops`, starting from `init`, is linearizable; the error names the operation the
/// longest partial linearization could not place, with the operations overlapping it.
pub fn check(ops: &[Op], init: Value) -> Result<(), String> {
    // Entry 0 is the list head; then one (time, is_return, op) per event, in time order —
    // calls before returns at equal times, the lenient reading.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, op) in ops.iter().enumerate() {
        assert!(op.call <= op.ret, "operation {i} returns before it is called");
        events.push((op.call, false, i));
        events.push((op.ret, true, i));
    }
    events.sort();
    let mut entries = vec![Entry {
        op: NONE,
        is_call: false,
        partner: NONE,
        prev: NONE,
        next: NONE,
    }];
    let mut call_of = vec![NONE; ops.len()];
    for (k, &(_, is_return, op)) in events.iter().enumerate() {
        let idx = k + 1;
        let mut e = Entry {
            op,
            is_call: !is_return,
            partner: NONE,
            prev: idx - 1,
            next: if k + 1 < events.len() { idx + 1 } else { NONE },
        };
        if is_return {
            e.partner = call_of[op];
            entries[call_of[op]].partner = idx;
        } else {
            call_of[op] = idx;
        }
        entries.push(e);
    }
    entries[0].next = if events.is_empty() { NONE } else { 1 };

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Value)> = HashSet::new();
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut state = init;
    let mut entry = entries[0].next;
    let mut deepest = (0, 0);
    while entries[0].next != NONE {
        let e = entries[entry];
        if e.is_call {
            let (ok, next_state) = match ops[e.op].kind {
                Kind::Write(v) => (true, v),
                Kind::Read(v) => (v == state, state),
            };
            if ok {
                let mut with = linearized.clone();
                with[e.op / 64] |= 1 << (e.op % 64);
                if seen.insert((with.clone(), next_state)) {
                    stack.push((entry, state));
                    state = next_state;
                    linearized = with;
                    lift(&mut entries, entry);
                    entry = entries[0].next;
                    continue;
                }
            }
            entry = e.next;
        } else {
            // The deepest point the search reached is what a reader wants to see.
            if stack.len() >= deepest.0 {
                deepest = (stack.len(), e.op);
            }
            let Some((call, previous)) = stack.pop() else {
                return Err(explain(ops, deepest.1));
            };
            let op = entries[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = previous;
            unlift(&mut entries, call);
            entry = entries[call].next;
        }
    }
    Ok(())
}

/// Removes an operation's call and return events from the list (they keep their links).
fn lift(entries: &mut [Entry], call: usize) {
    let e = entries[call];
    entries[e.prev].next = e.next;
    if e.next != NONE {
        entries[e.next].prev = e.prev;
    }
    let r = entries[e.partner];
    entries[r.prev].next = r.next;
    if r.next != NONE {
        entries[r.next].prev = r.prev;
    }
}

/// Puts back what [`lift`] removed, in reverse order.
fn unlift(entries: &mut [Entry], call: usize) {
    let ret = entries[call].partner;
    let r = entries[ret];
    entries[r.prev].next = ret;
    if r.next != NONE {
        entries[r.next].prev = ret;
    }
    let e = entries[call];
    entries[e.prev].next = call;
    if e.next != NONE {
        entries[e.next].prev = call;
    }
}

fn explain(ops: &[Op], stuck: usize) -> String {
    let op = ops[stuck];
    let overlapping: Vec<String> = ops
        .iter()
        .filter(|o| o.call <= op.ret && op.call <= o.ret)
        .map(|o| format!("  {o:?}"))
        .collect();
    format!(
        "not linearizable: no order of the history places {op:?}; operations overlapping it:\n{}",
        overlapping.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(call: u64, ret: u64, v: u32) -> Op {
        Op {
            call,
            ret,
            kind: Kind::Write(Some(v)),
        }
    }
    fn r(call: u64, ret: u64, v: Option<u32>) -> Op {
        Op {
            call,
            ret,
            kind: Kind::Read(v),
        }
    }

    #[test]
    fn sequential_history_passes() {
        let h = [w(0, 1, 1), r(2, 3, Some(1)), w(4, 5, 2), r(6, 7, Some(2))];
        assert_eq!(check(&h, None), Ok(()));
    }

    #[test]
    fn concurrent_writes_may_land_in_either_order() {
        let h = [w(0, 10, 1), w(1, 9, 2), r(11, 12, Some(1)), r(13, 14, Some(1))];
        assert_eq!(check(&h, None), Ok(()));
        let h = [w(0, 10, 1), w(1, 9, 2), r(11, 12, Some(2))];
        assert_eq!(check(&h, None), Ok(()));
    }

    #[test]
    fn a_stale_read_is_caught() {
        // 2 was acknowledged before the read began, yet the read saw 1.
        let h = [w(0, 1, 1), w(2, 3, 2), r(4, 5, Some(1))];
        let err = check(&h, None).unwrap_err();
        assert!(err.contains("Read(Some(1))"), "{err}");
    }

    #[test]
    fn a_lost_write_is_caught() {
        // An acknowledged write of 2 that no later read sees.
        let h = [w(0, 1, 1), w(2, 3, 2), r(4, 5, Some(1)), r(6, 7, Some(1))];
        assert!(check(&h, None).is_err());
        // A value nobody wrote.
        assert!(check(&[w(0, 1, 1), r(2, 3, Some(9))], None).is_err());
        // A read flipping back to an older value.
        let h = [w(0, 1, 1), w(2, 10, 2), r(3, 4, Some(2)), r(5, 6, Some(1))];
        assert!(check(&h, None).is_err());
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let unknown = w(0, u64::MAX, 2);
        let h = [w(0, 1, 1), unknown, r(2, 3, Some(1)), r(100, 101, Some(2))];
        assert_eq!(check(&h, None), Ok(()));
        let h = [w(0, 1, 1), unknown, r(2, 3, Some(1)), r(100, 101, Some(1))];
        assert_eq!(check(&h, None), Ok(()));
        // But not before it was called.
        let h = [w(0, 1, 1), w(10, u64::MAX, 2), r(2, 3, Some(2))];
        assert!(check(&h, None).is_err());
    }

    #[test]
    fn deletes_are_writes_of_absence() {
        let h = [
            w(0, 1, 1),
            Op {
                call: 2,
                ret: 3,
                kind: Kind::Write(None),
            },
            r(4, 5, None),
            Op {
                call: 6,
                ret: 7,
                kind: Kind::Read(None),
            },
        ];
        assert_eq!(check(&h, Some(7)), Ok(()));
        assert!(check(&[r(0, 1, None)], Some(7)).is_err());
    }

    #[test]
    fn many_concurrent_operations_are_checked_quickly() {
        // 8 clients, 2,000 overlapping operations: the memo keeps this well under a second.
        let mut h = Vec::new();
        let mut value = 0;
        for round in 0..250u64 {
            let t = round * 10;
            for c in 0..8u64 {
                if c % 2 == 0 {
                    h.push(w(t + c, t + 9, (round * 8 + c) as u32));
                } else {
                    h.push(r(t + c, t + 9 + c, Some(value)));
                }
            }
            value = (round * 8 + 6) as u32;
        }
        // Round r's reads may see the last write of round r-1 (before their call) — or,
        // since they overlap this round's writes, one of those; the search must find it.
        h[1].kind = Kind::Read(None);
        h[3].kind = Kind::Read(None);
        h[5].kind = Kind::Read(None);
        h[7].kind = Kind::Read(None);
        let started = std::time::Instant::now();
        assert_eq!(check(&h, None), Ok(()));
        assert!(started.elapsed().as_secs() < 10);
    }
}
