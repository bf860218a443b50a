//! The cost of applying overwrites to the tree, on this machine's filesystem: raftd's apply
//! (`Tree::write`, which swaps the new contents in and reuses the old inode) against the
//! earlier way (a fresh temp file renamed over the old one, which frees an inode and makes
//! the next allocation pay for it), interleaved in one run.
//!
//! `cargo bench --bench apply`. Set `RAFTD_BENCH_WRITES` (default 100000) and
//! `RAFTD_BENCH_KEYS` (default 1000).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use raftd::raft::command::Data;
use raftd::store::Tree;

fn main() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let writes = env("RAFTD_BENCH_WRITES", 100_000);
    let keys = env("RAFTD_BENCH_KEYS", 1_000);
    let dir = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
    println!("{writes} overwrites of {keys} files of 100 bytes, each way, 3 rounds interleaved");
    println!("{:>22} {:>12} {:>12}", "apply", "writes/s", "µs/write");
    for round in 0..3 {
        let fresh = rename_over(&dir.path().join(format!("old-{round}")), writes, keys);
        let reuse = tree_write(&dir.path().join(format!("new-{round}")), writes, keys);
        for (name, took) in [("fresh inode + rename", fresh), ("exchange + reuse", reuse)] {
            let per = took.as_secs_f64() / writes as f64;
            println!("{name:>22} {:>12.0} {:>12.1}", 1.0 / per, per * 1e6);
        }
    }
}

fn tree_write(data_dir: &Path, writes: u64, keys: u64) -> Duration {
    let tree = Tree::open(data_dir).unwrap();
    let body = Data(vec![b'x'; 100]);
    let started = Instant::now();
    for i in 0..writes {
        tree.write(&format!("k{}", i % keys), &body, i, i + 1)
            .unwrap()
            .unwrap();
    }
    started.elapsed()
}

fn rename_over(data_dir: &Path, writes: u64, keys: u64) -> Duration {
    let (files, tmp) = (data_dir.join("files"), data_dir.join("tmp"));
    fs::create_dir_all(&files).unwrap();
    fs::create_dir_all(&tmp).unwrap();
    let body = vec![b'x'; 100];
    let started = Instant::now();
    for i in 0..writes {
        let temp = tmp.join(format!("{i:016x}"));
        let file = fs::File::create(&temp).unwrap();
        std::io::Write::write_all(&mut &file, &body).unwrap();
        file.set_modified(std::time::UNIX_EPOCH + Duration::from_nanos(i))
            .unwrap();
        drop(file);
        fs::rename(&temp, files.join(format!("k{}", i % keys))).unwrap();
    }
    started.elapsed()
}
