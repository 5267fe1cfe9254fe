//! [`AgentError`]: everything that can go wrong talking to the fabric.

use reqwest::StatusCode;

/// Why an agent-protocol call failed.
///
/// [`AgentError::is_retryable`] tells a transient failure (the fabric is
/// restarting, the network dropped) from one that retrying will not fix.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A required environment variable is missing (see [`AgentClient::from_env`](crate::AgentClient::from_env)).
    #[error(
        "environment variable {name} is not set: the fabric sets it when it starts an agent; \
         set it yourself to run an agent by hand (FABRIC_URL, FABRIC_TOKEN, FABRIC_AGENT_ID)"
    )]
    MissingEnv { name: &'static str },

    /// The client was given something unusable (a bad URL, agent id or token).
    #[error("invalid agent configuration: {0}")]
    Config(String),

    /// 409 `stale_lease`: the task was canceled, timed out or leased to someone
    /// else. Stop working on it and do not complete it.
    #[error("stale lease: {message}; stop working on this task and do not complete it")]
    StaleLease { message: String },

    /// 401 or 403: the token is expired, revoked or not allowed to do this.
    #[error(
        "not authorized ({status} {code}): {message}; check FABRIC_TOKEN, or renew it before it expires"
    )]
    Unauthorized {
        status: u16,
        code: String,
        message: String,
    },

    /// Any other error answer, from the fabric's `{"error": {code, message, request_id}}` body.
    #[error("the fabric answered {status} {code}: {message}")]
    Http {
        status: u16,
        code: String,
        message: String,
        /// `X-Request-Id` of the failed request, for the fabric's logs.
        request_id: Option<String>,
    },

    /// The request did not get an answer: connection refused or reset, timeout.
    /// Retry with backoff.
    #[error("cannot reach the fabric at {url}: {source}; is it running and is FABRIC_URL right?")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    /// The fabric answered with a body this SDK does not understand
    /// (a version mismatch between the SDK and the fabric).
    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },
}

impl AgentError {
    /// Whether the same request may succeed later: transport failures, 5xx,
    /// 429 (too many requests) and 408 (request timeout).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Http { status, .. } => {
                *status >= 500
                    || *status == StatusCode::TOO_MANY_REQUESTS.as_u16()
                    || *status == StatusCode::REQUEST_TIMEOUT.as_u16()
            }
            _ => false,
        }
    }

    /// Whether this is 409 `stale_lease`.
    pub fn is_stale_lease(&self) -> bool {
        matches!(self, Self::StaleLease { .. })
    }

    /// Whether a task call (heartbeat, events, complete) means the task is no
    /// longer this agent's to work on: 409 `stale_lease`, or 404 (the fabric
    /// no longer knows the task for this agent at all). Either way: stop, and
    /// do not complete it.
    pub fn is_lease_lost(&self) -> bool {
        matches!(
            self,
            Self::StaleLease { .. } | Self::Http { status: 404, .. }
        )
    }

    /// The fabric's error code (`stale_lease`, `agent_draining`, ...), when it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::StaleLease { .. } => Some(codes::STALE_LEASE),
            Self::Unauthorized { code, .. } | Self::Http { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Error codes of the agent protocol.
pub mod codes {
    /// 409 on heartbeat, events or complete: the lease is no longer current.
    pub const STALE_LEASE: &str = "stale_lease";
    /// 409 on lease: the agent is being terminated; finish running work and exit 0.
    pub const AGENT_DRAINING: &str = "agent_draining";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> AgentError {
        AgentError::Http {
            status,
            code: "x".into(),
            message: "m".into(),
            request_id: None,
        }
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(http(503).is_retryable());
        assert!(http(429).is_retryable());
        assert!(!http(400).is_retryable());
        assert!(!http(409).is_retryable());
        assert!(
            !AgentError::StaleLease {
                message: "m".into()
            }
            .is_retryable()
        );
        assert!(
            !AgentError::Unauthorized {
                status: 401,
                code: "unauthorized".into(),
                message: "m".into()
            }
            .is_retryable()
        );
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = AgentError::MissingEnv { name: "FABRIC_URL" };
        assert!(
            e.to_string()
                .starts_with("environment variable FABRIC_URL is not set")
        );
        let e = AgentError::StaleLease {
            message: "lease epoch 1 is not current".into(),
        };
        assert!(e.to_string().contains("do not complete it"));
        assert!(e.is_lease_lost());
        assert!(http(404).is_lease_lost());
        assert!(!http(409).is_lease_lost());
        assert_eq!(e.code(), Some("stale_lease"));
    }
}
