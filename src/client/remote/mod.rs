//! [`KvClient`] over etcd's v3 gRPC API, with a list of endpoints and failover between them.
//!
//! Works against any etcd-compatible server: real etcd 3.4/3.5 and our own `crawler store`.
//!
//! Failover rules (the same split etcd's Go client makes, so a write is never applied twice by us):
//! - a call that could not even connect is tried on the next endpoint, whatever it is;
//! - a call that failed in flight (transport error, `Unavailable` such as `etcdserver: no leader`,
//!   or its deadline) is tried on the next endpoint only when it is idempotent (reads, read-only
//!   txns, lease keepalive and time-to-live); a write returns `Unavailable`/`Timeout` to its caller.
//!
//! The endpoint that last answered is remembered and tried first. Watches run on their own task
//! and, when their stream breaks, are re-created on the next endpoint from the last delivered
//! revision + 1, so events are neither duplicated nor dropped.

mod failover;
mod watch;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crawler_proto::etcdserverpb as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::Status;

use crate::client::api::{
    BoxFuture, DeleteRangeRequest, DeleteRangeResponse, KvClient, KvError, KvResult, LeaseGrant,
    LeaseKeepAlive, LeaseTimeToLive, PutRequest, PutResponse, RangeRequest, RangeResponse, Reply,
    TxnRequest, TxnResponse, WatchSpec, WatchStream,
};
use crate::server::grpc::convert;
use failover::{header_revision, kv, lease, malformed, normalize_url, Ep, Inner, Safety};

pub use failover::map_status;

/// Settings of a [`RemoteKvClient`].
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// Endpoints as `http://host:port` or `host:port`; tried in order, first one first.
    pub endpoints: Vec<String>,
    /// Deadline for opening a TCP connection to one endpoint.
    pub connect_timeout: Duration,
    /// Deadline of one call on one endpoint (a failover attempt gets a fresh one).
    pub request_timeout: Duration,
}

impl RemoteConfig {
    /// Defaults (connect 2 s, request 5 s) for these endpoints.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// etcd gRPC client over several endpoints with failover. Cheap to clone (shared connections).
#[derive(Clone)]
pub struct RemoteKvClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RemoteKvClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKvClient")
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

impl RemoteKvClient {
    /// Build a client. Connections are opened lazily, so dead endpoints do not fail construction.
    ///
    /// Must be called inside a tokio runtime (tonic spawns a task per channel).
    pub fn new(cfg: RemoteConfig) -> KvResult<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(KvError::InvalidArgument(
                "RemoteKvClient::new must run inside a tokio runtime".into(),
            ));
        }
        if cfg.endpoints.is_empty() {
            return Err(KvError::InvalidArgument("no endpoints given".into()));
        }
        let mut endpoints = Vec::with_capacity(cfg.endpoints.len());
        for raw in &cfg.endpoints {
            let url = normalize_url(raw)?;
            let ep = Endpoint::from_shared(url.clone())
                .map_err(|e| KvError::InvalidArgument(format!("endpoint {url}: {e}")))?
                .connect_timeout(cfg.connect_timeout)
                .tcp_nodelay(true)
                // Detect dead connections under long-lived watch streams. No pings while idle:
                // etcd's server rejects those (PermitWithoutStream = false).
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(false);
            let channel = ep.connect_lazy();
            endpoints.push(Ep { url, channel });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                endpoints,
                current: AtomicUsize::new(0),
                request_timeout: cfg.request_timeout,
            }),
        })
    }

    /// Shorthand for [`RemoteKvClient::new`] with default timeouts.
    pub fn with_endpoints<S: Into<String>>(
        endpoints: impl IntoIterator<Item = S>,
    ) -> KvResult<Self> {
        Self::new(RemoteConfig::new(endpoints))
    }

    /// The endpoints' normalized URLs, in configuration order.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.endpoints.iter().map(|e| e.url.clone()).collect()
    }

    /// URL of the endpoint that will be tried first.
    pub fn current_endpoint(&self) -> String {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len();
        self.inner.endpoints[i].url.clone()
    }
}

impl KvClient for RemoteKvClient {
    fn range(&self, req: RangeRequest) -> BoxFuture<'_, KvResult<Reply<RangeResponse>>> {
        let req = convert::range_to_proto(req);
        Box::pin(async move {
            let resp = self
                .inner
                .unary(Safety::Idempotent, "range", |ch| {
                    let req = req.clone();
                    async move { Ok(kv(ch).range(req).await?.into_inner()) }
                })
                .await?;
            Ok(Reply {
                revision: header_revision(&resp.header),
                body: convert::range_resp_from_proto(resp),
            })
        })
    }

    fn put(&self, req: PutRequest) -> BoxFuture<'_, KvResult<Reply<PutResponse>>> {
        let req = convert::put_to_proto(req);
        Box::pin(async move {
            let resp = self
                .inner
                .unary(Safety::Mutating, "put", |ch| {
                    let req = req.clone();
                    async move { Ok(kv(ch).put(req).await?.into_inner()) }
                })
                .await?;
            Ok(Reply {
                revision: header_revision(&resp.header),
                body: convert::put_resp_from_proto(resp),
            })
        })
    }

    fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> BoxFuture<'_, KvResult<Reply<DeleteRangeResponse>>> {
        let req = convert::delete_to_proto(req);
        Box::pin(async move {
            let resp = self
                .inner
                .unary(Safety::Mutating, "delete_range", |ch| {
                    let req = req.clone();
                    async move { Ok(kv(ch).delete_range(req).await?.into_inner()) }
                })
                .await?;
            Ok(Reply {
                revision: header_revision(&resp.header),
                body: convert::delete_resp_from_proto(resp),
            })
        })
    }

    fn txn(&self, req: TxnRequest) -> BoxFuture<'_, KvResult<Reply<TxnResponse>>> {
        let safety = if req.is_read_only() {
            Safety::Idempotent
        } else {
            Safety::Mutating
        };
        let req = convert::txn_to_proto(req);
        Box::pin(async move {
            let resp = self
                .inner
                .unary(safety, "txn", |ch| {
                    let req = req.clone();
                    async move { Ok(kv(ch).txn(req).await?.into_inner()) }
                })
                .await?;
            Ok(Reply {
                revision: header_revision(&resp.header),
                body: convert::txn_resp_from_proto(resp).map_err(malformed)?,
            })
        })
    }

    fn compact(&self, revision: i64) -> BoxFuture<'_, KvResult<Reply<()>>> {
        Box::pin(async move {
            let resp = self
                .inner
                .unary(Safety::Mutating, "compact", |ch| async move {
                    let req = pb::CompactionRequest {
                        revision,
                        physical: false,
                    };
                    Ok(kv(ch).compact(req).await?.into_inner())
                })
                .await?;
            Ok(Reply {
                revision: header_revision(&resp.header),
                body: (),
            })
        })
    }

    fn watch(&self, spec: WatchSpec) -> BoxFuture<'_, KvResult<WatchStream>> {
        Box::pin(watch::start(self.inner.clone(), spec))
    }

    fn lease_grant(&self, ttl: i64, id: i64) -> BoxFuture<'_, KvResult<Reply<LeaseGrant>>> {
        Box::pin(async move {
            let resp = self
                .inner
                .unary(Safety::Mutating, "lease_grant", |ch| async move {
                    let req = pb::LeaseGrantRequest { ttl, id };
                    Ok(lease(ch).lease_grant(req).await?.into_inner())
                })
                .await?;
            if !resp.error.is_empty() {
                return Err(KvError::Other {
                    code: "LeaseGrant".into(),
                    message: resp.error,
                });
            }
            Ok(Reply {
                revision: header_revision(&resp.header),
                body: LeaseGrant {
                    id: resp.id,
                    ttl: resp.ttl,
                },
            })
        })
    }

    fn lease_revoke(&self, id: i64) -> BoxFuture<'_, KvResult<Reply<()>>> {
        Box::pin(async move {
            let resp = self
                .inner
                .unary(Safety::Mutating, "lease_revoke", |ch| async move {
                    let req = pb::LeaseRevokeRequest { id };
                    Ok(lease(ch).lease_revoke(req).await?.into_inner())
                })
                .await?;
            Ok(Reply {
                revision: header_revision(&resp.header),
                body: (),
            })
        })
    }

    fn lease_keep_alive_once(&self, id: i64) -> BoxFuture<'_, KvResult<Reply<LeaseKeepAlive>>> {
        Box::pin(async move {
            let resp = self
                .inner
                .unary(Safety::Idempotent, "lease_keep_alive", |ch| async move {
                    let (tx, rx) = mpsc::channel(1);
                    tx.send(pb::LeaseKeepAliveRequest { id })
                        .await
                        .map_err(|_| Status::internal("keepalive request channel closed"))?;
                    let mut stream = lease(ch)
                        .lease_keep_alive(ReceiverStream::new(rx))
                        .await?
                        .into_inner();
                    // Keep our half of the stream open until the reply arrives.
                    let reply = stream.message().await?;
                    drop(tx);
                    reply.ok_or_else(|| {
                        Status::unavailable("keepalive stream ended without a reply")
                    })
                })
                .await?;
            if resp.ttl <= 0 {
                return Err(KvError::NotFound(
                    "etcdserver: requested lease not found".into(),
                ));
            }
            Ok(Reply {
                revision: header_revision(&resp.header),
                body: LeaseKeepAlive {
                    id: resp.id,
                    ttl: resp.ttl,
                },
            })
        })
    }

    fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> BoxFuture<'_, KvResult<Reply<LeaseTimeToLive>>> {
        Box::pin(async move {
            let resp = self
                .inner
                .unary(Safety::Idempotent, "lease_time_to_live", |ch| async move {
                    let req = pb::LeaseTimeToLiveRequest { id, keys };
                    Ok(lease(ch).lease_time_to_live(req).await?.into_inner())
                })
                .await?;
            Ok(Reply {
                revision: header_revision(&resp.header),
                body: LeaseTimeToLive {
                    id: resp.id,
                    ttl: resp.ttl,
                    granted_ttl: resp.granted_ttl,
                    keys: resp.keys,
                },
            })
        })
    }
}
