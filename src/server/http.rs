//! The member's HTTP endpoints, as etcd 3.5 serves them next to gRPC and on
//! `--listen-metrics-urls`: `/metrics` (Prometheus text), `/health` (etcd's JSON), `/livez` and
//! `/readyz` (Kubernetes-style checks, `?verbose` lists them).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use crawler_storage::{AlarmType, RangeRequest};
use prometheus_client::registry::Registry;

use crate::server::grpc::ApiContext;

/// What the endpoints look at.
pub(crate) struct Monitor {
    pub(crate) ctx: ApiContext,
    pub(crate) registry: Registry,
    /// How long a quorum may take to confirm a read before the member counts as cut off.
    pub(crate) quorum_timeout: Duration,
}

/// The router of the member's HTTP endpoints.
pub(crate) fn router(monitor: Arc<Monitor>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(monitor)
}

async fn metrics(State(m): State<Arc<Monitor>>) -> Response {
    crate::util::prometheus::response(&m.registry)
}

impl Monitor {
    fn has_leader(&self) -> bool {
        self.ctx.raft.status().leader.is_some()
    }

    /// A linearizable read barrier confirmed by a quorum within `quorum_timeout`.
    async fn quorum_read(&self) -> Result<(), String> {
        match tokio::time::timeout(self.quorum_timeout, self.ctx.raft.read_barrier()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out confirming a quorum".into()),
        }
    }

    fn serializable_read(&self) -> Result<(), String> {
        let req = RangeRequest {
            key: b"health".to_vec(),
            serializable: true,
            ..RangeRequest::default()
        };
        self.ctx
            .raft
            .store()
            .range(&req)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn alarm(&self, kind: AlarmType) -> bool {
        self.ctx
            .raft
            .store()
            .alarms()
            .iter()
            .any(|a| a.alarm == kind)
    }
}

fn alarm_name(kind: AlarmType) -> &'static str {
    match kind {
        AlarmType::NoSpace => "NOSPACE",
        AlarmType::Corrupt => "CORRUPT",
    }
}

/// etcd 3.5's `/health`: alarms (`?exclude=NOSPACE` skips one), leader, then a linearizable
/// read (`?serializable=true` reads locally instead).
async fn health(
    State(m): State<Arc<Monitor>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let excluded = q.get("exclude").map(String::as_str).unwrap_or("");
    let mut reason = None;
    for a in m.ctx.raft.store().alarms() {
        let name = alarm_name(a.alarm);
        if name != excluded {
            reason = Some(format!("ALARM {name}"));
            break;
        }
    }
    if reason.is_none() && !m.has_leader() {
        reason = Some("RAFT NO LEADER".to_string());
    }
    if reason.is_none() {
        let read = if q.get("serializable").is_some_and(|v| v == "true") {
            m.serializable_read()
        } else {
            m.quorum_read().await
        };
        if let Err(e) = read {
            reason = Some(format!("QGET ERROR: {e}"));
        }
    }
    let (code, body) = match reason {
        None => (
            StatusCode::OK,
            serde_json::json!({"health": "true", "reason": ""}),
        ),
        Some(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": r}),
        ),
    };
    (code, axum::Json(body)).into_response()
}

/// Named checks answered the Kubernetes way: `ok` or 503 with the failed ones listed.
fn checks_response(what: &str, checks: Vec<(&str, Result<(), String>)>, verbose: bool) -> Response {
    let failed = checks.iter().any(|(_, r)| r.is_err());
    let mut text = String::new();
    if verbose || failed {
        for (name, r) in &checks {
            match r {
                Ok(()) => text.push_str(&format!("[+]{name} ok\n")),
                Err(e) if verbose => text.push_str(&format!("[-]{name} failed: {e}\n")),
                Err(_) => text.push_str(&format!("[-]{name} failed: reason withheld\n")),
            }
        }
    }
    if failed {
        text.push_str(&format!("{what} check failed\n"));
        (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
    } else {
        text.push_str("ok\n");
        (StatusCode::OK, text).into_response()
    }
}

/// `/livez`: the process serves and its local store answers.
async fn livez(
    State(m): State<Arc<Monitor>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let checks = vec![("serializable_read", m.serializable_read())];
    checks_response("livez", checks, q.contains_key("verbose"))
}

/// `/readyz`: a leader that a quorum confirmed recently, no corruption alarm, local reads work.
async fn readyz(
    State(m): State<Arc<Monitor>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let leader = if m.has_leader() {
        m.quorum_read().await
    } else {
        Err("no leader".to_string())
    };
    let corrupt = if m.alarm(AlarmType::Corrupt) {
        Err("CORRUPT alarm active".to_string())
    } else {
        Ok(())
    };
    let checks = vec![
        ("data_corruption", corrupt),
        ("leader", leader),
        ("serializable_read", m.serializable_read()),
    ];
    checks_response("readyz", checks, q.contains_key("verbose"))
}
