//! The task API over HTTP JSON, on the master's `--http`:
//!
//! - `POST /crawler/tasks` (a spec as JSON) → 201 `{"spec":..,"status":..}`; 400 naming the bad
//!   field, 409 when the task exists
//! - `GET /crawler/tasks` → `{"tasks":[status, ...]}`
//! - `GET /crawler/tasks/<name>` → `{"spec":..,"status":..}`
//! - `PUT /crawler/tasks/<name>` (a spec) → the task; the run restarts from its checkpoint
//! - `DELETE /crawler/tasks/<name>[?purge=true]` → `{}`
//! - `POST /crawler/tasks/<name>/pause`, `/resume`, `/recrawl` → the task
//!
//! Writes go to the leader (forwarded by a follower) like every master write; errors are
//! `{"error":..}` as everywhere in the API.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::api::ApiError;
use super::http_body::{json_body, BodyError, Shared};
use super::state::Inner;
use super::task_api::{parse_spec, TaskCommand};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default)]
    purge: bool,
}

/// A refused spec: a body that is no JSON (413, 415) or a bad spec (400).
enum Refused {
    Body(BodyError),
    Spec(ApiError),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Body(b) => b.into_response(),
            Refused::Spec(e) => e.into_response(),
        }
    }
}

/// The spec of a POST or PUT.
fn spec_of(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<crate::model::task::TaskConfig, Refused> {
    let body = json_body(headers, body)
        .map_err(Refused::Body)?
        .ok_or_else(|| {
            Refused::Spec(ApiError::InvalidArgument(
                "the request body must be a task spec (JSON)".into(),
            ))
        })?;
    parse_spec(&body).map_err(Refused::Spec)
}

async fn add(
    State(inner): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Response> {
    let spec = spec_of(&headers, body).map_err(IntoResponse::into_response)?;
    let name = spec.name.clone();
    let out = inner
        .task_command(&name, TaskCommand::Add(Box::new(spec)), false)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn list(State(inner): Shared) -> Result<Response, ApiError> {
    let tasks = inner.list_tasks().await?;
    Ok(Json(json!({ "tasks": tasks })).into_response())
}

async fn get_one(State(inner): Shared, Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(inner.get_task(&name).await?).into_response())
}

async fn replace(
    State(inner): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Response> {
    let spec = spec_of(&headers, body).map_err(IntoResponse::into_response)?;
    let out = inner
        .task_command(&name, TaskCommand::Put(Box::new(spec)), false)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Json(out).into_response())
}

async fn remove(
    State(inner): Shared,
    Path(name): Path<String>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::InvalidArgument(format!("bad query: {e}")))?;
    inner
        .task_command(&name, TaskCommand::Delete { purge: q.purge }, false)
        .await?;
    Ok(Json(json!({})).into_response())
}

async fn action(
    State(inner): Shared,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let cmd = match action.as_str() {
        "pause" => TaskCommand::Pause,
        "resume" => TaskCommand::Resume,
        "recrawl" => TaskCommand::Recrawl,
        _ => return Err(ApiError::NotFound("no such endpoint".into())),
    };
    let out = inner.task_command(&name, cmd, false).await?;
    Ok(Json(out).into_response())
}

/// The task API's routes.
pub(super) fn routes() -> Router<Arc<Inner>> {
    Router::new()
        .route("/crawler/tasks", post(add).get(list))
        .route(
            "/crawler/tasks/{name}",
            get(get_one).put(replace).delete(remove),
        )
        .route("/crawler/tasks/{name}/{action}", post(action))
}
