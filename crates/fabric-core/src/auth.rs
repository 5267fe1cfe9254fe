//! Users, API tokens and the scopes a token carries (REQUIREMENTS §10).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, TenantId};
use crate::time::Timestamp;

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
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::ReadTasks,
        Scope::WriteTasks,
        Scope::LlmInvoke,
        Scope::ContextRead,
        Scope::ContextWrite,
        Scope::Approve,
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
                "invalid scope {s:?}: use one of read:tasks, write:tasks, llm:invoke, context:read, context:write, approve, admin"
            )
        })
    }
}

/// A person (or service) that can log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub tenant: TenantId,
    /// Argon2id PHC string; never the password itself.
    pub password_hash: String,
    pub scopes: Vec<Scope>,
    pub created_at: Timestamp,
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
}

impl ApiToken {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
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
}
