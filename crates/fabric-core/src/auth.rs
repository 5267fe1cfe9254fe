//! Users, API tokens and the scopes a token carries (REQUIREMENTS §10).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, TenantId};
use crate::time::Timestamp;

/// The user name every agent runs as, in the tenant that owns it: what its
/// budgets (`user:fabric`), usage and audit records name. Reserved: no
/// person may be created with it.
pub const AGENTS_USER: &str = "fabric";

/// Who is calling, once a token has proven it: what every service of the
/// server is told of its caller (the HTTP layer builds it from the bearer
/// token; nothing else in it is HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub tenant: TenantId,
    pub scopes: Vec<Scope>,
    /// Set when the token is an agent's: it may act only as this agent.
    pub agent: Option<AgentId>,
}

impl Identity {
    /// `Err` unless the caller holds `scope` (or `admin`).
    pub fn require(&self, scope: Scope) -> Result<(), MissingScope> {
        if scope.granted_by(&self.scopes) {
            Ok(())
        } else {
            Err(MissingScope { scope })
        }
    }
}

/// A caller lacks the scope an action needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this token lacks the '{scope}' scope; log in as a user that has it or create a token with it"
)]
pub struct MissingScope {
    pub scope: Scope,
}

/// What a bearer token may do. `admin` implies every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Scope {
    #[serde(rename = "read:tasks")]
    ReadTasks,
    #[serde(rename = "write:tasks")]
    WriteTasks,
    #[serde(rename = "llm:invoke")]
    LlmInvoke,
    #[serde(rename = "context:read")]
    ContextRead,
    #[serde(rename = "context:write")]
    ContextWrite,
    #[serde(rename = "approve")]
    Approve,
    /// Manage the users, tokens, policies and budgets of one's own tenant.
    #[serde(rename = "tenant:admin")]
    TenantAdmin,
    /// Everything, in every tenant.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Scope::ReadTasks,
        Scope::WriteTasks,
        Scope::LlmInvoke,
        Scope::ContextRead,
        Scope::ContextWrite,
        Scope::Approve,
        Scope::TenantAdmin,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ReadTasks => "read:tasks",
            Scope::WriteTasks => "write:tasks",
            Scope::LlmInvoke => "llm:invoke",
            Scope::ContextRead => "context:read",
            Scope::ContextWrite => "context:write",
            Scope::Approve => "approve",
            Scope::TenantAdmin => "tenant:admin",
            Scope::Admin => "admin",
        }
    }

    /// Whether a token holding `held` may do what needs `self`.
    pub fn granted_by(self, held: &[Scope]) -> bool {
        held.iter().any(|h| *h == self || *h == Scope::Admin)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| {
            format!(
                "invalid scope {s:?}: use one of read:tasks, write:tasks, llm:invoke, context:read, context:write, approve, tenant:admin, admin"
            )
        })
    }
}

/// What a user may do, as a bundle of scopes (REQUIREMENTS §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
// Named apart from the chat message role in the OpenAPI document.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = UserRole))]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, across tenants.
    Admin,
    /// Users, tokens, policies and budgets of its tenant, and all an operator does.
    TenantAdmin,
    /// Tasks, model calls and approvals.
    Operator,
    /// Read-only.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::TenantAdmin, Role::Operator, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::TenantAdmin => "tenant-admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    /// The scopes a user with this role holds (and so the widest token it can create).
    pub fn scopes(self) -> Vec<Scope> {
        const OPERATOR: [Scope; 6] = [
            Scope::ReadTasks,
            Scope::WriteTasks,
            Scope::LlmInvoke,
            Scope::ContextRead,
            Scope::ContextWrite,
            Scope::Approve,
        ];
        match self {
            Role::Admin => vec![Scope::Admin],
            Role::TenantAdmin => OPERATOR.into_iter().chain([Scope::TenantAdmin]).collect(),
            Role::Operator => OPERATOR.to_vec(),
            Role::Viewer => vec![Scope::ReadTasks, Scope::ContextRead],
        }
    }

    /// Users stored before roles existed: only the bootstrap admin could
    /// exist then, so a record without a role is an admin's.
    fn before_roles() -> Role {
        Role::Admin
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("invalid role {s:?}: use one of admin, tenant-admin, operator, viewer")
            })
    }
}

/// A tenant: owns users and everything they create (REQUIREMENTS §12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tenant {
    pub name: TenantId,
    pub created_at: Timestamp,
    /// A disabled tenant's users cannot log in and their tokens are revoked.
    #[serde(default)]
    pub disabled: bool,
}

/// A person (or service) that can log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub tenant: TenantId,
    /// Argon2id PHC string; never the password itself.
    pub password_hash: String,
    #[serde(default = "Role::before_roles")]
    pub role: Role,
    /// A disabled user cannot log in and holds no tokens.
    #[serde(default)]
    pub disabled: bool,
    pub created_at: Timestamp,
    /// The user's own API request rate (else the server's `--rate-limit-rps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_rps: Option<u32>,
    /// The user's own LLM token rate (else the server's `--llm-tokens-per-minute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_tokens_per_minute: Option<u64>,
}

impl User {
    pub fn scopes(&self) -> Vec<Scope> {
        self.role.scopes()
    }
}

/// Who a token was issued to, which decides its prefix and where it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Created with `token create` (a personal access token, `rf_pat_`).
    #[default]
    Personal,
    /// Issued by `auth login` (`rf_pat_` too: it is a person's).
    Session,
    /// An agent's (`rf_agent_`): only the agent protocol accepts it.
    Agent,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Personal => "personal",
            TokenKind::Session => "session",
            TokenKind::Agent => "agent",
        }
    }

    /// What every token of this kind starts with, so secret scanners can find them.
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Personal | TokenKind::Session => "rf_pat_",
            TokenKind::Agent => "rf_agent_",
        }
    }
}

/// A bearer token as stored: only its SHA-256, so a leaked database leaks no tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Lowercase hex SHA-256 of the token string.
    pub token_hash: String,
    pub user: String,
    pub tenant: TenantId,
    pub scopes: Vec<Scope>,
    pub name: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    /// Set for agent tokens: the one agent it may act as (`/v1/agent/...`).
    /// Agent tokens carry no user scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<crate::ids::AgentId>,
    /// Tokens stored before kinds existed were personal (or, if named
    /// `login`, sessions; they expire within 30 days either way).
    #[serde(default)]
    pub kind: TokenKind,
    /// When the token last authenticated a request (recorded at most once a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Timestamp>,
    /// The id ([`ApiToken::id`]) of the token that created this one: it
    /// expires no later than that one, and revoking that one (a logout)
    /// revokes this one too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// A token's public id from its hash: the first 12 hex digits (see
/// [`ApiToken::id`]); what [`ApiToken::parent`] holds.
pub fn token_id(token_hash: &str) -> &str {
    token_hash.get(..12).unwrap_or(token_hash)
}

impl ApiToken {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }

    /// The token's public id: the first 12 hex digits of its hash. Shown by
    /// `token list`, accepted by `token revoke`; it reveals nothing of the secret.
    pub fn id(&self) -> &str {
        token_id(&self.token_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_implies_every_scope() {
        assert!(Scope::WriteTasks.granted_by(&[Scope::Admin]));
        assert!(Scope::ReadTasks.granted_by(&[Scope::ReadTasks]));
        assert!(!Scope::WriteTasks.granted_by(&[Scope::ReadTasks]));
        assert_eq!(
            serde_json::to_string(&Scope::ReadTasks).unwrap(),
            "\"read:tasks\""
        );
        assert_eq!("write:tasks".parse::<Scope>(), Ok(Scope::WriteTasks));
    }

    #[test]
    fn roles_map_onto_scopes_and_parse() {
        assert_eq!(Role::Admin.scopes(), vec![Scope::Admin]);
        assert!(Role::TenantAdmin.scopes().contains(&Scope::TenantAdmin));
        assert!(!Role::Operator.scopes().contains(&Scope::TenantAdmin));
        assert!(Role::Operator.scopes().contains(&Scope::WriteTasks));
        assert!(!Role::Viewer.scopes().contains(&Scope::WriteTasks));
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(serde_json::to_value(role).unwrap(), role.as_str());
        }
        assert!("root".parse::<Role>().unwrap_err().contains("tenant-admin"));
    }

    #[test]
    fn records_from_before_roles_and_kinds_still_decode() {
        // The shape the previous release stored: the bootstrap admin.
        let user: User = serde_json::from_str(
            r#"{"name":"admin","tenant":"default","password_hash":"$argon2id$x","scopes":["admin"],"created_at":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(user.role, Role::Admin);
        assert!(!user.disabled);
        let token: ApiToken = serde_json::from_str(
            r#"{"token_hash":"0123456789abcdef","user":"admin","tenant":"default","scopes":["read:tasks"],"name":"ci","created_at":"2026-01-01T00:00:00Z","expires_at":null}"#,
        )
        .unwrap();
        assert_eq!(token.kind, TokenKind::Personal);
        assert_eq!(token.id(), "0123456789ab");
        assert_eq!(token.last_used_at, None);
    }
}
