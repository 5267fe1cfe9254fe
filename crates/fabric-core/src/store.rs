//! The durable-store ports. Backends (SQLite now, Redis next) live in `fabric-store`
//! and all pass `fabric_store::conformance`.
//!
//! Futures returned by the write methods are `'static` and the write is *submitted
//! when the method is called*, not when the future is first polled: a caller may
//! drop the future (fire-and-forget) and later writes still commit after it, in
//! call order. Awaiting a write's future waits for its durable commit.

use std::future::Future;

use crate::agent::{AgentRecord, AgentSession};
use crate::auth::{ApiToken, Tenant, User};
use crate::ids::{AgentId, TaskId, TenantId};
use crate::task::{Task, TaskEvent, TaskStatus};

/// A store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or is shutting down; retrying may help.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with an error (disk full, constraint, IO).
    #[error("store error: {0}")]
    Backend(String),
    /// Stored data could not be decoded; this is a bug or a damaged database.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Result of [`TaskStore::create_task`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The task was new and is now durable.
    Created(Task),
    /// A task with the same tenant and idempotency key already existed; here it is.
    Existing(Task),
}

/// A new version of a task to store, guarded against stale writers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskWrite {
    pub task: Task,
    /// Apply only if the stored task still has this `lease_epoch` (fencing).
    /// Every write is also refused when the stored task is already terminal.
    pub expected_epoch: Option<u64>,
}

/// Result of [`TaskStore::write_task`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Applied,
    /// The stored task is terminal, missing, or has another epoch; nothing changed.
    Rejected,
}

/// Filters for [`TaskStore::list_tasks`]; newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskQuery {
    pub tenant: Option<TenantId>,
    pub status: Option<TaskStatus>,
    pub agent_id: Option<AgentId>,
    pub priority: Option<crate::Priority>,
    /// Only tasks whose name, prompt or one of whose commands contains this,
    /// ASCII case ignored. No index serves it: the store reads the tasks the
    /// other filters leave until it has a page.
    pub text: Option<String>,
    /// Only tasks created before this one (the paging cursor).
    pub before: Option<TaskId>,
    pub limit: usize,
}

impl TaskQuery {
    /// Whether `task` passes the priority and text filters (the others are
    /// the stores' indexes): the one definition every store must match.
    pub fn matches_content(&self, task: &Task) -> bool {
        if self.priority.is_some_and(|p| p != task.priority) {
            return false;
        }
        let Some(text) = &self.text else {
            return true;
        };
        let needle = text.to_ascii_lowercase();
        let has = |s: &str| s.to_ascii_lowercase().contains(&needle);
        task.name.as_deref().is_some_and(has)
            || task.input.prompt.as_deref().is_some_and(has)
            || task.input.commands.iter().any(|c| has(c))
    }
}

impl Default for TaskQuery {
    fn default() -> Self {
        Self {
            tenant: None,
            status: None,
            agent_id: None,
            priority: None,
            text: None,
            before: None,
            limit: 100,
        }
    }
}

/// Durable task records and their event history.
pub trait TaskStore: Send + Sync + 'static {
    /// Inserts a new task, or returns the existing one with the same
    /// `(tenant, idempotency_key)`. Resolves after the commit.
    fn create_task(
        &self,
        task: Task,
    ) -> impl Future<Output = Result<CreateOutcome, StoreError>> + Send + 'static;

    /// Replaces a stored task, subject to the guard in [`TaskWrite`].
    fn write_task(
        &self,
        write: TaskWrite,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send + 'static;

    fn get_task(
        &self,
        id: TaskId,
    ) -> impl Future<Output = Result<Option<Task>, StoreError>> + Send + 'static;

    fn list_tasks(
        &self,
        query: TaskQuery,
    ) -> impl Future<Output = Result<Vec<Task>, StoreError>> + Send + 'static;

    /// Every task not yet terminal, oldest first: what a restarted scheduler reloads.
    fn unfinished_tasks(
        &self,
    ) -> impl Future<Output = Result<Vec<Task>, StoreError>> + Send + 'static;

    /// Appends events (their `seq` is set by the caller and is unique).
    fn append_events(
        &self,
        events: Vec<TaskEvent>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    /// Events of one task with `seq > after_seq`, in `seq` order, at most `limit`.
    fn task_events(
        &self,
        id: TaskId,
        after_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<TaskEvent>, StoreError>> + Send + 'static;

    /// The highest event `seq` stored (0 when none), so a restart continues the sequence.
    fn last_event_seq(&self) -> impl Future<Output = Result<u64, StoreError>> + Send + 'static;

    /// How many tasks are in each status (statuses with none left out), of
    /// one tenant and one agent when given: the dashboard's overview.
    fn count_tasks(
        &self,
        tenant: Option<TenantId>,
        agent: Option<AgentId>,
    ) -> impl Future<Output = Result<std::collections::BTreeMap<TaskStatus, u64>, StoreError>>
    + Send
    + 'static;

    /// Deletes the finished (terminal) tasks among `ids`, with their events
    /// and idempotency keys, atomically per task; returns the ids deleted. A
    /// task that is not stored, or not finished, is left as it is.
    fn delete_tasks(
        &self,
        ids: Vec<TaskId>,
    ) -> impl Future<Output = Result<Vec<TaskId>, StoreError>> + Send + 'static;
}

/// Users and API tokens.
pub trait AuthStore: Send + Sync + 'static {
    /// Inserts a user; `false` if the name is taken (nothing changes then).
    fn create_user(
        &self,
        user: User,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static;

    fn get_user(
        &self,
        name: String,
    ) -> impl Future<Output = Result<Option<User>, StoreError>> + Send + 'static;

    fn count_users(&self) -> impl Future<Output = Result<u64, StoreError>> + Send + 'static;

    /// Replaces a stored user (a role, a password, disabling); inserts it if absent.
    fn put_user(&self, user: User)
    -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    /// Every user, ordered by name.
    fn list_users(&self) -> impl Future<Output = Result<Vec<User>, StoreError>> + Send + 'static;

    /// Deletes a user and every token issued to it, at once; `false` if there was none.
    fn delete_user(
        &self,
        name: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static;

    /// Inserts a tenant; `false` if the name is taken (nothing changes then).
    fn create_tenant(
        &self,
        tenant: Tenant,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static;

    /// Replaces a stored tenant; inserts it if absent.
    fn put_tenant(
        &self,
        tenant: Tenant,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    /// Every tenant, ordered by name.
    fn list_tenants(
        &self,
    ) -> impl Future<Output = Result<Vec<Tenant>, StoreError>> + Send + 'static;

    /// Deletes a tenant record; `false` if there was none.
    fn delete_tenant(
        &self,
        name: TenantId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static;

    fn put_token(
        &self,
        token: ApiToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    fn get_token(
        &self,
        token_hash: String,
    ) -> impl Future<Output = Result<Option<ApiToken>, StoreError>> + Send + 'static;

    /// Replaces a stored token only if it is still stored (`false` if not): a
    /// token revoked meanwhile stays revoked.
    fn update_token(
        &self,
        token: ApiToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static;

    /// Every stored token (agents' in-memory tokens are not stored).
    fn list_tokens(
        &self,
    ) -> impl Future<Output = Result<Vec<ApiToken>, StoreError>> + Send + 'static;

    /// Deletes a token; `false` if there was none.
    fn delete_token(
        &self,
        token_hash: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static;
}

/// Agents the fabric should run, and their session history (FR-LIFE-1, 5).
/// Agents outlive a restart: the server respawns every record whose
/// `desired` is [`DesiredState::Running`].
pub trait AgentStore: Send + Sync + 'static {
    /// Inserts or replaces the record with `record.config.id`.
    fn put_agent(
        &self,
        record: AgentRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    fn get_agent(
        &self,
        id: AgentId,
    ) -> impl Future<Output = Result<Option<AgentRecord>, StoreError>> + Send + 'static;

    /// Every record, ordered by id.
    fn list_agents(
        &self,
    ) -> impl Future<Output = Result<Vec<AgentRecord>, StoreError>> + Send + 'static;

    /// Deletes a record and its sessions; `false` if there was none.
    fn delete_agent(
        &self,
        id: AgentId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static;

    /// Inserts or replaces the session `(session.agent_id, session.session)`.
    fn put_session(
        &self,
        session: AgentSession,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    /// Sessions of an agent, newest (highest number) first, at most `limit`;
    /// only those numbered below `before` when set (the paging cursor).
    fn list_sessions(
        &self,
        id: AgentId,
        before: Option<u32>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AgentSession>, StoreError>> + Send + 'static;
}
