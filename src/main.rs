//! The `raftd` binary: parse flags, set up logging, run a node until SIGINT/SIGTERM.

use std::process::ExitCode;
use std::str::FromStr;

use clap::Parser;
use raftd::cli::Cli;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = raftd::identity::resolve(cli, &mut raftd::identity::Terminal).and_then(
        |(config, identity, start)| {
            runtime.block_on(raftd::server::run(config, identity, start, shutdown_signal()))
        },
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` (target=level,...) wins; otherwise `-v` turns on peer traffic, `-vv` openraft's.
fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,raftd=info,openraft=off",
        1 => "warn,raftd=debug,openraft=warn",
        _ => "info,raftd=debug,openraft=debug",
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| Targets::from_str(&v).ok())
        .unwrap_or_else(|| Targets::from_str(default).expect("valid default filter"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
