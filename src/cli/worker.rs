//! `crawler worker`: a crawler worker against the store at `--registry`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::Args;

use super::process::{block_on, fail, init_logging, load_config, log_level};
use super::process::{print_line, remote_client, wait_for_signal};
use crate::config::{Config, Role, ServerOverrides};
use crate::crawl::{CrawlOptions, CrawlRunner};
use crate::worker::{Worker, WorkerOptions};

/// Flags of `crawler worker`. Values given here override the config file's `[GRPCServer]`.
#[derive(Clone, Debug, Args)]
pub struct WorkerArgs {
    /// Worker id; the registry node is `go.micro.server.worker-<id>`. Default 1.
    #[arg(long)]
    pub id: Option<String>,
    /// HTTP API listen address, `:port` or `host:port` (default `:8080`).
    #[arg(long)]
    pub http: Option<String>,
    /// gRPC listen address, `:port` or `host:port` (default `:9090`).
    #[arg(long)]
    pub grpc: Option<String>,
    /// Address registered for this worker: `host:port`, or `host` to keep the gRPC port
    /// (default 127.0.0.1:<grpc port> for `:port`).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Store endpoints, comma-separated `host:port` (default 127.0.0.1:2379).
    #[arg(long)]
    pub registry: Option<String>,
    /// Registration lease TTL in seconds (default 10): how long a crashed worker stays listed.
    #[arg(long)]
    pub register_ttl: Option<u64>,
    /// Config file (`crawler.toml`); without it only defaults and flags apply (no tasks).
    #[arg(long, env = "CRAWLER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log level: debug, info, warn, error (RUST_LOG overrides it; default: the file's, else info).
    #[arg(long)]
    pub log_level: Option<String>,
}

/// Entry point of `crawler worker`.
pub fn main(args: WorkerArgs) -> ExitCode {
    let cfg = match load_config(args.config.as_deref(), false) {
        Ok(c) => c,
        Err(e) => return fail("worker", &e),
    };
    init_logging(&log_level(args.log_level.as_deref(), &cfg));
    block_on("worker", run(args, cfg))
}

/// `crawler worker`.
async fn run(args: WorkerArgs, cfg: Config) -> anyhow::Result<()> {
    let origin = args
        .config
        .as_ref()
        .map_or_else(|| "<defaults>".to_string(), |p| p.display().to_string());
    let overrides = ServerOverrides {
        id: args.id.clone(),
        http: args.http.clone(),
        grpc: args.grpc.clone(),
        advertise: args.advertise.clone(),
        registry: args.registry.clone(),
        register_ttl: args.register_ttl,
    };
    let settings = cfg.grpc_server.resolve(Role::Worker, &overrides, &origin)?;
    if cfg.tasks.is_empty() {
        tracing::warn!("no [[Tasks]] configured: every resource assigned here will fail to start");
    }
    let client = remote_client(&settings.registry, settings.client_timeout)?;
    let opts = WorkerOptions::from_settings(&settings, cfg.tasks.clone());
    let data_dir = cfg
        .data_dir
        .clone()
        .unwrap_or_else(|| crate::crawl::DEFAULT_DATA_DIR.to_string());
    let mut crawl = CrawlOptions::new(&data_dir);
    crawl.writer = settings.node_id();
    crawl.sink = cfg.sink.clone();
    let runner = Arc::new(CrawlRunner::new(client.clone(), crawl));
    // The worker waits for an unreachable store; a signal meanwhile ends the process.
    let worker = tokio::select! {
        w = Worker::start(opts, client, runner) => w?,
        _ = wait_for_signal() => bail!("stopped before the worker could register"),
    };
    print_line(&format!(
        "crawler worker ready: node {} address {} grpc {} http {} registry {} results {}",
        worker.node_id(),
        worker.advertise_address(),
        worker.grpc_addr(),
        worker.http_addr(),
        settings.registry.join(","),
        data_dir
    ));
    let taken = tokio::select! {
        _ = wait_for_signal() => None,
        e = worker.id_taken() => Some(e),
    };
    tracing::info!(target: "crawler::worker", "shutting down");
    worker.shutdown().await?;
    match taken {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
