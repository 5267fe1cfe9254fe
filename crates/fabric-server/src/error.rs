//! `ApiError`: every failure the API reports, with its HTTP status and a
//! `{error:{code,message,request_id}}` body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fabric_core::StoreError;
use fabric_core::api::{ErrorBody, ErrorDetail};
use fabric_engine::SchedulerError;

use crate::request_id;
use crate::services::accounts::AccountError;
use crate::services::agents::AgentError;
use crate::services::auth::AuthError;
use crate::services::budgets::BudgetError;
use crate::services::limits::Throttled;
use crate::services::policy::{PolicyError, Refusal};
use crate::services::tasks::TaskError;
use fabric_engine::budget::Refusal as BudgetRefusal;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
    /// `budget_exceeded`: the entity, the limit and when it resets.
    pub budget: Option<Box<BudgetRefusalDetail>>,
    /// Seconds to wait before retrying (`Retry-After`), for a 429.
    pub retry_after: Option<u64>,
}

/// The extra fields of a `budget_exceeded` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRefusalDetail {
    pub entity: String,
    pub limit: String,
    pub resets_at: fabric_core::Timestamp,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            budget: None,
            retry_after: None,
        }
    }

    /// 429 `budget_exceeded` naming the entity, the limit and when it resets.
    pub fn budget_exceeded(message: impl Into<String>, detail: BudgetRefusalDetail) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "budget_exceeded",
            message: message.into(),
            budget: Some(Box::new(detail)),
            retry_after: None,
        }
    }

    /// 429 `rate_limited`: the caller's own request rate.
    pub fn rate_limited(throttled: &Throttled) -> Self {
        Self {
            retry_after: Some(throttled.retry_after_secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("{throttled}: slow down, or ask an admin for a higher limit"),
            )
        }
    }

    pub fn address_throttled(throttled: &crate::services::limits::AddressThrottled) -> Self {
        Self {
            retry_after: Some(throttled.retry_after_secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                throttled.to_string(),
            )
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Whether the client may retry the same request unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
    }
}

impl From<fabric_core::MissingScope> for ApiError {
    fn from(e: fabric_core::MissingScope) -> Self {
        Self::forbidden(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        if e.is_retryable() {
            Self::unavailable(format!("{e}; retry shortly"))
        } else {
            Self::internal(format!("{e}; see the server log"))
        }
    }
}

impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        use SchedulerError as E;
        match &e {
            E::UnknownAgent(_) => {
                Self::new(StatusCode::NOT_FOUND, "agent_not_found", e.to_string())
            }
            E::QueueFull { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", e.to_string())
            }
            E::UnknownDependency(_) => Self::bad_request(e.to_string()),
            E::DependencyNotReady(_) => Self::unavailable(e.to_string()),
            E::UnknownTask(id) => TaskError::NotFound(*id).into(),
            E::AlreadyFinished { .. } | E::StaleLease { .. } | E::Duplicate(_) => {
                Self::conflict(e.to_string())
            }
            E::InvalidCompletion(_) => Self::bad_request(e.to_string()),
        }
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        use AgentError as E;
        let message = e.to_string();
        match e {
            E::Invalid(_)
            | E::NoSandboxHelper
            | E::MissingPath(_)
            | E::ForbiddenPath(_)
            | E::ConfinementUnavailable(_) => Self::bad_request(message),
            E::AsFabricUser(_) => Self::forbidden(message),
            E::MissingScope(e) => e.into(),
            E::DockerUnavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "docker_unavailable",
                message,
            ),
            E::Reserved(_)
            | E::Exists { .. }
            | E::IdTaken(_)
            | E::SpawnInProgress(_)
            | E::BuiltIn(_)
            | E::NotStopped { .. } => Self::conflict(message),
            E::Draining { .. } => Self::new(StatusCode::CONFLICT, "agent_draining", message),
            E::SpawnFailed { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "spawn_failed", message)
            }
            E::ShuttingDown => Self::unavailable(message),
            E::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "agent_not_found", message),
            E::Store(e) => e.into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidCredentials | AuthError::InvalidToken | AuthError::TokenExpired => {
                Self::unauthorized(e.to_string())
            }
            AuthError::Disabled(_) => Self::forbidden(e.to_string()),
            AuthError::TooManyAttempts {
                retry_after_secs, ..
            } => Self {
                retry_after: Some(retry_after_secs),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string())
            },
            AuthError::PasswordWorkerDown | AuthError::Hash(_) => Self::internal(e.to_string()),
            AuthError::Store(e) => e.into(),
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        use AccountError as E;
        match e {
            E::NotFound { .. } => Self::not_found(e.to_string()),
            E::Conflict(_) => Self::conflict(e.to_string()),
            E::Forbidden(_) => Self::forbidden(e.to_string()),
            E::Invalid(_) => Self::bad_request(e.to_string()),
            E::MissingScope(e) => e.into(),
            E::Auth(e) => e.into(),
            E::Store(e) => e.into(),
        }
    }
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        use TaskError as E;
        match e {
            E::Invalid(_) | E::UnknownDependency(_) => Self::bad_request(e.to_string()),
            E::NotFound(_) => Self::not_found(e.to_string()),
            E::AlreadyFinished { .. } | E::NotFinished { .. } | E::ChangedConcurrently(_) => {
                Self::conflict(e.to_string())
            }
            E::Refused(r) => r.into(),
            E::Approval(e) => e.into(),
            E::OverBudget(r) => r.into(),
            E::Scheduler(e) => e.into(),
            E::Store(e) => e.into(),
            E::Invariant(_) => Self::internal(e.to_string()),
        }
    }
}

impl From<BudgetError> for ApiError {
    fn from(e: BudgetError) -> Self {
        match e {
            BudgetError::Invalid(_) => Self::bad_request(e.to_string()),
            BudgetError::NoBudget(_) => Self::not_found(e.to_string()),
            BudgetError::Exceeded(r) => r.into(),
            BudgetError::Store(e) => e.into(),
        }
    }
}

/// 429 `budget_exceeded`, naming the entity, the limit and when it resets.
impl From<BudgetRefusal> for ApiError {
    fn from(r: BudgetRefusal) -> Self {
        Self::budget_exceeded(
            r.to_string(),
            BudgetRefusalDetail {
                entity: r.entity.to_string(),
                limit: r.limit.as_str().to_owned(),
                resets_at: r.resets_at,
            },
        )
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        use PolicyError as E;
        match e {
            E::Invalid(_) => Self::bad_request(e.to_string()),
            E::PolicyNotFound(_) | E::ApprovalNotFound(_) => Self::not_found(e.to_string()),
            E::AlreadyDecided { .. } | E::DecidedMeanwhile(_) => Self::conflict(e.to_string()),
            E::NotAnApprover { .. } => Self::forbidden(e.to_string()),
            E::Refused(refusal) => refusal.into(),
            E::MissingScope(e) => e.into(),
            E::Store(e) => e.into(),
        }
    }
}

impl From<crate::services::mcp::McpError> for ApiError {
    fn from(e: crate::services::mcp::McpError) -> Self {
        use crate::services::mcp::McpError as E;
        match e {
            E::Invalid(_) => Self::bad_request(e.to_string()),
            E::NotFound(_) => Self::not_found(e.to_string()),
            E::MissingScope(e) => e.into(),
            E::NoSandboxHelper => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sandbox_unavailable",
                e.to_string(),
            ),
            // The server (not the fabric) failed: a gateway error.
            E::Upstream(_) | E::Start { .. } => {
                Self::new(StatusCode::BAD_GATEWAY, "mcp_server_failed", e.to_string())
            }
            E::Store(e) => e.into(),
        }
    }
}

impl From<crate::services::nodes::NodeError> for ApiError {
    fn from(e: crate::services::nodes::NodeError) -> Self {
        use crate::services::nodes::NodeError as E;
        match e {
            E::Invalid(_) => Self::bad_request(e.to_string()),
            E::JoinRefused(_) => Self::new(StatusCode::UNAUTHORIZED, "join_refused", e.to_string()),
            E::Unauthorized(_) => Self::unauthorized(e.to_string()),
            E::NotFound(_) | E::TokenNotFound(_) => Self::not_found(e.to_string()),
            E::NameTaken(_) => Self::new(StatusCode::CONFLICT, "node_exists", e.to_string()),
            E::MissingScope(e) => e.into(),
            E::Store(e) => e.into(),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let code = if r.needs_approval {
            "approval_required"
        } else {
            "policy_denied"
        };
        Self::new(StatusCode::FORBIDDEN, code, r.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                request_id: request_id::current(),
                provider: None,
                correlation_id: None,
                entity: self.budget.as_ref().map(|b| b.entity.clone()),
                limit: self.budget.as_ref().map(|b| b.limit.clone()),
                resets_at: self.budget.as_ref().map(|b| b.resets_at),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
