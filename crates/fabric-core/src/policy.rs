//! Policies, approvals and the audit trail (REQUIREMENTS §7, FR-POL): the records the
//! policy engine (`fabric-engine::policy`) evaluates and the server persists
//! through the [`PolicyStore`] port.

use std::fmt;
use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, TenantId};
use crate::store::StoreError;
use crate::time::Timestamp;

/// What a rule (and so a decision) says about an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    /// The action waits until an approver approves it (or it times out: deny).
    RequireApproval,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::RequireApproval => "require_approval",
            Effect::Deny => "deny",
        }
    }

    /// How strict the effect is: at equal priority the stricter one wins.
    pub fn strictness(self) -> u8 {
        match self {
            Effect::Allow => 0,
            Effect::RequireApproval => 1,
            Effect::Deny => 2,
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Effect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Effect::Allow),
            "deny" => Ok(Effect::Deny),
            "require_approval" => Ok(Effect::RequireApproval),
            _ => Err(format!(
                "invalid decision {s:?}: use allow, deny or require_approval"
            )),
        }
    }
}

/// What a policy is attached to. On the wire: `{"tenant": "acme"}`,
/// `{"workspace": "backend"}` or `{"agent": "coder"}`. `{"tenant": "*"}`
/// applies to every tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PolicyScope {
    Tenant(String),
    Workspace(String),
    Agent(String),
}

impl PolicyScope {
    /// The level of the scope: tenant 0, workspace 1, agent 2 (more specific is higher).
    pub fn level(&self) -> u8 {
        match self {
            PolicyScope::Tenant(_) => 0,
            PolicyScope::Workspace(_) => 1,
            PolicyScope::Agent(_) => 2,
        }
    }
}

impl fmt::Display for PolicyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyScope::Tenant(t) => write!(f, "tenant:{t}"),
            PolicyScope::Workspace(w) => write!(f, "workspace:{w}"),
            PolicyScope::Agent(a) => write!(f, "agent:{a}"),
        }
    }
}

/// Extra conditions on a rule: every set condition must hold. Attribute
/// conditions are lists of globs (any may match); an attribute the request
/// does not carry (e.g. no agent) fails its condition. Times are UTC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenant: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspace: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent: Vec<String>,
    /// Glob on the resource the request names (e.g. a path or host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource: Vec<String>,
    /// `[from, to]` hours (0-24), UTC: the rule holds when `from <= hour < to`;
    /// `from > to` wraps midnight (`[22, 6]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours_utc: Option<[u8; 2]>,
    /// Days the rule holds on (UTC): `mon`, `tue`, `wed`, `thu`, `fri`, `sat`, `sun`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weekdays: Vec<String>,
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        *self == Conditions::default()
    }
}

/// One rule of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// A glob over the action string: `*` any run of characters (`:` and `/`
    /// included), `?` one character, `[a-z]` / `[!a-z]` a class, `\` escapes.
    pub action_pattern: String,
    pub effect: Effect,
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    /// Users who may decide an approval this rule asks for (empty: anyone with
    /// the `approve` scope in the tenant).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// Seconds an approval waits before it counts as denied (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_timeout_secs: Option<u64>,
}

/// Default approval timeout when a rule sets none.
pub const DEFAULT_APPROVAL_TIMEOUT_SECS: u64 = 300;
/// Longest approval timeout a rule may set (a day).
pub const MAX_APPROVAL_TIMEOUT_SECS: u64 = 86_400;

/// A policy: rules attached to a tenant, workspace or agent (REQUIREMENTS §7). The
/// body of `PUT /v1/policies/{id}` and the entries of `policy apply -f`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `[A-Za-z0-9._-]`, 1-64 characters. In a PUT body it may be left out
    /// (the path names it); if present it must match the path.
    #[serde(default)]
    pub id: String,
    /// Higher wins within a scope level. Default 0.
    #[serde(default)]
    pub priority: i32,
    pub scope: PolicyScope,
    pub rules: Vec<PolicyRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Set by the server on every write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
}

/// Where an approval is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    /// Nobody decided in time: counts as denied.
    TimedOut,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::TimedOut => "timed_out",
        }
    }
}

impl fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ApprovalStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(ApprovalStatus::Pending),
            "approved" => Ok(ApprovalStatus::Approved),
            "denied" => Ok(ApprovalStatus::Denied),
            "timed_out" => Ok(ApprovalStatus::TimedOut),
            _ => Err(format!(
                "invalid approval status {s:?}: use pending, approved, denied or timed_out"
            )),
        }
    }
}

/// An action waiting for (or past) an approver's decision (FR-POL-2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Approval {
    /// UUIDv7.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: uuid::Uuid,
    pub tenant: TenantId,
    /// Who asked: a user name, or `agent:<id>`.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub policy_id: String,
    /// The rule that asked for approval, as `#<index> <pattern>`.
    pub rule: String,
    /// Users who may decide (empty: anyone with the `approve` scope).
    #[serde(default)]
    pub approvers: Vec<String>,
    pub status: ApprovalStatus,
    pub created_at: Timestamp,
    /// When a pending approval times out (= denied).
    pub expires_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Timestamp>,
    /// Why the approver decided so, when they said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The request id of the check that asked.
    pub request_id: String,
}

/// One policy decision, as audited (FR-POL-5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditRecord {
    /// UUIDv7 (sorts by time).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: uuid::Uuid,
    pub ts: Timestamp,
    pub tenant: TenantId,
    /// Who acted: a user name, or `agent:<id>`; for approval outcomes the
    /// approver (or `system` for a timeout).
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub decision: Effect,
    /// The matched policy; none for the default deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    /// The matched rule (`#<index> <pattern>`), `default deny`, or the
    /// approval outcome.
    pub rule: String,
    /// Which enforcement point decided: `check`, `agent_check`, `task_create`,
    /// `llm`, `egress` or `approval`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub approval_id: Option<uuid::Uuid>,
    /// The request id (`X-Request-Id`) the decision belongs to.
    pub correlation_id: String,
}

/// Filters for [`PolicyStore::list_audit`]; newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    pub tenant: Option<TenantId>,
    pub agent: Option<AgentId>,
    pub decision: Option<Effect>,
    /// Only records older than this one (the paging cursor).
    pub before: Option<uuid::Uuid>,
    pub limit: usize,
}

impl Default for AuditQuery {
    fn default() -> Self {
        Self {
            tenant: None,
            agent: None,
            decision: None,
            before: None,
            limit: 100,
        }
    }
}

/// Filters for [`PolicyStore::list_approvals`]; newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalQuery {
    pub tenant: Option<TenantId>,
    pub status: Option<ApprovalStatus>,
    /// Only approvals older than this one (the paging cursor).
    pub before: Option<uuid::Uuid>,
    pub limit: usize,
}

impl Default for ApprovalQuery {
    fn default() -> Self {
        Self {
            tenant: None,
            status: None,
            before: None,
            limit: 100,
        }
    }
}

impl ApprovalQuery {
    /// Whether `approval` is one this query selects (ignoring `limit`).
    pub fn matches(&self, approval: &Approval) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == approval.tenant)
            && self.status.is_none_or(|s| s == approval.status)
            && self.before.is_none_or(|b| approval.id < b)
    }
}

impl AuditQuery {
    /// Whether `record` is one this query selects (ignoring `limit`).
    pub fn matches(&self, record: &AuditRecord) -> bool {
        self.before.is_none_or(|b| record.id < b)
            && self.tenant.as_ref().is_none_or(|t| *t == record.tenant)
            && self
                .agent
                .as_ref()
                .is_none_or(|a| record.agent.as_ref() == Some(a))
            && self.decision.is_none_or(|d| d == record.decision)
    }
}

/// Policies, approvals and the audit trail.
pub trait PolicyStore: Send + Sync + 'static {
    /// Inserts or replaces the policy with `policy.id`.
    fn put_policy(
        &self,
        policy: Policy,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    /// Deletes a policy; `false` if there was none.
    fn delete_policy(
        &self,
        id: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static;

    /// Every policy, ordered by id.
    fn list_policies(
        &self,
    ) -> impl Future<Output = Result<Vec<Policy>, StoreError>> + Send + 'static;

    /// Inserts or replaces the approval with `approval.id`.
    fn put_approval(
        &self,
        approval: Approval,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    fn get_approval(
        &self,
        id: uuid::Uuid,
    ) -> impl Future<Output = Result<Option<Approval>, StoreError>> + Send + 'static;

    /// Approvals matching `query`, newest first, at most `query.limit`.
    fn list_approvals(
        &self,
        query: ApprovalQuery,
    ) -> impl Future<Output = Result<Vec<Approval>, StoreError>> + Send + 'static;

    /// Appends an audit record; fails if one with the same id exists.
    fn record_audit(
        &self,
        record: AuditRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    /// Audit records matching `query`, newest first.
    fn list_audit(
        &self,
        query: AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send + 'static;
}

/// `POST /v1/policy/check` and `POST /v1/agent/check`: may `agent` do `action`?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// The agent acting (ignored on `/v1/agent/check`: the token names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    )]
    pub agent: Option<String>,
    /// What the agent wants to do, e.g. `shell:rm -rf /tmp/x` (1 to 4096 bytes).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 4096))]
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The workspace attribute; defaults to the agent's configured workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// `/v1/agent/check` only: seconds to wait for an approval's decision
    /// (0-60, default 0: answer `require_approval` at once with the approval id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<f64>,
}

/// The answer to a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckResponse {
    pub decision: Effect,
    /// The policy whose rule decided; none for the default deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    /// `#<index> <pattern>` of the deciding rule, or `default deny`.
    pub rule: String,
    /// Set when the decision is (or was) an approval gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub approval_id: Option<uuid::Uuid>,
    /// For approvals: where it stands (`pending` while the agent should keep waiting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_status: Option<ApprovalStatus>,
}

/// `GET /v1/policies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyList {
    pub policies: Vec<Policy>,
    /// Pass as `?cursor=` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /v1/approvals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApprovalList {
    pub approvals: Vec<Approval>,
    /// Pass as `?cursor=` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditList {
    pub records: Vec<AuditRecord>,
    /// Pass as `?cursor=` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Checks a policy id: `[A-Za-z0-9._-]`, 1-64 characters, starting with a letter or digit.
pub fn validate_policy_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid policy id {id:?}: use 1-64 characters from a-z, A-Z, 0-9, '-', '_' and '.', starting with a letter or digit"
        ))
    }
}
