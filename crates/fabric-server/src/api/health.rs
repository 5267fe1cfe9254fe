//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fabric_core::api::Health;

use crate::state::AppState;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: fabric_core::VERSION.into(),
    })
}

/// Readiness: 503 until the store is open and unfinished tasks are reloaded.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    if state.is_ready() {
        (
            StatusCode::OK,
            Json(Health {
                status: "ok".into(),
                version: fabric_core::VERSION.into(),
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "starting".into(),
                version: fabric_core::VERSION.into(),
            }),
        )
    }
}
