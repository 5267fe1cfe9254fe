//! The inference gateway's routes (REQUIREMENTS §6): OpenAI-compatible
//! `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`; the fabric's own
//! `POST /v1/llm/infer`; the Ollama API under `/v1/ollama/...` (what a
//! sandbox sidecar forwards an agent's calls to, with the agent's token);
//! the usage ledger `GET /v1/llm/usage`; `GET /v1/llm/status`.
//!
//! Agent tokens and user tokens with `llm:invoke` may call; every response,
//! errors included, carries `X-Fabric-Provider`.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use fabric_core::{AgentId, Scope, Timestamp, UsageQuery, UsageRecord, UsageStore, UsageTotals};
use fabric_gateway::api::{self, Reply};
use fabric_gateway::{CallOptions, Caller, GatewayError};
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{Listing, PageParams};
use crate::llm::{into_response, read_body};
use crate::request_id;
use crate::state::AppState;

/// An [`ApiError`] with `X-Fabric-Provider: none`.
fn refused(e: ApiError) -> Response {
    let mut response = e.into_response();
    response.headers_mut().insert(
        HeaderName::from_static("x-fabric-provider"),
        HeaderValue::from_static(api::NO_PROVIDER),
    );
    response
}

/// Agent tokens may call as their agent; user tokens need `llm:invoke`.
fn authorize(principal: Result<Principal, ApiError>) -> Result<Principal, ApiError> {
    let principal = principal?;
    if principal.agent.is_none() {
        principal.require(Scope::LlmInvoke)?;
    }
    Ok(principal)
}

fn caller(principal: &Principal) -> Caller {
    Caller {
        tenant: principal.tenant.clone(),
        user: principal.user.clone(),
        agent: principal.agent.clone(),
        request_id: request_id::current(),
    }
}

/// Options of a call arriving now, with the `X-Fabric-Policy` override.
fn options(api_name: &'static str, headers: &HeaderMap) -> Result<CallOptions, GatewayError> {
    let header = headers
        .get(api::POLICY_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    api::parse_policy(header).map(|policy| CallOptions::new(api_name).with_policy(policy))
}

/// Authorizes, reads the body (413 over the limit), builds the call.
async fn prepare(
    state: &AppState,
    principal: Result<Principal, ApiError>,
    api_name: &'static str,
    request: Request,
) -> Result<
    (
        Caller,
        CallOptions,
        axum::http::request::Parts,
        bytes::Bytes,
    ),
    Response,
> {
    let principal = authorize(principal).map_err(refused)?;
    let caller = caller(&principal);
    let opts = options(api_name, request.headers())
        .map_err(|e| into_response(Reply::error(&e, &caller.request_id)))?;
    let limit = state.llm.gateway.max_body_bytes();
    let (parts, body) = read_body(request, limit, &caller.request_id).await?;
    // Policy enforcement point `llm:<model>`, before the gateway is called.
    let actor = match &principal.agent {
        Some(agent) => crate::policy::Actor::agent(
            principal.tenant.clone(),
            agent.clone(),
            state.agents.workspace_of(agent),
        ),
        None => crate::policy::Actor {
            tenant: principal.tenant.clone(),
            name: principal.user.clone(),
            agent: None,
            workspace: None,
        },
    };
    if let Some(refusal) =
        crate::policy::check_llm(&state.policy, &actor, &body, &caller.request_id)
    {
        return Err(into_response(refusal));
    }
    Ok((caller, opts, parts, body))
}

/// OpenAI-compatible chat completions (SSE when `stream: true`).
#[utoipa::path(post, path = "/v1/chat/completions", tag = "inference", security(("bearer" = [])),
    request_body(content = Object, description = "OpenAI chat completion request"),
    responses((status = 200, description = "chat.completion, or SSE chat.completion.chunk events"),
        (status = 400, body = fabric_core::api::ErrorBody), (status = 413, body = fabric_core::api::ErrorBody),
        (status = 502, body = fabric_core::api::ErrorBody), (status = 503, body = fabric_core::api::ErrorBody),
        (status = 504, body = fabric_core::api::ErrorBody)))]
pub async fn chat_completions(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    request: Request,
) -> Response {
    match prepare(&state, principal, "openai", request).await {
        Ok((caller, opts, _, body)) => into_response(
            api::openai::chat_completions(&state.llm.gateway, &caller, opts, &body).await,
        ),
        Err(r) => r,
    }
}

/// OpenAI-compatible embeddings.
#[utoipa::path(post, path = "/v1/embeddings", tag = "inference", security(("bearer" = [])),
    request_body(content = Object, description = "OpenAI embeddings request"),
    responses((status = 200, description = "list of embeddings"), (status = 400, body = fabric_core::api::ErrorBody)))]
pub async fn embeddings(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    request: Request,
) -> Response {
    match prepare(&state, principal, "openai", request).await {
        Ok((caller, opts, _, body)) => {
            into_response(api::openai::embeddings(&state.llm.gateway, &caller, opts, &body).await)
        }
        Err(r) => r,
    }
}

/// Models the gateway can route (OpenAI format).
#[utoipa::path(get, path = "/v1/models", tag = "inference", security(("bearer" = [])),
    responses((status = 200, description = "OpenAI model list")))]
pub async fn models(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
) -> Response {
    if let Err(e) = authorize(principal) {
        return refused(e);
    }
    into_response(api::openai::models(&state.llm.gateway).await)
}

/// `{model, input, params, policyOverride?, stream?}`: final JSON, or SSE
/// `delta`/`done`/`error` events.
#[utoipa::path(post, path = "/v1/llm/infer", tag = "inference", security(("bearer" = [])),
    request_body(content = Object, description = "{model, input: string | [{role, content}], params?: {temperature, top_p, max_tokens, stop, seed}, policyOverride?: \"local\" | \"cloud\" | provider | list, stream?: bool}"),
    responses((status = 200, description = "{id, provider, model, requestedModel, output, finishReason, usage, fallback, attempts, latencyMs}, or SSE"),
        (status = 400, body = fabric_core::api::ErrorBody), (status = 403, body = fabric_core::api::ErrorBody),
        (status = 404, body = fabric_core::api::ErrorBody), (status = 413, body = fabric_core::api::ErrorBody),
        (status = 429, body = fabric_core::api::ErrorBody), (status = 502, body = fabric_core::api::ErrorBody),
        (status = 503, body = fabric_core::api::ErrorBody), (status = 504, body = fabric_core::api::ErrorBody)))]
pub async fn infer(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    request: Request,
) -> Response {
    match prepare(&state, principal, "infer", request).await {
        Ok((caller, opts, _, body)) => {
            into_response(api::infer::infer(&state.llm.gateway, &caller, opts, &body).await)
        }
        Err(r) => r,
    }
}

/// The Ollama API (`/v1/ollama/api/chat`, ...), as the caller's identity.
pub async fn ollama(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    request: Request,
) -> Response {
    let path = request
        .uri()
        .path()
        .strip_prefix("/v1/ollama")
        .unwrap_or("/")
        .to_owned();
    let method = request.method().as_str().to_owned();
    match prepare(&state, principal, "ollama", request).await {
        Ok((caller, opts, _, body)) => into_response(
            api::ollama::handle(&state.llm.gateway, &caller, opts, &method, &path, &body).await,
        ),
        Err(r) => r,
    }
}

/// `GET /v1/llm/usage` filters. Agent tokens see their agent only, users
/// without `admin` their own calls only; everyone stays in their tenant.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    pub agent: Option<AgentId>,
    pub user: Option<String>,
    /// RFC 3339; inclusive.
    #[param(value_type = Option<String>)]
    pub since: Option<Timestamp>,
    /// RFC 3339; exclusive.
    #[param(value_type = Option<String>)]
    pub until: Option<Timestamp>,
}

/// Usage records (newest first; a page of them) and the totals of every
/// record the filters select.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub records: Vec<UsageRecord>,
    pub totals: UsageTotals,
    /// Pass as `?cursor=` for the next page of records; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The usage ledger: raw records and totals, per agent, user or tenant.
#[utoipa::path(get, path = "/v1/llm/usage", tag = "inference", security(("bearer" = [])), params(UsageParams, PageParams),
    responses((status = 200, body = UsageReport), (status = 400, body = fabric_core::api::ErrorBody), (status = 403, body = fabric_core::api::ErrorBody)))]
pub async fn usage(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    Listing {
        page,
        filters: params,
    }: Listing<UsageParams>,
) -> Result<Json<UsageReport>, ApiError> {
    let principal = principal?;
    let mut query = UsageQuery {
        tenant: Some(principal.tenant.clone()),
        agent: params.agent,
        user: params.user,
        since: params.since,
        until: params.until,
        before: page.cursor()?,
        limit: page.limit,
    };
    if let Some(agent) = &principal.agent {
        query.agent = Some(agent.clone());
    } else if !Scope::Admin.granted_by(&principal.scopes) {
        principal.require(Scope::LlmInvoke)?;
        query.user = Some(principal.user.clone());
    }
    let records = state.llm.store.list_usage(query.clone());
    let totals = state.llm.store.usage_totals(query);
    let records = records.await?;
    let next_cursor = page.next(&records, |r| r.id);
    Ok(Json(UsageReport {
        records,
        totals: totals.await?,
        next_cursor,
    }))
}

/// Providers (breaker state), routing policy and the gateway's counters.
#[utoipa::path(get, path = "/v1/llm/status", tag = "inference", security(("bearer" = [])),
    responses((status = 200, description = "{providers, metrics}"), (status = 403, body = fabric_core::api::ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
) -> Response {
    if let Err(e) = authorize(principal) {
        return refused(e);
    }
    Json(serde_json::json!({
        "providers": state.llm.gateway.providers(),
        "metrics": state.llm.gateway.metrics(),
    }))
    .into_response()
}
