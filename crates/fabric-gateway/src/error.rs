//! The error taxonomy (REQUIREMENTS §6): what one upstream attempt can fail with
//! ([`ProviderError`]) and what a gateway call answers ([`GatewayError`]),
//! each knowing its HTTP status, its stable code and whether a retry helps.

use std::time::Duration;

/// How an upstream attempt failed; decides retry, fallback and the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderErrorKind {
    /// Could not connect (refused, DNS, TLS): the provider is down or misconfigured.
    Connect,
    /// Connected, but the exchange broke (reset, truncated body).
    Network,
    /// No answer within the provider's timeout.
    Timeout,
    /// 429 from upstream.
    RateLimited,
    /// 5xx (or Anthropic's 529 overloaded) from upstream.
    Unavailable,
    /// 401/403 from upstream: the fabric's key for it is wrong, not the caller's.
    Auth,
    /// 404 for the model: this provider does not serve it.
    ModelNotFound,
    /// 400/422 from upstream: the request itself is bad; no other provider will like it.
    InvalidRequest,
    /// 413 from upstream.
    TooLarge,
    /// The provider cannot do this at all (e.g. Anthropic has no embeddings).
    Unsupported,
    /// The answer did not parse as the provider's wire format.
    Protocol,
}

impl ProviderErrorKind {
    /// Worth retrying on the same provider after a backoff.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ProviderErrorKind::RateLimited
                | ProviderErrorKind::Unavailable
                | ProviderErrorKind::Network
        )
    }

    /// Worth trying the next provider of the chain: everything but a bad request.
    pub fn falls_back(self) -> bool {
        !matches!(
            self,
            ProviderErrorKind::InvalidRequest | ProviderErrorKind::TooLarge
        )
    }

    /// Counts against the provider's circuit breaker: signs the provider is
    /// unhealthy, not that the request or the model was wrong.
    pub fn trips_breaker(self) -> bool {
        matches!(
            self,
            ProviderErrorKind::Connect
                | ProviderErrorKind::Network
                | ProviderErrorKind::Timeout
                | ProviderErrorKind::Unavailable
                | ProviderErrorKind::Protocol
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderErrorKind::Connect => "connect",
            ProviderErrorKind::Network => "network",
            ProviderErrorKind::Timeout => "timeout",
            ProviderErrorKind::RateLimited => "rate_limited",
            ProviderErrorKind::Unavailable => "unavailable",
            ProviderErrorKind::Auth => "auth",
            ProviderErrorKind::ModelNotFound => "model_not_found",
            ProviderErrorKind::InvalidRequest => "invalid_request",
            ProviderErrorKind::TooLarge => "too_large",
            ProviderErrorKind::Unsupported => "unsupported",
            ProviderErrorKind::Protocol => "protocol",
        }
    }
}

/// One failed upstream attempt. `message` has already been scrubbed of
/// credentials (see [`crate::secret::Redactor`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub kind: ProviderErrorKind,
    /// The upstream HTTP status, when there was one.
    pub status: Option<u16>,
    pub message: String,
    /// The upstream's id for the attempt (its request-id header), else the
    /// id the gateway sent it.
    pub correlation_id: Option<String>,
    /// `Retry-After` from upstream, in seconds.
    pub retry_after: Option<u64>,
}

impl ProviderError {
    pub fn new(kind: ProviderErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            status: None,
            message: message.into(),
            correlation_id: None,
            retry_after: None,
        }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub fn with_correlation(mut self, id: Option<String>) -> Self {
        if self.correlation_id.is_none() {
            self.correlation_id = id;
        }
        self
    }

    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(ProviderErrorKind::Protocol, message)
    }
}

/// What a gateway call fails with, as the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed or asks for something unsupported.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        /// Set when a provider refused it.
        provider: Option<String>,
    },
    #[error("request body is larger than {limit} bytes: send a smaller prompt or fewer inputs")]
    PayloadTooLarge { limit: usize },
    /// The fabric's policy refuses this call (`llm:<model>`).
    #[error("{0}")]
    PolicyDenied(String),
    /// The fabric's policy wants an approver for this call, which a call
    /// cannot wait for.
    #[error("{0}")]
    ApprovalRequired(String),
    /// No provider in the route serves the model.
    #[error(
        "model {model:?} is not served by {tried}: list models with GET /v1/models, or map it in the gateway config's [models] table"
    )]
    ModelNotFound { model: String, tried: String },
    /// Upstream rate limiting, on every provider that could answer.
    #[error("{provider} is rate limiting requests: {message}; retry later")]
    RateLimited {
        provider: String,
        message: String,
        correlation_id: Option<String>,
        retry_after: Option<u64>,
    },
    /// The caller's budget is spent (budgets; REQUIREMENTS §8).
    #[error("{0}")]
    QuotaExceeded(String),
    /// The caller used its own rate limit (LLM tokens per minute).
    #[error("{message}")]
    CallerRateLimited {
        message: String,
        /// Seconds until it may call again (`Retry-After`).
        retry_after: u64,
    },
    /// A hard budget limit refused the call (REQUIREMENTS §8): which entity, which
    /// limit, when it resets.
    #[error("{message}")]
    BudgetExceeded {
        message: String,
        /// `agent:coder`, `user:alice`, `tenant:default`.
        entity: String,
        /// `max_tokens_per_day`, `max_cost_per_day_usd`, ...
        limit: String,
        resets_at: fabric_core::Timestamp,
        /// Seconds until the reset (`Retry-After`).
        retry_after: u64,
    },
    /// The provider failed (5xx, unreachable, bad answer, wrong key).
    #[error("{provider} failed: {message}")]
    Upstream {
        provider: String,
        message: String,
        correlation_id: Option<String>,
    },
    /// The provider did not answer in time.
    #[error("{provider} did not answer within {}s; retry, or raise its timeout in the gateway config", after.as_secs_f64())]
    UpstreamTimeout {
        provider: String,
        after: Duration,
        correlation_id: Option<String>,
    },
    /// No provider could be tried (none configured, or every circuit open).
    #[error("{0}")]
    NoProvider(String),
}

impl GatewayError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            provider: None,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::InvalidRequest { .. } => 400,
            GatewayError::PolicyDenied(_) | GatewayError::ApprovalRequired(_) => 403,
            GatewayError::ModelNotFound { .. } => 404,
            GatewayError::PayloadTooLarge { .. } => 413,
            GatewayError::RateLimited { .. }
            | GatewayError::CallerRateLimited { .. }
            | GatewayError::QuotaExceeded(_)
            | GatewayError::BudgetExceeded { .. } => 429,
            GatewayError::Upstream { .. } => 502,
            GatewayError::NoProvider(_) => 503,
            GatewayError::UpstreamTimeout { .. } => 504,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidRequest { .. } => "invalid_request",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::PolicyDenied(_) => "policy_denied",
            GatewayError::ApprovalRequired(_) => "approval_required",
            GatewayError::ModelNotFound { .. } => "model_not_found",
            GatewayError::RateLimited { .. } | GatewayError::CallerRateLimited { .. } => {
                "rate_limited"
            }
            GatewayError::QuotaExceeded(_) => "quota_exceeded",
            GatewayError::BudgetExceeded { .. } => "budget_exceeded",
            GatewayError::Upstream { .. } => "upstream_error",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::NoProvider(_) => "no_provider_available",
        }
    }

    /// Whether the same request may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::RateLimited { .. }
                | GatewayError::Upstream { .. }
                | GatewayError::UpstreamTimeout { .. }
                | GatewayError::NoProvider(_)
        )
    }

    /// The provider involved, if any.
    pub fn provider(&self) -> Option<&str> {
        match self {
            GatewayError::InvalidRequest { provider, .. } => provider.as_deref(),
            GatewayError::RateLimited { provider, .. }
            | GatewayError::Upstream { provider, .. }
            | GatewayError::UpstreamTimeout { provider, .. } => Some(provider),
            _ => None,
        }
    }

    /// The failed upstream call's id, if any.
    pub fn correlation_id(&self) -> Option<&str> {
        match self {
            GatewayError::RateLimited { correlation_id, .. }
            | GatewayError::Upstream { correlation_id, .. }
            | GatewayError::UpstreamTimeout { correlation_id, .. } => correlation_id.as_deref(),
            _ => None,
        }
    }

    /// Seconds a client should wait before retrying, when known.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::RateLimited { retry_after, .. } => *retry_after,
            GatewayError::CallerRateLimited { retry_after, .. } => Some(*retry_after),
            GatewayError::BudgetExceeded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Turns a provider's failure into the caller's error.
    /// `timeout` is the attempt's limit, named when `e` is a timeout.
    pub fn from_provider(provider: &str, model: &str, e: ProviderError, timeout: Duration) -> Self {
        let provider_name = provider.to_owned();
        match e.kind {
            ProviderErrorKind::InvalidRequest | ProviderErrorKind::Unsupported => {
                GatewayError::InvalidRequest {
                    message: format!("{provider} refused the request: {}", e.message),
                    provider: Some(provider_name),
                }
            }
            ProviderErrorKind::TooLarge => GatewayError::InvalidRequest {
                message: format!("{provider} refused the request as too large: {}", e.message),
                provider: Some(provider_name),
            },
            ProviderErrorKind::ModelNotFound => GatewayError::ModelNotFound {
                model: model.to_owned(),
                tried: provider_name,
            },
            ProviderErrorKind::RateLimited => GatewayError::RateLimited {
                provider: provider_name,
                message: e.message,
                correlation_id: e.correlation_id,
                retry_after: e.retry_after,
            },
            ProviderErrorKind::Timeout => GatewayError::UpstreamTimeout {
                provider: provider_name,
                after: timeout,
                correlation_id: e.correlation_id,
            },
            ProviderErrorKind::Auth => GatewayError::Upstream {
                provider: provider_name,
                message: format!(
                    "it refused the fabric's credentials ({}); the operator must fix its API key",
                    e.message
                ),
                correlation_id: e.correlation_id,
            },
            ProviderErrorKind::Connect
            | ProviderErrorKind::Network
            | ProviderErrorKind::Unavailable
            | ProviderErrorKind::Protocol => GatewayError::Upstream {
                provider: provider_name,
                message: e.message,
                correlation_id: e.correlation_id,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_knows_status_code_and_retryability() {
        let upstream = GatewayError::Upstream {
            provider: "ollama".into(),
            message: "503 from upstream".into(),
            correlation_id: Some("c1".into()),
        };
        assert_eq!(
            (upstream.status(), upstream.code()),
            (502, "upstream_error")
        );
        assert!(upstream.is_retryable());
        assert_eq!(upstream.provider(), Some("ollama"));
        assert_eq!(upstream.correlation_id(), Some("c1"));
        let bad = GatewayError::invalid("messages must not be empty");
        assert_eq!((bad.status(), bad.is_retryable()), (400, false));
        assert_eq!(GatewayError::PolicyDenied("no".into()).status(), 403);
        assert_eq!(GatewayError::QuotaExceeded("spent".into()).status(), 429);
        assert_eq!(GatewayError::PayloadTooLarge { limit: 1 }.status(), 413);
        assert_eq!(GatewayError::NoProvider("none".into()).status(), 503);
    }

    #[test]
    fn kinds_decide_retry_fallback_and_breaker() {
        use ProviderErrorKind as K;
        assert!(K::Unavailable.is_retryable() && K::Unavailable.trips_breaker());
        assert!(!K::Connect.is_retryable() && K::Connect.falls_back());
        assert!(!K::InvalidRequest.falls_back() && !K::InvalidRequest.trips_breaker());
        assert!(K::ModelNotFound.falls_back() && !K::ModelNotFound.trips_breaker());
        assert!(K::RateLimited.is_retryable() && !K::RateLimited.trips_breaker());
    }
}
