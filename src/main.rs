//! `crawler` binary: parses the command line and runs the chosen subcommand.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser;
use crawler::cli::{Cli, Command, StoreArgs};
use crawler::member::Member;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Store(args) => {
            init_logging(&args.log_level);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("crawler store: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run_store(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("crawler store: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Logs go to stderr; `RUST_LOG` wins over `--log-level`.
fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

async fn run_store(args: StoreArgs) -> anyhow::Result<()> {
    let cfg = args.member_config()?;
    let member = Member::start(cfg).await?;
    {
        // The ready line is the contract with scripts and tests that spawn the binary.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "crawler store ready: member {:x} client {} peer {}",
            member.raft().id(),
            member.client_addr(),
            member.raft().peer_addr()
        );
        let _ = out.flush();
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    member.shutdown().await
}

/// Ctrl-C or SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the store");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
