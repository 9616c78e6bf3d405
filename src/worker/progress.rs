//! Publishing each run's progress to the store (`/crawler/status/<name>`), so any master can
//! answer `GET /crawler/tasks` without asking workers.
//!
//! A run's progress is written at its task's checkpoint cadence (`CheckpointInterval`, at least
//! [`MIN_EVERY`]) and at once when its state or detail changes. Each write is guarded by the
//! resource key's mod revision as this worker last saw it, so a worker the task moved away from
//! cannot overwrite its successor's report; a refused write is retried at the next tick with the
//! revision the assignment watch has brought by then.

use std::time::{Duration, Instant, SystemTime};

use crate::client::{
    Compare, CompareResult, CompareTarget, KvClient, PutRequest, RequestOp, TxnRequest,
};
use crate::model::runner::TaskState;
use crate::model::spec::{status_key, TaskProgress};

use super::table::{Entry, Published};

/// Shortest time between two reports of one run that did not change state.
pub(super) const MIN_EVERY: Duration = Duration::from_secs(1);
/// How often the worker looks for reports that are due.
pub(super) const TICK: Duration = Duration::from_millis(500);

fn state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::Running => "running",
        TaskState::Finished => "finished",
        TaskState::Failed => "failed",
    }
}

fn stat(stats: &serde_json::Value, key: &str) -> u64 {
    stats
        .get(key)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// The report of `e` if one is due now (state changed, or its cadence elapsed).
pub(super) fn due(e: &Entry, worker: &str, now: Instant) -> Option<TaskProgress> {
    let (state, detail, stats) = match &e.handle {
        Some(h) => {
            let r = h.report();
            (state_name(r.state), r.detail, r.stats)
        }
        None => ("failed", e.error.clone(), serde_json::Value::Null),
    };
    let pages = stat(&stats, "pages_fetched");
    let every = e
        .task
        .as_ref()
        .map_or(MIN_EVERY, |t| {
            Duration::from_secs_f64(t.checkpoint_interval.clamp(0.0, 3600.0))
        })
        .max(MIN_EVERY);
    let ended = state != "running";
    let pages_per_sec = match &e.published {
        // An ended run's report does not change: written once.
        Some(p) if p.state == state && p.detail == detail && ended => return None,
        Some(p) if p.state == state && p.detail == detail && now.duration_since(p.at) < every => {
            return None
        }
        Some(p) => {
            let secs = now.duration_since(p.at).as_secs_f64();
            if secs > 0.0 {
                pages.saturating_sub(p.pages) as f64 / secs
            } else {
                0.0
            }
        }
        None => 0.0,
    };
    Some(TaskProgress {
        state: state.to_string(),
        detail,
        worker: worker.to_string(),
        resource_id: e.resource.id.clone(),
        pages,
        items: stat(&stats, "items"),
        errors: stat(&stats, "errors"),
        frontier: stat(&stats, "frontier"),
        pages_per_sec: (pages_per_sec * 100.0).round() / 100.0,
        last_checkpoint: stats
            .get("last_checkpoint")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string),
        updated_at: crate::util::time::rfc3339(SystemTime::now()),
    })
}

/// Record that `p` was published for `e`.
pub(super) fn mark(e: &mut Entry, p: &TaskProgress, at: Instant) {
    e.published = Some(Published {
        at,
        pages: p.pages,
        state: p.state.clone(),
        detail: p.detail.clone(),
    });
}

/// Write `p` for task `name`, provided its resource key (`resource_key`) still has
/// `mod_revision`. `Ok(false)` when the guard refused it.
pub(super) async fn publish(
    client: &dyn KvClient,
    resource_key: &str,
    mod_revision: i64,
    name: &str,
    p: &TaskProgress,
) -> Result<bool, crate::client::KvError> {
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Mod(mod_revision),
            key: resource_key.as_bytes().to_vec(),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp::Put(PutRequest {
            key: status_key(name).into_bytes(),
            value: p.encode(),
            ..PutRequest::default()
        })],
        failure: Vec::new(),
    };
    Ok(client.txn(txn).await?.body.succeeded)
}
