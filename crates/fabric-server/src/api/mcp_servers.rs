//! `/v1/mcp/servers`: the MCP servers agents' tools come from.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use fabric_core::mcp::{McpServerList, McpServerSpec, McpServerView, McpToolList};

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::services::auth::Principal;
use crate::state::AppState;

/// Registers an MCP server, or replaces the one of that name (its running
/// instances stop). Secrets (`secret_env`, `secret_headers`) are stored and
/// never shown again.
#[utoipa::path(post, path = "/v1/mcp/servers", operation_id = "put_mcp_server", tag = "mcp", security(("bearer" = [])), request_body = McpServerSpec,
    responses((status = 201, body = McpServerView), (status = 400, description = "invalid server", body = fabric_core::api::ErrorBody),
        (status = 403, description = "needs the tenant-admin scope (admin for isolation none)", body = fabric_core::api::ErrorBody),
        (status = 503, description = "isolation process without the sandbox helper", body = fabric_core::api::ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(spec): ApiJson<McpServerSpec>,
) -> Result<(StatusCode, Json<McpServerView>), ApiError> {
    let view = state.mcp.put(&principal, spec).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// The tenant's MCP servers, by name.
#[utoipa::path(get, path = "/v1/mcp/servers", operation_id = "list_mcp_servers", tag = "mcp", security(("bearer" = [])),
    responses((status = 200, body = McpServerList)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<McpServerList>, ApiError> {
    Ok(Json(McpServerList {
        servers: state.mcp.list(&principal)?,
    }))
}

#[utoipa::path(get, path = "/v1/mcp/servers/{name}", operation_id = "get_mcp_server", tag = "mcp", security(("bearer" = [])),
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9-]{0,31}$", description = "server name")),
    responses((status = 200, body = McpServerView), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<McpServerView>, ApiError> {
    Ok(Json(state.mcp.get(&principal, &name)?))
}

/// Unregisters a server; its instances stop.
#[utoipa::path(delete, path = "/v1/mcp/servers/{name}", operation_id = "delete_mcp_server", tag = "mcp", security(("bearer" = [])),
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9-]{0,31}$", description = "server name")),
    responses((status = 204, description = "removed"), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.mcp.delete(&principal, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The server's tools (starting it when it is not running), with the name
/// each has at an agent's `MCP_URL` and the action its calls are checked as.
#[utoipa::path(get, path = "/v1/mcp/servers/{name}/tools", operation_id = "list_mcp_server_tools", tag = "mcp", security(("bearer" = [])),
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9-]{0,31}$", description = "server name")),
    responses((status = 200, body = McpToolList), (status = 404, body = fabric_core::api::ErrorBody),
        (status = 502, description = "the server could not be started or did not answer", body = fabric_core::api::ErrorBody)))]
pub async fn tools(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<McpToolList>, ApiError> {
    let tools = state.mcp.tools(&principal, &name).await?;
    Ok(Json(McpToolList {
        server: name,
        tools,
    }))
}
