//! Multi-node behaviour of real `raftd` processes on loopback: replication through any node,
//! reads, failures (killed leader, lost quorum, isolated leader, crashes under load), restart,
//! snapshot catch-up, log verification, membership.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const FAST_TIMEOUT: &[&str] = &["--request-timeout-ms", "2000"];

#[test]
fn writes_through_any_node_reach_every_replica() {
    let mut c = Cluster::start(3, &["--chunk-size", "4096"]);
    let leader = c.wait_leader();
    let f = c.followers(leader)[0];

    // A write through a follower is forwarded and acknowledged after commit, once the
    // answering node has applied it: its local files show it at once.
    assert_eq!(c.nodes[f].post("/files/foo", b"BAR").0, 200);
    assert_eq!(
        c.nodes[f].get("/files/foo?consistency=stale"),
        (200, b"BAR".to_vec())
    );
    for i in 0..3 {
        assert_eq!(
            c.nodes[i].get("/files/foo"),
            (200, b"BAR".to_vec()),
            "linearizable read on node {i}"
        );
        c.wait_replicated(i, "foo", b"BAR");
    }

    // Directories are created implicitly and listed; binary bodies stay byte-identical; a file
    // larger than one entry is replicated in chunks.
    let binary: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let large: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    assert_eq!(c.nodes[leader].post("/files/dir/sub/bin", &binary).0, 200);
    assert_eq!(c.nodes[f].post("/files/dir/large", &large).0, 200);
    for i in 0..3 {
        c.wait_replicated(i, "dir/sub/bin", &binary);
        c.wait_replicated(i, "dir/large", &large);
        let on_disk = std::fs::read(c.nodes[i].dir.join("files/dir/large")).unwrap();
        assert!(
            on_disk == large,
            "node {i} stores the exact bytes as a local file"
        );
    }
    assert_eq!(c.nodes[f].get("/files/dir"), (200, b"large\nsub/\n".to_vec()));
    assert_eq!(c.nodes[f].get("/files"), (200, b"dir/\nfoo\n".to_vec()));

    // PUT replaces; DELETE removes (404 afterwards, and 404 for a missing file).
    assert_eq!(
        http(&c.nodes[f].name, "PUT", "/files/foo", b"BAZ").unwrap().0,
        200
    );
    assert_eq!(c.nodes[leader].get("/files/foo"), (200, b"BAZ".to_vec()));
    assert_eq!(c.nodes[f].delete("/files/foo").0, 200);
    for i in 0..3 {
        assert_eq!(c.nodes[i].get("/files/foo").0, 404);
    }
    assert_eq!(c.nodes[f].delete("/files/foo").0, 404);
    assert_eq!(c.nodes[f].delete("/files/dir/sub/bin").0, 200);
    assert_eq!(
        c.nodes[f].delete("/files/dir/sub").0,
        200,
        "empty directories can be deleted"
    );
    assert_eq!(
        c.nodes[f].delete("/files/dir").0,
        409,
        "non-empty directories cannot"
    );

    // The log is served over HTTP in the file's own format.
    let (code, log) = c.nodes[f].get("/log");
    assert_eq!(code, 200);
    let log = String::from_utf8(log).unwrap();
    assert_eq!(log, read_data_file(&c.nodes[f].dir, "log"));
    assert!(
        log.lines()
            .any(|l| l.contains(" file:write {\"filename\":\"foo\",\"content\":\"BAR\"")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains(" file:chunk {")),
        "large file went in chunks"
    );
    assert!(log
        .lines()
        .any(|l| l.contains(" file:delete {\"filename\":\"foo\"")));

    let status = c.nodes[f].status().unwrap();
    assert_eq!(status["state"], "follower");
    assert_eq!(status["leader"], c.nodes[leader].name.as_str());
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    assert!(status["term"].as_u64().unwrap() >= 1);
    assert!(status["commit_index"].as_u64().unwrap() >= status["applied_index"].as_u64().unwrap() - 1);
}

#[test]
fn bad_requests_are_refused_clearly() {
    let c = Cluster::start(1, &["--max-body", "1000"]);
    let n = &c.nodes[0];
    for path in [
        "/files/../escape",
        "/files/a/../../escape",
        "/files/%2e%2e/escape",
        "/files/..%2Fescape",
        "/files/a//b",
        "/files/a/./b",
        "/files/a/",
        "/files/nul%00byte",
        "/files//abs",
    ] {
        let (code, body) = n.post(path, b"x");
        assert_eq!(code, 400, "{path}: {}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("invalid path"), "{path}");
        assert_eq!(n.get(path).0, 400, "GET {path}");
    }
    let long = format!("/files/{}", "x".repeat(300));
    assert_eq!(n.post(&long, b"x").0, 400);
    assert!(!c.tmp.path().join("escape").exists() && !n.dir.join("escape").exists());

    // The node's own files cannot be touched through the API.
    assert_eq!(n.post("/files/log", b"not the raft log").0, 200);
    assert_eq!(n.post("/files/info", b"not the identity").0, 200);
    assert!(
        read_data_file(&n.dir, "log").contains("raft:config"),
        "the Raft log is intact"
    );
    assert!(
        read_data_file(&n.dir, "info").contains("\"id\""),
        "the identity is intact"
    );
    assert_eq!(n.get("/files/log"), (200, b"not the raft log".to_vec()));

    let (code, body) = n.post("/files/big", &vec![b'x'; 1001]);
    assert_eq!(code, 413, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("limit of 1000 bytes"));
    assert_eq!(n.post("/files/file", b"x").0, 200);
    let (code, body) = n.post("/files/file/child", b"x");
    assert_eq!(
        (code, String::from_utf8_lossy(&body).trim()),
        (409, "file/child: not a directory")
    );
    assert_eq!(n.get("/files/missing").0, 404);
}

#[test]
fn linearizable_reads_see_every_acknowledged_write() {
    let mut c = Cluster::start(3, &["-v"]);
    let leader = c.wait_leader();
    let followers = c.followers(leader);
    for i in 0..60 {
        let (writer, reader) = (followers[i % 2], followers[(i + 1) % 2]);
        let value = format!("v{i}");
        assert_eq!(c.nodes[writer].post("/files/counter", value.as_bytes()).0, 200);
        assert_eq!(
            c.nodes[reader].get("/files/counter"),
            (200, value.into_bytes()),
            "read {i} on another follower"
        );
    }
    // -v shows the traffic between nodes.
    assert!(
        c.nodes[leader].logs().contains("send append"),
        "{}",
        c.nodes[leader].logs()
    );
    assert!(c.nodes[followers[0]].logs().contains("recv append"));
}

/// A survivor that finds nothing listening at its dead leader's address campaigns at once,
/// instead of waiting out openraft's leader lease (twice the election timeout, during which
/// no vote is granted): with a 2 s election timeout the lease is 4 s, and the new leader
/// comes well before it.
#[test]
fn a_dead_leader_is_replaced_before_its_lease_runs_out() {
    let lease = Duration::from_secs(4);
    let started = Instant::now();
    let mut c = Cluster::start(3, &["-v", "--election-timeout-ms", "2000"]);
    let old = c.wait_leader();
    assert_eq!(c.nodes[old].post("/files/before", b"1").0, 200);
    // A node refuses votes for one lease after it starts (it cannot know when it last heard
    // from a leader): only then is a survivor free to vote early.
    std::thread::sleep(lease.saturating_sub(started.elapsed()));
    c.nodes[old].kill();
    let killed_at = Instant::now();
    let new = c.wait_leader();
    let took = killed_at.elapsed();
    assert_ne!(new, old);
    if took >= lease - Duration::from_millis(500) {
        for n in &c.nodes {
            eprintln!("==== {}\n{}", n.name, n.logs());
        }
        panic!("a new leader only after {took:?}: the {lease:?} lease was waited out");
    }
    eprintln!("a new leader after {took:?}");
    assert_eq!(c.nodes[new].post("/files/after", b"2").0, 200);
}

#[test]
fn killed_leader_is_replaced_and_catches_up() {
    let mut c = Cluster::start(3, &["-v"]);
    let old = c.wait_leader();
    assert_eq!(c.nodes[old].post("/files/before", b"1").0, 200);
    c.nodes[old].kill();
    let killed_at = Instant::now();
    let new = c.wait_leader();
    let failover = killed_at.elapsed();
    assert_ne!(new, old);
    // The survivors find nothing listening at the leader's address and campaign (about
    // 0.3 s here); a candidate with the shorter log loses and the next round comes a moment
    // later, and the tests share 2 cores.
    if failover >= Duration::from_secs(6) {
        for n in &c.nodes {
            eprintln!("==== {}\n{}", n.name, n.logs());
        }
        panic!("failover took {failover:?}");
    }
    eprintln!("failover took {failover:?}");

    for i in c.followers(old) {
        assert_eq!(
            c.nodes[i].post(&format!("/files/after-{i}"), b"2").0,
            200,
            "write via node {i}"
        );
    }
    c.nodes[old].spawn();
    for i in c.followers(old) {
        c.wait_replicated(old, &format!("after-{i}"), b"2");
    }
    c.wait_replicated(old, "before", b"1");
    assert_eq!(c.nodes[old].get("/files/before"), (200, b"1".to_vec()));
    assert!(
        c.nodes[old].logs().contains("did not stop cleanly"),
        "a killed node rebuilds its files"
    );
}

#[test]
fn losing_quorum_fails_writes_fast_and_recovers() {
    let mut c = Cluster::start(3, FAST_TIMEOUT);
    let leader = c.wait_leader();
    assert_eq!(c.nodes[leader].post("/files/k", b"committed").0, 200);
    let survivor = c.followers(leader)[0];
    c.wait_replicated(survivor, "k", b"committed");
    let other = c.followers(leader)[1];
    c.nodes[leader].kill();
    c.nodes[other].kill();

    let started = Instant::now();
    let (code, body) = c.nodes[survivor].post("/files/k", b"lost");
    let took = started.elapsed();
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    assert!(
        took < Duration::from_secs(4),
        "a write without quorum must fail in bounded time, took {took:?}"
    );
    assert!(String::from_utf8_lossy(&body).contains("unavailable"));
    assert_eq!(
        c.nodes[survivor].get("/files/k").0,
        503,
        "linearizable reads need a quorum too"
    );
    assert_eq!(
        c.nodes[survivor].get("/files/k?consistency=stale"),
        (200, b"committed".to_vec())
    );

    c.nodes[other].spawn();
    c.wait_leader();
    wait_for(Duration::from_secs(20), "writes to work again", || {
        (c.nodes[survivor].post("/files/k", b"again").0 == 200).then_some(())
    });
    assert_eq!(c.nodes[other].get("/files/k"), (200, b"again".to_vec()));
}

#[test]
fn isolated_leader_stops_accepting_writes() {
    let mut c = Cluster::start(3, FAST_TIMEOUT);
    let leader = c.wait_leader();
    let followers = c.followers(leader);
    // Freeze both followers: the leader keeps its role (openraft 0.9 has no check-quorum) but
    // must notice it has no majority.
    for &f in &followers {
        c.nodes[f].signal(libc::SIGSTOP);
    }
    let started = Instant::now();
    let (code, body) = c.nodes[leader].post("/files/x", b"1");
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    assert!(started.elapsed() < Duration::from_secs(4));
    wait_for(
        Duration::from_secs(5),
        "the quorum guard to refuse at once",
        || {
            let started = Instant::now();
            let (code, body) = c.nodes[leader].post("/files/x", b"1");
            let msg = String::from_utf8_lossy(&body).to_string();
            (code == 503 && msg.contains("no quorum") && started.elapsed() < Duration::from_millis(500))
                .then_some(())
        },
    );
    for &f in &followers {
        c.nodes[f].signal(libc::SIGCONT);
    }
    c.wait_leader();
    wait_for(
        Duration::from_secs(20),
        "writes after the partition heals",
        || (c.nodes[followers[0]].post("/files/x", b"2").0 == 200).then_some(()),
    );
    let leader = c.wait_leader();
    assert_eq!(c.nodes[leader].get("/files/x"), (200, b"2".to_vec()));
}

#[test]
fn acknowledged_writes_survive_crashes_under_load() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader();
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let (names, acked, count) = (names.clone(), acked.clone(), count.clone());
            std::thread::spawn(move || {
                for i in 0..40 {
                    let key = format!("load/t{t}-{i}");
                    let value = format!("value {t} {i}");
                    let addr = &names[(t + i) % names.len()];
                    if let Ok((200, _)) = http(addr, "POST", &format!("/files/{key}"), value.as_bytes()) {
                        acked.lock().unwrap().push((key, value));
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    wait_for(Duration::from_secs(30), "some writes under load", || {
        (count.load(Ordering::SeqCst) >= 60).then_some(())
    });
    c.nodes[leader].kill();
    for w in writers {
        w.join().unwrap();
    }
    c.nodes[leader].spawn();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 200,
        "most writes succeed despite the crash: {}",
        acked.len()
    );
    for (key, value) in &acked {
        for i in 0..3 {
            c.wait_replicated(i, key, value.as_bytes());
        }
    }
}

#[test]
fn cluster_restarts_from_data_dirs() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader();
    assert_eq!(c.nodes[leader].post("/files/persist/me", b"still here").0, 200);
    // Node 1 stops cleanly (SIGTERM), the others are killed.
    c.nodes[0].signal(libc::SIGTERM);
    wait_for(Duration::from_secs(20), "a clean stop", || {
        (!c.nodes[0].is_running()).then_some(())
    });
    for n in &mut c.nodes {
        n.kill();
    }
    for n in &mut c.nodes {
        // Restart with only the data dir: identity comes from `info`.
        n.args.retain(|a| !a.contains("127.0.0.1"));
        n.args.clear();
        n.spawn();
    }
    let leader = c.wait_leader();
    for i in 0..3 {
        assert_eq!(c.nodes[i].get("/files/persist/me"), (200, b"still here".to_vec()));
        let rebuilt = c.nodes[i].logs().matches("did not stop cleanly").count();
        assert_eq!(
            rebuilt,
            if i == 0 { 0 } else { 1 },
            "node {i}: only unclean stops rebuild"
        );
    }
    assert_eq!(
        c.nodes[leader].status().unwrap()["members"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(c.nodes[(leader + 1) % 3].post("/files/new", b"ok").0, 200);
}

/// openraft restarts a former leader as leader, in the same term, without knowing how far it
/// had committed; its files come back from the last snapshot. A linearizable read right after
/// everyone restarts must still see every write acknowledged before the crash (the fault suite
/// found reads answered from the snapshot's state).
#[test]
fn a_read_right_after_a_restart_of_every_node_is_not_stale() {
    let mut c = Cluster::start(3, &["--snapshot-every", "20"]);
    let leader = c.wait_leader();
    for round in 0..5 {
        for i in 0..23 {
            let (code, _) = c.nodes[leader].post("/files/key", format!("v{round}-{i}").as_bytes());
            assert_eq!(code, 200);
        }
        let last = format!("v{round}-22");
        for n in &mut c.nodes {
            n.kill();
        }
        for n in &mut c.nodes {
            n.spawn();
        }
        // The first answer of the restarted leader is the one that used to be stale.
        let node = &c.nodes[leader];
        let first = wait_for(Duration::from_secs(30), "a linearizable read", || {
            let (code, body) = node.get("/files/key");
            (code == 200 || code == 404).then_some((code, body))
        });
        assert_eq!(first, (200, last.into_bytes()), "round {round}");
        c.wait_leader();
    }
}

/// Snapshots come in proportion to the state: with a tiny tree, every few `--snapshot-every`
/// entries; once the tree holds a 3 MiB file, not again until as many bytes of log have been
/// written since (a fixed count would archive those 3 MiB every 20 writes).
#[test]
fn snapshots_are_taken_in_proportion_to_the_state() {
    let mut c = Cluster::start(1, &["--snapshot-every", "20"]);
    c.wait_leader();
    let n = &c.nodes[0];
    let snapshot = || n.status().unwrap()["snapshot_index"].as_u64();
    for i in 0..60 {
        assert_eq!(n.post(&format!("/files/small/{}", i % 5), b"x").0, 200);
    }
    let small = wait_for(Duration::from_secs(10), "a snapshot of the small tree", || {
        snapshot().filter(|&s| s >= 20)
    });
    // The big file's pieces are a lot of log: the next snapshot comes soon (it may even catch
    // the pieces still staged), and it is large.
    assert_eq!(n.post("/files/big", &vec![b'b'; 3 << 20]).0, 200);
    for i in 0..40 {
        assert_eq!(n.post(&format!("/files/small/{}", i % 5), b"y").0, 200);
    }
    let with_big = wait_for(Duration::from_secs(10), "a snapshot holding the big file", || {
        snapshot().filter(|&s| s > small)
    });
    for i in 0..300 {
        assert_eq!(n.post(&format!("/files/small/{}", i % 5), b"z").0, 200);
    }
    assert_eq!(
        snapshot(),
        Some(with_big),
        "300 small writes are far less log than the 3 MiB state: no new snapshot"
    );
}

#[test]
fn lagging_node_catches_up_by_snapshot() {
    let mut c = Cluster::start(3, &["--snapshot-every", "20"]);
    let leader = c.wait_leader();
    let lagging = c.followers(leader)[0];
    c.nodes[lagging].kill();
    // New files: the state grows with the log, so snapshots come further apart as the tree
    // grows (in proportion to it); 200 writes take the last one past index 100.
    for i in 0..200 {
        assert_eq!(
            c.nodes[leader]
                .post(&format!("/files/f{i}"), format!("{i}").as_bytes())
                .0,
            200
        );
    }
    // The snapshot policy runs beside the applies: wait for it.
    wait_for(Duration::from_secs(20), "a snapshot at 100 or later", || {
        let status = c.nodes[leader].status()?;
        (status["snapshot_index"].as_u64()? >= 100).then_some(())
    });
    // openraft purges lazily, on the next replication progress after a snapshot.
    let dir = c.nodes[leader].dir.clone();
    let log = wait_for(
        Duration::from_secs(20),
        "the leader's log to be compacted",
        || {
            let log = read_data_file(&dir, "log");
            (log.lines().count() < 150).then_some(log)
        },
    );
    assert!(!log.contains("\"filename\":\"f0\""), "early entries are purged");

    c.nodes[lagging].spawn();
    for i in [0, 50, 199] {
        c.wait_replicated(lagging, &format!("f{i}"), format!("{i}").as_bytes());
    }
    // The installed files are visible a moment before openraft's metrics say so.
    let node = &c.nodes[lagging];
    wait_for(
        Duration::from_secs(20),
        "the lagging node to report its snapshot",
        || node.status()?["snapshot_index"].as_u64(),
    );
    let snaps = std::fs::read_dir(c.nodes[lagging].dir.join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(snaps, 1, "one snapshot kept");
}

/// Snapshots are linked while writes go on (only the paths written meanwhile are linked
/// again under the lock): each must still hold exactly the tree at its index. A node that
/// catches up from one, then applies the rest of the log, ends with the leader's tree.
#[test]
fn snapshots_taken_during_writes_hold_exactly_the_tree_at_their_index() {
    let mut c = Cluster::start(3, &["--snapshot-every", "20"]);
    let leader = c.wait_leader();
    let lagging = c.followers(leader)[0];
    c.nodes[lagging].kill();
    for i in 0..400 {
        let (code, _) = c.nodes[leader].post(&format!("/files/d{}/f{i}", i % 8), b"seed");
        assert_eq!(code, 200);
    }
    // Overwrites, deletes and new files in the same directories while snapshots are built.
    let first = c.nodes[leader].status().unwrap()["snapshot_index"]
        .as_u64()
        .unwrap_or(0);
    let name = c.nodes[leader].name.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let i = n * 7919 % 400;
                let path = format!("/files/d{}/f{i}", i % 8);
                let code = match n % 3 {
                    0 => http(&name, "POST", &path, format!("v{n}").as_bytes()).unwrap().0,
                    1 => http(&name, "DELETE", &path, b"").unwrap().0,
                    _ => {
                        http(&name, "POST", &format!("/files/d{}/new{n}", n % 8), b"n")
                            .unwrap()
                            .0
                    }
                };
                assert!(code == 200 || code == 404, "{path}: {code}");
                n += 1;
            }
            n
        })
    };
    wait_for(
        Duration::from_secs(60),
        "three snapshots during the writes",
        || {
            let s = c.nodes[leader].status()?["snapshot_index"].as_u64()?;
            // Each snapshot index is a new build (they come every few hundred entries here).
            (s > first + 1_500).then_some(())
        },
    );
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert_eq!(c.nodes[leader].post("/files/last", b"done").0, 200);
    println!("{writes} writes during the snapshots");

    c.nodes[lagging].spawn();
    c.wait_replicated(lagging, "last", b"done");
    let node = &c.nodes[lagging];
    wait_for(
        Duration::from_secs(20),
        "the lagging node to report its snapshot",
        || node.status()?["snapshot_index"].as_u64().filter(|&s| s > first),
    );
    let tree = |i: usize| {
        let root = c.nodes[i].dir.join("files");
        let mut files = std::collections::BTreeMap::new();
        let mut dirs = vec![root.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    dirs.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(&root).unwrap().display().to_string();
                    files.insert(rel, std::fs::read(e.path()).unwrap());
                }
            }
        }
        files
    };
    let (want, got) = (tree(leader), tree(lagging));
    assert_eq!(want.len(), got.len(), "as many files as the leader");
    assert!(
        want == got,
        "the tree rebuilt from a snapshot differs from the leader's"
    );
}

#[test]
fn corrupt_log_stops_node_and_torn_tail_is_dropped() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader();
    for i in 0..5 {
        assert_eq!(c.nodes[leader].post(&format!("/files/c{i}"), b"data").0, 200);
    }
    let f = c.followers(leader)[0];
    c.wait_replicated(f, "c4", b"data");
    c.nodes[f].kill();
    let path = c.nodes[f].dir.join("log");
    let original = std::fs::read_to_string(&path).unwrap();

    // A flipped byte in the middle: refuse to start, naming file, line and index.
    let lines: Vec<&str> = original.lines().collect();
    let target = lines
        .iter()
        .position(|l| l.contains("\"filename\":\"c1\""))
        .unwrap();
    let corrupted = original.replacen("\"filename\":\"c1\"", "\"filename\":\"cX\"", 1);
    std::fs::write(&path, corrupted).unwrap();
    let out = std::process::Command::new(bin())
        .arg(&c.nodes[f].dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:{}", path.display(), target + 1)),
        "names file and line: {err}"
    );
    assert!(err.contains(&format!("index {target}")), "names the index: {err}");
    assert!(!err.contains("panicked"), "{err}");

    // A torn last line (a crash mid-append): dropped with a warning, the node rejoins.
    std::fs::write(&path, format!("{original}1234abcd 00000000000000ff 00000000")).unwrap();
    c.nodes[f].spawn();
    c.wait_replicated(f, "c4", b"data");
    assert!(c.nodes[f].logs().contains("dropping the torn tail of the log"));
    assert_eq!(c.nodes[leader].post("/files/after", b"ok").0, 200);
    c.wait_replicated(f, "after", b"ok");
}

#[test]
fn nodes_can_be_removed() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader();
    let [a, b] = c.followers(leader)[..] else { panic!() };
    let body = format!("{{\"name\":\"{}\"}}", c.nodes[b].name);
    let (code, msg) = c.nodes[a].post("/cluster/remove", body.as_bytes());
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&msg));
    assert_eq!(
        c.nodes[leader].status().unwrap()["members"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    wait_for(Duration::from_secs(10), "the removed node to exit", || {
        (!c.nodes[b].is_running()).then_some(())
    });
    assert_eq!(c.nodes[a].post("/files/two", b"members").0, 200);
    let (code, _) = c.nodes[a].post("/cluster/remove", b"{\"name\":\"nobody:1\"}");
    assert_eq!(code, 400);
}

#[test]
fn lagging_node_catches_up_on_large_files() {
    // A node that was down while a large file was written catches up on its chunk entries,
    // batch by batch, without disturbing the leader.
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader();
    let lagging = c.followers(leader)[0];
    c.nodes[lagging].kill();
    let big: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    assert_eq!(c.nodes[leader].post("/files/big", &big).0, 200);
    let term = c.nodes[leader].status().unwrap()["term"].as_u64().unwrap();
    c.nodes[lagging].spawn();
    c.wait_replicated(lagging, "big", &big);
    assert_eq!(
        c.nodes[leader].status().unwrap()["term"].as_u64().unwrap(),
        term,
        "no election while catching up"
    );
}

#[test]
fn a_fatal_storage_error_stops_the_node_and_is_not_a_clean_stop() {
    let flags = ["--request-timeout-ms", "2000", "--chunk-size", "1000"];
    let mut c = Cluster::start(1, &flags);
    c.wait_leader();
    assert_eq!(c.nodes[0].post("/files/before", b"1").0, 200);
    // Break the state machine's staging directory for large files: the apply of the next
    // write's first chunk fails with a local fault.
    let uploads = c.nodes[0].dir.join("sm/uploads");
    std::fs::remove_dir_all(&uploads).unwrap();
    std::fs::write(&uploads, b"not a directory").unwrap();
    let code = c.nodes[0].post("/files/doomed", &[b'2'; 3000]).0;
    assert_ne!(code, 200, "a write whose apply failed is not acknowledged");
    let exit = wait_for(Duration::from_secs(20), "the node to exit", || {
        c.nodes[0].child.as_mut().unwrap().try_wait().unwrap()
    });
    assert!(!exit.success(), "a node whose Raft core died exits non-zero");
    let logs = c.nodes[0].logs();
    assert!(logs.contains("fatal error"), "{logs}");
    assert!(
        !c.nodes[0].dir.join("sm/clean").exists(),
        "a fatal stop is not a clean stop"
    );

    // Repaired and restarted, it rebuilds from the log: the committed chunk is applied
    // (staged), and the write it began, never acknowledged, is not there.
    c.nodes[0].child = None;
    std::fs::remove_file(&uploads).unwrap();
    c.nodes[0].spawn();
    c.wait_leader();
    assert_eq!(c.nodes[0].get("/files/before"), (200, b"1".to_vec()));
    assert_eq!(c.nodes[0].get("/files/doomed").0, 404);
    let staged: Vec<_> = std::fs::read_dir(&uploads)
        .unwrap()
        .flat_map(|upload| std::fs::read_dir(upload.unwrap().path()).unwrap())
        .map(|piece| piece.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(staged.contains(&"00000000".to_string()), "{staged:?}");
}

/// Mounts a tmpfs of `size` at `dir` (root only); `false`, with a SKIPPED line, if it cannot.
fn small_filesystem(dir: &std::path::Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            println!(
                "SKIPPED: cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            println!("SKIPPED: cannot run mount: {e}");
            false
        }
    }
}

#[test]
fn a_full_disk_refuses_new_data_but_deletes_work() {
    let mut c = Cluster::empty();
    // The node's data directory is a 48 MiB filesystem that must keep 32 MiB free.
    if !small_filesystem(&c.tmp.path().join("node.1"), "48m") {
        return;
    }
    c.add_node(None, &["--min-free", &(32u64 << 20).to_string()]);
    c.wait_leader();
    let n = &c.nodes[0];
    let file = vec![b'x'; 2 << 20];
    let mut written = Vec::new();
    let refusal = loop {
        let name = format!("f{}", written.len());
        let (code, body) = n.post(&format!("/files/{name}"), &file);
        if code != 200 {
            break (code, String::from_utf8_lossy(&body).to_string());
        }
        written.push(name);
        assert!(written.len() < 20, "the guard never refused a write");
    };
    assert_eq!(refusal.0, 507, "{}", refusal.1);
    assert!(refusal.1.contains("--min-free"), "{}", refusal.1);
    assert!(!written.is_empty(), "writes worked while there was room");
    // Deletes still work, and the node still serves everything it holds.
    assert_eq!(n.delete(&format!("/files/{}", written[0])).0, 200);
    assert_eq!(n.get(&format!("/files/{}", written[1])), (200, file.clone()));
    assert_eq!(n.status().unwrap()["state"], "leader");
    assert!(c.nodes[0].is_running());
}

#[test]
fn retries_with_an_idempotency_key_are_answered_not_repeated() {
    let mut c = Cluster::start(3, &["--chunk-size", "1000"]);
    let leader = c.wait_leader();
    let [a, b] = c.followers(leader)[..] else { panic!() };
    let (na, nb) = (c.nodes[a].name.clone(), c.nodes[b].name.clone());
    let keyed = |addr: &str, method: &str, path: &str, key: &str, body: &[u8]| {
        http_with(addr, method, path, &[("Idempotency-Key", key)], body)
            .unwrap()
            .0
    };
    // A delete that committed, retried (through another node) after a lost answer: 200 again,
    // where a retry without a key gets 404.
    assert_eq!(c.nodes[a].post("/files/d", b"x").0, 200);
    assert_eq!(keyed(&na, "DELETE", "/files/d", "del-1", b""), 200);
    assert_eq!(keyed(&nb, "DELETE", "/files/d", "del-1", b""), 200);
    assert_eq!(c.nodes[b].delete("/files/d").0, 404);
    // A write retried after someone else's newer write does not undo that write.
    assert_eq!(keyed(&na, "POST", "/files/w", "put-1", b"first"), 200);
    assert_eq!(c.nodes[b].post("/files/w", b"second").0, 200);
    assert_eq!(keyed(&nb, "POST", "/files/w", "put-1", b"first"), 200);
    assert_eq!(c.nodes[leader].get("/files/w"), (200, b"second".to_vec()));
    // The same for a file written in chunks; the retry's staged pieces are dropped.
    let big = vec![b'z'; 5000];
    assert_eq!(keyed(&na, "PUT", "/files/big", "put-2", &big), 200);
    assert_eq!(c.nodes[b].post("/files/big", b"small").0, 200);
    assert_eq!(keyed(&nb, "PUT", "/files/big", "put-2", &big), 200);
    assert_eq!(c.nodes[leader].get("/files/big"), (200, b"small".to_vec()));
    for n in &c.nodes {
        wait_for(Duration::from_secs(10), "staged pieces to be dropped", || {
            let uploads = std::fs::read_dir(n.dir.join("sm/uploads")).ok()?.count();
            (uploads == 0).then_some(())
        });
    }
    // Keys must be printable.
    assert_eq!(keyed(&na, "DELETE", "/files/x", "bad key", b""), 400);
}

/// Concurrent writes share entries (`file:batch` in the log), and each keeps its own outcome:
/// among many writes that succeed, the ones that cannot apply fail alone, with their own
/// status, on every node they were sent to.
#[test]
fn concurrent_writes_share_entries_and_keep_their_own_outcomes() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader();
    assert_eq!(c.nodes[leader].post("/files/plain", b"a file").0, 200);
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let threads: Vec<_> = (0..48)
        .map(|t| {
            let node = names[t % 3].clone();
            std::thread::spawn(move || {
                (0..20)
                    .map(|i| {
                        // Every fifth write goes under a file: it must fail, alone.
                        let path = if i % 5 == 4 {
                            format!("/files/plain/t{t}-{i}")
                        } else {
                            format!("/files/k/t{t}-{i}")
                        };
                        let body = format!("{t}-{i}");
                        let answer = http(&node, "PUT", &path, body.as_bytes()).unwrap();
                        (path, body, answer)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut written = 0;
    for thread in threads {
        for (path, body, (code, answer)) in thread.join().unwrap() {
            if path.starts_with("/files/plain/") {
                assert_eq!(code, 409, "{path}: {}", String::from_utf8_lossy(&answer));
            } else {
                assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&answer));
                assert_eq!(c.nodes[leader].get(&path), (200, body.into_bytes()));
                written += 1;
            }
        }
    }
    assert_eq!(written, 48 * 16);
    let log = std::fs::read_to_string(c.nodes[leader].dir.join("log")).unwrap();
    let batches = log.lines().filter(|l| l.contains(" file:batch ")).count();
    assert!(batches > 0, "no write shared an entry");
    let entries = log.lines().filter(|l| l.contains(" file:")).count();
    assert!(entries < 48 * 20, "{entries} entries for {} writes", 48 * 20);
    let (_, metrics) = c.nodes[leader].get("/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("raftd_proposal_batch_commands_count ") && !l.ends_with(" 0")),
        "the batch sizes are measured"
    );
}

/// A counter's value in node `i`'s `/metrics`.
fn counter(c: &Cluster, i: usize, name: &str) -> u64 {
    let (_, body) = c.nodes[i].get("/metrics");
    String::from_utf8(body)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} missing")) as u64
}

#[test]
fn the_leader_reads_under_its_lease_only_while_a_majority_acknowledges_it() {
    // A long election timeout: the quorum guard (twice the maximum) would refuse only after
    // 8 s, so a refusal before that comes from the read path, the lease having run out.
    let mut c = Cluster::start(3, &["--election-timeout-ms", "2000", "--heartbeat-ms", "200"]);
    let leader = c.wait_leader();
    let followers = c.followers(leader);
    let lease_reads = |c: &Cluster| counter(c, leader, "raftd_lease_reads_total");
    let before = lease_reads(&c);
    for i in 0..20 {
        let v = format!("v{i}");
        assert_eq!(c.nodes[leader].post("/files/k", v.as_bytes()).0, 200);
        assert_eq!(c.nodes[leader].get("/files/k"), (200, v.into_bytes()));
    }
    // Each read comes right after a commit: a majority acknowledged the leader moments ago.
    let used = lease_reads(&c) - before;
    assert!(used >= 10, "only {used} of 20 reads were answered from the lease");

    // A read does not wait for a write still in flight: with the followers frozen, a write
    // of another file cannot commit, yet a read right after it is answered at once, within
    // the lease, from what the leader has applied (every acknowledged write is applied there
    // first). Waiting for the leader's last log entry instead would never end.
    for &f in &followers {
        c.nodes[f].signal(libc::SIGSTOP);
    }
    let frozen = Instant::now();
    let name = c.nodes[leader].name.clone();
    let in_flight = std::thread::spawn(move || http(&name, "POST", "/files/in-flight", b"x").map(|r| r.0));
    wait_for(
        Duration::from_secs(5),
        "the write to be in the leader's log",
        || {
            let s = c.nodes[leader].status()?;
            (s["last_log_index"].as_u64()? > s["applied_index"].as_u64()?).then_some(())
        },
    );
    let read = c.nodes[leader].get("/files/k");
    println!("read {:?} after the freeze", frozen.elapsed());
    assert_eq!(
        read,
        (200, b"v19".to_vec()),
        "a read waited for an uncommitted write"
    );

    // With no majority answering, the lease runs out: reads are refused, not served from it.
    let refusal = wait_for(Duration::from_secs(20), "reads to be refused", || {
        let (code, body) = c.nodes[leader].get("/files/k");
        (code == 503).then(|| String::from_utf8_lossy(&body).to_string())
    });
    println!("refused {:?} after the freeze: {refusal}", frozen.elapsed());
    assert!(
        !refusal.contains("has not heard from a majority"),
        "reads went on under the lease until the quorum guard stopped them: {refusal}"
    );
    let after = lease_reads(&c);
    assert_eq!(c.nodes[leader].get("/files/k").0, 503);
    assert_eq!(
        lease_reads(&c),
        after,
        "a read was answered from an expired lease"
    );
    for &f in &followers {
        c.nodes[f].signal(libc::SIGCONT);
    }
    wait_for(Duration::from_secs(20), "reads after the partition heals", || {
        let leader = c.wait_leader();
        (c.nodes[leader].get("/files/k") == (200, b"v19".to_vec())).then_some(())
    });
    // Committed once the followers came back, or refused for want of a quorum before.
    let code = in_flight.join().unwrap().unwrap();
    assert!(code == 200 || code == 503, "the in-flight write answered {code}");
}
