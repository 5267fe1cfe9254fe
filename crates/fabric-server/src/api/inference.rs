//! The HTTP side of the inference gateway: its framework-free [`Reply`]s as
//! axum responses, and [`ollama_endpoint`], the Ollama-compatible router an
//! agent's inference endpoint (`OLLAMA_BASE_URL`) serves for one agent
//! identity ([`OllamaEndpoints`] is how the agent manager starts one).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fabric_gateway::api::{self, Reply, ReplyBody};
use fabric_gateway::{Caller, Gateway};
use futures_util::StreamExt as _;
use tokio::task::JoinHandle;

pub use crate::services::llm::EndpointIdentity;

/// Serves agents' inference endpoints for the agent manager
/// ([`InferenceServer`](crate::services::agents::InferenceServer)).
#[derive(Debug)]
pub struct OllamaEndpoints {
    pub gateway: Gateway,
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Serves the endpoint's `/mcp` (the agent's `MCP_URL`).
    pub mcp: Arc<crate::services::mcp::McpService>,
}

impl crate::services::agents::InferenceServer for OllamaEndpoints {
    fn serve_tcp(
        &self,
        listener: tokio::net::TcpListener,
        identity: EndpointIdentity,
    ) -> JoinHandle<()> {
        let agent = identity.agent.clone();
        let app = endpoint_router(
            self.gateway.clone(),
            Some(Arc::clone(&self.mcp)),
            identity,
            Arc::clone(&self.telemetry),
        );
        serve_nodelay(listener, app, agent)
    }

    fn serve_unix(
        &self,
        listener: tokio::net::UnixListener,
        identity: EndpointIdentity,
    ) -> JoinHandle<()> {
        let agent = identity.agent.clone();
        let app = endpoint_router(
            self.gateway.clone(),
            Some(Arc::clone(&self.mcp)),
            identity,
            Arc::clone(&self.telemetry),
        );
        serve_endpoint(listener, app, agent)
    }
}

/// The gateway's reply as an axum response, with `X-Fabric-Provider` (always)
/// and `X-Fabric-Model`, `Retry-After` when known.
pub fn into_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match reply.body {
        ReplyBody::Full(bytes) => Body::from(bytes),
        ReplyBody::Stream(chunks) => Body::from_stream(chunks.map(Ok::<_, Infallible>)),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(reply.content_type),
    );
    let provider = reply.provider.as_deref().unwrap_or(api::NO_PROVIDER);
    if let Ok(v) = HeaderValue::from_str(provider) {
        headers.insert(HeaderName::from_static("x-fabric-provider"), v);
    }
    if let Some(v) = reply
        .model
        .as_deref()
        .and_then(|m| HeaderValue::from_str(m).ok())
    {
        headers.insert(HeaderName::from_static("x-fabric-model"), v);
    }
    if let Some(secs) = reply.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if reply.content_type != api::JSON {
        // Streams must reach the client as produced, not after a proxy's buffer.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
    }
    response
}

/// Reads a request body of at most `limit` bytes (draining a moderately
/// larger one first, see `crate::body`); `Err` is the 413 (or a 400 when the
/// body could not be read).
pub(crate) async fn read_body(
    request: Request,
    limit: usize,
    request_id: &str,
) -> Result<(axum::http::request::Parts, bytes::Bytes), Response> {
    let (parts, body) = request.into_parts();
    match crate::body::read_limited(&parts.headers, body, limit).await {
        Ok(body) => Ok((parts, body)),
        Err(crate::body::BodyError::TooLarge { .. }) => {
            Err(into_response(Reply::too_large(limit, request_id)))
        }
        Err(e @ crate::body::BodyError::Unreadable(_)) => {
            let err = fabric_gateway::GatewayError::InvalidRequest {
                message: e.to_string(),
                provider: None,
            };
            Err(into_response(Reply::error(&err, request_id)))
        }
    }
}

#[derive(Clone)]
struct Endpoint {
    gateway: Gateway,
    identity: Arc<EndpointIdentity>,
    /// `/mcp`: the tools the agent's `tools[]` grants, its grants parsed
    /// once for the endpoint's life (absent: 404).
    mcp: Option<Arc<crate::services::mcp::AgentTools>>,
}

/// The agent-facing Ollama API for one agent: mount it on the listener of an
/// agent's inference endpoint (`localhost:11434` in its sandbox, or a
/// loopback port for isolation `none`). No credential is asked of the agent
/// (the listener is the agent's alone) and none is ever passed to it; every
/// call is metered against `identity`. Bodies over the gateway's limit
/// (10 MiB) get 413; the gateway's request timeout (120 s) bounds each call.
pub fn ollama_endpoint(
    gateway: Gateway,
    identity: EndpointIdentity,
    telemetry: Arc<crate::telemetry::Telemetry>,
) -> Router {
    endpoint_router(gateway, None, identity, telemetry)
}

/// [`ollama_endpoint`] with the agent's MCP gateway at `/mcp`.
fn endpoint_router(
    gateway: Gateway,
    mcp: Option<Arc<crate::services::mcp::McpService>>,
    identity: EndpointIdentity,
    telemetry: Arc<crate::telemetry::Telemetry>,
) -> Router {
    let mcp = mcp.map(|mcp| {
        Arc::new(mcp.agent_tools(crate::services::mcp::AgentCaller::new(
            identity.tenant.clone(),
            identity.agent.clone(),
            identity.workspace.clone(),
            &identity.tools,
        )))
    });
    let state = Endpoint {
        gateway,
        identity: Arc::new(identity),
        mcp,
    };
    let http = crate::telemetry::HttpLayer {
        telemetry,
        route: Some(AGENT_ENDPOINT_ROUTE),
    };
    Router::new()
        .fallback(endpoint_call)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            http,
            crate::telemetry::http_layer,
        ))
        .layer(axum::middleware::from_fn(crate::request_id::layer))
}

/// The `route` label of calls to agents' inference endpoints.
pub const AGENT_ENDPOINT_ROUTE: &str = "agent_inference_endpoint";

/// Serves [`ollama_endpoint`] on `listener` (TCP_NODELAY, so streams flow
/// token by token) until the task is aborted or the listener fails.
pub fn serve_ollama_endpoint(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    identity: EndpointIdentity,
    telemetry: Arc<crate::telemetry::Telemetry>,
) -> tokio::task::JoinHandle<()> {
    let agent = identity.agent.clone();
    serve_nodelay(
        listener,
        ollama_endpoint(gateway, identity, telemetry),
        agent,
    )
}

pub(crate) fn serve_nodelay(
    listener: tokio::net::TcpListener,
    app: Router,
    agent: fabric_core::AgentId,
) -> tokio::task::JoinHandle<()> {
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    serve_endpoint(listener, app, agent)
}

/// Serves an agent's endpoint `app` on `listener` (a socket, or TCP set
/// up by [`serve_nodelay`]) until the task is aborted or the listener fails.
pub(crate) fn serve_endpoint<L>(
    listener: L,
    app: Router,
    agent: fabric_core::AgentId,
) -> tokio::task::JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(agent_id = %agent, error = %e, "inference endpoint stopped");
        }
    })
}

/// The path of a call to an agent's endpoint below its secret, if it has
/// one (isolation `none`); `None` for a call without it, which gets
/// [`not_this_endpoint`].
pub(crate) fn endpoint_path(identity: &EndpointIdentity, request: &Request) -> Option<String> {
    let path = request.uri().path();
    let Some(secret) = &identity.path_secret else {
        return Some(path.to_owned());
    };
    let rest = strip_secret(path, secret);
    if rest.is_none() {
        tracing::info!(agent_id = %identity.agent, "inference call without the endpoint's secret refused");
    }
    rest.map(str::to_owned)
}

/// The 404 of a call without the endpoint's secret: Ollama's error shape,
/// nothing said of the agent or the secret.
pub(crate) fn not_this_endpoint() -> Response {
    let body = serde_json::json!({
        "error": "not found: this endpoint serves only its agent, at the URL its OLLAMA_BASE_URL names"
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

async fn endpoint_call(State(endpoint): State<Endpoint>, request: Request) -> Response {
    let request_id = crate::request_id::current();
    let method = request.method().as_str().to_owned();
    let Some(path) = endpoint_path(&endpoint.identity, &request) else {
        return not_this_endpoint();
    };
    if path == "/mcp"
        && let Some(tools) = &endpoint.mcp
    {
        return mcp_call(tools, request).await;
    }
    let (_, body) = match read_body(request, endpoint.gateway.max_body_bytes(), &request_id).await {
        Ok(read) => read,
        Err(too_large) => {
            tracing::info!(agent_id = %endpoint.identity.agent, "inference request over the size limit refused");
            return too_large;
        }
    };
    // The gateway's guard decides `llm:<model>` (its policy, with this
    // agent's identity and workspace).
    let caller = Caller {
        tenant: endpoint.identity.tenant.clone(),
        user: endpoint.identity.user.clone(),
        agent: Some(endpoint.identity.agent.clone()),
        workspace: endpoint.identity.workspace.clone(),
        request_id,
    };
    into_response(api::agent_endpoint(&endpoint.gateway, &caller, &method, &path, &body).await)
}

/// The agent's `MCP_URL`: its aggregated MCP server (POST), no stream
/// (GET) and no session (DELETE), like the main API's `/mcp`.
pub(crate) async fn mcp_call(
    tools: &crate::services::mcp::AgentTools,
    request: Request,
) -> Response {
    if request.method() != axum::http::Method::POST {
        return super::mcp::not_streamed().await;
    }
    let (parts, body) = request.into_parts();
    let headers = super::mcp::routing_headers(&parts.headers);
    let body = match crate::body::read_limited(&parts.headers, body, super::mcp::MAX_MESSAGE_BYTES)
        .await
    {
        Ok(body) => body,
        Err(e) => {
            let status = match e {
                crate::body::BodyError::TooLarge { .. } => 413,
                crate::body::BodyError::Unreadable(_) => 400,
            };
            let answer = crate::mcp::HttpAnswer {
                status,
                body: Some(serde_json::json!({"jsonrpc": "2.0", "id": null,
                    "error": {"code": crate::mcp::code::INVALID_REQUEST, "message": e.to_string()}})),
            };
            return super::mcp::json_answer(answer);
        }
    };
    super::mcp::json_answer(crate::mcp::handle_http(tools, &headers, &body).await)
}

/// `path` without its first segment if that segment is `secret` (compared
/// in constant time); `/` when nothing follows it.
fn strip_secret<'a>(path: &'a str, secret: &str) -> Option<&'a str> {
    let rest = path.strip_prefix('/')?;
    let (first, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let same = first.len() == secret.len()
        && first
            .bytes()
            .zip(secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    same.then_some(tail)
}

impl IntoResponse for ReplyResponse {
    fn into_response(self) -> Response {
        into_response(self.0)
    }
}

/// A gateway [`Reply`] returned from an axum handler.
pub struct ReplyResponse(pub Reply);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_the_secret_reach_the_gateway() {
        assert_eq!(strip_secret("/abc/api/chat", "abc"), Some("/api/chat"));
        assert_eq!(strip_secret("/abc", "abc"), Some("/"));
        assert_eq!(strip_secret("/api/chat", "abc"), None);
        assert_eq!(strip_secret("/abd/api/chat", "abc"), None);
        assert_eq!(strip_secret("/abcd/api/chat", "abc"), None);
        assert_eq!(strip_secret("", "abc"), None);
    }
}
