//! Budgets through the real server (REQUIREMENTS §8): a mock LLM upstream over HTTP,
//! the gateway's admission, the usage ledger, the budget API.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use fabric_core::{Clock, Timestamp};
use fabric_gateway::mock::server::{MockConfig, MockServer};
use fabric_gateway::{GatewayConfig, ProviderConfig, ProviderKind};
use fabric_server::services::budgets::BudgetClock;
use serde_json::{Value, json};

use crate::gateway::agent_token;
use crate::harness::{TestServer, error_code};

/// A mock Ollama upstream answering after `latency`.
async fn upstream(latency: Duration) -> MockServer {
    MockServer::start_local(MockConfig {
        name: "local".to_owned(),
        latency,
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

fn gateway(up: &MockServer) -> GatewayConfig {
    let mut ollama = ProviderConfig::new("ollama", ProviderKind::Ollama, Some(up.url()));
    ollama.timeout = Duration::from_secs(30);
    let mut config = GatewayConfig {
        providers: vec![ollama],
        ..GatewayConfig::default()
    };
    config.request_timeout = Duration::from_secs(60);
    // $1 per million tokens in and out: one token costs 1000 nano-USD.
    config.prices.insert(
        "ollama/*".to_owned(),
        fabric_gateway::config::Price {
            input: 1.0,
            output: 1.0,
        },
    );
    config
}

/// `prompt` (words) with at most `max_tokens` out.
fn chat(prompt: &str, max_tokens: u32) -> Value {
    json!({"model": "llama3", "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": prompt}]})
}

/// Polls the ledger until it holds `n` calls of `agent`; returns its totals.
async fn ledger_totals(s: &TestServer, admin: &str, agent: &str, n: u64) -> Value {
    let mut last = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (status, body) = s
            .get(admin, &format!("/v1/llm/usage?agent={agent}&limit=1"))
            .await;
        assert_eq!(status, 200, "{body}");
        if body["totals"]["calls"].as_u64() == Some(n) {
            return body["totals"].clone();
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the ledger never held {n} calls of {agent}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_race_a_hundred_concurrent_calls_against_room_for_ten() {
    // Every call is still in flight when the last one is admitted: the
    // holds alone must stop the 11th.
    let up = upstream(Duration::from_secs(3)).await;
    let config = gateway(&up);
    let s = TestServer::start_with(move |c| c.gateway = config).await;
    let admin = s.login().await;
    let agent = agent_token(&s, &admin, "racer").await;
    // Estimate per call: "hi" is 1 + 3 framing tokens, plus max_tokens 16 = 20.
    let (status, body) = s
        .put(
            &admin,
            "/v1/budgets/agent:racer",
            json!({"max_tokens_per_day": 200}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let calls = (0..100).map(|_| {
        let client = s.client.clone();
        let url = s.url("/v1/chat/completions");
        let agent = agent.clone();
        tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(agent)
                .json(&chat("hi", 16))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry_after = r.headers().get("retry-after").is_some();
            (status, retry_after, r.json::<Value>().await.unwrap())
        })
    });
    let results = futures_util::future::join_all(calls).await;
    let mut ok = 0;
    let mut refused = 0;
    for r in results {
        let (status, retry_after, body) = r.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert_eq!(error_code(&body), "budget_exceeded", "{body}");
                assert_eq!(body["error"]["entity"], "agent:racer", "{body}");
                assert_eq!(body["error"]["limit"], "max_tokens_per_day", "{body}");
                assert!(body["error"]["resets_at"].is_string(), "{body}");
                assert!(retry_after, "a refusal says when to retry");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(message.contains("resets at"), "{message}");
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!((ok, refused), (10, 90));
    assert_eq!(
        up.control().requests(),
        10,
        "refused calls never reach the upstream"
    );

    // Settled: 10 calls × (1 prompt word + "echo: hi" 2 words) = 30 tokens.
    let totals = ledger_totals(&s, &admin, "racer", 10).await;
    let (status, report) = s.get(&agent, "/v1/usage/agent:racer?period=day").await;
    assert_eq!(status, 200, "{report}");
    let ledger_tokens =
        totals["tokens_in"].as_u64().unwrap() + totals["tokens_out"].as_u64().unwrap();
    assert_eq!(ledger_tokens, 30);
    assert_eq!(report["tokens"]["used"], json!(30.0), "{report}");
    assert_eq!(report["tokens"]["reserved"], json!(0.0), "{report}");
    assert_eq!(report["tokens"]["remaining"], json!(170.0), "{report}");
    assert_eq!(report["calls"], 10);

    // A streamed call is refused before the stream starts: a plain 429.
    s.put(
        &admin,
        "/v1/budgets/agent:racer",
        json!({"max_tokens_per_day": 40}),
    )
    .await;
    let mut body = chat("hi", 16);
    body["stream"] = json!(true);
    let (status, body) = s.post(&agent, "/v1/chat/completions", body).await;
    assert_eq!(
        (status, error_code(&body)),
        (429, "budget_exceeded"),
        "{body}"
    );
    // So is the Ollama API (the agents' endpoint) and /v1/llm/infer.
    let (status, body) = s
        .post(
            &agent,
            "/v1/ollama/api/chat",
            json!({"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(
        (status, crate::harness::ollama_error_code(&body)),
        (429, "budget_exceeded"),
        "{body}"
    );
    // A call without max_tokens holds 512 for its answer: the refusal says so (issue #17).
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("or 512 when it sets none") && message.contains("pass max_tokens"),
        "{message}"
    );
    let (status, body) = s
        .post(
            &agent,
            "/v1/llm/infer",
            json!({"model": "llama3", "input": "hi"}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (429, "budget_exceeded"),
        "{body}"
    );
}

#[tokio::test]
async fn soft_alert_fires_once_and_the_report_matches_the_ledger() {
    let up = upstream(Duration::ZERO).await;
    let config = gateway(&up);
    let s = TestServer::start_with(move |c| c.gateway = config).await;
    let admin = s.login().await;
    let agent = agent_token(&s, &admin, "coder").await;
    let (status, body) = s.put(&admin,
        "/v1/budgets/agent:coder",
        json!({"max_tokens_per_day": 100, "max_cost_per_day_usd": 1.0, "alert_threshold_percent": 50}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["alert_threshold_percent"], 50);
    assert_eq!(body["reset"], "daily");

    // Each call: 4 prompt words + "echo: a b c d" 5 words = 9 tokens.
    for i in 0..8 {
        let (status, body) = s
            .post(&agent, "/v1/chat/completions", chat("a b c d", 10))
            .await;
        assert_eq!(status, 200, "call {i}: {body}");
        let (_, report) = s.get(&admin, "/v1/usage/agent:coder").await;
        let threshold = report["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "threshold")
            .count();
        // 6 calls = 54 tokens: the first at or over 50%.
        assert_eq!(threshold, usize::from(i >= 5), "after call {i}: {report}");
        assert_eq!(report["alerted"], i >= 5);
    }
    let totals = ledger_totals(&s, &admin, "coder", 8).await;
    let (status, report) = s.get(&admin, "/v1/usage/agent:coder?period=day").await;
    assert_eq!(status, 200, "{report}");
    let tokens = totals["tokens_in"].as_u64().unwrap() + totals["tokens_out"].as_u64().unwrap();
    assert_eq!(tokens, 72);
    assert_eq!(report["tokens"]["used"], json!(72.0));
    assert_eq!(report["tokens"]["limit"], json!(100.0));
    assert_eq!(report["tokens"]["remaining"], json!(28.0));
    assert_eq!(report["tokens"]["percent"], json!(72.0));
    assert!(
        report["tokens"]["projected"].as_f64().unwrap() >= 72.0,
        "{report}"
    );
    let cost_nano = totals["cost_nano_usd"].as_u64().unwrap();
    assert_eq!(cost_nano, 72_000);
    assert!(
        (report["cost_usd"]["used"].as_f64().unwrap() - 72e-6).abs() < 1e-12,
        "{report}"
    );
    assert_eq!(report["calls"], 8);
    assert_eq!(report["budget"]["max_tokens_per_day"], 100);
    assert!(
        report["resets_at"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00.000Z"),
        "{report}"
    );

    // Each call holds 15 (2 + 3 framing + 10) and settles 9: 28 left fits
    // two more (81, then 90 used), then 10 left refuses the third.
    for _ in 0..2 {
        let (status, body) = s
            .post(&agent, "/v1/chat/completions", chat("a b c d", 10))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = s
        .post(&agent, "/v1/chat/completions", chat("a b c d", 10))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (429, "budget_exceeded"),
        "{body}"
    );
    let (_, report) = s.get(&admin, "/v1/usage/agent:coder").await;
    let kinds: Vec<&str> = report["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["threshold", "exceeded"], "{report}");
    // The same two alerts are alert events (what the webhook and
    // agent_fabric_alerts_total see), once each.
    let (status, alerts) = s.get(&admin, "/v1/alerts").await;
    assert_eq!(status, 200, "{alerts}");
    let events: Vec<(&str, &str)> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"].as_str().unwrap().starts_with("budget_"))
        .map(|a| (a["kind"].as_str().unwrap(), a["entity"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events,
        [
            ("budget_exceeded", "agent:coder"),
            ("budget_threshold", "agent:coder")
        ],
        "{alerts}"
    );
    // And /metrics reports the ratio: 10 calls of 9 tokens against 100.
    let metrics = s.metrics().await;
    let ratio: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("agent_fabric_budget_usage_ratio{entity_id=\"agent:coder\"} "))
        .unwrap_or_else(|| panic!("no budget ratio for agent:coder in:\n{metrics}"))
        .parse()
        .unwrap();
    assert_eq!(ratio, 0.9, "{metrics}");
    // The user's and tenant's usage is reported from the ledger (no budget),
    // which the gateway writes every 50 ms.
    ledger_totals(&s, &admin, "coder", 10).await;
    let (status, report) = s.get(&admin, "/v1/usage/tenant:default").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["tokens"]["used"], json!(90.0), "{report}");
    assert!(report["tokens"]["limit"].is_null());
}

/// A clock the test moves.
struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.0.load(Ordering::SeqCst))
    }
}

#[tokio::test]
async fn the_daily_reset_follows_the_injected_clock() {
    const DAY: i64 = 86_400_000;
    // 2026-12-02T23:00:00Z.
    let day1 = 1_796_169_600_000 + DAY;
    let clock = Arc::new(ManualClock(AtomicI64::new(day1 + 23 * 3_600_000)));
    let up = upstream(Duration::ZERO).await;
    let config = gateway(&up);
    let budget_clock = BudgetClock(clock.clone());
    let s = TestServer::start_with(move |c| {
        c.gateway = config;
        c.budget_clock = budget_clock;
    })
    .await;
    let admin = s.login().await;
    let agent = agent_token(&s, &admin, "nightly").await;
    s.put(
        &admin,
        "/v1/budgets/agent:nightly",
        json!({"max_tokens_per_day": 20}),
    )
    .await;
    // Estimate 4 + 10 = 14, settled at 3; then 4 + 17 = 21 > 17 left.
    let (status, _) = s.post(&agent, "/v1/chat/completions", chat("hi", 10)).await;
    assert_eq!(status, 200);
    let (status, body) = s.post(&agent, "/v1/chat/completions", chat("hi", 17)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        body["error"]["resets_at"], "2026-12-04T00:00:00.000Z",
        "{body}"
    );

    clock.0.store(day1 + DAY + 1_000, Ordering::SeqCst);
    let (status, body) = s.post(&agent, "/v1/chat/completions", chat("hi", 16)).await;
    assert_eq!(status, 200, "a new day, a new allowance: {body}");
    let (_, report) = s.get(&admin, "/v1/usage/agent:nightly").await;
    assert_eq!(
        report["period_start"], "2026-12-04T00:00:00.000Z",
        "{report}"
    );
    assert_eq!(report["tokens"]["used"], json!(3.0), "{report}");
    assert_eq!(report["alerted"], false);
}

#[tokio::test]
async fn a_restart_keeps_the_periods_usage_and_budgets() {
    let up = upstream(Duration::ZERO).await;
    let config = gateway(&up);
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path().to_path_buf(), {
        let config = config.clone();
        move |c| c.gateway = config
    })
    .await;
    let admin = s.login().await;
    let agent = agent_token(&s, &admin, "keeper").await;
    s.put(
        &admin,
        "/v1/budgets/agent:keeper",
        json!({"max_tokens_per_day": 30, "reset": "carryover"}),
    )
    .await;
    for _ in 0..3 {
        let (status, _) = s
            .post(&agent, "/v1/chat/completions", chat("a b c d", 5))
            .await;
        assert_eq!(status, 200);
    }
    let (_, before) = s.get(&admin, "/v1/usage/agent:keeper").await;
    assert_eq!(before["tokens"]["used"], json!(27.0), "{before}");
    s.stop().await;

    let s = TestServer::start_in(dir.path().to_path_buf(), move |c| c.gateway = config).await;
    let admin = s.login().await;
    let (status, after) = s.get(&admin, "/v1/usage/agent:keeper").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["tokens"]["used"], before["tokens"]["used"], "{after}");
    assert_eq!(after["budget"]["reset"], "carryover");
    // Still spent after the restart: 27 used, a call needs 2 + 3 + 5 = 10.
    let (status, token) = s
        .post(&admin, "/v1/auth/tokens", json!({"agent": "keeper"}))
        .await;
    assert_eq!(status, 201, "{token}");
    let agent = token["token"].as_str().unwrap();
    let (status, body) = s
        .post(agent, "/v1/chat/completions", chat("a b c d", 5))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (429, "budget_exceeded"),
        "{body}"
    );
    let (status, list) = s.get(&admin, "/v1/budgets").await;
    assert_eq!(status, 200);
    assert_eq!(list["budgets"][0]["entity"], "agent:keeper", "{list}");
    drop(dir);
}

#[tokio::test]
async fn the_budget_api_validates_and_guards_writes() {
    let s = TestServer::start().await;
    let admin = s.login().await;
    let (status, body) = s
        .put(
            &admin,
            "/v1/budgets/team:x",
            json!({"max_tokens_per_day": 1}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "invalid_request"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown kind"),
        "{body}"
    );
    let (status, body) = s
        .put(
            &admin,
            "/v1/budgets/agent:a",
            json!({"max_tokens_per_day": -5}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = s
        .put(
            &admin,
            "/v1/budgets/agent:a",
            json!({"max_cost_per_day_usd": -1.5}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("non-negative"),
        "{body}"
    );
    let (status, body) = s
        .put(
            &admin,
            "/v1/budgets/agent:a",
            json!({"alert_threshold_percent": 0}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = s
        .put(&admin, "/v1/budgets/agent:a", json!({"reset": "weekly"}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = s.get(&admin, "/v1/usage/agent:a?period=month").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = s.get(&admin, "/v1/budgets/agent:a").await;
    assert_eq!((status, error_code(&body)), (404, "not_found"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("budget set"),
        "{body}"
    );

    // An agent reads its own usage, not another's, and cannot write.
    let agent = agent_token(&s, &admin, "reader").await;
    let (status, _) = s.get(&agent, "/v1/usage/agent:reader").await;
    assert_eq!(status, 200);
    let (status, _) = s.get(&agent, "/v1/usage/agent:other").await;
    assert_eq!(status, 403);
    let (status, _) = s
        .put(
            &agent,
            "/v1/budgets/agent:reader",
            json!({"max_tokens_per_day": 1}),
        )
        .await;
    assert_eq!(status, 403);

    // Issue #15: a budget of nobody would never apply: refused, unless forced.
    let (status, body) = s
        .put(
            &admin,
            "/v1/budgets/user:alice",
            json!({"max_tokens_per_day": 1}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (404, "not_found"), "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("force"),
        "{body}"
    );
    let (status, _) = s
        .put(
            &admin,
            "/v1/budgets/user:alice?force=true",
            json!({"max_tokens_per_day": 1}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .put(
            &admin,
            "/v1/budgets/user:admin",
            json!({"max_tokens_per_day": 1}),
        )
        .await;
    assert_eq!(status, 200, "an existing user's");
    let (status, _) = s.delete(&admin, "/v1/budgets/user:alice").await;
    assert_eq!(status, 204);
    let (status, _) = s.delete(&admin, "/v1/budgets/user:alice").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_spent_compute_budget_refuses_new_tasks_for_the_agent() {
    let s = TestServer::start_with(|c| c.compute_sample_every = Duration::from_millis(100)).await;
    let admin = s.login().await;
    // The agent's budget comes from its config; its process burns a core.
    s.spawn_agent(
        &admin,
        json!({"id": "burner", "command": "while :; do :; done",
               "budget": {"max_compute_seconds_per_day": 1}}),
    )
    .await;
    let (status, budget) = s.get(&admin, "/v1/budgets/agent:burner").await;
    assert_eq!(status, 200, "{budget}");
    assert_eq!(budget["max_compute_seconds_per_day"], 1);
    let mut refusal = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (status, body) = s
            .post(
                &admin,
                "/v1/tasks",
                json!({"agent": "burner", "prompt": "more"}),
            )
            .await;
        if status == 429 {
            refusal = body;
            break;
        }
        assert_eq!(status, 201, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(error_code(&refusal), "budget_exceeded", "{refusal}");
    assert_eq!(
        refusal["error"]["limit"], "max_compute_seconds_per_day",
        "{refusal}"
    );
    assert_eq!(refusal["error"]["entity"], "agent:burner");
    let (_, report) = s.get(&admin, "/v1/usage/agent:burner").await;
    assert!(
        report["compute_seconds"]["used"].as_f64().unwrap() >= 1.0,
        "{report}"
    );
    let (status, _) = s.delete(&admin, "/v1/agents/burner").await;
    assert!(status < 300);
}
