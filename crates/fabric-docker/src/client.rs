//! [`DockerClient`]: a thin bollard wrapper whose every call returns [`DockerError`].
//!
//! It holds the operations the instance lifecycle needs and that the container
//! runtime for agents will need (create/start/remove containers, networks,
//! volumes, images, exec, logs, archives). For anything else, [`DockerClient::api`]
//! gives the bollard handle and [`DockerError::from_bollard`] maps its errors.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStatsResponse, ContainerSummary,
    ContainerUpdateBody, ExecConfig, ImageInspect, Network, NetworkCreateRequest, Volume,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};

use crate::error::DockerError;

/// How long [`DockerClient::start_container`] waits for a network name to
/// stop being ambiguous (a racing `start` removes its network within ms).
const AMBIGUOUS_NETWORK_WAIT: Duration = Duration::from_secs(10);

/// How long connecting (the first `/version` request) may take before the daemon counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected Docker client (API version negotiated with the daemon).
#[derive(Debug, Clone)]
pub struct DockerClient {
    docker: Docker,
}

/// Output of a command run with [`DockerClient::exec`].
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i64>,
}

/// A command to start with [`DockerClient::exec_start`].
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub cmd: Vec<String>,
    /// `KEY=value` entries, on top of the container's own environment.
    pub env: Vec<String>,
    /// Absolute path inside the container; the image's working dir when `None`.
    pub working_dir: Option<String>,
    /// `uid[:gid]`; the container's user when `None`.
    pub user: Option<String>,
}

/// A started exec: its id (for [`DockerClient::exec_status`]) and its output,
/// stdout and stderr frames in the order the daemon sent them. The stream ends
/// when every holder of the command's stdout and stderr has closed them.
pub struct ExecStarted {
    pub id: String,
    pub output: BoxStream<'static, Result<LogOutput, DockerError>>,
}

impl std::fmt::Debug for ExecStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecStarted").field("id", &self.id).finish()
    }
}

/// Whether an exec still runs, and its exit code once it has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecStatus {
    pub running: bool,
    pub exit_code: Option<i64>,
}

/// Resource limits of a running container, as `docker update` sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsUpdate {
    /// Memory limit; swap is set to the same value (no swap).
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
}

impl DockerClient {
    /// Connects to `DOCKER_HOST` (`unix://…` or `tcp://…`), else the default socket
    /// (`/var/run/docker.sock`), and negotiates the API version, so a daemon that is
    /// not there fails here with [`DockerError::DaemonUnreachable`].
    pub async fn connect() -> Result<DockerClient, DockerError> {
        let host = std::env::var("DOCKER_HOST").ok();
        DockerClient::connect_to(host.as_deref()).await
    }

    /// Connects to `host` (`unix://…` or `tcp://…`; the default socket when `None`
    /// or empty) and negotiates the API version, like [`DockerClient::connect`].
    pub async fn connect_to(host: Option<&str>) -> Result<DockerClient, DockerError> {
        let docker = match host {
            Some(host) if !host.is_empty() => Docker::connect_with_host(host),
            _ => Docker::connect_with_local_defaults(),
        }
        .map_err(|e| DockerError::from_bollard(e, "connect"))?;
        // bollard speaks a newer API than older daemons (20.10 tops out at 1.41):
        // negotiate down, which also proves the daemon is there.
        let docker = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| DockerError::DaemonUnreachable {
                detail: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            })?
            .map_err(|e| match DockerError::from_bollard(e, "connect") {
                // Anything going wrong on the very first request means there is no usable daemon.
                DockerError::Other { message, .. } => {
                    DockerError::DaemonUnreachable { detail: message }
                }
                other => other,
            })?;
        Ok(DockerClient { docker })
    }

    /// `GET /_ping`: the daemon answers (cheap; for checks before real work).
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.docker.ping().await.map(|_| ()).map_err(|e| {
            match DockerError::from_bollard(e, "ping") {
                DockerError::Other { message, .. } => {
                    DockerError::DaemonUnreachable { detail: message }
                }
                other => other,
            }
        })
    }

    /// The bollard handle, for calls this wrapper does not have.
    pub fn api(&self) -> &Docker {
        &self.docker
    }

    // ---- containers ----

    /// Creates a container named `name`; a taken name is [`DockerError::NameConflict`]
    /// (Docker makes that check atomically, which is what concurrent starts rely on).
    pub async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, DockerError> {
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| DockerError::from_bollard(e, &format!("container {name}")))?;
        Ok(created.id)
    }

    pub async fn start_container(&self, name: &str) -> Result<(), DockerError> {
        // Docker resolves a container's network by *name* when it starts it,
        // and does not keep network names unique: while a concurrent `start`
        // of the same instance holds its own (soon removed) network of that
        // name, the start fails as "ambiguous". Wait that window out.
        let deadline = tokio::time::Instant::now() + AMBIGUOUS_NETWORK_WAIT;
        let mut pause = Duration::from_millis(10);
        loop {
            match self.docker.start_container(name, None).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let err = DockerError::from_bollard(e, &format!("start container {name}"));
                    if !err.to_string().contains("is ambiguous")
                        || tokio::time::Instant::now() > deadline
                    {
                        return Err(err);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
            }
        }
    }

    /// Stops a running container: SIGTERM (or the image's stop signal), then
    /// SIGKILL after `grace`. A container that is not running (or not there) is fine.
    pub async fn stop_container(&self, name: &str, grace: Duration) -> Result<(), DockerError> {
        let seconds = i32::try_from(grace.as_secs().max(u64::from(grace.subsec_nanos() > 0)))
            .unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(seconds).build();
        match self.docker.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => match DockerError::from_bollard(e, &format!("stop container {name}")) {
                e if e.is_not_found() => Ok(()),
                e => Err(e),
            },
        }
    }

    /// Sends `signal` (`SIGKILL`, `SIGTERM`, …) to a container's main process.
    pub async fn kill_container(&self, name: &str, signal: &str) -> Result<(), DockerError> {
        let options = KillContainerOptionsBuilder::default()
            .signal(signal)
            .build();
        self.docker
            .kill_container(name, Some(options))
            .await
            .map_err(|e| DockerError::from_bollard(e, &format!("kill container {name}")))
    }

    /// Waits until the container is not running and returns its exit code
    /// (`None` when the container was removed meanwhile).
    pub async fn wait_container(&self, name: &str) -> Result<Option<i64>, DockerError> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let context = format!("wait for container {name}");
        match self.docker.wait_container(name, Some(options)).next().await {
            Some(Ok(response)) => Ok(Some(response.status_code)),
            // bollard reports a non-zero exit as an error.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(Some(code)),
            Some(Err(e)) => match DockerError::from_bollard(e, &context) {
                e if e.is_not_found() => Ok(None),
                e => Err(e),
            },
            None => Ok(None),
        }
    }

    /// Changes the memory (swap = memory: none), CPU and pids limits of a container.
    pub async fn update_limits(&self, name: &str, limits: LimitsUpdate) -> Result<(), DockerError> {
        let body = ContainerUpdateBody {
            memory: Some(limits.memory_bytes),
            memory_swap: Some(limits.memory_bytes),
            nano_cpus: Some(limits.nano_cpus),
            pids_limit: Some(limits.pids_limit),
            ..Default::default()
        };
        self.docker
            .update_container(name, body)
            .await
            .map_err(|e| DockerError::from_bollard(e, &format!("update container {name}")))
    }

    /// Removes a container whatever its state, with its anonymous volumes.
    /// Returns false when there was none.
    pub async fn remove_container(&self, name: &str) -> Result<bool, DockerError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(true),
            Err(e) => match DockerError::from_bollard(e, &format!("remove container {name}")) {
                e if e.is_not_found() => Ok(false),
                // "removal of container x is already in progress": someone else is removing it.
                DockerError::NameConflict { .. } => Ok(true),
                e => Err(e),
            },
        }
    }

    /// The container, or `None` when there is no such container.
    pub async fn inspect_container(
        &self,
        name: &str,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) => match DockerError::from_bollard(e, &format!("inspect container {name}")) {
                e if e.is_not_found() => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Every container (running or not) matching `filters` (see [`crate::labels::instance_filter`]).
    pub async fn list_containers(
        &self,
        filters: &HashMap<String, Vec<String>>,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(|e| DockerError::from_bollard(e, "list containers"))
    }

    /// The last `lines` lines of a container's stdout and stderr, interleaved.
    pub async fn logs_tail(&self, name: &str, lines: usize) -> Result<String, DockerError> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let chunks: Vec<_> = self
            .docker
            .logs(name, Some(options))
            .try_collect()
            .await
            .map_err(|e| DockerError::from_bollard(e, &format!("logs of {name}")))?;
        Ok(chunks
            .iter()
            .map(|c| String::from_utf8_lossy(&c.clone().into_bytes()).into_owned())
            .collect())
    }

    /// Copies a tar archive into a container (created or running), unpacked at `path`.
    pub async fn upload(&self, name: &str, path: &str, tar: Vec<u8>) -> Result<(), DockerError> {
        let options = UploadToContainerOptionsBuilder::default()
            .path(path)
            .build();
        self.docker
            .upload_to_container(name, Some(options), bollard::body_full(tar.into()))
            .await
            .map_err(|e| DockerError::from_bollard(e, &format!("copy into {name}")))
    }

    /// Runs `cmd` in a running container and collects its output.
    pub async fn exec(&self, name: &str, cmd: &[&str]) -> Result<ExecOutput, DockerError> {
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
            ..Default::default()
        };
        let context = format!("exec in {name}");
        let created = self
            .docker
            .create_exec(name, config)
            .await
            .map_err(|e| DockerError::from_bollard(e, &context))?;
        let started = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| DockerError::from_bollard(e, &context))?;
        let mut out = ExecOutput {
            stdout: String::new(),
            stderr: String::new(),
            exit_code: None,
        };
        if let bollard::exec::StartExecResults::Attached { mut output, .. } = started {
            while let Some(chunk) = output.next().await {
                match chunk.map_err(|e| DockerError::from_bollard(e, &context))? {
                    bollard::container::LogOutput::StdErr { message } => {
                        out.stderr.push_str(&String::from_utf8_lossy(&message));
                    }
                    other => out
                        .stdout
                        .push_str(&String::from_utf8_lossy(&other.into_bytes())),
                }
            }
        }
        out.exit_code = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| DockerError::from_bollard(e, &context))?
            .exit_code;
        Ok(out)
    }

    /// Starts `spec` in a running container with stdout and stderr attached
    /// (no TTY, no stdin); the output streams while the command runs.
    pub async fn exec_start(&self, name: &str, spec: ExecSpec) -> Result<ExecStarted, DockerError> {
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(false),
            tty: Some(false),
            cmd: Some(spec.cmd),
            env: Some(spec.env),
            working_dir: spec.working_dir,
            user: spec.user,
            ..Default::default()
        };
        let context = format!("exec in {name}");
        let created = self
            .docker
            .create_exec(name, config)
            .await
            .map_err(|e| DockerError::from_bollard(e, &context))?;
        let started = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| DockerError::from_bollard(e, &context))?;
        let output = match started {
            bollard::exec::StartExecResults::Attached { output, .. } => output
                .map(move |item| item.map_err(|e| DockerError::from_bollard(e, "exec output")))
                .boxed(),
            bollard::exec::StartExecResults::Detached => futures_util::stream::empty().boxed(),
        };
        Ok(ExecStarted {
            id: created.id,
            output,
        })
    }

    /// Whether exec `id` still runs, and its exit code once it has ended.
    pub async fn exec_status(&self, id: &str) -> Result<ExecStatus, DockerError> {
        let inspect = self
            .docker
            .inspect_exec(id)
            .await
            .map_err(|e| DockerError::from_bollard(e, &format!("inspect exec {id}")))?;
        Ok(ExecStatus {
            running: inspect.running.unwrap_or(false),
            exit_code: inspect.exit_code,
        })
    }

    /// One stats sample from the daemon (`stream=false`: it includes the previous
    /// sample, so CPU use can be computed). Slow: dockerd answers on its 1 s collection tick.
    pub async fn stats_once(&self, name: &str) -> Result<ContainerStatsResponse, DockerError> {
        let options = StatsOptionsBuilder::default().stream(false).build();
        let context = format!("stats of {name}");
        self.docker
            .stats(name, Some(options))
            .next()
            .await
            .ok_or_else(|| DockerError::Other {
                status: None,
                message: format!("{context}: no sample"),
            })?
            .map_err(|e| DockerError::from_bollard(e, &context))
    }

    // ---- networks and volumes ----

    /// Creates a network and returns its id. Docker does not make network names
    /// unique (concurrent creates of one name all succeed), so callers that need a
    /// winner must decide it elsewhere (a container name) and use the id.
    pub async fn create_network(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<String, DockerError> {
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            labels: Some(labels),
            ..Default::default()
        };
        let created = self
            .docker
            .create_network(request)
            .await
            .map_err(|e| DockerError::from_bollard(e, &format!("network {name}")))?;
        Ok(created.id)
    }

    /// Removes a network by id or name; false when there was none.
    pub async fn remove_network(&self, id: &str) -> Result<bool, DockerError> {
        match self.docker.remove_network(id).await {
            Ok(()) => Ok(true),
            Err(e) => match DockerError::from_bollard(e, &format!("remove network {id}")) {
                e if e.is_not_found() => Ok(false),
                e => Err(e),
            },
        }
    }

    pub async fn list_networks(
        &self,
        filters: &HashMap<String, Vec<String>>,
    ) -> Result<Vec<Network>, DockerError> {
        let options = ListNetworksOptionsBuilder::default()
            .filters(filters)
            .build();
        self.docker
            .list_networks(Some(options))
            .await
            .map_err(|e| DockerError::from_bollard(e, "list networks"))
    }

    /// Creates a named volume (or returns the existing one: Docker treats that as success).
    pub async fn create_volume(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), DockerError> {
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map(|_| ())
            .map_err(|e| DockerError::from_bollard(e, &format!("volume {name}")))
    }

    /// Removes a volume; false when there was none.
    pub async fn remove_volume(&self, name: &str) -> Result<bool, DockerError> {
        let options = RemoveVolumeOptionsBuilder::default().force(true).build();
        match self.docker.remove_volume(name, Some(options)).await {
            Ok(()) => Ok(true),
            Err(e) => match DockerError::from_bollard(e, &format!("remove volume {name}")) {
                e if e.is_not_found() => Ok(false),
                e => Err(e),
            },
        }
    }

    pub async fn list_volumes(
        &self,
        filters: &HashMap<String, Vec<String>>,
    ) -> Result<Vec<Volume>, DockerError> {
        let options = ListVolumesOptionsBuilder::default()
            .filters(filters)
            .build();
        let list = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| DockerError::from_bollard(e, "list volumes"))?;
        Ok(list.volumes.unwrap_or_default())
    }

    // ---- images ----

    /// The image, or `None` when it is not on this machine.
    pub async fn inspect_image(&self, image: &str) -> Result<Option<ImageInspect>, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(Some(i)),
            Err(e) => match DockerError::from_bollard(e, &format!("inspect image {image}")) {
                e if e.is_not_found() => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Tags (`repo:tag`) of the images of `repo` on this machine, newest first.
    pub async fn image_tags(&self, repo: &str) -> Result<Vec<String>, DockerError> {
        let filters = HashMap::from([("reference", vec![repo])]);
        let options = ListImagesOptionsBuilder::new().filters(&filters).build();
        let mut images = self
            .docker
            .list_images(Some(options))
            .await
            .map_err(|e| DockerError::from_bollard(e, "list images"))?;
        images.sort_by_key(|i| std::cmp::Reverse(i.created));
        let prefix = format!("{repo}:");
        Ok(images
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .filter(|t| t.starts_with(&prefix))
            .collect())
    }

    /// Pulls `image` from its registry; the daemon's refusal comes back as its message.
    pub async fn pull_image(&self, image: &str) -> Result<(), DockerError> {
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let context = format!("pull {image}");
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(item) = progress.next().await {
            item.map_err(|e| DockerError::from_bollard(e, &context))?;
        }
        Ok(())
    }

    /// `docker import`: makes image `repo:tag` from a root filesystem tar, applying
    /// Dockerfile `changes` (`ENTRYPOINT`, `CMD`, `ENV`, `USER`, `LABEL`, `EXPOSE`, …).
    pub async fn import_image(
        &self,
        repo: &str,
        tag: &str,
        changes: Vec<String>,
        rootfs: Vec<u8>,
    ) -> Result<(), DockerError> {
        let options = CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(repo)
            .tag(tag)
            .changes(changes)
            .build();
        let context = format!("import {repo}:{tag}");
        let mut progress =
            self.docker
                .create_image(Some(options), Some(bollard::body_full(rootfs.into())), None);
        while let Some(item) = progress.next().await {
            item.map_err(|e| DockerError::from_bollard(e, &context))?;
        }
        Ok(())
    }
}
