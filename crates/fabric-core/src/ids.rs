//! Newtype identifiers, so a task id can never be passed where an agent id belongs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("invalid task id {0:?}: expected a UUID such as 0192f0c4-7a1e-7c3b-9d2a-1b2c3d4e5f60")]
    Task(String),
    #[error(
        "invalid {kind} {value:?}: use 1-64 characters from a-z, A-Z, 0-9, '-', '_' and '.', starting with a letter or digit"
    )]
    Name { kind: &'static str, value: String },
}

/// Identifies a task. UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, format = "uuid"))]
#[serde(transparent)]
pub struct TaskId(uuid::Uuid);

impl TaskId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }

    /// The smallest id of `at`'s millisecond: every task created earlier has
    /// a smaller id (UUIDv7 leads with the Unix time in milliseconds), so it
    /// is a "created before" bound in the stores' id order.
    pub fn first_at(at: crate::Timestamp) -> Self {
        let ms = u64::try_from(at.as_millis()).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        // Version 7 and the RFC 4122 variant, the rest zero.
        bytes[6] = 0x70;
        bytes[8] = 0x80;
        Self(uuid::Uuid::from_bytes(bytes))
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| IdError::Task(s.to_owned()))
    }
}

fn validate_name(kind: &'static str, value: &str) -> Result<(), IdError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(IdError::Name {
            kind,
            value: value.to_owned(),
        })
    }
}

/// User names follow the rule of every other name (agents, tenants, policies).
pub fn validate_user_name(name: &str) -> Result<(), IdError> {
    validate_name("user name", name)
}

/// Token names (`token create --name`) too.
pub fn validate_token_name(name: &str) -> Result<(), IdError> {
    validate_name("token name", name)
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        // The pattern is `validate_name`'s rule.
        #[cfg_attr(
            feature = "openapi",
            derive(utoipa::ToSchema),
            schema(value_type = String, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value` as an identifier.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate_name($kind, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

name_id!(
    /// Identifies an agent (`shell`, `noop`, or one a user spawned).
    AgentId,
    "agent id"
);
name_id!(
    /// Identifies a tenant: the unit of ownership and of scheduling fairness.
    TenantId,
    "tenant id"
);

impl AgentId {
    /// The built-in agent that runs a task's commands as child processes.
    pub fn shell() -> Self {
        Self("shell".to_owned())
    }

    /// The built-in agent that completes every task at once (benchmarks, tests).
    pub fn noop() -> Self {
        Self("noop".to_owned())
    }
}

impl TenantId {
    /// The tenant the first admin and its tasks belong to.
    pub fn default_tenant() -> Self {
        Self("default".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_at_bounds_the_ids_of_earlier_tasks() {
        let before = TaskId::new();
        std::thread::sleep(std::time::Duration::from_millis(3));
        let now = crate::Timestamp::from_millis(
            i64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis(),
            )
            .unwrap(),
        );
        let bound = TaskId::first_at(now);
        std::thread::sleep(std::time::Duration::from_millis(3));
        let after = TaskId::new();
        assert!(
            before < bound && bound < after,
            "{before} < {bound} < {after}"
        );
        assert!(before.to_string() < bound.to_string(), "in text order too");
        assert_eq!(bound.as_uuid().get_version_num(), 7);
    }

    #[test]
    fn names_are_validated() {
        assert!(AgentId::new("coder-1.v2_x").is_ok());
        assert!(AgentId::new("").is_err());
        assert!(AgentId::new("-lead").is_err());
        assert!(AgentId::new("a b").is_err());
        assert!(AgentId::new("x".repeat(65)).is_err());
        let err = serde_json::from_str::<AgentId>("\"no spaces\"").unwrap_err();
        assert!(err.to_string().contains("invalid agent id"), "{err}");
    }

    #[test]
    fn task_ids_round_trip_and_sort_by_creation() {
        let a = TaskId::new();
        let b = TaskId::new();
        assert!(a < b);
        assert_eq!(a.to_string().parse::<TaskId>().unwrap(), a);
        assert!("nope".parse::<TaskId>().is_err());
    }
}
