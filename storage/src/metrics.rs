//! Counters the storage layer keeps for the metrics endpoint: plain atomics, no lock, no
//! allocation where they are counted (the process-wide raft log flush histogram).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the flush histogram: etcd's `etcd_disk_wal_fsync_duration_seconds`
/// buckets, `ExponentialBuckets(0.001, 2, 14)`.
pub const WAL_FSYNC_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// A fixed-bucket histogram of durations made of atomics (one bucket per bound, plus +Inf).
#[derive(Debug)]
pub struct DurationHistogram {
    /// Non-cumulative counts; the last slot is above every bound.
    counts: [AtomicU64; WAL_FSYNC_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A histogram read at one moment: cumulative `(upper bound, count)` pairs, sum and count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl DurationHistogram {
    const fn new() -> Self {
        DurationHistogram {
            counts: [const { AtomicU64::new(0) }; WAL_FSYNC_BUCKETS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Count one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = WAL_FSYNC_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(WAL_FSYNC_BUCKETS.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The histogram now, cumulative as Prometheus wants it.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(WAL_FSYNC_BUCKETS.len() + 1);
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            let bound = WAL_FSYNC_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, total));
        }
        HistogramSnapshot {
            buckets,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: total,
        }
    }
}

/// Durations of the raft log flushes (sled flush plus fdatasync) of every log in this process.
pub static WAL_FSYNC: DurationHistogram = DurationHistogram::new();
