//! Tenants, users and their tokens: who may manage whom (REQUIREMENTS §12).
//!
//! An `admin` manages every tenant; a `tenant-admin` (scope `tenant:admin`)
//! the users and tokens of its own tenant, and sees nothing of another's (a
//! user of another tenant answers "not found", as if it did not exist).
//! Every change is audited. Anything that narrows what a user may do (a
//! new role, disabling, a new password, deleting) revokes the user's tokens
//! at once, on every orchestrator sharing the store.

use std::sync::Arc;

use fabric_core::api::{CreateTokenRequest, CreateUserRequest, TokenView, UpdateUserRequest};
use fabric_core::{
    ApiToken, AuthStore, Identity, MissingScope, Role, Scope, StoreError, Tenant, TenantId,
    TokenKind, User, validate_user_name,
};

use crate::services::auth::{
    AuthError, AuthService, NewToken, Principal, generate_password, hash_password,
};
use crate::services::limits::{RateLimits, UserLimits};
use crate::services::policy::PolicyService;

/// Longest lifetime of a token created with `token create`.
pub const MAX_TOKEN_TTL_SECONDS: u64 = 365 * 24 * 3600;
/// Lifetime of a token created without `--expires`.
const DEFAULT_TOKEN_TTL_SECONDS: u64 = 30 * 24 * 3600;
/// Shortest password accepted.
const MIN_PASSWORD_CHARS: usize = 8;

/// Why a tenant, user or token operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("no {kind} named {name:?}; list them with 'reactor-fabric {kind} list'")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    MissingScope(#[from] MissingScope),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AccountError {
    fn no_user(name: &str) -> Self {
        AccountError::NotFound {
            kind: "user",
            name: name.to_owned(),
        }
    }

    fn no_tenant(name: &TenantId) -> Self {
        AccountError::NotFound {
            kind: "tenant",
            name: name.to_string(),
        }
    }
}

/// Tenants, users and tokens, managed by their admins.
pub struct AccountService {
    auth: Arc<AuthService>,
    audit: Arc<PolicyService>,
    limits: Arc<RateLimits>,
}

impl AccountService {
    pub fn new(auth: Arc<AuthService>, audit: Arc<PolicyService>, limits: Arc<RateLimits>) -> Self {
        Self {
            auth,
            audit,
            limits,
        }
    }

    /// The `default` tenant exists from the first start on (the bootstrap
    /// admin's; stores from before tenants existed gain it here).
    pub async fn ensure_default_tenant(&self) -> Result<(), StoreError> {
        let tenant = Tenant {
            name: TenantId::default_tenant(),
            created_at: self.auth.now(),
            disabled: false,
        };
        self.auth.store().create_tenant(tenant).await.map(drop)
    }

    // ------------------------------------------------------------ tenants

    pub async fn create_tenant(
        &self,
        by: &Identity,
        name: TenantId,
    ) -> Result<Tenant, AccountError> {
        by.require(Scope::Admin)?;
        let tenant = Tenant {
            name,
            created_at: self.auth.now(),
            disabled: false,
        };
        if !self.auth.store().create_tenant(tenant.clone()).await? {
            return Err(AccountError::Conflict(format!(
                "tenant {} already exists",
                tenant.name
            )));
        }
        self.audit
            .record_admin(by, "tenant:create", tenant.name.as_str());
        Ok(tenant)
    }

    /// Every tenant for an admin; one's own for everyone else.
    pub async fn list_tenants(&self, by: &Identity) -> Result<Vec<Tenant>, AccountError> {
        let tenants = self.auth.store().list_tenants().await?;
        Ok(tenants
            .into_iter()
            .filter(|t| Scope::Admin.granted_by(&by.scopes) || t.name == by.tenant)
            .collect())
    }

    /// A tenant: any for an admin, only one's own for everyone else.
    pub async fn get_tenant(&self, by: &Identity, name: &TenantId) -> Result<Tenant, AccountError> {
        let visible = Scope::Admin.granted_by(&by.scopes) || &by.tenant == name;
        match self.auth.tenant(name).await? {
            Some(tenant) if visible => Ok(tenant),
            _ => Err(AccountError::no_tenant(name)),
        }
    }

    /// Disables (or enables) a tenant: its users can no longer log in and
    /// every token of theirs is revoked.
    pub async fn set_tenant_disabled(
        &self,
        by: &Identity,
        name: &TenantId,
        disabled: bool,
    ) -> Result<Tenant, AccountError> {
        by.require(Scope::Admin)?;
        let mut tenant = self.get_tenant(by, name).await?;
        if disabled && &by.tenant == name {
            return Err(AccountError::Forbidden(format!(
                "you cannot disable your own tenant {name}: ask an admin of another tenant"
            )));
        }
        tenant.disabled = disabled;
        self.auth.store().put_tenant(tenant.clone()).await?;
        if disabled {
            self.revoke_where(|t| &t.tenant == name).await?;
        }
        let action = if disabled {
            "tenant:disable"
        } else {
            "tenant:enable"
        };
        self.audit.record_admin(by, action, name.as_str());
        Ok(tenant)
    }

    /// Deletes an empty tenant (no users left).
    pub async fn delete_tenant(&self, by: &Identity, name: &TenantId) -> Result<(), AccountError> {
        by.require(Scope::Admin)?;
        if name == &TenantId::default_tenant() || &by.tenant == name {
            return Err(AccountError::Forbidden(format!(
                "tenant {name} cannot be deleted: it is the default tenant or your own"
            )));
        }
        let members: Vec<String> = self
            .auth
            .store()
            .list_users()
            .await?
            .into_iter()
            .filter(|u| &u.tenant == name)
            .map(|u| u.name)
            .collect();
        if !members.is_empty() {
            return Err(AccountError::Conflict(format!(
                "tenant {name} still has users ({}): delete them first with 'reactor-fabric user rm'",
                members.join(", ")
            )));
        }
        if !self.auth.store().delete_tenant(name.clone()).await? {
            return Err(AccountError::no_tenant(name));
        }
        self.audit.record_admin(by, "tenant:delete", name.as_str());
        Ok(())
    }

    /// Whether `by` may set, remove or read another entity's budget: an admin
    /// any, a tenant-admin those of its tenant, its tenant's users and
    /// agents. Another tenant's entity answers as if it did not exist.
    pub async fn may_budget(
        &self,
        by: &Identity,
        entity: &fabric_core::BudgetEntity,
        agents: &crate::services::agents::AgentManager,
    ) -> Result<(), AccountError> {
        if Scope::Admin.granted_by(&by.scopes) {
            return Ok(());
        }
        by.require(Scope::TenantAdmin).map_err(|_| {
            AccountError::MissingScope(MissingScope {
                scope: Scope::Admin,
            })
        })?;
        if self.entity_tenant(entity, agents).await?.as_ref() == Some(&by.tenant) {
            return Ok(());
        }
        use fabric_core::BudgetEntity as E;
        Err(match entity {
            E::Tenant(t) => AccountError::no_tenant(t),
            E::User(name) => AccountError::no_user(name),
            E::Agent(id) => AccountError::NotFound {
                kind: "agent",
                name: id.to_string(),
            },
        })
    }

    /// The tenant a budget's entity belongs to (`None`: it does not exist).
    pub async fn entity_tenant(
        &self,
        entity: &fabric_core::BudgetEntity,
        agents: &crate::services::agents::AgentManager,
    ) -> Result<Option<TenantId>, AccountError> {
        use fabric_core::BudgetEntity as E;
        Ok(match entity {
            E::Tenant(t) => self.auth.tenant(t).await?.map(|_| t.clone()),
            E::User(name) => self
                .auth
                .store()
                .get_user(name.clone())
                .await?
                .map(|u| u.tenant),
            E::Agent(id) => agents.tenant_of(id),
        })
    }

    /// Whether a budget's entity exists: the agent (in `agents`), the user
    /// or the tenant.
    pub async fn entity_exists(
        &self,
        entity: &fabric_core::BudgetEntity,
        agents: &crate::services::agents::AgentManager,
    ) -> Result<bool, AccountError> {
        use fabric_core::BudgetEntity as E;
        Ok(match entity {
            E::Agent(id) => agents.exists(id),
            E::User(name) => self.auth.store().get_user(name.clone()).await?.is_some(),
            E::Tenant(name) => self.auth.tenant(name).await?.is_some(),
        })
    }

    // ------------------------------------------------------------ users

    /// Creates a user; returns it and the generated password when none was given.
    pub async fn create_user(
        &self,
        by: &Identity,
        req: CreateUserRequest,
    ) -> Result<(User, Option<String>), AccountError> {
        validate_user_name(&req.name).map_err(|e| AccountError::Invalid(e.to_string()))?;
        if req.name == fabric_core::auth::AGENTS_USER {
            // Agents run as this user: a person by that name would share
            // their budgets, usage and audit trail.
            return Err(AccountError::Conflict(format!(
                "the user name {:?} is reserved for the fabric's agents; choose another",
                req.name
            )));
        }
        let tenant = req.tenant.unwrap_or_else(|| by.tenant.clone());
        self.may_manage(by, &tenant)?;
        may_grant(by, req.role)?;
        match self.auth.tenant(&tenant).await? {
            None => return Err(AccountError::no_tenant(&tenant)),
            Some(t) if t.disabled => {
                return Err(AccountError::Conflict(format!(
                    "tenant {tenant} is disabled: enable it first"
                )));
            }
            Some(_) => {}
        }
        let (password, generated) = new_password(req.password)?;
        let user = User {
            name: req.name,
            tenant,
            password_hash: hash_password(password).await?,
            role: req.role,
            disabled: false,
            created_at: self.auth.now(),
            rate_limit_rps: None,
            llm_tokens_per_minute: None,
        };
        if !self.auth.store().create_user(user.clone()).await? {
            return Err(AccountError::Conflict(format!(
                "user {:?} already exists; choose another name",
                user.name
            )));
        }
        self.audit.record_admin(by, "user:create", &user.name);
        Ok((user, generated))
    }

    /// The users of the caller's tenant (an admin: of every tenant, or of `tenant`).
    pub async fn list_users(
        &self,
        by: &Identity,
        tenant: Option<&TenantId>,
    ) -> Result<Vec<User>, AccountError> {
        let tenant = match tenant {
            Some(t) => {
                self.may_manage(by, t)?;
                Some(t)
            }
            None if Scope::Admin.granted_by(&by.scopes) => None,
            None => {
                by.require(Scope::TenantAdmin)?;
                Some(&by.tenant)
            }
        };
        let users = self.auth.store().list_users().await?;
        Ok(users
            .into_iter()
            .filter(|u| tenant.is_none_or(|t| &u.tenant == t))
            .collect())
    }

    /// A user: oneself, or one the caller manages.
    pub async fn get_user(&self, by: &Identity, name: &str) -> Result<User, AccountError> {
        let user = self
            .auth
            .store()
            .get_user(name.to_owned())
            .await?
            .ok_or_else(|| AccountError::no_user(name))?;
        if user.name != by.user || user.tenant != by.tenant {
            self.may_manage(by, &user.tenant)
                .map_err(|e| hide_other_tenant(e, name))?;
        }
        Ok(user)
    }

    /// A user the caller may change: managed by it, not itself, and an
    /// admin only by an admin.
    async fn managed_user(&self, by: &Identity, name: &str) -> Result<User, AccountError> {
        let user = self.get_user(by, name).await?;
        if user.name == by.user && user.tenant == by.tenant {
            return Err(AccountError::Forbidden(
                "you cannot change your own role, disable or delete yourself: ask another admin"
                    .to_owned(),
            ));
        }
        self.may_manage(by, &user.tenant)?;
        may_grant(by, user.role)?;
        Ok(user)
    }

    /// Changes a user's role, disables/enables it (either revokes its
    /// tokens), or sets its own rate limits (0: back to the server's).
    pub async fn update_user(
        &self,
        by: &Identity,
        name: &str,
        change: UpdateUserRequest,
    ) -> Result<User, AccountError> {
        if change == UpdateUserRequest::default() {
            return self.get_user(by, name).await;
        }
        let mut user = self.managed_user(by, name).await?;
        let mut narrowed = false;
        if let Some(role) = change.role {
            may_grant(by, role)?;
            if role != user.role {
                user.role = role;
                narrowed = true;
                self.audit
                    .record_admin(by, &format!("user:role:{role}"), &user.name);
            }
        }
        if let Some(disabled) = change.disabled
            && disabled != user.disabled
        {
            user.disabled = disabled;
            narrowed = true;
            let action = if disabled {
                "user:disable"
            } else {
                "user:enable"
            };
            self.audit.record_admin(by, action, &user.name);
        }
        if let Some(rps) = change.rate_limit_rps {
            user.rate_limit_rps = (rps > 0).then_some(rps);
            self.audit
                .record_admin(by, &format!("user:rate_limit_rps:{rps}"), &user.name);
        }
        if let Some(tpm) = change.llm_tokens_per_minute {
            user.llm_tokens_per_minute = (tpm > 0).then_some(tpm);
            self.audit
                .record_admin(by, &format!("user:llm_tokens_per_minute:{tpm}"), &user.name);
        }
        self.auth.store().put_user(user.clone()).await?;
        self.limits.set_user(&user.name, limits_of(&user));
        if narrowed {
            // Tokens carry the scopes of the role they were issued under.
            self.revoke_where(|t| t.user == user.name).await?;
        }
        Ok(user)
    }

    /// Loads every user's own rate limits into the limiter (at start, and
    /// periodically on a shared store, where another orchestrator may set them).
    pub async fn load_limits(&self) -> Result<(), StoreError> {
        let users = self.auth.store().list_users().await?;
        self.limits.set_all(
            users
                .iter()
                .map(|u| (u.name.clone(), limits_of(u)))
                .filter(|(_, l)| *l != UserLimits::default())
                .collect(),
        );
        Ok(())
    }

    /// Sets a password: one's own (proving the current one), or as the
    /// user's admin. Returns the generated one when none was given. Every
    /// token of the user is revoked except the one making the change.
    pub async fn set_password(
        &self,
        by: &Principal,
        name: &str,
        password: Option<String>,
        current: Option<&str>,
    ) -> Result<Option<String>, AccountError> {
        let own = name == by.user;
        let mut user = if own {
            let current = current.ok_or_else(|| {
                AccountError::Forbidden(
                    "changing your own password needs 'current_password' (the one you have now)"
                        .to_owned(),
                )
            })?;
            self.auth.verify(name, current).await?
        } else {
            self.managed_user(by, name).await?
        };
        let (password, generated) = new_password(password)?;
        user.password_hash = hash_password(password).await?;
        self.auth.store().put_user(user.clone()).await?;
        let keep = by.token_hash.clone();
        self.revoke_where(|t| t.user == user.name && t.token_hash != keep)
            .await?;
        self.audit.record_admin(by, "user:password", &user.name);
        Ok(generated)
    }

    /// Deletes a user and every token of theirs.
    pub async fn delete_user(&self, by: &Identity, name: &str) -> Result<(), AccountError> {
        let user = self.managed_user(by, name).await?;
        if !self.auth.store().delete_user(user.name.clone()).await? {
            return Err(AccountError::no_user(name));
        }
        self.limits.set_user(&user.name, UserLimits::default());
        self.auth.forget(|t| t.user == user.name);
        self.audit.record_admin(by, "user:delete", &user.name);
        Ok(())
    }

    // ------------------------------------------------------------ tokens

    /// Creates a token with at most the caller's scopes. An agent's token
    /// (admins and tenant-admins) is of `agent_tenant`, the tenant that
    /// owns the agent.
    pub async fn create_token(
        &self,
        by: &Principal,
        req: CreateTokenRequest,
        agent_tenant: Option<TenantId>,
    ) -> Result<(String, ApiToken), AccountError> {
        if by.kind == TokenKind::Agent {
            return Err(AccountError::Forbidden(
                "an agent token cannot create tokens: renew it with POST /v1/agent/token"
                    .to_owned(),
            ));
        }
        let (scopes, kind) = match &req.agent {
            Some(_) => {
                // Its agent is one the caller sees: an admin's, or its
                // own tenant's for a tenant-admin.
                by.require(Scope::TenantAdmin)?;
                (Vec::new(), TokenKind::Agent)
            }
            None => {
                let scopes = req.scopes.unwrap_or_else(|| by.scopes.clone());
                if let Some(missing) = scopes.iter().find(|s| !s.granted_by(&by.scopes)) {
                    return Err(AccountError::Forbidden(format!(
                        "cannot grant '{missing}': your token does not hold it"
                    )));
                }
                if scopes.is_empty() {
                    return Err(AccountError::Invalid(
                        "a token needs at least one scope".to_owned(),
                    ));
                }
                (scopes, TokenKind::Personal)
            }
        };
        let ttl = req.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECONDS);
        if ttl == 0 || ttl > MAX_TOKEN_TTL_SECONDS {
            return Err(AccountError::Invalid(format!(
                "'ttl_seconds' must be between 1 and {MAX_TOKEN_TTL_SECONDS}"
            )));
        }
        if let Some(name) = &req.name {
            validate_token_name(name)?;
        }
        // Never past the token creating it (which a logout also revokes it with).
        let requested = self.auth.now().plus(std::time::Duration::from_secs(ttl));
        let parent = self.auth.token_expiry(&by.token_hash).await?;
        let expires_at = match parent {
            Some(parent) if parent < requested => parent,
            _ => requested,
        };
        let name = req
            .name
            .or_else(|| req.agent.as_ref().map(|a| format!("agent-{a}")));
        let (secret, token) = self
            .auth
            .issue(NewToken {
                user: by.user.clone(),
                tenant: agent_tenant.unwrap_or_else(|| by.tenant.clone()),
                scopes,
                name,
                expires_at: Some(expires_at),
                kind,
                agent: req.agent,
                parent: Some(fabric_core::auth::token_id(&by.token_hash).to_owned()),
            })
            .await?;
        self.audit
            .record_admin(by, "token:create", &token_label(&token));
        Ok((secret, token))
    }

    /// The stored tokens of the caller, or of `user` (whom the caller manages).
    pub async fn list_tokens(
        &self,
        by: &Identity,
        user: Option<&str>,
    ) -> Result<Vec<ApiToken>, AccountError> {
        let owner = match user {
            Some(name) if name != by.user => self.get_user(by, name).await?.name,
            _ => by.user.clone(),
        };
        let tokens = self.auth.store().list_tokens().await?;
        Ok(tokens.into_iter().filter(|t| t.user == owner).collect())
    }

    /// Revokes one token of the caller (or of `user`), named by its id or its name.
    pub async fn revoke_token(
        &self,
        by: &Identity,
        id_or_name: &str,
        user: Option<&str>,
    ) -> Result<TokenView, AccountError> {
        let tokens = self.list_tokens(by, user).await?;
        let by_id: Vec<&ApiToken> = tokens.iter().filter(|t| t.id() == id_or_name).collect();
        let matches = if by_id.is_empty() {
            tokens
                .iter()
                .filter(|t| t.name.as_deref() == Some(id_or_name))
                .collect()
        } else {
            by_id
        };
        let token = match matches.as_slice() {
            [one] => *one,
            [] => {
                return Err(AccountError::NotFound {
                    kind: "token",
                    name: id_or_name.to_owned(),
                });
            }
            several => {
                let ids: Vec<&str> = several.iter().map(|t| t.id()).collect();
                return Err(AccountError::Conflict(format!(
                    "{} tokens are named {id_or_name:?}: revoke one by its id ({})",
                    several.len(),
                    ids.join(", ")
                )));
            }
        };
        self.auth.revoke(&token.token_hash).await?;
        self.audit
            .record_admin(by, "token:revoke", &token_label(token));
        Ok(TokenView::from(token))
    }

    /// Revokes every stored token `pick` selects (each also leaves the cache).
    async fn revoke_where(&self, pick: impl Fn(&ApiToken) -> bool) -> Result<(), AccountError> {
        for token in self.auth.store().list_tokens().await? {
            if pick(&token) {
                self.auth.revoke(&token.token_hash).await?;
            }
        }
        Ok(())
    }

    /// `Ok` if `by` may manage the users of `tenant`.
    fn may_manage(&self, by: &Identity, tenant: &TenantId) -> Result<(), AccountError> {
        if Scope::Admin.granted_by(&by.scopes) {
            return Ok(());
        }
        by.require(Scope::TenantAdmin)?;
        if &by.tenant == tenant {
            Ok(())
        } else {
            Err(AccountError::no_tenant(tenant))
        }
    }
}

fn limits_of(user: &User) -> UserLimits {
    UserLimits {
        requests_per_second: user.rate_limit_rps,
        llm_tokens_per_minute: user.llm_tokens_per_minute,
    }
}

/// Only an admin may make (or touch) an admin.
fn may_grant(by: &Identity, role: Role) -> Result<(), AccountError> {
    if role == Role::Admin && !Scope::Admin.granted_by(&by.scopes) {
        return Err(AccountError::Forbidden(
            "only an admin can create, change or delete an admin".to_owned(),
        ));
    }
    Ok(())
}

/// A user of another tenant is "not found", never "forbidden".
fn hide_other_tenant(e: AccountError, name: &str) -> AccountError {
    match e {
        AccountError::NotFound { .. } => AccountError::no_user(name),
        other => other,
    }
}

/// The password to set, and the same again if it was generated (to show once).
fn new_password(given: Option<String>) -> Result<(String, Option<String>), AccountError> {
    match given {
        Some(p) if p.chars().count() < MIN_PASSWORD_CHARS => Err(AccountError::Invalid(format!(
            "a password needs at least {MIN_PASSWORD_CHARS} characters; leave it out to have one generated"
        ))),
        Some(p) => Ok((p, None)),
        None => {
            let p = generate_password();
            Ok((p.clone(), Some(p)))
        }
    }
}

fn validate_token_name(name: &str) -> Result<(), AccountError> {
    fabric_core::ids::validate_token_name(name).map_err(|e| AccountError::Invalid(e.to_string()))
}

/// How a token is named in the audit trail: never by its secret or hash.
fn token_label(token: &ApiToken) -> String {
    match &token.name {
        Some(name) => format!("{}/{} ({})", token.user, name, token.id()),
        None => format!("{}/{}", token.user, token.id()),
    }
}
