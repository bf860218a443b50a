//! Lease reads: a leader that a majority acknowledged a moment ago answers a read index
//! without another round of heartbeats.
//!
//! openraft 0.9 gives the leader a lease it does not use for reads: a voter that accepted a
//! message from the leader refuses every vote for the leader lease (the maximum election
//! timeout) after it arrived (`leader_lease.md` in openraft's docs). So if a majority accepted
//! messages the leader sent after instant `t`, no other leader can be elected before `t +
//! lease` by that majority's clocks, and every entry committed until then is in this leader's
//! log. (Survivors that find the leader's process gone campaign sooner, but only after `t +
//! window` and a heartbeat: see [`crate::raft::elections`].) Two events tell us such a `t`: a
//! read-index round (its heartbeats were sent after the round began) and a committed proposal
//! (its entry was sent after it was proposed). Until `t + window` — a quarter of the lease,
//! leaving three quarters for clock rate differences and scheduling delays — the leader's last
//! log index is a valid read index: it covers everything committed anywhere, and waiting until
//! it is applied makes the read linearizable, as etcd's lease-based reads are. Once the leader
//! has applied an entry of its own term, its applied index is valid too (and needs no wait):
//! every write is answered only after the leader of its term applied it, and whatever earlier
//! terms committed comes before this term's first entry — provided the leader has applied its
//! log as it was when the process started (one restarted in its term rebuilt its files from a
//! snapshot).
//!
//! The lease is per term: a new term needs its own acknowledgement. A voter that restarts
//! forgets when it last heard from the leader and could vote at once; so a starting node
//! refuses votes for one lease ([`Node::voting_allowed`](super::Node::voting_allowed)).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The newest acknowledged instant of the leader's current term.
#[derive(Default)]
pub(crate) struct Lease {
    /// (term, instant a majority acknowledged). std lock: two assignments, never across an
    /// await.
    granted: Mutex<Option<(u64, Instant)>>,
}

impl Lease {
    /// A majority accepted what the leader of `term` sent after `sent`.
    pub(crate) fn renew(&self, term: u64, sent: Instant) {
        let mut granted = self.granted.lock().expect("lease lock");
        match *granted {
            Some((t, at)) if t == term && at >= sent => {}
            _ if granted.is_some_and(|(t, _)| t > term) => {}
            _ => *granted = Some((term, sent)),
        }
    }

    /// Whether the leader of `term` is still within `window` of an acknowledgement.
    pub(crate) fn holds(&self, term: u64, window: Duration) -> bool {
        let granted = *self.granted.lock().expect("lease lock");
        granted.is_some_and(|(t, at)| t == term && at.elapsed() < window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_for_its_window_in_its_term_only() {
        let ms = Duration::from_millis;
        let lease = Lease::default();
        assert!(!lease.holds(3, ms(150)), "nothing acknowledged yet");
        lease.renew(3, Instant::now() - ms(100));
        assert!(lease.holds(3, ms(150)));
        assert!(
            !lease.holds(3, ms(50)),
            "acknowledged 100 ms ago: past a 50 ms window"
        );
        assert!(!lease.holds(4, ms(150)), "another term needs its own");
        lease.renew(3, Instant::now() - ms(400));
        assert!(
            lease.holds(3, ms(150)),
            "an older acknowledgement does not shorten it"
        );
        lease.renew(3, Instant::now());
        assert!(lease.holds(3, ms(50)), "a newer one extends it");
        lease.renew(2, Instant::now());
        assert!(
            lease.holds(3, ms(50)),
            "an older term's acknowledgement is ignored"
        );
        lease.renew(4, Instant::now() - ms(1000));
        assert!(
            !lease.holds(3, ms(150)) && !lease.holds(4, ms(150)),
            "a new term starts over"
        );
    }
}
