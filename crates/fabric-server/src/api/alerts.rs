//! `GET /v1/alerts` and `GET /metrics` (FR-TEL, REQUIREMENTS §9).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use crate::alerts::Alert;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::AppState;
use fabric_core::Scope;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertParams {
    /// Only alerts of this kind (`task_error_rate`, `http_error_rate`, `agent_crash_loop`, `budget_exceeded`).
    pub kind: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertList {
    pub alerts: Vec<Alert>,
}

/// Alerts raised since the server started, newest first (the last 1000 are kept). Admins only.
#[utoipa::path(get, path = "/v1/alerts", tag = "telemetry", security(("bearer" = [])), params(AlertParams),
    responses((status = 200, body = AlertList), (status = 403, body = fabric_core::api::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    ApiQuery(params): ApiQuery<AlertParams>,
) -> Result<Json<AlertList>, ApiError> {
    principal?.require(Scope::Admin)?;
    let limit = params
        .limit
        .unwrap_or(100)
        .clamp(1, crate::alerts::KEEP_ALERTS);
    Ok(Json(AlertList {
        alerts: state.telemetry.alerts.list(params.kind.as_deref(), limit),
    }))
}

/// Prometheus metrics (text exposition format 0.0.4). No authentication, like `/healthz`.
#[utoipa::path(get, path = "/metrics", tag = "telemetry",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(state: State<AppState>) -> axum::response::Response {
    crate::telemetry::metrics_handler(state).await
}
