//! The crawler master: worker discovery, leader election, resources (crawl tasks) and their
//! assignment, and the master API (gRPC `CrawlerMaster` and HTTP JSON).
//!
//! Every master keeps the worker set from the registry and campaigns under the election prefix.
//! The leader refreshes the worker set, loads every resource, adds the missing seeds, assigns what
//! is unassigned or assigned to a dead worker, and only then reports ready. It reassigns the
//! resources of a worker that leaves (keeping their ID and creation time) and assigns unassigned
//! ones when a worker joins. All its writes under `/resources/` are fenced by its election key
//! (see [`resources`]), and it stops acting the moment it loses leadership.
//!
//! Followers serve reads themselves and forward writes to the leader's gRPC address, which they
//! read from the election value `master<id>-<address>`.

pub(crate) mod api;
pub(crate) mod assign;
pub(crate) mod counters;
pub(crate) mod forward;
pub(crate) mod grpc;
pub(crate) mod http;
pub(crate) mod http_body;
pub(crate) mod leader;
pub(crate) mod metrics;
pub(crate) mod ops;
pub(crate) mod resources;
pub(crate) mod state;
pub(crate) mod task_api;
pub(crate) mod task_http;
pub(crate) mod tasks;
pub(crate) mod workers;

use state::Inner;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{KvClient, KvClientExt};
use crate::config;
use crate::coord::election::{self, Election};
use crate::coord::registry::{self, Registry};
use crate::coord::snowflake::{Snowflake, SnowflakeError};

pub use api::{AddOutcome, ApiError, LeaderView};
pub use resources::{Fence, ResourceStore, WriteError};
pub use workers::{WorkerDiff, WorkerSet};

use crate::model::resource::WORKER_SERVICE;

/// How long `shutdown` waits for the servers and the resignation.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Settings of one master.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// Master id (0..=1023): the snowflake node number and part of the election value.
    pub id: u64,
    /// Address the gRPC API binds (port 0 allowed).
    pub grpc_listen: SocketAddr,
    /// `host:port` (or a bare host, given the bound port) other masters reach the gRPC API at,
    /// published in the election value. `None`: the bound address, a wildcard IP replaced by
    /// loopback (see [`config::advertise_address`]).
    pub grpc_advertise: Option<String>,
    /// Address the HTTP JSON API binds (port 0 allowed); `None` = no HTTP API.
    pub http_listen: Option<SocketAddr>,
    /// Names of the seed resources (the config's tasks) the leader adds when missing.
    pub seeds: Vec<String>,
    /// The config's tasks, whose specs the leader stores when missing.
    pub seed_specs: Vec<crate::model::task::TaskConfig>,
    /// Election prefix (default `/crawler/election`, outside `/resources/`).
    pub election_prefix: String,
    /// TTL of the election session (default 5 s): how long a crashed leader blocks a successor.
    pub session_ttl: Duration,
    /// Registry prefix (default go-micro's `/micro/registry/`).
    pub registry_prefix: String,
    /// Service the workers register as (default `go.micro.server.worker`).
    pub worker_service: String,
    /// How often the leader re-checks every assignment even without a registry change.
    pub resync_interval: Duration,
    /// Whether to campaign. `false` makes an API-only master: it serves reads and forwards
    /// writes to the leader, but never leads.
    pub campaign: bool,
    /// Move resources from the busiest workers to the idlest until loads differ by at most one
    /// (a worker that joins late gets its share); off by default, as moving a task costs the
    /// pages fetched since its last checkpoint.
    pub rebalance: bool,
    /// Bearer token the HTTP and gRPC APIs require (`None`: open; `/health`, `/readyz` always).
    pub api_token: Option<String>,
}

impl MasterConfig {
    /// Defaults for master `id` serving gRPC on `grpc_listen`, without HTTP or seeds.
    pub fn new(id: u64, grpc_listen: SocketAddr) -> Self {
        Self {
            id,
            grpc_listen,
            grpc_advertise: None,
            http_listen: None,
            seeds: Vec::new(),
            seed_specs: Vec::new(),
            election_prefix: election::DEFAULT_PREFIX.to_string(),
            session_ttl: election::DEFAULT_SESSION_TTL,
            registry_prefix: registry::DEFAULT_PREFIX.to_string(),
            worker_service: WORKER_SERVICE.to_string(),
            resync_interval: Duration::from_secs(10),
            campaign: true,
            rebalance: false,
            api_token: None,
        }
    }

    /// From resolved `[MasterServer]` settings (flags applied) and the config's tasks, which are
    /// the seeds.
    pub fn from_settings(
        s: &config::ServerSettings,
        tasks: &[crate::model::task::TaskConfig],
    ) -> Result<Self, MasterError> {
        let id = s
            .numeric_id()
            .ok_or_else(|| MasterError::NotNumericId(s.id.clone()))?;
        let mut cfg = Self::new(id, s.grpc_listen);
        cfg.grpc_advertise = s.advertise.clone();
        cfg.http_listen = Some(s.http_listen);
        cfg.seeds = tasks.iter().map(|t| t.name.clone()).collect();
        cfg.seed_specs = tasks.to_vec();
        cfg.session_ttl = s.session_ttl;
        cfg.rebalance = s.rebalance;
        cfg.api_token = s.api_token.clone();
        Ok(cfg)
    }
}

/// Why a master could not start.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The id is not a number.
    #[error("invalid master id {0:?}: must be a number in 0..=1023")]
    NotNumericId(String),
    /// The id does not fit the snowflake node bits.
    #[error("invalid master id: {0}")]
    Id(#[from] SnowflakeError),
    /// A listener could not bind.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// `gRPC` or `HTTP`.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another live master campaigns with this id (its snowflake IDs would collide with ours).
    #[error(
        "master id {id} is taken: another master campaigns as {holder:?}; give each master its own --id"
    )]
    IdTaken {
        /// Our id.
        id: u64,
        /// The other master's election value (`master<id>-<address>`).
        holder: String,
    },
    /// A configured seed name is not a valid resource name.
    #[error("invalid seed {name:?}: {reason}")]
    Seed {
        /// The seed.
        name: String,
        /// Why it is refused.
        reason: resources::NameError,
    },
}

/// Refuse to start when another live master campaigns with our id. A candidate with exactly our
/// value (id and address: no other live process serves our address) is our own dead
/// predecessor, whose session will expire; another address is waited for one session TTL (a
/// predecessor that listened elsewhere), then refused. An unreachable store skips the check
/// (the master then waits for the store anyway).
async fn check_id_free(
    client: &Arc<dyn KvClient>,
    cfg: &MasterConfig,
    own: &str,
) -> Result<(), MasterError> {
    let mine = election::master_value(cfg.id, "");
    let deadline = tokio::time::Instant::now() + cfg.session_ttl + Duration::from_secs(1);
    loop {
        let prefix = format!("{}/", cfg.election_prefix.trim_end_matches('/'));
        let kvs = match tokio::time::timeout(ID_CHECK_TIMEOUT, client.get_prefix(prefix)).await {
            Ok(Ok(r)) => r.body,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot check that the master id is free; going on");
                return Ok(());
            }
            Err(_) => {
                tracing::warn!("cannot check that the master id is free (store slow); going on");
                return Ok(());
            }
        };
        let holder = kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
            .find(|v| v.starts_with(&mine) && v != own);
        let Some(holder) = holder else {
            return Ok(());
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(MasterError::IdTaken { id: cfg.id, holder });
        }
        tracing::info!(%holder, "master id in use; waiting for that session to expire");
        tokio::time::sleep(ID_CHECK_RETRY).await;
    }
}

/// Longest the id check waits for one store read.
const ID_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between id checks.
const ID_CHECK_RETRY: Duration = Duration::from_millis(500);

/// A running master. Call [`Master::shutdown`] to resign and stop.
pub struct Master {
    inner: Arc<Inner>,
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    leader_task: JoinHandle<()>,
    workers_task: JoinHandle<()>,
    grpc_task: JoinHandle<()>,
    http_task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master")
            .field("value", &self.inner.value)
            .field("grpc", &self.grpc_addr)
            .field("http", &self.http_addr)
            .finish_non_exhaustive()
    }
}

async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, MasterError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MasterError::Bind { what, addr, source })
}

impl Master {
    /// Bind the APIs, start following the workers and campaigning, and return at once; the
    /// master becomes ready when it wins and has finished its become-leader sequence.
    pub async fn start(
        cfg: MasterConfig,
        client: Arc<dyn KvClient>,
    ) -> Result<Master, MasterError> {
        let ids = Arc::new(Snowflake::new(cfg.id)?);
        for name in &cfg.seeds {
            resources::validate_name(name).map_err(|reason| MasterError::Seed {
                name: name.clone(),
                reason,
            })?;
        }
        let grpc_listener = bind("gRPC", cfg.grpc_listen).await?;
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(|source| MasterError::Bind {
                what: "gRPC",
                addr: cfg.grpc_listen,
                source,
            })?;
        let http_listener = match cfg.http_listen {
            Some(addr) => Some(bind("HTTP", addr).await?),
            None => None,
        };
        let http_addr = match (&http_listener, cfg.http_listen) {
            (Some(l), Some(addr)) => Some(l.local_addr().map_err(|source| MasterError::Bind {
                what: "HTTP",
                addr,
                source,
            })?),
            _ => None,
        };
        if cfg.api_token.is_none() {
            for (what, addr) in [("gRPC", Some(grpc_addr)), ("HTTP", http_addr)] {
                if let Some(a) = addr.filter(|a| !a.ip().is_loopback()) {
                    tracing::warn!(
                        api = what,
                        address = %a,
                        "the master API is reachable from other hosts with no token and no TLS: anyone who reaches it can add, change and delete tasks; set [MasterServer] APIToken (or CRAWLER_API_TOKEN), or listen on 127.0.0.1"
                    );
                }
            }
        }
        let advertised =
            crate::util::url::advertise_address(grpc_addr, cfg.grpc_advertise.as_deref());
        let value = election::master_value(cfg.id, &advertised);
        if cfg.campaign {
            check_id_free(&client, &cfg, &value).await?;
        }
        let registry = Registry::with_prefix(client.clone(), cfg.registry_prefix.clone());
        let workers = WorkerSet::new(registry.clone(), cfg.worker_service.clone());
        let inner = Arc::new(Inner {
            id: cfg.id,
            value,
            seeds: cfg.seeds.clone(),
            seed_specs: cfg.seed_specs.clone(),
            session_ttl: cfg.session_ttl,
            resync_interval: cfg.resync_interval,
            rebalance: cfg.rebalance,
            campaign: cfg.campaign,
            client: client.clone(),
            election: Election::new(client.clone(), &cfg.election_prefix),
            registry,
            worker_service: cfg.worker_service.clone(),
            store: ResourceStore::new(client.clone()),
            workers: workers.clone(),
            ids,
            term: watch::channel(None).0,
            op_lock: tokio::sync::Mutex::new(()),
            forward: forward::Forwarder::new(cfg.api_token.clone()),
            api_token: cfg.api_token.clone(),
            counters: Default::default(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let workers_task = tokio::spawn(workers.run());
        let leader_task = tokio::spawn(leader::run(inner.clone(), stop_rx.clone()));
        let grpc_task = tokio::spawn(grpc::serve(inner.clone(), grpc_listener, stop_rx.clone()));
        let http_task = http_listener.map(|l| tokio::spawn(http::serve(inner.clone(), l, stop_rx)));
        tracing::info!(
            master = %inner.value,
            grpc = %grpc_addr,
            http = ?http_addr,
            "master started"
        );
        Ok(Master {
            inner,
            grpc_addr,
            http_addr,
            stop,
            leader_task,
            workers_task,
            grpc_task,
            http_task,
        })
    }

    /// The master id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The election value this master campaigns with, `master<id>-<advertised grpc address>`.
    pub fn election_value(&self) -> &str {
        &self.inner.value
    }

    /// Where the gRPC API is bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where the HTTP API is bound, if it runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// True while this master holds the leadership (ready or not yet).
    pub fn is_leader(&self) -> bool {
        self.inner.current_term().is_some()
    }

    /// True once this master leads and has finished its become-leader sequence.
    pub fn ready(&self) -> bool {
        self.inner.current_term().is_some_and(|t| t.is_ready())
    }

    /// Wait up to `timeout` for [`Master::ready`].
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut terms = self.inner.term.subscribe();
        let wait = async {
            loop {
                let term = terms.borrow_and_update().clone();
                if let Some(t) = term {
                    if t.wait_ready().await {
                        return;
                    }
                }
                if terms.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// The fence of the current term (the guard its writes carry), if leading.
    pub fn fence(&self) -> Option<Fence> {
        self.inner.current_term().map(|t| t.fence.clone())
    }

    /// The worker set as this master currently sees it.
    pub fn workers(&self) -> Vec<crate::coord::registry::Node> {
        self.inner.workers.snapshot().into_values().collect()
    }

    /// Resign (if leading), revoke the election session and stop the APIs.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        // The leader loop resigns and revokes its session before it returns.
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.leader_task)
            .await
            .is_err()
        {
            self.leader_task.abort();
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.grpc_task)
            .await
            .is_err()
        {
            self.grpc_task.abort();
        }
        if let Some(mut h) = self.http_task.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut h).await.is_err() {
                h.abort();
            }
        }
        self.workers_task.abort();
        tracing::info!(master = %self.inner.value, "master stopped");
    }

    /// Stop everything at once without resigning, as a crash would: the election key stays until
    /// the session lease expires.
    pub fn abort(self) {
        self.leader_task.abort();
        self.workers_task.abort();
        self.grpc_task.abort();
        if let Some(h) = &self.http_task {
            h.abort();
        }
        if let Some(t) = self.inner.current_term() {
            t.end();
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        // Dropping without shutdown behaves like abort: nothing keeps running in the background.
        self.stop.send_replace(true);
        self.workers_task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_settings() {
        let cfg = config::Config::sample().unwrap();
        let s = cfg
            .master_server
            .resolve(
                config::Role::Master,
                &config::ServerOverrides::default(),
                "sample",
            )
            .unwrap();
        let m = MasterConfig::from_settings(&s, &cfg.tasks).unwrap();
        assert_eq!(m.seeds.len(), cfg.tasks.len());
        assert_eq!(m.http_listen, Some(s.http_listen));
        assert_eq!(m.election_prefix, "/crawler/election");
    }
}
