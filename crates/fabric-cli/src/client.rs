//! [`FabricClient`]: the HTTP API (`/v1/...`, REQUIREMENTS §10) and the task WebSocket, spoken
//! with the wire types of `fabric-core` only (this module must never use the server crate).

use std::time::Duration;

use fabric_core::agent::{Agent, AgentConfig};
use fabric_core::api::CreateTaskRequest;
use fabric_core::api::{
    AgentList, CreateTenantRequest, CreateTokenRequest, CreateUserRequest, CreatedUser, ErrorBody,
    EventList, Health, IDEMPOTENCY_KEY_HEADER, LoginRequest, PasswordChanged, REQUEST_ID_HEADER,
    SessionList, SetPasswordRequest, TaskList, TaskResultView, TenantList, TokenList,
    TokenResponse, TokenView, UpdateTenantRequest, UpdateUserRequest, UserList, UserView, WhoAmI,
};
use fabric_core::budget::{BudgetEntity, BudgetList, BudgetSpec, BudgetUsageReport, BudgetView};
use fabric_core::policy::{
    Approval, ApprovalList, ApprovalStatus, AuditList, CheckRequest, CheckResponse, Effect, Policy,
    PolicyList,
};
use fabric_core::{AgentId, Task, TaskId, TaskStatus, Tenant, TenantId};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// How long to wait for a TCP connection before calling the server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest any one API call may take (waits are done by polling, never by one long call,
/// except `DELETE /v1/agents/{id}`, which answers once the agent has drained and stopped).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// What a terminate may take beyond its drain timeout: stopping the program
/// (SIGTERM, grace, SIGKILL) and cleaning up its sandbox.
const TERMINATE_SLACK: Duration = Duration::from_secs(60);

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection (refused, timed out, unknown host).
    #[error(
        "cannot reach the fabric at {url}: {reason}. Is 'reactor-fabric serve' running? Set --url or FABRIC_URL."
    )]
    Unreachable { url: String, reason: String },
    /// The server answered with an error status; `message` is its own explanation.
    #[error("{}", api_message(*status, message, request_id.as_deref()))]
    Api {
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    /// The server answered something this client does not understand.
    #[error("unexpected response from the fabric: {0}")]
    Protocol(String),
    /// Anything else that went wrong on the way.
    #[error("request to the fabric failed: {0}")]
    Request(String),
}

fn api_message(status: u16, message: &str, request_id: Option<&str>) -> String {
    match request_id {
        // The request id lets an operator find a server-side failure in the logs.
        Some(id) if status >= 500 => format!("{message} (request id {id})"),
        _ => message.to_owned(),
    }
}

/// Filters of `GET /v1/tasks`.
#[derive(Debug, Clone, Default)]
pub struct TaskListQuery {
    pub status: Option<TaskStatus>,
    pub agent: Option<AgentId>,
    pub priority: Option<fabric_core::Priority>,
    /// Name, prompt or command text to look for (`q`).
    pub search: Option<String>,
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub before: Option<TaskId>,
}

/// Client of one fabric server.
#[derive(Debug, Clone)]
pub struct FabricClient {
    http: reqwest::Client,
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8080`.
    base: String,
    token: Option<String>,
}

impl FabricClient {
    /// A client of the server at `base` (no trailing slash), sending `token` as a bearer token.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("reactor-fabric-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Request(error_chain(&e)))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /healthz` (no auth).
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.json(self.http.get(self.url("/healthz"))).await
    }

    /// `POST /v1/auth/login`.
    pub async fn login(&self, req: &LoginRequest) -> Result<TokenResponse, ClientError> {
        self.json(self.http.post(self.url("/v1/auth/login")).json(req))
            .await
    }

    /// `POST /v1/auth/logout`: revokes the token this client sends.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.send(self.authed(self.http.post(self.url("/v1/auth/logout"))))
            .await
            .map(drop)
    }

    /// `GET /v1/auth/whoami`.
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.json(self.authed(self.http.get(self.url("/v1/auth/whoami"))))
            .await
    }

    /// `POST /v1/tasks`; with `idempotency_key`, a retry returns the task created the first time.
    pub async fn create_task(
        &self,
        req: &CreateTaskRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Task, ClientError> {
        let mut builder = self.authed(self.http.post(self.url("/v1/tasks"))).json(req);
        if let Some(key) = idempotency_key {
            builder = builder.header(IDEMPOTENCY_KEY_HEADER, key);
        }
        self.json(builder).await
    }

    /// `GET /v1/tasks/{id}`.
    pub async fn get_task(&self, id: TaskId) -> Result<Task, ClientError> {
        self.json(self.authed(self.http.get(self.url(&format!("/v1/tasks/{id}")))))
            .await
    }

    /// `GET /v1/tasks`, newest first.
    pub async fn list_tasks(&self, query: &TaskListQuery) -> Result<TaskList, ClientError> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(s) = query.status {
            params.push(("status", s.to_string()));
        }
        if let Some(a) = &query.agent {
            params.push(("agent", a.to_string()));
        }
        if let Some(p) = query.priority {
            params.push(("priority", p.as_str().to_owned()));
        }
        if let Some(q) = &query.search {
            params.push(("q", q.clone()));
        }
        if let Some(l) = query.limit {
            params.push(("limit", l.to_string()));
        }
        if let Some(b) = query.before {
            params.push(("cursor", b.to_string()));
        }
        self.json(self.authed(self.http.get(self.url("/v1/tasks")).query(&params)))
            .await
    }

    /// `POST /v1/tasks/{id}/cancel` (409 when the task already finished).
    pub async fn cancel_task(&self, id: TaskId) -> Result<Task, ClientError> {
        self.json(self.authed(self.http.post(self.url(&format!("/v1/tasks/{id}/cancel")))))
            .await
    }

    /// `DELETE /v1/tasks/{id}`: a finished task, with its events.
    pub async fn delete_task(&self, id: TaskId) -> Result<(), ClientError> {
        self.send(self.authed(self.http.delete(self.url(&format!("/v1/tasks/{id}")))))
            .await
            .map(drop)
    }

    /// `POST /v1/tasks/prune`: the finished tasks older than `older_than_seconds`.
    pub async fn prune_tasks(
        &self,
        older_than_seconds: u64,
    ) -> Result<fabric_core::api::DeletedTasks, ClientError> {
        let body = fabric_core::api::PruneTasksRequest { older_than_seconds };
        self.json(self.authed(self.http.post(self.url("/v1/tasks/prune")).json(&body)))
            .await
    }

    /// `GET /v1/tasks/{id}/result`.
    pub async fn task_result(&self, id: TaskId) -> Result<TaskResultView, ClientError> {
        self.json(self.authed(self.http.get(self.url(&format!("/v1/tasks/{id}/result")))))
            .await
    }

    /// `GET /v1/tasks/{id}/events?cursor=&limit=`: one page of events, oldest
    /// first, after `cursor` (the `next_cursor` of the previous page).
    pub async fn task_events(
        &self,
        id: TaskId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<EventList, ClientError> {
        let mut params = vec![("limit", limit.to_string())];
        if let Some(cursor) = cursor {
            params.push(("cursor", cursor.to_owned()));
        }
        let req = self
            .http
            .get(self.url(&format!("/v1/tasks/{id}/events")))
            .query(&params);
        self.json(self.authed(req)).await
    }

    /// `POST /v1/auth/tokens`: the secret is in the answer, and only there.
    pub async fn create_token(
        &self,
        req: &CreateTokenRequest,
    ) -> Result<TokenResponse, ClientError> {
        self.json(self.authed(self.http.post(self.url("/v1/auth/tokens")).json(req)))
            .await
    }

    /// `GET /v1/auth/tokens[?user=]`.
    pub async fn list_tokens(&self, user: Option<&str>) -> Result<TokenList, ClientError> {
        let mut req = self
            .http
            .get(self.url("/v1/auth/tokens"))
            .query(&[("limit", "1000")]);
        if let Some(user) = user {
            req = req.query(&[("user", user)]);
        }
        self.json(self.authed(req)).await
    }

    /// `DELETE /v1/auth/tokens/{id or name}[?user=]`.
    pub async fn revoke_token(
        &self,
        token: &str,
        user: Option<&str>,
    ) -> Result<TokenView, ClientError> {
        let mut req = self
            .http
            .delete(self.url(&format!("/v1/auth/tokens/{}", path_segment(token))));
        if let Some(user) = user {
            req = req.query(&[("user", user)]);
        }
        self.json(self.authed(req)).await
    }

    /// `POST /v1/tenants` (admin).
    pub async fn create_tenant(&self, req: &CreateTenantRequest) -> Result<Tenant, ClientError> {
        self.json(self.authed(self.http.post(self.url("/v1/tenants")).json(req)))
            .await
    }

    /// `GET /v1/tenants`.
    pub async fn list_tenants(&self) -> Result<TenantList, ClientError> {
        let req = self
            .http
            .get(self.url("/v1/tenants"))
            .query(&[("limit", "1000")]);
        self.json(self.authed(req)).await
    }

    /// `PATCH /v1/tenants/{name}` (admin).
    pub async fn update_tenant(
        &self,
        name: &TenantId,
        req: &UpdateTenantRequest,
    ) -> Result<Tenant, ClientError> {
        let path = format!("/v1/tenants/{name}");
        self.json(self.authed(self.http.patch(self.url(&path)).json(req)))
            .await
    }

    /// `DELETE /v1/tenants/{name}` (admin).
    pub async fn delete_tenant(&self, name: &TenantId) -> Result<(), ClientError> {
        let path = format!("/v1/tenants/{name}");
        self.send(self.authed(self.http.delete(self.url(&path))))
            .await
            .map(drop)
    }

    /// `POST /v1/users`.
    pub async fn create_user(&self, req: &CreateUserRequest) -> Result<CreatedUser, ClientError> {
        self.json(self.authed(self.http.post(self.url("/v1/users")).json(req)))
            .await
    }

    /// `GET /v1/users[?tenant=]`.
    pub async fn list_users(&self, tenant: Option<&TenantId>) -> Result<UserList, ClientError> {
        let mut req = self
            .http
            .get(self.url("/v1/users"))
            .query(&[("limit", "1000")]);
        if let Some(tenant) = tenant {
            req = req.query(&[("tenant", tenant.as_str())]);
        }
        self.json(self.authed(req)).await
    }

    /// `PATCH /v1/users/{name}`.
    pub async fn update_user(
        &self,
        name: &str,
        req: &UpdateUserRequest,
    ) -> Result<UserView, ClientError> {
        let path = format!("/v1/users/{}", path_segment(name));
        self.json(self.authed(self.http.patch(self.url(&path)).json(req)))
            .await
    }

    /// `PUT /v1/users/{name}/password`.
    pub async fn set_password(
        &self,
        name: &str,
        req: &SetPasswordRequest,
    ) -> Result<PasswordChanged, ClientError> {
        let path = format!("/v1/users/{}/password", path_segment(name));
        self.json(self.authed(self.http.put(self.url(&path)).json(req)))
            .await
    }

    /// `DELETE /v1/users/{name}`.
    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/users/{}", path_segment(name));
        self.send(self.authed(self.http.delete(self.url(&path))))
            .await
            .map(drop)
    }

    /// `PUT /v1/policies/{id}` (admin): live at once.
    pub async fn put_policy(&self, policy: &Policy) -> Result<Policy, ClientError> {
        let path = format!("/v1/policies/{}", policy.id);
        self.json(self.authed(self.http.put(self.url(&path)).json(policy)))
            .await
    }

    /// `GET /v1/policies`, by id.
    pub async fn list_policies(&self) -> Result<PolicyList, ClientError> {
        self.json(self.authed(self.http.get(self.url("/v1/policies"))))
            .await
    }

    /// `DELETE /v1/policies/{id}` (admin).
    pub async fn delete_policy(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/policies/{id}");
        self.send(self.authed(self.http.delete(self.url(&path))))
            .await
            .map(drop)
    }

    /// `POST /v1/policy/check`: what the policies decide (audited, never waits).
    pub async fn check_policy(&self, req: &CheckRequest) -> Result<CheckResponse, ClientError> {
        self.json(self.authed(self.http.post(self.url("/v1/policy/check")).json(req)))
            .await
    }

    /// `GET /v1/approvals?status=`, newest first.
    pub async fn list_approvals(
        &self,
        status: Option<ApprovalStatus>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<ApprovalList, ClientError> {
        let mut req = self.http.get(self.url("/v1/approvals"));
        if let Some(status) = status {
            req = req.query(&[("status", status.as_str())]);
        }
        if let Some(limit) = limit {
            req = req.query(&[("limit", limit.to_string())]);
        }
        if let Some(cursor) = cursor {
            req = req.query(&[("cursor", cursor)]);
        }
        self.json(self.authed(req)).await
    }

    /// `POST /v1/approvals/{id}/approve` or `/deny`, with the reason if given.
    pub async fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        reason: Option<&str>,
    ) -> Result<Approval, ClientError> {
        let verb = if approve { "approve" } else { "deny" };
        let path = format!("/v1/approvals/{id}/{verb}");
        let mut req = self.http.post(self.url(&path));
        if let Some(reason) = reason {
            req = req.json(&serde_json::json!({ "reason": reason }));
        }
        self.json(self.authed(req)).await
    }

    /// `GET /v1/audit?agent=&decision=&limit=` (admin), newest first.
    pub async fn audit(
        &self,
        agent: Option<&AgentId>,
        decision: Option<Effect>,
        limit: Option<u32>,
    ) -> Result<AuditList, ClientError> {
        let mut req = self.http.get(self.url("/v1/audit"));
        if let Some(agent) = agent {
            req = req.query(&[("agent", agent.as_str())]);
        }
        if let Some(decision) = decision {
            req = req.query(&[("decision", decision.as_str())]);
        }
        if let Some(limit) = limit {
            req = req.query(&[("limit", limit.to_string())]);
        }
        self.json(self.authed(req)).await
    }

    /// `POST /v1/agents` (admin): answers once the agent's first session runs.
    pub async fn spawn_agent(&self, config: &AgentConfig) -> Result<Agent, ClientError> {
        self.json(self.authed(self.http.post(self.url("/v1/agents")).json(config)))
            .await
    }

    /// `GET /v1/agents`, by id.
    pub async fn list_agents(&self) -> Result<AgentList, ClientError> {
        self.json(self.authed(self.http.get(self.url("/v1/agents"))))
            .await
    }

    /// `GET /v1/agents/{id}`.
    pub async fn get_agent(&self, id: &AgentId) -> Result<Agent, ClientError> {
        self.json(self.authed(self.http.get(self.url(&format!("/v1/agents/{id}")))))
            .await
    }

    /// `GET /v1/agents/{id}/sessions?limit=`, newest first.
    pub async fn agent_sessions(
        &self,
        id: &AgentId,
        limit: Option<u32>,
    ) -> Result<SessionList, ClientError> {
        let mut req = self
            .http
            .get(self.url(&format!("/v1/agents/{id}/sessions")));
        if let Some(limit) = limit {
            req = req.query(&[("limit", limit.to_string())]);
        }
        self.json(self.authed(req)).await
    }

    /// `DELETE /v1/agents/{id}?drain_timeout=SECS` (admin): answers once the agent
    /// has stopped, so this one call may take the whole drain and then some.
    pub async fn terminate_agent(
        &self,
        id: &AgentId,
        drain_timeout: Duration,
    ) -> Result<Agent, ClientError> {
        let req = self.http.delete(self.url(&format!("/v1/agents/{id}")));
        self.draining(req, id, drain_timeout).await
    }

    /// `POST /v1/agents/{id}/restart`: stops it (draining) if it runs, starts it again.
    pub async fn restart_agent(
        &self,
        id: &AgentId,
        drain_timeout: Duration,
    ) -> Result<Agent, ClientError> {
        let req = self
            .http
            .post(self.url(&format!("/v1/agents/{id}/restart")));
        self.draining(req, id, drain_timeout).await
    }

    /// Sends a call that stops agent `id` with `drain_timeout` and answers
    /// once it has, so it may take the whole drain and then some.
    async fn draining(
        &self,
        req: reqwest::RequestBuilder,
        id: &AgentId,
        drain_timeout: Duration,
    ) -> Result<Agent, ClientError> {
        let req = req
            .query(&[("drain_timeout", drain_timeout.as_secs_f64().to_string())])
            .timeout(drain_timeout.saturating_add(TERMINATE_SLACK));
        let response = self.authed(req).send().await.map_err(|e| {
            // Connected but no answer in time: the server is there, the stop is slow.
            // "Cannot reach the fabric" would send the user looking in the wrong place.
            if e.is_timeout() && !e.is_connect() {
                ClientError::Request(format!(
                    "agent {id} did not stop within {:.0}s (drain timeout plus {}s); \
                     it may still be stopping: see 'reactor-fabric agent get {id}'",
                    drain_timeout.saturating_add(TERMINATE_SLACK).as_secs_f64(),
                    TERMINATE_SLACK.as_secs()
                ))
            } else {
                self.transport_error(&e)
            }
        })?;
        let response = self.check(response).await?;
        self.decode(response).await
    }

    /// `GET /v1/agents/{id}/logs?tail=N`: the last lines its program wrote.
    pub async fn agent_logs(
        &self,
        id: &AgentId,
        tail: u32,
    ) -> Result<fabric_core::api::AgentLogs, ClientError> {
        self.json(
            self.authed(
                self.http
                    .get(self.url(&format!("/v1/agents/{id}/logs")))
                    .query(&[("tail", tail.to_string())]),
            ),
        )
        .await
    }

    /// `GET /v1/agents/{id}/logs?follow=true`: calls `each` with the last
    /// `tail` lines, then with every new one, until the server ends the
    /// stream (the fabric stopped, or this follower fell behind) or `each`
    /// says to stop (false).
    pub async fn follow_agent_logs(
        &self,
        id: &AgentId,
        tail: u32,
        mut each: impl FnMut(fabric_core::api::ProgramLogLine) -> bool,
    ) -> Result<(), ClientError> {
        let request = self
            .authed(
                self.http
                    .get(self.url(&format!("/v1/agents/{id}/logs")))
                    .query(&[("tail", tail.to_string()), ("follow", "true".to_owned())]),
            )
            // Open for as long as the user watches.
            .timeout(Duration::from_secs(365 * 24 * 3600));
        let response = self.send(request).await?;
        let mut body = response.bytes_stream();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = body.next().await {
            pending.extend_from_slice(&chunk.map_err(|e| self.transport_error(&e))?);
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                let kind = text.lines().find_map(|l| l.strip_prefix("event: "));
                let data: String = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect::<Vec<_>>()
                    .join("\n");
                match kind {
                    Some("line") => {
                        let line = serde_json::from_str(&data).map_err(|e| {
                            ClientError::Protocol(format!("cannot decode a log line: {e}: {data}"))
                        })?;
                        if !each(line) {
                            return Ok(());
                        }
                    }
                    Some("lagged") => {
                        return Err(ClientError::Protocol(format!(
                            "this follower fell behind the agent's output ({data})"
                        )));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// `POST /v1/agents/{id}/remove`: forgets a stopped agent.
    pub async fn remove_agent(&self, id: &AgentId) -> Result<(), ClientError> {
        self.send(self.authed(self.http.post(self.url(&format!("/v1/agents/{id}/remove")))))
            .await
            .map(drop)
    }

    /// `PUT /v1/budgets/{entity}[?force=true]` (admin; `force`: the entity need not exist).
    pub async fn put_budget(
        &self,
        entity: &BudgetEntity,
        spec: &BudgetSpec,
        force: bool,
    ) -> Result<BudgetView, ClientError> {
        let mut req = self
            .http
            .put(self.url(&format!("/v1/budgets/{entity}")))
            .json(spec);
        if force {
            req = req.query(&[("force", "true")]);
        }
        self.json(self.authed(req)).await
    }

    /// `GET /v1/budgets/{entity}`.
    pub async fn get_budget(&self, entity: &BudgetEntity) -> Result<BudgetView, ClientError> {
        self.json(self.authed(self.http.get(self.url(&format!("/v1/budgets/{entity}")))))
            .await
    }

    /// `GET /v1/budgets` (admin).
    pub async fn list_budgets(&self) -> Result<BudgetList, ClientError> {
        self.json(self.authed(self.http.get(self.url("/v1/budgets"))))
            .await
    }

    /// `DELETE /v1/budgets/{entity}` (admin).
    pub async fn delete_budget(&self, entity: &BudgetEntity) -> Result<(), ClientError> {
        self.send(self.authed(self.http.delete(self.url(&format!("/v1/budgets/{entity}")))))
            .await
            .map(drop)
    }

    /// `GET /v1/usage/{entity}?period=`.
    pub async fn usage_report(
        &self,
        entity: &BudgetEntity,
        period: &str,
    ) -> Result<BudgetUsageReport, ClientError> {
        let req = self
            .http
            .get(self.url(&format!("/v1/usage/{entity}")))
            .query(&[("period", period)]);
        self.json(self.authed(req)).await
    }

    /// Opens the WebSocket `GET /v1/stream/{id}`.
    pub async fn stream_task(&self, id: TaskId) -> Result<TaskStream, ClientError> {
        let ws_base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            return Err(ClientError::Request(format!(
                "cannot stream from {}: not an http(s) url",
                self.base
            )));
        };
        let mut request = format!("{ws_base}/v1/stream/{id}")
            .into_client_request()
            .map_err(|e| ClientError::Request(e.to_string()))?;
        if let Some(token) = &self.token {
            let value = tungstenite::http::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    ClientError::Request(
                        "the token contains characters not allowed in a header".into(),
                    )
                })?;
            request
                .headers_mut()
                .insert(tungstenite::http::header::AUTHORIZATION, value);
        }
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await;
        match connected {
            Err(_) => Err(self.unreachable("timed out".into())),
            Ok(Ok((ws, _response))) => Ok(TaskStream { ws }),
            Ok(Err(tungstenite::Error::Io(e))) => Err(self.unreachable(io_reason(&e))),
            Ok(Err(tungstenite::Error::Http(response))) => {
                let status = response.status().as_u16();
                let request_id = response
                    .headers()
                    .get(REQUEST_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = response.body().as_deref().unwrap_or_default();
                Err(api_error(status, request_id, body))
            }
            Ok(Err(e)) => Err(ClientError::Protocol(format!(
                "websocket handshake failed: {e}"
            ))),
        }
    }

    /// `POST /v1/mcp/servers`: registers (or replaces) an MCP server.
    pub async fn put_mcp_server(
        &self,
        spec: &fabric_core::mcp::McpServerSpec,
    ) -> Result<fabric_core::mcp::McpServerView, ClientError> {
        self.json(self.authed(self.http.post(self.url("/v1/mcp/servers")).json(spec)))
            .await
    }

    /// `GET /v1/mcp/servers`.
    pub async fn list_mcp_servers(&self) -> Result<fabric_core::mcp::McpServerList, ClientError> {
        self.json(self.authed(self.http.get(self.url("/v1/mcp/servers"))))
            .await
    }

    /// `GET /v1/mcp/servers/{name}/tools`: starts the server when it is not
    /// running, so it may take a while.
    pub async fn mcp_server_tools(
        &self,
        name: &str,
    ) -> Result<fabric_core::mcp::McpToolList, ClientError> {
        let path = format!("/v1/mcp/servers/{name}/tools");
        self.json(
            self.authed(self.http.get(self.url(&path)))
                .timeout(Duration::from_secs(150)),
        )
        .await
    }

    /// `DELETE /v1/mcp/servers/{name}`.
    pub async fn delete_mcp_server(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/mcp/servers/{name}");
        self.send(self.authed(self.http.delete(self.url(&path))))
            .await
            .map(drop)
    }

    /// `POST /v1/nodes/tokens`: a join token (its secret shown once).
    pub async fn create_join_token(
        &self,
        req: &fabric_core::node::CreateJoinTokenRequest,
    ) -> Result<fabric_core::node::JoinTokenCreated, ClientError> {
        self.json(self.authed(self.http.post(self.url("/v1/nodes/tokens")).json(req)))
            .await
    }

    /// `GET /v1/nodes/tokens`.
    pub async fn list_join_tokens(&self) -> Result<fabric_core::node::JoinTokenList, ClientError> {
        self.json(self.authed(self.http.get(self.url("/v1/nodes/tokens"))))
            .await
    }

    /// `DELETE /v1/nodes/tokens/{id}`: revokes a join token.
    pub async fn revoke_join_token(
        &self,
        id: &str,
    ) -> Result<fabric_core::node::JoinTokenView, ClientError> {
        let path = format!("/v1/nodes/tokens/{id}");
        self.json(self.authed(self.http.delete(self.url(&path))))
            .await
    }

    /// `GET /v1/nodes`.
    pub async fn list_nodes(&self) -> Result<fabric_core::node::NodeList, ClientError> {
        self.json(self.authed(self.http.get(self.url("/v1/nodes"))))
            .await
    }

    /// `GET /v1/nodes/{name}`.
    pub async fn get_node(&self, name: &str) -> Result<fabric_core::node::NodeView, ClientError> {
        let path = format!("/v1/nodes/{name}");
        self.json(self.authed(self.http.get(self.url(&path)))).await
    }

    /// `POST /v1/nodes/{name}/{action}`: `cordon`, `uncordon` or `drain`.
    pub async fn node_action(
        &self,
        name: &str,
        action: &str,
    ) -> Result<fabric_core::node::NodeView, ClientError> {
        let path = format!("/v1/nodes/{name}/{action}");
        self.json(self.authed(self.http.post(self.url(&path))))
            .await
    }

    /// `DELETE /v1/nodes/{name}`.
    pub async fn remove_node(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/nodes/{name}");
        self.send(self.authed(self.http.delete(self.url(&path))))
            .await
            .map(drop)
    }

    /// `GET /v1/nodes/config`.
    pub async fn node_config(&self) -> Result<fabric_core::node::NodeConfig, ClientError> {
        self.json(self.authed(self.http.get(self.url("/v1/nodes/config"))))
            .await
    }

    /// `PUT /v1/nodes/config`: a new version of the node config.
    pub async fn put_node_config(
        &self,
        spec: &fabric_core::node::NodeConfigSpec,
    ) -> Result<fabric_core::node::NodeConfig, ClientError> {
        self.json(self.authed(self.http.put(self.url("/v1/nodes/config")).json(spec)))
            .await
    }

    /// `POST /mcp`: one MCP (JSON-RPC) message and its routing headers;
    /// the JSON-RPC answer, `None` for an accepted notification. A JSON-RPC
    /// error is an answer too (whatever its status); the API's own refusals
    /// (401, 403, 429, 503) are [`ClientError::Api`].
    pub async fn mcp_post(
        &self,
        message: Vec<u8>,
        headers: &[(&'static str, String)],
        timeout: Duration,
    ) -> Result<Option<serde_json::Value>, ClientError> {
        let mut req = self
            .authed(self.http.post(self.url("/mcp")))
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::ACCEPT,
                "application/json, text/event-stream",
            )
            .body(message);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let response = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if status == 202 && body.is_empty() {
            return Ok(None);
        }
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(value) if value.get("jsonrpc").is_some() => Ok(Some(value)),
            _ => Err(api_error(status, request_id, &body)),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// Sends `req`; any non-2xx status becomes [`ClientError::Api`].
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let response = req.send().await.map_err(|e| self.transport_error(&e))?;
        self.check(response).await
    }

    /// Passes a 2xx response on; any other status becomes [`ClientError::Api`].
    async fn check(&self, response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let request_id = response
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await.unwrap_or_default();
        Err(api_error(status.as_u16(), request_id, &body))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.send(req).await?;
        self.decode(response).await
    }

    /// Reads a successful response's body as `T`.
    async fn decode<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, ClientError> {
        let path = response.url().path().to_owned();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        serde_json::from_slice(&body).map_err(|e| {
            ClientError::Protocol(format!(
                "cannot decode the answer of {path}: {e}: {}",
                snippet(&body)
            ))
        })
    }

    fn transport_error(&self, err: &reqwest::Error) -> ClientError {
        if err.is_connect() || err.is_timeout() {
            let reason = io_cause(err).map(io_reason).unwrap_or_else(|| {
                if err.is_timeout() {
                    "timed out".to_owned()
                } else {
                    root_cause(err)
                }
            });
            self.unreachable(reason)
        } else {
            ClientError::Request(error_chain(err))
        }
    }

    fn unreachable(&self, reason: String) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            reason,
        }
    }
}

/// An open `/v1/stream/{id}` socket.
pub struct TaskStream {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl std::fmt::Debug for TaskStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskStream").finish_non_exhaustive()
    }
}

impl TaskStream {
    /// The next text message, or `None` once the server closed the socket.
    pub async fn next_text(&mut self) -> Result<Option<String>, ClientError> {
        use tungstenite::Message;
        loop {
            match self.ws.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Text(text))) => return Ok(Some(text.as_str().to_owned())),
                Some(Ok(Message::Binary(bytes))) => {
                    return String::from_utf8(bytes.to_vec()).map(Some).map_err(|_| {
                        ClientError::Protocol("binary websocket message is not UTF-8".into())
                    });
                }
                // Pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ),
                )) => return Ok(None),
                Some(Err(e)) => {
                    return Err(ClientError::Request(format!("task stream failed: {e}")));
                }
            }
        }
    }
}

/// Turns an error response into [`ClientError::Api`], using the server's `{error:{...}}` body when there is one.
fn api_error(status: u16, header_request_id: Option<String>, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => ClientError::Api {
            status,
            code: error.code,
            message: error.message,
            request_id: Some(error.request_id)
                .filter(|r| !r.is_empty())
                .or(header_request_id),
        },
        Err(_) => {
            let reason = reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("error");
            let mut message = format!("the fabric answered {status} {reason}");
            if !body.is_empty() {
                message.push_str(&format!(": {}", snippet(body)));
            }
            ClientError::Api {
                status,
                code: String::new(),
                message,
                request_id: header_request_id,
            }
        }
    }
}

/// The start of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

fn io_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        current = e.source();
    }
    None
}

/// `connection refused` rather than `Connection refused (os error 111)`.
fn io_reason(err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        ErrorKind::TimedOut => "timed out".to_owned(),
        ErrorKind::ConnectionReset => "connection reset".to_owned(),
        _ => {
            let text = err.to_string();
            let text = match text.find(" (os error") {
                Some(i) => text[..i].to_owned(),
                None => text,
            };
            lowercase_first(&text)
        }
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    lowercase_first(&last.to_string())
}

/// `outer: inner: innermost`, the way anyhow prints `{:#}`.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut current = err.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) if !text.starts_with("DNS") => first.to_lowercase().chain(chars).collect(),
        _ => text.to_owned(),
    }
}

/// A name as one URL path segment: anything but unreserved characters
/// percent-encoded, so a name can never reach another route.
fn path_segment(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_their_path_segment() {
        assert_eq!(path_segment("ci"), "ci");
        assert_eq!(path_segment("a.b-c_d~"), "a.b-c_d~");
        assert_eq!(path_segment("../x?y#z"), "..%2Fx%3Fy%23z");
    }

    #[test]
    fn error_bodies_become_api_errors() {
        let body =
            br#"{"error":{"code":"not_found","message":"task 1 not found","request_id":"r1"}}"#;
        match api_error(404, None, body) {
            ClientError::Api {
                status,
                code,
                message,
                request_id,
            } => {
                assert_eq!(
                    (status, code.as_str(), message.as_str()),
                    (404, "not_found", "task 1 not found")
                );
                assert_eq!(request_id.as_deref(), Some("r1"));
            }
            other => panic!("{other:?}"),
        }
        let e = api_error(502, Some("r2".into()), b"<html>bad gateway</html>");
        assert_eq!(
            e.to_string(),
            "the fabric answered 502 Bad Gateway: <html>bad gateway</html> (request id r2)"
        );
    }

    #[test]
    fn io_errors_read_well() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(io_reason(&refused), "connection refused");
        let e = ClientError::Unreachable {
            url: "http://127.0.0.1:8080".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach the fabric at http://127.0.0.1:8080: connection refused. \
             Is 'reactor-fabric serve' running? Set --url or FABRIC_URL."
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        // Bind then drop to get a port that (almost certainly) has no listener.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = FabricClient::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let err = client.health().await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Unreachable { reason, .. } if reason == "connection refused"),
            "{err:?}"
        );
        let err = client.stream_task(TaskId::new()).await.unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    }
}
