//! The `raftd` binary: run a node until SIGINT/SIGTERM, or one of the operator's tools.

use std::process::ExitCode;

use clap::Parser;
use raftd::cli::Raftd;

fn main() -> ExitCode {
    let args = Raftd::parse();
    let result = match args.tool {
        Some(tool) => {
            raftd::logging::init(Default::default(), 0);
            raftd::tools::run(tool)
        }
        None => run_node(args.node),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_node(cli: raftd::cli::Cli) -> raftd::Result<()> {
    raftd::logging::init(cli.log_format, cli.verbose);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.worker_threads.into())
        .enable_all()
        .build()
        .map_err(|e| raftd::Error::io("start the async runtime", e))?;
    let (config, identity, start) = raftd::identity::resolve(cli, &mut raftd::identity::Terminal)?;
    raftd::logging::set_node(&identity.name);
    runtime.block_on(raftd::server::run(config, identity, start, shutdown_signal()))
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
