//! Process entry points of `crawler master`, `crawler worker` and `crawler dev`.
//!
//! `crawler dev` is the "run it" command: one process with a single-node store (data in
//! `./crawler-dev.data`, etcd API on 127.0.0.1:2379 so a bare `etcdctl` finds it), master 1 and
//! worker 1 sharing an in-process client of that store, and the config's tasks (the built-in
//! sample by default) as seeds. What it leaves in the store is what the seed lesson shows:
//! `/micro/registry/go.micro.server.worker/go.micro.server.worker-1`, `/resources/<name>`
//! assigned to `go.micro.server.worker-1|127.0.0.1:9089`, and the election key under
//! `/crawler/election/`. It also serves a small demo site on 127.0.0.1 (`crate::crawl::demo_site`)
//! which the sample task `demo_books` crawls, so items appear under `<data dir>/results/` with no
//! network.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::process::{block_on, fail, init_logging, load_config, log_level};
use super::process::{master_config, print_line, wait_for_signal};
use super::store::{start_embedded, StoreArgs};
use crate::client::local::LocalClient;
use crate::client::KvClient;
use crate::config::{self, Config, Role, ServerOverrides};
use crate::crawl::{demo_site, CrawlOptions, CrawlRunner};
use crate::master::Master;
use crate::worker::{Worker, WorkerOptions};

/// Data directory of `crawler dev` when `--data-dir` is not given.
pub const DEV_DATA_DIR: &str = "crawler-dev.data";
/// How long `crawler dev` waits for its master to be ready before printing its banner anyway.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Flags of `crawler dev`: the embedded store's flags (data dir default `crawler-dev.data`,
/// client URL 127.0.0.1:2379 so a bare `etcdctl` finds it) and the four API addresses.
#[derive(Clone, Debug, Args)]
pub struct DevArgs {
    /// Config file (default: the built-in sample `crawler.toml`).
    #[arg(long, env = "CRAWLER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Master HTTP API listen address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub master_http: String,
    /// Master gRPC API listen address.
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub master_grpc: String,
    /// Worker HTTP API listen address.
    #[arg(long, default_value = "127.0.0.1:8079")]
    pub worker_http: String,
    /// Worker gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:9089")]
    pub worker_grpc: String,
    /// The single-node store (same flags as `crawler store`).
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Entry point of `crawler dev`; `typed_log_level` as for `crawler master`.
pub fn main(args: DevArgs, typed_log_level: bool) -> ExitCode {
    let cfg = match load_config(args.config.as_deref(), true) {
        Ok(c) => c,
        Err(e) => return fail("dev", &e),
    };
    let flag = typed_log_level.then_some(args.store.log_level.as_str());
    init_logging(&log_level(flag, &cfg));
    block_on("dev", run(args, cfg))
}

/// `crawler dev`.
async fn run(args: DevArgs, mut cfg: Config) -> anyhow::Result<()> {
    // The demo site the sample task crawls: on its usual port, or any free one (the tasks
    // pointing at the usual address are retargeted).
    let (demo_listener, demo_addr) = demo_site::bind().await?;
    let retargeted = demo_site::retarget(&mut cfg.tasks, demo_addr);
    if retargeted > 0 {
        tracing::info!(%demo_addr, urls = retargeted, "demo site port {} was taken; task URLs retargeted", demo_site::DEFAULT_ADDR);
    }
    let demo = demo_site::serve(demo_listener);
    let mut store = args.store.clone();
    if store.data_dir.is_none() {
        store.data_dir = Some(PathBuf::from(DEV_DATA_DIR));
    }
    let data_dir = store.data_dir.clone().unwrap_or_default();
    let member = start_embedded(&store).await?;
    let client: Arc<dyn KvClient> = Arc::new(LocalClient::from_member(&member));
    let origin = args.config.as_ref().map_or_else(
        || config::SAMPLE_CONFIG_ORIGIN.to_string(),
        |p| p.display().to_string(),
    );

    let worker_settings = cfg.grpc_server.resolve(
        Role::Worker,
        &ServerOverrides {
            id: Some("1".into()),
            http: Some(args.worker_http.clone()),
            grpc: Some(args.worker_grpc.clone()),
            ..ServerOverrides::default()
        },
        &origin,
    )?;
    let master_settings = cfg.master_server.resolve(
        Role::Master,
        &ServerOverrides {
            id: Some("1".into()),
            http: Some(args.master_http.clone()),
            grpc: Some(args.master_grpc.clone()),
            ..ServerOverrides::default()
        },
        &origin,
    )?;

    let results = cfg
        .data_dir
        .clone()
        .map_or_else(|| data_dir.join("results"), PathBuf::from);
    let mut crawl = CrawlOptions::new(&results);
    crawl.writer = worker_settings.node_id();
    crawl.sink = cfg.sink.clone();
    crawl.progress_every = Duration::from_secs(10);
    // The worker first, so the seeds are assigned as soon as the master leads.
    let worker = match Worker::start(
        WorkerOptions::from_settings(&worker_settings, cfg.tasks.clone()),
        client.clone(),
        Arc::new(CrawlRunner::new(client.clone(), crawl)),
    )
    .await
    {
        Ok(w) => w,
        Err(e) => {
            let _ = member.shutdown().await;
            return Err(e.into());
        }
    };
    let master = match Master::start(master_config(&master_settings, &cfg)?, client).await {
        Ok(m) => m,
        Err(e) => {
            let _ = worker.shutdown().await;
            let _ = member.shutdown().await;
            return Err(e.into());
        }
    };
    if !master.wait_ready(READY_WAIT).await {
        tracing::warn!(
            "the master is not ready yet; the APIs below may answer 'no leader' for a while"
        );
    }
    let client_url = format!("http://{}", member.client_addr());
    let master_http = master
        .http_addr()
        .map_or_else(|| "-".to_string(), |a| format!("http://{a}"));
    print_line(&format!(
        "crawler dev ready: store {client_url} (data {}), master http {master_http} grpc {}, worker \
         http http://{} grpc {} ({})",
        data_dir.display(),
        master.grpc_addr(),
        worker.http_addr(),
        worker.advertise_address(),
        worker.node_id(),
    ));
    print_line(&format!(
        "  etcd API     {client_url}   try: etcdctl --endpoints={client_url} get --prefix /"
    ));
    print_line(&format!(
        "  master HTTP  {master_http}   GET /crawler/resources, /crawler/workers, /crawler/leader"
    ));
    print_line(&format!("  master gRPC  {}", master.grpc_addr()));
    print_line(&format!(
        "  worker HTTP  http://{}   GET /tasks",
        worker.http_addr()
    ));
    print_line(&format!("  worker gRPC  {}", worker.advertise_address()));
    print_line(&format!(
        "  demo site    http://{demo_addr}/books/   (crawled by the demo_books task)"
    ));
    print_line(&format!(
        "  results      {}/<task>.jsonl   try: tail -f {}",
        results.display(),
        results.join("demo_books.jsonl").display()
    ));
    print_line("  Ctrl-C stops everything.");

    wait_for_signal().await;
    tracing::info!("shutting down");
    // The master first, so it does not reassign the worker's resources as the worker leaves.
    master.shutdown().await;
    let worker_result = worker.shutdown().await;
    member.shutdown().await?;
    demo.abort();
    worker_result?;
    Ok(())
}
