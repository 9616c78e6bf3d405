//! The crawler worker: registers in the registry, runs exactly the resources assigned to it.
//!
//! - **Registration**: service `go.micro.server.worker`, node `go.micro.server.worker-<id>`,
//!   address = the advertised gRPC address, on a lease of `RegisterTTL` kept alive (and
//!   re-registered when lost) by [`crate::coord::registry`]. A clean stop deregisters at once; a crash
//!   leaves the key until the lease expires.
//! - **Assignments**: a consistent snapshot of `/resources/` (a read-only txn, which reports the
//!   revision R it read at), then a watch from R+1: no change is missed and none is seen twice.
//!   A resource whose `AssignedNode` starts with `<node id>|` is started; one deleted, moved to
//!   another node or recreated with a new ID is stopped. A compacted or ended watch starts over
//!   from a new snapshot (reconciling against what runs).
//! - **Running**: through a [`TaskRunner`] (the crawl engine, [`crate::crawl::CrawlRunner`];
//!   [`LoggingRunner`] fetches nothing and serves tests).
//! - **Registration lost**: a guard checks the registration lease every third of the TTL. When
//!   the lease is gone, was replaced by a re-registration, or could not be confirmed for a whole
//!   TTL (store unreachable), the master has reassigned (or will reassign) this worker's
//!   resources: every run stops, and runs start again from a fresh snapshot once a lease is
//!   confirmed alive. A partitioned worker therefore does not go on crawling what another
//!   worker now owns.
//! - **APIs**: HTTP `GET /tasks` and `GET /health` ([`http`]); gRPC `grpc.health.v1.Health` on the
//!   registered address (service `""` and `crawler.Worker`, the latter serving once the first
//!   snapshot is loaded).

mod assignments;
pub mod http;
mod metrics;
mod progress;
mod registration;
pub mod retry;
pub mod runner;
mod specs;
mod table;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use runner::{LoggedRun, LoggingRunner};
pub use table::{TaskView, HEALTH_SERVICE};

use retry::MAX_BACKOFF;
use table::Shared;

use crate::client::KvClient;
use crate::config::{self, ServerSettings};
use crate::coord::registry::{
    Node, RegisterOptions, Registration, Registry, RegistryError, Service,
};
use crate::model::resource::{RESOURCE_PREFIX, WORKER_SERVICE};
use crate::model::runner::TaskRunner;
use crate::model::task::TaskConfig;
use assignments::Assigner;
use registration::{guard_registration, RegState};

/// How long a stop lets open HTTP/gRPC connections finish.
const GRACEFUL_SHUTDOWN: Duration = Duration::from_secs(2);

/// Everything a worker needs to start.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Worker id (`--id`); the node id is `<service>-<id>`.
    pub id: String,
    /// Service name, `go.micro.server.worker`.
    pub service: String,
    /// HTTP API listen address (port 0 allowed).
    pub http_listen: SocketAddr,
    /// gRPC listen address (port 0 allowed).
    pub grpc_listen: SocketAddr,
    /// Advertised gRPC address (`host:port` or `host`); default derived from the bound address.
    pub advertise: Option<String>,
    /// Registration lease TTL.
    pub register_ttl: Duration,
    /// Registration refresh interval (`None` = a third of the TTL).
    pub register_interval: Option<Duration>,
    /// Local task specs: what runs a resource whose spec is not in the store (`/crawler/specs/`).
    pub tasks: Vec<TaskConfig>,
    /// Resource key prefix (ends with `/`).
    pub resource_prefix: String,
    /// How failed runs are retried.
    pub task_retry: retry::RetryPolicy,
}

impl WorkerOptions {
    /// Options from a resolved `[GRPCServer]` section and the config's tasks.
    pub fn from_settings(s: &ServerSettings, tasks: Vec<TaskConfig>) -> Self {
        Self {
            id: s.id.clone(),
            service: s.name.clone(),
            http_listen: s.http_listen,
            grpc_listen: s.grpc_listen,
            advertise: s.advertise.clone(),
            register_ttl: s.register_ttl,
            register_interval: s.register_interval,
            tasks,
            resource_prefix: RESOURCE_PREFIX.to_string(),
            task_retry: retry::RetryPolicy {
                max_retries: s.task_retries,
                base: s.task_retry_backoff,
            },
        }
    }

    /// Options for a worker `id` on 127.0.0.1 with OS-chosen ports (tests, dev mode).
    pub fn local(id: impl Into<String>, tasks: Vec<TaskConfig>) -> Self {
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            id: id.into(),
            service: WORKER_SERVICE.to_string(),
            http_listen: any,
            grpc_listen: any,
            advertise: None,
            register_ttl: Duration::from_secs(config::DEFAULT_REGISTER_TTL_SECS),
            register_interval: None,
            tasks,
            resource_prefix: RESOURCE_PREFIX.to_string(),
            task_retry: retry::RetryPolicy::default(),
        }
    }

    /// Registry node id: `<service>-<id>`.
    pub fn node_id(&self) -> String {
        format!("{}-{}", self.service, self.id)
    }
}

/// Why a worker could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// `HTTP` or `gRPC`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The options are unusable.
    #[error("invalid worker options: {0}")]
    Options(String),
    /// Registering failed for a reason retrying would not fix.
    #[error("cannot register in the registry: {0}")]
    Register(RegistryError),
    /// Deregistering on stop failed (the key then expires with its lease).
    #[error("cannot deregister (the registration expires with its lease): {0}")]
    Deregister(RegistryError),
}

/// A running worker. Call [`Worker::shutdown`] to stop it cleanly (stop runs, deregister).
pub struct Worker {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    stop: watch::Sender<bool>,
    assignments: Option<JoinHandle<()>>,
    guard: Option<JoinHandle<()>>,
    registration: Option<Arc<Registration>>,
    /// What the registration guard knows (`None` before registering).
    registered: Option<watch::Receiver<RegState>>,
    health: tonic_health::server::HealthReporter,
    http_stop: Option<oneshot::Sender<()>>,
    http_task: JoinHandle<()>,
    grpc_stop: Option<oneshot::Sender<()>>,
    grpc_task: JoinHandle<()>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("node_id", &self.shared.node_id)
            .field("advertise", &self.shared.advertise)
            .field("http", &self.http_addr)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Bind the APIs, register, and start following assignments. Waits (retrying) while the
    /// store is unreachable; fails on a taken port or a non-retryable store error.
    pub async fn start(
        opts: WorkerOptions,
        client: Arc<dyn KvClient>,
        runner: Arc<dyn TaskRunner>,
    ) -> Result<Worker, WorkerError> {
        if opts.id.is_empty() || opts.id.contains(['/', '|']) {
            return Err(WorkerError::Options(format!(
                "id {:?} must be non-empty without '/' or '|'",
                opts.id
            )));
        }
        if !opts.resource_prefix.ends_with('/') {
            return Err(WorkerError::Options(format!(
                "resource prefix {:?} must end with '/'",
                opts.resource_prefix
            )));
        }
        let grpc_listener = tokio::net::TcpListener::bind(opts.grpc_listen)
            .await
            .map_err(|source| WorkerError::Bind {
                what: "gRPC",
                addr: opts.grpc_listen,
                source,
            })?;
        let http_listener = tokio::net::TcpListener::bind(opts.http_listen)
            .await
            .map_err(|source| WorkerError::Bind {
                what: "HTTP",
                addr: opts.http_listen,
                source,
            })?;
        let local = |l: &tokio::net::TcpListener, what, addr| {
            l.local_addr()
                .map_err(|source| WorkerError::Bind { what, addr, source })
        };
        let grpc_addr = local(&grpc_listener, "gRPC", opts.grpc_listen)?;
        let http_addr = local(&http_listener, "HTTP", opts.http_listen)?;
        let advertise = crate::util::url::advertise_address(grpc_addr, opts.advertise.as_deref());
        let node_id = opts.node_id();

        let shared = Arc::new(Shared {
            node_id: node_id.clone(),
            advertise: advertise.clone(),
            table: Mutex::new(BTreeMap::new()),
            synced_revision: AtomicI64::new(0),
            watching: std::sync::atomic::AtomicBool::new(false),
        });

        // gRPC health first: the address is registered, so it must answer.
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(HEALTH_SERVICE, tonic_health::ServingStatus::NotServing)
            .await;
        let (grpc_stop, grpc_stop_rx) = oneshot::channel::<()>();
        let incoming =
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        let grpc_task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(health_service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = grpc_stop_rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "worker gRPC server ended with an error");
            }
        });

        let (http_stop, http_stop_rx) = oneshot::channel::<()>();
        let router = http::router(shared.clone());
        let http_task = tokio::spawn(async move {
            let served = axum::serve(http_listener, router)
                .with_graceful_shutdown(async {
                    let _ = http_stop_rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "worker HTTP server ended with an error");
            }
        });

        let mut worker = Worker {
            shared: shared.clone(),
            http_addr,
            grpc_addr,
            stop: watch::channel(false).0,
            assignments: None,
            guard: None,
            registration: None,
            registered: None,
            health: health.clone(),
            http_stop: Some(http_stop),
            http_task,
            grpc_stop: Some(grpc_stop),
            grpc_task,
        };

        let mut metadata = BTreeMap::new();
        // What go-micro puts on a node; tools reading the registry expect these keys.
        for (k, v) in [
            ("broker", "http"),
            ("protocol", "grpc"),
            ("registry", "etcd"),
            ("server", "grpc"),
            ("transport", "grpc"),
        ] {
            metadata.insert(k.to_string(), v.to_string());
        }
        // No `tasks` metadata: this worker runs any task whose spec is in the store, so the
        // master need not limit what it assigns here.
        let service = Service::with_node(
            opts.service.clone(),
            Node {
                id: node_id.clone(),
                address: advertise.clone(),
                metadata,
            },
        );
        let reg_opts = RegisterOptions {
            ttl: opts.register_ttl,
            interval: opts.register_interval,
        };
        let registry = Registry::new(client.clone());
        let mut backoff = Duration::from_millis(100);
        let registration = loop {
            match registry.register(&service, reg_opts).await {
                Ok(r) => break r,
                Err(RegistryError::Kv(e)) if e.is_retryable() => {
                    tracing::warn!(error = %e, "store unreachable, retrying registration");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    worker.stop_servers().await;
                    return Err(WorkerError::Register(e));
                }
            }
        };
        let registration = Arc::new(registration);
        worker.registration = Some(registration.clone());
        tracing::info!(node = %node_id, address = %advertise, ttl = ?opts.register_ttl, "worker registered");

        let (stop_tx, stop_rx) = watch::channel(false);
        worker.stop = stop_tx;
        // The registration lease was just granted: alive, no loss yet.
        let (registered_tx, registered_rx) = watch::channel(RegState {
            losses: 0,
            alive: true,
            taken: false,
        });
        worker.registered = Some(registered_rx.clone());
        worker.guard = Some(tokio::spawn(guard_registration(
            client.clone(),
            registration,
            opts.register_ttl,
            registered_tx,
            stop_rx.clone(),
        )));
        let tasks: HashMap<String, TaskConfig> = opts
            .tasks
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        let assigner = Assigner {
            client,
            prefix: opts.resource_prefix.clone(),
            retry: opts.task_retry,
            specs: specs::SpecBook::new(tasks),
            runner,
            shared,
            health,
        };
        worker.assignments = Some(tokio::spawn(assigner.run(stop_rx, registered_rx)));
        Ok(worker)
    }

    /// Registry node id, `go.micro.server.worker-<id>`.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The registered (advertised) gRPC address.
    pub fn advertise_address(&self) -> &str {
        &self.shared.advertise
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the gRPC server listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The runs this worker is responsible for, as `GET /tasks` lists them.
    pub fn tasks(&self) -> Vec<TaskView> {
        self.shared.views()
    }

    /// Highest store revision whose resource changes this worker has acted on (0 before its
    /// first snapshot).
    pub fn synced_revision(&self) -> i64 {
        self.shared.synced_revision.load(Ordering::Acquire)
    }

    /// Resolves if another process registers this worker's id (the worker has then stopped
    /// every run and must exit), with the error naming that process's address.
    pub async fn id_taken(&self) -> WorkerError {
        if let Some(mut rx) = self.registered.clone() {
            if rx.wait_for(|s| s.taken).await.is_ok() {
                if let Some(e) = self.registration.as_ref().and_then(|r| r.taken_by()) {
                    return WorkerError::Register(e);
                }
            }
        }
        std::future::pending().await
    }

    /// The registration lease (for tests and diagnostics).
    pub async fn lease_id(&self) -> Option<i64> {
        match &self.registration {
            Some(r) => Some(r.lease_id().await),
            None => None,
        }
    }

    /// Stop every run, deregister at once, and stop the APIs.
    pub async fn shutdown(mut self) -> Result<(), WorkerError> {
        // Runs stop before the registration goes, so a master reassigning on the deregistration
        // never overlaps with our own run of the same resource.
        let _ = self.stop.send(true);
        if let Some(a) = self.assignments.take() {
            if let Err(e) = a.await {
                tracing::warn!(error = %e, "worker assignment task failed");
            }
        }
        if let Some(g) = self.guard.take() {
            let _ = g.await;
        }
        let result = match self.registration.take().map(Arc::try_unwrap) {
            Some(Ok(r)) => r.deregister().await.map_err(WorkerError::Deregister),
            Some(Err(_)) => {
                // Unreachable once the guard has ended; the key then expires with its lease.
                tracing::warn!("registration still shared at shutdown; leaving it to expire");
                Ok(())
            }
            None => Ok(()),
        };
        match &result {
            Ok(()) => tracing::info!(node = %self.shared.node_id, "worker deregistered"),
            Err(e) => tracing::warn!(error = %e, "worker deregistration failed"),
        }
        self.stop_servers().await;
        result
    }

    async fn stop_servers(&mut self) {
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        self.health
            .set_service_status(HEALTH_SERVICE, tonic_health::ServingStatus::NotServing)
            .await;
        if let Some(s) = self.http_stop.take() {
            let _ = s.send(());
        }
        if let Some(s) = self.grpc_stop.take() {
            let _ = s.send(());
        }
        for task in [&mut self.http_task, &mut self.grpc_task] {
            if tokio::time::timeout(GRACEFUL_SHUTDOWN, &mut *task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Dropped without `shutdown`: stop everything we spawned; the registration's lease
        // expires on its own (as after a crash).
        let _ = self.stop.send(true);
        if let Some(a) = self.assignments.take() {
            a.abort();
        }
        if let Some(g) = self.guard.take() {
            g.abort();
        }
        self.http_task.abort();
        self.grpc_task.abort();
    }
}
