//! The fault injector: picks a fault from the scenario's list (by the seeded generator),
//! holds it a while, repairs it, and writes a timeline of what it did.

use crate::cluster::FaultCluster;
use crate::rng::Rng;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Cut one random node from all others.
    IsolateOne,
    /// Cut the leader from all others.
    IsolateLeader,
    /// 5 nodes: the leader and one other against the other three.
    SplitLeaderInMinority,
    /// 5 nodes: two followers against the leader's three.
    SplitLeaderInMajority,
    /// `kill -9` the leader; restarted when the fault ends.
    KillLeader,
    /// `kill -9` a random node; restarted when the fault ends.
    KillOne,
    /// `SIGSTOP` a random node, `SIGCONT` when the fault ends.
    PauseOne,
    /// `SIGSTOP` the leader.
    PauseLeader,
    /// `kill -9` every node and start them all again at once.
    RestartAll,
    /// Fill the small disk until this many KiB are left free; free it when the fault ends (and
    /// restart its node if running out of space stopped it).
    FillDisk,
}

/// What undoes an injected fault.
enum Repair {
    Heal,
    Restart(usize),
    Resume(usize),
    Nothing,
    FreeDisk(std::path::PathBuf),
}

/// Injects faults from `faults` until `until`; returns the timeline.
pub fn run(cluster: &mut FaultCluster, faults: &[Fault], rng: &mut Rng, until: Instant) -> Vec<String> {
    let start = Instant::now();
    let mut timeline = Vec::new();
    let stamp = |what: String| format!("{:6.1}s {what}", start.elapsed().as_secs_f64());
    while Instant::now() < until {
        std::thread::sleep(rng.millis(500, 1500));
        let fault = faults[rng.below(faults.len() as u64) as usize];
        let (what, repair) = inject(cluster, fault, rng);
        timeline.push(stamp(what));
        std::thread::sleep(rng.millis(1500, 4000));
        timeline.push(stamp(undo(cluster, repair)));
        for i in 0..cluster.nodes.len() {
            if cluster.exited(i) {
                timeline.push(stamp(format!("node {} had exited on its own: restarted", i + 1)));
                cluster.start_node(i);
            }
        }
    }
    timeline
}

/// The leader if one is known, else a random node.
fn leader_or_any(cluster: &FaultCluster, rng: &mut Rng) -> usize {
    cluster
        .leader()
        .unwrap_or_else(|| rng.below(cluster.nodes.len() as u64) as usize)
}

fn inject(cluster: &mut FaultCluster, fault: Fault, rng: &mut Rng) -> (String, Repair) {
    let n = cluster.nodes.len();
    let any = rng.below(n as u64) as usize;
    match fault {
        Fault::IsolateOne | Fault::IsolateLeader => {
            let i = if fault == Fault::IsolateOne {
                any
            } else {
                leader_or_any(cluster, rng)
            };
            cluster.net.partition(&[i]);
            (
                format!("{fault:?}: node {} cut from the others", i + 1),
                Repair::Heal,
            )
        }
        Fault::SplitLeaderInMinority | Fault::SplitLeaderInMajority => {
            let leader = leader_or_any(cluster, rng);
            let others: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
            let pick = others[rng.below(others.len() as u64) as usize];
            let side: Vec<usize> = if fault == Fault::SplitLeaderInMinority {
                vec![leader, pick]
            } else {
                let second = others.iter().copied().find(|&i| i != pick).unwrap();
                vec![pick, second]
            };
            cluster.net.partition(&side);
            let side: Vec<usize> = side.iter().map(|i| i + 1).collect();
            (format!("{fault:?}: nodes {side:?} | the rest"), Repair::Heal)
        }
        Fault::KillLeader | Fault::KillOne => {
            let i = if fault == Fault::KillOne {
                any
            } else {
                leader_or_any(cluster, rng)
            };
            cluster.kill(i);
            (format!("{fault:?}: kill -9 node {}", i + 1), Repair::Restart(i))
        }
        Fault::PauseOne | Fault::PauseLeader => {
            let i = if fault == Fault::PauseOne {
                any
            } else {
                leader_or_any(cluster, rng)
            };
            cluster.pause(i);
            (format!("{fault:?}: SIGSTOP node {}", i + 1), Repair::Resume(i))
        }
        Fault::RestartAll => {
            for i in 0..n {
                cluster.kill(i);
            }
            for i in 0..n {
                cluster.start_node(i);
            }
            (
                "RestartAll: kill -9 every node, start them all".into(),
                Repair::Nothing,
            )
        }
        Fault::FillDisk => {
            let dir = cluster.small_disk().expect("a small disk").to_path_buf();
            let leave = [64u64, 512, 3072][rng.below(3) as usize] << 10;
            let hog = dir.join("hog");
            fill(&hog, leave);
            (
                format!("FillDisk: {} KiB left free", leave >> 10),
                Repair::FreeDisk(hog),
            )
        }
    }
}

fn undo(cluster: &mut FaultCluster, repair: Repair) -> String {
    match repair {
        Repair::Heal => {
            cluster.net.heal();
            "healed every link".into()
        }
        Repair::Restart(i) => {
            cluster.start_node(i);
            format!("restarted node {}", i + 1)
        }
        Repair::Resume(i) => {
            cluster.resume(i);
            format!("SIGCONT node {}", i + 1)
        }
        Repair::Nothing => "nothing to repair".into(),
        Repair::FreeDisk(hog) => {
            let _ = std::fs::remove_file(&hog);
            "freed the disk".into()
        }
    }
}

/// Allocates a file so that the filesystem holding it keeps only `leave` bytes free.
fn fill(hog: &std::path::Path, leave: u64) {
    use std::os::fd::AsRawFd;
    let dir = hog.parent().unwrap();
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    let file = std::fs::File::create(hog).unwrap();
    let len = free.saturating_sub(leave) as i64;
    if len > 0 {
        // tmpfs allocates the pages for real.
        unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    }
}

/// How long the scenario holds faults by default, and what `RAFTD_FAULT_SECONDS` overrides.
pub fn duration() -> Duration {
    let secs = std::env::var("RAFTD_FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    Duration::from_secs(secs)
}
