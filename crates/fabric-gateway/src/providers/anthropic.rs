//! The Anthropic client: `/v1/messages` (typed SSE events when streamed) and
//! `/v1/models`. Anthropic has no embeddings: those fall through to the next
//! provider of the chain.

use std::collections::VecDeque;

use super::stream::{self, Decode, SseEvent};
use super::{Call, Http, Provider};
use crate::error::{ProviderError, ProviderErrorKind};
use crate::secret::Secret;
use crate::types::{
    ChatRequest, ChatResponse, ChatStream, EmbedRequest, EmbedResponse, FinishReason, Role,
    StreamEvent, TokenCounts,
};
use crate::wire::anthropic as wire;

#[derive(Debug)]
pub struct AnthropicProvider {
    http: Http,
    api_key: Option<Secret>,
}

impl AnthropicProvider {
    pub(crate) fn new(http: Http, api_key: Option<Secret>) -> Self {
        Self { http, api_key }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self
            .http
            .client
            .request(method, self.http.url(path))
            .header("anthropic-version", wire::API_VERSION);
        match &self.api_key {
            Some(key) => builder.header("x-api-key", key.expose()),
            None => builder,
        }
    }

    /// System messages travel beside the conversation, joined.
    fn body(req: &ChatRequest, stream: bool) -> wire::MessagesRequest {
        let system: Vec<&str> = req
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        wire::MessagesRequest {
            model: req.model.clone(),
            max_tokens: req.params.max_tokens.unwrap_or(wire::DEFAULT_MAX_TOKENS),
            messages: req
                .messages
                .iter()
                .filter(|m| m.role != Role::System)
                .map(|m| wire::InputMessage {
                    role: m.role.as_str().to_owned(),
                    content: m.content.clone(),
                })
                .collect(),
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            temperature: req.params.temperature,
            top_p: req.params.top_p,
            stop_sequences: req.params.stop.clone(),
            stream,
        }
    }
}

fn finish(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("max_tokens") => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

impl Provider for AnthropicProvider {
    async fn chat(&self, req: &ChatRequest, call: &Call) -> Result<ChatResponse, ProviderError> {
        let request = self
            .request(reqwest::Method::POST, "/v1/messages")
            .json(&Self::body(req, false));
        let response = self.http.send(request, call, wire::error_message).await?;
        let answer: wire::MessagesResponse = self.http.json(response, call).await?;
        let content: String = answer
            .content
            .iter()
            .filter(|b| b.kind == "text")
            .filter_map(|b| b.text.as_deref())
            .collect();
        Ok(ChatResponse {
            content,
            finish_reason: finish(answer.stop_reason.as_deref()),
            usage: answer.usage.map(|u| TokenCounts {
                input: u.input_tokens.unwrap_or(0),
                output: u.output_tokens.unwrap_or(0),
            }),
        })
    }

    async fn chat_stream(
        &self,
        req: &ChatRequest,
        call: &Call,
    ) -> Result<ChatStream, ProviderError> {
        let request = self
            .request(reqwest::Method::POST, "/v1/messages")
            .json(&Self::body(req, true));
        let response = self.http.send(request, call, wire::error_message).await?;
        let decoder = EventDecoder {
            name: self.http.name.to_string(),
            redactor: self.http.redactor.clone(),
            input: None,
            output: None,
            finish: None,
        };
        Ok(stream::decode(
            stream::sse(stream::lines(response)),
            decoder,
        ))
    }

    async fn embed(&self, _: &EmbedRequest, _: &Call) -> Result<EmbedResponse, ProviderError> {
        Err(ProviderError::new(
            ProviderErrorKind::Unsupported,
            format!("{} (Anthropic) has no embeddings API", self.http.name),
        ))
    }

    async fn list_models(&self, call: &Call) -> Result<Vec<String>, ProviderError> {
        let request = self.request(reqwest::Method::GET, "/v1/models");
        let response = self.http.send(request, call, wire::error_message).await?;
        let list: serde_json::Value = self.http.json(response, call).await?;
        Ok(list
            .get("data")
            .and_then(serde_json::Value::as_array)
            .map(|models| {
                models
                    .iter()
                    .filter_map(|m| m.get("id").and_then(serde_json::Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// `message_start` … `content_block_delta`* … `message_delta`, `message_stop`.
struct EventDecoder {
    name: String,
    redactor: crate::secret::Redactor,
    input: Option<u64>,
    output: Option<u64>,
    finish: Option<FinishReason>,
}

impl EventDecoder {
    fn usage(&self) -> Option<TokenCounts> {
        match (self.input, self.output) {
            (None, None) => None,
            (i, o) => Some(TokenCounts {
                input: i.unwrap_or(0),
                output: o.unwrap_or(0),
            }),
        }
    }
}

impl Decode for EventDecoder {
    type Item = SseEvent;

    fn feed(
        &mut self,
        event: SseEvent,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<(), ProviderError> {
        let parsed: wire::StreamEvent = match serde_json::from_str(&event.data) {
            Ok(p) => p,
            // Event types added after this client was written are skipped.
            Err(_) if event.event.as_deref().is_some_and(|e| e != "error") => return Ok(()),
            Err(e) => {
                return Err(ProviderError::protocol(format!(
                    "{} streamed an event that does not parse: {e}",
                    self.name
                )));
            }
        };
        match parsed {
            wire::StreamEvent::MessageStart { message } => {
                if let Some(u) = message.usage {
                    self.input = u.input_tokens.or(self.input);
                    self.output = u.output_tokens.or(self.output);
                }
            }
            wire::StreamEvent::ContentBlockDelta { delta } => {
                if let Some(text) = delta.text.filter(|t| !t.is_empty()) {
                    out.push_back(StreamEvent::Delta(text));
                }
            }
            wire::StreamEvent::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.stop_reason {
                    self.finish = Some(finish(Some(&reason)));
                }
                if let Some(u) = usage {
                    self.input = u.input_tokens.or(self.input);
                    self.output = u.output_tokens.or(self.output);
                }
            }
            wire::StreamEvent::MessageStop {} => out.push_back(StreamEvent::Done {
                finish_reason: self.finish.unwrap_or(FinishReason::Stop),
                usage: self.usage(),
            }),
            wire::StreamEvent::Error { error } => {
                let kind = match error.get("type").and_then(serde_json::Value::as_str) {
                    Some("rate_limit_error") => ProviderErrorKind::RateLimited,
                    _ => ProviderErrorKind::Unavailable,
                };
                let message = wire::error_message(&serde_json::json!({ "error": error }))
                    .unwrap_or_else(|| "unknown error".to_owned());
                return Err(ProviderError::new(
                    kind,
                    self.redactor
                        .scrub(&format!("{} failed mid-stream: {message}", self.name)),
                ));
            }
            wire::StreamEvent::ContentBlockStart { .. }
            | wire::StreamEvent::ContentBlockStop {}
            | wire::StreamEvent::Ping {} => {}
        }
        Ok(())
    }

    fn end(&mut self, _: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        Ok(())
    }
}
