//! Isolation level `container` (REQUIREMENTS §5 FR-ISO, §6): agents in Docker
//! containers, with an inference sidecar each.
//!
//! [`DockerRuntime`] is this server's side of Docker: the client (connected on
//! first use, so a fabric without Docker runs every other level), the images
//! (the default agent image built from this host's busybox or tools, the
//! sidecar image from this very binary; both built once and tagged by
//! content), the labels, the socket directories, and the sweep of what a
//! killed server left behind.
//!
//! A container session (`session::container`) is an [`AgentContainer`] (see
//! `fabric_docker::agent` for its settings) with its sidecar, plus the
//! fabric's listeners the sidecar forwards to, in the session's socket
//! directory:
//!
//! ```text
//! agent container (network none)      sidecar (same netns)              fabric
//!   curl localhost:11434/api/chat  ─►  :11434 InferenceForward ─► inference.sock ─► upstream
//!   HTTP_PROXY=127.0.0.1:3128      ─►  :3128  byte splice      ─► egress.sock   ─► EgressProxy (allowlist)
//!   FABRIC_URL=127.0.0.1:<port>    ─►  :<port> byte splice     ─► api.sock      ─► the API
//! ```
//!
//! The directory is a host directory bound into the sidecar (the fabric runs on
//! the Docker host), or a subdirectory of a named volume the fabric shares with
//! its sidecars (the fabric runs in a container of an instance: bind paths
//! would name the Docker host's filesystem). Only the sidecar mounts it; the
//! agent reaches the fabric through the sidecar's ports only.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fabric_core::AgentId;
use fabric_core::agent::{AgentConfig, ResourceUsage};
use fabric_docker::agent::{
    AgentContainer, AgentContainerSpec, DEFAULT_PIDS_LIMIT, DEFAULT_TMP_MB, SidecarSpec,
    SocketMount,
};
use fabric_docker::client::LimitsUpdate;
use fabric_docker::image::ImageError;
use fabric_docker::labels::{Component, LABEL_AGENT, LABEL_INSTANCE, LABEL_OWNER};
use fabric_docker::stats::ContainerCgroup;
use fabric_docker::{DockerClient, DockerError};
use fabric_runtime::sandbox::ProcessExit;
use tokio::task::JoinHandle;

use crate::proxy::{
    API_SOCKET, EGRESS_PROXY_PORT, EGRESS_SOCKET, INFERENCE_PORT, INFERENCE_SOCKET, bind_socket,
};

/// Memory limit of warm-pool containers until an agent takes one (the default of REQUIREMENTS §5).
const POOL_MEMORY_MB: u64 = 512;
const POOL_CPU_CORES: f64 = 1.0;
/// How often a container's usage is asked of the daemon when its cgroup is not visible here.
const DAEMON_USAGE_EVERY: Duration = Duration::from_secs(5);

/// How this server runs container agents (`serve` flags; the instance sets them
/// for its orchestrator).
#[derive(Debug, Clone, Default)]
pub struct ContainerConfig {
    /// The Docker daemon (`unix://…`, `tcp://…`); `None`: `DOCKER_HOST`, else the default socket.
    pub docker_host: Option<String>,
    /// Image for built-in shell agents and `command` agents without `image`;
    /// `None`: built from this host's busybox (or shell and tools) on first use.
    pub agent_image: Option<String>,
    /// Image for sidecars (it must have `reactor-fabric` as entrypoint);
    /// `None`: built from `proxy_binary` on first use.
    pub proxy_image: Option<String>,
    /// The `reactor-fabric` binary sidecar images are built from.
    pub proxy_binary: Option<PathBuf>,
    /// The instance this fabric belongs to (labels its containers for `down` and `list`).
    pub instance: Option<String>,
    /// A named volume shared with sidecars for the socket directories, mounted
    /// here at `local_dir` (the fabric runs in a container); `None`: host
    /// directories under the agents dir, bound into sidecars.
    pub socket_volume: Option<SocketVolume>,
}

/// Why an agent container could not be made or served.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// No client: the daemon cannot be reached.
    #[error(transparent)]
    Connect(DockerError),
    /// The configured agent image is neither here nor pullable (the message
    /// says how to provide it).
    #[error(transparent)]
    AgentImage(DockerError),
    #[error("cannot build the default agent image: {0}")]
    BuildAgentImage(#[source] ImageError),
    #[error("cannot build the sidecar image: {0}")]
    BuildSidecarImage(#[source] ImageError),
    #[error(
        "no sidecar image: this server was started without a reactor-fabric binary or --proxy-image to run 'reactor-fabric proxy' from"
    )]
    NoSidecarImage,
    #[error(
        "the socket path {} is too long for a Unix socket: use a shorter --data-dir",
        .0.display()
    )]
    SocketPathTooLong(PathBuf),
    #[error("cannot create socket directory {}: {source}", dir.display())]
    CreateSocketDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the mode of {}: {source}", dir.display())]
    SocketDirMode {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Creating or starting the agent container or its sidecar.
    #[error(transparent)]
    Create(DockerError),
    /// A socket of the fabric's listeners (`crate::proxy::bind_socket` says
    /// why in words only).
    #[error(transparent)]
    Listen(crate::proxy::SocketError),
}

/// See [`ContainerConfig::socket_volume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketVolume {
    pub name: String,
    pub local_dir: PathBuf,
}

/// This server's side of Docker; see the module docs.
pub(super) struct DockerRuntime {
    config: ContainerConfig,
    /// Value of the owner label on everything this server creates.
    owner: String,
    /// Parent of host socket directories (without a socket volume).
    agents_dir: PathBuf,
    inference_timeout: Duration,
    client: tokio::sync::Mutex<Option<DockerClient>>,
    agent_image: tokio::sync::Mutex<Option<String>>,
    proxy_image: tokio::sync::Mutex<Option<String>>,
}

impl DockerRuntime {
    pub(super) fn new(
        config: ContainerConfig,
        owner: String,
        agents_dir: PathBuf,
        inference_timeout: Duration,
    ) -> Arc<DockerRuntime> {
        Arc::new(DockerRuntime {
            config,
            owner,
            agents_dir,
            inference_timeout,
            client: tokio::sync::Mutex::new(None),
            agent_image: tokio::sync::Mutex::new(None),
            proxy_image: tokio::sync::Mutex::new(None),
        })
    }

    /// The client, connected and answering: a spawn learns now, not later,
    /// that the daemon is away (a cached client is pinged, ~1 ms).
    pub(super) async fn check(&self) -> Result<DockerClient, fabric_docker::DockerError> {
        let client = self.client().await?;
        if let Err(e) = client.ping().await {
            // Reconnect next time: the daemon may come back elsewhere (restarted, DOCKER_HOST).
            *self.client.lock().await = None;
            return Err(e);
        }
        Ok(client)
    }

    /// The client, connected now if it was not (a daemon that was down may be up now).
    pub(super) async fn client(&self) -> Result<DockerClient, fabric_docker::DockerError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let host = self
            .config
            .docker_host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok());
        let client = DockerClient::connect_to(host.as_deref()).await?;
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn agent_image(&self, client: &DockerClient) -> Result<String, ContainerError> {
        let mut slot = self.agent_image.lock().await;
        if let Some(image) = slot.as_ref() {
            return Ok(image.clone());
        }
        let image = match &self.config.agent_image {
            Some(image) => {
                fabric_docker::image::ensure_image(
                    client,
                    image,
                    "load it with 'docker load', or leave the agent image unset to build the default one",
                )
                .await
                .map_err(ContainerError::AgentImage)?
                .image
            }
            None => {
                let ready = fabric_docker::image::ensure_agent_image(client)
                    .await
                    .map_err(ContainerError::BuildAgentImage)?;
                if ready.built {
                    tracing::info!(image = %ready.image, bytes = ready.size_bytes, took_ms = ready.took.as_millis() as u64, "built the default agent image");
                }
                ready.image
            }
        };
        *slot = Some(image.clone());
        Ok(image)
    }

    async fn proxy_image(&self, client: &DockerClient) -> Result<String, ContainerError> {
        let mut slot = self.proxy_image.lock().await;
        if let Some(image) = slot.as_ref() {
            return Ok(image.clone());
        }
        let image = match (&self.config.proxy_image, &self.config.proxy_binary) {
            (Some(image), _) => image.clone(),
            (None, Some(binary)) => {
                let ready = fabric_docker::image::ensure_orchestrator_image(client, binary)
                    .await
                    .map_err(ContainerError::BuildSidecarImage)?;
                if ready.built {
                    tracing::info!(image = %ready.image, took_ms = ready.took.as_millis() as u64, "built the sidecar image");
                }
                ready.image
            }
            (None, None) => return Err(ContainerError::NoSidecarImage),
        };
        *slot = Some(image.clone());
        Ok(image)
    }

    /// Owner, instance and (for a session) agent labels.
    fn labels(&self, agent: Option<&AgentId>) -> HashMap<String, String> {
        let mut labels = HashMap::from([(LABEL_OWNER.to_owned(), self.owner.clone())]);
        if let Some(instance) = &self.config.instance {
            labels.insert(LABEL_INSTANCE.to_owned(), instance.clone());
        }
        if let Some(agent) = agent {
            labels.insert(LABEL_AGENT.to_owned(), agent.to_string());
        }
        labels
    }

    /// A new socket directory: where this server makes it, and how a sidecar mounts it.
    /// The name is short: a socket path must fit in 108 bytes.
    fn socket_dir(&self) -> Result<(PathBuf, SocketMount), ContainerError> {
        let name = format!("s-{:08x}", rand::random::<u32>());
        let (local, mount) = match &self.config.socket_volume {
            Some(volume) => (
                volume.local_dir.join(&name),
                SocketMount::Volume {
                    name: volume.name.clone(),
                    subdir: name,
                },
            ),
            None => {
                let dir = self.agents_dir.join(&name);
                (dir.clone(), SocketMount::Bind { host_dir: dir })
            }
        };
        check_socket_path(&local)?;
        std::fs::create_dir_all(&local).map_err(|source| ContainerError::CreateSocketDir {
            dir: local.clone(),
            source,
        })?;
        // The sidecar runs as nobody; the agent never sees this directory.
        let owned = std::os::unix::fs::chown(
            &local,
            Some(fabric_docker::image::IMAGE_UID as u32),
            Some(fabric_docker::image::IMAGE_UID as u32),
        )
        .is_ok();
        use std::os::unix::fs::PermissionsExt;
        let mode = if owned { 0o700 } else { 0o755 };
        std::fs::set_permissions(&local, std::fs::Permissions::from_mode(mode)).map_err(
            |source| ContainerError::SocketDirMode {
                dir: local.clone(),
                source,
            },
        )?;
        Ok((local, mount))
    }

    /// Sidecar arguments: `proxy` serving inference and egress (and the API on `api_port`).
    fn sidecar_args(&self, sockets: &SocketMount, api_port: Option<u16>) -> Vec<String> {
        let mut args = vec![
            "proxy".to_owned(),
            "--socket-dir".to_owned(),
            sockets.dir_in_sidecar(),
            "--inference-listen".to_owned(),
            format!("127.0.0.1:{INFERENCE_PORT}"),
            "--egress-listen".to_owned(),
            format!("127.0.0.1:{EGRESS_PROXY_PORT}"),
            "--timeout-secs".to_owned(),
            self.inference_timeout.as_secs().max(1).to_string(),
        ];
        if let Some(port) = api_port {
            args.extend(["--api-listen".to_owned(), format!("127.0.0.1:{port}")]);
        }
        args
    }

    /// Creates a container with its sidecar and socket directory.
    async fn create(
        &self,
        mut spec: AgentContainerSpec,
        api_port: Option<u16>,
        own_image: bool,
    ) -> Result<ContainerPair, ContainerError> {
        let client = self.client().await.map_err(ContainerError::Connect)?;
        let default_image = self.agent_image(&client).await?;
        let proxy_image = self.proxy_image(&client).await?;
        if spec.image.is_empty() {
            spec.image = default_image.clone();
        }
        let (socket_dir, sockets) = self.socket_dir()?;
        let sidecar = SidecarSpec {
            image: proxy_image,
            args: self.sidecar_args(&sockets, api_port),
            sockets,
        };
        let volume_image = own_image.then_some(default_image.as_str());
        match AgentContainer::create(&client, &spec, Some(&sidecar), volume_image).await {
            Ok(container) => Ok(ContainerPair {
                container,
                socket_dir,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&socket_dir);
                Err(ContainerError::Create(e))
            }
        }
    }

    /// A container for the warm pool: default image and limits, no agent yet.
    pub(super) async fn create_pooled(&self) -> Result<ContainerPair, ContainerError> {
        let spec = AgentContainerSpec {
            name: format!("reactor-fabric-pool-{:08x}", rand::random::<u32>()),
            image: String::new(),
            cmd: None,
            env: Vec::new(),
            memory_mb: POOL_MEMORY_MB,
            cpu_cores: POOL_CPU_CORES,
            pids_limit: DEFAULT_PIDS_LIMIT,
            tmp_mb: DEFAULT_TMP_MB,
            read_only_paths: Vec::new(),
            labels: self.labels(None),
        };
        self.create(spec, None, false).await
    }

    /// Removes a container, its sidecar and volume, and its socket directory.
    pub(super) async fn remove(&self, warm: &ContainerPair) {
        match self.client().await {
            Ok(client) => warm.container.remove(&client).await,
            Err(e) => {
                tracing::warn!(container = %warm.container.name, error = %e, "cannot remove agent container")
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&warm.socket_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %warm.socket_dir.display(), error = %e, "cannot remove socket directory");
        }
    }

    /// Removes what a previous run of this server left (containers, sidecars,
    /// volumes with its owner label; socket directories in the shared volume).
    pub(super) async fn sweep(&self) {
        if let Some(volume) = &self.config.socket_volume
            && let Ok(entries) = std::fs::read_dir(&volume.local_dir)
        {
            for entry in entries.flatten() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let client = match self.client().await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(error = %e, "no Docker: no containers to sweep");
                return;
            }
        };
        match fabric_docker::agent::sweep(&client, &self.owner).await {
            Ok((0, 0)) => {}
            Ok((containers, volumes)) => tracing::warn!(
                containers,
                volumes,
                "removed agent containers and volumes left by a previous run"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot sweep old agent containers"),
        }
    }
}

/// A started agent container with its sidecar and socket directory: a
/// session's, or idle in the pool.
pub(super) struct ContainerPair {
    pub(super) container: AgentContainer,
    /// The fabric's side of the socket directory (its listeners go here).
    pub(super) socket_dir: PathBuf,
}

/// Whether an agent can take a pooled container: the built-in shell on the
/// default image with no extra mounts (mounts cannot change on a live container).
pub(super) fn poolable(config: &AgentConfig) -> bool {
    config.is_builtin_shell() && config.isolation.read_only_paths.is_empty()
}

/// A container for `config`'s session: from the pool when it can, else made now.
/// `env` is the container's environment (programs; empty for the built-in shell).
pub(super) async fn acquire(
    runtime: &DockerRuntime,
    pool: &super::pool::WarmPool<super::pool::ContainerKind>,
    config: &AgentConfig,
    name: &str,
    env: Vec<(String, String)>,
    api_port: Option<u16>,
) -> Result<(ContainerPair, DockerClient), ContainerError> {
    let client = runtime.client().await.map_err(ContainerError::Connect)?;
    let iso = &config.isolation;
    if poolable(config)
        && let Some(warm) = pool.take()
    {
        let same = iso.memory_mb == POOL_MEMORY_MB && iso.cpu_cores == POOL_CPU_CORES;
        let limits = LimitsUpdate {
            memory_bytes: i64::try_from(iso.memory_mb << 20).unwrap_or(i64::MAX),
            nano_cpus: fabric_docker::agent::nano_cpus(iso.cpu_cores),
            pids_limit: DEFAULT_PIDS_LIMIT,
        };
        match if same {
            Ok(())
        } else {
            client.update_limits(&warm.container.name, limits).await
        } {
            Ok(()) => return Ok((warm, client)),
            Err(e) => {
                tracing::warn!(error = %e, "a pooled container refused new limits; starting a fresh one");
                runtime.remove(&warm).await;
            }
        }
    }
    let (image, cmd, own_image) = match (&config.image, &config.command) {
        (Some(image), None) => (image.clone(), None, true),
        (Some(image), Some(command)) => (
            image.clone(),
            Some(vec!["/bin/sh".to_owned(), "-c".to_owned(), command.clone()]),
            true,
        ),
        (None, Some(command)) => (
            String::new(),
            Some(vec!["/bin/sh".to_owned(), "-c".to_owned(), command.clone()]),
            false,
        ),
        (None, None) => (String::new(), None, false),
    };
    let spec = AgentContainerSpec {
        name: name.to_owned(),
        image,
        cmd,
        env,
        memory_mb: iso.memory_mb,
        cpu_cores: iso.cpu_cores,
        pids_limit: DEFAULT_PIDS_LIMIT,
        tmp_mb: DEFAULT_TMP_MB,
        read_only_paths: iso.read_only_paths.clone(),
        labels: runtime.labels(Some(&config.id)),
    };
    let warm = runtime.create(spec, api_port, own_image).await?;
    Ok((warm, client))
}

/// Starts the fabric's listeners in a session's socket directory.
pub(super) fn listen(
    runtime: &super::SessionRuntime,
    warm: &ContainerPair,
    identity: crate::services::llm::EndpointIdentity,
    egress: fabric_runtime::net::EgressProxy,
    api: Option<std::net::SocketAddr>,
) -> Result<Vec<JoinHandle<()>>, ContainerError> {
    let dir = &warm.socket_dir;
    let mut tasks = Vec::new();
    let inference = bind_socket(&dir.join(INFERENCE_SOCKET)).map_err(ContainerError::Listen)?;
    tasks.push(super::inference::serve_unix(inference, runtime, identity));
    let egress_listener = bind_socket(&dir.join(EGRESS_SOCKET)).map_err(ContainerError::Listen)?;
    tasks.push(tokio::spawn(
        egress.serve_unix(egress_listener, std::future::pending()),
    ));
    if let Some(api) = api {
        let listener = bind_socket(&dir.join(API_SOCKET)).map_err(ContainerError::Listen)?;
        tasks.push(tokio::spawn(fabric_runtime::net::forward_unix_to_tcp(
            listener,
            api,
            std::future::pending(),
        )));
    }
    Ok(tasks)
}

/// A container's resource use: read from its cgroup when visible here, else
/// from the daemon every few seconds by a background task.
pub(super) struct ContainerUsage {
    cgroup: Option<ContainerCgroup>,
    last: parking_lot::Mutex<ResourceUsage>,
}

impl ContainerUsage {
    pub(super) fn start(
        client: &DockerClient,
        warm: &ContainerPair,
    ) -> (Arc<ContainerUsage>, Option<JoinHandle<()>>) {
        let container = &warm.container;
        let cgroup = (container.pid > 0)
            .then(|| ContainerCgroup::find(container.pid, &container.id))
            .flatten();
        let usage = Arc::new(ContainerUsage {
            cgroup,
            last: parking_lot::Mutex::new(ResourceUsage::default()),
        });
        if usage.cgroup.is_some() {
            return (usage, None);
        }
        let (client, name, shared) = (client.clone(), container.name.clone(), Arc::clone(&usage));
        let poller = tokio::spawn(async move {
            loop {
                if let Ok(stats) = client.stats_once(&name).await {
                    let memory = stats.memory_stats.as_ref();
                    let mut last = shared.last.lock();
                    let now = fabric_docker::stats::from_daemon(&stats);
                    last.memory_bytes = now.memory_bytes.unwrap_or(0);
                    last.memory_peak_bytes = memory
                        .and_then(|m| m.max_usage)
                        .unwrap_or(last.memory_bytes);
                    last.cpu_millis = stats
                        .cpu_stats
                        .as_ref()
                        .and_then(|c| c.cpu_usage.as_ref()?.total_usage)
                        .map_or(0, |ns| ns / 1_000_000);
                    last.pids = stats
                        .pids_stats
                        .as_ref()
                        .and_then(|p| p.current)
                        .unwrap_or(0);
                }
                tokio::time::sleep(DAEMON_USAGE_EVERY).await;
            }
        });
        (usage, Some(poller))
    }

    pub(super) fn read(&self) -> ResourceUsage {
        match &self.cgroup {
            Some(cgroup) => {
                let now = cgroup.read();
                ResourceUsage {
                    memory_bytes: now.memory_bytes,
                    memory_peak_bytes: now.memory_peak_bytes.unwrap_or(now.memory_bytes),
                    cpu_millis: now.cpu_nanos.map_or(0, |ns| ns / 1_000_000),
                    pids: now.pids.unwrap_or(0),
                }
            }
            None => *self.last.lock(),
        }
    }
}

/// Waits until the container stops; how it ended, as a session exit.
pub(super) async fn wait_exit(client: &DockerClient, name: &str) -> ProcessExit {
    loop {
        match client.wait_container(name).await {
            Ok(_) => break,
            Err(e) => {
                // The daemon restarting or a dropped connection: look again.
                tracing::warn!(container = %name, error = %e, "waiting for an agent container failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    match fabric_docker::agent::exit_of(client, name).await {
        Ok(Some(exit)) if !exit.running => ProcessExit {
            code: exit.code,
            signal: exit.signal,
            // Docker's flag stays set once any process was OOM-killed; it is the
            // container's verdict only if its init went with it (137).
            oom_killed: exit.oom_killed && exit.signal == Some(9),
        },
        Ok(_) => ProcessExit {
            code: None,
            signal: Some(9),
            oom_killed: false,
        },
        Err(e) => {
            tracing::warn!(container = %name, error = %e, "cannot inspect a stopped agent container");
            ProcessExit {
                code: None,
                signal: None,
                oom_killed: false,
            }
        }
    }
}

/// The socket directory's path must leave room for the socket names (108-byte limit).
fn check_socket_path(dir: &Path) -> Result<(), ContainerError> {
    let longest = dir.join(INFERENCE_SOCKET);
    if longest.as_os_str().len() >= 100 {
        return Err(ContainerError::SocketPathTooLong(longest));
    }
    Ok(())
}

/// `<prefix>-<agent>-<session>-<random>`: unique on the host even with several fabrics.
pub(super) fn container_name(id: &AgentId, number: u32) -> String {
    let short: String = id.as_str().chars().take(40).collect();
    format!(
        "{}-{}-{short}-{number}-{:06x}",
        fabric_docker::labels::NAME_PREFIX,
        Component::Agent,
        rand::random::<u32>() & 0xff_ffff
    )
}
