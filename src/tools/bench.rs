//! `raftd bench`: a closed-loop load generator for a running cluster — raftd over its HTTP
//! API, or etcd over its v3 JSON gateway with the same loads, so the two can be compared
//! side by side — or for a FUSE mount with writer threads.
//!
//! Each client sends one request, waits for the answer, sends the next (so throughput and
//! latency are those of the system, not of a queue in the tool). Latencies go into one
//! HDR histogram per client, merged at the end.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use serde::Serialize;

use crate::cli::{BenchArgs, Target, Workload};
use crate::client::HttpClient;
use crate::error::{Error, Result};
use crate::node::Status;

/// How long one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The workload's name.
    pub workload: String,
    /// Target system.
    pub target: String,
    /// Concurrent clients (or threads).
    pub clients: usize,
    /// Requests answered successfully.
    pub ops: u64,
    /// Requests that failed (status, timeout, connection).
    pub errors: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Successful requests per second.
    pub ops_per_sec: f64,
    /// Latency percentiles of successful requests, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// Runs the benchmark the arguments describe and prints its report.
pub(super) fn run(args: BenchArgs) -> Result<()> {
    if args.clients == 0 {
        return Err(Error::Config("--clients must be at least 1".into()));
    }
    let report = match &args.fuse {
        Some(dir) => fuse(&args, dir)?,
        None => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("start the async runtime", e))?;
            runtime.block_on(http(&args))?
        }
    };
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&report).expect("a report serializes")
        )
    } else {
        writeln!(
            out,
            "{:<22} {:>7} {:>9} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8}",
            "workload", "clients", "ops", "errors", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        )
        .and_then(|()| {
            writeln!(
                out,
                "{:<22} {:>7} {:>9} {:>7} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                format!("{}:{}", report.target, report.workload),
                report.clients,
                report.ops,
                report.errors,
                report.ops_per_sec,
                report.p50_ms,
                report.p90_ms,
                report.p99_ms,
                report.max_ms
            )
        })
    };
    written.map_err(|e| Error::io("write to standard output", e))
}

/// When to stop: after a duration or a number of requests.
struct Stop {
    deadline: Option<Instant>,
    count: Option<u64>,
    issued: AtomicU64,
    done: AtomicBool,
}

impl Stop {
    fn new(args: &BenchArgs) -> Stop {
        let deadline = match args.count {
            Some(_) => None,
            None => Some(Instant::now() + Duration::from_secs_f64(args.duration)),
        };
        Stop {
            deadline,
            count: args.count,
            issued: AtomicU64::new(0),
            done: AtomicBool::new(false),
        }
    }

    /// Takes the next request's sequence number, or `None` when the run is over.
    fn next(&self) -> Option<u64> {
        if self.done.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        match self.count {
            Some(count) if n >= count => None,
            _ => Some(n),
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn report(args: &BenchArgs, hist: &Histogram<u64>, errors: u64, elapsed: Duration) -> Report {
    let ms = |us: u64| us as f64 / 1000.0;
    let seconds = elapsed.as_secs_f64();
    Report {
        workload: format!("{:?}", args.workload).to_lowercase(),
        target: match (&args.fuse, args.target) {
            (Some(_), _) => "fuse".into(),
            (None, Target::Raftd) => "raftd".into(),
            (None, Target::Etcd) => "etcd".into(),
        },
        clients: args.clients,
        ops: hist.len(),
        errors,
        seconds,
        ops_per_sec: hist.len() as f64 / seconds,
        p50_ms: ms(hist.value_at_quantile(0.50)),
        p90_ms: ms(hist.value_at_quantile(0.90)),
        p99_ms: ms(hist.value_at_quantile(0.99)),
        max_ms: ms(hist.max()),
        mean_ms: hist.mean() / 1000.0,
    }
}

/// A progress line on standard error while the run goes, if it is a terminal.
fn progress(done: Arc<AtomicU64>, stop: Arc<Stop>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let bar = indicatif::ProgressBar::new_spinner();
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let started = Instant::now();
        while !stop.done.load(Ordering::Relaxed) {
            let n = done.load(Ordering::Relaxed);
            let rate = n as f64 / started.elapsed().as_secs_f64().max(0.001);
            bar.set_message(format!("{n} requests, {rate:.0}/s"));
            bar.tick();
            std::thread::sleep(Duration::from_millis(200));
        }
        bar.finish_and_clear();
    })
}

/// One request of the workload: method, path, body.
fn request(args: &BenchArgs, client: usize, seq: u64, value: &Bytes) -> (Method, String, Bytes) {
    let key = match args.workload {
        Workload::Write => format!("bench/{}/c{client}/{seq}", args.run),
        _ => format!("bench/k{}", rand::random::<u64>() % args.keys.max(1)),
    };
    let read = match args.workload {
        Workload::Read | Workload::StaleRead => true,
        Workload::Mix => rand::random::<f64>() < args.read_fraction,
        Workload::Write | Workload::Overwrite => false,
    };
    let stale = args.workload == Workload::StaleRead;
    match args.target {
        Target::Raftd => {
            let path = format!("/files/{key}{}", if stale { "?consistency=stale" } else { "" });
            if read {
                (Method::GET, path, Bytes::new())
            } else {
                (Method::PUT, path, value.clone())
            }
        }
        Target::Etcd => {
            let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
            let body = if read {
                serde_json::json!({ "key": b64(key.as_bytes()), "serializable": stale })
            } else {
                serde_json::json!({ "key": b64(key.as_bytes()), "value": b64(value) })
            };
            let path = if read { "/v3/kv/range" } else { "/v3/kv/put" };
            (Method::POST, path.to_string(), Bytes::from(body.to_string()))
        }
    }
}

/// The addresses to send to: as given, or (raftd, `--via`) the leader or the followers.
async fn endpoints(args: &BenchArgs, client: &HttpClient) -> Result<Vec<String>> {
    let via = args.via.as_deref().unwrap_or("any");
    if via == "any" || args.target == Target::Etcd {
        return Ok(args.cluster.clone());
    }
    let resp = client
        .send(
            Method::GET,
            &args.cluster[0],
            "/status/all",
            Bytes::new(),
            REQUEST_TIMEOUT,
        )
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    let members: Vec<crate::node::MemberStatus> = resp
        .json()
        .map_err(|e| Error::BadRequest(format!("unreadable /status/all: {e}")))?;
    let statuses: Vec<&Status> = members.iter().filter_map(|m| m.status.as_ref()).collect();
    let picked: Vec<String> = statuses
        .iter()
        .filter(|s| (s.state == "leader") == (via == "leader"))
        .map(|s| s.name.clone())
        .collect();
    if picked.is_empty() {
        return Err(Error::Unavailable(format!("no {via} found in the cluster")));
    }
    Ok(picked)
}

async fn http(args: &BenchArgs) -> Result<Report> {
    let client = HttpClient::for_tool(None)?;
    let targets = endpoints(args, &client).await?;
    let value = Bytes::from(vec![b'v'; args.value_size]);
    // Reads and overwrites need the keys to exist.
    if args.workload != Workload::Write && args.prefill {
        prefill(args, &client, &targets, &value).await?;
    }
    let stop = Arc::new(Stop::new(args));
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress(done.clone(), stop.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (client, stop, done, value) = (client.clone(), stop.clone(), done.clone(), value.clone());
        let addr = targets[c % targets.len()].clone();
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut errors = 0u64;
            while let Some(seq) = stop.next() {
                let (method, path, body) = request(&args, c, seq, &value);
                let sent = Instant::now();
                match client.send(method, &addr, &path, body, REQUEST_TIMEOUT).await {
                    Ok(r)
                        if r.status.is_success() || (r.status == 404 && args.workload != Workload::Write) =>
                    {
                        let _ = hist.record(sent.elapsed().as_micros().max(1) as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => errors += 1,
                }
            }
            (hist, errors)
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(
            task.await
                .map_err(|e| Error::io("bench client", std::io::Error::other(e)))?,
        );
    }
    Ok(finish(args, results, started, &stop, bar))
}

/// Merges the clients' histograms and error counts into the report, and ends the progress
/// line.
fn finish(
    args: &BenchArgs,
    results: Vec<(Histogram<u64>, u64)>,
    started: Instant,
    stop: &Stop,
    bar: std::thread::JoinHandle<()>,
) -> Report {
    let elapsed = started.elapsed();
    stop.done.store(true, Ordering::Relaxed);
    let _ = bar.join();
    let mut hist = histogram();
    let mut errors = 0;
    for (h, e) in results {
        hist.add(&h).expect("same histogram bounds");
        errors += e;
    }
    report(args, &hist, errors, elapsed)
}

/// Writes every key of the key space once, 16 at a time.
async fn prefill(args: &BenchArgs, client: &HttpClient, targets: &[String], value: &Bytes) -> Result<()> {
    let keys: Vec<u64> = (0..args.keys).collect();
    for batch in keys.chunks(16) {
        let writes = batch.iter().map(|k| {
            let (method, path, body) = match args.target {
                Target::Raftd => (Method::PUT, format!("/files/bench/k{k}"), value.clone()),
                Target::Etcd => {
                    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
                    let key = format!("bench/k{k}");
                    let body = serde_json::json!({ "key": b64(key.as_bytes()), "value": b64(value) });
                    (
                        Method::POST,
                        "/v3/kv/put".to_string(),
                        Bytes::from(body.to_string()),
                    )
                }
            };
            let target = targets[0].clone();
            async move { client.send(method, &target, &path, body, REQUEST_TIMEOUT).await }
        });
        for answer in futures_util::future::join_all(writes).await {
            match answer {
                Ok(r) if r.status.is_success() => {}
                Ok(r) => return Err(Error::Unavailable(format!("prefill: {} {}", r.status, r.text()))),
                Err(e) => return Err(Error::Unavailable(format!("prefill: {e}"))),
            }
        }
    }
    Ok(())
}

/// Writer threads on a FUSE mount: each creates (or overwrites) small files, one
/// open–write–close per operation (the close commits).
fn fuse(args: &BenchArgs, dir: &std::path::Path) -> Result<Report> {
    let base = dir.join("bench").join(&args.run);
    std::fs::create_dir_all(&base).map_err(|e| Error::io(format!("create {}", base.display()), e))?;
    let value = vec![b'v'; args.value_size];
    let stop = Arc::new(Stop::new(args));
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress(done.clone(), stop.clone());
    let started = Instant::now();
    let threads: Vec<_> = (0..args.clients)
        .map(|t| {
            let (stop, done, value, base, args) = (
                stop.clone(),
                done.clone(),
                value.clone(),
                base.clone(),
                args.clone(),
            );
            std::thread::spawn(move || {
                let mut hist = histogram();
                let mut errors = 0u64;
                while let Some(seq) = stop.next() {
                    let name = match args.workload {
                        Workload::Write => format!("t{t}-{seq}"),
                        _ => format!("k{}", rand::random::<u64>() % args.keys.max(1)),
                    };
                    let sent = Instant::now();
                    match std::fs::write(base.join(name), &value) {
                        Ok(()) => {
                            let _ = hist.record(sent.elapsed().as_micros().max(1) as u64);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => errors += 1,
                    }
                }
                (hist, errors)
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in threads {
        results.push(
            t.join()
                .map_err(|_| Error::io("bench thread", std::io::Error::other("panicked")))?,
        );
    }
    Ok(finish(args, results, started, &stop, bar))
}
