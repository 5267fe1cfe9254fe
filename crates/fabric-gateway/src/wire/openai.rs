//! OpenAI's API (`/v1/chat/completions`, `/v1/embeddings`, `/v1/models`):
//! what the gateway serves and what its OpenAI client sends and reads.
//!
//! Polymorphic fields (`content`, `stop`, `input`) stay `serde_json::Value`
//! and are interpreted by hand, so a malformed request gets an error naming
//! the field instead of serde's "did not match any variant".

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::GatewayError;
use crate::types::{Image, Message, ResponseFormat, Role, Tool, ToolChoice};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatCompletionRequest {
    /// A model name the providers know (mapped per provider by the gateway's config).
    #[cfg_attr(feature = "openapi", schema(pattern = "\\S"))]
    pub model: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<super::docs::ChatMessageDoc>, min_items = 1))]
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 2.0))]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// A string or an array of strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<schema::StopSequences>))]
    pub stop: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Choices to generate: one (more are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(maximum = 1))]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = -2.0, maximum = 2.0))]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = -2.0, maximum = 2.0))]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(maximum = 20))]
    pub top_logprobs: Option<u32>,
    /// Functions the model may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ToolDefinition>>,
    /// `auto`, `none`, `required`, or `{"type": "function", "function": {"name"}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<super::docs::ToolChoiceDoc>))]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// `{"type": "text" | "json_object"}` or `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<super::docs::ResponseFormatDoc>))]
    pub response_format: Option<Value>,
    /// The deprecated function-calling fields: refused in favour of `tools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub functions: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub function_call: Option<Value>,
    /// Every other field (`user`, `metadata`, `reasoning_effort`,
    /// `logit_bias`, ...): forwarded as is to OpenAI-compatible providers.
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `{"type": "function", "function": {...}}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ToolDefinition {
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^function$"))]
    pub kind: String,
    pub function: FunctionDefinition,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FunctionDefinition {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A tool call in an assistant message or an answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".to_owned()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FunctionCall {
    pub name: String,
    /// JSON text.
    #[serde(default)]
    pub arguments: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatMessage {
    #[cfg_attr(feature = "openapi", schema(value_type = schema::ChatRole))]
    pub role: String,
    /// A string, or an array of text and image parts.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<schema::MessageContent>))]
    pub content: Value,
    /// The assistant's tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// Role `tool`: the call this message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Fields of an answer sent back as history (`refusal`, `annotations`,
    /// ...): null or empty ones are ignored, others refused.
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    /// The OpenAI form of a canonical message.
    pub fn from_message(m: &Message) -> Self {
        let content = if m.images.is_empty() {
            if m.content.is_empty() && !m.tool_calls.is_empty() {
                Value::Null
            } else {
                Value::String(m.content.clone())
            }
        } else {
            let mut parts = Vec::new();
            if !m.content.is_empty() {
                parts.push(json!({"type": "text", "text": m.content}));
            }
            parts.extend(m.images.iter().map(|image| {
                let mut part = json!({"type": "image_url", "image_url": {"url": image.url}});
                if let Some(detail) = &image.detail {
                    part["image_url"]["detail"] = json!(detail);
                }
                part
            }));
            Value::Array(parts)
        };
        Self {
            role: m.role.as_str().to_owned(),
            content,
            tool_calls: (!m.tool_calls.is_empty())
                .then(|| m.tool_calls.iter().map(ToolCall::from_call).collect()),
            tool_call_id: m.tool_call_id.clone(),
            name: m.name.clone(),
            extra: Map::new(),
        }
    }
}

impl ToolCall {
    pub fn from_call(c: &crate::types::ToolCall) -> Self {
        Self {
            id: c.id.clone(),
            kind: function_type(),
            function: FunctionCall {
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            },
        }
    }

    pub fn to_call(&self) -> crate::types::ToolCall {
        crate::types::ToolCall {
            id: self.id.clone(),
            name: self.function.name.clone(),
            arguments: self.function.arguments.clone(),
        }
    }
}

/// `system`/`developer`, `user`, `assistant`, `tool`.
pub fn parse_role(role: &str, index: usize) -> Result<Role, GatewayError> {
    match role {
        "system" => Ok(Role::System),
        "developer" => Ok(Role::Developer),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "tool" => Ok(Role::Tool),
        "function" => Err(GatewayError::invalid(format!(
            "messages[{index}]: role \"function\" is the deprecated function-calling API: send tool results as role \"tool\" with tool_call_id"
        ))),
        other => Err(GatewayError::invalid(format!(
            "messages[{index}]: unknown role {other:?}: use system, user, assistant or tool"
        ))),
    }
}

/// A message's text and images: a string, or an array of `text` and
/// `image_url` parts (texts joined, images in order).
pub fn content_parts(content: &Value, index: usize) -> Result<(String, Vec<Image>), GatewayError> {
    match content {
        Value::String(s) => Ok((s.clone(), Vec::new())),
        Value::Null => Ok((String::new(), Vec::new())),
        Value::Array(parts) => {
            let mut text = String::new();
            let mut images = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text") {
                        Some(Value::String(t)) => text.push_str(t),
                        _ => {
                            return Err(GatewayError::invalid(format!(
                                "messages[{index}].content[{j}].text must be a string"
                            )));
                        }
                    },
                    Some("image_url") => {
                        let at = format!("messages[{index}].content[{j}].image_url");
                        images.push(image_of(part.get("image_url"), &at)?);
                    }
                    kind => {
                        return Err(GatewayError::invalid(format!(
                            "messages[{index}].content[{j}]: part type {} is not supported: send text and image_url parts",
                            kind.map_or_else(|| "(missing)".to_owned(), |k| format!("{k:?}"))
                        )));
                    }
                }
            }
            Ok((text, images))
        }
        _ => Err(GatewayError::invalid(format!(
            "messages[{index}].content must be a string or an array of parts"
        ))),
    }
}

/// An `image_url` part's image: `{"url", "detail"?}` (or the bare URL
/// older clients send); `at` names it in errors.
pub fn image_of(image_url: Option<&Value>, at: &str) -> Result<Image, GatewayError> {
    let image = match image_url {
        Some(Value::String(url)) => Image::from(url.as_str()),
        Some(value @ Value::Object(o)) => {
            crate::api::refuse_unknown_keys(value, &["url", "detail"], at)?;
            Image {
                url: o
                    .get("url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| GatewayError::invalid(format!("{at}.url must be a string")))?
                    .to_owned(),
                detail: detail_of(o.get("detail"), at)?,
            }
        }
        _ => return Err(GatewayError::invalid(format!("{at}.url must be a string"))),
    };
    Ok(image)
}

/// An image's `detail`: absent, or `low`, `high` or `auto`.
pub fn detail_of(detail: Option<&Value>, at: &str) -> Result<Option<String>, GatewayError> {
    match detail {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(d)) if ["low", "high", "auto"].contains(&d.as_str()) => {
            Ok(Some(d.clone()))
        }
        Some(other) => Err(GatewayError::invalid(format!(
            "{at}.detail must be low, high or auto (got {other})"
        ))),
    }
}

/// A message's text: a string, or the joined `text` parts of an array
/// (images are refused: for callers that take text only).
pub fn content_text(content: &Value, index: usize) -> Result<String, GatewayError> {
    let (text, images) = content_parts(content, index)?;
    if !images.is_empty() {
        return Err(GatewayError::invalid(format!(
            "messages[{index}].content: image parts are not supported here: send text"
        )));
    }
    Ok(text)
}

/// `stop`: a string or an array of strings.
pub fn parse_stop(stop: Option<&Value>) -> Result<Vec<String>, GatewayError> {
    match stop {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    GatewayError::invalid("stop must be a string or an array of strings")
                })
            })
            .collect(),
        Some(_) => Err(GatewayError::invalid(
            "stop must be a string or an array of strings",
        )),
    }
}

/// Whether a field of a message sent back as history carries nothing.
fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) | Value::Bool(true) => false,
    }
}

/// Canonical messages from OpenAI ones.
pub fn messages_from(messages: &[ChatMessage]) -> Result<Vec<Message>, GatewayError> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if let Some((field, _)) = m
                .extra
                .iter()
                .find(|(k, v)| !is_empty_value(v) && k.as_str() != "refusal" && k.as_str() != "annotations")
            {
                return Err(GatewayError::invalid(format!(
                    "messages[{i}].{field} is not supported: send role, content, name, tool_calls and tool_call_id"
                )));
            }
            let role = parse_role(&m.role, i)?;
            let (content, images) = content_parts(&m.content, i)?;
            let tool_calls: Vec<crate::types::ToolCall> = m
                .tool_calls
                .iter()
                .flatten()
                .map(ToolCall::to_call)
                .collect();
            if !tool_calls.is_empty() && role != Role::Assistant {
                return Err(GatewayError::invalid(format!(
                    "messages[{i}]: only assistant messages carry tool_calls"
                )));
            }
            if role == Role::Tool && m.tool_call_id.as_deref().is_none_or(str::is_empty) {
                return Err(GatewayError::invalid(format!(
                    "messages[{i}]: a tool message needs the tool_call_id of the call it answers"
                )));
            }
            Ok(Message {
                role,
                content,
                images,
                tool_calls,
                tool_call_id: m.tool_call_id.clone(),
                name: m.name.clone(),
            })
        })
        .collect()
}

/// Canonical tools from OpenAI ones (`type: function` only).
pub fn tools_from(tools: &[ToolDefinition]) -> Result<Vec<Tool>, GatewayError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.kind != "function" {
                return Err(GatewayError::invalid(format!(
                    "tools[{i}]: type {:?} is not supported: use function tools",
                    t.kind
                )));
            }
            if t.function.name.trim().is_empty() {
                return Err(GatewayError::invalid(format!(
                    "tools[{i}].function.name is required"
                )));
            }
            Ok(Tool {
                name: t.function.name.clone(),
                description: t.function.description.clone(),
                parameters: t
                    .function
                    .parameters
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                strict: t.function.strict,
            })
        })
        .collect()
}

/// The OpenAI form of a canonical tool.
pub fn tool_definition(t: &Tool) -> ToolDefinition {
    ToolDefinition {
        kind: function_type(),
        function: FunctionDefinition {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: Some(t.parameters.clone()),
            strict: t.strict,
        },
    }
}

/// `tool_choice`: `auto`, `none`, `required`, or a named function.
pub fn tool_choice_from(value: &Value) -> Result<ToolChoice, GatewayError> {
    match value {
        Value::String(s) if s == "auto" => Ok(ToolChoice::Auto),
        Value::String(s) if s == "none" => Ok(ToolChoice::None),
        Value::String(s) if s == "required" => Ok(ToolChoice::Required),
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(|n| ToolChoice::Function(n.to_owned()))
            .ok_or_else(|| {
                GatewayError::invalid(
                    "tool_choice: an object must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                )
            }),
        _ => Err(GatewayError::invalid(
            "tool_choice must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
        )),
    }
}

/// The OpenAI form of a canonical tool choice.
pub fn tool_choice_value(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

/// `response_format`.
pub fn response_format_from(value: &Value) -> Result<ResponseFormat, GatewayError> {
    match value.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let spec = value.get("json_schema").ok_or_else(|| {
                GatewayError::invalid(
                    "response_format: type json_schema needs a json_schema object",
                )
            })?;
            let name = spec
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    GatewayError::invalid("response_format.json_schema.name is required")
                })?;
            Ok(ResponseFormat::JsonSchema {
                name: name.to_owned(),
                description: spec
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                schema: spec.get("schema").cloned().unwrap_or_else(|| json!({})),
                strict: spec.get("strict").and_then(Value::as_bool),
            })
        }
        _ => Err(GatewayError::invalid(
            "response_format.type must be text, json_object or json_schema",
        )),
    }
}

/// The OpenAI form of a canonical response format.
pub fn response_format_value(format: &ResponseFormat) -> Value {
    match format {
        ResponseFormat::Text => json!({"type": "text"}),
        ResponseFormat::JsonObject => json!({"type": "json_object"}),
        ResponseFormat::JsonSchema {
            name,
            description,
            schema,
            strict,
        } => {
            let mut spec = json!({"name": name, "schema": schema});
            if let Some(d) = description {
                spec["description"] = json!(d);
            }
            if let Some(s) = strict {
                spec["strict"] = json!(s);
            }
            json!({"type": "json_schema", "json_schema": spec})
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatCompletion {
    #[serde(default)]
    pub id: String,
    #[serde(default = "chat_completion_object")]
    pub object: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
}

fn chat_completion_object() -> String {
    "chat.completion".to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Choice {
    #[serde(default)]
    pub index: u32,
    pub message: ResponseMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub logprobs: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResponseMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// OpenAI's refusal text, when the model declined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompletionUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    #[serde(default)]
    pub id: String,
    #[serde(default = "chunk_object")]
    pub object: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Only on the last chunk, when `stream_options.include_usage` was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
}

fn chunk_object() -> String {
    "chat.completion.chunk".to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub logprobs: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallChunk>>,
}

/// A piece of a tool call in a chunk: `index` says which call; the first
/// piece has its id, type and name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ToolCallChunk {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub function: FunctionChunk,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FunctionChunk {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EmbeddingRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = "\\S"))]
    pub model: String,
    /// A string, or an array of strings.
    #[cfg_attr(feature = "openapi", schema(value_type = schema::EmbeddingInput))]
    pub input: Value,
    /// `float` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<schema::EncodingFormat>))]
    pub encoding_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EmbeddingResponse {
    #[serde(default = "list_object")]
    pub object: String,
    pub data: Vec<Embedding>,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub usage: Option<EmbeddingUsage>,
}

fn list_object() -> String {
    "list".to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Embedding {
    #[serde(default = "embedding_object")]
    pub object: String,
    #[serde(default)]
    pub index: u32,
    /// Floats, or base64 of little-endian f32s (`encoding_format: base64`).
    pub embedding: Value,
}

fn embedding_object() -> String {
    "embedding".to_owned()
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EmbeddingUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelList {
    #[serde(default = "list_object")]
    pub object: String,
    pub data: Vec<Model>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Model {
    pub id: String,
    #[serde(default = "model_object")]
    pub object: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub owned_by: String,
}

fn model_object() -> String {
    "model".to_owned()
}

/// Texts to embed: a string or an array of strings (token arrays are refused).
pub fn embedding_inputs(input: &Value) -> Result<Vec<String>, GatewayError> {
    let bad = || {
        GatewayError::invalid(
            "input must be a string or an array of strings (token id arrays are not supported)",
        )
    };
    match input {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect(),
        Value::Array(_) => Err(GatewayError::invalid("input must not be empty")),
        _ => Err(bad()),
    }
}

/// Base64 of the little-endian f32s, OpenAI's `encoding_format: base64`.
pub fn embedding_base64(vector: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The message of an OpenAI-style error body (`{"error": {"message"}}`).
pub fn error_message(body: &Value) -> Option<String> {
    let err = body.get("error")?;
    match err {
        Value::String(s) => Some(s.clone()),
        other => other
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_may_be_text_or_text_parts() {
        let m: Vec<ChatMessage> = serde_json::from_value(json!([
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ]))
        .unwrap();
        let parsed = messages_from(&m).unwrap();
        assert_eq!(parsed[0], Message::new(Role::Developer, "be brief"));
        assert_eq!(parsed[1], Message::new(Role::User, "ab"));

        let image = json!([
            {"role": "user", "content": [{"type": "text", "text": "what is it?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]}
        ]);
        let parsed =
            messages_from(&serde_json::from_value::<Vec<ChatMessage>>(image.clone()).unwrap())
                .unwrap();
        assert_eq!(
            parsed[0].images,
            [
                Image::from("data:image/png;base64,AAAA"),
                Image {
                    url: "https://x/y.png".into(),
                    detail: Some("low".into())
                }
            ]
        );
        // Printed back as it came (the detail kept for OpenAI upstreams).
        assert_eq!(
            serde_json::to_value(ChatMessage::from_message(&parsed[0])).unwrap(),
            image[0]
        );
        for (bad, says) in [
            (
                json!({"url": "https://x", "detail": "ultra"}),
                "detail must be low, high or auto",
            ),
            (
                json!({"url": "https://x", "size": 3}),
                "image_url.size is not supported",
            ),
            (json!({"detail": "low"}), "image_url.url must be a string"),
        ] {
            let m: Vec<ChatMessage> = serde_json::from_value(json!([
                {"role": "user", "content": [{"type": "image_url", "image_url": bad}]}
            ]))
            .unwrap();
            let err = messages_from(&m).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
        let audio: Vec<ChatMessage> = serde_json::from_value(json!([
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
        ]))
        .unwrap();
        let err = messages_from(&audio).unwrap_err().to_string();
        assert!(err.contains("\"input_audio\""), "{err}");
        // A tool result must name its call.
        let tool: Vec<ChatMessage> =
            serde_json::from_value(json!([{"role": "tool", "content": "x"}])).unwrap();
        assert!(messages_from(&tool).is_err());
    }

    #[test]
    fn a_tool_loop_round_trips_and_echoed_answer_fields_are_ignored() {
        let m: Vec<ChatMessage> = serde_json::from_value(json!([
            {"role": "user", "content": "weather in Oslo?"},
            {"role": "assistant", "content": null, "refusal": null, "annotations": [],
             "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
            {"role": "assistant", "content": "it rains", "tool_calls": []},
        ]))
        .unwrap();
        let parsed = messages_from(&m).unwrap();
        assert_eq!(parsed[1].tool_calls[0].arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(parsed[2].tool_call_id.as_deref(), Some("call_1"));
        assert!(
            parsed[3].tool_calls.is_empty(),
            "an empty tool_calls is no call"
        );
        let back = ChatMessage::from_message(&parsed[1]);
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]})
        );
        let audio: Vec<ChatMessage> = serde_json::from_value(json!([
            {"role": "assistant", "content": "x", "audio": {"id": "a1"}}
        ]))
        .unwrap();
        let err = messages_from(&audio).unwrap_err().to_string();
        assert!(err.contains("messages[0].audio"), "{err}");
    }

    #[test]
    fn tool_choice_and_response_format_parse_and_print_back() {
        for v in [
            json!("auto"),
            json!("none"),
            json!("required"),
            json!({"type": "function", "function": {"name": "f"}}),
        ] {
            assert_eq!(tool_choice_value(&tool_choice_from(&v).unwrap()), v);
        }
        let f = json!({"type": "json_schema", "json_schema": {"name": "person", "schema": {"type": "object"}, "strict": true}});
        assert_eq!(response_format_value(&response_format_from(&f).unwrap()), f);
        assert!(response_format_from(&json!({"type": "xml"})).is_err());
    }

    #[test]
    fn base64_embeddings_are_little_endian_f32() {
        assert_eq!(embedding_base64(&[1.0]), "AACAPw==");
        assert_eq!(parse_stop(Some(&json!("x"))).unwrap(), ["x"]);
        assert!(embedding_inputs(&json!([1, 2])).is_err());
    }
}

/// Shapes of the request fields kept as JSON values above, for the OpenAPI
/// document: what the hand-written parsing below each accepts. Never built.
#[cfg(feature = "openapi")]
pub mod schema {
    /// `system` (or `developer`), `user`, `assistant`.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum ChatRole {
        System,
        Developer,
        User,
        Assistant,
    }

    /// A message's text, or its text parts.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    #[serde(untagged)]
    pub enum MessageContent {
        Text(String),
        Parts(Vec<TextPart>),
    }

    /// `{"type": "text", "text": "..."}`.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    pub struct TextPart {
        #[schema(value_type = String, pattern = "^text$")]
        pub r#type: String,
        pub text: String,
    }

    /// One stop sequence or several.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    #[serde(untagged)]
    pub enum StopSequences {
        One(String),
        Many(Vec<String>),
    }

    /// One text to embed, or several (at least one).
    pub struct EmbeddingInput;

    impl utoipa::PartialSchema for EmbeddingInput {
        fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
            use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
            let text = || ObjectBuilder::new().schema_type(Type::String);
            OneOfBuilder::new()
                .item(text())
                .item(ArrayBuilder::new().items(text()).min_items(Some(1)))
                .into()
        }
    }

    impl utoipa::ToSchema for EmbeddingInput {}

    /// How embeddings come back.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum EncodingFormat {
        Float,
        Base64,
    }
}
