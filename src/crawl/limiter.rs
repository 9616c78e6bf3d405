//! Rate limits of a task: several token buckets, every one of which must allow a request.
//!
//! Each bucket is a GCRA (the arithmetic form of a token bucket): `EventCount` requests per
//! `EventDur`, bursts of up to `Bucket`, full at the start. Time is tokio's
//! ([`tokio::time::Instant`], [`tokio::time::sleep_until`]), so tests drive it with a paused,
//! virtual clock (`tokio::time::pause`) instead of waiting in wall time.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::model::task::LimitConfig;

/// One bucket.
#[derive(Clone, Debug)]
struct Bucket {
    /// Time between two tokens (`EventDur / EventCount`).
    interval: Duration,
    /// How far ahead of now the theoretical arrival time may run: `interval * (burst - 1)`.
    tolerance: Duration,
    /// Theoretical arrival time of the next request; `None` = full bucket.
    tat: Option<Instant>,
}

impl Bucket {
    fn new(l: &LimitConfig) -> Self {
        let count = l.event_count.max(1);
        let interval = l.window() / count;
        let burst = l.burst().max(1);
        Self {
            interval,
            tolerance: interval * (burst - 1),
            tat: None,
        }
    }

    /// When a request could pass: `now` if it can now.
    fn ready_at(&self, now: Instant) -> Instant {
        match self.tat {
            Some(tat) if tat > now + self.tolerance => tat - self.tolerance,
            _ => now,
        }
    }

    /// Account one request passing at `now` (which must be `>= ready_at(now)`).
    fn take(&mut self, now: Instant) {
        let tat = self.tat.map_or(now, |t| t.max(now));
        self.tat = Some(tat + self.interval);
    }
}

/// The buckets of one task. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Limiter {
    buckets: Mutex<Vec<Bucket>>,
}

impl Limiter {
    /// A limiter for `limits` (none: no limit).
    pub fn new(limits: &[LimitConfig]) -> Self {
        Self {
            buckets: Mutex::new(limits.iter().map(Bucket::new).collect()),
        }
    }

    /// Take a token from every bucket if all allow a request at `now`; else the earliest
    /// instant at which all could.
    pub fn try_acquire_at(&self, now: Instant) -> Result<(), Instant> {
        let mut buckets = self.buckets.lock();
        let ready = buckets.iter().map(|b| b.ready_at(now)).max().unwrap_or(now);
        if ready > now {
            return Err(ready);
        }
        // All allow: only now is a token taken from each, so a refused request costs nothing.
        for b in buckets.iter_mut() {
            b.take(now);
        }
        Ok(())
    }

    /// Wait until every bucket allows a request, and take it. Cancel-safe: dropping the future
    /// takes nothing.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_at(Instant::now()) {
                Ok(()) => return,
                Err(at) => tokio::time::sleep_until(at).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(count: u32, secs: f64, bucket: Option<u32>) -> LimitConfig {
        LimitConfig {
            event_count: count,
            event_dur: secs,
            bucket,
        }
    }

    /// Offsets (ms from the start, virtual time) at which `n` back-to-back requests pass.
    async fn pass_times(limiter: &Limiter, n: usize) -> Vec<u128> {
        let start = Instant::now();
        let mut out = Vec::new();
        for _ in 0..n {
            limiter.acquire().await;
            out.push(start.elapsed().as_millis());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn every_bucket_must_allow() {
        // 2 per second (burst 2) and 5 per 10 s (burst 5): the first bucket paces the start,
        // the second caps the total at 5 per 10 s, then one per 2 s.
        let l = Limiter::new(&[limit(2, 1.0, None), limit(5, 10.0, None)]);
        assert_eq!(
            pass_times(&l, 9).await,
            vec![0, 0, 500, 1000, 1500, 2000, 4000, 6000, 8000]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_originals_limits() {
        // 1 per 3 s with bucket 1, and 20 per 60 s.
        let l = Limiter::new(&[limit(1, 3.0, Some(1)), limit(20, 60.0, None)]);
        assert_eq!(pass_times(&l, 4).await, vec![0, 3000, 6000, 9000]);
        // A burst bucket refills: after a pause of 10 s, 1-per-3s still allows only one.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let now = Instant::now();
        assert_eq!(l.try_acquire_at(now), Ok(()));
        assert_eq!(l.try_acquire_at(now), Err(now + Duration::from_secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_requests_take_nothing_and_no_limit_never_waits() {
        let l = Limiter::new(&[limit(1, 1.0, None), limit(10, 1.0, None)]);
        let t0 = Instant::now();
        assert_eq!(l.try_acquire_at(t0), Ok(()));
        // Refused by the first bucket: the second must not lose a token for it.
        for _ in 0..100 {
            assert!(l.try_acquire_at(t0).is_err());
        }
        assert_eq!(
            l.try_acquire_at(t0 + Duration::from_secs(1)),
            Ok(()),
            "second bucket still has tokens"
        );
        let free = Limiter::new(&[]);
        assert_eq!(pass_times(&free, 50).await, vec![0; 50]);
    }
}
