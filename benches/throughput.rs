//! Write throughput of a real 3-node cluster on loopback, by number of concurrent clients.
//!
//! `cargo bench` builds raftd in release mode, starts three nodes (each with its own data
//! directory and fsyncs), and for each client count runs closed-loop clients that POST small
//! files through the leader for a fixed time. Group commit (one fdatasync for every append
//! that queued behind the previous one) and openraft's batching are what let throughput grow
//! with clients instead of stopping at one fsync round per write.
//!
//! Set `RAFTD_BENCH_SECS` (default 3) and `RAFTD_BENCH_CLIENTS` (default `1,4,16,64`);
//! `RAFTD_BIN=path/to/raftd` runs another build (to compare two commits on one machine).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use raftd::client::HttpClient;

fn main() {
    let secs: u64 = std::env::var("RAFTD_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let clients: Vec<usize> = std::env::var("RAFTD_BENCH_CLIENTS")
        .unwrap_or_else(|_| "1,4,16,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut cluster = common::Cluster::start(3, &[]);
    let leader = cluster.wait_leader();
    let leader = cluster.nodes[leader].name.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!("3-node cluster on loopback, 100-byte writes through the leader, {secs} s per row");
    println!(
        "{:>8} {:>12} {:>10} {:>10} {:>10}",
        "clients", "writes/s", "p50 ms", "p99 ms", "max ms"
    );
    for n in clients {
        let (count, mut latencies) = runtime.block_on(run(&leader, n, Duration::from_secs(secs)));
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0;
        println!(
            "{n:>8} {:>12.0} {:>10.2} {:>10.2} {:>10.2}",
            count as f64 / secs as f64,
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
}

async fn run(leader: &str, clients: usize, duration: Duration) -> (usize, Vec<Duration>) {
    let client = HttpClient::plain();
    let leader = Arc::new(leader.to_string());
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, leader) = (client.clone(), leader.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let body = vec![b'x'; 100];
                let mut i = 0;
                while Instant::now() < deadline {
                    let path = format!("/files/bench/c{c}/k{}", i % 100);
                    let started = Instant::now();
                    let resp = client
                        .send(
                            hyper::Method::POST,
                            &leader,
                            &path,
                            body.clone(),
                            Duration::from_secs(10),
                        )
                        .await
                        .expect("write");
                    assert!(resp.status.is_success(), "write failed: {}", resp.text());
                    latencies.push(started.elapsed());
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all.len(), all)
}
