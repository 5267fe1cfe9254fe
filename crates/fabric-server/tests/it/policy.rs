//! Policies over real HTTP (REQUIREMENTS §7): the API and its validation, the
//! precedence table end to end, live updates, the enforcement points (task
//! creation, the gateway, egress) and the audit trail, plus an approval
//! round trip with the real Python example agent waiting.

use std::time::{Duration, Instant};

use fabric_core::TaskStatus;
use serde_json::{Value, json};

use crate::harness::{TestServer, error_code, examples_dir};

async fn apply(s: &TestServer, token: &str, id: &str, body: Value) {
    let (status, answer) = s.put(token, &format!("/v1/policies/{id}"), body).await;
    assert_eq!(status, 200, "applying {id}: {answer}");
}

/// `POST /v1/policy/check`; returns the answer and the request id it was made under.
async fn check(s: &TestServer, token: &str, agent: &str, action: &str) -> (Value, String) {
    let r = s
        .client
        .post(s.url("/v1/policy/check"))
        .bearer_auth(token)
        .json(&json!({"agent": agent, "action": action}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    (r.json().await.unwrap(), request_id)
}

async fn decision(s: &TestServer, token: &str, agent: &str, action: &str) -> String {
    check(s, token, agent, action).await.0["decision"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn policy_api_validates_and_round_trips() {
    let s = TestServer::start().await;
    let admin = s.login().await;

    // The built-in default policy is there from the first start.
    let (status, list) = s.get(&admin, "/v1/policies").await;
    assert_eq!(status, 200, "{list}");
    let policies = list["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{list}");
    assert_eq!(policies[0]["id"], "default");
    assert_eq!(policies[0]["scope"], json!({"tenant": "*"}));

    let body = json!({"priority": 5, "scope": {"agent": "coder"}, "description": "coder rules",
        "rules": [{"action_pattern": "shell:rm *", "effect": "deny"},
                  {"action_pattern": "deploy:*", "effect": "allow",
                   "conditions": {"hours_utc": [9, 17], "weekdays": ["mon", "fri"]}}]});
    let (status, stored) = s.put(&admin, "/v1/policies/coder-rules", body).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["id"], "coder-rules");
    assert!(stored["updated_at"].is_string());
    let (_, list) = s.get(&admin, "/v1/policies").await;
    let ids: Vec<&str> = list["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["coder-rules", "default"]);

    // Clear 400s for what cannot be a policy.
    let bad = [
        (
            json!({"scope": {"agent": "a"}, "rules": [{"action_pattern": "shell:[x", "effect": "deny"}]}),
            "unclosed",
        ),
        (
            json!({"scope": {"agent": "a"}, "rules": [{"action_pattern": "", "effect": "deny"}]}),
            "empty pattern",
        ),
        (
            json!({"scope": {"agent": "a"}, "rules": [{"action_pattern": "x", "effect": "maybe"}]}),
            "effect",
        ),
        (json!({"scope": {"agent": "a"}, "rules": []}), "no rules"),
        (
            json!({"scope": {"planet": "a"}, "rules": [{"action_pattern": "x", "effect": "deny"}]}),
            "planet",
        ),
        (
            json!({"scope": {"agent": "a"}, "rules": [{"action_pattern": "x", "effect": "deny"}], "colour": 1}),
            "colour",
        ),
        (
            json!({"id": "other", "scope": {"agent": "a"}, "rules": [{"action_pattern": "x", "effect": "deny"}]}),
            "path names",
        ),
        (
            json!({"scope": {"agent": "a"}, "rules": [{"action_pattern": "x", "effect": "deny", "conditions": {"weekdays": ["caturday"]}}]}),
            "caturday",
        ),
    ];
    for (body, needle) in bad {
        let (status, answer) = s.put(&admin, "/v1/policies/p1", body.clone()).await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "invalid_request"),
            "{body}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    let (status, answer) = s
        .put(
            &admin,
            "/v1/policies/bad%20id",
            json!({"scope": {"agent": "a"}, "rules": [{"action_pattern": "x", "effect": "deny"}]}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");

    // Writes need admin; reading and checking need read:tasks; approvals `approve`.
    let (status, minted) = s
        .post(
            &admin,
            "/v1/auth/tokens",
            json!({"scopes": ["read:tasks", "write:tasks"]}),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    let user = minted["token"].as_str().unwrap();
    let (status, _) = s
        .put(
            user,
            "/v1/policies/x",
            json!({"scope": {"agent": "a"}, "rules": [{"action_pattern": "x", "effect": "deny"}]}),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(s.delete(user, "/v1/policies/coder-rules").await.0, 403);
    assert_eq!(s.get(user, "/v1/policies").await.0, 200);
    assert_eq!(s.get(user, "/v1/approvals").await.0, 403);
    assert_eq!(s.get(user, "/v1/audit").await.0, 403);
    let (status, answer) = s
        .post(
            user,
            "/v1/policy/check",
            json!({"agent": "coder", "action": "shell:rm -rf /"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"decision": "deny", "policy_id": "coder-rules", "rule": "#0 shell:rm *"})
    );
    let (status, answer) = s
        .post(user, "/v1/policy/check", json!({"agent": "coder"}))
        .await;
    assert_eq!(status, 400, "{answer}");

    assert_eq!(s.delete(&admin, "/v1/policies/coder-rules").await.0, 204);
    let (status, answer) = s.delete(&admin, "/v1/policies/coder-rules").await;
    assert_eq!(
        (status, error_code(&answer)),
        (404, "not_found"),
        "{answer}"
    );

    let (_, doc) = s.get(&admin, "/openapi.json").await;
    for path in [
        "/v1/policies",
        "/v1/policies/{id}",
        "/v1/policy/check",
        "/v1/approvals",
        "/v1/approvals/{id}/approve",
        "/v1/approvals/{id}/deny",
        "/v1/audit",
        "/v1/agent/check",
        "/v1/agent/approvals/{id}",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn precedence_and_inheritance_over_http_with_live_updates() {
    let s = TestServer::start().await;
    let admin = s.login().await;
    // Two agents in the `backend` workspace (configured on the agent).
    for id in ["coder", "reviewer"] {
        s.spawn_agent(
            &admin,
            json!({"id": id, "external": true, "workspace": "backend"}),
        )
        .await;
    }
    s.spawn_agent(&admin, json!({"id": "outsider", "external": true}))
        .await;
    apply(
        &s,
        &admin,
        "tenant",
        json!({"scope": {"tenant": "default"}, "rules": [
        {"action_pattern": "shell:rm -rf /*", "effect": "deny"},
        {"action_pattern": "shell:*", "effect": "allow"},
        {"action_pattern": "net:connect:prod-*", "effect": "require_approval"}]}),
    )
    .await;
    apply(
        &s,
        &admin,
        "backend",
        json!({"scope": {"workspace": "backend"}, "rules": [
        {"action_pattern": "shell:curl *", "effect": "deny"},
        {"action_pattern": "net:connect:*", "effect": "allow"}]}),
    )
    .await;
    apply(
        &s,
        &admin,
        "coder",
        json!({"scope": {"agent": "coder"}, "priority": 10, "rules": [
        {"action_pattern": "shell:*", "effect": "allow"},
        {"action_pattern": "net:*", "effect": "allow"}]}),
    )
    .await;

    let table = [
        ("coder", "shell:ls", "allow", "coder"),
        ("coder", "shell:rm -rf /", "deny", "tenant"), // a tenant deny cannot be loosened
        ("coder", "shell:curl x", "allow", "coder"),   // the agent beats its workspace
        (
            "coder",
            "net:connect:prod-db:5432",
            "require_approval",
            "tenant",
        ), // nor a tenant gate
        ("reviewer", "shell:curl x", "deny", "backend"), // the workspace beats the tenant
        ("reviewer", "net:connect:api:443", "allow", "backend"),
        ("reviewer", "shell:ls", "allow", "tenant"),
        ("outsider", "shell:curl x", "allow", "tenant"), // no workspace: only the tenant
        ("outsider", "fly:away", "deny", ""),            // default deny
        ("outsider", "task:create:outsider", "allow", "default"),
    ];
    for (agent, action, want, policy) in table {
        let (answer, _) = check(&s, &admin, agent, action).await;
        assert_eq!(answer["decision"], want, "{agent} {action}: {answer}");
        if policy.is_empty() {
            assert_eq!(answer["rule"], "default deny", "{answer}");
            assert!(answer.get("policy_id").is_none(), "{answer}");
        } else {
            assert_eq!(answer["policy_id"], policy, "{agent} {action}: {answer}");
        }
    }

    // Live: the next check sees every change, no restart.
    assert_eq!(decision(&s, &admin, "reviewer", "shell:ls").await, "allow");
    apply(
        &s,
        &admin,
        "reviewer",
        json!({"scope": {"agent": "reviewer"}, "rules": [
        {"action_pattern": "shell:ls", "effect": "deny"}]}),
    )
    .await;
    assert_eq!(decision(&s, &admin, "reviewer", "shell:ls").await, "deny");
    apply(
        &s,
        &admin,
        "reviewer",
        json!({"scope": {"agent": "reviewer"}, "rules": [
        {"action_pattern": "shell:ls", "effect": "require_approval"}]}),
    )
    .await;
    assert_eq!(
        decision(&s, &admin, "reviewer", "shell:ls").await,
        "require_approval"
    );
    assert_eq!(s.delete(&admin, "/v1/policies/reviewer").await.0, 204);
    assert_eq!(decision(&s, &admin, "reviewer", "shell:ls").await, "allow");
    // The workspace attribute may also be given in the check.
    let (status, answer) = s
        .post(
            &admin,
            "/v1/policy/check",
            json!({"agent": "outsider", "workspace": "backend", "action": "shell:curl x"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["decision"], "deny", "{answer}");
    s.stop().await;
}

#[tokio::test]
async fn task_creation_denied_by_a_policy_is_a_403_and_audited() {
    let s = TestServer::start().await;
    let admin = s.login().await;
    // The default policy keeps task creation working out of the box.
    let ok = s
        .create(&admin, json!({"agent": "noop", "prompt": "fine"}))
        .await;
    apply(
        &s,
        &admin,
        "no-noop",
        json!({"scope": {"tenant": "default"}, "rules": [
        {"action_pattern": "task:create:noop", "effect": "deny"}]}),
    )
    .await;
    let r = s
        .client
        .post(s.url("/v1/tasks"))
        .bearer_auth(&admin)
        .json(&json!({"agent": "noop", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "policy_denied", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("task:create:noop") && message.contains("no-noop"),
        "{message}"
    );
    assert_eq!(body["error"]["request_id"], request_id.as_str());
    // Other agents are unaffected; nothing was stored for the refused one.
    s.create(
        &admin,
        json!({"prompt": "still fine", "commands": ["true"]}),
    )
    .await;
    let (_, tasks) = s.get(&admin, "/v1/tasks?agent=noop").await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 1, "{tasks}");
    assert_eq!(tasks["tasks"][0]["id"], ok.as_str());

    let (_, audit) = s.get(&admin, "/v1/audit?decision=deny").await;
    let records = audit["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{audit}");
    let r = &records[0];
    assert_eq!(r["action"], "task:create:noop");
    assert_eq!(r["actor"], "admin");
    assert_eq!(r["agent"], "noop");
    assert_eq!(r["source"], "task_create");
    assert_eq!(r["policy_id"], "no-noop");
    assert_eq!(r["rule"], "#0 task:create:noop");
    assert_eq!(r["correlation_id"], request_id.as_str());
    assert!(r["ts"].is_string() && r["id"].is_string());
    s.stop().await;
}

#[tokio::test]
async fn llm_calls_denied_by_a_policy_get_a_403_in_the_gateway_error_shape() {
    let up = crate::gateway::Upstreams::start().await;
    let s = crate::gateway::server_with(&up).await;
    let admin = s.login().await;
    apply(
        &s,
        &admin,
        "no-big-models",
        json!({"scope": {"tenant": "default"}, "rules": [
        {"action_pattern": "llm:llama3*", "effect": "deny"}]}),
    )
    .await;
    let chat =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let (status, body) = s.post(&admin, "/v1/chat/completions", chat("llama3")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(error_code(&body), "policy_denied");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("llm:llama3"),
        "{body}"
    );
    let (status, body) = s
        .post(
            &admin,
            "/v1/llm/infer",
            json!({"model": "llama3:8b", "input": "hi"}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "policy_denied"),
        "{body}"
    );
    // An agent token through the Ollama API: the same check.
    let agent = crate::gateway::agent_token(&s, &admin, "llm-agent").await;
    let (status, body) = s
        .post(&agent, "/v1/ollama/api/chat", json!({"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": false}))
        .await;
    assert_eq!(
        (status, crate::harness::ollama_error_code(&body)),
        (403, "policy_denied"),
        "{body}"
    );
    // Other models still reach the upstream.
    let (status, body) = s
        .post(&admin, "/v1/chat/completions", chat("mistral"))
        .await;
    assert_eq!(status, 200, "{body}");
    // Listing models names none: not an LLM call, not checked.
    assert_eq!(s.get(&admin, "/v1/models").await.0, 200);

    let (_, audit) = s.get(&admin, "/v1/audit?limit=10").await;
    // The LLM decisions (creating the agent's token is audited too, as an admin action).
    let actions: Vec<(&str, &str, &str)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|r| r["source"] != "admin")
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["decision"].as_str().unwrap(),
                r["actor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("llm:llama3", "deny", "admin"),
            ("llm:llama3:8b", "deny", "admin"),
            ("llm:llama3", "deny", "agent:llm-agent"),
            ("llm:mistral", "allow", "admin"),
        ]
    );
    s.stop().await;
}

#[tokio::test]
async fn every_decision_of_a_scripted_run_is_audited_exactly_once() {
    let s = TestServer::start().await;
    let admin = s.login().await;
    apply(
        &s,
        &admin,
        "script",
        json!({"scope": {"tenant": "default"}, "rules": [
        {"action_pattern": "shell:rm *", "effect": "deny"},
        {"action_pattern": "shell:*", "effect": "allow"},
        {"action_pattern": "net:*", "effect": "require_approval"}]}),
    )
    .await;
    let actions = [
        "shell:ls",
        "shell:rm -rf /",
        "net:connect:db:5432",
        "file:write:/etc/passwd",
    ];
    let mut expected = Vec::new();
    // Concurrent checks, so the audit writes interleave in the store's batches.
    let mut calls = tokio::task::JoinSet::new();
    for round in 0..25 {
        for action in actions {
            let (base, token) = (s.base.clone(), admin.clone());
            let client = s.client.clone();
            let agent = format!("agent-{}", round % 3);
            calls.spawn(async move {
                let r = client
                    .post(format!("{base}/v1/policy/check"))
                    .bearer_auth(token)
                    .json(&json!({"agent": agent, "action": action}))
                    .send()
                    .await
                    .unwrap();
                let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
                let answer: Value = r.json().await.unwrap();
                (id, action, answer["decision"].as_str().unwrap().to_owned())
            });
        }
    }
    while let Some(done) = calls.join_next().await {
        expected.push(done.unwrap());
    }
    for _ in 0..5 {
        let (status, _) = s
            .post(&admin, "/v1/tasks", json!({"agent": "noop", "prompt": "p"}))
            .await;
        assert_eq!(status, 201);
    }
    let (_, audit) = s.get(&admin, "/v1/audit?limit=1000").await;
    // Policy decisions only (setting the rules up is audited too, as admin actions).
    let records: Vec<&Value> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["source"] != "admin")
        .collect();
    assert_eq!(
        records.len(),
        expected.len() + 5,
        "one record per decision, no more"
    );
    for (request_id, action, decision) in &expected {
        let matching: Vec<&Value> = records
            .iter()
            .copied()
            .filter(|r| r["correlation_id"] == request_id.as_str())
            .collect();
        assert_eq!(matching.len(), 1, "{request_id}: {matching:?}");
        assert_eq!(matching[0]["action"], *action);
        assert_eq!(matching[0]["decision"], decision.as_str());
        assert_eq!(matching[0]["source"], "check");
    }
    assert_eq!(
        records
            .iter()
            .filter(|r| r["source"] == "task_create")
            .count(),
        5
    );
    // Filters.
    let (_, denies) = s.get(&admin, "/v1/audit?decision=deny&limit=1000").await;
    let want = expected.iter().filter(|e| e.2 == "deny").count();
    assert_eq!(denies["records"].as_array().unwrap().len(), want);
    let (_, one) = s
        .get(&admin, "/v1/audit?agent=agent-1&decision=allow&limit=3")
        .await;
    let one = one["records"].as_array().unwrap();
    assert_eq!(one.len(), 3);
    assert!(
        one.iter()
            .all(|r| r["agent"] == "agent-1" && r["decision"] == "allow")
    );
    let (status, body) = s.get(&admin, "/v1/audit?decision=perhaps").await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "invalid_request"),
        "{body}"
    );
    // agent_fabric_policy_decisions_total counts exactly what was audited.
    let metrics = s.metrics().await;
    for decision in ["allow", "deny", "require_approval"] {
        let audited = records.iter().filter(|r| r["decision"] == decision).count();
        let line = format!("agent_fabric_policy_decisions_total{{decision=\"{decision}\"}} ");
        let counted: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .unwrap_or_else(|| panic!("no {line} in /metrics"))
            .parse()
            .unwrap();
        assert_eq!(counted, audited as f64, "{decision}");
    }
    s.stop().await;
}

/// The Python example agent (stdlib only) asks, waits for the approver, and
/// proceeds once approved: the task it was working on completes with the
/// decision it got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_round_trip_with_the_python_agent_waiting() {
    let s = TestServer::start().await;
    let admin = s.login().await;
    let command = format!(
        "python3 {}",
        examples_dir().join("python-agent/agent.py").display()
    );
    let examples = examples_dir().display().to_string();
    s.spawn_agent(
        &admin,
        json!({"id": "pycoder", "command": command, "isolation": {"read_only_paths": [examples]}}),
    )
    .await;
    apply(&s, &admin, "pycoder", json!({"scope": {"agent": "pycoder"}, "rules": [
        {"action_pattern": "net:connect:prod-*", "effect": "require_approval", "approvers": ["admin"]},
        {"action_pattern": "shell:rm *", "effect": "deny"}]})).await;

    let task = s
        .create(
            &admin,
            json!({"agent": "pycoder", "prompt": "check:net:connect:prod-db:5432"}),
        )
        .await;
    let mut pending = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (_, list) = s.get(&admin, "/v1/approvals?status=pending").await;
        if let Some(a) = list["approvals"].as_array().unwrap().first() {
            pending = a.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pending["action"], "net:connect:prod-db:5432", "{pending}");
    assert_eq!(pending["agent"], "pycoder");
    // The agent is waiting: its task is still running (and its answer
    // below names this approval, decided only by the approve call after this).
    assert_eq!(
        s.status_of(&admin, &task).await,
        fabric_core::TaskStatus::Running
    );
    let id = pending["id"].as_str().unwrap();
    let (status, body) = s
        .post(&admin, &format!("/v1/approvals/{id}/approve"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let view = s.wait_done(&admin, &task).await;
    assert_eq!(view.status, fabric_core::TaskStatus::Completed);
    let output = view.result.unwrap().output.unwrap();
    assert_eq!(output["decision"], "allow", "{output}");
    assert_eq!(output["approval_id"], id);

    // A plain deny needs no approver.
    let task = s
        .create(
            &admin,
            json!({"agent": "pycoder", "prompt": "check:shell:rm -rf /"}),
        )
        .await;
    let output = s
        .wait_done(&admin, &task)
        .await
        .result
        .unwrap()
        .output
        .unwrap();
    assert_eq!(output["decision"], "deny", "{output}");
    assert_eq!(output["rule"], "#1 shell:rm *");
    s.stop().await;
}

/// Egress from a sandboxed agent: both targets are in its allowlist (the
/// first gate), a policy denies one of them; the proxy refuses that one with
/// 403 and the decision is audited, the other goes through.
#[tokio::test]
async fn egress_allowlisted_but_denied_by_a_policy_is_refused_and_audited() {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let open = crate::agents::serve_text("0.0.0.0:0", "open-body").await;
    let closed = crate::agents::serve_text("0.0.0.0:0", "closed-body").await;
    let s =
        TestServer::start_with(|c| c.sandbox_helper = Some(crate::harness::sandbox_helper())).await;
    let admin = s.login().await;
    s.spawn_agent(
        &admin,
        json!({"id": "net", "isolation": {"level": "process", "network_egress": [
            format!("{host}:{}", open.port()), format!("{host}:{}", closed.port())]}}),
    )
    .await;
    apply(
        &s,
        &admin,
        "no-closed",
        json!({"scope": {"agent": "net"}, "rules": [
        {"action_pattern": format!("net:connect:*:{}", closed.port()), "effect": "deny"}]}),
    )
    .await;
    let fetch = |port: u16| {
        format!(
            "python3 -c \"import urllib.request as u\ntry:\n print(u.urlopen('http://{host}:{port}/', timeout=5).read().decode())\nexcept Exception as e:\n print('ERR', e)\""
        )
    };
    let task = s
        .create(
            &admin,
            json!({"agent": "net", "commands": [fetch(open.port()), fetch(closed.port())]}),
        )
        .await;
    let out = s.wait_done(&admin, &task).await.result.unwrap().stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "open-body", "{out}");
    assert!(
        lines[1].starts_with("ERR") && lines[1].contains("403"),
        "{out}"
    );

    let (_, audit) = s.get(&admin, "/v1/audit?agent=net").await;
    let egress: Vec<(String, String)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["source"] == "egress")
        .rev()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        egress,
        [
            (
                format!("net:connect:{host}:{}", open.port()),
                "allow".to_owned()
            ),
            (
                format!("net:connect:{host}:{}", closed.port()),
                "deny".to_owned()
            ),
        ],
        "{audit}"
    );
    s.stop().await;
}

/// Policies, the audit trail and pending approvals are in the store: a
/// restart (on the same data dir, or the same Redis prefix) finds them all,
/// and an approval asked for before the restart can be decided after it.
async fn survives_a_restart(store: fabric_server::StoreConfig, dir: &tempfile::TempDir) {
    let data = dir.path().join("data");
    let first = store.clone();
    let s = TestServer::start_in(data.clone(), move |c| c.store = first).await;
    let admin = s.login().await;
    apply(
        &s,
        &admin,
        "gate",
        json!({"scope": {"agent": "ext"}, "rules": [
        {"action_pattern": "deploy:*", "effect": "require_approval", "approval_timeout_secs": 600},
        {"action_pattern": "shell:*", "effect": "deny"}]}),
    )
    .await;
    let agent = crate::gateway::agent_token(&s, &admin, "ext").await;
    let (status, asked) = s
        .post(&agent, "/v1/agent/check", json!({"action": "deploy:prod"}))
        .await;
    assert_eq!(status, 200, "{asked}");
    assert_eq!(asked["decision"], "require_approval");
    assert_eq!(asked["approval_status"], "pending");
    let id = asked["approval_id"].as_str().unwrap().to_owned();
    assert_eq!(decision(&s, &admin, "ext", "shell:ls").await, "deny");
    s.stop().await;

    let s = TestServer::start_in(data, move |c| c.store = store).await;
    let admin = s.login().await;
    let (_, list) = s.get(&admin, "/v1/policies").await;
    let ids: Vec<&str> = list["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["default", "gate"],
        "the default policy is created once: {list}"
    );
    assert_eq!(decision(&s, &admin, "ext", "shell:ls").await, "deny");
    let (_, pending) = s.get(&admin, "/v1/approvals?status=pending").await;
    assert_eq!(pending["approvals"][0]["id"], id.as_str(), "{pending}");
    let (status, decided) = s
        .post(&admin, &format!("/v1/approvals/{id}/approve"), json!({}))
        .await;
    assert_eq!(status, 200, "{decided}");
    let (_, audit) = s.get(&admin, "/v1/audit?agent=ext").await;
    let summary: Vec<(&str, &str)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|r| {
            (
                r["source"].as_str().unwrap(),
                r["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("agent_check", "require_approval"),
            ("check", "deny"),
            ("check", "deny"),
            ("approval", "allow")
        ],
        "{audit}"
    );
    s.stop().await;
}

#[tokio::test]
async fn policies_audit_and_approvals_survive_a_restart_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    survives_a_restart(fabric_server::StoreConfig::Sqlite, &dir).await;
}

#[tokio::test]
async fn policies_audit_and_approvals_survive_a_restart_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    let redis = fabric_store::redis::testing::RedisServer::start(&dir.path().join("redis"));
    let store = fabric_server::StoreConfig::Redis {
        url: redis.url(),
        prefix: "policy".to_owned(),
    };
    survives_a_restart(store, &dir).await;
}

/// Issue #15: the shell agent asks `shell:<command>` for every command and
/// `file:write:<path>` for every file before it runs anything; a denial
/// fails the task `policy_denied` (audited), an approval gate makes it wait.
#[tokio::test(flavor = "multi_thread")]
async fn the_shell_agent_checks_commands_and_files_and_waits_for_approvals() {
    let s = TestServer::start().await;
    let admin = s.login().await;
    apply(
        &s,
        &admin,
        "shell-rules",
        json!({"scope": {"tenant": "default"}, "rules": [
            {"action_pattern": "shell:rm *", "effect": "deny"},
            {"action_pattern": "file:write:secret*", "effect": "deny"},
            {"action_pattern": "shell:touch *", "effect": "require_approval"},
        ]}),
    )
    .await;

    // Denied: nothing of the command runs.
    let command = "rm -rf /nonexistent; echo ran-anyway";
    let id = s.create(&admin, json!({"commands": [command]})).await;
    let done = s.wait_done(&admin, &id).await;
    assert_eq!(done.status, fabric_core::TaskStatus::Failed);
    assert_eq!(done.reason.as_deref(), Some("policy_denied"));
    let result = done.result.unwrap();
    assert!(!result.stdout.contains("ran-anyway"), "{result:?}");
    let error = result.error.unwrap();
    assert!(
        error.contains("shell-rules") && error.contains("shell:rm *"),
        "{error}"
    );
    let (_, audit) = s.get(&admin, "/v1/audit?decision=deny").await;
    assert!(
        audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == format!("shell:{command}").as_str()),
        "{audit}"
    );

    // A file the policies forbid to write: denied before anything runs.
    let id = s
        .create(
            &admin,
            json!({"commands": ["echo wrote"], "files": [{"path": "secret.txt", "content": "x"}]}),
        )
        .await;
    let done = s.wait_done(&admin, &id).await;
    assert_eq!(done.reason.as_deref(), Some("policy_denied"));
    assert!(
        done.result
            .unwrap()
            .error
            .unwrap()
            .contains("file:write:secret.txt")
    );

    // Allowed by the built-in default policy: runs as before.
    let id = s.create(&admin, json!({"commands": ["echo fine"]})).await;
    let done = s.wait_done(&admin, &id).await;
    assert_eq!(done.status, fabric_core::TaskStatus::Completed, "{done:?}");

    // An approval gate: the task waits (and says so), then runs once approved.
    let id = s
        .create(
            &admin,
            json!({"commands": ["touch approved.txt && echo done-after-approval"]}),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let approval = loop {
        let (_, list) = s.get(&admin, "/v1/approvals?status=pending").await;
        if let Some(a) = list["approvals"].as_array().and_then(|a| a.first()) {
            break a.clone();
        }
        assert!(Instant::now() < deadline, "no approval was requested");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        approval["action"],
        "shell:touch approved.txt && echo done-after-approval"
    );
    assert_eq!(
        s.status_of(&admin, &id).await,
        fabric_core::TaskStatus::Running
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, events) = s.get(&admin, &format!("/v1/tasks/{id}/events")).await;
        if events.to_string().contains("awaiting approval") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the task never said it waits: {events}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let approval_id = approval["id"].as_str().unwrap();
    let (status, body) = s
        .post(
            &admin,
            &format!("/v1/approvals/{approval_id}/approve"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let done = s.wait_done(&admin, &id).await;
    assert_eq!(done.status, fabric_core::TaskStatus::Completed, "{done:?}");
    assert!(done.result.unwrap().stdout.contains("done-after-approval"));

    // Denied by the approver: policy_denied, naming the approval.
    let id = s
        .create(&admin, json!({"commands": ["touch nope.txt"]}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let approval_id = loop {
        let (_, list) = s.get(&admin, "/v1/approvals?status=pending").await;
        if let Some(a) = list["approvals"].as_array().and_then(|a| a.first()) {
            break a["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no approval was requested");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    s.post(
        &admin,
        &format!("/v1/approvals/{approval_id}/deny"),
        json!({}),
    )
    .await;
    let done = s.wait_done(&admin, &id).await;
    assert_eq!(done.reason.as_deref(), Some("policy_denied"));
    assert!(done.result.unwrap().error.unwrap().contains("denied"));
}

/// The built-in default policy an earlier release stored, untouched, is
/// upgraded at start to allow tasks' commands and file writes (which it
/// let run before they were checked); an edited one is left alone.
async fn the_old_default_policy_is_upgraded(
    store: fabric_server::StoreConfig,
    dir: &tempfile::TempDir,
) {
    let data = dir.path().join("data");
    let first = store.clone();
    let s = TestServer::start_in(data.clone(), move |c| c.store = first).await;
    let admin = s.login().await;
    let old = json!({"scope": {"tenant": "*"}, "priority": i32::MIN,
        "description": "built-in: allows task creation, LLM calls and allowlisted egress in every tenant; edit or delete it to tighten",
        "rules": [{"action_pattern": "task:create:*", "effect": "allow"},
                  {"action_pattern": "llm:*", "effect": "allow"},
                  {"action_pattern": "net:connect:*", "effect": "allow"}]});
    apply(&s, &admin, "default", old.clone()).await;
    let mut edited = old;
    edited["description"] = json!("ours: no shell");
    apply(&s, &admin, "edited", edited).await;
    s.stop().await;

    let s = TestServer::start_in(data, move |c| c.store = store).await;
    let admin = s.login().await;
    let (_, list) = s.get(&admin, "/v1/policies").await;
    let patterns = |id: &str| -> Vec<String> {
        list["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap()["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["action_pattern"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        patterns("default").contains(&"shell:*".to_owned()),
        "{list}"
    );
    assert!(
        patterns("default").contains(&"file:write:*".to_owned()),
        "{list}"
    );
    assert_eq!(
        patterns("edited").len(),
        3,
        "an edited policy stays as written"
    );
    let id = s
        .create(&admin, json!({"commands": ["echo still-runs"]}))
        .await;
    let done = s.wait_done(&admin, &id).await;
    assert_eq!(done.status, fabric_core::TaskStatus::Completed, "{done:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_old_default_policy_is_upgraded_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    the_old_default_policy_is_upgraded(fabric_server::StoreConfig::Sqlite, &dir).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_old_default_policy_is_upgraded_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    let redis = fabric_store::redis::testing::RedisServer::start(&dir.path().join("redis"));
    let store = fabric_server::StoreConfig::Redis {
        url: redis.url(),
        prefix: "upgrade".to_owned(),
    };
    the_old_default_policy_is_upgraded(store, &dir).await;
}

/// Issue #15: creating a task that a policy gates on an approval waits (it
/// does not fail): the task is `awaiting_approval` with its `approval_id`,
/// its dependents wait too; approved it runs, denied it fails with
/// `policy_denied` (and so do its dependents), canceled it stays canceled,
/// and a restart keeps it waiting.
#[tokio::test(flavor = "multi_thread")]
async fn task_creation_needing_an_approval_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path().to_path_buf(), |_| {}).await;
    let admin = s.login().await;
    apply(&s, &admin, "gate-shell", json!({"scope": {"tenant": "default"}, "rules": [
        {"action_pattern": "task:create:shell", "effect": "require_approval", "approvers": ["admin"]},
        {"action_pattern": "*", "effect": "allow"}]}))
    .await;
    let create = |body: Value| {
        let (s, admin) = (&s, &admin);
        async move {
            let (status, task) = s.post(admin, "/v1/tasks", body).await;
            assert_eq!(status, 201, "{task}");
            task
        }
    };
    let decide = |approval: String, verdict: &'static str| {
        let (s, admin) = (&s, &admin);
        async move {
            let (status, body) = s
                .post(
                    admin,
                    &format!("/v1/approvals/{approval}/{verdict}"),
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };

    // Approved: it runs, then its dependent (on another agent) does.
    let gated = create(json!({"commands": ["echo gated"]})).await;
    assert_eq!(gated["status"], "awaiting_approval", "{gated}");
    let approval = gated["approval_id"].as_str().unwrap().to_owned();
    let id = gated["id"].as_str().unwrap().to_owned();
    let after = create(json!({"agent": "noop", "prompt": "after", "depends_on": [id]})).await;
    assert_eq!(after["status"], "pending", "{after}");
    let (_, list) = s.get(&admin, "/v1/tasks?status=awaiting_approval").await;
    assert_eq!(list["tasks"][0]["id"], id.as_str(), "{list}");
    let (_, pending) = s.get(&admin, "/v1/approvals?status=pending").await;
    assert_eq!(
        pending["approvals"][0]["action"], "task:create:shell",
        "{pending}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, still) = s.get(&admin, &format!("/v1/tasks/{id}")).await;
    assert_eq!(
        still["status"], "awaiting_approval",
        "nothing runs before the approval"
    );
    decide(approval, "approve").await;
    let done = s.wait_done(&admin, &id).await;
    assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
    assert_eq!(done.result.unwrap().stdout, "gated\n");
    let done = s.wait_done(&admin, after["id"].as_str().unwrap()).await;
    assert_eq!(done.status, TaskStatus::Completed, "{done:?}");

    // Denied: it fails with policy_denied, its dependent with dependency_failed.
    let denied = create(json!({"commands": ["echo never"]})).await;
    let id = denied["id"].as_str().unwrap().to_owned();
    let after = create(json!({"agent": "noop", "prompt": "after", "depends_on": [id]})).await;
    decide(denied["approval_id"].as_str().unwrap().to_owned(), "deny").await;
    let done = s.wait_done(&admin, &id).await;
    assert_eq!(done.status, TaskStatus::Failed, "{done:?}");
    assert_eq!(done.reason.as_deref(), Some("policy_denied"), "{done:?}");
    assert!(
        done.result
            .unwrap()
            .error
            .unwrap()
            .contains("denied by admin")
    );
    let done = s.wait_done(&admin, after["id"].as_str().unwrap()).await;
    assert_eq!(
        done.reason.as_deref(),
        Some("dependency_failed"),
        "{done:?}"
    );

    // Canceled while it waits: an approval afterwards changes nothing.
    let canceled = create(json!({"commands": ["echo never"]})).await;
    let id = canceled["id"].as_str().unwrap().to_owned();
    let (status, body) = s
        .post(&admin, &format!("/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("canceled")),
        "{body}"
    );
    decide(
        canceled["approval_id"].as_str().unwrap().to_owned(),
        "approve",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, after) = s.get(&admin, &format!("/v1/tasks/{id}")).await;
    assert_eq!(after["status"], "canceled", "{after}");

    // Across a restart it keeps waiting, and runs once approved.
    let kept = create(json!({"commands": ["echo kept"]})).await;
    let id = kept["id"].as_str().unwrap().to_owned();
    s.stop().await;
    let s = TestServer::start_in(dir.path().to_path_buf(), |_| {}).await;
    let admin = s.login().await;
    let (_, task) = s.get(&admin, &format!("/v1/tasks/{id}")).await;
    assert_eq!(task["status"], "awaiting_approval", "{task}");
    let approval = kept["approval_id"].as_str().unwrap();
    let (status, body) = s
        .post(
            &admin,
            &format!("/v1/approvals/{approval}/approve"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let done = s.wait_done(&admin, &id).await;
    assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
    s.stop().await;
}
