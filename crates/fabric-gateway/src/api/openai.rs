//! The OpenAI-compatible front end: chat completions (SSE when streamed,
//! errors in-band as `data: {"error": ...}`), embeddings (floats or base64),
//! models.

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream;

use super::{Reply, SSE, parse_body, sse_frame};
use crate::error::GatewayError;
use crate::router::{CallOptions, Caller, Gateway};
use crate::types::{
    ChatOptions, ChatRequest, EmbedRequest, Params, StreamEvent, ToolCallDelta, ToolChoice,
};
use crate::wire::openai as wire;
use crate::wire::unix_seconds;

fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::now_v7().simple())
}

/// The canonical request of an OpenAI chat completion. Every field is kept:
/// the ones the gateway translates for other providers in
/// [`ChatOptions`], the rest in its `extra` (forwarded to OpenAI-compatible
/// providers, refused by the others); what the gateway itself cannot do
/// (`n > 1`, the deprecated `functions`) is refused here.
pub fn chat_request(req: &wire::ChatCompletionRequest) -> Result<ChatRequest, GatewayError> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(GatewayError::invalid(
            "n > 1 is not supported: ask for one choice per request",
        ));
    }
    if req.functions.as_ref().is_some_and(|v| !v.is_null())
        || req.function_call.as_ref().is_some_and(|v| !v.is_null())
    {
        return Err(GatewayError::invalid(
            "functions and function_call are OpenAI's deprecated function calling: send tools and tool_choice",
        ));
    }
    if let Some(n) = req.top_logprobs
        && n > 20
    {
        return Err(GatewayError::invalid(format!(
            "top_logprobs {n} is out of range: use 0 to 20"
        )));
    }
    for (name, value) in [
        ("presence_penalty", req.presence_penalty),
        ("frequency_penalty", req.frequency_penalty),
    ] {
        if let Some(v) = value
            && !(-2.0..=2.0).contains(&v)
        {
            return Err(GatewayError::invalid(format!(
                "{name} {v} is out of range: use -2 to 2"
            )));
        }
    }
    if req
        .extra
        .get("user")
        .is_some_and(|u| !u.is_string() && !u.is_null())
    {
        return Err(GatewayError::invalid(
            "user must be a string (who the call is for)",
        ));
    }
    let tools = wire::tools_from(req.tools.as_deref().unwrap_or_default())?;
    let tool_choice = req
        .tool_choice
        .as_ref()
        .filter(|v| !v.is_null())
        .map(wire::tool_choice_from)
        .transpose()?;
    if let Some(ToolChoice::Function(name)) = &tool_choice
        && !tools.iter().any(|t| &t.name == name)
    {
        return Err(GatewayError::invalid(format!(
            "tool_choice names function {name:?}, which is not among the tools"
        )));
    }
    let response_format = req
        .response_format
        .as_ref()
        .filter(|v| !v.is_null())
        .map(wire::response_format_from)
        .transpose()?;
    Ok(ChatRequest {
        model: req.model.clone(),
        messages: wire::messages_from(&req.messages)?,
        params: Params {
            temperature: req.temperature,
            top_p: req.top_p,
            max_tokens: req.max_completion_tokens.or(req.max_tokens),
            stop: wire::parse_stop(req.stop.as_ref())?,
            seed: req.seed,
        },
        options: ChatOptions {
            tools,
            tool_choice,
            parallel_tool_calls: req.parallel_tool_calls,
            response_format,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            // Alternatives come only with log probabilities: asking for
            // some asks for both.
            logprobs: req.logprobs == Some(true) || req.top_logprobs.is_some_and(|n| n > 0),
            top_logprobs: req.top_logprobs,
            max_completion_tokens: req.max_completion_tokens.is_some(),
            extra: req
                .extra
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        },
    })
}

/// The OpenAI form of tool-call deltas.
fn tool_call_chunks(delta: ToolCallDelta) -> Vec<wire::ToolCallChunk> {
    vec![wire::ToolCallChunk {
        index: delta.index,
        kind: delta.id.as_ref().map(|_| "function".to_owned()),
        id: delta.id,
        function: wire::FunctionChunk {
            name: delta.name,
            arguments: Some(delta.arguments),
        },
    }]
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    gateway: &Gateway,
    caller: &Caller,
    opts: CallOptions,
    body: &[u8],
) -> Reply {
    let parsed: Result<wire::ChatCompletionRequest, _> = parse_body(body);
    let (raw, req) = match parsed.and_then(|raw| chat_request(&raw).map(|req| (raw, req))) {
        Ok(pair) => pair,
        Err(e) => return Reply::error(&e, &caller.request_id),
    };
    let requested = req.model.clone();
    if raw.stream != Some(true) {
        return match gateway.chat(caller, &opts, req).await {
            Ok(answer) => {
                let completion = wire::ChatCompletion {
                    id: completion_id(),
                    object: "chat.completion".to_owned(),
                    created: unix_seconds(),
                    model: requested,
                    choices: vec![wire::Choice {
                        index: 0,
                        message: wire::ResponseMessage {
                            role: "assistant".to_owned(),
                            // OpenAI's shape: no text beside tool calls is null.
                            content: (!answer.value.content.is_empty()
                                || answer.value.tool_calls.is_empty())
                            .then_some(answer.value.content),
                            tool_calls: (!answer.value.tool_calls.is_empty()).then(|| {
                                answer
                                    .value
                                    .tool_calls
                                    .iter()
                                    .map(wire::ToolCall::from_call)
                                    .collect()
                            }),
                            refusal: None,
                        },
                        finish_reason: Some(answer.value.finish_reason.as_str().to_owned()),
                        logprobs: answer.value.logprobs,
                    }],
                    usage: Some(wire::CompletionUsage {
                        prompt_tokens: answer.usage.input_tokens,
                        completion_tokens: answer.usage.output_tokens,
                        total_tokens: answer.usage.input_tokens + answer.usage.output_tokens,
                    }),
                };
                Reply::json(200, &completion).with_provider(answer.provider, answer.model)
            }
            Err(e) => Reply::error(&e, &caller.request_id),
        };
    }
    let include_usage = raw.stream_options.is_some_and(|o| o.include_usage);
    match gateway.chat_stream(caller, &opts, req).await {
        Ok(answer) => {
            let id = completion_id();
            let created = unix_seconds();
            let request_id = caller.request_id.clone();
            let chunk = move |delta: wire::Delta, finish: Option<&str>| wire::ChatCompletionChunk {
                id: id.clone(),
                object: "chat.completion.chunk".to_owned(),
                created,
                model: requested.clone(),
                choices: vec![wire::ChunkChoice {
                    index: 0,
                    delta,
                    finish_reason: finish.map(str::to_owned),
                    logprobs: None,
                }],
                usage: None,
            };
            let role = sse_frame(
                None,
                &chunk(
                    wire::Delta {
                        role: Some("assistant".to_owned()),
                        content: Some(String::new()),
                        tool_calls: None,
                    },
                    None,
                ),
            );
            let events = answer.value.map(move |item| match item {
                Ok(StreamEvent::Delta(text)) => sse_frame(
                    None,
                    &chunk(
                        wire::Delta {
                            content: Some(text),
                            ..wire::Delta::default()
                        },
                        None,
                    ),
                ),
                Ok(StreamEvent::ToolCall(delta)) => sse_frame(
                    None,
                    &chunk(
                        wire::Delta {
                            tool_calls: Some(tool_call_chunks(delta)),
                            ..wire::Delta::default()
                        },
                        None,
                    ),
                ),
                Ok(StreamEvent::Logprobs(logprobs)) => {
                    let mut c = chunk(wire::Delta::default(), None);
                    if let Some(choice) = c.choices.first_mut() {
                        choice.logprobs = Some(logprobs);
                    }
                    sse_frame(None, &c)
                }
                Ok(StreamEvent::Done {
                    finish_reason,
                    usage,
                }) => {
                    let mut out = sse_frame(
                        None,
                        &chunk(wire::Delta::default(), Some(finish_reason.as_str())),
                    )
                    .to_vec();
                    if include_usage {
                        let mut last = chunk(wire::Delta::default(), None);
                        last.choices.clear();
                        last.usage = Some(match usage {
                            Some(u) => wire::CompletionUsage {
                                prompt_tokens: u.input,
                                completion_tokens: u.output,
                                total_tokens: u.input + u.output,
                            },
                            None => wire::CompletionUsage {
                                prompt_tokens: 0,
                                completion_tokens: 0,
                                total_tokens: 0,
                            },
                        });
                        out.extend_from_slice(&sse_frame(None, &last));
                    }
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    Bytes::from(out)
                }
                // In-band, as OpenAI does: the client raises it as an APIError.
                Err(e) => sse_frame(None, &super::error_body(&e, &request_id)),
            });
            Reply::streaming(
                SSE,
                answer.provider,
                answer.model,
                stream::once(async move { role }).chain(events).boxed(),
            )
        }
        Err(e) => Reply::error(&e, &caller.request_id),
    }
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    gateway: &Gateway,
    caller: &Caller,
    opts: CallOptions,
    body: &[u8],
) -> Reply {
    let parsed = parse_body::<wire::EmbeddingRequest>(body).and_then(|raw| {
        let inputs = wire::embedding_inputs(&raw.input)?;
        match raw.encoding_format.as_deref() {
            None | Some("float") | Some("base64") => Ok((raw, inputs)),
            Some(other) => Err(GatewayError::invalid(format!(
                "encoding_format {other:?} is not supported: use float or base64"
            ))),
        }
    });
    let (raw, inputs) = match parsed {
        Ok(p) => p,
        Err(e) => return Reply::error(&e, &caller.request_id),
    };
    let base64 = raw.encoding_format.as_deref() == Some("base64");
    let req = EmbedRequest {
        model: raw.model.clone(),
        inputs,
    };
    match gateway.embed(caller, &opts, req).await {
        Ok(answer) => {
            let data = answer
                .value
                .embeddings
                .iter()
                .enumerate()
                .map(|(i, v)| wire::Embedding {
                    object: "embedding".to_owned(),
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    embedding: if base64 {
                        serde_json::Value::String(wire::embedding_base64(v))
                    } else {
                        serde_json::Value::from(v.clone())
                    },
                })
                .collect();
            let response = wire::EmbeddingResponse {
                object: "list".to_owned(),
                data,
                model: raw.model,
                usage: Some(wire::EmbeddingUsage {
                    prompt_tokens: answer.usage.input_tokens,
                    total_tokens: answer.usage.input_tokens,
                }),
            };
            Reply::json(200, &response).with_provider(answer.provider, answer.model)
        }
        Err(e) => Reply::error(&e, &caller.request_id),
    }
}

/// `GET /v1/models/{id}`: a model the gateway routes, or 404 `model_not_found`.
pub async fn model(gateway: &Gateway, id: &str, request_id: &str) -> Reply {
    let models = gateway.models().await;
    match models.into_iter().find(|m| m.id == id) {
        Some(m) => {
            let mut reply = Reply::json(
                200,
                &wire::Model {
                    id: m.id,
                    object: "model".to_owned(),
                    created: 0,
                    owned_by: m.provider,
                },
            );
            reply.provider = Some("gateway".to_owned());
            reply
        }
        None => Reply::error(
            &GatewayError::ModelNotFound {
                model: id.to_owned(),
                tried: "every configured provider's model list".to_owned(),
            },
            request_id,
        ),
    }
}

/// `GET /v1/models`.
pub async fn models(gateway: &Gateway) -> Reply {
    let data = gateway
        .models()
        .await
        .into_iter()
        .map(|m| wire::Model {
            id: m.id,
            object: "model".to_owned(),
            created: 0,
            owned_by: m.provider,
        })
        .collect();
    let mut reply = Reply::json(
        200,
        &wire::ModelList {
            object: "list".to_owned(),
            data,
        },
    );
    reply.provider = Some("gateway".to_owned());
    reply
}

/// The legacy completions request fields the gateway translates; any other
/// is refused by name.
const COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "n",
    "stream",
    "stream_options",
    "presence_penalty",
    "frequency_penalty",
    "user",
];

/// The canonical request of a legacy completion: its prompt as one user
/// message (the gateway routes chats; providers answer prompts as chats).
fn completion_request(
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<(ChatRequest, bool, bool), GatewayError> {
    use serde_json::Value;
    super::refuse_unknown_fields(
        body,
        COMPLETION_FIELDS,
        "/v1/completions here (the gateway answers prompts as chats; /v1/chat/completions takes more)",
    )?;
    let prompt = match body.get("prompt") {
        Some(Value::String(p)) => p.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_owned()
        }
        _ => {
            return Err(GatewayError::invalid(
                "prompt must be a string (one prompt per request)",
            ));
        }
    };
    let mut chat = serde_json::Map::new();
    for (k, v) in body {
        if k != "prompt" {
            chat.insert(k.clone(), v.clone());
        }
    }
    chat.insert(
        "messages".to_owned(),
        serde_json::json!([{"role": "user", "content": prompt}]),
    );
    let raw: wire::ChatCompletionRequest = serde_json::from_value(Value::Object(chat))
        .map_err(|e| GatewayError::invalid(e.to_string()))?;
    let include_usage = raw.stream_options.is_some_and(|o| o.include_usage);
    let stream = raw.stream == Some(true);
    Ok((chat_request(&raw)?, stream, include_usage))
}

fn text_completion_id() -> String {
    format!("cmpl-{}", uuid::Uuid::now_v7().simple())
}

/// `POST /v1/completions` (OpenAI's legacy text completions).
pub async fn completions(
    gateway: &Gateway,
    caller: &Caller,
    opts: CallOptions,
    body: &[u8],
) -> Reply {
    use serde_json::json;
    let parsed = parse_body::<serde_json::Map<String, serde_json::Value>>(body)
        .and_then(|raw| completion_request(&raw));
    let (req, stream, include_usage) = match parsed {
        Ok(p) => p,
        Err(e) => return Reply::error(&e, &caller.request_id),
    };
    let requested = req.model.clone();
    let id = text_completion_id();
    let created = unix_seconds();
    if !stream {
        return match gateway.chat(caller, &opts, req).await {
            Ok(answer) => {
                let usage = answer.usage;
                let value = json!({
                    "id": id, "object": "text_completion", "created": created, "model": requested,
                    "choices": [{"text": answer.value.content, "index": 0, "logprobs": null,
                                 "finish_reason": answer.value.finish_reason.as_str()}],
                    "usage": {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                              "total_tokens": usage.input_tokens + usage.output_tokens},
                });
                Reply::json(200, &value).with_provider(answer.provider, answer.model)
            }
            Err(e) => Reply::error(&e, &caller.request_id),
        };
    }
    match gateway.chat_stream(caller, &opts, req).await {
        Ok(answer) => {
            let request_id = caller.request_id.clone();
            let chunk = move |text: &str, finish: Option<&str>| {
                json!({"id": id, "object": "text_completion", "created": created, "model": requested,
                       "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]})
            };
            let events = answer.value.map(move |item| match item {
                Ok(StreamEvent::Delta(text)) => sse_frame(None, &chunk(&text, None)),
                Ok(StreamEvent::Done {
                    finish_reason,
                    usage,
                }) => {
                    let mut last = chunk("", Some(finish_reason.as_str()));
                    if include_usage {
                        let u = usage.unwrap_or_default();
                        last["usage"] = json!({"prompt_tokens": u.input, "completion_tokens": u.output,
                                               "total_tokens": u.input + u.output});
                    }
                    let mut out = sse_frame(None, &last).to_vec();
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    Bytes::from(out)
                }
                // A prompt offers no tools; nothing else streams here.
                Ok(StreamEvent::ToolCall(_) | StreamEvent::Logprobs(_)) => Bytes::new(),
                Err(e) => sse_frame(None, &super::error_body(&e, &request_id)),
            });
            Reply::streaming(SSE, answer.provider, answer.model, events.boxed())
        }
        Err(e) => Reply::error(&e, &caller.request_id),
    }
}
