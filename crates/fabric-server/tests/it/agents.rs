//! Agents end to end: the lifecycle API, the agent protocol, and isolation
//! level `process` on the real kernel (namespaces, cgroups, the egress proxy).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fabric_core::TaskStatus;
use fabric_runtime::sandbox::{CgroupVersion, SandboxCgroups};
use serde_json::{Value, json};

use crate::harness::{TestServer, error_code, examples_dir, sandbox_helper};

async fn server() -> TestServer {
    TestServer::start_with(|c| c.sandbox_helper = Some(sandbox_helper())).await
}

fn python_agent() -> String {
    format!(
        "python3 {}",
        examples_dir().join("python-agent/agent.py").display()
    )
}

#[tokio::test]
async fn agent_api_validates_input_and_guards_ids() {
    let s = server().await;
    let token = s.login().await;
    let (status, body) = s
        .post(
            &token,
            "/v1/agents",
            json!({"id": "x", "isolation": {"memory_mb": 1}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("memory_mb")
    );
    let (status, body) = s
        .post(&token, "/v1/agents", json!({"id": "x", "colour": "red"}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "invalid_request"),
        "{body}"
    );
    let (status, body) = s
        .post(
            &token,
            "/v1/agents",
            json!({"id": "x", "isolation": {"level": "process", "read_only_paths": ["/no/such/dir"]}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/no/such/dir")
    );
    let (status, body) = s.post(&token, "/v1/agents", json!({"id": "shell"})).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = s.get(&token, "/v1/agents/nope").await;
    assert_eq!((status, error_code(&body)), (404, "agent_not_found"));
    let (status, _) = s.delete(&token, "/v1/agents/shell").await;
    assert_eq!(status, 409, "the built-in agent cannot be terminated");

    s.spawn_agent(&token, json!({"id": "w1", "command": "sleep 1000"}))
        .await;
    let (status, body) = s
        .post(
            &token,
            "/v1/agents",
            json!({"id": "w1", "command": "sleep 1000"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (_, list) = s.get(&token, "/v1/agents").await;
    let ids: Vec<&str> = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["config"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["shell", "w1"]);
    // Concurrent spawns of one id: exactly one wins.
    let body = json!({"id": "race", "command": "sleep 1000"});
    let attempts =
        futures_util::future::join_all((0..4).map(|_| s.post(&token, "/v1/agents", body.clone())))
            .await;
    let mut codes: Vec<u16> = attempts.iter().map(|(c, _)| *c).collect();
    codes.sort_unstable();
    assert_eq!(codes, [201, 409, 409, 409], "{attempts:?}");
    let (status, agent) = s.delete(&token, "/v1/agents/w1?drain_timeout=1").await;
    assert_eq!(
        (status, agent["state"].as_str()),
        (200, Some("stopped")),
        "{agent}"
    );
    s.stop().await;
}

#[tokio::test]
async fn external_agent_speaks_the_protocol_with_fencing() {
    let s = server().await;
    let token = s.login().await;
    s.spawn_agent(&token, json!({"id": "ext", "external": true}))
        .await;
    let (status, minted) = s
        .post(&token, "/v1/auth/tokens", json!({"agent": "ext"}))
        .await;
    assert_eq!(status, 201, "{minted}");
    let agent_token = minted["token"].as_str().unwrap().to_owned();

    // Agent tokens are for /v1/agent/... only, and user tokens cannot lease.
    let (status, _) = s.get(&agent_token, "/v1/tasks").await;
    assert_eq!(status, 403);
    let (status, _) = s.post(&token, "/v1/agent/lease?wait=0", json!({})).await;
    assert_eq!(status, 403);

    let (status, _) = s
        .post(&agent_token, "/v1/agent/lease?wait=0", json!({}))
        .await;
    assert_eq!(status, 204, "nothing to do yet");
    let id = s
        .create(&token, json!({"agent": "ext", "prompt": "do it"}))
        .await;
    let (status, lease) = s
        .post(&agent_token, "/v1/agent/lease?wait=5", json!({}))
        .await;
    assert_eq!(status, 200, "{lease}");
    assert_eq!(lease["task"]["id"], id.as_str());
    let epoch = lease["epoch"].as_u64().unwrap();
    let path = |what: &str| format!("/v1/agent/tasks/{id}/{what}");
    let (status, hb) = s
        .post(&agent_token, &path("heartbeat"), json!({"epoch": epoch}))
        .await;
    assert_eq!(status, 200, "{hb}");
    let (status, _) = s
        .post(
            &agent_token,
            &path("events"),
            json!({"epoch": epoch, "logs": [{"stream": "stdout", "line": "working"}]}),
        )
        .await;
    assert_eq!(status, 204);
    let (status, body) = s
        .post(
            &agent_token,
            &path("complete"),
            json!({"epoch": epoch + 1, "status": "completed"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (409, "stale_lease"), "{body}");
    let (status, done) = s
        .post(
            &agent_token,
            &path("complete"),
            json!({"epoch": epoch, "status": "completed", "result": {"stdout": "done"}}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "completed");
    let view = s.wait_done(&token, &id).await;
    assert_eq!(view.result.unwrap().stdout, "done");
    let (_, events) = s.get(&token, &format!("/v1/tasks/{id}/events")).await;
    assert!(events.to_string().contains("working"), "{events}");
    let agent = s.wait_agent(&token, "ext", |a| a["tasks_done"] == 1).await;
    assert_eq!(agent["health"], "healthy");
    assert!(agent["last_heartbeat"].is_string());
    s.stop().await;
}

#[tokio::test]
async fn python_agent_completes_tasks_on_the_host_and_in_a_sandbox() {
    let s = server().await;
    let token = s.login().await;
    for level in ["none", "process"] {
        let id = format!("py-{level}");
        let agent = s
            .spawn_agent(
                &token,
                json!({
                    "id": id,
                    "command": python_agent(),
                    "isolation": {"level": level, "memory_mb": 128,
                        "read_only_paths": [examples_dir()]},
                }),
            )
            .await;
        assert!(agent["pid"].as_u64().is_some(), "{agent}");
        let task = s
            .create(
                &token,
                json!({"agent": id, "prompt": "hello fabric agents"}),
            )
            .await;
        let view = s.wait_done(&token, &task).await;
        assert_eq!(view.status, TaskStatus::Completed, "{level}: {view:?}");
        let result = view.result.unwrap();
        assert_eq!(result.stdout, "HELLO FABRIC AGENTS");
        assert_eq!(result.output.unwrap()["words"], 3);
        let failing = s
            .create(&token, json!({"agent": id, "prompt": "fail: on purpose"}))
            .await;
        assert_eq!(
            s.wait_done(&token, &failing).await.status,
            TaskStatus::Failed
        );
        // Counted once the completion is durable, a moment after the task reads as done.
        // Usage comes from the cgroup (process) or the program's process group
        // in /proc (none; sampled at most once a second): the Python
        // interpreter alone holds several MiB.
        let agent = s
            .wait_agent(&token, &id, |a| {
                a["state"] == "running"
                    && a["tasks_done"] == 2
                    && a["usage"]["memory_bytes"].as_u64().unwrap() > 4 << 20
            })
            .await;
        assert_eq!(agent["health"], "healthy", "{agent}");
        let (_, live) = s.get(&token, &format!("/v1/agents/{id}/sessions")).await;
        assert_eq!(
            live["sessions"][0]["tasks_done"], 2,
            "the running session counts: {live}"
        );
        assert!(agent["usage"]["pids"].as_u64().unwrap() >= 1, "{agent}");
        let (status, stopped) = s
            .delete(&token, &format!("/v1/agents/{id}?drain_timeout=5"))
            .await;
        assert_eq!((status, stopped["state"].as_str()), (200, Some("stopped")));
        let (_, sessions) = s.get(&token, &format!("/v1/agents/{id}/sessions")).await;
        let first = &sessions["sessions"][0];
        assert_eq!(first["tasks_done"], 2, "{sessions}");
        assert!(first["ended_at"].is_string(), "{sessions}");
    }
    s.stop().await;
}

#[tokio::test]
async fn process_shell_agent_sees_only_its_own_workspace() {
    // Finished tasks' directories are kept a while here, so the other agent
    // has something to try to read.
    let s = TestServer::start_with(|c| {
        c.sandbox_helper = Some(sandbox_helper());
        c.workdir_retention = Duration::from_secs(600);
    })
    .await;
    let token = s.login().await;
    for id in ["box-a", "box-b"] {
        s.spawn_agent(
            &token,
            json!({"id": id, "isolation": {"level": "process", "memory_mb": 64}}),
        )
        .await;
    }
    let script = "echo secret > mine.txt; pwd; \
        touch /etc/fabric-probe 2>/dev/null && echo WROTE-ETC || echo READONLY-ETC; \
        ls /root >/dev/null 2>&1 && echo SEES-ROOT || echo NO-ROOT; \
        ls /work >/dev/null 2>&1 && echo SEES-HOST || echo NO-HOST";
    let a = s
        .create(&token, json!({"agent": "box-a", "commands": [script]}))
        .await;
    let out = s.wait_done(&token, &a).await.result.unwrap().stdout;
    let mut lines = out.lines();
    let workdir = lines.next().unwrap().to_owned();
    assert_eq!(
        lines.collect::<Vec<_>>(),
        ["READONLY-ETC", "NO-ROOT", "NO-HOST"],
        "{out}"
    );
    assert!(
        Path::new(&workdir).join("mine.txt").exists(),
        "written on the host side"
    );
    // The other agent cannot read it, though the path is right there.
    let b = s
        .create(
            &token,
            json!({"agent": "box-b", "commands": [format!("cat {workdir}/mine.txt")]}),
        )
        .await;
    let view = s.wait_done(&token, &b).await;
    assert_eq!(view.status, TaskStatus::Failed, "{view:?}");
    assert!(view.result.unwrap().stderr.contains("No such file"));

    // Terminating removes the sandbox and its working dir.
    let (status, _) = s.delete(&token, "/v1/agents/box-a?drain_timeout=1").await;
    assert_eq!(status, 200);
    assert!(!Path::new(&workdir).exists(), "{workdir} left behind");
    s.stop().await;
}

/// Issue #16, items 2 and 3 at isolation `process`: a task past the agent's
/// disk quota fails with `disk_quota_exceeded` and the agent goes on; a
/// finished task's directory is removed at once (retention 0, the default),
/// and nothing a task started in the background survives it.
#[tokio::test]
async fn process_disk_quota_fails_the_task_and_finished_workdirs_go() {
    let s = server().await;
    let token = s.login().await;
    s.spawn_agent(
        &token,
        json!({"id": "small-disk", "isolation": {"level": "process", "memory_mb": 128, "disk_mb": 20}}),
    )
    .await;
    let (_, agent) = s.get(&token, "/v1/agents/small-disk").await;
    assert_eq!(agent["config"]["isolation"]["disk_mb"], 20, "{agent}");
    let left = s
        .create(
            &token,
            json!({"agent": "small-disk", "commands": [
                "setsid sleep 307 </dev/null >/dev/null 2>&1 & echo kept > out.txt; pwd"
            ]}),
        )
        .await;
    let view = s.wait_done(&token, &left).await;
    assert_eq!(view.status, TaskStatus::Completed, "{view:?}");
    let workdir = view.result.unwrap().stdout.trim().to_owned();
    assert!(
        !Path::new(&workdir).exists(),
        "{workdir}: a finished task's directory is removed"
    );
    let hog = s
        .create(
            &token,
            json!({"agent": "small-disk", "commands": [
                "for i in $(seq 1 100); do head -c 1048576 /dev/zero > /tmp/f$i || exit 1; sleep 0.02; done; echo wrote-it-all"
            ]}),
        )
        .await;
    let view = s.wait_done(&token, &hog).await;
    assert_eq!(
        (view.status, view.reason.as_deref()),
        (TaskStatus::Failed, Some("disk_quota_exceeded")),
        "{view:?}"
    );
    let result = view.result.unwrap();
    assert!(!result.stdout.contains("wrote-it-all"), "{result:?}");
    let error = result.error.unwrap_or_default();
    assert!(
        error.contains("disk quota of 20 MiB") && error.contains("--disk-mb"),
        "{error}"
    );
    // One that writes past the quota faster than a measurement and ends at
    // once fails too: the quota is measured again when a task ends.
    let burst = s
        .create(
            &token,
            json!({"agent": "small-disk", "commands": ["head -c 31457280 /dev/zero > burst && echo done"]}),
        )
        .await;
    let view = s.wait_done(&token, &burst).await;
    assert_eq!(
        (view.status, view.reason.as_deref()),
        (TaskStatus::Failed, Some("disk_quota_exceeded")),
        "{view:?}"
    );
    // The agent, its disk (the hog's files went with its directory) and the
    // fabric are fine; the first task's background sleep is gone.
    let after = s
        .create(
            &token,
            json!({"agent": "small-disk", "commands": [
                "head -c 5242880 /dev/zero > five-mib && ps -eo comm= | grep -c sleep || true"
            ]}),
        )
        .await;
    let view = s.wait_done(&token, &after).await;
    assert_eq!(view.status, TaskStatus::Completed, "{view:?}");
    assert_eq!(view.result.unwrap().stdout.trim(), "0");
    let sleepers = std::process::Command::new("pgrep")
        .args(["-f", "^sleep 307$"])
        .output()
        .unwrap();
    assert!(
        sleepers.stdout.is_empty(),
        "the background sleep outlived its task: {:?}",
        String::from_utf8_lossy(&sleepers.stdout)
    );
    s.stop().await;
}

#[tokio::test]
async fn memory_bomb_is_oom_killed_and_the_agent_keeps_working() {
    let s = server().await;
    let token = s.login().await;
    s.spawn_agent(
        &token,
        json!({"id": "tiny", "isolation": {"level": "process", "memory_mb": 64}}),
    )
    .await;
    let bomb = s
        .create(
            &token,
            json!({"agent": "tiny", "commands": ["python3 -c 'b = bytearray(512 << 20); print(len(b))'"]}),
        )
        .await;
    let view = s.wait_done(&token, &bomb).await;
    assert_eq!(
        (view.status, view.reason.as_deref()),
        (TaskStatus::Failed, Some("oom_killed")),
        "{view:?}"
    );
    let after = s
        .create(&token, json!({"agent": "tiny", "commands": ["echo alive"]}))
        .await;
    assert_eq!(
        s.wait_done(&token, &after).await.result.unwrap().stdout,
        "alive\n"
    );
    let agent = s.wait_agent(&token, "tiny", |a| a["tasks_done"] == 2).await;
    assert_eq!(
        agent["state"], "running",
        "the fabric and the agent survive: {agent}"
    );
    s.stop().await;
}

#[tokio::test]
async fn egress_goes_through_the_allowlist_and_inference_reaches_the_upstream() {
    // Egress targets are named by this machine's host name (resolved on the
    // host side by the proxy): `localhost` inside a sandbox is the sandbox's
    // own loopback, which agents reach directly (NO_PROXY).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let allowed = serve_text("0.0.0.0:0", "allowed-body").await;
    let denied = serve_text("0.0.0.0:0", "denied-body").await;
    let mock = crate::containers::keyed_ollama_mock().await;
    let gateway = crate::containers::gateway_to(&mock, Duration::from_secs(5));
    assert!(
        tokio::net::lookup_host((host.as_str(), allowed.port()))
            .await
            .is_ok(),
        "this test needs the host name {host} to resolve"
    );
    let s = TestServer::start_with(|c| {
        c.sandbox_helper = Some(sandbox_helper());
        c.gateway = gateway;
    })
    .await;
    let token = s.login().await;
    s.spawn_agent(
        &token,
        json!({"id": "net", "isolation": {"level": "process",
            "network_egress": [format!("{host}:{}", allowed.port())]}}),
    )
    .await;
    let fetch = |url: String| {
        format!(
            "python3 -c \"import urllib.request as u\ntry:\n print(u.urlopen('{url}', timeout=5).read().decode())\nexcept Exception as e:\n print('ERR', e)\""
        )
    };
    let cmds = vec![
        fetch(format!("http://{host}:{}/", allowed.port())),
        fetch(format!("http://{host}:{}/", denied.port())),
        // Without the proxy: the host's loopback is not reachable.
        format!(
            "python3 -c \"import socket\ntry:\n socket.create_connection(('127.0.0.1', {}), timeout=2); print('CONNECTED')\nexcept Exception as e:\n print('NOROUTE')\"",
            allowed.port()
        ),
        // The shell expands the variable inside the double quotes.
        fetch("$OLLAMA_BASE_URL/api/tags".into()),
    ];
    let task = s
        .create(&token, json!({"agent": "net", "commands": cmds}))
        .await;
    let view = s.wait_done(&token, &task).await;
    let out = view.result.unwrap().stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "allowed-body", "{out}");
    assert!(
        lines[1].starts_with("ERR") && lines[1].contains("403"),
        "{out}"
    );
    assert_eq!(lines[2], "NOROUTE", "{out}");
    // The gateway's Ollama API, reached inside the sandbox: the provider's models.
    assert!(lines[3].contains("mock-small"), "{out}");
    s.stop().await;
}

#[tokio::test]
async fn crashing_agent_is_restarted_with_backoff_until_out_of_restarts() {
    let s = server().await;
    let token = s.login().await;
    s.spawn_agent(
        &token,
        json!({"id": "crashy", "command": "exit 3", "max_restarts": 2}),
    )
    .await;
    let agent = s
        .wait_agent(&token, "crashy", |a| a["state"] == "crashed")
        .await;
    assert_eq!(agent["last_exit"], "exited (code 3)");
    assert_eq!(agent["health"], "dead");
    let (_, sessions) = s.get(&token, "/v1/agents/crashy/sessions").await;
    let sessions = sessions["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3, "first run + 2 restarts: {sessions:?}");
    assert!(
        sessions
            .iter()
            .all(|x| x["exit_reason"] == "exited (code 3)")
    );
    // A crashed agent can be spawned again.
    s.spawn_agent(&token, json!({"id": "crashy", "command": "sleep 100"}))
        .await;
    s.stop().await;
}

#[tokio::test]
async fn terminate_drains_in_flight_tasks_and_requeues_the_rest() {
    let s = server().await;
    let token = s.login().await;
    s.spawn_agent(&token, json!({"id": "drainer", "concurrency": 2}))
        .await;
    let quick = s
        .create(
            &token,
            json!({"agent": "drainer", "commands": ["sleep 0.3; echo quick"]}),
        )
        .await;
    let slow = s
        .create(
            &token,
            json!({"agent": "drainer", "commands": ["sleep 8; echo slow"], "max_attempts": 3}),
        )
        .await;
    s.wait_status(&token, &slow, TaskStatus::Running).await;
    // The quick one may be done already on a slow machine: drained either way.
    s.wait_status_in(
        &token,
        &quick,
        &[TaskStatus::Running, TaskStatus::Completed],
    )
    .await;
    let (status, agent) = s.delete(&token, "/v1/agents/drainer?drain_timeout=3").await;
    assert_eq!((status, agent["state"].as_str()), (200, Some("stopped")));
    assert_eq!(s.status_of(&token, &quick).await, TaskStatus::Completed);
    let (_, t) = s.get(&token, &format!("/v1/tasks/{slow}")).await;
    assert_eq!(
        (t["status"].as_str(), t["reason"].as_str()),
        (Some("queued"), Some("drain_timeout")),
        "{t}"
    );
    // Nothing is lost: spawned again, the agent finishes it.
    s.spawn_agent(&token, json!({"id": "drainer"})).await;
    let view = s.wait_done(&token, &slow).await;
    assert_eq!(view.result.unwrap().stdout, "slow\n");
    let (_, sessions) = s.get(&token, "/v1/agents/drainer/sessions").await;
    assert_eq!(
        sessions["sessions"][1]["exit_reason"], "terminated (drain timeout)",
        "{sessions}"
    );
    s.stop().await;
}

/// A loopback HTTP server answering every request with `body`.
pub(crate) async fn serve_text(bind: &str, body: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || async move { body });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test]
async fn killed_agent_is_restarted_in_a_fresh_sandbox_and_its_task_runs_once_more() {
    let s = server().await;
    let token = s.login().await;
    // A marker on the command line finds the agent's processes for `pkill`.
    let marker = format!("kill-me-{}", std::process::id());
    s.spawn_agent(
        &token,
        json!({
            "id": "py-kill",
            "command": format!("{} {marker}", python_agent()),
            "isolation": {"level": "process", "memory_mb": 128,
                "read_only_paths": [examples_dir()]},
        }),
    )
    .await;
    let task = s
        .create(
            &token,
            json!({"agent": "py-kill", "prompt": "sleep:2", "max_attempts": 3}),
        )
        .await;
    s.wait_status(&token, &task, TaskStatus::Running).await;
    // The scan below that finds no cgroup left must be able to see one.
    let live = sandbox_cgroups(&s, "py-kill-1-");
    assert!(!live.is_empty(), "the first session's sandbox has cgroups");
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &marker])
        .status()
        .unwrap();
    assert!(
        killed.success(),
        "the agent's processes were found and killed"
    );

    let view = s.wait_done(&token, &task).await;
    assert_eq!(view.status, TaskStatus::Completed, "{view:?}");
    let (_, t) = s.get(&token, &format!("/v1/tasks/{task}")).await;
    assert_eq!(t["attempt"], 2, "run once more, not twice more: {t}");
    let (_, sessions) = s.get(&token, "/v1/agents/py-kill/sessions").await;
    let sessions = sessions["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let first_exit = sessions[1]["exit_reason"].as_str().unwrap();
    assert!(
        first_exit.contains("signal 9") || first_exit.contains("code 137"),
        "{first_exit}"
    );
    // The retry ran in the new session's sandbox, not the old one.
    let output = view.result.unwrap().output.unwrap();
    let workspace = output["workspace"].as_str().unwrap().to_owned();
    assert!(workspace.contains("py-kill-2-"), "{workspace}");

    let (status, _) = s.delete(&token, "/v1/agents/py-kill?drain_timeout=1").await;
    assert_eq!(status, 200);
    // Nothing left: no process, no working dir, no cgroup of either session.
    let left = std::process::Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "stray processes: {left:?}");
    assert!(!Path::new(&workspace).exists(), "{workspace} left behind");
    let stray = sandbox_cgroups(&s, "py-kill-");
    assert!(stray.is_empty(), "cgroups left behind: {stray:?}");
    s.stop().await;
}

/// Cgroup directories of `s`'s sandboxes whose name starts with `prefix`,
/// in every hierarchy of the host's cgroup interface (v2 or v1); fails the
/// test if the host has no usable cgroups rather than finding nothing.
pub(crate) fn sandbox_cgroups(s: &TestServer, prefix: &str) -> Vec<PathBuf> {
    host_cgroups(s)
        .sandboxes
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .flat_map(|(_, dirs)| dirs)
        .collect()
}

/// The host's cgroup interface and what is under `s`'s instance cgroup.
fn host_cgroups(s: &TestServer) -> SandboxCgroups {
    let parent = fabric_server::instance_cgroup(&s.data_dir);
    fabric_runtime::sandbox::sandbox_cgroups(&parent).unwrap_or_else(|e| {
        panic!(
            "cannot list the sandbox cgroups of {}: {e}",
            parent.display()
        )
    })
}

/// The cgroup directory of `sandbox` that holds `file` (one on v2; on v1
/// the hierarchy of that file's controller).
fn cgroup_file(s: &TestServer, sandbox: &str, file: &str) -> PathBuf {
    sandbox_cgroups(s, sandbox)
        .into_iter()
        .map(|dir| dir.join(file))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("no {file} in the cgroups of {sandbox}"))
}

#[tokio::test]
async fn a_warm_pool_serves_process_spawns_from_pre_started_sandboxes() {
    let s = server().await;
    let token = s.login().await;
    // Its pool.min_idle keeps one sandbox started for the next spawn (its
    // own extra mount makes it start cold, so the pool stays full).
    s.spawn_agent(
        &token,
        json!({"id": "holder", "isolation": {"level": "process", "read_only_paths": [examples_dir()]},
            "pool": {"min_idle": 1}}),
    )
    .await;
    let idle = |s: &TestServer| -> Vec<String> {
        let mut names: Vec<String> = sandbox_cgroups(s, "pool-")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.dedup();
        names
    };
    s.wait_pool_idle("process", 1).await;
    let pooled = idle(&s);
    assert_eq!(pooled.len(), 1, "one idle sandbox: {pooled:?}");
    s.spawn_agent(
        &token,
        json!({"id": "quick", "isolation": {"level": "process", "memory_mb": 96}}),
    )
    .await;
    let task = s
        .create(
            &token,
            json!({"agent": "quick", "commands": ["echo $FABRIC_WORKSPACE_DIR"]}),
        )
        .await;
    let out = s.wait_done(&token, &task).await.result.unwrap().stdout;
    assert!(
        out.contains(&format!("/{}/", pooled[0])),
        "ran in the pooled sandbox {}: {out}",
        pooled[0]
    );
    // The pooled sandbox took the agent's own memory limit.
    let host = host_cgroups(&s);
    let limit_file = match host.version {
        CgroupVersion::V2 => "memory.max",
        CgroupVersion::V1 => "memory.limit_in_bytes",
    };
    let limit = std::fs::read_to_string(cgroup_file(&s, &pooled[0], limit_file)).unwrap();
    assert_eq!(limit.trim(), (96u64 << 20).to_string());
    let (status, _) = s.delete(&token, "/v1/agents/quick?drain_timeout=0").await;
    assert_eq!(status, 200);
    let (status, _) = s.delete(&token, "/v1/agents/holder?drain_timeout=0").await;
    assert_eq!(status, 200);
    // The pool shrinks to nothing once no agent asks for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !idle(&s).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the pool kept {:?} with no agent asking for it",
            idle(&s)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let parents: Vec<PathBuf> = host
        .roots
        .iter()
        .map(|root| root.join(fabric_server::instance_cgroup(&s.data_dir)))
        .collect();
    assert!(parents.iter().all(|p| p.exists()), "{parents:?}");
    s.stop().await;
    let left: Vec<&PathBuf> = parents.iter().filter(|p| p.exists()).collect();
    assert!(
        left.is_empty(),
        "a clean stop removes the server's cgroup: {left:?}"
    );
}

/// The endpoint of an isolation `none` agent (a loopback port of its own) is
/// the gateway's Ollama API: a call works with the fabric's provider key
/// whatever the agent sends, is metered against the agent, 11 MiB gets 413
/// and never leaves, a provider slower than the deadline 504.
#[tokio::test]
async fn the_inference_endpoint_limits_size_and_time_and_passes_no_credentials() {
    let mock = crate::containers::keyed_ollama_mock().await;
    let gateway = crate::containers::gateway_to(&mock, Duration::from_secs(1));
    let s = TestServer::start_with(move |c| {
        c.sandbox_helper = Some(sandbox_helper());
        c.gateway = gateway;
    })
    .await;
    let token = s.login().await;
    let call = |path: &str, body: &str| {
        format!(
            "python3 -c \"import os, urllib.request as u\nr = u.Request(os.environ['OLLAMA_BASE_URL'] + '{path}', data={body} or None, headers={{'Authorization': 'Bearer stolen'}})\ntry:\n print(u.urlopen(r, timeout=10).read().decode())\nexcept u.HTTPError as e:\n print(e.code)\""
        )
    };
    let hang = r#"b'{\"model\":\"llama3\",\"stream\":false,\"messages\":[{\"role\":\"user\",\"content\":\"[[mock:hang]]\"}]}'"#;
    s.spawn_agent(
        &token,
        json!({"id": "asks", "isolation": {"level": "none"}}),
    )
    .await;
    let hello = r#"b'{\"model\":\"llama3\",\"stream\":false,\"messages\":[{\"role\":\"user\",\"content\":\"hello there\"}]}'"#;
    let task = s
        .create(
            &token,
            json!({"agent": "asks", "commands": [
                call("/api/tags", "b''"),
                call("/api/chat", hello),
                call("/api/chat", "b'x' * (11 << 20)"),
                call("/api/chat", hang),
            ]}),
        )
        .await;
    let view = s.wait_done(&token, &task).await;
    let out = view.result.unwrap().stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("mock-small"), "{out}");
    assert!(lines[1].contains("hello there"), "the mock echoes: {out}");
    assert_eq!(lines[2..], ["413", "504"], "{out}");
    assert!(!out.contains(crate::containers::PROVIDER_KEY), "{out}");
    assert_eq!(mock.control().requests_by_path().get("/api/tags"), Some(&1));
    // The hello and the hanging chat reached the provider; the big one never left.
    assert_eq!(mock.control().requests_by_path().get("/api/chat"), Some(&2));
    // Metered against the agent (the ledger is written in batches).
    let mut usage = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (status, body) = s.get(&token, "/v1/llm/usage?agent=asks").await;
        assert_eq!(status, 200, "{body}");
        usage = body;
        if usage["records"].as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = &usage["records"][0];
    assert_eq!(record["agent"], "asks", "{usage}");
    s.stop().await;
}

#[tokio::test]
async fn agents_come_back_after_a_restart_as_they_were_left() {
    let dir = tempfile::tempdir().unwrap();
    let configure = |c: &mut fabric_server::ServerConfig| c.sandbox_helper = Some(sandbox_helper());
    let s = TestServer::start_in(dir.path().to_path_buf(), configure).await;
    let token = s.login().await;
    s.spawn_agent(
        &token,
        json!({"id": "stays", "isolation": {"level": "process", "memory_mb": 80}}),
    )
    .await;
    s.spawn_agent(&token, json!({"id": "goes", "command": "sleep 100"}))
        .await;
    let (status, _) = s.delete(&token, "/v1/agents/goes?drain_timeout=0").await;
    assert_eq!(status, 200);
    s.stop().await;

    let s = TestServer::start_in(dir.path().to_path_buf(), configure).await;
    let stays = s
        .wait_agent(&token, "stays", |a| a["state"] == "running")
        .await;
    assert_eq!(
        stays["session"], 2,
        "a new session after the restart: {stays}"
    );
    assert_eq!(stays["config"]["isolation"]["memory_mb"], 80);
    let (_, goes) = s.get(&token, "/v1/agents/goes").await;
    assert_eq!(goes["state"], "stopped", "{goes}");
    let task = s
        .create(&token, json!({"agent": "stays", "commands": ["echo back"]}))
        .await;
    assert_eq!(
        s.wait_done(&token, &task).await.result.unwrap().stdout,
        "back\n"
    );
    let (_, sessions) = s.get(&token, "/v1/agents/stays/sessions").await;
    assert_eq!(
        sessions["sessions"][1]["exit_reason"], "fabric stopped",
        "{sessions}"
    );
    s.stop().await;
}

/// Issue #15: a program agent of isolation `none` runs confined (its own
/// directory and `read_only_paths`, nothing else of the host: not the data
/// directory), and only `as_fabric_user` lifts that, at level `none` only.
#[tokio::test(flavor = "multi_thread")]
async fn isolation_none_programs_are_confined_unless_run_as_the_fabric_user() {
    let s = server().await;
    let token = s.login().await;
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("allowed.txt"), "readable").unwrap();
    for (id, as_fabric_user) in [("confined", false), ("trusted", true)] {
        let probe = format!(
            "cat {shared}/allowed.txt > seen; ls {data} >> seen 2>&1; touch {data}/planted-{id} 2>> seen; sleep 1000",
            shared = shared.path().display(),
            data = s.data_dir.display(),
        );
        s.spawn_agent(
            &token,
            json!({"id": id, "command": probe,
                   "isolation": {"read_only_paths": [shared.path()], "as_fabric_user": as_fabric_user}}),
        )
        .await;
        let agent = s.wait_agent(&token, id, |a| a["pid"].is_u64()).await;
        assert_eq!(
            agent["config"]["isolation"]["as_fabric_user"].as_bool(),
            as_fabric_user.then_some(true),
            "{agent}"
        );
    }
    let seen = |id: &str| {
        let dir = std::fs::read_dir(s.data_dir.join("agents"))
            .unwrap()
            .flatten()
            .find(|e| {
                e.path().is_dir()
                    && e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{id}-"))
            })
            .unwrap()
            .path();
        std::fs::read_to_string(dir.join("seen")).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(seen("confined").contains("planted-confined")
        && s.data_dir.join("planted-trusted").exists())
    {
        assert!(
            Instant::now() < deadline,
            "confined: {}\ntrusted: {}",
            seen("confined"),
            seen("trusted"),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let confined = seen("confined");
    assert!(confined.starts_with("readable"), "{confined}");
    assert!(!confined.contains("fabric.db"), "{confined}");
    assert!(!s.data_dir.join("planted-confined").exists());
    assert!(s.data_dir.join("planted-trusted").exists());

    // as_fabric_user belongs to level none.
    let (status, body) = s
        .post(
            &token,
            "/v1/agents",
            json!({"id": "odd", "isolation": {"level": "process", "as_fabric_user": true}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "invalid_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("as_fabric_user applies to level none only"),
        "{body}"
    );
    s.stop().await;
}
