//! `POST /v1/llm/infer {model, input, params, policyOverride?, stream?}`: the
//! fabric's own contract. `input` is a prompt string or a list of
//! `{role, content}` messages. The answer names the provider in its body
//! (and in `X-Fabric-Provider`). Streamed, it is SSE: `delta` events
//! (`{"text"}`), then one `done` event holding the whole answer, or one
//! `error` event with the uniform error body.

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Reply, SSE, parse_body, parse_policy, sse_frame};
use crate::error::GatewayError;
use crate::router::{CallOptions, Caller, Gateway};
use crate::types::{
    ChatOptions, ChatRequest, FinishReason, Message, Params, Role, StreamEvent, Usage,
};

/// The request body.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InferRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = "\\S"))]
    pub model: String,
    /// A prompt, or `[{role, content}]`.
    #[cfg_attr(feature = "openapi", schema(value_type = schema::InferInput))]
    pub input: Value,
    #[serde(default)]
    pub params: Params,
    /// Routing for this call only: `local`, `cloud`, a provider name, or a list.
    #[serde(default, alias = "policy_override")]
    pub policy_override: Option<String>,
    #[serde(default)]
    pub stream: bool,
}

/// The answer (also the `done` event of a stream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct InferResponse {
    pub id: String,
    /// The provider that answered.
    pub provider: String,
    /// The model that provider was asked for (after mapping).
    pub model: String,
    /// The model as requested.
    pub requested_model: String,
    pub output: String,
    pub finish_reason: FinishReason,
    pub usage: InferUsage,
    /// True when the policy's first choice did not answer.
    pub fallback: bool,
    pub attempts: u32,
    pub latency_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct InferUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub estimated: bool,
}

impl From<Usage> for InferUsage {
    fn from(u: Usage) -> Self {
        Self {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            estimated: u.estimated,
        }
    }
}

/// One message of `input` (text chats only: tools go through the OpenAI,
/// Ollama and Anthropic front ends).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InferMessage {
    role: Role,
    content: String,
}

fn messages(input: &Value) -> Result<Vec<Message>, GatewayError> {
    match input {
        Value::String(prompt) => Ok(vec![Message::new(Role::User, prompt.clone())]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                serde_json::from_value::<InferMessage>(item.clone())
                    .ok()
                    .filter(|m| m.role != Role::Tool)
                    .map(|m| Message::new(m.role, m.content))
                    .ok_or_else(|| {
                        GatewayError::invalid(format!(
                            "input[{i}] must be {{\"role\": \"system\"|\"user\"|\"assistant\", \"content\": string}}"
                        ))
                    })
            })
            .collect(),
        _ => Err(GatewayError::invalid(
            "input must be a prompt string or an array of {role, content} messages",
        )),
    }
}

/// `POST /v1/llm/infer`. `policyOverride` in the body wins over the header's.
pub async fn infer(gateway: &Gateway, caller: &Caller, opts: CallOptions, body: &[u8]) -> Reply {
    let parsed = parse_body::<InferRequest>(body).and_then(|raw| {
        let policy = parse_policy(raw.policy_override.as_deref())?;
        let req = ChatRequest {
            model: raw.model.clone(),
            messages: messages(&raw.input)?,
            params: raw.params.clone(),
            options: ChatOptions::default(),
        };
        Ok((raw.stream, policy, req))
    });
    let (stream, policy, req) = match parsed {
        Ok(p) => p,
        Err(e) => return Reply::error(&e, &caller.request_id),
    };
    let opts = match policy {
        Some(p) => opts.with_policy(Some(p)),
        None => opts,
    };
    let id = format!("inf_{}", uuid::Uuid::now_v7().simple());
    let requested = req.model.clone();
    let started = opts.started;
    let prompt_estimate = crate::metering::estimate_prompt_tokens(&req.messages);
    if !stream {
        return match gateway.chat(caller, &opts, req).await {
            Ok(answer) => {
                let body = InferResponse {
                    id,
                    provider: answer.provider.clone(),
                    model: answer.model.clone(),
                    requested_model: requested,
                    output: answer.value.content,
                    finish_reason: answer.value.finish_reason,
                    usage: answer.usage.into(),
                    fallback: answer.fallback,
                    attempts: answer.attempts,
                    latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                };
                Reply::json(200, &body).with_provider(answer.provider, answer.model)
            }
            Err(e) => Reply::error(&e, &caller.request_id),
        };
    }
    match gateway.chat_stream(caller, &opts, req).await {
        Ok(answer) => {
            let request_id = caller.request_id.clone();
            let mut done = InferResponse {
                id,
                provider: answer.provider.clone(),
                model: answer.model.clone(),
                requested_model: requested,
                output: String::new(),
                finish_reason: FinishReason::Stop,
                usage: Usage::default().into(),
                fallback: answer.fallback,
                attempts: answer.attempts,
                latency_ms: 0,
            };
            let events = answer.value.map(move |item| match item {
                Ok(StreamEvent::Delta(text)) => {
                    done.output.push_str(&text);
                    sse_frame(Some("delta"), &serde_json::json!({ "text": text }))
                }
                Ok(StreamEvent::Done {
                    finish_reason,
                    usage,
                }) => {
                    done.finish_reason = finish_reason;
                    done.usage = match usage {
                        Some(u) => InferUsage {
                            input_tokens: u.input,
                            output_tokens: u.output,
                            estimated: false,
                        },
                        None => InferUsage {
                            input_tokens: prompt_estimate,
                            output_tokens: crate::metering::estimate_tokens(&done.output),
                            estimated: true,
                        },
                    };
                    done.latency_ms =
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    sse_frame(Some("done"), &done)
                }
                // Tools are not offered through this API, so none are called.
                Ok(StreamEvent::ToolCall(_) | StreamEvent::Logprobs(_)) => bytes::Bytes::new(),
                Err(e) => sse_frame(Some("error"), &super::error_body(&e, &request_id)),
            });
            Reply::streaming(SSE, answer.provider, answer.model, events.boxed())
        }
        Err(e) => Reply::error(&e, &caller.request_id),
    }
}

/// The shape of `input`, for the OpenAPI document.
#[cfg(feature = "openapi")]
pub mod schema {
    /// A prompt, or messages (at least one).
    pub struct InferInput;

    impl utoipa::PartialSchema for InferInput {
        fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
            use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
            use utoipa::openapi::{Ref, RefOr};
            let message: RefOr<_> = Ref::from_schema_name("InferMessage").into();
            OneOfBuilder::new()
                .item(ObjectBuilder::new().schema_type(Type::String))
                .item(ArrayBuilder::new().items(message).min_items(Some(1)))
                .into()
        }
    }

    impl utoipa::ToSchema for InferInput {
        fn schemas(
            schemas: &mut Vec<(
                String,
                utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
            )>,
        ) {
            use utoipa::PartialSchema as _;
            schemas.push(("InferMessage".to_owned(), InferMessage::schema()));
            // And what the message refers to (its `Role`).
            <InferMessage as utoipa::ToSchema>::schemas(schemas);
        }
    }

    /// One message of `input`.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct InferMessage {
        pub role: InferRole,
        pub content: String,
    }

    /// The roles of `input` (tool results go through the OpenAI, Ollama
    /// and Anthropic front ends).
    #[derive(serde::Serialize, utoipa::ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum InferRole {
        System,
        Developer,
        User,
        Assistant,
    }
}
