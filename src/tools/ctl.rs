//! `raftd ctl`: the cluster from the command line, over the same HTTP API any client uses.
//!
//! Every command tries the `--cluster` members in order until one answers; file writes carry
//! an `Idempotency-Key`, so a retry on another member after a lost answer is not applied
//! twice. Tables for people, `--json` for scripts.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::cli::{CtlArgs, CtlCommand};
use crate::client::{HttpClient, Response};
use crate::error::{Error, Result};
use crate::node::{MemberStatus, Status};
use crate::raft::PeerRoute;

/// How long one request may take before the next member is tried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How often `ctl log --follow` looks for new entries.
const FOLLOW_EVERY: Duration = Duration::from_millis(300);

/// Runs one `raftd ctl` command.
pub async fn run(args: CtlArgs) -> Result<()> {
    let token = args.token.token()?;
    let ctl = Ctl {
        client: HttpClient::for_tool(token.as_deref())?,
        cluster: args.cluster,
        json: args.json,
    };
    let mut out = std::io::stdout().lock();
    match args.command {
        CtlCommand::Status => ctl.status(&mut out).await,
        CtlCommand::Members => ctl.members(&mut out).await,
        CtlCommand::Leader => ctl.leader(&mut out).await,
        CtlCommand::Remove { name } => {
            let body = serde_json::to_vec(&json!({ "name": name }))?;
            ctl.call(Method::POST, PeerRoute::ClusterRemove.path(), body.into(), &[])
                .await?;
            ctl.done(&mut out, &format!("removed {name}"), json!({"removed": name}))
        }
        CtlCommand::TransferLeader { name } => {
            let body = serde_json::to_vec(&json!({ "name": name }))?;
            ctl.call(Method::POST, PeerRoute::ClusterTransfer.path(), body.into(), &[])
                .await?;
            ctl.done(
                &mut out,
                &format!("{name} is the leader"),
                json!({"leader": name}),
            )
        }
        CtlCommand::Snapshot => ctl.snapshot(&mut out).await,
        CtlCommand::Put { path, file } => {
            let data = match file {
                Some(f) if f.as_os_str() != "-" => {
                    std::fs::read(&f).map_err(|e| Error::io(format!("read {}", f.display()), e))?
                }
                _ => {
                    let mut data = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut data)
                        .map_err(|e| Error::io("read standard input", e))?;
                    data
                }
            };
            let len = data.len();
            let key = format!("ctl-{:032x}", rand::random::<u128>());
            ctl.call(
                Method::PUT,
                &files_path(&path),
                data.into(),
                &[("idempotency-key", key)],
            )
            .await?;
            ctl.done(
                &mut out,
                &format!("wrote {len} bytes to {path}"),
                json!({"path": path, "bytes": len}),
            )
        }
        CtlCommand::Get { path } => {
            let resp = ctl
                .call(Method::GET, &files_path(&path), Bytes::new(), &[])
                .await?;
            out.write_all(&resp.body).map_err(stdout_err)
        }
        CtlCommand::Ls { dir } => {
            let dir = dir.unwrap_or_default();
            let resp = ctl
                .call(Method::GET, &files_path(&dir), Bytes::new(), &[])
                .await?;
            let text = resp.text();
            if ctl.json {
                let names: Vec<&str> = text.lines().collect();
                writeln!(out, "{}", json!(names)).map_err(stdout_err)
            } else if text.is_empty() {
                Ok(())
            } else {
                writeln!(out, "{text}").map_err(stdout_err)
            }
        }
        CtlCommand::Rm { path } => {
            let key = format!("ctl-{:032x}", rand::random::<u128>());
            ctl.call(
                Method::DELETE,
                &files_path(&path),
                Bytes::new(),
                &[("idempotency-key", key)],
            )
            .await?;
            ctl.done(&mut out, &format!("removed {path}"), json!({"removed": path}))
        }
        CtlCommand::Log { follow } => ctl.log(&mut out, follow).await,
        CtlCommand::Watch { prefix, from } => {
            ctl.watch(&mut out, prefix.as_deref().unwrap_or(""), from).await
        }
    }
}

fn files_path(path: &str) -> String {
    format!("/files/{}", path.trim_start_matches('/'))
}

fn stdout_err(e: std::io::Error) -> Error {
    Error::io("write to standard output", e)
}

struct Ctl {
    client: HttpClient,
    cluster: Vec<String>,
    json: bool,
}

impl Ctl {
    /// Sends the request to the first member that answers; an answer that is not 2xx is an
    /// error carrying the member's message. A 503 (no quorum there, too busy) moves on to the
    /// next member too.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        headers: &[(&'static str, String)],
    ) -> Result<Response> {
        let mut why = Vec::new();
        for addr in &self.cluster {
            let resp = match self
                .client
                .open(method.clone(), addr, path, headers, body.clone(), REQUEST_TIMEOUT)
                .await
            {
                Ok(resp) => resp,
                Err(e) => {
                    why.push(e.to_string());
                    continue;
                }
            };
            let status = resp.status();
            let body = match tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect()).await {
                Ok(Ok(body)) => body.to_bytes(),
                Ok(Err(e)) => {
                    why.push(format!("{addr}: reading the answer: {e}"));
                    continue;
                }
                Err(_) => {
                    why.push(format!(
                        "{addr}: the answer did not arrive within {REQUEST_TIMEOUT:?}"
                    ));
                    continue;
                }
            };
            let resp = Response { status, body };
            if status.is_success() {
                return Ok(resp);
            }
            let message = format!("{addr}: {} {}", status.as_u16(), resp.text());
            if status == StatusCode::SERVICE_UNAVAILABLE {
                why.push(message);
                continue;
            }
            return Err(Error::Peer {
                peer: addr.clone(),
                message: format!("{} {}", status.as_u16(), resp.text()),
            });
        }
        Err(Error::Unavailable(format!(
            "no member of {} could do it: {}",
            self.cluster.join(","),
            why.join("; ")
        )))
    }

    /// The first answering member's `/status`.
    async fn any_status(&self) -> Result<Status> {
        let resp = self.call(Method::GET, "/status", Bytes::new(), &[]).await?;
        resp.json()
            .map_err(|e| Error::BadRequest(format!("unreadable /status: {e}")))
    }

    fn done(&self, out: &mut impl Write, text: &str, value: Value) -> Result<()> {
        if self.json {
            writeln!(out, "{value}")
        } else {
            writeln!(out, "{text}")
        }
        .map_err(stdout_err)
    }

    async fn status(&self, out: &mut impl Write) -> Result<()> {
        let resp = self.call(Method::GET, "/status/all", Bytes::new(), &[]).await?;
        let members: Vec<MemberStatus> = resp
            .json()
            .map_err(|e| Error::BadRequest(format!("unreadable /status/all: {e}")))?;
        let leader = members
            .iter()
            .filter_map(|m| m.status.as_ref())
            .find(|s| s.state == "leader");
        let leader_last = leader.and_then(|s| s.last_log_index);
        let leader_name = members
            .iter()
            .find_map(|m| m.status.as_ref().and_then(|s| s.leader.clone()));
        if self.json {
            writeln!(out, "{}", json!({"leader": leader_name, "members": members})).map_err(stdout_err)?;
            return Ok(());
        }
        let mut table = vec![vec![
            "NAME".to_string(),
            "ROLE".into(),
            "TERM".into(),
            "COMMIT".into(),
            "APPLIED".into(),
            "LAG".into(),
            "ANSWERS".into(),
        ]];
        let num = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        for m in &members {
            let name = &m.name;
            table.push(match &m.status {
                Some(s) => vec![
                    name.clone(),
                    s.state.clone(),
                    s.term.to_string(),
                    num(s.commit_index),
                    num(s.applied_index),
                    num(leader_last.map(|l| l.saturating_sub(s.applied_index.unwrap_or(0)))),
                    "yes".into(),
                ],
                None => vec![
                    name.clone(),
                    "?".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("no: {}", m.error.as_deref().unwrap_or("no answer")),
                ],
            });
        }
        print_table(out, &table)?;
        writeln!(out, "leader: {}", leader_name.as_deref().unwrap_or("none known")).map_err(stdout_err)
    }

    async fn members(&self, out: &mut impl Write) -> Result<()> {
        let s = self.any_status().await?;
        if self.json {
            let value = json!({"members": s.members, "learners": s.learners, "leader": s.leader});
            return writeln!(out, "{value}").map_err(stdout_err);
        }
        let mut table = vec![vec!["NAME".to_string(), "KIND".into(), "LEADER".into()]];
        for (names, kind) in [(&s.members, "voter"), (&s.learners, "learner")] {
            for name in names {
                let leads = if s.leader.as_ref() == Some(name) { "*" } else { "" };
                table.push(vec![name.clone(), kind.into(), leads.into()]);
            }
        }
        print_table(out, &table)
    }

    async fn leader(&self, out: &mut impl Write) -> Result<()> {
        let s = self.any_status().await?;
        match s.leader {
            Some(leader) => self.done(out, &leader, json!({"leader": leader, "term": s.term})),
            None => Err(Error::Unavailable(format!(
                "{} knows no leader (term {})",
                s.name, s.term
            ))),
        }
    }

    async fn snapshot(&self, out: &mut impl Write) -> Result<()> {
        let s = self.any_status().await?;
        let mut rows = Vec::new();
        let mut failed = false;
        for name in s.members.iter().chain(&s.learners) {
            let answer = self
                .client
                .send(
                    Method::POST,
                    name,
                    PeerRoute::ClusterSnapshot.path(),
                    Bytes::new(),
                    Duration::from_secs(130),
                )
                .await;
            rows.push(match answer {
                Ok(r) if r.status.is_success() => {
                    let v: Value = r.json().unwrap_or(Value::Null);
                    (name.clone(), Ok(v["snapshot_index"].as_u64()))
                }
                Ok(r) => (name.clone(), Err(format!("{} {}", r.status.as_u16(), r.text()))),
                Err(e) => (name.clone(), Err(e.to_string())),
            });
        }
        if self.json {
            let rows: Vec<Value> = rows
                .iter()
                .map(|(n, r)| match r {
                    Ok(i) => json!({"name": n, "snapshot_index": i}),
                    Err(e) => json!({"name": n, "error": e}),
                })
                .collect();
            writeln!(out, "{}", json!(rows)).map_err(stdout_err)?;
        } else {
            let mut table = vec![vec!["NAME".to_string(), "SNAPSHOT".into()]];
            for (n, r) in &rows {
                table.push(vec![
                    n.clone(),
                    match r {
                        Ok(i) => i.map_or("-".into(), |i| format!("at index {i}")),
                        Err(e) => format!("failed: {e}"),
                    },
                ]);
            }
            print_table(out, &table)?;
        }
        for (_, r) in &rows {
            failed |= r.is_err();
        }
        if failed {
            return Err(Error::Unavailable("not every member built a snapshot".into()));
        }
        Ok(())
    }

    async fn log(&self, out: &mut impl Write, follow: bool) -> Result<()> {
        let mut printed: Option<u64> = None;
        loop {
            let resp = self.call(Method::GET, "/log", Bytes::new(), &[]).await?;
            for line in resp.text().lines() {
                let Some(entry) = parse_log_line(line) else {
                    continue;
                };
                if printed.is_some_and(|p| entry.index <= p) {
                    continue;
                }
                printed = Some(entry.index);
                if self.json {
                    writeln!(out, "{}", entry.to_json())
                } else {
                    writeln!(out, "{line}")
                }
                .map_err(stdout_err)?;
            }
            out.flush().map_err(stdout_err)?;
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }
}

impl Ctl {
    /// Prints `/watch/<prefix>`'s events as they come: `index term op paths`, or the JSON.
    async fn watch(&self, out: &mut impl Write, prefix: &str, from: Option<u64>) -> Result<()> {
        let mut path = format!("/watch/{}", prefix.trim_start_matches('/'));
        if let Some(from) = from {
            path.push_str(&format!("?from={from}"));
        }
        let mut why = Vec::new();
        for addr in &self.cluster {
            let resp = match self
                .client
                .open(Method::GET, addr, &path, &[], Bytes::new(), REQUEST_TIMEOUT)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    why.push(e.to_string());
                    continue;
                }
            };
            if !resp.status().is_success() {
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                return Err(Error::Peer {
                    peer: addr.clone(),
                    message: format!("{} {}", status.as_u16(), String::from_utf8_lossy(&body).trim()),
                });
            }
            let mut body = resp.into_body();
            let mut pending = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|e| Error::Unavailable(format!("{addr}: the watch stopped: {e}")))?;
                let Ok(data) = frame.into_data() else { continue };
                pending.extend_from_slice(&data);
                while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                    let event: Vec<u8> = pending.drain(..end + 2).collect();
                    self.print_event(out, &String::from_utf8_lossy(&event))?;
                }
            }
            return Err(Error::Unavailable(format!("{addr} ended the watch")));
        }
        Err(Error::Unavailable(format!(
            "no member answered: {}",
            why.join("; ")
        )))
    }

    /// Prints one SSE event; an ending event (`gone`, `cutoff`) is an error.
    fn print_event(&self, out: &mut impl Write, event: &str) -> Result<()> {
        let (mut kind, mut data) = ("message", "");
        for line in event.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                kind = v;
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = v;
            }
        }
        if data.is_empty() {
            return Ok(()); // a keepalive comment
        }
        let value: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        if let Some(error) = value["error"].as_str() {
            return Err(Error::Unavailable(format!("watch ended ({kind}): {error}")));
        }
        if self.json {
            writeln!(out, "{data}")
        } else {
            let paths: Vec<&str> = value["paths"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            writeln!(
                out,
                "{} {} {} {}",
                value["index"],
                value["term"],
                kind,
                paths.join(" ")
            )
        }
        .map_err(stdout_err)?;
        out.flush().map_err(stdout_err)
    }
}

/// One line of the text log, split into its fields.
struct LogLine<'a> {
    crc: &'a str,
    index: u64,
    term: u64,
    command: &'a str,
    json: &'a str,
}

impl LogLine<'_> {
    fn to_json(&self) -> Value {
        let body: Value = serde_json::from_str(self.json).unwrap_or(Value::String(self.json.into()));
        json!({"crc": self.crc, "index": self.index, "term": self.term, "command": self.command, "data": body})
    }
}

fn parse_log_line(line: &str) -> Option<LogLine<'_>> {
    let mut parts = line.splitn(5, ' ');
    let crc = parts.next()?;
    let index = u64::from_str_radix(parts.next()?, 16).ok()?;
    let term = u64::from_str_radix(parts.next()?, 16).ok()?;
    let command = parts.next()?;
    let json = parts.next().unwrap_or("");
    Some(LogLine {
        crc,
        index,
        term,
        command,
        json,
    })
}

/// Prints rows as columns padded to their widest cell.
fn print_table(out: &mut impl Write, rows: &[Vec<String>]) -> Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        writeln!(out, "{}", line.trim_end()).map_err(stdout_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_split_into_fields() {
        let line = r#"1a2b3c4d 000000000000000a 0000000000000002 file:write {"filename":"a b"}"#;
        let e = parse_log_line(line).unwrap();
        assert_eq!(
            (e.crc, e.index, e.term, e.command),
            ("1a2b3c4d", 10, 2, "file:write")
        );
        assert_eq!(e.to_json()["data"]["filename"], "a b");
        assert!(parse_log_line("garbage").is_none());
    }

    #[test]
    fn tables_line_up() {
        let mut out = Vec::new();
        let rows = vec![
            vec!["NAME".to_string(), "ROLE".into()],
            vec!["localhost:4001".into(), "leader".into()],
        ];
        print_table(&mut out, &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME            ROLE\nlocalhost:4001  leader\n"
        );
    }
}
