//! [`PolicyService`]: the compiled policy set (swapped whole on every change,
//! FR-POL-6), the one decision point every enforcement point calls
//! ([`PolicyService::decide`]), approvals (FR-POL-2) and the audit trail
//! (FR-POL-5).
//!
//! Enforcement points and their actions: `POST /v1/tasks`
//! (`task:create:<agent>`), the inference gateway routes and the agents'
//! Ollama endpoints (`llm:<model>`), the egress proxy
//! (`net:connect:<host>:<port>`, after the agent's allowlist), and the
//! agent protocol's `POST /v1/agent/check` (any action).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use fabric_core::policy::{
    Approval, ApprovalQuery, ApprovalStatus, AuditQuery, AuditRecord, CheckResponse, Effect,
    Policy, PolicyStore,
};
use fabric_core::{AgentId, Clock, Identity, MissingScope, Scope, TenantId, Timestamp};
use fabric_engine::policy::{
    PolicyError as CompileError, compile_policy, default_policy, is_outdated_default,
};
use fabric_engine::{PolicyRequest, PolicySet};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::store::Store;

/// How long an approved action stays approved for the agent that asked: its
/// next checks of the same action (e.g. the egress proxy's, when it then
/// connects) are allowed without asking again.
pub const APPROVAL_GRANT_TTL: Duration = Duration::from_secs(600);

/// Why the policy service refused a request.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A policy that does not compile (bad glob, condition or id).
    #[error(transparent)]
    Invalid(#[from] CompileError),
    #[error("no policy {0:?}: see reactor-fabric policy list")]
    PolicyNotFound(String),
    /// No such approval, or one of another tenant (which is not revealed).
    #[error("no approval {0}: see reactor-fabric approval list")]
    ApprovalNotFound(uuid::Uuid),
    #[error("approval {id} is already {status}: nothing to decide")]
    AlreadyDecided {
        id: uuid::Uuid,
        status: ApprovalStatus,
    },
    /// Another decision (or the timeout) won the race.
    #[error("approval {0} was already decided")]
    DecidedMeanwhile(uuid::Uuid),
    #[error("only {approvers} may decide approval {id}")]
    NotAnApprover { id: uuid::Uuid, approvers: String },
    /// An enforcement point's deny, or an approval gate it cannot wait on.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    MissingScope(#[from] fabric_core::MissingScope),
    #[error(transparent)]
    Store(#[from] fabric_core::StoreError),
}

/// A `deny` (or a `require_approval` the caller cannot wait on) of `action`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The decision was `require_approval` (else `deny`).
    pub needs_approval: bool,
    pub message: String,
}

/// Who is acting, with the attributes policies match on.
#[derive(Debug, Clone)]
pub struct Actor {
    pub tenant: TenantId,
    /// A user name, or `agent:<id>` for an agent.
    pub name: String,
    pub agent: Option<AgentId>,
    pub workspace: Option<String>,
}

impl Actor {
    /// An agent acting for itself (agent token, endpoint, egress proxy).
    pub fn agent(tenant: TenantId, agent: AgentId, workspace: Option<String>) -> Self {
        Self {
            tenant,
            name: format!("agent:{agent}"),
            agent: Some(agent),
            workspace,
        }
    }

    /// What the policy set evaluates for this actor doing `action`.
    fn request<'a>(
        &'a self,
        action: &'a str,
        resource: Option<&'a str>,
        now: Timestamp,
    ) -> PolicyRequest<'a> {
        PolicyRequest {
            tenant: self.tenant.as_str(),
            workspace: self.workspace.as_deref(),
            agent: self.agent.as_ref().map(|a| a.as_str()),
            action,
            resource,
            now,
        }
    }
}

/// One decision, as the enforcement point needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: Effect,
    pub policy_id: Option<String>,
    /// `#<index> <pattern>`, `default deny`, or `approval <id>` for a grant.
    pub rule: String,
    pub approvers: Vec<String>,
    pub approval_timeout: Duration,
}

impl Decision {
    pub fn response(&self) -> CheckResponse {
        CheckResponse {
            decision: self.effect,
            policy_id: self.policy_id.clone(),
            rule: self.rule.clone(),
            approval_id: None,
            approval_status: None,
        }
    }

    /// The refusal an enforcement point answers for a deny (or an approval
    /// gate it cannot wait on).
    pub fn refusal(&self, action: &str) -> Refusal {
        let by = match &self.policy_id {
            Some(policy) => format!("rule {} of policy {policy:?}", self.rule),
            None => "no policy allows it (default deny)".to_owned(),
        };
        match self.effect {
            Effect::RequireApproval => Refusal {
                needs_approval: true,
                message: format!(
                    "{action:?} needs an approver's approval ({by}), which this call cannot wait for: ask through the agent protocol (POST /v1/agent/check) or have an admin change the policy"
                ),
            },
            _ => Refusal {
                needs_approval: false,
                message: format!(
                    "{action:?} is denied by {by}: ask an admin to change the policies (reactor-fabric policy list)"
                ),
            },
        }
    }
}

/// Policies, decisions, approvals and audit.
pub struct PolicyService {
    store: Store,
    clock: Arc<dyn Clock>,
    /// What every check evaluates against; replaced whole on every change.
    set: RwLock<Arc<PolicySet>>,
    /// The stored policies the set was compiled from, by id.
    policies: Mutex<std::collections::BTreeMap<String, Policy>>,
    /// Serializes policy writes, so the set always matches the store's order.
    writes: tokio::sync::Mutex<()>,
    /// Pending approvals: each watch tells its waiters the final approval.
    pending: Mutex<HashMap<uuid::Uuid, watch::Sender<Approval>>>,
    /// `(agent, action)` → until when an approval lets it through.
    grants: Mutex<HashMap<(AgentId, String), Timestamp>>,
    /// `agent_fabric_policy_decisions_total{decision}`: counted where each
    /// decision is audited, so the metric and the audit trail agree.
    decisions: Arc<fabric_telemetry::metrics::CounterVec>,
    /// Audit records decided but not yet handed to the store. They go in
    /// batches ([`AUDIT_FLUSH_EVERY`], before a listing, at shutdown): one
    /// submission per decision made the store writer commit (and fsync) a
    /// one-row transaction per check at 1,000 checks/s.
    audit_buffer: Mutex<Vec<AuditRecord>>,
}

/// How long a decided audit record may wait before it is handed to the
/// store's writer. Decisions never wait for their audit commit; this only
/// groups the writes (a crash loses at most this much more of the trail
/// than the writer's own in-flight batch).
pub const AUDIT_FLUSH_EVERY: Duration = Duration::from_millis(20);

/// A buffer this full is flushed at once, whatever the time.
const AUDIT_BATCH: usize = 1024;

impl std::fmt::Debug for PolicyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyService")
            .field("rules", &self.current().rule_count())
            .field("pending_approvals", &self.pending.lock().len())
            .finish_non_exhaustive()
    }
}

impl PolicyService {
    /// An empty service (everything denied) until [`PolicyService::load`].
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        registry: &fabric_telemetry::metrics::Registry,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock,
            set: RwLock::new(Arc::new(PolicySet::default())),
            policies: Mutex::new(std::collections::BTreeMap::new()),
            writes: tokio::sync::Mutex::new(()),
            pending: Mutex::new(HashMap::new()),
            grants: Mutex::new(HashMap::new()),
            decisions: registry.counter_vec(
                "agent_fabric_policy_decisions_total",
                "Policy engine decisions, by decision.",
                &["decision"],
            ),
            audit_buffer: Mutex::new(Vec::new()),
        })
    }

    /// Loads the stored policies (creating the built-in default policy when
    /// there are none) and the pending approvals (timing out the expired).
    /// Runs once the store is ours (after the leadership, before `/v1`).
    pub async fn load(self: &Arc<Self>) -> Result<(), PolicyError> {
        let _write = self.writes.lock().await;
        let mut stored = self.store.list_policies().await?;
        for policy in &mut stored {
            if is_outdated_default(policy) {
                *policy = Policy {
                    updated_at: Some(self.clock.now()),
                    ..default_policy()
                };
                self.store.put_policy(policy.clone()).await?;
                tracing::info!(policy_id = %policy.id, "upgraded the built-in default policy: what this release checks (tasks' shell commands and file writes, MCP tool calls) is allowed by it, as it ran before");
            }
        }
        if stored.is_empty() {
            let mut policy = default_policy();
            policy.updated_at = Some(self.clock.now());
            self.store.put_policy(policy.clone()).await?;
            tracing::info!(policy_id = %policy.id, "created the built-in default policy");
            stored.push(policy);
        }
        // A stored policy that no longer compiles (written by another
        // version) is skipped loudly rather than keeping the server down.
        let mut policies = std::collections::BTreeMap::new();
        for policy in stored {
            match compile_policy(&policy) {
                Ok(_) => {
                    policies.insert(policy.id.clone(), policy);
                }
                Err(e) => {
                    tracing::error!(policy_id = %policy.id, error = %e, "stored policy does not compile; it is ignored until it is replaced")
                }
            }
        }
        self.swap(policies)?;
        for approval in self
            .store
            .list_approvals(ApprovalQuery {
                status: Some(ApprovalStatus::Pending),
                limit: usize::MAX,
                ..ApprovalQuery::default()
            })
            .await?
        {
            if !self.pending.lock().contains_key(&approval.id) {
                self.watch_pending(approval);
            }
        }
        Ok(())
    }

    /// The current compiled set (cheap: an `Arc` clone).
    pub fn current(&self) -> Arc<PolicySet> {
        Arc::clone(&self.set.read())
    }

    pub fn list(&self) -> Vec<Policy> {
        self.policies.lock().values().cloned().collect()
    }

    /// The policies `by` may see: an admin every one; anyone else those of
    /// its own tenant, the ones for every tenant (`*`) and those of agents
    /// it sees (`sees_agent`). Workspace policies span tenants: admins only.
    pub fn list_for(&self, by: &Identity, sees_agent: impl Fn(&str) -> bool) -> Vec<Policy> {
        use fabric_core::policy::PolicyScope;
        let admin = Scope::Admin.granted_by(&by.scopes);
        self.policies
            .lock()
            .values()
            .filter(|p| {
                admin
                    || match &p.scope {
                        PolicyScope::Tenant(t) => t == "*" || t == by.tenant.as_str(),
                        PolicyScope::Agent(a) => sees_agent(a),
                        PolicyScope::Workspace(_) => false,
                    }
            })
            .cloned()
            .collect()
    }

    /// Validates, stores and applies a policy; the next check sees it.
    pub async fn put(&self, mut policy: Policy) -> Result<Policy, PolicyError> {
        compile_policy(&policy)?;
        policy.updated_at = Some(self.clock.now());
        let _write = self.writes.lock().await;
        self.store.put_policy(policy.clone()).await?;
        let mut next = self.policies.lock().clone();
        next.insert(policy.id.clone(), policy.clone());
        self.swap(next)?;
        tracing::info!(policy_id = %policy.id, rules = policy.rules.len(), "policy applied");
        Ok(policy)
    }

    /// Deletes a policy; 404 if there is none.
    /// `Ok` if `by` may write policy `id` with `scope` (`None`: delete it).
    /// An admin may write any; a tenant-admin only policies scoped to its
    /// own tenant (`{"tenant": "<its tenant>"}`), and another tenant's
    /// policy is "not found" to it.
    pub fn may_write(
        &self,
        by: &Identity,
        id: &str,
        scope: Option<&fabric_core::policy::PolicyScope>,
    ) -> Result<(), PolicyError> {
        use fabric_core::policy::PolicyScope;
        if Scope::Admin.granted_by(&by.scopes) {
            return Ok(());
        }
        by.require(Scope::TenantAdmin).map_err(|_| MissingScope {
            scope: Scope::Admin,
        })?;
        let own = |s: &PolicyScope| matches!(s, PolicyScope::Tenant(t) if t == by.tenant.as_str());
        if let Some(existing) = self.policies.lock().get(id)
            && !own(&existing.scope)
        {
            return Err(PolicyError::PolicyNotFound(id.to_owned()));
        }
        match scope {
            Some(scope) if !own(scope) => Err(MissingScope {
                scope: Scope::Admin,
            }
            .into()),
            _ => Ok(()),
        }
    }

    pub async fn delete(&self, id: &str) -> Result<(), PolicyError> {
        let _write = self.writes.lock().await;
        if !self.store.delete_policy(id.to_owned()).await? {
            return Err(PolicyError::PolicyNotFound(id.to_owned()));
        }
        let mut next = self.policies.lock().clone();
        next.remove(id);
        self.swap(next)?;
        tracing::info!(policy_id = %id, "policy deleted");
        Ok(())
    }

    fn swap(&self, next: std::collections::BTreeMap<String, Policy>) -> Result<(), PolicyError> {
        let set = compile_all(&next)?;
        *self.set.write() = Arc::new(set);
        *self.policies.lock() = next;
        Ok(())
    }

    /// THE decision point: evaluates `action` for `actor` against the current
    /// set, honours approval grants, and audits the decision (asynchronously,
    /// through the store's writer). Every enforcement point calls this, once
    /// per decision. (Its metric, `agent_fabric_policy_decisions_total`, is
    /// counted in `audit`, with the record.)
    pub fn decide(
        &self,
        actor: &Actor,
        action: &str,
        resource: Option<&str>,
        source: &'static str,
        correlation_id: &str,
    ) -> Decision {
        let now = self.clock.now();
        let set = self.current();
        let verdict = set.evaluate(&actor.request(action, resource, now));
        let mut decision = Decision {
            effect: verdict.effect,
            policy_id: verdict.policy_id().map(str::to_owned),
            rule: verdict.rule_label().to_owned(),
            approvers: verdict
                .rule
                .map(|r| r.approvers.clone())
                .unwrap_or_default(),
            approval_timeout: verdict
                .rule
                .map_or(Duration::from_secs(300), |r| r.approval_timeout),
        };
        if decision.effect == Effect::RequireApproval
            && let Some(agent) = &actor.agent
            && self.granted(agent, action, now)
        {
            decision.effect = Effect::Allow;
            decision.rule = format!("{} (approved earlier)", decision.rule);
        }
        self.audit(AuditRecord {
            id: uuid::Uuid::now_v7(),
            ts: now,
            tenant: actor.tenant.clone(),
            actor: actor.name.clone(),
            agent: actor.agent.clone(),
            action: action.to_owned(),
            resource: resource.map(str::to_owned),
            decision: decision.effect,
            policy_id: decision.policy_id.clone(),
            rule: decision.rule.clone(),
            source: source.to_owned(),
            approval_id: None,
            correlation_id: correlation_id.to_owned(),
        });
        decision
    }

    /// What `actor` doing `action` would get, neither audited nor counted:
    /// for showing what may be asked (an agent's tool list), never for
    /// letting something through.
    pub fn peek(&self, actor: &Actor, action: &str) -> Effect {
        let set = self.current();
        set.evaluate(&actor.request(action, None, self.clock.now()))
            .effect
    }

    fn granted(&self, agent: &AgentId, action: &str, now: Timestamp) -> bool {
        let mut grants = self.grants.lock();
        match grants.get(&(agent.clone(), action.to_owned())) {
            Some(until) if *until > now => true,
            Some(_) => {
                grants.remove(&(agent.clone(), action.to_owned()));
                false
            }
            None => false,
        }
    }

    /// Queues an audit record without waiting for its commit: the flusher
    /// hands the queued ones to the store's writer together.
    /// Audits an administrative action (NFR-SEC-3): users, tenants, tokens,
    /// policies, budgets, agents. `action` is e.g. `user:create`,
    /// `resource` what it acted on; the rule names the scope that allowed it.
    pub fn record_admin(&self, by: &Identity, action: &str, resource: &str) {
        let scope = if Scope::Admin.granted_by(&by.scopes) {
            Scope::Admin
        } else {
            Scope::TenantAdmin
        };
        // Not a policy decision: audited, not counted in the decisions metric.
        self.enqueue_audit(AuditRecord {
            id: uuid::Uuid::now_v7(),
            ts: self.clock.now(),
            tenant: by.tenant.clone(),
            actor: by.user.clone(),
            agent: by.agent.clone(),
            action: action.to_owned(),
            resource: Some(resource.to_owned()),
            decision: Effect::Allow,
            policy_id: None,
            rule: format!("scope {scope}"),
            source: "admin".to_owned(),
            approval_id: None,
            correlation_id: crate::request_id::current(),
        });
    }

    fn audit(&self, record: AuditRecord) {
        self.decisions.inc(&[record.decision.as_str()]);
        self.enqueue_audit(record);
    }

    /// Queues a record for the store, in order (a batch at a time).
    fn enqueue_audit(&self, record: AuditRecord) {
        let full = {
            let mut buffer = self.audit_buffer.lock();
            buffer.push(record);
            buffer.len() >= AUDIT_BATCH
        };
        if full {
            self.submit_audit();
        }
    }

    /// Hands every queued audit record to the store, in decision order (the
    /// store commits in submission order). The handle ends once all are
    /// committed; dropping it does not cancel them.
    fn submit_audit(&self) -> tokio::task::JoinHandle<()> {
        let records = std::mem::take(&mut *self.audit_buffer.lock());
        // Each call submits its write at once; the task only awaits them.
        let writes: Vec<_> = records
            .into_iter()
            .map(|r| self.store.record_audit(r))
            .collect();
        tokio::spawn(async move {
            for write in writes {
                if let Err(e) = write.await {
                    tracing::error!(error = %e, "cannot record an audit record");
                }
            }
        })
    }

    /// Hands the queued audit records to the store and waits for their commit.
    pub async fn flush_audit(&self) {
        let _ = self.submit_audit().await;
    }

    /// Flushes the audit buffer every [`AUDIT_FLUSH_EVERY`] until `stop`;
    /// the server flushes the rest itself when it stops (`flush_audit`).
    pub async fn flush_audit_every(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(AUDIT_FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !self.audit_buffer.lock().is_empty() {
                        drop(self.submit_audit());
                    }
                }
                () = stop.cancelled() => break,
            }
        }
    }

    /// Creates a pending approval for a `require_approval` decision.
    pub async fn request_approval(
        self: &Arc<Self>,
        actor: &Actor,
        action: &str,
        resource: Option<&str>,
        decision: &Decision,
        request_id: &str,
    ) -> Result<Approval, PolicyError> {
        let now = self.clock.now();
        let approval = Approval {
            id: uuid::Uuid::now_v7(),
            tenant: actor.tenant.clone(),
            actor: actor.name.clone(),
            agent: actor.agent.clone(),
            action: action.to_owned(),
            resource: resource.map(str::to_owned),
            policy_id: decision.policy_id.clone().unwrap_or_default(),
            rule: decision.rule.clone(),
            approvers: decision.approvers.clone(),
            status: ApprovalStatus::Pending,
            created_at: now,
            expires_at: now.plus(decision.approval_timeout),
            decided_by: None,
            decided_at: None,
            reason: None,
            request_id: request_id.to_owned(),
        };
        self.store.put_approval(approval.clone()).await?;
        tracing::info!(approval_id = %approval.id, action, actor = %actor.name, "approval requested");
        self.watch_pending(approval.clone());
        Ok(approval)
    }

    /// Registers a pending approval and its timeout.
    fn watch_pending(self: &Arc<Self>, approval: Approval) {
        let id = approval.id;
        let wait = approval.expires_at.since(self.clock.now());
        let (tx, _) = watch::channel(approval);
        self.pending.lock().insert(id, tx);
        let service = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if let Some(service) = service.upgrade()
                && let Err(e) = service
                    .resolve(id, ApprovalStatus::TimedOut, "system", None)
                    .await
                && !matches!(e, PolicyError::DecidedMeanwhile(_))
            {
                tracing::error!(approval_id = %id, error = %e, "cannot time out an approval");
            }
        });
    }

    /// `POST /v1/approvals/{id}/approve|deny` by `by`.
    pub async fn decide_approval(
        &self,
        id: uuid::Uuid,
        approve: bool,
        reason: Option<String>,
        by: &fabric_core::Identity,
    ) -> Result<Approval, PolicyError> {
        by.require(Scope::Approve)?;
        let current = self.pending.lock().get(&id).map(|tx| tx.borrow().clone());
        let Some(current) = current else {
            return match self.store.get_approval(id).await? {
                Some(a) if a.tenant == by.tenant => Err(PolicyError::AlreadyDecided {
                    id,
                    status: a.status,
                }),
                _ => Err(PolicyError::ApprovalNotFound(id)),
            };
        };
        if current.tenant != by.tenant {
            return Err(PolicyError::ApprovalNotFound(id));
        }
        if !current.approvers.is_empty()
            && !current.approvers.contains(&by.user)
            && !Scope::Admin.granted_by(&by.scopes)
        {
            return Err(PolicyError::NotAnApprover {
                id,
                approvers: current.approvers.join(", "),
            });
        }
        let status = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Denied
        };
        self.resolve(id, status, &by.user, reason).await
    }

    /// Moves a pending approval to its final status (once: the first caller
    /// wins, later ones get 409), stores and audits it, wakes its waiters.
    async fn resolve(
        &self,
        id: uuid::Uuid,
        status: ApprovalStatus,
        by: &str,
        reason: Option<String>,
    ) -> Result<Approval, PolicyError> {
        let Some(tx) = self.pending.lock().remove(&id) else {
            return Err(PolicyError::DecidedMeanwhile(id));
        };
        let now = self.clock.now();
        let mut approval = tx.borrow().clone();
        approval.status = status;
        approval.decided_by = Some(by.to_owned());
        approval.decided_at = Some(now);
        approval.reason = reason;
        let stored = self.store.put_approval(approval.clone()).await;
        let effect = if status == ApprovalStatus::Approved {
            // An agent that asked may repeat the action for a while; a
            // person's approval (a gated task creation) is for that one task.
            if let Some(agent) = &approval.agent
                && approval.actor == format!("agent:{agent}")
            {
                self.grants.lock().insert(
                    (agent.clone(), approval.action.clone()),
                    now.plus(APPROVAL_GRANT_TTL),
                );
            }
            Effect::Allow
        } else {
            Effect::Deny
        };
        self.audit(AuditRecord {
            id: uuid::Uuid::now_v7(),
            ts: now,
            tenant: approval.tenant.clone(),
            actor: by.to_owned(),
            agent: approval.agent.clone(),
            action: approval.action.clone(),
            resource: approval.resource.clone(),
            decision: effect,
            policy_id: Some(approval.policy_id.clone()).filter(|p| !p.is_empty()),
            rule: match &approval.reason {
                Some(reason) => format!("approval {status}: {reason}"),
                None => format!("approval {status}"),
            },
            source: "approval".to_owned(),
            approval_id: Some(id),
            correlation_id: approval.request_id.clone(),
        });
        tracing::info!(approval_id = %id, status = %status, by, "approval decided");
        // Waiters learn the outcome even if the store write failed: the
        // decision was made; the error goes to the approver.
        tx.send_replace(approval.clone());
        stored?;
        Ok(approval)
    }

    /// Waits up to `wait` for approval `id` (of `tenant`) to be decided;
    /// answers it as it stands then.
    pub async fn wait_approval(
        &self,
        tenant: &TenantId,
        id: uuid::Uuid,
        wait: Duration,
    ) -> Result<Approval, PolicyError> {
        let rx = self.pending.lock().get(&id).map(watch::Sender::subscribe);
        let approval = match rx {
            Some(mut rx) => {
                let _ = tokio::time::timeout(
                    wait,
                    rx.wait_for(|a| a.status != ApprovalStatus::Pending),
                )
                .await;
                rx.borrow().clone()
            }
            None => self
                .store
                .get_approval(id)
                .await?
                .ok_or(PolicyError::ApprovalNotFound(id))?,
        };
        if &approval.tenant != tenant {
            return Err(PolicyError::ApprovalNotFound(id));
        }
        Ok(approval)
    }

    pub async fn list_approvals(&self, query: ApprovalQuery) -> Result<Vec<Approval>, PolicyError> {
        Ok(self.store.list_approvals(query).await?)
    }

    pub async fn list_audit(&self, query: AuditQuery) -> Result<Vec<AuditRecord>, PolicyError> {
        // Read your writes: audit records are queued without waiting for
        // their commit; an empty write behind them commits once they have
        // (the store commits in submission order).
        use fabric_core::TaskStore;
        drop(self.submit_audit());
        self.store.append_events(Vec::new()).await?;
        Ok(self.store.list_audit(query).await?)
    }
}

fn compile_all(
    policies: &std::collections::BTreeMap<String, Policy>,
) -> Result<PolicySet, PolicyError> {
    let list: Vec<Policy> = policies.values().cloned().collect();
    Ok(PolicySet::compile(&list)?)
}

/// What a check answers once an approval stands as `approval`.
pub fn approval_response(decision: &Decision, approval: &Approval) -> CheckResponse {
    let effect = match approval.status {
        ApprovalStatus::Pending => Effect::RequireApproval,
        ApprovalStatus::Approved => Effect::Allow,
        ApprovalStatus::Denied | ApprovalStatus::TimedOut => Effect::Deny,
    };
    CheckResponse {
        decision: effect,
        policy_id: decision.policy_id.clone(),
        rule: decision.rule.clone(),
        approval_id: Some(approval.id),
        approval_status: Some(approval.status),
    }
}

/// Enforcement point `llm:<model>`: the gateway's [`CallGuard`], run once
/// per call on its parsed model, for every front end (the OpenAI, Ollama and
/// `/v1/llm/infer` routes and agents' inference endpoints).
///
/// [`CallGuard`]: fabric_gateway::CallGuard
pub struct LlmGuard {
    pub policy: Arc<PolicyService>,
}

impl fabric_gateway::CallGuard for LlmGuard {
    fn check<'a>(
        &'a self,
        caller: &'a fabric_gateway::Caller,
        model: &'a str,
    ) -> fabric_gateway::GuardFuture<'a> {
        let actor = match &caller.agent {
            Some(agent) => Actor::agent(
                caller.tenant.clone(),
                agent.clone(),
                caller.workspace.clone(),
            ),
            None => Actor {
                tenant: caller.tenant.clone(),
                name: caller.user.clone(),
                agent: None,
                workspace: None,
            },
        };
        let action = format!("llm:{model}");
        let decision = self
            .policy
            .decide(&actor, &action, None, "llm", &caller.request_id);
        let outcome = match decision.effect {
            Effect::Allow => Ok(()),
            Effect::RequireApproval => Err(fabric_gateway::GatewayError::ApprovalRequired(
                decision.refusal(&action).message,
            )),
            Effect::Deny => Err(fabric_gateway::GatewayError::PolicyDenied(
                decision.refusal(&action).message,
            )),
        };
        Box::pin(std::future::ready(outcome))
    }
}

impl PolicyService {
    /// Enforcement point `net:connect:<host>:<port>` for an agent's egress
    /// proxy, behind its allowlist. `require_approval` is refused here (a
    /// connection cannot wait): the agent asks first with `check()`, and an
    /// approved action is then allowed for [`APPROVAL_GRANT_TTL`].
    pub fn decide_egress(&self, actor: &Actor, host: &str, port: u16) -> Result<(), String> {
        let action = format!("net:connect:{host}:{port}");
        let correlation = format!("egress-{}", uuid::Uuid::now_v7());
        let decision = self.decide(actor, &action, Some(host), "egress", &correlation);
        if decision.effect == Effect::Allow {
            Ok(())
        } else {
            Err(decision.refusal(&action).message)
        }
    }
}

/// The orchestrator's egress gates: [`PolicyService::decide_egress`] in process.
#[derive(Debug)]
pub struct LocalEgress(pub Arc<PolicyService>);

impl crate::services::agents::EgressPolicy for LocalEgress {
    fn gate(&self, actor: Actor, _token: Option<&str>) -> fabric_runtime::net::PolicyGate {
        let policy = Arc::clone(&self.0);
        Arc::new(move |host: &str, port: u16| {
            Box::pin(std::future::ready(policy.decide_egress(&actor, host, port)))
        })
    }
}
