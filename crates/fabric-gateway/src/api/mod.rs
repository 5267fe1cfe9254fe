//! The APIs the gateway serves, free of any HTTP framework: each front end
//! takes the request body (and, for Ollama, the method and path) and returns
//! a [`Reply`] (status, content type, provider, body or stream) that the
//! server turns into its framework's response.
//!
//! - [`openai`]: `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`,
//!   `/v1/models/{id}`.
//! - [`ollama`]: `/api/chat`, `/api/generate`, `/api/embed`, `/api/embeddings`,
//!   `/api/tags` and friends: the agent-facing endpoint (`OLLAMA_BASE_URL`).
//! - [`anthropic`]: `/v1/messages`, Anthropic's Messages API.
//! - [`responses`]: `/v1/responses`, OpenAI's Responses API (stateless).
//! - [`infer`]: the fabric's own `POST /v1/llm/infer`.
//!
//! Errors have one shape everywhere (`{"error": {"code", "message",
//! "request_id", "provider"?, "correlation_id"?}}`); once a stream has
//! started they travel in-band, in the stream's own format.

pub mod anthropic;
pub mod infer;
pub mod ollama;
pub mod openai;
pub mod responses;

/// A front end that takes a JSON body; Ollama's, routed by path, is
/// [`ollama::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontEnd {
    ChatCompletions,
    Completions,
    Responses,
    Embeddings,
    /// Anthropic's `/v1/messages`.
    Messages,
    /// The fabric's own `/v1/llm/infer`.
    Infer,
}

impl FrontEnd {
    /// The front end of `method path` under `/v1`, if it is one.
    pub fn of(method: &str, path: &str) -> Option<Self> {
        match (method, path.trim_end_matches('/')) {
            ("POST", "/v1/chat/completions") => Some(FrontEnd::ChatCompletions),
            ("POST", "/v1/completions") => Some(FrontEnd::Completions),
            ("POST", "/v1/responses") => Some(FrontEnd::Responses),
            ("POST", "/v1/embeddings") => Some(FrontEnd::Embeddings),
            ("POST", "/v1/messages") => Some(FrontEnd::Messages),
            ("POST", "/v1/llm/infer") => Some(FrontEnd::Infer),
            _ => None,
        }
    }

    /// The `api` its calls are metered under.
    pub fn api(self) -> &'static str {
        match self {
            FrontEnd::Messages => "anthropic",
            FrontEnd::Infer => "infer",
            _ => "openai",
        }
    }

    /// Serves one request `body` for `caller`.
    pub async fn call(
        self,
        gateway: &crate::Gateway,
        caller: &crate::Caller,
        opts: crate::CallOptions,
        body: &[u8],
    ) -> Reply {
        match self {
            FrontEnd::ChatCompletions => {
                openai::chat_completions(gateway, caller, opts, body).await
            }
            FrontEnd::Completions => openai::completions(gateway, caller, opts, body).await,
            FrontEnd::Responses => responses::responses(gateway, caller, opts, body).await,
            FrontEnd::Embeddings => openai::embeddings(gateway, caller, opts, body).await,
            FrontEnd::Messages => anthropic::messages(gateway, caller, opts, body).await,
            FrontEnd::Infer => infer::infer(gateway, caller, opts, body).await,
        }
    }
}

/// One request to an agent's inference endpoint (`localhost:11434` in its
/// sandbox, its sidecar, or its loopback port), which speaks every API a
/// client library may bring, as a real Ollama server does: OpenAI's and
/// Anthropic's under `/v1` (what `OPENAI_BASE_URL` and `ANTHROPIC_BASE_URL`
/// name inside an agent), Ollama's everywhere else.
pub async fn agent_endpoint(
    gateway: &crate::Gateway,
    caller: &crate::Caller,
    method: &str,
    path: &str,
    body: &[u8],
) -> Reply {
    use crate::CallOptions;
    if let Some(front) = FrontEnd::of(method, path).filter(|f| *f != FrontEnd::Infer) {
        return front
            .call(gateway, caller, CallOptions::new(front.api()), body)
            .await;
    }
    match (method, path.trim_end_matches('/')) {
        ("GET" | "HEAD", "/v1/models") => openai::models(gateway).await,
        ("GET" | "HEAD", p) if p.starts_with("/v1/models/") => {
            let id = &p["/v1/models/".len()..];
            openai::model(gateway, id, &caller.request_id).await
        }
        (m, p) if p.starts_with("/v1/") => {
            let mut reply = Reply::error(
                &GatewayError::invalid(format!(
                    "{m} {p} is not served here: this endpoint serves OpenAI's /v1/chat/completions, /v1/responses, /v1/completions, /v1/embeddings and /v1/models, Anthropic's /v1/messages, and Ollama's /api/*"
                )),
                &caller.request_id,
            );
            reply.status = 404;
            reply
        }
        _ => {
            ollama::handle(
                gateway,
                caller,
                CallOptions::new("ollama"),
                method,
                path,
                body,
            )
            .await
        }
    }
}

use bytes::Bytes;
use fabric_core::api::{ErrorBody, ErrorDetail};
use futures_util::stream::BoxStream;
use serde::Serialize;

use crate::config::Policy;
use crate::error::GatewayError;

/// Response header naming the provider that answered (or failed last, on errors).
pub const PROVIDER_HEADER: &str = "X-Fabric-Provider";
/// Response header naming the model the provider was asked for (after mapping).
pub const MODEL_HEADER: &str = "X-Fabric-Model";
/// Request header overriding the routing policy for one call (`cloud`, `ollama`, ...).
pub const POLICY_HEADER: &str = "X-Fabric-Policy";
/// `X-Fabric-Provider` when no provider was involved (validation, auth).
pub const NO_PROVIDER: &str = "none";

pub const JSON: &str = "application/json";
pub const SSE: &str = "text/event-stream";
pub const NDJSON: &str = "application/x-ndjson";

/// A framework-neutral HTTP response.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    /// `X-Fabric-Provider`.
    pub provider: Option<String>,
    /// `X-Fabric-Model`.
    pub model: Option<String>,
    /// `Retry-After`, seconds.
    pub retry_after: Option<u64>,
    pub body: ReplyBody,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

pub enum ReplyBody {
    Full(Bytes),
    /// Chunks to send as they come (SSE or NDJSON); the stream ends the body.
    Stream(BoxStream<'static, Bytes>),
}

impl Reply {
    /// `value` as JSON with `status`.
    pub fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply {
                status,
                content_type: JSON,
                provider: None,
                model: None,
                retry_after: None,
                body: ReplyBody::Full(Bytes::from(body)),
            },
            Err(e) => Reply::error(
                &GatewayError::NoProvider(format!("cannot encode the answer: {e}")),
                "-",
            ),
        }
    }

    /// The uniform error body for `err`.
    pub fn error(err: &GatewayError, request_id: &str) -> Reply {
        let mut reply = Reply::json(err.status(), &error_body(err, request_id));
        reply.provider = Some(err.provider().unwrap_or(NO_PROVIDER).to_owned());
        reply.retry_after = err.retry_after();
        reply
    }

    /// 413 for a body over `limit` bytes.
    pub fn too_large(limit: usize, request_id: &str) -> Reply {
        Reply::error(&GatewayError::PayloadTooLarge { limit }, request_id)
    }

    pub fn streaming(
        content_type: &'static str,
        provider: String,
        model: String,
        body: BoxStream<'static, Bytes>,
    ) -> Reply {
        Reply {
            status: 200,
            content_type,
            provider: Some(provider),
            model: Some(model),
            retry_after: None,
            body: ReplyBody::Stream(body),
        }
    }

    pub fn with_provider(mut self, provider: String, model: String) -> Reply {
        self.provider = Some(provider);
        self.model = Some(model);
        self
    }
}

/// `{"error": {code, message, request_id, provider?, correlation_id?}}`.
pub fn error_body(err: &GatewayError, request_id: &str) -> ErrorBody {
    let mut body = ErrorBody {
        error: ErrorDetail {
            code: err.code().to_owned(),
            message: err.to_string(),
            request_id: request_id.to_owned(),
            provider: err.provider().map(str::to_owned),
            correlation_id: err.correlation_id().map(str::to_owned),
            entity: None,
            limit: None,
            resets_at: None,
        },
    };
    if let GatewayError::BudgetExceeded {
        entity,
        limit,
        resets_at,
        ..
    } = err
    {
        body.error.entity = Some(entity.clone());
        body.error.limit = Some(limit.clone());
        body.error.resets_at = Some(*resets_at);
    }
    body
}

/// A policy override (`X-Fabric-Policy`, `policyOverride`), or 400.
pub fn parse_policy(value: Option<&str>) -> Result<Option<Policy>, GatewayError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|e: String| GatewayError::invalid(e)),
    }
}

/// Refuses the first field of `body` outside `known` (a silently ignored
/// field is a bug): a 400 naming it and what `api` takes instead.
pub(crate) fn refuse_unknown_fields(
    body: &serde_json::Map<String, serde_json::Value>,
    known: &[&str],
    api: &str,
) -> Result<(), GatewayError> {
    match body
        .iter()
        .find(|(k, v)| !known.contains(&k.as_str()) && !v.is_null())
    {
        Some((field, _)) => Err(GatewayError::invalid(format!(
            "{field} is not supported by {api}: leave it out (supported: {})",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// Field `name` of `body` as a `T`: `None` when absent or null, a 400 naming
/// the field when it has another type (never silently ignored).
pub(crate) fn field<T: serde::de::DeserializeOwned>(
    body: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<T>, GatewayError> {
    match body.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| GatewayError::invalid(format!("{name}: {e}"))),
    }
}

/// Refuses a key of `object` (at `at`, e.g. `messages[2]`) outside `known`.
pub(crate) fn refuse_unknown_keys(
    object: &serde_json::Value,
    known: &[&str],
    at: &str,
) -> Result<(), GatewayError> {
    let Some(map) = object.as_object() else {
        return Err(GatewayError::invalid(format!("{at} must be an object")));
    };
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(GatewayError::invalid(format!(
            "{at}.{key} is not supported: send {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// The `tools` of `body`, each read as a `T` (unknown keys and wrong types
/// refused by name) and made canonical by `into`, after `refuse` has had its
/// say on the tool's `type` (what kinds of tool this API does not offer).
pub(crate) fn tools_from<T: serde::de::DeserializeOwned>(
    body: &serde_json::Map<String, serde_json::Value>,
    refuse: impl Fn(Option<&str>) -> Option<&'static str>,
    into: impl Fn(T) -> crate::types::Tool,
) -> Result<Vec<crate::types::Tool>, GatewayError> {
    field::<Vec<serde_json::Value>>(body, "tools")?
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if let Some(why) = refuse(t.get("type").and_then(serde_json::Value::as_str)) {
                return Err(GatewayError::invalid(format!("tools[{i}]: {why}")));
            }
            let tool = into(
                serde_json::from_value(t)
                    .map_err(|e| GatewayError::invalid(format!("tools[{i}]: {e}")))?,
            );
            if tool.name.trim().is_empty() {
                return Err(GatewayError::invalid(format!(
                    "tools[{i}].name is required"
                )));
            }
            Ok(tool)
        })
        .collect()
}

/// The request's `model`, required and not blank.
pub(crate) fn required_model(
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<String, GatewayError> {
    body.get("model")
        .and_then(serde_json::Value::as_str)
        .filter(|m| !m.trim().is_empty())
        .map(str::to_owned)
        .ok_or_else(|| GatewayError::invalid("model is required"))
}

/// Parses a JSON request body, or a 400 naming what is wrong.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    fabric_core::api::parse_json_body(body).map_err(GatewayError::invalid)
}

/// One SSE frame: `[event: NAME\n]data: JSON\n\n`.
pub(crate) fn sse_frame<T: Serialize>(event: Option<&str>, value: &T) -> Bytes {
    let data = serde_json::to_string(value).unwrap_or_else(|e| {
        format!(
            r#"{{"error":{{"code":"internal","message":"cannot encode a stream event: {e}"}}}}"#
        )
    });
    Bytes::from(match event {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    })
}

/// One NDJSON line.
pub(crate) fn ndjson_line<T: Serialize>(value: &T) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_else(|e| {
        format!(r#"{{"error":"cannot encode a stream part: {e}"}}"#).into_bytes()
    });
    line.push(b'\n');
    Bytes::from(line)
}
