//! Request shapes for the OpenAPI document of the front ends whose parsers
//! work on JSON values (Messages, Responses, legacy completions) or whose
//! polymorphic fields the types above keep as values (`tool_choice`,
//! `response_format`). Each documents a subset of what its parser accepts,
//! closed (`additionalProperties: false`), so that a request valid against
//! the document is one the fabric takes: tool-call history, named tool
//! choices and the other fields the parsers check against each other are
//! accepted but not spelled out here. Never built.

#![allow(dead_code)]

use serde::Serialize;
use utoipa::ToSchema;

use super::openai::schema::{ChatRole, MessageContent, StopSequences};

/// A message as documented: a role and its text (or text parts).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessageDoc {
    pub role: ChatRole,
    pub content: Option<MessageContent>,
    #[schema(pattern = "\\S")]
    pub name: Option<String>,
}

/// `tool_choice` as documented: whether the model may, must or must not
/// call a tool (`{"type": "function", "function": {"name"}}` is accepted too).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoiceDoc {
    Auto,
    None,
    Required,
}

/// `response_format`.
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormatDoc {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaDoc },
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaDoc {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub schema: Option<serde_json::Value>,
    pub strict: Option<bool>,
}

/// Anthropic's Messages request, as documented.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessagesRequestDoc {
    #[schema(pattern = "\\S")]
    pub model: String,
    #[schema(minimum = 1)]
    pub max_tokens: u32,
    /// Text turns (`tool_use`, `tool_result` and image blocks are accepted too).
    #[schema(min_items = 1)]
    pub messages: Vec<AnthropicMessageDoc>,
    pub system: Option<String>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    pub stop_sequences: Option<Vec<String>>,
    pub stream: Option<bool>,
    pub metadata: Option<AnthropicMetadataDoc>,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnthropicMessageDoc {
    pub role: AnthropicRoleDoc,
    pub content: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnthropicRoleDoc {
    User,
    Assistant,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnthropicMetadataDoc {
    pub user_id: Option<String>,
}

/// OpenAI's Responses request, as documented (stateless: no
/// `previous_response_id`, no `store: true`).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponsesRequestDoc {
    #[schema(pattern = "\\S")]
    pub model: String,
    #[schema(value_type = ResponsesInputDoc)]
    pub input: (),
    pub instructions: Option<String>,
    pub tools: Option<Vec<ResponsesToolDoc>>,
    pub tool_choice: Option<ToolChoiceDoc>,
    pub parallel_tool_calls: Option<bool>,
    #[schema(minimum = 1)]
    pub max_output_tokens: Option<u32>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    pub stream: Option<bool>,
    pub user: Option<String>,
}

/// A prompt, or messages, at least one (`function_call` and
/// `function_call_output` items are accepted too).
pub struct ResponsesInputDoc;

impl utoipa::PartialSchema for ResponsesInputDoc {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(
                ArrayBuilder::new()
                    .items(ResponsesMessageDoc::schema())
                    .min_items(Some(1)),
            )
            .into()
    }
}

impl ToSchema for ResponsesInputDoc {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <ResponsesMessageDoc as ToSchema>::schemas(schemas);
    }
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponsesMessageDoc {
    pub role: ChatRole,
    pub content: String,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponsesToolDoc {
    #[schema(pattern = "^function$")]
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    pub strict: Option<bool>,
}

/// OpenAI's legacy completion request, as documented.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequestDoc {
    #[schema(pattern = "\\S")]
    pub model: String,
    pub prompt: String,
    pub max_tokens: Option<u32>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    pub stop: Option<StopSequences>,
    pub seed: Option<i64>,
    #[schema(maximum = 1)]
    pub n: Option<u32>,
    pub stream: Option<bool>,
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub presence_penalty: Option<f64>,
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub frequency_penalty: Option<f64>,
    pub user: Option<String>,
}
