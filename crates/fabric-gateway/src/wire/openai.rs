//! OpenAI's API (`/v1/chat/completions`, `/v1/embeddings`, `/v1/models`):
//! what the gateway serves and what its OpenAI client sends and reads.
//!
//! Polymorphic fields (`content`, `stop`, `input`) stay `serde_json::Value`
//! and are interpreted by hand, so a malformed request gets an error naming
//! the field instead of serde's "did not match any variant".

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::GatewayError;
use crate::types::{Message, Role};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatCompletionRequest {
    /// A model name the providers know (mapped per provider by the gateway's config).
    #[cfg_attr(feature = "openapi", schema(pattern = "\\S"))]
    pub model: String,
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
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
    /// Refused: the gateway routes text chats only (not in the schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub tools: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub functions: Option<Value>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatMessage {
    #[cfg_attr(feature = "openapi", schema(value_type = schema::ChatRole))]
    pub role: String,
    /// A string, or an array of text parts.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<schema::MessageContent>))]
    pub content: Value,
    /// Refused: no tool calls (not in the schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub tool_calls: Option<Value>,
}

impl ChatMessage {
    pub fn text(role: Role, content: &str) -> Self {
        Self {
            role: role.as_str().to_owned(),
            content: Value::String(content.to_owned()),
            tool_calls: None,
        }
    }
}

/// `system`/`developer`, `user`, `assistant`; tools are refused, not dropped.
pub fn parse_role(role: &str, index: usize) -> Result<Role, GatewayError> {
    match role {
        "system" | "developer" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "tool" | "function" => Err(GatewayError::invalid(format!(
            "messages[{index}]: role {role:?} is not supported: the gateway routes text chats only (no tool calls yet)"
        ))),
        other => Err(GatewayError::invalid(format!(
            "messages[{index}]: unknown role {other:?}: use system, user or assistant"
        ))),
    }
}

/// A message's text: a string, or the concatenated `text` parts of an array.
pub fn content_text(content: &Value, index: usize) -> Result<String, GatewayError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (kind, _) => {
                        return Err(GatewayError::invalid(format!(
                            "messages[{index}].content[{j}]: part type {} is not supported: send text parts only",
                            kind.map_or_else(|| "(missing)".to_owned(), |k| format!("{k:?}"))
                        )));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(GatewayError::invalid(format!(
            "messages[{index}].content must be a string or an array of text parts"
        ))),
    }
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

/// Canonical messages from OpenAI ones.
pub fn messages_from(messages: &[ChatMessage]) -> Result<Vec<Message>, GatewayError> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if m.tool_calls.is_some() {
                return Err(GatewayError::invalid(format!(
                    "messages[{i}]: tool_calls are not supported: the gateway routes text chats only"
                )));
            }
            Ok(Message {
                role: parse_role(&m.role, i)?,
                content: content_text(&m.content, i)?,
            })
        })
        .collect()
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
        assert_eq!(parsed[0], Message::new(Role::System, "be brief"));
        assert_eq!(parsed[1], Message::new(Role::User, "ab"));

        let image: Vec<ChatMessage> = serde_json::from_value(json!([
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
        ]))
        .unwrap();
        let err = messages_from(&image).unwrap_err().to_string();
        assert!(err.contains("\"image_url\""), "{err}");
        let tool: Vec<ChatMessage> =
            serde_json::from_value(json!([{"role": "tool", "content": "x"}])).unwrap();
        assert!(messages_from(&tool).is_err());
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
