//! Bodies of the HTTP API under `/v1` (REQUIREMENTS §10). The server serves them, the CLI
//! client sends and reads them; neither depends on the other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::auth::{Role, Scope, TokenKind};
use crate::ids::{AgentId, TaskId, TenantId};
use crate::task::{EventKind, Priority, Task, TaskFile, TaskResult, TaskStatus};
use crate::time::Timestamp;

/// Header that makes task creation safe to retry.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";
/// Header carrying the id of a request, in every response and error body.
pub const REQUEST_ID_HEADER: &str = "X-Request-Id";

/// `POST /v1/tasks` (and `/v1/jobs`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTaskRequest {
    /// Agent that runs it; the built-in `shell` agent when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<TaskFile>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<TaskId>,
    /// Longest one attempt may run, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
    /// How often the task is tried when its agent loses the lease (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

/// The paging contract of every list endpoint. A request takes `?limit=`
/// (an integer from 1 to [`PAGE_MAX_LIMIT`], default [`PAGE_DEFAULT_LIMIT`])
/// and `?cursor=` (the `next_cursor` of the previous answer, opaque); the
/// answer carries `next_cursor` while there may be more, and none on the
/// last page. Any other value of either is a 400 `invalid_request`.
pub const PAGE_DEFAULT_LIMIT: usize = 100;
/// The largest `?limit=` of a list endpoint; see [`PAGE_DEFAULT_LIMIT`].
pub const PAGE_MAX_LIMIT: usize = 1000;

/// `GET /v1/tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskList {
    pub tasks: Vec<Task>,
    /// Pass as `?cursor=` to get the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<TaskId>,
}

/// `GET /v1/tasks/counts`: how many of the caller's tenant's tasks are in
/// each status (statuses with none are left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskCounts {
    #[cfg_attr(feature = "openapi", schema(value_type = std::collections::BTreeMap<String, u64>))]
    pub counts: std::collections::BTreeMap<crate::TaskStatus, u64>,
    pub total: u64,
}

/// `GET /v1/tasks/{id}/result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskResultView {
    pub id: TaskId,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Present once the task is terminal and its agent reported a result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
}

/// `POST /v1/tasks/prune`: delete finished tasks created before a moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PruneTasksRequest {
    /// Finished tasks created more than this many seconds ago are deleted,
    /// with their events (0: every finished task).
    pub older_than_seconds: u64,
}

/// What `DELETE /v1/tasks/{id}` and `POST /v1/tasks/prune` deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeletedTasks {
    /// How many tasks were deleted (with their events).
    pub deleted: u64,
}

/// `GET /v1/tasks/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventList {
    pub events: Vec<crate::task::TaskEvent>,
    /// Pass as `?cursor=` for the events after these; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One WebSocket message on `/v1/stream/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamMessage {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub ts: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: serde_json::Value,
    /// Event sequence number (absent on heartbeats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// `POST /v1/auth/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// A freshly issued bearer token (login or `POST /v1/auth/tokens`). Shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenResponse {
    /// The secret: `rf_pat_...` (or `rf_agent_...`). Only this answer shows it.
    pub token: String,
    /// The token's public id (for `token list` and `token revoke`).
    // Defaults: a client still reads the answer of a server from before ids.
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub kind: TokenKind,
    pub user: String,
    pub tenant: TenantId,
    pub scopes: Vec<Scope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

impl TokenResponse {
    /// The answer that hands out a just-issued `token`, whose secret is `secret`.
    pub fn issued(secret: String, token: crate::auth::ApiToken) -> Self {
        Self {
            id: token.id().to_owned(),
            token: secret,
            name: token.name,
            kind: token.kind,
            user: token.user,
            tenant: token.tenant,
            scopes: token.scopes,
            expires_at: token.expires_at,
        }
    }
}

/// A stored token as `GET /v1/auth/tokens` lists it: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenView {
    /// The first 12 hex digits of the token's SHA-256: names it, reveals nothing.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub kind: TokenKind,
    pub user: String,
    pub tenant: TenantId,
    pub scopes: Vec<Scope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Timestamp>,
}

impl From<&crate::auth::ApiToken> for TokenView {
    fn from(t: &crate::auth::ApiToken) -> Self {
        Self {
            id: t.id().to_owned(),
            name: t.name.clone(),
            kind: t.kind,
            user: t.user.clone(),
            tenant: t.tenant.clone(),
            scopes: t.scopes.clone(),
            agent: t.agent.clone(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
        }
    }
}

/// `GET /v1/auth/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    pub name: TenantId,
}

/// `PATCH /v1/tenants/{name}`; fields left out stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateTenantRequest {
    /// A disabled tenant's users cannot log in, and their tokens are revoked.
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// `GET /v1/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantList {
    pub tenants: Vec<crate::auth::Tenant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A user as the API shows it: never the password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserView {
    pub name: String,
    pub tenant: TenantId,
    pub role: Role,
    /// What the role grants.
    pub scopes: Vec<Scope>,
    pub disabled: bool,
    pub created_at: Timestamp,
    /// The user's own requests per second, where an admin set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_rps: Option<u32>,
    /// The user's own LLM tokens per minute, where an admin set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_tokens_per_minute: Option<u64>,
}

impl From<&crate::auth::User> for UserView {
    fn from(u: &crate::auth::User) -> Self {
        Self {
            name: u.name.clone(),
            tenant: u.tenant.clone(),
            role: u.role,
            scopes: u.scopes(),
            disabled: u.disabled,
            created_at: u.created_at,
            rate_limit_rps: u.rate_limit_rps,
            llm_tokens_per_minute: u.llm_tokens_per_minute,
        }
    }
}

/// `GET /v1/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserList {
    pub users: Vec<UserView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    )]
    pub name: String,
    /// Defaults to the caller's tenant.
    #[serde(default)]
    pub tenant: Option<TenantId>,
    pub role: Role,
    /// Leave out to have one generated (returned once, in `password`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(min_length = 8))]
    pub password: Option<String>,
}

/// `POST /v1/users`: the user, and the generated password if none was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedUser {
    pub user: UserView,
    /// Shown once: the server keeps only its hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `PATCH /v1/users/{name}`; fields left out stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[serde(default)]
    pub role: Option<Role>,
    /// A disabled user cannot log in, and its tokens are revoked.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// The user's own API requests per second; 0 returns to the server's.
    #[serde(default)]
    pub rate_limit_rps: Option<u32>,
    /// The user's own LLM tokens per minute; 0 returns to the server's.
    #[serde(default)]
    pub llm_tokens_per_minute: Option<u64>,
}

/// `PUT /v1/users/{name}/password`: your own (with `current_password`) or,
/// as a (tenant) admin, anyone's of your tenant.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetPasswordRequest {
    /// Leave out to have one generated (returned once).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(min_length = 8))]
    pub password: Option<String>,
    /// Needed to change your own password.
    #[serde(default)]
    pub current_password: Option<String>,
}

/// `PUT /v1/users/{name}/password`. Every token of the user is revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PasswordChanged {
    /// The generated password, when none was given; shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `POST /v1/auth/tokens`: a token for scripts, with at most the caller's scopes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    )]
    pub name: Option<String>,
    /// Defaults to the caller's scopes.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub scopes: Option<Vec<Scope>>,
    /// Seconds the token lives: 1 to a year (default 30 days).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 31536000))]
    pub ttl_seconds: Option<u64>,
    /// An agent token for this (existing) agent: it can use only `/v1/agent/...`
    /// as that agent. Needs `admin`. How an `external` agent gets its token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
}

/// `GET /v1/auth/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoAmI {
    pub user: String,
    pub tenant: TenantId,
    pub scopes: Vec<Scope>,
    /// `personal` or `session` for a person's token, `agent` for an agent's.
    pub kind: TokenKind,
    /// The agent an agent token acts as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
}

/// A browser session (`/v1/auth/session`): who is signed in, and the token
/// every state-changing request of the session must carry in
/// `X-CSRF-Token`. The session's own secret travels only in its HttpOnly
/// cookie, never in a body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionView {
    pub user: String,
    pub tenant: TenantId,
    pub scopes: Vec<Scope>,
    /// Send it as `X-CSRF-Token` on POST, PUT, PATCH and DELETE.
    pub csrf_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// Named apart from `agent::Health` (an agent's heartbeat health), which
// would otherwise take this one's place in the OpenAPI document.
#[cfg_attr(feature = "openapi", schema(as = ServerHealth))]
pub struct Health {
    /// `ok`; `starting` while not ready; `standby` while another orchestrator
    /// leads the store prefix; `stepping_down` after losing the leadership.
    pub status: String,
    pub version: String,
    /// Why the server is not ready, and what happens next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The active orchestrator's id while this one stands by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// Every error response: `{"error": {"code", "message", "request_id"}}`, plus
/// `provider` and `correlation_id` when an LLM provider was involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `queue_full`, `unauthorized`.
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
    pub request_id: String,
    /// The LLM provider whose failure this is (inference gateway errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The id of the failed upstream call, as the provider knows it: quote it
    /// to the provider's support or find it in their logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// `budget_exceeded`: the budget's entity (`agent:coder`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// `budget_exceeded`: which limit is spent (`max_tokens_per_day`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// `budget_exceeded`: when the limit resets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<crate::time::Timestamp>,
}

/// `GET /v1/agents`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentList {
    pub agents: Vec<crate::agent::Agent>,
    /// Pass as `?cursor=` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One line an agent's program wrote (`GET /v1/agents/{id}/logs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProgramLogLine {
    /// When the fabric read it (for a container's, when it was fetched).
    pub ts: crate::Timestamp,
    /// The session that wrote it.
    pub session: u32,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub line: String,
}

/// `GET /v1/agents/{id}/logs`: the program's last lines, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentLogs {
    pub lines: Vec<ProgramLogLine>,
}

/// `GET /v1/agents/{id}/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionList {
    pub sessions: Vec<crate::agent::AgentSession>,
    /// Pass as `?cursor=` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/agent/lease` (agent token): the next task, valid while `epoch` is current.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseResponse {
    pub task: Task,
    /// Fencing token: send it with every heartbeat, event and completion of this task.
    pub epoch: u64,
    /// Heartbeat before this, or the task is given to someone else.
    pub lease_expires_at: Timestamp,
}

/// `POST /v1/agent/tasks/{id}/heartbeat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TaskHeartbeat {
    pub epoch: u64,
}

/// Answer to a task heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    pub lease_expires_at: Timestamp,
}

/// One line of output an agent reports for a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentLogLine {
    /// `stdout` or `stderr` (free text is accepted; these two are conventional).
    pub stream: String,
    pub line: String,
}

/// `POST /v1/agent/tasks/{id}/events`: log lines of a running task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentEvents {
    pub epoch: u64,
    pub logs: Vec<AgentLogLine>,
}

/// `POST /v1/agent/tasks/{id}/complete`: how the attempt ended. Answered once durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub epoch: u64,
    /// `completed` or `failed`.
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Parses a request body: a JSON object, read as `T`. The one way every
/// JSON body of the API (the server's routes and the gateway's) is read.
///
/// - Anything but an object is refused: serde would otherwise build a
///   struct from an array (`[null, null]`, field by position), which no
///   client means.
/// - A number with a zero fraction (`63.0`) is an integer, as JSON Schema
///   (and so the OpenAPI document) has it and as JavaScript clients send
///   them; serde alone would refuse `63.0` where it wants an integer.
///
/// The error says what is wrong, for a 400.
pub fn parse_json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    if !value.is_object() {
        return Err(
            "the body must be a JSON object ({...}); see /openapi.json for its fields".to_owned(),
        );
    }
    integral_floats_as_integers(&mut value);
    // The error names the field: `invalid JSON body: rules[0].effect: unknown variant ...`.
    serde_path_to_error::deserialize(value).map_err(|e| format!("invalid JSON body: {e}"))
}

fn integral_floats_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
            {
                // Only where the cast is exact: |f| < 2^63 (a value of
                // -2^63 or below, written with a fraction or too long for
                // an i64, stays a float and an integer field refuses it).
                const TWO_POW_63: f64 = 9.223_372_036_854_776e18;
                if (0.0..TWO_POW_63).contains(&f) {
                    *value = Value::from(f as u64);
                } else if f < 0.0 && f > -TWO_POW_63 {
                    *value = Value::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

#[cfg(test)]
mod body_tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Body {
        n: u64,
        x: f64,
        #[serde(default)]
        list: Vec<i32>,
    }

    #[test]
    fn integral_floats_are_integers_and_only_objects_are_bodies() {
        let b: Body = parse_json_body(br#"{"n": 63.0, "x": 2.0, "list": [-1.0, 2]}"#).unwrap();
        assert_eq!(
            b,
            Body {
                n: 63,
                x: 2.0,
                list: vec![-1, 2]
            }
        );
        #[derive(Debug, serde::Deserialize)]
        struct Signed {
            #[allow(dead_code)]
            s: i64,
        }
        let e = parse_json_body::<Signed>(br#"{"s": -9223372036854775809}"#).unwrap_err();
        assert!(e.starts_with("invalid JSON body:"), "below i64::MIN: {e}");
        let e = parse_json_body::<Body>(br#"{"n": 63.5, "x": 1}"#).unwrap_err();
        assert!(e.starts_with("invalid JSON body:"), "{e}");
        let e = parse_json_body::<Body>(b"[63, 1.0]").unwrap_err();
        assert!(e.contains("must be a JSON object"), "{e}");
        let e = parse_json_body::<Body>(b"{not json").unwrap_err();
        assert!(e.starts_with("invalid JSON body:"), "{e}");
    }
}
