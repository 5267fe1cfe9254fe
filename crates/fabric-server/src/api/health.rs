//! Liveness and readiness.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fabric_core::api::Health;

use crate::error::ApiError;
use crate::state::{AppState, Readiness, Role};

fn health(status: &str, message: Option<String>, leader: Option<String>) -> Json<Health> {
    Json(Health {
        status: status.into(),
        version: fabric_core::VERSION.into(),
        message,
        leader,
    })
}

/// Liveness: the process answers (also while a standby).
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    health("ok", None, None)
}

/// Readiness: 503 until the store is open, the leadership of a Redis store
/// prefix is held and unfinished tasks are reloaded; 503 `standby` while
/// another orchestrator leads the prefix; 503 `stepping_down` once the
/// leadership is lost.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    if state.is_ready() {
        return (StatusCode::OK, health("ok", None, None));
    }
    let body = match state.readiness.role() {
        Role::Starting | Role::Active => health("starting", None, None),
        Role::Standby { prefix, leader } => health(
            "standby",
            Some(format!(
                "this orchestrator is a standby for store prefix {prefix:?}: orchestrator {leader} is active; this one takes over if that one stops renewing its leadership"
            )),
            Some(leader),
        ),
        Role::SteppingDown { reason } => health(
            "stepping_down",
            Some(format!("this orchestrator stopped serving: {reason}")),
            None,
        ),
    };
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

/// Middleware: `/v1` requests get 503 until the server accepts them (see
/// [`crate::state::Readiness`]); health and the OpenAPI document always answer.
// Its state is the readiness alone: the whole `AppState` would be cloned
// (a handful of reference counts) on every request.
pub async fn gate(
    State(readiness): State<Arc<Readiness>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if (path.starts_with("/v1/") || path == "/mcp") && !readiness.is_accepting() {
        return ApiError::unavailable(readiness.refusal()).into_response();
    }
    next.run(request).await
}
