//! Worker nodes (SPEC §16, issue #21): machines that join a fabric to run
//! agents, the join tokens that admit them, the config the orchestrator
//! delivers to them, and the [`NodeStore`] port.
//!
//! A node is admitted by a short-lived *join token* (`rfj_<id>_<secret>`,
//! single- or multi-use, expiring, revocable) which it exchanges once for a
//! *node credential* (`rfn_<secret>`) of its own; the credential is what
//! every later message carries, and the node renews it before it expires.
//! Both are stored as SHA-256 digests only.

use std::collections::BTreeMap;
use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::agent::{IsolationLevel, parse_egress};
use crate::{StoreError, Timestamp};

/// The prefix of a join token's secret.
pub const JOIN_TOKEN_PREFIX: &str = "rfj_";
/// The prefix of a node credential.
pub const NODE_CREDENTIAL_PREFIX: &str = "rfn_";

/// Names no node may have: `/v1/nodes/<word>` is another route.
pub const RESERVED_NAMES: [&str; 3] = ["config", "join", "tokens"];

/// Checks a node name: 1 to 63 of `a-z 0-9 -`, starting with a letter or
/// digit (a DNS label, so it can name a host or a container).
pub fn validate_node_name(name: &str) -> Result<(), String> {
    // Words the API's paths use below /v1/nodes/.
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "{name:?} cannot name a node (the API uses it in /v1/nodes/{name}); pick another"
        ));
    }
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid node name {name:?}: use 1 to 63 of a-z, 0-9 and '-', starting with a letter or digit"
        ))
    }
}

/// Checks a node label `key=value`: the key 1 to 63 of `a-z A-Z 0-9 - _ . /`,
/// the value at most 63 of the same (it may be empty).
pub fn parse_label(label: &str) -> Result<(String, String), String> {
    let (key, value) = label
        .split_once('=')
        .ok_or_else(|| format!("invalid label {label:?}: write it as key=value"))?;
    validate_label(key, value)?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Checks one label's key and value (see [`parse_label`]).
pub fn validate_label(key: &str, value: &str) -> Result<(), String> {
    let allowed = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    };
    if key.is_empty() || key.len() > 63 || !allowed(key) {
        return Err(format!(
            "invalid label key {key:?}: use 1 to 63 of a-z, A-Z, 0-9, '-', '_', '.' and '/'"
        ));
    }
    if value.len() > 63 || !allowed(value) {
        return Err(format!(
            "invalid value {value:?} of label {key:?}: use at most 63 of a-z, A-Z, 0-9, '-', '_', '.' and '/'"
        ));
    }
    Ok(())
}

/// A join token as stored: its secret only as a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// Public id (8 hex digits), the middle of `rfj_<id>_<secret>`.
    pub id: String,
    /// SHA-256 (hex) of the whole token.
    pub hash: String,
    pub created_at: Timestamp,
    pub created_by: String,
    pub expires_at: Timestamp,
    /// How many nodes may join with it; `None`: any number until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
    #[serde(default)]
    pub uses: u32,
    /// The nodes that joined with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
    #[serde(default)]
    pub revoked: bool,
}

impl JoinTokenRecord {
    /// Why a node may not join with this token at `now`, in words a user can act on.
    pub fn refusal(&self, now: Timestamp) -> Option<&'static str> {
        if self.revoked {
            Some(
                "the join token was revoked; create a new one with 'reactor-fabric node token create'",
            )
        } else if now >= self.expires_at {
            Some(
                "the join token has expired; create a new one with 'reactor-fabric node token create'",
            )
        } else if self.max_uses.is_some_and(|max| self.uses >= max) {
            Some(
                "the join token was already used; a single-use token admits one node (create another, or one with --uses)",
            )
        } else {
            None
        }
    }

    pub fn view(&self, now: Timestamp) -> JoinTokenView {
        JoinTokenView {
            id: self.id.clone(),
            created_at: self.created_at,
            created_by: self.created_by.clone(),
            expires_at: self.expires_at,
            max_uses: self.max_uses,
            uses: self.uses,
            used_by: self.used_by.clone(),
            valid: self.refusal(now).is_none(),
            revoked: self.revoked,
        }
    }
}

/// `POST /v1/nodes/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateJoinTokenRequest {
    /// How long the token admits nodes: 1 to 604800 seconds (a week); 3600 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 604800))]
    pub ttl_seconds: Option<u64>,
    /// How many nodes may join with it: 1 by default (single use); `0` for
    /// any number until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
}

/// A join token as the API lists it: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinTokenView {
    pub id: String,
    pub created_at: Timestamp,
    pub created_by: String,
    pub expires_at: Timestamp,
    /// `null`: any number of nodes until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
    pub uses: u32,
    #[serde(default)]
    pub used_by: Vec<String>,
    /// Whether a node could join with it now.
    pub valid: bool,
    pub revoked: bool,
}

/// A freshly created join token: the only answer that shows its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinTokenCreated {
    /// `rfj_<id>_<secret>`: give it to `reactor-fabric node --join URL --token`.
    pub token: String,
    #[serde(flatten)]
    pub view: JoinTokenView,
}

/// How a node's agents reach a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InferencePath {
    /// `local`: a node-local Ollama at `url`; `gateway`: the orchestrator's
    /// gateway (no model on the node).
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// What a node is and can run, as it reports itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeCapabilities {
    pub hostname: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// The isolation levels this node can run agents at.
    pub isolation: Vec<IsolationLevel>,
    /// Why a level it was asked for is missing (`container`: "Docker is not reachable ...").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unavailable: BTreeMap<String, String>,
    pub inference: InferencePath,
    /// The node's `reactor-fabric` version.
    pub version: String,
}

/// `POST /v1/nodes/join`: a node exchanges a join token for its credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The join token, `rfj_<id>_<secret>`.
    pub token: String,
    /// 1 to 63 of `a-z 0-9 -`, starting with a letter or digit (not `config`, `join` or `tokens`).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub capabilities: NodeCapabilities,
}

/// The answer to a join or a credential renewal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeCredential {
    pub name: String,
    /// `rfn_<secret>`: the node's bearer token for every later request. Shown once.
    pub credential: String,
    pub expires_at: Timestamp,
    /// How often the node should report in (milliseconds); the orchestrator
    /// marks it unreachable after `heartbeat_timeout_ms` without a report.
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
}

/// `POST /v1/nodes/{name}/heartbeat`: what a node reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Whether the node can take agents now (its `/readyz`).
    pub ready: bool,
    /// Why not, when it cannot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The version of the config the node runs with (0: none yet).
    #[serde(default)]
    pub config_version: u64,
    /// A config the node could not apply (it keeps `config_version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_error: Option<ConfigRejection>,
    /// Sent when they changed (Docker started or stopped, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<NodeCapabilities>,
    /// How long the orchestrator may hold the answer when it has nothing new
    /// (a long poll, so a new config arrives at once): 0 to 30000 ms.
    #[serde(default)]
    pub wait_ms: u64,
    /// The version of the session set the node runs (0: none received yet).
    #[serde(default)]
    pub sessions_version: u64,
    /// The state of each agent session the node runs, or ended since its
    /// last report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<SessionReport>,
}

/// An agent session the orchestrator placed on a node: what to run, as whom.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionAssignment {
    pub agent: crate::agent::AgentConfig,
    /// The agent's session number (a restart is a new one).
    pub session: u32,
    pub tenant: crate::TenantId,
    /// The user the agent runs for.
    pub owner: String,
    /// The session's agent token: what its program or workers present to
    /// the API (and the node's inference forward, for the agent).
    pub token: String,
}

impl std::fmt::Debug for SessionAssignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionAssignment")
            .field("agent", &self.agent.id)
            .field("session", &self.session)
            .field("tenant", &self.tenant)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// Every session a node is to run now, versioned: a node that has this
/// version gets no copy until it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionSet {
    pub version: u64,
    pub sessions: Vec<SessionAssignment>,
}

/// One session's state on its node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionReport {
    pub agent: crate::AgentId,
    pub session: u32,
    pub state: SessionState,
}

/// Where a session on a node is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SessionState {
    Starting,
    Running {
        /// Host pid of its program, or of its sandbox's or container's init.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        /// Whether it proves it is up by calling in (a program).
        reports_in: bool,
        #[serde(default)]
        usage: crate::agent::ResourceUsage,
    },
    /// It did not start; `error` says why.
    Failed {
        error: String,
    },
    /// Its program (or container) ended, or the node stopped it.
    Exited {
        /// What ended it, in words (`exited with code 1`, `killed by signal 9`).
        reason: String,
        success: bool,
        #[serde(default)]
        oom_killed: bool,
    },
}

/// A config version a node refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigRejection {
    pub version: u64,
    pub error: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatReply {
    /// The current node config, when it differs from the one the node runs
    /// (and it has not refused this version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<NodeConfig>,
    /// When the node's credential expires: renew it before then.
    pub credential_expires_at: Timestamp,
    /// The sessions the node is to run, when they differ from the version it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<SessionSet>,
}

/// The settings every node runs with, delivered by the orchestrator
/// (`PUT /v1/nodes/config`, `reactor-fabric node config set`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeConfigSpec {
    /// Memory limit (MiB) of an agent that keeps the built-in default
    /// (applied to sessions the node starts from then on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_memory_mb: Option<u64>,
    /// CPU limit (cores) of an agent that keeps the built-in default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_cpu_cores: Option<f64>,
    /// Egress every agent on the node may reach besides its own allowlist (`host:port`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
    /// A node-local Ollama (`http://host:port`): reported as the node's
    /// inference path (`local`). Agents' calls still go through the
    /// orchestrator's gateway, which meters them; direct calls are not built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_upstream: Option<String>,
    /// The node's log filter (`info`, `debug`, `warn,fabric_server=debug`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

impl NodeConfigSpec {
    /// What the orchestrator checks before accepting a config. A node checks
    /// again (what it alone can know, such as whether its log filter parses)
    /// and refuses a config it cannot apply.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_memory_mb == Some(0) {
            return Err("default_memory_mb must be at least 1".into());
        }
        if let Some(cores) = self.default_cpu_cores
            && (!cores.is_finite() || cores <= 0.0 || cores > 1024.0)
        {
            return Err(format!(
                "default_cpu_cores must be above 0 and at most 1024, not {cores}"
            ));
        }
        for rule in &self.egress {
            parse_egress(rule).map_err(|e| format!("egress: {e}"))?;
        }
        if let Some(url) = &self.inference_upstream
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "inference_upstream must be an http:// or https:// URL, not {url:?}"
            ));
        }
        if let Some(level) = &self.log_level
            && (level.trim().is_empty() || level.len() > 512)
        {
            return Err("log_level must be a log filter such as 'info' or 'debug'".into());
        }
        Ok(())
    }
}

/// A versioned node config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeConfig {
    /// Increases by one with every change; 0 is the empty config nobody set.
    pub version: u64,
    pub spec: NodeConfigSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
}

/// What the orchestrator keeps of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub capabilities: NodeCapabilities,
    pub joined_at: Timestamp,
    /// The join token it came in with.
    pub join_token: String,
    /// SHA-256 (hex) of the current credential.
    pub credential_hash: String,
    pub credential_expires_at: Timestamp,
    /// The credential a renewal replaced: still accepted until it expires,
    /// so a renewal whose answer got lost does not lock the node out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_credential: Option<(String, Timestamp)>,
    /// No new agents are placed on it.
    #[serde(default)]
    pub cordoned: bool,
    /// Its agents are being moved off (implies cordoned).
    #[serde(default)]
    pub draining: bool,
}

/// A node's status, from the orchestrator's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Reporting in, ready, taking agents.
    Ready,
    /// Reporting in, but not ready (its reasons say why).
    NotReady,
    /// No report for longer than the heartbeat timeout.
    Unreachable,
    /// Its agents are being moved off.
    Draining,
    /// Takes no new agents.
    Cordoned,
}

impl NodeStatus {
    pub const ALL: [NodeStatus; 5] = [
        Self::Ready,
        Self::NotReady,
        Self::Unreachable,
        Self::Draining,
        Self::Cordoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::NotReady => "not_ready",
            Self::Unreachable => "unreachable",
            Self::Draining => "draining",
            Self::Cordoned => "cordoned",
        }
    }
}

/// A node as `GET /v1/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeView {
    pub name: String,
    pub status: NodeStatus,
    /// Why it is not ready (as the node reported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub capabilities: NodeCapabilities,
    /// The node config version it runs with.
    pub config_version: u64,
    /// A config version it refused, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_error: Option<ConfigRejection>,
    /// Agents running on it.
    pub agents: u32,
    pub joined_at: Timestamp,
    /// The last report (absent: none since this orchestrator started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
    pub credential_expires_at: Timestamp,
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
}

/// `GET /v1/nodes/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinTokenList {
    pub tokens: Vec<JoinTokenView>,
}

/// Nodes and their join tokens, and the node config.
pub trait NodeStore: Send + Sync + 'static {
    /// Inserts or replaces the node `record.name`.
    fn put_node(
        &self,
        record: NodeRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    /// Every node (in no particular order).
    fn list_nodes(
        &self,
    ) -> impl Future<Output = Result<Vec<NodeRecord>, StoreError>> + Send + 'static;

    /// Deletes a node; `false` if there was none.
    fn delete_node(
        &self,
        name: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static;

    /// Inserts or replaces the join token `record.id`.
    fn put_join_token(
        &self,
        record: JoinTokenRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    /// Every join token (in no particular order).
    fn list_join_tokens(
        &self,
    ) -> impl Future<Output = Result<Vec<JoinTokenRecord>, StoreError>> + Send + 'static;

    /// Deletes a join token; `false` if there was none.
    fn delete_join_token(
        &self,
        id: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static;

    /// Replaces the node config.
    fn put_node_config(
        &self,
        config: NodeConfig,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    /// The node config, `None` if never set.
    fn get_node_config(
        &self,
    ) -> impl Future<Output = Result<Option<NodeConfig>, StoreError>> + Send + 'static;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert!(validate_node_name("n1").is_ok());
        assert!(validate_node_name("gpu-box-7").is_ok());
        for bad in ["", "-a", "N1", "a_b", "config", "tokens", &"a".repeat(64)] {
            assert!(validate_node_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_label("gpu=true").unwrap(),
            ("gpu".into(), "true".into())
        );
        assert_eq!(
            parse_label("zone=").unwrap(),
            ("zone".into(), String::new())
        );
        assert!(parse_label("gpu").unwrap_err().contains("key=value"));
        assert!(parse_label("=x").is_err());
        assert!(parse_label("a=b c").is_err());
    }

    #[test]
    fn join_token_refusals() {
        let now = Timestamp::from_millis(1_000_000);
        let token = JoinTokenRecord {
            id: "abcd1234".into(),
            hash: String::new(),
            created_at: now,
            created_by: "admin".into(),
            expires_at: now.plus(std::time::Duration::from_secs(60)),
            max_uses: Some(1),
            uses: 0,
            used_by: vec![],
            revoked: false,
        };
        assert_eq!(token.refusal(now), None);
        let used = JoinTokenRecord {
            uses: 1,
            ..token.clone()
        };
        assert!(used.refusal(now).unwrap().contains("already used"));
        let expired_at = token.expires_at;
        assert!(token.refusal(expired_at).unwrap().contains("expired"));
        let revoked = JoinTokenRecord {
            revoked: true,
            ..token.clone()
        };
        assert!(revoked.refusal(now).unwrap().contains("revoked"));
        let multi = JoinTokenRecord {
            max_uses: None,
            uses: 50,
            ..token
        };
        assert_eq!(multi.refusal(now), None);
    }

    #[test]
    fn config_validation() {
        assert!(NodeConfigSpec::default().validate().is_ok());
        let bad = [
            NodeConfigSpec {
                default_memory_mb: Some(0),
                ..Default::default()
            },
            NodeConfigSpec {
                default_cpu_cores: Some(f64::NAN),
                ..Default::default()
            },
            NodeConfigSpec {
                egress: vec!["host:0".into()],
                ..Default::default()
            },
            NodeConfigSpec {
                inference_upstream: Some("ftp://x".into()),
                ..Default::default()
            },
        ];
        for spec in bad {
            assert!(spec.validate().is_err(), "{spec:?}");
        }
        let config = NodeConfig {
            version: 3,
            spec: NodeConfigSpec {
                log_level: Some("debug".into()),
                ..Default::default()
            },
            updated_at: None,
            updated_by: None,
        };
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["version"], 3);
        assert_eq!(json["spec"]["log_level"], "debug");
        assert_eq!(serde_json::from_value::<NodeConfig>(json).unwrap(), config);
    }
}
