//! [`AgentClient`]: one method per agent-protocol endpoint (`/v1/agent/...`).

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use fabric_core::api::{
    AgentEvents, AgentLogLine, CompleteRequest, ErrorBody, HeartbeatResponse, LeaseResponse,
    REQUEST_ID_HEADER, TaskHeartbeat, TokenResponse,
};
use fabric_core::policy::{CheckRequest, CheckResponse, Effect};
use fabric_core::{AgentId, Task, TaskId};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::{AgentError, codes};

/// Base URL of the fabric's API.
pub const ENV_URL: &str = "FABRIC_URL";
/// The agent's bearer token.
pub const ENV_TOKEN: &str = "FABRIC_TOKEN";
/// The agent's id.
pub const ENV_AGENT_ID: &str = "FABRIC_AGENT_ID";

/// Longest `wait` the fabric accepts on `lease`.
pub const MAX_LEASE_WAIT: Duration = Duration::from_secs(60);
/// How long one `check` request waits for an approval's decision before
/// asking again.
const APPROVAL_POLL: Duration = Duration::from_secs(30);
/// Timeout of every request but `lease`, whose timeout is its wait plus this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What `lease` got.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseOutcome {
    /// 200: a task, valid while its epoch is current.
    Task(Box<LeaseResponse>),
    /// 204: nothing arrived within the wait; ask again.
    Empty,
    /// 409 `agent_draining`: the agent is being terminated. Finish running
    /// tasks, lease no more, exit 0.
    Draining,
}

/// A client of the agent protocol, for one agent.
///
/// Cheap to clone; clones share the connection pool and the token, so
/// [`renew_token`](Self::renew_token) on one is seen by all.
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
    /// Sent as the `traceparent` header (W3C trace context) on every call.
    traceparent: Option<Arc<str>>,
}

struct Inner {
    http: reqwest::Client,
    /// Without a trailing `/`.
    base_url: String,
    agent_id: AgentId,
    // A std lock, never held across an await: it only guards a string copy.
    token: RwLock<String>,
}

impl fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token: it would end up in logs.
        f.debug_struct("AgentClient")
            .field("base_url", &self.inner.base_url)
            .field("agent_id", &self.inner.agent_id)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    /// A client for `agent_id` talking to the fabric at `base_url`
    /// (e.g. `http://127.0.0.1:8080`) with `token`.
    pub fn new(
        base_url: impl Into<String>,
        token: impl Into<String>,
        agent_id: AgentId,
    ) -> Result<Self, AgentError> {
        let base_url = base_url.into();
        let base_url = base_url.trim().trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base_url)
            .map_err(|e| AgentError::Config(format!("invalid fabric URL {base_url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(AgentError::Config(format!(
                "invalid fabric URL {base_url:?}: use http:// or https://"
            )));
        }
        let token = token.into().trim().to_owned();
        if token.is_empty() {
            return Err(AgentError::Config("the agent token is empty".into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // Below the fabric's idle keep-alive limit (15 s by default), so
            // a pooled connection is not reused just as the server closes it.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| AgentError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url,
                agent_id,
                token: RwLock::new(token),
            }),
            traceparent: None,
        })
    }

    /// A client from `FABRIC_URL`, `FABRIC_TOKEN` and `FABRIC_AGENT_ID`, as the
    /// fabric sets them for the agents it starts.
    pub fn from_env() -> Result<Self, AgentError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, AgentError> {
        let var = |name: &'static str| {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or(AgentError::MissingEnv { name })
        };
        let url = var(ENV_URL)?;
        let token = var(ENV_TOKEN)?;
        let agent_id = AgentId::new(var(ENV_AGENT_ID)?.trim())
            .map_err(|e| AgentError::Config(format!("{ENV_AGENT_ID}: {e}")))?;
        Self::new(url, token, agent_id)
    }

    pub fn agent_id(&self) -> &AgentId {
        &self.inner.agent_id
    }

    /// A client (sharing this one's connections and token) whose calls carry
    /// `traceparent`, so the fabric's spans for them join that trace. The
    /// runner uses it for the calls about a leased task (its
    /// `task.traceparent`).
    #[must_use]
    pub fn with_traceparent(&self, traceparent: Option<&str>) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            traceparent: traceparent.map(Arc::from),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// `POST /v1/agent/lease?wait=N`: the next task, waiting up to `wait`
    /// (whole seconds, at most [`MAX_LEASE_WAIT`]) for one to arrive.
    pub async fn lease(&self, wait: Duration) -> Result<LeaseOutcome, AgentError> {
        let wait = wait.min(MAX_LEASE_WAIT);
        let path = format!("/v1/agent/lease?wait={}", wait.as_secs());
        // The long poll must end on the server's side first: time out well after it.
        let req = self
            .request(Method::POST, &path)
            .timeout(wait + REQUEST_TIMEOUT);
        match self.send(&path, req).await {
            Ok(resp) if resp.status() == StatusCode::NO_CONTENT => Ok(LeaseOutcome::Empty),
            Ok(resp) => Ok(LeaseOutcome::Task(Box::new(
                self.read_json(&path, resp).await?,
            ))),
            Err(AgentError::Http {
                status: 409, code, ..
            }) if code == codes::AGENT_DRAINING => Ok(LeaseOutcome::Draining),
            Err(e) => Err(e),
        }
    }

    /// `POST /v1/agent/tasks/{id}/heartbeat`: renews the task's lease.
    pub async fn heartbeat(
        &self,
        task_id: TaskId,
        epoch: u64,
    ) -> Result<HeartbeatResponse, AgentError> {
        let path = format!("/v1/agent/tasks/{task_id}/heartbeat");
        let req = self
            .request(Method::POST, &path)
            .json(&TaskHeartbeat { epoch });
        let resp = self.send(&path, req).await?;
        self.read_json(&path, resp).await
    }

    /// `POST /v1/agent/tasks/{id}/events`: log lines of a running task (also renews its lease).
    pub async fn send_logs(
        &self,
        task_id: TaskId,
        epoch: u64,
        logs: Vec<AgentLogLine>,
    ) -> Result<(), AgentError> {
        let path = format!("/v1/agent/tasks/{task_id}/events");
        let req = self
            .request(Method::POST, &path)
            .json(&AgentEvents { epoch, logs });
        self.send(&path, req).await.map(drop)
    }

    /// `POST /v1/agent/tasks/{id}/complete`: how the attempt ended. Returns the
    /// task as stored; answered once it is durable.
    pub async fn complete(
        &self,
        task_id: TaskId,
        request: &CompleteRequest,
    ) -> Result<Task, AgentError> {
        let path = format!("/v1/agent/tasks/{task_id}/complete");
        let req = self.request(Method::POST, &path).json(request);
        let resp = self.send(&path, req).await?;
        self.read_json(&path, resp).await
    }

    /// May this agent do `action` (e.g. `shell:rm -rf /tmp/x`,
    /// `net:connect:prod-db:5432`)? Asks `POST /v1/agent/check` and, when a
    /// policy requires an approval, waits for an approver's decision (long
    /// polls of `GET /v1/agent/approvals/{id}`) until it is approved, denied
    /// or times out (= denied). Returns the final answer: `decision` is
    /// `allow` or `deny`.
    pub async fn check(
        &self,
        action: &str,
        resource: Option<&str>,
    ) -> Result<CheckResponse, AgentError> {
        self.check_with(action, resource, |_| {}).await
    }

    /// [`check`](Self::check), calling `on_pending` once with the answer
    /// that opened an approval, before waiting for its decision (to tell
    /// whoever watches the task that it waits, and for what).
    pub async fn check_with(
        &self,
        action: &str,
        resource: Option<&str>,
        mut on_pending: impl FnMut(&CheckResponse),
    ) -> Result<CheckResponse, AgentError> {
        let path = "/v1/agent/check";
        let body = CheckRequest {
            agent: None,
            action: action.to_owned(),
            resource: resource.map(str::to_owned),
            workspace: None,
            // Answered at once, so `on_pending` hears of an approval when it
            // opens; the waiting is the polls' below.
            wait: Some(0.0),
        };
        let req = self
            .request(Method::POST, path)
            .timeout(APPROVAL_POLL + REQUEST_TIMEOUT)
            .json(&body);
        let resp = self.send(path, req).await?;
        let mut answer: CheckResponse = self.read_json(path, resp).await?;
        if answer.decision == Effect::RequireApproval {
            on_pending(&answer);
        }
        while answer.decision == Effect::RequireApproval {
            let Some(id) = answer.approval_id else {
                return Err(AgentError::Protocol {
                    url: self.url(path),
                    message: "require_approval without an approval_id".into(),
                });
            };
            let poll = format!("/v1/agent/approvals/{id}?wait={}", APPROVAL_POLL.as_secs());
            let req = self
                .request(Method::GET, &poll)
                .timeout(APPROVAL_POLL + REQUEST_TIMEOUT);
            let resp = self.send(&poll, req).await?;
            answer = self.read_json(&poll, resp).await?;
        }
        Ok(answer)
    }

    /// `POST /v1/agent/heartbeat`: agent-level liveness while there is nothing to do.
    pub async fn agent_heartbeat(&self) -> Result<(), AgentError> {
        let path = "/v1/agent/heartbeat";
        let req = self.request(Method::POST, path);
        self.send(path, req).await.map(drop)
    }

    /// `POST /v1/agent/token`: a fresh token for this agent, which this client
    /// (and its clones) use from now on. The old one stays valid until it expires.
    pub async fn renew_token(&self) -> Result<TokenResponse, AgentError> {
        let path = "/v1/agent/token";
        let req = self.request(Method::POST, path);
        let resp = self.send(path, req).await?;
        let fresh: TokenResponse = self.read_json(path, resp).await?;
        if fresh.token.trim().is_empty() {
            return Err(AgentError::Protocol {
                url: self.url(path),
                message: "the renewed token is empty".into(),
            });
        }
        *self
            .inner
            .token
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh.token.clone();
        Ok(fresh)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.base_url)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let token = self
            .inner
            .token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let req = self
            .inner
            .http
            .request(method, self.url(path))
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(token);
        match &self.traceparent {
            Some(traceparent) => req.header("traceparent", &**traceparent),
            None => req,
        }
    }

    /// Sends `req`; a non-2xx answer becomes the matching [`AgentError`].
    async fn send(&self, path: &str, req: RequestBuilder) -> Result<Response, AgentError> {
        let resp = req.send().await.map_err(|source| AgentError::Transport {
            url: self.url(path),
            source,
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let header_request_id = resp
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.bytes().await.map_err(|source| AgentError::Transport {
            url: self.url(path),
            source,
        })?;
        Err(error_from_answer(status, &body, header_request_id))
    }

    async fn read_json<T: DeserializeOwned>(
        &self,
        path: &str,
        resp: Response,
    ) -> Result<T, AgentError> {
        let body = resp.bytes().await.map_err(|source| AgentError::Transport {
            url: self.url(path),
            source,
        })?;
        serde_json::from_slice(&body).map_err(|e| AgentError::Protocol {
            url: self.url(path),
            message: format!("cannot read the answer body: {e}"),
        })
    }
}

/// Maps an error answer to an [`AgentError`], from its JSON error body when it has one.
fn error_from_answer(status: StatusCode, body: &[u8], request_id: Option<String>) -> AgentError {
    let (code, message, request_id) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error.code, b.error.message, Some(b.error.request_id)),
        // Not the fabric's error shape (a proxy in between?): keep what there is.
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(200).collect();
            let code = status
                .canonical_reason()
                .unwrap_or("error")
                .to_lowercase()
                .replace(' ', "_");
            (code, text, request_id)
        }
    };
    match status.as_u16() {
        409 if code == codes::STALE_LEASE => AgentError::StaleLease { message },
        s @ (401 | 403) => AgentError::Unauthorized {
            status: s,
            code,
            message,
        },
        s => AgentError::Http {
            status: s,
            code,
            message,
            request_id,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_env_names_the_missing_variable() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let err = AgentClient::from_lookup(env(&[(ENV_URL, "http://x"), (ENV_AGENT_ID, "a")]))
            .unwrap_err();
        assert!(
            matches!(err, AgentError::MissingEnv { name } if name == ENV_TOKEN),
            "{err}"
        );
        let err = AgentClient::from_lookup(env(&[(ENV_TOKEN, "t"), (ENV_URL, "  ")])).unwrap_err();
        assert!(matches!(err, AgentError::MissingEnv { name } if name == ENV_URL));
        let err = AgentClient::from_lookup(env(&[
            (ENV_URL, "http://x"),
            (ENV_TOKEN, "t"),
            (ENV_AGENT_ID, "bad id!"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("FABRIC_AGENT_ID"), "{err}");
        let ok = AgentClient::from_lookup(env(&[
            (ENV_URL, "http://127.0.0.1:9/"),
            (ENV_TOKEN, "secret-token"),
            (ENV_AGENT_ID, "py"),
        ]))
        .unwrap();
        assert_eq!(ok.base_url(), "http://127.0.0.1:9");
        assert_eq!(ok.agent_id().as_str(), "py");
        assert!(!format!("{ok:?}").contains("secret-token"));
    }

    #[test]
    fn rejects_urls_it_cannot_use() {
        let id = AgentId::new("a").unwrap();
        assert!(AgentClient::new("localhost:8080", "t", id.clone()).is_err());
        assert!(AgentClient::new("ftp://x", "t", id.clone()).is_err());
        assert!(AgentClient::new("http://x", " ", id).is_err());
    }

    #[test]
    fn error_bodies_map_to_variants() {
        let body = |code: &str| {
            format!(r#"{{"error":{{"code":"{code}","message":"msg","request_id":"req_1"}}}}"#)
                .into_bytes()
        };
        assert!(matches!(
            error_from_answer(StatusCode::CONFLICT, &body("stale_lease"), None),
            AgentError::StaleLease { .. }
        ));
        assert!(matches!(
            error_from_answer(StatusCode::FORBIDDEN, &body("forbidden"), None),
            AgentError::Unauthorized { status: 403, .. }
        ));
        match error_from_answer(StatusCode::CONFLICT, &body("agent_draining"), None) {
            AgentError::Http {
                status,
                code,
                request_id,
                ..
            } => {
                assert_eq!((status, code.as_str()), (409, "agent_draining"));
                assert_eq!(request_id.as_deref(), Some("req_1"));
            }
            other => panic!("{other:?}"),
        }
        let e = error_from_answer(
            StatusCode::BAD_GATEWAY,
            b"<html>bad gateway</html>",
            Some("req_2".into()),
        );
        assert!(e.is_retryable());
        assert_eq!(e.code(), Some("bad_gateway"));
    }
}
