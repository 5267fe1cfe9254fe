//! One run of an agent: what it runs, where, and how it is cleaned up.
//!
//! | agent | isolation `none` | isolation `process` | isolation `container` |
//! |---|---|---|---|
//! | built-in shell | workers in the fabric run each task's commands as host processes | the same workers run them inside the agent's sandbox | the same workers run them in the agent's container, one `docker exec` each |
//! | `command` | a host process group | a program in the agent's sandbox | the container's main process (`sh -c`, default image) |
//! | `image` | (refused by validation) | (refused) | the image's own command (or `command`) as the container's main process |
//! | `external` | nothing: it connects from elsewhere | (refused by validation) | (refused) |
//!
//! A `process` session owns a [`Sandbox`] and the fabric-side listeners
//! inside its network namespace: the API at `FABRIC_URL`, the inference
//! endpoint at `localhost:11434` and the egress proxy. Cleanup kills every
//! process, removes the cgroups, the network namespace (with the sandbox's
//! last process and listener) and the working dir.
//!
//! A `container` session owns an agent container with its sidecar, and the
//! fabric-side listeners on Unix sockets the sidecar forwards the same three
//! ports to (see `container`). The container stopping (killed, crashed, OOM)
//! ends the session like a program's exit; cleanup removes the sidecar, the
//! container, its volume and the socket directory.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabric_agent::AgentError;
use fabric_core::agent::{AgentConfig, IsolationLevel, ResourceUsage, parse_egress};
use fabric_core::{AgentId, TenantId};
use fabric_docker::DockerClient;
use fabric_runtime::container::ContainerShell;
use fabric_runtime::sandbox::{ProcessExit, Sandbox, SandboxCommand, SandboxProcess, SandboxStdio};
use fabric_runtime::{HostProcess, RuntimeError};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

use super::builtin::{Executor, ShellSpec, ShellWorkers};
use super::container::{ContainerError, ContainerParts, ContainerUsage};
use super::{AGENT_TOKEN_TTL, Inner, container, inference};
use crate::proxy::{EGRESS_PROXY_PORT, INFERENCE_PORT};
use crate::services::llm::EndpointIdentity;

/// Why a session did not start. The message is what the `spawn_failed`
/// answer and the session's exit reason say.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Isolation `process` on a server started without the sandbox helper.
    #[error("this server has no sandbox helper")]
    NoSandboxHelper,
    #[error(transparent)]
    CreateSandbox(RuntimeError),
    /// A fabric listener (API, inference, egress proxy) inside the sandbox's
    /// network namespace.
    #[error(transparent)]
    BindInSandbox(RuntimeError),
    #[error("cannot use the sandbox's port {port}: {source}")]
    SandboxPortUnusable {
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("cannot create working dir {}: {source}", dir.display())]
    CreateWorkdir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the inference endpoint: {0}")]
    OpenInference(#[source] io::Error),
    #[error("cannot serve the inference endpoint: {0}")]
    ServeInference(#[source] io::Error),
    /// An `isolation.network_egress` rule (`parse_egress` says why in words only).
    #[error("{0}")]
    EgressRule(String),
    /// A program agent without `command` (validation refuses it first).
    #[error("nothing to run: give 'command'")]
    NothingToRun,
    #[error(transparent)]
    SpawnProgram(RuntimeError),
    /// The built-in shell's client of the agent protocol.
    #[error(transparent)]
    ShellClient(AgentError),
    #[error(transparent)]
    Container(#[from] ContainerError),
}

pub(super) enum SessionEnd {
    Exited(ProcessExit),
    Stop(Duration),
    Shutdown,
}

/// Where an agent's resource use is read from.
#[derive(Clone)]
pub(super) enum UsageProbe {
    None,
    Sandbox(Arc<Sandbox>),
    /// A host process (isolation `none`): `/proc/<pid>`.
    Pid(u32),
    /// An agent container: its cgroup, or the daemon's stats.
    Container(Arc<ContainerUsage>),
}

impl UsageProbe {
    pub(super) fn read(&self) -> ResourceUsage {
        match self {
            Self::None => ResourceUsage::default(),
            Self::Sandbox(sandbox) => match sandbox.usage() {
                Ok(u) => ResourceUsage {
                    memory_bytes: u.memory_bytes,
                    memory_peak_bytes: u.memory_peak_bytes.unwrap_or(u.memory_bytes),
                    cpu_millis: u64::try_from(u.cpu_time.as_millis()).unwrap_or(u64::MAX),
                    pids: u.pids,
                },
                Err(_) => ResourceUsage::default(),
            },
            Self::Pid(pgid) => host_groups()
                .and_then(|groups| groups.get(pgid).copied())
                .unwrap_or_default(),
            Self::Container(usage) => usage.read(),
        }
    }
}

/// How long one scan of `/proc` serves every level-`none` agent's usage: a
/// listing of many agents costs one scan, not one per agent.
const HOST_SCAN_TTL: Duration = Duration::from_secs(1);

type GroupUsage = Arc<HashMap<u32, ResourceUsage>>;

/// Usage of every host process group, from a `/proc` scan at most
/// [`HOST_SCAN_TTL`] old; `None` if `/proc` cannot be read.
fn host_groups() -> Option<GroupUsage> {
    static CACHE: parking_lot::Mutex<Option<(Instant, GroupUsage)>> = parking_lot::Mutex::new(None);
    let mut cache = CACHE.lock();
    if let Some((at, groups)) = cache.as_ref()
        && at.elapsed() < HOST_SCAN_TTL
    {
        return Some(Arc::clone(groups));
    }
    let groups = Arc::new(scan_proc()?);
    *cache = Some((Instant::now(), Arc::clone(&groups)));
    Some(groups)
}

/// Memory, CPU and process count of every host process group from `/proc`
/// (level `none` has no cgroup to read them from).
fn scan_proc() -> Option<HashMap<u32, ResourceUsage>> {
    let mut groups: HashMap<u32, ResourceUsage> = HashMap::new();
    let page = 4096;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces): state, ppid,
        // pgrp, ..., utime (11), stime (12), ..., rss in pages (21).
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let Ok(pgid) = u32::try_from(field(2)) else {
            continue;
        };
        let peak_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        let usage = groups.entry(pgid).or_default();
        // USER_HZ is 100 on every Linux the fabric supports.
        usage.cpu_millis += (field(11) + field(12)) * 10;
        usage.memory_bytes += field(21) * page;
        usage.memory_peak_bytes += peak_kib * 1024;
        usage.pids += 1;
    }
    Some(groups)
}

enum Program {
    Host(HostProcess),
    Sandboxed(SandboxProcess),
}

pub(super) struct Session {
    agent: AgentId,
    /// Session number (1 for the first run of the agent).
    number: u32,
    sandbox: Option<Arc<Sandbox>>,
    program: Option<Program>,
    workers: Option<ShellWorkers>,
    background: Vec<JoinHandle<()>>,
    token_hash: Option<String>,
    /// Removed at cleanup (the sandbox removes its own).
    host_workdir: Option<PathBuf>,
    /// `<workdir>.pgid` of a host program.
    group_record: Option<PathBuf>,
    /// Isolation `container`: the agent's container, sidecar and listeners.
    container: Option<ContainerParts>,
    exit: Option<ProcessExit>,
    inner: Arc<Inner>,
}

impl Session {
    /// Starts session `number` of an agent. The error says what failed.
    pub(super) async fn start(
        inner: &Arc<Inner>,
        config: &AgentConfig,
        number: u32,
        tenant: &TenantId,
        owner: &str,
    ) -> Result<Session, SessionError> {
        let id = &config.id;
        let root = config
            .isolation
            .filesystem_root
            .as_ref()
            .map_or_else(|| inner.config.agents_dir.clone(), PathBuf::from);
        let name = sandbox_name(id, number);
        let workdir = root.join(&name);
        let mut session = Session {
            agent: id.clone(),
            number,
            sandbox: None,
            program: None,
            workers: None,
            background: Vec::new(),
            token_hash: None,
            host_workdir: None,
            group_record: None,
            container: None,
            exit: None,
            inner: Arc::clone(inner),
        };
        let result = session
            .start_inner(config, &name, &workdir, tenant, owner)
            .await;
        match result {
            Ok(()) => Ok(session),
            Err(e) => {
                session.cleanup().await;
                Err(e)
            }
        }
    }

    async fn start_inner(
        &mut self,
        config: &AgentConfig,
        name: &str,
        workdir: &Path,
        tenant: &TenantId,
        owner: &str,
    ) -> Result<(), SessionError> {
        let inner = Arc::clone(&self.inner);
        let id = config.id.clone();
        let api = inner.config.api_addr;
        let mut env: Vec<(String, String)> = Vec::new();
        match config.isolation.level {
            IsolationLevel::Process => {
                let sandbox = Arc::new(acquire_sandbox(&inner, config, name, workdir).await?);
                self.sandbox = Some(Arc::clone(&sandbox));
                if !config.is_builtin_shell() {
                    // The fabric's API, on the same port inside the sandbox.
                    let listener = bind_in(&sandbox, api.port())?;
                    let forward =
                        fabric_runtime::net::forward_tcp(listener, api, std::future::pending());
                    self.background.push(tokio::spawn(async move {
                        if let Err(e) = forward.await {
                            tracing::warn!(error = %e, "API forward into a sandbox stopped");
                        }
                    }));
                    env.push((ENV_URL.into(), format!("http://127.0.0.1:{}", api.port())));
                }
                let listener = bind_in(&sandbox, INFERENCE_PORT)?;
                self.background.push(inference::serve_std(
                    listener,
                    &inner,
                    endpoint_identity(&id, tenant, owner, config.workspace.clone()),
                )?);
                env.push((
                    ENV_OLLAMA.into(),
                    format!("http://localhost:{INFERENCE_PORT}"),
                ));
                let rules = config
                    .isolation
                    .network_egress
                    .iter()
                    .map(|r| parse_egress(r))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(SessionError::EgressRule)?;
                let listener = bind_in(&sandbox, EGRESS_PROXY_PORT)?;
                // Every decision is logged by the proxy itself (target `audit`).
                let proxy =
                    fabric_runtime::net::EgressProxy::new(id.to_string(), rules, Arc::new(|_| {}))
                        .with_policy(egress_policy(
                            &id,
                            tenant,
                            &inner.config.policy,
                            config.workspace.clone(),
                        ));
                let serve = proxy.serve(listener, std::future::pending());
                self.background.push(tokio::spawn(async move {
                    if let Err(e) = serve.await {
                        tracing::warn!(error = %e, "egress proxy stopped");
                    }
                }));
                let proxy_url = format!("http://127.0.0.1:{EGRESS_PROXY_PORT}");
                for key in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                    env.push((key.into(), proxy_url.clone()));
                }
                // The fabric and the inference endpoint are local: never through the proxy.
                env.push(("NO_PROXY".into(), "localhost,127.0.0.1".into()));
                env.push(("no_proxy".into(), "localhost,127.0.0.1".into()));
            }
            IsolationLevel::None => {
                std::fs::create_dir_all(workdir).map_err(|source| SessionError::CreateWorkdir {
                    dir: workdir.to_path_buf(),
                    source,
                })?;
                self.host_workdir = Some(workdir.to_path_buf());
                env.push((ENV_URL.into(), format!("http://{}", loopback(api))));
                let (endpoint, server) = inference::serve_loopback(
                    &inner,
                    endpoint_identity(&id, tenant, owner, config.workspace.clone()),
                )?;
                self.background.push(server);
                env.push((ENV_OLLAMA.into(), format!("http://{endpoint}")));
            }
            IsolationLevel::Container => {
                return self.start_container(config, tenant, owner).await;
            }
        }
        // A pooled sandbox brings its own working dir.
        let workdir = self
            .sandbox
            .as_ref()
            .map_or_else(|| workdir.to_path_buf(), |s| s.workdir().to_path_buf());
        env.push((super::ENV_AGENT_ID.into(), id.to_string()));
        env.push((
            super::ENV_WORKSPACE_DIR.into(),
            workdir.display().to_string(),
        ));
        if let Some(url) = env
            .iter()
            .find(|(k, _)| k == ENV_URL)
            .map(|(_, v)| v.clone())
        {
            env.push(("OPENAI_BASE_URL".into(), format!("{url}/v1")));
        }

        if config.is_builtin_shell() {
            let executor = match &self.sandbox {
                Some(s) => Executor::Sandbox(Arc::clone(s)),
                None => Executor::Host {
                    work_root: workdir.clone(),
                },
            };
            let spec = ShellSpec {
                agent: id.clone(),
                concurrency: config.concurrency as usize,
                executor,
                output_limit: inner.config.shell_output_limit,
                kill_grace: inner.config.kill_grace,
                // Tasks get the endpoints, not the agent's own identity.
                env: env
                    .iter()
                    .filter(|(k, _)| k != super::ENV_AGENT_ID && k != super::ENV_WORKSPACE_DIR)
                    .cloned()
                    .collect(),
            };
            return self.start_workers(spec, tenant, owner);
        }
        if config.external {
            return Ok(());
        }
        let Some(command) = config.command.clone() else {
            return Err(SessionError::NothingToRun);
        };
        let (secret, hash, _) = inner
            .auth
            .issue_agent_token(&id, tenant, owner, AGENT_TOKEN_TTL);
        self.token_hash = Some(hash);
        env.push((ENV_TOKEN.into(), secret));
        let (program, stdout, stderr) = match &self.sandbox {
            Some(sandbox) => {
                let mut cmd = SandboxCommand::new(["/bin/sh", "-c", command.as_str()]);
                cmd.env = env;
                cmd.stdout = SandboxStdio::Piped;
                cmd.stderr = SandboxStdio::Piped;
                let mut process = sandbox
                    .spawn(cmd)
                    .await
                    .map_err(SessionError::SpawnProgram)?;
                let (out, err) = (process.stdout.take(), process.stderr.take());
                (
                    Program::Sandboxed(process),
                    out.map(box_reader),
                    err.map(box_reader),
                )
            }
            None => {
                let mut process = fabric_runtime::spawn_program(&command, &workdir, &env)
                    .map_err(SessionError::SpawnProgram)?;
                self.record_host_group(&workdir, &process);
                let (out, err) = (process.stdout.take(), process.stderr.take());
                (
                    Program::Host(process),
                    out.map(box_reader),
                    err.map(box_reader),
                )
            }
        };
        self.program = Some(program);
        for (stream, reader) in [("stdout", stdout), ("stderr", stderr)] {
            if let Some(reader) = reader {
                self.background
                    .push(tokio::spawn(log_output(id.clone(), stream, reader)));
            }
        }
        Ok(())
    }

    /// A `container` session: the container (pool or new) with its sidecar, the
    /// listeners the sidecar forwards to, and the built-in workers (which run
    /// each task's commands in it) or the container's own program.
    async fn start_container(
        &mut self,
        config: &AgentConfig,
        tenant: &TenantId,
        owner: &str,
    ) -> Result<(), SessionError> {
        let inner = Arc::clone(&self.inner);
        let id = config.id.clone();
        let api = inner.config.api_addr;
        let rules = config
            .isolation
            .network_egress
            .iter()
            .map(|r| parse_egress(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SessionError::EgressRule)?;
        let builtin = config.is_builtin_shell();
        // The agent's endpoints, as its sidecar serves them on its loopback.
        let mut env: Vec<(String, String)> = vec![(
            ENV_OLLAMA.into(),
            format!("http://localhost:{INFERENCE_PORT}"),
        )];
        env.extend(fabric_runtime::net::proxy_env(EGRESS_PROXY_PORT));
        let mut container_env = Vec::new();
        let api_port = (!builtin).then(|| api.port());
        if let Some(port) = api_port {
            let (secret, hash, _) =
                inner
                    .auth
                    .issue_agent_token(&id, tenant, owner, AGENT_TOKEN_TTL);
            self.token_hash = Some(hash);
            let url = format!("http://127.0.0.1:{port}");
            container_env = env.clone();
            container_env.extend([
                (ENV_URL.to_owned(), url.clone()),
                ("OPENAI_BASE_URL".to_owned(), format!("{url}/v1")),
                (ENV_TOKEN.to_owned(), secret),
                (super::ENV_AGENT_ID.to_owned(), id.to_string()),
                (
                    super::ENV_WORKSPACE_DIR.to_owned(),
                    fabric_docker::agent::WORKSPACE.to_owned(),
                ),
                (
                    "HOME".to_owned(),
                    fabric_docker::agent::WORKSPACE.to_owned(),
                ),
            ]);
        }
        let name = container::container_name(&id, self.number);
        let (warm, client) = container::acquire(
            &inner.docker,
            &inner.container_pool,
            config,
            &name,
            container_env,
            api_port,
        )
        .await?;
        let (usage, poller) = ContainerUsage::start(&client, &warm);
        let mut parts = ContainerParts {
            warm,
            client: client.clone(),
            usage,
            listeners: poller.into_iter().collect(),
        };
        // Every decision is logged by the proxy itself (target `audit`).
        let proxy = fabric_runtime::net::EgressProxy::new(id.to_string(), rules, Arc::new(|_| {}))
            .with_policy(egress_policy(
                &id,
                tenant,
                &inner.config.policy,
                config.workspace.clone(),
            ));
        let listening = container::listen(
            &inner,
            &parts.warm,
            endpoint_identity(&id, tenant, owner, config.workspace.clone()),
            proxy,
            api_port.map(|_| loopback(api)),
        );
        match listening {
            Ok(tasks) => parts.listeners.extend(tasks),
            Err(e) => {
                self.container = Some(parts);
                return Err(e.into());
            }
        }
        let shell = builtin.then(|| {
            ContainerShell::new(
                client,
                parts.warm.container.name.clone(),
                &parts.warm.container.id,
                parts.warm.container.pid,
                inner.config.kill_grace,
            )
        });
        self.container = Some(parts);
        if let Some(shell) = shell {
            let spec = ShellSpec {
                agent: id.clone(),
                concurrency: config.concurrency as usize,
                executor: Executor::Container(Arc::new(shell)),
                output_limit: inner.config.shell_output_limit,
                kill_grace: inner.config.kill_grace,
                env,
            };
            self.start_workers(spec, tenant, owner)?;
        }
        Ok(())
    }

    /// Starts the built-in shell workers with a token of their own.
    fn start_workers(
        &mut self,
        spec: ShellSpec,
        tenant: &TenantId,
        owner: &str,
    ) -> Result<(), SessionError> {
        let inner = Arc::clone(&self.inner);
        let id = spec.agent.clone();
        let (secret, hash, _) = inner
            .auth
            .issue_agent_token(&id, tenant, owner, AGENT_TOKEN_TTL);
        self.token_hash = Some(hash);
        let client = fabric_agent::AgentClient::new(
            format!("http://{}", loopback(inner.config.api_addr)),
            secret,
            id,
        )
        .map_err(SessionError::ShellClient)?;
        self.workers = Some(ShellWorkers::start(Arc::clone(&inner.tasks), spec, client));
        Ok(())
    }

    /// Notes the program's process group beside its working dir
    /// (`<dir>.pgid`), so a start after a crash can stop it (level `none`
    /// has no cgroup to find it by). Removed with the working dir.
    fn record_host_group(&mut self, workdir: &Path, process: &HostProcess) {
        let Some(ticks) = process.start_ticks() else {
            return;
        };
        let record = PathBuf::from(format!("{}.pgid", workdir.display()));
        if let Err(e) = std::fs::write(&record, format!("{} {ticks}\n", process.id())) {
            tracing::warn!(agent_id = %self.agent, error = %e, "cannot record the agent's process group");
        }
        self.group_record = Some(record);
    }

    /// Host pid of the agent's program, or of its sandbox's or container's init.
    pub(super) fn pid(&self) -> Option<u32> {
        if let Some(parts) = &self.container {
            return u32::try_from(parts.warm.container.pid)
                .ok()
                .filter(|p| *p > 0);
        }
        match &self.program {
            Some(Program::Host(p)) => Some(p.id()),
            Some(Program::Sandboxed(p)) => Some(p.id()),
            None => self.sandbox.as_ref().map(|s| s.init_pid()),
        }
    }

    pub(super) fn usage_probe(&self) -> UsageProbe {
        if let Some(parts) = &self.container {
            return UsageProbe::Container(Arc::clone(&parts.usage));
        }
        match (&self.sandbox, &self.program) {
            (Some(s), _) => UsageProbe::Sandbox(Arc::clone(s)),
            (None, Some(Program::Host(p))) => UsageProbe::Pid(p.id()),
            _ => UsageProbe::None,
        }
    }

    /// Whether the agent proves it is up by calling in (a program), rather
    /// than being up as soon as the session is (built-in workers).
    pub(super) fn reports_in(&self) -> bool {
        self.program.is_some() || (self.container.is_some() && self.workers.is_none())
    }

    /// The container's name and client, for a container session.
    fn container_handle(&self) -> Option<(DockerClient, String)> {
        self.container
            .as_ref()
            .map(|p| (p.client.clone(), p.warm.container.name.clone()))
    }

    /// Resolves when the agent's program exits; never for agents without one.
    /// Cancel-safe and repeatable.
    pub(super) async fn wait_exit(&mut self) -> ProcessExit {
        if let Some(exit) = self.exit {
            return exit;
        }
        if let Some((client, name)) = self.container_handle() {
            let exit = container::wait_exit(&client, &name).await;
            self.exit = Some(exit);
            return exit;
        }
        let exit = match &mut self.program {
            Some(program) => {
                let waited = match program {
                    Program::Sandboxed(p) => p.wait().await,
                    Program::Host(p) => p.wait().await,
                };
                waited.unwrap_or_else(|e| {
                    tracing::error!(agent_id = %self.agent, error = %e, "cannot wait for agent");
                    unknown_exit()
                })
            }
            None => std::future::pending().await,
        };
        self.exit = Some(exit);
        exit
    }

    /// Built-in workers stop taking tasks (programs learn it from `lease`).
    pub(super) fn stop_leasing(&self) {
        if let Some(w) = &self.workers {
            w.stop_leasing();
        }
    }

    /// Stops the agent: SIGTERM, then SIGKILL after `grace`.
    pub(super) async fn terminate(&mut self, grace: Duration) {
        if self.exit.is_some() {
            return;
        }
        let container_program = self.container.is_some() && self.workers.is_none();
        let exit = match &mut self.program {
            Some(Program::Sandboxed(p)) => p.terminate(grace).await.ok(),
            Some(Program::Host(p)) => p.terminate(grace).await.ok(),
            None => None,
        };
        self.exit = exit;
        if let Some(w) = self.workers.take() {
            w.kill(grace).await;
        }
        // A container program: SIGTERM to its main process, SIGKILL after `grace`.
        if container_program
            && let Some((client, name)) = self.container_handle()
            && let Err(e) = client.stop_container(&name, grace).await
        {
            tracing::warn!(agent_id = %self.agent, error = %e, "cannot stop the agent's container");
        }
    }

    /// Removes everything the session made: processes, listeners, the
    /// sandbox (cgroups, namespaces, working dir), the token.
    pub(super) async fn cleanup(&mut self) {
        if let Some(w) = self.workers.take() {
            w.kill(Duration::ZERO).await;
        }
        // Dropping a program SIGKILLs its process group.
        drop(self.program.take());
        for task in self.background.drain(..) {
            task.abort();
        }
        if let Some(hash) = self.token_hash.take() {
            self.inner.auth.revoke_cached(&hash);
        }
        if let Some(parts) = self.container.take() {
            for task in parts.listeners {
                task.abort();
            }
            self.inner.docker.remove(&parts.warm).await;
        }
        if let Some(sandbox) = self.sandbox.take()
            && let Err(e) = sandbox.destroy().await
        {
            tracing::error!(agent_id = %self.agent, error = %e, "cannot remove the agent's sandbox");
        }
        if let Some(record) = self.group_record.take() {
            let _ = std::fs::remove_file(record);
        }
        if let Some(dir) = self.host_workdir.take()
            && let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(agent_id = %self.agent, dir = %dir.display(), error = %e, "cannot remove working dir");
        }
    }
}

/// A sandbox for a session: from the warm pool when the agent's config
/// allows (limits set on it now), else built from scratch.
async fn acquire_sandbox(
    inner: &Inner,
    config: &AgentConfig,
    name: &str,
    workdir: &Path,
) -> Result<Sandbox, SessionError> {
    let iso = &config.isolation;
    let poolable = iso.read_only_paths.is_empty() && iso.filesystem_root.is_none();
    if poolable && let Some(sandbox) = inner.sandbox_pool.take() {
        match sandbox.set_limits(
            iso.memory_mb,
            iso.cpu_cores,
            fabric_runtime::sandbox::DEFAULT_PIDS_MAX,
        ) {
            Ok(()) => return Ok(sandbox),
            Err(e) => {
                tracing::warn!(error = %e, "a pooled sandbox refused new limits; starting a fresh one");
                let _ = sandbox.destroy().await;
            }
        }
    }
    let mut sandbox_config = inner
        .sandbox_pool
        .kind
        .config(name.to_owned(), workdir.to_path_buf())
        .ok_or(SessionError::NoSandboxHelper)?;
    sandbox_config.memory_mb = iso.memory_mb;
    sandbox_config.cpu_cores = iso.cpu_cores;
    for path in &iso.read_only_paths {
        sandbox_config.read_only_paths.push(PathBuf::from(path));
    }
    Sandbox::create(sandbox_config)
        .await
        .map_err(SessionError::CreateSandbox)
}

pub const ENV_URL: &str = "FABRIC_URL";
pub const ENV_TOKEN: &str = "FABRIC_TOKEN";
pub const ENV_OLLAMA: &str = "OLLAMA_BASE_URL";

/// `<agent>-<session>-<random>`: unique on the host even with several fabrics.
fn sandbox_name(id: &AgentId, number: u32) -> String {
    let short: String = id.as_str().chars().take(40).collect();
    format!("{short}-{number}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
    } else {
        addr
    }
}

/// Who an agent's inference endpoint calls the gateway as: the agent, for
/// the user who spawned it, in their tenant.
fn endpoint_identity(
    agent: &AgentId,
    tenant: &TenantId,
    owner: &str,
    workspace: Option<String>,
) -> EndpointIdentity {
    EndpointIdentity {
        tenant: tenant.clone(),
        user: owner.to_owned(),
        agent: agent.clone(),
        workspace,
    }
}

/// The egress proxy's policy gate for an agent (after its allowlist).
fn egress_policy(
    agent: &AgentId,
    tenant: &TenantId,
    policy: &Arc<crate::services::policy::PolicyService>,
    workspace: Option<String>,
) -> fabric_runtime::net::PolicyGate {
    crate::services::policy::egress_gate(
        Arc::clone(policy),
        crate::services::policy::Actor::agent(tenant.clone(), agent.clone(), workspace),
    )
}

fn bind_in(sandbox: &Sandbox, port: u16) -> Result<std::net::TcpListener, SessionError> {
    let listener = sandbox
        .bind_tcp(port)
        .map_err(SessionError::BindInSandbox)?;
    listener
        .set_nonblocking(true)
        .map_err(|source| SessionError::SandboxPortUnusable { port, source })?;
    Ok(listener)
}

fn box_reader(r: impl AsyncRead + Send + Unpin + 'static) -> Box<dyn AsyncRead + Send + Unpin> {
    Box::new(r)
}

/// An agent program's output goes to the fabric's log, line by line.
async fn log_output(
    agent: AgentId,
    stream: &'static str,
    reader: Box<dyn AsyncRead + Send + Unpin>,
) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(agent_id = %agent, stream, line = %truncate(&line, 4096), "agent output");
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn unknown_exit() -> ProcessExit {
    ProcessExit {
        code: None,
        signal: None,
        oom_killed: false,
    }
}

/// Stops the agent programs (isolation `none`) a killed fabric left running,
/// from the `.pgid` records in `agents_dir`. Returns how many were stopped.
pub(super) fn kill_stale_programs(agents_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(agents_dir) else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "pgid") {
            continue;
        }
        let record = std::fs::read_to_string(&path).unwrap_or_default();
        let mut fields = record.split_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(pgid)), Some(Ok(ticks))) = (fields.next(), fields.next())
            && let Ok(pgid) = u32::try_from(pgid)
            && fabric_runtime::kill_stale_group(pgid, ticks)
        {
            tracing::warn!(pgid, record = %path.display(), "stopped an agent program a previous run left behind");
            killed += 1;
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn one_proc_scan_sums_each_process_group() {
        let mut leader = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = leader.id();
        let mut member = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(i32::try_from(pgid).unwrap())
            .spawn()
            .unwrap();
        let usage = scan_proc().unwrap().get(&pgid).copied().unwrap_or_default();
        // Each killed on its own: no group kill from a test.
        for child in [&mut leader, &mut member] {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(usage.pids, 2, "the leader and the member: {usage:?}");
        assert!(usage.memory_bytes > 0 && usage.memory_peak_bytes >= usage.memory_bytes);
        // The snapshot is shared for a while: a second read costs no scan.
        let first = host_groups().unwrap();
        assert!(Arc::ptr_eq(&first, &host_groups().unwrap()));
    }

    /// The `spawn_failed` answers and exit reasons tests and users read are
    /// the sentences the String errors said before `SessionError`.
    #[test]
    fn start_errors_keep_their_sentences() {
        let cause = || io::Error::other("no space left");
        let cases = [
            (
                SessionError::NoSandboxHelper,
                "this server has no sandbox helper",
            ),
            (
                SessionError::CreateWorkdir {
                    dir: PathBuf::from("/data/agents/a-1"),
                    source: cause(),
                },
                "cannot create working dir /data/agents/a-1: no space left",
            ),
            (
                SessionError::SandboxPortUnusable {
                    port: 3128,
                    source: cause(),
                },
                "cannot use the sandbox's port 3128: no space left",
            ),
            (
                SessionError::OpenInference(cause()),
                "cannot open the inference endpoint: no space left",
            ),
            (
                SessionError::ServeInference(cause()),
                "cannot serve the inference endpoint: no space left",
            ),
            (SessionError::NothingToRun, "nothing to run: give 'command'"),
        ];
        for (error, sentence) in cases {
            assert_eq!(error.to_string(), sentence);
        }
        let rule = parse_egress("host:0").unwrap_err();
        assert_eq!(SessionError::EgressRule(rule.clone()).to_string(), rule);
    }
}
