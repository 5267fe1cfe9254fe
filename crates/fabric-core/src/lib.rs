//! Domain types, HTTP API types and ports shared by every reactor-fabric crate.
//!
//! This crate does no IO and pulls in no async runtime: it is the vocabulary
//! the server, the CLI, the engine and the stores agree on.
//!
//! # Layout
//!
//! - [`agent`]: agent configuration (REQUIREMENTS §5), state, health, sessions, egress rules.
//! - [`ids`]: newtype identifiers (tasks, agents, tenants) and validation.
//! - [`time`]: [`Timestamp`] (wall-clock milliseconds, RFC 3339 on the wire) and the [`Clock`] port.
//! - [`task`]: the task model: [`Task`], [`Priority`], [`TaskStatus`] and its legal transitions.
//! - [`auth`]: users, API tokens and [`Scope`]s.
//! - [`budget`]: budget entities, limits, the [`BudgetStore`] port, usage reports (REQUIREMENTS §8).
//! - [`api`]: request and response bodies of the HTTP API (`/v1/...`).
//! - [`store`]: the durable-store ports ([`TaskStore`], [`AuthStore`]) every backend implements.
//! - [`policy`]: policies, approvals, audit records and the [`PolicyStore`] port (REQUIREMENTS §7).
//! - [`mcp`]: MCP servers registered with the fabric, tool grants, the [`McpStore`](mcp::McpStore) port.
//! - [`node`]: worker nodes, join tokens, node config, the [`NodeStore`](node::NodeStore) port.
//! - [`usage`]: the LLM usage ledger ([`UsageRecord`], [`UsageStore`]) the gateway meters into.

pub mod agent;
pub mod api;
pub mod auth;
pub mod budget;
pub mod ids;
pub mod mcp;
pub mod node;
pub mod policy;
pub mod store;
pub mod task;
pub mod time;
pub mod usage;

pub use auth::{ApiToken, Identity, MissingScope, Role, Scope, Tenant, TokenKind, User};
pub use budget::{BudgetEntity, BudgetRecord, BudgetSpec, BudgetStore, ResetPolicy};
pub use ids::{AgentId, IdError, TaskId, TenantId, validate_user_name};
pub use policy::{
    Approval, ApprovalQuery, ApprovalStatus, AuditQuery, AuditRecord, Effect, Policy, PolicyRule,
    PolicyScope, PolicyStore,
};
pub use store::{
    AgentStore, AuthStore, CreateOutcome, StoreError, TaskQuery, TaskStore, TaskWrite, WriteOutcome,
};
pub use task::{
    EventKind, IllegalTransition, Priority, Task, TaskEvent, TaskFile, TaskInput, TaskResult,
    TaskStatus, reason,
};
pub use time::{Clock, SystemClock, Timestamp};
pub use usage::{UsageOutcome, UsageQuery, UsageRecord, UsageStore, UsageTotals};

/// The version of every reactor-fabric crate and binary.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
