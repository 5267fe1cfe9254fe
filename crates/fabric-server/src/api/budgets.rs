//! Budgets (REQUIREMENTS §8): `PUT/GET/DELETE /v1/budgets/{entity}`, `GET /v1/budgets`,
//! `GET /v1/usage/{entity}?period=day`. Writes need `admin`; an agent or a
//! user may read its own budget and usage.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use fabric_core::Scope;
use fabric_core::budget::{BudgetEntity, BudgetList, BudgetSpec, BudgetUsageReport, BudgetView};
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Listing, NoFilters, PageParams};
use crate::services::auth::Principal;
use crate::state::AppState;

fn entity(raw: &str) -> Result<BudgetEntity, ApiError> {
    raw.parse()
        .map_err(|e: fabric_core::budget::BudgetEntityError| ApiError::bad_request(e.to_string()))
}

/// Reading a budget or usage: a token its own agent's or user's; a
/// tenant-admin its tenant's entities (`may_budget`); an admin any.
async fn may_read(
    state: &AppState,
    principal: &Principal,
    entity: &BudgetEntity,
) -> Result<(), ApiError> {
    let own = match (entity, &principal.agent) {
        (BudgetEntity::Agent(a), Some(mine)) => a == mine,
        (BudgetEntity::User(u), None) => *u == principal.user,
        _ => false,
    };
    if own {
        return Ok(());
    }
    if Scope::Admin.granted_by(&principal.scopes)
        || Scope::TenantAdmin.granted_by(&principal.scopes)
    {
        return Ok(state
            .accounts
            .may_budget(principal, entity, &state.agents)
            .await?);
    }
    Err(ApiError::forbidden(format!(
        "reading {entity} needs the 'tenant:admin' scope: a token may read only its own agent's or user's budget and usage"
    )))
}

/// Sets (creates or replaces) an entity's budget.
#[utoipa::path(put, path = "/v1/budgets/{entity}", operation_id = "put_budget", tag = "budgets", security(("bearer" = [])),
    params(("entity" = String, Path, pattern = "^(agent|tenant|user):[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description = "agent:<id>, user:<name> or tenant:<id>"), PutParams),
    request_body = BudgetSpec,
    responses((status = 200, body = BudgetView), (status = 400, body = fabric_core::api::ErrorBody), (status = 403, body = fabric_core::api::ErrorBody),
        (status = 404, description = "no such agent, user or tenant (send force=true to budget it ahead of time)", body = fabric_core::api::ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw): Path<String>,
    ApiQuery(params): ApiQuery<PutParams>,
    ApiJson(spec): ApiJson<BudgetSpec>,
) -> Result<Json<BudgetView>, ApiError> {
    let entity = entity(&raw)?;
    state
        .accounts
        .may_budget(&principal, &entity, &state.agents)
        .await?;
    // A bad spec is a 400 whether or not the entity exists.
    spec.validate()
        .map_err(crate::services::budgets::BudgetError::Invalid)?;
    if !params.force.unwrap_or(false)
        && !state.accounts.entity_exists(&entity, &state.agents).await?
    {
        return Err(ApiError::not_found(format!(
            "there is no {entity}: a budget for it would never apply; check the name, or send force=true ('budget set --force') to set it ahead of time"
        )));
    }
    let view = state.budgets.put(entity, spec).await?;
    tracing::info!(entity = %view.entity, "budget set");
    state
        .policy
        .record_admin(&principal, "budget:set", &view.entity.to_string());
    Ok(Json(view))
}

/// `PUT /v1/budgets/{entity}?force=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PutParams {
    /// Set it even though no such agent, user or tenant exists (yet).
    pub force: Option<bool>,
}

/// Every budget, by entity (a tenant-admin: its tenant's, its users' and
/// its agents').
#[utoipa::path(get, path = "/v1/budgets", operation_id = "list_budgets", tag = "budgets", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = BudgetList), (status = 400, body = fabric_core::api::ErrorBody), (status = 403, body = fabric_core::api::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Listing { page, .. }: Listing<NoFilters>,
) -> Result<Json<BudgetList>, ApiError> {
    principal.require(Scope::TenantAdmin)?;
    let mut budgets = state.budgets.list().await?;
    if !Scope::Admin.granted_by(&principal.scopes) {
        // A tenant-admin: its tenant's entities only.
        let mut own = Vec::with_capacity(budgets.len());
        for budget in budgets {
            let tenant = state
                .accounts
                .entity_tenant(&budget.entity, &state.agents)
                .await?;
            if tenant.as_ref() == Some(&principal.tenant) {
                own.push(budget);
            }
        }
        budgets = own;
    }
    let (budgets, next_cursor) = page.slice(budgets, |b| b.entity.to_string());
    Ok(Json(BudgetList {
        budgets,
        next_cursor,
    }))
}

/// One entity's budget.
#[utoipa::path(get, path = "/v1/budgets/{entity}", operation_id = "get_budget", tag = "budgets", security(("bearer" = [])),
    params(("entity" = String, Path, pattern = "^(agent|tenant|user):[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description = "agent:<id>, user:<name> or tenant:<id>")),
    responses((status = 200, body = BudgetView), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw): Path<String>,
) -> Result<Json<BudgetView>, ApiError> {
    let entity = entity(&raw)?;
    may_read(&state, &principal, &entity).await?;
    Ok(Json(state.budgets.get(&entity).await?))
}

/// Removes an entity's budget (its usage stays in the ledger).
#[utoipa::path(delete, path = "/v1/budgets/{entity}", operation_id = "delete_budget", tag = "budgets", security(("bearer" = [])),
    params(("entity" = String, Path, pattern = "^(agent|tenant|user):[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description = "agent:<id>, user:<name> or tenant:<id>")),
    responses((status = 204), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let entity = entity(&raw)?;
    state
        .accounts
        .may_budget(&principal, &entity, &state.agents)
        .await?;
    state.budgets.delete(&entity).await?;
    tracing::info!(entity = %entity, "budget deleted");
    state
        .policy
        .record_admin(&principal, "budget:delete", &entity.to_string());
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// `day` (the only period budgets have).
    #[param(pattern = "^day$")]
    pub period: Option<String>,
}

/// Used, limits, remaining, percent, projection to the end of the period,
/// alerts and reset time of an entity.
#[utoipa::path(get, path = "/v1/usage/{entity}", operation_id = "get_usage", tag = "budgets", security(("bearer" = [])),
    params(("entity" = String, Path, pattern = "^(agent|tenant|user):[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description = "agent:<id>, user:<name> or tenant:<id>"), UsageParams),
    responses((status = 200, body = BudgetUsageReport), (status = 400, body = fabric_core::api::ErrorBody), (status = 403, body = fabric_core::api::ErrorBody)))]
pub async fn usage(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw): Path<String>,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<Json<BudgetUsageReport>, ApiError> {
    let entity = entity(&raw)?;
    if let Some(period) = params.period.as_deref()
        && period != "day"
    {
        return Err(ApiError::bad_request(format!(
            "unknown period {period:?}: budgets count per UTC day; use period=day"
        )));
    }
    may_read(&state, &principal, &entity).await?;
    Ok(Json(state.budgets.report(&entity).await?))
}
