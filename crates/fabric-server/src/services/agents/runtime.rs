//! What running an agent's sessions takes on one machine, whether the
//! machine is the orchestrator (its own agents) or a worker node (agents
//! the orchestrator placed there): the working dirs, the sandbox helper,
//! Docker, the warm pools, where agents reach the fabric's API and how their
//! inference endpoints are served. The agent manager owns one for the
//! orchestrator; `crate::node` builds one for a node. Sessions see only
//! this, never the manager, so the same session code runs in both places.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fabric_core::Clock;
use fabric_runtime::sandbox::HelperCommand;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::container::{ContainerConfig, DockerRuntime};
use super::inference::InferenceServer;
use super::{logs, pool};
use crate::services::tasks::TaskService;

/// How sessions run on this machine.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Parent of every session's working dir (`<data dir>/agents`).
    pub agents_dir: PathBuf,
    /// Where agents reach the fabric's API: this server's listener, or on a
    /// node the orchestrator's address. Sandboxes and containers get a
    /// forward to it on the same port.
    pub api_addr: SocketAddr,
    /// The sandbox helper (isolation `process`); `None` makes that level unavailable.
    pub helper: Option<HelperCommand>,
    /// Parent cgroup of this machine's sandboxes (`reactor-fabric/<instance>`):
    /// what a restart sweeps for sandboxes a crash left behind.
    pub cgroup_parent: PathBuf,
    /// Decides the agents' `net:connect:...` egress behind their
    /// allowlists: the policy service here, a request to the orchestrator
    /// on a node. `None`: the allowlist alone decides.
    pub egress: Option<Arc<dyn EgressPolicy>>,
    /// Bytes of stdout / stderr the shell agent keeps per task.
    pub shell_output_limit: usize,
    /// SIGTERM → SIGKILL grace for tasks and agent programs.
    pub kill_grace: Duration,
    /// How long a finished shell task's working directory is kept.
    pub workdir_retention: Duration,
    /// Isolation `container`: Docker, images, sockets.
    pub containers: ContainerConfig,
    /// Value of the owner label on this machine's containers and volumes (see
    /// `fabric_docker::labels::LABEL_OWNER`): unique per server or node.
    pub owner: String,
    /// Serves agents' inference endpoints: the gateway itself on the
    /// orchestrator, a forward to the orchestrator's on a node.
    pub inference: Arc<dyn InferenceServer>,
    /// The gateway's request timeout, which container sidecars apply too.
    pub inference_timeout: Duration,
    /// Set for every agent program and task (`FABRIC_NODE` on a node).
    pub env: Vec<(String, String)>,
}

/// Where an agent's egress proxy asks about `net:connect:<host>:<port>`
/// once its allowlist admits a target.
pub trait EgressPolicy: Send + Sync + std::fmt::Debug {
    /// The gate of one session's proxy, acting as `actor`; `token` is the
    /// session's agent token when the orchestrator minted it elsewhere.
    fn gate(
        &self,
        actor: crate::services::policy::Actor,
        token: Option<&str>,
    ) -> fabric_runtime::net::PolicyGate;
}

/// The machine-local half of running agents (see the module docs).
pub struct SessionRuntime {
    pub(super) config: RuntimeConfig,
    /// What the agents' programs wrote (`agent logs`).
    pub(super) program_logs: logs::ProgramLogs,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) sandbox_pool: Arc<pool::WarmPool<pool::SandboxKind>>,
    pub(super) container_pool: Arc<pool::WarmPool<pool::ContainerKind>>,
    pub(super) docker: Arc<DockerRuntime>,
    /// The orchestrator's task service, for the built-in shell's in-process
    /// kill shortcut; `None` on a node, where kills arrive with the
    /// workers' heartbeats like any agent's.
    pub(super) tasks: Option<Arc<TaskService>>,
    /// The pools' fillers; they empty the pools when `shutdown` fires.
    fillers: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for SessionRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRuntime")
            .field("agents_dir", &self.config.agents_dir)
            .field("api_addr", &self.config.api_addr)
            .finish_non_exhaustive()
    }
}

impl SessionRuntime {
    /// Starts the warm pools' fillers; `logs_dir` keeps agents' output.
    pub fn new(
        config: RuntimeConfig,
        clock: Arc<dyn Clock>,
        tasks: Option<Arc<TaskService>>,
        logs_dir: Option<PathBuf>,
        shutdown: &CancellationToken,
    ) -> Arc<Self> {
        let sandbox_pool = pool::WarmPool::new(pool::SandboxKind {
            helper: config.helper.clone(),
            root: config.agents_dir.clone(),
            cgroup_parent: config.cgroup_parent.clone(),
        });
        let docker = DockerRuntime::new(
            config.containers.clone(),
            config.owner.clone(),
            config.agents_dir.clone(),
            config.inference_timeout,
        );
        let container_pool = pool::WarmPool::new(pool::ContainerKind {
            docker: Arc::clone(&docker),
        });
        let fillers = vec![
            tokio::spawn(Arc::clone(&sandbox_pool).fill(shutdown.clone())),
            tokio::spawn(Arc::clone(&container_pool).fill(shutdown.clone())),
        ];
        Arc::new(Self {
            config,
            program_logs: logs::ProgramLogs::new(logs_dir),
            clock,
            sandbox_pool,
            container_pool,
            docker,
            tasks,
            fillers: Mutex::new(fillers),
        })
    }

    /// Clears what a previous run on this machine left behind if it was
    /// killed: sandboxes (processes, cgroups, namespaces), agent containers
    /// (with their sidecars and volumes) and working dirs.
    pub async fn sweep_leftovers(&self) {
        let dir = &self.config.agents_dir;
        super::session::kill_stale_programs(dir);
        self.docker.sweep().await;
        if let Err(e) = std::fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot clear old agent working dirs");
        }
        if self.config.helper.is_none() {
            return;
        }
        match fabric_runtime::sandbox::sweep_stale(&self.config.cgroup_parent, |_| false).await {
            Ok(report) if !report.sandboxes.is_empty() => tracing::warn!(
                sandboxes = report.sandboxes.len(),
                processes = report.processes_killed,
                "removed sandboxes left by a previous run"
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "no sandboxes swept"),
        }
    }

    /// Waits for the pools to empty (after `shutdown` fired) and removes
    /// this machine's sandbox cgroup parent.
    pub async fn wait_stopped(&self) {
        let fillers: Vec<_> = self.fillers.lock().drain(..).collect();
        for filler in fillers {
            let _ = filler.await;
        }
        if self.config.helper.is_some() {
            fabric_runtime::sandbox::remove_parent(&self.config.cgroup_parent);
        }
    }

    /// Whether this machine has a Docker daemon to talk to at all (a
    /// configured host, `DOCKER_HOST`, or the default socket): an
    /// orchestrator in a Docker instance with worker nodes has none, and
    /// leaves container agents to the nodes. Whether it answers is
    /// the daemon's business, asked when an agent is spawned.
    pub fn has_docker(&self) -> bool {
        self.config.containers.docker_host.is_some()
            || std::env::var_os("DOCKER_HOST").is_some()
            || std::path::Path::new("/var/run/docker.sock").exists()
    }
}
