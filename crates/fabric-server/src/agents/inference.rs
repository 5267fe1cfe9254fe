//! The inference endpoint agents see as `OLLAMA_BASE_URL` (SPEC §6): the
//! fabric's side of it, one [`InferenceForward`](crate::proxy::InferenceForward)
//! hop to the configured upstream until the gateway lands. It listens on
//! loopback (isolation `none`, shared), inside a sandbox's network namespace
//! (`process`) or on a container agent's `inference.sock`, which its sidecar
//! forwards `localhost:11434` to (`container`). See `crate::proxy` for the
//! limits (10 MiB → 413, timeout → 504, no credentials).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use fabric_core::AgentId;
use tokio::task::JoinHandle;

use super::Inner;
use crate::proxy::{InferenceForward, Upstream};

fn forwarder(inner: &Inner, agent: &str) -> Result<InferenceForward, String> {
    InferenceForward::new(
        inner.config.inference_upstream.clone().map(Upstream::Url),
        inner.config.inference_timeout,
        agent,
    )
}

/// Serves the endpoint on a listener bound inside an agent's sandbox.
pub(super) fn serve_std(
    listener: std::net::TcpListener,
    inner: &Inner,
    agent: AgentId,
) -> Result<JoinHandle<()>, String> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| format!("cannot serve the inference endpoint: {e}"))?;
    let app = forwarder(inner, agent.as_str())?.router();
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "inference endpoint stopped");
        }
    }))
}

/// Serves the endpoint on a container agent's socket (its sidecar's upstream).
pub(super) fn serve_unix(
    listener: tokio::net::UnixListener,
    inner: &Inner,
    agent: &AgentId,
) -> Result<JoinHandle<()>, String> {
    let app = forwarder(inner, agent.as_str())?.router();
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "inference endpoint stopped");
        }
    }))
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
    let app = forwarder(inner, "shared")?.router();
    // Lives as long as the server.
    drop(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "inference endpoint stopped");
        }
    }));
    *slot = Some(addr);
    Ok(addr)
}
