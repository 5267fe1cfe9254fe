//! The inference endpoint agents see as `OLLAMA_BASE_URL` (SPEC §6, issue #3
//! scope 5): a plain HTTP forwarder to the configured upstream until the
//! gateway lands. Requests over [`MAX_REQUEST_BYTES`] get 413; an upstream
//! slower than [`UPSTREAM_TIMEOUT`] gets 504. Agents hold no credentials and
//! none are added or passed on: `Authorization` from the agent is dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fabric_core::AgentId;
use tokio::task::JoinHandle;

use super::Inner;

/// Largest request body forwarded.
pub const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;
/// Longest a request may take upstream, response included (default of
/// `ServerConfig::inference_timeout`).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone)]
struct Forward {
    upstream: Option<Arc<str>>,
    timeout: Duration,
    /// Who the endpoint serves, for the log (`shared` for isolation `none`).
    agent: Arc<str>,
}

fn client() -> Option<&'static reqwest::Client> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .ok()
        })
        .as_ref()
}

/// Serves the endpoint on a listener bound inside an agent's sandbox.
pub(super) fn serve_std(
    listener: std::net::TcpListener,
    inner: &Inner,
    agent: AgentId,
) -> Result<JoinHandle<()>, String> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| format!("cannot serve the inference endpoint: {e}"))?;
    Ok(serve(listener, inner, agent.as_str()))
}

fn serve(listener: tokio::net::TcpListener, inner: &Inner, agent: &str) -> JoinHandle<()> {
    let state = Forward {
        upstream: inner
            .config
            .inference_upstream
            .as_deref()
            .map(|u| Arc::from(u.trim_end_matches('/'))),
        timeout: inner.config.inference_timeout,
        agent: Arc::from(agent),
    };
    let app = Router::new().fallback(forward).with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "inference endpoint stopped");
        }
    })
}

/// The loopback endpoint shared by every isolation `none` agent, started on first use.
pub(super) fn host_endpoint(inner: &Arc<Inner>) -> Result<SocketAddr, String> {
    let mut slot = inner.host_inference.lock();
    if let Some(addr) = *slot {
        return Ok(addr);
    }
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot open the inference endpoint: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot open the inference endpoint: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot open the inference endpoint: {e}"))?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| format!("cannot serve the inference endpoint: {e}"))?;
    // Lives as long as the server.
    drop(serve(listener, inner, "shared"));
    *slot = Some(addr);
    Ok(addr)
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus
/// the ones the forwarder sets itself.
const NOT_FORWARDED: [HeaderName; 6] = [
    header::CONNECTION,
    header::HOST,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
];

async fn forward(State(fwd): State<Forward>, request: Request) -> Response {
    let Some(upstream) = fwd.upstream.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_inference_upstream",
            "no inference upstream is configured: start the fabric with --inference-upstream URL (or OLLAMA_BASE_URL)".into(),
        );
    };
    let Some(client) = client() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no HTTP client".into(),
        );
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            tracing::info!(agent_id = %fwd.agent, "inference request over 10 MiB refused");
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("inference requests are limited to {MAX_REQUEST_BYTES} bytes"),
            );
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let url = format!("{upstream}{path}");
    let mut outbound = client
        .request(parts.method.clone(), &url)
        .timeout(fwd.timeout)
        .body(body);
    for (name, value) in &parts.headers {
        if !NOT_FORWARDED.contains(name) {
            outbound = outbound.header(name, value);
        }
    }
    let started = std::time::Instant::now();
    let response = match outbound.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!(
                    "the inference upstream did not answer within {}s",
                    UPSTREAM_TIMEOUT.as_secs()
                ),
            );
        }
        Err(e) => {
            tracing::warn!(agent_id = %fwd.agent, error = %e, "inference upstream unreachable");
            return error(
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                "the inference upstream is unreachable".into(),
            );
        }
    };
    tracing::info!(agent_id = %fwd.agent, method = %parts.method, path = parts.uri.path(),
        status = response.status().as_u16(), latency_ms = started.elapsed().as_millis() as u64, "inference call");
    let mut builder = Response::builder().status(response.status().as_u16());
    for (name, value) in response.headers() {
        if !NOT_FORWARDED.contains(name) {
            builder = builder.header(name, value);
        }
    }
    builder
        .body(Body::from_stream(response.bytes_stream()))
        .unwrap_or_else(|e| {
            error(
                StatusCode::BAD_GATEWAY,
                "bad_upstream_response",
                e.to_string(),
            )
        })
}
