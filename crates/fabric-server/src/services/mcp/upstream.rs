//! One connection to an MCP server the fabric calls for agents: a stdio
//! server it runs (a sandbox of its own, or a confined host process), or a
//! remote one over Streamable HTTP. The fabric is the client: it agrees on
//! the protocol with `initialize` (2025-11-25, which stdio servers and
//! every SDK speak), then lists and calls tools.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fabric_core::mcp::McpServerSpec;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

use crate::mcp::{HANDSHAKE_VERSIONS, RpcError, code};

/// How long a server may take to start and answer `initialize`.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest line a stdio server may write (a tool result included).
const MAX_LINE_BYTES: usize = 64 << 20;

/// Why a request to a server failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("MCP server {server:?} did not answer {method} within {secs:.1} s")]
    Timeout {
        server: String,
        method: String,
        secs: f64,
    },
    #[error("MCP server {server:?} is not running: {reason}")]
    Gone { server: String, reason: String },
    #[error("MCP server {server:?} answered {method} with error {}: {}", .error.code, .error.message)]
    Rpc {
        server: String,
        method: String,
        error: RpcError,
    },
    #[error("MCP server {server:?}: {reason}")]
    Protocol { server: String, reason: String },
}

impl UpstreamError {
    /// As the agent's JSON-RPC error.
    pub fn to_rpc(&self) -> RpcError {
        match self {
            UpstreamError::Timeout { .. } => RpcError::new(code::TIMEOUT, self.to_string()),
            UpstreamError::Rpc { error, .. } => RpcError {
                code: error.code,
                message: self.to_string(),
                data: error.data.clone(),
            },
            _ => RpcError::new(code::INTERNAL_ERROR, self.to_string()),
        }
    }
}

type Answer = Result<Value, RpcError>;
type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// What keeps a stdio server running; dropping it stops the server.
pub(super) enum Running {
    /// Held for its drop, which kills the process group.
    Host {
        _process: fabric_runtime::HostProcess,
    },
    Sandbox {
        /// Held for its drop, which kills the process group.
        _process: fabric_runtime::sandbox::SandboxProcess,
        sandbox: Arc<fabric_runtime::sandbox::Sandbox>,
        /// The egress proxy and other listeners inside it.
        tasks: Vec<tokio::task::JoinHandle<()>>,
    },
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Sandbox { sandbox, tasks, .. } = self {
            for task in tasks.drain(..) {
                task.abort();
            }
            let sandbox = Arc::clone(sandbox);
            // The process group dies with its handle; the sandbox (cgroup,
            // namespaces, workdir) needs an await.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Err(e) = sandbox.destroy().await {
                        tracing::warn!(error = %e, "cannot remove an MCP server's sandbox");
                    }
                });
            }
        }
    }
}

struct Stdio {
    stdin: tokio::sync::Mutex<Writer>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>,
    _running: Running,
    reader: tokio::task::JoinHandle<()>,
}

struct Http {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
    /// `Mcp-Session-Id` the server gave at `initialize`, if any.
    session: Mutex<Option<String>>,
    version: Mutex<String>,
}

enum Transport {
    // Boxed: the process handles make it twice the size of the HTTP side.
    Stdio(Box<Stdio>),
    Http(Http),
}

/// A connection to one server instance.
pub struct Upstream {
    server: String,
    /// A stdio server's last stderr lines.
    stderr: Option<Arc<StderrTail>>,
    transport: Transport,
    alive: Arc<AtomicBool>,
    /// Why it stopped, once it has.
    ended: Arc<Mutex<Option<String>>>,
    next_id: AtomicU64,
    last_used: Mutex<Instant>,
    /// A call timed out: the server may be stuck (see [`Upstream::responsive`]).
    suspect: AtomicBool,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Transport::Stdio(stdio) = &self.transport {
            stdio.reader.abort();
        }
    }
}

/// Values that must never reach a log line: a server's secrets.
#[derive(Clone, Default)]
pub(super) struct Redact(Arc<Vec<String>>);

impl Redact {
    pub(super) fn of(spec: &McpServerSpec) -> Self {
        Self(Arc::new(
            spec.secret_env
                .values()
                .chain(spec.secret_headers.values())
                .filter(|v| v.len() >= 4)
                .cloned()
                .collect(),
        ))
    }

    pub(super) fn apply(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in self.0.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "[redacted]");
            }
        }
        out
    }
}

impl Upstream {
    /// Talks to a stdio server already started: its stdin, stdout and
    /// stderr, and what keeps it running.
    pub(super) fn stdio(
        server: &str,
        stdin: Writer,
        stdout: Pin<Box<dyn AsyncRead + Send>>,
        stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
        running: Running,
        redact: Redact,
    ) -> Arc<Upstream> {
        let alive = Arc::new(AtomicBool::new(true));
        let ended = Arc::new(Mutex::new(None));
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>> = Arc::default();
        let (replies_tx, mut replies_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let reader = tokio::spawn(read_stdout(
            server.to_owned(),
            stdout,
            Arc::clone(&pending),
            Arc::clone(&alive),
            Arc::clone(&ended),
            replies_tx,
        ));
        let stderr = stderr.map(|stderr| {
            let tail = Arc::new(StderrTail::default());
            tokio::spawn(log_stderr(
                server.to_owned(),
                stderr,
                redact,
                Arc::clone(&tail),
            ));
            tail
        });
        let upstream = Arc::new(Upstream {
            stderr,
            server: server.to_owned(),
            transport: Transport::Stdio(Box::new(Stdio {
                stdin: tokio::sync::Mutex::new(stdin),
                pending,
                _running: running,
                reader,
            })),
            alive,
            ended,
            next_id: AtomicU64::new(1),
            last_used: Mutex::new(Instant::now()),
            suspect: AtomicBool::new(false),
        });
        // Requests the server sends the fabric (ping, roots, sampling) get
        // an answer, so a server that asks does not hang.
        let weak = Arc::downgrade(&upstream);
        tokio::spawn(async move {
            while let Some(reply) = replies_rx.recv().await {
                let Some(upstream) = weak.upgrade() else {
                    break;
                };
                let _ = upstream.send_line(&reply).await;
            }
        });
        upstream
    }

    /// A remote server over Streamable HTTP.
    pub(super) fn http(spec: &McpServerSpec) -> Result<Arc<Upstream>, UpstreamError> {
        let server = spec.name.clone();
        let protocol = |reason: String| UpstreamError::Protocol {
            server: server.clone(),
            reason,
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in spec.headers.iter().chain(&spec.secret_headers) {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| protocol(format!("header name {name:?}: {e}")))?;
            let mut value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| protocol(format!("the value of header {name} is not valid")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("reactor-fabric/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| protocol(format!("cannot build an HTTP client: {e}")))?;
        Ok(Arc::new(Upstream {
            server: server.clone(),
            stderr: None,
            transport: Transport::Http(Http {
                client,
                url: spec.url.clone().unwrap_or_default(),
                headers,
                session: Mutex::new(None),
                version: Mutex::new(HANDSHAKE_VERSIONS[0].to_owned()),
            }),
            alive: Arc::new(AtomicBool::new(true)),
            ended: Arc::new(Mutex::new(None)),
            next_id: AtomicU64::new(1),
            last_used: Mutex::new(Instant::now()),
            suspect: AtomicBool::new(false),
        }))
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Why a stdio server stopped (its exit), once it has.
    pub fn ended(&self) -> Option<String> {
        self.ended.lock().clone()
    }

    /// Whether it still answers: after a call of its timed out, a ping
    /// must come back within `timeout` (a server stuck on that call, or
    /// one that serves one request at a time and is still busy with it, is
    /// then restarted by the caller).
    pub(super) async fn responsive(&self, timeout: Duration) -> bool {
        if !self.suspect.load(Ordering::Acquire) {
            return true;
        }
        let answered = self.request("ping", json!({}), timeout).await.is_ok();
        if answered {
            self.suspect.store(false, Ordering::Release);
        }
        answered
    }

    /// A stdio server's last stderr lines (secrets redacted), once its
    /// stderr has closed or `wait` has passed: why it would not start.
    pub(super) async fn stderr_tail(&self, wait: Duration) -> Option<String> {
        let tail = self.stderr.as_ref()?;
        let _ = tokio::time::timeout(wait, tail.closed.notified()).await;
        let lines = tail.lines.lock();
        (!lines.is_empty()).then(|| lines.iter().cloned().collect::<Vec<_>>().join(" | "))
    }

    pub(super) fn idle_for(&self) -> Duration {
        self.last_used.lock().elapsed()
    }

    /// `initialize` then `notifications/initialized`.
    pub(super) async fn initialize(&self) -> Result<(), UpstreamError> {
        let result = self
            .request(
                "initialize",
                json!({
                    "protocolVersion": HANDSHAKE_VERSIONS[0],
                    "capabilities": {},
                    "clientInfo": {"name": "reactor-fabric", "version": env!("CARGO_PKG_VERSION")},
                }),
                START_TIMEOUT,
            )
            .await?;
        let version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if !HANDSHAKE_VERSIONS.contains(&version.as_str()) {
            return Err(UpstreamError::Protocol {
                server: self.server.clone(),
                reason: format!(
                    "it speaks MCP {version:?}, which the fabric does not: it speaks {}",
                    HANDSHAKE_VERSIONS.join(", ")
                ),
            });
        }
        if let Transport::Http(http) = &self.transport {
            *http.version.lock() = version;
        }
        self.notify("notifications/initialized").await
    }

    /// Every tool the server offers (following `nextCursor`).
    pub(super) async fn list_tools(&self, timeout: Duration) -> Result<Vec<Value>, UpstreamError> {
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let page = self.request("tools/list", params, timeout).await?;
            if let Some(list) = page.get("tools").and_then(Value::as_array) {
                tools.extend(list.iter().cloned());
            }
            match page.get("nextCursor").and_then(Value::as_str) {
                Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
                _ => return Ok(tools),
            }
        }
        Ok(tools)
    }

    /// `tools/call`: the server's `CallToolResult`.
    pub(super) async fn call_tool(
        &self,
        tool: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value, UpstreamError> {
        self.request(
            "tools/call",
            json!({"name": tool, "arguments": arguments}),
            timeout,
        )
        .await
    }

    fn gone(&self) -> UpstreamError {
        UpstreamError::Gone {
            server: self.server.clone(),
            reason: self.ended().unwrap_or_else(|| "it stopped".to_owned()),
        }
    }

    async fn request(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, UpstreamError> {
        *self.last_used.lock() = Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let timed_out = || UpstreamError::Timeout {
            server: self.server.clone(),
            method: method.to_owned(),
            secs: timeout.as_secs_f64(),
        };
        let answer = match &self.transport {
            Transport::Stdio(stdio) => {
                if !self.is_alive() {
                    return Err(self.gone());
                }
                let (tx, rx) = oneshot::channel();
                stdio.pending.lock().insert(id, tx);
                if let Err(e) = self.send_line(&message).await {
                    stdio.pending.lock().remove(&id);
                    return Err(e);
                }
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(_)) => return Err(self.gone()),
                    Err(_) => {
                        stdio.pending.lock().remove(&id);
                        self.suspect.store(true, Ordering::Release);
                        // Tell the server to stop working on it.
                        let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                            "params": {"requestId": id, "reason": "timed out"}});
                        let _ = self.send_line(&cancel).await;
                        return Err(timed_out());
                    }
                }
            }
            Transport::Http(http) => {
                match tokio::time::timeout(timeout, self.post(http, method, &message, id)).await {
                    Ok(answer) => answer?,
                    Err(_) => {
                        self.suspect.store(true, Ordering::Release);
                        return Err(timed_out());
                    }
                }
            }
        };
        answer.map_err(|error| UpstreamError::Rpc {
            server: self.server.clone(),
            method: method.to_owned(),
            error,
        })
    }

    async fn notify(&self, method: &str) -> Result<(), UpstreamError> {
        let message = json!({"jsonrpc": "2.0", "method": method});
        match &self.transport {
            Transport::Stdio(_) => self.send_line(&message).await,
            Transport::Http(http) => {
                let response = self
                    .http_request(http, method, &message)
                    .send()
                    .await
                    .map_err(|e| self.http_error(&e))?;
                if !response.status().is_success() {
                    return Err(UpstreamError::Protocol {
                        server: self.server.clone(),
                        reason: format!("{method} answered HTTP {}", response.status()),
                    });
                }
                Ok(())
            }
        }
    }

    async fn send_line(&self, message: &Value) -> Result<(), UpstreamError> {
        let Transport::Stdio(stdio) = &self.transport else {
            return Ok(());
        };
        let mut line = message.to_string();
        line.push('\n');
        let mut stdin = stdio.stdin.lock().await;
        let written = async {
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await
        }
        .await;
        written.map_err(|e| {
            self.alive.store(false, Ordering::Release);
            UpstreamError::Gone {
                server: self.server.clone(),
                reason: self
                    .ended()
                    .unwrap_or_else(|| format!("cannot write to its stdin: {e}")),
            }
        })
    }

    fn http_request(&self, http: &Http, method: &str, message: &Value) -> reqwest::RequestBuilder {
        let mut request = http
            .client
            .post(&http.url)
            .headers(http.headers.clone())
            .header(
                reqwest::header::ACCEPT,
                "application/json, text/event-stream",
            )
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("mcp-method", method)
            .body(message.to_string());
        if method != "initialize" {
            request = request.header("mcp-protocol-version", http.version.lock().clone());
        }
        if let Some(session) = http.session.lock().clone() {
            request = request.header("mcp-session-id", session);
        }
        request
    }

    fn http_error(&self, e: &reqwest::Error) -> UpstreamError {
        // reqwest's error names the URL, never the headers.
        UpstreamError::Gone {
            server: self.server.clone(),
            reason: format!("cannot reach it: {e}"),
        }
    }

    /// One POST: the answer to request `id`, from a JSON body or an event stream.
    async fn post(
        &self,
        http: &Http,
        method: &str,
        message: &Value,
        id: u64,
    ) -> Result<Answer, UpstreamError> {
        let response = self
            .http_request(http, method, message)
            .send()
            .await
            .map_err(|e| self.http_error(&e))?;
        let status = response.status();
        if method == "initialize"
            && let Some(session) = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
        {
            *http.session.lock() = Some(session.to_owned());
        }
        let event_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let protocol = |reason: String| UpstreamError::Protocol {
            server: self.server.clone(),
            reason,
        };
        if event_stream {
            let mut body = response;
            let mut buffer = String::new();
            while let Some(chunk) = body
                .chunk()
                .await
                .map_err(|e| protocol(format!("its event stream broke: {e}")))?
            {
                // Events end with a blank line; lines may end with CRLF.
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                if buffer.contains('\r') {
                    buffer = buffer.replace("\r\n", "\n");
                }
                while let Some(end) = buffer.find("\n\n") {
                    let event: String = buffer.drain(..end + 2).collect();
                    let data: String = event
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect::<Vec<_>>()
                        .join("\n");
                    if let Ok(message) = serde_json::from_str::<Value>(&data)
                        && message.get("id").and_then(Value::as_u64) == Some(id)
                    {
                        return Ok(answer_of(message));
                    }
                }
            }
            return Err(protocol(format!(
                "its event stream for {method} ended without an answer"
            )));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| protocol(format!("cannot read its answer: {e}")))?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(message) if message.get("jsonrpc").is_some() => Ok(answer_of(message)),
            _ if status == reqwest::StatusCode::NOT_FOUND && http.session.lock().is_some() => {
                // The next call finds this instance gone and connects anew
                // (a new `initialize`, a new session).
                let reason = "its session expired (404): the next call starts a new one";
                self.alive.store(false, Ordering::Release);
                *self.ended.lock() = Some(reason.to_owned());
                Err(protocol(reason.to_owned()))
            }
            _ => Err(protocol(format!(
                "{method} answered HTTP {status} without a JSON-RPC message"
            ))),
        }
    }
}

fn answer_of(mut message: Value) -> Answer {
    if let Some(error) = message.get("error") {
        return Err(RpcError {
            code: error
                .get("code")
                .and_then(Value::as_i64)
                .unwrap_or(code::INTERNAL_ERROR),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_owned(),
            data: error.get("data").cloned(),
        });
    }
    // Taken, not cloned: a tool's answer may be large.
    Ok(message
        .get_mut("result")
        .map(Value::take)
        .unwrap_or(Value::Null))
}

/// Reads the server's stdout: answers go to their waiters, requests get a
/// reply, notifications are dropped. At EOF every waiter learns the server
/// is gone.
async fn read_stdout(
    server: String,
    stdout: Pin<Box<dyn AsyncRead + Send>>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>,
    alive: Arc<AtomicBool>,
    ended: Arc<Mutex<Option<String>>>,
    replies: tokio::sync::mpsc::UnboundedSender<Value>,
) {
    let mut lines = BufReader::new(stdout);
    let mut line = String::new();
    let reason = loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) => break "its stdout closed (the process exited)".to_owned(),
            Ok(n) if n > MAX_LINE_BYTES => {
                break format!("it wrote a line of {n} bytes, over the {MAX_LINE_BYTES} limit");
            }
            Ok(_) => {}
            Err(e) => break format!("cannot read its stdout: {e}"),
        }
        let Ok(message) = serde_json::from_str::<Value>(line.trim()) else {
            // stdout belongs to the protocol; a stray line is the server's bug.
            tracing::debug!(mcp_server = %server, "non-JSON line on an MCP server's stdout skipped");
            continue;
        };
        let id = message.get("id");
        match (message.get("method").and_then(Value::as_str), id) {
            (Some(method), Some(id)) => {
                let reply = if method == "ping" {
                    json!({"jsonrpc": "2.0", "id": id, "result": {}})
                } else {
                    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code::METHOD_NOT_FOUND,
                        "message": format!("the fabric does not offer {method} to MCP servers")}})
                };
                let _ = replies.send(reply);
            }
            (Some(_), None) => {}
            (None, Some(id)) => {
                if let Some(waiter) = id.as_u64().and_then(|id| pending.lock().remove(&id)) {
                    let _ = waiter.send(answer_of(message));
                }
            }
            (None, None) => {}
        }
    };
    alive.store(false, Ordering::Release);
    *ended.lock() = Some(reason.clone());
    tracing::warn!(mcp_server = %server, reason = %reason, "MCP server stopped");
    // Dropping the senders tells every waiter the server is gone.
    pending.lock().clear();
}

/// The last lines of a stdio server's stderr.
#[derive(Default)]
pub(super) struct StderrTail {
    lines: Mutex<std::collections::VecDeque<String>>,
    /// Notified (with a permit kept) when stderr closes.
    closed: tokio::sync::Notify,
}

/// How many stderr lines a start error quotes.
const STDERR_TAIL_LINES: usize = 5;

/// A stdio server's stderr, line by line, in the fabric's log (its secrets
/// redacted), the last lines kept for a start error.
async fn log_stderr(
    server: String,
    stderr: Pin<Box<dyn AsyncRead + Send>>,
    redact: Redact,
    tail: Arc<StderrTail>,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line: String = redact.apply(&line).chars().take(2000).collect();
        tracing::info!(mcp_server = %server, line = %line, "MCP server stderr");
        let mut kept = tail.lines.lock();
        if kept.len() == STDERR_TAIL_LINES {
            kept.pop_front();
        }
        kept.push_back(line.chars().take(300).collect());
    }
    tail.closed.notify_one();
}
