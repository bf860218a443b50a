//! The consensus door (`Node`) on in-process clusters whose links the tests cut: forwarding to
//! the leader from any node, refusals within the caller's deadline, and the quorum guard of a
//! leader cut off from its followers (Raft §6.4: a leader that cannot reach a majority must
//! not acknowledge anything). Waits are on Raft metrics, never fixed sleeps.

#[path = "common/inproc.rs"]
mod inproc;

use std::time::{Duration, Instant};

use bytes::Bytes;
use inproc::{InProc, WAIT};
use openraft::ServerState;
use raftd::error::Error;

fn fast(config: &mut raftd::config::Config) {
    config.request_timeout = Duration::from_millis(1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_reads_through_followers_reach_the_leader() {
    let c = InProc::start(3, fast).await;
    let leader = c.leader().await;
    for f in c.others(leader) {
        let name = format!("from-{f}");
        c.node(f)
            .write_file(&name, Bytes::from(name.clone()))
            .await
            .unwrap();
        // Acknowledged means applied on the answering node: its local files show it at once.
        assert_eq!(c.node(f).store().read(&name).unwrap(), name.as_bytes());
        for reader in 0..3 {
            c.node(reader).read_barrier().await.unwrap();
            assert_eq!(
                c.node(reader).store().read(&name).unwrap(),
                name.as_bytes(),
                "read on {reader}"
            );
        }
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_the_leader_refuses_within_its_deadline() {
    let c = InProc::start(3, fast).await;
    let leader = c.leader().await;
    let f = c.others(leader)[0];
    c.cut(f, leader);
    let started = Instant::now();
    let err = c
        .node(f)
        .write_file("lost", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(3000),
        "{took:?}"
    );
    // The others still work; once healed, the follower does too and has caught up.
    let other = c.others(leader).into_iter().find(|&o| o != f).unwrap();
    c.node(other)
        .write_file("kept", Bytes::from_static(b"y"))
        .await
        .unwrap();
    c.heal(f, leader);
    c.node(f).read_barrier().await.unwrap();
    assert_eq!(c.node(f).store().read("kept").unwrap(), b"y");
    assert!(
        c.node(f).store().read("lost").is_err(),
        "a refused write was not applied"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_refuses_at_once_and_the_majority_moves_on() {
    let c = InProc::start(3, fast).await;
    let old = c.leader().await;
    for f in c.others(old) {
        c.cut(old, f);
    }
    // Wait (on its metrics) until the old leader's quorum lease has run out.
    let lease = c.node(old).config().quorum_lease().as_millis() as u64;
    c.node(old)
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.millis_since_quorum_ack.is_some_and(|ms| ms > lease),
            "the quorum lease to lapse",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let err = c
        .node(old)
        .write_file("split-brain", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no quorum"), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once, not after the timeout"
    );
    assert!(matches!(
        c.node(old).read_barrier().await,
        Err(Error::Unavailable(_))
    ));

    // The majority elects a new leader and accepts writes.
    let survivor = c.others(old)[0];
    let new = loop {
        let seen = c.leader_seen_by(survivor).await;
        if seen != old {
            break seen;
        }
        c.node(survivor)
            .raft()
            .wait(Some(WAIT))
            .metrics(
                |m| m.current_leader != Some(old as u64 + 1),
                "a leader other than the isolated one",
            )
            .await
            .unwrap();
    };
    c.node(survivor)
        .write_file("majority", Bytes::from_static(b"y"))
        .await
        .unwrap();
    // Healed, the old leader steps down, catches up, and never applied its refused write.
    for f in c.others(old) {
        c.heal(old, f);
    }
    c.node(old)
        .raft()
        .wait(Some(WAIT))
        .state(ServerState::Follower, "the old leader to step down")
        .await
        .unwrap();
    c.node(old).read_barrier().await.unwrap();
    assert_eq!(c.node(old).store().read("majority").unwrap(), b"y");
    assert!(c.node(old).store().read("split-brain").is_err());
    assert_ne!(new, old);
    c.stop().await;
}

/// A directory listing on a node's FUSE mount begins with the read barrier, like an open: a
/// follower cut off from the leader refuses to list (EIO) instead of showing a listing without
/// what the cluster committed meanwhile, and lists it once the link is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_on_a_mount_sees_what_others_committed() {
    if !std::path::Path::new("/dev/fuse").exists() || unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: FUSE mounts need /dev/fuse and root");
        return;
    }
    let c = InProc::start(3, |config| {
        fast(config);
        let mount = std::path::PathBuf::from(format!("{}.mnt", config.data_dir.display()));
        std::fs::create_dir_all(&mount).unwrap();
        config.mount = Some(mount);
    })
    .await;
    let leader = c.leader().await;
    let f = c.others(leader)[0];
    let mount = c.tmp.path().join(format!("node.{}.mnt", f + 1));
    let list = move || {
        let mount = mount.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::read_dir(&mount).map(|d| {
                let mut names: Vec<String> =
                    d.map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
                names.sort();
                names
            })
        })
    };
    assert_eq!(list().await.unwrap().unwrap(), Vec::<String>::new());
    c.cut(f, leader);
    c.node(leader)
        .write_file("fresh", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let refused = list().await.unwrap().unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EIO), "{refused}");
    c.heal(f, leader);
    let deadline = Instant::now() + WAIT;
    loop {
        match list().await.unwrap() {
            Ok(names) if names == ["fresh"] => break,
            other => assert!(Instant::now() < deadline, "{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_follow_the_raft_core() {
    let c = InProc::start(3, fast).await;
    let leader = c.leader().await;
    let f = c.others(leader)[0];
    let node = c.node(f);
    node.raft()
        .wait(Some(WAIT))
        .metrics(|m| m.current_leader.is_some(), "a known leader")
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while node.readiness().is_err() {
        assert!(Instant::now() < deadline, "never ready: {:?}", node.readiness());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.health(), Ok(()));

    // Once its Raft core stops, the node is neither healthy nor ready (the server then stops
    // listening too: a fatal error ends the process).
    node.raft().shutdown().await.unwrap();
    let why = node.health().unwrap_err();
    assert!(why.contains("stopped") || why.contains("shutting down"), "{why}");
    assert!(node.readiness().is_err());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_cut_off_without_slowing_the_cluster() {
    let c = InProc::start(1, |_| {}).await;
    let node = c.node(0).clone();
    c.leader().await;
    let mut events = node.watch("", None).unwrap();
    let total = raftd::node::WATCH_QUEUE + 50;
    let started = Instant::now();
    for i in 0..total {
        node.write_file(&format!("k{}", i % 10), Bytes::from("v"))
            .await
            .unwrap();
    }
    println!("{total} writes with a stalled watcher: {:?}", started.elapsed());
    // The queue filled up to its bound, then the watcher ended it with a final event.
    let mut changes = 0;
    let last = loop {
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
            Some(raftd::node::WatchEvent::Change(_)) => changes += 1,
            Some(end) => break end,
            None => panic!("the watch ended without a final event"),
        }
    };
    assert!(
        matches!(last, raftd::node::WatchEvent::End { kind: "cutoff", .. }),
        "{last:?}"
    );
    assert_eq!(changes, raftd::node::WATCH_QUEUE, "bounded at the queue's size");
    assert!(events.recv().await.is_none(), "nothing after the final event");
    c.stop().await;
}
