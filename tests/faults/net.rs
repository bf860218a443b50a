//! A private network for the fault suite: each node in its own network namespace, all joined
//! by a bridge that lives in a hub namespace of its own, and the test (the clients) reaching
//! the bridge over one more veth pair.
//!
//! The bridge sits in its own namespace because a host with Docker drops bridged traffic in its
//! `FORWARD` chain; a fresh namespace has an empty firewall. Links between nodes are cut with
//! `blackhole` routes on both ends — no firewall, no `tc` — so a cut pair exchanges no packet
//! at all (a half-open connection just times out, as in a real partition), while clients keep
//! reaching every node, as Jepsen's do.
//!
//! Addresses: `10.231.<subnet>.0/24`, the test at `.1`, node `i` at `.(11 + i)`. Everything is
//! named after this process (`rf<pid>…`) and removed on drop; leftovers of a killed earlier run
//! (whose process is gone) are removed at start.

use std::collections::BTreeSet;
use std::process::Command;

pub struct Net {
    /// A shell started before any client opened a file, that runs the `ip` commands of the
    /// faults. Starting `ip` from this process instead would make each `exec` close the
    /// child's copies of the FUSE clients' open files — and every close is a FUSE flush,
    /// which commits and, during a partition, waits out the request timeout (it held the fault
    /// injector 14 s once).
    shell: std::sync::Mutex<Shell>,
    tag: String,
    /// Each node namespace, open, for `setns` in a child about to start.
    handles: Vec<std::fs::File>,
    subnet: u8,
    nodes: usize,
    cut: BTreeSet<(usize, usize)>,
}

/// Runs `ip` with `args`; panics with its stderr if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// `ip` for clean-up: failures are expected (already gone) and ignored.
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

impl Net {
    /// Why namespaces cannot be used here, if they cannot (not root, no `ip`, no permission).
    pub fn unavailable() -> Option<String> {
        if unsafe { libc::geteuid() } != 0 {
            return Some("network namespaces need root".into());
        }
        let probe = format!("rfprobe{}", std::process::id());
        match Command::new("ip").args(["netns", "add", &probe]).output() {
            Err(e) => Some(format!("cannot run ip (iproute2): {e}")),
            Ok(o) if !o.status.success() => Some(format!(
                "cannot create a network namespace: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Ok(_) => {
                ip_quiet(&["netns", "del", &probe]);
                None
            }
        }
    }

    /// Creates the hub, the bridge and `nodes` namespaces, all links up.
    pub fn create(nodes: usize) -> Net {
        sweep_leftovers();
        let pid = std::process::id();
        let mut net = Net {
            shell: std::sync::Mutex::new(Shell::start()),
            tag: format!("rf{pid}"),
            subnet: (pid % 250) as u8 + 1,
            nodes,
            cut: BTreeSet::new(),
            handles: Vec::new(),
        };
        let hub = net.hub();
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        // The test's own leg: host side in this namespace, the other end on the bridge.
        let host_leg = format!("{}c", net.tag);
        ip(&[
            "link", "add", &host_leg, "type", "veth", "peer", "name", "client", "netns", &hub,
        ]);
        ip(&["-n", &hub, "link", "set", "client", "master", "br0", "up"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.host_addr()),
            "dev",
            &host_leg,
        ]);
        ip(&["link", "set", &host_leg, "up"]);
        for i in 0..nodes {
            let ns = net.ns(i);
            let port = format!("n{i}");
            ip(&["netns", "add", &ns]);
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let handle = std::fs::File::open(format!("/run/netns/{ns}")).expect("open the namespace");
            net.handles.push(handle);
        }
        net
    }

    fn hub(&self) -> String {
        format!("{}hub", self.tag)
    }

    /// Node `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("10.231.{}.{}", self.subnet, 11 + i)
    }

    /// The test's address on the bridge.
    fn host_addr(&self) -> String {
        format!("10.231.{}.1", self.subnet)
    }

    /// Makes `cmd` start inside node `i`'s namespace (network only: its FUSE mount stays
    /// visible to the test).
    pub fn enter(&self, cmd: &mut std::process::Command, i: usize) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let fd = self.handles[i].as_raw_fd();
        // Safety: setns is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Cuts the link between nodes `a` and `b` (both directions).
    pub fn cut(&mut self, a: usize, b: usize) {
        let pair = (a.min(b), a.max(b));
        if a == b || !self.cut.insert(pair) {
            return;
        }
        self.blackhole("add", a, b);
    }

    /// Adds or deletes the routes that drop all traffic between `a` and `b`.
    fn blackhole(&self, verb: &str, a: usize, b: usize) {
        let shell = &mut self.shell.lock().unwrap();
        for (from, to) in [(a, b), (b, a)] {
            let target = format!("{}/32", self.addr(to));
            shell.ip(&["-n", &self.ns(from), "route", verb, "blackhole", &target]);
        }
    }

    /// Splits the nodes into `side` and the rest: every link across is cut.
    pub fn partition(&mut self, side: &[usize]) {
        for &a in side {
            for b in 0..self.nodes {
                if !side.contains(&b) {
                    self.cut(a, b);
                }
            }
        }
    }

    /// Restores every cut link.
    pub fn heal(&mut self) {
        for (a, b) in std::mem::take(&mut self.cut) {
            self.blackhole("del", a, b);
        }
    }
}

/// A `sh` reading commands from a pipe; see [`Net`]'s `shell`.
struct Shell {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl Shell {
    fn start() -> Shell {
        use std::process::Stdio;
        let mut child = Command::new("sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sh");
        let input = child.stdin.take().unwrap();
        let output = std::io::BufReader::new(child.stdout.take().unwrap());
        Shell { child, input, output }
    }

    /// Runs `ip` with `args` (plain words) in the shell; panics with its output if it fails.
    fn ip(&mut self, args: &[&str]) {
        use std::io::{BufRead, Write};
        let command = format!("ip {}", args.join(" "));
        writeln!(self.input, "{command} 2>&1; echo \"rc=$?\"").expect("write to sh");
        let mut said = String::new();
        loop {
            let mut line = String::new();
            let n = self.output.read_line(&mut line).expect("read from sh");
            assert!(n > 0, "sh exited");
            match line.trim().strip_prefix("rc=") {
                Some("0") => return,
                Some(rc) => panic!("{command}: exit {rc}: {}", said.trim()),
                None => said.push_str(&line),
            }
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        remove(&self.tag);
    }
}

/// Removes every namespace and link named with `tag`.
fn remove(tag: &str) {
    ip_quiet(&["link", "del", &format!("{tag}c")]);
    let list = Command::new("ip").args(["netns", "list"]).output();
    let list = list.map(|o| String::from_utf8_lossy(&o.stdout).to_string());
    for line in list.unwrap_or_default().lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(tag) && name[tag.len()..].starts_with(['n', 'h']) {
            ip_quiet(&["netns", "del", name]);
        }
    }
}

/// Removes what an earlier run that was killed left behind (its process no longer exists).
fn sweep_leftovers() {
    let list = Command::new("ip").args(["netns", "list"]).output();
    let list = list.map(|o| String::from_utf8_lossy(&o.stdout).to_string());
    let mut dead = BTreeSet::new();
    for line in list.unwrap_or_default().lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("rf") else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let gone = |pid: &u32| !std::path::Path::new(&format!("/proc/{pid}")).exists();
        if let Some(pid) = pid.parse::<u32>().ok().filter(gone) {
            dead.insert(format!("rf{pid}"));
        }
    }
    for tag in dead {
        remove(&tag);
    }
}
