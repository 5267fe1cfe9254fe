//! The served APIs (OpenAI-compatible, Ollama-compatible, `/v1/llm/infer`)
//! through the router to HTTP mocks: response shapes, SSE and NDJSON streams,
//! in-band stream errors, the uniform error body, the guard seam.

use std::sync::Arc;

use fabric_core::UsageRecord;
use fabric_gateway::api::{infer, ollama, openai};
use fabric_gateway::{
    Admission, Admitted, CallGuard, CallOptions, Caller, Estimate, GatewayError, GuardFuture,
};
use serde_json::{Value, json};

use crate::harness::{body, caller, gateway, local_cloud, mock, sse_data};

fn bytes(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

/// Asserts the uniform error body and returns its code.
fn error_code(text: &str) -> String {
    let v: Value = serde_json::from_str(text).unwrap();
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(e["request_id"], "req_test", "{v}");
    e["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn openai_chat_completions_plain_and_streamed() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    let (gw, _) = gateway(local_cloud(&local, &cloud));
    let req = json!({"model": "llama3", "messages": [{"role": "user", "content": "hi you"}]});
    let (status, provider, text) = body(
        openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &bytes(req)).await,
    )
    .await;
    assert_eq!((status, provider.as_deref()), (200, Some("ollama")));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "llama3");
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hi you");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 5);

    let req = json!({"model": "llama3", "stream": true, "stream_options": {"include_usage": true},
                     "messages": [{"role": "user", "content": "a b"}]});
    let reply =
        openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &bytes(req)).await;
    assert_eq!(reply.content_type, "text/event-stream");
    let (status, provider, text) = body(reply).await;
    assert_eq!((status, provider.as_deref()), (200, Some("ollama")));
    let data = sse_data(&text);
    assert_eq!(data[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = data
        .iter()
        .filter_map(|d| d["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "echo: a b");
    let n = data.len();
    assert_eq!(data[n - 3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(data[n - 2]["usage"]["completion_tokens"], 3);
    assert_eq!(data[n - 1], "[DONE]");
}

#[tokio::test]
async fn openai_stream_errors_are_in_band_without_done() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    let (gw, _) = gateway(local_cloud(&local, &cloud));
    let req = json!({"model": "m", "stream": true,
                     "messages": [{"role": "user", "content": "x [[mock:stream-error]]"}]});
    let (status, _, text) = body(
        openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &bytes(req)).await,
    )
    .await;
    assert_eq!(status, 200, "the stream had started");
    let data = sse_data(&text);
    let last = data.last().unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{text}");
    assert_eq!(last["error"]["provider"], "ollama");
    assert_eq!(last["error"]["request_id"], "req_test");
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn a_stream_that_fails_before_its_first_token_falls_back() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    let (gw, _) = gateway(local_cloud(&local, &cloud));
    local.control().fail_next(u64::MAX, 503);
    let req = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]});
    let (status, provider, text) = body(
        openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &bytes(req)).await,
    )
    .await;
    assert_eq!((status, provider.as_deref()), (200, Some("openai")));
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

#[tokio::test]
async fn requests_the_gateway_cannot_honour_are_400_with_the_uniform_body() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    let (gw, _) = gateway(local_cloud(&local, &cloud));
    for (req, expect) in [
        (b"{not json".to_vec(), "invalid JSON body"),
        (
            bytes(json!({"model": "m", "messages": []})),
            "messages must not be empty",
        ),
        (
            bytes(
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                      "tools": [{"type": "function"}]}),
            ),
            "tools",
        ),
        (
            bytes(json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]})),
            "n > 1",
        ),
        (
            bytes(
                json!({"model": "m", "temperature": 9, "messages": [{"role": "user", "content": "x"}]}),
            ),
            "temperature",
        ),
    ] {
        let (status, provider, text) =
            body(openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &req).await)
                .await;
        assert_eq!((status, provider.as_deref()), (400, Some("none")), "{text}");
        assert_eq!(error_code(&text), "invalid_request");
        assert!(text.contains(expect), "{text}");
    }
    assert_eq!(local.control().requests() + cloud.control().requests(), 0);
}

#[tokio::test]
async fn openai_embeddings_as_floats_or_base64_and_models() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    let (gw, _) = gateway(local_cloud(&local, &cloud));
    let req = json!({"model": "e", "input": ["a", "b c"]});
    let (status, provider, text) =
        body(openai::embeddings(&gw, &caller(), CallOptions::new("openai"), &bytes(req)).await)
            .await;
    assert_eq!((status, provider.as_deref()), (200, Some("ollama")));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    let req = json!({"model": "e", "input": "a", "encoding_format": "base64"});
    let (_, _, text) =
        body(openai::embeddings(&gw, &caller(), CallOptions::new("openai"), &bytes(req)).await)
            .await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v["data"][0]["embedding"].is_string(), "{v}");

    let (status, _, text) = body(openai::models(&gw).await).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "list");
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "llama3" && m["owned_by"] == "ollama"),
        "{v}"
    );
}

#[tokio::test]
async fn ollama_endpoint_chat_generate_embed_tags() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    let (gw, _) = gateway(local_cloud(&local, &cloud));
    let call = |method: &'static str, path: &'static str, req: Value| {
        let gw = gw.clone();
        async move {
            body(
                ollama::handle(
                    &gw,
                    &caller(),
                    CallOptions::new("ollama"),
                    method,
                    path,
                    &bytes(req),
                )
                .await,
            )
            .await
        }
    };

    // `stream` absent means streamed, as in Ollama.
    let (status, provider, text) = call(
        "POST",
        "/api/chat",
        json!({"model": "llama3", "messages": [{"role": "user", "content": "x y"}]}),
    )
    .await;
    assert_eq!((status, provider.as_deref()), (200, Some("ollama")));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let content: String = lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();
    assert_eq!(content, "echo: x y");
    let last = lines.last().unwrap();
    assert_eq!(
        (last["done"].clone(), last["done_reason"].clone()),
        (json!(true), json!("stop"))
    );
    assert_eq!(
        (
            last["prompt_eval_count"].clone(),
            last["eval_count"].clone()
        ),
        (json!(2), json!(3))
    );

    let (status, _, text) = call(
        "POST",
        "/api/generate",
        json!({"model": "llama3", "prompt": "p q", "stream": false}),
    )
    .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["response"].clone(), v["done"].clone()),
        (json!("echo: p q"), json!(true))
    );

    let (_, _, text) = call("POST", "/api/embed", json!({"model": "e", "input": "one"})).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["embeddings"][0].as_array().unwrap().len(), 8);
    let (_, _, text) = call(
        "POST",
        "/api/embeddings",
        json!({"model": "e", "prompt": "one"}),
    )
    .await;
    let w: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(w["embedding"], v["embeddings"][0]);

    let (status, provider, text) = call("GET", "/api/tags", Value::Null).await;
    assert_eq!((status, provider.as_deref()), (200, Some("gateway")));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "llama3"),
        "{v}"
    );

    let (status, _, text) = call(
        "POST",
        "/api/chat",
        json!({"model": "m", "stream": true,
        "messages": [{"role": "user", "content": "x [[mock:stream-error]]"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("injected stream failure")),
        "{text}"
    );

    let (status, _, text) = call("POST", "/api/pull", json!({"model": "m"})).await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&text), "invalid_request");
    let (status, _, text) = call("GET", "/api/nothing", Value::Null).await;
    assert_eq!(status, 404, "{text}");
}

#[tokio::test]
async fn infer_final_and_streamed_names_the_provider() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    let (gw, sink) = gateway(local_cloud(&local, &cloud));
    let req =
        json!({"model": "llama3", "input": "hi", "params": {"temperature": 0.1, "maxTokens": 10}});
    let (status, provider, text) =
        body(infer::infer(&gw, &caller(), CallOptions::new("infer"), &bytes(req)).await).await;
    assert_eq!((status, provider.as_deref()), (200, Some("ollama")));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["provider"], "ollama");
    assert_eq!(v["output"], "echo: hi");
    assert_eq!(v["finishReason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"inputTokens": 1, "outputTokens": 2, "estimated": false})
    );
    assert_eq!(v["fallback"], false);

    let req = json!({"model": "llama3", "input": [{"role": "system", "content": "s"}, {"role": "user", "content": "a b"}],
                     "policyOverride": "cloud", "stream": true});
    let (status, provider, text) =
        body(infer::infer(&gw, &caller(), CallOptions::new("infer"), &bytes(req)).await).await;
    assert_eq!((status, provider.as_deref()), (200, Some("openai")));
    assert!(text.starts_with("event: delta\n"), "{text}");
    let done = text.split("event: done\ndata: ").nth(1).unwrap().trim();
    let done: Value = serde_json::from_str(done).unwrap();
    assert_eq!(
        (done["provider"].clone(), done["output"].clone()),
        (json!("openai"), json!("echo: a b"))
    );
    assert_eq!(sink.records().last().unwrap().api, "infer");

    let req = json!({"model": "m", "input": "x [[mock:stream-error]]", "stream": true});
    let (_, _, text) =
        body(infer::infer(&gw, &caller(), CallOptions::new("infer"), &bytes(req)).await).await;
    assert!(
        text.contains("event: error\ndata: {\"error\":{\"code\":\"upstream_error\""),
        "{text}"
    );

    let (status, _, text) = body(
        infer::infer(
            &gw,
            &caller(),
            CallOptions::new("infer"),
            &bytes(json!({"model": "m", "input": "x", "bogus": 1})),
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.contains("bogus"), "{text}");
    let (status, _, _) = body(
        infer::infer(
            &gw,
            &caller(),
            CallOptions::new("infer"),
            &bytes(json!({"model": "m", "input": "x", "policyOverride": "local,,cloud"})),
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
}

/// Denies one model (policy) and refuses one user (budget).
struct TestGuard;

impl CallGuard for TestGuard {
    fn check<'a>(&'a self, caller: &'a Caller, model: &'a str) -> GuardFuture<'a> {
        Box::pin(async move {
            if model == "forbidden" {
                return Err(GatewayError::PolicyDenied(format!(
                    "policy denies llm:{model} for agent {:?}",
                    caller.agent
                )));
            }
            if caller.user == "broke" {
                return Err(GatewayError::QuotaExceeded(
                    "daily token budget spent".into(),
                ));
            }
            Ok(())
        })
    }
}

#[tokio::test]
async fn the_guard_answers_403_for_policy_and_429_for_quota() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    let (gw, _) = gateway(local_cloud(&local, &cloud));
    let gw = gw.with_guard(Arc::new(TestGuard));
    let req = |model: &str| bytes(json!({"model": model, "input": "x"}));
    let (status, _, text) =
        body(infer::infer(&gw, &caller(), CallOptions::new("infer"), &req("forbidden")).await)
            .await;
    assert_eq!((status, error_code(&text).as_str()), (403, "policy_denied"));
    let mut broke = caller();
    broke.user = "broke".into();
    let (status, _, text) =
        body(infer::infer(&gw, &broke, CallOptions::new("infer"), &req("m")).await).await;
    assert_eq!(
        (status, error_code(&text).as_str()),
        (429, "quota_exceeded")
    );
    assert_eq!(local.control().requests(), 0);
}

/// Records what the gateway asks of an [`Admission`]: estimates in, records out.
#[derive(Default)]
struct RecordingAdmission {
    estimates: parking_lot::Mutex<Vec<Estimate>>,
    settled: Arc<parking_lot::Mutex<Vec<UsageRecord>>>,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

struct RecordingHold {
    settled: Arc<parking_lot::Mutex<Vec<UsageRecord>>>,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
    done: bool,
}

impl Admitted for RecordingHold {
    fn settle(mut self: Box<Self>, record: &UsageRecord) {
        self.done = true;
        self.settled.lock().push(record.clone());
    }
}

impl Drop for RecordingHold {
    fn drop(&mut self) {
        if !self.done {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Admission for RecordingAdmission {
    fn admit(
        &self,
        caller: &Caller,
        _model: &str,
        estimate: Estimate,
    ) -> Result<Box<dyn Admitted>, GatewayError> {
        if caller.user == "spent" {
            return Err(GatewayError::BudgetExceeded {
                message: "budget exceeded for user:spent".into(),
                entity: "user:spent".into(),
                limit: "max_tokens_per_day".into(),
                resets_at: fabric_core::Timestamp::from_millis(1_796_256_000_000),
                retry_after: 60,
            });
        }
        self.estimates.lock().push(estimate);
        Ok(Box::new(RecordingHold {
            settled: Arc::clone(&self.settled),
            dropped: Arc::clone(&self.dropped),
            done: false,
        }))
    }
}

#[tokio::test]
async fn admission_sees_estimates_and_settles_with_each_calls_record() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    let (gw, sink) = gateway(local_cloud(&local, &cloud));
    let admission = Arc::new(RecordingAdmission::default());
    let gw = gw.with_admission(Arc::clone(&admission) as Arc<dyn Admission>);
    let chat = |stream: bool| {
        bytes(json!({"model": "llama3", "max_tokens": 7, "stream": stream,
                     "messages": [{"role": "user", "content": "a b c"}]}))
    };
    // Plain, then streamed (settled when the stream ends).
    let (status, _, _) = body(
        openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &chat(false)).await,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = body(
        openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &chat(true)).await,
    )
    .await;
    assert_eq!(status, 200);
    // "a b c" is 2 estimated tokens + 3 framing; max_tokens 7.
    let expected = Estimate {
        input_tokens: 5,
        output_tokens: 7,
    };
    assert_eq!(*admission.estimates.lock(), vec![expected, expected]);
    let settled = admission.settled.lock().clone();
    assert_eq!(settled.len(), 2);
    assert_eq!(
        settled,
        sink.records(),
        "settled with the very records metered"
    );
    assert_eq!((settled[0].tokens_in, settled[0].tokens_out), (3, 4));
    assert!(settled[1].stream);

    // A refusal: 429 budget_exceeded with entity, limit, resets_at, Retry-After; no upstream call.
    let before = local.control().requests();
    let mut spent = caller();
    spent.user = "spent".into();
    let reply =
        openai::chat_completions(&gw, &spent, CallOptions::new("openai"), &chat(true)).await;
    assert_eq!(reply.retry_after, Some(60));
    let (status, _, text) = body(reply).await;
    assert_eq!(status, 429, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "budget_exceeded");
    assert_eq!(v["error"]["entity"], "user:spent");
    assert_eq!(v["error"]["limit"], "max_tokens_per_day");
    assert_eq!(v["error"]["resets_at"], "2026-12-03T00:00:00.000Z");
    assert_eq!(local.control().requests(), before);

    // A failed call is settled too (with its zero-token error record).
    local.control().fail_next(100, 500);
    cloud.control().fail_next(100, 500);
    let (status, _, _) = body(
        openai::chat_completions(&gw, &caller(), CallOptions::new("openai"), &chat(false)).await,
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(admission.settled.lock().len(), 3);
    assert_eq!(
        admission.dropped.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}
