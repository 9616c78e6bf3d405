//! The master's HTTP JSON API on `--http`.
//!
//! - `POST /crawler/resource` `{"name":"x"}` → `{"resource":{"ID":..,"Name":..,"AssignedNode":..,
//!   "CreationTime":..},"node":{"id":..,"address":..}|null}`
//! - `DELETE /crawler/resource` `{"name":"x"}` → `{}`
//! - `GET /crawler/resource?name=x` → the resource
//! - `GET /crawler/resources` → `{"resources":[...]}`
//! - `GET /crawler/workers` → `{"workers":[{"id":..,"address":..}]}`
//! - `GET /crawler/leader` → `{"value":..,"master_id":..,"address":..,"create_revision":..,"is_self":..}`
//! - the task API, `/crawler/tasks...` (see [`super::task_http`])
//! - `GET /health` → `{"leader":bool,"ready":bool,"master":"master<id>-<addr>"}` (liveness:
//!   always 200)
//! - `GET /readyz` → 200 `{"ready":true,"role":"leader"|"follower of ..."}` when this master can
//!   serve (the ready leader, confirmed by a linearizable read; or a follower that reaches one),
//!   else 503 `{"ready":false,"error":..}` (no leader, no quorum: within about a second)
//!
//! With an API token configured (`[MasterServer] APIToken`), every request but `/health` and
//! `/readyz` must carry `Authorization: Bearer <token>` (else 401).
//!
//! Bodies must be JSON (`Content-Type: application/json`, else 415) with known fields only, at
//! most [`MAX_BODY_BYTES`] (else 413).
//!
//! Every error is `{"error":"<message>"}`: 400 (bad input), 404 (unknown resource or endpoint),
//! 409 (duplicate), 413, 415, 503 (no leader / leader unreachable / store unavailable) or 500.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use super::api::ApiError;
use super::http_body::{json_body, json_error, BodyError, Shared};
use super::state::Inner;
use crate::coord::registry::Node;
use crate::model::resource::Resource;

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Body of add and delete, query of get.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    #[serde(default)]
    name: String,
}

#[derive(Serialize)]
struct NodeJson {
    id: String,
    address: String,
}

/// Reply of an add: the stored resource (in its stored JSON shape) and its worker.
#[derive(Serialize)]
struct AddReply {
    resource: Resource,
    node: Option<NodeJson>,
}

#[derive(Serialize)]
struct ListReply {
    resources: Vec<Resource>,
}

#[derive(Serialize)]
struct WorkersReply {
    workers: Vec<NodeJson>,
}

#[derive(Serialize)]
struct LeaderReply {
    value: String,
    master_id: u64,
    address: String,
    create_revision: i64,
    is_self: bool,
}

#[derive(Serialize)]
struct HealthReply<'a> {
    leader: bool,
    ready: bool,
    master: &'a str,
}

impl From<Node> for NodeJson {
    fn from(n: Node) -> Self {
        Self {
            id: n.id,
            address: n.address,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            ApiError::AlreadyExists(_) => StatusCode::CONFLICT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        json_error(status, self)
    }
}

/// The `{"name":..}` body: known fields only; an empty body is an empty name. Refused with 400,
/// 413 or 415.
fn name_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<NameBody, BodyError> {
    let Some(body) = json_body(headers, body)? else {
        return Ok(NameBody {
            name: String::new(),
        });
    };
    serde_json::from_slice(&body)
        .map_err(|e| BodyError(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

async fn add(
    State(inner): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Response> {
    let body = name_body(&headers, body).map_err(IntoResponse::into_response)?;
    let out = inner
        .add_resource(&body.name, false)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Json(AddReply {
        resource: out.resource,
        node: out.node.map(NodeJson::from),
    })
    .into_response())
}

async fn delete(
    State(inner): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Response> {
    let body = name_body(&headers, body).map_err(IntoResponse::into_response)?;
    inner
        .delete_resource(&body.name, false)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Json(json!({})).into_response())
}

async fn get_one(
    State(inner): Shared,
    q: Result<Query<NameBody>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::InvalidArgument(format!("bad query: {e}")))?;
    Ok(Json(inner.get_resource(&q.name).await?).into_response())
}

async fn list(State(inner): Shared) -> Result<Response, ApiError> {
    let resources = inner.list_resources().await?;
    Ok(Json(ListReply { resources }).into_response())
}

async fn workers(State(inner): Shared) -> Result<Response, ApiError> {
    let workers = inner
        .list_workers()
        .await?
        .into_iter()
        .map(NodeJson::from)
        .collect();
    Ok(Json(WorkersReply { workers }).into_response())
}

async fn leader(State(inner): Shared) -> Result<Response, ApiError> {
    let l = inner.leader_view().await?;
    Ok(Json(LeaderReply {
        value: l.value,
        master_id: l.master_id,
        address: l.address,
        create_revision: l.create_revision,
        is_self: l.is_self,
    })
    .into_response())
}

async fn health(State(inner): Shared) -> Response {
    let term = inner.current_term();
    Json(HealthReply {
        leader: term.is_some(),
        ready: term.is_some_and(|t| t.is_ready()),
        master: &inner.value,
    })
    .into_response()
}

async fn readyz(State(inner): Shared) -> Response {
    match inner.readiness().await {
        Ok(role) => Json(json!({ "ready": true, "role": role })).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "error": why })),
        )
            .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// The API's routes.
pub fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/crawler/resource", post(add).delete(delete).get(get_one))
        .route("/crawler/resources", get(list))
        .route("/crawler/workers", get(workers))
        .route("/crawler/leader", get(leader))
        .merge(super::task_http::routes())
        .route("/health", get(health))
        .route("/readyz", get(readyz))
        .route("/metrics", get(super::metrics::metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            inner.clone(),
            super::http_body::require_token,
        ))
        .with_state(inner)
}

/// Serve the API on `listener` until `stop` turns true.
pub async fn serve(
    inner: Arc<Inner>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let r = axum::serve(listener, router(inner))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "master HTTP server failed");
    }
}
