//! What every workload shares: the connections, the stop budget, the request deadline and the
//! error type.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use super::stats::{Recorder, RunSetup};

/// Per-request deadline: a request slower than this counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for each connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a bench run could not run (op failures are counted, not returned).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad option values.
    #[error("invalid option: {0}")]
    Config(String),
    /// An endpoint could not be reached.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A setup step (prefill, lease grant, watch creation) failed.
    #[error("setup failed: {0}")]
    Setup(String),
    /// A client task panicked or was cancelled.
    #[error("client task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// When to stop: `total` ops started or `deadline` passed.
#[derive(Debug)]
pub struct Budget {
    total: Option<u64>,
    deadline: Option<Instant>,
    started: AtomicU64,
}

impl Budget {
    pub fn new(total: Option<u64>, duration: Option<Duration>) -> Budget {
        Budget {
            total,
            deadline: duration.map(|d| Instant::now() + d),
            started: AtomicU64::new(0),
        }
    }

    /// Claim the next op; `None` when the run is over. Returns the op's index.
    pub fn take(&self) -> Option<u64> {
        if let Some(d) = self.deadline {
            if Instant::now() >= d {
                return None;
            }
        }
        let i = self.started.fetch_add(1, Ordering::Relaxed);
        match self.total {
            Some(t) if i >= t => None,
            _ => Some(i),
        }
    }
}

/// Connections and run parameters shared by the workloads.
pub struct Ctx {
    pub channels: Vec<Channel>,
    pub clients: usize,
    pub setup: RunSetup,
    pub total: Option<u64>,
    pub duration: Option<Duration>,
}

impl Ctx {
    /// The channel of client (or watcher) `i`.
    pub fn channel(&self, i: usize) -> Channel {
        self.channels[i % self.channels.len()].clone()
    }

    /// A fresh budget; measurement starts now.
    pub fn budget(&self) -> Arc<Budget> {
        Arc::new(Budget::new(self.total, self.duration))
    }
}

pub async fn connect(endpoints: &[String], conns: usize) -> Result<Vec<Channel>, BenchError> {
    let mut channels = Vec::with_capacity(conns);
    for i in 0..conns {
        let ep = &endpoints[i % endpoints.len()];
        let url = crate::util::url::endpoint_url(ep).map_err(BenchError::Config)?;
        let endpoint = Endpoint::from_shared(url)
            .map_err(|e| BenchError::Config(format!("endpoint {ep:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let ch = endpoint
            .connect()
            .await
            .map_err(|source| BenchError::Connect {
                endpoint: ep.clone(),
                source,
            })?;
        channels.push(ch);
    }
    Ok(channels)
}

/// Await `fut` with the per-request deadline, flattening timeouts into a status.
pub async fn with_timeout<T>(
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(
            "request timed out (client side)",
        )),
    }
}

/// Short error text: the gRPC code and message.
pub fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Merge the recorders of finished client tasks.
pub async fn join_all(
    handles: Vec<tokio::task::JoinHandle<Recorder>>,
) -> Result<Recorder, BenchError> {
    let mut total = Recorder::new();
    for h in handles {
        total.merge(&h.await?);
    }
    Ok(total)
}
