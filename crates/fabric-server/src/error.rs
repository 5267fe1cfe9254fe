//! `ApiError`: every failure the API reports, with its HTTP status and a
//! `{error:{code,message,request_id}}` body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fabric_core::StoreError;
use fabric_core::api::{ErrorBody, ErrorDetail};
use fabric_engine::SchedulerError;

use crate::request_id;

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
        }
    }

    /// 429 `budget_exceeded` naming the entity, the limit and when it resets.
    pub fn budget_exceeded(message: impl Into<String>, detail: BudgetRefusalDetail) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "budget_exceeded",
            message: message.into(),
            budget: Some(Box::new(detail)),
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

    pub fn task_not_found(id: impl std::fmt::Display) -> Self {
        Self::not_found(format!(
            "task {id} not found: check the id with 'reactor-fabric task list'"
        ))
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
            E::UnknownTask(id) => Self::task_not_found(id),
            E::AlreadyFinished { .. } | E::StaleLease { .. } | E::Duplicate(_) => {
                Self::conflict(e.to_string())
            }
            E::InvalidCompletion(_) => Self::bad_request(e.to_string()),
        }
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
        (self.status, axum::Json(body)).into_response()
    }
}
