//! The fabric's domain services, below the HTTP layer: what the API, the
//! agent protocol and the CLI drive. Nothing here knows axum, `AppState` or
//! `ApiError`; each service answers with its own error type, and
//! `crate::api` alone turns those into status codes and error codes.
//! Callers are named by [`fabric_core::Identity`], not by a request.

pub mod accounts;
pub mod agents;
pub mod alerts;
pub mod auth;
pub mod budgets;
pub mod limits;
pub mod llm;
pub mod mcp;
pub mod nodes;
pub mod policy;
pub mod tasks;
