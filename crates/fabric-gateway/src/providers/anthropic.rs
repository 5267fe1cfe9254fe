//! The Anthropic client: `/v1/messages` (typed SSE events when streamed) and
//! `/v1/models`. Anthropic has no embeddings: those fall through to the next
//! provider of the chain.

use std::collections::VecDeque;

use serde_json::{Value, json};

use super::stream::{self, Decode, SseEvent};
use super::{Call, Http, Provider};
use crate::error::{ProviderError, ProviderErrorKind};
use crate::secret::Secret;
use crate::types::{
    ChatRequest, ChatResponse, ChatStream, EmbedRequest, EmbedResponse, FinishReason, Message,
    ResponseFormat, Role, StreamEvent, TokenCounts, ToolCall, ToolCallDelta, ToolChoice,
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

    /// System messages travel beside the conversation, joined; tool results
    /// are `tool_result` blocks of a user turn, and turns of one role in a
    /// row are merged (Anthropic wants them alternating). A JSON answer
    /// format becomes a tool the model is made to call, Anthropic's way to
    /// structured output.
    fn body(req: &ChatRequest, stream: bool) -> wire::MessagesRequest {
        let o = &req.options;
        let system: Vec<&str> = req
            .messages
            .iter()
            .filter(|m| m.role.is_system())
            .map(|m| m.content.as_str())
            .collect();
        let mut messages: Vec<wire::InputMessage> = Vec::new();
        for m in req.messages.iter().filter(|m| !m.role.is_system()) {
            let role = if m.role == Role::Assistant {
                "assistant"
            } else {
                "user"
            };
            let blocks = blocks(m);
            match messages.last_mut() {
                Some(last) if last.role == role => {
                    if let Value::Array(existing) = &mut last.content {
                        existing.extend(blocks);
                    }
                }
                _ => messages.push(wire::InputMessage {
                    role: role.to_owned(),
                    content: Value::Array(blocks),
                }),
            }
        }
        let mut tools: Vec<Value> = o
            .tools
            .iter()
            .map(|t| {
                let mut tool = json!({"name": t.name, "input_schema": t.parameters});
                if let Some(d) = &t.description {
                    tool["description"] = json!(d);
                }
                tool
            })
            .collect();
        let mut tool_choice = match &o.tool_choice {
            None => None,
            Some(ToolChoice::Auto) => Some(json!({"type": "auto"})),
            Some(ToolChoice::None) => Some(json!({"type": "none"})),
            Some(ToolChoice::Required) => Some(json!({"type": "any"})),
            Some(ToolChoice::Function(name)) => Some(json!({"type": "tool", "name": name})),
        };
        if let Some((name, schema)) = json_answer_tool(o.response_format.as_ref()) {
            tools.push(json!({"name": name, "description": "Give the answer as this tool's input: it is the JSON the user asked for.", "input_schema": schema}));
            tool_choice = Some(json!({"type": "tool", "name": name}));
        }
        if o.parallel_tool_calls == Some(false) {
            let choice = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
            choice["disable_parallel_tool_use"] = json!(true);
        }
        wire::MessagesRequest {
            model: req.model.clone(),
            max_tokens: req.params.max_tokens.unwrap_or(wire::DEFAULT_MAX_TOKENS),
            messages,
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            temperature: req.params.temperature,
            top_p: req.params.top_p,
            stop_sequences: req.params.stop.clone(),
            stream,
            tools: (!tools.is_empty()).then_some(tools),
            tool_choice,
            metadata: o
                .extra
                .get("user")
                .and_then(Value::as_str)
                .map(|user| json!({"user_id": user})),
        }
    }
}

fn finish(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("max_tokens") => FinishReason::Length,
        Some("refusal") => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// The tool a JSON answer format becomes: its name and input schema.
fn json_answer_tool(format: Option<&ResponseFormat>) -> Option<(String, Value)> {
    match format? {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some((JSON_TOOL.to_owned(), json!({"type": "object"}))),
        ResponseFormat::JsonSchema { name, schema, .. } => Some((name.clone(), schema.clone())),
    }
}

/// The tool a `json_object` answer format becomes.
const JSON_TOOL: &str = "json_answer";

/// A canonical message as Anthropic content blocks.
fn blocks(m: &Message) -> Vec<Value> {
    let mut out = Vec::new();
    if m.role == Role::Tool {
        out.push(json!({
            "type": "tool_result",
            "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
            "content": m.content,
        }));
        return out;
    }
    if !m.content.is_empty() {
        out.push(json!({"type": "text", "text": m.content}));
    }
    for image in &m.images {
        let url = &image.url;
        let source = match url.strip_prefix("data:").and_then(|r| r.split_once(',')) {
            Some((meta, data)) => json!({
                "type": "base64",
                "media_type": meta.trim_end_matches(";base64"),
                "data": data,
            }),
            None => json!({"type": "url", "url": url}),
        };
        out.push(json!({"type": "image", "source": source}));
    }
    for call in &m.tool_calls {
        out.push(json!({
            "type": "tool_use",
            "id": call.id,
            "name": call.name,
            "input": crate::wire::ollama::arguments_value(&call.arguments),
        }));
    }
    if out.is_empty() {
        out.push(json!({"type": "text", "text": ""}));
    }
    out
}

/// The fields of a request Anthropic cannot honour, by their OpenAI names.
pub(super) fn unsupported(req: &ChatRequest) -> Option<String> {
    let o = &req.options;
    let checks = [
        (req.params.seed.is_some(), "seed"),
        (o.presence_penalty.is_some(), "presence_penalty"),
        (o.frequency_penalty.is_some(), "frequency_penalty"),
        (o.logprobs, "logprobs"),
        (o.top_logprobs.is_some(), "top_logprobs"),
        (
            !o.tools.is_empty() && json_answer_tool(o.response_format.as_ref()).is_some(),
            "response_format together with tools (Anthropic answers JSON through a tool)",
        ),
    ];
    if let Some((_, field)) = checks.iter().find(|(present, _)| *present) {
        return Some((*field).to_owned());
    }
    // `user` becomes Anthropic's metadata.user_id; nothing else maps.
    o.extra
        .keys()
        .find(|k| k.as_str() != "user")
        .cloned()
        .or_else(|| super::image_detail(req))
}

/// A Messages API answer as a canonical one; the input of `json_answer`
/// (the tool an answer format became) is the answer's text.
fn chat_response(answer: wire::MessagesResponse, json_answer: Option<&str>) -> ChatResponse {
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    for block in answer.content {
        match block.kind.as_str() {
            "text" => content.push_str(block.text.as_deref().unwrap_or_default()),
            "tool_use" => {
                let input = block.input.unwrap_or_else(|| json!({}));
                let name = block.name.unwrap_or_default();
                if json_answer == Some(name.as_str()) {
                    content = input.to_string();
                } else {
                    tool_calls.push(ToolCall {
                        id: block.id.unwrap_or_default(),
                        name,
                        arguments: input.to_string(),
                    });
                }
            }
            _ => {}
        }
    }
    let finish_reason = match answer.stop_reason.as_deref() {
        Some("tool_use") if !tool_calls.is_empty() => FinishReason::ToolCalls,
        other => finish(other),
    };
    ChatResponse {
        content,
        tool_calls,
        finish_reason,
        usage: answer.usage.map(|u| TokenCounts {
            input: u.input_tokens.unwrap_or(0),
            output: u.output_tokens.unwrap_or(0),
        }),
        logprobs: None,
    }
}

impl Provider for AnthropicProvider {
    async fn chat(&self, req: &ChatRequest, call: &Call) -> Result<ChatResponse, ProviderError> {
        let request = self
            .request(reqwest::Method::POST, "/v1/messages")
            .json(&Self::body(req, false));
        let response = self.http.send(request, call, wire::error_message).await?;
        let answer: wire::MessagesResponse = self.http.json(response, call).await?;
        let json_answer = json_answer_tool(req.options.response_format.as_ref()).map(|(n, _)| n);
        Ok(chat_response(answer, json_answer.as_deref()))
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
        let decoder = EventDecoder::new(
            self.http.name.to_string(),
            self.http.redactor.clone(),
            json_answer_tool(req.options.response_format.as_ref()).map(|(n, _)| n),
        );
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
    /// The answer-format tool, whose input streams as the answer's text.
    json_answer: Option<String>,
    /// What each open content block is, by its index.
    blocks: std::collections::HashMap<u32, Block>,
    /// Tool calls started so far.
    calls: u32,
}

/// A content block of a stream.
#[derive(Debug, Clone, Copy)]
enum Block {
    Text,
    /// A tool call: its place among the answer's calls.
    Call(u32),
    /// The answer-format tool: its input is the answer's text.
    Answer,
}

impl EventDecoder {
    fn new(name: String, redactor: crate::secret::Redactor, json_answer: Option<String>) -> Self {
        Self {
            name,
            redactor,
            input: None,
            output: None,
            finish: None,
            json_answer,
            blocks: std::collections::HashMap::new(),
            calls: 0,
        }
    }

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
            wire::StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                let block = match content_block {
                    Some(b) if b.kind == "tool_use" => {
                        let name = b.name.unwrap_or_default();
                        if self.json_answer.as_deref() == Some(name.as_str()) {
                            Block::Answer
                        } else {
                            let at = self.calls;
                            self.calls += 1;
                            out.push_back(StreamEvent::ToolCall(ToolCallDelta {
                                index: at,
                                id: b.id,
                                name: Some(name),
                                arguments: String::new(),
                            }));
                            Block::Call(at)
                        }
                    }
                    _ => Block::Text,
                };
                self.blocks.insert(index, block);
            }
            wire::StreamEvent::ContentBlockDelta { index, delta } => {
                let block = self.blocks.get(&index).copied().unwrap_or(Block::Text);
                match (block, delta.text, delta.partial_json) {
                    (Block::Text, Some(text), _) if !text.is_empty() => {
                        out.push_back(StreamEvent::Delta(text));
                    }
                    (Block::Call(at), _, Some(json)) => {
                        out.push_back(StreamEvent::ToolCall(ToolCallDelta {
                            index: at,
                            id: None,
                            name: None,
                            arguments: json,
                        }));
                    }
                    (Block::Answer, _, Some(json)) if !json.is_empty() => {
                        out.push_back(StreamEvent::Delta(json));
                    }
                    _ => {}
                }
            }
            wire::StreamEvent::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.stop_reason {
                    self.finish = Some(if reason == "tool_use" && self.calls > 0 {
                        FinishReason::ToolCalls
                    } else {
                        finish(Some(&reason))
                    });
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
            wire::StreamEvent::ContentBlockStop {} | wire::StreamEvent::Ping {} => {}
        }
        Ok(())
    }

    fn end(&mut self, _: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// Golden translations, both ways: canonical requests as the Messages API
/// body Anthropic receives, its answers and streamed events as canonical ones.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{decode_all, golden_tool_loop};

    fn sse(event: &str, data: Value) -> SseEvent {
        SseEvent {
            event: Some(event.to_owned()),
            data: data.to_string(),
        }
    }

    #[test]
    fn a_tool_loop_becomes_alternating_turns_of_blocks() {
        let body =
            serde_json::to_value(AnthropicProvider::body(&golden_tool_loop(), true)).unwrap();
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        assert_eq!(
            body,
            json!({
                "model": "m1",
                "max_tokens": 50,
                "system": "be brief",
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "weather in Oslo?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}}]},
                    // The tool's result and the next question: one user turn.
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "rain"},
                        {"type": "text", "text": "and tomorrow?"}]}
                ],
                "temperature": 0.5,
                "stop_sequences": ["END"],
                "stream": true,
                "tools": [{"name": "weather", "description": "Weather of a city", "input_schema": schema}],
                "tool_choice": {"type": "auto"}
            })
        );
    }

    #[test]
    fn forced_tools_serial_calls_and_json_answers_use_anthropic_s_own_switches() {
        let mut req = golden_tool_loop();
        req.options.tool_choice = Some(ToolChoice::Function("weather".into()));
        req.options.parallel_tool_calls = Some(false);
        req.options.extra.insert("user".into(), json!("u-7"));
        let body = serde_json::to_value(AnthropicProvider::body(&req, false)).unwrap();
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": "weather", "disable_parallel_tool_use": true})
        );
        assert_eq!(body["metadata"], json!({"user_id": "u-7"}));
        assert_eq!(body.get("stream"), None, "false is left out");

        let mut req = golden_tool_loop();
        req.options.tools.clear();
        req.options.tool_choice = None;
        req.options.response_format = Some(ResponseFormat::JsonSchema {
            name: "forecast".into(),
            description: None,
            schema: json!({"type": "object"}),
            strict: Some(true),
        });
        let body = serde_json::to_value(AnthropicProvider::body(&req, false)).unwrap();
        assert_eq!(body["tools"][0]["name"], "forecast");
        assert_eq!(body["tools"][0]["input_schema"], json!({"type": "object"}));
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": "forecast"})
        );
    }

    #[test]
    fn answers_with_tool_use_blocks_become_canonical_tool_calls() {
        let answer: wire::MessagesResponse = serde_json::from_value(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 7}
        }))
        .unwrap();
        assert_eq!(
            chat_response(answer, None),
            ChatResponse {
                content: "Checking.".into(),
                tool_calls: vec![ToolCall {
                    id: "toolu_1".into(),
                    name: "weather".into(),
                    arguments: r#"{"city":"Oslo"}"#.into(),
                }],
                finish_reason: FinishReason::ToolCalls,
                usage: Some(TokenCounts {
                    input: 12,
                    output: 7
                }),
                logprobs: None,
            }
        );
        // The answer-format tool's input is the answer's text, not a call.
        let answer: wire::MessagesResponse = serde_json::from_value(json!({
            "content": [{"type": "tool_use", "id": "toolu_2", "name": "forecast", "input": {"rain": true}}],
            "stop_reason": "tool_use"
        }))
        .unwrap();
        let got = chat_response(answer, Some("forecast"));
        assert_eq!(
            (
                got.content.as_str(),
                got.tool_calls.len(),
                got.finish_reason
            ),
            (r#"{"rain":true}"#, 0, FinishReason::Stop)
        );
    }

    #[test]
    fn streamed_events_become_text_and_tool_call_deltas() {
        let events = [
            sse(
                "message_start",
                json!({"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [],
                "stop_reason": null, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
            ),
            sse(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            sse("ping", json!({"type": "ping"})),
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "Checking."}}),
            ),
            sse(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            sse(
                "content_block_start",
                json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}}),
            ),
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
            ),
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "\"Oslo\"}"}}),
            ),
            sse(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 1}),
            ),
            // A type this client does not know yet is skipped.
            sse(
                "thinking_summary",
                json!({"type": "thinking_summary", "text": "..."}),
            ),
            sse(
                "message_delta",
                json!({"type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"output_tokens": 7}}),
            ),
            sse("message_stop", json!({"type": "message_stop"})),
        ];
        let decoder = EventDecoder::new("claude".into(), Default::default(), None);
        let call = |id: Option<&str>, name: Option<&str>, arguments: &str| {
            StreamEvent::ToolCall(ToolCallDelta {
                index: 0,
                id: id.map(str::to_owned),
                name: name.map(str::to_owned),
                arguments: arguments.to_owned(),
            })
        };
        assert_eq!(
            decode_all(decoder, events),
            [
                StreamEvent::Delta("Checking.".into()),
                call(Some("toolu_1"), Some("weather"), ""),
                call(None, None, "{\"city\": "),
                call(None, None, "\"Oslo\"}"),
                StreamEvent::Done {
                    finish_reason: FinishReason::ToolCalls,
                    usage: Some(TokenCounts {
                        input: 12,
                        output: 7
                    }),
                },
            ]
        );

        // A JSON answer streams as the answer-format tool's input: text.
        let events = [
            sse(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": "toolu_2", "name": "forecast", "input": {}}}),
            ),
            sse(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": "{\"rain\": true}"}}),
            ),
            sse(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),
            ),
            sse("message_stop", json!({"type": "message_stop"})),
        ];
        let decoder =
            EventDecoder::new("claude".into(), Default::default(), Some("forecast".into()));
        assert_eq!(
            decode_all(decoder, events),
            [
                StreamEvent::Delta("{\"rain\": true}".into()),
                StreamEvent::Done {
                    finish_reason: FinishReason::Stop,
                    usage: None
                },
            ]
        );
    }
}
