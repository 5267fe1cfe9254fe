//! The inference endpoint agents see as `OLLAMA_BASE_URL` (REQUIREMENTS §6): the
//! gateway's Ollama-compatible API (served by the HTTP layer's [`InferenceServer`]) for one
//! agent, so every call is routed (local first, cloud fallback), metered
//! against the agent, its owner and tenant, and made with the fabric's own
//! provider keys, never the agent's. It listens on a loopback port of the
//! agent's own under a secret path (isolation `none`), inside the sandbox's network namespace on
//! `localhost:11434` (`process`), or on a container agent's `inference.sock`,
//! which its sidecar forwards `localhost:11434` to (`container`). Bodies over
//! the gateway's limit (10 MiB) get 413, calls past its request timeout
//! (120 s) 504; the agent needs no credential and none reaches it.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::task::JoinHandle;

use super::SessionRuntime;
use super::session::SessionError;
use crate::services::llm::EndpointIdentity;

/// Serves the endpoint on a listener bound inside an agent's sandbox.
pub(super) fn serve_std(
    listener: std::net::TcpListener,
    runtime: &SessionRuntime,
    identity: EndpointIdentity,
) -> Result<JoinHandle<()>, SessionError> {
    listener
        .set_nonblocking(true)
        .map_err(SessionError::ServeInference)?;
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(SessionError::ServeInference)?;
    Ok(runtime.config.inference.serve_tcp(listener, identity))
}

/// Serves the endpoint on a container agent's socket (its sidecar's upstream).
pub(super) fn serve_unix(
    listener: tokio::net::UnixListener,
    runtime: &SessionRuntime,
    identity: EndpointIdentity,
) -> JoinHandle<()> {
    runtime.config.inference.serve_unix(listener, identity)
}

/// The endpoint of an isolation `none` agent: a loopback port of its own, so
/// its calls are metered against it. Any local process can connect to a
/// loopback port, so every call must start its path with a secret made for
/// this session, which only the agent's `OLLAMA_BASE_URL` carries; anything
/// else answers 404. Returns that base URL and the server task (the session
/// aborts it at its end).
pub(super) fn serve_loopback(
    runtime: &SessionRuntime,
    mut identity: EndpointIdentity,
) -> Result<(String, JoinHandle<()>), SessionError> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(SessionError::OpenInference)?;
    let addr: SocketAddr = listener.local_addr().map_err(SessionError::OpenInference)?;
    let secret = hex::encode(rand::random::<[u8; 16]>());
    let url = format!("http://{addr}/{secret}");
    identity.path_secret = Some(secret);
    Ok((url, serve_std(listener, runtime, identity)?))
}

/// Serves an agent's inference endpoint on a listener: the HTTP layer's
/// business (`crate::api::inference::OllamaEndpoints`), given to the
/// manager at construction so this service needs no HTTP framework.
pub trait InferenceServer: Send + Sync + std::fmt::Debug {
    /// Serves on a TCP listener (a sandbox's `localhost:11434`, or an
    /// isolation `none` agent's loopback port) until aborted.
    fn serve_tcp(
        &self,
        listener: tokio::net::TcpListener,
        identity: EndpointIdentity,
    ) -> JoinHandle<()>;
    /// Serves on a container agent's `inference.sock` until aborted.
    fn serve_unix(
        &self,
        listener: tokio::net::UnixListener,
        identity: EndpointIdentity,
    ) -> JoinHandle<()>;
}
