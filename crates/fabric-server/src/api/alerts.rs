//! `GET /v1/alerts` and `GET /metrics` (FR-TEL, REQUIREMENTS §9).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::{Listing, PageParams};
use crate::services::alerts::Alert;
use crate::services::auth::Principal;
use crate::state::AppState;
use fabric_core::Scope;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AlertParams {
    /// Only alerts of this kind (`task_error_rate`, `http_error_rate`, `agent_crash_loop`, `budget_exceeded`, `budget_threshold`, `node_unreachable`).
    pub kind: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertList {
    pub alerts: Vec<Alert>,
    /// Pass as `?cursor=` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Alerts raised since the server started, newest first (the last 1000 are kept). Admins only.
#[utoipa::path(get, path = "/v1/alerts", operation_id = "list_alerts", tag = "telemetry", security(("bearer" = [])), params(AlertParams, PageParams),
    responses((status = 200, body = AlertList), (status = 400, body = fabric_core::api::ErrorBody), (status = 401, body = fabric_core::api::ErrorBody), (status = 403, body = fabric_core::api::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    Listing { page, filters }: Listing<AlertParams>,
) -> Result<Json<AlertList>, ApiError> {
    principal?.require(Scope::Admin)?;
    let alerts = state.telemetry.alerts.list(
        filters.kind.as_deref(),
        page.cursor::<String>()?.as_deref(),
        page.limit,
    );
    let next_cursor = page.next(&alerts, |a| a.id.clone());
    Ok(Json(AlertList {
        alerts,
        next_cursor,
    }))
}

/// Prometheus metrics (text exposition format 0.0.4). No authentication, like `/healthz`.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "telemetry",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(state: State<AppState>) -> axum::response::Response {
    crate::telemetry::metrics_handler(state).await
}
