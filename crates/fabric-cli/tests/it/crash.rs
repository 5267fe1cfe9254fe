//! NFR-REL-1: `kill -9` of the server mid-load loses no acknowledged task,
//! records every completion once, and re-runs only tasks that were running:
//! after a restart on the same data dir (SQLite, Redis), and after a standby
//! orchestrator sharing the Redis prefix takes over (issue #4).
//!
//! Every execution appends its task id to a log file (the agent-side count);
//! the server's own records say which tasks it had started (`attempt`).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;

const TASKS: usize = 2000;
const SHELL_CONCURRENCY: usize = 8;
const SUBMITTERS: usize = 16;
const PASSWORD: &str = "crash-test-pw";

/// A server child that is killed if the test panics before stopping it.
struct ServerChild(Child);

impl std::ops::Deref for ServerChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ServerChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `store` is what `--store` gets: `sqlite` or a Redis URL; `extra` more flags.
fn spawn_server(
    data_dir: &Path,
    port: u16,
    log: &Path,
    store: &str,
    extra: &[&str],
) -> ServerChild {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    std::process::Command::new(assert_cmd::cargo::cargo_bin("reactor-fabric"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .args(["--store", store])
        .args(["--shell-concurrency", &SHELL_CONCURRENCY.to_string()])
        // The load comes from one user far above a person's request rate.
        .args(["--rate-limit-rps", "0"])
        // The tasks append to a log on the host that this test counts
        // executions in: they must see the host's filesystem.
        .arg("--shell-as-fabric-user")
        .args(extra)
        .env("FABRIC_ADMIN_PASSWORD", PASSWORD)
        .env("FABRIC_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(ServerChild)
        .unwrap()
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    wait_readyz(client, base, "ok").await;
}

/// Polls `/readyz` (every 10 ms) until its body's status is `status`.
async fn wait_readyz(client: &reqwest::Client, base: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && let Ok(body) = r.json::<Value>().await
            && body["status"] == status
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("server at {base} never reported {status} on /readyz");
}

async fn login(client: &reqwest::Client, base: &str) -> String {
    let r: Value = client
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["token"].as_str().unwrap().to_owned()
}

/// Submits task `i` (idempotently); `None` when the server did not acknowledge it.
async fn submit(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    exec_log: &Path,
    i: usize,
) -> Option<String> {
    let body = json!({"prompt": format!("echo $FABRIC_TASK_ID >> {}; sleep 0.01", exec_log.display()), "name": format!("crash-{i}")});
    let r = client
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(token)
        .header("Idempotency-Key", format!("crash-{i}"))
        .json(&body)
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let task: Value = r.json().await.ok()?;
    task["id"].as_str().map(str::to_owned)
}

fn executions(exec_log: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(exec_log)
        .unwrap_or_default()
        .lines()
    {
        *counts.entry(line.trim().to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Who carries on after the `kill -9`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Successor {
    /// The same server restarted on the same data dir and port.
    Restart,
    /// A second orchestrator on the same Redis prefix (its own data dir and
    /// port), standing by since before the load, takes over.
    Standby,
}

/// Leadership TTL of the standby runs: how soon the standby may take over.
const LEADER_TTL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_nothing_and_reruns_only_running_tasks() {
    kill_9_mid_load("sqlite", Successor::Restart).await;
}

/// The same on the Redis store (its own redis-server with `appendfsync
/// always`, which outlives the killed server, as in the Docker shape).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_on_redis_loses_nothing_and_reruns_only_running_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let redis = fabric_store::redis::testing::RedisServer::start(dir.path());
    kill_9_mid_load(&redis.url(), Successor::Restart).await;
}

/// Two orchestrators on one Redis prefix: `kill -9` of the active one
/// mid-load; the standby takes over within about the leadership TTL and
/// completes every acknowledged task exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_mid_load_the_standby_takes_over_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let redis = fabric_store::redis::testing::RedisServer::start(dir.path());
    kill_9_mid_load(&redis.url(), Successor::Standby).await;
}

/// Issue #16's chaos test: the server is SIGKILLed three times (and
/// restarted on the same data dir each time) while 16 clients submit 2,000
/// tasks, each client retrying a submission with the same idempotency key
/// until the server acknowledges it: every task completes, none exists
/// twice, each has one recorded completion, and a task ran more than once
/// only if a kill interrupted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_three_times_under_retrying_clients_loses_nothing_and_completes_each_once() {
    const KILLS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let exec_log = Arc::new(dir.path().join("executions.log"));
    let server_log = dir.path().join("server.log");
    let port = super::free_port();
    let base = Arc::new(format!("http://127.0.0.1:{port}"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut server = spawn_server(&data_dir, port, &server_log, "sqlite", &[]);
    wait_ready(&client, &base).await;
    let token = Arc::new(login(&client, &base).await);

    let load = Load::start(&client, &base, &token, &exec_log, true);
    let (acked, retries) = (Arc::clone(&load.acked), Arc::clone(&load.retries));
    // Kill when a quarter, half and three quarters are acknowledged.
    let mut executed_at_kills = Vec::new();
    for kill in 1..=KILLS {
        let threshold = TASKS * kill / (KILLS + 1);
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.lock().await.len() < threshold {
            assert!(
                Instant::now() < deadline,
                "only {} of {TASKS} acknowledged before kill {kill}",
                acked.lock().await.len()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        executed_at_kills.push(executions(&exec_log).values().sum::<usize>());
        server = spawn_server(&data_dir, port, &server_log, "sqlite", &[]);
        wait_ready(&client, &base).await;
    }
    load.finish().await;
    let acked = acked.lock().await.clone();
    assert_eq!(acked.len(), TASKS);
    assert!(
        retries.load(Ordering::Relaxed) > 0,
        "the kills must have interrupted submissions"
    );
    let reran =
        assert_each_ran_and_completed_once(&client, &base, &token, &acked, &exec_log, 1 + KILLS)
            .await;
    assert!(
        reran.len() <= SHELL_CONCURRENCY * KILLS,
        "{} tasks re-ran; at most {SHELL_CONCURRENCY} were running at each of {KILLS} kills",
        reran.len()
    );
    eprintln!(
        "chaos test: {KILLS} kills, executions at each {executed_at_kills:?}, {} submission retries, {} re-ran",
        retries.load(Ordering::Relaxed),
        reran.len()
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

async fn kill_9_mid_load(store: &str, successor: Successor) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let exec_log = Arc::new(dir.path().join("executions.log"));
    let server_log = dir.path().join("server.log");
    let port = super::free_port();
    let base = Arc::new(format!("http://127.0.0.1:{port}"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    let ttl = format!("{}ms", LEADER_TTL.as_millis());
    let extra: &[&str] = match successor {
        Successor::Restart => &[],
        Successor::Standby => &["--leader-ttl", &ttl],
    };
    let mut server = spawn_server(&data_dir, port, &server_log, store, extra);
    wait_ready(&client, &base).await;
    let token = Arc::new(login(&client, &base).await);
    let standby = match successor {
        Successor::Restart => None,
        Successor::Standby => {
            let port = super::free_port();
            let log = dir.path().join("standby.log");
            let standby = spawn_server(&dir.path().join("standby"), port, &log, store, extra);
            let base = format!("http://127.0.0.1:{port}");
            wait_readyz(&client, &base, "standby").await;
            Some((standby, base))
        }
    };

    // Submit from many clients at once; kill -9 the server half-way through.
    let load = Load::start(&client, &base, &token, &exec_log, false);
    let acked = Arc::clone(&load.acked);
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().await.len() < TASKS / 2 {
        assert!(
            Instant::now() < deadline,
            "half the tasks were never acknowledged: {} of {TASKS}",
            acked.lock().await.len()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill().unwrap(); // SIGKILL
    let killed_at = Instant::now();
    server.wait().unwrap();
    load.finish().await;
    let acked_before_crash = acked.lock().await.len();
    let executed_before_crash = executions(&exec_log).values().sum::<usize>();
    assert!(
        acked_before_crash < TASKS,
        "the crash came too late to test anything"
    );
    assert!(
        executed_before_crash < acked_before_crash,
        "work must remain at the crash ({executed_before_crash} executed)"
    );

    // Restart on the same data dir (or let the standby take over); the
    // session token survives; resubmit what was not acknowledged (the same
    // idempotency keys: no duplicates).
    let (mut server, base) = match standby {
        None => {
            let server = spawn_server(&data_dir, port, &server_log, store, extra);
            wait_ready(&client, &base).await;
            (server, base)
        }
        Some((standby, base)) => {
            wait_ready(&client, &base).await;
            let takeover = killed_at.elapsed();
            eprintln!("crash test: the standby took over {takeover:?} after kill -9");
            assert!(
                takeover < LEADER_TTL + Duration::from_secs(5),
                "the standby took {takeover:?} to take over (leader TTL {LEADER_TTL:?})"
            );
            (standby, Arc::new(base))
        }
    };
    for i in 0..TASKS {
        if acked.lock().await.contains_key(&i) {
            continue;
        }
        let id = submit(&client, &base, &token, &exec_log, i)
            .await
            .expect("resubmission after restart failed");
        acked.lock().await.insert(i, id);
    }
    let acked = acked.lock().await.clone();
    assert_eq!(acked.len(), TASKS);

    let twice =
        assert_each_ran_and_completed_once(&client, &base, &token, &acked, &exec_log, 2).await;
    assert!(
        twice.len() <= SHELL_CONCURRENCY,
        "{} tasks ran twice; at most {SHELL_CONCURRENCY} were running",
        twice.len()
    );
    eprintln!(
        "crash test: {acked_before_crash} acknowledged and {executed_before_crash} executed before kill -9; {} re-ran",
        twice.len()
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

/// `kill -9` of the server while a sandboxed agent runs a task: the sandbox's
/// processes end with the server; what it leaves (cgroups, working dir) is
/// removed by the next start on the same data dir, which restarts the agent
/// in a fresh sandbox and reruns the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_sandboxed_agent_leaves_nothing_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("server.log"));
    let port = super::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut server = spawn_server(&data, port, &log, "sqlite", &[]);
    wait_ready(&client, &base).await;
    let token = login(&client, &base).await;
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let r = post(
        "/v1/agents",
        json!({"id": "boxed", "isolation": {"level": "process", "memory_mb": 64}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // And a program at isolation none, which has no cgroup to be found by.
    let host_marker = format!("host-agent-{}", std::process::id());
    let r = post(
        "/v1/agents",
        json!({"id": "plain", "command": format!("sleep 1000; echo {host_marker}")}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let host_pids = || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &host_marker])
            .output()
            .unwrap()
            .stdout;
        String::from_utf8_lossy(&out)
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let marker = format!("marker-{}", std::process::id());
    let task: Value = post(
        "/v1/tasks",
        json!({"agent": "boxed", "commands": [format!("sleep 2; echo {marker}")]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let id = task["id"].as_str().unwrap().to_owned();
    let get = |path: String| {
        client
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t: Value = get(format!("/v1/tasks/{id}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if t["status"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the task never ran: {t}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The sandbox's cgroups, as the restart must find and remove them.
    let cgroups = |prefix: &str| -> Vec<std::path::PathBuf> {
        let parent = fabric_server::instance_cgroup(&data);
        let found = fabric_runtime::sandbox::sandbox_cgroups(&parent)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", parent.display()));
        found
            .sandboxes
            .into_iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .flat_map(|(_, dirs)| dirs)
            .collect()
    };
    let first_session = cgroups("boxed-1-");
    assert!(!first_session.is_empty(), "the running sandbox has cgroups");
    let pgrep = || {
        std::process::Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap()
            .stdout
    };
    // `running` is recorded (durably) before the shell agent starts the command:
    // wait for the command itself, or the kill may come before there is one.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pgrep().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the task's command never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    // The sandbox's init sees its control socket close and exits, which ends
    // everything in the sandbox: no command of a dead server keeps running
    // (and acting) while the restarted one reruns its task.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pgrep().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the sandboxed command outlived its SIGKILLed server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let before = host_pids();
    assert_eq!(
        before.len(),
        1,
        "the host agent outlives the server: {before:?}"
    );
    assert!(
        first_session.iter().all(|d| d.exists()),
        "a SIGKILLed server leaves its sandbox's cgroups: {first_session:?}"
    );

    let mut server = spawn_server(&data, port, &log, "sqlite", &[]);
    wait_ready(&client, &base).await;
    // The orphaned program was stopped; the agent's new session runs a new one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = host_pids();
        if now.len() == 1 && now != before {
            break;
        }
        assert!(Instant::now() < deadline, "before {before:?}, now {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        pgrep().is_empty() || {
            // The rerun of the task may have started already: its processes are new ones.
            let agent: Value = get("/v1/agents/boxed".into())
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            agent["session"] == 2
        }
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let t: Value = get(format!("/v1/tasks/{id}/result"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if t["status"] == "completed" {
            break t;
        }
        assert!(Instant::now() < deadline, "task never completed: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["result"]["stdout"], format!("{marker}\n"));
    let t: Value = get(format!("/v1/tasks/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["attempt"], 2, "{t}");
    let agent: Value = get("/v1/agents/boxed".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (agent["state"].as_str(), agent["session"].as_u64()),
        (Some("running"), Some(2))
    );
    // Only the new session's working dir is left.
    let dirs: Vec<String> = std::fs::read_dir(data.join("agents"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("boxed-"))
        .collect();
    assert!(
        dirs.len() == 1 && dirs[0].starts_with("boxed-2-"),
        "{dirs:?}"
    );
    // And only the new session's cgroups: the restart removed the old ones.
    let stale: Vec<_> = first_session.iter().filter(|d| d.exists()).collect();
    assert!(
        stale.is_empty(),
        "cgroups of the killed session left: {stale:?}"
    );
    assert!(!cgroups("boxed-2-").is_empty(), "the new session's sandbox");
    assert_eq!(cgroups("boxed-").len(), cgroups("boxed-2-").len());
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("stale sandbox swept"),
        "the restart reports what it removed"
    );
    stop_gracefully(&mut server);
    assert!(host_pids().is_empty(), "a clean stop stops the host agent");
}

/// `SUBMITTERS` clients submitting tasks `0..TASKS` between them, each
/// task idempotently (`crash-<i>`); `acked` maps each acknowledged one to
/// its id. With `retry`, a client tries a task again (same key) until the
/// server acknowledges it, counting `retries`; else it stops at the first
/// failure (the server is gone).
struct Load {
    acked: Arc<Mutex<HashMap<usize, String>>>,
    retries: Arc<AtomicUsize>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(
        client: &reqwest::Client,
        base: &Arc<String>,
        token: &Arc<String>,
        exec_log: &Arc<std::path::PathBuf>,
        retry: bool,
    ) -> Load {
        let next = Arc::new(AtomicUsize::new(0));
        let acked = Arc::new(Mutex::new(HashMap::new()));
        let retries = Arc::new(AtomicUsize::new(0));
        let clients = (0..SUBMITTERS)
            .map(|_| {
                let (client, base, token, exec_log) = (
                    client.clone(),
                    Arc::clone(base),
                    Arc::clone(token),
                    Arc::clone(exec_log),
                );
                let (next, acked, retries) =
                    (Arc::clone(&next), Arc::clone(&acked), Arc::clone(&retries));
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= TASKS {
                            return;
                        }
                        let deadline = Instant::now() + Duration::from_secs(120);
                        let id = loop {
                            if let Some(id) = submit(&client, &base, &token, &exec_log, i).await {
                                break id;
                            }
                            if !retry {
                                return; // the server is gone
                            }
                            assert!(Instant::now() < deadline, "task {i} was never acknowledged");
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        };
                        acked.lock().await.insert(i, id);
                    }
                })
            })
            .collect();
        Load {
            acked,
            retries,
            clients,
        }
    }

    /// Waits for every client to be done.
    async fn finish(self) {
        for client in self.clients {
            client.await.unwrap();
        }
    }
}

/// Every acknowledged task (`acked`: submission index → task id) completes;
/// exactly `TASKS` tasks exist (idempotent resubmissions made no
/// duplicates); each has exactly one recorded completion; each ran between
/// once and `max_runs` times by the agent-side log, and more than once only
/// if the server recorded the earlier runs. Returns the tasks that re-ran.
async fn assert_each_ran_and_completed_once(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    acked: &HashMap<usize, String>,
    exec_log: &Path,
    max_runs: usize,
) -> Vec<String> {
    // Every acknowledged task completes.
    let mut remaining: HashSet<&String> = acked.values().collect();
    let mut finals: HashMap<String, Value> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !remaining.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} tasks never completed",
            remaining.len()
        );
        let mut done = Vec::new();
        for id in remaining.iter().take(200) {
            let task: Value = client
                .get(format!("{base}/v1/tasks/{id}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            match task["status"].as_str() {
                Some("completed") => {
                    done.push(*id);
                    finals.insert((*id).clone(), task);
                }
                Some("queued" | "running" | "pending") => {}
                other => panic!("task {id} ended {other:?}: {task}"),
            }
        }
        if done.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for id in done {
            remaining.remove(id);
        }
    }

    // No duplicate tasks: exactly TASKS exist.
    let mut listed = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/tasks?limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = client
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed += page["tasks"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        listed, TASKS,
        "idempotent resubmission must not duplicate tasks"
    );

    // Agent side: everything ran, at most `max_runs` times, and only tasks
    // the server had recorded as started (attempt ≥ 2 after a restart) ran
    // more than once.
    let runs = executions(exec_log);
    let mut reran = Vec::new();
    for id in acked.values() {
        let n = runs.get(id).copied().unwrap_or(0);
        assert!((1..=max_runs).contains(&n), "task {id} executed {n} times");
        if n >= 2 {
            reran.push(id.clone());
            let attempt = finals[id]["attempt"].as_u64().unwrap();
            assert!(
                attempt >= n as u64,
                "task {id} ran {n} times but the server recorded {attempt} attempts"
            );
        }
    }

    // Server side: each completion recorded exactly once.
    for id in acked.values() {
        let events: Value = client
            .get(format!("{base}/v1/tasks/{id}/events"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let results = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "result")
            .count();
        assert_eq!(results, 1, "task {id} has {results} recorded completions");
    }
    reran
}

/// SIGTERM and wait: a clean stop removes the agent's sandbox.
fn stop_gracefully(server: &mut Child) {
    let _ = std::process::Command::new("kill")
        .arg(server.id().to_string())
        .status();
    let _ = server.wait();
}
