//! What the master's HTTP front ends share: the one error shape, and JSON request bodies.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::state::Inner;

/// Paths answered without the API token: the probes.
const OPEN_PATHS: [&str; 2] = ["/health", "/readyz"];

/// `a == b` in time independent of where they differ (a token compare).
pub(super) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Does an `authorization` value carry the token?
pub(super) fn bearer_ok(header: Option<&str>, token: &str) -> bool {
    header
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| same_secret(t.trim().as_bytes(), token.as_bytes()))
}

/// Middleware: with an API token configured, every request but the probes must carry
/// `Authorization: Bearer <token>` (else 401).
pub(super) async fn require_token(
    State(inner): Shared,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = &inner.api_token {
        let open = OPEN_PATHS.contains(&req.uri().path());
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !open && !bearer_ok(auth, token) {
            let mut r = json_error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API token (Authorization: Bearer <token>)",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    next.run(req).await
}

/// The handlers' state.
pub(super) type Shared = State<Arc<Inner>>;

/// The one shape of every error: `{"error": "..."}`.
pub(super) fn json_error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

/// A refused request body: its status and message.
pub(super) struct BodyError(pub(super) StatusCode, pub(super) String);

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        json_error(self.0, self.1)
    }
}

/// A JSON request body: JSON by Content-Type (else 415), within the size limit (else 413);
/// `None` for an empty body.
pub(super) fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Option<Bytes>, BodyError> {
    let body = body.map_err(|e| BodyError(e.status(), e.body_text()))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(BodyError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be JSON (Content-Type: application/json)".into(),
        ));
    }
    Ok(Some(body))
}
