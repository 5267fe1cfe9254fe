//! The gateway's own, wire-neutral request and response types. Every API the
//! gateway serves translates into these, every provider client translates out
//! of them, so N front ends and M providers need N + M translations.

use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::ProviderError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    /// OpenAI's newer name for system instructions (kept apart because some
    /// OpenAI models take only this one); `system` for other providers.
    Developer,
    #[default]
    User,
    Assistant,
    /// A tool's result, answering one of the assistant's tool calls.
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    /// Instructions rather than conversation: `system` or `developer`.
    pub fn is_system(self) -> bool {
        matches!(self, Role::System | Role::Developer)
    }
}

/// One message of a conversation: text, images, the assistant's tool calls,
/// or (role `tool`) the result of one of them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub role: Role,
    /// The text (a message's text parts, joined).
    pub content: String,
    pub images: Vec<Image>,
    /// The assistant's tool calls.
    pub tool_calls: Vec<ToolCall>,
    /// Role `tool`: the call this answers.
    pub tool_call_id: Option<String>,
    /// The participant's or tool's name, when the caller gave one.
    pub name: Option<String>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            ..Self::default()
        }
    }
}

/// An image of a message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Image {
    /// An `https://` or `data:<type>;base64,` URL.
    pub url: String,
    /// OpenAI's resolution hint (`low`, `high` or `auto`), when the caller
    /// gave one; a provider without it cannot honour `low` or `high`.
    pub detail: Option<String>,
}

impl From<&str> for Image {
    fn from(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            detail: None,
        }
    }
}

impl From<String> for Image {
    fn from(url: String) -> Self {
        Self { url, detail: None }
    }
}

/// A function the model asked to call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCall {
    /// The call's id, which the `tool` message answering it names.
    pub id: String,
    pub name: String,
    /// The arguments as JSON text (as OpenAI carries them).
    pub arguments: String,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
    /// OpenAI's structured-outputs switch for the arguments.
    pub strict: Option<bool>,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool, the model picks.
    Required,
    /// This one.
    Function(String),
}

/// The shape the answer's text must have.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against `schema`.
    JsonSchema {
        name: String,
        description: Option<String>,
        schema: serde_json::Value,
        strict: Option<bool>,
    },
}

/// Sampling parameters every provider understands.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 2.0))]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "topP")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub top_p: Option<f64>,
    /// Most tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "maxTokens")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
}

/// What a chat asks beyond messages and sampling: tools, an answer format,
/// and the OpenAI-only fields. Each provider honours what it can; one that
/// cannot honour something is not asked (the router says which field, and
/// refuses when no provider of the route can).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatOptions {
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    /// `false`: at most one tool call per answer.
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormat>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// Log probabilities of the answer's tokens (and the `top_logprobs` alternatives).
    pub logprobs: bool,
    pub top_logprobs: Option<u32>,
    /// OpenAI's `max_completion_tokens` (kept apart from `max_tokens`, which
    /// some OpenAI models refuse): forwarded under its own name.
    pub max_completion_tokens: bool,
    /// OpenAI request fields the gateway does not interpret (`user`,
    /// `metadata`, `reasoning_effort`, `n`, `logit_bias`, ...): forwarded
    /// as they are to OpenAI-compatible providers; the others cannot honour
    /// them.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatOptions {
    /// The request fields a provider that honours none of these would have
    /// to drop, by their OpenAI names (empty for a plain chat).
    pub fn fields(&self) -> Vec<String> {
        let mut fields = Vec::new();
        let mut add = |present: bool, name: &str| {
            if present {
                fields.push(name.to_owned());
            }
        };
        add(!self.tools.is_empty(), "tools");
        add(self.tool_choice.is_some(), "tool_choice");
        add(self.parallel_tool_calls.is_some(), "parallel_tool_calls");
        add(
            self.response_format
                .as_ref()
                .is_some_and(|f| *f != ResponseFormat::Text),
            "response_format",
        );
        add(self.presence_penalty.is_some(), "presence_penalty");
        add(self.frequency_penalty.is_some(), "frequency_penalty");
        add(self.logprobs, "logprobs");
        add(self.top_logprobs.is_some(), "top_logprobs");
        fields.extend(self.extra.keys().cloned());
        fields
    }
}

/// A chat (or completion: a prompt is one user message) request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The model as the caller named it; the router maps it per provider.
    pub model: String,
    pub messages: Vec<Message>,
    pub params: Params,
    pub options: ChatOptions,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The answer is tool calls.
    ToolCalls,
    /// The provider withheld the answer.
    ContentFilter,
}

impl FinishReason {
    /// OpenAI's and Ollama's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }

    /// From OpenAI's name (anything unknown is a plain stop).
    pub fn from_openai(reason: Option<&str>) -> Self {
        match reason {
            Some("length") => FinishReason::Length,
            Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
            Some("content_filter") => FinishReason::ContentFilter,
            _ => FinishReason::Stop,
        }
    }
}

/// Token counts as a provider reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TokenCounts {
    pub input: u64,
    pub output: u64,
}

/// Token counts as metered: reported, or estimated when the provider said nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// True when the provider reported no usage and these are estimates.
    pub estimated: bool,
}

/// A complete (non-streamed) answer from a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: FinishReason,
    /// `None` when the provider reported no usage (the meter estimates then).
    pub usage: Option<TokenCounts>,
    /// OpenAI's `logprobs` object of the choice, when asked for and given.
    pub logprobs: Option<serde_json::Value>,
}

impl ChatResponse {
    /// A text answer.
    pub fn text(content: impl Into<String>, finish_reason: FinishReason) -> Self {
        Self {
            content: content.into(),
            tool_calls: Vec::new(),
            finish_reason,
            usage: None,
            logprobs: None,
        }
    }
}

/// A piece of a tool call in a stream: the first piece of call `index`
/// carries its id and name, the others more of its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// More text.
    Delta(String),
    /// More of a tool call.
    ToolCall(ToolCallDelta),
    /// Log probabilities of the tokens just streamed (OpenAI's chunk `logprobs`).
    Logprobs(serde_json::Value),
    /// The end; nothing follows.
    Done {
        finish_reason: FinishReason,
        usage: Option<TokenCounts>,
    },
}

/// A streamed answer from a provider: deltas, then exactly one `Done`, or an
/// error (after which nothing follows).
pub type ChatStream = BoxStream<'static, Result<StreamEvent, ProviderError>>;

/// Texts to embed with one model.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    pub model: String,
    pub inputs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmbedResponse {
    /// One vector per input, in input order.
    pub embeddings: Vec<Vec<f32>>,
    /// Input tokens, when the provider reported them.
    pub input_tokens: Option<u64>,
}

/// A model the gateway can route, as listed by `/v1/models` and `/api/tags`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The name to ask for.
    pub id: String,
    /// The provider that serves it (the first in policy order, for aliases).
    pub provider: String,
}
