//! Who this node is and how it starts: the `info` file, first-run prompts, join or initialize.
//!
//! The first run of a data directory settles the node's name (`host:port`) — from flags, or by
//! asking on a terminal, or by defaults — and a random Raft id, and writes them to `info`.
//! Later runs read `info` and ask nothing. A node whose data directory holds no log and no
//! vote is pristine: it either joins an existing member or initializes a new cluster.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cli::Cli;
use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::raft::NodeId;

/// Hostname used when neither a flag nor the terminal gives one.
pub const DEFAULT_HOST: &str = "localhost";
/// Port used when neither a flag nor the terminal gives one.
pub const DEFAULT_PORT: u16 = 4001;

/// The node's persistent identity, stored as JSON in `DATA_DIR/info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Raft id, random at creation.
    pub id: NodeId,
    /// Advertised `host:port`.
    pub name: String,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: u16,
}

/// What the node does once its storage is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// It has a log: resume as a member.
    Resume,
    /// Pristine, nothing to join: become the first member of a new cluster.
    Initialize,
    /// Pristine: ask this member to add us.
    Join(String),
}

/// Settles identity and start mode from the data directory, flags and (on a terminal) prompts.
pub fn resolve(cli: Cli) -> Result<(Config, Identity, Start)> {
    let dir = cli.data_dir.clone();
    std::fs::create_dir_all(&dir).context(|| format!("create data directory {}", dir.display()))?;
    let interactive = std::io::stdin().is_terminal();
    let ask = |question: &str, default: &str| -> Result<String> {
        if !interactive {
            return Ok(default.to_string());
        }
        prompt(&format!("{question} [{default}] "), default)
    };
    let info_path = dir.join("info");
    let stored = fsutil::read_json::<Identity>(&info_path).map_err(|e| Error::Config(e.to_string()))?;
    let identity = match stored.clone() {
        Some(stored) => {
            check_flag("host", cli.host.as_deref(), &stored.host, &dir)?;
            check_flag("port", cli.port.map(|p| p.to_string()).as_deref(), &stored.port.to_string(), &dir)?;
            stored
        }
        None => {
            let host = match &cli.host {
                Some(h) => h.clone(),
                None => ask("Enter hostname:", DEFAULT_HOST)?,
            };
            let port = match cli.port {
                Some(p) => p,
                None => ask("Enter port:", &DEFAULT_PORT.to_string())?
                    .parse()
                    .map_err(|_| Error::Config("port must be a number from 1 to 65535".into()))?,
            };
            Identity { id: new_id(), name: format!("{host}:{port}"), host, port }
        }
    };
    println!("Name: {}", identity.name);
    let start = if !is_pristine(&dir) {
        Start::Resume
    } else {
        let join = match &cli.join {
            Some(j) => j.clone(),
            None if interactive => {
                println!();
                println!("This server has no log. Please enter a server in the cluster to join");
                println!("to or hit enter to initialize a cluster.");
                prompt("Join to (host:port)> ", "")?
            }
            None => String::new(),
        };
        if join.is_empty() {
            Start::Initialize
        } else {
            Start::Join(join)
        }
    };
    let join = match &start {
        Start::Join(j) => Some(j.clone()),
        _ => None,
    };
    let config = cli.into_config(identity.host.clone(), identity.port, join)?;
    config.validate()?;
    if stored.as_ref() != Some(&identity) {
        fsutil::write_atomic(&info_path, &serde_json::to_vec_pretty(&identity).expect("identity serializes"))
            .context(|| "save the node's identity".into())?;
    }
    Ok((config, identity, start))
}

/// A data directory with neither a log nor a vote has never been part of a cluster.
pub fn is_pristine(dir: &Path) -> bool {
    let log_empty = std::fs::metadata(dir.join("log")).map(|m| m.len() == 0).unwrap_or(true);
    log_empty && !dir.join("vote").exists()
}

fn check_flag(what: &str, flag: Option<&str>, stored: &str, dir: &Path) -> Result<()> {
    match flag {
        Some(given) if given != stored => Err(Error::Config(format!(
            "{} belongs to a node with {what} {stored}, not {given}; use another data directory",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

fn new_id() -> NodeId {
    // Never 0, which reads like "unset" in logs.
    rand::random::<NodeId>().max(1)
}

fn prompt(text: &str, default: &str) -> Result<String> {
    let mut out = std::io::stdout();
    write!(out, "{text}").and_then(|()| out.flush()).context(|| "write prompt".into())?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context(|| "read answer".into())?;
    let answer = line.trim();
    Ok(if answer.is_empty() { default.to_string() } else { answer.to_string() })
}
