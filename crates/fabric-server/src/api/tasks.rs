//! `/v1/tasks` and its `/v1/jobs` aliases (jobs are tasks).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use fabric_core::api::{
    CreateTaskRequest, DeletedTasks, EventList, IDEMPOTENCY_KEY_HEADER, PruneTasksRequest,
    TaskList, TaskResultView,
};
use fabric_core::{AgentId, Scope, Task, TaskQuery, TaskStatus, Timestamp};
use serde::Deserialize;

use super::task_id;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Listing, NoFilters, NumberPageParams, UuidPageParams};
use crate::services::auth::Principal;
use crate::state::AppState;

/// Creates a task. With an `Idempotency-Key` header, a retry returns the task
/// the first call created (200 instead of 201).
#[utoipa::path(post, path = "/v1/tasks", operation_id = "create_task", tag = "tasks", security(("bearer" = [])), request_body = CreateTaskRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes the create safe to retry")),
    responses(
        (status = 201, description = "created", body = Task),
        (status = 200, description = "idempotent replay: the existing task", body = Task),
        (status = 400, body = fabric_core::api::ErrorBody), (status = 401, body = fabric_core::api::ErrorBody),
        (status = 403, description = "missing scope, or policy_denied / approval_required by a policy", body = fabric_core::api::ErrorBody), (status = 404, description = "agent not found", body = fabric_core::api::ErrorBody),
        (status = 413, body = fabric_core::api::ErrorBody), (status = 429, description = "agent queue full", body = fabric_core::api::ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateTaskRequest>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    principal.require(Scope::WriteTasks)?;
    let key = match headers.get(IDEMPOTENCY_KEY_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::bad_request("the Idempotency-Key header must be printable ASCII")
                })?
                .to_owned(),
        ),
    };
    let (task, created) = state.tasks.create(&principal, req, key).await?;
    tracing::info!(task_id = %task.id, agent_id = %task.agent_id, status = %task.status, created, "task created");
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(task),
    ))
}

/// `POST /v1/jobs`: the same as `POST /v1/tasks`.
#[utoipa::path(post, path = "/v1/jobs", operation_id = "create_job", tag = "tasks", security(("bearer" = [])), request_body = CreateTaskRequest,
    responses((status = 201, body = Task), (status = 200, body = Task)))]
pub async fn create_job(
    state: State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: ApiJson<CreateTaskRequest>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    create(state, principal, headers, body).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only tasks in this status.
    #[param(value_type = Option<TaskStatus>)]
    status: Option<String>,
    /// Only tasks of this agent.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    agent: Option<String>,
    /// Only tasks of this priority.
    #[param(value_type = Option<fabric_core::Priority>)]
    priority: Option<String>,
    /// Only tasks whose name, prompt or a command contains this text (ASCII
    /// case ignored; no index serves it, so it reads the tasks the other
    /// filters leave until a page is full).
    #[param(min_length = 1, max_length = 200)]
    q: Option<String>,
}

/// The `agent` filter of a task query (400 when it is no agent id).
fn agent_filter(raw: Option<&str>) -> Result<Option<AgentId>, ApiError> {
    raw.map(str::parse::<AgentId>)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Longest `q` of a task search.
const MAX_SEARCH: usize = 200;

/// Lists the caller's tenant's tasks, newest first.
#[utoipa::path(get, path = "/v1/tasks", operation_id = "list_tasks", tag = "tasks", security(("bearer" = [])), params(ListParams, UuidPageParams),
    responses((status = 200, body = TaskList), (status = 400, body = fabric_core::api::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Listing {
        page,
        filters: params,
    }: Listing<ListParams>,
) -> Result<Json<TaskList>, ApiError> {
    principal.require(Scope::ReadTasks)?;
    let limit = page.limit;
    let query = TaskQuery {
        tenant: None,
        status: params
            .status
            .as_deref()
            .map(str::parse::<TaskStatus>)
            .transpose()
            .map_err(ApiError::bad_request)?,
        agent_id: agent_filter(params.agent.as_deref())?,
        priority: params
            .priority
            .as_deref()
            .map(|p| {
                fabric_core::Priority::ALL
                    .into_iter()
                    .find(|known| known.as_str() == p)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "unknown priority {p:?}: use critical, high, normal or low"
                        ))
                    })
            })
            .transpose()?,
        text: match params.q {
            Some(q) if q.is_empty() || q.chars().count() > MAX_SEARCH => {
                return Err(ApiError::bad_request(format!(
                    "'q' must be 1 to {MAX_SEARCH} characters: leave it out to list every task"
                )));
            }
            q => q,
        },
        before: page.cursor()?,
        limit,
    };
    let tasks = state.tasks.list(&principal.tenant, query).await?;
    let next_cursor = (tasks.len() == limit)
        .then(|| tasks.last().map(|t| t.id))
        .flatten();
    Ok(Json(TaskList { tasks, next_cursor }))
}

/// `?agent=` of `GET /v1/tasks/counts`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CountParams {
    /// Only tasks of this agent.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    agent: Option<String>,
}

/// How many of the caller's tenant's tasks are in each status (the
/// dashboard's overview; statuses with none are left out).
#[utoipa::path(get, path = "/v1/tasks/counts", operation_id = "count_tasks", tag = "tasks", security(("bearer" = [])), params(CountParams),
    responses((status = 200, body = fabric_core::api::TaskCounts), (status = 400, body = fabric_core::api::ErrorBody)))]
pub async fn counts(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<CountParams>,
) -> Result<Json<fabric_core::api::TaskCounts>, ApiError> {
    principal.require(Scope::ReadTasks)?;
    let agent = agent_filter(params.agent.as_deref())?;
    let counts = state.tasks.counts(&principal.tenant, agent).await?;
    let total = counts.values().sum();
    Ok(Json(fabric_core::api::TaskCounts { counts, total }))
}

/// One task.
#[utoipa::path(get, path = "/v1/tasks/{id}", operation_id = "get_task", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, format = Uuid, description = "task id")),
    responses((status = 200, body = Task), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    principal.require(Scope::ReadTasks)?;
    Ok(Json(
        state.tasks.get(&principal.tenant, task_id(&id)?).await?,
    ))
}

/// `GET /v1/jobs/{id}`: the same as `GET /v1/tasks/{id}`.
#[utoipa::path(get, path = "/v1/jobs/{id}", operation_id = "get_job", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, format = Uuid, description = "task id")),
    responses((status = 200, body = Task), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn get_job(
    state: State<AppState>,
    principal: Principal,
    id: Path<String>,
) -> Result<Json<Task>, ApiError> {
    get_one(state, principal, id).await
}

/// A task's status and, once finished, its result.
#[utoipa::path(get, path = "/v1/tasks/{id}/result", operation_id = "get_task_result", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, format = Uuid, description = "task id")),
    responses((status = 200, body = TaskResultView), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn result(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<TaskResultView>, ApiError> {
    principal.require(Scope::ReadTasks)?;
    let task = state.tasks.get(&principal.tenant, task_id(&id)?).await?;
    Ok(Json(TaskResultView {
        id: task.id,
        status: task.status,
        reason: task.reason,
        result: task.result,
    }))
}

/// Cancels a task; 409 when it already finished.
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", operation_id = "cancel_task", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, format = Uuid, description = "task id")),
    responses((status = 200, body = Task), (status = 404, body = fabric_core::api::ErrorBody), (status = 409, body = fabric_core::api::ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    principal.require(Scope::WriteTasks)?;
    let task = state.tasks.cancel(&principal.tenant, task_id(&id)?).await?;
    tracing::info!(task_id = %task.id, "task canceled");
    Ok(Json(task))
}

/// Deletes a finished task with its events; 409 while it has not finished.
#[utoipa::path(delete, path = "/v1/tasks/{id}", operation_id = "delete_task", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, format = Uuid, description = "task id")),
    responses((status = 200, body = DeletedTasks), (status = 400, body = fabric_core::api::ErrorBody), (status = 404, body = fabric_core::api::ErrorBody), (status = 409, description = "the task has not finished: cancel it first", body = fabric_core::api::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<DeletedTasks>, ApiError> {
    principal.require(Scope::WriteTasks)?;
    let id = task_id(&id)?;
    state.tasks.delete(&principal.tenant, id).await?;
    tracing::info!(task_id = %id, "task deleted");
    Ok(Json(DeletedTasks { deleted: 1 }))
}

/// Deletes the caller's tenant's finished tasks created more than
/// `older_than_seconds` ago, with their events.
#[utoipa::path(post, path = "/v1/tasks/prune", operation_id = "prune_tasks", tag = "tasks", security(("bearer" = [])), request_body = PruneTasksRequest,
    responses((status = 200, body = DeletedTasks), (status = 400, body = fabric_core::api::ErrorBody)))]
pub async fn prune(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<PruneTasksRequest>,
) -> Result<Json<DeletedTasks>, ApiError> {
    principal.require(Scope::WriteTasks)?;
    let age = i64::try_from(req.older_than_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    let cutoff = Timestamp::from_millis(state.tasks.now().as_millis().saturating_sub(age));
    let deleted = state.tasks.prune(Some(&principal.tenant), cutoff).await?;
    tracing::info!(
        deleted,
        older_than_seconds = req.older_than_seconds,
        "tasks pruned"
    );
    Ok(Json(DeletedTasks { deleted }))
}

/// A task's history, oldest first: status changes, log lines, its result.
/// The cursor is a sequence number: the events after it.
#[utoipa::path(get, path = "/v1/tasks/{id}/events", operation_id = "list_task_events", tag = "tasks", security(("bearer" = [])), params(("id" = String, Path, format = Uuid, description = "task id"), NumberPageParams),
    responses((status = 200, body = EventList), (status = 400, body = fabric_core::api::ErrorBody), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Listing { page, .. }: Listing<NoFilters>,
) -> Result<Json<EventList>, ApiError> {
    principal.require(Scope::ReadTasks)?;
    let events = state
        .tasks
        .task_events(
            &principal.tenant,
            task_id(&id)?,
            page.cursor::<u64>()?.unwrap_or(0),
            page.limit,
        )
        .await?;
    let next_cursor = page.next(&events, |e| e.seq);
    Ok(Json(EventList {
        events,
        next_cursor,
    }))
}
