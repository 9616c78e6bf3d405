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

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

use crate::cli::{DevArgs, MasterArgs, StoreArgs, WorkerArgs};
use crate::client::local::LocalClient;
use crate::client::{KvClient, RemoteConfig, RemoteKvClient};
use crate::config::{self, Config, Role, ServerOverrides, ServerSettings};
use crate::crawl::{demo_site, CrawlOptions, CrawlRunner};
use crate::master::{Master, MasterConfig};
use crate::server::member::Member;
use crate::worker::{Worker, WorkerOptions};

/// Data directory of `crawler dev` when `--data-dir` is not given.
pub const DEV_DATA_DIR: &str = "crawler-dev.data";
/// How long to wait for the embedded member to elect itself before going on anyway.
const LEADER_WAIT: Duration = Duration::from_secs(15);
/// How long `crawler dev` waits for its master to be ready before printing its banner anyway.
const READY_WAIT: Duration = Duration::from_secs(30);

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

fn print_line(line: &str) {
    // Ready lines are the contract with scripts and tests that spawn the binary.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Start a store member from the store flags (auto-compaction on unless the flags say otherwise),
/// and wait (bounded) until the cluster has a leader.
async fn start_member(store: &StoreArgs) -> anyhow::Result<Member> {
    let cfg = store.member_config_with(crate::cli::EMBEDDED_DEFAULTS)?;
    let member = crate::services::start_member(cfg).await?;
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    while member.raft().status().leader.is_none() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("the store has no leader yet; going on (clients retry)");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(member)
}

/// The worker service name masters watch: `[GRPCServer].Name`, default `go.micro.server.worker`.
fn worker_service(cfg: &Config) -> String {
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

fn remote_client(endpoints: &[String], timeout: Duration) -> anyhow::Result<Arc<dyn KvClient>> {
    let mut rc = RemoteConfig::new(endpoints.iter().cloned());
    rc.request_timeout = timeout;
    Ok(Arc::new(RemoteKvClient::new(rc)?))
}

/// `crawler master`.
pub async fn run_master(args: MasterArgs, cfg: Config) -> anyhow::Result<()> {
    let origin = args
        .config
        .as_ref()
        .map_or_else(|| "<defaults>".to_string(), |p| p.display().to_string());
    let overrides = ServerOverrides {
        id: args.id.clone(),
        http: args.http.clone(),
        grpc: args.grpc.clone(),
        advertise: args.advertise.clone(),
        registry: args.etcd_endpoints.clone(),
        register_ttl: None,
    };
    let settings = cfg
        .master_server
        .resolve(Role::Master, &overrides, &origin)?;
    let mcfg = master_config(&settings, &cfg)?;
    // External store when asked for on the command line or in the file; else embed a member.
    let external = args.etcd_endpoints.is_some() || cfg.master_server.registry_address.is_some();
    let (member, client): (Option<Member>, Arc<dyn KvClient>) = if external {
        tracing::info!(endpoints = ?settings.registry, "using an external store; no member embedded");
        (
            None,
            remote_client(&settings.registry, settings.client_timeout)?,
        )
    } else {
        let member = start_member(&args.store).await?;
        let client: Arc<dyn KvClient> = Arc::new(LocalClient::from_member(&member));
        (Some(member), client)
    };
    let master = match Master::start(mcfg, client).await {
        Ok(m) => m,
        Err(e) => {
            if let Some(m) = member {
                let _ = m.shutdown().await;
            }
            return Err(e.into());
        }
    };
    let store = match &member {
        Some(m) => format!("embedded, client http://{}", m.client_addr()),
        None => format!("external {}", settings.registry.join(",")),
    };
    print_line(&format!(
        "crawler master ready: {} grpc {} http {} store {}",
        master.election_value(),
        master.grpc_addr(),
        master
            .http_addr()
            .map_or_else(|| "-".to_string(), |a| a.to_string()),
        store
    ));
    wait_for_signal().await;
    tracing::info!(target: "crawler::master", "shutting down");
    master.shutdown().await;
    if let Some(m) = member {
        m.shutdown().await?;
    }
    Ok(())
}

/// `crawler worker`.
pub async fn run_worker(args: WorkerArgs, cfg: Config) -> anyhow::Result<()> {
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

/// `crawler dev`.
pub async fn run_dev(args: DevArgs, mut cfg: Config) -> anyhow::Result<()> {
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
    let member = start_member(&store).await?;
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
