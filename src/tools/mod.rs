//! The operator's tools, run as `raftd <tool>` instead of a node: `ctl` (a running cluster
//! over HTTP), `bench` (load and latency), `backup` and `restore`, `log verify|repair` (a
//! stopped node's log), and the
//! shell completions and man page generated from the command-line definitions.

mod backup;
pub mod bench;
pub mod ctl;
mod logcheck;

use clap::CommandFactory;

use crate::cli::{Raftd, Tool};
use crate::error::{Error, Result};

/// Runs a tool to completion.
pub fn run(tool: Tool) -> Result<()> {
    match tool {
        Tool::Ctl(args) => runtime()?.block_on(ctl::run(args)),
        Tool::Backup { from, file, token } => {
            runtime()?.block_on(backup::save(&from, &file, token.token()?.as_deref()))
        }
        Tool::Restore {
            file,
            data_dir,
            host,
            port,
        } => backup::restore(&file, &data_dir, host, port),
        Tool::Log { action } => logcheck::run(action),
        Tool::Bench(args) => bench::run(args),
        Tool::Completions { shell } => {
            clap_complete::generate(shell, &mut Raftd::command(), "raftd", &mut std::io::stdout());
            Ok(())
        }
        Tool::Man => clap_mangen::Man::new(Raftd::command())
            .render(&mut std::io::stdout())
            .map_err(|e| Error::io("write the man page", e)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the async runtime", e))
}
