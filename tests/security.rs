//! An attacker's view of real `raftd` processes: names that try to leave `files/` through every
//! way a command can arrive (peer proposal, AppendEntries, the log file itself, a snapshot),
//! the cluster token on every peer and membership route, and malformed or oversized peer
//! messages. After each attempt nothing outside `files/` has changed and every node serves.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, EntryPayload, Vote};
use raftd::raft::command::{Command, Data, Delete, Dir, Rename, Touch, Write};
use raftd::raft::{log_format, Entry, LogId, TypeConfig};

/// Every path in a data directory outside `files/` with its size and mtime: what an escape
/// would change.
fn outside_files(dir: &Path) -> BTreeMap<String, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, std::time::SystemTime)>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            // files/ is the tree; sm/ and snapshots/ change with every apply (marker, temp files).
            if ["files", "sm", "snapshots", "log", "vote", "purged"].contains(&rel.as_str()) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            out.insert(rel, (meta.len(), meta.modified().unwrap()));
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Commands naming paths outside the tree, as an attacker would send them.
fn escapes() -> Vec<Command> {
    let write = |name: &str| {
        Command::Write(Write {
            filename: name.into(),
            data: Data(b"x".to_vec()),
            mtime: 0,
            req: None,
            existing: false,
        })
    };
    vec![
        write("../escaped"),
        write("../info"),
        write("/tmp/raftd-absolute-escape"),
        Command::Delete(Delete {
            filename: "../vote".into(),
            req: None,
        }),
        Command::Delete(Delete {
            filename: "../log".into(),
            req: None,
        }),
        Command::Rename(Rename {
            from: "foo".into(),
            to: "../log".into(),
            req: None,
        }),
        Command::Mkdir(Dir {
            dirname: "../evil-dir".into(),
            mtime: 0,
            req: None,
        }),
        Command::Touch(Touch {
            filename: "../info".into(),
            mtime: Some(1),
            atime: None,
        }),
    ]
}

fn assert_nothing_escaped(dir: &Path, before: &BTreeMap<String, (u64, std::time::SystemTime)>) {
    assert_eq!(
        &outside_files(dir),
        before,
        "something outside files/ changed in {}",
        dir.display()
    );
    assert!(!dir.join("escaped").exists() && !dir.join("evil-dir").exists());
    assert!(!Path::new("/tmp/raftd-absolute-escape").exists());
    assert!(
        read_data_file(dir, "log").contains("raft:config"),
        "the Raft log is intact"
    );
    assert!(dir.join("vote").exists(), "the vote is intact");
}

/// The last line of a node's log: (index, term).
fn last_log_id(node: &Node) -> (u64, u64) {
    let log = read_data_file(&node.dir, "log");
    let line = log.lines().last().expect("a log line");
    let fields: Vec<&str> = line.split(' ').collect();
    (
        u64::from_str_radix(fields[1], 16).unwrap(),
        u64::from_str_radix(fields[2], 16).unwrap(),
    )
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 0), index)
}

/// POSTs JSON to a peer route, as peers do.
fn peer_post(node: &Node, route: &str, body: &[u8]) -> (u16, Vec<u8>) {
    http_with(
        &node.name,
        "POST",
        route,
        &[("Content-Type", "application/json")],
        body,
    )
    .unwrap_or((0, Vec::new()))
}

/// Sends only the head of a request announcing `declared` body bytes, plus a little of it,
/// and returns the status the server answers with.
fn announce_body(addr: &str, route: &str, declared: usize) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST {route} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(&vec![b' '; 4096]);
    let mut answer = [0u8; 64];
    let n = s.read(&mut answer).unwrap_or(0);
    String::from_utf8_lossy(&answer[..n])
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn applied(node: &Node) -> u64 {
    node.status()
        .and_then(|s| s["applied_index"].as_u64())
        .unwrap_or(0)
}

#[test]
fn proposals_with_escaping_names_are_refused_on_every_node() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader();
    assert_eq!(c.nodes[leader].post("/files/foo", b"keep").0, 200);
    let before: Vec<_> = c.nodes.iter().map(|n| outside_files(&n.dir)).collect();
    for node in &c.nodes {
        for cmd in escapes() {
            let (code, body) = peer_post(node, "/raft/propose", &serde_json::to_vec(&cmd).unwrap());
            assert_eq!(
                code,
                400,
                "{cmd:?} on {}: {}",
                node.name,
                String::from_utf8_lossy(&body)
            );
        }
        // The exact request from the report.
        let raw = br#"{"Write":{"filename":"../escaped","content":"x","mtime":0}}"#;
        assert_eq!(peer_post(node, "/raft/propose", raw).0, 400);
    }
    for (node, before) in c.nodes.iter().zip(&before) {
        assert_nothing_escaped(&node.dir, before);
    }
    // The cluster serves on.
    for node in &c.nodes {
        assert_eq!(node.post("/files/after", b"ok").0, 200, "{}", node.name);
    }
    c.wait_replicated(0, "foo", b"keep");
}

#[test]
fn escaping_names_arriving_by_append_apply_as_errors() {
    let mut c = Cluster::start(1, &["--election-timeout-ms", "300"]);
    c.wait_leader();
    let node = &c.nodes[0];
    assert_eq!(node.post("/files/foo", b"keep").0, 200);
    let before = outside_files(&node.dir);
    let status = node.status().unwrap();
    let (id, term) = (status["id"].as_u64().unwrap(), status["term"].as_u64().unwrap());
    let (last, last_term) = last_log_id(node);

    // A forged leader in a later term appends and commits entries naming paths outside files/.
    let forged_term = term + 5;
    let entries: Vec<Entry> = escapes()
        .into_iter()
        .enumerate()
        .map(|(i, cmd)| Entry {
            log_id: log_id(forged_term, last + 1 + i as u64),
            payload: EntryPayload::Normal(cmd),
        })
        .collect();
    let end = entries.last().unwrap().log_id;
    let req = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(forged_term, 999),
        prev_log_id: Some(log_id(last_term, last)),
        entries,
        leader_commit: Some(end),
    };
    let (code, body) = peer_post(
        node,
        &format!("/raft/append?target={id}"),
        &serde_json::to_vec(&req).unwrap(),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    wait_for(
        Duration::from_secs(10),
        "the forged entries to be applied",
        || (applied(node) >= end.index).then_some(()),
    );

    assert_nothing_escaped(&node.dir, &before);
    // The node survives: it elects itself again and takes writes; the rename was refused.
    wait_for(
        Duration::from_secs(20),
        "a write after the forged entries",
        || (node.post("/files/after", b"ok").0 == 200).then_some(()),
    );
    assert_eq!(node.get("/files/foo"), (200, b"keep".to_vec()));
    assert!(c.nodes[0].is_running());
}

#[test]
fn escaping_names_planted_in_the_log_apply_as_errors_after_restart() {
    let mut c = Cluster::start(1, &[]);
    c.wait_leader();
    assert_eq!(c.nodes[0].post("/files/foo", b"keep").0, 200);
    c.nodes[0].signal(libc::SIGTERM);
    wait_for(Duration::from_secs(10), "a clean stop", || {
        (!c.nodes[0].is_running()).then_some(())
    });
    c.nodes[0].child = None;
    let before = outside_files(&c.nodes[0].dir);

    // Lines with valid checksums, appended by someone with access to the log file.
    let (last, term) = last_log_id(&c.nodes[0]);
    let mut lines = Vec::new();
    for (i, cmd) in escapes().into_iter().enumerate() {
        let entry = Entry {
            log_id: log_id(term, last + 1 + i as u64),
            payload: EntryPayload::Normal(cmd),
        };
        log_format::encode(&entry, &mut lines).unwrap();
    }
    let log_path = c.nodes[0].dir.join("log");
    let mut log = std::fs::read(&log_path).unwrap();
    log.extend_from_slice(&lines);
    std::fs::write(&log_path, &log).unwrap();
    let planted_end = last + escapes().len() as u64;

    c.nodes[0].spawn();
    c.wait_leader();
    let node = &c.nodes[0];
    wait_for(
        Duration::from_secs(10),
        "the planted entries to be applied",
        || (applied(node) >= planted_end).then_some(()),
    );
    assert_nothing_escaped(&node.dir, &before);
    assert_eq!(node.get("/files/foo"), (200, b"keep".to_vec()));
    assert_eq!(node.post("/files/after", b"ok").0, 200);
    assert!(
        read_data_file(&node.dir, "log").contains("../escaped"),
        "the planted entries are in the log"
    );
}

#[test]
fn peer_and_membership_routes_need_the_cluster_token() {
    let mut c = Cluster::empty();
    let token_file = c.tmp.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let token_arg = ["--cluster-token-file", token_file.to_str().unwrap()];
    c.add_node(None, &token_arg);
    c.wait_leader();
    let seed = c.nodes[0].name.clone();
    c.add_node(Some(&seed), &token_arg);
    c.add_node(Some(&seed), &token_arg);
    c.wait_members(3);
    let leader = c.wait_leader();
    let victim = c.followers(leader)[0];
    let victim_id = c.nodes[victim].status().unwrap()["id"].as_u64().unwrap();
    let victim_name = c.nodes[victim].name.clone();
    let write = br#"{"Write":{"filename":"forged","content":"x","mtime":0}}"#.to_vec();
    let remove = format!(r#"{{"name":"{victim_name}"}}"#).into_bytes();
    let join = br#"{"id":77,"name":"127.0.0.1:1"}"#.to_vec();
    let routes: Vec<(String, Vec<u8>)> = vec![
        (format!("/raft/append?target={victim_id}"), b"{}".to_vec()),
        (format!("/raft/vote?target={victim_id}"), b"{}".to_vec()),
        (format!("/raft/snapshot?target={victim_id}"), b"{}".to_vec()),
        ("/raft/propose".into(), write),
        ("/raft/read-index".into(), b"null".to_vec()),
        ("/raft/join".into(), join.clone()),
        ("/raft/remove".into(), remove.clone()),
        (format!("/raft/removed?target={victim_id}"), Vec::new()),
        ("/cluster/join".into(), join),
        ("/cluster/remove".into(), remove),
    ];
    for node in &c.nodes {
        for (route, body) in &routes {
            for auth in [
                None,
                Some("Bearer wrong-token"),
                Some("Bearer s3cret-token2"),
                Some("s3cret-token"),
            ] {
                let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
                let mut headers = headers;
                headers.push(("Content-Type", "application/json"));
                let (code, answer) = http_with(&node.name, "POST", route, &headers, body).unwrap();
                assert_eq!(
                    code,
                    401,
                    "{route} with {auth:?} on {}: {}",
                    node.name,
                    String::from_utf8_lossy(&answer)
                );
            }
        }
    }
    // Nothing happened: three members, all running, no forged file.
    assert_eq!(
        c.nodes[leader].status().unwrap()["members"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    for i in 0..3 {
        assert!(c.nodes[i].is_running(), "{} still runs", c.nodes[i].name);
        assert_eq!(c.nodes[i].get("/files/forged").0, 404);
    }
    // With the token, membership routes answer (an invalid request gets its 4xx, not 401).
    let auth = [("Authorization", "Bearer s3cret-token")];
    let (code, _) = http_with(&seed, "POST", "/cluster/remove", &auth, br#"{"name":"nobody:1"}"#).unwrap();
    assert_eq!(code, 400);
    // Client routes stay open.
    assert_eq!(c.nodes[victim].post("/files/public", b"ok").0, 200);

    // A node with the wrong token cannot join: it stops with a clear message.
    let wrong = c.add_node(Some(&seed), &["--cluster-token", "not-the-token"]);
    let exit = wait_for(Duration::from_secs(20), "the wrong-token node to give up", || {
        c.nodes[wrong].child.as_mut().unwrap().try_wait().unwrap()
    });
    assert!(!exit.success());
    let logs = c.nodes[wrong].logs();
    assert!(
        logs.contains("refused the join") && logs.contains("token"),
        "{logs}"
    );
    assert_eq!(
        c.nodes[leader].status().unwrap()["members"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert!(c.nodes[leader].status().unwrap()["learners"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn malformed_and_oversized_peer_messages_are_refused() {
    let mut c = Cluster::start(1, &["--chunk-size", "1000"]);
    c.wait_leader();
    let node = &c.nodes[0];
    let id = node.status().unwrap()["id"].as_u64().unwrap();
    let (last, last_term) = last_log_id(node);
    let term = node.status().unwrap()["term"].as_u64().unwrap();
    let post = |route: &str, body: &[u8]| peer_post(node, route, body);

    // Bodies far over the peer limit: 413 before anything is read.
    for route in [
        format!("/raft/append?target={id}"),
        "/raft/propose".into(),
        "/cluster/join".into(),
    ] {
        assert_eq!(announce_body(&node.name, &route, 256 << 20), 413, "{route}");
    }
    // Garbage.
    for route in [
        format!("/raft/append?target={id}"),
        format!("/raft/vote?target={id}"),
        "/raft/propose".into(),
    ] {
        let code = post(&route, b"\x00\xffnot json").0;
        assert!((400..500).contains(&code), "{route}: {code}");
    }
    // Non-consecutive entries.
    let blank = |t, i| Entry {
        log_id: log_id(t, i),
        payload: EntryPayload::Blank,
    };
    let gap = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, id),
        prev_log_id: Some(log_id(last_term, last)),
        entries: vec![blank(term, last + 1), blank(term, last + 3)],
        leader_commit: None,
    };
    let (code, body) = post(
        &format!("/raft/append?target={id}"),
        &serde_json::to_vec(&gap).unwrap(),
    );
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    // A vote from a stranger, at a much higher term.
    let vote = VoteRequest::new(Vote::new(term + 100, 4242), Some(log_id(term + 99, last + 100)));
    assert_eq!(
        post(
            &format!("/raft/vote?target={id}"),
            &serde_json::to_vec(&vote).unwrap()
        )
        .0,
        403
    );
    // Snapshots that would not unpack: garbage, and a truncated archive.
    for data in [b"garbage".to_vec(), b"raftd-snapshot 1\n{\"meta\":".to_vec()] {
        let snap = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(term + 1, 4242),
            meta: Default::default(),
            offset: 0,
            data,
            done: true,
        };
        let (code, body) = post(
            &format!("/raft/snapshot?target={id}"),
            &serde_json::to_vec(&snap).unwrap(),
        );
        assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    }
    // A proposal over the chunk size, and one with a bad name.
    let big = Command::Write(Write {
        filename: "big".into(),
        data: Data(vec![b'x'; 1001]),
        mtime: 0,
        req: None,
        existing: false,
    });
    assert_eq!(post("/raft/propose", &serde_json::to_vec(&big).unwrap()).0, 413);
    // Membership: a join name that is not host:port, removing the last voter.
    for name in ["evil/path:1", "host:99999", "a b:1", "host"] {
        let join = format!(r#"{{"id":5,"name":"{name}"}}"#);
        assert_eq!(post("/cluster/join", join.as_bytes()).0, 400, "{name}");
        assert_eq!(
            post("/raft/join", join.as_bytes()).0,
            200,
            "forwarded form answers a Rejected"
        );
    }
    let own = format!(r#"{{"name":"{}"}}"#, node.name);
    let (code, body) = post("/cluster/remove", own.as_bytes());
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));

    // The node is unharmed: same term, same membership, still leading and taking writes.
    let status = node.status().unwrap();
    assert_eq!(status["state"], "leader");
    assert_eq!(status["term"].as_u64().unwrap(), term, "no forced election");
    assert_eq!(status["members"].as_array().unwrap().len(), 1);
    assert_eq!(node.post("/files/after", b"ok").0, 200);
}
