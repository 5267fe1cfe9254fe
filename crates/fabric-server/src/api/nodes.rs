//! `/v1/nodes`: worker nodes. Admins create join tokens, list nodes, set
//! the node config and cordon, drain or remove nodes; nodes themselves join
//! (with a join token), report in and renew their credential (with the
//! credential, [`NodeCaller`]).

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use fabric_core::node::{
    CreateJoinTokenRequest, Heartbeat, HeartbeatReply, JoinRequest, JoinTokenCreated,
    JoinTokenList, JoinTokenView, NodeConfig, NodeConfigSpec, NodeCredential, NodeList, NodeView,
};

use crate::error::ApiError;
use crate::extract::{ApiJson, bearer, client_ip, count_refusal};
use crate::services::auth::Principal;
use crate::state::AppState;

/// The node a request comes from: its credential (`Authorization: Bearer
/// rfn_…`) must be the current (or just replaced) one of the node named in
/// the path. Refusals count against the caller's address like any failed
/// authentication.
pub struct NodeCaller(pub String);

impl FromRequestParts<AppState> for NodeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let checked = match bearer(parts) {
            Some(credential) => state
                .nodes
                .authenticate(&name, &credential)
                .map_err(ApiError::from),
            None => Err(ApiError::unauthorized(
                "missing node credential: a node sends 'Authorization: Bearer rfn_…' (what it got when it joined)",
            )),
        };
        checked
            .map(|()| NodeCaller(name))
            .map_err(|refused| count_refusal(state, client_ip(parts), refused))
    }
}

/// Creates a join token (shown once). Single use and valid for an hour
/// unless `max_uses` (0: any number) and `ttl_seconds` say otherwise.
#[utoipa::path(post, path = "/v1/nodes/tokens", operation_id = "create_join_token", tag = "nodes", security(("bearer" = [])), request_body = CreateJoinTokenRequest,
    responses((status = 201, body = JoinTokenCreated), (status = 400, body = fabric_core::api::ErrorBody),
        (status = 403, description = "needs the admin role", body = fabric_core::api::ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<CreateJoinTokenRequest>,
) -> Result<(StatusCode, Json<JoinTokenCreated>), ApiError> {
    let created = state.nodes.create_join_token(&principal, req).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Join tokens, newest first (never their secrets).
#[utoipa::path(get, path = "/v1/nodes/tokens", operation_id = "list_join_tokens", tag = "nodes", security(("bearer" = [])),
    responses((status = 200, body = JoinTokenList), (status = 403, body = fabric_core::api::ErrorBody)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<JoinTokenList>, ApiError> {
    Ok(Json(JoinTokenList {
        tokens: state.nodes.list_join_tokens(&principal)?,
    }))
}

/// Revokes a join token: no further node joins with it.
#[utoipa::path(delete, path = "/v1/nodes/tokens/{id}", operation_id = "revoke_join_token", tag = "nodes", security(("bearer" = [])),
    params(("id" = String, Path, description = "the token's id (rfj_<id>_…)")),
    responses((status = 200, body = JoinTokenView), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<JoinTokenView>, ApiError> {
    Ok(Json(state.nodes.revoke_join_token(&principal, &id).await?))
}

/// A node joins: its join token buys it a credential of its own.
#[utoipa::path(post, path = "/v1/nodes/join", operation_id = "join_node", tag = "nodes", request_body = JoinRequest,
    responses((status = 201, body = NodeCredential), (status = 400, body = fabric_core::api::ErrorBody),
        (status = 401, description = "the join token is unknown, expired, used up or revoked", body = fabric_core::api::ErrorBody),
        (status = 409, description = "a node of that name has joined", body = fabric_core::api::ErrorBody)))]
pub async fn join(
    State(state): State<AppState>,
    client: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    ApiJson(req): ApiJson<JoinRequest>,
) -> Result<(StatusCode, Json<NodeCredential>), ApiError> {
    let client = client.map(|axum::Extension(ConnectInfo(addr))| addr.ip());
    match state.nodes.join(req).await {
        Ok(credential) => Ok((StatusCode::CREATED, Json(credential))),
        Err(e) => Err(count_refusal(&state, client, e.into())),
    }
}

/// A node reports in: readiness, the config it runs, new capabilities.
/// Held up to `wait_ms` unless a config it does not run is waiting.
#[utoipa::path(post, path = "/v1/nodes/{name}/heartbeat", operation_id = "node_heartbeat", tag = "nodes", security(("bearer" = [])), request_body = Heartbeat,
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9-]{0,62}$", description = "node name")),
    responses((status = 200, body = HeartbeatReply), (status = 401, description = "not this node's valid credential", body = fabric_core::api::ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    NodeCaller(name): NodeCaller,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    Ok(Json(state.nodes.heartbeat(&name, hb).await?))
}

/// A node renews its credential; the old one works a few minutes more.
#[utoipa::path(post, path = "/v1/nodes/{name}/credential", operation_id = "renew_node_credential", tag = "nodes", security(("bearer" = [])),
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9-]{0,62}$", description = "node name")),
    responses((status = 200, body = NodeCredential), (status = 401, body = fabric_core::api::ErrorBody)))]
pub async fn renew(
    State(state): State<AppState>,
    NodeCaller(name): NodeCaller,
) -> Result<Json<NodeCredential>, ApiError> {
    Ok(Json(state.nodes.renew(&name).await?))
}

/// Every node with its status, capabilities and the config version it runs.
#[utoipa::path(get, path = "/v1/nodes", operation_id = "list_nodes", tag = "nodes", security(("bearer" = [])),
    responses((status = 200, body = NodeList), (status = 403, body = fabric_core::api::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<NodeList>, ApiError> {
    Ok(Json(NodeList {
        nodes: state.nodes.list(&principal)?,
    }))
}

#[utoipa::path(get, path = "/v1/nodes/{name}", operation_id = "get_node", tag = "nodes", security(("bearer" = [])),
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9-]{0,62}$", description = "node name")),
    responses((status = 200, body = NodeView), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    Ok(Json(state.nodes.get(&principal, &name)?))
}

/// Removes a node: its credential stops working at once.
#[utoipa::path(delete, path = "/v1/nodes/{name}", operation_id = "remove_node", tag = "nodes", security(("bearer" = [])),
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9-]{0,62}$", description = "node name")),
    responses((status = 204, description = "removed"), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.nodes.remove(&principal, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

macro_rules! scheduling_route {
    ($fn:ident, $path:literal, $op:literal, $doc:literal, $cordoned:expr, $draining:expr) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, operation_id = $op, tag = "nodes", security(("bearer" = [])),
            params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9-]{0,62}$", description = "node name")),
            responses((status = 200, body = NodeView), (status = 404, body = fabric_core::api::ErrorBody)))]
        pub async fn $fn(
            State(state): State<AppState>,
            principal: Principal,
            Path(name): Path<String>,
        ) -> Result<Json<NodeView>, ApiError> {
            Ok(Json(
                state
                    .nodes
                    .set_schedulable(&principal, &name, $cordoned, $draining)
                    .await?,
            ))
        }
    };
}

scheduling_route!(
    cordon,
    "/v1/nodes/{name}/cordon",
    "cordon_node",
    "No new agents are placed on the node.",
    true,
    false
);
scheduling_route!(
    uncordon,
    "/v1/nodes/{name}/uncordon",
    "uncordon_node",
    "The node takes agents again (ends a cordon or a drain).",
    false,
    false
);
scheduling_route!(
    drain,
    "/v1/nodes/{name}/drain",
    "drain_node",
    "Moves the node's agents off (their tasks drain first) and places no new ones.",
    true,
    true
);

/// The node config every node runs with.
#[utoipa::path(get, path = "/v1/nodes/config", operation_id = "get_node_config", tag = "nodes", security(("bearer" = [])),
    responses((status = 200, body = NodeConfig), (status = 403, body = fabric_core::api::ErrorBody)))]
pub async fn get_config(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<NodeConfig>, ApiError> {
    Ok(Json(state.nodes.config(&principal)?))
}

/// Replaces the node config (a new version); nodes apply it at once and
/// acknowledge it in their next heartbeat (`node list` shows the version each runs).
#[utoipa::path(put, path = "/v1/nodes/config", operation_id = "put_node_config", tag = "nodes", security(("bearer" = [])), request_body = NodeConfigSpec,
    responses((status = 200, body = NodeConfig), (status = 400, body = fabric_core::api::ErrorBody), (status = 403, body = fabric_core::api::ErrorBody)))]
pub async fn put_config(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(spec): ApiJson<NodeConfigSpec>,
) -> Result<Json<NodeConfig>, ApiError> {
    Ok(Json(state.nodes.set_config(&principal, spec).await?))
}
