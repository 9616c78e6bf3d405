//! The worker's HTTP API: `GET /tasks` (the runs this worker is responsible for),
//! `GET /health` (liveness: always 200) and `GET /readyz` (200 while registered with a live
//! lease and watching its assignments, else 503) and `GET /metrics` (Prometheus text).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::table::{Shared, TaskView};

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
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/tasks", get(tasks))
        .route("/health", get(health))
        .route("/readyz", get(readyz))
        .route("/metrics", get(super::metrics::metrics))
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
