//! `/v1/auth/*`: login, logout, whoami, and the caller's tokens.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use fabric_core::api::{
    CreateTokenRequest, LoginRequest, SessionView, TokenList, TokenResponse, TokenView, WhoAmI,
};
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Listing};
use crate::services::auth::Principal;
use crate::state::AppState;

/// Exchanges a username and password for a bearer token.
#[utoipa::path(post, path = "/v1/auth/login", operation_id = "login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = fabric_core::api::ErrorBody),
        (status = 403, description = "the user or its tenant is disabled", body = fabric_core::api::ErrorBody),
        (status = 429, description = "too many failed logins for this user name or from this address: rate_limited, with Retry-After", body = fabric_core::api::ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    client: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let from = client.map(|axum::Extension(axum::extract::ConnectInfo(addr))| addr.ip());
    let (secret, token) = state.auth.login(&req.username, &req.password, from).await?;
    tracing::info!(user = %token.user, outcome = "ok", "logged in");
    Ok(Json(TokenResponse::issued(secret, token)))
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

/// Who the token belongs to, and whether it is a person's or an agent's.
#[utoipa::path(get, path = "/v1/auth/whoami", operation_id = "whoami", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = fabric_core::api::ErrorBody)))]
pub async fn whoami(principal: Principal) -> Json<WhoAmI> {
    let kind = principal.kind;
    let identity = principal.identity;
    Json(WhoAmI {
        user: identity.user,
        tenant: identity.tenant,
        scopes: identity.scopes,
        kind,
        agent: identity.agent,
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
    // An agent's token is of the tenant that owns the agent.
    let agent_tenant = match &req.agent {
        Some(agent) => Some(state.agents.get(agent, &principal).await?.tenant),
        None => None,
    };
    let (secret, token) = state
        .accounts
        .create_token(&principal, req, agent_tenant)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenResponse::issued(secret, token)),
    ))
}

/// `GET /v1/auth/tokens?user=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TokenFilters {
    /// Another user's tokens (a user the caller manages); default: the caller's.
    pub user: Option<String>,
}

/// The caller's stored tokens (never their secrets), by id.
#[utoipa::path(get, path = "/v1/auth/tokens", operation_id = "list_tokens", tag = "auth", security(("bearer" = [])),
    params(crate::extract::PageParams, TokenFilters),
    responses((status = 200, body = TokenList), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    principal: Principal,
    Listing { page, filters }: Listing<TokenFilters>,
) -> Result<Json<TokenList>, ApiError> {
    let tokens = state
        .accounts
        .list_tokens(&principal, filters.user.as_deref())
        .await?;
    let views = tokens.iter().map(TokenView::from).collect();
    let (tokens, next_cursor) = page.slice(views, |t: &TokenView| t.id.clone());
    Ok(Json(TokenList {
        tokens,
        next_cursor,
    }))
}

/// Revokes one of the caller's tokens, named by its id or its name; takes
/// effect on the next request, on every orchestrator.
#[utoipa::path(delete, path = "/v1/auth/tokens/{token}", operation_id = "revoke_token", tag = "auth", security(("bearer" = [])),
    params(("token" = String, Path, description = "the token's id (from the list) or its name"), TokenFilters),
    responses((status = 200, body = TokenView), (status = 404, body = fabric_core::api::ErrorBody),
        (status = 409, description = "several tokens have that name", body = fabric_core::api::ErrorBody)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    principal: Principal,
    Path(token): Path<String>,
    ApiQuery(filters): ApiQuery<TokenFilters>,
) -> Result<Json<TokenView>, ApiError> {
    let revoked = state
        .accounts
        .revoke_token(&principal, &token, filters.user.as_deref())
        .await?;
    Ok(Json(revoked))
}

/// A browser session's cookie: HttpOnly (scripts never see the secret),
/// SameSite=Strict (other sites' pages never send it), Secure when the page
/// was served over https. `max_age` 0 removes it.
fn session_cookie(secret: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
        crate::extract::SESSION_COOKIE
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether the browser is on an https page (its `Origin`, or the proxy's
/// `X-Forwarded-Proto` in front of this server).
fn over_https(headers: &HeaderMap) -> bool {
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| o.starts_with("https://"));
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    origin || forwarded
}

/// What a session's answers say of it; the CSRF token derives from the
/// token's hash.
fn session_view(
    user: &str,
    tenant: &fabric_core::TenantId,
    scopes: &[fabric_core::Scope],
    token_hash: &str,
    expires_at: Option<fabric_core::Timestamp>,
) -> SessionView {
    SessionView {
        user: user.to_owned(),
        tenant: tenant.clone(),
        scopes: scopes.to_vec(),
        csrf_token: crate::extract::csrf_token(token_hash),
        expires_at,
    }
}

/// Signs a person in for the dashboard: the session's secret goes into an
/// HttpOnly cookie, the answer carries the CSRF token its changes must send.
#[utoipa::path(post, path = "/v1/auth/session", operation_id = "create_session", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = SessionView, headers(("set-cookie" = String, description = "fabric_session, HttpOnly, SameSite=Strict"))),
        (status = 401, body = fabric_core::api::ErrorBody),
        (status = 403, description = "the user or its tenant is disabled", body = fabric_core::api::ErrorBody),
        (status = 429, description = "too many failed logins for this user name or from this address: rate_limited, with Retry-After", body = fabric_core::api::ErrorBody)))]
pub async fn create_session(
    State(state): State<AppState>,
    client: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let from = client.map(|axum::Extension(axum::extract::ConnectInfo(addr))| addr.ip());
    let (secret, token) = state.auth.login(&req.username, &req.password, from).await?;
    tracing::info!(user = %token.user, outcome = "ok", "signed in (browser session)");
    let max_age = i64::try_from(crate::services::auth::SESSION_TTL.as_secs()).unwrap_or(i64::MAX);
    let cookie = session_cookie(&secret, max_age, over_https(&headers));
    Ok((
        [
            (header::SET_COOKIE, cookie),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Json(session_view(
            &token.user,
            &token.tenant,
            &token.scopes,
            &token.token_hash,
            token.expires_at,
        )),
    ))
}

/// The signed-in browser session (401 when there is none): the dashboard
/// asks on load, and gets the CSRF token again after a reload.
#[utoipa::path(get, path = "/v1/auth/session", operation_id = "get_session", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = SessionView), (status = 401, body = fabric_core::api::ErrorBody)))]
pub async fn get_session(principal: Principal) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(session_view(
            &principal.user,
            &principal.tenant,
            &principal.scopes,
            &principal.token_hash,
            None,
        )),
    )
}

/// Signs the browser session out: its token is revoked and its cookie removed.
#[utoipa::path(delete, path = "/v1/auth/session", operation_id = "delete_session", tag = "auth", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = fabric_core::api::ErrorBody),
        (status = 403, description = "no X-CSRF-Token (`csrf_failed`)", body = fabric_core::api::ErrorBody)))]
pub async fn delete_session(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    state.auth.logout(&principal).await?;
    tracing::info!(user = %principal.identity.user, "signed out (browser session)");
    Ok((
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            session_cookie("", 0, over_https(&headers)),
        )],
    ))
}
