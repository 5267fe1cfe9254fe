//! The Ollama client: `/api/chat` (NDJSON when streamed), `/api/embed`, `/api/tags`.

use std::collections::VecDeque;

use super::stream::{self, Decode};
use super::{Call, Http, Provider};
use crate::error::{ProviderError, ProviderErrorKind};
use crate::secret::Secret;
use crate::types::{
    ChatRequest, ChatResponse, ChatStream, EmbedRequest, EmbedResponse, FinishReason,
    ResponseFormat, Role, StreamEvent, TokenCounts, ToolCall, ToolCallDelta, ToolChoice,
};
use crate::wire::ollama as wire;
use crate::wire::openai as openai_wire;

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
        let o = &req.options;
        // Tool names by call id: Ollama matches a result to its call by name.
        let names: std::collections::HashMap<&str, &str> = req
            .messages
            .iter()
            .flat_map(|m| &m.tool_calls)
            .map(|c| (c.id.as_str(), c.name.as_str()))
            .collect();
        let messages = req
            .messages
            .iter()
            .map(|m| wire::ChatMessage {
                role: if m.role.is_system() {
                    "system"
                } else {
                    m.role.as_str()
                }
                .to_owned(),
                content: m.content.clone(),
                images: (!m.images.is_empty()).then(|| {
                    serde_json::Value::from(
                        m.images
                            .iter()
                            .filter_map(|image| wire::image_base64(&image.url))
                            .collect::<Vec<_>>(),
                    )
                }),
                tool_calls: (!m.tool_calls.is_empty()).then(|| {
                    m.tool_calls
                        .iter()
                        .map(|c| wire::ToolCall {
                            id: None,
                            function: wire::FunctionCall {
                                index: None,
                                name: c.name.clone(),
                                arguments: wire::arguments_value(&c.arguments),
                            },
                        })
                        .collect()
                }),
                tool_name: m
                    .tool_call_id
                    .as_deref()
                    .and_then(|id| names.get(id))
                    .map(|n| (*n).to_owned())
                    .or_else(|| m.name.clone().filter(|_| m.role == Role::Tool)),
            })
            .collect();
        // `tool_choice: none` is honoured by not offering the tools.
        let offer_tools = !o.tools.is_empty() && o.tool_choice != Some(ToolChoice::None);
        wire::ChatRequest {
            model: req.model.clone(),
            messages,
            stream: Some(stream),
            options: wire::Options::from_params(&req.params, o),
            format: match &o.response_format {
                None | Some(ResponseFormat::Text) => None,
                Some(ResponseFormat::JsonObject) => Some(serde_json::Value::from("json")),
                Some(ResponseFormat::JsonSchema { schema, .. }) => Some(schema.clone()),
            },
            tools: offer_tools.then(|| {
                serde_json::Value::from(
                    o.tools
                        .iter()
                        .map(|t| {
                            serde_json::to_value(openai_wire::tool_definition(t))
                                .unwrap_or_default()
                        })
                        .collect::<Vec<_>>(),
                )
            }),
            ..wire::ChatRequest::default()
        }
    }
}

/// The fields of a request Ollama cannot honour, by their OpenAI names.
pub(super) fn unsupported(req: &ChatRequest) -> Option<String> {
    let o = &req.options;
    if matches!(
        o.tool_choice,
        Some(ToolChoice::Required | ToolChoice::Function(_))
    ) {
        return Some("tool_choice (Ollama cannot force a tool call)".to_owned());
    }
    if o.parallel_tool_calls == Some(false) {
        return Some("parallel_tool_calls: false".to_owned());
    }
    if o.logprobs {
        return Some("logprobs".to_owned());
    }
    // `user` (who the call is for, for a cloud's abuse monitoring) means
    // nothing to a local model: the only OpenAI-only field it may go without.
    if let Some(field) = o.extra.keys().find(|k| k.as_str() != "user") {
        return Some(field.clone());
    }
    let remote = req.messages.iter().enumerate().find_map(|(i, m)| {
        m.images
            .iter()
            .any(|image| wire::image_base64(&image.url).is_none())
            .then(|| {
                format!("messages[{i}] image URLs (Ollama takes images inline: send data: URLs)")
            })
    });
    remote.or_else(|| super::image_detail(req))
}

fn finish(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

/// Canonical tool calls from Ollama's, with ids (Ollama's own, or new ones).
fn tool_calls(calls: Option<Vec<wire::ToolCall>>) -> Vec<ToolCall> {
    calls
        .into_iter()
        .flatten()
        .map(|c| ToolCall {
            id: c
                .id
                .unwrap_or_else(|| format!("call_{}", uuid::Uuid::now_v7().simple())),
            name: c.function.name,
            arguments: wire::arguments_text(&c.function.arguments),
        })
        .collect()
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

/// An `/api/chat` answer as a canonical one.
fn chat_response(answer: wire::ChatResponse) -> ChatResponse {
    let (content, calls) = answer
        .message
        .map(|m| (m.content, tool_calls(m.tool_calls)))
        .unwrap_or_default();
    ChatResponse {
        finish_reason: if calls.is_empty() {
            finish(answer.done_reason.as_deref())
        } else {
            FinishReason::ToolCalls
        },
        content,
        tool_calls: calls,
        usage: counts(&answer.stats),
        logprobs: None,
    }
}

impl Provider for OllamaProvider {
    async fn chat(&self, req: &ChatRequest, call: &Call) -> Result<ChatResponse, ProviderError> {
        let request = self
            .request(reqwest::Method::POST, "/api/chat")
            .json(&Self::body(req, false));
        let response = self.http.send(request, call, wire::error_message).await?;
        let answer: wire::ChatResponse = self.http.json(response, call).await?;
        Ok(chat_response(answer))
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
            calls: 0,
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
    /// Tool calls streamed so far (Ollama sends each whole, in one part).
    calls: u32,
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
        if let Some(message) = part.message {
            if !message.content.is_empty() {
                out.push_back(StreamEvent::Delta(message.content));
            }
            for call in tool_calls(message.tool_calls) {
                out.push_back(StreamEvent::ToolCall(ToolCallDelta {
                    index: self.calls,
                    id: Some(call.id),
                    name: Some(call.name),
                    arguments: call.arguments,
                }));
                self.calls += 1;
            }
        }
        if part.done {
            out.push_back(StreamEvent::Done {
                finish_reason: if self.calls > 0 {
                    FinishReason::ToolCalls
                } else {
                    finish(part.done_reason.as_deref())
                },
                usage: counts(&part.stats),
            });
        }
        Ok(())
    }

    fn end(&mut self, _: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// Golden translations, both ways: canonical requests as the `/api/chat`
/// body Ollama receives, its answers and NDJSON parts as canonical ones.
#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::providers::{decode_all, golden_tool_loop};

    #[test]
    fn a_tool_loop_becomes_ollama_messages_with_tool_names_and_inline_images() {
        let body = serde_json::to_value(OllamaProvider::body(&golden_tool_loop(), false)).unwrap();
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        assert_eq!(
            body,
            json!({
                "model": "m1",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "weather in Oslo?", "images": ["iVBORw0KGgo="]},
                    {"role": "assistant", "content": "",
                     "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
                    // Ollama matches a result to its call by the tool's name.
                    {"role": "tool", "content": "rain", "tool_name": "weather"},
                    {"role": "user", "content": "and tomorrow?"}
                ],
                "stream": false,
                "options": {"temperature": 0.5, "num_predict": 50, "stop": ["END"]},
                "tools": [{"type": "function", "function": {
                    "name": "weather", "description": "Weather of a city", "parameters": schema}}]
            })
        );
    }

    #[test]
    fn answer_formats_become_format_and_tool_choice_none_withholds_the_tools() {
        let mut req = golden_tool_loop();
        req.options.tool_choice = Some(ToolChoice::None);
        req.options.response_format = Some(ResponseFormat::JsonObject);
        let body = serde_json::to_value(OllamaProvider::body(&req, true)).unwrap();
        assert_eq!(body["format"], "json");
        assert_eq!(body.get("tools"), None);
        req.options.response_format = Some(ResponseFormat::JsonSchema {
            name: "forecast".into(),
            description: None,
            schema: json!({"type": "object", "required": ["rain"]}),
            strict: None,
        });
        let body = serde_json::to_value(OllamaProvider::body(&req, true)).unwrap();
        assert_eq!(
            body["format"],
            json!({"type": "object", "required": ["rain"]})
        );
    }

    #[test]
    fn answers_with_tool_calls_get_ids_and_json_text_arguments() {
        let answer: wire::ChatResponse = serde_json::from_value(json!({
            "model": "llama3", "created_at": "2026-12-07T00:00:00Z",
            "message": {"role": "assistant", "content": "",
                "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
            "done": true, "done_reason": "stop", "prompt_eval_count": 12, "eval_count": 7
        }))
        .unwrap();
        let got = chat_response(answer);
        assert_eq!(got.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            got.usage,
            Some(TokenCounts {
                input: 12,
                output: 7
            })
        );
        let call = &got.tool_calls[0];
        assert_eq!(
            (call.name.as_str(), call.arguments.as_str()),
            ("weather", r#"{"city":"Oslo"}"#)
        );
        assert!(
            call.id.starts_with("call_"),
            "an id is made up: {}",
            call.id
        );

        let answer: wire::ChatResponse = serde_json::from_value(json!({
            "message": {"role": "assistant", "content": "cut sho"}, "done": true, "done_reason": "length"
        }))
        .unwrap();
        assert_eq!(
            chat_response(answer),
            ChatResponse::text("cut sho", FinishReason::Length)
        );
    }

    #[test]
    fn ndjson_parts_become_text_and_whole_tool_call_deltas() {
        let parts = [
            json!({"model": "llama3", "message": {"role": "assistant", "content": "Checking"}, "done": false}),
            json!({"model": "llama3", "message": {"role": "assistant", "content": ""}, "done": false}),
            json!({"model": "llama3", "message": {"role": "assistant", "content": "",
                "tool_calls": [
                    {"id": "call_a", "function": {"name": "weather", "arguments": {"city": "Oslo"}}},
                    {"id": "call_b", "function": {"name": "forecast", "arguments": {}}}]}, "done": false}),
            json!({"model": "llama3", "message": {"role": "assistant", "content": ""},
                "done": true, "done_reason": "stop", "prompt_eval_count": 12, "eval_count": 7}),
        ]
        .map(|p| p.to_string());
        let decoder = PartDecoder {
            name: "ollama".into(),
            redactor: Default::default(),
            calls: 0,
        };
        let call = |index: u32, id: &str, name: &str, arguments: &str| {
            StreamEvent::ToolCall(ToolCallDelta {
                index,
                id: Some(id.into()),
                name: Some(name.into()),
                arguments: arguments.into(),
            })
        };
        assert_eq!(
            decode_all(decoder, parts),
            [
                StreamEvent::Delta("Checking".into()),
                call(0, "call_a", "weather", r#"{"city":"Oslo"}"#),
                call(1, "call_b", "forecast", "{}"),
                StreamEvent::Done {
                    finish_reason: FinishReason::ToolCalls,
                    usage: Some(TokenCounts {
                        input: 12,
                        output: 7
                    }),
                },
            ]
        );
    }
}
