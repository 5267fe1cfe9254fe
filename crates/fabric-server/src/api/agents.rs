//! `/v1/agents`: spawn, list, inspect and terminate agents (FR-LIFE).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use fabric_core::agent::{Agent, AgentConfig};
use fabric_core::api::{AgentList, AgentLogs, SessionList};
use fabric_core::{AgentId, Scope};
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Listing, NoFilters, NumberPageParams, PageParams};
use crate::services::agents::MAX_DRAIN_TIMEOUT;
use crate::services::auth::Principal;
use crate::state::AppState;

fn agent_id(raw: &str) -> Result<AgentId, ApiError> {
    AgentId::new(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Agent tokens manage nothing: they are for `/v1/agent/...`.
fn user_only(principal: &Principal) -> Result<(), ApiError> {
    if principal.agent.is_some() {
        return Err(ApiError::forbidden(
            "agent tokens can only use /v1/agent/...: use a user's token",
        ));
    }
    Ok(())
}

/// Spawns an agent (REQUIREMENTS §5 config). Answers once its first session
/// runs. The config may also be sent as TOML (`Content-Type:
/// application/toml`), as an agent file is written.
#[utoipa::path(post, path = "/v1/agents", operation_id = "spawn_agent", tag = "agents", security(("bearer" = [])), request_body = AgentConfig,
    responses(
        (status = 201, description = "spawned", body = Agent),
        (status = 400, description = "invalid config", body = fabric_core::api::ErrorBody),
        (status = 403, body = fabric_core::api::ErrorBody),
        (status = 409, description = "an agent with this id is running", body = fabric_core::api::ErrorBody),
        (status = 500, description = "it could not start (spawn_failed)", body = fabric_core::api::ErrorBody),
    ))]
pub async fn spawn(
    State(state): State<AppState>,
    principal: Principal,
    request: axum::extract::Request,
) -> Result<(StatusCode, Json<Agent>), ApiError> {
    user_only(&principal)?;
    let config = agent_config(request, &state).await?;
    // An admin, or a tenant-admin for its own tenant (the agent is the
    // caller's tenant's).
    principal.require(Scope::TenantAdmin)?;
    // The config's `budget{...}` becomes the agent's budget before it can
    // make a call (an agent spawned without limits keeps any budget set
    // through /v1/budgets).
    let budget = &config.budget;
    if budget.max_tokens_per_day.is_some()
        || budget.max_compute_seconds_per_day.is_some()
        || budget.max_cost_per_day_usd.is_some()
    {
        let spec = fabric_core::BudgetSpec::from(budget);
        spec.validate()
            .map_err(|e| ApiError::bad_request(format!("budget: {e}")))?;
        state
            .budgets
            .put(fabric_core::BudgetEntity::Agent(config.id.clone()), spec)
            .await?;
    }
    let agent = state.agents.spawn(config, &principal).await?;
    tracing::info!(agent_id = %agent.config.id, isolation = %agent.config.isolation.level, "agent spawned");
    state
        .policy
        .record_admin(&principal, "agent:spawn", agent.config.id.as_str());
    Ok((StatusCode::CREATED, Json(agent)))
}

/// The agents, by id.
#[utoipa::path(get, path = "/v1/agents", operation_id = "list_agents", tag = "agents", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = AgentList), (status = 400, body = fabric_core::api::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Listing { page, .. }: Listing<NoFilters>,
) -> Result<Json<AgentList>, ApiError> {
    user_only(&principal)?;
    principal.require(Scope::ReadTasks)?;
    let (agents, next_cursor) =
        page.slice(state.agents.list_for(&principal), |a| a.config.id.clone());
    Ok(Json(AgentList {
        agents,
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/agents/{id}", operation_id = "get_agent", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description = "agent id")),
    responses((status = 200, body = Agent), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    user_only(&principal)?;
    principal.require(Scope::ReadTasks)?;
    Ok(Json(state.agents.get(&agent_id(&id)?, &principal).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TerminateParams {
    /// Seconds in-flight tasks may take to finish before they are requeued (default 30).
    #[param(minimum = 0, maximum = 3600)]
    drain_timeout: Option<f64>,
}

/// Terminates an agent (FR-LIFE-4): it leases nothing more, its in-flight
/// tasks get `drain_timeout` seconds, then it is stopped and what is left is
/// requeued (`drain_timeout`). Answers once it has stopped.
#[utoipa::path(delete, path = "/v1/agents/{id}", operation_id = "terminate_agent", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description = "agent id"), TerminateParams),
    responses((status = 200, body = Agent), (status = 404, body = fabric_core::api::ErrorBody), (status = 409, body = fabric_core::api::ErrorBody)))]
pub async fn terminate(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<TerminateParams>,
) -> Result<Json<Agent>, ApiError> {
    user_only(&principal)?;
    principal.require(Scope::TenantAdmin)?;
    let drain = drain_timeout(params.drain_timeout)?;
    let agent = state
        .agents
        .terminate(&agent_id(&id)?, &principal, drain)
        .await?;
    tracing::info!(agent_id = %agent.config.id, "agent terminated");
    state
        .policy
        .record_admin(&principal, "agent:terminate", agent.config.id.as_str());
    Ok(Json(agent))
}

/// Restarts an agent: stops it as terminate does (if it runs), then starts a
/// new session with its stored config. Answers once it runs.
#[utoipa::path(post, path = "/v1/agents/{id}/restart", operation_id = "restart_agent", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description = "agent id"), TerminateParams),
    responses((status = 200, body = Agent), (status = 400, body = fabric_core::api::ErrorBody), (status = 404, body = fabric_core::api::ErrorBody), (status = 409, body = fabric_core::api::ErrorBody)))]
pub async fn restart(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<TerminateParams>,
) -> Result<Json<Agent>, ApiError> {
    user_only(&principal)?;
    principal.require(Scope::TenantAdmin)?;
    let drain = drain_timeout(params.drain_timeout)?;
    let agent = state
        .agents
        .restart(&agent_id(&id)?, &principal, drain)
        .await?;
    tracing::info!(agent_id = %agent.config.id, session = agent.session, "agent restarted");
    state
        .policy
        .record_admin(&principal, "agent:restart", agent.config.id.as_str());
    Ok(Json(agent))
}

/// `drain_timeout` of terminate and restart: 30 s when absent.
fn drain_timeout(secs: Option<f64>) -> Result<Duration, ApiError> {
    let secs = secs.unwrap_or(30.0);
    if !(secs.is_finite() && secs >= 0.0 && secs <= MAX_DRAIN_TIMEOUT.as_secs_f64()) {
        return Err(ApiError::bad_request(format!(
            "'drain_timeout' must be between 0 and {} seconds",
            MAX_DRAIN_TIMEOUT.as_secs()
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The body of a spawn: JSON (the documented form), or the same config as
/// TOML when the content type says so (what the dashboard's paste box and
/// agent files hold).
async fn agent_config(
    request: axum::extract::Request,
    state: &AppState,
) -> Result<AgentConfig, ApiError> {
    use axum::extract::FromRequest as _;
    let toml = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim().starts_with("application/toml"));
    if !toml {
        return ApiJson::<AgentConfig>::from_request(request, state)
            .await
            .map(|ApiJson(config)| config);
    }
    let body = axum::body::to_bytes(request.into_body(), crate::api::MAX_BODY_BYTES)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the TOML body is not UTF-8"))?;
    toml::from_str::<AgentConfig>(text)
        .map_err(|e| ApiError::bad_request(format!("invalid TOML body: {e}")))
}

/// `?tail=` of `GET /v1/agents/{id}/logs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsParams {
    /// How many of the last lines (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    tail: Option<usize>,
    /// Keep the answer open and send lines as they are written: a
    /// `text/event-stream` of `line` events (each a ProgramLogLine), the
    /// last `tail` first.
    follow: Option<bool>,
}

/// The last lines the agent's program wrote on stdout and stderr, oldest
/// first, across its sessions (1,000 per agent in memory, more in a
/// size-capped file that survives restarts; a container agent's come from
/// Docker's log). With `follow=true`, a server-sent event stream that goes
/// on with the lines as they are written.
#[utoipa::path(get, path = "/v1/agents/{id}/logs", operation_id = "agent_logs", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description = "agent id"), LogsParams),
    responses((status = 200, description = "the lines; with follow=true a text/event-stream of `line` events, each one ProgramLogLine",
            content((AgentLogs = "application/json"), (crate::api::llm::SseEvent = "text/event-stream"))),
        (status = 400, body = fabric_core::api::ErrorBody), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<LogsParams>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    user_only(&principal)?;
    principal.require(Scope::ReadTasks)?;
    let tail = params.tail.unwrap_or(100);
    if !(1..=crate::services::agents::logs::KEPT_LINES).contains(&tail) {
        return Err(ApiError::bad_request(format!(
            "'tail' must be between 1 and {}",
            crate::services::agents::logs::KEPT_LINES
        )));
    }
    let id = agent_id(&id)?;
    if params.follow != Some(true) {
        let lines = state.agents.logs(&id, &principal, tail).await?;
        return Ok(Json(AgentLogs { lines }).into_response());
    }
    let (lines, live) = state.agents.follow_logs(&id, &principal, tail).await?;
    Ok(follow_stream(id, lines, live).into_response())
}

/// The SSE answer of `logs?follow=true`: the tail, then this agent's live
/// lines; a follower too slow for the feed is told so and the stream ends
/// (it reconnects and gets the tail again).
fn follow_stream(
    id: fabric_core::AgentId,
    lines: Vec<fabric_core::api::ProgramLogLine>,
    live: tokio::sync::broadcast::Receiver<(
        fabric_core::AgentId,
        fabric_core::api::ProgramLogLine,
    )>,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt as _;
    use tokio::sync::broadcast::error::RecvError;
    let event = |line: &fabric_core::api::ProgramLogLine| {
        Ok(Event::default()
            .event("line")
            .json_data(line)
            .unwrap_or_else(|_| Event::default().comment("unencodable line")))
    };
    let history = futures_util::stream::iter(lines.iter().map(event).collect::<Vec<_>>());
    let live = futures_util::stream::unfold(Some(live), move |receiver| {
        let id = id.clone();
        async move {
            let mut receiver = receiver?;
            loop {
                match receiver.recv().await {
                    Ok((agent, line)) if agent == id => {
                        return Some((event(&line), Some(receiver)));
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        let said = Event::default()
                            .event("lagged")
                            .data(format!("{missed} lines were missed: reconnect to read on"));
                        return Some((Ok(said), None));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    Sse::new(history.chain(live)).keep_alive(KeepAlive::default())
}

/// Removes a stopped agent: its record and session history (the id is free
/// again); 409 while it runs (terminate it first).
#[utoipa::path(post, path = "/v1/agents/{id}/remove", operation_id = "remove_agent", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description = "agent id")),
    responses((status = 204, description = "removed"), (status = 400, body = fabric_core::api::ErrorBody), (status = 404, body = fabric_core::api::ErrorBody), (status = 409, body = fabric_core::api::ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    user_only(&principal)?;
    principal.require(Scope::TenantAdmin)?;
    let id = agent_id(&id)?;
    state.agents.remove(&id, &principal).await?;
    tracing::info!(agent_id = %id, "agent removed");
    state
        .policy
        .record_admin(&principal, "agent:remove", id.as_str());
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Each run of the agent, newest first: start, end, exit reason, tasks done
/// (FR-LIFE-5). The cursor is a session number: the sessions before it.
#[utoipa::path(get, path = "/v1/agents/{id}/sessions", operation_id = "list_agent_sessions", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description = "agent id"), NumberPageParams),
    responses((status = 200, body = SessionList), (status = 400, body = fabric_core::api::ErrorBody), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn sessions(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Listing { page, .. }: Listing<NoFilters>,
) -> Result<Json<SessionList>, ApiError> {
    user_only(&principal)?;
    principal.require(Scope::ReadTasks)?;
    let sessions = state
        .agents
        .sessions(&agent_id(&id)?, &principal, page.cursor()?, page.limit)
        .await?;
    let next_cursor = page.next(&sessions, |s| s.session);
    Ok(Json(SessionList {
        sessions,
        next_cursor,
    }))
}
