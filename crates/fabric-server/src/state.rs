//! Shared state handed to every handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::agents::AgentManager;
use crate::auth::AuthService;
use crate::llm::Llm;
use crate::service::TaskService;

#[derive(Clone)]
pub struct AppState {
    pub tasks: Arc<TaskService>,
    pub auth: Arc<AuthService>,
    pub agents: AgentManager,
    /// The inference gateway and its usage ledger.
    pub llm: Llm,
    /// Turns true when the server starts shutting down (ends long polls).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// False until the store is open and unfinished tasks are reloaded (`/readyz`).
    pub ready: Arc<AtomicBool>,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
