//! `/v1/tenants` and `/v1/users` (REQUIREMENTS §12): who may use the fabric.
//! The rules (who manages whom, what revokes tokens) live in
//! `services::accounts`; these handlers translate.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use fabric_core::api::{
    CreateTenantRequest, CreateUserRequest, CreatedUser, PasswordChanged, SetPasswordRequest,
    TenantList, UpdateTenantRequest, UpdateUserRequest, UserList, UserView,
};
use fabric_core::{Tenant, TenantId};
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{ApiJson, Listing, NoFilters, PageParams};
use crate::services::auth::Principal;
use crate::state::AppState;

fn tenant_id(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::new(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Creates a tenant (admins only).
#[utoipa::path(post, path = "/v1/tenants", operation_id = "create_tenant", tag = "access", security(("bearer" = [])),
    request_body = CreateTenantRequest,
    responses((status = 201, body = Tenant), (status = 403, body = fabric_core::api::ErrorBody),
        (status = 409, description = "the name is taken", body = fabric_core::api::ErrorBody)))]
pub async fn create_tenant(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<CreateTenantRequest>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let tenant = state.accounts.create_tenant(&principal, req.name).await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// Every tenant (an admin), or the caller's own.
#[utoipa::path(get, path = "/v1/tenants", operation_id = "list_tenants", tag = "access", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = TenantList)))]
pub async fn list_tenants(
    State(state): State<AppState>,
    principal: Principal,
    Listing { page, .. }: Listing<NoFilters>,
) -> Result<Json<TenantList>, ApiError> {
    let tenants = state.accounts.list_tenants(&principal).await?;
    let (tenants, next_cursor) = page.slice(tenants, |t| t.name.clone());
    Ok(Json(TenantList {
        tenants,
        next_cursor,
    }))
}

/// One tenant: any for an admin, else only the caller's own (404 otherwise).
#[utoipa::path(get, path = "/v1/tenants/{name}", operation_id = "get_tenant", tag = "access", security(("bearer" = [])),
    params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    responses((status = 200, body = Tenant), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn get_tenant(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    let name = tenant_id(&name)?;
    Ok(Json(state.accounts.get_tenant(&principal, &name).await?))
}

/// Disables or enables a tenant (admins only). Disabling revokes its users' tokens.
#[utoipa::path(patch, path = "/v1/tenants/{name}", operation_id = "update_tenant", tag = "access", security(("bearer" = [])),
    params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")), request_body = UpdateTenantRequest,
    responses((status = 200, body = Tenant), (status = 403, body = fabric_core::api::ErrorBody), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn update_tenant(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<UpdateTenantRequest>,
) -> Result<Json<Tenant>, ApiError> {
    let name = tenant_id(&name)?;
    let tenant = match req.disabled {
        Some(disabled) => {
            state
                .accounts
                .set_tenant_disabled(&principal, &name, disabled)
                .await?
        }
        None => state.accounts.get_tenant(&principal, &name).await?,
    };
    Ok(Json(tenant))
}

/// Deletes a tenant that has no users left (admins only).
#[utoipa::path(delete, path = "/v1/tenants/{name}", operation_id = "delete_tenant", tag = "access", security(("bearer" = [])),
    params(("name" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    responses((status = 204), (status = 403, body = fabric_core::api::ErrorBody), (status = 404, body = fabric_core::api::ErrorBody),
        (status = 409, description = "the tenant still has users", body = fabric_core::api::ErrorBody)))]
pub async fn delete_tenant(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = tenant_id(&name)?;
    state.accounts.delete_tenant(&principal, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a user in the caller's tenant (or, as an admin, in any).
#[utoipa::path(post, path = "/v1/users", operation_id = "create_user", tag = "access", security(("bearer" = [])),
    request_body = CreateUserRequest,
    responses((status = 201, body = CreatedUser), (status = 400, body = fabric_core::api::ErrorBody), (status = 403, body = fabric_core::api::ErrorBody),
        (status = 404, description = "no such tenant (or another tenant's)", body = fabric_core::api::ErrorBody),
        (status = 409, description = "the name is taken", body = fabric_core::api::ErrorBody)))]
pub async fn create_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> Result<(StatusCode, Json<CreatedUser>), ApiError> {
    let (user, password) = state.accounts.create_user(&principal, req).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedUser {
            user: UserView::from(&user),
            password,
        }),
    ))
}

/// `GET /v1/users?tenant=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UserFilters {
    /// Only this tenant's users (an admin; others see their own tenant only).
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub tenant: Option<TenantId>,
}

/// The users of the caller's tenant (an admin: of every tenant).
#[utoipa::path(get, path = "/v1/users", operation_id = "list_users", tag = "access", security(("bearer" = [])), params(PageParams, UserFilters),
    responses((status = 200, body = UserList), (status = 403, body = fabric_core::api::ErrorBody)))]
pub async fn list_users(
    State(state): State<AppState>,
    principal: Principal,
    Listing { page, filters }: Listing<UserFilters>,
) -> Result<Json<UserList>, ApiError> {
    let users = state
        .accounts
        .list_users(&principal, filters.tenant.as_ref())
        .await?;
    let views = users.iter().map(UserView::from).collect();
    let (users, next_cursor) = page.slice(views, |u: &UserView| u.name.clone());
    Ok(Json(UserList { users, next_cursor }))
}

/// One user: oneself, or one of a tenant the caller manages.
#[utoipa::path(get, path = "/v1/users/{name}", operation_id = "get_user", tag = "access", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = UserView), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn get_user(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    let user = state.accounts.get_user(&principal, &name).await?;
    Ok(Json(UserView::from(&user)))
}

/// Changes a user's role, or disables/enables it; revokes its tokens.
#[utoipa::path(patch, path = "/v1/users/{name}", operation_id = "update_user", tag = "access", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = UpdateUserRequest,
    responses((status = 200, body = UserView), (status = 403, body = fabric_core::api::ErrorBody), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn update_user(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<UpdateUserRequest>,
) -> Result<Json<UserView>, ApiError> {
    let user = state.accounts.update_user(&principal, &name, req).await?;
    Ok(Json(UserView::from(&user)))
}

/// Sets a password: one's own (with `current_password`) or, as its admin, a user's.
#[utoipa::path(put, path = "/v1/users/{name}/password", operation_id = "set_password", tag = "access", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = SetPasswordRequest,
    responses((status = 200, body = PasswordChanged), (status = 400, body = fabric_core::api::ErrorBody),
        (status = 401, description = "a wrong current password", body = fabric_core::api::ErrorBody),
        (status = 403, body = fabric_core::api::ErrorBody), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn set_password(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SetPasswordRequest>,
) -> Result<Json<PasswordChanged>, ApiError> {
    let password = state
        .accounts
        .set_password(
            &principal,
            &name,
            req.password,
            req.current_password.as_deref(),
        )
        .await?;
    Ok(Json(PasswordChanged { password }))
}

/// Deletes a user and its tokens.
#[utoipa::path(delete, path = "/v1/users/{name}", operation_id = "delete_user", tag = "access", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 204), (status = 403, body = fabric_core::api::ErrorBody), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn delete_user(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.accounts.delete_user(&principal, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
