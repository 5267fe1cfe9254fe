//! The HTTP API end to end (REQUIREMENTS §10, FR-SCHED-1..6).

use std::time::{Duration, Instant};

use fabric_core::TaskStatus;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::{TestServer, error_code};

#[tokio::test]
async fn health_readiness_and_openapi() {
    let s = TestServer::start().await;
    let r: Value = s
        .client
        .get(s.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "ok");
    assert_eq!(r["version"], fabric_core::VERSION);
    assert_eq!(
        s.client
            .get(s.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let doc: Value = s
        .client
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/tasks",
        "/v1/tasks/{id}/result",
        "/v1/auth/login",
        "/v1/stream/{id}",
        "/v1/jobs",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["CreateTaskRequest"].is_object());
    s.stop().await;
}

#[tokio::test]
async fn authentication_failures_are_401_with_json_bodies() {
    let s = TestServer::start().await;
    let r = s.client.get(s.url("/v1/tasks")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "unauthorized");
    assert_eq!(body["error"]["request_id"], request_id.as_str());

    let (status, body) = s.get("rf_not-a-real-token", "/v1/auth/whoami").await;
    assert_eq!((status, error_code(&body)), (401, "unauthorized"));

    let (status, body) = s
        .post(
            "",
            "/v1/auth/login",
            json!({"username": "admin", "password": "wrong"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (401, "unauthorized"));
    let (status, body) = s
        .post(
            "",
            "/v1/auth/login",
            json!({"username": "nobody", "password": "x"}),
        )
        .await;
    assert_eq!(status, 401, "{body}");

    let token = s.login().await;
    let (status, me) = s.get(&token, "/v1/auth/whoami").await;
    assert_eq!(status, 200);
    assert_eq!(me["user"], "admin");
    assert_eq!(me["scopes"], json!(["admin"]));
    let r = s
        .client
        .post(s.url("/v1/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, _) = s.get(&token, "/v1/auth/whoami").await;
    assert_eq!(status, 401, "a logged-out token must stop working");
    s.stop().await;
}

#[tokio::test]
async fn scopes_limit_what_a_token_may_do() {
    let s = TestServer::start().await;
    let admin = s.login().await;
    let (status, tok) = s
        .post(
            &admin,
            "/v1/auth/tokens",
            json!({"name": "ro", "scopes": ["read:tasks"]}),
        )
        .await;
    assert_eq!(status, 201, "{tok}");
    let read_only = tok["token"].as_str().unwrap();
    assert!(read_only.starts_with("rf_"));
    let (status, body) = s
        .post(read_only, "/v1/tasks", json!({"prompt": "true"}))
        .await;
    assert_eq!((status, error_code(&body)), (403, "forbidden"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("write:tasks")
    );
    let (status, _) = s.get(read_only, "/v1/tasks").await;
    assert_eq!(status, 200);
    // A token cannot mint a token with more than it holds.
    let (status, _) = s
        .post(read_only, "/v1/auth/tokens", json!({"scopes": ["admin"]}))
        .await;
    assert_eq!(status, 403);
    s.stop().await;
}

#[tokio::test]
async fn shell_task_runs_and_returns_stdout_and_exit_code() {
    let s = TestServer::start().await;
    let token = s.login().await;
    let id = s.create(&token, json!({"prompt": "echo hello"})).await;
    let view = s.wait_done(&token, &id).await;
    assert_eq!(view.status, TaskStatus::Completed);
    let result = view.result.unwrap();
    assert_eq!(
        (result.stdout.as_str(), result.exit_code),
        ("hello\n", Some(0))
    );

    let id = s.create(&token, json!({"commands": ["echo one", "echo two >&2", "exit 3", "echo never"], "priority": "high"})).await;
    let view = s.wait_done(&token, &id).await;
    assert_eq!(view.status, TaskStatus::Failed);
    let result = view.result.unwrap();
    assert_eq!(
        (
            result.stdout.as_str(),
            result.stderr.as_str(),
            result.exit_code
        ),
        ("one\n", "two\n", Some(3))
    );
    assert!(result.error.unwrap().contains("exited with status 3"));

    // /v1/jobs answers the same.
    let (status, job) = s
        .post(&token, "/v1/jobs", json!({"prompt": "echo job"}))
        .await;
    assert_eq!(status, 201);
    let (status, same) = s
        .get(&token, &format!("/v1/jobs/{}", job["id"].as_str().unwrap()))
        .await;
    assert_eq!((status, &same["id"]), (200, &job["id"]));
    s.stop().await;
}

#[tokio::test]
async fn task_context_env_is_set_by_the_fabric_and_cannot_be_forged() {
    let s = TestServer::start().await;
    let token = s.login().await;
    let id = s
        .create(
            &token,
            json!({"commands": ["echo $FABRIC_TASK_ID $FABRIC_AGENT_ID $GREETING", "pwd", "cat in.txt"],
                   "env": {"GREETING": "hi"}, "files": [{"path": "in.txt", "content": "from a file"}]}),
        )
        .await;
    let result = s.wait_done(&token, &id).await.result.unwrap();
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(lines[0], format!("{id} shell hi"));
    assert!(
        lines[1].ends_with(&id),
        "per-task working dir, got {}",
        lines[1]
    );
    assert!(lines[1].starts_with(s.data_dir.to_str().unwrap()));
    assert_eq!(lines[2], "from a file");

    let (status, body) = s
        .post(
            &token,
            "/v1/tasks",
            json!({"prompt": "true", "env": {"FABRIC_TASK_ID": "forged"}}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"));
    let (status, body) = s
        .post(
            &token,
            "/v1/tasks",
            json!({"prompt": "true", "files": [{"path": "../x", "content": ""}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let s = TestServer::start().await;
    let token = s.login().await;
    let big = "x".repeat(fabric_server::api::MAX_BODY_BYTES + 1);
    let (status, body) = s.post(&token, "/v1/tasks", json!({"prompt": big})).await;
    assert_eq!((status, error_code(&body)), (413, "payload_too_large"));

    let r = s
        .client
        .post(s.url("/v1/tasks"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (status, body) = s
        .post(
            &token,
            "/v1/tasks",
            json!({"prompt": "true", "priority": "urgent"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = s
        .post(
            &token,
            "/v1/tasks",
            json!({"prompt": "true", "colour": "red"}),
        )
        .await;
    assert!(
        status == 400
            && body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("colour"),
        "{body}"
    );
    let (status, body) = s.post(&token, "/v1/tasks", json!({})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = s
        .post(
            &token,
            "/v1/tasks",
            json!({"prompt": "true", "agent": "ghost"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (404, "agent_not_found"));
    let (status, body) = s.get(&token, "/v1/tasks/not-a-uuid").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = s
        .get(&token, &format!("/v1/tasks/{}", fabric_core::TaskId::new()))
        .await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = s.get(&token, "/v1/nothing-here").await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = s.get(&token, "/v1/tasks?limit=0").await;
    assert_eq!(status, 400, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn idempotency_key_makes_create_safe_to_retry() {
    let s = TestServer::start().await;
    let token = s.login().await;
    let send = || {
        s.client
            .post(s.url("/v1/tasks"))
            .bearer_auth(&token)
            .header("Idempotency-Key", "order-42")
            .json(&json!({"prompt": "echo once"}))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    let (_, list) = s.get(&token, "/v1/tasks").await;
    assert_eq!(
        list["tasks"].as_array().unwrap().len(),
        1,
        "a retry must not create a second task"
    );
    s.stop().await;
}

#[tokio::test]
async fn full_queue_is_429_with_a_clear_body() {
    let s = TestServer::start_with(|c| {
        c.max_queue_depth = 2;
        c.shell_concurrency = 1;
    })
    .await;
    let token = s.login().await;
    let running = s.create(&token, json!({"prompt": "sleep 30"})).await;
    s.wait_status(&token, &running, TaskStatus::Running).await;
    s.create(&token, json!({"prompt": "true"})).await;
    s.create(&token, json!({"prompt": "true"})).await;
    let (status, body) = s.post(&token, "/v1/tasks", json!({"prompt": "true"})).await;
    assert_eq!((status, error_code(&body)), (429, "queue_full"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_queue_depth")
    );
    let (status, _) = s
        .post(&token, &format!("/v1/tasks/{running}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test]
async fn dependencies_wait_and_failures_propagate() {
    let s = TestServer::start().await;
    let token = s.login().await;
    let a = s
        .create(&token, json!({"prompt": "sleep 0.3; echo a"}))
        .await;
    let (status, b) = s
        .post(
            &token,
            "/v1/tasks",
            json!({"prompt": "echo b", "depends_on": [a]}),
        )
        .await;
    assert_eq!((status, b["status"].as_str()), (201, Some("pending")));
    let b = b["id"].as_str().unwrap();
    assert_eq!(s.wait_done(&token, b).await.status, TaskStatus::Completed);
    assert_eq!(s.wait_done(&token, &a).await.status, TaskStatus::Completed);

    let bad = s.create(&token, json!({"prompt": "exit 1"})).await;
    let c = s
        .create(&token, json!({"prompt": "echo c", "depends_on": [bad]}))
        .await;
    let d = s
        .create(&token, json!({"prompt": "echo d", "depends_on": [c]}))
        .await;
    for id in [&c, &d] {
        let view = s.wait_done(&token, id).await;
        assert_eq!(
            (view.status, view.reason.as_deref()),
            (TaskStatus::Failed, Some("dependency_failed"))
        );
    }
    // Depending on an already failed task fails at once.
    let (status, e) = s
        .post(
            &token,
            "/v1/tasks",
            json!({"prompt": "true", "depends_on": [bad]}),
        )
        .await;
    assert_eq!(
        (status, e["status"].as_str(), e["reason"].as_str()),
        (201, Some("failed"), Some("dependency_failed"))
    );
    let (status, body) = s
        .post(
            &token,
            "/v1/tasks",
            json!({"prompt": "true", "depends_on": [fabric_core::TaskId::new()]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn cancel_stops_a_running_process_and_finished_tasks_conflict() {
    let s = TestServer::start().await;
    let token = s.login().await;
    let marker = s.data_dir.join("still-running");
    let command = format!("sleep 2; touch {}", marker.display());
    let id = s.create(&token, json!({"prompt": command})).await;
    // `running` is recorded before the shell starts: wait for the process.
    let processes = || pgrep(&marker.display().to_string());
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes().is_empty() {
        assert!(Instant::now() < deadline, "the task's shell never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, task) = s
        .post(&token, &format!("/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!((status, task["status"].as_str()), (200, Some("canceled")));
    // Gone before it could touch the marker, and nothing is left to do it later.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !processes().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the canceled process kept running: {:?}",
            processes()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!marker.exists(), "the canceled process ran to its end");
    assert_eq!(s.status_of(&token, &id).await, TaskStatus::Canceled);
    let (status, body) = s
        .post(&token, &format!("/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!((status, error_code(&body)), (409, "conflict"));
    s.stop().await;
}

#[tokio::test]
async fn timeout_kills_the_attempt_and_reports_timed_out() {
    let s = TestServer::start().await;
    let token = s.login().await;
    let started = Instant::now();
    let id = s
        .create(
            &token,
            json!({"prompt": "sleep 20", "timeout_seconds": 0.5}),
        )
        .await;
    let view = s.wait_done(&token, &id).await;
    assert_eq!(
        (view.status, view.reason.as_deref()),
        (TaskStatus::TimedOut, Some("timed_out"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    s.stop().await;
}

#[tokio::test]
async fn websocket_streams_logs_then_the_result() {
    let s = TestServer::start().await;
    let token = s.login().await;
    let id = s
        .create(
            &token,
            json!({"prompt": "echo first; sleep 0.5; echo second"}),
        )
        .await;
    let mut request = format!("{}/v1/stream/{id}", s.base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut messages = Vec::new();
    while let Some(Ok(msg)) = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
    {
        match msg {
            Message::Text(t) => messages.push(serde_json::from_str::<Value>(&t).unwrap()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    for m in &messages {
        assert!(
            m["type"].is_string() && m["ts"].is_string() && m["payload"].is_object(),
            "{m}"
        );
    }
    let logs: Vec<&str> = messages
        .iter()
        .filter(|m| m["type"] == "log")
        .map(|m| m["payload"]["line"].as_str().unwrap())
        .collect();
    assert_eq!(logs, vec!["first", "second"]);
    let statuses: Vec<&str> = messages
        .iter()
        .filter(|m| m["type"] == "status")
        .map(|m| m["payload"]["status"].as_str().unwrap())
        .collect();
    assert!(statuses.contains(&"running"), "{statuses:?}");
    let last = messages.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["payload"]["status"].as_str()),
        (Some("result"), Some("completed"))
    );
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "events out of order or doubled: {seqs:?}"
    );

    // The query-string token works too, and a finished task replays its history.
    let url = format!(
        "{}/v1/stream/{id}?token={token}",
        s.base.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut replayed = 0;
    while let Some(Ok(Message::Text(_))) = ws.next().await {
        replayed += 1;
    }
    assert_eq!(replayed, messages.len());
    let (_, events) = s.get(&token, &format!("/v1/tasks/{id}/events")).await;
    assert_eq!(events["events"].as_array().unwrap().len(), messages.len());
    s.stop().await;
}

#[tokio::test]
async fn list_filters_and_pages() {
    let s = TestServer::start().await;
    let token = s.login().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            s.create(&token, json!({"agent": "noop", "name": format!("n{i}")}))
                .await,
        );
    }
    for id in &ids {
        s.wait_done(&token, id).await;
    }
    let (_, page) = s.get(&token, "/v1/tasks?limit=3&agent=noop").await;
    let first: Vec<&str> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        first,
        vec![ids[4].as_str(), ids[3].as_str(), ids[2].as_str()],
        "newest first"
    );
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = s
        .get(
            &token,
            &format!("/v1/tasks?limit=3&agent=noop&cursor={cursor}"),
        )
        .await;
    assert_eq!(rest["tasks"].as_array().unwrap().len(), 2);
    assert!(rest["next_cursor"].is_null());
    let (_, done) = s.get(&token, "/v1/tasks?status=completed").await;
    assert_eq!(done["tasks"].as_array().unwrap().len(), 5);
    let (_, none) = s.get(&token, "/v1/tasks?status=failed").await;
    assert_eq!(none["tasks"].as_array().unwrap().len(), 0);
    s.stop().await;
}

#[tokio::test]
async fn restart_keeps_tasks_and_requeues_unfinished_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path().to_path_buf(), |c| c.shell_concurrency = 1).await;
    let token = s.login().await;
    let done = s.create(&token, json!({"prompt": "echo done"})).await;
    s.wait_done(&token, &done).await;
    let blocker = s.create(&token, json!({"prompt": "sleep 30"})).await;
    let waiting = s.create(&token, json!({"prompt": "echo later"})).await;
    s.wait_status(&token, &blocker, TaskStatus::Running).await;
    s.stop().await;

    let s = TestServer::start_in(dir.path().to_path_buf(), |c| c.shell_concurrency = 2).await;
    let (status, _) = s.get(&token, "/v1/auth/whoami").await;
    assert_eq!(status, 200, "sessions survive a restart");
    assert_eq!(
        s.wait_done(&token, &done).await.result.unwrap().stdout,
        "done\n"
    );
    let w = s.wait_done(&token, &waiting).await;
    assert_eq!(w.status, TaskStatus::Completed, "{w:?}");
    let (_, t) = s.get(&token, &format!("/v1/tasks/{blocker}")).await;
    assert_eq!(
        (t["status"].as_str(), t["attempt"].as_u64()),
        (Some("running"), Some(2)),
        "interrupted task is retried: {t}"
    );
    s.post(&token, &format!("/v1/tasks/{blocker}/cancel"), json!({}))
        .await;
    s.stop().await;
}

/// Pids of processes whose command line contains `pattern`.
fn pgrep(pattern: &str) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// One paging contract on every list endpoint: `limit` from 1 to 1000,
/// `cursor` the previous page's `next_cursor`, the same 400 for bad values
/// and for unknown parameters, and walking the pages yields each item once.
#[tokio::test]
async fn every_list_endpoint_pages_the_same_way() {
    let s = TestServer::start().await;
    let token = s.login().await;
    let task = s
        .create(&token, json!({"commands": ["echo a", "echo b", "echo c"]}))
        .await;
    s.wait_done(&token, &task).await;
    for id in ["pager-a", "pager-b", "pager-c"] {
        s.spawn_agent(&token, json!({"id": id, "external": true}))
            .await;
        let (status, body) = s
            .put(
                &token,
                &format!("/v1/budgets/agent:{id}"),
                json!({"max_tokens_per_day": 10}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = s
            .put(
                &token,
                &format!("/v1/policies/{id}"),
                json!({"scope": {"agent": id}, "rules": [{"action_pattern": "task:*", "effect": "allow"}]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let lists = [
        ("/v1/tasks", "tasks"),
        (&format!("/v1/tasks/{task}/events") as &str, "events"),
        ("/v1/agents", "agents"),
        ("/v1/agents/pager-a/sessions", "sessions"),
        ("/v1/budgets", "budgets"),
        ("/v1/policies", "policies"),
        ("/v1/approvals", "approvals"),
        ("/v1/audit", "records"),
        ("/v1/alerts", "alerts"),
        ("/v1/llm/usage", "records"),
    ];
    for (path, field) in lists {
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=ten",
            "limit=1&limit=2",
            "cursor=",
            "colour=red",
        ] {
            let (status, body) = s.get(&token, &format!("{path}?{bad}")).await;
            assert_eq!(
                (status, error_code(&body)),
                (400, "invalid_request"),
                "{path}?{bad}: {body}"
            );
        }
        // Page by page, one item at a time, against the whole list at once.
        let (status, whole) = s.get(&token, &format!("{path}?limit=1000")).await;
        assert_eq!(status, 200, "{path}: {whole}");
        let whole = whole[field].as_array().unwrap().clone();
        let mut walked = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                Some(c) => format!("{path}?limit=1&cursor={c}"),
                None => format!("{path}?limit=1"),
            };
            let (status, page) = s.get(&token, &url).await;
            assert_eq!(status, 200, "{url}: {page}");
            walked.extend(page[field].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
            assert!(walked.len() <= whole.len() + 1, "{path} pages without end");
        }
        let id_of = |v: &Value| {
            ["id", "seq", "session", "entity"]
                .iter()
                .find_map(|k| v.get(*k).filter(|x| !x.is_null()).map(ToString::to_string))
                .unwrap_or_else(|| v["config"]["id"].to_string())
        };
        assert_eq!(
            walked.iter().map(id_of).collect::<Vec<_>>(),
            whole.iter().map(id_of).collect::<Vec<_>>(),
            "{path}: the pages are the whole list, in order"
        );
        // What the setup made: the walk above must have had pages to walk.
        let at_least = match field {
            "events" | "agents" | "budgets" | "policies" => 3,
            "tasks" | "sessions" => 1,
            "records" if path == "/v1/audit" => 1,
            _ => 0,
        };
        assert!(
            whole.len() >= at_least,
            "{path}: {} items, expected at least {at_least}",
            whole.len()
        );
    }
    s.stop().await;
}

/// `--cors-origin`: a preflight from a listed origin is answered (before
/// authentication) and real responses name it; another origin gets no CORS
/// headers, so the browser refuses it; without the flag nothing is sent.
#[tokio::test]
async fn cors_answers_listed_origins_only() {
    let allowed = "http://localhost:3000";
    let s = TestServer::start_with(|c| {
        c.cors_origins = vec![allowed.parse().unwrap()];
    })
    .await;
    let anonymous = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        anonymous
            .request(reqwest::Method::OPTIONS, s.url("/v1/tasks"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization,content-type",
            )
            .send()
    };
    let ok = preflight(allowed).await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], allowed);
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(headers.contains("authorization"), "{headers}");
    assert!(h.get("access-control-allow-credentials").is_none());

    let refused = preflight("http://evil.example").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "{:?}",
        refused.headers()
    );

    // A real (authenticated) request from the allowed origin is marked too.
    let token = s.login().await;
    let listed = s
        .client
        .get(s.url("/v1/tasks"))
        .bearer_auth(&token)
        .header("Origin", allowed)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.headers()["access-control-allow-origin"], allowed);

    let plain = TestServer::start().await;
    let none = anonymous
        .request(reqwest::Method::OPTIONS, plain.url("/v1/tasks"))
        .header("Origin", allowed)
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert!(none.headers().get("access-control-allow-origin").is_none());
}

/// Issue #16 items 8 and 10: bad input is a 400 naming the field, never a
/// 500 at spawn or a 201 that fails later: NUL and control characters, host
/// paths outside the allowed roots or showing the data directory, and a
/// JSON array where an object is expected.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_is_refused_at_the_api() {
    let s = TestServer::start().await;
    let token = s.login().await;
    let data_dir = s.data_dir.display().to_string();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/v1/tasks", json!({"prompt": "echo a\u{0}b"}), "prompt"),
        ("/v1/tasks", json!({"commands": ["true\u{0}"]}), "commands"),
        (
            "/v1/tasks",
            json!({"commands": ["true"], "env": {"A": "x\u{0}"}}),
            "env",
        ),
        (
            "/v1/tasks",
            json!({"commands": ["true"], "name": "\u{1b}[2Jgotcha"}),
            "name",
        ),
        (
            "/v1/agents",
            json!({"id": "a1", "command": "sleep 1\u{0}0"}),
            "command",
        ),
        (
            "/v1/agents",
            json!({"id": "a2", "command": "true", "isolation": {"filesystem_root": "/"}}),
            "filesystem_root",
        ),
        (
            "/v1/agents",
            json!({"id": "a3", "command": "true", "isolation": {"filesystem_root": "/proc"}}),
            "filesystem_root",
        ),
        (
            "/v1/agents",
            json!({"id": "a4", "command": "true", "isolation": {"filesystem_root": "/etc/passwd"}}),
            "filesystem_root",
        ),
        (
            "/v1/agents",
            json!({"id": "a5", "command": "true", "isolation": {"filesystem_root": "/tmp/x\u{0}y"}}),
            "filesystem_root",
        ),
        (
            "/v1/agents",
            json!({"id": "a6", "command": "true", "isolation": {"read_only_paths": [data_dir]}}),
            "read_only_paths",
        ),
        (
            "/v1/agents",
            json!({"id": "a7", "command": "true", "isolation": {"read_only_paths": ["/"]}}),
            "read_only_paths",
        ),
        ("/v1/auth/tokens", json!([null, null]), "object"),
    ];
    for (path, body, field) in cases {
        let (status, answer) = s.post(&token, path, body.clone()).await;
        assert_eq!(status, 400, "POST {path} {body}: {answer}");
        assert_eq!(error_code(&answer), "invalid_request", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "POST {path} {body}: {message}");
    }
    assert!(!std::path::Path::new("/a2").exists());
    s.stop().await;
}

/// Issue #16 item 11: a data directory that already exists with group or
/// other access is made private (0700) at start, whatever its prior mode.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_data_directory_is_made_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = TestServer::start_in(dir.path().to_path_buf(), |_| {}).await;
    let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{mode:o}");
    s.stop().await;
}

/// Issue #16 item 12: watchers are capped per token (50) and per task (100),
/// with a 429 `too_many_streams`, and a closed stream gives its slot back.
#[tokio::test(flavor = "multi_thread")]
async fn task_streams_are_capped_per_token_and_per_task() {
    let s = TestServer::start().await;
    let admin = s.login().await;
    // A task that stays open: it waits on a dependency that never runs.
    let blocker = s.create(&admin, json!({"commands": ["sleep 600"]})).await;
    let id = s
        .create(
            &admin,
            json!({"agent": "noop", "prompt": "x", "depends_on": [blocker]}),
        )
        .await;
    let connect = |token: String| {
        let url = format!(
            "{}/v1/stream/{id}?token={token}",
            s.base.replace("http://", "ws://")
        );
        async move { tokio_tungstenite::connect_async(url).await }
    };
    let tokens = [s.login().await, s.login().await, s.login().await];
    let mut open = Vec::new();
    for _ in 0..50 {
        open.push(connect(tokens[0].clone()).await.unwrap().0);
    }
    let refused = |result: Result<_, tokio_tungstenite::tungstenite::Error>| match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            (response.status().as_u16(), body)
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a stream over the cap was accepted"),
    };
    let (status, body) = refused(connect(tokens[0].clone()).await.map(drop));
    assert_eq!(
        (status, error_code(&body)),
        (429, "too_many_streams"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("this token"),
        "{body}"
    );
    for _ in 0..50 {
        open.push(connect(tokens[1].clone()).await.unwrap().0);
    }
    let (status, body) = refused(connect(tokens[2].clone()).await.map(drop));
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("open streams"),
        "{body}"
    );
    // Closing one frees its slot.
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect(tokens[2].clone()).await {
            Ok((ws, _)) => {
                open.push(ws);
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the closed stream's slot never came back: {e}"),
        }
    }
    drop(open);
    s.stop().await;
}

/// Issue #16, item 8: requests hyper refuses before the router sees them
/// (malformed, too-long URI, too-large headers, an unknown version) get the
/// JSON error shape too, with the right status, and the server goes on.
#[tokio::test(flavor = "multi_thread")]
async fn protocol_errors_have_the_json_error_shape() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = TestServer::start().await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let long_path = "a".repeat(70_000);
    // Far past hyper's header buffer however the reads fall (one big read
    // of a smaller block could still parse).
    let big_header = "b".repeat(4_000_000);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            format!("GET /{long_path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            414,
            "uri_too_long",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big_header}\r\n\r\n").into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            b"GET /healthz HTTP/3.0\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
    ];
    for (request, status, code) in cases {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // The server may answer (and close) before it has read everything.
        let _ = stream.write_all(&request).await;
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{code}: {}",
            &text[..text.len().min(200)]
        );
        assert!(
            text.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{text}"
        );
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(error_code(&body), code, "{body}");
    }
    // Ordinary answers are untouched, on a fresh connection and after the errors.
    let ok = reqwest::get(s.url("/healthz")).await.unwrap();
    assert_eq!(ok.status(), 200);
    let (status, body) = s.get("no-such-token", "/v1/tasks").await;
    assert_eq!((status, error_code(&body)), (401, "unauthorized"));
    s.stop().await;
}

/// Issue #16 item 1: idle, half-sent and idle keep-alive connections are
/// closed after the header timeout; past the connection cap, a reserve still
/// answers /healthz (others get 503 `server_busy`), and one address cannot
/// hold more than its share. Loopback only, a bounded number of sockets.
#[tokio::test(flavor = "multi_thread")]
async fn idle_and_flooding_connections_are_bounded() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = TestServer::start_with(|c| {
        c.listen_limits = fabric_server::listen::ListenLimits {
            max_connections: 8,
            max_per_address: 80,
            header_timeout: Duration::from_millis(800),
        };
    })
    .await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let connect = || tokio::net::TcpStream::connect(addr.clone());
    /// Whether the server closed the connection within `within`.
    async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue, // a response (e.g. 408): keep reading to the close
                Err(_) => return false,
            }
        }
    }
    // Silent, half-sent and idle keep-alive connections all end.
    let mut silent = connect().await.unwrap();
    let mut partial = connect().await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut kept = connect().await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    for (what, stream) in [
        ("silent", &mut silent),
        ("partial", &mut partial),
        ("keep-alive", &mut kept),
    ] {
        assert!(
            closed_within(stream, Duration::from_secs(5)).await,
            "{what} connection stayed open"
        );
    }

    s.stop().await;

    // Past the cap: the reserve answers /healthz, and a 503 elsewhere.
    let s = TestServer::start_with(|c| {
        c.listen_limits = fabric_server::listen::ListenLimits {
            max_connections: 4,
            max_per_address: 100,
            header_timeout: Duration::from_secs(30),
        };
    })
    .await;
    let token = s.login().await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ask = |path: &'static str| {
        let (addr, token) = (addr.clone(), token.clone());
        async move {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        }
    };
    let health = ask("/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let busy = ask("/v1/tasks").await;
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    assert!(busy.contains("server_busy"), "{busy}");
    drop(held);
    // The held connections gone, everything is served again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ask("/v1/tasks").await.starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the cap was never given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;

    // One address holds at most its share: the next connection is closed.
    let s = TestServer::start_with(|c| {
        c.listen_limits = fabric_server::listen::ListenLimits {
            max_connections: 100,
            max_per_address: 3,
            header_timeout: Duration::from_secs(30),
        };
    })
    .await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    // From an address of its own (127.0.0.2; the test client's pooled
    // connections come from 127.0.0.1).
    let from_other = || {
        let addr = addr.clone();
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            socket.connect(addr.parse().unwrap()).await.unwrap()
        }
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(from_other().await);
    }
    let mut extra = from_other().await;
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)).await,
        "a 4th connection from one address stayed open"
    );
    for stream in &mut held {
        assert!(
            !closed_within(stream, Duration::from_millis(100)).await,
            "a connection within the share was closed"
        );
    }
    s.stop().await;
}

/// Issue #17: a finished task can be deleted with its events (a running one
/// answers 409, saying to cancel it first); prune deletes the caller's
/// tenant's finished tasks older than a given age; and the retention
/// (`--task-retention`) deletes old finished tasks by itself.
#[tokio::test(flavor = "multi_thread")]
async fn finished_tasks_can_be_deleted_pruned_and_expire() {
    let s = TestServer::start_with(|c| c.task_retention = Duration::from_secs(3)).await;
    let token = s.login().await;
    let running = s.create(&token, json!({"commands": ["sleep 30"]})).await;
    s.wait_status(&token, &running, TaskStatus::Running).await;
    let (status, body) = s.delete(&token, &format!("/v1/tasks/{running}")).await;
    assert_eq!((status, error_code(&body)), (409, "conflict"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cancel it first"),
        "{body}"
    );
    s.post(&token, &format!("/v1/tasks/{running}/cancel"), json!({}))
        .await;
    s.wait_status(&token, &running, TaskStatus::Canceled).await;
    let (status, body) = s.delete(&token, &format!("/v1/tasks/{running}")).await;
    assert_eq!((status, body["deleted"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(s.get(&token, &format!("/v1/tasks/{running}")).await.0, 404);
    assert_eq!(
        s.get(&token, &format!("/v1/tasks/{running}/events"))
            .await
            .0,
        404
    );
    assert_eq!(
        s.delete(&token, &format!("/v1/tasks/{running}")).await.0,
        404
    );

    let done: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            let id = s
                .create(&token, json!({"commands": [format!("echo {i}")]}))
                .await;
            s.wait_done(&token, &id).await;
            ids.push(id);
        }
        ids
    };
    let (status, body) = s
        .post(
            &token,
            "/v1/tasks/prune",
            json!({"older_than_seconds": 3600}),
        )
        .await;
    assert_eq!(
        (status, body["deleted"].as_u64()),
        (200, Some(0)),
        "none that old: {body}"
    );
    let (status, body) = s
        .post(&token, "/v1/tasks/prune", json!({"older_than_second": 1}))
        .await;
    assert_eq!(status, 400, "unknown fields are refused: {body}");
    // The retention (3 s here) deletes them by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut left = 0;
        for id in &done {
            if s.get(&token, &format!("/v1/tasks/{id}")).await.0 != 404 {
                left += 1;
            }
        }
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} tasks outlived their retention"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let created = std::time::Instant::now();
    let kept = s.create(&token, json!({"commands": ["true"]})).await;
    s.wait_done(&token, &kept).await;
    let (status, body) = s
        .post(&token, "/v1/tasks/prune", json!({"older_than_seconds": 0}))
        .await;
    // On a loaded machine the task may take longer than the 3 s retention
    // to run, and the retention pass deletes it before the prune does.
    let expected = if created.elapsed() >= Duration::from_secs(3) {
        body["deleted"].as_u64().filter(|n| *n <= 1)
    } else {
        Some(1)
    };
    assert_eq!(
        (status, body["deleted"].as_u64()),
        (200, expected),
        "{body}"
    );
    assert_eq!(
        s.get(&token, &format!("/v1/tasks/{kept}")).await.0,
        404,
        "pruned"
    );
    s.stop().await;
}

/// `GET /v1/tasks?priority=&q=`: the server filters by priority and searches
/// names, prompts and commands (what the dashboard's task list asks), and
/// refuses a priority or a search it cannot use.
#[tokio::test]
async fn tasks_are_listed_by_priority_and_searched_by_text() {
    let s = TestServer::start().await;
    let token = s.login().await;
    let build = s
        .create(
            &token,
            json!({"name": "Nightly build", "commands": ["true"], "priority": "high"}),
        )
        .await;
    let docs = s
        .create(
            &token,
            json!({"prompt": "echo BUILD the docs", "priority": "low"}),
        )
        .await;
    let other = s
        .create(
            &token,
            json!({"commands": ["echo deploy"], "priority": "high"}),
        )
        .await;
    let ids = |body: &Value| -> Vec<String> {
        body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, body) = s.get(&token, "/v1/tasks?q=build").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), [docs.clone(), build.clone()], "newest first");
    let (_, body) = s.get(&token, "/v1/tasks?priority=high").await;
    assert_eq!(ids(&body), [other.clone(), build.clone()]);
    let (_, body) = s.get(&token, "/v1/tasks?priority=high&q=BUILD").await;
    assert_eq!(ids(&body), std::slice::from_ref(&build));
    let (_, body) = s.get(&token, "/v1/tasks?q=build&limit=1").await;
    assert_eq!(ids(&body), std::slice::from_ref(&docs));
    let cursor = body["next_cursor"].as_str().unwrap().to_owned();
    let (_, body) = s
        .get(
            &token,
            &format!("/v1/tasks?q=build&limit=1&cursor={cursor}"),
        )
        .await;
    assert_eq!(ids(&body), [build]);
    for bad in ["priority=urgent", "q=", &format!("q={}", "x".repeat(201))] {
        let (status, body) = s.get(&token, &format!("/v1/tasks?{bad}")).await;
        assert_eq!(
            (status, error_code(&body)),
            (400, "invalid_request"),
            "{bad}: {body}"
        );
    }
}

/// `GET /v1/tasks/counts`: every task of the tenant by status (the
/// dashboard's overview), of one agent when asked; another tenant's are not counted.
#[tokio::test]
async fn tasks_are_counted_by_status() {
    let s = TestServer::start().await;
    let token = s.login().await;
    let done = s.create(&token, json!({"commands": ["true"]})).await;
    s.wait_done(&token, &done).await;
    let failed = s.create(&token, json!({"commands": ["exit 3"]})).await;
    s.wait_done(&token, &failed).await;
    // A task depending on a failed one fails with it.
    let dependant = s
        .create(
            &token,
            json!({"commands": ["true"], "depends_on": [failed]}),
        )
        .await;
    s.wait_done(&token, &dependant).await;
    let (status, body) = s.get(&token, "/v1/tasks/counts").await;
    assert_eq!(status, 200, "{body}");
    let total: u64 = body["counts"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(body["counts"]["completed"], 1, "{body}");
    assert_eq!(body["counts"]["failed"], 2, "{body}");
    assert_eq!((body["total"].as_u64(), total), (Some(3), 3), "{body}");
    let (_, body) = s.get(&token, "/v1/tasks/counts?agent=noop").await;
    assert_eq!(body, json!({"counts": {}, "total": 0}));
    let (status, body) = s.get(&token, "/v1/tasks/counts?agent=../x").await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"));
    let (status, body) = s.get(&token, "/v1/tasks/counts?status=queued").await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "invalid_request"),
        "unknown parameters are refused"
    );
}
