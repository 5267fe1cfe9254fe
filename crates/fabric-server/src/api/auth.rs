//! `/v1/auth/*`: login, logout, whoami, scoped tokens.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fabric_core::api::{CreateTokenRequest, LoginRequest, TokenResponse, WhoAmI};

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::services::auth::Principal;
use crate::state::AppState;

/// Longest lifetime of a scripted token.
const MAX_TOKEN_TTL_SECONDS: u64 = 365 * 24 * 3600;

/// Exchanges a username and password for a bearer token.
#[utoipa::path(post, path = "/v1/auth/login", operation_id = "login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = fabric_core::api::ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let (secret, token) = state.auth.login(&req.username, &req.password).await?;
    tracing::info!(user = %token.user, outcome = "ok", "logged in");
    Ok(Json(TokenResponse {
        token: secret,
        user: token.user,
        tenant: token.tenant,
        scopes: token.scopes,
        expires_at: token.expires_at,
    }))
}

/// Revokes the token used for this request.
#[utoipa::path(post, path = "/v1/auth/logout", operation_id = "logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = fabric_core::api::ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<StatusCode, ApiError> {
    state.auth.logout(&principal).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/v1/auth/whoami", operation_id = "whoami", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = fabric_core::api::ErrorBody)))]
pub async fn whoami(principal: Principal) -> Json<WhoAmI> {
    let identity = principal.identity;
    Json(WhoAmI {
        user: identity.user,
        tenant: identity.tenant,
        scopes: identity.scopes,
    })
}

/// Creates a token for scripts with at most the caller's scopes.
#[utoipa::path(post, path = "/v1/auth/tokens", operation_id = "create_token", tag = "auth", security(("bearer" = [])), request_body = CreateTokenRequest,
    responses((status = 201, body = TokenResponse), (status = 403, body = fabric_core::api::ErrorBody),
        (status = 404, description = "an agent token for an agent that does not exist", body = fabric_core::api::ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    if principal.agent.is_some() {
        return Err(ApiError::forbidden(
            "an agent token cannot create tokens: renew it with POST /v1/agent/token",
        ));
    }
    // An agent token: only for `/v1/agent/...` as that (existing) agent; admins only.
    let (scopes, agent) = match req.agent {
        Some(agent) => {
            principal.require(fabric_core::Scope::Admin)?;
            state.agents.get(&agent).await?;
            (Vec::new(), Some(agent))
        }
        None => {
            let scopes = req.scopes.unwrap_or_else(|| principal.scopes.clone());
            if let Some(missing) = scopes.iter().find(|s| !s.granted_by(&principal.scopes)) {
                return Err(ApiError::forbidden(format!(
                    "cannot grant '{missing}': your token does not hold it"
                )));
            }
            if scopes.is_empty() {
                return Err(ApiError::bad_request("a token needs at least one scope"));
            }
            (scopes, None)
        }
    };
    let ttl = req.ttl_seconds.unwrap_or(30 * 24 * 3600);
    if ttl == 0 || ttl > MAX_TOKEN_TTL_SECONDS {
        return Err(ApiError::bad_request(format!(
            "'ttl_seconds' must be between 1 and {MAX_TOKEN_TTL_SECONDS}"
        )));
    }
    let expires = state.tasks.now().plus(std::time::Duration::from_secs(ttl));
    let name = req
        .name
        .or_else(|| agent.as_ref().map(|a| format!("agent {a}")));
    let (secret, token) = state
        .auth
        .issue(
            &principal.user,
            &principal.tenant,
            scopes,
            name,
            Some(expires),
            agent,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenResponse {
            token: secret,
            user: token.user,
            tenant: token.tenant,
            scopes: token.scopes,
            expires_at: token.expires_at,
        }),
    ))
}
