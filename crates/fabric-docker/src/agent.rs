//! Agent containers (isolation level `container`, REQUIREMENTS §5 FR-ISO) and their
//! inference sidecars (REQUIREMENTS §6).
//!
//! An agent container is locked down the same way whatever it runs:
//!
//! - memory limit with no swap (`memory_mb`), CPU quota (`cpu_cores`), a pids limit;
//! - read-only root filesystem; writable only: the work volume at
//!   [`WORKSPACE`] (one named volume per container), a `/tmp` tmpfs and a 1 MiB
//!   tmpfs at [`EXEC_DIR`] (where commands started with `docker exec` note
//!   their process group, so they can be stopped);
//! - user `65534:65534` (nobody), every capability dropped, `no-new-privileges`;
//! - `network_mode: none`: only a loopback interface;
//! - Docker's init (tini) as PID 1, so orphans are reaped;
//! - labels: `component=agent`, the owner (the fabric server that made it),
//!   the agent id, and the instance when the fabric runs inside one.
//!
//! Its sidecar runs `reactor-fabric proxy` from the orchestrator image in the
//! agent container's network namespace (`network_mode: container:<agent>`), so
//! its listeners on `127.0.0.1` are the agent's `localhost`; it reaches the
//! fabric through Unix sockets in a directory mounted into it (see
//! [`SocketMount`]), since that namespace has no route anywhere.

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HostConfig, HostConfigLogConfig, Mount,
    MountType,
};

use crate::client::DockerClient;
use crate::error::DockerError;
use crate::image::{AGENT_WORKSPACE, IMAGE_UID};
use crate::labels::{self, Component, LABEL_COMPONENT, LABEL_OWNER};

/// The agent's working directory inside its container: the work volume.
pub const WORKSPACE: &str = AGENT_WORKSPACE;
/// A small tmpfs for the notes of commands started by `docker exec` (their
/// process group ids), writable by the agent's user only.
pub const EXEC_DIR: &str = "/run/fabric-exec";
/// Where the sidecar finds the fabric's Unix sockets.
pub const SIDECAR_SOCKET_DIR: &str = "/run/fabric";
/// Every agent container and sidecar runs as this user (nobody).
pub const AGENT_USER: &str = "65534:65534";
/// Processes and threads an agent container may have at once.
pub const DEFAULT_PIDS_LIMIT: i64 = 256;
/// Size of the agent's `/tmp` tmpfs (its pages count against the memory limit).
pub const DEFAULT_TMP_MB: u64 = 64;
/// The sidecar's limits: it forwards bytes, nothing more.
pub const SIDECAR_MEMORY_MB: u64 = 64;
pub const SIDECAR_PIDS_LIMIT: i64 = 64;
pub const SIDECAR_NANO_CPUS: i64 = 500_000_000;
/// Size cap of each container's json-file log (the program's stdout/stderr).
const LOG_MAX_SIZE: &str = "10m";

/// How the fabric's socket directory reaches a sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketMount {
    /// A host directory (the fabric runs on the Docker host), bound read-only at
    /// [`SIDECAR_SOCKET_DIR`]. Connecting to a socket needs no write access to
    /// the mount.
    Bind { host_dir: PathBuf },
    /// A named volume the fabric (in a container) shares with its sidecars,
    /// mounted read-only at [`SIDECAR_SOCKET_DIR`]; the agent's sockets are in
    /// `subdir` of it. Bind paths would name the Docker host's filesystem,
    /// which a containerised fabric cannot write to. (Docker 20.10 cannot
    /// mount a volume's subdirectory, so each sidecar sees the whole volume;
    /// sidecars run the fabric's own code, and agents never mount it.)
    Volume { name: String, subdir: String },
}

impl SocketMount {
    /// The socket directory as the sidecar sees it.
    pub fn dir_in_sidecar(&self) -> String {
        match self {
            SocketMount::Bind { .. } => SIDECAR_SOCKET_DIR.to_owned(),
            SocketMount::Volume { subdir, .. } => format!("{SIDECAR_SOCKET_DIR}/{subdir}"),
        }
    }

    fn mount(&self) -> Mount {
        let (typ, source) = match self {
            SocketMount::Bind { host_dir } => {
                (MountType::BIND, host_dir.to_string_lossy().into_owned())
            }
            SocketMount::Volume { name, .. } => (MountType::VOLUME, name.clone()),
        };
        Mount {
            target: Some(SIDECAR_SOCKET_DIR.to_owned()),
            source: Some(source),
            typ: Some(typ),
            read_only: Some(true),
            ..Default::default()
        }
    }
}

/// Everything about one agent container.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentContainerSpec {
    /// Container name; the work volume is `<name>-work`, the sidecar `<name>-sidecar`.
    pub name: String,
    pub image: String,
    /// `None`: the image's own command.
    pub cmd: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub memory_mb: u64,
    pub cpu_cores: f64,
    pub pids_limit: i64,
    pub tmp_mb: u64,
    /// Host paths bound read-only at the same path (the fabric's host is the Docker host).
    pub read_only_paths: Vec<String>,
    /// Owner (and instance, agent) labels; `component` is added here.
    pub labels: HashMap<String, String>,
}

impl AgentContainerSpec {
    pub fn volume_name(&self) -> String {
        format!("{}-work", self.name)
    }

    pub fn sidecar_name(&self) -> String {
        format!("{}-sidecar", self.name)
    }

    fn labels_for(&self, component: Component) -> HashMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(LABEL_COMPONENT.to_owned(), component.as_str().to_owned());
        labels
    }

    /// The container's create request: every setting of the module docs.
    pub fn body(&self) -> ContainerCreateBody {
        let memory = mib(self.memory_mb);
        let mut mounts = vec![Mount {
            target: Some(WORKSPACE.to_owned()),
            source: Some(self.volume_name()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        }];
        mounts.extend(self.read_only_paths.iter().map(|path| Mount {
            target: Some(path.clone()),
            source: Some(path.clone()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        }));
        let tmpfs = HashMap::from([
            (
                "/tmp".to_owned(),
                format!("rw,nosuid,nodev,size={}m,mode=1777", self.tmp_mb),
            ),
            (
                EXEC_DIR.to_owned(),
                format!("rw,nosuid,nodev,noexec,size=1m,mode=0700,uid={IMAGE_UID},gid={IMAGE_UID}"),
            ),
        ]);
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: self.cmd.clone(),
            env: Some(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            user: Some(AGENT_USER.to_owned()),
            working_dir: Some(WORKSPACE.to_owned()),
            labels: Some(self.labels_for(Component::Agent)),
            host_config: Some(HostConfig {
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some(nano_cpus(self.cpu_cores)),
                pids_limit: Some(self.pids_limit),
                readonly_rootfs: Some(true),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                network_mode: Some("none".to_owned()),
                init: Some(true),
                mounts: Some(mounts),
                tmpfs: Some(tmpfs),
                log_config: Some(log_config()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The sidecar's create request: `reactor-fabric proxy ARGS` from `image`
    /// in the agent container's network namespace.
    pub fn sidecar_body(
        &self,
        image: &str,
        args: Vec<String>,
        sockets: &SocketMount,
    ) -> ContainerCreateBody {
        let memory = mib(SIDECAR_MEMORY_MB);
        ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(args),
            env: Some(vec!["FABRIC_LOG_FORMAT=json".to_owned()]),
            user: Some(AGENT_USER.to_owned()),
            labels: Some(self.labels_for(Component::Sidecar)),
            host_config: Some(HostConfig {
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some(SIDECAR_NANO_CPUS),
                pids_limit: Some(SIDECAR_PIDS_LIMIT),
                readonly_rootfs: Some(true),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                network_mode: Some(format!("container:{}", self.name)),
                init: Some(true),
                mounts: Some(vec![sockets.mount()]),
                log_config: Some(log_config()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn mib(mb: u64) -> i64 {
    i64::try_from(mb.saturating_mul(1 << 20)).unwrap_or(i64::MAX)
}

/// `cpu_cores` as Docker's nano-CPUs (1.5 cores = 1.5e9).
pub fn nano_cpus(cpu_cores: f64) -> i64 {
    // Validation keeps cores within 0.01..=1024, so this neither overflows nor rounds to 0.
    (cpu_cores * 1e9).round() as i64
}

fn log_config() -> HostConfigLogConfig {
    HostConfigLogConfig {
        typ: Some("json-file".to_owned()),
        config: Some(HashMap::from([(
            "max-size".to_owned(),
            LOG_MAX_SIZE.to_owned(),
        )])),
    }
}

/// A sidecar to start beside an agent container.
#[derive(Debug, Clone)]
pub struct SidecarSpec {
    /// The orchestrator image (`reactor-fabric` as its entrypoint).
    pub image: String,
    /// Arguments of `reactor-fabric`: `proxy ...`.
    pub args: Vec<String>,
    pub sockets: SocketMount,
}

/// A created and started agent container, with its volume and sidecar.
#[derive(Debug, Clone)]
pub struct AgentContainer {
    pub name: String,
    pub id: String,
    /// Host pid of the container's init, as the daemon reports it (0 if unknown).
    pub pid: i64,
    pub volume: String,
    pub sidecar: Option<String>,
}

impl AgentContainer {
    /// Creates the work volume, the container and (if given) its sidecar, and
    /// starts both. On any failure, what was made is removed again.
    ///
    /// `volume_image` is an image whose [`WORKSPACE`] is owned by the agent's
    /// user: a container created from it (never started) initialises the new
    /// volume with that owner when `spec.image` may not (its own images).
    pub async fn create(
        client: &DockerClient,
        spec: &AgentContainerSpec,
        sidecar: Option<&SidecarSpec>,
        volume_image: Option<&str>,
    ) -> Result<AgentContainer, DockerError> {
        let mut made = AgentContainer {
            name: spec.name.clone(),
            id: String::new(),
            pid: 0,
            volume: spec.volume_name(),
            sidecar: None,
        };
        match made.create_inner(client, spec, sidecar, volume_image).await {
            Ok(()) => Ok(made),
            Err(e) => {
                made.remove(client).await;
                Err(e)
            }
        }
    }

    async fn create_inner(
        &mut self,
        client: &DockerClient,
        spec: &AgentContainerSpec,
        sidecar: Option<&SidecarSpec>,
        volume_image: Option<&str>,
    ) -> Result<(), DockerError> {
        client
            .create_volume(&self.volume, spec.labels_for(Component::Agent))
            .await?;
        if let Some(image) = volume_image {
            init_volume_owner(client, &spec.name, &self.volume, image).await?;
        }
        self.id = client.create_container(&spec.name, spec.body()).await?;
        // Both created before either starts: the sidecar (which joins the agent's
        // network namespace, so starts second) then follows the agent at once,
        // and a program's first requests find it up, or find it a moment later.
        if let Some(sidecar) = sidecar {
            let name = spec.sidecar_name();
            let body = spec.sidecar_body(&sidecar.image, sidecar.args.clone(), &sidecar.sockets);
            client.create_container(&name, body).await?;
            self.sidecar = Some(name);
        }
        client.start_container(&spec.name).await?;
        if let Some(name) = &self.sidecar {
            client.start_container(name).await?;
        }
        let inspect = client.inspect_container(&spec.name).await?;
        self.pid = inspect
            .and_then(|c| c.state?.pid)
            .filter(|p| *p > 0)
            .unwrap_or(0);
        Ok(())
    }

    /// Removes the sidecar, the container (killing what runs) and the volume;
    /// failures are logged (a later sweep by the owner label catches them).
    pub async fn remove(&self, client: &DockerClient) {
        if let Some(sidecar) = &self.sidecar
            && let Err(e) = client.remove_container(sidecar).await
        {
            tracing::warn!(container = %sidecar, error = %e, "cannot remove sidecar");
        }
        if let Err(e) = client.remove_container(&self.name).await {
            tracing::warn!(container = %self.name, error = %e, "cannot remove agent container");
        }
        if let Err(e) = client.remove_volume(&self.volume).await {
            tracing::warn!(volume = %self.volume, error = %e, "cannot remove agent volume");
        }
    }
}

/// Gives a new, empty volume the owner of [`WORKSPACE`] in `image`: Docker
/// copies the mount point's owner into an empty volume when a container that
/// mounts it is created.
async fn init_volume_owner(
    client: &DockerClient,
    name: &str,
    volume: &str,
    image: &str,
) -> Result<(), DockerError> {
    let helper = format!("{name}-volinit");
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(vec!["/bin/true".to_owned()]),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            mounts: Some(vec![Mount {
                target: Some(WORKSPACE.to_owned()),
                source: Some(volume.to_owned()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = client.create_container(&helper, body).await;
    let removed = client.remove_container(&helper).await;
    created?;
    removed.map(|_| ())
}

/// How a container ended, from `docker inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContainerExit {
    /// Its exit code, unless it reads as a signal.
    pub code: Option<i32>,
    /// 128 + N exit codes are a process killed by signal N (Docker reports
    /// signals that way; so does a shell).
    pub signal: Option<i32>,
    /// Docker says the kernel's OOM killer struck in the container.
    pub oom_killed: bool,
    /// Still running (or restarting): it has not ended.
    pub running: bool,
}

impl ContainerExit {
    /// From an exit code and Docker's OOM flag.
    pub fn from_code(code: i64, oom_killed: bool) -> ContainerExit {
        let code = i32::try_from(code).unwrap_or(-1);
        let (code, signal) = if (129..=128 + 64).contains(&code) {
            (None, Some(code - 128))
        } else {
            (Some(code), None)
        };
        ContainerExit {
            code,
            signal,
            oom_killed,
            running: false,
        }
    }
}

/// How container `name` ended (or that it runs); `None` when it is gone.
pub async fn exit_of(
    client: &DockerClient,
    name: &str,
) -> Result<Option<ContainerExit>, DockerError> {
    let Some(inspect) = client.inspect_container(name).await? else {
        return Ok(None);
    };
    let Some(state) = inspect.state else {
        return Ok(Some(ContainerExit::default()));
    };
    let running = matches!(
        state.status,
        Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::RESTARTING)
    );
    let mut exit = ContainerExit::from_code(
        state.exit_code.unwrap_or(-1),
        state.oom_killed.unwrap_or(false),
    );
    exit.running = running;
    Ok(Some(exit))
}

/// Removes every container and volume labelled with `owner` (what a fabric
/// server that was killed left behind). Returns (containers, volumes) removed.
pub async fn sweep(client: &DockerClient, owner: &str) -> Result<(usize, usize), DockerError> {
    let filter = labels::label_filter(LABEL_OWNER, owner);
    let containers = client.list_containers(&filter).await?;
    let ids: Vec<String> = containers.into_iter().filter_map(|c| c.id).collect();
    // Sidecars first would be tidier, but removal is forced: order does not matter.
    for result in
        futures_util::future::join_all(ids.iter().map(|id| client.remove_container(id))).await
    {
        result?;
    }
    let volumes = client.list_volumes(&filter).await?;
    let names: Vec<String> = volumes.into_iter().map(|v| v.name).collect();
    for result in
        futures_util::future::join_all(names.iter().map(|v| client.remove_volume(v))).await
    {
        result?;
    }
    Ok((ids.len(), names.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AgentContainerSpec {
        AgentContainerSpec {
            name: "reactor-fabric-agent-box-1-abc".to_owned(),
            image: "reactor-fabric-agent:0123".to_owned(),
            cmd: None,
            env: vec![("A".to_owned(), "1".to_owned())],
            memory_mb: 64,
            cpu_cores: 0.5,
            pids_limit: DEFAULT_PIDS_LIMIT,
            tmp_mb: DEFAULT_TMP_MB,
            read_only_paths: vec!["/opt/tools".to_owned()],
            labels: HashMap::from([(LABEL_OWNER.to_owned(), "o-1".to_owned())]),
        }
    }

    #[test]
    fn agent_containers_are_locked_down() {
        let body = spec().body();
        assert_eq!(body.user.as_deref(), Some("65534:65534"));
        assert_eq!(body.labels.as_ref().unwrap()[LABEL_COMPONENT], "agent");
        assert_eq!(body.labels.as_ref().unwrap()[LABEL_OWNER], "o-1");
        let host = body.host_config.unwrap();
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.memory_swap, Some(64 << 20), "no swap");
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.pids_limit, Some(DEFAULT_PIDS_LIMIT));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_owned()])
        );
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.privileged, None);
        let mounts = host.mounts.unwrap();
        assert_eq!(mounts[0].target.as_deref(), Some(WORKSPACE));
        assert_eq!(
            mounts[0].source.as_deref(),
            Some("reactor-fabric-agent-box-1-abc-work")
        );
        assert_eq!(mounts[1].read_only, Some(true));
        let tmpfs = host.tmpfs.unwrap();
        assert!(tmpfs["/tmp"].contains("size=64m"));
        assert!(tmpfs[EXEC_DIR].contains("uid=65534"));
    }

    #[test]
    fn sidecars_share_the_agents_network_namespace_only() {
        let spec = spec();
        let sockets = SocketMount::Volume {
            name: "reactor-fabric-x-sockets".to_owned(),
            subdir: "box-1".to_owned(),
        };
        assert_eq!(sockets.dir_in_sidecar(), "/run/fabric/box-1");
        let body = spec.sidecar_body("reactor-fabric:1", vec!["proxy".to_owned()], &sockets);
        assert_eq!(body.labels.as_ref().unwrap()[LABEL_COMPONENT], "sidecar");
        let host = body.host_config.unwrap();
        assert_eq!(
            host.network_mode.as_deref(),
            Some("container:reactor-fabric-agent-box-1-abc")
        );
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(host.readonly_rootfs, Some(true));
        let mount = &host.mounts.unwrap()[0];
        assert_eq!(mount.read_only, Some(true));
        assert_eq!(mount.typ, Some(MountType::VOLUME));
    }

    #[test]
    fn exit_codes_past_128_read_as_signals() {
        assert_eq!(
            ContainerExit::from_code(137, false),
            ContainerExit {
                code: None,
                signal: Some(9),
                oom_killed: false,
                running: false
            }
        );
        assert_eq!(ContainerExit::from_code(3, false).code, Some(3));
        assert!(ContainerExit::from_code(137, true).oom_killed);
        assert_eq!(ContainerExit::from_code(0, false).code, Some(0));
    }
}
