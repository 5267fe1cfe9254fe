//! A real fabric in-process, an admin session on it, and external agents.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fabric_agent::{AgentClient, AgentError, Outcome, RunOptions, TaskContext};
use fabric_core::api::TaskResultView;
use fabric_core::{AgentId, TaskEvent, TaskStatus};
use fabric_server::ServerConfig;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const ADMIN_PASSWORD: &str = "agent-sdk-test-pw-41c9";

pub struct Fabric {
    pub base: String,
    pub admin: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    dir: Option<tempfile::TempDir>,
}

impl Fabric {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_in(listener, tempfile::tempdir().unwrap(), configure).await
    }

    /// Serves `listener` with the data in `dir` (a restart passes the old one).
    pub async fn start_in(
        listener: tokio::net::TcpListener,
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let mut config = ServerConfig {
            listen: addr,
            data_dir: PathBuf::from(dir.path()),
            admin_password: Some(ADMIN_PASSWORD.into()),
            kill_grace: Duration::from_millis(500),
            ..ServerConfig::default()
        };
        configure(&mut config);
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let stopped = fabric_server::run(config, listener, async move {
                let _ = rx.await;
            })
            .await;
            if let Err(e) = stopped {
                panic!("the fabric failed: {e:#}");
            }
        });
        let http = reqwest::Client::new();
        let base = format!("http://{addr}");
        wait_ready(&http, &base).await;
        let admin = login(&http, &base).await;
        Self {
            base,
            admin,
            http,
            stop: Some(tx),
            handle: Some(handle),
            dir: Some(dir),
        }
    }

    pub async fn stop(self) {
        self.stop_keeping_data().await;
    }

    /// Stops gracefully; returns the data dir, for a restart.
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap();
        }
        self.dir.take().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .put(self.url(path))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .delete(self.url(path))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates an `external` agent (one the fabric does not run) and mints its token.
    pub async fn external_agent(&self, id: &str, concurrency: u32) -> String {
        let (status, body) = self
            .post(
                "/v1/agents",
                json!({"id": id, "external": true, "concurrency": concurrency}),
            )
            .await;
        assert_eq!(status, 201, "creating agent {id}: {body}");
        self.agent_token(id).await
    }

    /// A fresh agent token for `id`, from the admin.
    pub async fn agent_token(&self, id: &str) -> String {
        let (status, body) = self.post("/v1/auth/tokens", json!({"agent": id})).await;
        assert_eq!(status, 201, "minting a token for {id}: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// An SDK client for an external agent `id` created just now.
    pub async fn client_for_new_agent(&self, id: &str, concurrency: u32) -> AgentClient {
        let token = self.external_agent(id, concurrency).await;
        AgentClient::new(&self.base, token, AgentId::new(id).unwrap()).unwrap()
    }

    /// Creates a task for `agent`; returns its id.
    pub async fn create_task(&self, agent: &str, prompt: &str) -> String {
        let (status, task) = self
            .post("/v1/tasks", json!({"agent": agent, "prompt": prompt}))
            .await;
        assert_eq!(status, 201, "{task}");
        task["id"].as_str().unwrap().to_owned()
    }

    pub async fn task(&self, id: &str) -> Value {
        let (status, task) = self.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(status, 200, "{task}");
        task
    }

    pub async fn status_of(&self, id: &str) -> TaskStatus {
        serde_json::from_value(self.task(id).await["status"].clone()).unwrap()
    }

    /// Polls until the task is terminal (at most 20 s).
    pub async fn wait_done(&self, id: &str) -> TaskResultView {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let (status, body) = self.get(&format!("/v1/tasks/{id}/result")).await;
            assert_eq!(status, 200, "{body}");
            let view: TaskResultView = serde_json::from_value(body).unwrap();
            if view.status.is_terminal() {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("task {id} did not finish");
    }

    pub async fn events(&self, id: &str) -> Vec<TaskEvent> {
        let (status, body) = self.get(&format!("/v1/tasks/{id}/events")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body["events"].clone()).unwrap()
    }

    /// The task's log events as `(stream, line)`.
    pub async fn log_lines(&self, id: &str) -> Vec<(String, String)> {
        self.events(id)
            .await
            .into_iter()
            .filter(|e| e.kind == fabric_core::EventKind::Log)
            .map(|e| {
                (
                    e.payload["stream"].as_str().unwrap_or_default().to_owned(),
                    e.payload["line"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the fabric did not become ready");
}

async fn login(http: &reqwest::Client, base: &str) -> String {
    let r = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `fabric_agent::run_until` in a task of its own, stopped by [`Runner::stop`].
pub struct Runner {
    stop: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<Result<(), AgentError>>,
}

impl Runner {
    pub fn spawn<H, F>(client: AgentClient, options: RunOptions, handler: H) -> Self
    where
        H: Fn(TaskContext) -> F + Send + Sync + 'static,
        F: std::future::Future<Output = Outcome> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(fabric_agent::run_until(
            client,
            options,
            handler,
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            stop: Some(tx),
            handle,
        }
    }

    /// Shuts the runner down and returns what `run_until` returned (within 10 s).
    pub async fn stop(mut self) -> Result<(), AgentError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("the runner did not stop within 10 s of shutdown")
            .unwrap()
    }
}

/// Options for tests: short long polls, so shutdowns are quick either way.
pub fn quick_options(concurrency: usize) -> RunOptions {
    RunOptions {
        concurrency,
        lease_wait: Duration::from_secs(1),
        log_flush_interval: Duration::from_millis(50),
        cancel_grace: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(2),
        ..RunOptions::default()
    }
}
