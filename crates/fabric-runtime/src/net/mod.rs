//! The network services the fabric serves inside a sandbox's network namespace: the egress proxy and TCP forwards (REQUIREMENTS §5, FR-ISO-5).
//!
//! A sandbox's network namespace has only `lo`, so nothing in it reaches the
//! host or the internet by itself. The fabric opens listeners inside with
//! [`Sandbox::bind_tcp`](crate::Sandbox::bind_tcp) and serves them from its
//! own tasks, whose outgoing sockets live in the host's namespace: every
//! byte that leaves a sandbox passes through one of these.
//!
//! - [`EgressProxy`]: an HTTP proxy (`CONNECT` tunnels and absolute-form
//!   plain HTTP) that lets an agent reach exactly the `host:port`s of its
//!   egress allowlist, answers 403 to the rest, and reports every decision
//!   to an audit hook and as a `tracing` event (target `audit`). Agents find
//!   it through [`proxy_env`].
//! - [`forward_tcp`]: every connection to a listener spliced to one
//!   host-side address; how `FABRIC_URL` and the inference endpoint appear
//!   inside a sandbox.
//!
//! ```no_run
//! # async fn demo(sandbox: &fabric_runtime::Sandbox) -> Result<(), fabric_runtime::RuntimeError> {
//! use std::sync::Arc;
//! use fabric_core::agent::parse_egress;
//! use fabric_runtime::net::{EgressProxy, forward_tcp, proxy_env};
//!
//! let rules = vec![parse_egress("api.github.com:443").map_err(|reason| {
//!     fabric_runtime::RuntimeError::InvalidSandboxConfig { reason }
//! })?];
//! let audit = Arc::new(|d: &fabric_runtime::net::EgressDecision| println!("{d:?}"));
//! let proxy = EgressProxy::new("coder", rules, audit);
//! let listener = sandbox.bind_tcp(0)?;
//! let env = proxy_env(listener.local_addr().map(|a| a.port()).unwrap_or(0));
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! tokio::spawn(proxy.serve(listener, async { let _ = stopped.await; }));
//!
//! let api = sandbox.bind_tcp(8080)?;
//! tokio::spawn(forward_tcp(api, ([127, 0, 0, 1], 7700).into(), std::future::pending()));
//! # drop((env, stop)); Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `egress`: [`EgressProxy`], its [`EgressDecision`]s and the per-connection
//!   work (check, resolve, connect, splice).
//! - `http`: reading and parsing a request head (capped at 16 KiB),
//!   rewriting it for the upstream, the proxy's plain-text responses.
//! - here: [`forward_tcp`], [`proxy_env`] and the accept loop both servers
//!   share (a connection cap, shutdown).

mod egress;
mod http;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinSet;

pub use self::egress::{AuditHook, EgressDecision, EgressProxy, GateFuture, PolicyGate};
pub use self::http::EgressMethod;
use crate::RuntimeError;

/// Connections one proxy or forward serves at once; more wait in the
/// listener's backlog until one ends, so one agent cannot exhaust the
/// fabric's file descriptors or tasks.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// How long resolving and connecting to an upstream may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client of the egress proxy may take to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Proxy variables as agents read them (curl, Python, Go, Node read one
/// spelling or the other).
pub const ENV_HTTP_PROXY: [&str; 2] = ["HTTP_PROXY", "http_proxy"];
pub const ENV_HTTPS_PROXY: [&str; 2] = ["HTTPS_PROXY", "https_proxy"];
pub const ENV_NO_PROXY: [&str; 2] = ["NO_PROXY", "no_proxy"];
/// What bypasses the proxy: the sandbox's own loopback, where the fabric
/// serves `FABRIC_URL` and the inference endpoint. (A request for
/// `localhost` through the proxy would mean the *host's* loopback, which
/// the allowlist decides about.)
pub const NO_PROXY: &str = "localhost,127.0.0.1,::1";

/// The environment that points an agent's HTTP clients at an egress proxy
/// listening on `127.0.0.1:port` inside its sandbox.
pub fn proxy_env(port: u16) -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{port}");
    ENV_HTTP_PROXY
        .iter()
        .chain(&ENV_HTTPS_PROXY)
        .map(|key| (key.to_string(), url.clone()))
        .chain(
            ENV_NO_PROXY
                .iter()
                .map(|key| (key.to_string(), NO_PROXY.to_string())),
        )
        .collect()
}

/// Accepts connections on `listener` (typically from
/// [`Sandbox::bind_tcp`](crate::Sandbox::bind_tcp), so inside a sandbox) and
/// splices each, both ways, to `target` on the host side, until `shutdown`
/// completes; then stops accepting and drops the open connections.
///
/// A connection whose `target` cannot be reached within [`CONNECT_TIMEOUT`]
/// is closed (logged at `warn`). At most [`DEFAULT_MAX_CONNECTIONS`] are open
/// at once. Needs a tokio runtime; returns only on shutdown, or at once if
/// the listener cannot be used.
pub async fn forward_tcp(
    listener: std::net::TcpListener,
    target: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let listener = into_tokio(listener, "TCP forward")?;
    serve_connections(listener, DEFAULT_MAX_CONNECTIONS, shutdown, move |client| {
        forward_one(client, target)
    })
    .await;
    Ok(())
}

/// [`forward_tcp`] from a Unix socket: each connection to `listener` spliced
/// to `target`. How a container's sidecar reaches the fabric's API (the
/// container has no network; the socket is in a directory mounted into it).
pub async fn forward_unix_to_tcp(
    listener: UnixListener,
    target: SocketAddr,
    shutdown: impl Future<Output = ()>,
) {
    serve_connections(listener, DEFAULT_MAX_CONNECTIONS, shutdown, move |client| {
        forward_one(client, target)
    })
    .await;
}

/// The other end of [`forward_unix_to_tcp`]: each connection to a TCP
/// `listener` spliced to the Unix socket at `path` (connected per connection,
/// so the socket may appear after the listener starts).
pub async fn forward_tcp_to_unix(
    listener: TcpListener,
    path: PathBuf,
    shutdown: impl Future<Output = ()>,
) {
    serve_connections(listener, DEFAULT_MAX_CONNECTIONS, shutdown, move |client| {
        let path = path.clone();
        async move { forward_one_unix(client, &path).await }
    })
    .await;
}

async fn forward_one_unix(mut client: TcpStream, path: &Path) {
    let upstream = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path)).await;
    let mut upstream = match upstream {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::warn!(socket = %path.display(), error = %err, "forward: cannot connect to the fabric's socket");
            return;
        }
        Err(_) => {
            tracing::warn!(socket = %path.display(), "forward: connecting to the fabric's socket timed out");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// A client connection a proxy or forward serves: TCP or Unix.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Small writes go out at once (TCP); nothing to do on a Unix socket.
    fn no_delay(&self) {}
}

impl ClientStream for TcpStream {
    fn no_delay(&self) {
        let _ = self.set_nodelay(true);
    }
}

impl ClientStream for UnixStream {}

/// A listener [`serve_connections`] accepts from.
pub(crate) trait Acceptor {
    type Stream: ClientStream;
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Acceptor for TcpListener {
    type Stream = TcpStream;
    async fn accept_one(&self) -> io::Result<TcpStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Acceptor for UnixListener {
    type Stream = UnixStream;
    async fn accept_one(&self) -> io::Result<UnixStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

async fn forward_one(mut client: impl ClientStream, target: SocketAddr) {
    let upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await;
    let mut upstream = match upstream {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::warn!(%target, error = %err, "TCP forward: cannot connect to the target");
            return;
        }
        Err(_) => {
            tracing::warn!(%target, "TCP forward: connecting to the target timed out");
            return;
        }
    };
    client.no_delay();
    let _ = upstream.set_nodelay(true);
    // An error here is one side resetting: the connection is over either way.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// The listener as tokio's, or why it cannot be one.
fn into_tokio(
    listener: std::net::TcpListener,
    service: &'static str,
) -> Result<TcpListener, RuntimeError> {
    let failed = |cause| RuntimeError::Listener { service, cause };
    listener.set_nonblocking(true).map_err(failed)?;
    TcpListener::from_std(listener).map_err(failed)
}

/// Runs `handle` on every accepted connection, at most `max` at once, until
/// `shutdown`; then aborts those still open.
async fn serve_connections<L, F, Fut>(
    listener: L,
    max: usize,
    shutdown: impl Future<Output = ()>,
    handle: F,
) where
    L: Acceptor,
    F: Fn(L::Stream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let max = max.max(1);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            // Reap finished connections first, so the count below is of open ones.
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = ended
                    && err.is_panic()
                {
                    tracing::error!("a proxied connection's task panicked");
                }
            }
            accepted = listener.accept_one(), if connections.len() < max => match accepted {
                Ok(stream) => {
                    connections.spawn(handle(stream));
                }
                Err(err) => {
                    // Out of descriptors or memory, or a connection reset
                    // before it was accepted: wait a little, keep serving.
                    if !is_transient_accept_error(&err) {
                        tracing::warn!(error = %err, "accepting a connection failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    connections.shutdown().await;
}

fn is_transient_accept_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
