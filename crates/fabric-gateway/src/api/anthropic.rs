//! The Anthropic-compatible front end: `POST /v1/messages`, so the
//! `anthropic` SDK and tools built on it run through the fabric. Messages
//! of text, image, `tool_use` and `tool_result` blocks, a system prompt,
//! tools and `tool_choice` become the canonical request; the answer is
//! Anthropic's message (text and `tool_use` blocks, `stop_reason`, usage),
//! or its typed SSE events when streamed. Errors have Anthropic's shape
//! (`{"type": "error", "error": {"type", "message"}}`), in-band as an
//! `error` event once a stream has started.

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream;
use serde_json::{Map, Value, json};

use super::{Reply, SSE, parse_body, sse_frame};
use crate::error::GatewayError;
use crate::router::{CallOptions, Caller, Gateway};
use crate::types::{
    ChatOptions, ChatRequest, ChatResponse, FinishReason, Message, Params, Role, StreamEvent, Tool,
    ToolCall, ToolChoice,
};

fn message_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

/// Anthropic's error type for a status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error in Anthropic's shape, with the fabric's status and headers.
pub fn error(err: &GatewayError, request_id: &str) -> Reply {
    let mut reply = Reply::error(err, request_id);
    reply.body = super::ReplyBody::Full(Bytes::from(error_value(err, request_id).to_string()));
    reply
}

/// Anthropic's error body; its `error` also carries the fabric's `code`
/// and `request_id`, so it reads as the fabric's uniform error too.
fn error_value(err: &GatewayError, request_id: &str) -> Value {
    json!({"type": "error", "error": {
        "type": error_type(err.status()),
        "message": format!("{err} (request id {request_id})"),
        "code": err.code(),
        "request_id": request_id,
    }, "request_id": request_id})
}

/// Text of a `system` field: a string or text blocks.
fn system_text(system: &Value) -> Result<String, GatewayError> {
    match system {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| {
                b.get("text")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| GatewayError::invalid("system blocks must be text blocks"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.join("\n\n")),
        _ => Err(GatewayError::invalid(
            "system must be a string or an array of text blocks",
        )),
    }
}

/// A `tool_result` block's content: a string or text blocks.
fn result_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Canonical messages from Anthropic's: a user turn's `tool_result` blocks
/// become `tool` messages (in order, before its other content).
fn messages_from(messages: &[Value]) -> Result<Vec<Message>, GatewayError> {
    let mut out = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        super::refuse_unknown_keys(m, &["role", "content"], &format!("messages[{i}]"))?;
        let role = match m.get("role").and_then(Value::as_str) {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            other => {
                return Err(GatewayError::invalid(format!(
                    "messages[{i}].role must be user or assistant (got {})",
                    other.map_or_else(|| "nothing".to_owned(), |r| format!("{r:?}"))
                )));
            }
        };
        let blocks = match m.get("content") {
            Some(Value::String(text)) => {
                out.push(Message::new(role, text.clone()));
                continue;
            }
            Some(Value::Array(blocks)) => blocks,
            _ => {
                return Err(GatewayError::invalid(format!(
                    "messages[{i}].content must be a string or an array of content blocks"
                )));
            }
        };
        let mut message = Message::new(role, "");
        for (j, block) in blocks.iter().enumerate() {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    message.content.push_str(
                        block
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                    );
                }
                Some("image") => {
                    let source = block.get("source").unwrap_or(&Value::Null);
                    let url = match source.get("type").and_then(Value::as_str) {
                        Some("base64") => format!(
                            "data:{};base64,{}",
                            source
                                .get("media_type")
                                .and_then(Value::as_str)
                                .unwrap_or("image/png"),
                            source
                                .get("data")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                        ),
                        Some("url") => source
                            .get("url")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        _ => {
                            return Err(GatewayError::invalid(format!(
                                "messages[{i}].content[{j}]: an image source must be base64 or url"
                            )));
                        }
                    };
                    message.images.push(url.into());
                }
                Some("tool_use") if role == Role::Assistant => {
                    message.tool_calls.push(ToolCall {
                        id: block
                            .get("id")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        name: block
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        arguments: block
                            .get("input")
                            .cloned()
                            .unwrap_or_else(|| json!({}))
                            .to_string(),
                    });
                }
                Some("tool_result") if role == Role::User => {
                    let id = block
                        .get("tool_use_id")
                        .and_then(Value::as_str)
                        .filter(|id| !id.is_empty())
                        .ok_or_else(|| {
                            GatewayError::invalid(format!(
                                "messages[{i}].content[{j}]: a tool_result needs the tool_use_id it answers"
                            ))
                        })?;
                    let mut text = result_text(block.get("content"));
                    if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                        text = format!("error: {text}");
                    }
                    out.push(Message {
                        tool_call_id: Some(id.to_owned()),
                        ..Message::new(Role::Tool, text)
                    });
                }
                kind => {
                    return Err(GatewayError::invalid(format!(
                        "messages[{i}].content[{j}]: block type {} is not supported here: send text, image, tool_use (assistant) and tool_result (user) blocks",
                        kind.map_or_else(|| "(missing)".to_owned(), |k| format!("{k:?}"))
                    )));
                }
            }
        }
        let empty = message.content.is_empty()
            && message.images.is_empty()
            && message.tool_calls.is_empty();
        if !empty {
            out.push(message);
        }
    }
    Ok(out)
}

/// The fields of a Messages request the gateway handles; anything else is
/// refused by name rather than dropped.
const KNOWN: &[&str] = &[
    "model",
    "max_tokens",
    "messages",
    "system",
    "temperature",
    "top_p",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
];

/// A tool as the Messages API defines one. `cache_control` (a prompt
/// caching hint) is accepted and not passed on: the fabric routes to
/// providers that may not cache.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomTool {
    #[serde(rename = "type")]
    _kind: Option<String>,
    name: String,
    description: Option<String>,
    input_schema: Option<Map<String, Value>>,
    #[serde(rename = "cache_control")]
    _cache_control: Option<Value>,
}

/// `metadata`: who the call is for.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    user_id: Option<String>,
}

/// The canonical request of a Messages request.
pub fn chat_request(body: &Map<String, Value>) -> Result<(ChatRequest, bool), GatewayError> {
    super::refuse_unknown_fields(body, KNOWN, "the fabric's Messages API")?;
    let model = super::required_model(body)?;
    let max_tokens = super::field::<u32>(body, "max_tokens")?
        .filter(|n| *n > 0)
        .ok_or_else(|| GatewayError::invalid("max_tokens is required: a positive integer"))?;
    let mut messages = Vec::new();
    let system = system_text(body.get("system").unwrap_or(&Value::Null))?;
    if !system.is_empty() {
        messages.push(Message::new(Role::System, system));
    }
    let raw = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| GatewayError::invalid("messages must be an array"))?;
    messages.extend(messages_from(raw)?);
    let stop = match body.get("stop_sequences") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| GatewayError::invalid("stop_sequences must be an array of strings"))?,
    };
    let tools = super::tools_from(
        body,
        |kind| {
            kind.is_some_and(|k| k != "custom")
                .then_some("Anthropic's server tools are not supported: define a tool with name, description and input_schema")
        },
        |tool: CustomTool| Tool {
            name: tool.name,
            description: tool.description,
            parameters: tool
                .input_schema
                .map_or_else(|| json!({"type": "object"}), Value::Object),
            strict: None,
        },
    )?;
    let (tool_choice, parallel) = match body.get("tool_choice") {
        None | Some(Value::Null) => (None, None),
        Some(choice) => {
            let parallel = choice
                .get("disable_parallel_tool_use")
                .and_then(Value::as_bool)
                .map(|disable| !disable);
            let kind = match choice.get("type").and_then(Value::as_str) {
                Some("auto") => ToolChoice::Auto,
                Some("any") => ToolChoice::Required,
                Some("none") => ToolChoice::None,
                Some("tool") => ToolChoice::Function(
                    choice
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            GatewayError::invalid("tool_choice of type tool needs a name")
                        })?
                        .to_owned(),
                ),
                _ => {
                    return Err(GatewayError::invalid(
                        "tool_choice.type must be auto, any, tool or none",
                    ));
                }
            };
            (Some(kind), parallel)
        }
    };
    let mut extra = Map::new();
    if let Some(user) = super::field::<Metadata>(body, "metadata")?.and_then(|m| m.user_id) {
        extra.insert("user".to_owned(), json!(user));
    }
    let stream = super::field::<bool>(body, "stream")? == Some(true);
    let number = |name: &str| super::field::<f64>(body, name);
    Ok((
        ChatRequest {
            model,
            messages,
            params: Params {
                temperature: number("temperature")?,
                top_p: number("top_p")?,
                max_tokens: Some(max_tokens),
                stop,
                seed: None,
            },
            options: ChatOptions {
                tools,
                tool_choice,
                parallel_tool_calls: parallel,
                extra,
                ..ChatOptions::default()
            },
        },
        stream,
    ))
}

/// Anthropic's `stop_reason`.
fn stop_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
        FinishReason::Stop => "end_turn",
    }
}

/// A tool call's input: its arguments as JSON (text that is not JSON stays a string).
fn input_of(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
}

fn message(model: &str, answer: &ChatResponse, input: u64, output: u64) -> Value {
    let mut content: Vec<Value> = Vec::new();
    if !answer.content.is_empty() || answer.tool_calls.is_empty() {
        content.push(json!({"type": "text", "text": answer.content}));
    }
    content.extend(answer.tool_calls.iter().map(|c| {
        json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input_of(&c.arguments)})
    }));
    json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(answer.finish_reason),
        "stop_sequence": null,
        "usage": {"input_tokens": input, "output_tokens": output},
    })
}

/// A canonical stream as the Messages API's events after `message_start`:
/// content blocks opened as their content comes (text first if any, then one
/// per tool call), each closed before the next opens, then `message_delta`
/// and `message_stop`.
struct BlockWriter {
    request_id: String,
    /// The open block: its index and, for a tool call, the call's index.
    open: Option<(u32, Option<u32>)>,
    next_block: u32,
}

impl BlockWriter {
    fn new(request_id: String) -> Self {
        Self {
            request_id,
            open: None,
            next_block: 0,
        }
    }

    /// The SSE frames one stream item becomes (none for logprobs).
    fn write(&mut self, item: Result<StreamEvent, GatewayError>) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        match item {
            Ok(StreamEvent::Delta(text)) => {
                if !matches!(self.open, Some((_, None))) {
                    self.open_block(&mut out, None, json!({"type": "text", "text": ""}));
                }
                self.delta(&mut out, json!({"type": "text_delta", "text": text}));
            }
            Ok(StreamEvent::ToolCall(delta)) => {
                if self.open.and_then(|(_, call)| call) != Some(delta.index) {
                    let block = json!({"type": "tool_use",
                        "id": delta.id.clone().unwrap_or_default(),
                        "name": delta.name.clone().unwrap_or_default(),
                        "input": {}});
                    self.open_block(&mut out, Some(delta.index), block);
                }
                if !delta.arguments.is_empty() {
                    self.delta(
                        &mut out,
                        json!({"type": "input_json_delta", "partial_json": delta.arguments}),
                    );
                }
            }
            Ok(StreamEvent::Logprobs(_)) => {}
            Ok(StreamEvent::Done {
                finish_reason,
                usage,
            }) => {
                self.close(&mut out);
                let usage = usage.unwrap_or_default();
                out.extend_from_slice(&sse_frame(
                    Some("message_delta"),
                    &json!({"type": "message_delta",
                            "delta": {"stop_reason": stop_reason(finish_reason), "stop_sequence": null},
                            "usage": {"input_tokens": usage.input, "output_tokens": usage.output}}),
                ));
                out.extend_from_slice(&sse_frame(
                    Some("message_stop"),
                    &json!({"type": "message_stop"}),
                ));
            }
            Err(e) => {
                out.extend_from_slice(&sse_frame(
                    Some("error"),
                    &error_value(&e, &self.request_id),
                ));
            }
        }
        out
    }

    fn open_block(&mut self, out: &mut Vec<u8>, call: Option<u32>, block: Value) {
        self.close(out);
        out.extend_from_slice(&sse_frame(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": self.next_block, "content_block": block}),
        ));
        self.open = Some((self.next_block, call));
        self.next_block += 1;
    }

    fn delta(&self, out: &mut Vec<u8>, delta: Value) {
        let index = self.open.map_or(0, |(i, _)| i);
        out.extend_from_slice(&sse_frame(
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            out.extend_from_slice(&sse_frame(
                Some("content_block_stop"),
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }
}

/// `POST /v1/messages`.
pub async fn messages(gateway: &Gateway, caller: &Caller, opts: CallOptions, body: &[u8]) -> Reply {
    let parsed = parse_body::<Map<String, Value>>(body).and_then(|raw| chat_request(&raw));
    let (req, stream) = match parsed {
        Ok(p) => p,
        Err(e) => return error(&e, &caller.request_id),
    };
    let requested = req.model.clone();
    if !stream {
        return match gateway.chat(caller, &opts, req).await {
            Ok(answer) => {
                let value = message(
                    &requested,
                    &answer.value,
                    answer.usage.input_tokens,
                    answer.usage.output_tokens,
                );
                Reply::json(200, &value).with_provider(answer.provider, answer.model)
            }
            Err(e) => error(&e, &caller.request_id),
        };
    }
    match gateway.chat_stream(caller, &opts, req).await {
        Ok(answer) => {
            let request_id = caller.request_id.clone();
            let start = sse_frame(
                Some("message_start"),
                &json!({"type": "message_start", "message": {
                    "id": message_id(), "type": "message", "role": "assistant", "model": requested,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            );
            let mut writer = BlockWriter::new(request_id);
            let events = answer
                .value
                .map(move |item| Bytes::from(writer.write(item)));
            Reply::streaming(
                SSE,
                answer.provider,
                answer.model,
                stream::once(async move { start }).chain(events).boxed(),
            )
        }
        Err(e) => error(&e, &caller.request_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_loop_in_anthropic_blocks_becomes_canonical_messages() {
        let body: Map<String, Value> = serde_json::from_value(json!({
            "model": "claude", "max_tokens": 100, "system": [{"type": "text", "text": "be brief"}],
            "metadata": {"user_id": "u1"},
            "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "weather in Oslo?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"}]}
            ]
        }))
        .unwrap();
        let (req, stream) = chat_request(&body).unwrap();
        assert!(!stream);
        assert_eq!(req.messages[0], Message::new(Role::System, "be brief"));
        assert_eq!(
            req.messages[2].tool_calls[0].arguments,
            r#"{"city":"Oslo"}"#
        );
        assert_eq!(req.messages[3].role, Role::Tool);
        assert_eq!(req.messages[3].tool_call_id.as_deref(), Some("toolu_1"));
        assert_eq!(req.options.tool_choice, Some(ToolChoice::Required));
        assert_eq!(req.options.parallel_tool_calls, Some(false));
        assert_eq!(req.options.extra.get("user"), Some(&json!("u1")));
        assert_eq!(req.params.max_tokens, Some(100));

        let mut unknown = body.clone();
        unknown.insert("thinking".into(), json!({"type": "enabled"}));
        let err = chat_request(&unknown).unwrap_err().to_string();
        assert!(err.contains("thinking is not supported"), "{err}");
        let mut no_max = body;
        no_max.remove("max_tokens");
        assert!(chat_request(&no_max).is_err());
    }

    /// The frames a writer prints for `items`, as (event, data) pairs.
    fn frames(items: Vec<Result<StreamEvent, GatewayError>>) -> Vec<(String, Value)> {
        let mut writer = BlockWriter::new("req-1".into());
        let text: String = items
            .into_iter()
            .map(|i| String::from_utf8(writer.write(i)).unwrap())
            .collect();
        text.split("\n\n")
            .filter(|f| !f.is_empty())
            .map(|frame| {
                let (event, data) = frame.split_once('\n').unwrap();
                (
                    event.strip_prefix("event: ").unwrap().to_owned(),
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_canonical_stream_becomes_content_blocks_opened_and_closed_in_order() {
        let call = |index: u32, id: Option<&str>, arguments: &str| {
            Ok(StreamEvent::ToolCall(crate::types::ToolCallDelta {
                index,
                id: id.map(str::to_owned),
                name: id.map(|_| format!("tool{index}")),
                arguments: arguments.to_owned(),
            }))
        };
        let got = frames(vec![
            Ok(StreamEvent::Delta("Checking".into())),
            Ok(StreamEvent::Delta(".".into())),
            call(0, Some("call_a"), ""),
            call(0, None, "{\"city\":"),
            call(0, None, "\"Oslo\"}"),
            call(1, Some("call_b"), "{}"),
            Ok(StreamEvent::Logprobs(json!({"content": []}))),
            Ok(StreamEvent::Done {
                finish_reason: FinishReason::ToolCalls,
                usage: Some(crate::types::TokenCounts {
                    input: 12,
                    output: 7,
                }),
            }),
        ]);
        let delta = |index: u32, delta: Value| {
            (
                "content_block_delta".to_owned(),
                json!({"type": "content_block_delta", "index": index, "delta": delta}),
            )
        };
        let start = |index: u32, block: Value| {
            (
                "content_block_start".to_owned(),
                json!({"type": "content_block_start", "index": index, "content_block": block}),
            )
        };
        let stop = |index: u32| {
            (
                "content_block_stop".to_owned(),
                json!({"type": "content_block_stop", "index": index}),
            )
        };
        let json_delta =
            |partial: &str| json!({"type": "input_json_delta", "partial_json": partial});
        assert_eq!(
            got,
            vec![
                start(0, json!({"type": "text", "text": ""})),
                delta(0, json!({"type": "text_delta", "text": "Checking"})),
                delta(0, json!({"type": "text_delta", "text": "."})),
                stop(0),
                start(
                    1,
                    json!({"type": "tool_use", "id": "call_a", "name": "tool0", "input": {}})
                ),
                delta(1, json_delta("{\"city\":")),
                delta(1, json_delta("\"Oslo\"}")),
                stop(1),
                start(
                    2,
                    json!({"type": "tool_use", "id": "call_b", "name": "tool1", "input": {}})
                ),
                delta(2, json_delta("{}")),
                stop(2),
                (
                    "message_delta".to_owned(),
                    json!({"type": "message_delta",
                           "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                           "usage": {"input_tokens": 12, "output_tokens": 7}})
                ),
                ("message_stop".to_owned(), json!({"type": "message_stop"})),
            ]
        );

        // A failure mid-stream is an Anthropic error event.
        let got = frames(vec![
            Ok(StreamEvent::Delta("par".into())),
            Err(GatewayError::Upstream {
                provider: "local".into(),
                message: "connection reset".into(),
                correlation_id: None,
            }),
        ]);
        assert_eq!(got[2].0, "error");
        assert_eq!(got[2].1["type"], "error");
        assert_eq!(got[2].1["request_id"], "req-1");
    }

    #[test]
    fn a_canonical_answer_becomes_a_message_of_blocks() {
        let answer = ChatResponse {
            content: "Checking.".into(),
            tool_calls: vec![crate::types::ToolCall {
                id: "call_a".into(),
                name: "weather".into(),
                arguments: r#"{"city":"Oslo"}"#.into(),
            }],
            finish_reason: FinishReason::ToolCalls,
            usage: None,
            logprobs: None,
        };
        let mut got = message("claude", &answer, 12, 7);
        assert!(got["id"].as_str().unwrap().starts_with("msg_"));
        got.as_object_mut().unwrap().remove("id");
        assert_eq!(
            got,
            json!({"type": "message", "role": "assistant", "model": "claude",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_a", "name": "weather", "input": {"city": "Oslo"}}],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 12, "output_tokens": 7}})
        );
    }
}
