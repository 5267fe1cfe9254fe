//! The API's accept loop: HTTP/1.1 connections with a header-read timeout
//! (which also ends idle keep-alive connections), a cap on connections in
//! all and per client address, and a small reserve that keeps `/healthz`,
//! `/readyz`, `/metrics` and the agent protocol answering when the cap is
//! reached. axum's own `serve` has none of these: a client that opens
//! connections and sends nothing held a file descriptor and ~48 KB each,
//! forever, until the server ran out of descriptors (issue #16).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::error::ApiError;
use crate::protocol_errors::{Answering, JsonErrors};

/// Limits of the API listener (`serve --max-connections`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenLimits {
    /// Connections served at once; past it only the reserve's paths are.
    pub max_connections: usize,
    /// Connections one client address may hold at once.
    pub max_per_address: usize,
    /// Time a client has to send a request's headers, and how long a
    /// keep-alive connection may sit idle between requests.
    pub header_timeout: Duration,
}

impl Default for ListenLimits {
    fn default() -> Self {
        Self {
            max_connections: 8192,
            // Agents' traffic reaches the API from 127.0.0.1 (sandbox and
            // sidecar forwards): room for a large fleet from one address.
            max_per_address: 4096,
            header_timeout: Duration::from_secs(15),
        }
    }
}

/// Connections beyond `max_connections` still served, for the paths a
/// supervisor and the agents need.
const RESERVE: usize = 64;

/// Reserve connections one address may hold: a flood that spills over
/// the cap cannot take the whole reserve.
const RESERVE_PER_ADDRESS: usize = 8;
/// A reserve connection must send its request at once: idle ones are
/// dropped after this, whatever `--header-timeout` says.
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// Paths the reserve serves: health, metrics and the agent protocol.
fn essential(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics") || path.starts_with("/v1/agent/")
}

/// Serves `app` on `listener` until `stop`, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let main = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let reserve = Arc::new(Semaphore::new(RESERVE));
    let per_address: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let reserve_per_address: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let restricted = app.clone().layer(axum::middleware::from_fn(only_essential));
    let load = Arc::new(Load::default());
    let connections = TaskTracker::new();
    // Dropped at the end: every connection then finishes its request in
    // flight and closes (hyper's graceful shutdown).
    let (closing, closed) = watch::channel(false);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let Some(address) = AddressSlot::take(&per_address, peer.ip(), limits.max_per_address)
        else {
            tracing::debug!(client = %peer, "too many connections from one address; closed");
            continue;
        };
        let (permit, app, header_timeout, in_reserve) = match Arc::clone(&main).try_acquire_owned()
        {
            Ok(permit) => (permit, app.clone(), limits.header_timeout, None),
            Err(_) => {
                let slot = AddressSlot::take(&reserve_per_address, peer.ip(), RESERVE_PER_ADDRESS);
                match (slot, Arc::clone(&reserve).try_acquire_owned()) {
                    (Some(slot), Ok(permit)) => (
                        permit,
                        restricted.clone(),
                        limits.header_timeout.min(RESERVE_HEADER_TIMEOUT),
                        Some(slot),
                    ),
                    _ => {
                        tracing::debug!(client = %peer, "connection cap and reserve full; closed");
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let closed = closed.clone();
        let opened = load.opened();
        connections.spawn(serve_connection(
            stream,
            peer,
            app,
            header_timeout,
            (permit, address, opened, in_reserve),
            closed,
        ));
    }
    drop(listener);
    let _ = closing.send(true);
    connections.close();
    connections.wait().await;
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    slots: (
        OwnedSemaphorePermit,
        AddressSlot,
        Opened,
        Option<AddressSlot>,
    ),
    mut closed: watch::Receiver<bool>,
) {
    let _slots = slots;
    let answering = Answering::default();
    let tracked = answering.clone();
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let mut request: Request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            let tracked = tracked.clone();
            async move {
                let response = app.oneshot(request).await.into_response();
                Ok::<Response, Infallible>(tracked.track(response))
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let connection = builder
        .serve_connection(TokioIo::new(JsonErrors::new(stream, answering)), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::trace!(client = %peer, error = %e, "connection ended");
            }
            return;
        }
        _ = closed.wait_for(|closed| *closed) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// Connections open now and the most open since memory was last trimmed:
/// when a flood of connections is over, the allocator is asked to give
/// their buffers back (glibc keeps freed heap otherwise, and the RSS stayed
/// at the flood's peak).
#[derive(Default)]
struct Load {
    open: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

/// A peak of open connections worth trimming after.
const TRIM_AFTER_PEAK: usize = 1024;

impl Load {
    fn opened(self: &Arc<Self>) -> Opened {
        use std::sync::atomic::Ordering::Relaxed;
        let open = self.open.fetch_add(1, Relaxed) + 1;
        self.peak.fetch_max(open, Relaxed);
        Opened(Arc::clone(self))
    }
}

/// One open connection in [`Load`]; closing the last of a flood trims.
struct Opened(Arc<Load>);

impl Drop for Opened {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let open = self.0.open.fetch_sub(1, Relaxed) - 1;
        let peak = self.0.peak.load(Relaxed);
        if peak >= TRIM_AFTER_PEAK
            && open <= peak / 8
            && self
                .0
                .peak
                .compare_exchange(peak, open, Relaxed, Relaxed)
                .is_ok()
        {
            tokio::task::spawn_blocking(|| {
                let released = fabric_runtime::release_free_memory();
                tracing::debug!(released, "connection flood over: trimmed the heap");
            });
        }
    }
}

/// One connection counted against its client address; uncounted on drop.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl AddressSlot {
    fn take(
        counts: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        address: IpAddr,
        max: usize,
    ) -> Option<Self> {
        let mut map = counts.lock();
        let count = map.entry(address).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Self {
            counts: Arc::clone(counts),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock();
        if let Some(count) = map.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.address);
            }
        }
    }
}

/// The reserve's router layer: essential paths pass, the rest is a 503.
async fn only_essential(request: Request, next: axum::middleware::Next) -> Response {
    if essential(request.uri().path()) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "server_busy",
        "the server is at its connection limit; retry in a moment (health checks and the agent protocol are still served)",
    )
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}
