//! `crawler bench`: a load generator speaking etcd's v3 gRPC API, used to compare our store with
//! a real etcd under the same load.
//!
//! K clients are spread round-robin over C tonic channels (one HTTP/2 connection each), which
//! are spread round-robin over the endpoints. Each client runs its workload's op in a loop until
//! `--total` ops were started or `--duration` passed. It talks through the generated etcd gRPC
//! clients directly, so it measures the server and not our client abstraction.

mod kv;
mod lease;
pub mod stats;
mod watch;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tonic::transport::{Channel, Endpoint};

pub use stats::{Recorder, Report, RunSetup};

/// Per-request deadline: a request slower than this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for each connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `crawler bench [OPTIONS] <WORKLOAD>`: measure a store speaking etcd's v3 API.
#[derive(Clone, Debug, Parser)]
#[command(name = "bench")]
pub struct BenchArgs {
    /// Comma-separated client endpoints (`host:port` or `http://host:port`).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// Number of gRPC connections (spread round-robin over the endpoints).
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Number of concurrent clients (spread round-robin over the connections).
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Stop after this many ops (watch-latency: puts). Default 10000 unless --duration is given.
    #[arg(long, global = true, conflicts_with = "duration")]
    pub total: Option<u64>,
    /// Stop after this long: seconds, or with a unit suffix (`500ms`, `10s`, `2m`).
    #[arg(long, global = true, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// What to measure.
    #[command(subcommand)]
    pub workload: Workload,
}

/// Key and value shape shared by the KV workloads.
#[derive(Clone, Debug, Args)]
pub struct KeyArgs {
    /// Key size in bytes (keys are zero-padded decimal numbers).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub key_space: u64,
}

/// Read consistency of the range workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable (read index through the leader).
    L,
    /// Serializable (local read on the member).
    S,
}

/// The workloads.
#[derive(Clone, Debug, Subcommand)]
pub enum Workload {
    /// Put random (or sequential) keys.
    Put {
        /// Key/value shape.
        #[command(flatten)]
        keys: KeyArgs,
        /// Write keys 0, 1, 2, ... (wrapping at --key-space) instead of random keys.
        #[arg(long)]
        sequential_keys: bool,
    },
    /// Get one random key per op.
    Range {
        /// Key/value shape (--key-space keys are read).
        #[command(flatten)]
        keys: KeyArgs,
        /// `l` linearizable or `s` serializable.
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
        /// Put every key of --key-space before measuring (not measured).
        #[arg(long)]
        prefill: bool,
    },
    /// Compare-and-swap: txn(mod_revision == known) then put, else read and retry.
    TxnCas {
        /// Key/value shape (keys are picked at random in --key-space).
        #[command(flatten)]
        keys: KeyArgs,
        /// Give up an op (one error) after this many failed compares.
        #[arg(long, default_value_t = 1000)]
        max_retries: u64,
    },
    /// Put-to-event latency of W watchers on one prefix (--clients putters, --total puts).
    WatchLatency {
        /// Number of watchers (one watch stream each, spread over the connections).
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Total puts per second over all putters (0 = as fast as acks allow).
        #[arg(long, default_value_t = 100)]
        put_rate: u64,
        /// Value size in bytes (at least 16: send time and sequence number).
        #[arg(long, default_value_t = 256)]
        val_size: usize,
        /// How long to wait for the last events after the last put was acknowledged (ms).
        #[arg(long, default_value_t = 10_000)]
        drain_ms: u64,
    },
    /// Keep-alive round trips on K leases (one per client, one keep-alive stream each).
    LeaseKeepalive {
        /// TTL of each lease in seconds.
        #[arg(long, default_value_t = 60)]
        ttl: i64,
    },
}

impl Workload {
    /// The workload's name as used on the command line and in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Put { .. } => "put",
            Workload::Range { .. } => "range",
            Workload::TxnCas { .. } => "txn-cas",
            Workload::WatchLatency { .. } => "watch-latency",
            Workload::LeaseKeepalive { .. } => "lease-keepalive",
        }
    }
}

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

/// Parse `10`, `10s`, `500ms`, `2m` or `1.5` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(format!(
            "{s:?}: duration must be positive and at most a day"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// When to stop: `total` ops started or `deadline` passed.
#[derive(Debug)]
pub(crate) struct Budget {
    total: Option<u64>,
    deadline: Option<Instant>,
    started: AtomicU64,
}

impl Budget {
    fn new(total: Option<u64>, duration: Option<Duration>) -> Budget {
        Budget {
            total,
            deadline: duration.map(|d| Instant::now() + d),
            started: AtomicU64::new(0),
        }
    }

    /// Claim the next op; `None` when the run is over. Returns the op's index.
    pub(crate) fn take(&self) -> Option<u64> {
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
pub(crate) struct Ctx {
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

async fn connect(endpoints: &[String], conns: usize) -> Result<Vec<Channel>, BenchError> {
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

/// Run one benchmark and return its report.
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let endpoints: Vec<String> = args
        .endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(BenchError::Config("--endpoints is empty".into()));
    }
    if args.conns == 0 || args.clients == 0 {
        return Err(BenchError::Config(
            "--conns and --clients must be positive".into(),
        ));
    }
    if args.total == Some(0) {
        return Err(BenchError::Config("--total must be positive".into()));
    }
    let channels = connect(&endpoints, args.conns).await?;
    let ctx = Ctx {
        channels,
        clients: args.clients,
        setup: RunSetup {
            endpoints,
            conns: args.conns,
            clients: args.clients,
        },
        total: match (args.total, args.duration) {
            (None, None) => Some(10_000),
            (t, _) => t,
        },
        duration: args.duration,
    };
    match &args.workload {
        Workload::Put {
            keys,
            sequential_keys,
        } => kv::put(&ctx, keys, *sequential_keys).await,
        Workload::Range {
            keys,
            consistency,
            prefill,
        } => kv::range(&ctx, keys, *consistency, *prefill).await,
        Workload::TxnCas { keys, max_retries } => kv::txn_cas(&ctx, keys, *max_retries).await,
        Workload::WatchLatency {
            watchers,
            put_rate,
            val_size,
            drain_ms,
        } => {
            watch::watch_latency(
                &ctx,
                watch::WatchParams {
                    watchers: *watchers,
                    put_rate: *put_rate,
                    val_size: *val_size,
                    drain: Duration::from_millis(*drain_ms),
                },
            )
            .await
        }
        Workload::LeaseKeepalive { ttl } => lease::keepalive(&ctx, *ttl).await,
    }
}

/// Entry point of `crawler bench`: run, print the report and its JSON line.
pub fn main(args: BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crawler bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(report) => {
            print!("{report}");
            println!("{}", report.json_line());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crawler bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Await `fut` with the per-request deadline, flattening timeouts into a status.
pub(crate) async fn with_timeout<T>(
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
pub(crate) fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Merge the recorders of finished client tasks.
pub(crate) async fn join_all(
    handles: Vec<tokio::task::JoinHandle<Recorder>>,
) -> Result<Recorder, BenchError> {
    let mut total = Recorder::new();
    for h in handles {
        total.merge(&h.await?);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["", "x", "0", "-1", "5h", "1e9"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn budget_by_total() {
        let b = Budget::new(Some(3), None);
        assert_eq!(b.take(), Some(0));
        assert_eq!(b.take(), Some(1));
        assert_eq!(b.take(), Some(2));
        assert_eq!(b.take(), None);
        assert_eq!(b.take(), None);
    }

    #[test]
    fn args_parse_with_global_flags_after_the_workload() {
        let a = BenchArgs::try_parse_from([
            "bench",
            "range",
            "--endpoints",
            "127.0.0.1:1,127.0.0.1:2",
            "--consistency",
            "s",
            "--clients",
            "4",
            "--duration",
            "3s",
            "--prefill",
        ])
        .expect("parse");
        assert_eq!(a.endpoints.len(), 2);
        assert_eq!(a.clients, 4);
        assert_eq!(a.duration, Some(Duration::from_secs(3)));
        assert!(matches!(
            a.workload,
            Workload::Range {
                consistency: Consistency::S,
                prefill: true,
                ..
            }
        ));
        assert!(
            BenchArgs::try_parse_from(["bench", "--total", "5", "--duration", "1s", "put"])
                .is_err()
        );
    }
}
