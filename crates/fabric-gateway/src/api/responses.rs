//! OpenAI's Responses API (`POST /v1/responses`), stateless: the client
//! keeps the conversation and sends it whole in `input` (messages,
//! `function_call` items and their `function_call_output`s); the fabric
//! stores no responses, so `previous_response_id` and `store: true` are
//! refused with a 400 that says so. Text, function tools, JSON formats
//! (`text.format`) and streaming (the typed `response.*` events, numbered)
//! go through the gateway like a chat, to any provider.

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream;
use serde_json::{Map, Value, json};

use super::{Reply, SSE, parse_body, sse_frame};
use crate::error::GatewayError;
use crate::router::{CallOptions, Caller, Gateway};
use crate::types::{
    ChatOptions, ChatRequest, ChatResponse, Image, Message, Params, ResponseFormat, Role,
    StreamEvent, Tool, ToolCall, ToolChoice,
};
use crate::wire::openai::detail_of;

/// The request fields the gateway handles; others are refused by name.
const KNOWN: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "temperature",
    "top_p",
    "text",
    "stream",
    "store",
    "user",
    "metadata",
    "previous_response_id",
];

fn id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// The text of a message item's content: a string, or `input_text` /
/// `output_text` parts (images become the message's images).
fn content_of(content: &Value, at: &str) -> Result<(String, Vec<Image>), GatewayError> {
    match content {
        Value::String(s) => Ok((s.clone(), Vec::new())),
        Value::Array(parts) => {
            let mut text = String::new();
            let mut images = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default());
                    }
                    Some("input_image") => match part.get("image_url").and_then(Value::as_str) {
                        Some(url) => images.push(Image {
                            url: url.to_owned(),
                            detail: detail_of(part.get("detail"), &format!("{at}.content[{j}]"))?,
                        }),
                        None => {
                            return Err(GatewayError::invalid(format!(
                                "{at}.content[{j}]: an input_image needs an image_url (file ids are not supported)"
                            )));
                        }
                    },
                    kind => {
                        return Err(GatewayError::invalid(format!(
                            "{at}.content[{j}]: part type {} is not supported: send input_text, output_text or input_image",
                            kind.map_or_else(|| "(missing)".to_owned(), |k| format!("{k:?}"))
                        )));
                    }
                }
            }
            Ok((text, images))
        }
        _ => Err(GatewayError::invalid(format!(
            "{at}.content must be a string or an array of parts"
        ))),
    }
}

/// Canonical messages from `input`: a string, or items (messages,
/// `function_call`s, which join the assistant turn before them, and
/// `function_call_output`s).
fn messages_from(input: &Value) -> Result<Vec<Message>, GatewayError> {
    let items = match input {
        Value::String(s) => return Ok(vec![Message::new(Role::User, s.clone())]),
        Value::Array(items) => items,
        _ => {
            return Err(GatewayError::invalid(
                "input must be a string or an array of items",
            ));
        }
    };
    let mut out: Vec<Message> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        // Items an answer gave carry their `id` and `status` back.
        let known: &[&str] = match kind {
            "message" => &["type", "role", "content", "id", "status"],
            "function_call" => &["type", "call_id", "name", "arguments", "id", "status"],
            "function_call_output" => &["type", "call_id", "output", "id", "status"],
            _ => &[
                "type",
                "id",
                "summary",
                "content",
                "encrypted_content",
                "status",
            ],
        };
        super::refuse_unknown_keys(item, known, &at)?;
        match kind {
            "message" => {
                let role = match item.get("role").and_then(Value::as_str) {
                    Some("user") => Role::User,
                    Some("assistant") => Role::Assistant,
                    Some("system") => Role::System,
                    Some("developer") => Role::Developer,
                    other => {
                        return Err(GatewayError::invalid(format!(
                            "{at}.role must be user, assistant, system or developer (got {other:?})"
                        )));
                    }
                };
                let (content, images) =
                    content_of(item.get("content").unwrap_or(&Value::Null), &at)?;
                out.push(Message {
                    images,
                    ..Message::new(role, content)
                });
            }
            "function_call" => {
                let call = ToolCall {
                    id: item
                        .get("call_id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            GatewayError::invalid(format!(
                                "{at}: a function_call needs its call_id"
                            ))
                        })?
                        .to_owned(),
                    name: item
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    arguments: item
                        .get("arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}")
                        .to_owned(),
                };
                match out.last_mut() {
                    Some(last) if last.role == Role::Assistant => last.tool_calls.push(call),
                    _ => out.push(Message {
                        tool_calls: vec![call],
                        ..Message::new(Role::Assistant, "")
                    }),
                }
            }
            "function_call_output" => {
                let call_id = item.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                    GatewayError::invalid(format!(
                        "{at}: a function_call_output needs the call_id it answers"
                    ))
                })?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => content_of(other, &at)?.0,
                    None => String::new(),
                };
                out.push(Message {
                    tool_call_id: Some(call_id.to_owned()),
                    ..Message::new(Role::Tool, output)
                });
            }
            // Reasoning items of earlier answers carry nothing to route.
            "reasoning" => {}
            other => {
                return Err(GatewayError::invalid(format!(
                    "{at}: item type {other:?} is not supported: send message, function_call and function_call_output items"
                )));
            }
        }
    }
    Ok(out)
}

/// A function tool as the Responses API defines one.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionTool {
    #[serde(rename = "type")]
    _kind: String,
    name: String,
    description: Option<String>,
    parameters: Option<Map<String, Value>>,
    strict: Option<bool>,
}

/// The canonical request of a Responses request, and whether it streams.
pub fn chat_request(body: &Map<String, Value>) -> Result<(ChatRequest, bool), GatewayError> {
    super::refuse_unknown_fields(body, KNOWN, "the fabric's Responses API")?;
    if body
        .get("previous_response_id")
        .is_some_and(|v| !v.is_null())
    {
        return Err(GatewayError::invalid(
            "previous_response_id is not supported: the fabric stores no responses; send the whole conversation in input",
        ));
    }
    if super::field::<bool>(body, "store")? == Some(true) {
        return Err(GatewayError::invalid(
            "store: true is not supported: the fabric stores no responses; send store: false (or leave it out) and keep the conversation yourself",
        ));
    }
    let model = super::required_model(body)?;
    let mut messages = Vec::new();
    if let Some(instructions) = super::field::<String>(body, "instructions")? {
        messages.push(Message::new(Role::System, instructions));
    }
    messages.extend(messages_from(body.get("input").unwrap_or(&Value::Null))?);
    let tools = super::tools_from(
        body,
        |kind| {
            (kind != Some("function")).then_some(
                "only function tools are supported (OpenAI's hosted tools run at OpenAI)",
            )
        },
        |tool: FunctionTool| Tool {
            name: tool.name,
            description: tool.description,
            parameters: tool
                .parameters
                .map_or_else(|| json!({"type": "object"}), Value::Object),
            strict: tool.strict,
        },
    )?;
    let tool_choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(GatewayError::invalid(format!(
                    "tool_choice {other:?}: use auto, none, required or {{\"type\": \"function\", \"name\": ...}}"
                )));
            }
        }),
        Some(Value::Object(o)) => Some(ToolChoice::Function(
            o.get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    GatewayError::invalid("tool_choice: a function choice needs a name")
                })?
                .to_owned(),
        )),
        Some(_) => {
            return Err(GatewayError::invalid(
                "tool_choice must be a string or an object",
            ));
        }
    };
    let response_format = match body.get("text").and_then(|t| t.get("format")) {
        None | Some(Value::Null) => None,
        Some(format) => Some(match format.get("type").and_then(Value::as_str) {
            Some("text") => ResponseFormat::Text,
            Some("json_object") => ResponseFormat::JsonObject,
            Some("json_schema") => ResponseFormat::JsonSchema {
                name: format
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("answer")
                    .to_owned(),
                description: format
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                schema: format.get("schema").cloned().unwrap_or_else(|| json!({})),
                strict: format.get("strict").and_then(Value::as_bool),
            },
            _ => {
                return Err(GatewayError::invalid(
                    "text.format.type must be text, json_object or json_schema",
                ));
            }
        }),
    };
    let mut extra = Map::new();
    if let Some(user) = super::field::<String>(body, "user")? {
        extra.insert("user".to_owned(), json!(user));
    }
    if let Some(metadata) = super::field::<Map<String, Value>>(body, "metadata")? {
        extra.insert("metadata".to_owned(), Value::Object(metadata));
    }
    let number = |name: &str| super::field::<f64>(body, name);
    let stream = super::field::<bool>(body, "stream")? == Some(true);
    let max_tokens = super::field::<u32>(body, "max_output_tokens")?;
    if max_tokens == Some(0) {
        return Err(GatewayError::invalid(
            "max_output_tokens must be at least 1",
        ));
    }
    Ok((
        ChatRequest {
            model,
            messages,
            params: Params {
                temperature: number("temperature")?,
                top_p: number("top_p")?,
                max_tokens,
                stop: Vec::new(),
                seed: None,
            },
            options: ChatOptions {
                tools,
                tool_choice,
                parallel_tool_calls: super::field::<bool>(body, "parallel_tool_calls")?,
                response_format,
                extra,
                ..ChatOptions::default()
            },
        },
        stream,
    ))
}

/// The output items of an answer: its text as a message, then its calls.
fn output_items(answer: &ChatResponse, message_id: &str) -> Vec<Value> {
    let mut items = Vec::new();
    if !answer.content.is_empty() || answer.tool_calls.is_empty() {
        items.push(message_item(message_id, &answer.content, "completed"));
    }
    items.extend(answer.tool_calls.iter().map(|c| call_item(c, "completed")));
    items
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

fn call_item(call: &ToolCall, status: &str) -> Value {
    json!({"type": "function_call", "id": format!("fc_{}", call.id), "call_id": call.id,
           "name": call.name, "arguments": call.arguments, "status": status})
}

/// The response object (`status` completed or in progress).
fn response(
    id: &str,
    created: i64,
    model: &str,
    status: &str,
    output: Vec<Value>,
    usage: Option<(u64, u64)>,
) -> Value {
    json!({
        "id": id, "object": "response", "created_at": created, "status": status, "model": model,
        "output": output, "error": null, "incomplete_details": null, "instructions": null,
        "metadata": {}, "parallel_tool_calls": true, "temperature": null, "top_p": null,
        "tool_choice": "auto", "tools": [],
        "usage": usage.map(|(i, o)| json!({
            "input_tokens": i, "output_tokens": o, "total_tokens": i + o,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}})),
    })
}

/// `POST /v1/responses`.
pub async fn responses(
    gateway: &Gateway,
    caller: &Caller,
    opts: CallOptions,
    body: &[u8],
) -> Reply {
    let parsed = parse_body::<Map<String, Value>>(body).and_then(|raw| chat_request(&raw));
    let (req, stream) = match parsed {
        Ok(p) => p,
        Err(e) => return Reply::error(&e, &caller.request_id),
    };
    let model = req.model.clone();
    let response_id = id("resp");
    let message_id = id("msg");
    let created = crate::wire::unix_seconds();
    if !stream {
        return match gateway.chat(caller, &opts, req).await {
            Ok(answer) => {
                let value = response(
                    &response_id,
                    created,
                    &model,
                    "completed",
                    output_items(&answer.value, &message_id),
                    Some((answer.usage.input_tokens, answer.usage.output_tokens)),
                );
                Reply::json(200, &value).with_provider(answer.provider, answer.model)
            }
            Err(e) => Reply::error(&e, &caller.request_id),
        };
    }
    match gateway.chat_stream(caller, &opts, req).await {
        Ok(answer) => {
            let mut writer = EventWriter::new(response_id, message_id, model, created);
            let head = writer.head();
            let request_id = caller.request_id.clone();
            let events = answer.value.map(move |item| match item {
                Ok(event) => writer.event(event),
                Err(e) => writer.frame(
                    "error",
                    json!({"code": e.code(), "message": format!("{e} (request id {request_id})"), "param": null}),
                ),
            });
            Reply::streaming(
                SSE,
                answer.provider,
                answer.model,
                stream::once(async move { head }).chain(events).boxed(),
            )
        }
        Err(e) => Reply::error(&e, &caller.request_id),
    }
}

/// What is open in a streamed response.
enum Open {
    Nothing,
    /// The text message at this output index.
    Text(u32),
    /// A function call: output index, its call index in the answer.
    Call(u32, u32),
}

/// Writes a stream's `response.*` events, numbered, opening and closing
/// output items as their content comes.
struct EventWriter {
    response_id: String,
    message_id: String,
    model: String,
    created: i64,
    sequence: u64,
    open: Open,
    next_output: u32,
    text: String,
    /// Calls so far (arguments accumulated), by call index.
    calls: Vec<ToolCall>,
    /// Finished output items, for the final response.
    done: Vec<Value>,
}

impl EventWriter {
    fn new(response_id: String, message_id: String, model: String, created: i64) -> Self {
        Self {
            response_id,
            message_id,
            model,
            created,
            sequence: 0,
            open: Open::Nothing,
            next_output: 0,
            text: String::new(),
            calls: Vec::new(),
            done: Vec::new(),
        }
    }

    fn frame(&mut self, kind: &str, mut data: Value) -> Bytes {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        sse_frame(Some(kind), &data)
    }

    fn head(&mut self) -> Bytes {
        let r = response(
            &self.response_id,
            self.created,
            &self.model,
            "in_progress",
            Vec::new(),
            None,
        );
        let mut out = self
            .frame("response.created", json!({"response": r}))
            .to_vec();
        out.extend_from_slice(&self.frame("response.in_progress", json!({"response": r})));
        Bytes::from(out)
    }

    /// Closes what is open.
    fn close(&mut self, out: &mut Vec<u8>) {
        match std::mem::replace(&mut self.open, Open::Nothing) {
            Open::Nothing => {}
            Open::Text(index) => {
                let text = std::mem::take(&mut self.text);
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                let data = json!({"item_id": self.message_id, "output_index": index, "content_index": 0, "text": text});
                out.extend_from_slice(&self.frame("response.output_text.done", data));
                let data = json!({"item_id": self.message_id, "output_index": index, "content_index": 0, "part": part});
                out.extend_from_slice(&self.frame("response.content_part.done", data));
                let item = message_item(&self.message_id, &text, "completed");
                self.done.push(item.clone());
                out.extend_from_slice(&self.frame(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                ));
            }
            Open::Call(index, call) => {
                let Some(c) = self.calls.get(call as usize).cloned() else {
                    return;
                };
                let data = json!({"item_id": format!("fc_{}", c.id), "output_index": index, "arguments": c.arguments});
                out.extend_from_slice(&self.frame("response.function_call_arguments.done", data));
                let item = call_item(&c, "completed");
                self.done.push(item.clone());
                out.extend_from_slice(&self.frame(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                ));
            }
        }
    }

    fn event(&mut self, event: StreamEvent) -> Bytes {
        let mut out = Vec::new();
        match event {
            StreamEvent::Delta(text) => {
                let index = match self.open {
                    Open::Text(index) => index,
                    _ => {
                        self.close(&mut out);
                        let index = self.next_output;
                        self.next_output += 1;
                        let item = json!({"type": "message", "id": self.message_id, "status": "in_progress", "role": "assistant", "content": []});
                        out.extend_from_slice(&self.frame(
                            "response.output_item.added",
                            json!({"output_index": index, "item": item}),
                        ));
                        let data = json!({"item_id": self.message_id, "output_index": index, "content_index": 0,
                                          "part": {"type": "output_text", "text": "", "annotations": []}});
                        out.extend_from_slice(&self.frame("response.content_part.added", data));
                        self.open = Open::Text(index);
                        index
                    }
                };
                self.text.push_str(&text);
                let data = json!({"item_id": self.message_id, "output_index": index, "content_index": 0,
                                  "delta": text, "logprobs": []});
                out.extend_from_slice(&self.frame("response.output_text.delta", data));
            }
            StreamEvent::ToolCall(delta) => {
                let index = match self.open {
                    Open::Call(index, call) if call == delta.index => index,
                    _ => {
                        self.close(&mut out);
                        let at = delta.index as usize;
                        if at >= self.calls.len() && at < 1024 {
                            self.calls.resize_with(at + 1, ToolCall::default);
                        }
                        if let Some(c) = self.calls.get_mut(at) {
                            c.id = delta.id.clone().unwrap_or_else(|| id("call"));
                            c.name = delta.name.clone().unwrap_or_default();
                        }
                        let index = self.next_output;
                        self.next_output += 1;
                        let item = self
                            .calls
                            .get(at)
                            .map(|c| call_item(c, "in_progress"))
                            .unwrap_or(Value::Null);
                        out.extend_from_slice(&self.frame(
                            "response.output_item.added",
                            json!({"output_index": index, "item": item}),
                        ));
                        self.open = Open::Call(index, delta.index);
                        index
                    }
                };
                if let Some(c) = self.calls.get_mut(delta.index as usize) {
                    c.arguments.push_str(&delta.arguments);
                    let item_id = format!("fc_{}", c.id);
                    if !delta.arguments.is_empty() {
                        let data = json!({"item_id": item_id, "output_index": index, "delta": delta.arguments});
                        out.extend_from_slice(
                            &self.frame("response.function_call_arguments.delta", data),
                        );
                    }
                }
            }
            StreamEvent::Logprobs(_) => {}
            StreamEvent::Done { usage, .. } => {
                self.close(&mut out);
                let usage = usage.unwrap_or_default();
                let r = response(
                    &self.response_id,
                    self.created,
                    &self.model,
                    "completed",
                    std::mem::take(&mut self.done),
                    Some((usage.input, usage.output)),
                );
                out.extend_from_slice(&self.frame("response.completed", json!({"response": r})));
            }
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_items_become_a_tool_loop_and_stored_state_is_refused() {
        let body: Map<String, Value> = serde_json::from_value(json!({
            "model": "m", "instructions": "be brief",
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "weather in Oslo?"}]},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{\"city\":\"Oslo\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "rain"}
            ],
            "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}}}
        }))
        .unwrap();
        let (req, stream) = chat_request(&body).unwrap();
        assert!(!stream);
        assert_eq!(req.messages[0], Message::new(Role::System, "be brief"));
        assert_eq!(req.messages[2].tool_calls[0].id, "c1");
        assert_eq!(req.messages[3].tool_call_id.as_deref(), Some("c1"));
        assert!(matches!(
            req.options.response_format,
            Some(ResponseFormat::JsonSchema { .. })
        ));
        for (field, value) in [
            ("previous_response_id", json!("resp_1")),
            ("store", json!(true)),
            ("reasoning", json!({"effort": "low"})),
        ] {
            let mut bad = body.clone();
            bad.insert(field.into(), value);
            let err = chat_request(&bad).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
