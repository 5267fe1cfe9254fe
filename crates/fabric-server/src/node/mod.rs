//! The worker node process (`reactor-fabric node --join URL`, issue #21):
//! what runs on a machine that joins a fabric.
//!
//! ```text
//! start: lock the data dir ─► probe what it can run (isolation levels, CPU,
//!        memory, OS, inference path) ─► none usable: refuse, saying why
//!   <data>/node.json holds a credential for this orchestrator and name? use it
//!   else: POST /v1/nodes/join {join token, name, labels, capabilities} ─► save it (0600)
//!   serve GET /readyz, /healthz on --listen (the only port; the node needs no inbound one
//!   for the orchestrator: it connects out)
//! loop: POST /v1/nodes/{name}/heartbeat {ready, reasons, config version, refused config}
//!         (a long poll: answered at once when there is a config to apply)
//!       config in the answer ─► check it all (its own rules, the log filter) ─►
//!         write <data>/config.json (temp file, rename) ─► switch to it; the next
//!         heartbeat acknowledges its version. Refused: the previous one stays, the
//!         next heartbeat says why.
//!       sessions in the answer ─► start the new ones, stop the gone ones
//!         (`sessions`); every heartbeat reports each session's state, and
//!         one goes out at once when a state changes
//!       no answer for most of the heartbeat timeout ─► stop every session
//!         (fencing: the orchestrator is about to place them elsewhere)
//!       past half its life: POST /v1/nodes/{name}/credential ─► save the new one
//!       401: the node was removed (or its credential expired): stop, saying so
//! ```
//!
//! Agents' programs and built-in workers reach the orchestrator's API
//! directly (a forward on the same port inside sandboxes and containers);
//! their inference endpoints forward to it (`inference`).

mod inference;
mod sessions;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Json;
use axum::http::StatusCode;
use fabric_core::agent::IsolationLevel;
use fabric_core::node::{
    ConfigRejection, Heartbeat, HeartbeatReply, InferencePath, JoinRequest, NodeCapabilities,
    NodeConfig, NodeCredential,
};
use fabric_core::{Timestamp, VERSION};
use fabric_runtime::sandbox::{HelperCommand, Sandbox, SandboxConfig};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Changes the process's log filter (`info`, `debug,hyper=warn`, ...).
pub type LogFilter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// How a node process runs (`reactor-fabric node`'s flags).
#[derive(Clone)]
pub struct NodeOptions {
    /// The orchestrator's base URL (`--join`).
    pub orchestrator: String,
    /// A join token (`--token`); needed only until the node has a credential.
    pub join_token: Option<String>,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    /// A PEM file of the CA to trust for the orchestrator's TLS (`--cacert`).
    pub ca_file: Option<PathBuf>,
    /// Where `/readyz` and `/healthz` are served (`--listen`); `None`:
    /// 127.0.0.1:8081, or any free loopback port when another node on this
    /// machine has that one (the address is logged and kept in
    /// `<data-dir>/readyz.addr`).
    pub listen: Option<SocketAddr>,
    /// The isolation levels asked for (`--isolation`); empty: all it can run.
    pub isolation: Vec<IsolationLevel>,
    /// A node-local Ollama (`--ollama`); else inference goes through the orchestrator.
    pub ollama: Option<String>,
    /// This binary as the sandbox helper (isolation `process`).
    pub helper: Option<HelperCommand>,
    /// Isolation `container`: images, and in a Docker instance the socket
    /// volume sidecars share with this node.
    pub containers: crate::services::agents::ContainerConfig,
}

/// What `<data>/node.json` keeps: who this node is to which orchestrator.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    orchestrator: String,
    name: String,
    credential: String,
    issued_at: Timestamp,
    expires_at: Timestamp,
    heartbeat_interval_ms: u64,
    heartbeat_timeout_ms: u64,
}

impl Identity {
    fn from_answer(orchestrator: &str, answer: NodeCredential) -> Self {
        Self {
            orchestrator: orchestrator.to_owned(),
            name: answer.name,
            credential: answer.credential,
            issued_at: now(),
            expires_at: answer.expires_at,
            heartbeat_interval_ms: answer.heartbeat_interval_ms,
            heartbeat_timeout_ms: answer.heartbeat_timeout_ms,
        }
    }

    /// Past half of its life: time to renew.
    fn due_for_renewal(&self, at: Timestamp) -> bool {
        let life = self.expires_at.since(self.issued_at);
        at >= self.issued_at.plus(life / 2)
    }
}

/// What `/readyz` and the heartbeats report.
#[derive(Default)]
struct Status {
    /// Why the node cannot take agents (reported to the orchestrator); empty: it can.
    problems: Vec<String>,
    /// Why the last heartbeat failed (the orchestrator cannot be told; `/readyz` says it).
    unreached: Option<String>,
    config: NodeConfig,
    rejected: Option<ConfigRejection>,
    capabilities: NodeCapabilities,
}

#[derive(Debug, Serialize, Deserialize)]
struct Readiness {
    status: &'static str,
    node: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<String>,
    config_version: u64,
    isolation: Vec<IsolationLevel>,
}

/// Runs the node until `shutdown` resolves (or the orchestrator disowns it).
pub async fn run(
    options: NodeOptions,
    log_filter: LogFilter,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    fabric_core::node::validate_node_name(&options.name).map_err(anyhow::Error::msg)?;
    let base = options.orchestrator.trim_end_matches('/').to_owned();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        anyhow::bail!("--join {base:?}: give the orchestrator's URL, e.g. http://orch:8080");
    }
    let _lock = crate::lock_data_dir(&options.data_dir, "node", "FABRIC_NODE_DATA_DIR")?;
    // A config applied before a restart is where the node starts from.
    let config = read_json::<NodeConfig>(&options.data_dir.join("config.json"))
        .ok()
        .flatten()
        .unwrap_or_default();
    let capabilities = probe(&options, &config).await;
    if capabilities.isolation.is_empty() {
        anyhow::bail!(
            "this machine can run none of the isolation levels asked for, so it cannot take agents ({}); fix one of them, or ask for another with --isolation",
            unavailable_text(&capabilities)
        );
    }
    for (level, reason) in &capabilities.unavailable {
        tracing::info!(isolation = %level, reason = %reason, "isolation level unavailable on this node");
    }
    let http = client(options.ca_file.as_deref())?;
    let identity_path = options.data_dir.join("node.json");
    let identity = match load_identity(&identity_path, &base, &options.name)? {
        Some(identity) => identity,
        None => {
            let token = options.join_token.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "this node has not joined {base} yet: give --token rfj_… (an admin creates one with 'reactor-fabric node token create')"
                )
            })?;
            let identity = join(&http, &base, &options, token, capabilities.clone()).await?;
            save_json(&identity_path, &identity)?;
            tracing::info!(node = %identity.name, orchestrator = %base, "joined the fabric");
            identity
        }
    };
    if let Some(level) = &config.spec.log_level {
        let _ = log_filter(level);
    }
    let status = Arc::new(Mutex::new(Status {
        config,
        capabilities,
        unreached: Some("has not reached the orchestrator yet".into()),
        ..Status::default()
    }));
    let readyz = serve_health(
        options.listen,
        &options.data_dir,
        options.name.clone(),
        Arc::clone(&status),
    )
    .await?;
    let stop_runtime = tokio_util::sync::CancellationToken::new();
    let runtime = session_runtime(&options, &base, &http, &stop_runtime).await?;
    runtime.sweep_leftovers().await;
    let hosting = sessions::Hosting::new(Arc::clone(&runtime), KILL_GRACE);
    let node = Node {
        http,
        base,
        identity: Mutex::new(identity),
        identity_path,
        options,
        status,
        log_filter,
        hosting: Arc::clone(&hosting),
        answered: Mutex::new(Instant::now()),
    };
    let result = tokio::select! {
        result = node.report_loop() => result,
        () = node.fence() => Ok(()),
        () = shutdown => {
            tracing::info!(node = %node.options.name, "node stopping");
            Ok(())
        }
    };
    readyz.abort();
    let stopping = sessions::Stop {
        grace: KILL_GRACE,
        reason: "the node stopped",
        asked: false,
    };
    if hosting.stop_all(stopping) > 0 {
        let _ = tokio::time::timeout(KILL_GRACE * 2, hosting.wait_idle()).await;
    }
    stop_runtime.cancel();
    runtime.wait_stopped().await;
    result
}

/// SIGTERM → SIGKILL grace of the node's agents and tasks.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// This node's way of running sessions: its own working dirs, sandboxes
/// and containers, the orchestrator's API forwarded into them, inference
/// forwarded to the orchestrator's gateway, `FABRIC_NODE` set for every
/// program and task.
async fn session_runtime(
    options: &NodeOptions,
    base: &str,
    http: &reqwest::Client,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Arc<crate::services::agents::SessionRuntime>> {
    let url = reqwest::Url::parse(base).with_context(|| format!("--join {base:?} is not a URL"))?;
    let host = url
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("--join {base:?} names no host"))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| anyhow::anyhow!("--join {base:?} names no port"))?;
    let api_addr = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve the orchestrator's host {host}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("the orchestrator's host {host} resolves to no address"))?;
    let gateway_timeout = fabric_gateway::config::DEFAULT_REQUEST_TIMEOUT;
    let forward = inference::ForwardEndpoints {
        http: http.clone(),
        base: base.to_owned(),
        max_body_bytes: fabric_gateway::config::DEFAULT_MAX_BODY_BYTES,
        timeout: gateway_timeout + Duration::from_secs(5),
    };
    // Unique on the Docker host: a node's sweep at start removes only what
    // this very node left behind.
    let owner = format!(
        "{}-node-{}",
        crate::container_owner(&options.data_dir, options.containers.instance.as_deref()),
        options.name
    );
    let config = crate::services::agents::RuntimeConfig {
        agents_dir: options.data_dir.join("agents"),
        api_addr,
        helper: options.helper.clone(),
        cgroup_parent: crate::instance_cgroup(&options.data_dir),
        egress: Some(Arc::new(inference::RemoteEgress {
            http: http.clone(),
            base: base.to_owned(),
        })),
        shell_output_limit: fabric_runtime::DEFAULT_OUTPUT_LIMIT,
        kill_grace: KILL_GRACE,
        workdir_retention: Duration::ZERO,
        owner,
        containers: options.containers.clone(),
        inference: Arc::new(inference::SharedForward(Arc::new(forward))),
        inference_timeout: gateway_timeout,
        env: vec![("FABRIC_NODE".to_owned(), options.name.clone())],
    };
    Ok(crate::services::agents::SessionRuntime::new(
        config,
        Arc::new(fabric_core::SystemClock),
        None,
        Some(options.data_dir.join("agent-logs")),
        shutdown,
    ))
}

struct Node {
    http: reqwest::Client,
    base: String,
    identity: Mutex<Identity>,
    identity_path: PathBuf,
    options: NodeOptions,
    status: Arc<Mutex<Status>>,
    log_filter: LogFilter,
    hosting: Arc<sessions::Hosting>,
    /// When the last heartbeat that was answered was sent.
    answered: Mutex<Instant>,
}

impl Node {
    /// Resolves never; stops every session whenever no heartbeat was
    /// answered for three quarters of the heartbeat timeout. The
    /// orchestrator counts the timeout from the heartbeat's arrival, later
    /// than its sending, so the sessions here are gone before it places
    /// their agents elsewhere.
    async fn fence(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let timeout = Duration::from_millis(self.identity.lock().heartbeat_timeout_ms.max(200));
            let silent = self.answered.lock().elapsed();
            if silent < timeout * 3 / 4 {
                continue;
            }
            let fenced = self.hosting.stop_all(sessions::Stop {
                grace: Duration::ZERO,
                reason: "stopped: the node lost the orchestrator",
                asked: false,
            });
            if fenced > 0 {
                tracing::warn!(
                    sessions = fenced,
                    silent_ms = silent.as_millis() as u64,
                    "no answer from the orchestrator: stopping this node's agents"
                );
            }
        }
    }

    /// Heartbeats until the orchestrator disowns the node.
    async fn report_loop(&self) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(200);
        let mut last_probe = Instant::now();
        let mut sent_capabilities: Option<NodeCapabilities> = None;
        loop {
            let (interval, timeout) = {
                let id = self.identity.lock();
                (
                    Duration::from_millis(id.heartbeat_interval_ms.max(100)),
                    Duration::from_millis(id.heartbeat_timeout_ms.max(200)),
                )
            };
            if last_probe.elapsed() >= Duration::from_secs(30) {
                last_probe = Instant::now();
                let fresh = self.reprobe().await;
                let mut s = self.status.lock();
                s.problems = if fresh.isolation.is_empty() {
                    vec![format!(
                        "can run none of its isolation levels now ({})",
                        unavailable_text(&fresh)
                    )]
                } else {
                    Vec::new()
                };
                s.capabilities = fresh;
            }
            let hb = {
                let s = self.status.lock();
                let capabilities =
                    Some(s.capabilities.clone()).filter(|c| sent_capabilities.as_ref() != Some(c));
                Heartbeat {
                    ready: s.problems.is_empty(),
                    reasons: s.problems.clone(),
                    config_version: s.config.version,
                    config_error: s.rejected.clone(),
                    capabilities,
                    wait_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
                    sessions_version: self.hosting.version(),
                    sessions: self.hosting.reports(),
                }
            };
            let sending = hb.capabilities.clone();
            let sent_at = Instant::now();
            // A session that starts or ends is reported at once: the long
            // poll in flight is dropped and a new heartbeat carries it.
            let answer = tokio::select! {
                answer = self.heartbeat(&hb, interval + timeout) => Some(answer),
                () = self.hosting.changed.notified() => None,
            };
            let Some(answer) = answer else { continue };
            match answer {
                Ok(reply) => {
                    backoff = Duration::from_millis(200);
                    *self.answered.lock() = sent_at;
                    self.hosting.delivered(&hb.sessions);

                    if sending.is_some() {
                        sent_capabilities = sending;
                    }
                    {
                        let mut s = self.status.lock();
                        s.unreached = None;
                    }
                    if let Some(config) = reply.config {
                        self.apply(config);
                    }
                    // After the config: new sessions start with its defaults.
                    if let Some(set) = reply.sessions {
                        let defaults = self.status.lock().config.spec.clone();
                        self.hosting.reconcile(set, &defaults);
                    }
                    let due = self.identity.lock().due_for_renewal(now());
                    if due && let Err(e) = self.renew().await {
                        tracing::warn!(error = %e, "cannot renew the node credential; retrying with the next heartbeat");
                    }
                }
                Err(HeartbeatError::Disowned(message)) => {
                    anyhow::bail!(
                        "the orchestrator refused this node's credential ({message}); if the node was removed, delete {} and join again with a new token",
                        self.identity_path.display()
                    );
                }
                Err(HeartbeatError::Failed(e)) => {
                    self.status.lock().unreached = Some(format!(
                        "cannot reach the orchestrator at {}: {e}",
                        self.base
                    ));
                    tracing::warn!(orchestrator = %self.base, error = %e, retry_in_ms = backoff.as_millis() as u64, "heartbeat failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(interval);
                }
            }
        }
    }

    /// The capabilities with Docker checked again (it starts and stops;
    /// what the kernel offers does not, and a probe sandbox is not free).
    async fn reprobe(&self) -> NodeCapabilities {
        let mut caps = self.status.lock().capabilities.clone();
        let asked = self.options.isolation.is_empty()
            || self.options.isolation.contains(&IsolationLevel::Container);
        if !asked {
            return caps;
        }
        caps.isolation.retain(|l| *l != IsolationLevel::Container);
        caps.unavailable.remove(IsolationLevel::Container.as_str());
        match probe_docker().await {
            Ok(()) => caps.isolation.push(IsolationLevel::Container),
            Err(reason) => {
                caps.unavailable
                    .insert(IsolationLevel::Container.as_str().to_owned(), reason);
            }
        }
        caps
    }

    async fn heartbeat(
        &self,
        hb: &Heartbeat,
        timeout: Duration,
    ) -> Result<HeartbeatReply, HeartbeatError> {
        let (name, credential) = {
            let id = self.identity.lock();
            (id.name.clone(), id.credential.clone())
        };
        let response = self
            .http
            .post(format!("{}/v1/nodes/{name}/heartbeat", self.base))
            .bearer_auth(credential)
            .timeout(timeout)
            .json(hb)
            .send()
            .await
            .map_err(|e| HeartbeatError::Failed(describe(e)))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            return Err(HeartbeatError::Disowned(error_message(response).await));
        }
        if !status.is_success() {
            return Err(HeartbeatError::Failed(format!(
                "HTTP {status}: {}",
                error_message(response).await
            )));
        }
        response
            .json()
            .await
            .map_err(|e| HeartbeatError::Failed(format!("unreadable answer: {e}")))
    }

    /// Checks a config whole, then switches to it; a config it cannot apply
    /// is refused (the next heartbeat says why) and the current one stays.
    fn apply(&self, config: NodeConfig) {
        let version = config.version;
        match self.try_apply(&config) {
            Ok(()) => {
                tracing::info!(version, "node config applied");
                let mut s = self.status.lock();
                s.capabilities.inference = inference_path(&config, self.options.ollama.as_deref());
                s.config = config;
                s.rejected = None;
            }
            Err(error) => {
                tracing::warn!(version, error = %error, "node config refused; keeping the current one");
                self.status.lock().rejected = Some(ConfigRejection { version, error });
            }
        }
    }

    fn try_apply(&self, config: &NodeConfig) -> Result<(), String> {
        config.spec.validate()?;
        // Everything is checked before anything changes: the log filter is
        // parsed here, and set only once the file is written.
        let filter = config.spec.log_level.as_deref().unwrap_or("info");
        tracing_subscriber::EnvFilter::try_new(filter)
            .map_err(|e| format!("log_level {filter:?} is not a log filter: {e}"))?;
        save_json(&self.options.data_dir.join("config.json"), config)
            .map_err(|e| format!("{e:#}"))?;
        (self.log_filter)(filter)
    }

    async fn renew(&self) -> anyhow::Result<()> {
        let (name, credential) = {
            let id = self.identity.lock();
            (id.name.clone(), id.credential.clone())
        };
        let response = self
            .http
            .post(format!("{}/v1/nodes/{name}/credential", self.base))
            .bearer_auth(credential)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(describe(e)))?;
        if !response.status().is_success() {
            anyhow::bail!(
                "HTTP {}: {}",
                response.status(),
                error_message(response).await
            );
        }
        let answer: NodeCredential = response.json().await?;
        let identity = Identity::from_answer(&self.base, answer);
        save_json(&self.identity_path, &identity)?;
        tracing::info!(expires_at = %identity.expires_at, "node credential renewed");
        *self.identity.lock() = identity;
        Ok(())
    }
}

enum HeartbeatError {
    /// 401: the orchestrator no longer knows this credential.
    Disowned(String),
    Failed(String),
}

/// Joins with the join token; the credential is the answer.
async fn join(
    http: &reqwest::Client,
    base: &str,
    options: &NodeOptions,
    token: String,
    capabilities: NodeCapabilities,
) -> anyhow::Result<Identity> {
    let request = JoinRequest {
        token,
        name: options.name.clone(),
        labels: options.labels.clone(),
        capabilities,
    };
    let response = http
        .post(format!("{base}/v1/nodes/join"))
        .timeout(Duration::from_secs(30))
        .json(&request)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the orchestrator at {base}: {}", describe(e)))?;
    let status = response.status();
    if !status.is_success() {
        anyhow::bail!(
            "the orchestrator refused the join ({status}): {}",
            error_message(response).await
        );
    }
    let answer: NodeCredential = response
        .json()
        .await
        .context("the orchestrator's answer to the join is unreadable")?;
    Ok(Identity::from_answer(base, answer))
}

/// The stored identity, if it is this node's at this orchestrator.
fn load_identity(path: &Path, base: &str, name: &str) -> anyhow::Result<Option<Identity>> {
    let Some(identity) = read_json::<Identity>(path)? else {
        return Ok(None);
    };
    if identity.orchestrator != base || identity.name != name {
        anyhow::bail!(
            "{} belongs to node {:?} of {}: use another --data-dir for node {name:?} of {base}, or delete the file to join anew",
            path.display(),
            identity.name,
            identity.orchestrator
        );
    }
    if identity.expires_at <= now() {
        tracing::warn!(path = %path.display(), "the stored node credential has expired; joining again");
        return Ok(None);
    }
    Ok(Some(identity))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is not readable JSON", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes `value` to `path` whole or not at all (a temp file, renamed),
/// readable by this user alone (it may hold the node's credential).
fn save_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value)?;
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// The HTTP client to the orchestrator: rustls, trusting `ca_file` besides
/// the usual roots.
fn client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(format!("reactor-fabric-node/{VERSION}"));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read the CA file {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            )
        })?;
        if certs.is_empty() {
            anyhow::bail!("{} holds no PEM certificate", path.display());
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().context("cannot build the HTTP client")
}

/// A transport error with its causes (reqwest's top message alone says
/// little), as anyhow prints a chain.
fn describe(e: reqwest::Error) -> String {
    format!("{:#}", anyhow::Error::new(e))
}

/// The `message` of an API error body, else the body itself.
async fn error_message(response: reqwest::Response) -> String {
    let body = response.text().await.unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or(body)
}

fn now() -> Timestamp {
    use fabric_core::Clock as _;
    fabric_core::SystemClock.now()
}

/// Where `/readyz` is served when `--listen` is not given.
pub const DEFAULT_READYZ: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8081);

/// `/readyz` (200 ready, 503 with the reasons) and `/healthz` on `listen`
/// (see [`NodeOptions::listen`]); the address is written to `<data>/readyz.addr`.
async fn serve_health(
    listen: Option<SocketAddr>,
    data_dir: &Path,
    name: String,
    status: Arc<Mutex<Status>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = match listen {
        Some(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (--listen) for /readyz"))?,
        // Several nodes on one machine (tests, a lab) must not trip over
        // the default port: the second takes any free one.
        None => match tokio::net::TcpListener::bind(DEFAULT_READYZ).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(default = %DEFAULT_READYZ, error = %e, "the default /readyz port is taken; serving it on a free loopback port (give --listen to choose)");
                tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
                    .await
                    .context("cannot listen on a loopback port for /readyz")?
            }
        },
    };
    let bound = listener.local_addr()?;
    std::fs::write(data_dir.join("readyz.addr"), format!("{bound}\n"))
        .with_context(|| format!("cannot write {}", data_dir.join("readyz.addr").display()))?;
    let ready = move || {
        let s = status.lock();
        let reasons: Vec<String> = s.problems.iter().chain(&s.unreached).cloned().collect();
        let body = Readiness {
            status: if reasons.is_empty() {
                "ready"
            } else {
                "not_ready"
            },
            node: name.clone(),
            reasons: reasons.clone(),
            config_version: s.config.version,
            isolation: s.capabilities.isolation.clone(),
        };
        let code = if reasons.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, Json(body))
    };
    let app = axum::Router::new()
        .route(
            "/readyz",
            axum::routing::get(move || async move { ready() }),
        )
        .route(
            "/healthz",
            axum::routing::get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        );
    tracing::info!(listen = %bound, "node readiness at /readyz");
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    }))
}

/// What this machine is, which isolation levels it can run (of those
/// asked for), and its inference path under `config`.
async fn probe(options: &NodeOptions, config: &NodeConfig) -> NodeCapabilities {
    let wanted = |level| options.isolation.is_empty() || options.isolation.contains(&level);
    let mut isolation = Vec::new();
    let mut unavailable = BTreeMap::new();
    let mut check = |level: IsolationLevel, result: Result<(), String>| {
        if !wanted(level) {
            return;
        }
        match result {
            Ok(()) => isolation.push(level),
            Err(reason) => {
                unavailable.insert(level.as_str().to_owned(), reason);
            }
        }
    };
    check(
        IsolationLevel::None,
        fabric_runtime::confine::landlock_abi()
            .map(drop)
            .map_err(|e| format!("cannot confine host processes: {e}")),
    );
    check(IsolationLevel::Process, probe_sandbox(options).await);
    check(IsolationLevel::Container, probe_docker().await);
    NodeCapabilities {
        hostname: read_trimmed("/proc/sys/kernel/hostname").unwrap_or_default(),
        os: os_name(),
        kernel: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        arch: std::env::consts::ARCH.to_owned(),
        cpus: std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        memory_bytes: mem_total().unwrap_or(0),
        isolation,
        unavailable,
        inference: inference_path(config, options.ollama.as_deref()),
        version: VERSION.to_owned(),
    }
}

/// `process: …; container: …`: why each level asked for is missing.
fn unavailable_text(capabilities: &NodeCapabilities) -> String {
    capabilities
        .unavailable
        .iter()
        .map(|(level, reason)| format!("{level}: {reason}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The inference path the node's agents use: the config's upstream, else
/// `--ollama`, else the orchestrator's gateway.
fn inference_path(config: &NodeConfig, ollama: Option<&str>) -> InferencePath {
    match config.spec.inference_upstream.as_deref().or(ollama) {
        Some(url) => InferencePath {
            mode: "local".into(),
            url: Some(url.to_owned()),
        },
        None => InferencePath {
            mode: "gateway".into(),
            url: None,
        },
    }
}

/// Isolation `process` needs root, namespaces and cgroups: a sandbox is
/// made and removed again to find out.
async fn probe_sandbox(options: &NodeOptions) -> Result<(), String> {
    let helper = options
        .helper
        .clone()
        .ok_or("this binary cannot act as the sandbox helper")?;
    // `/proc/self` belongs to the process's effective user.
    let euid = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata("/proc/self").map_err(|e| format!("cannot read /proc/self: {e}"))?,
    );
    if euid != 0 {
        return Err("sandboxes need root (namespaces, cgroups): run the node as root".into());
    }
    let name = format!("probe-{:08x}", rand::random::<u32>());
    let workdir = options.data_dir.join("agents").join(&name);
    let mut config = SandboxConfig::new(name, workdir, helper);
    config.cgroup_parent = crate::instance_cgroup(&options.data_dir);
    let sandbox = Sandbox::create(config)
        .await
        .map_err(|e| format!("cannot make a sandbox: {e}"))?;
    sandbox.destroy().await.map_err(|e| e.to_string())
}

/// Isolation `container` needs a Docker daemon that answers.
async fn probe_docker() -> Result<(), String> {
    let client = fabric_docker::DockerClient::connect()
        .await
        .map_err(|e| format!("Docker is not reachable: {e}"))?;
    client
        .ping()
        .await
        .map_err(|e| format!("Docker is not reachable: {e}"))
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// `PRETTY_NAME` of `/etc/os-release`.
fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| std::env::consts::OS.to_owned())
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_past_half_the_life() {
        let issued = Timestamp::from_millis(1_000_000);
        let identity = Identity {
            orchestrator: "http://o".into(),
            name: "n1".into(),
            credential: "rfn_x".into(),
            issued_at: issued,
            expires_at: issued.plus(Duration::from_secs(100)),
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 5000,
        };
        assert!(!identity.due_for_renewal(issued.plus(Duration::from_secs(49))));
        assert!(identity.due_for_renewal(issued.plus(Duration::from_secs(50))));
    }

    #[test]
    fn a_data_dir_of_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.json");
        let identity = Identity {
            orchestrator: "http://o:8080".into(),
            name: "n1".into(),
            credential: "rfn_x".into(),
            issued_at: now(),
            expires_at: now().plus(Duration::from_secs(3600)),
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 5000,
        };
        save_json(&path, &identity).unwrap();
        let loaded = load_identity(&path, "http://o:8080", "n1")
            .unwrap()
            .unwrap();
        assert_eq!(loaded.credential, "rfn_x");
        let err = load_identity(&path, "http://o:8080", "n2")
            .unwrap_err()
            .to_string();
        assert!(err.contains("belongs to node \"n1\""), "{err}");
        assert!(
            load_identity(&dir.path().join("none.json"), "x", "n1")
                .unwrap()
                .is_none()
        );
    }
}
