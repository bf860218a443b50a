//! `raftd backup --from host:port FILE` and `raftd restore FILE DATA_DIR`.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;

use crate::client::HttpClient;
use crate::error::{Error, Result};
use crate::store::backup;

/// How long the node may take to start answering a backup request.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Downloads `GET /backup` from the first member of `from` that answers into `file` (or, if
/// `file` is a directory, into it under the backup's own name), with a progress bar, then
/// reads it back to check it is whole before giving it its name.
pub(super) async fn save(from: &[String], file: &Path, token: Option<&str>) -> Result<()> {
    let client = HttpClient::for_tool(token)?;
    let mut why = Vec::new();
    for addr in from {
        let resp = match client
            .open(Method::GET, addr, "/backup", &[], Bytes::new(), START_TIMEOUT)
            .await
        {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                let status = r.status();
                let body = r
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                why.push(format!(
                    "{addr}: {} {}",
                    status.as_u16(),
                    String::from_utf8_lossy(&body).trim()
                ));
                continue;
            }
            Err(e) => {
                why.push(e.to_string());
                continue;
            }
        };
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let (term, index) = (header("raftd-backup-term"), header("raftd-backup-index"));
        let target = if file.is_dir() {
            file.join(format!(
                "raftd-backup-{}-{}.tar",
                term.unwrap_or(0),
                index.unwrap_or(0)
            ))
        } else {
            file.to_path_buf()
        };
        let part = PathBuf::from(format!("{}.part", target.display()));
        let bar = indicatif::ProgressBar::new(header("raftd-backup-bytes").unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {bar:30} {bytes_per_sec} {msg}")
                .expect("valid progress template"),
        );
        bar.set_message(format!("from {addr}"));
        let mut out = File::create(&part).map_err(|e| Error::io(format!("create {}", part.display()), e))?;
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::Unavailable(format!("{addr}: the backup stopped: {e}")))?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data)
                    .map_err(|e| Error::io(format!("write {}", part.display()), e))?;
                bar.inc(data.len() as u64);
            }
        }
        out.sync_all()
            .map_err(|e| Error::io(format!("fsync {}", part.display()), e))?;
        bar.finish_and_clear();
        let reader = File::open(&part).map_err(|e| Error::io(format!("open {}", part.display()), e))?;
        let info = backup::check(BufReader::new(reader))
            .map_err(|e| Error::io(format!("check the downloaded backup {}", part.display()), e))?;
        std::fs::rename(&part, &target)
            .map_err(|e| Error::io(format!("rename to {}", target.display()), e))?;
        println!(
            "saved {}: {} files, {} bytes, at index {} (term {}) from {}",
            target.display(),
            info.files,
            info.bytes,
            info.index,
            info.term,
            info.node
        );
        return Ok(());
    }
    Err(Error::Unavailable(format!(
        "no node gave a backup: {}",
        why.join("; ")
    )))
}

/// Prepares `data_dir` from the backup in `file` (- for standard input).
pub(super) fn restore(file: &Path, data_dir: &Path, host: Option<String>, port: Option<u16>) -> Result<()> {
    let existed = data_dir.exists();
    let identity = crate::identity::create(data_dir, host, port)?;
    let reader: Box<dyn std::io::Read> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(File::open(file).map_err(|e| Error::io(format!("open {}", file.display()), e))?)
    };
    match backup::prepare_restore(BufReader::new(reader), data_dir, identity.id, &identity.name) {
        Ok(info) => {
            println!(
                "restored {} files ({} bytes) at index {} (term {}) into {} as {}",
                info.files,
                info.bytes,
                info.index,
                info.term,
                data_dir.display(),
                identity.name
            );
            println!("start it with: raftd {}", data_dir.display());
            println!(
                "then join other new nodes to it: raftd NEW_DIR --join {}",
                identity.name
            );
            Ok(())
        }
        Err(e) => {
            // Leave nothing half-made behind.
            let cleanup = if existed {
                std::fs::read_dir(data_dir).and_then(|entries| {
                    entries.flatten().try_for_each(|e| {
                        let p = e.path();
                        if p.is_dir() {
                            std::fs::remove_dir_all(p)
                        } else {
                            std::fs::remove_file(p)
                        }
                    })
                })
            } else {
                std::fs::remove_dir_all(data_dir)
            };
            if let Err(c) = cleanup {
                tracing::warn!(cause = %c, "could not clean up {}", data_dir.display());
            }
            Err(Error::io(format!("restore from {}", file.display()), e))
        }
    }
}
