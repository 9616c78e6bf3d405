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

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crawler_proto::etcdserverpb as pb;
use crawler_proto::etcdserverpb::kv_client::KvClient as PbKvClient;
use crawler_proto::etcdserverpb::lease_client::LeaseClient as PbLeaseClient;
use crawler_proto::etcdserverpb::watch_client::WatchClient as PbWatchClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::server::grpc::convert;

use super::api::{
    BoxFuture, DeleteRangeRequest, DeleteRangeResponse, KvClient, KvError, KvResult, LeaseGrant,
    LeaseKeepAlive, LeaseTimeToLive, PutRequest, PutResponse, RangeRequest, RangeResponse, Reply,
    TxnRequest, TxnResponse, WatchBatch, WatchItem, WatchSpec, WatchStream,
};

/// Largest message we accept from a server (etcd's Go client uses the same: `math.MaxInt32`).
const MAX_DECODE_BYTES: usize = i32::MAX as usize;
/// Batches buffered between a watch's network task and its consumer.
const WATCH_BUFFER: usize = 64;
/// Longest pause between rounds of watch re-creation attempts.
const WATCH_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// etcd's metadata key asking a member to fail watch streams while it has no leader, so that we
/// move to a member that has one instead of waiting silently behind a partition.
const REQUIRE_LEADER_KEY: &str = "hasleader";

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

struct Ep {
    url: String,
    channel: Channel,
}

struct Inner {
    endpoints: Vec<Ep>,
    /// Index of the endpoint tried first (the last one that answered).
    current: AtomicUsize,
    request_timeout: Duration,
}

/// Whether a call may be sent again after it possibly reached a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Safety {
    Idempotent,
    Mutating,
}

/// How a failed call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Never reached a server: safe to send elsewhere.
    NotSent,
    /// Failed in flight or the server is temporarily unable: retry idempotent calls elsewhere.
    Transient,
    /// The server answered with a definite error.
    Final,
}

fn normalize_url(raw: &str) -> KvResult<String> {
    crate::util::url::endpoint_url(raw).map_err(KvError::InvalidArgument)
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

/// Is a `tonic::ConnectError` somewhere in the status's source chain (the call never left)?
fn never_sent(status: &Status) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = src {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        src = e.source();
    }
    false
}

fn classify(status: &Status) -> Failure {
    if never_sent(status) {
        Failure::NotSent
    } else if status.code() == Code::Unavailable || std::error::Error::source(status).is_some() {
        // A status with a source was made on our side from a transport failure, not sent by a server.
        Failure::Transient
    } else {
        Failure::Final
    }
}

/// Header revision of a response (0 when the header is missing, which etcd never does).
fn header_revision(h: &Option<pb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

/// A reply the server should never send (an unknown event type, an empty txn op): a server
/// fault, not the caller's.
fn malformed(e: Status) -> KvError {
    KvError::Other {
        code: "Internal".into(),
        message: format!("malformed reply: {}", e.message()),
    }
}

/// Map a gRPC status to a [`KvError`], keeping the server's message.
pub fn map_status(status: &Status, url: &str) -> KvError {
    let msg = status.message().to_string();
    let local = std::error::Error::source(status).is_some();
    match status.code() {
        Code::OutOfRange if msg.contains("compacted") => KvError::Compacted {
            compact_revision: 0,
        },
        Code::OutOfRange if msg.contains("future revision") => KvError::FutureRevision,
        Code::NotFound => KvError::NotFound(msg),
        Code::InvalidArgument => KvError::InvalidArgument(msg),
        Code::FailedPrecondition => KvError::FailedPrecondition(msg),
        Code::Unavailable if local => KvError::Unavailable(format!("{url}: {msg}")),
        Code::Unavailable => KvError::Unavailable(msg),
        Code::DeadlineExceeded => KvError::Timeout(msg),
        _ if local => KvError::Unavailable(format!("{url}: {msg}")),
        code => KvError::Other {
            code: format!("{code:?}"),
            message: msg,
        },
    }
}

impl Inner {
    fn start_index(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.endpoints.len()
    }

    /// Run one unary call with failover (see the module docs for the rules).
    async fn unary<T, F, Fut>(&self, safety: Safety, what: &'static str, f: F) -> KvResult<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let n = self.endpoints.len();
        let start = self.start_index();
        let mut last = KvError::Unavailable("no endpoint tried".into());
        for attempt in 0..n {
            let idx = (start + attempt) % n;
            let ep = &self.endpoints[idx];
            match tokio::time::timeout(self.request_timeout, f(ep.channel.clone())).await {
                Ok(Ok(v)) => {
                    if idx != start {
                        self.current.store(idx, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Ok(Err(status)) => {
                    let failure = classify(&status);
                    let err = map_status(&status, &ep.url);
                    let retry = match failure {
                        Failure::NotSent => true,
                        Failure::Transient => safety == Safety::Idempotent,
                        Failure::Final => false,
                    };
                    if !retry {
                        return Err(err);
                    }
                    tracing::debug!(endpoint = %ep.url, what, error = %err, "kv call failed, trying next endpoint");
                    last = err;
                }
                Err(_elapsed) => {
                    let err = KvError::Timeout(format!(
                        "{what} on {} did not finish within {:?}",
                        ep.url, self.request_timeout
                    ));
                    if safety == Safety::Mutating {
                        return Err(err);
                    }
                    tracing::debug!(endpoint = %ep.url, what, "kv call timed out, trying next endpoint");
                    last = err;
                }
            }
        }
        Err(match last {
            KvError::Unavailable(m) => KvError::Unavailable(format!("all endpoints failed: {m}")),
            other => other,
        })
    }
}

fn kv(ch: Channel) -> PbKvClient<Channel> {
    PbKvClient::new(ch).max_decoding_message_size(MAX_DECODE_BYTES)
}

fn lease(ch: Channel) -> PbLeaseClient<Channel> {
    PbLeaseClient::new(ch).max_decoding_message_size(MAX_DECODE_BYTES)
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
        Box::pin(async move {
            let inner = self.inner.clone();
            let start = inner.start_index();
            let conn = open_watch(&inner, &spec, spec.start_revision, start).await?;
            let created_revision = header_revision(&conn.first.header);
            // Resume point if the stream breaks before any event: right after creation.
            let next_rev = if spec.start_revision > 0 {
                spec.start_revision
            } else {
                created_revision + 1
            };
            let (tx, rx) = mpsc::channel(WATCH_BUFFER);
            tokio::spawn(pump_watch(inner, spec, conn, next_rev, tx));
            Ok(WatchStream::new(rx, created_revision))
        })
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

/// One open watch stream on one endpoint.
struct WatchConn {
    /// Index of the endpoint it runs on.
    idx: usize,
    /// Our half of the bidirectional stream; kept so the request side stays open.
    _requests: mpsc::Sender<pb::WatchRequest>,
    responses: tonic::Streaming<pb::WatchResponse>,
    /// The `created` response.
    first: pb::WatchResponse,
}

fn create_request(spec: &WatchSpec, start_revision: i64) -> pb::WatchRequest {
    use pb::watch_create_request::FilterType;
    let mut filters = Vec::new();
    if spec.no_put {
        filters.push(FilterType::Noput as i32);
    }
    if spec.no_delete {
        filters.push(FilterType::Nodelete as i32);
    }
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: spec.key.clone(),
                range_end: spec.range_end.clone(),
                start_revision,
                progress_notify: spec.progress_notify,
                filters,
                prev_kv: spec.prev_kv,
                watch_id: 0,
                fragment: false,
            },
        )),
    }
}

/// The error that ends a watch, if this response ends it.
fn watch_end(resp: &pb::WatchResponse) -> Option<KvError> {
    if resp.compact_revision > 0 {
        Some(KvError::Compacted {
            compact_revision: resp.compact_revision,
        })
    } else if resp.canceled {
        Some(KvError::WatchCanceled(resp.cancel_reason.clone()))
    } else {
        None
    }
}

/// Try to create the watch on each endpoint once, starting at `start_idx`.
async fn open_watch(
    inner: &Inner,
    spec: &WatchSpec,
    start_revision: i64,
    start_idx: usize,
) -> KvResult<WatchConn> {
    let n = inner.endpoints.len();
    let mut last = KvError::Unavailable("no endpoint tried".into());
    for attempt in 0..n {
        let idx = (start_idx + attempt) % n;
        let ep = &inner.endpoints[idx];
        let attempt_fut = async {
            let (tx, rx) = mpsc::channel(4);
            tx.send(create_request(spec, start_revision))
                .await
                .map_err(|_| Status::internal("watch request channel closed"))?;
            let mut request = tonic::Request::new(ReceiverStream::new(rx));
            request.metadata_mut().insert(
                REQUIRE_LEADER_KEY,
                tonic::metadata::MetadataValue::from_static("true"),
            );
            let mut responses = PbWatchClient::new(ep.channel.clone())
                .max_decoding_message_size(MAX_DECODE_BYTES)
                .watch(request)
                .await?
                .into_inner();
            let first = responses
                .message()
                .await?
                .ok_or_else(|| Status::unavailable("watch stream ended before creation"))?;
            Ok::<_, Status>(WatchConn {
                idx,
                _requests: tx,
                responses,
                first,
            })
        };
        match tokio::time::timeout(inner.request_timeout, attempt_fut).await {
            Ok(Ok(conn)) => {
                if let Some(err) = watch_end(&conn.first) {
                    return Err(err);
                }
                if !conn.first.created {
                    tracing::warn!(endpoint = %ep.url, "first watch response is not `created`");
                }
                return Ok(conn);
            }
            Ok(Err(status)) => {
                let err = map_status(&status, &ep.url);
                if classify(&status) == Failure::Final {
                    return Err(err);
                }
                tracing::debug!(endpoint = %ep.url, error = %err, "watch create failed, trying next endpoint");
                last = err;
            }
            Err(_) => {
                last = KvError::Timeout(format!(
                    "watch create on {} did not finish within {:?}",
                    ep.url, inner.request_timeout
                ));
            }
        }
    }
    Err(last)
}

/// Whether a broken watch stream should be re-created (rather than end the watch).
fn stream_error_is_transient(status: &Status) -> bool {
    classify(status) != Failure::Final
        || matches!(
            status.code(),
            Code::Unknown
                | Code::Internal
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
        )
}

/// Forward a watch's responses to its consumer; re-create the stream when it breaks.
async fn pump_watch(
    inner: Arc<Inner>,
    spec: WatchSpec,
    mut conn: WatchConn,
    mut next_rev: i64,
    tx: mpsc::Sender<WatchItem>,
) {
    let mut pending = Some(std::mem::take(&mut conn.first));
    loop {
        // Receive until the stream breaks.
        let broken: String = loop {
            let msg = match pending.take() {
                Some(m) => Ok(Some(m)),
                None => tokio::select! {
                    _ = tx.closed() => return,
                    m = conn.responses.message() => m,
                },
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => break "stream closed by server".to_string(),
                Err(status) => {
                    let url = &inner.endpoints[conn.idx].url;
                    if stream_error_is_transient(&status) {
                        break format!("{url}: {status}");
                    }
                    let _ = tx.send(Err(map_status(&status, url))).await;
                    return;
                }
            };
            if let Some(err) = watch_end(&resp) {
                let _ = tx.send(Err(err)).await;
                return;
            }
            let revision = header_revision(&resp.header);
            let item = if !resp.events.is_empty() {
                let events: Vec<_> = match resp
                    .events
                    .into_iter()
                    .map(convert::event_from_proto)
                    .collect::<Result<_, _>>()
                {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx.send(Err(malformed(e))).await;
                        return;
                    }
                };
                if let Some(last) = events.last() {
                    next_rev = next_rev.max(last.kv.mod_revision + 1);
                }
                Some(WatchBatch { revision, events })
            } else if resp.created {
                None
            } else {
                // Progress notification: everything up to `revision` has been delivered.
                next_rev = next_rev.max(revision + 1);
                Some(WatchBatch {
                    revision,
                    events: Vec::new(),
                })
            };
            if let Some(batch) = item {
                if tx.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
        };
        tracing::info!(reason = %broken, next_rev, "watch stream broken, re-creating");
        // Re-create on the next endpoint first: the current one just failed us.
        let mut start = conn.idx + 1;
        let mut backoff = Duration::from_millis(100);
        conn = loop {
            if tx.is_closed() {
                return;
            }
            match open_watch(&inner, &spec, next_rev, start).await {
                Ok(c) => break c,
                Err(e) if e.is_retryable() => {
                    tracing::debug!(error = %e, "watch re-creation failed, backing off");
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(WATCH_MAX_BACKOFF);
                    start = inner.start_index();
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        };
        inner.current.store(conn.idx, Ordering::Relaxed);
        pending = Some(std::mem::take(&mut conn.first));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map() {
        let s = Status::out_of_range("etcdserver: mvcc: required revision has been compacted");
        assert_eq!(
            map_status(&s, "u"),
            KvError::Compacted {
                compact_revision: 0
            }
        );
        let s = Status::not_found("etcdserver: requested lease not found");
        assert!(map_status(&s, "u").is_not_found());
        let s = Status::unavailable("etcdserver: no leader");
        assert_eq!(
            map_status(&s, "u"),
            KvError::Unavailable("etcdserver: no leader".into())
        );
        assert_eq!(classify(&s), Failure::Transient);
        assert_eq!(classify(&Status::invalid_argument("x")), Failure::Final);
    }
}
