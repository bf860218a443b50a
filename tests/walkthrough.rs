//! The README walkthrough, typed at real prompts through a pseudo-terminal: three nodes
//! started as `raftd DIR`, a write with POST, reads on every node, the log file's lines,
//! and a restart that asks nothing.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// A child process whose stdin and stdout are a pseudo-terminal.
struct Tty {
    child: Child,
    master: File,
    output: Arc<Mutex<String>>,
}

impl Tty {
    fn spawn(args: &[&str], socket: &std::net::TcpListener, stderr: &std::path::Path) -> Tty {
        let (mut master, mut slave) = (0, 0);
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        let master = unsafe { File::from_raw_fd(master) };
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave))
            .stderr(File::create(stderr).unwrap());
        pass_listener(&mut cmd, socket);
        let child = cmd.spawn().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Tty {
            child,
            master,
            output,
        }
    }

    /// Waits for `text` on the terminal (line ends normalised), then types `answer` + Enter.
    fn expect_then_type(&mut self, text: &str, answer: &str) {
        let output = self.output.clone();
        wait_for(Duration::from_secs(10), &format!("prompt {text:?}"), || {
            output
                .lock()
                .unwrap()
                .replace("\r\n", "\n")
                .contains(text)
                .then_some(())
        });
        self.master.write_all(format!("{answer}\n").as_bytes()).unwrap();
    }

    fn screen(&self) -> String {
        self.output.lock().unwrap().replace("\r\n", "\n")
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const NO_LOG_PROMPT: &str = "\nThis server has no log. Please enter a server in the cluster to join\nto or hit enter to initialize a cluster.\nJoin to (host:port)> ";

#[test]
fn walkthrough_at_the_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |i: usize| tmp.path().join(format!("node.{i}"));
    // Each node's port is bound here and handed over, then typed at the prompt as a user would.
    // (The test drops its copy once the node has it, so a killed node's port refuses.)
    let [s1, s2, s3] = [listener(), listener(), listener()];
    let [p1, p2, p3] = [&s1, &s2, &s3].map(|s| s.local_addr().unwrap().port());

    // Node 1: Enter for the hostname, a port, Enter to initialize.
    let mut n1 = Tty::spawn(&[dir(1).to_str().unwrap()], &s1, &tmp.path().join("1.err"));
    drop(s1);
    n1.expect_then_type("Enter hostname: [localhost] ", "");
    n1.expect_then_type("Enter port: [4001] ", &p1.to_string());
    n1.expect_then_type(&format!("Name: localhost:{p1}\n{NO_LOG_PROMPT}"), "");
    let name1 = format!("localhost:{p1}");
    wait_for(Duration::from_secs(20), "node 1 to lead", || {
        let (code, body) = http(&name1, "GET", "/status", b"").ok()?;
        (code == 200 && String::from_utf8_lossy(&body).contains("\"state\":\"leader\"")).then_some(())
    });

    // Node 2 joins at the prompt; node 3 by flags, with no terminal and so no prompts.
    let mut n2 = Tty::spawn(&[dir(2).to_str().unwrap()], &s2, &tmp.path().join("2.err"));
    drop(s2);
    n2.expect_then_type("Enter hostname: [localhost] ", "");
    n2.expect_then_type("Enter port: [4001] ", &p2.to_string());
    n2.expect_then_type(NO_LOG_PROMPT, &name1);
    let mut n3 = Command::new(bin());
    n3.args([
        dir(3).to_str().unwrap(),
        "--port",
        &p3.to_string(),
        "--join",
        &name1,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    pass_listener(&mut n3, &s3);
    let mut n3 = n3.spawn().unwrap();
    drop(s3);
    let names = [
        name1.clone(),
        format!("localhost:{p2}"),
        format!("localhost:{p3}"),
    ];
    wait_for(Duration::from_secs(30), "three members", || {
        let (_, body) = http(&name1, "GET", "/status", b"").ok()?;
        let status: serde_json::Value = serde_json::from_slice(&body).ok()?;
        (status["members"].as_array()?.len() == 3).then_some(())
    });

    // curl -XPOST http://localhost:4001/files/foo -d BAR; curl http://localhost:400N/files/foo
    assert_eq!(
        http(&name1, "POST", "/files/foo", b"BAR").unwrap(),
        (200, Vec::new())
    );
    for name in &names {
        assert_eq!(
            http(name, "GET", "/files/foo", b"").unwrap(),
            (200, b"BAR".to_vec()),
            "{name}"
        );
    }

    // cat ~/node.1/log: one verified line per entry, the write among them.
    let log = std::fs::read_to_string(dir(1).join("log")).unwrap();
    for (expected_index, line) in log.lines().enumerate() {
        let fields: Vec<&str> = line.splitn(5, ' ').collect();
        assert_eq!(fields.len(), 5, "{line}");
        let (crc, index, term) = (fields[0], fields[1], fields[2]);
        assert!(crc.len() == 8 && index.len() == 16 && term.len() == 16, "{line}");
        assert_eq!(
            crc,
            format!("{:08x}", crc32fast::hash(format!("{}\n", &line[9..]).as_bytes()))
        );
        assert_eq!(u64::from_str_radix(index, 16).unwrap(), expected_index as u64);
        assert!(
            fields[3].starts_with("raft:") || fields[3].starts_with("file:"),
            "{line}"
        );
        serde_json::from_str::<serde_json::Value>(fields[4]).unwrap();
    }
    assert!(
        log.contains(" file:write {\"filename\":\"foo\",\"content\":\"BAR\","),
        "{log}"
    );

    // A restarted node reads its identity from the data dir and asks nothing.
    drop(n1);
    let again = std::net::TcpListener::bind(("127.0.0.1", p1)).unwrap();
    let restarted = Tty::spawn(&[dir(1).to_str().unwrap()], &again, &tmp.path().join("1b.err"));
    drop(again);
    wait_for(Duration::from_secs(20), "node 1 back in the cluster", || {
        let (code, body) = http(&name1, "GET", "/files/foo", b"").ok()?;
        (code == 200 && body == b"BAR").then_some(())
    });
    let screen = restarted.screen();
    assert!(
        screen.contains(&format!("Name: {name1}")) && !screen.contains("Enter"),
        "{screen}"
    );
    drop(n2);
    let _ = n3.kill();
    let mut out = String::new();
    n3.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let _ = n3.wait();
    assert_eq!(
        out,
        format!("Name: localhost:{p3}\n"),
        "no prompts without a terminal"
    );
}

#[test]
fn without_a_terminal_defaults_apply() {
    // The default name is localhost:4001; the node serves on a socket handed to it, so the
    // test never touches port 4001 (the README's and the docker demo's).
    let tmp = tempfile::tempdir().unwrap();
    let socket = listener();
    let addr = socket.local_addr().unwrap().to_string();
    let mut cmd = Command::new(bin());
    cmd.arg(tmp.path().join("node"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    pass_listener(&mut cmd, &socket);
    let mut child = cmd.spawn().unwrap();
    drop(socket);
    let status = wait_for(Duration::from_secs(20), "a leader named localhost:4001", || {
        let (code, body) = http(&addr, "GET", "/status", b"").ok()?;
        let status: serde_json::Value = serde_json::from_slice(&body).ok()?;
        (code == 200 && status["state"] == "leader").then_some(status)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status["name"], "localhost:4001");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("node/info")).unwrap()).unwrap();
    assert_eq!(info["name"], "localhost:4001");
}
