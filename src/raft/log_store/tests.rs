use std::io::Write as _;

use openraft::storage::{RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload};

use super::*;
use crate::raft::command::{Command, Data, Write};
use crate::store::StateMachine;

/// Builds the real file-backed stores in a fresh temp dir; the guard keeps it alive.
struct FileStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for FileStoreBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(dir.path()).expect("open log");
        let (sm, _) = StateMachine::open(dir.path()).expect("open sm");
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(FileStoreBuilder).expect("storage suite");
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 0), index),
        payload: EntryPayload::Normal(Command::Write(Write {
            filename: format!("f{index}"),
            data: Data(format!("v{index}").into_bytes()),
            mtime: 0,
            req: None,
            existing: false,
        })),
    }
}

async fn append(store: &mut LogStore, range: std::ops::Range<u64>, term: u64) {
    store
        .blocking_append(range.map(|i| entry(term, i)))
        .await
        .expect("append");
}

/// Appends raw bytes to the log file, as a crash or a disk might leave them.
fn append_raw(dir: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join(LOG_FILE))
        .unwrap();
    f.write_all(bytes).unwrap();
}

fn lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join(LOG_FILE))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn log_survives_reopen_with_truncate_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = LogStore::open(dir.path()).unwrap();
        append(&mut store, 0..10, 1).await;
        store.truncate(log_id(1, 7)).await.unwrap();
        append(&mut store, 7..9, 2).await;
        store.purge(log_id(1, 3)).await.unwrap();
    }
    let text = lines(dir.path());
    assert_eq!(text.len(), 5, "entries 4..=8 remain: {text:?}");
    assert!(
        text[0].contains(" 0000000000000004 0000000000000001 file:write "),
        "{}",
        text[0]
    );
    assert!(
        text[4].contains(" 0000000000000008 0000000000000002 "),
        "{}",
        text[4]
    );

    let mut store = LogStore::open(dir.path()).unwrap();
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(2, 8)));
    let got = store.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![4, 5, 6, 7, 8]
    );
    assert_eq!(got[3], entry(2, 7));
}

/// Entries read back from memory (the recent ones) are exactly those a fresh open decodes
/// from the file, across truncations and purges, with the memory bounded.
#[tokio::test]
async fn recent_entries_from_memory_match_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path()).unwrap();
    let n = RECENT_ENTRIES as u64 + 200;
    append(&mut store, 0..n, 1).await;
    store.truncate(log_id(1, n - 50)).await.unwrap();
    append(&mut store, n - 50..n - 20, 2).await;
    store.purge(log_id(1, n - 300)).await.unwrap();
    append(&mut store, n - 20..n, 2).await;
    let kept = store.shared.log.read().unwrap().recent.len();
    assert!(kept > 0 && kept <= RECENT_ENTRIES, "{kept} entries kept decoded");
    let mut from_file = LogStore::open(dir.path()).unwrap();
    assert!(from_file.shared.log.read().unwrap().recent.is_empty());
    for start in [
        0,
        n - 400,
        n - 300,
        n - 299,
        n - kept as u64 - 1,
        n - kept as u64,
        n - 51,
        n - 1,
        n,
    ] {
        for end in [start + 1, start + 30, n, u64::MAX] {
            let got = store.try_get_log_entries(start..end).await.unwrap();
            let want = from_file.try_get_log_entries(start..end).await.unwrap();
            assert_eq!(got, want, "entries {start}..{end}");
        }
        let got = store.reader().limited_get_log_entries(start, n).await.unwrap();
        assert_eq!(
            got,
            from_file
                .reader()
                .limited_get_log_entries(start, n)
                .await
                .unwrap()
        );
    }
    assert_eq!(
        store.try_get_log_entries(n - 30..n - 29).await.unwrap(),
        vec![entry(2, n - 30)]
    );
}

/// A leader's own appends are reported written before the fsync (it runs while they are
/// replicated) and the durable index follows; another leader's entries are reported only
/// once synced, because the follower's answer is its promise. Which is which follows the
/// saved vote: this node's own, committed, means it leads.
#[tokio::test]
async fn only_a_leaders_own_appends_go_ahead_of_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path()).unwrap();
    let me = 7;
    store.set_node_id(me).unwrap();
    let leading = |store: &LogStore| store.shared.leading.load(Ordering::SeqCst);
    let durable = store.reader().durable();
    assert_eq!(durable.below(), 0);
    assert!(!leading(&store));
    // Not leading: the flusher moves the durable index before it answers.
    append(&mut store, 0..1, 1).await;
    assert_eq!(durable.below(), 1);
    store.save_vote(&Vote::new(2, me)).await.unwrap();
    assert!(!leading(&store), "a candidate does not lead");
    store.save_vote(&Vote::new_committed(2, me)).await.unwrap();
    assert!(leading(&store));
    append(&mut store, 1..3, 2).await;
    durable.wait(2, std::time::Duration::from_secs(10)).await.unwrap();
    // Another node's vote (a new leader): appends wait for the disk again.
    store.save_vote(&Vote::new_committed(3, me + 1)).await.unwrap();
    assert!(!leading(&store));
    store.save_vote(&Vote::new_committed(4, me)).await.unwrap();
    store.truncate(log_id(2, 2)).await.unwrap();
    assert_eq!(durable.below(), 2, "a truncation takes back what it cut");
    drop(store);
    // A restart reads the vote back once told whose node it is; what the log holds at
    // open is synced.
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.reader().durable().below(), 2);
    assert!(!leading(&store));
    store.set_node_id(me).unwrap();
    assert!(leading(&store));
}

/// A leader's own appends are answered before their fsync (see `durable`), so the state
/// machine is where that is made up for: nothing is applied, and so nothing answered, read
/// or snapshotted, before its entry is on disk in the log.
#[tokio::test]
async fn nothing_is_applied_before_its_entry_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sm, _) = StateMachine::open(dir.path()).unwrap();
    let durable = Durable::new(1);
    sm.wait_for_log(durable.clone());
    let generation = durable.generation();
    let mut apply = tokio::spawn(async move {
        let results = sm.apply((0..3).map(|i| entry(1, i))).await;
        (sm, results)
    });
    let waited = std::time::Duration::from_millis(500);
    assert!(
        tokio::time::timeout(waited, &mut apply).await.is_err(),
        "applied entries 1 and 2 before they were on disk"
    );
    assert!(
        !dir.path().join("files/f0").exists(),
        "nothing of the batch is applied early"
    );
    durable.synced(generation, 3);
    let (_sm, results) = apply.await.unwrap();
    assert_eq!(results.unwrap(), vec![vec![Ok(())]; 3]);
    assert_eq!(std::fs::read(dir.path().join("files/f2")).unwrap(), b"v2");
}

#[tokio::test]
async fn reads_are_capped_in_bytes_but_never_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path()).unwrap();
    let big = |i| Entry {
        log_id: log_id(1, i),
        payload: EntryPayload::Normal(Command::Write(Write {
            filename: "big".into(),
            data: Data(vec![b'x'; (MAX_READ_BYTES / 2) as usize]),
            mtime: 0,
            req: None,
            existing: false,
        })),
    };
    store.blocking_append((0..4).map(big)).await.unwrap();
    let mut reader = store.reader();
    let got = reader.limited_get_log_entries(0, 4).await.unwrap();
    assert_eq!(
        got.len(),
        1,
        "two half-budget entries plus line overhead exceed the budget"
    );
    assert_eq!(reader.try_get_log_entries(0..4).await.unwrap().len(), 4);
}

#[tokio::test]
async fn torn_last_line_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    append(&mut LogStore::open(dir.path()).unwrap(), 0..3, 1).await;
    append_raw(dir.path(), b"0badc0de 0000000000000003 00000000000");
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(
        store.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1, 2))
    );
    assert_eq!(lines(dir.path()).len(), 3, "torn bytes are cut from the file");
    append(&mut store, 3..4, 1).await;
    assert_eq!(
        LogStore::open(dir.path())
            .unwrap()
            .get_log_state()
            .await
            .unwrap()
            .last_log_id,
        Some(log_id(1, 3))
    );
}

/// Pages of the last appends reaching the disk out of order: a zero-filled page before lines
/// that did land. Nothing from the zeros on can have been synced, so it is all a torn tail.
#[tokio::test]
async fn zeros_before_the_last_line_are_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    append(&mut LogStore::open(dir.path()).unwrap(), 0..6, 1).await;
    let path = dir.path().join(LOG_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let third: usize = lines(dir.path())[..3].iter().map(|l| l.len() + 1).sum();
    let fourth_len = lines(dir.path())[3].len();
    bytes[third..third + fourth_len].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let store = LogStore::open(dir.path());
    let mut store = store.expect("a torn tail must not stop the node");
    assert_eq!(
        store.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1, 2)),
        "entries from the zeros on are dropped, the lines after them too"
    );
    assert_eq!(lines(dir.path()).len(), 3);
    append(&mut store, 3..4, 2).await;
    assert_eq!(lines(dir.path()).len(), 4);
}

/// Garbage (no zeros) with only more damage after it is a torn tail; with a valid line after
/// it, it is damage inside synced data and refused (below).
#[tokio::test]
async fn garbage_to_the_end_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    append(&mut LogStore::open(dir.path()).unwrap(), 0..3, 1).await;
    append_raw(dir.path(), b"stale garbage line\nmore of it\nand the end");
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(
        store.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1, 2))
    );
}

#[tokio::test]
async fn damage_before_the_end_refuses_to_load() {
    let dir = tempfile::tempdir().unwrap();
    append(&mut LogStore::open(dir.path()).unwrap(), 0..5, 1).await;
    let path = dir.path().join(LOG_FILE);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("\"v2\"", "\"v9\"", 1);
    std::fs::write(&path, text).unwrap();
    let err = LogStore::open(dir.path())
        .err()
        .expect("corruption must be refused")
        .to_string();
    assert!(
        err.contains(&format!("{}:3", path.display())),
        "names file and line: {err}"
    );
    assert!(err.contains("index 2"), "names the index: {err}");
    assert!(err.contains("checksum"), "{err}");
}

#[tokio::test]
async fn retried_commands_are_answered_not_reapplied() {
    use crate::raft::command::Delete;
    let dir = tempfile::tempdir().unwrap();
    let (mut sm, _) = StateMachine::open(dir.path()).unwrap();
    let delete = |index, req| Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Command::Delete(Delete {
            filename: "f0".into(),
            req: Some(req),
        })),
    };
    // f0 exists; the delete is proposed, then retried with the same id after an unclear outcome.
    let results = sm
        .apply([entry(1, 0), delete(1, 42), delete(2, 42), delete(3, 43)])
        .await
        .unwrap();
    assert_eq!(results[1], [Ok(())]);
    assert_eq!(
        results[2],
        [Ok(())],
        "the retry gets the first answer, not NotFound"
    );
    assert!(
        matches!(results[3][..], [Err(crate::error::FileError::NotFound(_))]),
        "a new request is applied"
    );

    // A batch: each command its own outcome, retries recognised inside it too.
    use crate::raft::command::{Batch, Data, Write};
    let write = |name: &str, req| {
        Command::Write(Write {
            filename: name.into(),
            data: Data(b"b".to_vec()),
            mtime: 1,
            req: Some(req),
            existing: false,
        })
    };
    let batch = Entry {
        log_id: log_id(1, 4),
        payload: EntryPayload::Normal(Command::Batch(Batch {
            commands: vec![
                write("g", 50),
                write("f0/under-a-file-gone", 51),
                Command::Delete(crate::raft::command::Delete {
                    filename: "f0".into(),
                    req: Some(42),
                }),
                write("h", 52),
                // A delete sets its inode aside at its temp path; the next new file must not
                // be created there (each command of a batch has its own temp name).
                Command::Delete(crate::raft::command::Delete {
                    filename: "g".into(),
                    req: Some(53),
                }),
                Command::Patch(crate::raft::command::Patch {
                    filename: "p".into(),
                    layout: crate::raft::command::Layout {
                        cut: None,
                        size: 1,
                        zeros: vec![],
                    },
                    writes: vec![crate::raft::command::Piece {
                        offset: 0,
                        data: Data(b"b".to_vec()),
                    }],
                    mtime: 1,
                    req: Some(56),
                    existing: false,
                }),
                write("i", 54),
                write("j", 55),
            ],
        })),
    };
    let results = sm.apply([batch, entry(1, 5)]).await.unwrap();
    assert_eq!(results.len(), 2, "one outcome list per entry");
    assert_eq!(results[0].len(), 8, "one outcome per command");
    assert!(results[0].iter().all(|r| r.is_ok()), "{:?}", results[0]);
    assert_eq!(results[0][0], Ok(()));
    assert_eq!(
        results[0][1],
        Ok(()),
        "f0 is gone, so its name can be a directory"
    );
    assert_eq!(results[0][2], Ok(()), "request 42 again: the first answer");
    assert_eq!(results[0][3], Ok(()));
    assert_eq!(results[1], [Ok(())]);
    for name in ["h", "p", "i", "j", "f0/under-a-file-gone"] {
        assert_eq!(std::fs::read(dir.path().join("files").join(name)).unwrap(), b"b");
    }
    assert!(!dir.path().join("files/g").exists());
    // The spare inodes stay usable: more new files, one entry each.
    let more: Vec<Entry> = (6..12)
        .map(|i| Entry {
            log_id: log_id(1, i),
            payload: EntryPayload::Normal(write(&format!("n{i}"), 100 + i)),
        })
        .collect();
    sm.apply(more).await.unwrap();
    for i in 6..12 {
        assert_eq!(
            std::fs::read(dir.path().join(format!("files/n{i}"))).unwrap(),
            b"b"
        );
    }
}

#[tokio::test]
async fn state_machine_resumes_from_its_marker() {
    let dir = tempfile::tempdir().unwrap();
    let open = || StateMachine::open(dir.path()).unwrap().0;
    let mut sm = open();
    let results = sm.apply((0..3).map(|i| entry(1, i))).await.unwrap();
    assert_eq!(results, vec![vec![Ok(())]; 3]);
    sm.shutdown_handle().mark_clean().unwrap();
    drop(sm);
    // After a clean stop the files and marker are trusted.
    let mut sm = open();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 2)));
    assert_eq!(std::fs::read(dir.path().join("files/f1")).unwrap(), b"v1");

    // After a crash (no clean stop) they are rebuilt from the newest snapshot; openraft then
    // re-applies the log after it.
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 2)));
    sm.apply((3..5).map(|i| entry(1, i))).await.unwrap();
    std::fs::write(dir.path().join("files/stray"), b"written but never applied").unwrap();
    drop(sm);
    let mut sm = open();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 2)), "back to the snapshot");
    assert_eq!(std::fs::read(dir.path().join("files/f2")).unwrap(), b"v2");
    assert!(!dir.path().join("files/f3").exists() && !dir.path().join("files/stray").exists());
    sm.apply((3..5).map(|i| entry(1, i))).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("files/f4")).unwrap(), b"v4");
}

#[tokio::test]
async fn retries_are_recognised_after_a_clean_restart() {
    use crate::raft::command::Delete;
    let dir = tempfile::tempdir().unwrap();
    let delete = |index, req| Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Command::Delete(Delete {
            filename: "f0".into(),
            req: Some(req),
        })),
    };
    let (mut sm, _) = StateMachine::open(dir.path()).unwrap();
    let results = sm.apply([entry(1, 0), delete(1, 42)]).await.unwrap();
    assert_eq!(results[1], [Ok(())]);
    sm.shutdown_handle().mark_clean().unwrap();
    drop(sm);
    // No snapshot holds request 42; after a clean stop nothing is replayed. A retry that
    // commits after the restart must still get the first answer, as on every other replica.
    let (mut sm, _) = StateMachine::open(dir.path()).unwrap();
    let results = sm.apply([delete(2, 42)]).await.unwrap();
    assert_eq!(
        results[0],
        [Ok(())],
        "the retry is recognised, not applied again (NotFound)"
    );
}

#[test]
fn an_unreadable_snapshot_is_set_aside_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let snapshots = dir.path().join("snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    std::fs::write(snapshots.join("1-5-abc.snap"), b"damaged").unwrap();
    std::fs::write(snapshots.join("build-0000000000000001"), b"left by a crash").unwrap();
    let (_sm, _) = StateMachine::open(dir.path()).unwrap();
    assert!(!snapshots.join("1-5-abc.snap").exists());
    assert_eq!(
        std::fs::read(snapshots.join("1-5-abc.snap.bad")).unwrap(),
        b"damaged"
    );
    assert!(
        !snapshots.join("build-0000000000000001").exists(),
        "leftovers are cleaned up"
    );
    drop(_sm);
    let (_sm, _) = StateMachine::open(dir.path()).unwrap();
    assert!(
        snapshots.join("1-5-abc.snap.bad").exists(),
        "and kept across starts"
    );
}

/// A client that dies mid-upload leaves staged chunks with no commit or abort; an hour of the
/// log's clock later they are dropped, at an entry every replica applies alike.
#[tokio::test]
async fn abandoned_uploads_are_reclaimed_by_the_logs_clock() {
    use crate::raft::command::Chunk;
    use crate::store::state_machine::{RECLAIM_EVERY, UPLOAD_WINDOW_NANOS};
    let dir = tempfile::tempdir().unwrap();
    let (mut sm, _) = StateMachine::open(dir.path()).unwrap();
    let at = |index, time: u64| Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Command::Write(Write {
            filename: "clock".into(),
            data: Data(Vec::new()),
            mtime: time,
            req: None,
            existing: false,
        })),
    };
    let chunk = |index, upload| Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Command::Chunk(Chunk {
            upload,
            seq: 0,
            data: Data(b"piece".to_vec()),
        })),
    };
    let staged = |upload: u64| dir.path().join(format!("sm/uploads/{upload:016x}")).exists();
    let t0 = 1_000 * UPLOAD_WINDOW_NANOS;
    let r = RECLAIM_EVERY;
    sm.apply([at(1, t0), chunk(2, 7)]).await.unwrap();
    // Within the window: kept at the check.
    sm.apply([at(r - 1, t0 + UPLOAD_WINDOW_NANOS), chunk(r, 8)])
        .await
        .unwrap();
    assert!(staged(7) && staged(8));
    // Past the window for upload 7 (stamped at t0), not for 8 (stamped later): only 7 goes,
    // and only at the next check.
    sm.apply([at(r + 1, t0 + UPLOAD_WINDOW_NANOS + 1)]).await.unwrap();
    assert!(staged(7), "dropped only at a check entry");
    sm.apply([at(2 * r, t0 + UPLOAD_WINDOW_NANOS + 1)]).await.unwrap();
    assert!(!staged(7) && staged(8));
}
