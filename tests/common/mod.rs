//! TestCluster: real `raftd` processes on loopback, each with its own temp data directory.
//!
//! Each node's port is bound here first (port 0) and handed to the process as its listening
//! socket, so no other test can take it in between. Every
//! wait polls a condition with a deadline; nothing sleeps a fixed time. Dropping the cluster
//! kills every process it started (and the temp dirs go with it).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The raftd binary cargo built for these tests, or `RAFTD_BIN` if set (benchmarks compare
/// two builds with it).
pub fn bin() -> String {
    std::env::var("RAFTD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_raftd").to_string())
}

/// A listener on a free loopback port, bound before any node starts.
pub fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// Hands `listener` to the child as its listening socket (descriptor 3 with `LISTEN_FDS=1`, as
/// systemd's socket activation does): the port is bound before the child starts, so no
/// other test can take it in between.
pub fn pass_listener(cmd: &mut Command, listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    cmd.env("LISTEN_FDS", "1").env_remove("LISTEN_PID");
    // Safety: dup2 and fcntl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let ok = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Minimal blocking HTTP/1.1 client (one request per connection), binary-safe.
pub fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    http_with(addr, method, path, &[], body)
}

/// [`http`] with extra request headers.
pub fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    http_within(addr, method, path, headers, body, Duration::from_secs(30))
}

/// [`http_with`] that gives up (an error) when connecting or any read or write takes longer
/// than `timeout`.
pub fn http_within(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    use std::net::ToSocketAddrs;
    let sock = (addr.to_socket_addrs()?.next()).ok_or_else(|| std::io::Error::other("no address"))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let header = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = header
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status"))?;
    Ok((status, raw[split + 4..].to_vec()))
}

/// An HTTPS request through curl with the given TLS arguments (`--cacert`, `--cert`, …):
/// (status, body), status 0 when no HTTP answer came (refused handshake, no connection).
pub fn https(addr: &str, tls: &[String], method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut child = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-X",
            method,
            "--data-binary",
            "@-",
            "-o",
            "-",
        ])
        .args(["-w", "%{stderr}\n%{http_code}"])
        .args(tls)
        .arg(format!("https://{addr}{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run curl");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let code = err
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (code, out.stdout)
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One node: its name, data dir, and process (if running).
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub args: Vec<String>,
    pub child: Option<Child>,
    pub stderr: PathBuf,
    /// curl's TLS arguments when the node serves HTTPS.
    pub tls: Option<Vec<String>>,
    /// The socket for the next start (bound when the node was added).
    pub listener: Option<TcpListener>,
}

impl Node {
    /// Any request, over HTTPS when the node serves it: (status, body), 0 without an answer.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        match &self.tls {
            Some(tls) => https(&self.name, tls, method, path, body),
            None => http(&self.name, method, path, body).unwrap_or((0, Vec::new())),
        }
    }

    /// GET returning (status, body).
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        self.request("GET", path, b"")
    }

    /// POST returning (status, body).
    pub fn post(&self, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        self.request("POST", path, body)
    }

    /// DELETE returning (status, body).
    pub fn delete(&self, path: &str) -> (u16, Vec<u8>) {
        self.request("DELETE", path, b"")
    }

    /// `/status` as JSON, if the node answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        match self.get("/status") {
            (200, body) => serde_json::from_slice(&body).ok(),
            _ => None,
        }
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The node's stderr so far (for failure messages).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Starts the process with the stored args (restart keeps the data dir), handing it its
    /// port already bound (bound again on a restart).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .unwrap();
        let listener = self
            .listener
            .take()
            .unwrap_or_else(|| TcpListener::bind(&self.name).expect("rebind the port"));
        let mut cmd = Command::new(bin());
        cmd.arg(&self.dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        pass_listener(&mut cmd, &listener);
        self.child = Some(cmd.spawn().expect("spawn raftd"));
    }
}

/// One cluster at a time per test binary: six Raft nodes with 100 ms heartbeats on two cores
/// would measure the machine's contention, not raftd's failover.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A cluster of real processes.
pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub nodes: Vec<Node>,
    /// curl's TLS arguments for every node, when the cluster serves HTTPS.
    pub tls: Option<Vec<String>>,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.signal(libc::SIGCONT);
            n.kill();
        }
        // A killed node leaves its FUSE mount behind: detach everything under our temp dir.
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for mount in table.lines().filter_map(|l| l.split(' ').nth(4)) {
            if Path::new(mount).starts_with(self.tmp.path()) {
                let c = std::ffi::CString::new(mount).unwrap();
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

impl Cluster {
    /// No nodes yet; holds this test binary's turn until dropped.
    pub fn empty() -> Cluster {
        let turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Cluster {
            tmp: tempfile::tempdir().unwrap(),
            nodes: Vec::new(),
            tls: None,
            _turn: turn,
        }
    }

    /// Starts `n` nodes: the first initializes, the rest join it; waits until all are voters.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with(n, |_, _| extra.iter().map(|s| s.to_string()).collect())
    }

    /// Like `start`, with per-node extra arguments from `args(position, temp dir)`.
    pub fn start_with(n: usize, args: impl Fn(usize, &Path) -> Vec<String>) -> Cluster {
        Cluster::start_full(n, None, args)
    }

    /// Like `start_with`, talking to the nodes over HTTPS with curl's `tls` arguments if given.
    pub fn start_full(
        n: usize,
        tls: Option<Vec<String>>,
        args: impl Fn(usize, &Path) -> Vec<String>,
    ) -> Cluster {
        let mut cluster = Cluster::empty();
        cluster.tls = tls;
        for i in 0..n {
            let join = (i > 0).then(|| cluster.nodes[0].name.clone());
            let extra = args(i, cluster.tmp.path());
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            cluster.add_node(join.as_deref(), &extra);
            if i == 0 {
                cluster.wait_leader();
            }
        }
        cluster.wait_members(n);
        cluster
    }

    /// Adds and starts a node, joining through `join` if given.
    pub fn add_node(&mut self, join: Option<&str>, extra: &[&str]) -> usize {
        let dir = self.tmp.path().join(format!("node.{}", self.nodes.len() + 1));
        self.add_node_at(listener(), dir, join, extra)
    }

    /// Adds and starts a node on `listener`'s port with data directory `dir` (which may
    /// already hold a node, e.g. one made by `raftd restore`).
    pub fn add_node_at(
        &mut self,
        listener: TcpListener,
        dir: PathBuf,
        join: Option<&str>,
        extra: &[&str],
    ) -> usize {
        let i = self.nodes.len();
        let port = listener.local_addr().unwrap().port();
        let mut args = vec![
            "--host".to_string(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
        ];
        if let Some(j) = join {
            args.extend(["--join".to_string(), j.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let stderr = self.tmp.path().join(format!("node.{}.log", i + 1));
        let name = format!("127.0.0.1:{port}");
        let tls = self.tls.clone();
        let mut node = Node {
            name,
            dir,
            args,
            child: None,
            stderr,
            tls,
            listener: Some(listener),
        };
        node.spawn();
        self.nodes.push(node);
        i
    }

    /// Waits until every running node agrees on one leader; returns its position.
    pub fn wait_leader(&mut self) -> usize {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect();
        let nodes = &self.nodes;
        wait_for(Duration::from_secs(20), "an agreed leader", || {
            let mut leader = None;
            for &i in &running {
                let s = nodes[i].status()?;
                let l = s["leader"].as_str()?.to_string();
                if leader.get_or_insert(l.clone()) != &l {
                    return None;
                }
            }
            let name = leader?;
            let pos = nodes.iter().position(|n| n.name == name)?;
            (nodes[pos].status()?["state"] == "leader").then_some(pos)
        })
    }

    /// Waits until the leader reports `n` voting members.
    pub fn wait_members(&mut self, n: usize) {
        let leader = self.wait_leader();
        let node = &self.nodes[leader];
        wait_for(Duration::from_secs(30), "all members to join", || {
            (node.status()?["members"].as_array()?.len() == n).then_some(())
        });
    }

    /// Positions of running nodes other than `leader`.
    pub fn followers(&self, leader: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| i != leader && self.nodes[i].child.is_some())
            .collect()
    }

    /// Waits until node `i`'s local files (stale read) show `path` = `want`.
    pub fn wait_replicated(&self, i: usize, path: &str, want: &[u8]) {
        let node = &self.nodes[i];
        wait_for(
            Duration::from_secs(20),
            &format!("{path} on {}", node.name),
            || {
                let (code, body) = node.get(&format!("/files/{path}?consistency=stale"));
                (code == 200 && body == want).then_some(())
            },
        );
    }
}

/// Data directory file contents helper.
pub fn read_data_file(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}
