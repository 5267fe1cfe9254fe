//! Agents (REQUIREMENTS §5, FR-LIFE): the lifecycle manager and the built-in agents.
//!
//! [`AgentManager`] owns every agent the fabric runs. Each agent has one
//! *supervisor* task that runs its sessions one after another: start a
//! session (sandbox, program or built-in workers, proxies, token), wait for
//! it to exit or to be stopped, clean everything up, requeue what it was
//! working on, then restart it (policy `on-failure`, with backoff) or stop.
//! Handlers never touch sessions: they read the agent's status and send the
//! supervisor a stop request.
//!
//! - `builtin`: the `shell` agent (runs a task's commands, on the host, in
//!   the agent's sandbox or in its container) and `noop`.
//! - `session`: what starting, stopping and cleaning up a session means for
//!   each kind of agent and isolation level.
//! - `container`: isolation level `container`: Docker client and images,
//!   agent containers with their sidecars, the sockets the sidecars reach.
//! - `pool`: warm pools of sandboxes and of containers.
//! - `inference`: the Ollama-compatible endpoint agents see as `OLLAMA_BASE_URL`.

mod builtin;
mod container;
mod hosted;
mod inference;
pub mod logs;
mod metrics;
mod pool;
mod runtime;
mod session;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use fabric_core::agent::{
    Agent, AgentConfig, AgentRecord, AgentSession, AgentState, DesiredState, Health,
    IsolationLevel, ResourceUsage,
};
use fabric_core::{
    AgentId, AgentStore, Clock, Identity, MissingScope, Scope, TenantId, Timestamp, reason,
};
use fabric_engine::AgentQueueConfig;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

pub use self::builtin::{ENV_AGENT_ID, ENV_TASK_ID, ENV_WORKSPACE_DIR, spawn_noop};
pub use self::container::{ContainerConfig, ContainerError, SocketVolume};
pub use self::hosted::{HostedSession, UsageReader};
pub use self::inference::InferenceServer;
pub use self::runtime::{EgressPolicy, RuntimeConfig, SessionRuntime};
pub use self::session::SessionError;
use self::session::{Session, SessionEnd, TokenSource};
use crate::services::auth::AuthService;
use crate::services::tasks::TaskService;
use crate::store::Store;

/// Why the agent manager refused a request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A config that breaks a rule; the message names the field.
    #[error(transparent)]
    Invalid(#[from] fabric_core::agent::AgentConfigError),
    #[error("isolation level 'process' is not available: this server has no sandbox helper")]
    NoSandboxHelper,
    #[error("isolation.read_only_paths: {0} does not exist on the fabric's host")]
    MissingPath(String),
    /// A host path the agent config may not name.
    #[error("{0}")]
    ForbiddenPath(String),
    /// Isolation `none` cannot be confined on this host (no Landlock).
    #[error(transparent)]
    ConfinementUnavailable(fabric_runtime::RuntimeError),
    /// Spawning or terminating without `tenant:admin` (or another tenant's
    /// agent without `admin`).
    #[error(transparent)]
    MissingScope(MissingScope),
    /// `isolation.as_fabric_user` without the `admin` scope.
    #[error(
        "isolation.as_fabric_user runs the agent as the fabric's own user, unconfined: only an admin may ask for it ({0})"
    )]
    AsFabricUser(MissingScope),
    #[error("{}", docker_message(.0))]
    DockerUnavailable(fabric_docker::DockerError),
    #[error("agent id '{0}' is reserved for the built-in agent; choose another id")]
    Reserved(AgentId),
    #[error("agent '{id}' already exists and is {state}; terminate it first or choose another id")]
    Exists { id: AgentId, state: &'static str },
    /// Agent ids are one namespace over every tenant.
    #[error("the agent id '{0}' is taken by another tenant; choose another id")]
    IdTaken(AgentId),
    #[error(
        "agent '{0}' is being spawned by another request; wait for it and check 'reactor-fabric agent get {0}'"
    )]
    SpawnInProgress(AgentId),
    #[error("'{0}' is the server's built-in agent and cannot be terminated")]
    BuiltIn(AgentId),
    #[error(
        "agent '{id}' is {state}: terminate it first ('reactor-fabric agent terminate {id}'), then remove it"
    )]
    NotStopped { id: AgentId, state: &'static str },
    /// The agent is draining or stopped: it may not lease any more.
    #[error("agent '{id}' is {state}: finish the tasks you hold, then exit")]
    Draining { id: AgentId, state: &'static str },
    /// The agent's first session did not start.
    #[error("agent '{id}' could not start: {source}")]
    SpawnFailed { id: AgentId, source: SessionError },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("agent '{0}' does not exist: see 'reactor-fabric agent list'")]
    NotFound(AgentId),
    #[error(transparent)]
    Store(#[from] fabric_core::StoreError),
}

/// The user every agent runs as (in its owner tenant): what its budgets,
/// usage and audit records name. No person may take this name.
pub const AGENTS_USER: &str = fabric_core::auth::AGENTS_USER;

/// How long an agent token lives; agents renew it with `POST /v1/agent/token`.
pub const AGENT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// First restart delay after a failure; doubles per failure in a row.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A session that ran this long resets the failure count (a crash a day is
/// not a crash loop).
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long an agent moving off a draining node may take to finish its tasks.
const NODE_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest drain a terminate may ask for.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);

/// What the manager needs from the server's configuration.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Where `isolation.filesystem_root` may point (`serve --agent-root`):
    /// an agent's working dir is made below one of these, or below the
    /// data directory's agents dir when it names none.
    pub agent_roots: Vec<PathBuf>,
    /// The server's data directory: no agent may be given a view of it.
    pub data_dir: PathBuf,
    /// Spawn latency, restarts and crash-loop alerts go here.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// How this machine runs sessions (the orchestrator is a node too).
    pub runtime: RuntimeConfig,
    /// The worker nodes agents may be placed on.
    pub nodes: Arc<crate::services::nodes::NodeService>,
}

/// Stop requests a supervisor acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run,
    /// Finish in-flight tasks for at most this long, then stop.
    Stop {
        drain: Duration,
    },
}

/// One agent: its record, live status and the channel to its supervisor.
struct Slot {
    id: AgentId,
    status: Mutex<Status>,
    control: watch::Sender<Control>,
    /// Whether the agent may lease now (false once draining or stopped), so
    /// a long poll in progress ends when that changes.
    leasing: watch::Sender<bool>,
    /// True once the supervisor has returned.
    finished: watch::Sender<bool>,
}

struct Status {
    record: AgentRecord,
    state: AgentState,
    /// Last request from the agent (any `/v1/agent/...` call).
    last_seen: Option<Timestamp>,
    session: Option<SessionInfo>,
    last_exit: Option<String>,
    /// Built-in agents of the server itself (`shell`, `noop`): not stored,
    /// not terminable.
    system: bool,
}

struct SessionInfo {
    number: u32,
    started_at: Timestamp,
    tasks_done: u64,
    pid: Option<u32>,
    usage: session::UsageProbe,
    /// The worker node it runs on (`None`: here).
    node: Option<String>,
}

/// The lifecycle manager (FR-LIFE-1..6).
#[derive(Clone)]
pub struct AgentManager {
    inner: Arc<Inner>,
}

struct Inner {
    /// This machine's half: pools, Docker, program logs.
    runtime: Arc<SessionRuntime>,
    tasks: Arc<TaskService>,
    auth: Arc<AuthService>,
    store: Store,
    clock: Arc<dyn Clock>,
    config: ManagerConfig,
    slots: Mutex<HashMap<AgentId, Arc<Slot>>>,
    shutdown: CancellationToken,
    /// Ids being spawned right now.
    claims: Mutex<std::collections::HashSet<AgentId>>,
    /// `agent_fabric_agent_spawn_seconds{isolation}`.
    spawn_latency: Arc<fabric_telemetry::metrics::HistogramVec>,
}

impl AgentManager {
    pub fn new(
        tasks: Arc<TaskService>,
        auth: Arc<AuthService>,
        store: Store,
        clock: Arc<dyn Clock>,
        config: ManagerConfig,
        shutdown: CancellationToken,
    ) -> Self {
        let runtime = SessionRuntime::new(
            config.runtime.clone(),
            Arc::clone(&clock),
            Some(Arc::clone(&tasks)),
            Some(config.data_dir.join("agent-logs")),
            &shutdown,
        );
        let spawn_latency = metrics::spawn_latency(&config.telemetry.registry);
        let manager = Self {
            inner: Arc::new(Inner {
                runtime,
                spawn_latency,
                tasks,
                auth,
                store,
                clock,
                config,
                slots: Mutex::new(HashMap::new()),
                shutdown,
                claims: Mutex::new(std::collections::HashSet::new()),
            }),
        };
        metrics::register_collector(&manager);
        manager
    }

    /// Clears what a previous run of this server left behind if it was
    /// killed: sandboxes (processes, cgroups, namespaces), agent containers
    /// (with their sidecars and volumes) and working dirs.
    pub async fn sweep_leftovers(&self) {
        self.inner.runtime.sweep_leftovers().await;
    }

    /// Idle sandboxes in the warm pool.
    pub fn pooled(&self) -> usize {
        self.inner.runtime.sandbox_pool.idle()
    }

    /// Idle containers in the warm pool.
    pub fn pooled_containers(&self) -> usize {
        self.inner.runtime.container_pool.idle()
    }

    /// Starts a built-in agent of the server itself (the default `shell`
    /// agent): not stored, always there, not terminable.
    pub async fn start_system(&self, config: AgentConfig) -> Result<(), AgentError> {
        let record = AgentRecord {
            config,
            tenant: TenantId::default_tenant(),
            desired: DesiredState::Running,
            created_at: self.inner.clock.now(),
            sessions: 0,
            tasks_done: 0,
        };
        self.launch(record, true).await.map(|_| ())
    }

    /// Host paths of an agent config that would reach the fabric's own
    /// files or leave the allowed roots: a read-only path containing or
    /// inside the data directory, a `filesystem_root` outside every
    /// `--agent-root` (or not a directory).
    fn check_host_paths(
        &self,
        iso: &fabric_core::agent::IsolationConfig,
    ) -> Result<(), AgentError> {
        let data_dir = &self.inner.config.data_dir;
        let data_dir = data_dir.canonicalize().unwrap_or_else(|_| data_dir.clone());
        for path in &iso.read_only_paths {
            let path = std::path::Path::new(path);
            let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
            if path.starts_with(&data_dir) || data_dir.starts_with(&path) {
                return Err(AgentError::ForbiddenPath(format!(
                    "isolation.read_only_paths: {} would show the fabric's data directory {} to the agent; name a path outside it",
                    path.display(),
                    data_dir.display()
                )));
            }
        }
        let Some(root) = &iso.filesystem_root else {
            return Ok(());
        };
        let root = std::path::Path::new(root);
        let roots = &self.inner.config.agent_roots;
        if !roots.iter().any(|allowed| root.starts_with(allowed)) {
            let allowed = if roots.is_empty() {
                "none are configured (serve --agent-root DIR)".to_owned()
            } else {
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(AgentError::ForbiddenPath(format!(
                "isolation.filesystem_root: {} is not below one of the server's agent roots: {allowed}",
                root.display()
            )));
        }
        if root.exists() && !root.is_dir() {
            return Err(AgentError::ForbiddenPath(format!(
                "isolation.filesystem_root: {} exists and is not a directory",
                root.display()
            )));
        }
        Ok(())
    }

    /// Whether isolation `process` works here: makes a sandbox and removes
    /// it. `Err` says why not (no helper, not root, no namespaces).
    pub async fn probe_sandbox(&self) -> Result<(), String> {
        use self::pool::Warm as _;
        let sandbox = self
            .inner
            .runtime
            .sandbox_pool
            .kind
            .make()
            .await
            .map_err(|e| e.to_string())?;
        sandbox.destroy().await.map_err(|e| e.to_string())
    }

    /// Registers the queue of every stored agent, so their unfinished tasks
    /// can be reloaded before the agents start.
    pub async fn register_queues(&self) -> Result<(), AgentError> {
        for record in self.inner.store.list_agents().await? {
            self.inner.tasks.register_agent(
                record.config.id.clone(),
                AgentQueueConfig {
                    max_queue_depth: record.config.max_queue_depth as usize,
                },
                record.config.workspace.clone(),
                Some(record.tenant.clone()),
            );
        }
        Ok(())
    }

    /// Respawns every stored agent that should be running (after a restart).
    pub async fn restore(&self) -> Result<usize, AgentError> {
        let records = self.inner.store.list_agents().await?;
        let mut started = 0;
        for record in records {
            let id = record.config.id.clone();
            if record.desired == DesiredState::Running {
                match self.launch(record, false).await {
                    Ok(_) => started += 1,
                    Err(e) => {
                        tracing::error!(agent_id = %id, error = %e, "cannot restart agent")
                    }
                }
            } else {
                self.install(record, false, AgentState::Stopped);
            }
        }
        Ok(started)
    }

    /// Whether this host can run the agent (sandbox helper, Landlock,
    /// Docker, the paths it names).
    async fn check_local(&self, config: &AgentConfig) -> Result<(), AgentError> {
        if config.isolation.level == IsolationLevel::Process
            && self.inner.runtime.config.helper.is_none()
        {
            return Err(AgentError::NoSandboxHelper);
        }
        let confined = config.isolation.level == IsolationLevel::None
            && !config.isolation.as_fabric_user
            && !config.external;
        if confined && let Err(reason) = fabric_runtime::confine::landlock_abi() {
            return Err(AgentError::ConfinementUnavailable(
                fabric_runtime::RuntimeError::ConfinementUnavailable { reason },
            ));
        }
        if config.isolation.level == IsolationLevel::Container {
            // Docker down is a clear error now, not a crashed agent later.
            if let Err(e) = self.inner.runtime.docker.check().await {
                return Err(AgentError::DockerUnavailable(e));
            }
        }
        // Bind paths name the Docker host's filesystem, which is this one
        // unless the fabric runs in a container itself (an instance).
        let paths_are_local = match config.isolation.level {
            IsolationLevel::Process => true,
            IsolationLevel::Container => {
                self.inner.runtime.config.containers.socket_volume.is_none()
            }
            IsolationLevel::None => confined,
        };
        if paths_are_local {
            for path in &config.isolation.read_only_paths {
                if !std::path::Path::new(path).exists() {
                    return Err(AgentError::MissingPath(path.clone()));
                }
            }
        }
        Ok(())
    }

    /// `POST /v1/agents` (FR-LIFE-1): validates, stores and starts an agent.
    /// Answers once its first session runs (or failed to start).
    pub async fn spawn(
        &self,
        config: AgentConfig,
        by: &fabric_core::Identity,
    ) -> Result<Agent, AgentError> {
        Self::may_manage(by, &by.tenant)?;
        config.validate()?;
        if config.isolation.as_fabric_user {
            by.require(fabric_core::Scope::Admin)
                .map_err(AgentError::AsFabricUser)?;
        }
        // What this host offers matters only for an agent that may run here
        // (a node checks the same when it starts the session): one this
        // host cannot run is fine if a node can take it.
        if !config.placed_on_node()
            && let Err(e) = self.check_local(&config).await
            && self.inner.config.nodes.place(&config, None).is_err()
        {
            return Err(e);
        }
        self.check_host_paths(&config.isolation)?;
        // One spawn per id at a time: the checks below and the install in
        // `launch` must not interleave with another spawn of the same id.
        let _claim = Claim::take(&self.inner, &config.id)?;
        if let Some(slot) = self.slot(&config.id) {
            let status = slot.status.lock();
            if status.system {
                return Err(AgentError::Reserved(config.id.clone()));
            }
            if status.record.tenant != by.tenant {
                return Err(AgentError::IdTaken(config.id.clone()));
            }
            if !matches!(status.state, AgentState::Stopped | AgentState::Crashed) {
                return Err(AgentError::Exists {
                    id: config.id.clone(),
                    state: status.state.as_str(),
                });
            }
        }
        tracing::info!(agent_id = %config.id, by = %by.user, isolation = %config.isolation.level, "spawning agent");
        let (created_at, sessions, tasks_done) =
            match self.inner.store.get_agent(config.id.clone()).await? {
                // A stopped agent of another tenant keeps its id.
                Some(old) if old.tenant != by.tenant => {
                    return Err(AgentError::IdTaken(config.id.clone()));
                }
                Some(old) => (old.created_at, old.sessions, old.tasks_done),
                None => (self.inner.clock.now(), 0, 0),
            };
        let record = AgentRecord {
            config,
            tenant: by.tenant.clone(),
            desired: DesiredState::Running,
            created_at,
            sessions,
            tasks_done,
        };
        self.inner.store.put_agent(record.clone()).await?;
        self.launch(record, false).await
    }

    /// Registers the agent's queue, installs its slot and starts its
    /// supervisor; waits for the first session to start.
    async fn launch(&self, record: AgentRecord, system: bool) -> Result<Agent, AgentError> {
        let started = std::time::Instant::now();
        let isolation = record.config.isolation.level.to_string();
        let id = record.config.id.clone();
        // The built-in agents serve every tenant.
        let owner = (!system).then(|| record.tenant.clone());
        self.inner.tasks.register_agent(
            id.clone(),
            AgentQueueConfig {
                max_queue_depth: record.config.max_queue_depth as usize,
            },
            record.config.workspace.clone(),
            owner,
        );
        let min_idle = record.config.pool.min_idle as isize;
        let (sandboxes, containers) = match record.config.isolation.level {
            IsolationLevel::Process => (min_idle, 0),
            IsolationLevel::Container if container::poolable(&record.config) => (0, min_idle),
            _ => (0, 0),
        };
        let slot = self.install(record, system, AgentState::Starting);
        let (first_tx, first_rx) = oneshot::channel();
        let inner = Arc::clone(&self.inner);
        let supervised = Arc::clone(&slot);
        inner.runtime.sandbox_pool.adjust_target(sandboxes);
        inner.runtime.container_pool.adjust_target(containers);
        tokio::spawn(async move {
            supervise(&inner, &supervised, Some(first_tx)).await;
            inner.runtime.sandbox_pool.adjust_target(-sandboxes);
            inner.runtime.container_pool.adjust_target(-containers);
            supervised.finished.send_replace(true);
        });
        match first_rx.await {
            Ok(Ok(())) => {
                self.inner
                    .spawn_latency
                    .observe(&[&isolation], started.elapsed());
                Ok(self.view(&slot))
            }
            Ok(Err(source)) => Err(AgentError::SpawnFailed { id, source }),
            Err(_) => Err(AgentError::ShuttingDown),
        }
    }

    fn install(&self, record: AgentRecord, system: bool, state: AgentState) -> Arc<Slot> {
        let (control, _) = watch::channel(Control::Run);
        let (finished, _) = watch::channel(state == AgentState::Stopped);
        let (leasing, _) = watch::channel(may_lease(state));
        let slot = Arc::new(Slot {
            id: record.config.id.clone(),
            status: Mutex::new(Status {
                record,
                state,
                last_seen: None,
                session: None,
                last_exit: None,
                system,
            }),
            control,
            leasing,
            finished,
        });
        self.inner
            .slots
            .lock()
            .insert(slot.id.clone(), Arc::clone(&slot));
        slot
    }

    fn slot(&self, id: &AgentId) -> Option<Arc<Slot>> {
        self.inner.slots.lock().get(id).cloned()
    }

    fn slot_or_404(&self, id: &AgentId) -> Result<Arc<Slot>, AgentError> {
        self.slot(id)
            .ok_or_else(|| AgentError::NotFound(id.clone()))
    }

    /// The agent as `by` may see it: another tenant's agent does not exist
    /// for it (404), the built-in agents serve every tenant, admins see all.
    fn visible_slot(&self, id: &AgentId, by: &Identity) -> Result<Arc<Slot>, AgentError> {
        let slot = self.slot_or_404(id)?;
        if visible_to(&slot.status.lock(), by) {
            Ok(slot)
        } else {
            Err(AgentError::NotFound(id.clone()))
        }
    }

    /// Whether `by` may manage (spawn, terminate) agents of `tenant`: an
    /// admin anywhere, a tenant-admin in its own tenant.
    fn may_manage(by: &Identity, tenant: &TenantId) -> Result<(), AgentError> {
        if Scope::Admin.granted_by(&by.scopes) {
            return Ok(());
        }
        by.require(Scope::TenantAdmin)
            .map_err(AgentError::MissingScope)?;
        if *tenant == by.tenant {
            Ok(())
        } else {
            Err(AgentError::MissingScope(MissingScope {
                scope: Scope::Admin,
            }))
        }
    }

    /// Every agent, whoever owns it (the fabric's own bookkeeping).
    pub fn list(&self) -> Vec<Agent> {
        let mut slots: Vec<_> = self.inner.slots.lock().values().cloned().collect();
        slots.sort_by(|a, b| a.id.cmp(&b.id));
        slots.iter().map(|s| self.view(s)).collect()
    }

    /// `GET /v1/agents`: the agents `by` may see.
    pub fn list_for(&self, by: &Identity) -> Vec<Agent> {
        let mut slots: Vec<_> = self
            .inner
            .slots
            .lock()
            .values()
            .filter(|s| visible_to(&s.status.lock(), by))
            .cloned()
            .collect();
        slots.sort_by(|a, b| a.id.cmp(&b.id));
        slots.iter().map(|s| self.view(s)).collect()
    }

    /// Whether `by` sees the agent `id` (false when there is none).
    pub fn visible_to(&self, id: &AgentId, by: &Identity) -> bool {
        self.visible_slot(id, by).is_ok()
    }

    /// Whether an agent of this id exists, whoever owns it.
    pub fn exists(&self, id: &AgentId) -> bool {
        self.slot(id).is_some()
    }

    /// The tenant that owns an agent (`None`: no such agent).
    pub fn tenant_of(&self, id: &AgentId) -> Option<TenantId> {
        Some(self.slot(id)?.status.lock().record.tenant.clone())
    }

    /// The workspace an agent is configured in (its policy attribute).
    pub fn workspace_of(&self, id: &AgentId) -> Option<String> {
        self.config_of(id).and_then(|c| c.workspace)
    }

    /// The agent's config, if the fabric runs it.
    pub fn config_of(&self, id: &AgentId) -> Option<AgentConfig> {
        let slot = self.inner.slots.lock().get(id).cloned()?;
        let status = slot.status.lock();
        Some(status.record.config.clone())
    }

    /// `GET /v1/agents/{id}`.
    pub async fn get(&self, id: &AgentId, by: &Identity) -> Result<Agent, AgentError> {
        Ok(self.view(&*self.visible_slot(id, by)?))
    }

    /// `GET /v1/agents/{id}/sessions` (FR-LIFE-5), newest first; the running
    /// session included.
    pub async fn sessions(
        &self,
        id: &AgentId,
        by: &Identity,
        before: Option<u32>,
        limit: usize,
    ) -> Result<Vec<AgentSession>, AgentError> {
        let slot = self.visible_slot(id, by)?;
        let mut sessions = self
            .inner
            .store
            .list_sessions(id.clone(), before, limit)
            .await?;
        // The running session's count lives in memory until it ends.
        let status = slot.status.lock();
        if let Some(live) = &status.session
            && let Some(stored) = sessions.iter_mut().find(|s| s.session == live.number)
        {
            stored.tasks_done = live.tasks_done;
        }
        Ok(sessions)
    }

    /// `DELETE /v1/agents/{id}` (FR-LIFE-4): stop leasing, let in-flight tasks
    /// finish for `drain`, stop the agent, requeue what is left
    /// (`drain_timeout`). Answers once it has stopped.
    pub async fn terminate(
        &self,
        id: &AgentId,
        by: &Identity,
        drain: Duration,
    ) -> Result<Agent, AgentError> {
        let slot = self.visible_slot(id, by)?;
        if slot.status.lock().system {
            return Err(AgentError::BuiltIn(id.clone()));
        }
        let tenant = slot.status.lock().record.tenant.clone();
        Self::may_manage(by, &tenant)?;
        let record = {
            let mut status = slot.status.lock();
            status.record.desired = DesiredState::Stopped;
            status.record.clone()
        };
        self.inner.store.put_agent(record).await?;
        slot.control.send_replace(Control::Stop { drain });
        let mut finished = slot.finished.subscribe();
        let _ = finished.wait_for(|f| *f).await;
        Ok(self.view(&slot))
    }

    /// Stops an agent (draining for `drain`, as `terminate`) if it runs, and
    /// starts it again with its stored config, in its own tenant (`agent restart`).
    pub async fn restart(
        &self,
        id: &AgentId,
        by: &Identity,
        drain: Duration,
    ) -> Result<Agent, AgentError> {
        let slot = self.visible_slot(id, by)?;
        let (system, tenant, config) = {
            let status = slot.status.lock();
            (
                status.system,
                status.record.tenant.clone(),
                status.record.config.clone(),
            )
        };
        if system {
            return Err(AgentError::BuiltIn(id.clone()));
        }
        Self::may_manage(by, &tenant)?;
        if !*slot.finished.borrow() {
            self.terminate(id, by, drain).await?;
        }
        let as_owner = Identity {
            tenant,
            ..by.clone()
        };
        self.spawn(config, &as_owner).await
    }

    /// Forgets a stopped (or crashed) agent: its record and its sessions'
    /// history (`agent rm`). Its id is free afterwards; tasks still queued
    /// for it wait for an agent of that id to be spawned again.
    pub async fn remove(&self, id: &AgentId, by: &Identity) -> Result<(), AgentError> {
        let slot = self.visible_slot(id, by)?;
        let (system, tenant, state) = {
            let status = slot.status.lock();
            (status.system, status.record.tenant.clone(), status.state)
        };
        if system {
            return Err(AgentError::BuiltIn(id.clone()));
        }
        Self::may_manage(by, &tenant)?;
        if !*slot.finished.borrow() {
            return Err(AgentError::NotStopped {
                id: id.clone(),
                state: state.as_str(),
            });
        }
        self.inner.slots.lock().remove(id);
        self.inner.runtime.program_logs.forget(id);
        self.inner.store.delete_agent(id.clone()).await?;
        Ok(())
    }

    /// `GET /v1/agents/{id}/logs`: the last `tail` lines its program wrote.
    pub async fn logs(
        &self,
        id: &AgentId,
        by: &Identity,
        tail: usize,
    ) -> Result<Vec<fabric_core::api::ProgramLogLine>, AgentError> {
        self.visible_slot(id, by)?;
        Ok(self
            .inner
            .runtime
            .program_logs
            .tail(id, tail, self.inner.clock.now())
            .await)
    }

    /// `GET /v1/agents/{id}/logs?follow=true`: the last `tail` lines, and
    /// every agent's lines from then on (the caller keeps this agent's).
    pub async fn follow_logs(
        &self,
        id: &AgentId,
        by: &Identity,
        tail: usize,
    ) -> Result<
        (
            Vec<fabric_core::api::ProgramLogLine>,
            tokio::sync::broadcast::Receiver<(AgentId, fabric_core::api::ProgramLogLine)>,
        ),
        AgentError,
    > {
        self.visible_slot(id, by)?;
        // Subscribed first: a line written meanwhile may show twice, never not at all.
        let live = self.inner.runtime.program_logs.follow();
        let lines = self
            .inner
            .runtime
            .program_logs
            .tail(id, tail, self.inner.clock.now())
            .await;
        Ok((lines, live))
    }

    /// Records a request from an agent: it is alive (FR-LIFE-2).
    pub fn touch(&self, id: &AgentId) {
        if let Some(slot) = self.slot(id) {
            let mut status = slot.status.lock();
            status.last_seen = Some(self.inner.clock.now());
            if status.state == AgentState::Starting && status.session.is_some() {
                status.state = AgentState::Running;
            }
        }
    }

    /// Whether `id` may lease: 404 for an unknown agent, 409
    /// `agent_draining` when it is draining or stopped (it should exit).
    /// Otherwise a receiver that turns false when that changes.
    pub fn lease_gate(&self, id: &AgentId) -> Result<watch::Receiver<bool>, AgentError> {
        let slot = self.slot_or_404(id)?;
        let state = slot.status.lock().state;
        if may_lease(state) {
            return Ok(slot.leasing.subscribe());
        }
        Err(draining(id, state))
    }

    /// The 409 for an agent that may not lease any more.
    pub fn draining_error(&self, id: &AgentId) -> AgentError {
        let state = self
            .slot(id)
            .map_or(AgentState::Stopped, |s| s.status.lock().state);
        draining(id, state)
    }

    /// Counts a task an agent finished (completed or failed).
    pub fn task_done(&self, id: &AgentId) {
        if let Some(slot) = self.slot(id) {
            let mut status = slot.status.lock();
            status.record.tasks_done += 1;
            if let Some(s) = status.session.as_mut() {
                s.tasks_done += 1;
            }
        }
    }

    /// Drops expired agent tokens; run periodically.
    pub fn housekeeping(&self) {
        self.inner.auth.purge_expired();
    }

    /// Waits until every supervisor has stopped its session (server shutdown:
    /// no draining; running tasks stay `running` and the next start requeues them).
    pub async fn wait_stopped(&self) {
        let slots: Vec<_> = self.inner.slots.lock().values().cloned().collect();
        for slot in slots {
            let mut finished = slot.finished.subscribe();
            let _ = finished.wait_for(|f| *f).await;
        }
        self.inner.runtime.wait_stopped().await;
    }

    fn view(&self, slot: &Slot) -> Agent {
        let now = self.inner.clock.now();
        let lease_ttl = self.inner.tasks.lease_ttl();
        let running = self.inner.tasks.running_of(&slot.id).len();
        let status = slot.status.lock();
        let health = match status.state {
            AgentState::Stopped | AgentState::Crashed | AgentState::Restarting => Health::Dead,
            _ if status.record.config.is_builtin_shell() => Health::Healthy,
            _ => {
                let since = status
                    .last_seen
                    .or(status.session.as_ref().map(|s| s.started_at));
                match since {
                    Some(t) if now.since(t) <= lease_ttl * 3 => Health::Healthy,
                    _ => Health::Unresponsive,
                }
            }
        };
        let (session, probe, pid, node) = match &status.session {
            Some(s) => (s.number, s.usage.clone(), s.pid, s.node.clone()),
            None => (
                status.record.sessions,
                session::UsageProbe::None,
                None,
                None,
            ),
        };
        let mut agent = Agent {
            config: status.record.config.clone(),
            tenant: status.record.tenant.clone(),
            state: status.state,
            health,
            last_heartbeat: status.last_seen,
            session,
            tasks_running: u32::try_from(running).unwrap_or(u32::MAX),
            tasks_done: status.record.tasks_done,
            usage: ResourceUsage::default(),
            pid,
            created_at: status.record.created_at,
            last_exit: status.last_exit.clone(),
            node,
        };
        // Reading usage touches cgroup files or /proc: not under the lock
        // that the agent's supervisor and protocol calls take.
        drop(status);
        agent.usage = probe.read();
        agent
    }
}

impl Inner {
    /// Where the agent's next session runs (`None`: here); see
    /// `NodeService::place`. The server's built-in agents always run here.
    fn place(&self, config: &AgentConfig, system: bool) -> Result<Option<String>, String> {
        if system {
            return Ok(None);
        }
        let runs_here = match config.isolation.level {
            IsolationLevel::None => true,
            IsolationLevel::Process => self.runtime.config.helper.is_some(),
            IsolationLevel::Container => self.runtime.has_docker(),
        };
        let local = (runs_here && !config.placed_on_node()).then(|| {
            let agents = self
                .slots
                .lock()
                .values()
                .filter(|slot| {
                    let s = slot.status.lock();
                    !s.system && s.session.as_ref().is_some_and(|i| i.node.is_none())
                })
                .count();
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            crate::services::nodes::LocalLoad {
                agents,
                cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
            }
        });
        self.config.nodes.place(config, local)
    }

    fn set_state(&self, slot: &Slot, state: AgentState) {
        slot.status.lock().state = state;
        slot.leasing.send_replace(may_lease(state));
    }

    async fn persist(&self, slot: &Slot) {
        let (record, system) = {
            let s = slot.status.lock();
            (s.record.clone(), s.system)
        };
        if system {
            return;
        }
        if let Err(e) = self.store.put_agent(record).await {
            tracing::error!(agent_id = %slot.id, error = %e, "cannot store agent");
        }
    }

    async fn persist_session(&self, slot: &Slot, ended: Option<(Timestamp, String)>) {
        let session = {
            let s = slot.status.lock();
            if s.system {
                return;
            }
            let Some(info) = &s.session else { return };
            AgentSession {
                agent_id: slot.id.clone(),
                session: info.number,
                started_at: info.started_at,
                ended_at: ended.as_ref().map(|(t, _)| *t),
                exit_reason: ended.map(|(_, r)| r),
                tasks_done: info.tasks_done,
            }
        };
        if let Err(e) = self.store.put_session(session).await {
            tracing::error!(agent_id = %slot.id, error = %e, "cannot store agent session");
        }
    }
}

/// Whether `by` sees the agent whose status this is.
fn visible_to(status: &Status, by: &Identity) -> bool {
    status.system || status.record.tenant == by.tenant || Scope::Admin.granted_by(&by.scopes)
}

/// Runs an agent's sessions until it is stopped, out of restarts, or the server stops.
async fn supervise(
    inner: &Arc<Inner>,
    slot: &Arc<Slot>,
    mut first: Option<oneshot::Sender<Result<(), SessionError>>>,
) {
    let mut control = slot.control.subscribe();
    let shutdown = inner.shutdown.clone();
    let mut failures: u32 = 0;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if let Control::Stop { .. } = *control.borrow() {
            inner.set_state(slot, AgentState::Stopped);
            return;
        }
        let number = {
            let mut s = slot.status.lock();
            s.record.sessions += 1;
            s.state = AgentState::Starting;
            s.record.sessions
        };
        inner.persist(slot).await;
        let config = slot.status.lock().record.config.clone();
        let started_at = inner.clock.now();
        let tenant = slot.status.lock().record.tenant.clone();
        let token = TokenSource::Mint(Arc::clone(&inner.auth));
        let system = slot.status.lock().system;
        let started = match inner.place(&config, system) {
            Ok(node) => {
                let place = match &node {
                    Some(node) => session::Place::Node(&inner.config.nodes, node),
                    None => session::Place::Here,
                };
                Session::start(
                    &inner.runtime,
                    &config,
                    number,
                    &tenant,
                    AGENTS_USER,
                    &token,
                    place,
                )
                .await
            }
            Err(why) => Err(SessionError::NoPlacement(why)),
        };
        let mut session = match started {
            Ok(session) => session,
            Err(e) => {
                tracing::error!(agent_id = %slot.id, session = number, error = %e, "agent session did not start");
                let why = format!("{}: {e}", reason::SPAWN_FAILED);
                {
                    let mut s = slot.status.lock();
                    s.session = Some(SessionInfo {
                        number,
                        started_at,
                        tasks_done: 0,
                        pid: None,
                        usage: session::UsageProbe::None,
                        node: None,
                    });
                    s.last_exit = Some(why.clone());
                }
                inner
                    .persist_session(slot, Some((inner.clock.now(), why)))
                    .await;
                slot.status.lock().session = None;
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e));
                    inner.set_state(slot, AgentState::Crashed);
                    return;
                }
                failures += 1;
                if !restart_after_failure(inner, slot, failures, &mut control, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        {
            let mut s = slot.status.lock();
            s.session = Some(SessionInfo {
                number,
                started_at,
                tasks_done: 0,
                pid: session.pid(),
                usage: session.usage_probe(),
                node: session.node().map(str::to_owned),
            });
            s.state = if session.reports_in() {
                AgentState::Starting
            } else {
                AgentState::Running
            };
        }
        inner.persist_session(slot, None).await;
        tracing::info!(agent_id = %slot.id, session = number, pid = session.pid(), node = session.node(), isolation = %config.isolation.level, "agent session started");
        if let Some(tx) = first.take() {
            let _ = tx.send(Ok(()));
        }

        let end = tokio::select! {
            exit = session.wait_exit_or_moving() => match exit {
                Some(exit) => SessionEnd::Exited(exit),
                None => SessionEnd::Move(NODE_DRAIN_TIMEOUT),
            },
            stop = control.wait_for(|c| matches!(c, Control::Stop { .. })) => {
                SessionEnd::Stop(stop.map_or(Duration::ZERO, |c| requested_drain(*c)))
            }
            () = shutdown.cancelled() => SessionEnd::Shutdown,
        };
        let (why, failed) = match end {
            SessionEnd::Exited(exit) => {
                let why = exit.why.clone();
                tracing::warn!(agent_id = %slot.id, session = number, exit = %why, "agent exited");
                // Its tasks go back to the queue now, not when their leases expire.
                let held = inner.tasks.running_of(&slot.id);
                session.cleanup().await;
                let task_reason = if exit.oom_killed {
                    reason::OOM_KILLED.to_owned()
                } else {
                    why.clone()
                };
                if let Err(e) = inner.tasks.abandon(&held, &task_reason).await {
                    tracing::error!(agent_id = %slot.id, error = %e, "cannot requeue the tasks of an exited agent");
                }
                (why, !exit.success)
            }
            SessionEnd::Move(drain) => {
                let node = session.node().unwrap_or_default().to_owned();
                tracing::info!(agent_id = %slot.id, node = %node, "node draining: moving the agent");
                drain_and_stop(inner, slot, session, drain).await;
                finish_session(inner, slot, format!("moved off node {node} (draining)")).await;
                // Leasing again (draining closed it) once the next session is up.
                inner.set_state(slot, AgentState::Restarting);
                continue;
            }
            SessionEnd::Stop(drain) => {
                let drained = drain_and_stop(inner, slot, session, drain).await;
                let why = if drained {
                    "terminated"
                } else {
                    "terminated (drain timeout)"
                };
                finish_session(inner, slot, why.to_owned()).await;
                inner.set_state(slot, AgentState::Stopped);
                return;
            }
            SessionEnd::Shutdown => {
                session.terminate(Duration::from_millis(500)).await;
                session.cleanup().await;
                finish_session(inner, slot, "fabric stopped".into()).await;
                return;
            }
        };
        let ran = inner.clock.now().since(started_at);
        finish_session(inner, slot, why).await;
        if !failed
            && slot.status.lock().record.config.restart == fabric_core::agent::RestartPolicy::Never
        {
            inner.set_state(slot, AgentState::Stopped);
            return;
        }
        if !failed {
            // A clean exit of a program asked to stay up: stopped, as it chose.
            inner.set_state(slot, AgentState::Stopped);
            return;
        }
        if ran >= STABLE_AFTER {
            failures = 0;
        }
        failures += 1;
        if !restart_after_failure(inner, slot, failures, &mut control, &shutdown).await {
            return;
        }
    }
}

fn requested_drain(control: Control) -> Duration {
    match control {
        Control::Stop { drain } => drain,
        Control::Run => Duration::ZERO,
    }
}

/// Ends the current session's record with `why`.
async fn finish_session(inner: &Inner, slot: &Slot, why: String) {
    slot.status.lock().last_exit = Some(why.clone());
    inner
        .persist_session(slot, Some((inner.clock.now(), why)))
        .await;
    slot.status.lock().session = None;
}

/// Waits out the backoff before restart number `failures`; false when the
/// agent must stay down (policy, out of restarts, stopped, shutting down).
async fn restart_after_failure(
    inner: &Inner,
    slot: &Slot,
    failures: u32,
    control: &mut watch::Receiver<Control>,
    shutdown: &CancellationToken,
) -> bool {
    let (policy, max) = {
        let s = slot.status.lock();
        (s.record.config.restart, s.record.config.max_restarts)
    };
    if policy == fabric_core::agent::RestartPolicy::Never || failures > max {
        tracing::error!(agent_id = %slot.id, failures, "agent crashed; not restarting");
        inner.set_state(slot, AgentState::Crashed);
        return false;
    }
    let delay = RESTART_BACKOFF
        .saturating_mul(1 << (failures - 1).min(6))
        .min(RESTART_BACKOFF_MAX);
    let last_exit = slot.status.lock().last_exit.clone().unwrap_or_default();
    inner
        .config
        .telemetry
        .alerts
        .agent_restarted(slot.id.as_str(), &last_exit);
    inner.set_state(slot, AgentState::Restarting);
    tracing::info!(agent_id = %slot.id, failures, delay_ms = delay.as_millis() as u64, "restarting agent");
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        _ = control.wait_for(|c| matches!(c, Control::Stop { .. })) => {
            inner.set_state(slot, AgentState::Stopped);
            false
        }
        () = shutdown.cancelled() => false,
    }
}

/// Drains the agent's tasks for at most `drain`, stops the session and
/// requeues what it did not finish; true if it drained.
async fn drain_and_stop(inner: &Inner, slot: &Slot, mut session: Session, drain: Duration) -> bool {
    inner.set_state(slot, AgentState::Draining);
    session.stop_leasing();
    tracing::info!(agent_id = %slot.id, drain_ms = drain.as_millis() as u64, "agent draining");
    let drained = drain_tasks(inner, &slot.id, &mut session, drain).await;
    session.terminate(inner.runtime.config.kill_grace).await;
    let left = inner.tasks.running_of(&slot.id);
    session.cleanup().await;
    if !left.is_empty() {
        tracing::warn!(agent_id = %slot.id, tasks = left.len(), "drain timeout: requeueing unfinished tasks");
        if let Err(e) = inner.tasks.abandon(&left, reason::DRAIN_TIMEOUT).await {
            tracing::error!(agent_id = %slot.id, error = %e, "cannot requeue drained tasks");
        }
    }
    drained
}

/// Waits until the agent holds no running task, for at most `drain`; true if it drained.
async fn drain_tasks(inner: &Inner, id: &AgentId, session: &mut Session, drain: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + drain;
    loop {
        if inner.tasks.running_of(id).is_empty() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            // The program exited by itself while draining: nothing more will finish.
            _ = session.wait_exit() => return inner.tasks.running_of(id).is_empty(),
        }
    }
}

/// Holds an agent id while it is being spawned.
struct Claim<'a> {
    inner: &'a Inner,
    id: AgentId,
}

impl<'a> Claim<'a> {
    fn take(inner: &'a Inner, id: &AgentId) -> Result<Self, AgentError> {
        if !inner.claims.lock().insert(id.clone()) {
            return Err(AgentError::SpawnInProgress(id.clone()));
        }
        Ok(Self {
            inner,
            id: id.clone(),
        })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.inner.claims.lock().remove(&self.id);
    }
}

fn may_lease(state: AgentState) -> bool {
    matches!(
        state,
        AgentState::Starting | AgentState::Running | AgentState::Restarting
    )
}

fn draining(id: &AgentId, state: AgentState) -> AgentError {
    AgentError::Draining {
        id: id.clone(),
        state: state.as_str(),
    }
}

/// What Docker being down means for a container spawn (REQUIREMENTS §3: other
/// isolation levels keep working).
fn docker_message(e: &fabric_docker::DockerError) -> String {
    match e {
        fabric_docker::DockerError::DaemonUnreachable { .. } => {
            fabric_docker::error::DAEMON_UNREACHABLE.to_owned()
        }
        other => format!("isolation level 'container' needs Docker: {other}"),
    }
}

/// Samples every agent's CPU time (cgroup `cpu.stat` for isolation
/// `process`, the container's stats for `container`, `/proc` for `none`)
/// every `every`, and counts the growth since the last sample against the
/// agent, its owner and its tenant. A new session starts its counter at
/// zero. Granularity: one sample period; work already running when a limit
/// is reached runs to its end (new tasks are refused).
pub(crate) async fn sample_compute(
    agents: AgentManager,
    budgets: Arc<crate::services::budgets::BudgetService>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut last: std::collections::HashMap<AgentId, (u32, u64)> = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        // Reading usage touches cgroup files and /proc: off the runtime's threads.
        let list = {
            let agents = agents.clone();
            match tokio::task::spawn_blocking(move || agents.list()).await {
                Ok(list) => list,
                Err(_) => continue,
            }
        };
        for agent in list {
            let id = agent.config.id.clone();
            let cpu = agent.usage.cpu_millis;
            let delta = match last.insert(id.clone(), (agent.session, cpu)) {
                Some((session, before)) if session == agent.session => cpu.saturating_sub(before),
                // First sight of this session: what it used so far.
                _ => cpu,
            };
            if delta > 0 {
                budgets.record_compute(
                    &crate::services::budgets::entities_of(Some(&id), AGENTS_USER, &agent.tenant),
                    delta,
                );
            }
        }
    }
}
