//! Operating a cluster, on real processes: `/metrics` parsed and watched under load,
//! `/healthz` and `/readyz` through a restart, a backup under write load restored into a new
//! cluster and compared byte for byte, `raftd ctl` against a live cluster, `raftd log verify`
//! and `repair` on planted damage, JSON logs with request ids, completions and the man page.

mod common;
#[path = "common/prom.rs"]
mod prom;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bin, http, http_with, wait_for, Cluster};

const TOKEN: &str = "ops-token";

fn scrape(addr: &str) -> prom::Metrics {
    let (code, body) = http(addr, "GET", "/metrics", b"").unwrap();
    assert_eq!(code, 200);
    let text = String::from_utf8(body).unwrap();
    prom::parse(&text).unwrap_or_else(|e| panic!("/metrics is not valid exposition text: {e}\n{text}"))
}

/// Runs `raftd` with `args` (and the cluster token in the environment).
fn raftd(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("RAFTD_CLUSTER_TOKEN", TOKEN)
        .env_remove("RAFTD_DATA_DIR")
        .output()
        .expect("run raftd")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "raftd failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn metrics_are_valid_and_move_under_load() {
    let mut c = Cluster::start(3, &["--cluster-token", TOKEN]);
    let leader = c.wait_leader();
    let follower = c.followers(leader)[0];
    let (l, f) = (c.nodes[leader].name.clone(), c.nodes[follower].name.clone());
    // A node is ready once it has learned the commit index from the leader, just after start.
    wait_for(Duration::from_secs(20), "the follower to be ready", || {
        (http(&f, "GET", "/readyz", b"").ok()?.0 == 200).then_some(())
    });
    let before_l = scrape(&l);
    let before_f = scrape(&f);

    // Every documented gauge is there, with values that agree with /status.
    for name in [
        "raftd_term",
        "raftd_commit_index",
        "raftd_applied_index",
        "raftd_last_log_index",
        "raftd_snapshot_index",
        "raftd_is_leader",
        "raftd_has_leader",
        "raftd_members",
        "raftd_learners",
        "raftd_ready",
        "raftd_tree_files",
        "raftd_tree_bytes",
        "raftd_log_bytes",
        "raftd_leader_changes_total",
    ] {
        assert!(before_l.get(name, &[]).is_some(), "{name} missing");
    }
    for family in [
        "raftd_write_duration_seconds",
        "raftd_read_barrier_duration_seconds",
        "raftd_log_fsync_duration_seconds",
        "raftd_log_fsync_batch_entries",
        "raftd_apply_duration_seconds",
        "raftd_apply_batch_entries",
        "raftd_http_request_duration_seconds",
        "raftd_snapshot_build_duration_seconds",
        "raftd_snapshot_install_duration_seconds",
    ] {
        assert_eq!(
            before_l.types.get(family).map(String::as_str),
            Some("histogram"),
            "{family}"
        );
    }
    assert_eq!(before_l.get("raftd_is_leader", &[]), Some(1.0));
    assert_eq!(before_f.get("raftd_is_leader", &[]), Some(0.0));
    assert_eq!(before_l.get("raftd_members", &[]), Some(3.0));
    assert_eq!(before_f.get("raftd_ready", &[]), Some(1.0));
    assert!(before_l.get("raftd_leader_changes_total", &[]).unwrap() >= 1.0);
    let lag = before_l.all("raftd_replication_lag_entries");
    assert_eq!(lag.len(), 2, "one lag series per follower on the leader: {lag:?}");
    assert!(before_f.all("raftd_replication_lag_entries").is_empty());

    // Load through the follower: 40 writes, 20 linearizable reads, then a snapshot.
    for i in 0..40 {
        let (code, _) = http(
            &f,
            "PUT",
            &format!("/files/load/k{}", i % 10),
            format!("value {i}").as_bytes(),
        )
        .unwrap();
        assert_eq!(code, 200);
    }
    for i in 0..20 {
        let (code, _) = http(&f, "GET", &format!("/files/load/k{}", i % 10), b"").unwrap();
        assert_eq!(code, 200);
    }
    let auth = format!("Bearer {TOKEN}");
    let (code, body) = http_with(&l, "POST", "/cluster/snapshot", &[("Authorization", &auth)], b"").unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));

    let after_l = scrape(&l);
    let after_f = scrape(&f);
    let grew = |b: &prom::Metrics, a: &prom::Metrics, name: &str, labels: &[(&str, &str)]| {
        a.get(name, labels).unwrap_or(0.0) - b.get(name, labels).unwrap_or(0.0)
    };
    assert!(grew(&before_l, &after_l, "raftd_commit_index", &[]) >= 40.0);
    assert!(grew(&before_f, &after_f, "raftd_applied_index", &[]) >= 40.0);
    assert_eq!(
        grew(&before_f, &after_f, "raftd_proposals_total", &[("outcome", "ok")]),
        40.0
    );
    assert_eq!(
        grew(&before_f, &after_f, "raftd_write_duration_seconds_count", &[]),
        40.0
    );
    assert!(
        grew(
            &before_f,
            &after_f,
            "raftd_read_barrier_duration_seconds_count",
            &[]
        ) >= 20.0
    );
    assert!(grew(&before_l, &after_l, "raftd_log_fsync_duration_seconds_count", &[]) >= 1.0);
    assert!(grew(&before_l, &after_l, "raftd_log_fsync_batch_entries_sum", &[]) >= 40.0);
    assert!(grew(&before_f, &after_f, "raftd_apply_batch_entries_sum", &[]) >= 40.0);
    let puts = [("route", "/files/{*path}"), ("method", "PUT"), ("status", "200")];
    assert_eq!(
        grew(&before_f, &after_f, "raftd_http_requests_total", &puts),
        40.0
    );
    assert!(
        grew(
            &before_f,
            &after_f,
            "raftd_http_request_duration_seconds_count",
            &[("route", "/files/{*path}")]
        ) >= 60.0
    );
    assert_eq!(
        after_l.get("raftd_snapshot_build_duration_seconds_count", &[]),
        Some(1.0)
    );
    assert!(after_l.get("raftd_snapshot_build_size_bytes_sum", &[]).unwrap() > 0.0);
    assert_eq!(
        after_l.get("raftd_snapshot_index", &[]),
        after_l.get("raftd_applied_index", &[])
    );
    assert_eq!(after_f.get("raftd_tree_files", &[]), Some(10.0));
    assert!(after_f.get("raftd_tree_bytes", &[]).unwrap() >= 70.0);
    assert!(after_l.get("raftd_log_bytes", &[]).unwrap() > before_l.get("raftd_log_bytes", &[]).unwrap());
}

#[test]
fn fuse_operations_are_counted() {
    if !Path::new("/dev/fuse").exists() || unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: FUSE mounts need /dev/fuse and root");
        return;
    }
    let mut c = Cluster::start_with(1, |_, tmp| {
        vec!["--mount".into(), tmp.join("mnt").display().to_string()]
    });
    c.wait_leader();
    let addr = c.nodes[0].name.clone();
    let mnt = c.tmp.path().join("mnt");
    wait_for(Duration::from_secs(20), "the mount", || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .ok()?
            .contains(mnt.to_str()?)
            .then_some(())
    });
    std::fs::write(mnt.join("f"), b"hello").unwrap();
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"hello");
    assert!(std::fs::read(mnt.join("missing")).is_err());
    let m = scrape(&addr);
    for op in ["lookup", "create", "write", "flush", "open", "read"] {
        assert!(
            m.get("raftd_fuse_operations_total", &[("op", op)]).unwrap_or(0.0) >= 1.0,
            "{op}"
        );
    }
    assert!(
        m.get("raftd_fuse_errors_total", &[("op", "lookup")])
            .unwrap_or(0.0)
            >= 1.0,
        "ENOENT counted"
    );
}

#[test]
fn readiness_waits_for_a_restarted_node_to_catch_up() {
    let mut c = Cluster::start(3, &["--snapshot-every", "1000000"]);
    let leader = c.wait_leader();
    let f = c.followers(leader)[1];
    let others: Vec<usize> = (0..3).filter(|&i| i != f).collect();
    let name = c.nodes[f].name.clone();
    wait_for(Duration::from_secs(20), "the follower to be ready", || {
        (http(&name, "GET", "/readyz", b"").ok()?.0 == 200).then_some(())
    });
    assert_eq!(http(&name, "GET", "/healthz", b"").unwrap().0, 200);

    // While the node is down the others commit a lot it must then catch up with.
    c.nodes[f].kill();
    let value = vec![b'x'; 256 << 10];
    for i in 0..120 {
        let (code, _) = c.nodes[leader].request("PUT", &format!("/files/big{}", i % 40), &value);
        assert_eq!(code, 200);
    }
    let commit = c.nodes[leader].status().unwrap()["commit_index"]
        .as_u64()
        .unwrap();

    // Restarted with the rest of the cluster frozen: alive, but not ready, and it says why.
    for &i in &others {
        c.nodes[i].signal(libc::SIGSTOP);
    }
    c.nodes[f].spawn();
    wait_for(Duration::from_secs(20), "healthz", || {
        (http(&name, "GET", "/healthz", b"").ok()?.0 == 200).then_some(())
    });
    let (code, why) = http(&name, "GET", "/readyz", b"").unwrap();
    let why = String::from_utf8_lossy(&why).to_string();
    assert_eq!(code, 503, "ready with the rest of the cluster frozen: {why}");
    assert!(why.starts_with("not ready: "), "{why}");

    // Once the cluster is back, it turns ready only after applying what was committed.
    for &i in &others {
        c.nodes[i].signal(libc::SIGCONT);
    }
    let mut reasons = Vec::new();
    wait_for(Duration::from_secs(60), "the restarted node to be ready", || {
        let (code, body) = http(&name, "GET", "/readyz", b"").ok()?;
        if code == 200 {
            return Some(());
        }
        reasons.push(String::from_utf8_lossy(&body).trim().to_string());
        None
    });
    let applied = c.nodes[f].status().unwrap()["applied_index"].as_u64().unwrap();
    assert!(
        applied >= commit,
        "ready at applied index {applied}, below the commit index {commit} it had to catch up with"
    );
    reasons.dedup();
    println!("reasons given while not ready: {reasons:?}");
}

/// Files under `dir`, path → contents.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The files a log's text says exist after applying every entry up to `index`: writes and
/// deletes (all this test's load issues).
fn files_at(log: &str, index: u64) -> BTreeMap<String, Vec<u8>> {
    fn replay(files: &mut BTreeMap<String, Vec<u8>>, name: &str, body: &serde_json::Value) {
        let filename = body["filename"].as_str().map(str::to_string);
        match name {
            "file:write" => {
                let content = body["content"].as_str().unwrap().as_bytes().to_vec();
                files.insert(filename.unwrap(), content);
            }
            "file:delete" => {
                files.remove(&filename.unwrap());
            }
            // Concurrent writes share an entry: each command in order.
            "file:batch" => {
                for named in body["commands"].as_array().unwrap() {
                    let (name, body) = named.as_object().unwrap().iter().next().unwrap();
                    replay(files, name, body);
                }
            }
            _ => {}
        }
    }
    let mut files = BTreeMap::new();
    for line in log.lines() {
        let parts: Vec<&str> = line.splitn(5, ' ').collect();
        let i = u64::from_str_radix(parts[1], 16).unwrap();
        if i > index {
            break;
        }
        let body: serde_json::Value = parts
            .get(4)
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default();
        replay(&mut files, parts[3], &body);
    }
    files
}

#[test]
fn a_backup_taken_under_load_restores_into_a_new_cluster_byte_for_byte() {
    let mut c = Cluster::start(3, &["--snapshot-every", "1000000", "--cluster-token", TOKEN]);
    let leader = c.wait_leader();
    let follower = c.followers(leader)[0];
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();

    // Writers and deleters keep going on every node while the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (stop, names) = (stop.clone(), names.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let addr = &names[(n as usize + w) % names.len()];
                    let path = format!("/files/w{w}/d{}/k{}", n % 3, n % 17);
                    if n % 7 == 6 {
                        let _ = http(addr, "DELETE", &path, b"");
                    } else {
                        let _ = http(addr, "PUT", &path, format!("w{w} n{n}").as_bytes());
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    wait_for(Duration::from_secs(30), "some load", || {
        (c.nodes[leader].status()?["commit_index"].as_u64()? > 150).then_some(())
    });
    let backups = c.tmp.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let out = raftd(&["backup", "--from", &names[follower], backups.to_str().unwrap()]);
    let said = ok(&out);
    wait_for(Duration::from_secs(30), "more load after the backup", || {
        (c.nodes[leader].status()?["commit_index"].as_u64()? > 300).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let ops: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let file = std::fs::read_dir(&backups)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let fname = file.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        fname.starts_with("raftd-backup-") && fname.ends_with(".tar"),
        "{fname}"
    );
    assert!(said.contains(&fname), "{said}");

    // A plain tar: tar lists it, the header entry first, the end entry last.
    let listing = Command::new("tar").arg("tf").arg(&file).output().unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    let entries: Vec<&str> = listing.lines().collect();
    assert_eq!(entries.first(), Some(&"raftd-backup.json"));
    assert_eq!(entries.last(), Some(&"raftd-backup.end"));
    let mut header = String::new();
    Command::new("tar")
        .arg("xOf")
        .arg(&file)
        .arg("raftd-backup.json")
        .output()
        .unwrap()
        .stdout
        .as_slice()
        .read_to_string(&mut header)
        .unwrap();
    let header: serde_json::Value = serde_json::from_str(&header).unwrap();
    let (index, term) = (
        header["index"].as_u64().unwrap(),
        header["term"].as_u64().unwrap(),
    );
    assert_eq!(fname, format!("raftd-backup-{term}-{index}.tar"));

    // What the backup must hold: the source's files as of its index, replayed from its log.
    let (code, log) = http(&names[leader], "GET", "/log", b"").unwrap();
    assert_eq!(code, 200);
    let expected = files_at(&String::from_utf8(log).unwrap(), index);
    assert!(
        expected.len() > 10,
        "the load wrote too little: {}",
        expected.len()
    );
    let final_count = tree(&c.nodes[leader].dir.join("files")).len();
    println!(
        "backup at index {index} holds {} files; {ops} operations in all, {final_count} files at the end",
        expected.len()
    );

    // Restore into a new cluster: the old one goes away, the restored node starts alone,
    // two new nodes join it.
    for n in &mut c.nodes {
        n.kill();
    }
    let first = c.nodes.len();
    let listener = common::listener();
    let port = listener.local_addr().unwrap().port().to_string();
    let dir = c.tmp.path().join("restored.1");
    let out = raftd(&[
        "restore",
        file.to_str().unwrap(),
        dir.to_str().unwrap(),
        "--host",
        "127.0.0.1",
        "--port",
        &port,
    ]);
    assert!(ok(&out).contains(&format!("at index {index}")));
    c.add_node_at(listener, dir, None, &[]);
    let seed = c.nodes[first].name.clone();
    c.add_node(Some(&seed), &[]);
    c.add_node(Some(&seed), &[]);
    c.nodes.drain(..first);
    c.wait_members(3);
    for i in 0..3 {
        let node = &c.nodes[i];
        wait_for(Duration::from_secs(30), "the restored cluster to apply", || {
            let s = node.status()?;
            (s["applied_index"].as_u64()? >= index).then_some(())
        });
        let got = tree(&node.dir.join("files"));
        assert!(
            got == expected,
            "{} differs from the source at index {index}",
            node.name
        );
    }
    // It is a working cluster: it takes writes.
    let (code, _) = c.nodes[2].request("PUT", "/files/after-restore", b"yes");
    assert_eq!(code, 200);
    c.wait_replicated(0, "after-restore", b"yes");
}

#[test]
fn ctl_runs_the_cluster_from_the_command_line() {
    let mut c = Cluster::start(3, &["--cluster-token", TOKEN]);
    let leader = c.wait_leader();
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    // The first listed member is down: ctl moves on to the next.
    let cluster = format!("127.0.0.1:1,{}", names.join(","));
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--cluster", &cluster];
        all.extend(args);
        raftd(&all)
    };

    let status = ok(&ctl(&["status"]));
    assert!(status.starts_with("NAME"), "{status}");
    for n in &names {
        assert!(status.contains(n.as_str()), "{status}");
    }
    assert!(status.contains(&format!("leader: {}", names[leader])), "{status}");
    let json: serde_json::Value = serde_json::from_str(&ok(&ctl(&["status", "--json"]))).unwrap();
    assert_eq!(json["leader"], names[leader].as_str());
    assert_eq!(json["members"].as_array().unwrap().len(), 3);
    assert!(json["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["answers"] == true));

    assert_eq!(ok(&ctl(&["leader"])).trim(), names[leader]);
    let members: serde_json::Value = serde_json::from_str(&ok(&ctl(&["--json", "members"]))).unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 3);

    // Files: put from a file and from stdin, get, ls, rm.
    let local = c.tmp.path().join("local");
    std::fs::write(&local, b"from a file\n").unwrap();
    ok(&ctl(&["put", "docs/a.txt", local.to_str().unwrap()]));
    let mut child = Command::new(bin())
        .args(["ctl", "--cluster", &cluster, "put", "docs/b.txt"])
        .env("RAFTD_CLUSTER_TOKEN", TOKEN)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"from stdin").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(ok(&ctl(&["get", "docs/a.txt"])), "from a file\n");
    assert_eq!(ok(&ctl(&["ls", "docs"])), "a.txt\nb.txt\n");
    assert_eq!(ok(&ctl(&["ls"])), "docs/\n");
    let ls: Vec<String> = serde_json::from_str(&ok(&ctl(&["ls", "docs", "--json"]))).unwrap();
    assert_eq!(ls, ["a.txt", "b.txt"]);
    ok(&ctl(&["rm", "docs/a.txt"]));
    let missing = ctl(&["get", "docs/a.txt"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("404"),
        "{missing:?}"
    );

    // The log, as text and as JSON.
    let log = ok(&ctl(&["log"]));
    assert!(
        log.lines()
            .any(|l| l.contains("file:write") && l.contains("docs/b.txt")),
        "{log}"
    );
    let last: serde_json::Value =
        serde_json::from_str(ok(&ctl(&["log", "--json"])).lines().last().unwrap()).unwrap();
    assert_eq!(last["command"], "file:delete");
    assert_eq!(last["data"]["filename"], "docs/a.txt");

    // `log --follow` prints entries as they are appended.
    let mut follow = Command::new(bin())
        .args(["ctl", "--cluster", &cluster, "log", "--follow"])
        .env("RAFTD_CLUSTER_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Everything so far comes first; then a new write shows up.
    wait_for(Duration::from_secs(10), "the existing log", || {
        rx.recv_timeout(Duration::from_millis(50))
            .ok()?
            .contains("docs/a.txt")
            .then_some(())
    });
    assert_eq!(c.nodes[leader].request("PUT", "/files/followed", b"x").0, 200);
    wait_for(
        Duration::from_secs(10),
        "the new entry in the followed log",
        || {
            rx.recv_timeout(Duration::from_millis(50))
                .ok()?
                .contains("\"filename\":\"followed\"")
                .then_some(())
        },
    );
    let _ = follow.kill();
    let _ = follow.wait();

    // Snapshots on every member.
    let snap = ok(&ctl(&["snapshot"]));
    assert_eq!(snap.matches("at index").count(), 3, "{snap}");

    // Leadership moves where it is told to.
    let target = c.followers(leader)[0];
    let said = ok(&ctl(&["transfer-leader", &names[target]]));
    assert!(said.contains(&names[target]), "{said}");
    assert_eq!(c.wait_leader(), target);
    assert_eq!(ok(&ctl(&["leader"])).trim(), names[target]);
    // Writes work right after, through any node.
    ok(&ctl(&["put", "after-transfer", local.to_str().unwrap()]));

    // Without the token the cluster refuses membership work; with it, a member is removed.
    let refused = Command::new(bin())
        .args(["ctl", "--cluster", &names[0], "remove", &names[leader]])
        .env_remove("RAFTD_CLUSTER_TOKEN")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{refused:?}"
    );
    let gone = names[leader].clone();
    ok(&ctl(&["remove", &gone]));
    let members: serde_json::Value = serde_json::from_str(&ok(&ctl(&["--json", "members"]))).unwrap();
    assert!(!members["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == gone.as_str()));
}

#[test]
fn log_verify_finds_planted_damage_and_repair_drops_a_torn_tail() {
    let mut c = Cluster::start(1, &[]);
    c.wait_leader();
    for i in 0..8 {
        assert_eq!(c.nodes[0].request("PUT", &format!("/files/f{i}"), b"data").0, 200);
    }
    c.nodes[0].signal(libc::SIGTERM);
    wait_for(Duration::from_secs(20), "the node to stop", || {
        (!c.nodes[0].is_running()).then_some(())
    });
    c.nodes[0].kill();
    let dir = c.nodes[0].dir.clone();
    let dir_s = dir.to_str().unwrap();
    let log_path = dir.join("log");
    let good = std::fs::read(&log_path).unwrap();
    let lines = good.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();

    let out = raftd(&["log", "verify", dir_s]);
    assert!(ok(&out).contains(&format!("{lines} entries verified")));

    // A flipped byte inside line 5, with good lines after it: corruption, at that line.
    let mut bad = good.clone();
    let line5 = bad
        .split(|&b| b == b'\n')
        .take(4)
        .map(|l| l.len() + 1)
        .sum::<usize>();
    bad[line5 + 40] ^= 0x01;
    std::fs::write(&log_path, &bad).unwrap();
    let out = raftd(&["log", "verify", dir_s]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:5:", log_path.display())), "{err}");
    let out = raftd(&["log", "repair", "--yes", dir_s]);
    assert!(!out.status.success(), "repair must not drop synced entries");
    assert_eq!(std::fs::read(&log_path).unwrap(), bad);

    // A torn last append: reported, repaired after confirmation, then clean.
    let mut torn = good.clone();
    torn.extend_from_slice(b"0badc0de 00000000000000");
    std::fs::write(&log_path, &torn).unwrap();
    let out = raftd(&["log", "verify", dir_s]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("torn tail from line {}", lines + 1)));
    let mut repair = Command::new(bin())
        .args(["log", "repair", dir_s])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    repair.stdin.take().unwrap().write_all(b"y\n").unwrap();
    assert!(repair.wait_with_output().unwrap().status.success());
    assert_eq!(std::fs::read(&log_path).unwrap(), good);
    assert!(raftd(&["log", "verify", dir_s]).status.success());
    // And the node starts on it.
    c.nodes[0].spawn();
    c.wait_leader();
    assert_eq!(c.nodes[0].get("/files/f7").1, b"data");
}

#[test]
fn json_logs_carry_node_term_and_request_ids() {
    let mut c = Cluster::start(1, &["--log-format", "json", "-v"]);
    c.wait_leader();
    let addr = c.nodes[0].name.clone();
    // The request id a client sends comes back and goes into the access log.
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(conn, "PUT /files/x HTTP/1.1\r\nHost: t\r\nX-Request-Id: ops-req-42\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_lowercase().contains("x-request-id: ops-req-42"),
        "{answer}"
    );
    // One without an id gets one made up.
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "GET /status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.to_lowercase().contains("x-request-id: "), "{answer}");

    let logs = wait_for(Duration::from_secs(10), "the access log line", || {
        let logs = c.nodes[0].logs();
        logs.contains("ops-req-42").then_some(logs)
    });
    let mut access = 0;
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["node"], addr.as_str(), "{line}");
        assert!(
            v["term"].is_u64() && v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["target"] == "raftd::access" && v["fields"]["request_id"] == "ops-req-42" {
            assert_eq!(v["fields"]["status"], 200);
            assert_eq!(v["fields"]["path"], "/files/x");
            assert!(v["term"].as_u64().unwrap() >= 1);
            access += 1;
        }
    }
    assert_eq!(access, 1, "{logs}");
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line() {
    let bash = ok(&raftd(&["completions", "bash"]));
    assert!(
        bash.contains("_raftd") && bash.contains("transfer-leader"),
        "{bash}"
    );
    let zsh = ok(&raftd(&["completions", "zsh"]));
    assert!(zsh.contains("#compdef raftd"));
    let man = ok(&raftd(&["man"]));
    assert!(
        man.contains(".TH raftd 1") && man.contains("cluster\\-token"),
        "{man}"
    );
    // A data directory named like a tool still works when given as a path.
    let help = ok(&raftd(&["--help"]));
    assert!(help.contains("./NAME"));
}

/// An open `GET /watch…` stream, read event by event.
struct Watch {
    conn: std::io::BufReader<std::net::TcpStream>,
}

impl Watch {
    /// Opens the stream; the answer's status and (for an error) body.
    fn open(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<Watch, (u16, String)> {
        use std::io::BufRead;
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        write!(conn, "GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").unwrap();
        let mut reader = std::io::BufReader::new(conn);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        let code: u16 = status.split(' ').nth(1).unwrap().parse().unwrap();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        if code != 200 {
            let mut body = String::new();
            let _ = reader.get_mut().set_read_timeout(Some(Duration::from_secs(2)));
            let _ = reader.read_to_string(&mut body);
            return Err((code, body));
        }
        Ok(Watch { conn: reader })
    }

    /// The next event's (id, event, data), skipping keepalives; chunked framing lines are
    /// skipped too (hex sizes and blanks never start with a field name).
    fn next(&mut self) -> (Option<u64>, String, serde_json::Value) {
        use std::io::BufRead;
        let (mut id, mut kind, mut data) = (None, String::new(), None);
        loop {
            let mut line = String::new();
            assert!(self.conn.read_line(&mut line).unwrap() > 0, "the stream ended");
            let line = line.trim_end();
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("event: ") {
                kind = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(v).unwrap());
            } else if line.is_empty() {
                if let Some(data) = data.take() {
                    return (id, kind, data);
                }
            }
        }
    }
}

#[test]
fn the_watch_stream_follows_a_prefix_resumes_and_says_when_history_is_gone() {
    let mut c = Cluster::start(3, &["--cluster-token", TOKEN, "--snapshot-every", "1000000"]);
    let leader = c.wait_leader();
    let f = c.followers(leader)[0];
    let (l, fname) = (c.nodes[leader].name.clone(), c.nodes[f].name.clone());
    let mut live = Watch::open(&fname, "/watch/w", &[]).unwrap();
    for i in 0..10 {
        let path = if i % 3 == 2 {
            format!("/files/x/{i}")
        } else {
            format!("/files/w/{i}")
        };
        assert_eq!(http(&l, "PUT", &path, b"v").unwrap().0, 200);
    }
    assert_eq!(http(&l, "DELETE", "/files/w/0", b"").unwrap().0, 200);
    // Only what is under w/, in log order, with index, term, operation and paths.
    let events: Vec<_> = (0..8).map(|_| live.next()).collect();
    let mut last = 0;
    for (id, kind, data) in &events {
        let index = data["index"].as_u64().unwrap();
        assert_eq!(*id, Some(index));
        assert!(index > last, "log order");
        last = index;
        assert_eq!(data["op"], kind.as_str());
        assert!(data["term"].as_u64().unwrap() >= 1);
        let paths = data["paths"].as_array().unwrap();
        assert!(
            paths.iter().all(|p| p.as_str().unwrap().starts_with("w/")),
            "{data}"
        );
        assert!(data.get("content").is_none());
    }
    assert_eq!(events[7].1, "file:delete");
    assert_eq!(events[7].2["paths"][0], "w/0");

    // Resuming after the third event (Last-Event-ID, as a browser does) gives the rest, no
    // gap and no repeat; ?from= starts at an index.
    let third = events[2].0.unwrap().to_string();
    let mut resumed = Watch::open(&fname, "/watch/w", &[("Last-Event-ID", &third)]).unwrap();
    for want in &events[3..] {
        assert_eq!(&resumed.next(), want);
    }
    let from = events[5].0.unwrap();
    let mut from_index = Watch::open(&l, &format!("/watch/w?from={from}"), &[]).unwrap();
    for want in &events[5..] {
        assert_eq!(&from_index.next(), want);
    }
    // The whole tree: every write, including x/.
    let mut everything = Watch::open(&fname, &format!("/watch?from={}", events[0].0.unwrap()), &[]).unwrap();
    let kinds: Vec<String> = (0..11)
        .map(|_| everything.next().2["paths"][0].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.iter().any(|p| p.starts_with("x/")), "{kinds:?}");

    // `raftd ctl watch` prints each change as it happens.
    let mut ctl = Command::new(bin())
        .args(["ctl", "--cluster", &fname, "watch", "w"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = ctl.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The watcher starts at the next applied entry: write until one arrives.
    let line = wait_for(Duration::from_secs(20), "ctl watch output", || {
        assert_eq!(http(&l, "PUT", "/files/w/ctl", b"v").unwrap().0, 200);
        rx.recv_timeout(Duration::from_millis(200)).ok()
    });
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(&fields[2..], ["file:write", "w/ctl"], "{line}");
    let _ = ctl.kill();
    let _ = ctl.wait();

    // History compacted into a snapshot is gone: 410, saying from where to start.
    for n in &c.nodes {
        let auth = format!("Bearer {TOKEN}");
        let (code, _) = http_with(
            &n.name,
            "POST",
            "/cluster/snapshot",
            &[("Authorization", &auth)],
            b"",
        )
        .unwrap();
        assert_eq!(code, 200);
    }
    // openraft keeps half of --snapshot-every after a snapshot; restart with a small one.
    for i in 0..3 {
        c.nodes[i].signal(libc::SIGTERM);
        wait_for(Duration::from_secs(20), "a clean stop", || {
            (!c.nodes[i].is_running()).then_some(())
        });
        c.nodes[i].kill();
        let at = c.nodes[i]
            .args
            .iter()
            .position(|a| a == "--snapshot-every")
            .unwrap();
        c.nodes[i].args[at + 1] = "4".into();
        c.nodes[i].spawn();
    }
    c.wait_leader();
    let auth = format!("Bearer {TOKEN}");
    for _ in 0..8 {
        let (code, _) = c.nodes[f].request("PUT", "/files/y/more", b"v");
        assert_eq!(code, 200);
    }
    let (code, body) = http_with(
        &fname,
        "POST",
        "/cluster/snapshot",
        &[("Authorization", &auth)],
        b"",
    )
    .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let gone = wait_for(Duration::from_secs(20), "the early log to be compacted", || {
        Watch::open(&fname, &format!("/watch/w?from={}", events[0].0.unwrap()), &[]).err()
    });
    assert_eq!(gone.0, 410, "{}", gone.1);
    assert!(gone.1.contains("compacted"), "{}", gone.1);
}

#[test]
fn bench_drives_a_cluster_and_reports() {
    let mut c = Cluster::start(3, &[]);
    c.wait_leader();
    let addr = c.nodes[0].name.clone();
    let run = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["bench", "--json", "--cluster", &addr];
        all.extend(args);
        serde_json::from_str(ok(&raftd(&all)).trim()).unwrap()
    };
    let writes = run(&["-w", "write", "--count", "40", "--clients", "4", "--run", "t1"]);
    assert_eq!(
        (writes["ops"].as_u64(), writes["errors"].as_u64()),
        (Some(40), Some(0)),
        "{writes}"
    );
    assert!(writes["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(writes["p99_ms"].as_f64().unwrap() >= writes["p50_ms"].as_f64().unwrap());
    // Every write landed: 40 new files under bench/t1/.
    let (_, listing) = http(&addr, "GET", "/files/bench/t1/c0", b"").unwrap();
    assert!(!listing.is_empty());
    let files = |dir: &str| {
        let (_, body) = http(&addr, "GET", &format!("/files/bench/t1/{dir}"), b"").unwrap();
        String::from_utf8(body).unwrap().lines().count()
    };
    assert_eq!((0..4).map(|c| files(&format!("c{c}"))).sum::<usize>(), 40);
    // Reads through a follower of prefilled keys.
    let reads = run(&["-w", "read", "--keys", "20", "--count", "60", "--via", "follower"]);
    assert_eq!(
        (reads["ops"].as_u64(), reads["errors"].as_u64()),
        (Some(60), Some(0)),
        "{reads}"
    );
    assert_eq!(
        http(&addr, "GET", "/files/bench/k19", b"").unwrap().0,
        200,
        "prefilled"
    );
    // The table for people.
    let table = ok(&raftd(&[
        "bench",
        "--cluster",
        &addr,
        "-w",
        "mix",
        "--count",
        "20",
        "--keys",
        "5",
    ]));
    assert!(
        table.starts_with("workload") && table.contains("raftd:mix"),
        "{table}"
    );
}
