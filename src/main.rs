//! `crawler` binary: parses the command line and runs the chosen subcommand.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _};
use crawler::cli::{Cli, Command, StoreArgs};
use tracing_subscriber::EnvFilter;

/// jemalloc: far less CPU per request than glibc malloc under many concurrent clients.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Whether `--log-level` was typed (the store flags give it a default): the config file's
    // `logLevel` applies only when it was not.
    let typed_log_level = |sub: &str| {
        matches
            .subcommand_matches(sub)
            .and_then(|m| m.value_source("log_level"))
            == Some(ValueSource::CommandLine)
    };
    match cli.command {
        Command::Master(args) => {
            let cfg = match crawler::cli::dev::load_config(args.config.as_deref(), false) {
                Ok(c) => c,
                Err(e) => return fail("master", &e),
            };
            let flag = typed_log_level("master").then_some(args.store.log_level.as_str());
            init_logging(&crawler::cli::dev::log_level(flag, &cfg));
            block_on("master", crawler::cli::dev::run_master(args, cfg))
        }
        Command::Worker(args) => {
            let cfg = match crawler::cli::dev::load_config(args.config.as_deref(), false) {
                Ok(c) => c,
                Err(e) => return fail("worker", &e),
            };
            init_logging(&crawler::cli::dev::log_level(
                args.log_level.as_deref(),
                &cfg,
            ));
            block_on("worker", crawler::cli::dev::run_worker(args, cfg))
        }
        Command::Dev(args) => {
            let cfg = match crawler::cli::dev::load_config(args.config.as_deref(), true) {
                Ok(c) => c,
                Err(e) => return fail("dev", &e),
            };
            let flag = typed_log_level("dev").then_some(args.store.log_level.as_str());
            init_logging(&crawler::cli::dev::log_level(flag, &cfg));
            block_on("dev", crawler::cli::dev::run_dev(args, cfg))
        }
        Command::Bench(args) => crawler::bench::main(args),
        Command::Site(args) => {
            init_logging("warn");
            block_on("site", serve_site(args))
        }
        Command::DemoSite(args) => {
            init_logging("warn");
            block_on("demo-site", serve_demo_site(args))
        }
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

/// `crawler site`: serve until Ctrl-C or SIGTERM.
async fn serve_site(args: crawler::cli::SiteArgs) -> anyhow::Result<()> {
    use crawler::crawl::synthetic_site::{SiteOptions, SyntheticSite};
    let opts = SiteOptions {
        fanout: args.fanout,
        pages: args.pages,
        page_bytes: args.page_bytes,
        latency: std::time::Duration::from_millis(args.latency_ms),
    };
    let site = SyntheticSite::start(opts, &args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {:?}: {e}", args.listen))?;
    println!("synthetic site ready: {}", site.seed());
    let _ = std::io::stdout().flush();
    crawler::cli::dev::wait_for_signal().await;
    Ok(())
}

/// `crawler demo-site`: serve until Ctrl-C or SIGTERM.
async fn serve_demo_site(args: crawler::cli::DemoSiteArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    let server = crawler::crawl::demo_site::serve(listener);
    println!("demo site ready: http://{addr}/books/");
    let _ = std::io::stdout().flush();
    crawler::cli::dev::wait_for_signal().await;
    server.abort();
    Ok(())
}

fn fail(cmd: &str, e: &anyhow::Error) -> ExitCode {
    eprintln!("crawler {cmd}: {e:#}");
    ExitCode::FAILURE
}

/// Run one subcommand on a multi-threaded runtime.
fn block_on(cmd: &str, fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crawler {cmd}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(cmd, &e),
    }
}

/// Logs go to stderr; `RUST_LOG` wins over `--log-level`.
/// openraft's log directives at the default levels (see `init_logging`).
const QUIET_OPENRAFT: &str =
    "openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off";

fn init_logging(level: &str) {
    // openraft's INFO lines are its internals (a state dump at start, every vote), and its
    // replication logs four lines (one an ERROR) for every retry to a peer that is down, where
    // our peer network logs one line per reachable/unreachable change. Both show at `debug`
    // and below, or when RUST_LOG asks for them.
    let quiet = !["debug", "trace"].contains(&level.trim()) && !level.contains("openraft");
    let default = if quiet {
        format!("{level},{QUIET_OPENRAFT}")
    } else {
        level.to_string()
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&default))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET_OPENRAFT}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

async fn run_store(args: StoreArgs) -> anyhow::Result<()> {
    let cfg = args.member_config()?;
    let member = crawler::services::start_member(cfg).await?;
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
    crawler::cli::dev::wait_for_signal().await;
    tracing::info!("shutting down");
    member.shutdown().await
}
