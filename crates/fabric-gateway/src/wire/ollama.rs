//! Ollama's API (`/api/chat`, `/api/generate`, `/api/embed`, `/api/embeddings`,
//! `/api/tags`): what the agent-facing endpoint serves and what the Ollama
//! client sends and reads. Note Ollama's default: `stream` absent means true.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::GatewayError;
use crate::types::{ChatOptions, Image, Message, Params, Role};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Options>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: String,
    /// Base64 images (no `data:` prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// Role `tool`: the function whose result this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
}

/// A tool call as Ollama writes it: arguments as a JSON object.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ToolCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FunctionCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    pub name: String,
    #[serde(default)]
    pub arguments: Value,
}

/// The base64 payload of a `data:` URL, as Ollama takes images.
pub fn image_base64(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    meta.ends_with(";base64").then_some(data)
}

/// Ollama's `images` (base64 strings, the field called `field` in errors)
/// as `data:` URLs; absent, null or `[]` is none.
pub fn images_from(images: Option<&Value>, field: &str) -> Result<Vec<Image>, GatewayError> {
    let bad = || GatewayError::invalid(format!("{field} must be an array of base64 strings"));
    match images {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(|b| Image::from(image_data_url(b))))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// A `data:` URL for a base64 image Ollama sent, its type told by its first bytes.
pub fn image_data_url(base64: &str) -> String {
    let kind = if base64.starts_with("iVBOR") {
        "image/png"
    } else if base64.starts_with("/9j/") {
        "image/jpeg"
    } else if base64.starts_with("R0lGOD") {
        "image/gif"
    } else if base64.starts_with("UklGR") {
        "image/webp"
    } else {
        "application/octet-stream"
    };
    format!("data:{kind};base64,{base64}")
}

/// The model options the gateway maps; others are accepted and ignored
/// (they tune a local runtime, e.g. `num_ctx`, and mean nothing to a cloud).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Options {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_predict: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
}

impl Options {
    pub fn from_params(p: &Params, chat: &ChatOptions) -> Option<Self> {
        let o = Self {
            temperature: p.temperature,
            presence_penalty: chat.presence_penalty,
            frequency_penalty: chat.frequency_penalty,
            top_p: p.top_p,
            num_predict: p.max_tokens.map(i64::from),
            stop: (!p.stop.is_empty()).then(|| p.stop.clone()),
            seed: p.seed,
        };
        let empty = o.temperature.is_none()
            && o.presence_penalty.is_none()
            && o.frequency_penalty.is_none()
            && o.top_p.is_none()
            && o.num_predict.is_none()
            && o.stop.is_none()
            && o.seed.is_none();
        (!empty).then_some(o)
    }

    pub fn to_params(&self) -> Params {
        Params {
            temperature: self.temperature,
            top_p: self.top_p,
            // Ollama's -1 (infinite) and -2 (fill context) mean "no limit" here.
            max_tokens: self
                .num_predict
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0),
            stop: self.stop.clone().unwrap_or_default(),
            seed: self.seed,
        }
    }
}

/// Canonical messages from Ollama ones. Images become `data:` URLs; tool
/// calls get ids (Ollama's own, else made up from their place), and a tool
/// result names the call it answers: the earliest unanswered call of its
/// `tool_name`, else the earliest unanswered one.
pub fn messages_from(messages: &[ChatMessage]) -> Result<Vec<Message>, GatewayError> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    // (id, name) of calls not answered yet, oldest first.
    let mut open: Vec<(String, String)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let images = images_from(m.images.as_ref(), &format!("messages[{i}].images"))?;
        let role = match m.role.as_str() {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(GatewayError::invalid(format!(
                    "messages[{i}]: role {other:?} is not supported: use system, user, assistant or tool"
                )));
            }
        };
        let tool_calls: Vec<crate::types::ToolCall> = m
            .tool_calls
            .iter()
            .flatten()
            .enumerate()
            .map(|(j, c)| crate::types::ToolCall {
                id: c.id.clone().unwrap_or_else(|| format!("call_{i}_{j}")),
                name: c.function.name.clone(),
                arguments: arguments_text(&c.function.arguments),
            })
            .collect();
        open.extend(tool_calls.iter().map(|c| (c.id.clone(), c.name.clone())));
        let tool_call_id = if role == Role::Tool {
            let at = m
                .tool_name
                .as_deref()
                .and_then(|name| open.iter().position(|(_, n)| n == name))
                .or_else(|| (!open.is_empty()).then_some(0))
                .ok_or_else(|| {
                    GatewayError::invalid(format!(
                        "messages[{i}]: a tool message answers a tool call, and no call before it is unanswered"
                    ))
                })?;
            Some(open.remove(at).0)
        } else {
            None
        };
        out.push(Message {
            role,
            content: m.content.clone(),
            images,
            tool_calls,
            tool_call_id,
            name: m.tool_name.clone(),
        });
    }
    Ok(out)
}

/// Ollama's arguments object as the JSON text OpenAI carries.
pub fn arguments_text(arguments: &Value) -> String {
    match arguments {
        Value::Null => "{}".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// OpenAI's arguments text as the object Ollama takes (text that is not a
/// JSON object travels as a string).
pub fn arguments_value(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ if arguments.trim().is_empty() => Value::Object(serde_json::Map::new()),
        _ => Value::String(arguments.to_owned()),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub model: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Options>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<Value>,
}

/// One chat answer or stream part (`done: false` parts carry a delta).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChatResponse {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub message: Option<ResponseMessage>,
    #[serde(default)]
    pub done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_reason: Option<String>,
    #[serde(flatten)]
    pub stats: Stats,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResponseMessage {
    pub role: String,
    #[serde(default)]
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// One generate answer or stream part.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GenerateResponse {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub response: String,
    #[serde(default)]
    pub done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_reason: Option<String>,
    /// Clients pass it back for follow-ups; the gateway keeps no context, so empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Vec<i64>>,
    #[serde(flatten)]
    pub stats: Stats,
}

/// The counters on a final (`done: true`) part; durations in nanoseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Stats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_eval_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_eval_duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_duration: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EmbedRequest {
    pub model: String,
    /// A string or an array of strings.
    #[serde(default)]
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EmbedResponse {
    #[serde(default)]
    pub model: String,
    pub embeddings: Vec<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_eval_count: Option<u64>,
}

/// The legacy single-text embedding request (`/api/embeddings`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EmbeddingsResponse {
    pub embedding: Vec<f32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TagsResponse {
    pub models: Vec<TagModel>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TagModel {
    pub name: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub modified_at: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub details: Value,
}

/// Texts to embed: a string or a non-empty array of strings.
pub fn embed_inputs(input: &Value) -> Result<Vec<String>, GatewayError> {
    let bad = || GatewayError::invalid("input must be a string or an array of strings");
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

/// The message of an Ollama error body (`{"error": "..."}`, or the fabric's
/// `{"error": {"message"}}`).
pub fn error_message(body: &Value) -> Option<String> {
    match body.get("error")? {
        Value::String(s) => Some(s.clone()),
        other => other
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}
