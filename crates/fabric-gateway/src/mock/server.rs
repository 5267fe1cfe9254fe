//! The mock LLM server (`reactor-fabric mock-llm`): Ollama (`/api/...`),
//! OpenAI (`/v1/chat/completions`, `/v1/embeddings`, `/v1/models`) and
//! Anthropic (`/v1/messages`) on one port, answering deterministically
//! ([`super::answer`]), with configurable latency and failure injection.
//!
//! It is a test double of real providers, so it is written against the wire
//! formats as JSON (`serde_json::json!`), not with the gateway's own wire
//! types: a mistake in those types cannot cancel out here.
//!
//! Failure injection:
//! - per request, by a directive in the last user message: `[[mock:error=503]]`,
//!   `[[mock:hang]]`, `[[mock:slow=500]]` (ms), `[[mock:stream-error]]`
//!   (fails in-band after the first piece), `[[mock:no-usage]]` (reports no
//!   token counts), `[[mock:echo-auth]]` (a 401 quoting the credential it got);
//! - for the next requests, by [`MockControl`] or `POST /__mock/fault`
//!   `{"fail": {"status": 503, "count": 3}}`, `{"hang": {"count": 1}}`,
//!   `{"slow": {"ms": 200, "count": 2}}` (count `-1`: until reset);
//!   `POST /__mock/reset`; `GET /__mock/stats` counts requests per path.

// Helpers answer `Err(response)` to end a handler early; the size of an
// axum `Response` in that `Err` costs nothing worth boxing in a test double.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use futures_util::stream;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{answer, count_tokens, embedding, pieces};
use crate::types::{FinishReason, Message, Role};

/// Models `/api/tags` and `/v1/models` list when the mock serves any model.
pub const DEFAULT_MODELS: [&str; 3] = ["mock-small", "llama3", "gpt-4o-mini"];

/// How the mock behaves.
#[derive(Debug, Clone, Default)]
pub struct MockConfig {
    /// Shown in logs and in `owned_by`.
    pub name: String,
    /// Added before every answer (and before a stream's first piece).
    pub latency: Duration,
    /// Between the pieces of a stream.
    pub stream_delay: Duration,
    /// The only models served (404 for others); any model when empty.
    pub models: Vec<String>,
    /// When set, requests must carry it (`Authorization: Bearer` for the
    /// OpenAI and Ollama APIs, `x-api-key` for Anthropic's).
    pub api_key: Option<String>,
    /// Substring of the last user message or tool result → fixed answer
    /// (text, JSON or tool calls), for any model or one.
    pub script: super::Script,
}

#[derive(Debug, Default)]
struct Faults {
    /// (status, remaining; `u64::MAX` = until reset)
    fail: Option<(u16, u64)>,
    hang: u64,
    slow: Option<(Duration, u64)>,
}

/// Drives a running mock: inject failures, read counters.
#[derive(Debug, Default)]
pub struct MockControl {
    faults: Mutex<Faults>,
    requests: AtomicU64,
    by_path: Mutex<BTreeMap<String, u64>>,
    /// The last request body of each chat path, as received (a capturing upstream for tests).
    last_bodies: Mutex<BTreeMap<String, Value>>,
}

fn take(remaining: &mut u64) -> bool {
    if *remaining == 0 {
        return false;
    }
    if *remaining != u64::MAX {
        *remaining -= 1;
    }
    true
}

impl MockControl {
    /// The next `count` model requests fail with `status` (`u64::MAX`: until reset).
    pub fn fail_next(&self, count: u64, status: u16) {
        self.faults.lock().fail = Some((status, count));
    }

    /// The next `count` model requests never answer.
    pub fn hang_next(&self, count: u64) {
        self.faults.lock().hang = count;
    }

    /// The next `count` model requests wait `delay` first.
    pub fn slow_next(&self, count: u64, delay: Duration) {
        self.faults.lock().slow = Some((delay, count));
    }

    /// Clears every injected failure.
    pub fn reset(&self) {
        *self.faults.lock() = Faults::default();
    }

    /// Model requests received (control endpoints excluded).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests received per path.
    /// The last body received on `path` (`/v1/chat/completions`, `/api/chat`, `/v1/messages`, ...).
    pub fn last_body(&self, path: &str) -> Option<Value> {
        self.last_bodies.lock().get(path).cloned()
    }

    fn capture(&self, path: &str, body: &Value) {
        self.last_bodies
            .lock()
            .insert(path.to_owned(), body.clone());
    }

    pub fn requests_by_path(&self) -> BTreeMap<String, u64> {
        self.by_path.lock().clone()
    }

    fn count(&self, path: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self.by_path.lock().entry(path.to_owned()).or_default() += 1;
    }

    /// What to do to the request now: fail, hang, or wait first.
    fn fault(&self) -> (Option<u16>, bool, Option<Duration>) {
        let mut f = self.faults.lock();
        let fail = match &mut f.fail {
            Some((status, remaining)) => take(remaining).then_some(*status),
            None => None,
        };
        let hang = take(&mut f.hang);
        let slow = match &mut f.slow {
            Some((delay, remaining)) => take(remaining).then_some(*delay),
            None => None,
        };
        (fail, hang, slow)
    }
}

struct Shared {
    config: MockConfig,
    control: Arc<MockControl>,
    ids: AtomicU64,
}

type AppState = Arc<Shared>;

/// A running mock server.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    control: Arc<MockControl>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MockServer {
    /// Serves on `listener` until [`MockServer::stop`] (or drop).
    pub fn start(listener: tokio::net::TcpListener, config: MockConfig) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let control = Arc::new(MockControl::default());
        let app = router(config, Arc::clone(&control));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(nodelay(listener), app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            control,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Binds `127.0.0.1:0` and serves there.
    pub async fn start_local(config: MockConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::start(listener, config)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn control(&self) -> &Arc<MockControl> {
        &self.control
    }

    /// Stops listening and closes connections (hung requests are dropped).
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            // Graceful shutdown waits for open requests; a hung one never ends.
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Serves until `shutdown` resolves (`reactor-fabric mock-llm`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: MockConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(config, Arc::new(MockControl::default()));
    axum::serve(nodelay(listener), app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Streams go out piece by piece, as a provider sends them: no Nagle.
fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    })
}

/// The mock's routes, sharing `control`.
pub fn router(config: MockConfig, control: Arc<MockControl>) -> Router {
    let state = Arc::new(Shared {
        config,
        control,
        ids: AtomicU64::new(0),
    });
    Router::new()
        .route("/", get(|| async { "Ollama is running" }))
        .route(
            "/api/version",
            get(|| async { axum::Json(json!({"version": "0.9.0-mock"})) }),
        )
        .route("/api/tags", get(ollama_tags))
        .route("/api/chat", post(ollama_chat))
        .route("/api/generate", post(ollama_generate))
        .route("/api/embed", post(ollama_embed))
        .route("/api/embeddings", post(ollama_embeddings))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/v1/messages", post(anthropic_messages))
        .route("/__mock/fault", post(set_fault))
        .route("/__mock/reset", post(reset))
        .route("/__mock/stats", get(stats))
        .with_state(state)
}

/// Which API a request belongs to: decides the error and auth formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Ollama,
    OpenAi,
    Anthropic,
}

/// Per-request directives found in the prompt.
#[derive(Debug, Default)]
struct Directives {
    error: Option<u16>,
    hang: bool,
    slow: Option<Duration>,
    stream_error: bool,
    no_usage: bool,
    echo_auth: bool,
}

fn directives(text: &str) -> Directives {
    let mut d = Directives::default();
    for part in text.split("[[mock:").skip(1) {
        let Some(directive) = part.split("]]").next() else {
            continue;
        };
        let (name, value) = directive.split_once('=').unwrap_or((directive, ""));
        match name.trim() {
            "error" => d.error = value.trim().parse().ok().or(Some(500)),
            "hang" => d.hang = true,
            "slow" => d.slow = value.trim().parse().ok().map(Duration::from_millis),
            "stream-error" => d.stream_error = true,
            "no-usage" => d.no_usage = true,
            "echo-auth" => d.echo_auth = true,
            _ => {}
        }
    }
    d
}

fn error_response(api: Api, status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match api {
        Api::Ollama => json!({ "error": message }),
        Api::OpenAi => json!({"error": {
            "message": message,
            "type": if status.is_server_error() { "server_error" } else { "invalid_request_error" },
            "code": Value::Null,
        }}),
        Api::Anthropic => json!({"type": "error", "error": {
            "type": match status.as_u16() {
                401 => "authentication_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                s if s >= 500 => "api_error",
                _ => "invalid_request_error",
            },
            "message": message,
        }}),
    };
    (status, axum::Json(body)).into_response()
}

/// The credential a request carries for `api`.
fn credential(api: Api, headers: &HeaderMap) -> Option<String> {
    let value = match api {
        Api::Anthropic => headers.get("x-api-key")?.to_str().ok()?.to_owned(),
        _ => {
            let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
            auth.strip_prefix("Bearer ")?.to_owned()
        }
    };
    Some(value)
}

/// Everything before the answer: counting, auth, injected faults, latency.
/// `Err` is the response to send instead.
async fn gate(
    state: &Shared,
    api: Api,
    path: &str,
    headers: &HeaderMap,
    d: &Directives,
) -> Result<(), Response> {
    state.control.count(path);
    let got = credential(api, headers);
    if d.echo_auth {
        return Err(error_response(
            api,
            401,
            &format!(
                "incorrect API key provided: {}",
                got.as_deref().unwrap_or("(none)")
            ),
        ));
    }
    if let Some(key) = &state.config.api_key
        && got.as_deref() != Some(key.as_str())
    {
        return Err(error_response(api, 401, "invalid or missing API key"));
    }
    if api == Api::Anthropic && headers.get("anthropic-version").is_none() {
        return Err(error_response(
            api,
            400,
            "anthropic-version header is required",
        ));
    }
    let (fail, hang, slow) = state.control.fault();
    if hang || d.hang {
        std::future::pending::<()>().await;
    }
    if let Some(delay) = slow.or(d.slow) {
        precise::sleep(delay).await;
    }
    if let Some(status) = fail.or(d.error) {
        return Err(error_response(
            api,
            status,
            &format!("mock {}: injected failure {status}", state.config.name),
        ));
    }
    if !state.config.latency.is_zero() {
        precise::sleep(state.config.latency).await;
    }
    Ok(())
}

fn check_model(state: &Shared, api: Api, model: &str) -> Result<(), Response> {
    if model.is_empty() {
        return Err(error_response(api, 400, "model is required"));
    }
    if state.config.models.is_empty() || state.config.models.iter().any(|m| m == model) {
        Ok(())
    } else {
        Err(error_response(
            api,
            404,
            &format!("model '{model}' not found"),
        ))
    }
}

/// Text of a message `content`: a string or an array of text blocks/parts
/// (an Anthropic `tool_result` block's content included).
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("tool_result") => text_of(p.get("content").unwrap_or(&Value::Null)),
                _ => p
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            })
            .collect(),
        _ => String::new(),
    }
}

/// Messages of any of the three APIs: a `tool` message (OpenAI, Ollama) or
/// a user turn of `tool_result` blocks (Anthropic) is a tool result.
fn parse_messages(value: Option<&Value>) -> Vec<Message> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|m| {
                    let content = m.get("content").unwrap_or(&Value::Null);
                    let tool_result = content.as_array().is_some_and(|blocks| {
                        blocks
                            .iter()
                            .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                    });
                    let role = match m.get("role").and_then(Value::as_str) {
                        Some("system") | Some("developer") => Role::System,
                        Some("assistant") => Role::Assistant,
                        Some("tool") => Role::Tool,
                        _ if tool_result => Role::Tool,
                        _ => Role::User,
                    };
                    Message::new(role, text_of(content))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn last_user(messages: &[Message]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

fn parse_json(api: Api, body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice(body)
        .map_err(|e| error_response(api, 400, &format!("invalid JSON: {e}")))
}

fn u32_field(v: &Value, key: &str) -> Option<u32> {
    v.get(key)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

fn request_id(state: &Shared, headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("mock-req-{}", state.ids.fetch_add(1, Ordering::Relaxed)))
}

fn with_request_id(mut response: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Pieces of `text` as stream chunks, `delay` apart, each made by `frame`;
/// with `fail_after_first`, an error frame follows the first piece instead.
fn paced(
    parts: Vec<String>,
    delay: Duration,
    frame: impl Fn(String) -> String + Send + 'static,
) -> impl futures_util::Stream<Item = String> + Send {
    stream::iter(parts.into_iter().enumerate()).then(move |(i, part)| {
        let framed = frame(part);
        async move {
            if i > 0 && !delay.is_zero() {
                precise::sleep(delay).await;
            }
            framed
        }
    })
}

fn streamed(
    content_type: &'static str,
    body: impl futures_util::Stream<Item = String> + Send + 'static,
) -> Response {
    let body = body.map(|s| Ok::<_, Infallible>(Bytes::from(s)));
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| error_response(Api::OpenAi, 500, &e.to_string()))
}

fn served_models(state: &Shared) -> Vec<String> {
    if state.config.models.is_empty() {
        DEFAULT_MODELS.iter().map(|m| (*m).to_owned()).collect()
    } else {
        state.config.models.clone()
    }
}

// ---------------------------------------------------------------- Ollama

async fn ollama_tags(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = gate(
        &state,
        Api::Ollama,
        "/api/tags",
        &headers,
        &Directives::default(),
    )
    .await
    {
        return r;
    }
    let models: Vec<Value> = served_models(&state)
        .into_iter()
        .map(|m| {
            json!({"name": m, "model": m, "modified_at": "2024-01-01T00:00:00Z", "size": 1,
                   "digest": "mock", "details": {"format": "gguf", "family": "mock"}})
        })
        .collect();
    axum::Json(json!({ "models": models })).into_response()
}

async fn ollama_chat(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let req = match parse_json(Api::Ollama, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let messages = parse_messages(req.get("messages"));
    ollama_answer(&state, &headers, &req, messages, "/api/chat", true).await
}

async fn ollama_generate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = match parse_json(Api::Ollama, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut messages = Vec::new();
    if let Some(system) = req.get("system").and_then(Value::as_str) {
        messages.push(Message::new(Role::System, system));
    }
    messages.push(Message::new(
        Role::User,
        req.get("prompt")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    ));
    ollama_answer(&state, &headers, &req, messages, "/api/generate", false).await
}

async fn ollama_answer(
    state: &Shared,
    headers: &HeaderMap,
    req: &Value,
    messages: Vec<Message>,
    path: &str,
    chat: bool,
) -> Response {
    state.control.capture(path, req);
    let d = directives(&last_user(&messages));
    if let Err(r) = gate(state, Api::Ollama, path, headers, &d).await {
        return r;
    }
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Err(r) = check_model(state, Api::Ollama, &model) {
        return r;
    }
    let max = req
        .get("options")
        .and_then(|o| o.get("num_predict"))
        .and_then(Value::as_i64)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0);
    let a = answer(&messages, &model, max, &state.config.script);
    let done_reason = match a.finish_reason {
        FinishReason::Length => "length",
        _ => "stop",
    };
    let calls: Vec<Value> = a
        .tool_calls
        .iter()
        .map(|c| json!({"function": {"name": c.name, "arguments": serde_json::from_str::<Value>(&c.arguments).unwrap_or(Value::Null)}}))
        .collect();
    let part = move |text: &str, done: bool| {
        let mut v = json!({"model": model, "created_at": "2024-01-01T00:00:00Z", "done": done});
        if chat {
            v["message"] = json!({"role": "assistant", "content": text});
        } else {
            v["response"] = json!(text);
        }
        v
    };
    let with_calls = |mut v: Value| {
        if !calls.is_empty() {
            v["message"]["tool_calls"] = json!(calls);
        }
        v
    };
    let counts = |v: &mut Value| {
        if !d.no_usage {
            v["prompt_eval_count"] = json!(a.prompt_tokens);
            v["eval_count"] = json!(a.completion_tokens);
        }
        v["done_reason"] = json!(done_reason);
        v["total_duration"] = json!(1000);
        v["load_duration"] = json!(0);
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(true);
    let request_id = request_id(state, headers);
    if !stream {
        let mut v = with_calls(part(&a.text, true));
        counts(&mut v);
        return with_request_id(axum::Json(v).into_response(), &request_id);
    }
    let mut last = part("", true);
    counts(&mut last);
    let fail = d.stream_error;
    let parts = pieces(&a.text);
    // Ollama streams tool calls whole, in a part of their own.
    let call_part = (!calls.is_empty()).then(|| format!("{}\n", with_calls(part("", false))));
    let frame = move |p: String| format!("{}\n", part(&p, false));
    let body = paced(parts, state.config.stream_delay, frame)
        .chain(stream::iter(call_part))
        .boxed();
    let tail = if fail {
        format!("{}\n", json!({"error": "mock: injected stream failure"}))
    } else {
        format!("{last}\n")
    };
    let body = if fail {
        body.take(1)
            .chain(stream::once(async move { tail }))
            .boxed()
    } else {
        body.chain(stream::once(async move { tail })).boxed()
    };
    with_request_id(streamed("application/x-ndjson", body), &request_id)
}

async fn ollama_embed(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let req = match parse_json(Api::Ollama, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let d = directives(&inputs.join(" "));
    if let Err(r) = gate(&state, Api::Ollama, "/api/embed", &headers, &d).await {
        return r;
    }
    let model = req.get("model").and_then(Value::as_str).unwrap_or_default();
    if let Err(r) = check_model(&state, Api::Ollama, model) {
        return r;
    }
    if inputs.is_empty() {
        return error_response(Api::Ollama, 400, "input is required");
    }
    let embeddings: Vec<Vec<f32>> = inputs.iter().map(|t| embedding(t)).collect();
    let tokens: u64 = inputs.iter().map(|t| count_tokens(t)).sum();
    axum::Json(json!({"model": model, "embeddings": embeddings, "prompt_eval_count": tokens}))
        .into_response()
}

async fn ollama_embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = match parse_json(Api::Ollama, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let prompt = req
        .get("prompt")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Err(r) = gate(
        &state,
        Api::Ollama,
        "/api/embeddings",
        &headers,
        &directives(prompt),
    )
    .await
    {
        return r;
    }
    let model = req.get("model").and_then(Value::as_str).unwrap_or_default();
    if let Err(r) = check_model(&state, Api::Ollama, model) {
        return r;
    }
    axum::Json(json!({ "embedding": embedding(prompt) })).into_response()
}

// ---------------------------------------------------------------- OpenAI

async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let api = if headers.contains_key("x-api-key") {
        Api::Anthropic
    } else {
        Api::OpenAi
    };
    // Anthropic's listing needs its version header, which `gate` checks; both
    // APIs read `data[].id`.
    if let Err(r) = gate(&state, api, "/v1/models", &headers, &Directives::default()).await {
        return r;
    }
    let data: Vec<Value> = served_models(&state)
        .into_iter()
        .map(|m| json!({"id": m, "object": "model", "type": "model", "created": 0, "owned_by": state.config.name}))
        .collect();
    axum::Json(json!({"object": "list", "data": data, "has_more": false})).into_response()
}

async fn openai_chat(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let req = match parse_json(Api::OpenAi, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    state.control.capture("/v1/chat/completions", &req);
    let messages = parse_messages(req.get("messages"));
    let d = directives(&last_user(&messages));
    if let Err(r) = gate(&state, Api::OpenAi, "/v1/chat/completions", &headers, &d).await {
        return r;
    }
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Err(r) = check_model(&state, Api::OpenAi, &model) {
        return r;
    }
    if messages.is_empty() {
        return error_response(Api::OpenAi, 400, "messages must not be empty");
    }
    let max = u32_field(&req, "max_completion_tokens").or_else(|| u32_field(&req, "max_tokens"));
    let a = answer(&messages, &model, max, &state.config.script);
    let finish = a.finish_reason.as_str();
    let id = format!(
        "chatcmpl-mock-{}",
        state.ids.fetch_add(1, Ordering::Relaxed)
    );
    let usage = json!({"prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens,
                       "total_tokens": a.prompt_tokens + a.completion_tokens});
    let request_id = request_id(&state, &headers);
    let calls: Vec<Value> = a
        .tool_calls
        .iter()
        .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
        .collect();
    if req.get("stream").and_then(Value::as_bool) != Some(true) {
        let mut message = json!({"role": "assistant", "content": a.text});
        if !calls.is_empty() {
            message = json!({"role": "assistant", "content": null, "tool_calls": calls});
        }
        let mut v = json!({
            "id": id, "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": finish, "logprobs": null}],
        });
        if !d.no_usage {
            v["usage"] = usage;
        }
        return with_request_id(axum::Json(v).into_response(), &request_id);
    }
    let include_usage = req
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |delta: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000,
                   "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        }
    };
    let first = format!(
        "data: {}\n\n",
        chunk(json!({"role": "assistant", "content": ""}), Value::Null)
    );
    let piece_chunk = chunk.clone();
    // A tool call streams as OpenAI's do: id and name first, then the
    // arguments in two pieces.
    let call_chunks: Vec<String> = a
        .tool_calls
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            let half = c.arguments.len() / 2;
            let cut = (0..=half)
                .rev()
                .find(|at| c.arguments.is_char_boundary(*at))
                .unwrap_or(0);
            [
                json!({"tool_calls": [{"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}}]}),
                json!({"tool_calls": [{"index": i, "function": {"arguments": &c.arguments[..cut]}}]}),
                json!({"tool_calls": [{"index": i, "function": {"arguments": &c.arguments[cut..]}}]}),
            ]
        })
        .map(|delta| format!("data: {}\n\n", chunk(delta, Value::Null)))
        .collect();
    let body = paced(pieces(&a.text), state.config.stream_delay, move |p| {
        format!(
            "data: {}\n\n",
            piece_chunk(json!({"content": p}), Value::Null)
        )
    })
    .chain(stream::iter(call_chunks))
    .boxed();
    let mut tail = format!("data: {}\n\n", chunk(json!({}), json!(finish)));
    if include_usage && !d.no_usage {
        tail.push_str(&format!(
            "data: {}\n\n",
            json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000,
                   "model": model, "choices": [], "usage": usage})
        ));
    }
    tail.push_str("data: [DONE]\n\n");
    let body = if d.stream_error {
        let err = format!(
            "data: {}\n\n",
            json!({"error": {"message": "mock: injected stream failure", "type": "server_error"}})
        );
        stream::once(async move { first })
            .chain(body.take(1))
            .chain(stream::once(async move { err }))
            .boxed()
    } else {
        stream::once(async move { first })
            .chain(body)
            .chain(stream::once(async move { tail }))
            .boxed()
    };
    with_request_id(streamed("text/event-stream", body), &request_id)
}

async fn openai_embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = match parse_json(Api::OpenAi, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    if let Err(r) = gate(
        &state,
        Api::OpenAi,
        "/v1/embeddings",
        &headers,
        &directives(&inputs.join(" ")),
    )
    .await
    {
        return r;
    }
    let model = req.get("model").and_then(Value::as_str).unwrap_or_default();
    if let Err(r) = check_model(&state, Api::OpenAi, model) {
        return r;
    }
    if inputs.is_empty() {
        return error_response(
            Api::OpenAi,
            400,
            "input must be a string or an array of strings",
        );
    }
    let base64 = req.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v = embedding(t);
            let e = if base64 {
                use base64::Engine as _;
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": e})
        })
        .collect();
    let tokens: u64 = inputs.iter().map(|t| count_tokens(t)).sum();
    axum::Json(json!({"object": "list", "data": data, "model": model,
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response()
}

// ---------------------------------------------------------------- Anthropic

async fn anthropic_messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = match parse_json(Api::Anthropic, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    state.control.capture("/v1/messages", &req);
    let mut messages = Vec::new();
    match req.get("system") {
        Some(Value::Null) | None => {}
        Some(system) => messages.push(Message::new(Role::System, text_of(system))),
    }
    messages.extend(parse_messages(req.get("messages")));
    let d = directives(&last_user(&messages));
    if let Err(r) = gate(&state, Api::Anthropic, "/v1/messages", &headers, &d).await {
        return r;
    }
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Err(r) = check_model(&state, Api::Anthropic, &model) {
        return r;
    }
    let Some(max) = u32_field(&req, "max_tokens") else {
        return error_response(Api::Anthropic, 400, "max_tokens: field required");
    };
    if messages
        .iter()
        .any(|m| m.role == Role::System && req.get("system").is_none())
    {
        return error_response(
            Api::Anthropic,
            400,
            "system messages go in the system field",
        );
    }
    let a = answer(&messages, &model, Some(max), &state.config.script);
    let stop = match a.finish_reason {
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        _ => "end_turn",
    };
    let id = format!("msg_mock_{}", state.ids.fetch_add(1, Ordering::Relaxed));
    let request_id = request_id(&state, &headers);
    if req.get("stream").and_then(Value::as_bool) != Some(true) {
        let mut content = vec![json!({"type": "text", "text": a.text})];
        if !a.tool_calls.is_empty() {
            content = a
                .tool_calls
                .iter()
                .map(|c| json!({"type": "tool_use", "id": c.id, "name": c.name, "input": serde_json::from_str::<Value>(&c.arguments).unwrap_or(Value::Null)}))
                .collect();
        }
        let mut v = json!({"id": id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null});
        if !d.no_usage {
            v["usage"] =
                json!({"input_tokens": a.prompt_tokens, "output_tokens": a.completion_tokens});
        }
        return with_request_id(axum::Json(v).into_response(), &request_id);
    }
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut head = event(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": if d.no_usage { Value::Null } else { json!({"input_tokens": a.prompt_tokens, "output_tokens": 1}) }}}),
    );
    head.push_str(&event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    head.push_str(&event("ping", json!({"type": "ping"})));
    let body = paced(pieces(&a.text), state.config.stream_delay, move |p| {
        format!(
            "event: content_block_delta\ndata: {}\n\n",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})
        )
    });
    let mut tail = event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    );
    // Tool calls follow the (empty) text block, one block each.
    for (i, c) in a.tool_calls.iter().enumerate() {
        let index = i + 1;
        tail.push_str(&event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}}),
        ));
        tail.push_str(&event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": c.arguments}}),
        ));
        tail.push_str(&event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    tail.push_str(&event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
               "usage": if d.no_usage { Value::Null } else { json!({"output_tokens": a.completion_tokens}) }}),
    ));
    tail.push_str(&event("message_stop", json!({"type": "message_stop"})));
    let body = if d.stream_error {
        let err = event(
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "mock: injected stream failure"}}),
        );
        stream::once(async move { head })
            .chain(body.take(1))
            .chain(stream::once(async move { err }))
            .boxed()
    } else {
        stream::once(async move { head })
            .chain(body)
            .chain(stream::once(async move { tail }))
            .boxed()
    };
    with_request_id(streamed("text/event-stream", body), &request_id)
}

// ---------------------------------------------------------------- control

async fn set_fault(State(state): State<AppState>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "invalid JSON").into_response();
    };
    let count = |v: &Value| match v.get("count").and_then(Value::as_i64) {
        Some(n) if n < 0 => u64::MAX,
        Some(n) => u64::try_from(n).unwrap_or(0),
        None => 1,
    };
    if let Some(f) = v.get("fail") {
        let status = f
            .get("status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(500);
        state.control.fail_next(count(f), status);
    }
    if let Some(h) = v.get("hang") {
        state.control.hang_next(count(h));
    }
    if let Some(s) = v.get("slow") {
        let ms = s.get("ms").and_then(Value::as_u64).unwrap_or(1000);
        state.control.slow_next(count(s), Duration::from_millis(ms));
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn reset(State(state): State<AppState>) -> StatusCode {
    state.control.reset();
    StatusCode::NO_CONTENT
}

async fn stats(State(state): State<AppState>) -> Response {
    axum::Json(json!({
        "requests": state.control.requests(),
        "by_path": state.control.requests_by_path(),
    }))
    .into_response()
}

/// Sleeps accurate to tens of microseconds. Tokio's timer wheel has 1 ms
/// ticks, which would quantise the mock's "fixed" latency and add up to a
/// millisecond of phase noise to every latency the benchmark compares. One
/// thread keeps the deadlines and wakes each sleeper on time (the kernel's
/// high-resolution timers behind a futex wait).
mod precise {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::sync::OnceLock;
    use std::sync::mpsc::{self, RecvTimeoutError};
    use std::time::{Duration, Instant};

    use tokio::sync::oneshot;

    struct Wake {
        at: Instant,
        seq: u64,
        tx: oneshot::Sender<()>,
    }

    impl PartialEq for Wake {
        fn eq(&self, other: &Self) -> bool {
            (self.at, self.seq) == (other.at, other.seq)
        }
    }
    impl Eq for Wake {}
    impl PartialOrd for Wake {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Wake {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            (self.at, self.seq).cmp(&(other.at, other.seq))
        }
    }

    /// Where sleepers send their deadline and the sender to wake them by.
    type Timer = mpsc::Sender<(Instant, oneshot::Sender<()>)>;

    fn timer() -> Option<&'static Timer> {
        static TIMER: OnceLock<Option<Timer>> = OnceLock::new();
        TIMER
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel::<(Instant, oneshot::Sender<()>)>();
                std::thread::Builder::new()
                    .name("mock-timer".into())
                    .spawn(move || {
                        let mut heap: BinaryHeap<Reverse<Wake>> = BinaryHeap::new();
                        let mut seq = 0u64;
                        loop {
                            let now = Instant::now();
                            while heap.peek().is_some_and(|Reverse(w)| w.at <= now) {
                                if let Some(Reverse(w)) = heap.pop() {
                                    let _ = w.tx.send(());
                                }
                            }
                            let next = match heap.peek() {
                                Some(Reverse(w)) => rx.recv_timeout(w.at - now),
                                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                            };
                            match next {
                                Ok((at, tx)) => {
                                    seq += 1;
                                    heap.push(Reverse(Wake { at, seq, tx }));
                                }
                                Err(RecvTimeoutError::Timeout) => {}
                                Err(RecvTimeoutError::Disconnected) => break,
                            }
                        }
                    })
                    .ok()
                    .map(|_| tx)
            })
            .as_ref()
    }

    pub async fn sleep(d: Duration) {
        let (tx, rx) = oneshot::channel();
        match timer() {
            Some(timer) if timer.send((Instant::now() + d, tx)).is_ok() => {
                let _ = rx.await;
            }
            _ => tokio::time::sleep(d).await,
        }
    }
}
