//! Checks on peer messages before they reach openraft.
//!
//! openraft trusts its peers: a malformed message can reach the log store, and openraft
//! treats every storage error as fatal. The peer routes are guarded (cluster token, mutual
//! TLS), but a bug or a misconfigured peer must not stop a node either, so the shape of each
//! message is checked here and a bad one is refused with a 4xx before Raft sees it.

use openraft::raft::{AppendEntriesRequest, VoteRequest};

use super::{NodeId, StoredMembership, TypeConfig};

/// An AppendEntries must carry consecutive entries that follow `prev_log_id`, with terms
/// that never decrease and never exceed the sender's term.
pub(crate) fn check_append(req: &AppendEntriesRequest<TypeConfig>) -> Result<(), String> {
    let term = req.vote.leader_id().term;
    let first = req.prev_log_id.map_or(0, |l| l.index + 1);
    let mut last_term = req.prev_log_id.map_or(0, |l| l.leader_id.term);
    for (expected, entry) in (first..).zip(&req.entries) {
        let id = entry.log_id;
        if id.index != expected {
            return Err(format!(
                "entry index {} where {expected} was expected: entries must be consecutive",
                id.index
            ));
        }
        if id.leader_id.term < last_term || id.leader_id.term > term {
            return Err(format!(
                "entry {} has term {} out of order (sender's term {term})",
                id.index, id.leader_id.term
            ));
        }
        last_term = id.leader_id.term;
    }
    Ok(())
}

/// A vote may only be asked for by a member this node knows: a removed node or a stranger
/// must not disturb the cluster by forcing a new term.
pub(crate) fn check_vote(req: &VoteRequest<NodeId>, membership: &StoredMembership) -> Result<(), String> {
    let Some(candidate) = req.vote.leader_id().voted_for() else {
        return Err("vote request names no candidate".into());
    };
    if membership.membership().get_node(&candidate).is_none() {
        return Err(format!("node {candidate} is not a member of this cluster"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, LogId};
    use openraft::{CommittedLeaderId, EntryPayload, Vote};

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 0), index),
            payload: EntryPayload::Blank,
        }
    }

    fn append(prev: Option<(u64, u64)>, entries: Vec<Entry>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: prev.map(|(t, i)| LogId::new(CommittedLeaderId::new(t, 0), i)),
            entries,
            leader_commit: None,
        }
    }

    #[test]
    fn appends_must_be_consecutive_and_ordered() {
        check_append(&append(None, vec![entry(1, 0), entry(1, 1), entry(3, 2)])).unwrap();
        check_append(&append(Some((2, 9)), vec![entry(2, 10)])).unwrap();
        check_append(&append(Some((2, 9)), vec![])).unwrap();
        assert!(
            check_append(&append(Some((2, 9)), vec![entry(2, 11)])).is_err(),
            "gap"
        );
        assert!(
            check_append(&append(None, vec![entry(1, 0), entry(1, 0)])).is_err(),
            "repeat"
        );
        assert!(
            check_append(&append(None, vec![entry(2, 0), entry(1, 1)])).is_err(),
            "term goes back"
        );
        assert!(
            check_append(&append(None, vec![entry(4, 0)])).is_err(),
            "term beyond the sender's"
        );
    }
}
