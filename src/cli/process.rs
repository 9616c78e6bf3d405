//! What every subcommand's process shares: the runtime, logging, signals, the config file, and
//! starting the store member or clients the master and worker run on.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::client::{KvClient, RemoteConfig, RemoteKvClient};
use crate::config::{Config, ServerSettings};
use crate::master::MasterConfig;

/// Load `--config` (or the built-in sample when `sample`), naming the file in errors.
pub fn load_config(path: Option<&std::path::Path>, sample: bool) -> anyhow::Result<Config> {
    Ok(Config::load_or(path, sample)?.0)
}

/// The log filter to use: the flag when given, else the file's `logLevel`, else `info`
/// (`RUST_LOG` still wins when the logger is set up).
pub fn log_level(flag: Option<&str>, cfg: &Config) -> String {
    flag.map(str::to_string)
        .or_else(|| cfg.log_level.clone())
        .unwrap_or_else(|| "info".to_string())
}

/// Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
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
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub fn print_line(line: &str) {
    // Ready lines are the contract with scripts and tests that spawn the binary.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The worker service name masters watch: `[GRPCServer].Name`, default `go.micro.server.worker`.
pub fn worker_service(cfg: &Config) -> String {
    cfg.grpc_server
        .name
        .clone()
        .unwrap_or_else(|| crate::model::resource::WORKER_SERVICE.to_string())
}

/// `MasterConfig` from a resolved `[MasterServer]` and the config's tasks (the seeds).
pub fn master_config(s: &ServerSettings, cfg: &Config) -> anyhow::Result<MasterConfig> {
    let mut mc = MasterConfig::from_settings(s, &cfg.tasks)?;
    // A bare `--advertise host` keeps the gRPC port.
    mc.grpc_advertise = s
        .advertise
        .as_deref()
        .map(|a| crate::util::url::advertise_address(s.grpc_listen, Some(a)));
    mc.worker_service = worker_service(cfg);
    Ok(mc)
}

pub fn remote_client(endpoints: &[String], timeout: Duration) -> anyhow::Result<Arc<dyn KvClient>> {
    let mut rc = RemoteConfig::new(endpoints.iter().cloned());
    rc.request_timeout = timeout;
    Ok(Arc::new(RemoteKvClient::new(rc)?))
}

pub fn fail(cmd: &str, e: &anyhow::Error) -> ExitCode {
    eprintln!("crawler {cmd}: {e:#}");
    ExitCode::FAILURE
}

/// Run one subcommand on a multi-threaded runtime.
pub fn block_on(cmd: &str, fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
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

/// openraft's log directives at the default levels (see `init_logging`).
const QUIET_OPENRAFT: &str =
    "openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off";

/// Logs go to stderr; `RUST_LOG` wins over `--log-level`.
pub fn init_logging(level: &str) {
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
