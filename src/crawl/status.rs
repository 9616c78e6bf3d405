//! Per-run counters, surfaced through `TaskHandle::report()` (the worker's `GET /tasks`) and a
//! progress log line at a steady cadence.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use crate::model::runner::{TaskReport, TaskState};

/// The last checkpoint written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// When.
    pub at: SystemTime,
    /// Pages counted in it.
    pub pages: u64,
}

/// Live state of one run. Counters of a resumed run include the previous workers'.
#[derive(Debug)]
pub struct Status {
    /// Pages fetched and processed.
    pub pages: AtomicU64,
    /// Items written.
    pub items: AtomicU64,
    /// Requests that failed for good (after retries), and failed store writes.
    pub errors: AtomicU64,
    /// Retries of transient failures.
    pub retries: AtomicU64,
    /// URLs skipped because robots.txt disallows them.
    pub robots_denied: AtomicU64,
    /// Links dropped as outside the allowed domains.
    pub offsite: AtomicU64,
    /// Pending requests.
    pub frontier: AtomicU64,
    /// Distinct URLs seen.
    pub seen: AtomicU64,
    /// Bytes this run's checkpoints wrote to the store (deltas and bases, deflated).
    pub checkpoint_bytes: AtomicU64,
    /// Whether the run resumed from a checkpoint.
    pub resumed: AtomicBool,
    last_checkpoint: Mutex<Option<CheckpointInfo>>,
    state: Mutex<(TaskState, Option<String>)>,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            pages: AtomicU64::new(0),
            items: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            robots_denied: AtomicU64::new(0),
            offsite: AtomicU64::new(0),
            frontier: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            checkpoint_bytes: AtomicU64::new(0),
            resumed: AtomicBool::new(false),
            last_checkpoint: Mutex::new(None),
            state: Mutex::new((TaskState::Running, Some("starting".into()))),
        }
    }
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Status {
    /// Add one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Set a gauge.
    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    /// Record a checkpoint.
    pub fn checkpointed(&self, pages: u64) {
        *self.last_checkpoint.lock() = Some(CheckpointInfo {
            at: SystemTime::now(),
            pages,
        });
    }

    /// The last checkpoint, if any.
    pub fn last_checkpoint(&self) -> Option<CheckpointInfo> {
        self.last_checkpoint.lock().clone()
    }

    /// Set the life-cycle state and its detail.
    pub fn set_state(&self, state: TaskState, detail: impl Into<Option<String>>) {
        *self.state.lock() = (state, detail.into());
    }

    /// The detail of the life-cycle state.
    pub fn detail(&self) -> Option<String> {
        self.state.lock().1.clone()
    }

    /// The life-cycle state.
    pub fn state(&self) -> TaskState {
        self.state.lock().0
    }

    /// The report `GET /tasks` shows.
    pub fn report(&self) -> TaskReport {
        let (state, detail) = self.state.lock().clone();
        let cp = self.last_checkpoint();
        TaskReport {
            state,
            detail,
            stats: serde_json::json!({
                "pages_fetched": get(&self.pages),
                "items": get(&self.items),
                "errors": get(&self.errors),
                "retries": get(&self.retries),
                "robots_denied": get(&self.robots_denied),
                "offsite_links": get(&self.offsite),
                "frontier": get(&self.frontier),
                "seen": get(&self.seen),
                "checkpoint_bytes": get(&self.checkpoint_bytes),
                "resumed": self.resumed.load(Ordering::Relaxed),
                "last_checkpoint": cp.as_ref().map(|c| crate::util::time::rfc3339(c.at)),
                "last_checkpoint_pages": cp.map(|c| c.pages),
            }),
        }
    }

    /// Log one progress line.
    pub fn log_progress(&self, task: &str) {
        let cp = self
            .last_checkpoint()
            .map(|c| {
                let ago = c.at.elapsed().unwrap_or(Duration::ZERO);
                format!("{}s ago at {} pages", ago.as_secs(), c.pages)
            })
            .unwrap_or_else(|| "none".into());
        tracing::info!(
            task,
            state = ?self.state(),
            pages = get(&self.pages),
            items = get(&self.items),
            errors = get(&self.errors),
            frontier = get(&self.frontier),
            seen = get(&self.seen),
            last_checkpoint = %cp,
            "crawl progress"
        );
    }
}
