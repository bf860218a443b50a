//! Real `raftd` processes, one per network namespace of a [`Net`], with what the fault
//! injector needs: kill -9 and restart, pause and resume, find the leader, wait until healed.

pub use crate::common::http_within as request;
use crate::common::{bin, wait_for};
use crate::net::Net;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Every node listens on this port, in its own namespace.
const PORT: u16 = 4001;

pub struct Options {
    pub nodes: usize,
    /// Mount each node's tree with FUSE.
    pub fuse: bool,
    /// Put this node's data directory on a tmpfs of this many MiB.
    pub small_disk: Option<(usize, u64)>,
    pub extra: Vec<String>,
}

pub struct Node {
    /// `host:port`, the node's Raft name.
    pub addr: String,
    pub dir: PathBuf,
    pub mount: Option<PathBuf>,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    pub paused: bool,
}

impl Node {
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }
}

pub struct FaultCluster {
    pub nodes: Vec<Node>,
    pub net: Net,
    pub tmp: tempfile::TempDir,
    small_disk: Option<PathBuf>,
}

impl FaultCluster {
    /// Starts the nodes (the first initializes, the others join it) and waits until all are
    /// voters.
    pub fn start(opts: &Options) -> FaultCluster {
        let net = Net::create(opts.nodes);
        let tmp = tempfile::tempdir().unwrap();
        let mut cluster = FaultCluster {
            nodes: Vec::new(),
            net,
            tmp,
            small_disk: None,
        };
        for i in 0..opts.nodes {
            let addr = format!("{}:{PORT}", cluster.net.addr(i));
            let mut dir = cluster.tmp.path().join(format!("node.{}", i + 1));
            if let Some((_, mib)) = opts.small_disk.filter(|&(n, _)| n == i) {
                let disk = cluster.tmp.path().join("small-disk");
                mount_tmpfs(&disk, mib);
                dir = disk.join(format!("node.{}", i + 1));
                cluster.small_disk = Some(disk);
            }
            let mut args = vec![
                "--host".to_string(),
                cluster.net.addr(i),
                "--port".into(),
                PORT.to_string(),
                "--cluster-token".into(),
                "fault-suite".into(),
            ];
            let mount = opts
                .fuse
                .then(|| cluster.tmp.path().join(format!("mnt.{}", i + 1)));
            if let Some(m) = &mount {
                std::fs::create_dir_all(m).unwrap();
                args.extend(["--mount".into(), m.display().to_string()]);
            }
            if i > 0 {
                args.extend(["--join".into(), cluster.nodes[0].addr.clone()]);
            }
            args.extend(opts.extra.iter().cloned());
            let log = cluster.tmp.path().join(format!("node.{}.log", i + 1));
            cluster.nodes.push(Node {
                addr,
                dir,
                mount,
                args,
                child: None,
                log,
                paused: false,
            });
            cluster.start_node(i);
            if i == 0 {
                wait_for(Duration::from_secs(20), "the first leader", || cluster.leader());
            }
        }
        let n = opts.nodes;
        wait_for(Duration::from_secs(30), "every node to join", || {
            let l = cluster.leader()?;
            (cluster.status(l)?["members"].as_array()?.len() == n).then_some(())
        });
        if opts.fuse {
            for i in 0..n {
                let m = cluster.nodes[i].mount.clone().unwrap();
                wait_for(Duration::from_secs(20), "the FUSE mounts", || {
                    is_mounted(&m).then_some(())
                });
            }
        }
        cluster
    }

    /// Starts (or restarts, keeping its data) node `i` in its namespace.
    pub fn start_node(&mut self, i: usize) {
        let node = &self.nodes[i];
        assert!(node.child.is_none(), "{} is running", node.addr);
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg(&node.dir)
            .args(&node.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        self.net.enter(&mut cmd, i);
        let child = cmd.spawn().expect("start raftd");
        let node = &mut self.nodes[i];
        node.child = Some(child);
        node.paused = false;
    }

    /// `kill -9` node `i`.
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        node.paused = false;
    }

    /// Whether node `i`'s process has exited on its own (e.g. a fatal storage error); reaps it.
    pub fn exited(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i];
        let gone = node
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some());
        if gone {
            node.child = None;
        }
        gone
    }

    pub fn pause(&mut self, i: usize) {
        self.nodes[i].signal(libc::SIGSTOP);
        self.nodes[i].paused = true;
    }

    pub fn resume(&mut self, i: usize) {
        self.nodes[i].signal(libc::SIGCONT);
        self.nodes[i].paused = false;
    }

    /// `/status` of node `i`, if it answers within a second.
    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        let node = &self.nodes[i];
        if node.child.is_none() || node.paused {
            return None;
        }
        let (code, body) = request(&node.addr, "GET", "/status", &[], b"", Duration::from_secs(1)).ok()?;
        (code == 200).then(|| serde_json::from_slice(&body).ok())?
    }

    /// The node that says it leads in the newest term.
    pub fn leader(&self) -> Option<usize> {
        // A leader cut off from the others may still think it leads: the newest term wins.
        let mut leader = None;
        let mut newest = 0;
        for i in 0..self.nodes.len() {
            let Some(s) = self.status(i) else { continue };
            let term = s["term"].as_u64().unwrap_or(0);
            if s["state"] == "leader" && term >= newest {
                leader = Some(i);
                newest = term;
            }
        }
        leader
    }

    /// Undoes every fault (links, pauses, dead nodes, the filler on a small disk) and waits
    /// until every node has applied everything the leader committed.
    pub fn heal_all(&mut self) {
        self.net.heal();
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                self.resume(i);
            }
            self.exited(i);
            if !self.nodes[i].is_up() {
                self.start_node(i);
            }
        }
        self.wait_converged();
    }

    /// Waits until one leader has every node as a member and every node applied its commit.
    pub fn wait_converged(&self) {
        let n = self.nodes.len();
        wait_for(
            Duration::from_secs(60),
            "every node to apply the leader's commits",
            || {
                let l = self.leader()?;
                let commit = self.status(l)?["commit_index"].as_u64()?;
                (0..n)
                    .all(|i| {
                        self.status(i).is_some_and(|s| {
                            s["applied_index"].as_u64() == Some(commit)
                                && s["leader"] == self.nodes[l].addr.as_str()
                        })
                    })
                    .then_some(())
            },
        );
    }

    /// The directory that fills up in the disk-full scenario, if this cluster has one.
    pub fn small_disk(&self) -> Option<&Path> {
        self.small_disk.as_deref()
    }
}

impl Drop for FaultCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.resume(i);
            self.kill(i);
        }
        // Killed nodes leave FUSE mounts (and the small disk) behind: detach all of ours.
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = table.lines().filter_map(|l| l.split(' ').nth(4)).collect();
        mounts.reverse();
        for mount in mounts {
            if Path::new(mount).starts_with(self.tmp.path()) {
                let c = std::ffi::CString::new(mount).unwrap();
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

fn is_mounted(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.display().to_string();
    table.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn mount_tmpfs(dir: &Path, mib: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(dir)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount a tmpfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
