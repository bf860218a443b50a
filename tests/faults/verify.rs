//! The verdicts: each key's history is a linearizable register, stale reads show only written
//! values, and after healing every replica holds the same files and the same log.

use crate::checker::{self, Kind, Op};
use crate::clients::{Record, What};
use crate::cluster::FaultCluster;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Counts for the report.
#[derive(Default, Debug)]
pub struct Counts {
    pub writes_acked: usize,
    pub writes_unknown: usize,
    pub deletes: usize,
    pub reads: usize,
    pub stale_reads: usize,
}

/// Checks every key's history; the error names the key and the operation no order can place.
pub fn check_history(records: &[Record], keys: usize) -> Result<Counts, String> {
    let mut counts = Counts::default();
    for key in 0..keys {
        let mine: Vec<&Record> = records.iter().filter(|r| r.key == key).collect();
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut intern = |v: &str| {
            let next = ids.len() as u32;
            *ids.entry(v.to_string()).or_insert(next)
        };
        let mut ops = Vec::new();
        let mut stale = Vec::new();
        for r in &mine {
            let ret = r.ret.unwrap_or(u64::MAX);
            let kind = match &r.what {
                What::Write(v) => {
                    match r.ret {
                        Some(_) => counts.writes_acked += 1,
                        None => counts.writes_unknown += 1,
                    }
                    Kind::Write(Some(intern(v)))
                }
                What::Delete => {
                    counts.deletes += 1;
                    Kind::Write(None)
                }
                What::DeleteAbsent => {
                    counts.deletes += 1;
                    Kind::Read(None)
                }
                What::Read(v) => {
                    counts.reads += 1;
                    Kind::Read(v.as_deref().map(&mut intern))
                }
                What::StaleRead(_) => {
                    counts.stale_reads += 1;
                    stale.push(r);
                    continue;
                }
            };
            ops.push(Op {
                call: r.call,
                ret,
                kind,
            });
        }
        checker::check(&ops, None).map_err(|e| {
            let mut shown = mine.clone();
            shown.sort_by_key(|r| r.call);
            let lines: Vec<String> = shown
                .iter()
                .map(|r| format!("  {} {:>14} {:>20?} {:?}", r.client, r.call, r.ret, r.what))
                .collect();
            format!("key k{key}: {e}\nthe key's history:\n{}", lines.join("\n"))
        })?;
        for r in stale {
            check_stale(&mine, r).map_err(|e| format!("key k{key}: {e}"))?;
        }
    }
    Ok(counts)
}

/// A stale read may lag, but must show nothing that was never written, or written later.
fn check_stale(history: &[&Record], read: &Record) -> Result<(), String> {
    let What::StaleRead(Some(seen)) = &read.what else {
        return Ok(());
    };
    let ret = read.ret.unwrap_or(u64::MAX);
    let written = history
        .iter()
        .any(|r| matches!(&r.what, What::Write(v) if v == seen) && r.call <= ret);
    if written {
        Ok(())
    } else {
        Err(format!(
            "stale read {read:?} shows a value no write had begun to write"
        ))
    }
}

/// After healing: every node's `files/` is identical (names, contents, modification times) and
/// the logs agree on every entry up to the commit index that more than one node still holds.
pub fn check_replicas(cluster: &FaultCluster, commit: u64) -> Result<String, String> {
    let trees: Vec<_> = cluster.nodes.iter().map(|n| tree(&n.dir.join("files"))).collect();
    for (i, t) in trees.iter().enumerate().skip(1) {
        if *t != trees[0] {
            let differ: Vec<&String> = t
                .keys()
                .chain(trees[0].keys())
                .filter(|k| t.get(*k) != trees[0].get(*k))
                .collect();
            return Err(format!(
                "files/ of node {} differs from node 1's at {differ:?}",
                i + 1
            ));
        }
    }
    let logs: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| log_lines(&n.dir.join("log")))
        .collect();
    let mut compared = 0;
    for index in 1..=commit {
        let lines: Vec<(usize, &String)> = logs
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.get(&index).map(|line| (i, line)))
            .collect();
        if let Some((first, line)) = lines.first() {
            if let Some((other, _)) = lines.iter().find(|(_, l)| l != line) {
                return Err(format!(
                    "log entry {index} differs between node {} and node {}",
                    first + 1,
                    other + 1
                ));
            }
            compared += usize::from(lines.len() > 1);
        }
    }
    Ok(format!(
        "{} files identical on {} nodes; {compared} committed log entries held by several nodes, all identical",
        trees[0].len(),
        trees.len()
    ))
}

/// Every path below `root`: files with their contents and mtime, directories with a `/`.
fn tree(root: &Path) -> BTreeMap<String, (Vec<u8>, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                out.insert(format!("{name}/"), (Vec::new(), 0));
                stack.push(path);
            } else {
                let mtime = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
                out.insert(name, (std::fs::read(&path).unwrap(), mtime));
            }
        }
    }
    out
}

/// The log's entries by index (`<crc> <index> <term> <command> <json>`, index in hex).
fn log_lines(path: &Path) -> BTreeMap<u64, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let index = l.split(' ').nth(1)?;
            Some((u64::from_str_radix(index, 16).ok()?, l.to_string()))
        })
        .collect()
}
