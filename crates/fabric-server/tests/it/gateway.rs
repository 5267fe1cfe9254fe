//! The inference gateway through the fabric's HTTP API (FR-LLM): two real
//! mock upstreams (local Ollama, cloud OpenAI), user and agent tokens,
//! fallback, breaker state, override, streaming, 413, timeouts, the usage
//! ledger, and the agent-facing Ollama endpoint.

use std::time::{Duration, Instant};

use fabric_gateway::mock::server::{MockConfig, MockServer};
use fabric_gateway::{GatewayConfig, ProviderConfig, ProviderKind};
use serde_json::{Value, json};

use crate::harness::{TestServer, error_code};

/// How long the test gateways' breakers stay open: long enough that a loaded
/// machine's next calls still find a circuit open (0.5 s was not).
pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(3);

/// The mocks' script: a two-round tool loop (`get_weather`, then
/// `get_umbrella`, then an answer) and a JSON answer, for the official
/// clients' tool and structured-output checks.
pub fn tool_script() -> fabric_gateway::mock::Script {
    fabric_gateway::mock::Script::from_value(&json!({
        "weather in Oslo": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
        "rain": {"tool_calls": [{"name": "get_umbrella", "arguments": {"size": "large"}}]},
        "umbrella stand": "Take the large umbrella.",
        "should I take": {"json": {"umbrella": true, "reason": "rain"}},
    }))
    .unwrap()
}

pub struct Upstreams {
    pub local: MockServer,
    pub cloud: MockServer,
}

impl Upstreams {
    pub async fn start() -> Self {
        let start = |name: &str| {
            MockServer::start_local(MockConfig {
                name: name.to_owned(),
                script: tool_script(),
                ..MockConfig::default()
            })
        };
        Self {
            local: start("local").await.unwrap(),
            cloud: start("cloud").await.unwrap(),
        }
    }

    /// `ollama` (local) then `openai` (cloud), short timeouts, a quick breaker.
    pub fn config(&self) -> GatewayConfig {
        let mut ollama =
            ProviderConfig::new("ollama", ProviderKind::Ollama, Some(self.local.url()));
        ollama.timeout = Duration::from_millis(1500);
        let mut openai = ProviderConfig::new(
            "openai",
            ProviderKind::Openai,
            Some(format!("{}/v1", self.cloud.url())),
        );
        openai.timeout = Duration::from_millis(1500);
        let mut config = GatewayConfig {
            providers: vec![ollama, openai],
            ..GatewayConfig::default()
        };
        config.retry.backoff = Duration::from_millis(5);
        config.breaker.failure_threshold = 2;
        config.breaker.open_for = BREAKER_OPEN_FOR;
        config
    }
}

pub async fn server_with(upstreams: &Upstreams) -> TestServer {
    let config = upstreams.config();
    TestServer::start_with(move |c| c.gateway = config).await
}

/// Waits until no provider's breaker is open (each lets a probe through
/// after [`BREAKER_OPEN_FOR`]), as `/v1/llm/status` reports them.
pub async fn wait_no_circuit_open(s: &TestServer, token: &str) {
    let deadline = Instant::now() + BREAKER_OPEN_FOR + Duration::from_secs(30);
    loop {
        let (_, status) = s.get(token, "/v1/llm/status").await;
        let open = status["providers"]
            .as_array()
            .unwrap_or_else(|| panic!("{status}"))
            .iter()
            .any(|p| p["breaker"] == "open");
        if !open {
            return;
        }
        assert!(Instant::now() < deadline, "a circuit stayed open: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An external agent `id` and its token.
pub async fn agent_token(s: &TestServer, admin: &str, id: &str) -> String {
    s.spawn_agent(admin, json!({"id": id, "external": true}))
        .await;
    let (status, body) = s.post(admin, "/v1/auth/tokens", json!({"agent": id})).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// POST with the raw response (status, headers, body text).
async fn post_raw(
    s: &TestServer,
    token: &str,
    path: &str,
    body: Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = s
        .client
        .post(s.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

fn provider(headers: &reqwest::header::HeaderMap) -> &str {
    headers
        .get("x-fabric-provider")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(missing)")
}

fn chat_body(prompt: &str) -> Value {
    json!({"model": "llama3", "messages": [{"role": "user", "content": prompt}]})
}

/// Polls the usage ledger until it holds `n` records for the query.
async fn usage(s: &TestServer, token: &str, query: &str, n: usize) -> Value {
    let mut last = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (status, body) = s.get(token, &format!("/v1/llm/usage{query}")).await;
        assert_eq!(status, 200, "{body}");
        if body["records"].as_array().is_some_and(|r| r.len() >= n) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the ledger never held {n} records for {query}: {last}");
}

#[tokio::test]
async fn user_and_agent_tokens_call_the_openai_routes_others_are_refused() {
    let up = Upstreams::start().await;
    let s = server_with(&up).await;
    let admin = s.login().await;
    let agent = agent_token(&s, &admin, "coder").await;

    let (status, headers, text) =
        post_raw(&s, &admin, "/v1/chat/completions", chat_body("hi")).await;
    assert_eq!((status, provider(&headers)), (200, "ollama"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hi");

    let (status, headers, _) =
        post_raw(&s, &agent, "/v1/chat/completions", chat_body("as agent")).await;
    assert_eq!((status, provider(&headers)), (200, "ollama"));

    let (status, body) = s
        .post(&admin, "/v1/auth/tokens", json!({"scopes": ["read:tasks"]}))
        .await;
    assert_eq!(status, 201, "{body}");
    let reader = body["token"].as_str().unwrap().to_owned();
    let (status, headers, text) =
        post_raw(&s, &reader, "/v1/chat/completions", chat_body("x")).await;
    assert_eq!((status, provider(&headers)), (403, "none"));
    assert_eq!(
        error_code(&serde_json::from_str(&text).unwrap()),
        "forbidden"
    );
    let (status, headers, _) = post_raw(&s, "rf_nope", "/v1/llm/infer", json!({})).await;
    assert_eq!((status, provider(&headers)), (401, "none"));

    let (status, body) = s.get(&agent, "/v1/models").await;
    assert_eq!(status, 200);
    assert!(
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "llama3"),
        "{body}"
    );

    // The agent's call is metered against it; the agent sees only its own.
    let mine = usage(&s, &agent, "", 1).await;
    assert_eq!(mine["records"].as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine["records"][0]["agent"], "coder");
    assert_eq!(mine["records"][0]["user"], "admin");
    let all = usage(&s, &admin, "", 2).await;
    assert_eq!(all["totals"]["calls"], 2, "{all}");
    let by_agent = usage(&s, &admin, "?agent=coder", 1).await;
    assert_eq!(by_agent["totals"]["calls"], 1);
    s.stop().await;
}

#[tokio::test]
async fn stopping_the_local_provider_falls_back_and_the_breaker_opens_then_recovers() {
    let up = Upstreams::start().await;
    let s = server_with(&up).await;
    let admin = s.login().await;

    up.local.control().fail_next(u64::MAX, 503);
    for _ in 0..2 {
        let (status, headers, _) =
            post_raw(&s, &admin, "/v1/chat/completions", chat_body("x")).await;
        assert_eq!((status, provider(&headers)), (200, "openai"));
    }
    let (_, status) = s.get(&admin, "/v1/llm/status").await;
    assert_eq!(status["providers"][0]["breaker"], "open", "{status}");
    assert_eq!(status["metrics"]["fallbacks"], 2, "{status}");
    let seen = up.local.control().requests();
    let (_, headers, _) = post_raw(&s, &admin, "/v1/chat/completions", chat_body("x")).await;
    assert_eq!(provider(&headers), "openai");
    assert_eq!(
        up.local.control().requests(),
        seen,
        "the open circuit skips local"
    );

    up.local.control().reset();
    wait_no_circuit_open(&s, &admin).await;
    let (_, headers, _) = post_raw(&s, &admin, "/v1/chat/completions", chat_body("x")).await;
    assert_eq!(
        provider(&headers),
        "ollama",
        "the half-open probe succeeded"
    );
    let (_, status) = s.get(&admin, "/v1/llm/status").await;
    assert_eq!(status["providers"][0]["breaker"], "closed");

    let records = usage(&s, &admin, "", 4).await;
    let fallbacks = records["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["fallback"] == true)
        .count();
    assert_eq!(fallbacks, 3, "{records}");
    s.stop().await;
}

#[tokio::test]
async fn infer_final_streamed_and_overridden() {
    let up = Upstreams::start().await;
    let s = server_with(&up).await;
    let admin = s.login().await;

    let (status, headers, text) = post_raw(
        &s,
        &admin,
        "/v1/llm/infer",
        json!({"model": "llama3", "input": "hello", "params": {"max_tokens": 5}}),
    )
    .await;
    assert_eq!((status, provider(&headers)), (200, "ollama"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["provider"].clone(), v["output"].clone()),
        (json!("ollama"), json!("echo: hello"))
    );

    let (status, headers, text) = post_raw(
        &s,
        &admin,
        "/v1/llm/infer",
        json!({"model": "llama3", "input": "a b", "stream": true, "policyOverride": "openai"}),
    )
    .await;
    assert_eq!((status, provider(&headers)), (200, "openai"));
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(text.contains("event: done\ndata: {"), "{text}");

    // The header overrides too.
    let r = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&admin)
        .header("X-Fabric-Policy", "cloud")
        .json(&chat_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-fabric-provider"], "openai");
    s.stop().await;
}

#[tokio::test]
async fn the_error_taxonomy_over_http() {
    let up = Upstreams::start().await;
    let s = server_with(&up).await;
    let admin = s.login().await;

    // 413: over the 10 MiB limit, before anything is parsed or sent.
    let big = "x".repeat(10 * 1024 * 1024 + 1);
    let (status, headers, text) = post_raw(
        &s,
        &admin,
        "/v1/chat/completions",
        json!({"model": "m", "messages": [{"role": "user", "content": big}]}),
    )
    .await;
    assert_eq!((status, provider(&headers)), (413, "none"));
    assert_eq!(
        error_code(&serde_json::from_str(&text).unwrap()),
        "payload_too_large"
    );
    assert_eq!(up.local.control().requests(), 0);

    // 400 with the uniform body.
    let (status, _, text) = post_raw(&s, &admin, "/v1/llm/infer", json!({"model": "m"})).await;
    assert_eq!(status, 400);
    assert_eq!(
        error_code(&serde_json::from_str(&text).unwrap()),
        "invalid_request"
    );

    // 504 with provider and correlation id when both hang.
    up.local.control().hang_next(1);
    up.cloud.control().hang_next(1);
    let (status, headers, text) = post_raw(
        &s,
        &admin,
        "/v1/llm/infer",
        json!({"model": "m", "input": "x"}),
    )
    .await;
    assert_eq!((status, provider(&headers)), (504, "openai"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error_code(&v), "upstream_timeout");
    assert_eq!(v["error"]["provider"], "openai");
    assert!(
        v["error"]["correlation_id"]
            .as_str()
            .is_some_and(|c| c.starts_with("fab_")),
        "{v}"
    );

    // 502 from upstream failures, in-band once streaming.
    up.local.control().fail_next(u64::MAX, 500);
    up.cloud.control().fail_next(u64::MAX, 500);
    let (status, _, text) = post_raw(
        &s,
        &admin,
        "/v1/llm/infer",
        json!({"model": "m", "input": "x"}),
    )
    .await;
    assert_eq!(status, 502, "{text}");
    up.local.control().reset();
    up.cloud.control().reset();
    wait_no_circuit_open(&s, &admin).await;
    let (status, headers, text) = post_raw(
        &s,
        &admin,
        "/v1/chat/completions",
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x [[mock:stream-error]]"}]}),
    )
    .await;
    assert_eq!((status, provider(&headers)), (200, "ollama"), "{text}");
    assert!(
        text.contains(r#"data: {"error":{"code":"upstream_error""#),
        "{text}"
    );
    assert!(!text.contains("[DONE]"));
    s.stop().await;
}

#[tokio::test]
async fn the_ollama_api_for_agents_routes_through_the_gateway() {
    let up = Upstreams::start().await;
    let s = server_with(&up).await;
    let admin = s.login().await;
    let agent = agent_token(&s, &admin, "ollama-user").await;

    // Through the main API with the agent's token (what a sidecar forwards).
    let (status, headers, text) = post_raw(
        &s,
        &agent,
        "/v1/ollama/api/generate",
        json!({"model": "llama3", "prompt": "p", "stream": false}),
    )
    .await;
    assert_eq!((status, provider(&headers)), (200, "ollama"), "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["response"],
        "echo: p"
    );
    let r = s
        .client
        .get(s.url("/v1/ollama/api/tags"))
        .bearer_auth(&agent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let records = usage(&s, &agent, "", 1).await;
    assert_eq!(records["records"][0]["api"], "ollama");
    s.stop().await;
}

#[tokio::test]
async fn the_agent_endpoint_entry_point_meters_the_agent_without_a_token() {
    use std::sync::Arc;

    use fabric_core::{AgentId, TenantId};
    use fabric_server::api::inference::{EndpointIdentity, serve_ollama_endpoint};

    let up = Upstreams::start().await;
    let sink = Arc::new(fabric_gateway::MemorySink::default());
    let gateway = fabric_gateway::Gateway::new(
        up.config(),
        Arc::clone(&sink) as Arc<dyn fabric_gateway::UsageSink>,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let identity = EndpointIdentity {
        tenant: TenantId::new("acme").unwrap(),
        user: "alice".into(),
        agent: AgentId::new("box").unwrap(),
        workspace: None,
        path_secret: None,
        tools: Vec::new(),
        forward_token: None,
    };
    let _endpoint = serve_ollama_endpoint(
        listener,
        gateway,
        identity,
        fabric_server::telemetry::Telemetry::disabled(std::sync::Arc::new(
            fabric_core::SystemClock,
        )),
    );
    let client = reqwest::Client::new();

    let r = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "Ollama is running");
    let r = client
        .post(format!("{base}/api/chat"))
        .json(&json!({"model": "llama3", "stream": false, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-fabric-provider"], "ollama");
    assert!(r.headers().contains_key("x-request-id"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["message"]["content"], "echo: hi");

    let big = "x".repeat(10 * 1024 * 1024 + 1);
    let r = client
        .post(format!("{base}/api/generate"))
        .json(&json!({"model": "m", "prompt": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(error_code(&v), "payload_too_large");

    let records = sink.records();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        (
            r.tenant.as_str(),
            r.user.as_str(),
            r.agent.as_ref().map(|a| a.as_str())
        ),
        ("acme", "alice", Some("box"))
    );
    assert_eq!(r.api, "ollama");
}

/// Issue #15: an isolation `none` agent's endpoint is a loopback port any
/// local process can reach; only calls under its secret path (which only the
/// agent's `OLLAMA_BASE_URL` carries) reach the gateway.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_process_without_the_agent_secret_cannot_use_its_endpoint() {
    let up = Upstreams::start().await;
    let s = server_with(&up).await;
    let admin = s.login().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("url.txt");
    s.spawn_agent(
        &admin,
        // Unconfined, so it can write where this test reads.
        json!({"id": "local", "isolation": {"as_fabric_user": true},
               "command": format!("echo \"$OLLAMA_BASE_URL\" > {} && exec sleep 1000", file.display())}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && text.ends_with('\n')
        {
            break text.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "the agent never wrote its URL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (origin, secret) = url.rsplit_once('/').unwrap();
    assert!(
        origin.starts_with("http://127.0.0.1:") && secret.len() >= 32,
        "{url}"
    );

    let client = reqwest::Client::new();
    let chat = json!({"model": "llama3", "stream": false, "messages": [{"role": "user", "content": "hi"}]});
    for guess in [
        format!("{origin}/api/chat"),
        format!("{origin}/{}/api/chat", "0".repeat(secret.len())),
    ] {
        let r = client.post(&guess).json(&chat).send().await.unwrap();
        assert_eq!(r.status(), 404, "{guess}");
        assert!(!r.text().await.unwrap().contains(secret));
    }
    let r = client
        .post(format!("{url}/api/chat"))
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the agent's own URL works");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["message"]["content"], "echo: hi");
}
