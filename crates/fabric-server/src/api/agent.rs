//! `/v1/agent/...`: the agent protocol (docs/AGENT_PROTOCOL.md). Only agent
//! tokens get in, and each acts only as its own agent.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fabric_core::api::{
    AgentEvents, CompleteRequest, HeartbeatResponse, LeaseResponse, TaskHeartbeat, TokenResponse,
};
use fabric_core::{AgentId, EventKind, Task, TaskId, TaskStatus};
use fabric_engine::{Completion, SchedulerError};
use serde::Deserialize;
use serde_json::json;

use super::task_id;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::services::agents::AGENT_TOKEN_TTL;
use crate::services::auth::Principal;
use crate::services::tasks::TaskError;
use crate::state::AppState;

/// Longest long poll of `lease`.
const MAX_WAIT_SECS: f64 = 60.0;
/// Log lines per events call.
const MAX_LOG_LINES: usize = 1000;

/// The calling agent, from an agent token; counts as a sign of life.
fn calling_agent(state: &AppState, principal: &Principal) -> Result<AgentId, ApiError> {
    let Some(agent) = principal.agent.clone() else {
        return Err(ApiError::forbidden(
            "only agent tokens can use /v1/agent/...: agents get theirs as FABRIC_TOKEN",
        ));
    };
    state.agents.touch(&agent);
    Ok(agent)
}

/// A task the agent may act on: its own, and live. One of its own that
/// already finished is a lost lease (409 `stale_lease`); any other is 404.
async fn own_task(state: &AppState, agent: &AgentId, id: TaskId) -> Result<Task, ApiError> {
    if let Some(task) = state.tasks.live(&id) {
        if &task.agent_id == agent {
            return Ok(task);
        }
        return Err(TaskError::NotFound(id).into());
    }
    match state.tasks.get_any(id).await {
        Ok(task) if &task.agent_id == agent => Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale_lease",
            format!(
                "task {id} already finished ({}): stop working on it",
                task.status
            ),
        )),
        Ok(_) => Err(TaskError::NotFound(id).into()),
        Err(e) => Err(e.into()),
    }
}

fn stale(e: fabric_engine::SchedulerError) -> ApiError {
    match e {
        fabric_engine::SchedulerError::StaleLease { .. }
        | fabric_engine::SchedulerError::AlreadyFinished { .. }
        | fabric_engine::SchedulerError::UnknownTask(_) => ApiError::new(
            StatusCode::CONFLICT,
            "stale_lease",
            format!(
                "{e}: the task was canceled, timed out or given to another attempt; stop working on it"
            ),
        ),
        other => other.into(),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LeaseParams {
    /// Seconds to wait for a task (0 to 60, default 30).
    wait: Option<f64>,
}

/// Leases the agent's next task, waiting up to `wait` seconds for one.
#[utoipa::path(post, path = "/v1/agent/lease", operation_id = "agent_lease", tag = "agent protocol", security(("bearer" = [])), params(LeaseParams),
    responses(
        (status = 200, body = LeaseResponse), (status = 204, description = "nothing within `wait`"),
        (status = 409, description = "agent_draining: finish held tasks and exit", body = fabric_core::api::ErrorBody),
    ))]
pub async fn lease(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<LeaseParams>,
) -> Result<Response, ApiError> {
    let agent = calling_agent(&state, &principal)?;
    let wait = params.wait.unwrap_or(30.0);
    if !(wait.is_finite() && (0.0..=MAX_WAIT_SECS).contains(&wait)) {
        return Err(ApiError::bad_request(format!(
            "'wait' must be between 0 and {MAX_WAIT_SECS} seconds"
        )));
    }
    let mut gate = state.agents.lease_gate(&agent)?;
    let shutdown = state.shutdown.clone();
    let lease = tokio::select! {
        lease = state.tasks.lease_within(&agent, Duration::from_secs_f64(wait)) => lease?,
        // Draining began while waiting: no task, and say so.
        _ = gate.wait_for(|may| !may) => return Err(state.agents.draining_error(&agent).into()),
        // The server is stopping: answer now, so its graceful shutdown is not held up.
        () = shutdown.cancelled() => return Err(ApiError::unavailable("the fabric is shutting down; retry shortly")),
    };
    state.agents.touch(&agent);
    let Some(lease) = lease else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let expires = lease.expires_at;
    tracing::info!(task_id = %lease.task.id, agent_id = %agent, attempt = lease.task.attempt, "task leased");
    // The agent parents its work on this attempt's execution span (or the
    // task's own trace context when tracing is off): see AGENT_PROTOCOL.md.
    let mut task = lease.task;
    task.traceparent = state.tasks.traceparent_of(&task);
    Ok(Json(LeaseResponse {
        epoch: lease.epoch,
        lease_expires_at: expires,
        task,
    })
    .into_response())
}

/// Renews the lease of a running task.
#[utoipa::path(post, path = "/v1/agent/tasks/{id}/heartbeat", operation_id = "agent_task_heartbeat", tag = "agent protocol", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "task id")), request_body = TaskHeartbeat,
    responses((status = 200, body = HeartbeatResponse), (status = 409, description = "stale_lease", body = fabric_core::api::ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TaskHeartbeat>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let agent = calling_agent(&state, &principal)?;
    let id = task_id(&id)?;
    own_task(&state, &agent, id).await?;
    let expires = state.tasks.heartbeat(&id, body.epoch).map_err(stale)?;
    Ok(Json(HeartbeatResponse {
        lease_expires_at: expires,
    }))
}

/// Log lines of a running task (also renews its lease).
#[utoipa::path(post, path = "/v1/agent/tasks/{id}/events", operation_id = "agent_task_events", tag = "agent protocol", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "task id")), request_body = AgentEvents,
    responses((status = 204), (status = 409, description = "stale_lease", body = fabric_core::api::ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AgentEvents>,
) -> Result<StatusCode, ApiError> {
    let agent = calling_agent(&state, &principal)?;
    let id = task_id(&id)?;
    own_task(&state, &agent, id).await?;
    if body.logs.len() > MAX_LOG_LINES {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_LOG_LINES} log lines per call"
        )));
    }
    state.tasks.heartbeat(&id, body.epoch).map_err(stale)?;
    let now = state.tasks.now();
    for line in body.logs {
        state.tasks.events().emit(
            id,
            EventKind::Log,
            now,
            json!({"stream": line.stream, "line": line.line}),
        );
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Ends an attempt: `completed` or `failed`. Answered once durable.
#[utoipa::path(post, path = "/v1/agent/tasks/{id}/complete", operation_id = "agent_complete_task", tag = "agent protocol", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "task id")), request_body = CompleteRequest,
    responses((status = 200, body = Task), (status = 400, body = fabric_core::api::ErrorBody), (status = 409, description = "stale_lease", body = fabric_core::api::ErrorBody)))]
pub async fn complete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CompleteRequest>,
) -> Result<Json<Task>, ApiError> {
    let agent = calling_agent(&state, &principal)?;
    let id = task_id(&id)?;
    own_task(&state, &agent, id).await?;
    if !matches!(body.status, TaskStatus::Completed | TaskStatus::Failed) {
        return Err(ApiError::bad_request(format!(
            "'status' must be completed or failed, not {}",
            body.status
        )));
    }
    if body.reason.as_ref().is_some_and(|r| r.len() > 200) {
        return Err(ApiError::bad_request("'reason' is limited to 200 bytes"));
    }
    let completion = Completion {
        status: body.status,
        reason: body.reason.or_else(|| {
            (body.status == TaskStatus::Failed)
                .then(|| fabric_core::reason::AGENT_FAILED.to_owned())
        }),
        result: body.result,
    };
    let commit = state
        .tasks
        .complete(&id, body.epoch, completion)
        .map_err(|e| match e {
            TaskError::Scheduler(
                e @ (SchedulerError::StaleLease { .. }
                | SchedulerError::AlreadyFinished { .. }
                | SchedulerError::Duplicate(_)),
            ) => ApiError::new(StatusCode::CONFLICT, "stale_lease", e.to_string()),
            other => other.into(),
        })?;
    commit.await?;
    state.agents.task_done(&agent);
    tracing::info!(task_id = %id, agent_id = %agent, outcome = %body.status, "task completed by agent");
    let task = state.tasks.get_any(id).await?;
    Ok(Json(task))
}

/// Agent-level liveness, for an agent with nothing to do.
#[utoipa::path(post, path = "/v1/agent/heartbeat", operation_id = "agent_heartbeat", tag = "agent protocol", security(("bearer" = [])),
    responses((status = 200, description = "noted")))]
pub async fn agent_heartbeat(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    calling_agent(&state, &principal)?;
    Ok(Json(json!({})))
}

/// A fresh token for the calling agent (the old one lives until it expires).
#[utoipa::path(post, path = "/v1/agent/token", operation_id = "agent_renew_token", tag = "agent protocol", security(("bearer" = [])),
    responses((status = 200, body = TokenResponse)))]
pub async fn renew_token(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<TokenResponse>, ApiError> {
    let agent = calling_agent(&state, &principal)?;
    let (secret, token) =
        state
            .auth
            .issue_agent_token(&agent, &principal.tenant, &principal.user, AGENT_TOKEN_TTL);
    Ok(Json(TokenResponse::issued(secret, token)))
}
