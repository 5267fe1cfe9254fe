//! The reactor-fabric server: HTTP API, authentication, and the wiring of
//! store, scheduler, event hub and built-in agents.
//!
//! `main` (in `fabric-cli`) parses flags and calls [`serve`]; tests call
//! [`run`] with their own listener and shutdown future.
//!
//! # Layout
//!
//! - [`api`]: axum routes, OpenAPI document (`/openapi.json`), WebSocket stream.
//! - [`service`]: `TaskService`, the scheduler + store + events under one lock discipline.
//! - [`agents`]: the agent lifecycle manager, sessions, sandboxes, the built-in `shell` and `noop` agents.
//! - [`llm`]: the inference gateway in the server: its usage ledger, reply → response, and
//!   [`llm::ollama_endpoint`], the Ollama API of an agent's inference endpoint.
//! - [`auth`]: users, hashed passwords and tokens, the `Principal` extractor.
//! - [`events`]: task event numbering, storage and live fan-out.
//! - `error`, `extract`, `request_id`, `validate`: the edges every request passes.
//! - [`telemetry`]: log subscriber setup (JSON or pretty).
//! - `store`: [`StoreConfig`] and `AnyStore`, SQLite or Redis behind the store ports.

pub mod agents;
pub mod api;
pub mod auth;
mod error;
pub mod events;
mod extract;
pub mod llm;
mod request_id;
pub mod service;
pub mod state;
mod store;
pub mod telemetry;
mod validate;

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use fabric_core::agent::AgentConfig;
use fabric_core::{AgentId, Clock, SystemClock};
use fabric_engine::{AgentQueueConfig, SchedulerConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::error::ApiError;
pub use crate::store::StoreConfig;
pub use crate::telemetry::{LogFormat, init_logging};
pub use fabric_runtime::sandbox::HelperCommand;

use crate::agents::{AgentManager, ManagerConfig};
use crate::auth::AuthService;
use crate::service::{TaskDefaults, TaskService};
use crate::state::AppState;

/// Default API address (`--listen`, `FABRIC_LISTEN`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default Redis key prefix (`--store-prefix`, `FABRIC_STORE_PREFIX`).
pub const DEFAULT_STORE_PREFIX: &str = fabric_store::redis::DEFAULT_PREFIX;
/// How often leases and timeouts are checked.
const TICK_EVERY: Duration = Duration::from_millis(100);

/// Everything `reactor-fabric serve` needs to know.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the API listens (`--listen`, `FABRIC_LISTEN`; default 127.0.0.1:8080).
    pub listen: SocketAddr,
    /// Where the SQLite database (when it is the store), the lock file and
    /// agents' working dirs live (`--data-dir`, `FABRIC_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Which store holds tasks, users and agents (`--store`, `FABRIC_STORE`).
    pub store: StoreConfig,
    /// Password for the first admin (`FABRIC_ADMIN_PASSWORD`); generated and printed once when absent.
    pub admin_password: Option<String>,
    pub scheduler: SchedulerConfig,
    /// `max_queue_depth` of the built-in agents.
    pub max_queue_depth: usize,
    /// Tasks the built-in shell agent runs at once.
    pub shell_concurrency: usize,
    /// Bytes of stdout / stderr kept per shell task.
    pub shell_output_limit: usize,
    /// SIGTERM → SIGKILL grace when a running task is canceled or times out.
    pub kill_grace: Duration,
    /// Attempts per task unless the request says otherwise.
    pub default_max_attempts: u32,
    /// How to start the sandbox helper (isolation `process`); `None` turns
    /// that level off. The `reactor-fabric` binary offers itself.
    pub sandbox_helper: Option<HelperCommand>,
    /// Where agents' inference endpoint forwards (`http://host:port`), until
    /// the gateway lands (`--inference-upstream`, `OLLAMA_BASE_URL`).
    pub inference_upstream: Option<String>,
    /// Longest an inference request may take upstream before the agent gets 504.
    pub inference_timeout: Duration,
    /// The inference gateway: providers, policy, model map, prices
    /// (`--gateway-config`, `OLLAMA_BASE_URL`, `OPENAI_*`, `ANTHROPIC_API_KEY`).
    pub gateway: fabric_gateway::GatewayConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("fabric-data"),
            store: StoreConfig::default(),
            admin_password: None,
            scheduler: SchedulerConfig::default(),
            max_queue_depth: AgentQueueConfig::default().max_queue_depth,
            shell_concurrency: 4,
            shell_output_limit: fabric_runtime::DEFAULT_OUTPUT_LIMIT,
            kill_grace: Duration::from_secs(5),
            default_max_attempts: fabric_core::Task::DEFAULT_MAX_ATTEMPTS,
            sandbox_helper: None,
            inference_upstream: None,
            inference_timeout: Duration::from_secs(120),
            gateway: fabric_gateway::GatewayConfig::default(),
        }
    }
}

/// Binds `config.listen`, serves until SIGINT/SIGTERM, then shuts down gracefully.
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!("cannot listen on {}: is another server using it? choose another address with --listen or FABRIC_LISTEN", config.listen)
    })?;
    run(config, listener, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested");
}

/// Takes the data directory's lock file: two servers on one database would
/// both believe they own every lease.
fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create data directory {}: choose another with --data-dir or FABRIC_DATA_DIR",
            dir.display()
        )
    })?;
    let path = dir.join("LOCK");
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "data directory {} is in use by another reactor-fabric server; stop it or use another --data-dir",
            dir.display()
        )
    })?;
    Ok(file)
}

/// `reactor-fabric/<instance>`: one cgroup per data dir, so servers on one
/// host never sweep each other's sandboxes.
fn instance_cgroup(data_dir: &Path) -> PathBuf {
    use sha2::Digest as _;
    let canonical = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    PathBuf::from(fabric_runtime::sandbox::DEFAULT_CGROUP_PARENT)
        .join(format!("i-{}", hex::encode(&digest[..6])))
}

/// Runs the server on `listener` until `shutdown` resolves.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Also with Redis as the store: the lock guards the local agents dir.
    let _lock = lock_data_dir(&config.data_dir)?;
    let store_name = config.store.describe(&config.data_dir);
    let store = store::AnyStore::open(&config.store, &config.data_dir)
        .await
        .with_context(|| format!("cannot open the store ({store_name})"))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let defaults = TaskDefaults {
        max_attempts: config.default_max_attempts,
        agent: AgentId::shell(),
    };
    let tasks = Arc::new(
        TaskService::new(
            store.clone(),
            Arc::clone(&clock),
            config.scheduler.clone(),
            defaults,
        )
        .await?,
    );
    // The built-in agents' queues exist before unfinished tasks are reloaded.
    let queue = AgentQueueConfig {
        max_queue_depth: config.max_queue_depth,
    };
    tasks.register_agent(AgentId::shell(), queue);
    tasks.register_agent(AgentId::noop(), queue);

    let auth = Arc::new(AuthService::new(store.clone(), Arc::clone(&clock)));
    if let Some(generated) = auth
        .bootstrap_admin(config.admin_password.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?
    {
        // Printed once, to the terminal only: never logged (NFR-SEC-2).
        println!("Created user 'admin' with generated password: {generated}");
        println!("(set FABRIC_ADMIN_PASSWORD before the first start to choose it)");
    }

    let api_addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let local = api_addr.to_string();
    let (stop_tx, stop_rx) = watch::channel(false);
    let manager_config = ManagerConfig {
        agents_dir: config.data_dir.join("agents"),
        api_addr,
        helper: config.sandbox_helper.clone(),
        cgroup_parent: instance_cgroup(&config.data_dir),
        inference_upstream: config.inference_upstream.clone(),
        inference_timeout: config.inference_timeout,
        shell_output_limit: config.shell_output_limit,
        kill_grace: config.kill_grace,
    };
    let agents = AgentManager::new(
        Arc::clone(&tasks),
        Arc::clone(&auth),
        store.clone(),
        Arc::clone(&clock),
        manager_config,
        stop_rx.clone(),
    );
    agents.sweep_leftovers().await;
    // Every stored agent's queue exists before its tasks are reloaded.
    agents
        .register_queues()
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let llm = llm::Llm::new(config.gateway.clone(), store.clone())?;
    let state = AppState {
        tasks: Arc::clone(&tasks),
        auth,
        agents: agents.clone(),
        llm,
        shutdown: stop_rx.clone(),
        ready: Arc::new(AtomicBool::new(false)),
    };
    let app = api::router(state.clone());
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    // Serve /healthz and /readyz (503) while unfinished tasks reload.
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(async move {
        // No Nagle: streamed answers (SSE, NDJSON) go out token by token.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|stop| *stop).await;
            })
            .await
    });
    tracing::info!(listen = %local, data_dir = %config.data_dir.display(), store = %store_name, version = fabric_core::VERSION, "reactor-fabric serving");

    let restored = tasks.recover().await?;
    let mut shell = AgentConfig::new(AgentId::shell());
    shell.concurrency = u32::try_from(config.shell_concurrency.max(1)).unwrap_or(u32::MAX);
    shell.max_queue_depth = u32::try_from(config.max_queue_depth).unwrap_or(u32::MAX);
    agents
        .start_system(shell)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the built-in shell agent: {}", e.message))?;
    let respawned = agents
        .restore()
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let mut workers = agents::spawn_noop(Arc::clone(&tasks), stop_rx.clone());
    let ticker = {
        let (tasks, agents, mut stop) = (Arc::clone(&tasks), agents.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK_EVERY);
            let mut ticks: u64 = 0;
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        tasks.tick();
                        ticks += 1;
                        if ticks.is_multiple_of(600) {
                            agents.housekeeping();
                        }
                    }
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        })
    };
    state.ready.store(true, Ordering::Release);
    tracing::info!(restored, agents = respawned, "ready");

    let served = http.await;
    state.llm.flush().await;
    tasks.stop_all_running();
    ticker.abort();
    let drain = async {
        agents.wait_stopped().await;
        while workers.join_next().await.is_some() {}
    };
    if tokio::time::timeout(config.kill_grace + Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("agents did not stop in time");
    }
    store.close().await;
    tracing::info!("stopped");
    served
        .context("server task failed")?
        .context("server failed")?;
    Ok(())
}
