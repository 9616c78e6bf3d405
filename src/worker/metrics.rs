//! The worker's `GET /metrics`: its task table read at scrape time (tasks by state; pages,
//! items, errors and frontier per task, from each run's report).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;

use super::table::Shared;
use crate::model::runner::TaskState;
use crate::util::prometheus::Snapshot;

fn stat(stats: &serde_json::Value, key: &str) -> u64 {
    stats
        .get(key)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// `GET /metrics`.
pub(super) async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let views = shared.views();
    let mut s = Snapshot::default();
    for (state, name) in [
        (TaskState::Running, "running"),
        (TaskState::Finished, "finished"),
        (TaskState::Failed, "failed"),
    ] {
        let n = views.iter().filter(|v| v.status == state).count();
        s.gauge(
            "crawler_worker_tasks",
            "Tasks this worker is responsible for, by state.",
            vec![("state", name.to_string())],
            i64::try_from(n).unwrap_or(i64::MAX),
        );
    }
    for v in &views {
        let task = || vec![("task", v.name.clone())];
        s.counter(
            "crawler_worker_pages_fetched",
            "Pages fetched by the task's current run.",
            task(),
            stat(&v.stats, "pages_fetched"),
        );
        s.counter(
            "crawler_worker_items",
            "Items extracted by the task's current run.",
            task(),
            stat(&v.stats, "items"),
        );
        s.counter(
            "crawler_worker_errors",
            "Failed fetches of the task's current run.",
            task(),
            stat(&v.stats, "errors"),
        );
        s.gauge(
            "crawler_worker_frontier",
            "URLs waiting in the task's frontier.",
            task(),
            i64::try_from(stat(&v.stats, "frontier")).unwrap_or(i64::MAX),
        );
        s.counter(
            "crawler_worker_task_retries",
            "Times the task was started again after failing.",
            task(),
            u64::from(v.retries),
        );
    }
    s.into_response()
}
