//! Failed runs start again after a backoff, a bounded number of times (a site that was down, a
//! store that was unreachable); the last error stays visible in `GET /tasks`.

use std::time::Duration;

use tokio::time::Instant;

/// Longest pause between attempts to reach the store.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Longest pause between two attempts of a run.
const MAX_DELAY: Duration = Duration::from_secs(600);

/// How failed runs are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first failure (0: a failed run stays failed).
    pub max_retries: u32,
    /// Pause before the first retry; it doubles with each one (at most 10 minutes).
    pub base: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: crate::config::DEFAULT_TASK_RETRIES_AFTER_FAILURE,
            base: Duration::from_secs(crate::config::DEFAULT_TASK_RETRY_BACKOFF_SECS),
        }
    }
}

impl RetryPolicy {
    /// Pause before retry number `done + 1`.
    pub fn delay(&self, done: u32) -> Duration {
        self.base
            .saturating_mul(1u32.checked_shl(done).unwrap_or(u32::MAX))
            .min(MAX_DELAY)
    }

    /// How often failed runs are looked at.
    pub fn tick(&self) -> Duration {
        (self.base / 2).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// Where the retries of one resource's run stand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryState {
    /// Retries made so far.
    pub retries: u32,
    /// When the next one is due (set once a failure was seen).
    pub next: Option<Instant>,
    /// The error that made the last retry (or the pending one) necessary.
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_bound() {
        let p = RetryPolicy {
            max_retries: 5,
            base: Duration::from_secs(10),
        };
        let secs: Vec<u64> = (0..4).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 80]);
        assert_eq!(p.delay(40), MAX_DELAY);
        assert_eq!(p.tick(), Duration::from_secs(1));
    }
}
