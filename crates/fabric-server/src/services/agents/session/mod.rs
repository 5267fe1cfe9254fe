//! One run of an agent: what it runs, where, and how it is cleaned up.
//!
//! | agent | isolation `none` | isolation `process` | isolation `container` |
//! |---|---|---|---|
//! | built-in shell | workers in the fabric run each task's commands as host processes | the same workers run them inside the agent's sandbox | the same workers run them in the agent's container, one `docker exec` each |
//! | `command` | a host process group | a program in the agent's sandbox | the container's main process (`sh -c`, default image) |
//! | `image` | (refused by validation) | (refused) | the image's own command (or `command`) as the container's main process |
//! | `external` | nothing: it connects from elsewhere | (refused by validation) | (refused) |
//!
//! A [`Session`] is one of four kinds, each with its own start, terminate
//! and cleanup, and holding only what that kind has:
//!
//! - `host` (isolation `none`): a working dir, the inference endpoint on a
//!   loopback port of its own, the workers or a host process group.
//! - `sandbox` (isolation `process`): a [`Sandbox`] and the fabric-side
//!   listeners inside its network namespace: the API at `FABRIC_URL`, the
//!   inference endpoint at `localhost:11434` and the egress proxy. Cleanup
//!   kills every process, removes the cgroups, the network namespace (with
//!   the sandbox's last process and listener) and the working dir.
//! - `container` (isolation `container`): an agent container with its
//!   sidecar, and the fabric-side listeners on Unix sockets the sidecar
//!   forwards the same three ports to (see `agents::container`). The
//!   container stopping (killed, crashed, OOM) ends the session like a
//!   program's exit; cleanup removes the sidecar, the container, its volume
//!   and the socket directory.
//! - `external`: an agent the fabric does not run.
//!
//! The first three embed `Common`: the session's agent token and the tasks
//! serving the agent, released on drop so that a start failing half-way
//! leaves neither behind.

mod container;
mod external;
mod host;
mod remote;
mod sandbox;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fabric_agent::AgentError;
use fabric_core::agent::{AgentConfig, IsolationLevel, ResourceUsage, parse_egress};
use fabric_core::{AgentId, TenantId};
use fabric_runtime::RuntimeError;
use fabric_runtime::net::EgressProxy;
use fabric_runtime::sandbox::{ProcessExit, Sandbox};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

use self::container::ContainerSession;
use self::external::ExternalSession;
use self::host::HostSession;
pub(super) use self::host::kill_stale_programs;
use self::remote::RemoteSession;
use self::sandbox::SandboxSession;
use super::builtin::{ShellSpec, ShellWorkers};
use super::container::{ContainerError, ContainerUsage};
use super::{AGENT_TOKEN_TTL, SessionRuntime};
use crate::services::auth::AuthService;
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
    /// Isolation `none` without `as_fabric_user`: its Landlock and seccomp locks.
    #[error(transparent)]
    Confine(RuntimeError),
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
    /// No node can take the agent now (the message says why).
    #[error("{0}")]
    NoPlacement(String),
    /// The node it was placed on could not start it.
    #[error("on node {node}: {error}")]
    OnNode { node: String, error: String },
}

/// How a session ended by itself: its program (or container) exited, or
/// the node it ran on stopped reporting.
#[derive(Debug, Clone)]
pub(super) struct Ended {
    /// In words (`exited (code 1)`, `oom_killed`, `node n1 is unreachable: ...`).
    pub(super) why: String,
    pub(super) success: bool,
    pub(super) oom_killed: bool,
}

impl Ended {
    fn failed(why: String) -> Self {
        Self {
            why,
            success: false,
            oom_killed: false,
        }
    }
}

impl From<ProcessExit> for Ended {
    fn from(exit: ProcessExit) -> Self {
        Self {
            why: exit.describe(),
            success: exit.success(),
            oom_killed: exit.oom_killed,
        }
    }
}

/// Where a session runs.
#[derive(Clone, Copy)]
pub(super) enum Place<'a> {
    /// On this machine.
    Here,
    /// On a worker node, through the node service.
    Node(&'a Arc<crate::services::nodes::NodeService>, &'a str),
}

pub(super) enum SessionEnd {
    Exited(Ended),
    /// The node the session runs on is draining: move the agent.
    Move(Duration),
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
    /// A session on a worker node: what the node reported last.
    Remote(tokio::sync::watch::Receiver<crate::services::nodes::Remote>),
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
            Self::Pid(pgid) => host::group_usage(*pgid),
            Self::Container(usage) => usage.read(),
            Self::Remote(report) => remote::reported_usage(report),
        }
    }
}

/// A running session, one variant per kind (see the module docs).
pub(super) enum Session {
    Host(HostSession),
    Sandbox(SandboxSession),
    Container(ContainerSession),
    External(ExternalSession),
    Remote(RemoteSession),
}

impl Session {
    /// Starts session `number` of an agent. On error, what the start made
    /// is removed again; the error says what failed.
    pub(super) async fn start(
        runtime: &Arc<SessionRuntime>,
        config: &AgentConfig,
        number: u32,
        tenant: &TenantId,
        owner: &str,
        token: &TokenSource,
        place: Place<'_>,
    ) -> Result<Session, SessionError> {
        let launch = Launch {
            runtime,
            config,
            number,
            tenant,
            owner,
            token,
        };
        if let Place::Node(nodes, node) = place {
            return RemoteSession::start(&launch, nodes, node)
                .await
                .map(Session::Remote);
        }
        // Validation allows `external` at isolation `none` only.
        if config.external {
            return ExternalSession::start(&launch).map(Session::External);
        }
        match config.isolation.level {
            IsolationLevel::None => HostSession::start(&launch).map(Session::Host),
            IsolationLevel::Process => SandboxSession::start(&launch).await.map(Session::Sandbox),
            IsolationLevel::Container => ContainerSession::start(&launch)
                .await
                .map(Session::Container),
        }
    }

    /// Host pid of the agent's program, or of its sandbox's or container's init.
    pub(super) fn pid(&self) -> Option<u32> {
        match self {
            Self::Host(s) => s.pid(),
            Self::Sandbox(s) => Some(s.pid()),
            Self::Container(s) => s.pid(),
            Self::External(_) => None,
            Self::Remote(s) => s.pid(),
        }
    }

    pub(super) fn usage_probe(&self) -> UsageProbe {
        match self {
            Self::Host(s) => s.usage_probe(),
            Self::Sandbox(s) => s.usage_probe(),
            Self::Container(s) => s.usage_probe(),
            Self::External(_) => UsageProbe::None,
            Self::Remote(s) => s.usage_probe(),
        }
    }

    /// Whether the agent proves it is up by calling in (a program), rather
    /// than being up as soon as the session is (built-in workers; an
    /// external agent, which the fabric does not wait for).
    pub(super) fn reports_in(&self) -> bool {
        match self {
            Self::Host(s) => s.runs_program(),
            Self::Sandbox(s) => s.runs_program(),
            Self::Container(s) => s.runs_program(),
            Self::External(_) => false,
            Self::Remote(s) => s.runs_program(),
        }
    }

    /// Resolves when the agent's program (or container) exits; never for
    /// sessions without one. Cancel-safe and repeatable.
    pub(super) async fn wait_exit(&mut self) -> Ended {
        match self {
            Self::Host(s) => s.wait_exit().await.into(),
            Self::Sandbox(s) => s.wait_exit().await.into(),
            Self::Container(s) => s.wait_exit().await.into(),
            Self::External(_) => std::future::pending().await,
            Self::Remote(s) => s.wait_exit().await,
        }
    }

    /// [`wait_exit`](Self::wait_exit), or `None` when the agent must move
    /// off the node it runs on (the node drains).
    pub(super) async fn wait_exit_or_moving(&mut self) -> Option<Ended> {
        match self {
            Self::Remote(s) => s.wait_exit_or_draining().await,
            _ => Some(self.wait_exit().await),
        }
    }

    /// The worker node it runs on (`None`: this machine).
    pub(super) fn node(&self) -> Option<&str> {
        match self {
            Self::Remote(s) => Some(s.node()),
            _ => None,
        }
    }

    /// Built-in workers stop taking tasks (programs learn it from `lease`).
    pub(super) fn stop_leasing(&self) {
        match self {
            Self::Host(s) => s.stop_leasing(),
            Self::Sandbox(s) => s.stop_leasing(),
            Self::Container(s) => s.stop_leasing(),
            Self::External(_) | Self::Remote(_) => {}
        }
    }

    /// Stops the agent: SIGTERM, then SIGKILL after `grace`.
    pub(super) async fn terminate(&mut self, grace: Duration) {
        match self {
            Self::Host(s) => s.terminate(grace).await,
            Self::Sandbox(s) => s.terminate(grace).await,
            Self::Container(s) => s.terminate(grace).await,
            Self::External(_) => {}
            Self::Remote(s) => s.terminate(grace).await,
        }
    }

    /// Removes everything the session made: processes, listeners, the
    /// sandbox (cgroups, namespaces, working dir) or container, the token.
    pub(super) async fn cleanup(self) {
        match self {
            Self::Host(s) => s.cleanup().await,
            Self::Sandbox(s) => s.cleanup().await,
            Self::Container(s) => s.cleanup().await,
            Self::External(s) => s.cleanup(),
            Self::Remote(s) => s.cleanup(),
        }
    }
}

/// What every kind's start is given.
struct Launch<'a> {
    runtime: &'a Arc<SessionRuntime>,
    config: &'a AgentConfig,
    /// Session number (1 for the first run of the agent).
    number: u32,
    tenant: &'a TenantId,
    owner: &'a str,
    token: &'a TokenSource,
}

impl Launch<'_> {
    fn agent(&self) -> &AgentId {
        &self.config.id
    }

    /// A fresh name and working dir: `<root>/<agent>-<session>-<random>`,
    /// under `filesystem_root` if the agent gives one, else the agents dir.
    fn workdir(&self) -> (String, PathBuf) {
        let root = self
            .config
            .isolation
            .filesystem_root
            .as_ref()
            .map_or_else(|| self.runtime.config.agents_dir.clone(), PathBuf::from);
        let name = sandbox_name(self.agent(), self.number);
        let workdir = root.join(&name);
        (name, workdir)
    }

    /// The session's token when the orchestrator minted it elsewhere (a
    /// session on a worker node): what the node presents for the agent.
    fn given_token(&self) -> Option<&str> {
        match self.token {
            TokenSource::Given(secret) => Some(secret),
            TokenSource::Mint(_) => None,
        }
    }

    /// Who the agent's inference endpoint calls the gateway as: the agent,
    /// for the user who spawned it, in their tenant.
    fn endpoint_identity(&self) -> EndpointIdentity {
        EndpointIdentity {
            tenant: self.tenant.clone(),
            user: self.owner.to_owned(),
            agent: self.agent().clone(),
            workspace: self.config.workspace.clone(),
            path_secret: None,
            tools: self.config.tools.clone(),
            forward_token: self
                .given_token()
                .map(|t| crate::services::llm::ForwardToken(t.to_owned())),
        }
    }

    /// The agent's egress proxy: its `network_egress` allowlist, then the
    /// policy. Every decision is logged by the proxy itself (target `audit`).
    fn egress_proxy(&self) -> Result<EgressProxy, SessionError> {
        let rules = self
            .config
            .isolation
            .network_egress
            .iter()
            .map(|r| parse_egress(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SessionError::EgressRule)?;
        let actor = crate::services::policy::Actor::agent(
            self.tenant.clone(),
            self.agent().clone(),
            self.config.workspace.clone(),
        );
        let proxy = EgressProxy::new(self.agent().to_string(), rules, Arc::new(|_| {}));
        Ok(match &self.runtime.config.egress {
            Some(egress) => proxy.with_policy(egress.gate(actor, self.given_token())),
            None => proxy,
        })
    }

    /// The built-in shell's workers, leasing with the session's token `secret`.
    fn start_workers(&self, spec: ShellSpec, secret: String) -> Result<Workers, SessionError> {
        let client = fabric_agent::AgentClient::new(
            format!("http://{}", loopback(self.runtime.config.api_addr)),
            secret,
            self.agent().clone(),
        )
        .map_err(SessionError::ShellClient)?;
        let workers = ShellWorkers::start(self.runtime.tasks.clone(), spec, client);
        Ok(Workers(Some(workers)))
    }
}

/// What every session that runs something for its agent holds: its token
/// and the tasks serving it. Both are released when dropped, so a start
/// that fails half-way leaves neither behind.
struct Common {
    /// Endpoints, forwards, usage pollers and output loggers.
    tasks: Background,
    token: AgentToken,
}

impl Common {
    /// Stops serving the agent, then revokes its token.
    fn release(self) {
        let Common { tasks, token } = self;
        drop(tasks);
        drop(token);
    }
}

/// Where a session's agent token comes from.
pub enum TokenSource {
    /// Minted here by the orchestrator's auth service, per session, in
    /// memory only; revoked when the session ends.
    Mint(Arc<AuthService>),
    /// Minted by the orchestrator for a session it placed on this node
    /// (the secret); the orchestrator revokes it when the session ends.
    Given(String),
}

/// A session's agent token: a minted one is revoked when dropped.
struct AgentToken {
    minted: Option<(Arc<AuthService>, String)>,
}

impl AgentToken {
    /// The token and its secret, which is what the agent presents.
    fn issue(launch: &Launch<'_>) -> (AgentToken, String) {
        match launch.token {
            TokenSource::Mint(auth) => {
                let (secret, token) = auth.issue_agent_token(
                    launch.agent(),
                    launch.tenant,
                    launch.owner,
                    AGENT_TOKEN_TTL,
                );
                let minted = Some((Arc::clone(auth), token.token_hash));
                (AgentToken { minted }, secret)
            }
            TokenSource::Given(secret) => (AgentToken { minted: None }, secret.clone()),
        }
    }
}

impl Drop for AgentToken {
    fn drop(&mut self) {
        if let Some((auth, hash)) = &self.minted {
            auth.revoke_cached(hash);
        }
    }
}

/// Tasks that serve one session: aborted when dropped.
#[derive(Default)]
struct Background(Vec<JoinHandle<()>>);

impl Background {
    fn push(&mut self, task: JoinHandle<()>) {
        self.0.push(task);
    }
}

impl Extend<JoinHandle<()>> for Background {
    fn extend<I: IntoIterator<Item = JoinHandle<()>>>(&mut self, tasks: I) {
        self.0.extend(tasks);
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The built-in shell's workers of a session. Killed once: by `terminate`
/// with its grace, else at cleanup at once (`None` once killed).
struct Workers(Option<ShellWorkers>);

impl Workers {
    fn stop_leasing(&self) {
        if let Some(w) = &self.0 {
            w.stop_leasing();
        }
    }

    async fn kill(&mut self, grace: Duration) {
        if let Some(w) = self.0.take() {
            w.kill(grace).await;
        }
    }
}

const ENV_URL: &str = "FABRIC_URL";
const ENV_TOKEN: &str = "FABRIC_TOKEN";
const ENV_OLLAMA: &str = "OLLAMA_BASE_URL";

/// What a client library inside an agent needs to reach its inference
/// endpoint at `base`, which speaks Ollama's API, and OpenAI's and
/// Anthropic's under `/v1`:
/// the base URLs, and placeholder keys (the endpoint asks for none; they
/// grant nothing anywhere else) so that `OpenAI()` starts without a
/// "missing credentials" error. Every call is metered against the agent.
fn inference_env(base: &str) -> Vec<(String, String)> {
    vec![
        (ENV_OLLAMA.into(), base.to_owned()),
        // The same endpoint's MCP server: the tools `tools[]` grants.
        ("MCP_URL".into(), format!("{base}/mcp")),
        ("OPENAI_BASE_URL".into(), format!("{base}/v1")),
        ("OPENAI_API_KEY".into(), ENDPOINT_KEY_PLACEHOLDER.into()),
        ("ANTHROPIC_BASE_URL".into(), base.to_owned()),
        ("ANTHROPIC_API_KEY".into(), ENDPOINT_KEY_PLACEHOLDER.into()),
    ]
}

/// The API key agents' client libraries are given: the endpoint needs
/// none, and this one opens nothing.
const ENDPOINT_KEY_PLACEHOLDER: &str = "fabric-agent-endpoint-no-key-needed";

/// The environment of a host or sandbox agent: `endpoints` (the fabric's
/// URL, the inference endpoint, proxies), then for a program who it is and
/// where it works. The built-in shell's tasks get the endpoints, not the
/// agent's own identity.
fn agent_env(
    mut env: Vec<(String, String)>,
    program: Option<(&AgentId, &Path)>,
) -> Vec<(String, String)> {
    if let Some((id, workdir)) = program {
        env.push((super::ENV_AGENT_ID.into(), id.to_string()));
        env.push((
            super::ENV_WORKSPACE_DIR.into(),
            workdir.display().to_string(),
        ));
    }
    env
}

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

/// Logs an agent program's stdout and stderr, line by line, from tasks in `tasks`.
fn log_output(
    launch: &Launch<'_>,
    stdout: Option<impl AsyncRead + Send + Unpin + 'static>,
    stderr: Option<impl AsyncRead + Send + Unpin + 'static>,
) {
    for (stream, reader) in [("stdout", stdout.map(boxed)), ("stderr", stderr.map(boxed))] {
        if let Some(reader) = reader {
            // Not aborted with the session: what a dying program wrote last
            // (why it died) is read to the end of its pipe.
            tokio::spawn(log_lines(
                Arc::clone(launch.runtime),
                launch.agent().clone(),
                launch.number,
                stream,
                reader,
            ));
        }
    }
}

fn boxed(reader: impl AsyncRead + Send + Unpin + 'static) -> Box<dyn AsyncRead + Send + Unpin> {
    Box::new(reader)
}

/// An agent program's output goes to the fabric's log, line by line, and
/// to the agent's own last lines (`agent logs`).
async fn log_lines(
    runtime: Arc<SessionRuntime>,
    agent: AgentId,
    session: u32,
    stream: &'static str,
    reader: impl AsyncRead + Unpin,
) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(agent_id = %agent, stream, line = %truncate(&line, 4096), "agent output");
        runtime
            .program_logs
            .push(&agent, session, stream, &line, runtime.clock.now());
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

/// What a program's exit is taken to be when waiting for it failed.
fn unknown_exit() -> ProcessExit {
    ProcessExit {
        code: None,
        signal: None,
        oom_killed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
