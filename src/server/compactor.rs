//! Auto-compaction of the MVCC history, as etcd's `--auto-compaction-mode` and
//! `--auto-compaction-retention` do it (etcd 3.4/3.5 `v3compactor`).
//!
//! Every member runs the loop, but only the raft leader compacts (etcd pauses the compactor on
//! followers): a follower keeps sampling revisions, so a member that takes over can compact with
//! a full window at once. A compaction is the same `Command::Compact` a client's `Compact` RPC
//! replicates. A revision that is already compacted counts as done, as in etcd.
//!
//! - `periodic`, retention `P`: the current revision is sampled every `min(P, 1h) / 10`; the
//!   first compaction happens `P` after start, then one every `min(P, 1h)`, each to the oldest
//!   sample of a window covering `P` (so history of the last `P` is always readable). A failed
//!   compaction is retried at the next sample.
//! - `revision`, retention `N`: every 5 minutes, compact to `current − N` unless that is ≤ 0 or
//!   the revision compacted last time.

use std::collections::VecDeque;
use std::time::Duration;

use clap::ValueEnum;
use crawler_raft::{RaftError, RaftNode};
use crawler_storage::{ApplyError, Command, CommandResult};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// etcd's revision compactor period (`revInterval`).
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// etcd caps the periodic compactor's interval at one hour (`getCompactInterval`).
const MAX_COMPACT_INTERVAL: Duration = Duration::from_secs(3600);

/// etcd samples the revision ten times per compaction interval (`retryDivisor`).
const SAMPLES_PER_INTERVAL: u32 = 10;

/// Floor of the sampling tick: etcd divides by zero below a 10 ns retention, we just tick slowly.
const MIN_TICK: Duration = Duration::from_millis(1);

/// `--auto-compaction-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum CompactionMode {
    /// Keep the history of the last retention period (a duration).
    #[default]
    Periodic,
    /// Keep the last retention revisions.
    Revision,
}

/// What the auto-compactor does, from the validated flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// No auto-compaction (retention 0).
    Off,
    /// Keep the history of the last `retention`.
    Periodic {
        /// The window of history kept.
        retention: Duration,
    },
    /// Keep the last `retention` revisions, checking every `interval`.
    Revision {
        /// Revisions kept below the current one.
        retention: i64,
        /// How often to compact (etcd: 5 minutes).
        interval: Duration,
    },
}

/// A malformed `--auto-compaction-retention` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    /// Neither a whole number of hours nor a Go duration.
    #[error("{0:?} is not a duration (e.g. 30s, 5m, 1h30m) or a whole number of hours")]
    Duration(String),
    /// Revision mode takes a whole number of revisions.
    #[error("{0:?} is not a revision count (a whole number >= 0) as --auto-compaction-mode=revision needs")]
    Revisions(String),
    /// Negative retentions mean nothing.
    #[error("{0:?} is negative")]
    Negative(String),
}

/// Parse `--auto-compaction-retention` for `mode` as etcd does: a bare integer is hours
/// (periodic) or revisions (revision), otherwise a Go duration (periodic only; etcd would turn
/// `5m` into 300000000000 revisions, which is never what was meant, so that is refused).
pub fn parse_retention(
    mode: CompactionMode,
    s: &str,
    revision_interval: Duration,
) -> Result<AutoCompaction, RetentionError> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        if n < 0 {
            return Err(RetentionError::Negative(s.into()));
        }
        if n == 0 {
            return Ok(AutoCompaction::Off);
        }
        return Ok(match mode {
            CompactionMode::Revision => AutoCompaction::Revision {
                retention: n,
                interval: revision_interval,
            },
            CompactionMode::Periodic => {
                let hours = u64::try_from(n)
                    .ok()
                    .and_then(|h| h.checked_mul(3600))
                    .ok_or_else(|| RetentionError::Duration(s.into()))?;
                AutoCompaction::Periodic {
                    retention: Duration::from_secs(hours),
                }
            }
        });
    }
    if mode == CompactionMode::Revision {
        return Err(RetentionError::Revisions(s.into()));
    }
    let d = parse_go_duration(s)?;
    if d.is_zero() {
        return Ok(AutoCompaction::Off);
    }
    Ok(AutoCompaction::Periodic { retention: d })
}

/// Go's `time.ParseDuration` for non-negative values: `[+]{number[.fraction]unit}+` with units
/// ns, us (µs, μs), ms, s, m, h, or a bare `0`.
pub(crate) fn parse_go_duration(s: &str) -> Result<Duration, RetentionError> {
    let bad = || RetentionError::Duration(s.into());
    let rest = match s.strip_prefix('-') {
        Some(r)
            if r.trim_start_matches(['0', '.'])
                .chars()
                .any(|c| c.is_ascii_digit()) =>
        {
            return Err(RetentionError::Negative(s.into()))
        }
        Some(r) => r,
        None => s.strip_prefix('+').unwrap_or(s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    let mut it = rest;
    while !it.is_empty() {
        let int_len = it.find(|c: char| !c.is_ascii_digit()).unwrap_or(it.len());
        let (int_part, after) = it.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| bad())?
        };
        let mut part = whole.checked_mul(nanos_per).ok_or_else(bad)?;
        if !frac_part.is_empty() {
            // Digits beyond nanosecond precision cannot matter; cap them to keep the scale small.
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac: u128 = digits.parse().map_err(|_| bad())?;
            part += frac * nanos_per / 10u128.pow(digits.len() as u32);
        }
        total = total.checked_add(part).ok_or_else(bad)?;
        it = next;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Why an auto-compaction did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CompactError {
    /// Raft could not replicate the command (no leader, timeout, stopped).
    #[error(transparent)]
    Raft(#[from] RaftError),
    /// The state machine refused it (e.g. a future revision).
    #[error(transparent)]
    Apply(ApplyError),
    /// The command applied with a result of another kind: a bug between layers.
    #[error("unexpected apply result for compact: {0}")]
    Unexpected(String),
}

/// Replicate `Command::Compact { revision }`, as the KV service's `compact` does. Already
/// compacted counts as done (etcd's compactors treat `ErrCompacted` as success).
async fn compact(raft: &RaftNode, revision: i64) -> Result<(), CompactError> {
    let resp = raft.write(Command::Compact { revision }).await?;
    match resp.result {
        Ok(CommandResult::Compact) | Err(ApplyError::Compacted) => Ok(()),
        Ok(other) => Err(CompactError::Unexpected(format!("{other:?}"))),
        Err(e) => Err(CompactError::Apply(e)),
    }
}

/// The periodic compactor's window of revision samples and its schedule (etcd's `Periodic`).
#[derive(Debug)]
struct PeriodicWindow {
    /// `--auto-compaction-retention`.
    period: Duration,
    /// Time between samples (and retries): `min(period, 1h) / 10`.
    tick: Duration,
    /// Time between compactions once the first one happened: `min(period, 1h)`.
    compact_interval: Duration,
    /// Samples kept: `period / tick + 1`; the oldest is the revision about `period` ago.
    capacity: usize,
    revs: VecDeque<i64>,
    last_success: Instant,
    /// `period` until the first compaction, `compact_interval` after.
    wait: Duration,
}

impl PeriodicWindow {
    /// A window starting (empty) at `now`.
    fn new(period: Duration, now: Instant) -> Self {
        let compact_interval = period.min(MAX_COMPACT_INTERVAL);
        let tick = (compact_interval / SAMPLES_PER_INTERVAL).max(MIN_TICK);
        let capacity = usize::try_from(period.as_nanos() / tick.as_nanos())
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        Self {
            period,
            tick,
            compact_interval,
            capacity,
            revs: VecDeque::with_capacity(capacity.min(1024)),
            last_success: now,
            wait: period,
        }
    }

    /// Record the current revision (done every tick, leader or not).
    fn sample(&mut self, rev: i64) {
        self.revs.push_back(rev);
        if self.revs.len() > self.capacity {
            self.revs.pop_front();
        }
    }

    /// The revision to compact now, if a compaction is due.
    fn due(&mut self, now: Instant) -> Option<i64> {
        if now.duration_since(self.last_success) < self.wait {
            return None;
        }
        self.wait = self.compact_interval;
        self.revs.front().copied()
    }

    /// A compaction succeeded (or was already done) at `now`.
    fn succeeded(&mut self, now: Instant) {
        self.last_success = now;
    }
}

/// The running auto-compactor of one member.
pub struct Compactor {
    stop_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Compactor {
    /// Start the loop for `policy` (`None` when auto-compaction is off).
    pub(crate) fn start(raft: RaftNode, policy: AutoCompaction) -> Option<Self> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = match policy {
            AutoCompaction::Off => return None,
            AutoCompaction::Periodic { retention } => {
                tracing::info!(retention = ?retention, "auto-compaction: periodic");
                tokio::spawn(run_periodic(raft, retention, stop_rx))
            }
            AutoCompaction::Revision {
                retention,
                interval,
            } => {
                tracing::info!(retention, interval = ?interval, "auto-compaction: revision");
                tokio::spawn(run_revision(raft, retention, interval, stop_rx))
            }
        };
        Some(Self { stop_tx, task })
    }

    /// Stop the loop (a compaction in flight is abandoned; raft finishes or drops it).
    pub fn stop(self) {
        let _ = self.stop_tx.send(true);
        self.task.abort();
    }
}

fn leads(raft: &RaftNode) -> bool {
    raft.status().leader == Some(raft.id())
}

/// Sleep `d`; false when asked to stop first.
async fn tick(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => false,
        _ = tokio::time::sleep(d) => true,
    }
}

async fn run_periodic(raft: RaftNode, period: Duration, mut stop: watch::Receiver<bool>) {
    let mut w = PeriodicWindow::new(period, Instant::now());
    loop {
        w.sample(raft.store().current_revision());
        if !tick(&mut stop, w.tick).await {
            return;
        }
        if !leads(&raft) {
            continue;
        }
        let Some(rev) = w.due(Instant::now()) else {
            continue;
        };
        let started = Instant::now();
        match compact(&raft, rev).await {
            Ok(()) => {
                tracing::info!(revision = rev, period = ?w.period, took = ?started.elapsed(),
                    "auto periodic compaction done");
                w.succeeded(Instant::now());
            }
            Err(e) => tracing::warn!(revision = rev, period = ?w.period, retry_in = ?w.tick,
                error = %e, "auto periodic compaction failed"),
        }
    }
}

async fn run_revision(
    raft: RaftNode,
    retention: i64,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut prev = 0;
    loop {
        if !tick(&mut stop, interval).await {
            return;
        }
        if !leads(&raft) {
            continue;
        }
        let rev = raft.store().current_revision() - retention;
        if rev <= 0 || rev == prev {
            continue;
        }
        let started = Instant::now();
        match compact(&raft, rev).await {
            Ok(()) => {
                prev = rev;
                tracing::info!(revision = rev, retention, took = ?started.elapsed(),
                    "auto revision compaction done");
            }
            Err(e) => tracing::warn!(revision = rev, retention, retry_in = ?interval, error = %e,
                "auto revision compaction failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE_MIN: Duration = REVISION_CHECK_INTERVAL;

    fn periodic(s: &str) -> Result<AutoCompaction, RetentionError> {
        parse_retention(CompactionMode::Periodic, s, FIVE_MIN)
    }

    fn secs(n: u64) -> AutoCompaction {
        AutoCompaction::Periodic {
            retention: Duration::from_secs(n),
        }
    }

    #[test]
    fn retention_formats_as_etcd_parses_them() {
        assert_eq!(periodic("0"), Ok(AutoCompaction::Off));
        assert_eq!(periodic("0s"), Ok(AutoCompaction::Off));
        assert_eq!(periodic("1"), Ok(secs(3600)), "a bare integer is hours");
        assert_eq!(periodic("72"), Ok(secs(72 * 3600)));
        assert_eq!(periodic("30s"), Ok(secs(30)));
        assert_eq!(periodic("5m"), Ok(secs(300)));
        assert_eq!(periodic("1h"), Ok(secs(3600)));
        assert_eq!(periodic("1h30m"), Ok(secs(5400)));
        assert_eq!(periodic("+2s"), Ok(secs(2)));
        assert_eq!(periodic("1.5h"), Ok(secs(5400)));
        assert_eq!(
            periodic("1m0.5s"),
            Ok(AutoCompaction::Periodic {
                retention: Duration::from_millis(60_500)
            })
        );
        assert_eq!(
            periodic("250ms"),
            Ok(AutoCompaction::Periodic {
                retention: Duration::from_millis(250)
            })
        );
        assert_eq!(
            periodic("10us"),
            Ok(AutoCompaction::Periodic {
                retention: Duration::from_micros(10)
            })
        );
        assert_eq!(
            parse_retention(CompactionMode::Revision, "1000", FIVE_MIN),
            Ok(AutoCompaction::Revision {
                retention: 1000,
                interval: FIVE_MIN
            })
        );
        assert_eq!(
            parse_retention(CompactionMode::Revision, "0", FIVE_MIN),
            Ok(AutoCompaction::Off)
        );
    }

    #[test]
    fn retention_errors() {
        for bad in ["", "abc", "5x", "1h30", "h", ".s", "1..5s", "5 m", "1e3s"] {
            assert!(
                matches!(periodic(bad), Err(RetentionError::Duration(_))),
                "{bad:?}: {:?}",
                periodic(bad)
            );
        }
        assert!(matches!(periodic("-1"), Err(RetentionError::Negative(_))));
        assert!(matches!(periodic("-1h"), Err(RetentionError::Negative(_))));
        assert!(matches!(
            periodic("99999999999999999h"),
            Err(RetentionError::Duration(_))
        ));
        for bad in ["5m", "1.5", "x"] {
            assert!(
                matches!(
                    parse_retention(CompactionMode::Revision, bad, FIVE_MIN),
                    Err(RetentionError::Revisions(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_retention(CompactionMode::Revision, "-3", FIVE_MIN),
            Err(RetentionError::Negative(_))
        ));
    }

    #[test]
    fn periodic_window_follows_etcd() {
        let t0 = Instant::now();
        let mut w = PeriodicWindow::new(Duration::from_secs(10), t0);
        assert_eq!(w.tick, Duration::from_secs(1));
        assert_eq!(w.capacity, 11);
        // Samples at t0..t9 (revision = 100 + second); nothing is due before one period.
        for s in 0..10u64 {
            w.sample(100 + s as i64);
            let now = t0 + Duration::from_secs(s + 1);
            if s < 9 {
                assert_eq!(w.due(now), None, "second {}", s + 1);
            } else {
                assert_eq!(
                    w.due(now),
                    Some(100),
                    "first compaction: the revision at start"
                );
                w.succeeded(now);
            }
        }
        // Then every period, to the oldest of the last 11 samples.
        for s in 10..20u64 {
            w.sample(100 + s as i64);
            let now = t0 + Duration::from_secs(s + 1);
            if s < 19 {
                assert_eq!(w.due(now), None, "second {}", s + 1);
            } else {
                assert_eq!(w.due(now), Some(109));
            }
        }

        // Above one hour: compact hourly, sample every 6 minutes, keep a day of samples.
        let w = PeriodicWindow::new(Duration::from_secs(24 * 3600), t0);
        assert_eq!(w.tick, Duration::from_secs(360));
        assert_eq!(w.compact_interval, Duration::from_secs(3600));
        assert_eq!(w.capacity, 241);
    }
}
