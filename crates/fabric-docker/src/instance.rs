//! The instance lifecycle of REQUIREMENTS §3: [`start`], [`down`], [`list`].
//!
//! An instance `NAME` is a bridge network `reactor-fabric-NAME`, the containers
//! `reactor-fabric-NAME-orchestrator` (this binary's `serve`) and
//! `reactor-fabric-NAME-redis`, and a data volume for each, all labelled
//! `io.reactor-fabric.instance=NAME`. `down` and `list` go by that label only, so
//! agent and sidecar containers started later for the instance are covered too.
//!
//! # Who wins a concurrent `start`
//!
//! Docker does not keep network names unique (concurrent creates of one name all
//! succeed), but it does keep container names unique, atomically. So every
//! `start` creates its *own* network and refers to it by id; the orchestrator
//! container's name is the claim. The one whose create succeeds owns the
//! instance; the others get a name conflict, remove the network they made (by
//! id: never the winner's) and report that the instance exists. Volumes are
//! named per instance and created (idempotently) before the claim, so a loser
//! leaves them alone: they are the winner's. A start that fails after its claim
//! removes everything of the instance it created.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, EndpointSettings,
    HostConfig, Mount, MountType, NetworkingConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use rand::Rng;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::DockerClient;
use crate::config::{InstanceConfig, Limits};
use crate::error::DockerError;
use crate::image::{self, IMAGE_UID, ImageError, ImageReady, ORCHESTRATOR_PORT};
use crate::labels::{
    self, Component, LABEL_COMPONENT, LABEL_INSTANCE, container_name, instance_filter,
    network_name, volume_name,
};
use crate::stats::{self, Target, Usage};

/// Where the orchestrator keeps its state: the instance's Redis (REQUIREMENTS §2.2),
/// which it waits for before starting. `SqliteInVolume` is kept for an
/// orchestrator without Redis (its own volume, no waiting).
pub const ORCHESTRATOR_STORE: OrchestratorStore = OrchestratorStore::Redis;

/// See [`ORCHESTRATOR_STORE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrchestratorStore {
    /// `serve --data-dir /data` on the orchestrator's own volume.
    SqliteInVolume,
    /// `serve --store redis://reactor-fabric-NAME-redis:6379`.
    Redis,
}

/// Environment key of the orchestrator's store URL (read by `serve` once it has a Redis store).
pub const ENV_STORE: &str = "FABRIC_STORE";
/// Environment key naming the file `serve` reads the first admin's password from.
pub const ENV_ADMIN_PASSWORD_FILE: &str = "FABRIC_ADMIN_PASSWORD_FILE";
/// Where the password file is put in the orchestrator container (never in its config or env).
pub const ADMIN_PASSWORD_PATH: &str = "/run/fabric/admin-password";
/// Environment key naming the file `serve` reads its Redis store's password from.
pub const ENV_STORE_PASSWORD_FILE: &str = "FABRIC_STORE_PASSWORD_FILE";
/// Where the instance's Redis password is put in the orchestrator container.
pub const STORE_PASSWORD_PATH: &str = "/run/fabric/redis-password";
/// The Redis container's configuration file: its `requirepass` (so the
/// password is in neither its command line nor its environment).
const REDIS_CONF_PATH: &str = "/run/fabric/redis.conf";
/// Environment keys and paths that let the orchestrator run container agents
/// (read by `serve`; see `fabric_server::ContainerConfig`).
pub const ENV_INSTANCE: &str = "FABRIC_INSTANCE";
pub const ENV_SOCKET_VOLUME: &str = "FABRIC_SOCKET_VOLUME";
pub const ENV_SOCKET_DIR: &str = "FABRIC_SOCKET_DIR";
pub const ENV_PROXY_IMAGE: &str = "FABRIC_PROXY_IMAGE";
pub const ENV_AGENT_IMAGE: &str = "FABRIC_AGENT_IMAGE";
/// Where the shared socket volume is mounted in the orchestrator.
pub const SOCKET_DIR: &str = "/run/fabric-sockets";
/// The daemon's socket inside the orchestrator (`DOCKER_HOST` points there).
const DOCKER_SOCKET_IN_CONTAINER: &str = "/var/run/docker.sock";
/// The daemon's usual socket on the Docker host.
const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Lines of a container's log shown when it fails to become ready.
const LOG_TAIL: usize = 30;
/// How often readiness is polled; small, since `start` latency is the sum of these waits.
const POLL: Duration = Duration::from_millis(25);

/// A failed instance operation.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("{0}")]
    InvalidName(String),
    #[error(
        "instance {name:?} already exists: pick another name, or remove it first with 'reactor-fabric down --name {name}'"
    )]
    Exists { name: String },
    #[error(
        "the {component} of instance {name:?} was not ready within {} s; it was removed again{logs}",
        waited.as_secs()
    )]
    NotReady {
        name: String,
        component: Component,
        waited: Duration,
        logs: String,
    },
    #[error(
        "the {component} of instance {name:?} stopped ({detail}) before it was ready; it was removed again{logs}"
    )]
    Exited {
        name: String,
        component: Component,
        detail: String,
        logs: String,
    },
    #[error("start of instance {name:?} was interrupted; what it had created was removed")]
    Interrupted { name: String },
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl InstanceError {
    /// The Docker error underneath, if that is what this is (for exit codes).
    pub fn docker(&self) -> Option<&DockerError> {
        match self {
            InstanceError::Docker(e) | InstanceError::Image(ImageError::Docker(e)) => Some(e),
            _ => None,
        }
    }
}

/// What [`start`] needs besides the client.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub name: String,
    pub config: InstanceConfig,
    /// The `reactor-fabric` binary the orchestrator image is built from when
    /// `images.orchestrator` is not set (the running one, normally).
    pub binary: PathBuf,
    /// The first admin's password; handed to the orchestrator as a file, so it is
    /// in neither the container's config nor its environment.
    pub admin_password: String,
    /// Worker-node containers to add ([`start_nodes`]): with any, the nodes
    /// hold the Docker socket and run the container agents, the
    /// orchestrator does not.
    pub nodes: usize,
}

/// A started instance.
#[derive(Debug, Clone, Serialize)]
pub struct StartReport {
    pub name: String,
    pub url: String,
    pub network: String,
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
    pub images: Vec<ImageReady>,
    /// Where the time went, in milliseconds per phase.
    pub timings_ms: Vec<(String, u64)>,
    /// The orchestrator's image (worker nodes run it too).
    pub orchestrator_image: String,
    /// The default agent image, when the instance runs container agents.
    pub agent_image: Option<String>,
}

/// A removed instance.
#[derive(Debug, Clone, Serialize)]
pub struct DownReport {
    pub name: String,
    /// False: there was nothing of that name (which is still a success).
    pub existed: bool,
    pub containers: usize,
    pub networks: usize,
    pub volumes: usize,
}

/// One instance as [`list`] sees it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceSummary {
    pub name: String,
    pub status: InstanceStatus,
    pub url: Option<String>,
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub containers: Vec<InstanceContainer>,
    pub networks: usize,
    pub volumes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceContainer {
    pub name: String,
    pub component: Option<String>,
    /// Docker's state: created, running, restarting, exited, …
    pub state: String,
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
}

/// The state of an instance as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    /// Orchestrator and Redis run.
    Running,
    /// One of them runs, the other not.
    Degraded,
    /// Neither runs.
    Stopped,
    /// The orchestrator or Redis container is missing (a leftover: `down` it).
    Incomplete,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Running => "running",
            InstanceStatus::Degraded => "degraded",
            InstanceStatus::Stopped => "stopped",
            InstanceStatus::Incomplete => "incomplete",
        }
    }
}

/// A password for a new instance's admin: 24 letters and digits (~142 bits).
pub fn generate_password() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// What one `start` has made so far, for cleaning up after a failure.
#[derive(Debug, Default)]
struct Created {
    network_id: Option<String>,
    /// The orchestrator container is ours: the instance is ours to clean up.
    claimed: bool,
    containers: Vec<String>,
}

/// Stands the instance up and waits until it is ready (orchestrator `/readyz`
/// answers 200, Redis answers PING). If `interrupt` resolves first (Ctrl-C),
/// or anything fails, what this call created is removed before it returns.
pub async fn start(
    client: &DockerClient,
    options: &StartOptions,
    interrupt: impl Future<Output = ()>,
) -> Result<StartReport, InstanceError> {
    labels::validate_instance_name(&options.name).map_err(InstanceError::InvalidName)?;
    let name = options.name.as_str();
    let mut timings = Timings::new();
    // An existing instance fails before any image work.
    if client
        .inspect_container(&container_name(name, Component::Orchestrator))
        .await?
        .is_some()
    {
        return Err(InstanceError::Exists {
            name: name.to_owned(),
        });
    }
    timings.mark("check");
    let images = resolve_images(client, options).await?;
    timings.mark("images");

    let mut created = Created::default();
    let result = tokio::select! {
        r = create_and_start(client, options, &images, &mut created, &mut timings) => r,
        () = interrupt => Err(InstanceError::Interrupted { name: name.to_owned() }),
    };
    match result {
        Ok(url) => Ok(StartReport {
            name: name.to_owned(),
            url,
            network: network_name(name),
            containers: vec![
                container_name(name, Component::Orchestrator),
                container_name(name, Component::Redis),
            ],
            volumes: instance_volumes(name, &options.config),
            images: images.ready,
            timings_ms: timings.phases,
            orchestrator_image: images.orchestrator,
            agent_image: images.agent,
        }),
        Err(err) => {
            clean_up(client, name, &created).await;
            Err(err)
        }
    }
}

struct Images {
    orchestrator: String,
    redis: String,
    /// The default agent image, when the orchestrator runs container agents.
    agent: Option<String>,
    ready: Vec<ImageReady>,
}

async fn resolve_images(
    client: &DockerClient,
    options: &StartOptions,
) -> Result<Images, InstanceError> {
    let config = &options.config;
    let redis_hint = format!(
        "load one with 'docker load -i redis.tar', build one from this machine's redis-server with \
         'reactor-fabric image build-redis', or name an image you have in fabric.yml (images.redis) \
         or {}",
        crate::config::ENV_REDIS_IMAGE
    );
    let orchestrator = async {
        match &config.images.orchestrator {
            Some(image) => image::ensure_image(
                client,
                image,
                "build it with 'reactor-fabric image build-orchestrator', or leave images.orchestrator out to build it on start",
            )
            .await
            .map_err(InstanceError::from),
            None => image::ensure_orchestrator_image(client, &options.binary)
                .await
                .map_err(InstanceError::from),
        }
    };
    let redis = async {
        match image::ensure_image(client, &config.images.redis, &redis_hint).await {
            // The default image is not here and no registry answers: a Redis
            // image built on this machine (`image build-redis`) stands in.
            Err(missing @ DockerError::ImageMissing { .. })
                if config.images.redis == crate::config::DEFAULT_REDIS_IMAGE =>
            {
                let local = client.image_tags(image::LOCAL_REDIS_REPO).await?;
                let Some(local) = local.into_iter().next() else {
                    return Err(InstanceError::from(missing));
                };
                tracing::info!(image = %local, "{} is not available: using the local Redis image", crate::config::DEFAULT_REDIS_IMAGE);
                image::ensure_image(client, &local, &redis_hint)
                    .await
                    .map_err(InstanceError::from)
            }
            other => other.map_err(InstanceError::from),
        }
    };
    let agent = async {
        if !config.agents.containers {
            return Ok(None);
        }
        match &config.images.agent {
            Some(image) => image::ensure_image(
                client,
                image,
                "load it with 'docker load', or leave images.agent out to build one on start",
            )
            .await
            .map(Some)
            .map_err(InstanceError::from),
            // Built here, on the host with busybox; the orchestrator's image has none.
            None => match image::ensure_agent_image(client).await {
                Ok(ready) => Ok(Some(ready)),
                Err(e) => {
                    tracing::warn!(error = %e, "no default agent image: built-in shell agents at isolation container will not start");
                    Ok(None)
                }
            },
        }
    };
    let (orchestrator, redis, agent) = tokio::try_join!(orchestrator, redis, agent)?;
    let mut ready = vec![orchestrator.clone(), redis.clone()];
    ready.extend(agent.clone());
    Ok(Images {
        orchestrator: orchestrator.image,
        redis: redis.image,
        agent: agent.map(|a| a.image),
        ready,
    })
}

fn data_volumes(name: &str) -> [String; 2] {
    [
        volume_name(name, Component::Orchestrator),
        volume_name(name, Component::Redis),
    ]
}

/// `reactor-fabric-NAME-sockets`: where the orchestrator's sockets for the
/// sidecars of its container agents live (shared with each sidecar).
pub fn socket_volume_name(name: &str) -> String {
    format!("{}-{name}-sockets", crate::labels::NAME_PREFIX)
}

/// The volumes an instance has: data volumes, and the socket volume when its
/// orchestrator runs container agents.
fn instance_volumes(name: &str, config: &InstanceConfig) -> Vec<String> {
    let mut volumes = data_volumes(name).to_vec();
    if config.agents.containers {
        volumes.push(socket_volume_name(name));
    }
    volumes
}

async fn create_and_start(
    client: &DockerClient,
    options: &StartOptions,
    images: &Images,
    created: &mut Created,
    timings: &mut Timings,
) -> Result<String, InstanceError> {
    let name = options.name.as_str();
    let config = &options.config;
    let orchestrator = container_name(name, Component::Orchestrator);
    let redis = container_name(name, Component::Redis);
    let [orchestrator_volume, redis_volume] = data_volumes(name);

    let network_name = network_name(name);
    let sockets = async {
        if config.agents.containers {
            client
                .create_volume(
                    &socket_volume_name(name),
                    labels::labels(name, Component::Orchestrator),
                )
                .await
        } else {
            Ok(())
        }
    };
    let (network, v1, v2, v3) = tokio::join!(
        client.create_network(&network_name, labels::instance_label(name)),
        client.create_volume(
            &orchestrator_volume,
            labels::labels(name, Component::Orchestrator)
        ),
        client.create_volume(&redis_volume, labels::labels(name, Component::Redis)),
        sockets,
    );
    let network_id = network?;
    created.network_id = Some(network_id.clone());
    v1?;
    v2?;
    v3?;
    timings.mark("network+volumes");

    // The claim (see the module docs).
    let body = orchestrator_body(options, images, &network_id, &orchestrator_volume);
    match client.create_container(&orchestrator, body).await {
        Ok(_) => {
            created.claimed = true;
            created.containers.push(orchestrator.clone());
        }
        Err(e) if e.is_conflict() => {
            return Err(InstanceError::Exists {
                name: name.to_owned(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    let redis_body = redis_body(
        name,
        &images.redis,
        &network_id,
        &redis_volume,
        config.redis_limits(),
    );
    // Every link authenticated (NFR-SEC-1): the instance's Redis requires a
    // password of its own, made here, which only the two containers' files hold.
    let store_password = generate_password();
    let (redis_created, uploaded) = tokio::join!(
        client.create_container(&redis, redis_body),
        client.upload(
            &orchestrator,
            "/",
            secrets_archive(&options.admin_password, &store_password)?
        ),
    );
    redis_created?;
    created.containers.push(redis.clone());
    uploaded?;
    client
        .upload(&redis, "/", redis_conf_archive(&store_password)?)
        .await?;
    timings.mark("create");

    let deadline = Deadline::after(config.readiness_timeout());
    match ORCHESTRATOR_STORE {
        OrchestratorStore::SqliteInVolume => {
            let (a, b) = tokio::join!(
                client.start_container(&redis),
                client.start_container(&orchestrator)
            );
            a?;
            b?;
        }
        OrchestratorStore::Redis => {
            client.start_container(&redis).await?;
            wait_redis(client, name, deadline).await?;
            client.start_container(&orchestrator).await?;
        }
    }
    timings.mark("start");

    let port = published_port(client, &orchestrator).await?;
    let url = format!("http://127.0.0.1:{port}");
    let (orchestrator_ready, redis_ready) = tokio::join!(
        wait_orchestrator(client, name, port, deadline),
        wait_redis(client, name, deadline)
    );
    orchestrator_ready?;
    redis_ready?;
    timings.mark("ready");
    Ok(url)
}

fn orchestrator_body(
    options: &StartOptions,
    images: &Images,
    network_id: &str,
    volume: &str,
) -> ContainerCreateBody {
    let name = options.name.as_str();
    let image = images.orchestrator.as_str();
    let store_url = format!("redis://{}:6379", container_name(name, Component::Redis));
    let mut cmd = vec![
        "serve".to_owned(),
        "--listen".to_owned(),
        format!("0.0.0.0:{ORCHESTRATOR_PORT}"),
        "--data-dir".to_owned(),
        "/data".to_owned(),
    ];
    if ORCHESTRATOR_STORE == OrchestratorStore::Redis {
        cmd.extend(["--store".to_owned(), store_url.clone()]);
    }
    let port_key = format!("{ORCHESTRATOR_PORT}/tcp");
    let host_port = options
        .config
        .orchestrator
        .port
        .map(|p| p.to_string())
        .unwrap_or_default();
    let mut host = base_host_config(network_id, volume, options.config.orchestrator_limits());
    host.port_bindings = Some(HashMap::from([(
        port_key.clone(),
        Some(vec![PortBinding {
            host_ip: Some("127.0.0.1".to_owned()),
            // Empty: Docker picks a free port, atomically with publishing it.
            host_port: Some(host_port),
        }]),
    )]));
    // docker-init reaps the orphans of shell tasks, which `serve` as pid 1 would not.
    host.init = Some(true);
    let mut env = vec![
        format!("{ENV_STORE}={store_url}"),
        format!("{ENV_STORE_PASSWORD_FILE}={STORE_PASSWORD_PATH}"),
        format!("{ENV_ADMIN_PASSWORD_FILE}={ADMIN_PASSWORD_PATH}"),
        "FABRIC_LOG_FORMAT=json".to_owned(),
    ];
    // With worker nodes, they hold the socket: the orchestrator has none.
    if options.config.agents.containers && options.nodes == 0 {
        container_agents(
            name,
            &images.orchestrator,
            images.agent.as_deref(),
            &options.config,
            &mut host,
            &mut env,
        );
    }
    ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(cmd),
        env: Some(env),
        labels: Some(labels::labels(name, Component::Orchestrator)),
        exposed_ports: Some(vec![port_key]),
        host_config: Some(host),
        networking_config: Some(endpoint(network_id, "orchestrator")),
        ..Default::default()
    }
}

/// What the orchestrator needs to run container agents: the Docker API (the
/// host's socket, and its group so the orchestrator's user may use it; see
/// `config::AgentsConfig` for what that grants), the volume it shares with
/// sidecars, and the images and instance name for `serve`.
fn container_agents(
    name: &str,
    proxy_image: &str,
    agent_image: Option<&str>,
    config: &InstanceConfig,
    host: &mut HostConfig,
    env: &mut Vec<String>,
) {
    let socket = config
        .agents
        .docker_socket
        .clone()
        .or_else(|| {
            std::env::var("DOCKER_HOST")
                .ok()
                .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKER_SOCKET));
    // The socket's group on this host is the daemon's access group; a remote
    // daemon's socket cannot be looked at from here (then only root could use it).
    match std::fs::metadata(&socket) {
        Ok(meta) => {
            use std::os::unix::fs::MetadataExt;
            host.group_add = Some(vec![meta.gid().to_string()]);
        }
        Err(e) => tracing::warn!(socket = %socket.display(), error = %e,
            "cannot read the Docker socket's group: the orchestrator may not be allowed to use it"),
    }
    let mounts = host.mounts.get_or_insert_with(Vec::new);
    mounts.push(Mount {
        target: Some(DOCKER_SOCKET_IN_CONTAINER.to_owned()),
        source: Some(socket.to_string_lossy().into_owned()),
        typ: Some(MountType::BIND),
        ..Default::default()
    });
    mounts.push(Mount {
        target: Some(SOCKET_DIR.to_owned()),
        source: Some(socket_volume_name(name)),
        typ: Some(MountType::VOLUME),
        ..Default::default()
    });
    env.extend([
        format!("DOCKER_HOST=unix://{DOCKER_SOCKET_IN_CONTAINER}"),
        format!("{ENV_INSTANCE}={name}"),
        format!("{ENV_SOCKET_VOLUME}={}", socket_volume_name(name)),
        format!("{ENV_SOCKET_DIR}={SOCKET_DIR}"),
        format!("{ENV_PROXY_IMAGE}={proxy_image}"),
    ]);
    if let Some(agent) = agent_image {
        env.push(format!("{ENV_AGENT_IMAGE}={agent}"));
    }
}

/// Where a worker node's join token is, in its container.
const JOIN_TOKEN_PATH: &str = "/run/fabric/join-token";

/// `reactor-fabric-NAME-node-I`: worker node `I` (from 1) of an instance.
pub fn node_container_name(name: &str, index: usize) -> String {
    format!("{}-{index}", container_name(name, Component::Node))
}

/// What [`start_nodes`] needs of the started instance.
pub struct NodesOptions<'a> {
    pub name: &'a str,
    pub config: &'a InstanceConfig,
    pub count: usize,
    /// A join token admitting `count` nodes; handed to each as a file.
    pub join_token: &'a str,
    /// The orchestrator's image: the nodes run the same binary.
    pub image: &'a str,
    pub agent_image: Option<&'a str>,
}

/// Adds `count` worker-node containers to a started instance: each runs
/// `reactor-fabric node --join http://orchestrator:8080 --isolation
/// container` on the instance's network with a data volume of its own,
/// the Docker socket and the sidecars' socket volume. Returns their
/// container names; a failure removes the ones made.
pub async fn start_nodes(
    client: &DockerClient,
    options: &NodesOptions<'_>,
) -> Result<Vec<String>, InstanceError> {
    let name = options.name;
    // Docker takes a network's name where it takes its id.
    let network = network_name(name);
    let mut made = Vec::new();
    let result = async {
        for index in 1..=options.count {
            let container = node_container_name(name, index);
            let volume = format!("{container}-data");
            client
                .create_volume(&volume, labels::labels(name, Component::Node))
                .await?;
            let body = node_body(options, index, &network, &volume);
            client.create_container(&container, body).await?;
            made.push(container.clone());
            let mut fs = image::Rootfs::new();
            fs.dir("/run/fabric", 0o700, IMAGE_UID)?;
            fs.file(
                JOIN_TOKEN_PATH,
                options.join_token.as_bytes(),
                0o400,
                IMAGE_UID,
            )?;
            client.upload(&container, "/", fs.finish()?).await?;
            client.start_container(&container).await?;
        }
        Ok::<(), InstanceError>(())
    };
    match result.await {
        Ok(()) => Ok(made),
        Err(e) => {
            for container in &made {
                let _ = client.remove_container(container).await;
            }
            Err(e)
        }
    }
}

fn node_body(
    options: &NodesOptions<'_>,
    index: usize,
    network_id: &str,
    volume: &str,
) -> ContainerCreateBody {
    let name = options.name;
    let node = format!("node-{index}");
    let cmd = vec![
        "node".to_owned(),
        "--join".to_owned(),
        format!("http://orchestrator:{ORCHESTRATOR_PORT}"),
        "--token-file".to_owned(),
        JOIN_TOKEN_PATH.to_owned(),
        "--name".to_owned(),
        node.clone(),
        "--data-dir".to_owned(),
        "/data".to_owned(),
        "--isolation".to_owned(),
        "container".to_owned(),
    ];
    let mut host = base_host_config(network_id, volume, options.config.orchestrator_limits());
    // docker-init reaps what the node's processes leave.
    host.init = Some(true);
    let mut env = vec!["FABRIC_LOG_FORMAT=json".to_owned()];
    container_agents(
        name,
        options.image,
        options.agent_image,
        options.config,
        &mut host,
        &mut env,
    );
    ContainerCreateBody {
        image: Some(options.image.to_owned()),
        cmd: Some(cmd),
        env: Some(env),
        labels: Some(labels::labels(name, Component::Node)),
        host_config: Some(host),
        networking_config: Some(endpoint(network_id, &node)),
        ..Default::default()
    }
}

fn redis_body(
    name: &str,
    image: &str,
    network_id: &str,
    volume: &str,
    limits: Limits,
) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_owned()),
        // Works for the official image (its entrypoint passes these on) and ours alike.
        cmd: Some(
            [
                "redis-server",
                // `requirepass`, written there before the container starts.
                REDIS_CONF_PATH,
                "--appendonly",
                "yes",
                // The Redis store acknowledges a write once Redis has fsynced it.
                "--appendfsync",
                "always",
                "--dir",
                "/data",
                "--protected-mode",
                "no",
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        labels: Some(labels::labels(name, Component::Redis)),
        host_config: Some(base_host_config(network_id, volume, limits)),
        networking_config: Some(endpoint(network_id, "redis")),
        ..Default::default()
    }
}

fn base_host_config(network_id: &str, volume: &str, limits: Limits) -> HostConfig {
    HostConfig {
        network_mode: Some(network_id.to_owned()),
        mounts: Some(vec![Mount {
            target: Some("/data".to_owned()),
            source: Some(volume.to_owned()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        }]),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        }),
        memory: limits.memory_bytes,
        nano_cpus: limits.nano_cpus,
        ..Default::default()
    }
}

fn endpoint(network_id: &str, alias: &str) -> NetworkingConfig {
    NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            network_id.to_owned(),
            EndpointSettings {
                aliases: Some(vec![alias.to_owned()]),
                ..Default::default()
            },
        )])),
    }
}

/// A tar holding the password file, readable by the orchestrator's user only.
/// The orchestrator's secret files: the first admin's password and the
/// Redis password, readable by its user alone.
fn secrets_archive(admin_password: &str, store_password: &str) -> Result<Vec<u8>, ImageError> {
    let mut fs = image::Rootfs::new();
    fs.dir("/run/fabric", 0o700, IMAGE_UID)?;
    fs.file(
        ADMIN_PASSWORD_PATH,
        admin_password.as_bytes(),
        0o400,
        IMAGE_UID,
    )?;
    fs.file(
        STORE_PASSWORD_PATH,
        store_password.as_bytes(),
        0o400,
        IMAGE_UID,
    )?;
    fs.finish()
}

/// The Redis container's configuration: its password. Readable by any user
/// of that container, whose only program is Redis (the official image runs it
/// as its own `redis` user, a local build as root).
fn redis_conf_archive(store_password: &str) -> Result<Vec<u8>, ImageError> {
    let mut fs = image::Rootfs::new();
    fs.dir("/run/fabric", 0o755, 0)?;
    let conf = format!("requirepass {store_password}\n");
    fs.file(REDIS_CONF_PATH, conf.as_bytes(), 0o444, 0)?;
    fs.finish()
}

async fn published_port(client: &DockerClient, container: &str) -> Result<u16, InstanceError> {
    let inspect = client.inspect_container(container).await?;
    inspect
        .and_then(|c| c.network_settings?.ports)
        .and_then(|ports| host_port(&ports))
        .ok_or_else(|| {
            InstanceError::Docker(DockerError::Other {
                status: None,
                message: format!("{container} has no published port for {ORCHESTRATOR_PORT}/tcp"),
            })
        })
}

fn host_port(ports: &bollard::models::PortMap) -> Option<u16> {
    ports
        .get(&format!("{ORCHESTRATOR_PORT}/tcp"))?
        .as_ref()?
        .iter()
        .find_map(|b| b.host_port.as_deref()?.parse().ok())
}

async fn wait_orchestrator(
    client: &DockerClient,
    name: &str,
    port: u16,
    deadline: Deadline,
) -> Result<(), InstanceError> {
    let mut last_state_check = Instant::now();
    loop {
        if readyz(port).await {
            return Ok(());
        }
        if last_state_check.elapsed() > Duration::from_millis(250) {
            check_running(client, name, Component::Orchestrator).await?;
            last_state_check = Instant::now();
        }
        if deadline.passed() {
            return Err(not_ready(client, name, Component::Orchestrator, deadline).await);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `GET /readyz` answered 200 (plain HTTP/1.1: no client library needed for one line).
async fn readyz(port: u16) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn wait_redis(
    client: &DockerClient,
    name: &str,
    deadline: Deadline,
) -> Result<(), InstanceError> {
    let container = container_name(name, Component::Redis);
    loop {
        match client.exec(&container, &["redis-cli", "ping"]).await {
            // Up: it answers, and asks a password of this client, which has none.
            Ok(out) if out.stdout.contains("NOAUTH") || out.stderr.contains("NOAUTH") => {
                return Ok(());
            }
            Ok(_) => {}
            // Not running (yet, or any more): the state check below tells which.
            Err(DockerError::NameConflict { .. } | DockerError::NotRunning { .. }) => {}
            Err(e @ DockerError::DaemonUnreachable { .. }) => return Err(e.into()),
            Err(DockerError::Other { message, .. })
                if message.contains("executable file not found") =>
            {
                return Err(InstanceError::Docker(DockerError::Other {
                    status: None,
                    message: "the Redis image has no redis-cli, which readiness needs: use an image with it (the official redis images and 'reactor-fabric image build-redis' have it)".to_owned(),
                }));
            }
            Err(e) => tracing::debug!(error = %e, "redis ping"),
        }
        check_running(client, name, Component::Redis).await?;
        if deadline.passed() {
            return Err(not_ready(client, name, Component::Redis, deadline).await);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Fails with [`InstanceError::Exited`] when the container stopped or is restarting after a crash.
async fn check_running(
    client: &DockerClient,
    name: &str,
    component: Component,
) -> Result<(), InstanceError> {
    let container = container_name(name, component);
    let state = client
        .inspect_container(&container)
        .await?
        .and_then(|c| c.state);
    let Some(state) = state else {
        return Err(InstanceError::Exited {
            name: name.to_owned(),
            component,
            detail: "its container disappeared".to_owned(),
            logs: String::new(),
        });
    };
    let status = state.status.unwrap_or(ContainerStateStatusEnum::EMPTY);
    let stopped = matches!(
        status,
        ContainerStateStatusEnum::EXITED
            | ContainerStateStatusEnum::DEAD
            | ContainerStateStatusEnum::RESTARTING
    );
    if !stopped {
        return Ok(());
    }
    let mut detail = format!("exit code {}", state.exit_code.unwrap_or(-1));
    if state.oom_killed == Some(true) {
        detail.push_str(", killed for lack of memory: raise its memory_mb");
    }
    if let Some(error) = state.error.filter(|e| !e.is_empty()) {
        detail.push_str(&format!(", {error}"));
    }
    Err(InstanceError::Exited {
        name: name.to_owned(),
        component,
        detail,
        logs: log_tail(client, &container).await,
    })
}

async fn not_ready(
    client: &DockerClient,
    name: &str,
    component: Component,
    deadline: Deadline,
) -> InstanceError {
    let container = container_name(name, component);
    InstanceError::NotReady {
        name: name.to_owned(),
        component,
        waited: deadline.timeout,
        logs: log_tail(client, &container).await,
    }
}

/// When readiness waits give up, and the timeout that set it (for the message).
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    fn after(timeout: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + timeout,
            timeout,
        }
    }

    fn passed(self) -> bool {
        Instant::now() >= self.at
    }
}

/// `\n--- last N log lines of CONTAINER ---\n…`, or nothing when there are none.
async fn log_tail(client: &DockerClient, container: &str) -> String {
    match client.logs_tail(container, LOG_TAIL).await {
        Ok(text) if !text.trim().is_empty() => format!(
            "\n--- last {LOG_TAIL} log lines of {container} ---\n{}",
            text.trim_end()
        ),
        _ => String::new(),
    }
}

/// Removes what a failed start made: only its own network unless it had claimed the instance.
async fn clean_up(client: &DockerClient, name: &str, created: &Created) {
    if created.claimed {
        let removals = created
            .containers
            .iter()
            .map(|c| client.remove_container(c));
        for result in futures_util::future::join_all(removals).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "cleanup: container");
            }
        }
    }
    if let Some(id) = &created.network_id
        && let Err(e) = client.remove_network(id).await
    {
        tracing::warn!(error = %e, "cleanup: network");
    }
    if created.claimed {
        for volume in data_volumes(name)
            .into_iter()
            .chain([socket_volume_name(name)])
        {
            if let Err(e) = client.remove_volume(&volume).await {
                tracing::warn!(error = %e, "cleanup: volume");
            }
        }
    }
}

/// Removes every container, network and volume labelled with instance `name`.
/// Nothing to remove is a success (`existed: false`).
pub async fn down(client: &DockerClient, name: &str) -> Result<DownReport, InstanceError> {
    labels::validate_instance_name(name).map_err(InstanceError::InvalidName)?;
    let filter = instance_filter(Some(name));
    let (containers, networks, volumes) = tokio::try_join!(
        client.list_containers(&filter),
        client.list_networks(&filter),
        client.list_volumes(&filter),
    )?;
    let ids: Vec<String> = containers.into_iter().filter_map(|c| c.id).collect();
    all_ok(futures_util::future::join_all(ids.iter().map(|id| client.remove_container(id))).await)?;
    let network_ids: Vec<String> = networks.into_iter().filter_map(|n| n.id).collect();
    all_ok(
        futures_util::future::join_all(network_ids.iter().map(|id| client.remove_network(id)))
            .await,
    )?;
    let volume_names: Vec<String> = volumes.into_iter().map(|v| v.name).collect();
    all_ok(
        futures_util::future::join_all(volume_names.iter().map(|v| client.remove_volume(v))).await,
    )?;
    Ok(DownReport {
        name: name.to_owned(),
        existed: !(ids.is_empty() && network_ids.is_empty() && volume_names.is_empty()),
        containers: ids.len(),
        networks: network_ids.len(),
        volumes: volume_names.len(),
    })
}

fn all_ok(results: Vec<Result<bool, DockerError>>) -> Result<(), DockerError> {
    results.into_iter().try_for_each(|r| r.map(|_| ()))
}

/// Every instance on this Docker host (anything carrying the instance label),
/// with its containers and their CPU and memory use, sorted by name.
pub async fn list(client: &DockerClient) -> Result<Vec<InstanceSummary>, DockerError> {
    let filter = instance_filter(None);
    let (containers, networks, volumes) = tokio::try_join!(
        client.list_containers(&filter),
        client.list_networks(&filter),
        client.list_volumes(&filter),
    )?;
    let mut instances: BTreeMap<String, InstanceSummary> = BTreeMap::new();
    for n in &networks {
        if let Some(name) = n.labels.as_ref().and_then(|l| l.get(LABEL_INSTANCE)) {
            summary_of(&mut instances, name).networks += 1;
        }
    }
    for v in &volumes {
        if let Some(name) = v.labels.get(LABEL_INSTANCE) {
            summary_of(&mut instances, name).volumes += 1;
        }
    }

    // Measure the running containers, all at once.
    let running: Vec<&bollard::models::ContainerSummary> = containers
        .iter()
        .filter(|c| c.state == Some(ContainerSummaryStateEnum::RUNNING))
        .collect();
    let pids = futures_util::future::join_all(running.iter().map(|c| async {
        let id = c.id.clone().unwrap_or_default();
        let pid = match client.inspect_container(&id).await {
            Ok(Some(inspect)) => inspect.state.and_then(|s| s.pid).filter(|p| *p > 0),
            _ => None,
        };
        Target { id, pid }
    }))
    .await;
    let usage: HashMap<String, Usage> = pids
        .iter()
        .map(|t| t.id.clone())
        .zip(stats::usage_of(client, &pids).await)
        .collect();

    for c in &containers {
        let Some(labels) = &c.labels else { continue };
        let Some(instance) = labels.get(LABEL_INSTANCE) else {
            continue;
        };
        let summary = summary_of(&mut instances, instance);
        let component = labels.get(LABEL_COMPONENT).cloned();
        let u =
            c.id.as_ref()
                .and_then(|id| usage.get(id))
                .copied()
                .unwrap_or_default();
        if component.as_deref() == Some(Component::Orchestrator.as_str()) {
            summary.url = c.ports.as_ref().and_then(|ports| {
                ports
                    .iter()
                    .find(|p| p.private_port == ORCHESTRATOR_PORT && p.public_port.is_some())
                    .and_then(|p| {
                        let ip = match p.ip.as_deref() {
                            Some("0.0.0.0") | None => "127.0.0.1",
                            Some(ip) => ip,
                        };
                        Some(format!("http://{ip}:{}", p.public_port?))
                    })
            });
        }
        summary.containers.push(InstanceContainer {
            name: c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_default(),
            component,
            state: c
                .state
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".to_owned()),
            cpu_percent: u.cpu_percent,
            memory_bytes: u.memory_bytes,
        });
    }

    for summary in instances.values_mut() {
        summary.containers.sort_by(|a, b| a.name.cmp(&b.name));
        summary.status = status_of(&summary.containers);
        let measured: Vec<&InstanceContainer> = summary
            .containers
            .iter()
            .filter(|c| c.state == "running")
            .collect();
        summary.cpu_percent = sum(measured.iter().map(|c| c.cpu_percent));
        summary.memory_bytes = sum(measured.iter().map(|c| c.memory_bytes));
    }
    Ok(instances.into_values().collect())
}

/// The summary of instance `name`, made empty on first sight.
fn summary_of<'a>(
    instances: &'a mut BTreeMap<String, InstanceSummary>,
    name: &str,
) -> &'a mut InstanceSummary {
    instances
        .entry(name.to_owned())
        .or_insert_with(|| InstanceSummary {
            name: name.to_owned(),
            status: InstanceStatus::Incomplete,
            url: None,
            cpu_percent: None,
            memory_bytes: None,
            containers: Vec::new(),
            networks: 0,
            volumes: 0,
        })
}

fn sum<T: std::iter::Sum<T> + Copy>(values: impl Iterator<Item = Option<T>>) -> Option<T> {
    let values: Vec<T> = values.flatten().collect();
    (!values.is_empty()).then(|| values.into_iter().sum())
}

fn status_of(containers: &[InstanceContainer]) -> InstanceStatus {
    let state = |component: Component| {
        containers
            .iter()
            .find(|c| c.component.as_deref() == Some(component.as_str()))
            .map(|c| c.state == "running")
    };
    match (state(Component::Orchestrator), state(Component::Redis)) {
        (Some(true), Some(true)) => InstanceStatus::Running,
        (Some(false), Some(false)) => InstanceStatus::Stopped,
        (Some(_), Some(_)) => InstanceStatus::Degraded,
        _ => InstanceStatus::Incomplete,
    }
}

/// Phase durations of a `start`.
struct Timings {
    last: Instant,
    phases: Vec<(String, u64)>,
}

impl Timings {
    fn new() -> Timings {
        Timings {
            last: Instant::now(),
            phases: Vec::new(),
        }
    }

    fn mark(&mut self, phase: &str) {
        let now = Instant::now();
        let ms = u64::try_from(now.duration_since(self.last).as_millis()).unwrap_or(u64::MAX);
        self.phases.push((phase.to_owned(), ms));
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(component: &str, state: &str) -> InstanceContainer {
        InstanceContainer {
            name: format!("x-{component}"),
            component: Some(component.to_owned()),
            state: state.to_owned(),
            cpu_percent: None,
            memory_bytes: None,
        }
    }

    #[test]
    fn status_follows_the_core_containers() {
        let running = [
            container("orchestrator", "running"),
            container("redis", "running"),
        ];
        assert_eq!(status_of(&running), InstanceStatus::Running);
        let degraded = [
            container("orchestrator", "exited"),
            container("redis", "running"),
        ];
        assert_eq!(status_of(&degraded), InstanceStatus::Degraded);
        let stopped = [
            container("orchestrator", "exited"),
            container("redis", "created"),
        ];
        assert_eq!(status_of(&stopped), InstanceStatus::Stopped);
        assert_eq!(
            status_of(&[container("redis", "running")]),
            InstanceStatus::Incomplete
        );
        // Agents do not change the verdict.
        let with_agent = [
            container("agent", "exited"),
            container("orchestrator", "running"),
            container("redis", "running"),
        ];
        assert_eq!(status_of(&with_agent), InstanceStatus::Running);
    }

    #[test]
    fn passwords_are_long_and_random() {
        let a = generate_password();
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, generate_password());
    }

    #[test]
    fn the_orchestrator_gets_no_password_in_its_config() {
        let options = StartOptions {
            name: "t".to_owned(),
            config: InstanceConfig::default(),
            binary: PathBuf::from("/bin/true"),
            admin_password: "sekrit-password".to_owned(),
            nodes: 0,
        };
        let images = Images {
            orchestrator: "img".to_owned(),
            redis: "redis".to_owned(),
            agent: Some("agent-img".to_owned()),
            ready: Vec::new(),
        };
        let body = orchestrator_body(&options, &images, "netid", "vol");
        let text = serde_json::to_string(&body).unwrap();
        assert!(!text.contains("sekrit-password"));
        assert!(text.contains("FABRIC_STORE=redis://reactor-fabric-t-redis:6379"));
        assert!(text.contains("FABRIC_STORE_PASSWORD_FILE=/run/fabric/redis-password"));
        assert!(text.contains("FABRIC_INSTANCE=t"));
        assert!(text.contains("FABRIC_PROXY_IMAGE=img"));
        assert!(text.contains("FABRIC_AGENT_IMAGE=agent-img"));
        assert!(text.contains("FABRIC_SOCKET_VOLUME=reactor-fabric-t-sockets"));
        let host = body.host_config.unwrap();
        let mounts = host.mounts.clone().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.target.as_deref() == Some("/var/run/docker.sock")),
            "{mounts:?}"
        );
        let binding = &host.port_bindings.unwrap()["8080/tcp"].clone().unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some(""));
    }

    /// With worker nodes the nodes hold the Docker socket and the
    /// orchestrator does not; a node's join token is in no config.
    #[test]
    fn with_nodes_the_socket_goes_to_the_nodes() {
        let config = InstanceConfig::default();
        let options = StartOptions {
            name: "t".to_owned(),
            config: config.clone(),
            binary: PathBuf::from("/bin/true"),
            admin_password: "pw".to_owned(),
            nodes: 2,
        };
        let images = Images {
            orchestrator: "img".to_owned(),
            redis: "redis".to_owned(),
            agent: Some("agent-img".to_owned()),
            ready: Vec::new(),
        };
        let has_socket = |host: &HostConfig| {
            host.mounts
                .iter()
                .flatten()
                .any(|m| m.target.as_deref() == Some("/var/run/docker.sock"))
        };
        let orchestrator = orchestrator_body(&options, &images, "netid", "vol");
        assert!(!has_socket(orchestrator.host_config.as_ref().unwrap()));
        let nodes = NodesOptions {
            name: "t",
            config: &config,
            count: 2,
            join_token: "rfj_abcd1234_secret",
            image: "img",
            agent_image: Some("agent-img"),
        };
        let node = node_body(&nodes, 2, "netid", "t-node-2-data");
        assert!(has_socket(node.host_config.as_ref().unwrap()));
        let text = serde_json::to_string(&node).unwrap();
        assert!(!text.contains("rfj_abcd1234_secret"), "{text}");
        assert!(text.contains("\"--name\",\"node-2\""), "{text}");
        assert!(text.contains("http://orchestrator:8080"), "{text}");
        assert!(text.contains("FABRIC_SOCKET_VOLUME=reactor-fabric-t-sockets"));
        assert_eq!(node_container_name("t", 2), "reactor-fabric-t-node-2");
    }
}
