//! Telemetry as shipped (REQUIREMENTS §9, FR-TEL): `/metrics` checked by
//! `promtool` and scraped by a real Prometheus server; traces exported over
//! OTLP/HTTP to a receiver that decodes them with the reference protobuf
//! classes (Python `opentelemetry-proto`, from the venv `./scripts/test`
//! makes); the JSON log schema; secrets never in logs, metrics, traces or
//! responses; alerts (error rate with a webhook that fails once, crash loop).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::gateway::{KillOnDrop, Mock, Transcript, random_key};
use super::{free_port, readyz_ok};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn py_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/py")
}

/// The venv's python, checked to import the OTLP protobuf classes.
pub(crate) fn python() -> PathBuf {
    let python = std::env::var_os("FABRIC_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/py-venv/bin/python"));
    let how = "create it with ./scripts/test, or: python3 -m venv target/py-venv && target/py-venv/bin/pip install -r scripts/requirements-test.txt";
    let ok = Command::new(&python)
        .args(["-c", "import opentelemetry.proto"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the trace tests need {} with opentelemetry-proto: {how}",
        python.display()
    );
    python
}

fn need(tool: &str) {
    assert!(
        Command::new(tool).arg("--version").output().is_ok(),
        "{tool} is not installed: apt-get install prometheus (./scripts/test does)"
    );
}

/// The OTLP receiver (py/otlp_receiver.py): spans land in `out` as JSON lines.
pub(crate) struct Receiver {
    _child: KillOnDrop,
    pub(crate) url: String,
    out: PathBuf,
}

impl Receiver {
    pub(crate) fn start(dir: &Path) -> Receiver {
        let portfile = dir.join("receiver.port");
        let out = dir.join("spans.jsonl");
        let child = Command::new(python())
            .arg(py_dir().join("otlp_receiver.py"))
            .arg(&portfile)
            .arg(&out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let child = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&portfile) {
                break p.trim().to_owned();
            }
            assert!(Instant::now() < deadline, "the OTLP receiver did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Receiver {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
            out,
        }
    }

    pub(crate) fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A `reactor-fabric serve` child with its log in a file; killed on drop.
struct Server {
    child: KillOnDrop,
    base: String,
    log_path: PathBuf,
}

impl Server {
    fn start(dir: &Path, password: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let log_path = dir.join("server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("reactor-fabric"));
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.join("data"))
        // The tasks run this test's Python (a venv under target/) and post
        // spans to its collector on loopback: unconfined, on the host.
        .arg("--shell-as-fabric-user")
        .args(args)
        .env("FABRIC_ADMIN_PASSWORD", password)
        .env("FABRIC_CONFIG", dir.join("cli.toml"))
        .env("FABRIC_LOG", "debug")
        .env("OTEL_SERVICE_NAME", "fabric-test");
        for key in [
            "FABRIC_LISTEN",
            "FABRIC_DATA_DIR",
            "FABRIC_GATEWAY_CONFIG",
            "FABRIC_GATEWAY_POLICY",
            "FABRIC_LOG_FORMAT",
            "OLLAMA_BASE_URL",
            "OPENAI_API_KEY",
            "ANTHROPIC_API_KEY",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            cmd.env_remove(key);
        }
        let child = cmd
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Server {
            child: KillOnDrop(child),
            base: format!("http://127.0.0.1:{port}"),
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !readyz_ok(port) {
            assert!(
                Instant::now() < deadline,
                "the server did not become ready:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGTERM and wait: a graceful stop flushes the span queue.
    fn stop(mut self) -> String {
        let pid = self.child.0.id();
        let _ = Command::new("kill").arg(pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.log()
    }
}

async fn login(client: &reqwest::Client, base: &str, password: &str) -> String {
    let r: Value = client
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"username": "admin", "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned()
}

/// Waits until every task in `ids` is final; returns their statuses.
async fn wait_final(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    ids: &[String],
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut statuses = Vec::new();
        for id in ids {
            let t: Value = client
                .get(format!("{base}/v1/tasks/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            statuses.push(t["status"].as_str().unwrap_or_default().to_owned());
        }
        if statuses
            .iter()
            .all(|s| ["completed", "failed", "canceled", "timed_out"].contains(&s.as_str()))
        {
            return statuses;
        }
        assert!(Instant::now() < deadline, "tasks not done: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    body: Value,
    traceparent: Option<&str>,
) -> String {
    let mut req = client
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(token)
        .json(&body);
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// Everything a scripted session left behind.
struct Session {
    log: String,
    spans: Vec<Value>,
    metrics: String,
    transcript: Transcript,
    /// Secrets used in the session: admin password, provider key, agent token.
    secrets: Vec<String>,
    /// The caller's trace id and span id sent with the first task.
    caller_trace: String,
    caller_span: String,
    traced_task: String,
    plain_task: String,
    _dir: tempfile::TempDir,
}

/// Tracing on (to a receiver), a local and a keyed cloud mock LLM, an
/// admin with a known password, a command agent whose token the test learns;
/// a task created with a caller's `traceparent` whose shell command is an
/// instrumented agent (py/agent_span.py: its own span from TRACEPARENT, an
/// LLM call through its inference endpoint), a plain task, a cloud LLM call
/// with the provider key, calls with the agent token.
async fn scripted_session() -> Session {
    let dir = tempfile::tempdir().unwrap();
    let password = random_key("admin-pw");
    let provider_key = random_key("sk-cloud");
    let local = Mock::start("local", None);
    let cloud = Mock::start("cloud", Some(&provider_key));
    let receiver = Receiver::start(dir.path());
    let server = Server::start(
        dir.path(),
        &password,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
            ("OLLAMA_BASE_URL", local.url.as_str()),
            ("OPENAI_BASE_URL", &format!("{}/v1", cloud.url)),
            ("OPENAI_API_KEY", provider_key.as_str()),
        ],
    );
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let mut t = Transcript::default();
    let (status, v) = t
        .send(
            client
                .post(format!("{base}/v1/auth/login"))
                .json(&json!({"username": "admin", "password": password})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();

    let caller_trace = format!("{:032x}", rand_u128());
    let caller_span = format!("{:016x}", rand_u128() as u64 | 1);
    let agent_cmd = format!(
        "{} {}",
        python().display(),
        py_dir().join("agent_span.py").display()
    );
    let traced_task = create(
        &client,
        &base,
        &token,
        json!({"commands": [agent_cmd], "env": {"OTLP_URL": format!("{}/v1/traces", receiver.url)}}),
        Some(&format!("00-{caller_trace}-{caller_span}-01")),
    )
    .await;
    let plain_task = create(&client, &base, &token, json!({"commands": ["true"]}), None).await;
    let statuses = wait_final(
        &client,
        &base,
        &token,
        &[traced_task.clone(), plain_task.clone()],
    )
    .await;
    let (_, result) = t
        .send(
            client
                .get(format!("{base}/v1/tasks/{traced_task}/result"))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(statuses, ["completed", "completed"], "{result}");

    // The provider key in use.
    let (status, v) = t
        .send(
            client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&token)
                .header("X-Fabric-Policy", "openai")
                .json(&json!({"model": "m", "messages": [{"role": "user", "content": "cloud"}]})),
        )
        .await;
    assert_eq!(status, 200, "{v}");

    // A command agent: it hands its token to the test, which then uses it.
    let token_file = dir.path().join("agent-token");
    let (status, v) = t
        .send(client.post(format!("{base}/v1/agents")).bearer_auth(&token).json(&json!({
            "id": "tokened",
            // Unconfined: it writes where this test reads.
            "isolation": {"level": "none", "as_fabric_user": true},
            "command": format!("printf %s \"$FABRIC_TOKEN\" > {}; sleep 1000", token_file.display()),
        })))
        .await;
    assert_eq!(status, 201, "{v}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let agent_token = loop {
        if let Ok(tok) = std::fs::read_to_string(&token_file)
            && !tok.is_empty()
        {
            break tok;
        }
        assert!(Instant::now() < deadline, "the agent never wrote its token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, v) = t
        .send(
            client
                .post(format!("{base}/v1/agent/heartbeat"))
                .bearer_auth(&agent_token),
        )
        .await;
    assert!(status < 300, "{status} {v}");
    let (status, _) = t
        .send(
            client
                .get(format!("{base}/v1/agents/tokened"))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(status, 200);
    // A bad password and a bad token: error paths log too.
    t.send(
        client
            .post(format!("{base}/v1/auth/login"))
            .json(&json!({"username": "admin", "password": format!("{password}x")})),
    )
    .await;
    t.send(
        client
            .get(format!("{base}/v1/tasks"))
            .bearer_auth(format!("{agent_token}x")),
    )
    .await;
    let (status, _) = t
        .send(
            client
                .delete(format!("{base}/v1/agents/tokened"))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(status, 200);

    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let log = server.stop();
    // The exporter's last batch, and the agent's own span, are in by now or soon.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut spans = receiver.spans();
    while !spans.iter().any(|s| s["name"] == "agent.work")
        || !spans.iter().any(|s| s["name"] == "llm.call")
    {
        assert!(
            Instant::now() < deadline,
            "spans missing: {spans:#?}\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        spans = receiver.spans();
    }
    Session {
        log,
        spans,
        metrics,
        transcript: t,
        secrets: vec![password, provider_key, agent_token],
        caller_trace,
        caller_span,
        traced_task,
        plain_task,
        _dir: dir,
    }
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let s = std::collections::hash_map::RandomState::new();
    let mut a = s.build_hasher();
    a.write_u64(1);
    let mut b = s.build_hasher();
    b.write_u64(2);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

fn span_named<'a>(spans: &'a [Value], name: &str, task: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| {
            s["name"] == name
                && (s["attributes"]["task_id"] == task || s["attributes"]["task_id"].is_null())
        })
        .unwrap_or_else(|| panic!("no {name} span for {task} in {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_per_task_from_the_request_through_the_agent_to_the_llm() {
    let s = scripted_session().await;
    let spans = &s.spans;
    if std::env::var_os("DUMP_SPANS").is_some() {
        for sp in spans {
            eprintln!("{sp}");
        }
    }
    let trace: Vec<&Value> = spans
        .iter()
        .filter(|sp| sp["trace_id"] == s.caller_trace.as_str())
        .collect();
    let by_id: HashMap<&str, &Value> = trace
        .iter()
        .map(|sp| (sp["span_id"].as_str().unwrap(), *sp))
        .collect();
    let parent_of = |sp: &Value| -> &Value {
        let parent = sp["parent_span_id"].as_str().unwrap();
        by_id
            .get(parent)
            .copied()
            .unwrap_or_else(|| panic!("parent {parent} of {sp} is not in the trace: {trace:#?}"))
    };
    let task = s.traced_task.as_str();
    let find = |name: &str| -> &Value {
        trace
            .iter()
            .copied()
            .find(|sp| {
                sp["name"].as_str().unwrap().starts_with(name)
                    && (sp["attributes"]["task_id"].is_null()
                        || sp["attributes"]["task_id"] == task)
            })
            .unwrap_or_else(|| panic!("no {name:?} span in the caller's trace: {trace:#?}"))
    };
    // The API request is the child of the caller's span.
    let create = find("POST /v1/tasks");
    assert_eq!(create["parent_span_id"], s.caller_span.as_str());
    assert_eq!(create["kind"], 2, "server span");
    assert_eq!(create["service"], "fabric-test");
    assert_eq!(create["attributes"]["http.route"], "/v1/tasks");
    let schedule = find("task.schedule");
    assert_eq!(parent_of(schedule)["span_id"], create["span_id"]);
    let lease = find("task.lease");
    assert_eq!(parent_of(lease)["span_id"], create["span_id"]);
    let execute = find("task.execute");
    assert_eq!(parent_of(execute)["span_id"], lease["span_id"]);
    assert_eq!(execute["attributes"]["task.status"], "completed");
    // The agent's own span, from TRACEPARENT, exported by the agent.
    let agent = find("agent.work");
    assert_eq!(agent["service"], "test-agent");
    assert_eq!(parent_of(agent)["span_id"], execute["span_id"]);
    // Its LLM call through its inference endpoint, parented on its header.
    let endpoint = trace
        .iter()
        .find(|sp| sp["attributes"]["http.route"] == "agent_inference_endpoint")
        .unwrap_or_else(|| panic!("no endpoint span: {trace:#?}"));
    assert_eq!(parent_of(endpoint)["span_id"], agent["span_id"]);
    let llm = find("llm.call");
    assert_eq!(parent_of(llm)["span_id"], endpoint["span_id"]);
    assert_eq!(llm["kind"], 3, "client span");
    assert_eq!(llm["attributes"]["gen_ai.system"], "ollama");
    assert_eq!(llm["attributes"]["agent_id"], "shell");
    // The shell agent's protocol calls for the task join it too.
    let complete = trace
        .iter()
        .find(|sp| sp["name"] == "POST /v1/agent/tasks/{id}/complete")
        .unwrap_or_else(|| panic!("no complete span: {trace:#?}"));
    assert_eq!(parent_of(complete)["span_id"], execute["span_id"]);
    // Time nests: execution inside the lease's end and the agent inside execution.
    let at = |sp: &Value, edge: &str| -> u64 {
        sp[edge]
            .as_u64()
            .unwrap_or_else(|| panic!("span without a numeric {edge}: {sp}"))
    };
    assert!(
        at(lease, "end") <= at(execute, "start"),
        "{lease} {execute}"
    );
    assert!(
        at(agent, "start") >= at(execute, "start"),
        "{agent} {execute}"
    );
    assert!(at(agent, "end") <= at(execute, "end"), "{agent} {execute}");
    for sp in &trace {
        assert!(at(sp, "end") >= at(sp, "start"), "{sp}");
    }

    // The plain task: a trace of its own, rooted at its API request.
    let plain: Vec<&Value> = spans
        .iter()
        .filter(|sp| sp["attributes"]["task_id"] == s.plain_task.as_str())
        .collect();
    let plain_traces: HashSet<&str> = plain
        .iter()
        .map(|sp| sp["trace_id"].as_str().unwrap())
        .collect();
    assert_eq!(plain_traces.len(), 1, "one trace per task: {plain:#?}");
    let plain_trace = *plain_traces.iter().next().unwrap();
    assert_ne!(plain_trace, s.caller_trace);
    let root = spans
        .iter()
        .find(|sp| sp["trace_id"] == plain_trace && sp["name"] == "POST /v1/tasks")
        .unwrap();
    assert_eq!(root["parent_span_id"], "", "the request is the root");
    let names: HashSet<&str> = plain
        .iter()
        .map(|sp| sp["name"].as_str().unwrap())
        .collect();
    for name in ["task.schedule", "task.lease", "task.execute"] {
        assert!(names.contains(name), "{name} missing: {names:?}");
    }
    let _ = span_named(spans, "task.execute", &s.plain_task);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_with_the_documented_fields() {
    let s = scripted_session().await;
    let mut lines = 0;
    let mut finished = Vec::new();
    let mut llm_calls = Vec::new();
    let mut with_request_id = 0;
    for line in s.log.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        lines += 1;
        let ts = v["ts"].as_str().unwrap_or_else(|| panic!("no ts: {line}"));
        assert!(
            humantime::parse_rfc3339(ts).is_ok(),
            "ts {ts} is not RFC 3339"
        );
        assert!(
            ["trace", "debug", "info", "warn", "error"].contains(&v["level"].as_str().unwrap()),
            "{line}"
        );
        assert_eq!(v["service"], "reactor-fabric", "{line}");
        assert!(v["message"].is_string(), "{line}");
        if v["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_"))
        {
            with_request_id += 1;
        }
        match v["message"].as_str() {
            Some("task outcome") => finished.push(v.clone()),
            Some("llm call") => llm_calls.push(v.clone()),
            _ => {}
        }
    }
    assert!(lines > 10, "{}", s.log);
    assert!(
        with_request_id > 0,
        "no line carries a request_id:\n{}",
        s.log
    );
    let traced = finished
        .iter()
        .find(|v| v["task_id"] == s.traced_task.as_str())
        .unwrap_or_else(|| panic!("no 'task outcome' line for the task:\n{}", s.log));
    assert_eq!(traced["agent_id"], "shell");
    assert_eq!(traced["outcome"], "completed", "{traced}");
    assert!(traced["latency_ms"].is_u64(), "{traced}");
    assert_eq!(llm_calls.len(), 2, "{llm_calls:#?}");
    for call in &llm_calls {
        for key in [
            "request_id",
            "provider",
            "model",
            "tokens",
            "latency_ms",
            "outcome",
        ] {
            assert!(!call[key].is_null(), "{key} missing: {call}");
        }
        assert!(call["tokens"].as_u64().unwrap() > 0, "{call}");
        assert_eq!(call["outcome"], "ok");
    }
    assert!(
        llm_calls.iter().any(|c| c["agent_id"] == "shell"),
        "the agent's call names its agent: {llm_calls:#?}"
    );
    // Error bodies and X-Request-Id agree.
    let refused = s
        .transcript
        .0
        .iter()
        .find(|r| r.starts_with("401"))
        .unwrap_or_else(|| panic!("no 401 in the transcript"));
    let header = refused
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no X-Request-Id: {refused}"));
    assert!(
        refused.contains(&format!("\"request_id\":\"{header}\"")),
        "{refused}"
    );

    // The human format, for a terminal.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        "pw-pretty-123",
        &["--log-format", "pretty"],
        &[],
    );
    let log = server.stop();
    let serving = log
        .lines()
        .find(|l| l.contains("reactor-fabric serving"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(serde_json::from_str::<Value>(serving).is_err(), "{serving}");
    assert!(serving.contains("INFO"), "{serving}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_metrics_traces_or_responses() {
    let s = scripted_session().await;
    assert!(
        s.metrics.contains("agent_fabric_tasks_total"),
        "{}",
        s.metrics
    );
    let spans: String = s.spans.iter().map(|sp| format!("{sp}\n")).collect();
    let places = [
        ("logs", s.log.as_str()),
        ("/metrics", s.metrics.as_str()),
        ("traces", spans.as_str()),
        ("API responses", &s.transcript.0.join("\n")),
    ];
    for secret in &s.secrets {
        assert!(
            secret.len() >= 20,
            "secret too short to search for: {secret}"
        );
        let middle = &secret[secret.len() / 2 - 6..secret.len() / 2 + 6];
        for (place, text) in &places {
            for needle in [secret.as_str(), middle] {
                assert!(
                    !text.contains(needle),
                    "a secret leaked ({needle}) into {place}:\n{}",
                    text.lines()
                        .filter(|l| l.contains(needle))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        }
    }
}

/// One scrape of `/metrics`.
async fn scrape(client: &reqwest::Client, base: &str) -> String {
    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_prometheus_counts_the_tasks() {
    need("promtool");
    need("prometheus");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "pw-metrics-123", &[], &[]);
    let client = reqwest::Client::new();
    let token = login(&client, &server.base, "pw-metrics-123").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            create(
                &client,
                &server.base,
                &token,
                json!({"commands": [format!("echo {i}")]}),
                None,
            )
            .await,
        );
    }
    for _ in 0..2 {
        ids.push(
            create(
                &client,
                &server.base,
                &token,
                json!({"commands": ["exit 3"], "max_attempts": 1}),
                None,
            )
            .await,
        );
    }
    let statuses = wait_final(&client, &server.base, &token, &ids).await;
    assert_eq!(statuses.iter().filter(|s| *s == "completed").count(), 3);
    // A 404 and a route with a path parameter.
    let r = client
        .get(format!("{}/v1/tasks/{}", server.base, ids[0]))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let text = scrape(&client, &server.base).await;
    for expected in [
        "agent_fabric_tasks_total{agent_id=\"shell\",status=\"completed\"} 3\n",
        "agent_fabric_tasks_total{agent_id=\"shell\",status=\"failed\"} 2\n",
        "agent_fabric_task_duration_seconds_count{agent_id=\"shell\"} 5\n",
        "# TYPE agent_fabric_tokens_total counter\n",
        "# TYPE agent_fabric_budget_usage_ratio gauge\n",
        "# TYPE agent_fabric_policy_decisions_total counter\n",
        "agent_fabric_agents_active 1\n",
        "agent_fabric_http_requests_total{method=\"GET\",route=\"/v1/tasks/{id}\",status=\"200\"}",
        "agent_fabric_http_requests_total{method=\"POST\",route=\"/v1/tasks\",status=\"201\"} 5\n",
        "agent_fabric_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/tasks\",le=\"+Inf\"} 5\n",
        "agent_fabric_lease_latency_seconds_count 5\n",
        "agent_fabric_scheduler_tasks{state=\"queued\"} 0\n",
        "agent_fabric_agent_memory_bytes{agent_id=\"shell\"}",
        "# TYPE agent_fabric_llm_calls_total counter\n",
        "# TYPE agent_fabric_llm_gateway_overhead_seconds histogram\n",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    // No task ids as labels.
    for id in &ids {
        assert!(!text.contains(id.as_str()), "task id {id} in /metrics");
    }
    let metrics_file = dir.path().join("metrics.txt");
    std::fs::write(&metrics_file, &text).unwrap();
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&metrics_file).unwrap())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // A real Prometheus scrapes it every second; PromQL sees the counts.
    let prom_port = free_port();
    let target = server.base.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: fabric\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let prom_log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prom = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdin(Stdio::null())
            .stdout(prom_log.try_clone().unwrap())
            .stderr(prom_log)
            .spawn()
            .unwrap(),
    );
    let query = "sum by (status) (agent_fabric_tasks_total{agent_id=\"shell\"})";
    let deadline = Instant::now() + Duration::from_secs(60);
    let counts = loop {
        let answer = client
            .get(format!("http://127.0.0.1:{prom_port}/api/v1/query"))
            .query(&[("query", query)])
            .send()
            .await;
        if let Ok(answer) = answer
            && let Ok(v) = answer.json::<Value>().await
        {
            let counts: HashMap<String, String> = v["data"]["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    (
                        r["metric"]["status"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        r["value"][1].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            if counts.len() == 2 {
                break counts;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never had the task counts:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(counts["completed"], "3", "{counts:?}");
    assert_eq!(counts["failed"], "2", "{counts:?}");
    let up: Value = client
        .get(format!("http://127.0.0.1:{prom_port}/api/v1/query"))
        .query(&[("query", "up{job=\"fabric\"}")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");

    // Every query of the Grafana dashboard parses and runs in Prometheus.
    for expr in dashboard_exprs() {
        let expr = expr.replace("$__rate_interval", "1m");
        let v: Value = client
            .get(format!("http://127.0.0.1:{prom_port}/api/v1/query"))
            .query(&[("query", expr.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "success", "{expr}: {v}");
    }
}

/// The `expr` of every target of every panel of deploy/grafana/reactor-fabric.json.
fn dashboard_exprs() -> Vec<String> {
    let path = workspace().join("deploy/grafana/reactor-fabric.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dashboard: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{panel}"));
        assert!(!targets.is_empty(), "panel without queries: {panel}");
        for t in targets {
            exprs.push(
                t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{t}"))
                    .to_owned(),
            );
        }
    }
    exprs
}

/// The `agent_fabric_*` names a PromQL expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("agent_fabric_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_only_queries_metrics_the_server_exposes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "pw-grafana-123", &[], &[]);
    let text = scrape(&reqwest::Client::new(), &server.base).await;
    // Families are listed (HELP/TYPE) even before they have a series.
    let mut exposed = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            exposed.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exposed.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{exprs:?}");
    let mut used = HashSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "query names no agent_fabric_ metric: {expr}"
        );
        for name in names {
            assert!(
                exposed.contains(&name),
                "the dashboard queries {name}, which /metrics does not expose ({expr})"
            );
            used.insert(name);
        }
    }
    // The REQUIREMENTS §9 metrics are all on the dashboard.
    for name in [
        "agent_fabric_tasks_total",
        "agent_fabric_task_duration_seconds_bucket",
        "agent_fabric_tokens_total",
        "agent_fabric_budget_usage_ratio",
        "agent_fabric_agents_active",
        "agent_fabric_policy_decisions_total",
    ] {
        assert!(used.contains(name), "{name} is not on the dashboard");
    }
}

/// A webhook on loopback: answers 500 to the first POST, 200 after; keeps the bodies.
async fn webhook() -> (String, tokio::sync::mpsc::UnboundedReceiver<(u16, Value)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut served = 0;
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Headers, then Content-Length bytes of body.
            let body = loop {
                let n = conn.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + length {
                        break Some(buf[end + 4..end + 4 + length].to_vec());
                    }
                }
            };
            let Some(body) = body else { continue };
            served += 1;
            let status = if served == 1 { 500 } else { 200 };
            let _ = tx.send((status, serde_json::from_slice(&body).unwrap_or(Value::Null)));
            let reply =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = conn.write_all(reply.as_bytes()).await;
        }
    });
    (url, rx)
}

async fn wait_alert(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    kind: &str,
    secs: u64,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v: Value = client
            .get(format!("{base}/v1/alerts?kind={kind}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(alert) = v["alerts"].as_array().and_then(|a| a.first()) {
            return alert.clone();
        }
        assert!(Instant::now() < deadline, "no {kind} alert: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_alert_reaches_the_webhook_after_a_failed_delivery() {
    let (hook, mut deliveries) = webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        "pw-alerts-123",
        &[
            "--alert-webhook",
            &hook,
            // Wide enough that all 12 failures fall in one window however
            // slowly a loaded machine runs them.
            "--alert-window",
            "10s",
            "--alert-error-rate",
            "0.5",
        ],
        &[],
    );
    let client = reqwest::Client::new();
    let token = login(&client, &server.base, "pw-alerts-123").await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(
            create(
                &client,
                &server.base,
                &token,
                json!({"commands": ["exit 3"], "max_attempts": 1}),
                None,
            )
            .await,
        );
    }
    wait_final(&client, &server.base, &token, &ids).await;
    let alert = wait_alert(&client, &server.base, &token, "task_error_rate", 30).await;
    assert_eq!(alert["entity"], "tasks");
    // Raised at the first look that saw at least 10 finished (all failed).
    let errors = alert["details"]["errors"].as_u64().unwrap();
    assert!((10..=12).contains(&errors), "{alert}");
    assert_eq!(alert["details"]["total"], errors, "{alert}");
    assert!(
        alert["message"].as_str().unwrap().contains("failed"),
        "{alert}"
    );

    // The webhook failed once (500), then got the same alert again.
    let (first_status, first) = tokio::time::timeout(Duration::from_secs(20), deliveries.recv())
        .await
        .unwrap()
        .unwrap();
    let (second_status, second) = tokio::time::timeout(Duration::from_secs(20), deliveries.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first_status, second_status), (500, 200));
    assert_eq!(first["id"], alert["id"]);
    assert_eq!(second["id"], alert["id"]);
    assert_eq!(second["kind"], "task_error_rate");

    // Counted once and logged (that later looks do not raise it again is
    // the de-duplication unit test's, on paused time, in fabric-server's alerts).
    let text = scrape(&client, &server.base).await;
    assert!(
        text.contains("agent_fabric_alerts_total{kind=\"task_error_rate\"} 1\n"),
        "{text}"
    );
    // Only admins read alerts: a token with every other scope gets 403.
    let r: Value = client
        .post(format!("{}/v1/auth/tokens", server.base))
        .bearer_auth(&token)
        .json(&json!({"scopes": ["read:tasks", "write:tasks", "llm:invoke"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reader = r["token"].as_str().unwrap_or_else(|| panic!("{r}"));
    let r = client
        .get(format!("{}/v1/alerts", server.base))
        .bearer_auth(reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let log = server.stop();
    assert!(
        log.lines()
            .any(|l| l.contains("\"alert_kind\":\"task_error_rate\"")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_in_a_crash_loop_raises_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "pw-crash-123", &[], &[]);
    let client = reqwest::Client::new();
    let token = login(&client, &server.base, "pw-crash-123").await;
    let r = client
        .post(format!("{}/v1/agents", server.base))
        .bearer_auth(&token)
        .json(&json!({"id": "crasher", "isolation": {"level": "none"}, "command": "sleep 0.2; exit 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Restarts back off 1 s, 2 s, 4 s: the third comes ~7 s in.
    let alert = wait_alert(&client, &server.base, &token, "agent_crash_loop", 40).await;
    assert_eq!(alert["entity"], "crasher");
    assert!(
        alert["details"]["restarts"].as_u64().unwrap() >= 3,
        "{alert}"
    );
    let text = scrape(&client, &server.base).await;
    assert!(
        text.contains("agent_fabric_alerts_total{kind=\"agent_crash_loop\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("agent_fabric_agent_restarts_total{agent_id=\"crasher\"}"),
        "{text}"
    );
    // Alerts are not for anonymous callers.
    let r = client
        .get(format!("{}/v1/alerts", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// Issue #17: without `--log-format`, `serve` writes readable lines to a
/// terminal (coloured unless `NO_COLOR` is set) and JSON lines elsewhere.
#[test]
fn serve_logs_are_readable_on_a_terminal_and_json_otherwise() {
    use std::os::unix::process::CommandExt as _;
    let binary = assert_cmd::cargo::cargo_bin("reactor-fabric");
    let run = |no_color: bool| -> String {
        let dir = tempfile::tempdir().unwrap();
        let typescript = dir.path().join("typescript");
        let command = format!(
            "{} serve --listen 127.0.0.1:{} --data-dir {} --shell-as-fabric-user",
            binary.display(),
            free_port(),
            dir.path().join("data").display()
        );
        // `script` gives the server a terminal (a pty) and records what it wrote there.
        let mut cmd = Command::new("script");
        cmd.args(["-qefc", &command])
            .arg(&typescript)
            .env("FABRIC_ADMIN_PASSWORD", "pw-tty-1234")
            .env_remove("FABRIC_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0);
        if no_color {
            cmd.env("NO_COLOR", "1");
        } else {
            cmd.env_remove("NO_COLOR");
        }
        let child = cmd.spawn().unwrap();
        let pgid = child.id();
        let _child = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let log = loop {
            let log = std::fs::read_to_string(&typescript).unwrap_or_default();
            if log.contains("reactor-fabric serving") {
                break log;
            }
            assert!(Instant::now() < deadline, "never served: {log}");
            std::thread::sleep(Duration::from_millis(50));
        };
        // The whole group: `script`, its shell and the server.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
        log
    };
    let coloured = run(false);
    let serving = coloured
        .lines()
        .find(|l| l.contains("reactor-fabric serving"))
        .unwrap();
    assert!(
        !serving.trim_start().starts_with('{'),
        "not JSON on a terminal: {serving}"
    );
    assert!(
        serving.contains('\u{1b}'),
        "coloured on a terminal: {serving:?}"
    );
    let plain = run(true);
    let serving = plain
        .lines()
        .find(|l| l.contains("reactor-fabric serving"))
        .unwrap();
    assert!(serving.contains("INFO"), "{serving}");
    assert!(!serving.contains('\u{1b}'), "NO_COLOR: {serving:?}");
    // Not a terminal (a file): JSON, as every other test here reads it.
}
