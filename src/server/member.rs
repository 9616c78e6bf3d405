//! The embeddable store member: storage, raft and etcd's gRPC services inside any process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use crawler_raft::{NodeConfig, RaftNode};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::server::compactor::{AutoCompaction, Compactor};
use crate::server::grpc::{self, ApiContext};
use crate::server::grpc_metrics::GrpcMetricsLayer;
use crate::server::http::Monitor;
use crate::server::lessor::{Lessor, LessorConfig};
pub use crate::server::limits::Limits;
use crate::server::listener;
use crate::server::metrics::{self, CountingObserver, StoreMetrics};
use crate::server::watch_hub::WatchHub;

/// How long `shutdown` lets open gRPC calls (watch streams, keep-alives) finish.
const GRACEFUL_SHUTDOWN: Duration = Duration::from_secs(2);

/// Configuration of one member.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    /// Raft side: identity, data dir, peers.
    pub node: NodeConfig,
    /// Address the etcd gRPC API binds (port 0 allowed).
    pub listen_client: SocketAddr,
    /// Client request limits.
    pub limits: Limits,
    /// `--auto-compaction-mode` / `--auto-compaction-retention`.
    pub auto_compaction: AutoCompaction,
}

/// A running member. Dropping it does not stop it; call `shutdown`.
pub struct Member {
    client_addr: SocketAddr,
    ctx: ApiContext,
    compactor: Option<Compactor>,
    stop_server: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The monitoring endpoints' router (also served on `--listen-metrics-urls`).
    http: axum::Router,
    /// Accept loop, db size sampler, leader watch, metrics listeners: aborted on shutdown.
    tasks: Vec<JoinHandle<()>>,
}

impl Member {
    /// Start a member and serve etcd's core services.
    pub async fn start(cfg: MemberConfig) -> anyhow::Result<Member> {
        Self::start_with(cfg, |_, routes| routes).await
    }

    /// Start a member and serve etcd's core services plus those `extra` adds on the member's
    /// context (a higher layer's services, e.g. Election and Lock).
    pub(crate) async fn start_with(
        cfg: MemberConfig,
        extra: impl FnOnce(ApiContext, tonic::service::Routes) -> tonic::service::Routes,
    ) -> anyhow::Result<Member> {
        // Bind first: a taken client port should fail before raft touches the data dir.
        let listener = tokio::net::TcpListener::bind(cfg.listen_client)
            .await
            .with_context(|| format!("cannot listen for clients on {}", cfg.listen_client))?;
        let client_addr = listener
            .local_addr()
            .context("client listener has no local address")?;

        let hub = WatchHub::new();
        let counters = Arc::new(StoreMetrics::default());
        let lease_timing =
            LessorConfig::from_timing(cfg.node.heartbeat_interval_ms, cfg.node.election_timeout_ms);
        let quorum_timeout = Duration::from_millis(cfg.node.election_timeout_ms.max(100));
        let observer = Arc::new(CountingObserver {
            metrics: counters.clone(),
            inner: hub.clone(),
        });
        let raft = RaftNode::start(cfg.node, observer)
            .await
            .context("cannot start raft")?;
        hub.attach(raft.store().clone());
        let lessor = Lessor::start_with(raft.clone(), lease_timing);
        let compactor = Compactor::start(raft.clone(), cfg.auto_compaction);
        let ctx = ApiContext::new(raft, hub, lessor, cfg.limits).with_metrics(counters.clone());
        let mut tasks = vec![
            ctx.quota.start_sampler(ctx.raft.clone()),
            metrics::spawn_leader_watch(&ctx.raft, counters.clone()),
        ];
        let http = crate::server::http::router(Arc::new(Monitor {
            ctx: ctx.clone(),
            registry: metrics::registry(ctx.raft.clone(), counters.clone(), ctx.quota.clone()),
            quorum_timeout,
        }));

        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        // HTTP/2 connections go through the `:authority` shim (etcdctl 3.4 sends
        // `http://host:port` as authority on some commands, which h2 would reject); HTTP/1
        // ones get the monitoring endpoints.
        let (conns, accept) = listener::spawn_accept(listener, http.clone());
        tasks.push(accept);
        let incoming = tokio_stream::wrappers::ReceiverStream::new(conns);
        let routes = extra(ctx.clone(), grpc::router(ctx.clone()));
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .layer(GrpcMetricsLayer::new(counters.grpc.clone()))
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await
        });
        tracing::info!(
            member = format!("{:x}", ctx.raft.id()),
            client = %client_addr,
            "serving etcd API"
        );
        Ok(Member {
            client_addr,
            ctx,
            compactor,
            stop_server: Some(stop_tx),
            server,
            http,
            tasks,
        })
    }

    /// Also serve `/metrics`, `/health`, `/livez` and `/readyz` on `addr`
    /// (`--listen-metrics-urls`); returns the address bound.
    pub async fn serve_metrics(&mut self, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        let bound = l.local_addr().context("metrics listener has no address")?;
        self.tasks.push(listener::spawn_http(l, self.http.clone()));
        tracing::info!(metrics = %bound, "serving /metrics and /health");
        Ok(bound)
    }

    /// Address the client API actually bound.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The raft handle (for in-process clients).
    pub fn raft(&self) -> &crawler_raft::RaftNode {
        &self.ctx.raft
    }

    /// The API context (raft, watch hub, lessor, limits) for in-process clients.
    pub fn context(&self) -> &ApiContext {
        &self.ctx
    }

    /// The member's watch hub.
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.ctx.hub
    }

    /// The member's lessor.
    pub fn lessor(&self) -> &Arc<Lessor> {
        &self.ctx.lessor
    }

    /// Stop serving and shut raft down cleanly.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        // Long-lived streams (watch, keep-alive) would hold a graceful shutdown forever.
        match tokio::time::timeout(GRACEFUL_SHUTDOWN, &mut self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
            Err(_) => {
                tracing::debug!("gRPC streams still open after grace period; aborting them");
                self.server.abort();
            }
        }
        self.ctx.lessor.stop();
        if let Some(c) = self.compactor.take() {
            c.stop();
        }
        self.ctx
            .raft
            .shutdown()
            .await
            .context("raft shutdown failed")?;
        Ok(())
    }
}
