//! `raftd log verify DATA_DIR` and `raftd log repair DATA_DIR`.

use std::io::{BufRead, Write};

use crate::cli::LogAction;
use crate::error::{Error, Result};
use crate::raft::log_store::check::{self, Report};

/// Runs a `raftd log` action.
pub(super) fn run(action: LogAction) -> Result<()> {
    match action {
        LogAction::Verify { data_dir } => {
            let report = check::verify(&data_dir)?;
            println!("{}", describe(&report));
            match report.torn {
                Some(_) => Err(Error::Config(format!(
                    "the log has a torn tail; the node drops it when it starts, or run: raftd log repair {}",
                    data_dir.display()
                ))),
                None => Ok(()),
            }
        }
        LogAction::Repair { data_dir, yes } => {
            let report = check::verify(&data_dir)?;
            println!("{}", describe(&report));
            let Some(torn) = report.torn else {
                println!("nothing to repair");
                return Ok(());
            };
            if !yes
                && !confirm(&format!(
                    "drop the {} bytes from line {} on? [y/N] ",
                    torn.bytes, torn.line
                ))?
            {
                return Err(Error::Config("not repaired".into()));
            }
            check::repair(&data_dir, &torn)?;
            println!("dropped the torn tail: the log ends at line {}", torn.line - 1);
            Ok(())
        }
    }
}

fn describe(r: &Report) -> String {
    let range = match (r.first, r.last) {
        (Some(first), Some(last)) => format!("indexes {first} to {last}"),
        _ => "no entries".into(),
    };
    let mut text = format!("{} entries verified ({range})", r.entries);
    if let Some(t) = &r.torn {
        text.push_str(&format!(
            "\ntorn tail from line {} ({} bytes): {}",
            t.line, t.bytes, t.reason
        ));
    }
    text
}

fn confirm(question: &str) -> Result<bool> {
    let mut out = std::io::stderr();
    let _ = write!(out, "{question}");
    let _ = out.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::io("read the answer", e))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
