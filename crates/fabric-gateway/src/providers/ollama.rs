//! The Ollama client: `/api/chat` (NDJSON when streamed), `/api/embed`, `/api/tags`.

use std::collections::VecDeque;

use super::stream::{self, Decode};
use super::{Call, Http, Provider};
use crate::error::{ProviderError, ProviderErrorKind};
use crate::secret::Secret;
use crate::types::{
    ChatRequest, ChatResponse, ChatStream, EmbedRequest, EmbedResponse, FinishReason, StreamEvent,
    TokenCounts,
};
use crate::wire::ollama as wire;

#[derive(Debug)]
pub struct OllamaProvider {
    http: Http,
    /// Ollama itself takes no key; one behind an authenticating proxy may.
    api_key: Option<Secret>,
}

impl OllamaProvider {
    pub(crate) fn new(http: Http, api_key: Option<Secret>) -> Self {
        Self { http, api_key }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.client.request(method, self.http.url(path));
        match &self.api_key {
            Some(key) => builder.bearer_auth(key.expose()),
            None => builder,
        }
    }

    fn body(req: &ChatRequest, stream: bool) -> wire::ChatRequest {
        wire::ChatRequest {
            model: req.model.clone(),
            messages: req
                .messages
                .iter()
                .map(|m| wire::ChatMessage {
                    role: m.role.as_str().to_owned(),
                    content: m.content.clone(),
                    ..wire::ChatMessage::default()
                })
                .collect(),
            stream: Some(stream),
            options: wire::Options::from_params(&req.params),
            ..wire::ChatRequest::default()
        }
    }
}

fn finish(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

/// Ollama reports usage on the final part; absent counts mean none reported.
fn counts(stats: &wire::Stats) -> Option<TokenCounts> {
    match (stats.prompt_eval_count, stats.eval_count) {
        (None, None) => None,
        (input, output) => Some(TokenCounts {
            input: input.unwrap_or(0),
            output: output.unwrap_or(0),
        }),
    }
}

impl Provider for OllamaProvider {
    async fn chat(&self, req: &ChatRequest, call: &Call) -> Result<ChatResponse, ProviderError> {
        let request = self
            .request(reqwest::Method::POST, "/api/chat")
            .json(&Self::body(req, false));
        let response = self.http.send(request, call, wire::error_message).await?;
        let answer: wire::ChatResponse = self.http.json(response, call).await?;
        Ok(ChatResponse {
            content: answer.message.map(|m| m.content).unwrap_or_default(),
            finish_reason: finish(answer.done_reason.as_deref()),
            usage: counts(&answer.stats),
        })
    }

    async fn chat_stream(
        &self,
        req: &ChatRequest,
        call: &Call,
    ) -> Result<ChatStream, ProviderError> {
        let request = self
            .request(reqwest::Method::POST, "/api/chat")
            .json(&Self::body(req, true));
        let response = self.http.send(request, call, wire::error_message).await?;
        let decoder = PartDecoder {
            name: self.http.name.to_string(),
            redactor: self.http.redactor.clone(),
        };
        Ok(stream::decode(stream::lines(response), decoder))
    }

    async fn embed(&self, req: &EmbedRequest, call: &Call) -> Result<EmbedResponse, ProviderError> {
        let body = wire::EmbedRequest {
            model: req.model.clone(),
            input: serde_json::Value::from(req.inputs.clone()),
            ..wire::EmbedRequest::default()
        };
        let request = self
            .request(reqwest::Method::POST, "/api/embed")
            .json(&body);
        let response = self.http.send(request, call, wire::error_message).await?;
        let answer: wire::EmbedResponse = self.http.json(response, call).await?;
        if answer.embeddings.len() != req.inputs.len() {
            return Err(ProviderError::protocol(format!(
                "{} sent {} embeddings for {} inputs",
                self.http.name,
                answer.embeddings.len(),
                req.inputs.len()
            )));
        }
        Ok(EmbedResponse {
            embeddings: answer.embeddings,
            input_tokens: answer.prompt_eval_count,
        })
    }

    async fn list_models(&self, call: &Call) -> Result<Vec<String>, ProviderError> {
        let request = self.request(reqwest::Method::GET, "/api/tags");
        let response = self.http.send(request, call, wire::error_message).await?;
        let tags: wire::TagsResponse = self.http.json(response, call).await?;
        Ok(tags.models.into_iter().map(|m| m.name).collect())
    }
}

/// NDJSON chat parts up to `done: true`.
struct PartDecoder {
    name: String,
    redactor: crate::secret::Redactor,
}

impl Decode for PartDecoder {
    type Item = String;

    fn feed(&mut self, line: String, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        if line.trim().is_empty() {
            return Ok(());
        }
        let value: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
            ProviderError::protocol(format!(
                "{} streamed a line that is not JSON: {e}",
                self.name
            ))
        })?;
        if let Some(message) = wire::error_message(&value) {
            return Err(ProviderError::new(
                ProviderErrorKind::Unavailable,
                self.redactor
                    .scrub(&format!("{} failed mid-stream: {message}", self.name)),
            ));
        }
        let part: wire::ChatResponse = serde_json::from_value(value).map_err(|e| {
            ProviderError::protocol(format!("{} streamed an unexpected part: {e}", self.name))
        })?;
        if let Some(text) = part.message.map(|m| m.content).filter(|t| !t.is_empty()) {
            out.push_back(StreamEvent::Delta(text));
        }
        if part.done {
            out.push_back(StreamEvent::Done {
                finish_reason: finish(part.done_reason.as_deref()),
                usage: counts(&part.stats),
            });
        }
        Ok(())
    }

    fn end(&mut self, _: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        Ok(())
    }
}
