//! The worker's HTTP API: `GET /tasks` (the runs this worker is responsible for),
//! `GET /health` (liveness: always 200) and `GET /readyz` (200 while registered with a live
//! lease and watching its assignments, else 503).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::{Shared, TaskView};

/// Answer of `GET /health`.
#[derive(Clone, Debug, Serialize)]
pub struct Health {
    /// `ok` once the first snapshot of assignments is loaded, else `starting`.
    pub status: &'static str,
    /// Registry node id.
    pub node: String,
    /// Registered gRPC address.
    pub address: String,
    /// Highest store revision acted on.
    pub synced_revision: i64,
    /// Number of runs this worker is responsible for.
    pub tasks: usize,
}

/// The routes, on the worker's shared state.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/tasks", get(tasks))
        .route("/health", get(health))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.watching.load(Ordering::Acquire) {
        Json(serde_json::json!({ "ready": true })).into_response()
    } else {
        let why = "not registered with a live lease, or not watching its assignments";
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "error": why })),
        )
            .into_response()
    }
}

async fn tasks(State(shared): State<Arc<Shared>>) -> Json<Vec<TaskView>> {
    Json(shared.views())
}

async fn health(State(shared): State<Arc<Shared>>) -> Json<Health> {
    let synced = shared.synced_revision.load(Ordering::Acquire);
    Json(Health {
        status: if synced > 0 { "ok" } else { "starting" },
        node: shared.node_id.clone(),
        address: shared.advertise.clone(),
        synced_revision: synced,
        tasks: shared.table.lock().len(),
    })
}

/// `t` as RFC 3339 UTC with milliseconds, e.g. `2022-12-12T08:55:42.798Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_670_841_268_798);
        assert_eq!(rfc3339(t), "2022-12-12T10:34:28.798Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
