//! Clients that record a history: each operation's invocation and completion on one clock and
//! its outcome — ok, failed (certainly not applied) or unknown (may have been applied).
//!
//! Writes carry unique values and an `Idempotency-Key`; a write or delete whose answer is lost
//! (timeout, 503, dropped connection) is retried with the same key, on any node, until a definite
//! answer or its deadline — so most outcomes end known. FUSE clients write with
//! open/write/fsync, retrying the fsync (a failed one leaves the data pending).

use crate::cluster::request;
use crate::rng::Rng;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one operation may keep retrying before its outcome is recorded as unknown.
const GIVE_UP: Duration = Duration::from_secs(20);

/// What a completed operation did or saw. Values are strings; `None` is "no such file".
#[derive(Clone, Debug, PartialEq)]
pub enum What {
    Write(String),
    /// A delete that removed the file.
    Delete,
    /// A delete answered "not found": a read of absence.
    DeleteAbsent,
    /// A linearizable read.
    Read(Option<String>),
    /// A read of the local replica (`?consistency=stale`): any written value may show.
    StaleRead(Option<String>),
}

#[derive(Clone, Debug)]
pub struct Record {
    pub client: String,
    pub key: usize,
    pub call: u64,
    /// `None`: the outcome is unknown.
    pub ret: Option<u64>,
    pub what: What,
}

/// The shared history and clock.
pub struct History {
    start: Instant,
    records: Mutex<Vec<Record>>,
    /// Operations that failed for certain (never applied): counted, not checked.
    failed: Mutex<usize>,
}

impl History {
    pub fn new() -> Arc<History> {
        Arc::new(History {
            start: Instant::now(),
            records: Mutex::new(Vec::new()),
            failed: Mutex::new(0),
        })
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn add(&self, r: Record) {
        self.records.lock().unwrap().push(r);
    }

    fn fail(&self) {
        *self.failed.lock().unwrap() += 1;
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    pub fn failed(&self) -> usize {
        *self.failed.lock().unwrap()
    }
}

/// Where a client sends its operations.
#[derive(Clone)]
pub enum Via {
    /// HTTP to these nodes (`host:port`), one picked per operation.
    Http(Vec<String>),
    /// One node's FUSE mount.
    Fuse(PathBuf),
}

pub struct Client {
    pub name: String,
    pub via: Via,
    pub keys: usize,
    pub rng: Rng,
    pub history: Arc<History>,
    pub stop: Arc<AtomicBool>,
}

/// The file a key lives in, below the tree's root.
pub fn key_path(key: usize) -> String {
    format!("fault/k{key}")
}

impl Client {
    /// Runs operations until `stop`; finishes the one under way (with its retries).
    pub fn run(mut self) {
        let mut n = 0;
        while !self.stop.load(Ordering::Relaxed) {
            n += 1;
            let key = self.rng.below(self.keys as u64) as usize;
            let roll = self.rng.below(100);
            match self.via.clone() {
                Via::Http(nodes) => self.http_op(&nodes, key, roll, n),
                Via::Fuse(mount) => self.fuse_op(&mount, key, roll, n),
            }
            std::thread::sleep(Duration::from_millis(self.rng.below(20)));
        }
    }

    fn record(&self, key: usize, call: u64, ret: Option<u64>, what: What) {
        self.record_at(key, call, ret, what, "");
    }

    /// [`record`](Self::record) naming the node that answered.
    fn record_at(&self, key: usize, call: u64, ret: Option<u64>, what: What, node: &str) {
        let client = match node.rsplit_once(':').and_then(|(host, _)| host.rsplit_once('.')) {
            Some((_, last)) => format!("{}@{last}", self.name),
            None => self.name.clone(),
        };
        self.history.add(Record {
            client,
            key,
            call,
            ret,
            what,
        });
    }

    fn http_op(&mut self, nodes: &[String], key: usize, roll: u64, n: u64) {
        let path = format!("/files/{}", key_path(key));
        let node = nodes[self.rng.below(nodes.len() as u64) as usize].clone();
        let call = self.history.now();
        let timeout = Duration::from_secs(8);
        match roll {
            0..45 => {
                let value = format!("{}-{n}", self.name);
                let outcome = self.mutate(nodes, "PUT", &path, &value, value.as_bytes());
                match outcome {
                    Outcome::Done(200, ret) => self.record(key, call, Some(ret), What::Write(value)),
                    Outcome::Done(..) => self.history.fail(),
                    Outcome::Unknown => self.record(key, call, None, What::Write(value)),
                }
            }
            45..55 => {
                let id = format!("{}-{n}", self.name);
                match self.mutate(nodes, "DELETE", &path, &id, b"") {
                    Outcome::Done(200, ret) => self.record(key, call, Some(ret), What::Delete),
                    Outcome::Done(404, ret) => self.record(key, call, Some(ret), What::DeleteAbsent),
                    Outcome::Done(..) => self.history.fail(),
                    Outcome::Unknown => self.record(key, call, None, What::Delete),
                }
            }
            55..85 => {
                if let Some(seen) = read_answer(request(&node, "GET", &path, &[], b"", timeout)) {
                    let ret = self.history.now();
                    self.record_at(key, call, Some(ret), What::Read(seen), &node);
                }
            }
            _ => {
                let stale = format!("{path}?consistency=stale");
                if let Some(seen) = read_answer(request(&node, "GET", &stale, &[], b"", timeout)) {
                    let ret = self.history.now();
                    self.record_at(key, call, Some(ret), What::StaleRead(seen), &node);
                }
            }
        }
    }

    /// Sends a mutating request with `Idempotency-Key: id` until a definite answer (any node)
    /// or [`GIVE_UP`].
    fn mutate(&mut self, nodes: &[String], method: &str, path: &str, id: &str, body: &[u8]) -> Outcome {
        let deadline = Instant::now() + GIVE_UP;
        let mut sent = false;
        loop {
            let node = &nodes[self.rng.below(nodes.len() as u64) as usize];
            let headers = [("Idempotency-Key", id)];
            let answer = request(node, method, path, &headers, body, Duration::from_secs(8));
            match answer {
                // Definite: applied (200), found absent (404), refused before proposing (4xx, 507).
                Ok((code, _)) if code < 500 || code == 507 => {
                    if code == 507 && sent {
                        // An earlier attempt may have been applied; only a retry that gets the
                        // first answer settles it.
                    } else {
                        return Outcome::Done(code, self.history.now());
                    }
                }
                Ok(_) => sent = true,
                // Refused connection: this attempt was never sent.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(_) => sent = true,
            }
            if Instant::now() > deadline {
                return if sent {
                    Outcome::Unknown
                } else {
                    Outcome::Done(0, self.history.now())
                };
            }
            std::thread::sleep(Duration::from_millis(50 + self.rng.below(150)));
        }
    }

    fn fuse_op(&mut self, mount: &std::path::Path, key: usize, roll: u64, n: u64) {
        // While its node restarts, the mount point is a bare directory for a moment: an
        // answer of absence from there says nothing about the cluster. Only answers given by
        // one and the same FUSE mount throughout count.
        let Some(before) = fuse_dev(mount) else {
            std::thread::sleep(Duration::from_millis(200));
            return;
        };
        let file = mount.join(key_path(key));
        let call = self.history.now();
        let done = |history: &History, what| Some((Some(history.now()), what));
        let outcome = match roll {
            0..45 => {
                let value = format!("{}-{n}", self.name);
                match fuse_write(&self.history, &file, value.as_bytes()) {
                    Outcome::Done(200, ret) => Some((Some(ret), What::Write(value))),
                    Outcome::Done(..) => {
                        self.history.fail();
                        None
                    }
                    Outcome::Unknown => Some((None, What::Write(value))),
                }
            }
            45..55 => match std::fs::remove_file(&file) {
                Ok(()) => done(&self.history, What::Delete),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => done(&self.history, What::DeleteAbsent),
                // The unlink may have reached the leader.
                Err(_) => Some((None, What::Delete)),
            },
            _ => match std::fs::read(&file) {
                Ok(bytes) => done(
                    &self.history,
                    What::Read(Some(String::from_utf8_lossy(&bytes).to_string())),
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => done(&self.history, What::Read(None)),
                Err(_) => None,
            },
        };
        let same_mount = fuse_dev(mount) == Some(before);
        match outcome {
            Some((_, What::Read(None) | What::DeleteAbsent)) if !same_mount => {}
            Some((ret, what)) => self.record(key, call, ret, what),
            None => {}
        }
    }
}

/// The device of the FUSE filesystem mounted at `mount`, if one is mounted and alive there.
fn fuse_dev(mount: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    let c = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 || st.f_type as i64 != FUSE_SUPER_MAGIC {
        return None;
    }
    std::fs::metadata(mount).ok().map(|m| m.dev())
}

enum Outcome {
    /// A definite answer (HTTP status; 200 for FUSE success), at this time.
    Done(u16, u64),
    Unknown,
}

/// A read's answer as a value, `None` inside for "no such file"; `None` outside for no answer.
fn read_answer(answer: std::io::Result<(u16, Vec<u8>)>) -> Option<Option<String>> {
    match answer {
        Ok((200, body)) => Some(Some(String::from_utf8_lossy(&body).to_string())),
        Ok((404, _)) => Some(None),
        _ => None,
    }
}

/// open(O_CREAT|O_TRUNC), write, fsync until it succeeds or [`GIVE_UP`], close.
fn fuse_write(history: &History, file: &std::path::Path, value: &[u8]) -> Outcome {
    let clock = Instant::now();
    let opened = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(file);
    // Nothing is proposed before the first fsync/close: a failure up to there is definite.
    let Ok(mut f) = opened else {
        return Outcome::Done(0, 0);
    };
    if f.write_all(value).is_err() {
        return Outcome::Done(0, 0);
    }
    loop {
        match f.sync_all() {
            Ok(()) => return Outcome::Done(200, history.now()),
            // The node died: the handle is gone with it, whatever it sent.
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Outcome::Unknown,
            Err(_) if clock.elapsed() > GIVE_UP => return Outcome::Unknown,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
