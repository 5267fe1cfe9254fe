//! `/mcp`: the fabric as an MCP server (Streamable HTTP, both protocol eras,
//! see [`crate::mcp`]). An MCP host (Claude Desktop/Code, Cursor, VS Code)
//! configured with the fabric's URL and a token creates and watches tasks,
//! lists agents and decides approvals. Each tool is the API route of the
//! same name, called with the caller's principal, so scopes, validation,
//! policy and audit are the API's; its refusals come back as tool errors
//! (`isError`) the model can read.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fabric_core::api::CreateTaskRequest;
use fabric_core::policy::{ApprovalQuery, ApprovalStatus};
use fabric_core::{Scope, TaskQuery, TaskStatus};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::mcp::{self, RoutingHeaders, RpcError, ServerInfo, ToolHost};
use crate::services::auth::Principal;
use crate::state::AppState;

/// Largest MCP message accepted.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Longest a `wait_task` call waits.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// `POST /mcp`: one JSON-RPC message, answered as JSON.
pub async fn post(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if body.len() > MAX_MESSAGE_BYTES {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("an MCP message may be at most {MAX_MESSAGE_BYTES} bytes"),
        )
        .into_response();
    }
    let host = FabricTools { state, principal };
    let answer = mcp::handle_http(&host, &routing_headers(&headers), &body).await;
    json_answer(answer)
}

/// `GET` and `DELETE /mcp`: this server opens no server-to-client stream
/// and keeps no session, which the transport allows with a 405.
pub async fn not_streamed() -> Response {
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this MCP endpoint answers each POST with JSON: it opens no event stream and keeps no session to delete",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// The routing headers of a request, as [`mcp`] checks them.
pub fn routing_headers(headers: &HeaderMap) -> RoutingHeaders {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    RoutingHeaders {
        protocol_version: text("mcp-protocol-version"),
        method: text("mcp-method"),
        name: text("mcp-name").map(|name| decode_header_value(&name)),
    }
}

/// `=?base64?…?=` is how a client sends a header value that is not plain ASCII.
fn decode_header_value(value: &str) -> String {
    use base64::Engine as _;
    value
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
        .and_then(|payload| {
            base64::engine::general_purpose::STANDARD
                .decode(payload)
                .ok()
        })
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| value.to_owned())
}

/// An [`mcp::HttpAnswer`] as a response.
pub fn json_answer(answer: mcp::HttpAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    match answer.body {
        Some(body) => (status, Json(body)).into_response(),
        None => status.into_response(),
    }
}

/// The fabric's tools, for one caller.
struct FabricTools {
    state: AppState,
    principal: Principal,
}

fn tool(name: &str, description: &str, properties: Value, required: &[&str]) -> Value {
    json!({
        "name": name,
        "description": description,
        "inputSchema": {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        },
    })
}

fn task_id_schema() -> Value {
    json!({"type": "string", "format": "uuid", "description": "the task's id"})
}

/// The tools, in the order `tools/list` gives them.
fn fabric_tools() -> Vec<Value> {
    vec![
        tool(
            "create_task",
            "Create a task for an agent: a prompt for an agent program, or shell commands for a shell agent. Returns the task (its id, status queued or pending). Same body as POST /v1/tasks.",
            json!({
                "agent": {"type": "string", "description": "the agent to run it (default: the server's shell agent)"},
                "name": {"type": "string"},
                "prompt": {"type": "string", "description": "what to do (for agent programs)"},
                "commands": {"type": "array", "items": {"type": "string"}, "description": "shell commands, run in order"},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
                "files": {"type": "array", "items": {"type": "object"}, "description": "files to place in the task's directory: {path, content}"},
                "priority": {"type": "string", "enum": ["critical", "high", "normal", "low"]},
                "depends_on": {"type": "array", "items": task_id_schema()},
                "timeout_seconds": {"type": "number", "exclusiveMinimum": 0},
                "max_attempts": {"type": "integer", "minimum": 1},
            }),
            &[],
        ),
        tool(
            "get_task",
            "A task as it stands: status, reason, result (stdout, stderr, exit code) once it has finished.",
            json!({"task_id": task_id_schema()}),
            &["task_id"],
        ),
        tool(
            "wait_task",
            "Wait until a task finishes (completed, failed, timed out or canceled), then return it with its result; returns it as it stands after timeout_seconds (default 60, at most 600).",
            json!({"task_id": task_id_schema(), "timeout_seconds": {"type": "number", "minimum": 0, "maximum": 600}}),
            &["task_id"],
        ),
        tool(
            "list_tasks",
            "The newest tasks, optionally only one status or one agent's.",
            json!({
                "status": {"type": "string", "enum": ["pending", "awaiting_approval", "queued", "running", "completed", "failed", "timed_out", "canceled"]},
                "agent": {"type": "string"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "default 50"},
            }),
            &[],
        ),
        tool(
            "cancel_task",
            "Cancel a task that has not finished.",
            json!({"task_id": task_id_schema()}),
            &["task_id"],
        ),
        tool(
            "list_agents",
            "The agents the caller can see: id, state, isolation, model, running tasks.",
            json!({}),
            &[],
        ),
        tool(
            "list_approvals",
            "Approvals that agents asked for (default: the pending ones). Needs the approve scope.",
            json!({"status": {"type": "string", "enum": ["pending", "approved", "denied", "timed_out"]}}),
            &[],
        ),
        tool(
            "decide_approval",
            "Approve or deny a pending approval; the waiting agent proceeds or is refused. Needs the approve scope.",
            json!({
                "approval_id": {"type": "string", "format": "uuid"},
                "approve": {"type": "boolean", "description": "true approves, false denies"},
                "reason": {"type": "string", "maxLength": 1000},
            }),
            &["approval_id", "approve"],
        ),
    ]
}

impl ToolHost for FabricTools {
    fn info(&self) -> ServerInfo {
        ServerInfo {
            name: "reactor-fabric",
            title: "reactor-fabric",
            instructions: "Run work on the fabric's agents: create_task, then wait_task for its result. list_agents shows who can run it; list_approvals and decide_approval answer agents waiting for a person.".to_owned(),
        }
    }

    async fn list_tools(&self) -> Result<Vec<Value>, RpcError> {
        Ok(fabric_tools())
    }

    async fn call_tool(&self, name: &str, arguments: Value) -> Result<Value, RpcError> {
        let answer = match name {
            "create_task" => self.create_task(arguments).await,
            "get_task" => self.get_task(&arguments).await,
            "wait_task" => self.wait_task(&arguments).await,
            "list_tasks" => self.list_tasks(&arguments).await,
            "cancel_task" => self.cancel_task(&arguments).await,
            "list_agents" => self.list_agents(&arguments),
            "list_approvals" => self.list_approvals(&arguments).await,
            "decide_approval" => self.decide_approval(&arguments).await,
            other => {
                return Err(RpcError::invalid_params(format!(
                    "unknown tool {other:?}: tools/list names this server's tools"
                )));
            }
        };
        Ok(match answer {
            Ok(value) => mcp::json_result(&value),
            // The model reads a refusal as the tool's answer and can act on it.
            Err(e) => mcp::text_result(format!("{}: {}", e.code, e.message), true),
        })
    }
}

/// The arguments a tool takes, none other: a misspelt one is an error, not
/// silently ignored.
fn only(arguments: &Value, allowed: &[&str]) -> Result<(), ApiError> {
    if let Some(object) = arguments.as_object()
        && let Some(unknown) = object.keys().find(|k| !allowed.contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "unknown argument {unknown:?}: this tool takes {}",
            allowed.join(", ")
        )));
    }
    Ok(())
}

fn string_arg<'a>(arguments: &'a Value, name: &str) -> Result<Option<&'a str>, ApiError> {
    match arguments.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("{name:?} must be a string"))),
    }
}

fn required_string<'a>(arguments: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    string_arg(arguments, name)?
        .ok_or_else(|| ApiError::bad_request(format!("{name:?} is required")))
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::internal(e.to_string()))
}

impl FabricTools {
    async fn create_task(&self, arguments: Value) -> Result<Value, ApiError> {
        let body = serde_json::to_vec(&arguments).map_err(|e| ApiError::internal(e.to_string()))?;
        let request = fabric_core::api::parse_json_body::<CreateTaskRequest>(&body)
            .map_err(ApiError::bad_request)?;
        let (_, Json(task)) = super::tasks::create(
            State(self.state.clone()),
            self.principal.clone(),
            HeaderMap::new(),
            ApiJson(request),
        )
        .await?;
        to_value(&task)
    }

    async fn get_task(&self, arguments: &Value) -> Result<Value, ApiError> {
        only(arguments, &["task_id"])?;
        let id = required_string(arguments, "task_id")?;
        let Json(task) = super::tasks::get_one(
            State(self.state.clone()),
            self.principal.clone(),
            Path(id.to_owned()),
        )
        .await?;
        to_value(&task)
    }

    async fn wait_task(&self, arguments: &Value) -> Result<Value, ApiError> {
        only(arguments, &["task_id", "timeout_seconds"])?;
        self.principal.require(Scope::ReadTasks)?;
        let id = super::task_id(required_string(arguments, "task_id")?)?;
        let wait = match arguments.get("timeout_seconds") {
            None | Some(Value::Null) => Duration::from_secs(60),
            Some(v) => match v.as_f64() {
                Some(s) if (0.0..=MAX_WAIT.as_secs_f64()).contains(&s) => {
                    Duration::from_secs_f64(s)
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "\"timeout_seconds\" must be a number from 0 to {}",
                        MAX_WAIT.as_secs()
                    )));
                }
            },
        };
        let deadline = tokio::time::Instant::now() + wait;
        // Every change of a task is an event on it: wake on those, and look
        // again at least every second in case one was missed.
        let mut events = self.state.tasks.events().subscribe(id);
        loop {
            let task = self.state.tasks.get(&self.principal.tenant, id).await?;
            if task.status.is_terminal() || tokio::time::Instant::now() >= deadline {
                return to_value(&task);
            }
            let next = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
            tokio::select! {
                _ = events.recv() => {}
                () = tokio::time::sleep_until(next) => {}
                () = self.state.shutdown.cancelled() => return to_value(&task),
            }
        }
    }

    async fn list_tasks(&self, arguments: &Value) -> Result<Value, ApiError> {
        only(arguments, &["status", "agent", "limit"])?;
        self.principal.require(Scope::ReadTasks)?;
        let limit = match arguments.get("limit") {
            None | Some(Value::Null) => 50,
            Some(v) => match v.as_u64() {
                Some(n @ 1..=1000) => n as usize,
                _ => {
                    return Err(ApiError::bad_request(
                        "\"limit\" must be an integer from 1 to 1000",
                    ));
                }
            },
        };
        let query = TaskQuery {
            status: string_arg(arguments, "status")?
                .map(str::parse::<TaskStatus>)
                .transpose()
                .map_err(ApiError::bad_request)?,
            agent_id: string_arg(arguments, "agent")?
                .map(str::parse::<fabric_core::AgentId>)
                .transpose()
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
            limit,
            ..TaskQuery::default()
        };
        let tasks = self.state.tasks.list(&self.principal.tenant, query).await?;
        Ok(json!({"tasks": to_value(&tasks)?}))
    }

    async fn cancel_task(&self, arguments: &Value) -> Result<Value, ApiError> {
        only(arguments, &["task_id"])?;
        let id = required_string(arguments, "task_id")?;
        let Json(task) = super::tasks::cancel(
            State(self.state.clone()),
            self.principal.clone(),
            Path(id.to_owned()),
        )
        .await?;
        to_value(&task)
    }

    fn list_agents(&self, arguments: &Value) -> Result<Value, ApiError> {
        only(arguments, &[])?;
        self.principal.require(Scope::ReadTasks)?;
        Ok(json!({"agents": to_value(&self.state.agents.list_for(&self.principal))?}))
    }

    async fn list_approvals(&self, arguments: &Value) -> Result<Value, ApiError> {
        only(arguments, &["status"])?;
        self.principal.require(Scope::Approve)?;
        let status = match string_arg(arguments, "status")? {
            None => ApprovalStatus::Pending,
            Some(s) => s.parse::<ApprovalStatus>().map_err(ApiError::bad_request)?,
        };
        let approvals = self
            .state
            .policy
            .list_approvals(ApprovalQuery {
                tenant: Some(self.principal.tenant.clone()),
                status: Some(status),
                before: None,
                limit: 100,
            })
            .await?;
        Ok(json!({"approvals": to_value(&approvals)?}))
    }

    async fn decide_approval(&self, arguments: &Value) -> Result<Value, ApiError> {
        only(arguments, &["approval_id", "approve", "reason"])?;
        let id = required_string(arguments, "approval_id")?;
        let Some(approve) = arguments.get("approve").and_then(Value::as_bool) else {
            return Err(ApiError::bad_request(
                "\"approve\" is required: true approves, false denies",
            ));
        };
        let body = match string_arg(arguments, "reason")? {
            Some(reason) => json!({"reason": reason}).to_string(),
            None => String::new(),
        };
        let Json(approval) =
            super::policy::decide(&self.state, &self.principal, id, approve, body.as_bytes())
                .await?;
        to_value(&approval)
    }
}
