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

/// Where the first-run questions go: the terminal in `raftd`, a script in tests.
pub trait Prompt {
    /// Whether anyone is there to answer; without, defaults apply and nothing is printed
    /// but the node's name.
    fn interactive(&self) -> bool;
    /// Shows `text` and returns the answer, `default` for an empty one.
    fn ask(&mut self, text: &str, default: &str) -> Result<String>;
    /// Shows a line.
    fn say(&mut self, line: &str);
}

/// The process's terminal: stdin for answers, stdout for questions.
pub struct Terminal;

impl Prompt for Terminal {
    fn interactive(&self) -> bool {
        std::io::stdin().is_terminal()
    }

    fn ask(&mut self, text: &str, default: &str) -> Result<String> {
        let mut out = std::io::stdout();
        write!(out, "{text}")
            .and_then(|()| out.flush())
            .context(|| "write prompt".into())?;
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context(|| "read answer".into())?;
        let answer = line.trim();
        Ok(if answer.is_empty() {
            default.to_string()
        } else {
            answer.to_string()
        })
    }

    fn say(&mut self, line: &str) {
        println!("{line}");
    }
}

/// Settles identity and start mode from the data directory, flags and the prompt, and saves
/// the identity in `info`.
pub fn resolve(cli: Cli, prompt: &mut dyn Prompt) -> Result<(Config, Identity, Start)> {
    let dir = cli.data_dir()?;
    std::fs::create_dir_all(&dir).context(|| format!("create data directory {}", dir.display()))?;
    let info_path = dir.join("info");
    let stored = fsutil::read_json::<Identity>(&info_path).map_err(|e| Error::Config(e.to_string()))?;
    let identity = match &stored {
        Some(stored) => check_stored(stored, &cli, &dir)?,
        None => new_identity(&cli, prompt)?,
    };
    prompt.say(&format!("Name: {}", identity.name));
    let start = if is_pristine(&dir) {
        ask_start(cli.join.as_deref(), prompt)?
    } else {
        Start::Resume
    };
    let config = cli.into_config(identity.host.clone(), identity.port)?;
    config.validate()?;
    if stored.as_ref() != Some(&identity) {
        fsutil::write_atomic(
            &info_path,
            &serde_json::to_vec_pretty(&identity).expect("identity serializes"),
        )
        .context(|| "save the node's identity".into())?;
    }
    Ok((config, identity, start))
}

/// A stored identity, provided flags do not contradict it.
fn check_stored(stored: &Identity, cli: &Cli, dir: &Path) -> Result<Identity> {
    check_flag("host", cli.host.as_deref(), &stored.host, dir)?;
    check_flag(
        "port",
        cli.port.map(|p| p.to_string()).as_deref(),
        &stored.port.to_string(),
        dir,
    )?;
    Ok(stored.clone())
}

/// A new identity from flags, else answers, else defaults; a fresh random id.
fn new_identity(cli: &Cli, prompt: &mut dyn Prompt) -> Result<Identity> {
    let mut ask = |question: &str, default: &str| -> Result<String> {
        if !prompt.interactive() {
            return Ok(default.to_string());
        }
        prompt.ask(&format!("{question} [{default}] "), default)
    };
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
    Ok(Identity {
        id: new_id(),
        name: format!("{host}:{port}"),
        host,
        port,
    })
}

/// For a pristine node: join the member given by flag or answer, else start a new cluster.
fn ask_start(join: Option<&str>, prompt: &mut dyn Prompt) -> Result<Start> {
    let join = match join {
        Some(j) => j.to_string(),
        None if prompt.interactive() => {
            prompt.say("");
            prompt.say("This server has no log. Please enter a server in the cluster to join");
            prompt.say("to or hit enter to initialize a cluster.");
            prompt.ask("Join to (host:port)> ", "")?
        }
        None => String::new(),
    };
    Ok(if join.is_empty() {
        Start::Initialize
    } else {
        Start::Join(join)
    })
}

/// A data directory with neither a log nor a vote has never been part of a cluster.
pub fn is_pristine(dir: &Path) -> bool {
    let log_empty = std::fs::metadata(dir.join("log"))
        .map(|m| m.len() == 0)
        .unwrap_or(true);
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

/// Creates the identity of a node made by a tool (`raftd restore`) in `dir`, which must be
/// new or empty, and saves it in `info`.
pub fn create(dir: &Path, host: Option<String>, port: Option<u16>) -> Result<Identity> {
    let occupied = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if occupied {
        return Err(Error::Config(format!(
            "{} is not empty: restore into a new data directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).context(|| format!("create data directory {}", dir.display()))?;
    let host = host.unwrap_or_else(|| DEFAULT_HOST.to_string());
    let port = port.unwrap_or(DEFAULT_PORT);
    let identity = Identity {
        id: new_id(),
        name: format!("{host}:{port}"),
        host,
        port,
    };
    fsutil::write_atomic(
        &dir.join("info"),
        &serde_json::to_vec_pretty(&identity).expect("identity serializes"),
    )
    .context(|| "save the node's identity".into())?;
    Ok(identity)
}

fn new_id() -> NodeId {
    // Never 0, which reads like "unset" in logs.
    rand::random::<NodeId>().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Answers questions from a script and records everything shown.
    struct Script {
        answers: Vec<&'static str>,
        shown: Vec<String>,
        interactive: bool,
    }

    impl Prompt for Script {
        fn interactive(&self) -> bool {
            self.interactive
        }
        fn ask(&mut self, text: &str, default: &str) -> Result<String> {
            self.shown.push(text.to_string());
            let answer = self.answers.remove(0);
            Ok(if answer.is_empty() {
                default.to_string()
            } else {
                answer.to_string()
            })
        }
        fn say(&mut self, line: &str) {
            self.shown.push(line.to_string());
        }
    }

    fn cli(dir: &Path, flags: &[&str]) -> Cli {
        let mut args = vec!["raftd", dir.to_str().unwrap()];
        args.extend(flags);
        crate::cli::Raftd::try_parse_from(args).unwrap().node
    }

    #[test]
    fn first_run_asks_then_restart_asks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut script = Script {
            answers: vec!["", "4005", "node1:4001"],
            shown: vec![],
            interactive: true,
        };
        let (config, identity, start) = resolve(cli(dir.path(), &[]), &mut script).unwrap();
        assert_eq!(identity.name, "localhost:4005");
        assert_eq!((config.host.as_str(), config.port), ("localhost", 4005));
        assert_eq!(start, Start::Join("node1:4001".into()));
        assert_eq!(
            script.shown[..3],
            [
                "Enter hostname: [localhost] ",
                "Enter port: [4001] ",
                "Name: localhost:4005"
            ]
        );
        assert!(script.shown.iter().any(|l| l.contains("This server has no log")));

        // The data directory now has an identity (and, once it ran, a log): no questions.
        std::fs::write(dir.path().join("log"), "x").unwrap();
        let mut silent = Script {
            answers: vec![],
            shown: vec![],
            interactive: true,
        };
        let (_, again, start) = resolve(cli(dir.path(), &[]), &mut silent).unwrap();
        assert_eq!((again, start), (identity, Start::Resume));
        assert_eq!(silent.shown, ["Name: localhost:4005"]);
        let err = resolve(cli(dir.path(), &["--port", "4006"]), &mut silent).unwrap_err();
        assert!(
            err.to_string().contains("belongs to a node with port 4005"),
            "{err}"
        );
    }

    #[test]
    fn without_a_terminal_defaults_and_flags_apply() {
        let dir = tempfile::tempdir().unwrap();
        let mut nobody = Script {
            answers: vec![],
            shown: vec![],
            interactive: false,
        };
        let (_, identity, start) = resolve(cli(dir.path(), &["--host", "127.0.0.1"]), &mut nobody).unwrap();
        assert_eq!(
            (identity.name.as_str(), start),
            ("127.0.0.1:4001", Start::Initialize)
        );
        let other = tempfile::tempdir().unwrap();
        let (_, _, start) = resolve(cli(other.path(), &["--join", "a:1"]), &mut nobody).unwrap();
        assert_eq!(start, Start::Join("a:1".into()));
    }
}
