//! The inference gateway as shipped: `reactor-fabric mock-llm` upstreams and
//! `reactor-fabric serve` configured by the usual environment names only, and
//! the provider keys never appearing in any log line or response (NFR-SEC-2).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{ADMIN_PASSWORD, free_port, readyz_ok};

/// A `reactor-fabric mock-llm` child; killed on drop.
pub(crate) struct Mock {
    child: Child,
    pub(crate) url: String,
}

impl Mock {
    /// Starts one, optionally requiring `key` (passed through the environment).
    pub(crate) fn start(name: &str, key: Option<&str>) -> Mock {
        Self::start_with(name, key, &[])
    }

    /// Starts one with more command-line arguments.
    pub(crate) fn start_with(name: &str, key: Option<&str>, args: &[&str]) -> Mock {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("reactor-fabric"));
        cmd.args(["mock-llm", "--port", "0", "--name", name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(key) = key {
            cmd.args(["--require-key-env", "MOCK_KEY"])
                .env("MOCK_KEY", key);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("mock-llm printed {line:?}"))
            .to_owned();
        Mock { child, url }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills (and reaps) a child on drop, so a failed assertion leaves no server behind.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn random_key(prefix: &str) -> String {
    let n: u128 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{:032x}",
        n ^ (u128::from(std::process::id()) << 64)
    )
}

/// Every response of the run, as text: status, headers, body.
#[derive(Default)]
pub(crate) struct Transcript(pub(crate) Vec<String>);

impl Transcript {
    pub(crate) async fn send(&mut self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let mut text = format!("{status}\n");
        for (name, value) in r.headers() {
            text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
        }
        let body = r.text().await.unwrap();
        text.push_str(&body);
        self.0.push(text);
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }
}

/// Issue #18 item 6: a script answers with tool calls or JSON, per model or
/// for any, in each of the three wire formats; a bad script is refused
/// with the key at fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_llm_scripts_tool_calls_and_json_per_model_in_every_wire_format() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("answers.json");
    std::fs::write(
        &script,
        json!({
            "weather": "Sunny, for any model.",
            "models": {
                "small": {"weather": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}},
                "big": {"": {"json": {"umbrella": true}}}
            }
        })
        .to_string(),
    )
    .unwrap();
    let mock = Mock::start_with("scripted", None, &["--script", script.to_str().unwrap()]);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let request = http
            .post(format!("{}{path}", mock.url))
            .header("anthropic-version", "2023-06-01")
            .json(&body);
        async move {
            let r = request.send().await.unwrap();
            let status = r.status();
            let v = r.json::<Value>().await.unwrap();
            assert_eq!(status, 200, "{v}");
            v
        }
    };
    let chat = |model: &str| {
        json!({"model": model, "max_tokens": 50, "stream": false,
        "messages": [{"role": "user", "content": "weather in Oslo?"}]})
    };

    let v = post("/v1/chat/completions", chat("small")).await;
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    let mut ollama = chat("small");
    ollama.as_object_mut().unwrap().remove("max_tokens");
    let v = post("/api/chat", ollama).await;
    assert_eq!(
        v["message"]["tool_calls"][0]["function"]["arguments"],
        json!({"city": "Oslo"}),
        "{v}"
    );
    let v = post("/v1/messages", chat("small")).await;
    assert_eq!(v["stop_reason"], "tool_use", "{v}");
    assert_eq!(v["content"][0]["input"], json!({"city": "Oslo"}));

    let v = post("/v1/chat/completions", chat("big")).await;
    assert_eq!(
        v["choices"][0]["message"]["content"],
        r#"{"umbrella":true}"#
    );
    let v = post("/v1/messages", chat("other")).await;
    assert_eq!(v["content"][0]["text"], "Sunny, for any model.", "{v}");

    // The README's example script does what the README says.
    let example = super::readme::fenced_block(
        &super::readme::readme(),
        "**`reactor-fabric mock-llm`**",
        "json",
    );
    std::fs::write(&script, example).unwrap();
    drop(mock);
    let mock = Mock::start_with("readme", None, &["--script", script.to_str().unwrap()]);
    let ask = |model: &str, prompt: &str| {
        let request = http
            .post(format!("{}/v1/chat/completions", mock.url))
            .json(&json!({"model": model, "messages": [{"role": "user", "content": prompt}]}));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let v = ask("gpt-4o", "weather in Oslo?").await;
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    let v = ask("gpt-4o", "it is rain").await;
    assert_eq!(v["choices"][0]["message"]["content"], "Take an umbrella.");
    let v = ask("llama3", "weather in Oslo?").await;
    assert_eq!(
        v["choices"][0]["message"]["content"],
        r#"{"umbrella":true}"#
    );

    std::fs::write(&script, r#"{"models": {"small": {"weather": 7}}}"#).unwrap();
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("reactor-fabric"))
        .args([
            "mock-llm",
            "--port",
            "0",
            "--script",
            script.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"models.small."weather": an answer is a string"#),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_keys_never_appear_in_logs_or_responses() {
    let openai_key = random_key("sk-openai-test");
    let anthropic_key = random_key("sk-ant-test");
    let local = Mock::start("local", None);
    let cloud = Mock::start("cloud", Some(&openai_key));
    let claude = Mock::start("claude", Some(&anthropic_key));

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let server = std::process::Command::new(assert_cmd::cargo::cargo_bin("reactor-fabric"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("FABRIC_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("FABRIC_CONFIG", dir.path().join("cli.toml"))
        .env("FABRIC_LOG", "debug")
        .env("OLLAMA_BASE_URL", &local.url)
        .env("OPENAI_BASE_URL", format!("{}/v1", cloud.url))
        .env("OPENAI_API_KEY", &openai_key)
        .env("ANTHROPIC_API_KEY", &anthropic_key)
        .env("ANTHROPIC_BASE_URL", &claude.url)
        .env_remove("FABRIC_GATEWAY_CONFIG")
        .env_remove("FABRIC_GATEWAY_POLICY")
        .env_remove("FABRIC_LISTEN")
        .env_remove("FABRIC_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let server = KillOnDrop(server);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !readyz_ok(port) {
        assert!(Instant::now() < deadline, "the server never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut t = Transcript::default();

    let (status, login) = t
        .send(
            client
                .post(format!("{base}/v1/auth/login"))
                .json(&json!({"username": "admin", "password": ADMIN_PASSWORD})),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    let token = login["token"].as_str().unwrap().to_owned();
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
    };
    let get = |path: &str| client.get(format!("{base}{path}")).bearer_auth(&token);
    let chat = |prompt: &str| json!({"model": "llama3", "messages": [{"role": "user", "content": prompt}]});

    // Local first; then each cloud provider, which only answers with its key.
    let (status, v) = t.send(post("/v1/chat/completions", chat("hello"))).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = t
        .send(
            post("/v1/chat/completions", chat("to the cloud")).header("X-Fabric-Policy", "openai"),
        )
        .await;
    assert_eq!(
        (status, v["choices"][0]["message"]["content"].clone()),
        (200, json!("echo: to the cloud")),
        "{v}"
    );
    let (status, v) = t
        .send(post(
            "/v1/llm/infer",
            json!({"model": "anthropic/claude", "input": "to claude"}),
        ))
        .await;
    assert_eq!(
        (status, v["provider"].clone()),
        (200, json!("anthropic")),
        "{v}"
    );
    let (status, _) = t
        .send(post(
            "/v1/llm/infer",
            json!({"model": "m", "input": "streamed", "stream": true, "policyOverride": "cloud"}),
        ))
        .await;
    assert_eq!(status, 200);
    let (status, v) = t
        .send(
            post("/v1/embeddings", json!({"model": "e", "input": "x"}))
                .header("X-Fabric-Policy", "openai"),
        )
        .await;
    assert_eq!(status, 200, "{v}");

    // Upstreams that quote the key back in their errors.
    for model in ["openai/m", "anthropic/m"] {
        let (status, v) = t
            .send(post(
                "/v1/llm/infer",
                json!({"model": model, "input": "[[mock:echo-auth]]"}),
            ))
            .await;
        assert_eq!(status, 502, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("incorrect API key provided"),
            "{v}"
        );
    }
    // Failures, fallback, listings, the ledger.
    let (status, _) = t
        .send(
            post("/v1/chat/completions", chat("x [[mock:error=500]]"))
                .header("X-Fabric-Policy", "openai"),
        )
        .await;
    assert_eq!(status, 502);
    let (status, v) = t
        .send(
            post(
                "/v1/chat/completions",
                json!({"model": "m", "stream": true,
            "messages": [{"role": "user", "content": "[[mock:stream-error]]"}]}),
            )
            .header("X-Fabric-Policy", "cloud"),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    drop(local);
    let (status, v) = t.send(post("/v1/chat/completions", chat("fallback"))).await;
    assert_eq!(status, 200, "{v}");
    for path in [
        "/v1/models",
        "/v1/llm/status",
        "/v1/llm/usage",
        "/v1/ollama/api/tags",
    ] {
        let (status, v) = t.send(get(path)).await;
        assert_eq!(status, 200, "{path}: {v}");
    }
    // The ledger is written in batches every 50 ms. Ten calls above reached
    // a provider (the two key echoes, the 500 and the in-band stream error
    // among them); the listings are not calls.
    let mut usage = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        usage = t.send(get("/v1/llm/usage")).await.1;
        if usage["totals"]["calls"].as_u64().unwrap_or(0) >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let totals = &usage["totals"];
    assert_eq!(
        (&totals["calls"], &totals["errors"], &totals["fallbacks"]),
        (&json!(10), &json!(4), &json!(1)),
        "{usage}"
    );

    drop(server);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("llm call"), "the log is empty?\n{log}");
    let everything = format!("{log}\n{}", t.0.join("\n"));
    for key in [&openai_key, &anthropic_key] {
        // Also a distinctive middle part, in case something printed a prefix or suffix.
        let middle = &key[key.len() - 20..key.len() - 4];
        for needle in [key.as_str(), middle] {
            assert!(
                !everything.contains(needle),
                "a provider key leaked ({needle}) into:\n{}",
                everything
                    .lines()
                    .filter(|l| l.contains(needle))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_set_then_usage_shows_used_remaining_and_projection() {
    let local = Mock::start("local", None);
    let fabric = super::Fabric::start_with_env(&[("OLLAMA_BASE_URL", &local.url)]);
    fabric.login();
    let out = super::stdout_of(fabric.cli().args([
        "budget",
        "set",
        "--user",
        "admin",
        "--max-tokens-per-day",
        "100",
        "--alert-threshold",
        "50",
    ]));
    assert!(out.contains("user:admin"), "{out}");
    assert!(out.contains("50%"), "{out}");

    // Two calls as admin: 4 prompt words + "echo: a b c d" 5 words = 9 tokens each.
    let client = reqwest::Client::new();
    let login: Value = client
        .post(format!("{}/v1/auth/login", fabric.url))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap();
    for _ in 0..2 {
        let r = client
            .post(format!("{}/v1/chat/completions", fabric.url))
            .bearer_auth(token)
            .json(&json!({"model": "llama3", "max_tokens": 10,
                          "messages": [{"role": "user", "content": "a b c d"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    let out = super::stdout_of(
        fabric
            .cli()
            .args(["usage", "--user", "admin", "--period", "day", "-o", "json"]),
    );
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["tokens"]["used"], json!(18.0), "{report}");
    assert_eq!(report["tokens"]["remaining"], json!(82.0), "{report}");
    assert!(
        report["tokens"]["projected"].as_f64().unwrap() >= 18.0,
        "{report}"
    );
    let human = super::stdout_of(fabric.cli().args(["usage", "--user", "admin"]));
    assert!(
        human.contains("REMAINING") && human.contains("PROJECTED"),
        "{human}"
    );
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("tokens") && l.contains("18") && l.contains("82")),
        "{human}"
    );

    let list = super::stdout_of(fabric.cli().args(["budget", "list"]));
    assert!(
        list.contains("user:admin") && list.contains("100"),
        "{list}"
    );
    fabric
        .cli()
        .args(["budget", "delete", "--user", "admin"])
        .assert()
        .success();
    fabric
        .cli()
        .args(["budget", "get", "--user", "admin"])
        .assert()
        .failure();
    // Without a kind the CLI refuses before any request (usage error, exit 2).
    fabric
        .cli()
        .args(["budget", "set", "--max-tokens-per-day", "5"])
        .assert()
        .code(2);

    // Issue #17: `budget set` changes only the limits it is given.
    let limits = |fabric: &super::Fabric| -> serde_json::Value {
        let out = super::stdout_of(
            fabric
                .cli()
                .args(["-o", "json", "budget", "get", "--user", "admin"]),
        );
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    fabric
        .cli()
        .args([
            "budget",
            "set",
            "--user",
            "admin",
            "--max-tokens-per-day",
            "1000",
            "--alert-threshold",
            "50",
        ])
        .assert()
        .success();
    fabric
        .cli()
        .args([
            "budget",
            "set",
            "--user",
            "admin",
            "--max-cost-per-day-usd",
            "5",
        ])
        .assert()
        .success();
    let spec = limits(&fabric);
    assert_eq!(spec["max_tokens_per_day"], 1000, "kept: {spec}");
    assert_eq!(spec["max_cost_per_day_usd"], 5.0, "{spec}");
    assert_eq!(spec["alert_threshold_percent"], 50, "kept: {spec}");
    fabric
        .cli()
        .args(["budget", "set", "--user", "admin", "--clear-max-tokens"])
        .assert()
        .success();
    let spec = limits(&fabric);
    assert!(spec["max_tokens_per_day"].is_null(), "cleared: {spec}");
    assert_eq!(spec["max_cost_per_day_usd"], 5.0, "{spec}");
    // A budget for nobody is refused unless forced.
    fabric
        .cli()
        .args([
            "budget",
            "set",
            "--user",
            "nobody-here",
            "--max-tokens-per-day",
            "5",
        ])
        .assert()
        .code(4);
}
