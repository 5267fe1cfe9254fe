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
use fabric_gateway::api::{self, FrontEnd, Reply};
use fabric_gateway::{CallOptions, Caller, GatewayError};
use serde::{Deserialize, Serialize};

use super::inference::{into_response, read_body};
use crate::error::ApiError;
use crate::extract::{Listing, UuidPageParams};
use crate::request_id;
use crate::services::auth::Principal;
use crate::state::AppState;

/// One server-sent event of a streamed answer, for the OpenAPI document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SseEvent {
    /// The event's name where it has one (`delta`, `done`, `error` of `/v1/llm/infer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// A JSON document (or `[DONE]`, the end of an OpenAI stream).
    pub data: String,
}

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

fn caller(state: &AppState, principal: &Principal) -> Caller {
    Caller {
        tenant: principal.tenant.clone(),
        user: principal.user.clone(),
        agent: principal.agent.clone(),
        workspace: principal
            .agent
            .as_ref()
            .and_then(|agent| state.agents.workspace_of(agent)),
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

/// Serves a request of one of the gateway's JSON front ends as its caller.
async fn front_end(
    state: &AppState,
    principal: Result<Principal, ApiError>,
    request: Request,
    front: FrontEnd,
) -> Response {
    match prepare(state, principal, front.api(), request).await {
        Ok((caller, opts, _, body)) => {
            into_response(front.call(&state.llm.gateway, &caller, opts, &body).await)
        }
        Err(r) => r,
    }
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
    let caller = caller(state, &principal);
    let opts = options(api_name, request.headers())
        .map_err(|e| into_response(Reply::error(&e, &caller.request_id)))?;
    let limit = state.llm.gateway.max_body_bytes();
    let (parts, body) = read_body(request, limit, &caller.request_id).await?;
    // `llm:<model>` is decided by the gateway's guard once it has parsed the model.
    Ok((caller, opts, parts, body))
}

/// OpenAI-compatible chat completions (SSE when `stream: true`).
#[utoipa::path(post, path = "/v1/chat/completions", operation_id = "chat_completions", tag = "inference", security(("bearer" = [])),
    request_body = fabric_gateway::wire::openai::ChatCompletionRequest, params(("X-Fabric-Policy" = Option<String>, Header, nullable = false, pattern = "^((local|cloud)(,(local|cloud))*)?$", description = "routing for this call: `local`, `cloud`, a provider name of this server's gateway configuration, or a comma-separated list of those; empty is no override")),
    responses((status = 200, description = "a chat.completion, or (`stream: true`) SSE chat.completion.chunk events",
            content((fabric_gateway::wire::openai::ChatCompletion = "application/json"), (SseEvent = "text/event-stream")))))]
pub async fn chat_completions(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    request: Request,
) -> Response {
    front_end(&state, principal, request, FrontEnd::ChatCompletions).await
}

/// Anthropic-compatible Messages API (typed SSE events when `stream: true`);
/// the token may come as `x-api-key`, as Anthropic's clients send it.
#[utoipa::path(post, path = "/v1/messages", operation_id = "anthropic_messages", tag = "inference", security(("bearer" = [])),
    request_body(content = fabric_gateway::wire::docs::MessagesRequestDoc, description = "Anthropic's Messages request: model, max_tokens, messages (text, image, tool_use, tool_result blocks), system, tools, tool_choice, stop_sequences, temperature, top_p, metadata, stream"),
    responses((status = 200, description = "a message, or (`stream: true`) Anthropic's SSE events",
            content((Object = "application/json"), (SseEvent = "text/event-stream")))))]
pub async fn anthropic_messages(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    request: Request,
) -> Response {
    front_end(&state, principal, request, FrontEnd::Messages).await
}

/// OpenAI's Responses API, stateless (the conversation comes whole in `input`).
#[utoipa::path(post, path = "/v1/responses", operation_id = "responses", tag = "inference", security(("bearer" = [])),
    request_body(content = fabric_gateway::wire::docs::ResponsesRequestDoc, description = "OpenAI's Responses request: model, input (a string, or message, function_call and function_call_output items), instructions, tools (function), tool_choice, parallel_tool_calls, text.format, max_output_tokens, temperature, top_p, user, metadata, stream; previous_response_id and store: true are refused (no responses are stored)"),
    responses((status = 200, description = "a response, or (`stream: true`) SSE response.* events",
            content((Object = "application/json"), (SseEvent = "text/event-stream")))))]
pub async fn responses(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    request: Request,
) -> Response {
    front_end(&state, principal, request, FrontEnd::Responses).await
}

/// OpenAI's legacy text completions, answered as a one-message chat.
#[utoipa::path(post, path = "/v1/completions", operation_id = "completions", tag = "inference", security(("bearer" = [])),
    request_body(content = fabric_gateway::wire::docs::CompletionRequestDoc, description = "OpenAI's legacy completion request: model, prompt (one string), max_tokens, temperature, top_p, stop, seed, n (1), presence_penalty, frequency_penalty, user, stream, stream_options"),
    responses((status = 200, description = "a text_completion, or (`stream: true`) SSE text_completion chunks",
            content((Object = "application/json"), (SseEvent = "text/event-stream")))))]
pub async fn completions(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    request: Request,
) -> Response {
    front_end(&state, principal, request, FrontEnd::Completions).await
}

/// OpenAI-compatible embeddings.
#[utoipa::path(post, path = "/v1/embeddings", operation_id = "embeddings", tag = "inference", security(("bearer" = [])),
    request_body = fabric_gateway::wire::openai::EmbeddingRequest, params(("X-Fabric-Policy" = Option<String>, Header, nullable = false, pattern = "^((local|cloud)(,(local|cloud))*)?$", description = "routing for this call: `local`, `cloud`, a provider name of this server's gateway configuration, or a comma-separated list of those; empty is no override")),
    responses((status = 200, body = fabric_gateway::wire::openai::EmbeddingResponse)))]
pub async fn embeddings(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    request: Request,
) -> Response {
    front_end(&state, principal, request, FrontEnd::Embeddings).await
}

/// Models the gateway can route (OpenAI format).
#[utoipa::path(get, path = "/v1/models", operation_id = "list_models", tag = "inference", security(("bearer" = [])),
    responses((status = 200, body = fabric_gateway::wire::openai::ModelList)))]
pub async fn models(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
) -> Response {
    if let Err(e) = authorize(principal) {
        return refused(e);
    }
    into_response(api::openai::models(&state.llm.gateway).await)
}

/// One model the gateway can route (OpenAI format), or 404 `model_not_found`.
#[utoipa::path(get, path = "/v1/models/{id}", operation_id = "get_model", tag = "inference", security(("bearer" = [])),
    params(("id" = String, Path, description = "a model name, as /v1/models lists it")),
    responses((status = 200, body = fabric_gateway::wire::openai::Model), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn model(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if let Err(e) = authorize(principal) {
        return refused(e);
    }
    let request_id = crate::request_id::current();
    into_response(api::openai::model(&state.llm.gateway, &id, &request_id).await)
}

/// `{model, input, params, policyOverride?, stream?}`: final JSON, or SSE
/// `delta`/`done`/`error` events.
#[utoipa::path(post, path = "/v1/llm/infer", operation_id = "infer", tag = "inference", security(("bearer" = [])),
    request_body = fabric_gateway::api::infer::InferRequest, params(("X-Fabric-Policy" = Option<String>, Header, nullable = false, pattern = "^((local|cloud)(,(local|cloud))*)?$", description = "routing for this call: `local`, `cloud`, a provider name of this server's gateway configuration, or a comma-separated list of those; empty is no override")),
    responses((status = 200, description = "the answer, or (`stream: true`) SSE `delta`, `done` and `error` events",
            content((fabric_gateway::api::infer::InferResponse = "application/json"), (SseEvent = "text/event-stream")))))]
pub async fn infer(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    request: Request,
) -> Response {
    front_end(&state, principal, request, FrontEnd::Infer).await
}

/// The request's path below `prefix` (`/` when nothing is left).
fn path_below(request: &Request, prefix: &str) -> String {
    request
        .uri()
        .path()
        .strip_prefix(prefix)
        .filter(|p| !p.is_empty())
        .unwrap_or("/")
        .to_owned()
}

/// The Ollama API (`/v1/ollama/api/chat`, ...), as the caller's identity.
pub async fn ollama(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    request: Request,
) -> Response {
    let path = path_below(&request, "/v1/ollama");
    let method = request.method().as_str().to_owned();
    match prepare(&state, principal, "ollama", request).await {
        Ok((caller, opts, _, body)) => into_response(
            api::ollama::handle(&state.llm.gateway, &caller, opts, &method, &path, &body).await,
        ),
        Err(r) => r,
    }
}

/// `/v1/agent/endpoint/{path}`: an agent's inference endpoint (what its
/// `OLLAMA_BASE_URL` serves: Ollama's API, OpenAI's and Anthropic's under
/// `/v1`, and its MCP server at `/mcp`) over the API, for agents on worker nodes, whose node forwards
/// their `localhost:11434` here with the session's agent token. Agent
/// tokens only: every call is metered against the agent, here, so its
/// budgets stay atomic.
pub async fn agent_endpoint(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    request: Request,
) -> Response {
    let path = path_below(&request, "/v1/agent/endpoint");
    let method = request.method().as_str().to_owned();
    let principal = match principal {
        Ok(p) if p.agent.is_some() => p,
        Ok(_) => {
            return ApiError::forbidden(
                "this is an agent's inference endpoint: call it with the agent's token (users call /v1/ollama, /v1/chat/completions, /v1/messages)",
            )
            .into_response();
        }
        Err(e) => return e.into_response(),
    };
    if path == "/mcp" {
        // The endpoint's MCP server (the agent's `MCP_URL`): the tools its `tools[]` grants.
        let Some(agent) = principal
            .agent
            .as_ref()
            .and_then(|a| state.agents.config_of(a))
        else {
            return ApiError::not_found("this agent is not running: it has no tools")
                .into_response();
        };
        let tools = state
            .mcp
            .agent_tools(crate::services::mcp::AgentCaller::new(
                principal.tenant.clone(),
                agent.id.clone(),
                agent.workspace.clone(),
                &agent.tools,
            ));
        return super::inference::mcp_call(&tools, request).await;
    }
    match prepare(&state, Ok(principal), "ollama", request).await {
        Ok((caller, _, _, body)) => into_response(
            api::agent_endpoint(&state.llm.gateway, &caller, &method, &path, &body).await,
        ),
        Err(r) => r,
    }
}

/// `GET /v1/llm/usage` filters. Agent tokens see their agent only, users
/// without `admin` their own calls only; everyone stays in their tenant.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// Only calls of this agent.
    pub agent: Option<AgentId>,
    /// Only calls of this user (admins; others see their own).
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub user: Option<String>,
    /// RFC 3339; inclusive.
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<Timestamp>,
    /// RFC 3339; exclusive.
    #[param(value_type = Option<String>, format = DateTime)]
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
#[utoipa::path(get, path = "/v1/llm/usage", operation_id = "llm_usage", tag = "inference", security(("bearer" = [])), params(UsageParams, UuidPageParams),
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
    if let Some(user) = &params.user {
        fabric_core::validate_user_name(user).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
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
#[utoipa::path(get, path = "/v1/llm/status", operation_id = "llm_status", tag = "inference", security(("bearer" = [])),
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
