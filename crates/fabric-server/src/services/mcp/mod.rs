//! Tools for agents over MCP (REQUIREMENTS §14): the registry of MCP
//! servers, the instances the fabric runs or connects to, and each agent's
//! view of them ([`AgentTools`], served at its `MCP_URL`).
//!
//! Every tool call of an agent is the action `tool:<server>/<tool>`: its
//! `tools[]` must grant the tool (the first gate, like `network_egress` for
//! connections), then the policy decides (allow, deny, or require an
//! approval the call waits for), the decision is audited with the
//! arguments' digest, the call is traced and counted, bounded by the
//! server's timeout and result size limit.

mod upstream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabric_core::agent::IsolationLevel;
use fabric_core::mcp::{
    McpInstance, McpServerRecord, McpServerSpec, McpServerView, McpSpecError, McpStore,
    McpToolView, ToolGrant, exposed_tool_name, split_tool_name,
};
use fabric_core::policy::{ApprovalStatus, Effect};
use fabric_core::{AgentId, Clock, Identity, MissingScope, Scope, StoreError, TenantId};
use fabric_runtime::sandbox::HelperCommand;
use parking_lot::Mutex;
use serde_json::{Value, json};
use sha2::Digest as _;

pub use self::upstream::UpstreamError;
use self::upstream::{Redact, Running, Upstream};
use crate::mcp::{RpcError, ServerInfo, ToolHost, code};
use crate::services::policy::{Actor, PolicyService};
use crate::store::AnyStore as Store;

/// What the registry's callers get wrong, or what failed.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error(transparent)]
    Invalid(#[from] McpSpecError),
    #[error(
        "no MCP server {0:?} in this tenant: reactor-fabric mcp list shows the registered ones"
    )]
    NotFound(String),
    #[error(
        "isolation process needs the sandbox helper, which this server does not have: register the MCP server with isolation none, or run the fabric as root"
    )]
    NoSandboxHelper,
    #[error(transparent)]
    MissingScope(#[from] MissingScope),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("cannot start MCP server {server:?}: {reason}")]
    Start { server: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where stdio servers run.
#[derive(Debug, Clone)]
pub struct McpRuntime {
    /// The sandbox helper (isolation `process`, and the confinement's trampoline).
    pub helper: Option<HelperCommand>,
    /// Each server's working directory is made under it (the agents
    /// directory: swept with the agents' after a crash).
    pub root: PathBuf,
    /// The cgroup parent of their sandboxes (the agents', swept alike).
    pub cgroup_parent: PathBuf,
}

/// A registered server and its running instances.
struct Entry {
    record: McpServerRecord,
    /// `None`: the shared instance; `Some(agent)`: that agent's own.
    instances: tokio::sync::Mutex<HashMap<Option<AgentId>, Arc<Upstream>>>,
    /// The upstream tool list, for a short while.
    tools: Mutex<Option<(Instant, Arc<Vec<Value>>)>>,
}

/// How long a server's tool list is reused before it is asked again.
const TOOLS_TTL: Duration = Duration::from_secs(10);

/// How long a server whose call timed out has to answer a ping before it
/// is restarted.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// A per-agent instance unused this long is stopped.
const IDLE_INSTANCE: Duration = Duration::from_secs(600);

/// The registry and the gateway behind every agent's `MCP_URL`.
pub struct McpService {
    store: Store,
    clock: Arc<dyn Clock>,
    policy: Arc<PolicyService>,
    telemetry: Arc<crate::telemetry::Telemetry>,
    runtime: McpRuntime,
    servers: Mutex<HashMap<(TenantId, String), Arc<Entry>>>,
    calls: Arc<fabric_telemetry::metrics::CounterVec>,
    /// `agent_fabric_mcp_server_starts_total{server,reason}`.
    starts: Arc<fabric_telemetry::metrics::CounterVec>,
    latency: Arc<fabric_telemetry::metrics::HistogramVec>,
}

impl std::fmt::Debug for McpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpService")
            .field("servers", &self.servers.lock().len())
            .finish_non_exhaustive()
    }
}

const CALL_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl McpService {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        policy: Arc<PolicyService>,
        telemetry: Arc<crate::telemetry::Telemetry>,
        runtime: McpRuntime,
    ) -> Arc<Self> {
        let registry = &telemetry.registry;
        let calls = registry.counter_vec(
            "agent_fabric_mcp_tool_calls_total",
            "Agents' MCP tool calls, by server, tool and outcome (ok, tool_error, denied, approval_denied, timeout, error).",
            &["server", "tool", "outcome"],
        );
        let starts = registry.counter_vec(
            "agent_fabric_mcp_server_starts_total",
            "MCP server instances started, by server and why (first_use; stopped: it had exited or its session ended; unresponsive: silent to a ping after a call of its timed out).",
            &["server", "reason"],
        );
        let latency = registry.histogram_vec(
            "agent_fabric_mcp_tool_call_seconds",
            "Time of agents' MCP tool calls through the fabric (policy, approval wait and the server's answer), by server and tool.",
            &["server", "tool"],
            CALL_BUCKETS,
        );
        Arc::new(Self {
            store,
            clock,
            policy,
            telemetry,
            runtime,
            servers: Mutex::new(HashMap::new()),
            calls,
            starts,
            latency,
        })
    }

    /// Loads the registered servers (none is started until it is used).
    pub async fn load(&self) -> Result<usize, McpError> {
        let records = self.store.list_mcp_servers().await?;
        let mut servers = self.servers.lock();
        for record in records {
            let key = (record.tenant.clone(), record.spec.name.clone());
            servers.insert(key, Arc::new(Entry::new(record)));
        }
        Ok(servers.len())
    }

    /// Stops every instance (at shutdown, or for tests).
    pub async fn stop_all(&self) {
        let entries: Vec<Arc<Entry>> = self.servers.lock().values().cloned().collect();
        for entry in entries {
            entry.instances.lock().await.clear();
        }
    }

    /// Stops per-agent instances nobody used for a while.
    pub async fn reap_idle(&self) {
        let entries: Vec<Arc<Entry>> = self.servers.lock().values().cloned().collect();
        for entry in entries {
            entry
                .instances
                .lock()
                .await
                .retain(|agent, upstream| agent.is_none() || upstream.idle_for() < IDLE_INSTANCE);
        }
    }

    fn may_manage(by: &Identity) -> Result<(), McpError> {
        if Scope::Admin.granted_by(&by.scopes) {
            return Ok(());
        }
        Ok(by.require(Scope::TenantAdmin)?)
    }

    fn entry(&self, tenant: &TenantId, name: &str) -> Option<Arc<Entry>> {
        self.servers
            .lock()
            .get(&(tenant.clone(), name.to_owned()))
            .cloned()
    }

    /// Registers (or replaces) a server of the caller's tenant.
    pub async fn put(&self, by: &Identity, spec: McpServerSpec) -> Result<McpServerView, McpError> {
        Self::may_manage(by)?;
        spec.validate()?;
        if spec.is_stdio()
            && spec.isolation == IsolationLevel::Process
            && self.runtime.helper.is_none()
        {
            return Err(McpError::NoSandboxHelper);
        }
        if spec.is_stdio() && spec.isolation == IsolationLevel::None {
            // A host process of the fabric's: only an admin may run one
            // (confined, but outside any sandbox).
            by.require(Scope::Admin)?;
        }
        let record = McpServerRecord {
            tenant: by.tenant.clone(),
            spec,
            created_at: self.clock.now(),
            created_by: by.user.clone(),
        };
        self.store.put_mcp_server(record.clone()).await?;
        let key = (record.tenant.clone(), record.spec.name.clone());
        let view = record.view();
        let old = self
            .servers
            .lock()
            .insert(key, Arc::new(Entry::new(record)));
        // The replaced server's instances stop as their last caller finishes.
        drop(old);
        self.policy
            .record_admin(by, "mcp:register", &format!("mcp-server:{}", view.name));
        tracing::info!(mcp_server = %view.name, transport = %view.transport, "MCP server registered");
        Ok(view)
    }

    pub async fn delete(&self, by: &Identity, name: &str) -> Result<(), McpError> {
        Self::may_manage(by)?;
        if self.entry(&by.tenant, name).is_none() {
            return Err(McpError::NotFound(name.to_owned()));
        }
        self.store
            .delete_mcp_server(by.tenant.clone(), name.to_owned())
            .await?;
        self.servers
            .lock()
            .remove(&(by.tenant.clone(), name.to_owned()));
        self.policy
            .record_admin(by, "mcp:remove", &format!("mcp-server:{name}"));
        tracing::info!(mcp_server = %name, "MCP server removed");
        Ok(())
    }

    /// The caller's tenant's servers, by name.
    pub fn list(&self, by: &Identity) -> Result<Vec<McpServerView>, McpError> {
        by.require(Scope::ReadTasks)?;
        let mut views: Vec<McpServerView> = self
            .servers
            .lock()
            .values()
            .filter(|e| e.record.tenant == by.tenant)
            .map(|e| e.record.view())
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(views)
    }

    pub fn get(&self, by: &Identity, name: &str) -> Result<McpServerView, McpError> {
        by.require(Scope::ReadTasks)?;
        self.entry(&by.tenant, name)
            .map(|e| e.record.view())
            .ok_or_else(|| McpError::NotFound(name.to_owned()))
    }

    /// What a server offers (starting it if it is not running).
    pub async fn tools(&self, by: &Identity, name: &str) -> Result<Vec<McpToolView>, McpError> {
        by.require(Scope::ReadTasks)?;
        let entry = self
            .entry(&by.tenant, name)
            .ok_or_else(|| McpError::NotFound(name.to_owned()))?;
        let tools = self.upstream_tools(&entry, None).await?;
        Ok(tools
            .iter()
            .filter_map(|tool| {
                let tool_name = tool.get("name")?.as_str()?;
                Some(McpToolView {
                    name: tool_name.to_owned(),
                    exposed_as: exposed_tool_name(name, tool_name)
                        .unwrap_or_else(|| "(name too long for MCP: not offered)".to_owned()),
                    action: format!("tool:{name}/{tool_name}"),
                    description: tool
                        .get("description")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    input_schema: tool.get("inputSchema").cloned().unwrap_or(json!({})),
                })
            })
            .collect())
    }

    /// The instance serving `agent` (the shared one unless the server runs
    /// one per agent), started (again, after a crash) when it is not running.
    async fn instance(
        &self,
        entry: &Entry,
        agent: Option<&AgentId>,
    ) -> Result<Arc<Upstream>, McpError> {
        let spec = &entry.record.spec;
        let key = match spec.instance {
            McpInstance::PerAgent => agent.cloned(),
            McpInstance::Shared => None,
        };
        let mut instances = entry.instances.lock().await;
        let mut why = "first_use";
        if let Some(upstream) = instances.get(&key) {
            if upstream.is_alive() && upstream.responsive(PING_TIMEOUT).await {
                return Ok(Arc::clone(upstream));
            }
            if upstream.is_alive() {
                why = "unresponsive";
                tracing::warn!(mcp_server = %spec.name, "MCP server did not answer a ping after a call of its timed out: restarting it");
            } else {
                why = "stopped";
                tracing::warn!(mcp_server = %spec.name, reason = %upstream.ended().unwrap_or_default(), "MCP server is not running: restarting it");
            }
            instances.remove(&key);
            *entry.tools.lock() = None;
        }
        self.starts.inc(&[&spec.name, why]);
        let upstream = self.start(spec, key.as_ref()).await?;
        instances.insert(key, Arc::clone(&upstream));
        Ok(upstream)
    }

    async fn start(
        &self,
        spec: &McpServerSpec,
        agent: Option<&AgentId>,
    ) -> Result<Arc<Upstream>, McpError> {
        let started = Instant::now();
        let upstream = match &spec.command {
            None => Upstream::http(spec)?,
            Some(command) => self.start_stdio(spec, command, agent).await?,
        };
        match tokio::time::timeout(upstream::START_TIMEOUT, upstream.initialize()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // What the server said on its way out is usually the reason
                // (a command not found, a missing module, a bad argument).
                return Err(
                    match upstream.stderr_tail(Duration::from_millis(500)).await {
                        Some(tail) => McpError::Start {
                            server: spec.name.clone(),
                            reason: format!("{e}; its stderr ended with: {tail}"),
                        },
                        None => e.into(),
                    },
                );
            }
            Err(_) => {
                return Err(McpError::Start {
                    server: spec.name.clone(),
                    reason: format!(
                        "it did not answer initialize within {} s",
                        upstream::START_TIMEOUT.as_secs()
                    ),
                });
            }
        }
        let ms = started.elapsed().as_millis() as u64;
        match agent {
            Some(agent) => {
                tracing::info!(mcp_server = %spec.name, agent_id = %agent, ms, "MCP server started for one agent");
            }
            None => tracing::info!(mcp_server = %spec.name, ms, "MCP server started"),
        }
        Ok(upstream)
    }

    async fn start_stdio(
        &self,
        spec: &McpServerSpec,
        command: &str,
        agent: Option<&AgentId>,
    ) -> Result<Arc<Upstream>, McpError> {
        let failed = |reason: String| McpError::Start {
            server: spec.name.clone(),
            reason,
        };
        let suffix = hex::encode(rand::random::<[u8; 4]>());
        let name = match agent {
            Some(agent) => format!("mcp-{}-{}-{suffix}", spec.name, agent),
            None => format!("mcp-{}-{suffix}", spec.name),
        };
        let name: String = name.chars().take(64).collect();
        let workdir = self.runtime.root.join(&name);
        let mut env: Vec<(String, String)> = spec
            .env
            .iter()
            .chain(&spec.secret_env)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let redact = Redact::of(spec);
        match spec.isolation {
            IsolationLevel::Process => {
                let mut config = self
                    .runtime
                    .helper
                    .clone()
                    .map(|helper| {
                        let mut config = fabric_runtime::sandbox::SandboxConfig::new(
                            name.clone(),
                            workdir.clone(),
                            helper,
                        );
                        config.cgroup_parent = self.runtime.cgroup_parent.clone();
                        config
                    })
                    .ok_or(McpError::NoSandboxHelper)?;
                config.memory_mb = spec.memory_mb;
                config.cpu_cores = spec.cpu_cores;
                config
                    .read_only_paths
                    .extend(spec.read_only_paths.iter().map(PathBuf::from));
                for entry in &spec.read_write_paths {
                    let (host, inside) = fabric_core::mcp::split_mount(entry);
                    config
                        .read_write_mounts
                        .push((PathBuf::from(host), PathBuf::from(inside)));
                }
                let sandbox = Arc::new(
                    fabric_runtime::sandbox::Sandbox::create(config)
                        .await
                        .map_err(|e| failed(e.to_string()))?,
                );
                let mut tasks = Vec::new();
                if !spec.network_egress.is_empty() {
                    let rules = spec
                        .network_egress
                        .iter()
                        .map(|r| fabric_core::agent::parse_egress(r))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(failed)?;
                    let proxy = fabric_runtime::net::EgressProxy::new(
                        format!("mcp:{}", spec.name),
                        rules,
                        Arc::new(|_| {}),
                    );
                    let listener = sandbox
                        .bind_tcp(crate::proxy::EGRESS_PROXY_PORT)
                        .map_err(|e| failed(e.to_string()))?;
                    listener
                        .set_nonblocking(true)
                        .map_err(|e| failed(e.to_string()))?;
                    tasks.push(crate::proxy::spawn_egress_proxy(
                        proxy,
                        listener,
                        format!("MCP server {}", spec.name),
                    ));
                    env.extend(crate::proxy::egress_proxy_env());
                }
                let mut cmd =
                    fabric_runtime::sandbox::SandboxCommand::new(["/bin/sh", "-c", command]);
                cmd.env = env;
                cmd.stdin = fabric_runtime::sandbox::SandboxStdio::Piped;
                cmd.stdout = fabric_runtime::sandbox::SandboxStdio::Piped;
                cmd.stderr = fabric_runtime::sandbox::SandboxStdio::Piped;
                let mut process = match sandbox.spawn(cmd).await {
                    Ok(process) => process,
                    Err(e) => {
                        let _ = sandbox.destroy().await;
                        return Err(failed(e.to_string()));
                    }
                };
                let pipes = (
                    process.stdin.take(),
                    process.stdout.take(),
                    process.stderr.take(),
                );
                let running = Running::Sandbox {
                    _process: process,
                    sandbox,
                    tasks,
                };
                stdio_upstream(&spec.name, pipes, running, redact).map_err(failed)
            }
            _ => {
                std::fs::create_dir_all(&workdir)
                    .map_err(|e| failed(format!("cannot create {}: {e}", workdir.display())))?;
                let mut confine = fabric_runtime::confine::ConfineConfig::default();
                confine
                    .read_only_paths
                    .extend(spec.read_only_paths.iter().map(PathBuf::from));
                let confinement = fabric_runtime::confine::Confinement::new(&confine, &workdir)
                    .map_err(|e| failed(e.to_string()))?;
                let confinement = match &self.runtime.helper {
                    Some(helper) => confinement.with_trampoline(helper.clone()),
                    None => confinement,
                };
                let mut process = fabric_runtime::spawn_program_with_stdin(
                    command,
                    &workdir,
                    &env,
                    Some(&confinement),
                )
                .map_err(|e| failed(e.to_string()))?;
                let pipes = (
                    process.stdin.take(),
                    process.stdout.take(),
                    process.stderr.take(),
                );
                let running = Running::Host { _process: process };
                stdio_upstream(&spec.name, pipes, running, redact).map_err(failed)
            }
        }
    }

    /// The server's tools (cached for [`TOOLS_TTL`]).
    async fn upstream_tools(
        &self,
        entry: &Entry,
        agent: Option<&AgentId>,
    ) -> Result<Arc<Vec<Value>>, McpError> {
        if let Some((at, tools)) = entry.tools.lock().as_ref()
            && at.elapsed() < TOOLS_TTL
        {
            return Ok(Arc::clone(tools));
        }
        let upstream = self.instance(entry, agent).await?;
        let timeout = Duration::from_secs_f64(entry.record.spec.timeout_seconds);
        let tools = Arc::new(upstream.list_tools(timeout).await?);
        *entry.tools.lock() = Some((Instant::now(), Arc::clone(&tools)));
        Ok(tools)
    }

    /// An agent's view: what its grants and the policy let it see and call.
    pub fn agent_tools(self: &Arc<Self>, caller: AgentCaller) -> AgentTools {
        AgentTools {
            service: Arc::clone(self),
            caller,
        }
    }
}

/// A started stdio server's pipes (`stdin`, `stdout`, `stderr`) as an
/// [`Upstream`]; `running` keeps the process alive.
fn stdio_upstream<I, O, E>(
    server: &str,
    (stdin, stdout, stderr): (Option<I>, Option<O>, Option<E>),
    running: Running,
    redact: Redact,
) -> Result<Arc<Upstream>, String>
where
    I: tokio::io::AsyncWrite + Send + 'static,
    O: tokio::io::AsyncRead + Send + 'static,
    E: tokio::io::AsyncRead + Send + 'static,
{
    let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
        return Err("its stdin and stdout are not piped".to_owned());
    };
    let stderr = stderr.map(|s| Box::pin(s) as std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>);
    Ok(Upstream::stdio(
        server,
        Box::pin(stdin),
        Box::pin(stdout),
        stderr,
        running,
        redact,
    ))
}

impl Entry {
    fn new(record: McpServerRecord) -> Self {
        Self {
            record,
            instances: tokio::sync::Mutex::new(HashMap::new()),
            tools: Mutex::new(None),
        }
    }
}

/// Who is calling tools: an agent, its tenant and workspace, its grants.
#[derive(Debug, Clone)]
pub struct AgentCaller {
    pub tenant: TenantId,
    pub agent: AgentId,
    pub workspace: Option<String>,
    /// The agent's `tools[]`, parsed; entries that do not parse grant nothing.
    pub grants: Vec<ToolGrant>,
}

impl AgentCaller {
    pub fn new(
        tenant: TenantId,
        agent: AgentId,
        workspace: Option<String>,
        tools: &[String],
    ) -> Self {
        let grants = tools
            .iter()
            .filter_map(|entry| match ToolGrant::parse(entry) {
                Ok(grant) => Some(grant),
                Err(e) => {
                    tracing::warn!(agent_id = %agent, error = %e, "a tools[] entry grants nothing");
                    None
                }
            })
            .collect();
        Self {
            tenant,
            agent,
            workspace,
            grants,
        }
    }

    fn actor(&self) -> Actor {
        Actor::agent(
            self.tenant.clone(),
            self.agent.clone(),
            self.workspace.clone(),
        )
    }

    /// The servers any grant names.
    fn servers(&self) -> Vec<&str> {
        let mut servers: Vec<&str> = self.grants.iter().map(|g| g.server.as_str()).collect();
        servers.sort_unstable();
        servers.dedup();
        servers
    }

    fn granted(&self, server: &str, tool: &str) -> bool {
        self.grants.iter().any(|g| g.covers(server, tool))
    }
}

/// One agent's aggregated MCP server (its `MCP_URL`).
pub struct AgentTools {
    service: Arc<McpService>,
    caller: AgentCaller,
}

/// The digest of a call's arguments, as audited (never the arguments: they
/// may hold anything).
fn arguments_digest(arguments: &Value) -> String {
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(arguments.to_string().as_bytes()))
    )
}

impl ToolHost for AgentTools {
    fn info(&self) -> ServerInfo {
        ServerInfo {
            name: "reactor-fabric-tools",
            title: "reactor-fabric tools",
            instructions: "The MCP tools this agent may use, through the fabric: each call is checked against its policies, and may wait for a person's approval.".to_owned(),
        }
    }

    async fn list_tools(&self) -> Result<Vec<Value>, RpcError> {
        let service = &self.service;
        let actor = self.caller.actor();
        let mut listed = Vec::new();
        for server in self.caller.servers() {
            let Some(entry) = service.entry(&self.caller.tenant, server) else {
                continue;
            };
            let tools = match service
                .upstream_tools(&entry, Some(&self.caller.agent))
                .await
            {
                Ok(tools) => tools,
                Err(e) => {
                    // One broken server must not hide the others' tools.
                    tracing::warn!(agent_id = %self.caller.agent, mcp_server = %server, error = %e, "cannot list an MCP server's tools");
                    continue;
                }
            };
            for tool in tools.iter() {
                let Some(name) = tool.get("name").and_then(Value::as_str) else {
                    continue;
                };
                if !self.caller.granted(server, name) {
                    continue;
                }
                // Shown unless the policy denies it outright (a tool that
                // needs an approval is shown: its call waits for one).
                let action = format!("tool:{server}/{name}");
                if service.policy.peek(&actor, &action) == Effect::Deny {
                    continue;
                }
                let Some(exposed) = exposed_tool_name(server, name) else {
                    continue;
                };
                let mut tool = tool.clone();
                tool["name"] = json!(exposed);
                listed.push(tool);
            }
        }
        Ok(listed)
    }

    async fn call_tool(&self, name: &str, arguments: Value) -> Result<Value, RpcError> {
        let started = Instant::now();
        let unknown = || {
            RpcError::invalid_params(format!(
                "unknown tool {name:?}: tools/list names the tools this agent may use"
            ))
        };
        let (server, tool) = split_tool_name(name).ok_or_else(unknown)?;
        let service = &self.service;
        let entry = service
            .entry(&self.caller.tenant, server)
            .filter(|_| self.caller.granted(server, tool))
            .ok_or_else(unknown)?;
        let parent = crate::trace::current();
        let start_nanos = crate::trace::now_nanos();
        let outcome = self.checked_call(&entry, server, tool, arguments).await;
        let label = match &outcome {
            Ok(result) if result.get("isError").and_then(Value::as_bool) == Some(true) => {
                "tool_error"
            }
            Ok(_) => "ok",
            Err((label, _)) => label,
        };
        service.calls.inc(&[server, tool, label]);
        service.latency.observe(&[server, tool], started.elapsed());
        if service.telemetry.tracer.enabled() {
            let mut span = crate::trace::Span::new(
                "mcp.tools/call",
                crate::trace::SpanKind::Client,
                parent.as_ref(),
                start_nanos,
            )
            .attr("mcp.server", server.to_owned())
            .attr("mcp.tool", tool.to_owned())
            .attr("agent_id", self.caller.agent.as_str())
            .attr("outcome", label);
            span.end_nanos = crate::trace::now_nanos();
            if let Err((_, e)) = &outcome {
                span.error = Some(e.message.clone());
            }
            service.telemetry.tracer.record(span);
        }
        outcome.map_err(|(_, e)| e)
    }
}

impl AgentTools {
    /// Policy (waiting for an approval when it asks for one), then the call.
    async fn checked_call(
        &self,
        entry: &Entry,
        server: &str,
        tool: &str,
        arguments: Value,
    ) -> Result<Value, (&'static str, RpcError)> {
        let service = &self.service;
        let actor = self.caller.actor();
        let action = format!("tool:{server}/{tool}");
        let digest = arguments_digest(&arguments);
        let request_id = crate::request_id::current();
        let decision = service
            .policy
            .decide(&actor, &action, Some(&digest), "mcp", &request_id);
        match decision.effect {
            Effect::Allow => {}
            Effect::Deny => {
                return Err((
                    "denied",
                    RpcError::new(code::REFUSED, decision.refusal(&action).message)
                        .with_data(json!({"action": action, "policy_id": decision.policy_id, "rule": decision.rule})),
                ));
            }
            Effect::RequireApproval => {
                let approval = service
                    .policy
                    .request_approval(&actor, &action, Some(&digest), &decision, &request_id)
                    .await
                    .map_err(|e| ("error", RpcError::new(code::INTERNAL_ERROR, e.to_string())))?;
                tracing::info!(agent_id = %self.caller.agent, approval_id = %approval.id, action, "tool call waits for an approval");
                // The approval times out on its own at `expires_at`; a
                // little more lets that decision arrive.
                let wait = decision.approval_timeout + Duration::from_secs(2);
                let decided = service
                    .policy
                    .wait_approval(&self.caller.tenant, approval.id, wait)
                    .await
                    .map_err(|e| ("error", RpcError::new(code::INTERNAL_ERROR, e.to_string())))?;
                if decided.status != ApprovalStatus::Approved {
                    let status = match decided.status {
                        ApprovalStatus::Pending => ApprovalStatus::TimedOut,
                        other => other,
                    };
                    let why = decided
                        .reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default();
                    return Err((
                        "approval_denied",
                        RpcError::new(
                            code::REFUSED,
                            format!(
                                "{action:?} needs an approval (rule {} of policy {:?}), which was {status}{why}",
                                decision.rule,
                                decision.policy_id.as_deref().unwrap_or("")
                            ),
                        )
                        .with_data(json!({"action": action, "approval_id": approval.id, "approval_status": status})),
                    ));
                }
            }
        }
        let spec = &entry.record.spec;
        let upstream = service
            .instance(entry, Some(&self.caller.agent))
            .await
            .map_err(|e| {
                // The server's own output stays with the fabric's users (the
                // log, `mcp tools`): an agent learns that it failed.
                let message = match e {
                    McpError::Start { server, .. } => format!(
                        "MCP server {server:?} could not be started: the fabric's log, or reactor-fabric mcp tools {server}, says why"
                    ),
                    other => other.to_string(),
                };
                ("error", RpcError::new(code::INTERNAL_ERROR, message))
            })?;
        let timeout = Duration::from_secs_f64(spec.timeout_seconds);
        let result = upstream
            .call_tool(tool, arguments, timeout)
            .await
            .map_err(|e| {
                let label = if matches!(e, UpstreamError::Timeout { .. }) {
                    "timeout"
                } else {
                    "error"
                };
                (label, e.to_rpc())
            })?;
        let size = result.to_string().len() as u64;
        if size > spec.max_result_bytes {
            return Err((
                "error",
                RpcError::new(
                    code::INTERNAL_ERROR,
                    format!(
                        "the result of {action:?} is {size} bytes, over the server's max_result_bytes ({}): ask for less, or have an admin raise the limit",
                        spec.max_result_bytes
                    ),
                ),
            ));
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_names_the_arguments_without_showing_them() {
        let digest = arguments_digest(&json!({"path": "/secret/plan.txt"}));
        assert!(digest.starts_with("sha256:"));
        assert_eq!(digest.len(), 7 + 64);
        assert!(!digest.contains("secret"));
        assert_eq!(
            digest,
            arguments_digest(&json!({"path": "/secret/plan.txt"}))
        );
    }

    #[test]
    fn grants_that_do_not_parse_grant_nothing() {
        let caller = AgentCaller::new(
            TenantId::new("default").unwrap(),
            AgentId::new("coder").unwrap(),
            None,
            &[
                "time/*".to_owned(),
                "shell".to_owned(),
                "files/read_file".to_owned(),
            ],
        );
        assert_eq!(caller.servers(), ["files", "time"]);
        assert!(caller.granted("time", "get_current_time"));
        assert!(caller.granted("files", "read_file"));
        assert!(!caller.granted("files", "write_file"));
    }
}
