//! Shared state handed to every handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

use parking_lot::RwLock;

use crate::services::accounts::AccountService;
use crate::services::agents::AgentManager;
use crate::services::auth::AuthService;
use crate::services::llm::Llm;
use crate::services::policy::PolicyService;
use crate::services::tasks::TaskService;

#[derive(Clone)]
pub struct AppState {
    pub tasks: Arc<TaskService>,
    pub auth: Arc<AuthService>,
    /// Tenants, users and tokens, managed by their admins.
    pub accounts: Arc<AccountService>,
    /// Requests per second and LLM tokens per minute, per user.
    pub limits: Arc<crate::services::limits::RateLimits>,
    pub agents: AgentManager,
    /// The inference gateway and its usage ledger.
    pub llm: Llm,
    /// Budgets: limits, live usage, reservations, alerts.
    pub budgets: Arc<crate::services::budgets::BudgetService>,
    /// Policies, decisions, approvals and the audit trail.
    pub policy: Arc<PolicyService>,
    /// Turns true when the server starts shutting down (ends long polls).
    pub shutdown: CancellationToken,
    /// What `/readyz` says, and whether `/v1` requests are served.
    pub readiness: Arc<Readiness>,
    /// Metrics, tracer and alert hub.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Open task streams, per task and per token (`GET /v1/stream/{id}`).
    pub streams: Arc<crate::api::stream::StreamSlots>,
    /// MCP servers registered with the fabric, and agents' tool calls.
    pub mcp: Arc<crate::services::mcp::McpService>,
    pub nodes: Arc<crate::services::nodes::NodeService>,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }
}

/// Where the server is in its life: what `/readyz` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Opening the store, taking the leadership, reloading unfinished tasks.
    Starting,
    /// Another orchestrator leads the Redis store prefix; this one waits to
    /// take over.
    Standby { prefix: String, leader: String },
    /// Serving (the leader, or the only server of a SQLite store).
    Active,
    /// Lost the leadership of the store prefix: it stops serving and exits.
    SteppingDown { reason: String },
}

/// Readiness (`/readyz`) and the gate of the `/v1` API.
///
/// Two flags, because in between the server must already answer its own
/// built-in agents (they start after the unfinished tasks are reloaded and
/// talk to the API) while `/readyz` still says 503.
#[derive(Debug)]
pub struct Readiness {
    /// `/v1` requests are served: the leadership is held (Redis) and the
    /// unfinished tasks are reloaded, so a request can neither write to a
    /// store another orchestrator leads nor race the reload.
    accepting: AtomicBool,
    /// `/readyz` answers 200: everything has started.
    ready: AtomicBool,
    role: RwLock<Role>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            accepting: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            role: RwLock::new(Role::Starting),
        }
    }
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    pub fn role(&self) -> Role {
        self.role.read().clone()
    }

    pub fn set_role(&self, role: Role) {
        *self.role.write() = role;
    }

    /// Unfinished tasks are reloaded: serve `/v1` requests.
    pub fn accept(&self) {
        self.accepting.store(true, Ordering::Release);
    }

    /// Everything started: `/readyz` answers 200.
    pub fn set_ready(&self) {
        self.set_role(Role::Active);
        self.ready.store(true, Ordering::Release);
    }

    /// The leadership is gone: refuse everything from now on.
    pub fn step_down(&self, reason: String) {
        self.ready.store(false, Ordering::Release);
        self.accepting.store(false, Ordering::Release);
        self.set_role(Role::SteppingDown { reason });
    }

    /// What a refused `/v1` request is told.
    pub fn refusal(&self) -> String {
        match self.role() {
            Role::Starting | Role::Active => {
                "the server is starting (reloading unfinished tasks); retry shortly".to_owned()
            }
            Role::Standby { prefix, leader } => format!(
                "this orchestrator is a standby for store prefix {prefix:?} (orchestrator {leader} is active): send requests to the active one, or retry here after a takeover"
            ),
            Role::SteppingDown { reason } => format!(
                "this orchestrator stopped serving ({reason}); send requests to the active one"
            ),
        }
    }
}
