//! Provider clients: one per wire format, behind the [`Provider`] trait and
//! dispatched through [`AnyProvider`] (the set is closed: config picks one by
//! `kind`).
//!
//! The trait lives here, not in `fabric-core` with the other ports: its
//! stream type needs `futures`, which core does not take, and nothing outside
//! the gateway implements or calls it.
//!
//! Clients do one attempt each; timeouts, retries, fallback and the breaker
//! are the router's. Every upstream error is classified
//! ([`ProviderErrorKind`]) and scrubbed of credentials before it leaves here.

mod anthropic;
mod mock;
mod ollama;
mod openai;
pub(crate) mod stream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use self::anthropic::AnthropicProvider;
pub use self::mock::MockProvider;
pub use self::ollama::OllamaProvider;
pub use self::openai::OpenAiProvider;
use crate::config::{ProviderConfig, ProviderKind};
use crate::error::{ProviderError, ProviderErrorKind};
use crate::secret::Redactor;
use crate::types::{ChatRequest, ChatResponse, ChatStream, EmbedRequest, EmbedResponse};

/// Largest upstream error body read (the message is all that is kept).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How long connecting to a provider may take; the attempt's own timeout
/// (the router's) bounds the rest.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Header carrying the gateway's id of an attempt to the provider.
pub const CORRELATION_HEADER: &str = "x-request-id";

/// One upstream attempt's context.
#[derive(Debug, Clone)]
pub struct Call {
    /// Sent upstream as `X-Request-Id`; the correlation id of errors unless
    /// the provider names its own.
    pub correlation_id: String,
}

impl Call {
    pub fn new() -> Self {
        Self {
            correlation_id: format!("fab_{}", uuid::Uuid::now_v7().simple()),
        }
    }
}

impl Default for Call {
    fn default() -> Self {
        Self::new()
    }
}

/// An LLM provider: one attempt per call, errors classified.
pub trait Provider: Send + Sync {
    /// A complete answer. `req.model` is already the provider's model name.
    fn chat(
        &self,
        req: &ChatRequest,
        call: &Call,
    ) -> impl Future<Output = Result<ChatResponse, ProviderError>> + Send;

    /// A streamed answer; resolves once the provider accepted the request.
    fn chat_stream(
        &self,
        req: &ChatRequest,
        call: &Call,
    ) -> impl Future<Output = Result<ChatStream, ProviderError>> + Send;

    fn embed(
        &self,
        req: &EmbedRequest,
        call: &Call,
    ) -> impl Future<Output = Result<EmbedResponse, ProviderError>> + Send;

    /// The models the provider says it serves.
    fn list_models(
        &self,
        call: &Call,
    ) -> impl Future<Output = Result<Vec<String>, ProviderError>> + Send;
}

/// Every provider client, chosen by `kind`.
#[derive(Debug)]
pub enum AnyProvider {
    Ollama(OllamaProvider),
    /// Also `openai-compatible`: same wire format, another base URL.
    OpenAi(OpenAiProvider),
    Anthropic(AnthropicProvider),
    Mock(MockProvider),
}

impl AnyProvider {
    /// The client for `config`; `redactor` scrubs every key from upstream text.
    pub fn build(config: &ProviderConfig, redactor: Redactor) -> Result<Self, ProviderError> {
        let http = || Http::new(&config.name, config.base_url(), redactor.clone());
        Ok(match config.kind {
            ProviderKind::Ollama => {
                AnyProvider::Ollama(OllamaProvider::new(http()?, config.api_key.clone()))
            }
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
                AnyProvider::OpenAi(OpenAiProvider::new(http()?, config.api_key.clone()))
            }
            ProviderKind::Anthropic => {
                AnyProvider::Anthropic(AnthropicProvider::new(http()?, config.api_key.clone()))
            }
            ProviderKind::Mock => AnyProvider::Mock(MockProvider::new(config.models.clone())),
        })
    }
}

impl AnyProvider {
    /// The field of `req` (by its OpenAI name) this provider cannot honour,
    /// if any: the router does not ask it then.
    pub fn unsupported(&self, req: &ChatRequest) -> Option<String> {
        match self {
            AnyProvider::Ollama(_) => ollama::unsupported(req),
            // The OpenAI wire format carries every field as the caller sent it.
            AnyProvider::OpenAi(_) => None,
            AnyProvider::Anthropic(_) => anthropic::unsupported(req),
            // The in-process mock answers text chats only.
            AnyProvider::Mock(_) => req
                .options
                .fields()
                .into_iter()
                .next()
                .or_else(|| mock_unsupported_message(req)),
        }
    }
}

/// An image resolution hint (`detail: low | high`) only OpenAI-compatible
/// providers honour: the first message that asks for one.
fn image_detail(req: &ChatRequest) -> Option<String> {
    req.messages.iter().enumerate().find_map(|(i, m)| {
        m.images
            .iter()
            .any(|image| image.detail.as_deref().is_some_and(|d| d != "auto"))
            .then(|| format!("messages[{i}] image detail"))
    })
}

/// The first message part the in-process mock would have to drop.
fn mock_unsupported_message(req: &ChatRequest) -> Option<String> {
    req.messages.iter().enumerate().find_map(|(i, m)| {
        if !m.images.is_empty() {
            Some(format!("messages[{i}] images"))
        } else if !m.tool_calls.is_empty() || m.role == crate::types::Role::Tool {
            Some(format!("messages[{i}] tool calls"))
        } else {
            None
        }
    })
}

impl Provider for AnyProvider {
    async fn chat(&self, req: &ChatRequest, call: &Call) -> Result<ChatResponse, ProviderError> {
        match self {
            AnyProvider::Ollama(p) => p.chat(req, call).await,
            AnyProvider::OpenAi(p) => p.chat(req, call).await,
            AnyProvider::Anthropic(p) => p.chat(req, call).await,
            AnyProvider::Mock(p) => p.chat(req, call).await,
        }
    }

    async fn chat_stream(
        &self,
        req: &ChatRequest,
        call: &Call,
    ) -> Result<ChatStream, ProviderError> {
        match self {
            AnyProvider::Ollama(p) => p.chat_stream(req, call).await,
            AnyProvider::OpenAi(p) => p.chat_stream(req, call).await,
            AnyProvider::Anthropic(p) => p.chat_stream(req, call).await,
            AnyProvider::Mock(p) => p.chat_stream(req, call).await,
        }
    }

    async fn embed(&self, req: &EmbedRequest, call: &Call) -> Result<EmbedResponse, ProviderError> {
        match self {
            AnyProvider::Ollama(p) => p.embed(req, call).await,
            AnyProvider::OpenAi(p) => p.embed(req, call).await,
            AnyProvider::Anthropic(p) => p.embed(req, call).await,
            AnyProvider::Mock(p) => p.embed(req, call).await,
        }
    }

    async fn list_models(&self, call: &Call) -> Result<Vec<String>, ProviderError> {
        match self {
            AnyProvider::Ollama(p) => p.list_models(call).await,
            AnyProvider::OpenAi(p) => p.list_models(call).await,
            AnyProvider::Anthropic(p) => p.list_models(call).await,
            AnyProvider::Mock(p) => p.list_models(call).await,
        }
    }
}

/// What the HTTP clients share: the connection pool, the base URL, error
/// classification and scrubbing.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    pub name: Arc<str>,
    pub base: String,
    pub client: reqwest::Client,
    pub redactor: Redactor,
}

impl Http {
    fn new(name: &str, base: String, redactor: Redactor) -> Result<Self, ProviderError> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            // A redirect could carry the key to another host: never follow.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("reactor-fabric/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ProviderError::new(
                    ProviderErrorKind::Connect,
                    format!("cannot create the HTTP client for {name}: {e}"),
                )
            })?;
        Ok(Self {
            name: Arc::from(name),
            base,
            client,
            redactor,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `request` (with the correlation header) and returns the response
    /// if it is a success; otherwise a classified, scrubbed error whose
    /// message `error_message` extracts from the provider's error body.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        call: &Call,
        error_message: fn(&Value) -> Option<String>,
    ) -> Result<reqwest::Response, ProviderError> {
        let response = request
            .header(CORRELATION_HEADER, &call.correlation_id)
            .send()
            .await
            .map_err(|e| self.transport_error(&e, call))?;
        let status = response.status();
        let correlation =
            upstream_request_id(response.headers()).unwrap_or_else(|| call.correlation_id.clone());
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = read_capped(response, MAX_ERROR_BODY).await;
        let text = String::from_utf8_lossy(&body);
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| error_message(&v))
            .unwrap_or_else(|| truncate(text.trim(), 300));
        let detail = if detail.is_empty() {
            status.canonical_reason().unwrap_or("no details").to_owned()
        } else {
            detail
        };
        Err(ProviderError {
            kind: kind_for_status(status),
            status: Some(status.as_u16()),
            message: self.redactor.scrub(&format!(
                "{} answered {}: {detail}",
                self.name,
                status.as_u16()
            )),
            correlation_id: Some(correlation),
            retry_after,
        })
    }

    /// Reads and parses a success body.
    pub async fn json<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
        call: &Call,
    ) -> Result<T, ProviderError> {
        let correlation = upstream_request_id(response.headers());
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e, call))?;
        serde_json::from_slice(&body).map_err(|e| {
            ProviderError::protocol(self.redactor.scrub(&format!(
                "{} sent an answer that is not its API's JSON: {e}",
                self.name
            )))
            .with_correlation(correlation.or_else(|| Some(call.correlation_id.clone())))
        })
    }

    fn transport_error(&self, e: &reqwest::Error, call: &Call) -> ProviderError {
        let kind = if e.is_connect() {
            ProviderErrorKind::Connect
        } else if e.is_timeout() {
            ProviderErrorKind::Timeout
        } else {
            ProviderErrorKind::Network
        };
        let what = match kind {
            ProviderErrorKind::Connect => "cannot connect to",
            ProviderErrorKind::Timeout => "timed out talking to",
            _ => "lost the connection to",
        };
        ProviderError::new(
            kind,
            self.redactor.scrub(&format!(
                "{what} {} at {}: {}",
                self.name,
                self.base,
                stream::error_chain(e)
            )),
        )
        .with_correlation(Some(call.correlation_id.clone()))
    }
}

/// The provider's own id for a request, when it sends one.
/// The upstream's id for the attempt, if it is a plain id: 1 to 128 of
/// `A-Z a-z 0-9 . _ : -`. Anything else (markup, escapes, a key an
/// upstream echoed) is dropped for the gateway's own id: it would reach
/// error bodies, logs and agents as is.
fn upstream_request_id(headers: &HeaderMap) -> Option<String> {
    ["x-request-id", "request-id", "x-amzn-requestid"]
        .iter()
        .find_map(|h| headers.get(*h))
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        })
        .map(str::to_owned)
}

fn kind_for_status(status: StatusCode) -> ProviderErrorKind {
    match status.as_u16() {
        401 | 403 => ProviderErrorKind::Auth,
        404 => ProviderErrorKind::ModelNotFound,
        408 => ProviderErrorKind::Timeout,
        413 => ProviderErrorKind::TooLarge,
        429 => ProviderErrorKind::RateLimited,
        s if s >= 500 => ProviderErrorKind::Unavailable,
        _ => ProviderErrorKind::InvalidRequest,
    }
}

async fn read_capped(mut response: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= cap {
            body.truncate(cap);
            break;
        }
    }
    body
}

/// At most `max` characters of `text`, marked when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// The conversation the providers' golden translation tests send: a
/// developer instruction, an image, one round of a tool loop and a
/// follow-up question, with a tool offered.
#[cfg(test)]
pub(crate) fn golden_tool_loop() -> ChatRequest {
    use crate::types::{ChatOptions, Message, Params, Role, Tool, ToolCall, ToolChoice};
    ChatRequest {
        model: "m1".into(),
        messages: vec![
            Message::new(Role::Developer, "be brief"),
            Message {
                images: vec!["data:image/png;base64,iVBORw0KGgo=".into()],
                ..Message::new(Role::User, "weather in Oslo?")
            },
            Message {
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "weather".into(),
                    arguments: r#"{"city":"Oslo"}"#.into(),
                }],
                ..Message::new(Role::Assistant, "")
            },
            Message {
                tool_call_id: Some("call_1".into()),
                ..Message::new(Role::Tool, "rain")
            },
            Message::new(Role::User, "and tomorrow?"),
        ],
        params: Params {
            temperature: Some(0.5),
            max_tokens: Some(50),
            stop: vec!["END".into()],
            ..Params::default()
        },
        options: ChatOptions {
            tools: vec![Tool {
                name: "weather".into(),
                description: Some("Weather of a city".into()),
                parameters: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
                strict: None,
            }],
            tool_choice: Some(ToolChoice::Auto),
            ..ChatOptions::default()
        },
    }
}

/// Feeds `items` to a stream decoder as an upstream would, then ends it.
#[cfg(test)]
pub(crate) fn decode_all<D: stream::Decode>(
    mut decoder: D,
    items: impl IntoIterator<Item = D::Item>,
) -> Vec<crate::types::StreamEvent> {
    let mut out = std::collections::VecDeque::new();
    for item in items {
        decoder.feed(item, &mut out).unwrap();
    }
    decoder.end(&mut out).unwrap();
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_upstream_request_ids_are_kept() {
        let id = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-request-id", value.parse().unwrap());
            upstream_request_id(&headers)
        };
        assert_eq!(id("req_0123-abc.9:z").as_deref(), Some("req_0123-abc.9:z"));
        for hostile in [
            "<script>x</script>",
            "a b",
            "a\tb",
            "sk-live key=1",
            &"x".repeat(129),
        ] {
            assert_eq!(id(hostile), None, "{hostile:?}");
        }
    }

    #[test]
    fn statuses_map_onto_the_taxonomy() {
        let k = |s: u16| kind_for_status(StatusCode::from_u16(s).unwrap());
        assert_eq!(k(400), ProviderErrorKind::InvalidRequest);
        assert_eq!(k(401), ProviderErrorKind::Auth);
        assert_eq!(k(404), ProviderErrorKind::ModelNotFound);
        assert_eq!(k(429), ProviderErrorKind::RateLimited);
        assert_eq!(k(503), ProviderErrorKind::Unavailable);
        assert_eq!(k(529), ProviderErrorKind::Unavailable);
        assert_eq!(truncate("abcdef", 3), "abc...");
        assert_eq!(truncate("ab", 3), "ab");
    }
}
