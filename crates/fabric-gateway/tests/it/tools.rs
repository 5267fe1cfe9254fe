//! Issue #18: tool calling, structured output and the OpenAI fields beyond
//! text, through the OpenAI front end to each kind of provider (the mock
//! upstreams record what reached them): forwarded unchanged to an
//! OpenAI-compatible upstream, translated for Ollama and Anthropic, refused
//! with a 400 naming the field where a provider cannot honour it.

use fabric_gateway::api::{ollama, openai};
use fabric_gateway::mock::Script;
use fabric_gateway::mock::server::MockServer;
use fabric_gateway::{CallOptions, GatewayConfig, ProviderKind};
use serde_json::{Value, json};

use crate::harness::{body, caller, gateway, local_cloud, mock_with, provider, sse_data};

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// A mock whose script calls `weather` for "weather in Oslo", then answers
/// the tool's "rain" with JSON.
async fn scripted(name: &str) -> MockServer {
    mock_with(name, |c| {
        c.script = Script::from_value(&json!({
            "weather in Oslo": {"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]},
            "rain": {"json": {"umbrella": true}},
        }))
        .unwrap();
    })
    .await
}

fn one(kind: ProviderKind, name: &str, upstream: &MockServer) -> GatewayConfig {
    GatewayConfig {
        providers: vec![provider(name, kind, upstream)],
        ..GatewayConfig::default()
    }
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": true}})
}

/// Every field of the chat completions API a caller may send (item 1 of
/// the issue), with a tool loop in its history.
fn every_field() -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "weather in Oslo? and this:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "rain"}
        ],
        "tools": [weather_tool()],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "parallel_tool_calls": false,
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": {"type": "object", "properties": {"umbrella": {"type": "boolean"}}}, "strict": true}},
        "logprobs": true,
        "top_logprobs": 2,
        "n": 1,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "seed": 7,
        "stop": ["END"],
        "user": "alice-42",
        "max_completion_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "reasoning_effort": "low",
        "metadata": {"run": "r1"},
        "logit_bias": {"50256": -100},
        "service_tier": "default",
        "x_vendor_option": {"nested": [1, 2]}
    })
}

#[tokio::test]
async fn every_openai_field_reaches_an_openai_upstream_unchanged() {
    let upstream = scripted("cloud").await;
    let (gw, _) = gateway(one(ProviderKind::Openai, "openai", &upstream));
    let sent = every_field();
    let (status, provider, text) = body(
        openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &bytes(&sent)).await,
    )
    .await;
    assert_eq!(
        (status, provider.as_deref()),
        (200, Some("openai")),
        "{text}"
    );
    let got = upstream
        .control()
        .last_body("/v1/chat/completions")
        .expect("the upstream got the request");
    let mut expected = sent.as_object().unwrap().clone();
    // `n: 1` is the default: the gateway asks for one choice either way.
    expected.remove("n");
    assert_eq!(
        Value::Object(expected),
        got,
        "the upstream got the request as sent"
    );
    // The answer: the tool's "rain" was answered with the scripted JSON.
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        r#"{"umbrella":true}"#
    );
}

#[tokio::test]
async fn tool_calls_come_back_from_every_provider_kind_plain_and_streamed() {
    for (kind, name) in [
        (ProviderKind::Openai, "openai"),
        (ProviderKind::Ollama, "ollama"),
        (ProviderKind::Anthropic, "anthropic"),
    ] {
        let upstream = scripted(name).await;
        let (gw, _) = gateway(one(kind, name, &upstream));
        let req = json!({"model": "llama3", "tools": [weather_tool()],
                         "messages": [{"role": "user", "content": "weather in Oslo?"}]});
        let (status, _, text) = body(
            openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &bytes(&req))
                .await,
        )
        .await;
        assert_eq!(status, 200, "{name}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{name}: {v}");
        assert_eq!(choice["message"]["content"], Value::Null, "{name}: {v}");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function", "{name}");
        assert_eq!(call["function"]["name"], "weather", "{name}");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Oslo"}), "{name}");
        let id = call["id"].as_str().unwrap().to_owned();
        assert!(!id.is_empty(), "{name}: a call has an id");

        // The tools reached the upstream in its own format.
        let (path, tool_name) = match kind {
            ProviderKind::Ollama => ("/api/chat", "/tools/0/function/name"),
            ProviderKind::Anthropic => ("/v1/messages", "/tools/0/name"),
            _ => ("/v1/chat/completions", "/tools/0/function/name"),
        };
        let got = upstream.control().last_body(path).unwrap();
        assert_eq!(
            got.pointer(tool_name),
            Some(&json!("weather")),
            "{name}: {got}"
        );

        // Streamed: the deltas reassemble into the same call.
        let mut streamed = req.clone();
        streamed["stream"] = json!(true);
        let (status, _, text) = body(
            openai::chat_completions(
                &gw,
                &caller(),
                CallOptions::new("openai"),
                &bytes(&streamed),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{name}: {text}");
        let chunks = sse_data(&text);
        let mut arguments = String::new();
        let mut names = Vec::new();
        let mut finish = None;
        for c in &chunks {
            for d in c["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                assert_eq!(d["index"], 0, "{name}");
                if let Some(n) = d["function"]["name"].as_str() {
                    names.push(n.to_owned());
                }
                arguments.push_str(d["function"]["arguments"].as_str().unwrap_or_default());
            }
            if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
                finish = Some(f.to_owned());
            }
        }
        assert_eq!(names, ["weather"], "{name}: {text}");
        assert_eq!(
            serde_json::from_str::<Value>(&arguments).unwrap(),
            json!({"city": "Oslo"}),
            "{name}"
        );
        assert_eq!(finish.as_deref(), Some("tool_calls"), "{name}");

        // Round two: the tool's result goes back, the answer is the JSON.
        let follow = json!({"model": "llama3", "tools": [weather_tool()],
        "messages": [
            {"role": "user", "content": "weather in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "rain"}
        ]});
        let (status, _, text) = body(
            openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &bytes(&follow))
                .await,
        )
        .await;
        assert_eq!(status, 200, "{name}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"], r#"{"umbrella":true}"#,
            "{name}: {v}"
        );
        // The result travelled in the upstream's own shape.
        let got = upstream.control().last_body(path).unwrap();
        match kind {
            ProviderKind::Ollama => {
                assert_eq!(got["messages"][2]["role"], "tool", "{got}");
                assert_eq!(got["messages"][2]["tool_name"], "weather", "{got}");
                assert_eq!(
                    got["messages"][1]["tool_calls"][0]["function"]["arguments"],
                    json!({"city": "Oslo"})
                );
            }
            ProviderKind::Anthropic => {
                assert_eq!(
                    got["messages"][1]["content"][0]["type"], "tool_use",
                    "{got}"
                );
                assert_eq!(got["messages"][2]["role"], "user", "{got}");
                assert_eq!(got["messages"][2]["content"][0]["type"], "tool_result");
                assert_eq!(got["messages"][2]["content"][0]["tool_use_id"], json!(id));
            }
            _ => assert_eq!(got["messages"][2]["tool_call_id"], json!(id), "{got}"),
        }
    }
}

#[tokio::test]
async fn answer_formats_are_translated_for_ollama_and_anthropic() {
    let schema = json!({"type": "object", "properties": {"umbrella": {"type": "boolean"}}});
    let req = json!({"model": "llama3",
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
        "messages": [{"role": "user", "content": "is it rain?"}]});

    let ollama_up = scripted("ollama").await;
    let (gw, _) = gateway(one(ProviderKind::Ollama, "ollama", &ollama_up));
    let (status, _, text) = body(
        openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &bytes(&req)).await,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let got = ollama_up.control().last_body("/api/chat").unwrap();
    assert_eq!(got["format"], schema, "Ollama gets the schema as format");

    let claude = scripted("anthropic").await;
    let (gw, _) = gateway(one(ProviderKind::Anthropic, "anthropic", &claude));
    let (status, _, text) = body(
        openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &bytes(&req)).await,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let got = claude.control().last_body("/v1/messages").unwrap();
    // Anthropic's way: a tool with the schema that the model must call.
    assert_eq!(got["tools"][0]["name"], "answer", "{got}");
    assert_eq!(got["tools"][0]["input_schema"], schema);
    assert_eq!(
        got["tool_choice"],
        json!({"type": "tool", "name": "answer"})
    );

    // `format: "json"` through the Ollama front end reaches Ollama as is.
    let (gw, _) = gateway(one(ProviderKind::Ollama, "ollama", &ollama_up));
    let native = json!({"model": "llama3", "format": "json", "stream": false,
                        "messages": [{"role": "user", "content": "hi"}], "images": []});
    let (status, _, text) = body(
        ollama::handle(
            &gw,
            &caller(),
            CallOptions::new("ollama"),
            "POST",
            "/api/chat",
            &bytes(&native),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        ollama_up.control().last_body("/api/chat").unwrap()["format"],
        "json"
    );
}

#[tokio::test]
async fn a_field_a_provider_cannot_honour_is_a_400_naming_it_or_falls_to_one_that_can() {
    let (local, cloud) = (scripted("local").await, scripted("cloud").await);
    let only_ollama = one(ProviderKind::Ollama, "ollama", &local);
    let (gw, _) = gateway(only_ollama);
    for (field, value) in [
        ("logprobs", json!(true)),
        ("tool_choice", json!("required")),
        ("reasoning_effort", json!("low")),
        ("parallel_tool_calls", json!(false)),
    ] {
        let mut req = json!({"model": "llama3", "tools": [weather_tool()],
                             "messages": [{"role": "user", "content": "hi"}]});
        req[field] = value;
        let (status, _, text) = body(
            openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &bytes(&req))
                .await,
        )
        .await;
        assert_eq!(status, 400, "{field}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(field) && message.contains("provider ollama"),
            "{field}: {message}"
        );
    }
    assert_eq!(
        local.control().requests(),
        0,
        "nothing reached the provider"
    );

    // With a cloud behind it, the request goes where it can be honoured.
    let mut both = one(ProviderKind::Ollama, "ollama", &local);
    both.providers
        .push(provider("openai", ProviderKind::Openai, &cloud));
    let (gw, _) = gateway(both);
    let req = json!({"model": "llama3", "logprobs": true,
                     "messages": [{"role": "user", "content": "hi"}]});
    let (status, provider, text) = body(
        openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &bytes(&req)).await,
    )
    .await;
    assert_eq!(
        (status, provider.as_deref()),
        (200, Some("openai")),
        "{text}"
    );

    // Anthropic has no seed: refused, not dropped.
    let claude = scripted("anthropic").await;
    let (gw, _) = gateway(one(ProviderKind::Anthropic, "anthropic", &claude));
    let req =
        json!({"model": "claude", "seed": 3, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, text) = body(
        openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &bytes(&req)).await,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("seed by provider anthropic"), "{text}");

    // An image's resolution hint is OpenAI's: refused by the others, kept
    // for an OpenAI-compatible upstream.
    let image = |detail: &str| {
        json!({"model": "llama3", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is it?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": detail}}]}]})
    };
    let (status, _, text) = body(
        openai::chat_completions(
            &gw,
            &caller(),
            CallOptions::new("openai"),
            &bytes(&image("high")),
        )
        .await,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("messages[0] image detail by provider anthropic"),
        "{text}"
    );
    let (status, _, text) = body(
        openai::chat_completions(
            &gw,
            &caller(),
            CallOptions::new("openai"),
            &bytes(&image("auto")),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "auto is every provider's default: {text}");
    let openai_up = scripted("openai").await;
    let (gw, _) = gateway(one(ProviderKind::Openai, "openai", &openai_up));
    let (status, _, text) = body(
        openai::chat_completions(
            &gw,
            &caller(),
            CallOptions::new("openai"),
            &bytes(&image("low")),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let got = openai_up
        .control()
        .last_body("/v1/chat/completions")
        .unwrap();
    assert_eq!(
        got["messages"][0]["content"][1]["image_url"]["detail"], "low",
        "{got}"
    );
}

#[tokio::test]
async fn malformed_tool_fields_are_400s_that_say_what_to_send() {
    let upstream = scripted("cloud").await;
    let (gw, _) = gateway(one(ProviderKind::Openai, "openai", &upstream));
    for (req, says) in [
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]}),
            "send tools and tool_choice",
        ),
        (
            json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
            "tool_call_id",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [weather_tool()]}),
            "not among the tools",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}}),
            "json_schema",
        ),
    ] {
        let (status, _, text) = body(
            openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &bytes(&req))
                .await,
        )
        .await;
        assert_eq!(status, 400, "{req}: {text}");
        assert!(text.contains(says), "{req}: {text}");
    }
    // An empty tool_calls list is no call: accepted.
    let req = json!({"model": "m", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "y", "tool_calls": []},
        {"role": "user", "content": "z"}]});
    let (status, _, text) = body(
        openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &bytes(&req)).await,
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

/// The Anthropic front end (`/v1/messages`) in front of any provider: tools
/// in Anthropic's shape out, `tool_use` blocks back (streamed as
/// `input_json_delta`s), a `tool_result` round, errors in Anthropic's shape.
#[tokio::test]
async fn anthropic_messages_run_a_tool_loop_through_any_provider() {
    use fabric_gateway::api::anthropic;
    let upstream = scripted("local").await;
    let (gw, _) = gateway(one(ProviderKind::Ollama, "ollama", &upstream));
    let tools = json!([{"name": "weather", "description": "Weather of a city",
                        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let req = json!({"model": "llama3", "max_tokens": 200, "tools": tools,
                     "messages": [{"role": "user", "content": "weather in Oslo?"}]});
    let call = |req: Value| {
        let gw = gw.clone();
        async move {
            body(
                anthropic::messages(&gw, &caller(), CallOptions::new("anthropic"), &bytes(&req))
                    .await,
            )
            .await
        }
    };
    let (status, provider, text) = call(req.clone()).await;
    assert_eq!(
        (status, provider.as_deref()),
        (200, Some("ollama")),
        "{text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["stop_reason"], "tool_use", "{v}");
    let block = &v["content"][0];
    assert_eq!(block["type"], "tool_use", "{v}");
    assert_eq!(block["name"], "weather");
    assert_eq!(block["input"], json!({"city": "Oslo"}));
    let id = block["id"].as_str().unwrap().to_owned();

    let mut streamed = req.clone();
    streamed["stream"] = json!(true);
    let (status, _, text) = call(streamed).await;
    assert_eq!(status, 200, "{text}");
    let events = sse_data(&text);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"message_start"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"message_stop"), "{kinds:?}");
    let start = events
        .iter()
        .find(|e| e["type"] == "content_block_start")
        .unwrap();
    assert_eq!(start["content_block"]["type"], "tool_use", "{text}");
    assert_eq!(start["content_block"]["name"], "weather");
    let json_text: String = events
        .iter()
        .filter(|e| e["delta"]["type"] == "input_json_delta")
        .filter_map(|e| e["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&json_text).unwrap(),
        json!({"city": "Oslo"})
    );
    let delta = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");

    let follow = json!({"model": "llama3", "max_tokens": 200, "tools": tools, "messages": [
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": [block]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "rain"}]}
    ]});
    let (status, _, text) = call(follow).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["content"][0]["text"], r#"{"umbrella":true}"#, "{v}");
    assert_eq!(v["stop_reason"], "end_turn");
    let got = upstream.control().last_body("/api/chat").unwrap();
    assert_eq!(got["messages"][2]["role"], "tool", "{got}");
    assert_eq!(got["messages"][2]["tool_name"], "weather", "{got}");

    // Errors in Anthropic's shape.
    let (status, _, text) = call(json!({"model": "llama3", "messages": []})).await;
    assert_eq!(status, 400, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens"),
        "{v}"
    );
}

/// `/v1/completions` (legacy): a prompt answered as a chat, plain and
/// streamed; fields it cannot translate are refused by name.
#[tokio::test]
async fn legacy_completions_answer_prompts() {
    let upstream = scripted("local").await;
    let (gw, _) = gateway(one(ProviderKind::Ollama, "ollama", &upstream));
    let req = json!({"model": "llama3", "prompt": "say hi", "max_tokens": 20});
    let (status, _, text) =
        body(openai::completions(&gw, &caller(), CallOptions::new("openai"), &bytes(&req)).await)
            .await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "echo: say hi");
    assert_eq!(v["usage"]["completion_tokens"], 3);

    let streamed = json!({"model": "llama3", "prompt": "a b", "stream": true});
    let (status, _, text) = body(
        openai::completions(
            &gw,
            &caller(),
            CallOptions::new("openai"),
            &bytes(&streamed),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let chunks = sse_data(&text);
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(joined, "echo: a b");
    assert_eq!(chunks.last(), Some(&json!("[DONE]")));

    for (field, value) in [
        ("echo", json!(true)),
        ("suffix", json!("x")),
        ("best_of", json!(2)),
    ] {
        let mut bad = req.clone();
        bad[field] = value;
        let (status, _, text) = body(
            openai::completions(&gw, &caller(), CallOptions::new("openai"), &bytes(&bad)).await,
        )
        .await;
        assert_eq!(status, 400, "{field}: {text}");
        assert!(text.contains(field), "{field}: {text}");
    }
}

/// `/v1/responses` (stateless): function calls back as output items, the
/// conversation sent whole with `function_call_output`s, streamed events
/// numbered and closed in order.
#[tokio::test]
async fn responses_run_a_tool_loop_statelessly() {
    use fabric_gateway::api::responses;
    let upstream = scripted("local").await;
    let (gw, _) = gateway(one(ProviderKind::Ollama, "ollama", &upstream));
    let tools = json!([{"type": "function", "name": "weather", "parameters": {"type": "object"}}]);
    let call = |req: Value| {
        let gw = gw.clone();
        async move {
            body(
                responses::responses(&gw, &caller(), CallOptions::new("openai"), &bytes(&req))
                    .await,
            )
            .await
        }
    };
    let (status, _, text) =
        call(json!({"model": "llama3", "input": "weather in Oslo?", "tools": tools})).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    let item = &v["output"][0];
    assert_eq!(item["type"], "function_call", "{v}");
    assert_eq!(item["name"], "weather");
    let call_id = item["call_id"].as_str().unwrap().to_owned();

    let (status, _, text) = call(json!({"model": "llama3", "tools": tools, "input": [
        {"role": "user", "content": "weather in Oslo?"},
        {"type": "function_call", "call_id": call_id, "name": "weather", "arguments": "{\"city\":\"Oslo\"}"},
        {"type": "function_call_output", "call_id": call_id, "output": "rain"}
    ]}))
    .await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["output"][0]["type"], "message", "{v}");
    assert_eq!(v["output"][0]["content"][0]["text"], r#"{"umbrella":true}"#);

    let (status, _, text) = call(
        json!({"model": "llama3", "input": "weather in Oslo?", "tools": tools, "stream": true}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let events = sse_data(&text);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");
    assert!(
        kinds.contains(&"response.function_call_arguments.delta"),
        "{kinds:?}"
    );
    let numbers: Vec<u64> = events
        .iter()
        .filter_map(|e| e["sequence_number"].as_u64())
        .collect();
    assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>());
    let completed = events.last().unwrap();
    assert_eq!(
        completed["response"]["output"][0]["arguments"],
        r#"{"city":"Oslo"}"#
    );

    let (status, _, text) =
        call(json!({"model": "llama3", "input": "x", "previous_response_id": "resp_1"})).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("stores no responses"), "{text}");
}

/// Item 2 of the issue: the local model starts a tool loop, stops, and the
/// cloud (another wire format) finishes it: the call's id made up for
/// Ollama's answer is the `tool_use` id Anthropic is shown.
#[tokio::test]
async fn fallback_to_the_cloud_keeps_a_tool_loop_going() {
    let (local, cloud) = (scripted("local").await, scripted("cloud").await);
    let mut config = local_cloud(&local, &cloud);
    config.providers[1] = provider("anthropic", ProviderKind::Anthropic, &cloud);
    let (gw, _) = gateway(config);
    let ask = |req: Value| {
        let gw = &gw;
        async move {
            let (status, provider, text) = body(
                openai::chat_completions(gw, &caller(), CallOptions::new("openai"), &bytes(&req))
                    .await,
            )
            .await;
            assert_eq!(status, 200, "{text}");
            (provider.unwrap_or_default(), text)
        }
    };
    let first = json!({"model": "llama3", "tools": [weather_tool()],
                       "messages": [{"role": "user", "content": "weather in Oslo?"}]});
    let (provider, text) = ask(first).await;
    assert_eq!(provider, "ollama");
    let v: Value = serde_json::from_str(&text).unwrap();
    let call = v["choices"][0]["message"]["tool_calls"][0].clone();
    let id = call["id"].as_str().unwrap().to_owned();

    local.stop().await;
    for stream in [false, true] {
        let follow = json!({"model": "llama3", "tools": [weather_tool()], "stream": stream,
        "messages": [
            {"role": "user", "content": "weather in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "rain"}
        ]});
        let (provider, text) = ask(follow).await;
        assert_eq!(provider, "anthropic", "stream {stream}");
        let answer = if stream {
            sse_data(&text)
                .iter()
                .filter_map(|c| {
                    c["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_owned)
                })
                .collect::<String>()
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(answer, r#"{"umbrella":true}"#, "stream {stream}: {text}");
        let got = cloud.control().last_body("/v1/messages").unwrap();
        assert_eq!(got["messages"][1]["content"][0]["id"], json!(id), "{got}");
        assert_eq!(got["messages"][2]["content"][0]["tool_use_id"], json!(id));
    }
}
