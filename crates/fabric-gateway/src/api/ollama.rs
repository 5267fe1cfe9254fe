//! The Ollama-compatible front end: what an agent reaches at its
//! `OLLAMA_BASE_URL`. [`handle`] takes the method, path and body of any
//! request to that endpoint, so the sandbox listener, the sidecar's forwarded
//! calls and the main API's `/v1/ollama/...` routes share one entry point.
//!
//! Streams are NDJSON (Ollama's default when `stream` is absent: true); an
//! error after the stream started is one `{"error": "..."}` line, as Ollama
//! sends it.

use futures_util::StreamExt as _;

use serde_json::Value;

use super::{NDJSON, Reply, ndjson_line, parse_body};
use crate::error::GatewayError;
use crate::router::{CallOptions, Caller, Gateway};
use crate::types::{
    ChatOptions, ChatRequest, EmbedRequest, Message, ResponseFormat, Role, StreamEvent,
};
use crate::wire::ollama as wire;
use crate::wire::openai as openai_wire;
use crate::wire::rfc3339_now;

/// Dispatches one request of the Ollama API. `path` starts at `/api/...`
/// (or is `/`); anything else the endpoint does not serve is a 404 with the
/// uniform error body.
pub async fn handle(
    gateway: &Gateway,
    caller: &Caller,
    opts: CallOptions,
    method: &str,
    path: &str,
    body: &[u8],
) -> Reply {
    let path = path.trim_end_matches('/');
    match (method, path) {
        ("POST", "/api/chat") => chat(gateway, caller, opts, body).await,
        ("POST", "/api/generate") => generate(gateway, caller, opts, body).await,
        ("POST", "/api/embed") => embed(gateway, caller, opts, body).await,
        ("POST", "/api/embeddings") => embeddings(gateway, caller, opts, body).await,
        ("GET" | "HEAD", "/api/tags") => tags(gateway).await,
        ("POST", "/api/show") => show(gateway, caller, body).await,
        ("GET" | "HEAD", "/api/ps") => {
            gateway_reply(Reply::json(200, &serde_json::json!({ "models": [] })))
        }
        ("GET" | "HEAD", "/api/version") => gateway_reply(Reply::json(
            200,
            &serde_json::json!({ "version": fabric_core::VERSION }),
        )),
        // Clients probe the root to see whether Ollama runs.
        ("GET" | "HEAD", "") => {
            let mut reply = gateway_reply(Reply::json(200, &"Ollama is running"));
            reply.content_type = "text/plain; charset=utf-8";
            reply.body = super::ReplyBody::Full(bytes::Bytes::from_static(b"Ollama is running"));
            reply
        }
        (_, p)
            if p.starts_with("/api/pull")
                || p.starts_with("/api/push")
                || p.starts_with("/api/create")
                || p.starts_with("/api/delete")
                || p.starts_with("/api/copy")
                || p.starts_with("/api/blobs") =>
        {
            Reply::error(
                &GatewayError::invalid(format!(
                    "{p} is not available here: models are managed by the fabric's operator, not by agents"
                )),
                &caller.request_id,
            )
        }
        (m, p) => {
            let mut reply = Reply::error(
                &GatewayError::invalid(format!(
                    "{m} {p} is not part of the Ollama API this endpoint serves: use /api/chat, /api/generate, /api/embed, /api/embeddings or /api/tags"
                )),
                &caller.request_id,
            );
            reply.status = 404;
            reply
        }
    }
}

fn gateway_reply(mut reply: Reply) -> Reply {
    reply.provider = Some("gateway".to_owned());
    reply
}

fn stats(usage: &crate::types::Usage, elapsed: std::time::Duration) -> wire::Stats {
    wire::Stats {
        total_duration: Some(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)),
        load_duration: Some(0),
        prompt_eval_count: Some(usage.input_tokens),
        prompt_eval_duration: Some(0),
        eval_count: Some(usage.output_tokens),
        eval_duration: Some(0),
    }
}

fn usage_of(counts: Option<crate::types::TokenCounts>) -> crate::types::Usage {
    counts.map_or_else(crate::types::Usage::default, |c| crate::types::Usage {
        input_tokens: c.input,
        output_tokens: c.output,
        estimated: false,
    })
}

/// Which Ollama answer shape a chat is rendered in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Chat,
    Generate,
}

/// Ollama's `format`: `"json"`, or a JSON schema the answer must match.
fn format_from(format: Option<&Value>) -> Result<Option<ResponseFormat>, GatewayError> {
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(ResponseFormat::JsonObject)),
        Some(schema @ Value::Object(_)) => Ok(Some(ResponseFormat::JsonSchema {
            name: "answer".to_owned(),
            description: None,
            schema: schema.clone(),
            strict: None,
        })),
        Some(_) => Err(GatewayError::invalid(
            "format must be \"json\" or a JSON schema object",
        )),
    }
}

/// Ollama's `tools` (OpenAI's function-tool shape).
fn tools_from(tools: Option<&Value>) -> Result<Vec<crate::types::Tool>, GatewayError> {
    match tools {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(value) => {
            let defs: Vec<openai_wire::ToolDefinition> = serde_json::from_value(value.clone())
                .map_err(|e| {
                    GatewayError::invalid(format!(
                        "tools must be an array of {{\"type\": \"function\", \"function\": {{name, description, parameters}}}}: {e}"
                    ))
                })?;
            openai_wire::tools_from(&defs)
        }
    }
}

fn options_of(
    options: Option<&wire::Options>,
    tools: Vec<crate::types::Tool>,
    format: Option<ResponseFormat>,
) -> (crate::types::Params, ChatOptions) {
    let params = options.map(wire::Options::to_params).unwrap_or_default();
    let chat = ChatOptions {
        tools,
        response_format: format,
        presence_penalty: options.and_then(|o| o.presence_penalty),
        frequency_penalty: options.and_then(|o| o.frequency_penalty),
        ..ChatOptions::default()
    };
    (params, chat)
}

async fn chat(gateway: &Gateway, caller: &Caller, opts: CallOptions, body: &[u8]) -> Reply {
    let parsed = parse_body::<wire::ChatRequest>(body).and_then(|raw| {
        let (params, options) = options_of(
            raw.options.as_ref(),
            tools_from(raw.tools.as_ref())?,
            format_from(raw.format.as_ref())?,
        );
        let req = ChatRequest {
            model: raw.model.clone(),
            messages: wire::messages_from(&raw.messages)?,
            params,
            options,
        };
        Ok((raw.stream.unwrap_or(true), req))
    });
    match parsed {
        Ok((stream, req)) => respond(gateway, caller, opts, req, stream, Shape::Chat).await,
        Err(e) => error(&e, &caller.request_id),
    }
}

async fn generate(gateway: &Gateway, caller: &Caller, opts: CallOptions, body: &[u8]) -> Reply {
    let parsed = parse_body::<wire::GenerateRequest>(body).and_then(|raw| {
        let images = wire::images_from(raw.images.as_ref(), "images")?;
        let mut messages = Vec::new();
        if let Some(system) = raw.system.as_ref().filter(|s| !s.is_empty()) {
            messages.push(Message::new(Role::System, system.clone()));
        }
        messages.push(Message {
            images,
            ..Message::new(Role::User, raw.prompt.clone())
        });
        let (params, options) = options_of(
            raw.options.as_ref(),
            Vec::new(),
            format_from(raw.format.as_ref())?,
        );
        let req = ChatRequest {
            model: raw.model.clone(),
            messages,
            params,
            options,
        };
        Ok((raw.stream.unwrap_or(true), req))
    });
    match parsed {
        Ok((stream, req)) => respond(gateway, caller, opts, req, stream, Shape::Generate).await,
        Err(e) => error(&e, &caller.request_id),
    }
}

/// An error as Ollama answers one: `{"error": "..."}` (its clients print
/// that string), with the fabric's `code` and `request_id` beside it and the
/// status and headers of the fabric's own errors.
fn error(err: &GatewayError, request_id: &str) -> Reply {
    let mut reply = Reply::error(err, request_id);
    reply.body = super::ReplyBody::Full(bytes::Bytes::from(
        serde_json::json!({
            "error": format!("{err} (request id {request_id})"),
            "code": err.code(),
            "request_id": request_id,
        })
        .to_string(),
    ));
    reply
}

/// Ollama's tool calls (arguments as objects) from canonical ones.
fn ollama_calls(calls: &[crate::types::ToolCall]) -> Option<Vec<wire::ToolCall>> {
    (!calls.is_empty()).then(|| {
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| wire::ToolCall {
                id: Some(c.id.clone()),
                function: wire::FunctionCall {
                    index: u32::try_from(i).ok(),
                    name: c.name.clone(),
                    arguments: wire::arguments_value(&c.arguments),
                },
            })
            .collect()
    })
}

/// Ollama's name for why an answer ended (a tool call is a plain stop there).
fn done_reason(reason: crate::types::FinishReason) -> String {
    match reason {
        crate::types::FinishReason::ToolCalls => "stop".to_owned(),
        other => other.as_str().to_owned(),
    }
}

async fn respond(
    gateway: &Gateway,
    caller: &Caller,
    opts: CallOptions,
    req: ChatRequest,
    stream: bool,
    shape: Shape,
) -> Reply {
    let requested = req.model.clone();
    let started = opts.started;
    if !stream {
        return match gateway.chat(caller, &opts, req).await {
            Ok(answer) => {
                let stats = stats(&answer.usage, started.elapsed());
                let reason = Some(done_reason(answer.value.finish_reason));
                let reply = match shape {
                    Shape::Chat => Reply::json(
                        200,
                        &wire::ChatResponse {
                            model: requested,
                            created_at: rfc3339_now(),
                            message: Some(wire::ResponseMessage {
                                role: "assistant".to_owned(),
                                content: answer.value.content,
                                tool_calls: ollama_calls(&answer.value.tool_calls),
                            }),
                            done: true,
                            done_reason: reason,
                            stats,
                        },
                    ),
                    Shape::Generate => Reply::json(
                        200,
                        &wire::GenerateResponse {
                            model: requested,
                            created_at: rfc3339_now(),
                            response: answer.value.content,
                            done: true,
                            done_reason: reason,
                            context: None,
                            stats,
                        },
                    ),
                };
                reply.with_provider(answer.provider, answer.model)
            }
            Err(e) => error(&e, &caller.request_id),
        };
    }
    match gateway.chat_stream(caller, &opts, req).await {
        Ok(answer) => {
            let part = move |text: String,
                             calls: Option<Vec<wire::ToolCall>>,
                             done: bool,
                             reason: Option<String>,
                             stats: wire::Stats| {
                match shape {
                    Shape::Chat => ndjson_line(&wire::ChatResponse {
                        model: requested.clone(),
                        created_at: rfc3339_now(),
                        message: Some(wire::ResponseMessage {
                            role: "assistant".to_owned(),
                            content: text,
                            tool_calls: calls,
                        }),
                        done,
                        done_reason: reason,
                        stats,
                    }),
                    Shape::Generate => ndjson_line(&wire::GenerateResponse {
                        model: requested.clone(),
                        created_at: rfc3339_now(),
                        response: text,
                        done,
                        done_reason: reason,
                        context: None,
                        stats,
                    }),
                }
            };
            // Ollama streams each tool call whole: pieces are gathered and
            // sent in one part before the last.
            let mut calls: Vec<crate::types::ToolCall> = Vec::new();
            let lines = answer.value.filter_map(move |item| {
                let line = match item {
                    Ok(StreamEvent::Delta(text)) => {
                        Some(part(text, None, false, None, wire::Stats::default()))
                    }
                    Ok(StreamEvent::ToolCall(delta)) => {
                        let at = usize::try_from(delta.index).unwrap_or(usize::MAX);
                        if at >= calls.len() && at < 1024 {
                            calls.resize_with(at + 1, crate::types::ToolCall::default);
                        }
                        if let Some(call) = calls.get_mut(at) {
                            if let Some(id) = delta.id {
                                call.id = id;
                            }
                            if let Some(name) = delta.name {
                                call.name = name;
                            }
                            call.arguments.push_str(&delta.arguments);
                        }
                        None
                    }
                    Ok(StreamEvent::Logprobs(_)) => None,
                    Ok(StreamEvent::Done {
                        finish_reason,
                        usage,
                    }) => {
                        let mut out = Vec::new();
                        if !calls.is_empty() {
                            out.extend_from_slice(&part(
                                String::new(),
                                ollama_calls(&std::mem::take(&mut calls)),
                                false,
                                None,
                                wire::Stats::default(),
                            ));
                        }
                        out.extend_from_slice(&part(
                            String::new(),
                            None,
                            true,
                            Some(done_reason(finish_reason)),
                            stats(&usage_of(usage), started.elapsed()),
                        ));
                        Some(bytes::Bytes::from(out))
                    }
                    Err(e) => Some(ndjson_line(&serde_json::json!({ "error": e.to_string() }))),
                };
                std::future::ready(line)
            });
            Reply::streaming(NDJSON, answer.provider, answer.model, lines.boxed())
        }
        Err(e) => error(&e, &caller.request_id),
    }
}

async fn embed(gateway: &Gateway, caller: &Caller, opts: CallOptions, body: &[u8]) -> Reply {
    let parsed = parse_body::<wire::EmbedRequest>(body)
        .and_then(|raw| wire::embed_inputs(&raw.input).map(|inputs| (raw.model, inputs)));
    let (model, inputs) = match parsed {
        Ok(p) => p,
        Err(e) => return error(&e, &caller.request_id),
    };
    let started = opts.started;
    let req = EmbedRequest {
        model: model.clone(),
        inputs,
    };
    match gateway.embed(caller, &opts, req).await {
        Ok(answer) => Reply::json(
            200,
            &wire::EmbedResponse {
                model,
                embeddings: answer.value.embeddings,
                total_duration: Some(u64::try_from(started.elapsed().as_nanos()).unwrap_or(0)),
                load_duration: Some(0),
                prompt_eval_count: Some(answer.usage.input_tokens),
            },
        )
        .with_provider(answer.provider, answer.model),
        Err(e) => error(&e, &caller.request_id),
    }
}

async fn embeddings(gateway: &Gateway, caller: &Caller, opts: CallOptions, body: &[u8]) -> Reply {
    let raw = match parse_body::<wire::EmbeddingsRequest>(body) {
        Ok(raw) => raw,
        Err(e) => return error(&e, &caller.request_id),
    };
    let req = EmbedRequest {
        model: raw.model,
        inputs: vec![raw.prompt],
    };
    match gateway.embed(caller, &opts, req).await {
        Ok(answer) => {
            let embedding = answer
                .value
                .embeddings
                .into_iter()
                .next()
                .unwrap_or_default();
            Reply::json(200, &wire::EmbeddingsResponse { embedding })
                .with_provider(answer.provider, answer.model)
        }
        Err(e) => error(&e, &caller.request_id),
    }
}

async fn tags(gateway: &Gateway) -> Reply {
    let modified_at = rfc3339_now();
    let models = gateway
        .models()
        .await
        .into_iter()
        .map(|m| wire::TagModel {
            name: m.id.clone(),
            model: m.id,
            modified_at: modified_at.clone(),
            size: 0,
            digest: String::new(),
            details: serde_json::json!({
                "format": "",
                "family": m.provider,
                "families": null,
                "parameter_size": "",
                "quantization_level": "",
            }),
        })
        .collect();
    gateway_reply(Reply::json(200, &wire::TagsResponse { models }))
}

async fn show(gateway: &Gateway, caller: &Caller, body: &[u8]) -> Reply {
    let model = match parse_body::<serde_json::Value>(body) {
        Ok(v) => v
            .get("model")
            .or_else(|| v.get("name"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        Err(e) => return error(&e, &caller.request_id),
    };
    let Some(info) = gateway.models().await.into_iter().find(|m| m.id == model) else {
        return Reply::error(
            &GatewayError::ModelNotFound {
                model,
                tried: "any configured provider".to_owned(),
            },
            &caller.request_id,
        );
    };
    gateway_reply(Reply::json(
        200,
        &serde_json::json!({
            "modelfile": "",
            "parameters": "",
            "template": "",
            "details": {"format": "", "family": info.provider, "parameter_size": "", "quantization_level": ""},
            "model_info": {},
            "capabilities": ["completion", "embedding"],
        }),
    ))
}
