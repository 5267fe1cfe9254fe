//! The reactor-fabric server: HTTP API, authentication, and the wiring of
//! store, scheduler, event hub and built-in agents.
//!
//! `main` (in `fabric-cli`) parses flags and calls [`serve`]; tests call
//! [`run`] with their own listener and shutdown future.
//!
//! # Layout
//!
//! Two layers; the HTTP layer depends on the services, never the reverse.
//!
//! - [`services`]: the domain services, built once in dependency order by
//!   [`run`]: `tasks` (the scheduler + store + events under one lock
//!   discipline), `agents` (lifecycle manager, sessions, sandboxes,
//!   containers, the built-in `shell` and `noop` agents), `policy`
//!   (decisions, approvals, audit), `budgets`, `llm` (the inference gateway
//!   with its ledger, guard and admission), `auth` (users, tokens), `alerts`.
//!   No axum, no `AppState`, no `ApiError`: each answers with its own error
//!   enum and takes a plain [`fabric_core::Identity`].
//! - [`api`]: axum routes, the OpenAPI document (`/openapi.json`), the
//!   WebSocket stream, agents' inference endpoints ([`api::inference`]);
//!   with `error` (`ApiError` and the one mapping of every service error to a
//!   status and code), `extract` (JSON, query, paging and `Principal`
//!   extractors), `body`, `request_id`: the edges every request passes.
//! - [`state`]: `AppState`, what handlers share.
//! - [`proxy`]: the inference forwarder (10 MiB, 120 s, no credentials) and the
//!   container sidecar that runs it (`reactor-fabric proxy`).
//! - [`events`]: task event numbering, storage and live fan-out.
//! - [`leader`]: active/standby among orchestrators sharing one Redis store prefix.
//! - [`telemetry`]: log subscriber setup (JSON or pretty), the HTTP metrics/trace
//!   middleware, the server's `Telemetry` (registry, tracer, alert hub) and
//!   `telemetry::task_spans` (task spans observed from the scheduler's writes).
//! - [`metrics`] and [`trace`]: `fabric-telemetry`'s registry behind `/metrics`,
//!   W3C trace context and OTLP/HTTP span exporter, re-exported.
//! - `store`: [`StoreConfig`] and `AnyStore`, SQLite or Redis behind the store ports.

pub mod api;
mod body;
pub mod cors;
mod error;
pub mod events;
mod extract;
pub mod leader;
pub mod listen;
pub mod mcp;
pub mod node;
mod protocol_errors;
/// The metric registry and families (from `fabric-telemetry`).
pub use fabric_telemetry::metrics;
pub mod proxy;
mod request_id;
pub mod services;
pub mod state;
mod store;
pub mod telemetry;
mod ui;
/// W3C trace context and the OTLP/HTTP exporter (from `fabric-telemetry`).
pub use fabric_telemetry::trace;

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fabric_core::agent::{AgentConfig, IsolationLevel};
use fabric_core::{AgentId, Clock, SystemClock};
use fabric_engine::{AgentQueueConfig, SchedulerConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::error::ApiError;
pub use crate::store::StoreConfig;
pub use crate::telemetry::{LogFormat, TelemetryConfig, init_logging};
pub use fabric_runtime::sandbox::HelperCommand;

use crate::leader::Leadership;
use crate::services::agents::{AgentManager, ManagerConfig, RuntimeConfig};
pub use crate::services::agents::{ContainerConfig, SocketVolume};
use crate::services::auth::AuthService;
use crate::services::tasks::{TaskDefaults, TaskService};
use crate::services::{agents, alerts, budgets, llm, policy};
use crate::state::{AppState, Readiness};

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
    /// How long the leadership of a Redis store prefix lasts without renewal
    /// (`--leader-ttl`): how soon a standby takes over after the active
    /// orchestrator dies. Renewed every third of it.
    pub leader_ttl: Duration,
    /// Password for the first admin (`FABRIC_ADMIN_PASSWORD`); generated and printed once when absent.
    pub admin_password: Option<String>,
    pub scheduler: SchedulerConfig,
    /// `max_queue_depth` of the built-in agents.
    pub max_queue_depth: usize,
    /// Tasks the built-in shell agent runs at once.
    pub shell_concurrency: usize,
    /// Where the built-in shell agent runs tasks (`--shell-isolation`).
    pub shell_isolation: ShellIsolation,
    /// Run the built-in shell agent's tasks as the fabric's own user,
    /// unconfined (`--shell-as-fabric-user`): only for a fabric whose every
    /// task creator is trusted with everything that user can read.
    pub shell_as_fabric_user: bool,
    /// Directories an agent's `isolation.filesystem_root` may lie in
    /// (`--agent-root`); none by default, which refuses every
    /// `filesystem_root`.
    pub agent_roots: Vec<PathBuf>,
    /// Egress allowlist of the built-in shell agent when sandboxed
    /// (`--shell-egress`), as an agent's `network_egress`.
    pub shell_egress: Vec<String>,
    /// Bytes of stdout / stderr kept per shell task.
    pub shell_output_limit: usize,
    /// SIGTERM → SIGKILL grace when a running task is canceled or times out.
    pub kill_grace: Duration,
    /// How long a finished shell task's working directory stays before it is
    /// removed (`--workdir-retention`); zero removes it at once.
    pub workdir_retention: Duration,
    /// How long finished tasks (with their events) are kept, counted from
    /// their creation (`--task-retention`); zero keeps them for ever.
    pub task_retention: Duration,
    /// Attempts per task unless the request says otherwise.
    pub default_max_attempts: u32,
    /// How to start the sandbox helper (isolation `process`); `None` turns
    /// that level off. The `reactor-fabric` binary offers itself.
    pub sandbox_helper: Option<HelperCommand>,
    /// Isolation `container`: which Docker, which images, where sidecars find the fabric.
    pub containers: ContainerConfig,
    /// The inference gateway: providers, policy, model map, prices
    /// (`--gateway-config`, `OLLAMA_BASE_URL`, `OPENAI_*`, `ANTHROPIC_API_KEY`).
    pub gateway: fabric_gateway::GatewayConfig,
    /// The clock budget periods follow (tests drive it; the system clock otherwise).
    pub budget_clock: budgets::BudgetClock,
    /// How often agents' CPU time is sampled into their compute budgets.
    pub compute_sample_every: Duration,
    /// Trace export (`OTEL_*`) and alerts (`--alert-webhook`, thresholds).
    pub telemetry: TelemetryConfig,
    /// Origins a browser frontend may call the API from (`--cors-origin`,
    /// see [`cors::parse_origin`]); none by default.
    pub cors_origins: Vec<cors::Origin>,
    /// Connection caps and the header/idle timeout of the API listener
    /// (`--max-connections`, `--max-connections-per-address`,
    /// `--header-timeout`).
    pub listen_limits: listen::ListenLimits,
    /// Per-user request and LLM token rates (`--rate-limit-rps`,
    /// `--llm-tokens-per-minute`).
    pub limits: services::limits::LimitsConfig,
    /// Worker nodes' heartbeat interval and timeout and their credentials'
    /// lifetime (`--node-heartbeat-interval`, `--node-heartbeat-timeout`,
    /// `--node-credential-ttl`).
    pub nodes: services::nodes::NodeTimings,
}

/// The default of [`ServerConfig::task_retention`]: 30 days.
pub const DEFAULT_TASK_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("fabric-data"),
            store: StoreConfig::default(),
            leader_ttl: leader::DEFAULT_LEADER_TTL,
            admin_password: None,
            scheduler: SchedulerConfig::default(),
            max_queue_depth: AgentQueueConfig::default().max_queue_depth,
            shell_concurrency: 4,
            shell_isolation: ShellIsolation::Auto,
            shell_as_fabric_user: false,
            shell_egress: Vec::new(),
            agent_roots: Vec::new(),
            shell_output_limit: fabric_runtime::DEFAULT_OUTPUT_LIMIT,
            kill_grace: Duration::from_secs(5),
            workdir_retention: Duration::ZERO,
            task_retention: DEFAULT_TASK_RETENTION,
            default_max_attempts: fabric_core::Task::DEFAULT_MAX_ATTEMPTS,
            sandbox_helper: None,
            containers: ContainerConfig::default(),
            gateway: fabric_gateway::GatewayConfig::default(),
            budget_clock: budgets::BudgetClock::default(),
            compute_sample_every: budgets::DEFAULT_COMPUTE_SAMPLE_EVERY,
            telemetry: TelemetryConfig::default(),
            cors_origins: Vec::new(),
            limits: services::limits::LimitsConfig::default(),
            listen_limits: listen::ListenLimits::default(),
            nodes: services::nodes::NodeTimings::default(),
        }
    }
}

/// Where the built-in `shell` agent runs tasks. Running a task never means
/// running as the fabric unless an admin asks for it
/// ([`ServerConfig::shell_as_fabric_user`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShellIsolation {
    /// `process` where the fabric can sandbox (root, namespaces, cgroups),
    /// else `none` confined (Landlock, seccomp, no privileges).
    #[default]
    Auto,
    /// A sandbox (isolation `process`); the server refuses to start without one.
    Process,
    /// Host processes (isolation `none`), confined unless
    /// [`ServerConfig::shell_as_fabric_user`].
    None,
}

impl ShellIsolation {
    /// The `--shell-isolation` value.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "process" => Ok(Self::Process),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown shell isolation {other:?}: use auto, process or none"
            )),
        }
    }
}

/// The built-in shell agent's config: sandboxed where the fabric can
/// sandbox, else confined on the host, as the fabric's own user only when
/// asked; said in the log either way.
async fn shell_agent(
    config: &ServerConfig,
    agents: &agents::AgentManager,
) -> anyhow::Result<AgentConfig> {
    let mut shell = AgentConfig::new(AgentId::shell());
    shell.concurrency = u32::try_from(config.shell_concurrency.max(1)).unwrap_or(u32::MAX);
    shell.max_queue_depth = u32::try_from(config.max_queue_depth).unwrap_or(u32::MAX);
    let level = match (config.shell_isolation, config.shell_as_fabric_user) {
        (ShellIsolation::Process, true) => anyhow::bail!(
            "--shell-as-fabric-user runs tasks unsandboxed and cannot go with --shell-isolation process"
        ),
        (_, true) => IsolationLevel::None,
        (ShellIsolation::Process, false) => {
            agents.probe_sandbox().await.map_err(|reason| {
                anyhow::anyhow!("--shell-isolation process: this host cannot sandbox ({reason}); run as root on Linux 5.12+ with namespaces, or use --shell-isolation auto")
            })?;
            IsolationLevel::Process
        }
        (ShellIsolation::None, false) => IsolationLevel::None,
        (ShellIsolation::Auto, false) => match agents.probe_sandbox().await {
            Ok(()) => IsolationLevel::Process,
            Err(reason) => {
                tracing::info!(reason = %reason, "cannot sandbox the built-in shell agent; it runs tasks confined on the host (isolation none: Landlock, seccomp, no privileges)");
                IsolationLevel::None
            }
        },
    };
    shell.isolation.level = level;
    if level == IsolationLevel::Process {
        // The one sandbox holds every task the agent runs at once.
        shell.isolation.memory_mb = SHELL_SANDBOX_MEMORY_MB;
        shell.isolation.cpu_cores =
            std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        shell.isolation.network_egress = config.shell_egress.clone();
    }
    if config.shell_as_fabric_user {
        shell.isolation.as_fabric_user = true;
        tracing::warn!(
            agent_id = "shell",
            isolation = "none",
            "--shell-as-fabric-user: the built-in shell agent runs tasks unconfined as this server's own user: anyone who may create tasks on it can read what this user can (this process's environment, the data directory)"
        );
    } else if level == IsolationLevel::None
        && let Err(reason) = fabric_runtime::confine::landlock_abi()
    {
        anyhow::bail!(
            "cannot confine the built-in shell agent: {reason}. Run the server as root (to sandbox tasks at isolation process), or, if everyone who may create tasks is trusted with this server's user, pass --shell-as-fabric-user"
        );
    }
    if !config.shell_egress.is_empty() && level != IsolationLevel::Process {
        tracing::warn!(
            agent_id = "shell",
            "--shell-egress applies to a sandboxed shell agent only; on the host its tasks use the host's network"
        );
    }
    tracing::info!(agent_id = "shell", isolation = %level, as_fabric_user = config.shell_as_fabric_user, "built-in shell agent");
    Ok(shell)
}

/// Memory of the built-in shell agent's sandbox, shared by its tasks.
const SHELL_SANDBOX_MEMORY_MB: u64 = 2048;

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

/// Takes away group and other access to an existing data directory (ours
/// are created 0700; one made earlier, e.g. 0755 by `mkdir`, would show the
/// database and agents' directories to every local user). Another user's
/// directory cannot be changed: that is warned about.
fn make_private(dir: &Path) {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    if meta.mode() & 0o077 == 0 {
        return;
    }
    match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        Ok(()) => {
            tracing::info!(data_dir = %dir.display(), was = format!("{:o}", meta.mode() & 0o777), "made the data directory private to this user (0700)")
        }
        Err(e) => {
            tracing::warn!(data_dir = %dir.display(), error = %e, "cannot make the data directory private; other local users may read it")
        }
    }
}

/// Takes the data directory's lock file: two servers on one database would
/// both believe they own every lease (two nodes, on one credential).
/// `who` (`server`, `node`) and `env` (the variable that names its data
/// directory) are for the error messages.
pub(crate) fn lock_data_dir(dir: &Path, who: &str, env: &str) -> anyhow::Result<File> {
    use std::os::unix::fs::DirBuilderExt as _;
    // Private to the server's user: it holds the database (users, token
    // hashes) and every agent's working directory.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| {
            format!(
                "cannot create data directory {}: choose another with --data-dir (or {env})",
                dir.display()
            )
        })?;
    make_private(dir);
    let path = dir.join("LOCK");
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "data directory {} is in use by another reactor-fabric {who}; stop it or use another --data-dir",
            dir.display()
        )
    })?;
    Ok(file)
}

/// `reactor-fabric/i-<first 6 bytes of sha256(canonical data dir)>`: the
/// parent cgroup of a server's sandboxes, one per data dir, so servers on one
/// host never sweep each other's.
pub fn instance_cgroup(data_dir: &Path) -> PathBuf {
    use sha2::Digest as _;
    let canonical = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    PathBuf::from(fabric_runtime::sandbox::DEFAULT_CGROUP_PARENT)
        .join(format!("i-{}", hex::encode(&digest[..6])))
}

/// Aborts a task when dropped.
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// The owner label (`io.reactor-fabric.owner`) of a server's containers and
/// volumes: its instance, else a hash of its data dir (as for its cgroup), so
/// a restart sweeps only its own.
pub fn container_owner(data_dir: &Path, instance: Option<&str>) -> String {
    match instance {
        Some(name) => format!("instance-{name}"),
        None => instance_cgroup(data_dir)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "i-unknown".to_owned()),
    }
}

/// Runs the server on `listener` until `shutdown` resolves. With a Redis
/// store it first takes the leadership of the key prefix (standing by while
/// another orchestrator holds it), and returns an error if it loses it.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Also with Redis as the store: the lock guards the local agents dir.
    let _lock = lock_data_dir(&config.data_dir, "server", "FABRIC_DATA_DIR")?;
    let store_name = config.store.describe(&config.data_dir);
    let store = store::AnyStore::open(&config.store, &config.data_dir)
        .await
        .with_context(|| format!("cannot open the store ({store_name})"))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // One token stops everything: cancelled on `shutdown`, or when the
    // leadership is lost. Background loops run on `background` and end on
    // it; shutdown waits for them instead of aborting them midway.
    let stop = CancellationToken::new();
    let background = TaskTracker::new();
    // The OTLP exporter's stop flag (it flushes what is queued, then ends).
    let (exporter_stop_tx, exporter_stop_rx) = watch::channel(false);
    // Every part declares its metrics on this registry as it is built, so
    // families render in build order.
    let registry = fabric_telemetry::metrics::Registry::new();
    let spans = trace::ExportCounters::register(&registry);
    let (tracer, exporter) = match config.telemetry.otlp.clone() {
        Some(otlp) => {
            let (tracer, handle) = trace::Tracer::start(otlp, spans, exporter_stop_rx);
            (tracer, Some(handle))
        }
        None => (trace::Tracer::default(), None),
    };
    let telemetry = Arc::new(telemetry::Telemetry {
        http: telemetry::HttpMetrics::register(&registry),
        alerts: alerts::AlertHub::new(
            config.telemetry.alerts.clone(),
            &registry,
            Arc::clone(&clock),
        ),
        registry,
        tracer,
    });
    let defaults = TaskDefaults {
        max_attempts: config.default_max_attempts,
        agent: AgentId::shell(),
    };
    // Built in dependency order: each service gets what it uses at construction.
    let policy = policy::PolicyService::new(store.clone(), Arc::clone(&clock), &telemetry.registry);
    // Budget alerts become alert events (webhook, metric, /v1/alerts).
    let budgets = budgets::BudgetService::new(
        store.clone(),
        Arc::clone(&config.budget_clock.0),
        Arc::clone(&telemetry.alerts) as Arc<dyn budgets::BudgetAlerts>,
        &telemetry.registry,
    );
    let tasks = Arc::new(
        TaskService::new(
            store.clone(),
            Arc::clone(&clock),
            config.scheduler.clone(),
            defaults,
            Arc::clone(&policy),
            Arc::clone(&budgets),
            Arc::clone(&telemetry),
        )
        .await?,
    );
    // The built-in agents' queues exist before unfinished tasks are reloaded.
    let queue = AgentQueueConfig {
        max_queue_depth: config.max_queue_depth,
    };
    tasks.register_agent(AgentId::shell(), queue, None, None);
    tasks.register_agent(AgentId::noop(), queue, None, None);

    let auth = Arc::new(AuthService::new(store.clone(), Arc::clone(&clock)));
    let api_addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let local = api_addr.to_string();
    let limits = Arc::new(services::limits::RateLimits::new(config.limits));
    let llm = llm::Llm::new(
        config.gateway.clone(),
        store.clone(),
        Arc::clone(&budgets),
        Arc::clone(&policy),
        Arc::clone(&limits),
        Arc::clone(&telemetry),
    )?;
    // MCP servers' sandboxes live beside the agents' (swept alike after a crash).
    let mcp = services::mcp::McpService::new(
        store.clone(),
        Arc::clone(&clock),
        Arc::clone(&policy),
        Arc::clone(&telemetry),
        services::mcp::McpRuntime {
            helper: config.sandbox_helper.clone(),
            root: config.data_dir.join("agents"),
            cgroup_parent: instance_cgroup(&config.data_dir),
        },
    );
    let nodes = services::nodes::NodeService::load(
        store.clone(),
        Arc::clone(&clock),
        config.nodes,
        Arc::clone(&telemetry.alerts),
        &telemetry.registry,
        stop.clone(),
    )
    .await
    .context("cannot load the worker nodes")?;
    let manager_config = ManagerConfig {
        agent_roots: config.agent_roots.clone(),
        data_dir: config.data_dir.clone(),
        telemetry: Arc::clone(&telemetry),
        nodes: Arc::clone(&nodes),
        runtime: RuntimeConfig {
            agents_dir: config.data_dir.join("agents"),
            api_addr,
            helper: config.sandbox_helper.clone(),
            cgroup_parent: instance_cgroup(&config.data_dir),
            egress: Some(Arc::new(services::policy::LocalEgress(Arc::clone(&policy)))),
            shell_output_limit: config.shell_output_limit,
            kill_grace: config.kill_grace,
            workdir_retention: config.workdir_retention,
            owner: container_owner(&config.data_dir, config.containers.instance.as_deref()),
            containers: config.containers.clone(),
            inference: Arc::new(api::inference::OllamaEndpoints {
                gateway: llm.gateway.clone(),
                telemetry: Arc::clone(&telemetry),
                mcp: Arc::clone(&mcp),
            }),
            inference_timeout: llm.gateway.request_timeout(),
            env: Vec::new(),
        },
    };
    let agents = AgentManager::new(
        Arc::clone(&tasks),
        Arc::clone(&auth),
        store.clone(),
        Arc::clone(&clock),
        manager_config,
        stop.clone(),
    );
    let readiness = Arc::new(Readiness::default());
    let accounts = Arc::new(services::accounts::AccountService::new(
        Arc::clone(&auth),
        Arc::clone(&policy),
        Arc::clone(&limits),
    ));
    let state = AppState {
        tasks: Arc::clone(&tasks),
        auth: Arc::clone(&auth),
        accounts: Arc::clone(&accounts),
        limits: Arc::clone(&limits),
        agents: agents.clone(),
        llm,
        budgets: Arc::clone(&budgets),
        policy,
        shutdown: stop.clone(),
        readiness: Arc::clone(&readiness),
        telemetry: Arc::clone(&telemetry),
        streams: Arc::default(),
        mcp: Arc::clone(&mcp),
        nodes,
    };
    background.spawn(Arc::clone(&telemetry.alerts).watch_error_rates(
        alerts::ErrorRateSources {
            tasks: tasks.finished_tasks(),
            http_requests: Arc::clone(&telemetry.http.requests),
        },
        stop.clone(),
    ));
    let mut app = api::router(state.clone());
    // Outermost, so a preflight is answered before authentication.
    if let Some(cors) = cors::layer(&config.cors_origins) {
        app = app.layer(cors);
    }
    {
        let stop = stop.clone();
        background.spawn(async move {
            tokio::select! {
                () = shutdown => stop.cancel(),
                () = stop.cancelled() => {}
            }
        });
    }

    // Serve /healthz and /readyz (503) while standing by and reloading;
    // `/v1` answers 503 until the reload is done (`Readiness`).
    let http_stop = stop.clone();
    let listen_limits = config.listen_limits;
    let mut http = tokio::spawn(listen::serve(listener, app, listen_limits, http_stop));
    tracing::info!(listen = %local, data_dir = %config.data_dir.display(), store = %store_name, version = fabric_core::VERSION, "reactor-fabric serving");

    // Several orchestrators may share a Redis prefix; only the leader may
    // touch its tasks. (SQLite: the data dir's lock file is the guarantee.)
    let mut leadership = match &store {
        store::AnyStore::Redis(redis) => Some(Leadership::new(redis.clone(), config.leader_ttl)),
        store::AnyStore::Sqlite(_) => None,
    };
    if let Some(leadership) = &mut leadership
        && !leadership.acquire(&readiness, &stop).await
    {
        tracing::info!("shutdown requested while standing by");
        let served = http.await;
        store.close().await;
        served
            .context("server task failed")?
            .context("server failed")?;
        return Ok(());
    }
    // Renew from this moment on, in its own task: reloading a large backlog
    // or starting agents may take longer than the TTL. Resolves only if the
    // leadership is lost.
    let keeper = leadership.map(|leadership| tokio::spawn(leadership.keep()));
    // Stops renewing on every way out of here, early errors included.
    let keeper_abort = AbortOnDrop(keeper.as_ref().map(tokio::task::JoinHandle::abort_handle));
    let mut lost = Box::pin(async move {
        match keeper {
            Some(keeper) => keeper
                .await
                .unwrap_or_else(|e| format!("the task renewing the leadership failed: {e}")),
            None => std::future::pending().await,
        }
    });

    if let Some(generated) = auth
        .bootstrap_admin(config.admin_password.as_deref())
        .await
        .context("cannot create the first admin user")?
    {
        // Printed once, to the terminal only: never logged (NFR-SEC-2).
        println!("Created user 'admin' with generated password: {generated}");
        println!("(set FABRIC_ADMIN_PASSWORD before the first start to choose it)");
    }
    accounts
        .ensure_default_tenant()
        .await
        .context("cannot create the default tenant")?;
    accounts
        .load_limits()
        .await
        .context("cannot load the users' rate limits")?;
    if store.is_shared() {
        // Another orchestrator of the store may change a user's limits.
        background.spawn(refresh_user_limits(Arc::clone(&accounts), stop.clone()));
    }
    agents.sweep_leftovers().await;
    // Every stored agent's queue exists before its tasks are reloaded.
    agents.register_queues().await?;
    let restored = tasks.recover().await?;
    // The current period's usage comes back from the ledger before any call
    // is admitted.
    let budgeted = budgets.load().await.context("cannot load budgets")?;
    tracing::info!(budgets = budgeted, "budgets loaded");
    state
        .policy
        .load()
        .await
        .context("cannot load the policies")?;
    background.spawn(Arc::clone(&state.policy).flush_audit_every(stop.clone()));
    let mcp_servers = mcp.load().await.context("cannot load the MCP servers")?;
    tracing::info!(mcp_servers, "MCP servers loaded");
    {
        let (mcp, stop) = (Arc::clone(&mcp), stop.clone());
        background.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = every.tick() => mcp.reap_idle().await,
                    () = stop.cancelled() => break,
                }
            }
        });
    }
    // From here on requests are safe: the built-in agents (below) need them.
    readiness.accept();
    let shell = shell_agent(&config, &agents).await?;
    agents
        .start_system(shell)
        .await
        .context("cannot start the built-in shell agent")?;
    let respawned = agents.restore().await?;
    let mut workers = agents::spawn_noop(Arc::clone(&tasks), stop.clone());
    {
        let (tasks, agents, stop) = (Arc::clone(&tasks), agents.clone(), stop.clone());
        background.spawn(async move {
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
                    () = stop.cancelled() => break,
                }
            }
        });
    }
    background.spawn(agents::sample_compute(
        agents.clone(),
        Arc::clone(&budgets),
        config.compute_sample_every,
        stop.clone(),
    ));
    if !config.task_retention.is_zero() {
        background.spawn(prune_finished_tasks(
            Arc::clone(&tasks),
            config.task_retention,
            stop.clone(),
        ));
    }
    // Nothing else runs in the background from here on.
    background.close();
    readiness.set_ready();
    tracing::info!(restored, agents = respawned, "ready");

    let mut deposed = None;
    let served = tokio::select! {
        served = &mut http => served,
        reason = &mut lost => {
            // Stop everything at once: no more leases, /readyz 503. The
            // store refuses this server's writes already; what is running
            // here is requeued by the new leader.
            tracing::error!(reason = %reason, "lost the leadership of the store; this orchestrator stops serving and exits so that a supervisor restarts it as a standby");
            readiness.step_down(reason.clone());
            stop.cancel();
            deposed = Some(reason);
            http.await
        }
    };
    // The token is cancelled by now (the HTTP server only ends after it):
    // the ticker, the compute sampler, the audit flusher and the alert
    // watcher end at their next await.
    background.close();
    background.wait().await;
    state.llm.flush().await;
    state.policy.flush_audit().await;
    mcp.stop_all().await;
    tasks.stop_all_running();
    let drain = async {
        agents.wait_stopped().await;
        while workers.join_next().await.is_some() {}
    };
    // Keep renewing while the agents stop (the drain may outlast the TTL).
    let drained = tokio::select! {
        drained = tokio::time::timeout(config.kill_grace + Duration::from_secs(5), drain) => drained.is_ok(),
        reason = &mut lost, if deposed.is_none() => {
            tracing::warn!(reason = %reason, "lost the leadership of the store while stopping");
            deposed = Some(reason);
            false
        }
    };
    if !drained && deposed.is_none() {
        tracing::warn!("agents did not stop in time");
    }
    drop(lost);
    drop(keeper_abort);
    // Decisions made while the agents stopped (egress, LLM calls).
    state.policy.flush_audit().await;
    if deposed.is_none()
        && let store::AnyStore::Redis(redis) = &store
    {
        // A clean stop hands over at once instead of after the TTL; first
        // let every write submitted so far commit under our leadership.
        if let Err(e) = tasks.store_barrier().await {
            tracing::warn!(error = %e, "cannot flush the store before releasing the leadership");
        }
        match redis.release_leadership().await {
            Ok(_) => {
                tracing::info!(prefix = %redis.prefix(), "released the leadership of the store prefix")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the leadership; a standby takes over when it expires")
            }
        }
    }
    store.close().await;
    let _ = exporter_stop_tx.send(true);
    if let Some(exporter) = exporter {
        // The exporter sends what is queued once the stop flag is up.
        let _ = tokio::time::timeout(Duration::from_secs(5), exporter).await;
    }
    tracing::info!("stopped");
    if let Some(reason) = deposed {
        anyhow::bail!(
            "this orchestrator lost the leadership of its Redis store prefix ({reason}) and stopped serving; restart it to run as a standby (a supervisor such as systemd or Docker's restart policy does this)"
        );
    }
    served
        .context("server task failed")?
        .context("server failed")?;
    Ok(())
}

/// How often a server on a shared store re-reads the users' own rate limits.
const USER_LIMITS_REFRESH: Duration = Duration::from_secs(10);

async fn refresh_user_limits(
    accounts: Arc<services::accounts::AccountService>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(USER_LIMITS_REFRESH) => {}
        }
        if let Err(e) = accounts.load_limits().await {
            tracing::warn!(error = %e, "cannot refresh the users' rate limits; keeping the last ones");
        }
    }
}

/// The retention of finished tasks (`--task-retention`): every so often
/// (a tenth of the retention, at most hourly) deletes the finished tasks
/// created longer ago than the retention, with their events, so the store
/// does not grow without bound.
async fn prune_finished_tasks(
    tasks: Arc<services::tasks::TaskService>,
    retention: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut ticks = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let age = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff =
            fabric_core::Timestamp::from_millis(tasks.now().as_millis().saturating_sub(age));
        match tasks.prune(None, cutoff).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(
                deleted,
                retention_secs = retention.as_secs(),
                "finished tasks past their retention deleted"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot delete finished tasks past their retention")
            }
        }
    }
}
