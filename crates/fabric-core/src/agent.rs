//! Agents (REQUIREMENTS §5): their configuration, life-cycle state and sessions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, TenantId};
use crate::time::Timestamp;

/// How strongly an agent is separated from the host and from other agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum IsolationLevel {
    /// A plain child process of the fabric.
    #[default]
    None,
    /// Linux namespaces, cgroups, a private filesystem view and network.
    Process,
    /// A Docker container.
    Container,
}

impl IsolationLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Process => "process",
            Self::Container => "container",
        }
    }
}

impl fmt::Display for IsolationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IsolationLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::None, Self::Process, Self::Container]
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("invalid isolation level {s:?}: use none, process or container"))
    }
}

fn default_memory_mb() -> u64 {
    512
}
fn default_cpu_cores() -> f64 {
    1.0
}
/// 10 GiB: room for a repository checkout and its build, not for a runaway
/// writer to fill the host's disk.
pub const DEFAULT_DISK_MB: u64 = 10 * 1024;
fn default_disk_mb() -> u64 {
    DEFAULT_DISK_MB
}
/// Largest `isolation.disk_mb`: 16 TiB.
pub const MAX_DISK_MB: u64 = 16 * 1024 * 1024;
fn default_alert_threshold() -> u8 {
    80
}
fn default_concurrency() -> u32 {
    1
}
fn default_max_queue_depth() -> u32 {
    1000
}
fn default_max_restarts() -> u32 {
    5
}

/// `isolation { level, memory_mb, cpu_cores, filesystem_root, network_egress }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct IsolationConfig {
    #[serde(default)]
    pub level: IsolationLevel,
    #[serde(default = "default_memory_mb")]
    #[cfg_attr(feature = "openapi", schema(minimum = 16, maximum = 1048576))]
    pub memory_mb: u64,
    #[serde(default = "default_cpu_cores")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.01, maximum = 1024.0))]
    pub cpu_cores: f64,
    /// Disk quota in MiB for everything the agent's tasks write in their
    /// working directories (their `/tmp` included at isolation `process`). A
    /// task that goes past it fails with reason `disk_quota_exceeded`.
    #[serde(default = "default_disk_mb")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 16777216))]
    pub disk_mb: u64,
    /// Directory the agent's working dir is created under (default: the fabric's data dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem_root: Option<String>,
    /// Allowed egress: `host:port`, `*.domain:port` or a bare host (any port). Empty = no network.
    #[serde(default)]
    pub network_egress: Vec<String>,
    /// Extra host paths visible read-only to the agent (inside a `process`
    /// sandbox or a container at the same path, or allowed to a confined
    /// `none` agent), e.g. the directory holding the agent's program.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only_paths: Vec<String>,
    /// Level `none` only: run as the fabric's own user without confinement,
    /// seeing everything that user sees (its environment and data directory
    /// included). Only an admin may ask for it; for programs trusted as much
    /// as the fabric itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub as_fabric_user: bool,
}

impl Default for IsolationConfig {
    fn default() -> Self {
        Self {
            level: IsolationLevel::None,
            memory_mb: default_memory_mb(),
            cpu_cores: default_cpu_cores(),
            disk_mb: default_disk_mb(),
            filesystem_root: None,
            network_egress: Vec::new(),
            read_only_paths: Vec::new(),
            as_fabric_user: false,
        }
    }
}

/// `budget { ... }`: limits per day. At spawn they become the agent's budget
/// (`agent:<id>`), which the server's budgets service enforces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_compute_seconds_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_per_day_usd: Option<f64>,
    #[serde(default = "default_alert_threshold")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub alert_threshold_percent: u8,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            max_tokens_per_day: None,
            max_compute_seconds_per_day: None,
            max_cost_per_day_usd: None,
            alert_threshold_percent: default_alert_threshold(),
        }
    }
}

/// What happens when an agent's process exits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Stay stopped.
    Never,
    /// Restart after a failure (non-zero exit, signal), with exponential backoff.
    #[default]
    OnFailure,
}

/// `pool { min_idle }`: sandboxes kept started so a spawn is served at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 64))]
    pub min_idle: u32,
}

/// An agent's configuration (REQUIREMENTS §5), as given to `POST /v1/agents` or in an agent file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub id: AgentId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub isolation: IsolationConfig,
    #[serde(default)]
    pub budget: BudgetConfig,
    #[serde(default)]
    pub policies: Vec<String>,
    /// The workspace the agent belongs to: the `workspace` attribute of its
    /// policy checks (policies attached to this workspace apply to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// What it runs: a shell command line (`/bin/sh -c`; at isolation
    /// `container`, in `image` or the default agent image). Neither `command`
    /// nor `image`: the built-in shell agent, running each task's commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A container image whose own command is the agent (isolation `container`;
    /// with `command`, that runs in it instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The fabric runs nothing: the agent runs elsewhere and connects with a
    /// token from `POST /v1/auth/tokens {"agent": id}` (isolation `none` only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// Tasks it works on at once.
    #[serde(default = "default_concurrency")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1024))]
    pub concurrency: u32,
    #[serde(default = "default_max_queue_depth")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_queue_depth: u32,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Restarts allowed before the agent is left `crashed`.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// The worker node it runs on (`reactor-fabric node list`). Absent: a
    /// node whose labels match `node_selector`, else wherever there is the
    /// most free capacity (the orchestrator itself is one of those places).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Labels a worker node must carry, all of them, to run this agent.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub node_selector: std::collections::BTreeMap<String, String>,
}

/// Why an [`AgentConfig`] is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid agent config: {0}")]
pub struct AgentConfigError(pub String);

impl AgentConfig {
    /// A config with every default, running the built-in shell agent.
    pub fn new(id: AgentId) -> Self {
        Self {
            id,
            model: None,
            tools: Vec::new(),
            isolation: IsolationConfig::default(),
            budget: BudgetConfig::default(),
            policies: Vec::new(),
            workspace: None,
            command: None,
            image: None,
            external: false,
            concurrency: default_concurrency(),
            max_queue_depth: default_max_queue_depth(),
            pool: PoolConfig::default(),
            restart: RestartPolicy::default(),
            max_restarts: default_max_restarts(),
            node: None,
            node_selector: std::collections::BTreeMap::new(),
        }
    }

    /// Whether it must run on a worker node (it names one or a selector).
    pub fn placed_on_node(&self) -> bool {
        self.node.is_some() || !self.node_selector.is_empty()
    }

    /// Whether it is the built-in shell agent (nothing of its own to run).
    pub fn is_builtin_shell(&self) -> bool {
        self.command.is_none() && self.image.is_none() && !self.external
    }

    /// Checks every field; the error names the field and the accepted range.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        let err = |m: String| Err(AgentConfigError(m));
        let iso = &self.isolation;
        if !(16..=1_048_576).contains(&iso.memory_mb) {
            return err(format!(
                "isolation.memory_mb must be between 16 and 1048576, got {}",
                iso.memory_mb
            ));
        }
        if !(1..=MAX_DISK_MB).contains(&iso.disk_mb) {
            return err(format!(
                "isolation.disk_mb must be between 1 and {MAX_DISK_MB}, got {}",
                iso.disk_mb
            ));
        }
        if !(iso.cpu_cores.is_finite() && iso.cpu_cores >= 0.01 && iso.cpu_cores <= 1024.0) {
            return err(format!(
                "isolation.cpu_cores must be between 0.01 and 1024, got {}",
                iso.cpu_cores
            ));
        }
        for rule in &iso.network_egress {
            parse_egress(rule).map_err(AgentConfigError)?;
        }
        for entry in &self.tools {
            crate::mcp::ToolGrant::parse(entry).map_err(AgentConfigError)?;
        }
        for path in &iso.read_only_paths {
            let p = std::path::Path::new(path);
            if !p.is_absolute()
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
                || p == std::path::Path::new("/")
            {
                return err(format!(
                    "isolation.read_only_paths: {path:?} must be an absolute path below / without .."
                ));
            }
        }
        if let Some(root) = &iso.filesystem_root
            && (root.contains('\0') || !is_plain_path_below_root(std::path::Path::new(root)))
        {
            return err(format!(
                "isolation.filesystem_root: {root:?} must be an absolute directory path below / without . or .. (and one of the server's --agent-root directories)"
            ));
        }
        if iso.read_only_paths.iter().any(|p| p.contains('\0')) {
            return err("isolation.read_only_paths: a path contains a NUL character".into());
        }
        if self.command.is_some() && self.image.is_some() && iso.level != IsolationLevel::Container
        {
            return err("give either 'command' or 'image', not both".into());
        }
        if self.command.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return err("'command' is empty".into());
        }
        if self.command.as_deref().is_some_and(|c| c.contains('\0')) {
            return err("'command' contains a NUL character, which no program can receive".into());
        }
        if self.external && (self.command.is_some() || self.image.is_some()) {
            return err("an 'external' agent runs elsewhere: give no 'command' or 'image'".into());
        }
        if self.external && iso.level != IsolationLevel::None {
            return err("an 'external' agent runs elsewhere, so the fabric cannot isolate it: use isolation.level = none".into());
        }
        if self.image.is_some() && iso.level != IsolationLevel::Container {
            return err("'image' needs isolation.level = container".into());
        }
        if iso.as_fabric_user && iso.level != IsolationLevel::None {
            return err(format!(
                "isolation.as_fabric_user applies to level none only, not {}",
                iso.level
            ));
        }
        if let Some(node) = &self.node {
            crate::node::validate_node_name(node)
                .map_err(|e| AgentConfigError(format!("node: {e}")))?;
        }
        for (key, value) in &self.node_selector {
            crate::node::validate_label(key, value)
                .map_err(|e| AgentConfigError(format!("node_selector: {e}")))?;
        }
        if self.placed_on_node() {
            if self.external {
                return err(
                    "an 'external' agent runs elsewhere: it takes no 'node' or 'node_selector'"
                        .into(),
                );
            }
            if iso.filesystem_root.is_some() {
                return err("isolation.filesystem_root names a directory of the orchestrator's host: it cannot be placed on a worker node".into());
            }
        }
        if iso.level == IsolationLevel::Container && iso.filesystem_root.is_some() {
            return err("isolation.filesystem_root does not apply to level container: its working dir is a Docker volume".into());
        }
        if let Some(image) = &self.image
            && (image.trim().is_empty() || image.chars().any(char::is_whitespace))
        {
            return err(format!("'image' {image:?} is not an image reference"));
        }
        if !(1..=1024).contains(&self.concurrency) {
            return err(format!(
                "concurrency must be between 1 and 1024, got {}",
                self.concurrency
            ));
        }
        if self.max_queue_depth == 0 {
            return err("max_queue_depth must be at least 1".into());
        }
        if self.budget.alert_threshold_percent == 0 || self.budget.alert_threshold_percent > 100 {
            return err("budget.alert_threshold_percent must be between 1 and 100".into());
        }
        if self.pool.min_idle > 64 {
            return err(format!(
                "pool.min_idle must be at most 64, got {}",
                self.pool.min_idle
            ));
        }
        Ok(())
    }
}

/// One egress allowlist entry: a host pattern and an optional port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    /// `api.github.com`, or `*.github.com` for any subdomain.
    pub host: String,
    /// `None` allows any port.
    pub port: Option<u16>,
}

impl EgressRule {
    /// Whether a connection to `host:port` is allowed by this rule.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host_ok = match self.host.strip_prefix("*.") {
            Some(domain) => {
                host.len() > domain.len() + 1
                    && host.ends_with(domain)
                    && host[..host.len() - domain.len()].ends_with('.')
            }
            None => host == self.host,
        };
        host_ok && self.port.is_none_or(|p| p == port)
    }
}

/// An absolute path below `/` written without `.` or `..`: what a host
/// directory of an agent's config (`filesystem_root`) and the server's
/// `--agent-root` must be.
pub fn is_plain_path_below_root(path: &std::path::Path) -> bool {
    path.is_absolute()
        && path != std::path::Path::new("/")
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        })
}

/// Parses `host[:port]` / `*.domain[:port]`.
pub fn parse_egress(rule: &str) -> Result<EgressRule, String> {
    let bad =
        || format!("invalid egress rule {rule:?}: use host:port, *.domain:port or a bare host");
    let (host, port) = match rule.rsplit_once(':') {
        Some((h, p)) => (
            h,
            Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?),
        ),
        None => (rule, None),
    };
    let name = host.strip_prefix("*.").unwrap_or(host);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid {
        return Err(bad());
    }
    Ok(EgressRule {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// Whether the fabric should keep an agent running (what a restart restores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Running,
    Stopped,
}

/// An agent as stored: its config and what the fabric should do with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub config: AgentConfig,
    /// The tenant that owns it: only its users (and admins) see it, give it
    /// tasks or manage it. Records from before tenants owned agents belong
    /// to the default tenant.
    #[serde(default = "TenantId::default_tenant")]
    pub tenant: TenantId,
    pub desired: DesiredState,
    pub created_at: Timestamp,
    /// Sessions started so far (the next one gets `sessions + 1`).
    pub sessions: u32,
    /// Tasks completed or failed by it over all sessions.
    pub tasks_done: u64,
}

/// Where an agent is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Starting,
    Running,
    /// Finishing its in-flight tasks before it stops; leases nothing new.
    Draining,
    /// Waiting to be restarted after a failure.
    Restarting,
    Stopped,
    /// Failed and out of restarts (or restart policy `never`).
    Crashed,
}

impl AgentState {
    /// The wire name (`running`, `crashed`, ...), as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Starting => "starting",
            AgentState::Running => "running",
            AgentState::Draining => "draining",
            AgentState::Restarting => "restarting",
            AgentState::Stopped => "stopped",
            AgentState::Crashed => "crashed",
        }
    }
}

/// Whether an agent is alive, judged by its heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    /// Missed heartbeats, still within the grace period.
    Unresponsive,
    Dead,
}

/// Resource use of an agent's sandbox, from its cgroup (or `/proc` for level `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResourceUsage {
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub cpu_millis: u64,
    pub pids: u64,
}

/// An agent as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Agent {
    pub config: AgentConfig,
    /// The tenant that owns it (the built-in agents: the default tenant,
    /// and every tenant may use them).
    #[serde(default = "TenantId::default_tenant")]
    pub tenant: TenantId,
    pub state: AgentState,
    pub health: Health,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Timestamp>,
    /// Current session number (1 for the first run, +1 per restart).
    pub session: u32,
    pub tasks_running: u32,
    pub tasks_done: u64,
    pub usage: ResourceUsage,
    /// Host process id of the agent's program (or of its sandbox's init), while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub created_at: Timestamp,
    /// Why it stopped or crashed last (`exited (code N)`, `crashed (signal N)`, `oom_killed`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// The worker node its session runs on (absent: the orchestrator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One run of an agent, from start to exit (FR-LIFE-5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentSession {
    pub agent_id: AgentId,
    pub session: u32,
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,
    pub tasks_done: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record stored before agents had a tenant (and before
    /// `as_fabric_user`) reads as the default tenant's, confined.
    #[test]
    fn records_from_before_tenants_owned_agents_belong_to_the_default_tenant() {
        let old = r#"{"config":{"id":"coder","isolation":{"level":"none","memory_mb":512,"cpu_cores":1.0,"network_egress":[]},"command":"python3 agent.py"},"desired":"running","created_at":"2026-11-01T10:00:00Z","sessions":3,"tasks_done":7}"#;
        let record: AgentRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.tenant, TenantId::default_tenant());
        assert!(!record.config.isolation.as_fabric_user);
        assert_eq!(record.sessions, 3);
    }

    #[test]
    fn state_names_are_the_wire_names() {
        for state in [
            AgentState::Starting,
            AgentState::Running,
            AgentState::Draining,
            AgentState::Restarting,
            AgentState::Stopped,
            AgentState::Crashed,
        ] {
            let wire = serde_json::to_string(&state).unwrap();
            assert_eq!(wire, format!("\"{}\"", state.as_str()));
        }
    }

    #[test]
    fn egress_rules_match_hosts_ports_and_wildcards() {
        let gh = parse_egress("api.github.com:443").unwrap();
        assert!(gh.allows("api.github.com", 443));
        assert!(gh.allows("API.GitHub.com.", 443));
        assert!(!gh.allows("api.github.com", 80));
        assert!(!gh.allows("evil-api.github.com", 443));
        let wild = parse_egress("*.example.org").unwrap();
        assert!(wild.allows("a.example.org", 1) && wild.allows("x.y.example.org", 8080));
        assert!(
            !wild.allows("example.org", 80),
            "*.domain matches subdomains only"
        );
        assert!(!wild.allows("badexample.org", 80));
        for bad in ["", "host:0", "host:99999", "a..b", "*.", "http://x", "x y"] {
            assert!(parse_egress(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configs_validate_with_field_names_in_errors() {
        let id = AgentId::new("coder").unwrap();
        assert!(AgentConfig::new(id.clone()).validate().is_ok());
        let mut c = AgentConfig::new(id.clone());
        c.isolation.memory_mb = 1;
        assert!(c.validate().unwrap_err().to_string().contains("memory_mb"));
        c.isolation.memory_mb = 64;
        c.isolation.disk_mb = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("isolation.disk_mb")
        );
        c.isolation.disk_mb = DEFAULT_DISK_MB;
        let mut c = AgentConfig::new(id.clone());
        c.isolation.network_egress = vec!["nope:x".into()];
        assert!(c.validate().unwrap_err().to_string().contains("egress"));
        let mut c = AgentConfig::new(id.clone());
        c.isolation.level = IsolationLevel::Container;
        assert!(c.validate().is_ok(), "the built-in shell in a container");
        c.image = Some("python:3".into());
        c.command = Some("python3 agent.py".into());
        assert!(c.validate().is_ok(), "image and command in a container");
        c.isolation.level = IsolationLevel::Process;
        assert!(c.validate().unwrap_err().to_string().contains("not both"));
        c.command = None;
        assert!(c.validate().unwrap_err().to_string().contains("container"));
        let mut c = AgentConfig::new(id.clone());
        c.isolation.level = IsolationLevel::Container;
        c.isolation.filesystem_root = Some("/srv".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("filesystem_root")
        );
        let json = r#"{"id":"a1","isolation":{"level":"process","memory_mb":64},"command":"python3 a.py"}"#;
        let parsed: AgentConfig = serde_json::from_str(json).unwrap();
        assert_eq!(
            (
                parsed.isolation.memory_mb,
                parsed.isolation.cpu_cores,
                parsed.concurrency
            ),
            (64, 1.0, 1)
        );
        assert!(serde_json::from_str::<AgentConfig>(r#"{"id":"a","colour":1}"#).is_err());
    }
}
