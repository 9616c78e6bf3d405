//! `grpc_server_started_total` and `grpc_server_handled_total` (go-grpc-prometheus' names and
//! labels, as etcd exports them): a tower layer in front of the gRPC routes. Each known method
//! has a fixed slot of atomics (started, and handled per gRPC code), found by matching the
//! request path, so counting takes no lock and allocates nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

/// (service, method, type) of every method counted, in slot order.
const METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("v3electionpb.Election", "Campaign", "unary"),
    ("v3electionpb.Election", "Proclaim", "unary"),
    ("v3electionpb.Election", "Leader", "unary"),
    ("v3electionpb.Election", "Observe", "server_stream"),
    ("v3electionpb.Election", "Resign", "unary"),
    ("v3lockpb.Lock", "Lock", "unary"),
    ("v3lockpb.Lock", "Unlock", "unary"),
];

/// gRPC status codes 0..=16 by name, as the `grpc_code` label spells them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const UNKNOWN: usize = 2;

/// Started and handled counts per method slot.
#[derive(Debug)]
pub(crate) struct GrpcCounters {
    started: Vec<AtomicU64>,
    /// `METHODS.len() * CODES.len()`, row per method.
    handled: Vec<AtomicU64>,
}

impl Default for GrpcCounters {
    fn default() -> Self {
        GrpcCounters {
            started: (0..METHODS.len()).map(|_| AtomicU64::new(0)).collect(),
            handled: (0..METHODS.len() * CODES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

/// The slot of `path` (`/package.Service/Method`), if it is a counted method.
fn slot(path: &str) -> Option<usize> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    METHODS
        .iter()
        .position(|(s, m, _)| *s == service && *m == method)
}

fn code_of(headers: &http::HeaderMap) -> Option<usize> {
    let v = headers.get("grpc-status")?.to_str().ok()?;
    let code: usize = v.parse().ok()?;
    Some(if code < CODES.len() { code } else { UNKNOWN })
}

impl GrpcCounters {
    fn started(&self, slot: usize) {
        self.started[slot].fetch_add(1, Ordering::Relaxed);
    }

    fn handled(&self, slot: usize, code: usize) {
        self.handled[slot * CODES.len() + code].fetch_add(1, Ordering::Relaxed);
    }

    /// Encode both families (only the series that were ever counted, as go-grpc-prometheus
    /// shows the ones it has seen).
    pub(crate) fn encode(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut started = enc.encode_descriptor(
            "grpc_server_started",
            "Total number of RPCs started on the server.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (i, (service, method, kind)) in METHODS.iter().enumerate() {
            let n = self.started[i].load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let labels = [
                ("grpc_type", *kind),
                ("grpc_service", *service),
                ("grpc_method", *method),
            ];
            ConstCounter::new(n).encode(started.encode_family(&labels)?)?;
        }
        let mut handled = enc.encode_descriptor(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (i, (service, method, kind)) in METHODS.iter().enumerate() {
            for (c, code) in CODES.iter().enumerate() {
                let n = self.handled[i * CODES.len() + c].load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let labels = [
                    ("grpc_type", *kind),
                    ("grpc_service", *service),
                    ("grpc_method", *method),
                    ("grpc_code", *code),
                ];
                ConstCounter::new(n).encode(handled.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The layer counting every call of the services behind it.
#[derive(Clone)]
pub(crate) struct GrpcMetricsLayer {
    counters: Arc<GrpcCounters>,
}

impl GrpcMetricsLayer {
    pub(crate) fn new(counters: Arc<GrpcCounters>) -> Self {
        GrpcMetricsLayer { counters }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            counters: self.counters.clone(),
        }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Clone)]
pub(crate) struct GrpcMetricsService<S> {
    inner: S,
    counters: Arc<GrpcCounters>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let slot = slot(req.uri().path());
        if let Some(s) = slot {
            self.counters.started(s);
        }
        CountedFuture {
            inner: self.inner.call(req),
            slot,
            counters: self.counters.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future: counts a trailers-only answer (an error status in the headers).
    pub(crate) struct CountedFuture<F> {
        #[pin]
        inner: F,
        slot: Option<usize>,
        counters: Arc<GrpcCounters>,
    }
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<CountedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        let slot = *this.slot;
        Poll::Ready(match res {
            Ok(resp) => {
                let mut pending = slot;
                if let (Some(s), Some(code)) = (slot, code_of(resp.headers())) {
                    this.counters.handled(s, code);
                    pending = None;
                }
                let counters = this.counters.clone();
                Ok(resp.map(|inner| CountedBody {
                    inner,
                    slot: pending,
                    counters,
                }))
            }
            Err(e) => {
                if let Some(s) = slot {
                    this.counters.handled(s, UNKNOWN);
                }
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// The response body: counts the status its trailers carry.
    pub(crate) struct CountedBody<B> {
        #[pin]
        inner: B,
        slot: Option<usize>,
        counters: Arc<GrpcCounters>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(s) = *this.slot {
            let code = match &frame {
                Some(Ok(f)) => f.trailers_ref().map(|t| code_of(t).unwrap_or(UNKNOWN)),
                Some(Err(_)) | None => Some(UNKNOWN),
            };
            if let Some(code) = code {
                this.counters.handled(s, code);
                *this.slot = None;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
