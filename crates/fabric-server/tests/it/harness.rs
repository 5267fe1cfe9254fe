//! Starts a real server in-process and talks to it over HTTP.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fabric_core::TaskStatus;
use fabric_core::api::TaskResultView;
use fabric_server::ServerConfig;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const ADMIN_PASSWORD: &str = "test-admin-pw-7f3a";

pub struct TestServer {
    pub base: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self::start_in(dir.path().to_path_buf(), configure).await;
        server._dir = Some(dir);
        server
    }

    /// Starts on an existing data dir (restart tests keep the TempDir themselves).
    pub async fn start_in(data_dir: PathBuf, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let server = Self::spawn_in(data_dir, configure).await;
        server.wait_ready().await;
        server
    }

    /// Starts in a fresh data dir without waiting for `/readyz` (a standby
    /// never becomes ready while the leader lives).
    pub async fn spawn_with(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self::spawn_in(dir.path().to_path_buf(), configure).await;
        server._dir = Some(dir);
        server
    }

    async fn spawn_in(data_dir: PathBuf, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = ServerConfig {
            listen: addr,
            data_dir: data_dir.clone(),
            admin_password: Some(ADMIN_PASSWORD.into()),
            kill_grace: Duration::from_millis(500),
            // Tests poll and burst far above a person's rate; the limiter
            // has its own tests, which turn it on.
            limits: fabric_server::services::limits::LimitsConfig {
                requests_per_second: 0,
                llm_tokens_per_minute: None,
                unauthenticated_per_second: 0,
            },
            ..ServerConfig::default()
        };
        configure(&mut config);
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(fabric_server::run(config, listener, async move {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://{addr}"),
            data_dir,
            client: reqwest::Client::new(),
            stop: Some(tx),
            handle: Some(handle),
            _dir: None,
        }
    }

    /// Polls `/readyz` until 200 (10 s at most).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server did not become ready");
    }

    /// Graceful stop; returns the data dir's owner so a restart can reuse it.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
        self._dir.take()
    }

    /// Waits for the server to end on its own (no stop request) and returns
    /// what `run` returned.
    pub async fn exit(mut self) -> anyhow::Result<()> {
        let handle = self.handle.take().unwrap();
        let result = handle.await.unwrap();
        self.stop.take();
        result
    }

    /// `GET /readyz`: status and body.
    pub async fn readyz(&self) -> (u16, Value) {
        let r = self.client.get(self.url("/readyz")).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn login(&self) -> String {
        self.login_as("admin", ADMIN_PASSWORD).await
    }

    /// Logs a user in, asserting 200; returns the session token.
    pub async fn login_as(&self, user: &str, password: &str) -> String {
        let r = self
            .client
            .post(self.url("/v1/auth/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "logging in as {user}");
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn patch(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PATCH, token, path, body).await
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, token, path, body).await
    }

    pub async fn put(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, token, path, body).await
    }

    /// `method path` with a JSON body: the status and the JSON answer (null if none).
    async fn send(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        let r = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The Prometheus exposition of `/metrics` (no token needed).
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn delete(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Spawns an agent, asserting 201; returns the agent.
    pub async fn spawn_agent(&self, token: &str, config: Value) -> Value {
        let (status, agent) = self.post(token, "/v1/agents", config).await;
        assert_eq!(status, 201, "{agent}");
        agent
    }

    /// Polls an agent until `check` holds (10 s at most).
    pub async fn wait_agent(&self, token: &str, id: &str, check: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let (status, agent) = self.get(token, &format!("/v1/agents/{id}")).await;
            assert_eq!(status, 200, "{agent}");
            if check(&agent) {
                return agent;
            }
            last = agent;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("agent {id} never reached the expected state: {last}");
    }

    /// Waits until the warm pool of `isolation` (`process`, `container`)
    /// holds `n` ready items, as `/metrics` reports them: a pooled sandbox's
    /// cgroup or container exists a little before it is ready to be taken.
    pub async fn wait_pool_idle(&self, isolation: &str, n: usize) {
        let line = format!("agent_fabric_pool_idle{{isolation=\"{isolation}\"}} {n}");
        let mut metrics = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            metrics = self.metrics().await;
            if metrics.lines().any(|l| l == line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pool: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("agent_fabric_pool_idle"))
            .collect();
        panic!("the {isolation} pool never held {n} idle: {pool:?}");
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates a task, asserting 201; returns its id.
    pub async fn create(&self, token: &str, body: Value) -> String {
        let (status, task) = self.post(token, "/v1/tasks", body).await;
        assert_eq!(status, 201, "{task}");
        task["id"].as_str().unwrap().to_owned()
    }

    /// Polls until the task is terminal.
    pub async fn wait_done(&self, token: &str, id: &str) -> TaskResultView {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let (status, body) = self.get(token, &format!("/v1/tasks/{id}/result")).await;
            assert_eq!(status, 200, "{body}");
            let view: TaskResultView = serde_json::from_value(body).unwrap();
            if view.status.is_terminal() {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("task {id} did not finish");
    }

    /// Polls until the task has `status` (30 s at most).
    pub async fn wait_status(&self, token: &str, id: &str, status: TaskStatus) {
        self.wait_status_in(token, id, &[status]).await;
    }

    /// Polls until the task has one of `statuses` (30 s at most); returns it.
    pub async fn wait_status_in(
        &self,
        token: &str,
        id: &str,
        statuses: &[TaskStatus],
    ) -> TaskStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.status_of(token, id).await;
            if statuses.contains(&now) {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never became any of {statuses:?}: still {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn status_of(&self, token: &str, id: &str) -> TaskStatus {
        let (_, task) = self.get(token, &format!("/v1/tasks/{id}")).await;
        serde_json::from_value(task["status"].clone()).unwrap()
    }
}

/// Asserts Ollama's error shape (`error` a string, as its clients print
/// it, with the fabric's `code` and `request_id` beside it) and returns the code.
pub fn ollama_error_code(body: &Value) -> &str {
    assert!(
        body["error"].as_str().is_some_and(|m| !m.is_empty()),
        "not Ollama's error shape: {body}"
    );
    assert!(
        body["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_")),
        "no request id: {body}"
    );
    body["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code: {body}"))
}

/// Asserts the uniform error shape and returns the code.
pub fn error_code(body: &Value) -> &str {
    let err = &body["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message: {body}"
    );
    assert!(
        err["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_")),
        "no request id: {body}"
    );
    err["code"].as_str().unwrap()
}

/// The sandbox helper binary (`fabric-sandbox-init`, built with the
/// workspace); built on demand when this crate's tests run alone.
pub fn sandbox_helper() -> fabric_server::HelperCommand {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/it-<hash> → target/<profile>/fabric-sandbox-init
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("fabric-sandbox-init");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "-p",
                "fabric-runtime",
                "--bin",
                "fabric-sandbox-init",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "cannot build fabric-sandbox-init");
    }
    assert!(bin.exists(), "{} missing", bin.display());
    fabric_server::HelperCommand::new(bin)
}

/// The repository's `examples/` directory.
pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .canonicalize()
        .unwrap()
}
