//! The container sidecar (`reactor-fabric proxy`): what a container agent
//! reaches as `OLLAMA_BASE_URL` (REQUIREMENTS §6) inside its network namespace.
//!
//! [`InferenceForward`] is its forwarding hop, with the limits of REQUIREMENTS §6: request
//! bodies over [`MAX_REQUEST_BYTES`] get 413, an upstream slower than its
//! timeout (120 s) gets 504, and credentials never pass (`Authorization` and
//! `Proxy-Authorization` from the agent are dropped; none are added). Its
//! upstream is the fabric's per-agent inference endpoint (the gateway's
//! Ollama API, `crate::api::inference::ollama_endpoint`) on a Unix socket: the
//! sidecar's network namespace reaches nothing else.
//!
//! [`run_sidecar`] is the sidecar: in the agent container's network namespace
//! it listens on `127.0.0.1:11434` (the inference forwarder, towards the
//! fabric's per-agent `inference.sock`) and optionally on the API and
//! egress-proxy ports, which it splices byte for byte to `api.sock` and
//! `egress.sock` in the same directory.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Largest request body forwarded.
pub const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;
/// Longest a request may take upstream, response included.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);
/// The inference endpoint's port inside a sandbox or container (`OLLAMA_BASE_URL`).
pub const INFERENCE_PORT: u16 = 11434;
/// The egress proxy's port inside a sandbox or container (`HTTP_PROXY`).
pub const EGRESS_PROXY_PORT: u16 = 3128;
/// Serves `proxy` on `listener` (bound inside a sandbox at
/// [`EGRESS_PROXY_PORT`]) until the task is aborted; `owner` names it in
/// the log should it stop.
pub fn spawn_egress_proxy(
    proxy: fabric_runtime::net::EgressProxy,
    listener: std::net::TcpListener,
    owner: String,
) -> tokio::task::JoinHandle<()> {
    let serve = proxy.serve(listener, std::future::pending());
    tokio::spawn(async move {
        if let Err(e) = serve.await {
            tracing::warn!(owner = %owner, error = %e, "egress proxy stopped");
        }
    })
}

/// The environment that sends a sandboxed program's HTTP(S) through the
/// egress proxy at [`EGRESS_PROXY_PORT`] (both spellings: tools read one or
/// the other).
pub fn egress_proxy_env() -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{EGRESS_PROXY_PORT}");
    ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
        .into_iter()
        .map(|key| (key.to_owned(), url.clone()))
        .collect()
}

/// Socket names in a container agent's socket directory.
pub const INFERENCE_SOCKET: &str = "inference.sock";
pub const API_SOCKET: &str = "api.sock";
pub const EGRESS_SOCKET: &str = "egress.sock";

/// One forwarding hop of inference requests; see the module docs.
#[derive(Clone)]
pub struct InferenceForward {
    client: reqwest::Client,
    timeout: Duration,
    /// Who the endpoint serves, for the log.
    agent: Arc<str>,
}

impl InferenceForward {
    /// A forwarder to the HTTP server on the Unix socket `upstream`, for
    /// `agent` (a name for the log).
    pub fn new(
        upstream: &Path,
        timeout: Duration,
        agent: &str,
    ) -> Result<InferenceForward, String> {
        let client = reqwest::Client::builder()
            .unix_socket(upstream)
            .connect_timeout(Duration::from_secs(10))
            // Below the fabric's idle keep-alive limit (15 s by default).
            .pool_idle_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(InferenceForward {
            client,
            timeout,
            agent: Arc::from(agent),
        })
    }

    /// Every path and method, forwarded.
    pub fn router(self) -> Router {
        Router::new().fallback(forward).with_state(self)
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus
/// the ones the forwarder sets itself and credentials.
const NOT_FORWARDED: [HeaderName; 6] = [
    header::CONNECTION,
    header::HOST,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
];

async fn forward(State(fwd): State<InferenceForward>, request: Request) -> Response {
    // The host is not used on a Unix socket; it only fills the URL.
    let (upstream, client) = ("http://fabric", &fwd.client);
    let (parts, body) = request.into_parts();
    // Drains a moderately oversized body before answering, so the agent
    // reads the 413 rather than a reset (see `crate::body`).
    let body = match crate::body::read_limited(&parts.headers, body, MAX_REQUEST_BYTES).await {
        Ok(b) => b,
        Err(crate::body::BodyError::TooLarge { .. }) => {
            tracing::info!(agent_id = %fwd.agent, "inference request over 10 MiB refused");
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("inference requests are limited to {MAX_REQUEST_BYTES} bytes"),
            );
        }
        Err(e @ crate::body::BodyError::Unreadable(_)) => {
            return error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string());
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
                    fwd.timeout.as_secs()
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

/// What `reactor-fabric proxy` serves.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The fabric's sockets for this agent: `inference.sock`, `api.sock`, `egress.sock`.
    pub socket_dir: PathBuf,
    /// The inference endpoint (`127.0.0.1:11434`).
    pub inference_listen: SocketAddr,
    /// The fabric API (`FABRIC_URL`), when the agent gets one.
    pub api_listen: Option<SocketAddr>,
    /// The egress proxy (`HTTP_PROXY`).
    pub egress_listen: Option<SocketAddr>,
    /// Per inference request, response included.
    pub timeout: Duration,
}

/// Runs the sidecar until `shutdown`; fails at once when a port cannot be bound.
pub async fn run_sidecar(
    config: SidecarConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    let inference = bind(config.inference_listen).await?;
    let forward = InferenceForward::new(
        &config.socket_dir.join(INFERENCE_SOCKET),
        config.timeout,
        "sidecar",
    )
    .map_err(anyhow::Error::msg)?;
    let stop = stopped();
    tasks.spawn(async move {
        if let Err(e) = axum::serve(inference, forward.router())
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "inference endpoint stopped");
        }
    });
    for (listen, socket) in [
        (config.api_listen, API_SOCKET),
        (config.egress_listen, EGRESS_SOCKET),
    ] {
        let Some(addr) = listen else { continue };
        let listener = bind(addr).await?;
        let path = config.socket_dir.join(socket);
        tasks.spawn(fabric_runtime::net::forward_tcp_to_unix(
            listener,
            path,
            stopped(),
        ));
    }
    tracing::info!(socket_dir = %config.socket_dir.display(), inference = %config.inference_listen,
        api = ?config.api_listen, egress = ?config.egress_listen, "sidecar serving");
    shutdown.await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Binds `path` as a Unix listener the sidecar (user 65534) may connect to:
/// owned by that user when the fabric may chown (root), else world-connectable
/// (the directory holding it is the fabric's, see the session docs).
pub fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, SocketError> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).map_err(|source| SocketError::Listen {
        path: path.to_path_buf(),
        source,
    })?;
    use std::os::unix::fs::PermissionsExt;
    let owned = std::os::unix::fs::chown(
        path,
        Some(fabric_docker::image::IMAGE_UID as u32),
        Some(fabric_docker::image::IMAGE_UID as u32),
    )
    .is_ok();
    let mode = if owned { 0o600 } else { 0o666 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        SocketError::Mode {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

/// Why [`bind_socket`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot listen on {}: {source}", path.display())]
    Listen {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set the mode of {}: {source}", path.display())]
    Mode {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}
