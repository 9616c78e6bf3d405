//! The command line of `crawler bench`: options and workloads.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
