//! Politeness per host, shared by every task of a worker (Scrapy's downloader slots): a task
//! opens a request to a host only while fewer than its `ConcurrencyPerHost` are open there,
//! counting every task's requests,
//! consecutive request starts to a host are spaced by the asking task's delay (`WaitTime`,
//! robots.txt `Crawl-delay`), and the task's `Limits` are token buckets of that host (tasks with
//! the same `Limits` share them). Two tasks crawling one host therefore share its budget.
//!
//! Time is tokio's, so tests can drive it with a paused clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::limiter::Limiter;
use crate::model::task::LimitConfig;

/// Hosts idle for this long are forgotten (their state is rebuilt on the next request).
const IDLE_FORGET: Duration = Duration::from_secs(300);
/// The table is swept of idle hosts whenever it grows past this many.
const SWEEP_AT: usize = 4096;

/// What one request asks of its host.
#[derive(Clone, Debug, Default)]
pub struct Politeness {
    /// Most requests open to the host at once.
    pub per_host: usize,
    /// Least time between this request's start and the previous start on the host.
    pub delay: Duration,
    /// Token buckets, every one must allow the request.
    pub limits: Vec<LimitConfig>,
}

#[derive(Debug)]
struct Host {
    open: Mutex<usize>,
    freed: Notify,
    /// Earliest start of the next request.
    next_start: Mutex<Instant>,
    /// Buckets by their `Limits` (as text).
    limiters: Mutex<HashMap<String, Arc<Limiter>>>,
    last_used: Mutex<Instant>,
}

impl Host {
    fn new(now: Instant) -> Self {
        Self {
            open: Mutex::new(0),
            freed: Notify::new(),
            next_start: Mutex::new(now),
            limiters: Mutex::new(HashMap::new()),
            last_used: Mutex::new(now),
        }
    }
}

/// The per-host state of one worker. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct HostPool {
    hosts: Arc<Mutex<HashMap<String, Arc<Host>>>>,
}

/// An open request to a host; dropping it frees the slot.
#[derive(Debug)]
pub struct HostPermit {
    host: Arc<Host>,
}

impl Drop for HostPermit {
    fn drop(&mut self) {
        *self.host.open.lock() -= 1;
        *self.host.last_used.lock() = Instant::now();
        self.host.freed.notify_waiters();
    }
}

impl HostPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    fn host(&self, name: &str) -> Arc<Host> {
        let now = Instant::now();
        let mut hosts = self.hosts.lock();
        if hosts.len() >= SWEEP_AT && !hosts.contains_key(name) {
            // Only hosts nobody holds or waits for can go (their Arc is ours alone).
            hosts.retain(|_, h| {
                Arc::strong_count(h) > 1
                    || *h.open.lock() > 0
                    || now.saturating_duration_since(*h.last_used.lock()) < IDLE_FORGET
            });
        }
        hosts
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Host::new(now)))
            .clone()
    }

    /// Requests open to `host` now.
    pub fn open(&self, host: &str) -> usize {
        self.hosts.lock().get(host).map_or(0, |h| *h.open.lock())
    }

    /// Wait until `host` may take one more request under `p`, then hold it open. Cancel-safe:
    /// dropping the future before it resolves holds nothing.
    pub async fn acquire(&self, host: &str, p: &Politeness) -> HostPermit {
        let h = self.host(host);
        let per_host = p.per_host.max(1);
        let permit = loop {
            let freed = h.freed.notified();
            tokio::pin!(freed);
            // Registered before the check: a slot freed in between wakes us.
            freed.as_mut().enable();
            {
                let mut open = h.open.lock();
                if *open < per_host {
                    *open += 1;
                    break HostPermit { host: h.clone() };
                }
            }
            freed.await;
        };
        if !p.delay.is_zero() {
            let start = {
                let mut next = h.next_start.lock();
                let start = (*next).max(Instant::now());
                *next = start + p.delay;
                start
            };
            tokio::time::sleep_until(start).await;
        }
        if !p.limits.is_empty() {
            let key = format!("{:?}", p.limits);
            let limiter = h
                .limiters
                .lock()
                .entry(key)
                .or_insert_with(|| Arc::new(Limiter::new(&p.limits)))
                .clone();
            limiter.acquire().await;
        }
        *h.last_used.lock() = Instant::now();
        permit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn open_requests_stay_within_the_strictest_bound() {
        let pool = HostPool::new();
        let open = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (pool, open, most) = (pool.clone(), open.clone(), most.clone());
            // Two "tasks" asking 3 and 5 at a time of the same host.
            let per_host = if i % 2 == 0 { 3 } else { 5 };
            tasks.push(tokio::spawn(async move {
                let p = Politeness {
                    per_host,
                    ..Politeness::default()
                };
                let _permit = pool.acquire("h", &p).await;
                let n = open.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                open.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let most = most.load(Ordering::SeqCst);
        assert!((3..=5).contains(&most), "{most}");
        assert_eq!(pool.open("h"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn starts_are_spaced_by_the_delay_and_hosts_are_independent() {
        let pool = HostPool::new();
        let p = Politeness {
            per_host: 8,
            delay: Duration::from_secs(1),
            limits: Vec::new(),
        };
        let t0 = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..3 {
            let _permit = pool.acquire("a", &p).await;
            starts.push(t0.elapsed().as_millis());
        }
        assert_eq!(starts, [0, 1000, 2000]);
        // Another host is not held back by the first one's schedule.
        let before = Instant::now();
        let _b = pool.acquire("b", &p).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiters_hold_nothing() {
        let pool = HostPool::new();
        let p = Politeness {
            per_host: 1,
            ..Politeness::default()
        };
        let first = pool.acquire("h", &p).await;
        let waiting = tokio::time::timeout(Duration::from_millis(50), pool.acquire("h", &p)).await;
        assert!(waiting.is_err(), "the only slot is taken");
        drop(first);
        assert_eq!(pool.open("h"), 0);
        let _again = pool.acquire("h", &p).await;
        assert_eq!(pool.open("h"), 1);
    }
}
