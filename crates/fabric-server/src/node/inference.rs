//! Agents' inference endpoints on a worker node: the same listeners as on
//! the orchestrator (`localhost:11434` in a sandbox, a container's
//! `inference.sock`, a loopback port under a secret path for isolation
//! `none`), each forwarding to the orchestrator's
//! `/v1/agent/endpoint/...` with the session's agent token. The gateway
//! there routes (local first, cloud fallback) and meters the call against
//! the agent, so budgets stay atomic however many nodes call at once; the
//! agent holds no credential (the token stays in the node). The body limit
//! (10 MiB, 413) is applied here before anything is sent, and the
//! orchestrator applies the gateway's request timeout (120 s).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fabric_gateway::api::Reply;
use futures_util::TryStreamExt as _;
use tokio::task::JoinHandle;

use crate::services::agents::InferenceServer;
use crate::services::llm::EndpointIdentity;

/// The node's [`InferenceServer`].
#[derive(Debug)]
pub(super) struct ForwardEndpoints {
    pub(super) http: reqwest::Client,
    /// The orchestrator's base URL.
    pub(super) base: String,
    /// Bodies larger than this get 413 here.
    pub(super) max_body_bytes: usize,
    /// Longest a call may take end to end (the gateway's timeout plus a margin).
    pub(super) timeout: Duration,
}

#[derive(Clone)]
struct Forward {
    endpoints: Arc<ForwardEndpoints>,
    identity: Arc<EndpointIdentity>,
}

impl ForwardEndpoints {
    fn router(self: &Arc<Self>, identity: EndpointIdentity) -> Router {
        Router::new().fallback(forward).with_state(Forward {
            endpoints: Arc::clone(self),
            identity: Arc::new(identity),
        })
    }
}

/// Serves through an `Arc` so every endpoint shares the HTTP client.
#[derive(Debug)]
pub(super) struct SharedForward(pub(super) Arc<ForwardEndpoints>);

impl InferenceServer for SharedForward {
    fn serve_tcp(
        &self,
        listener: tokio::net::TcpListener,
        identity: EndpointIdentity,
    ) -> JoinHandle<()> {
        let agent = identity.agent.clone();
        // TCP_NODELAY, as on the orchestrator: streams reach the agent token by token.
        crate::api::inference::serve_nodelay(listener, self.0.router(identity), agent)
    }

    fn serve_unix(
        &self,
        listener: tokio::net::UnixListener,
        identity: EndpointIdentity,
    ) -> JoinHandle<()> {
        let agent = identity.agent.clone();
        crate::api::inference::serve_endpoint(listener, self.0.router(identity), agent)
    }
}

async fn forward(State(f): State<Forward>, request: Request) -> Response {
    let request_id = crate::request_id::current();
    let Some(path) = crate::api::inference::endpoint_path(&f.identity, &request) else {
        return crate::api::inference::not_this_endpoint();
    };
    let Some(token) = &f.identity.forward_token else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this session has no agent token to call the orchestrator with",
        );
    };
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let method = request.method().clone();
    let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
    let policy = request
        .headers()
        .get(fabric_gateway::api::POLICY_HEADER)
        .cloned();
    let (_, body) = match crate::api::inference::read_body(
        request,
        f.endpoints.max_body_bytes,
        &request_id,
    )
    .await
    {
        Ok(read) => read,
        Err(too_large) => {
            tracing::info!(agent_id = %f.identity.agent, "inference request over the size limit refused");
            return too_large;
        }
    };
    let url = format!("{}/v1/agent/endpoint{path}{query}", f.endpoints.base);
    let mut call = f
        .endpoints
        .http
        .request(method, url)
        .bearer_auth(&token.0)
        .timeout(f.endpoints.timeout)
        .body(body);
    if let Some(v) = content_type {
        call = call.header(header::CONTENT_TYPE, v);
    }
    if let Some(v) = policy {
        call = call.header(fabric_gateway::api::POLICY_HEADER, v);
    }
    let answer = match call.send().await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(agent_id = %f.identity.agent, error = %e, "inference forward to the orchestrator failed");
            let reply = Reply::error(
                &fabric_gateway::GatewayError::Upstream {
                    provider: "orchestrator".into(),
                    message: format!("the node cannot reach the orchestrator's gateway: {e}"),
                    correlation_id: None,
                },
                &request_id,
            );
            return crate::api::inference::into_response(reply);
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let mut response = Response::new(Body::from_stream(
        answer.bytes_stream().map_err(std::io::Error::other),
    ));
    *response.status_mut() = status;
    for (name, value) in &headers {
        let keep = name == header::CONTENT_TYPE
            || name == header::CACHE_CONTROL
            || name == header::RETRY_AFTER
            || name.as_str().starts_with("x-fabric-")
            || name.as_str() == "x-accel-buffering"
            || name.as_str() == "x-request-id";
        if keep {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    let mut response =
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The node's egress gates: each asks the orchestrator
/// (`POST /v1/agent/egress`, the session's agent token) whether the
/// policies allow a target the agent's allowlist admitted. No answer is a
/// refusal: the node fails closed.
#[derive(Debug)]
pub(super) struct RemoteEgress {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
}

/// How long a node's proxy waits for the orchestrator's egress decision.
const EGRESS_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

impl crate::services::agents::EgressPolicy for RemoteEgress {
    fn gate(
        &self,
        _actor: crate::services::policy::Actor,
        token: Option<&str>,
    ) -> fabric_runtime::net::PolicyGate {
        let (http, url) = (self.http.clone(), format!("{}/v1/agent/egress", self.base));
        let token = token.map(str::to_owned);
        Arc::new(move |host: &str, port: u16| {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            let host = host.to_owned();
            Box::pin(async move {
                let Some(token) = token else {
                    return Err(
                        "this session has no agent token to ask the orchestrator with".into(),
                    );
                };
                let answer = http
                    .post(url)
                    .bearer_auth(token)
                    .timeout(EGRESS_CHECK_TIMEOUT)
                    .json(&serde_json::json!({"host": host, "port": port}))
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| {
                        format!(
                            "the policies could not be asked (the orchestrator did not answer: {e})"
                        )
                    })?;
                let verdict: serde_json::Value = answer
                    .json()
                    .await
                    .map_err(|e| format!("the orchestrator's egress answer is unreadable: {e}"))?;
                if verdict["allowed"] == true {
                    Ok(())
                } else {
                    Err(verdict["reason"]
                        .as_str()
                        .unwrap_or("denied by a policy")
                        .to_owned())
                }
            })
        })
    }
}
