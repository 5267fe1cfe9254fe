//! `/v1/policies`, `/v1/policy/check`, `/v1/approvals`, `/v1/audit`, and the
//! agent side: `/v1/agent/check`, `/v1/agent/approvals/{id}` (docs/POLICY.md).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use fabric_core::policy::{
    Approval, ApprovalList, ApprovalQuery, ApprovalStatus, AuditList, AuditQuery, CheckRequest,
    CheckResponse, Effect, Policy, PolicyList, validate_policy_id,
};
use fabric_core::{AgentId, Scope};
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Listing, NoFilters, PageParams, UuidPageParams};
use crate::services::auth::Principal;
use crate::services::policy::{Actor, Decision, approval_response};
use crate::state::AppState;

/// Longest wait of one agent check or approval poll.
const MAX_WAIT_SECS: f64 = 60.0;
/// Longest action string accepted.
const MAX_ACTION_BYTES: usize = 4096;

fn wait_secs(wait: Option<f64>) -> Result<Duration, ApiError> {
    let wait = wait.unwrap_or(0.0);
    if !(wait.is_finite() && (0.0..=MAX_WAIT_SECS).contains(&wait)) {
        return Err(ApiError::bad_request(format!(
            "'wait' must be between 0 and {MAX_WAIT_SECS} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(wait))
}

fn check_action(action: &str) -> Result<(), ApiError> {
    if action.is_empty() || action.len() > MAX_ACTION_BYTES {
        return Err(ApiError::bad_request(format!(
            "'action' must be 1 to {MAX_ACTION_BYTES} bytes, e.g. \"shell:rm -rf /tmp/x\" or \"net:connect:api.github.com:443\""
        )));
    }
    Ok(())
}

fn approval_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| {
        ApiError::bad_request(format!(
            "invalid approval id {raw:?}: expected a UUID as shown by reactor-fabric approval list"
        ))
    })
}

/// Creates or replaces a policy; live at once (the next check sees it).
#[utoipa::path(put, path = "/v1/policies/{id}", operation_id = "put_policy", tag = "policy", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description = "policy id")), request_body = Policy,
    responses((status = 200, body = Policy), (status = 400, description = "invalid policy (bad glob, scope, condition)", body = fabric_core::api::ErrorBody),
        (status = 403, description = "needs the admin scope (a tenant-admin: a policy scoped to its own tenant)", body = fabric_core::api::ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(mut policy): ApiJson<Policy>,
) -> Result<Json<Policy>, ApiError> {
    validate_policy_id(&id).map_err(ApiError::bad_request)?;
    state
        .policy
        .may_write(&principal, &id, Some(&policy.scope))?;
    if !policy.id.is_empty() && policy.id != id {
        return Err(ApiError::bad_request(format!(
            "the body names policy {:?} but the path names {id:?}: leave 'id' out of the body or make them match",
            policy.id
        )));
    }
    policy.id = id;
    let stored = state.policy.put(policy).await?;
    state
        .policy
        .record_admin(&principal, "policy:put", &stored.id);
    Ok(Json(stored))
}

/// Every policy, by id.
#[utoipa::path(get, path = "/v1/policies", operation_id = "list_policies", tag = "policy", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = PolicyList), (status = 400, body = fabric_core::api::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Listing { page, .. }: Listing<NoFilters>,
) -> Result<Json<PolicyList>, ApiError> {
    principal.require(Scope::ReadTasks)?;
    let sees_agent = |id: &str| {
        id.parse::<fabric_core::AgentId>()
            .is_ok_and(|id| state.agents.visible_to(&id, &principal))
    };
    let policies = state.policy.list_for(&principal, sees_agent);
    let (policies, next_cursor) = page.slice(policies, |p| p.id.clone());
    Ok(Json(PolicyList {
        policies,
        next_cursor,
    }))
}

/// Deletes a policy; live at once.
#[utoipa::path(delete, path = "/v1/policies/{id}", operation_id = "delete_policy", tag = "policy", security(("bearer" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description = "policy id")),
    responses((status = 204), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.policy.may_write(&principal, &id, None)?;
    state.policy.delete(&id).await?;
    state.policy.record_admin(&principal, "policy:delete", &id);
    Ok(StatusCode::NO_CONTENT)
}

/// May `agent` do `action`? Evaluates (and audits) without creating an
/// approval: a `require_approval` answer says an agent asking would wait.
#[utoipa::path(post, path = "/v1/policy/check", operation_id = "check_policy", tag = "policy", security(("bearer" = [])),
    request_body = CheckRequest, responses((status = 200, body = CheckResponse), (status = 400, body = fabric_core::api::ErrorBody)))]
pub async fn check(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<CheckRequest>,
) -> Result<Json<CheckResponse>, ApiError> {
    principal.require(Scope::ReadTasks)?;
    check_action(&req.action)?;
    if req.wait.is_some() {
        return Err(ApiError::bad_request(
            "'wait' is for agents (POST /v1/agent/check); this check never waits",
        ));
    }
    let agent = req
        .agent
        .as_deref()
        .map(AgentId::new)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let workspace = req
        .workspace
        .clone()
        .or_else(|| agent.as_ref().and_then(|a| state.agents.workspace_of(a)));
    let actor = Actor {
        tenant: principal.tenant.clone(),
        name: principal.user.clone(),
        agent,
        workspace,
    };
    let request_id = crate::request_id::current();
    let decision = state.policy.decide(
        &actor,
        &req.action,
        req.resource.as_deref(),
        "check",
        &request_id,
    );
    Ok(Json(decision.response()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ApprovalParams {
    /// `pending`, `approved`, `denied` or `timed_out` (default: every status).
    #[param(value_type = Option<ApprovalStatus>)]
    status: Option<String>,
}

/// Approvals of the caller's tenant, newest first.
#[utoipa::path(get, path = "/v1/approvals", operation_id = "list_approvals", tag = "policy", security(("bearer" = [])), params(ApprovalParams, UuidPageParams),
    responses((status = 200, body = ApprovalList), (status = 400, body = fabric_core::api::ErrorBody), (status = 403, description = "needs the approve scope", body = fabric_core::api::ErrorBody)))]
pub async fn approvals(
    State(state): State<AppState>,
    principal: Principal,
    Listing { page, filters }: Listing<ApprovalParams>,
) -> Result<Json<ApprovalList>, ApiError> {
    principal.require(Scope::Approve)?;
    let status = filters
        .status
        .as_deref()
        .map(str::parse::<ApprovalStatus>)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let query = ApprovalQuery {
        tenant: Some(principal.tenant.clone()),
        status,
        before: page.cursor()?,
        limit: page.limit,
    };
    let approvals = state.policy.list_approvals(query).await?;
    let next_cursor = page.next(&approvals, |a| a.id);
    Ok(Json(ApprovalList {
        approvals,
        next_cursor,
    }))
}

/// Approves a pending approval: the waiting agent proceeds.
#[utoipa::path(post, path = "/v1/approvals/{id}/approve", operation_id = "approve", tag = "policy", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "approval id")), request_body(content = Option<DecisionRequest>, description = "optional: why"),
    responses((status = 200, body = Approval), (status = 403, body = fabric_core::api::ErrorBody), (status = 404, body = fabric_core::api::ErrorBody),
        (status = 409, description = "already decided or timed out", body = fabric_core::api::ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Approval>, ApiError> {
    decide(&state, &principal, &id, true, &body).await
}

/// The optional body of approve and deny.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// Why: kept on the approval and in the audit trail.
    #[schema(max_length = 1000)]
    reason: Option<String>,
}

/// Most characters of a decision's reason.
const MAX_REASON: usize = 1000;

pub(super) async fn decide(
    state: &AppState,
    principal: &Principal,
    id: &str,
    approve: bool,
    body: &[u8],
) -> Result<Json<Approval>, ApiError> {
    let id = approval_id(id)?;
    // The body is optional: none (or JSON `null`), or `{"reason": ...}`.
    let text = body.trim_ascii();
    let decision = if text.is_empty() || text == b"null" {
        None
    } else {
        Some(
            fabric_core::api::parse_json_body::<DecisionRequest>(body)
                .map_err(ApiError::bad_request)?,
        )
    };
    let reason = decision
        .and_then(|d| d.reason)
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON)
    {
        return Err(ApiError::bad_request(format!(
            "'reason' is longer than {MAX_REASON} characters: say it shorter"
        )));
    }
    Ok(Json(
        state
            .policy
            .decide_approval(id, approve, reason, principal)
            .await?,
    ))
}

/// Denies a pending approval: the waiting agent is told no.
#[utoipa::path(post, path = "/v1/approvals/{id}/deny", operation_id = "deny", tag = "policy", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "approval id")), request_body(content = Option<DecisionRequest>, description = "optional: why"),
    responses((status = 200, body = Approval), (status = 403, body = fabric_core::api::ErrorBody), (status = 404, body = fabric_core::api::ErrorBody),
        (status = 409, description = "already decided or timed out", body = fabric_core::api::ErrorBody)))]
pub async fn deny(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Approval>, ApiError> {
    decide(&state, &principal, &id, false, &body).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only decisions about this agent.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    agent: Option<String>,
    /// Only `allow`, `deny` or `require_approval` decisions.
    #[param(value_type = Option<Effect>)]
    decision: Option<String>,
}

/// The audit trail of the caller's tenant (FR-POL-5), newest first: for its
/// admins and tenant-admins.
#[utoipa::path(get, path = "/v1/audit", operation_id = "list_audit", tag = "policy", security(("bearer" = [])), params(AuditParams, UuidPageParams),
    responses((status = 200, body = AuditList), (status = 400, body = fabric_core::api::ErrorBody), (status = 403, description = "needs the tenant:admin scope", body = fabric_core::api::ErrorBody)))]
pub async fn audit(
    State(state): State<AppState>,
    principal: Principal,
    Listing {
        page,
        filters: params,
    }: Listing<AuditParams>,
) -> Result<Json<AuditList>, ApiError> {
    principal.require(Scope::TenantAdmin)?;
    let agent = params
        .agent
        .as_deref()
        .map(AgentId::new)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let decision = params
        .decision
        .as_deref()
        .map(str::parse::<Effect>)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let query = AuditQuery {
        tenant: Some(principal.tenant.clone()),
        agent,
        decision,
        before: page.cursor()?,
        limit: page.limit,
    };
    let records = state.policy.list_audit(query).await?;
    let next_cursor = page.next(&records, |r| r.id);
    Ok(Json(AuditList {
        records,
        next_cursor,
    }))
}

/// The calling agent (agent tokens only) as a policy actor.
fn agent_actor(state: &AppState, principal: &Principal) -> Result<Actor, ApiError> {
    let Some(agent) = principal.agent.clone() else {
        return Err(ApiError::forbidden(
            "only agent tokens can use /v1/agent/...: agents get theirs as FABRIC_TOKEN",
        ));
    };
    state.agents.touch(&agent);
    let workspace = state.agents.workspace_of(&agent);
    Ok(Actor::agent(principal.tenant.clone(), agent, workspace))
}

/// `POST /v1/agent/egress` body: a target an agent's egress proxy on a
/// worker node is about to connect to (its allowlist admitted it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressCheck {
    pub host: String,
    pub port: u16,
}

/// The answer: `reason` says why not.
#[derive(Debug, serde::Serialize)]
pub struct EgressVerdict {
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The egress proxy of an agent on a worker node asks the policies about
/// `net:connect:<host>:<port>`, as the orchestrator's own proxies do in
/// process: decided, audited (source `egress`), never an approval (a
/// connection cannot wait). The node protocol's, with the agent's token;
/// not in the OpenAPI document.
pub async fn agent_egress(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<EgressCheck>,
) -> Result<Json<EgressVerdict>, ApiError> {
    let actor = agent_actor(&state, &principal)?;
    if req.host.is_empty() || req.host.len() > 253 {
        return Err(ApiError::bad_request(
            "host must be 1 to 253 characters: the name or address the agent connects to",
        ));
    }
    Ok(Json(
        match state.policy.decide_egress(&actor, &req.host, req.port) {
            Ok(()) => EgressVerdict {
                allowed: true,
                reason: None,
            },
            Err(reason) => EgressVerdict {
                allowed: false,
                reason: Some(reason),
            },
        },
    ))
}

/// An agent asks before acting. `require_approval` creates a pending
/// approval; with `wait`, the call waits that long for its decision.
#[utoipa::path(post, path = "/v1/agent/check", operation_id = "agent_check", tag = "agent protocol", security(("bearer" = [])),
    request_body = CheckRequest,
    responses((status = 200, description = "decision: allow, deny, or require_approval with approval_status pending (poll GET /v1/agent/approvals/{id})", body = CheckResponse),
        (status = 400, body = fabric_core::api::ErrorBody)))]
pub async fn agent_check(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<CheckRequest>,
) -> Result<Json<CheckResponse>, ApiError> {
    let actor = agent_actor(&state, &principal)?;
    check_action(&req.action)?;
    let wait = wait_secs(req.wait)?;
    if req
        .agent
        .as_ref()
        .is_some_and(|a| Some(a.as_str()) != actor.agent.as_ref().map(|a| a.as_str()))
    {
        return Err(ApiError::forbidden(
            "an agent checks only its own actions: leave 'agent' out",
        ));
    }
    let request_id = crate::request_id::current();
    let decision = state.policy.decide(
        &actor,
        &req.action,
        req.resource.as_deref(),
        "agent_check",
        &request_id,
    );
    if decision.effect != Effect::RequireApproval {
        return Ok(Json(decision.response()));
    }
    let approval = state
        .policy
        .request_approval(
            &actor,
            &req.action,
            req.resource.as_deref(),
            &decision,
            &request_id,
        )
        .await?;
    let approval = wait_for(&state, &actor, approval.id, wait).await?;
    Ok(Json(approval_response(&decision, &approval)))
}

async fn wait_for(
    state: &AppState,
    actor: &Actor,
    id: uuid::Uuid,
    wait: Duration,
) -> Result<Approval, ApiError> {
    let shutdown = state.shutdown.clone();
    tokio::select! {
        approval = state.policy.wait_approval(&actor.tenant, id, wait) => Ok(approval?),
        () = shutdown.cancelled() => Err(ApiError::unavailable("the fabric is shutting down; retry shortly")),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PollParams {
    /// Seconds to wait for a decision (0 to 60, default 30).
    wait: Option<f64>,
}

/// Waits for an approval the agent asked for.
#[utoipa::path(get, path = "/v1/agent/approvals/{id}", operation_id = "agent_wait_approval", tag = "agent protocol", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "approval id"), PollParams),
    responses((status = 200, body = CheckResponse), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn agent_approval(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<PollParams>,
) -> Result<Json<CheckResponse>, ApiError> {
    let actor = agent_actor(&state, &principal)?;
    let id = approval_id(&id)?;
    let wait = wait_secs(Some(params.wait.unwrap_or(30.0)))?;
    let approval = wait_for(&state, &actor, id, wait).await?;
    if approval.agent != actor.agent {
        return Err(ApiError::not_found(format!(
            "no approval {id} of this agent"
        )));
    }
    let decision = Decision {
        effect: Effect::RequireApproval,
        policy_id: Some(approval.policy_id.clone()).filter(|p| !p.is_empty()),
        rule: approval.rule.clone(),
        approvers: approval.approvers.clone(),
        approval_timeout: Duration::ZERO,
    };
    Ok(Json(approval_response(&decision, &approval)))
}
