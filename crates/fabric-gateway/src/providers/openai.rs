//! The OpenAI (and OpenAI-compatible) client: `/chat/completions` (SSE when
//! streamed, asking for the usage chunk), `/embeddings`, `/models`.

use std::collections::VecDeque;

use base64::Engine as _;
use serde_json::Value;

use super::stream::{self, Decode, SseEvent};
use super::{Call, Http, Provider};
use crate::error::{ProviderError, ProviderErrorKind};
use crate::secret::Secret;
use crate::types::{
    ChatRequest, ChatResponse, ChatStream, EmbedRequest, EmbedResponse, FinishReason, StreamEvent,
    TokenCounts, ToolCallDelta,
};
use crate::wire::openai as wire;

#[derive(Debug)]
pub struct OpenAiProvider {
    http: Http,
    api_key: Option<Secret>,
}

impl OpenAiProvider {
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

    /// The request as OpenAI's API has it: every field the caller sent
    /// (unknown ones from `extra` too), with this provider's model name, and
    /// the usage chunk asked for when streamed.
    fn body(req: &ChatRequest, stream: bool) -> wire::ChatCompletionRequest {
        let o = &req.options;
        let (max_tokens, max_completion_tokens) = if o.max_completion_tokens {
            (None, req.params.max_tokens)
        } else {
            (req.params.max_tokens, None)
        };
        wire::ChatCompletionRequest {
            model: req.model.clone(),
            messages: req
                .messages
                .iter()
                .map(wire::ChatMessage::from_message)
                .collect(),
            stream: stream.then_some(true),
            stream_options: stream.then_some(wire::StreamOptions {
                include_usage: true,
            }),
            temperature: req.params.temperature,
            top_p: req.params.top_p,
            max_tokens,
            max_completion_tokens,
            stop: (!req.params.stop.is_empty()).then(|| Value::from(req.params.stop.clone())),
            seed: req.params.seed,
            n: None,
            presence_penalty: o.presence_penalty,
            frequency_penalty: o.frequency_penalty,
            logprobs: o.logprobs.then_some(true),
            top_logprobs: o.top_logprobs,
            tools: (!o.tools.is_empty())
                .then(|| o.tools.iter().map(wire::tool_definition).collect()),
            tool_choice: o.tool_choice.as_ref().map(wire::tool_choice_value),
            parallel_tool_calls: o.parallel_tool_calls,
            response_format: o.response_format.as_ref().map(wire::response_format_value),
            functions: None,
            function_call: None,
            extra: o.extra.clone(),
        }
    }
}

fn finish(reason: Option<&str>) -> FinishReason {
    FinishReason::from_openai(reason)
}

fn counts(u: wire::CompletionUsage) -> TokenCounts {
    TokenCounts {
        input: u.prompt_tokens,
        output: u.completion_tokens,
    }
}

impl Provider for OpenAiProvider {
    async fn chat(&self, req: &ChatRequest, call: &Call) -> Result<ChatResponse, ProviderError> {
        let request = self
            .request(reqwest::Method::POST, "/chat/completions")
            .json(&Self::body(req, false));
        let response = self.http.send(request, call, wire::error_message).await?;
        let completion: wire::ChatCompletion = self.http.json(response, call).await?;
        let choice = completion.choices.into_iter().next().ok_or_else(|| {
            ProviderError::protocol(format!("{} answered without choices", self.http.name))
        })?;
        Ok(ChatResponse {
            content: choice.message.content.unwrap_or_default(),
            tool_calls: choice
                .message
                .tool_calls
                .iter()
                .flatten()
                .map(wire::ToolCall::to_call)
                .collect(),
            finish_reason: finish(choice.finish_reason.as_deref()),
            usage: completion.usage.map(counts),
            logprobs: choice.logprobs.filter(|l| !l.is_null()),
        })
    }

    async fn chat_stream(
        &self,
        req: &ChatRequest,
        call: &Call,
    ) -> Result<ChatStream, ProviderError> {
        let request = self
            .request(reqwest::Method::POST, "/chat/completions")
            .json(&Self::body(req, true));
        let response = self.http.send(request, call, wire::error_message).await?;
        let decoder = ChunkDecoder {
            name: self.http.name.to_string(),
            redactor: self.http.redactor.clone(),
            finish: None,
            usage: None,
        };
        Ok(stream::decode(
            stream::sse(stream::lines(response)),
            decoder,
        ))
    }

    async fn embed(&self, req: &EmbedRequest, call: &Call) -> Result<EmbedResponse, ProviderError> {
        let body = wire::EmbeddingRequest {
            model: req.model.clone(),
            input: Value::from(req.inputs.clone()),
            encoding_format: Some("float".to_owned()),
            dimensions: None,
        };
        let request = self
            .request(reqwest::Method::POST, "/embeddings")
            .json(&body);
        let response = self.http.send(request, call, wire::error_message).await?;
        let mut parsed: wire::EmbeddingResponse = self.http.json(response, call).await?;
        parsed.data.sort_by_key(|e| e.index);
        let embeddings = parsed
            .data
            .into_iter()
            .map(|e| vector(&e.embedding))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ProviderError::protocol(format!(
                    "{} sent an embedding that is neither floats nor base64",
                    self.http.name
                ))
            })?;
        if embeddings.len() != req.inputs.len() {
            return Err(ProviderError::protocol(format!(
                "{} sent {} embeddings for {} inputs",
                self.http.name,
                embeddings.len(),
                req.inputs.len()
            )));
        }
        Ok(EmbedResponse {
            embeddings,
            input_tokens: parsed.usage.map(|u| u.prompt_tokens),
        })
    }

    async fn list_models(&self, call: &Call) -> Result<Vec<String>, ProviderError> {
        let request = self.request(reqwest::Method::GET, "/models");
        let response = self.http.send(request, call, wire::error_message).await?;
        let list: wire::ModelList = self.http.json(response, call).await?;
        Ok(list.data.into_iter().map(|m| m.id).collect())
    }
}

/// An embedding as floats, or decoded from base64 little-endian f32s.
fn vector(value: &Value) -> Option<Vec<f32>> {
    match value {
        Value::Array(items) => items.iter().map(|v| v.as_f64().map(|f| f as f32)).collect(),
        Value::String(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            if bytes.len() % 4 != 0 {
                return None;
            }
            Some(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        }
        _ => None,
    }
}

/// `chat.completion.chunk` events up to `[DONE]`.
struct ChunkDecoder {
    name: String,
    redactor: crate::secret::Redactor,
    finish: Option<FinishReason>,
    usage: Option<TokenCounts>,
}

impl Decode for ChunkDecoder {
    type Item = SseEvent;

    fn feed(
        &mut self,
        event: SseEvent,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<(), ProviderError> {
        if event.data.trim() == "[DONE]" {
            out.push_back(StreamEvent::Done {
                finish_reason: self.finish.unwrap_or(FinishReason::Stop),
                usage: self.usage,
            });
            return Ok(());
        }
        let value: Value = serde_json::from_str(&event.data).map_err(|e| {
            ProviderError::protocol(format!(
                "{} streamed a chunk that is not JSON: {e}",
                self.name
            ))
        })?;
        if value.get("error").is_some() {
            let message = wire::error_message(&value).unwrap_or_else(|| "unknown error".into());
            return Err(ProviderError::new(
                ProviderErrorKind::Unavailable,
                self.redactor
                    .scrub(&format!("{} failed mid-stream: {message}", self.name)),
            ));
        }
        let chunk: wire::ChatCompletionChunk = serde_json::from_value(value).map_err(|e| {
            ProviderError::protocol(format!("{} streamed an unexpected chunk: {e}", self.name))
        })?;
        for choice in chunk.choices {
            if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                out.push_back(StreamEvent::Delta(text));
            }
            for call in choice.delta.tool_calls.into_iter().flatten() {
                out.push_back(StreamEvent::ToolCall(ToolCallDelta {
                    index: call.index,
                    id: call.id,
                    name: call.function.name,
                    arguments: call.function.arguments.unwrap_or_default(),
                }));
            }
            if let Some(logprobs) = choice.logprobs.filter(|l| !l.is_null()) {
                out.push_back(StreamEvent::Logprobs(logprobs));
            }
            if let Some(reason) = choice.finish_reason {
                self.finish = Some(finish(Some(&reason)));
            }
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(counts(usage));
        }
        Ok(())
    }

    fn end(&mut self, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        // Some compatible servers end without `[DONE]` after the finish reason.
        if let Some(finish_reason) = self.finish {
            out.push_back(StreamEvent::Done {
                finish_reason,
                usage: self.usage,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_decode_from_floats_or_base64() {
        assert_eq!(vector(&serde_json::json!([0.5, 1.0])), Some(vec![0.5, 1.0]));
        assert_eq!(vector(&Value::from("AACAPw==")), Some(vec![1.0]));
        assert_eq!(vector(&Value::from("AAA=")), None);
    }

    #[test]
    fn chunks_become_deltas_then_done_with_usage() {
        let mut d = ChunkDecoder {
            name: "openai".into(),
            redactor: crate::secret::Redactor::default(),
            finish: None,
            usage: None,
        };
        let mut out = VecDeque::new();
        let ev = |data: &str| SseEvent {
            event: None,
            data: data.into(),
        };
        d.feed(
            ev(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#),
            &mut out,
        )
        .unwrap();
        d.feed(
            ev(r#"{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"length"}]}"#),
            &mut out,
        )
        .unwrap();
        d.feed(ev(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#), &mut out).unwrap();
        d.feed(ev("[DONE]"), &mut out).unwrap();
        assert_eq!(
            Vec::from(out),
            vec![
                StreamEvent::Delta("hi".into()),
                StreamEvent::Done {
                    finish_reason: FinishReason::Length,
                    usage: Some(TokenCounts {
                        input: 3,
                        output: 1
                    })
                }
            ]
        );
        let err = d
            .feed(ev(r#"{"error":{"message":"boom"}}"#), &mut VecDeque::new())
            .unwrap_err();
        assert!(err.message.contains("boom"));
    }
}
