//! `TaskService`: the scheduler, the store and the event hub wired together.
//!
//! Ordering rule: every scheduler mutation and the store writes it implies are
//! *submitted* under the scheduler lock (store writes are submitted on call and
//! commit in call order), so the store sees decisions in the order the
//! scheduler made them. Waiting for commits happens after the lock is released.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use fabric_core::api::CreateTaskRequest;
use fabric_core::{
    AgentId, Clock, CreateOutcome, EventKind, StoreError, Task, TaskEvent, TaskId, TaskInput,
    TaskQuery, TaskStatus, TaskStore, TaskWrite, TenantId, WriteOutcome,
};
use fabric_engine::{
    AgentQueueConfig, Changes, Completion, Lease, Scheduler, SchedulerConfig, SchedulerError,
};
use parking_lot::{Mutex, RwLock};
use serde_json::json;
use tokio::sync::{Notify, oneshot};

use crate::events::EventHub;
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::telemetry::task_spans::TaskSpans;
use crate::trace::{Span, SpanKind};
use fabric_telemetry::metrics::{Collected, CounterVec, Histogram, HistogramVec, Registry, Sample};

type Commit = Pin<Box<dyn Future<Output = Result<WriteOutcome, StoreError>> + Send>>;

mod approval;
mod validate;

/// Why the task service refused a request.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A create request that breaks a rule; the message names the field and the fix.
    #[error("{0}")]
    Invalid(String),
    #[error("dependency {0} does not exist: depends_on must name existing tasks")]
    UnknownDependency(TaskId),
    /// No such task, or one of another tenant (which is not revealed).
    #[error("task {0} not found: check the id with 'reactor-fabric task list'")]
    NotFound(TaskId),
    #[error("task {id} already finished ({status}); nothing to cancel")]
    AlreadyFinished { id: TaskId, status: TaskStatus },
    /// Only finished tasks can be deleted.
    #[error(
        "task {id} is {status}, not finished: cancel it first ('reactor-fabric task cancel {id}'), then delete it"
    )]
    NotFinished { id: TaskId, status: TaskStatus },
    /// The store refused a write made on a stale lease.
    #[error("task {0} changed concurrently (its lease is no longer valid); fetch it and retry")]
    ChangedConcurrently(TaskId),
    /// `task:create:<agent>` was denied.
    #[error(transparent)]
    Refused(#[from] crate::services::policy::Refusal),
    /// Asking for the approval `task:create:<agent>` needs failed.
    #[error(transparent)]
    Approval(#[from] crate::services::policy::PolicyError),
    /// The agent's compute budget is spent.
    #[error(transparent)]
    OverBudget(#[from] fabric_engine::budget::Refusal),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error(transparent)]
    Store(#[from] fabric_core::StoreError),
    /// A broken internal invariant (a bug): the request cannot complete.
    #[error("{0}")]
    Invariant(&'static str),
}

/// Pause of the in-process lease loop after a lease write failed.
const LEASE_RETRY_AFTER: Duration = Duration::from_millis(100);

/// Task defaults applied at creation.
#[derive(Debug, Clone)]
pub struct TaskDefaults {
    pub max_attempts: u32,
    /// The agent a task goes to when the request names none.
    pub agent: AgentId,
}

impl Default for TaskDefaults {
    fn default() -> Self {
        Self {
            max_attempts: Task::DEFAULT_MAX_ATTEMPTS,
            agent: AgentId::shell(),
        }
    }
}

/// A lease whose store write is submitted but not yet known to have applied:
/// [`TaskService::confirm`] turns it into a [`Lease`] an agent may act on.
pub struct PendingLease {
    lease: Lease,
    commit: Commit,
}

impl PendingLease {
    pub fn task_id(&self) -> TaskId {
        self.lease.task.id
    }
}

/// A running attempt of an in-process agent, and how to stop it.
struct RunningAttempt {
    epoch: u64,
    kill: oneshot::Sender<&'static str>,
}

/// Whose an agent is, for the policy (workspace) and for who may use it.
struct AgentOwner {
    workspace: Option<String>,
    tenant: Option<TenantId>,
}

pub struct TaskService {
    store: Store,
    sched: Arc<Mutex<Scheduler>>,
    events: EventHub,
    clock: Arc<dyn Clock>,
    defaults: TaskDefaults,
    wakers: RwLock<HashMap<AgentId, Arc<Notify>>>,
    /// Each agent's workspace (an attribute of the `task:create` decision
    /// about giving it work) and owner tenant (`None`: the built-in agents,
    /// which serve every tenant).
    owners: RwLock<HashMap<AgentId, AgentOwner>>,
    /// Decides `task:create:<agent>` for every creation.
    policy: Arc<crate::services::policy::PolicyService>,
    running: Mutex<HashMap<TaskId, RunningAttempt>>,
    /// Tasks stored `awaiting_approval`, held outside the scheduler until
    /// their approval is decided (see `approval.rs`). Whoever removes a
    /// task from here (the decision or a cancel) settles it.
    awaiting: Mutex<std::collections::HashSet<TaskId>>,
    /// Compute-seconds budgets: an agent over its limit gets no new tasks.
    budgets: Arc<crate::services::budgets::BudgetService>,
    telemetry: Arc<Telemetry>,
    metrics: TaskMetrics,
    /// `task.lease` and `task.execute`, from the scheduler's writes.
    spans: TaskSpans,
}

impl TaskService {
    /// `Err` ([`TaskError::OverBudget`]) when `agent`'s compute budget is spent.
    fn check_compute(&self, agent: &AgentId) -> Result<(), TaskError> {
        Ok(self.budgets.check_compute(agent)?)
    }

    pub async fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        config: SchedulerConfig,
        defaults: TaskDefaults,
        policy: Arc<crate::services::policy::PolicyService>,
        budgets: Arc<crate::services::budgets::BudgetService>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self, StoreError> {
        let last_seq = store.last_event_seq().await?;
        let sched = Arc::new(Mutex::new(Scheduler::new(config)));
        Ok(Self {
            events: EventHub::new(store.clone(), last_seq),
            store,
            metrics: TaskMetrics::register(&telemetry.registry, Arc::downgrade(&sched)),
            spans: TaskSpans::new(telemetry.tracer.clone()),
            sched,
            telemetry,
            clock,
            defaults,
            wakers: RwLock::new(HashMap::new()),
            owners: RwLock::new(HashMap::new()),
            policy,
            running: Mutex::new(HashMap::new()),
            awaiting: Mutex::new(std::collections::HashSet::new()),
            budgets,
        })
    }

    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The `traceparent` an agent running `id` should use: its
    /// `task.execute` span with tracing on, else the context the task was
    /// created in (passed through), if any.
    pub fn traceparent_of(&self, task: &Task) -> Option<String> {
        self.spans.traceparent_of(task)
    }

    pub fn events(&self) -> &EventHub {
        &self.events
    }

    /// The workspace `agent` was registered with, if any.
    pub fn workspace_of(&self, agent: &AgentId) -> Option<String> {
        self.owners
            .read()
            .get(agent)
            .and_then(|o| o.workspace.clone())
    }

    /// Whether `principal` may give `agent` work: its own tenant's agents,
    /// the built-in ones, every agent for an admin. Unknown agents pass
    /// (the scheduler answers for them).
    fn may_use_agent(&self, principal: &fabric_core::Identity, agent: &AgentId) -> bool {
        match self.owners.read().get(agent) {
            Some(AgentOwner {
                tenant: Some(tenant),
                ..
            }) => {
                *tenant == principal.tenant
                    || fabric_core::Scope::Admin.granted_by(&principal.scopes)
            }
            _ => true,
        }
    }

    /// The agent a task goes to when its request names none.
    pub fn default_agent(&self) -> &AgentId {
        &self.defaults.agent
    }

    pub fn now(&self) -> fabric_core::Timestamp {
        self.clock.now()
    }

    pub fn lease_ttl(&self) -> Duration {
        self.sched.lock().config().lease_ttl
    }

    /// Gives `agent` a queue (or updates it) and records its workspace.
    pub fn register_agent(
        &self,
        agent: AgentId,
        config: AgentQueueConfig,
        workspace: Option<String>,
        tenant: Option<TenantId>,
    ) {
        self.wakers
            .write()
            .entry(agent.clone())
            .or_insert_with(|| Arc::new(Notify::new()));
        self.owners
            .write()
            .insert(agent.clone(), AgentOwner { workspace, tenant });
        self.sched.lock().register_agent(agent, config);
    }

    fn waker(&self, agent: &AgentId) -> Option<Arc<Notify>> {
        self.wakers.read().get(agent).cloned()
    }

    /// Reloads every unfinished task after a (re)start. Running tasks lost their
    /// agents with the old process and go back to their queues.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, TaskError> {
        // Read again now, not only at construction: with Redis, an
        // orchestrator that was a standby until now continues the numbering
        // from what the previous leader stored (whose later appends the store
        // refuses, so no seq can be taken twice).
        self.events.resume_after(self.store.last_event_seq().await?);
        let tasks = self.store.unfinished_tasks().await?;
        let count = tasks.len();
        let mut commits = Vec::new();
        for task in tasks {
            if task.status == TaskStatus::AwaitingApproval {
                // Still held: its approval outlived the restart.
                self.resume_awaiting(&task);
                continue;
            }
            let known = self.dependency_statuses(&task.depends_on).await?;
            let now = self.clock.now();
            let mut sched = self.sched.lock();
            match sched.restore(task.clone(), &known, now) {
                Ok(changes) => commits.extend(self.apply(&mut sched, changes)),
                Err(e) => {
                    tracing::warn!(task_id = %task.id, error = %e, "cannot restore task; failing it");
                    let mut failed = task;
                    failed.status = TaskStatus::Failed;
                    failed.reason = Some("restore_failed".into());
                    failed.result = Some(fabric_core::TaskResult {
                        error: Some(e.to_string()),
                        ..Default::default()
                    });
                    failed.finished_at = Some(now);
                    failed.updated_at = now;
                    let id = failed.id;
                    let write = TaskWrite {
                        task: failed,
                        expected_epoch: None,
                    };
                    commits.push((id, true, Box::pin(self.store.write_task(write)) as Commit));
                }
            }
        }
        self.await_commits(commits).await?;
        Ok(count)
    }

    /// Statuses of the dependencies the scheduler no longer holds, from the store.
    async fn dependency_statuses(
        &self,
        deps: &[TaskId],
    ) -> Result<HashMap<TaskId, TaskStatus>, StoreError> {
        let mut known = HashMap::new();
        for dep in deps {
            if self.sched.lock().get(dep).is_some() {
                continue;
            }
            if let Some(t) = self.store.get_task(*dep).await? {
                known.insert(*dep, t.status);
            }
        }
        Ok(known)
    }

    /// Creates a task (FR-SCHED-1..5). Returns the task and whether it is new
    /// (false for an idempotent replay).
    pub async fn create(
        self: &Arc<Self>,
        principal: &fabric_core::Identity,
        req: CreateTaskRequest,
        idempotency_key: Option<String>,
    ) -> Result<(Task, bool), TaskError> {
        let agent = req
            .agent
            .clone()
            .unwrap_or_else(|| self.defaults.agent.clone());
        // Another tenant's agent does not exist for the caller.
        if !self.may_use_agent(principal, &agent) {
            return Err(TaskError::Scheduler(SchedulerError::UnknownAgent(agent)));
        }
        // Policy enforcement point `task:create:<agent>`: the target agent's
        // policies (and workspace) decide who may give it work.
        let actor = crate::services::policy::Actor {
            tenant: principal.tenant.clone(),
            name: principal.user.clone(),
            workspace: self.workspace_of(&agent),
            agent: Some(agent.clone()),
        };
        let action = format!("task:create:{agent}");
        let decision = self.policy.decide(
            &actor,
            &action,
            None,
            "task_create",
            &crate::request_id::current(),
        );
        let gate = match decision.effect {
            fabric_core::Effect::Allow => None,
            // Created, but held until an approver decides (approval.rs).
            fabric_core::Effect::RequireApproval => Some(decision),
            fabric_core::Effect::Deny => return Err(decision.refusal(&action).into()),
        };
        let spec = validate::create_request(&req, &agent, idempotency_key.as_deref())?;
        self.check_compute(&agent)?;
        // Dependencies must exist (and be visible to the caller) before anything is stored.
        for dep in &req.depends_on {
            self.get(&principal.tenant, *dep)
                .await
                .map_err(|e| match e {
                    TaskError::NotFound(_) => TaskError::UnknownDependency(*dep),
                    other => other,
                })?;
        }
        // A gated task takes its queue slot once approved.
        let reservation = match gate {
            None => Some(self.sched.lock().reserve(&agent)?),
            Some(_) => None,
        };
        let now = self.clock.now();
        let input = TaskInput {
            prompt: req.prompt,
            commands: req.commands,
            files: req.files,
            env: req.env,
        };
        let mut task = Task::new(
            principal.tenant.clone(),
            principal.user.clone(),
            agent,
            input,
            now,
        );
        task.name = req.name;
        task.priority = req.priority.unwrap_or_default();
        task.depends_on = req.depends_on;
        task.timeout = spec.timeout;
        task.max_attempts = req.max_attempts.unwrap_or(self.defaults.max_attempts);
        task.idempotency_key = idempotency_key;
        if !task.depends_on.is_empty() {
            task.status = TaskStatus::Pending;
        }
        // The request's span (or the caller's incoming trace context).
        let request_trace = crate::trace::current();
        task.traceparent = request_trace.map(|c| c.traceparent());
        let schedule_span = (self.telemetry.tracer.enabled()).then(|| {
            Span::new(
                "task.schedule",
                SpanKind::Internal,
                request_trace.as_ref(),
                crate::trace::now_nanos(),
            )
            .attr("task_id", task.id.to_string())
            .attr("agent_id", task.agent_id.as_str())
        });
        let created = match (gate, reservation) {
            (Some(decision), _) => self.hold_for_approval(task, &actor, &decision).await,
            (None, Some(reservation)) => self.create_admitted(task, reservation).await,
            (None, None) => Err(TaskError::Invariant("an ungated task without a queue slot")),
        };
        if let Some(mut span) = schedule_span {
            span.end_nanos = crate::trace::now_nanos();
            if let Err(e) = &created {
                span.error = Some(e.to_string());
            }
            self.telemetry.tracer.record(span);
        }
        created
    }

    /// Stores a new task and hands it to the scheduler.
    async fn create_admitted(
        &self,
        task: Task,
        reservation: fabric_engine::Reservation,
    ) -> Result<(Task, bool), TaskError> {
        let created = match self.store.create_task(task).await {
            Ok(CreateOutcome::Created(t)) => t,
            Ok(CreateOutcome::Existing(existing)) => {
                self.sched.lock().release(reservation);
                let current = self
                    .sched
                    .lock()
                    .get(&existing.id)
                    .cloned()
                    .unwrap_or(existing);
                return Ok((current, false));
            }
            Err(e) => {
                self.sched.lock().release(reservation);
                return Err(e.into());
            }
        };
        self.admit(created, reservation).await.map(|t| (t, true))
    }

    /// Hands a durable new task to the scheduler. A dependency created
    /// concurrently may be stored but not yet admitted; wait for it briefly.
    async fn admit(
        &self,
        task: Task,
        reservation: fabric_engine::Reservation,
    ) -> Result<Task, TaskError> {
        let mut known = self.dependency_statuses(&task.depends_on).await?;
        let mut reservation = Some(reservation);
        for _ in 0..200 {
            if let Some(admitted) = self.try_admit(&task, &mut reservation, &known)? {
                return Ok(admitted);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            known = self.dependency_statuses(&task.depends_on).await?;
        }
        if let Some(r) = reservation {
            self.sched.lock().release(r);
        }
        Err(TaskError::Invariant(
            "a dependency never became visible to the scheduler; the task was stored but not scheduled",
        ))
    }

    /// One admission attempt under the lock; `None` while a dependency is not yet visible.
    fn try_admit(
        &self,
        task: &Task,
        reservation: &mut Option<fabric_engine::Reservation>,
        known: &HashMap<TaskId, TaskStatus>,
    ) -> Result<Option<Task>, TaskError> {
        let now = self.clock.now();
        let mut sched = self.sched.lock();
        let not_ready = task.depends_on.iter().any(|d| {
            sched.get(d).is_none()
                && !known
                    .get(d)
                    .is_some_and(|s| s.is_terminal() || *s == TaskStatus::AwaitingApproval)
        });
        if not_ready {
            return Ok(None);
        }
        let Some(r) = reservation.take() else {
            return Err(TaskError::Invariant("task admitted twice"));
        };
        let changes = sched.submit(task.clone(), r, known, now)?;
        let current = sched.get(&task.id).cloned().unwrap_or_else(|| task.clone());
        self.events.emit(
            task.id,
            EventKind::Status,
            now,
            json!({"status": task.status, "attempt": 0}),
        );
        let commits = self.apply(&mut sched, changes);
        drop(sched);
        self.spawn_commits(commits);
        Ok(Some(current))
    }

    /// Submits the store writes and events of a scheduler decision, wakes
    /// agents and kills attempts. Call with the scheduler lock held (see module docs).
    fn apply(&self, sched: &mut Scheduler, changes: Changes) -> Vec<(TaskId, bool, Commit)> {
        let _ = sched; // the lock guard proves the caller holds the lock
        let mut commits = Vec::with_capacity(changes.writes.len());
        self.spans.observe(&changes.writes);
        for write in changes.writes {
            let task = &write.task;
            self.observe(task);
            let (kind, payload) = status_event(task);
            self.events.emit(task.id, kind, task.updated_at, payload);
            let terminal = task.status.is_terminal();
            let id = task.id;
            commits.push((
                id,
                terminal,
                Box::pin(self.store.write_task(write)) as Commit,
            ));
        }
        for agent in &changes.woken {
            if let Some(w) = self.waker(agent) {
                w.notify_one();
            }
        }
        let mut running = self.running.lock();
        for kill in changes.kills {
            if let Some(attempt) = running.remove(&kill.task_id) {
                if attempt.epoch == kill.epoch {
                    let _ = attempt.kill.send(kill.reason);
                } else {
                    running.insert(kill.task_id, attempt);
                }
            }
        }
        commits
    }

    /// Metrics and the log line of a task's new state.
    fn observe(&self, task: &Task) {
        if task.status.is_terminal() {
            let took = task
                .finished_at
                .unwrap_or(task.updated_at)
                .since(task.created_at);
            let agent = task.agent_id.as_str();
            self.metrics.finished.inc(&[agent, task.status.as_str()]);
            self.metrics.duration.observe(&[agent], took);
            tracing::info!(task_id = %task.id, agent_id = %task.agent_id, outcome = task.status.as_str(),
                reason = task.reason.as_deref(), attempt = task.attempt,
                latency_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX), "task outcome");
        }
    }

    /// Waits for commits in the background; finished tasks leave the
    /// scheduler once their final state is durable.
    fn spawn_commits(&self, commits: Vec<(TaskId, bool, Commit)>) {
        if !commits.is_empty() {
            tokio::spawn(settle(Arc::clone(&self.sched), commits));
        }
    }

    /// A task of `tenant`, from the scheduler (freshest) or the store.
    pub async fn get(&self, tenant: &TenantId, id: TaskId) -> Result<Task, TaskError> {
        let live = self.sched.lock().get(&id).cloned();
        let task = match live {
            Some(t) => t,
            None => self
                .store
                .get_task(id)
                .await?
                .ok_or(TaskError::NotFound(id))?,
        };
        // Another tenant's task is reported as missing, not forbidden: ids are not to be probed.
        if &task.tenant != tenant {
            return Err(TaskError::NotFound(id));
        }
        Ok(task)
    }

    /// A task of any tenant (for its agent), from the scheduler or the store.
    pub async fn get_any(&self, id: TaskId) -> Result<Task, TaskError> {
        let live = self.sched.lock().get(&id).cloned();
        match live {
            Some(t) => Ok(t),
            None => self
                .store
                .get_task(id)
                .await?
                .ok_or(TaskError::NotFound(id)),
        }
    }

    /// Tasks of `tenant`, newest first, with live status for unfinished ones.
    pub async fn list(
        &self,
        tenant: &TenantId,
        mut query: TaskQuery,
    ) -> Result<Vec<Task>, TaskError> {
        query.tenant = Some(tenant.clone());
        // Filters run in the store: let every decision already made reach it
        // first, so a list agrees with what `get` just said.
        self.store_barrier().await?;
        let mut tasks = self.store.list_tasks(query).await?;
        let sched = self.sched.lock();
        for t in &mut tasks {
            if let Some(live) = sched.get(&t.id) {
                t.clone_from(live);
            }
        }
        Ok(tasks)
    }

    /// How many of `tenant`'s tasks (of `agent` when given) are in each status.
    pub async fn counts(
        &self,
        tenant: &TenantId,
        agent: Option<AgentId>,
    ) -> Result<std::collections::BTreeMap<TaskStatus, u64>, TaskError> {
        // As for a list: every decision already made reaches the store first.
        self.store_barrier().await?;
        Ok(self.store.count_tasks(Some(tenant.clone()), agent).await?)
    }

    /// Cancels a task (FR-SCHED-4): queued or pending at once; a running one is
    /// marked canceled and its process is stopped (SIGTERM, then SIGKILL after the grace period).
    pub async fn cancel(&self, tenant: &TenantId, id: TaskId) -> Result<Task, TaskError> {
        let task = self.get(tenant, id).await?;
        if task.status.is_terminal() {
            return Err(TaskError::AlreadyFinished {
                id,
                status: task.status,
            });
        }
        if self.awaiting.lock().remove(&id) {
            return self
                .end_unadmitted(
                    task,
                    TaskStatus::Canceled,
                    fabric_core::reason::CANCELED,
                    None,
                )
                .await;
        }
        let now = self.clock.now();
        let (commits, canceled) = {
            let mut sched = self.sched.lock();
            let changes = sched.cancel(&id, now)?;
            let canceled = changes.writes.first().map(|w| w.task.clone());
            (self.apply(&mut sched, changes), canceled)
        };
        self.await_commits(commits).await?;
        canceled.ok_or(TaskError::Invariant("cancel produced no task state"))
    }

    /// Deletes a finished task of `tenant`, with its events (`task rm`).
    pub async fn delete(&self, tenant: &TenantId, id: TaskId) -> Result<(), TaskError> {
        let task = self.get(tenant, id).await?;
        if !task.status.is_terminal() {
            return Err(TaskError::NotFinished {
                id,
                status: task.status,
            });
        }
        let deleted = self.store.delete_tasks(vec![id]).await?;
        if deleted.is_empty() {
            // Gone meanwhile (another delete): as if it never was.
            return Err(TaskError::NotFound(id));
        }
        Ok(())
    }

    /// Deletes the finished tasks created before `cutoff` (all tenants when
    /// `tenant` is `None`: the retention job), with their events; returns
    /// how many. Pages through the store, oldest last, 500 at a time.
    pub async fn prune(
        &self,
        tenant: Option<&TenantId>,
        cutoff: fabric_core::Timestamp,
    ) -> Result<u64, TaskError> {
        // UUIDv7 ids sort by creation: the first id of `cutoff`'s millisecond
        // bounds "created before" in the store's own order.
        let mut before = Some(TaskId::first_at(cutoff));
        let mut deleted = 0u64;
        while let Some(cursor) = before {
            let page = self
                .store
                .list_tasks(TaskQuery {
                    tenant: tenant.cloned(),
                    before: Some(cursor),
                    limit: 500,
                    ..TaskQuery::default()
                })
                .await?;
            before = (page.len() == 500).then(|| page[page.len() - 1].id);
            let finished: Vec<TaskId> = page
                .iter()
                .filter(|t| t.status.is_terminal())
                .map(|t| t.id)
                .collect();
            if !finished.is_empty() {
                deleted += self.store.delete_tasks(finished).await?.len() as u64;
            }
        }
        Ok(deleted)
    }

    /// Waits for commits in order, then drops finished tasks from the scheduler.
    async fn await_commits(&self, commits: Vec<(TaskId, bool, Commit)>) -> Result<(), TaskError> {
        settle(Arc::clone(&self.sched), commits).await
    }

    /// Events of a task after `after`, oldest first. Waits for pending event
    /// writes first, so nothing already emitted is missing.
    pub async fn task_events(
        &self,
        tenant: &TenantId,
        id: TaskId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        self.get(tenant, id).await?;
        self.store_barrier().await?;
        Ok(self.store.task_events(id, after, limit).await?)
    }

    /// Events of a task whose access was already checked.
    pub async fn task_events_unchecked(
        &self,
        id: TaskId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<TaskEvent>, StoreError> {
        self.store.task_events(id, after, limit).await
    }

    /// Resolves once every write submitted before it has committed.
    pub async fn store_barrier(&self) -> Result<(), StoreError> {
        self.store.append_events(Vec::new()).await
    }

    /// Leases the next task of `agent` if one is ready. The lease write is
    /// submitted (under the scheduler lock, like every decision) but the
    /// lease is not yours until [`TaskService::confirm`] says it applied.
    pub fn try_lease(&self, agent: &AgentId) -> Option<PendingLease> {
        // Over its compute budget: the agent's tasks wait in the queue until
        // the budget resets or is raised.
        if self.check_compute(agent).is_err() {
            return None;
        }
        let now = self.clock.now();
        let mut sched = self.sched.lock();
        let lease = sched.lease(agent, now)?;
        let task = &lease.task;
        self.events.emit(
            task.id,
            EventKind::Status,
            now,
            json!({"status": task.status, "attempt": task.attempt}),
        );
        let commit = Box::pin(self.store.write_task(lease.write.clone())) as Commit;
        drop(sched);
        // Outside the lock: every other decision waits on it.
        if lease.task.attempt <= 1 {
            self.metrics
                .lease_latency
                .observe(now.since(lease.task.created_at));
        }
        self.spans.observe([&lease.write]);
        Some(PendingLease { lease, commit })
    }

    /// Waits for a lease's write. `Some` once it applied: only then may an
    /// agent start (the store, and any other orchestrator reading it, knows
    /// the task is taken). `None` when the store rejected it: the stored task
    /// is not what this scheduler holds (another writer changed its epoch or
    /// ended it), so the task is dropped from this scheduler. An error leaves
    /// the lease to expire and be requeued by `tick`.
    pub async fn confirm(&self, pending: PendingLease) -> Result<Option<Lease>, StoreError> {
        let PendingLease { lease, commit } = pending;
        match commit.await {
            Ok(WriteOutcome::Applied) => Ok(Some(lease)),
            Ok(WriteOutcome::Rejected) => {
                self.spans.discard(&lease.task.id);
                let dropped = self.sched.lock().disown(&lease.task.id, lease.epoch);
                tracing::warn!(task_id = %lease.task.id, agent_id = %lease.task.agent_id, epoch = lease.epoch, dropped,
                    "the store rejected a lease: the stored task changed behind this scheduler (another orchestrator or writer); not handed out, dropped from this scheduler");
                Ok(None)
            }
            Err(e) => {
                tracing::error!(task_id = %lease.task.id, error = %e, "cannot store lease; not handed out, it is requeued when it expires");
                Err(e)
            }
        }
    }

    /// Waits until a task of `agent` is leased durably (or `shutdown` resolves).
    pub async fn lease_wait(&self, agent: &AgentId, shutdown: &CancellationToken) -> Option<Lease> {
        let waker = self.waker(agent)?;
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(pending) = self.try_lease(agent) {
                // Others may be ready too: pass the wake-up on.
                waker.notify_one();
                match self.confirm(pending).await {
                    Ok(Some(lease)) => return Some(lease),
                    Ok(None) => continue,
                    // Already logged; do not spin through the queue while the store fails.
                    Err(_) => tokio::time::sleep(LEASE_RETRY_AFTER).await,
                }
                continue;
            }
            tokio::select! {
                () = &mut notified => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Waits up to `wait` for a task of `agent` and returns it once its lease
    /// write applied (an agent must not start work the store does not know
    /// about, or that the store gave to someone else). A rejected lease is
    /// skipped for the next ready task.
    pub async fn lease_within(
        &self,
        agent: &AgentId,
        wait: Duration,
    ) -> Result<Option<Lease>, TaskError> {
        let Some(waker) = self.waker(agent) else {
            return Err(SchedulerError::UnknownAgent(agent.clone()).into());
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(pending) = self.try_lease(agent) {
                waker.notify_one();
                match self.confirm(pending).await? {
                    Some(lease) => return Ok(Some(lease)),
                    None => continue,
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Running attempts `(task, epoch)` of one agent.
    pub fn running_of(&self, agent: &AgentId) -> Vec<(TaskId, u64)> {
        self.sched.lock().running_of(agent)
    }

    /// Gives up attempts whose agent is gone (died, or stopped past its drain
    /// timeout): each goes back to its queue at once, or fails with `why` when
    /// out of attempts. Kills any in-process work left. Resolves once durable.
    pub async fn abandon(&self, attempts: &[(TaskId, u64)], why: &str) -> Result<(), TaskError> {
        let now = self.clock.now();
        let commits = {
            let mut sched = self.sched.lock();
            let mut commits = Vec::new();
            for (id, epoch) in attempts {
                match sched.abandon(id, *epoch, why, now) {
                    Ok(changes) => {
                        tracing::info!(task_id = %id, reason = why, "attempt abandoned: its agent is gone");
                        commits.extend(self.apply(&mut sched, changes));
                    }
                    // Finished or re-leased meanwhile: nothing to give up.
                    Err(e) => tracing::debug!(task_id = %id, error = %e, "not abandoned"),
                }
            }
            commits
        };
        self.await_commits(commits).await
    }

    /// Task as the scheduler holds it now (running or waiting), if it does.
    pub fn live(&self, id: &TaskId) -> Option<Task> {
        self.sched.lock().get(id).cloned()
    }

    /// Registers a running in-process attempt; the receiver fires with a reason
    /// (`canceled`, `timed_out`, `shutdown`) when it must stop.
    pub fn track_running(&self, id: TaskId, epoch: u64) -> oneshot::Receiver<&'static str> {
        let (tx, rx) = oneshot::channel();
        self.running
            .lock()
            .insert(id, RunningAttempt { epoch, kill: tx });
        rx
    }

    pub fn untrack_running(&self, id: &TaskId) {
        self.running.lock().remove(id);
    }

    /// Stops every in-process attempt (server shutdown). Their tasks stay
    /// `running` in the store and are requeued by the next start.
    pub fn stop_all_running(&self) {
        for (_, attempt) in self.running.lock().drain() {
            let _ = attempt.kill.send("shutdown");
        }
    }

    /// Renews a lease; returns its new expiry.
    pub fn heartbeat(
        &self,
        id: &TaskId,
        epoch: u64,
    ) -> Result<fabric_core::Timestamp, SchedulerError> {
        let now = self.clock.now();
        self.sched.lock().heartbeat(id, epoch, now)
    }

    /// Records the end of an attempt. The returned future resolves when the
    /// outcome is durable; an agent is acknowledged only then.
    pub fn complete(
        &self,
        id: &TaskId,
        epoch: u64,
        completion: Completion,
    ) -> Result<impl Future<Output = Result<(), TaskError>> + Send + 'static, TaskError> {
        let now = self.clock.now();
        let commits = {
            let mut sched = self.sched.lock();
            let changes = sched.complete(id, epoch, completion, now)?;
            self.apply(&mut sched, changes)
        };
        Ok(settle(Arc::clone(&self.sched), commits))
    }

    /// Expires leases and enforces timeouts; run periodically.
    pub fn tick(&self) {
        let now = self.clock.now();
        let commits = {
            let mut sched = self.sched.lock();
            let changes = sched.tick(now);
            if changes.writes.is_empty() && changes.kills.is_empty() {
                return;
            }
            for w in &changes.writes {
                tracing::info!(task_id = %w.task.id, agent_id = %w.task.agent_id, status = %w.task.status,
                    reason = w.task.reason.as_deref().unwrap_or(""), "task expired");
            }
            self.apply(&mut sched, changes)
        };
        self.spawn_commits(commits);
    }

    /// Pending, queued and running task counts.
    pub fn stats(&self) -> fabric_engine::SchedulerStats {
        self.sched.lock().stats()
    }

    /// `agent_fabric_tasks_total{agent_id,status}` (the task error-rate alert reads it).
    pub fn finished_tasks(&self) -> Arc<CounterVec> {
        Arc::clone(&self.metrics.finished)
    }
}

/// Buckets (seconds) of task durations: milliseconds to an hour.
const TASK_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The task service's metrics.
struct TaskMetrics {
    /// `agent_fabric_tasks_total{agent_id,status}`: tasks that reached a final status.
    finished: Arc<CounterVec>,
    /// `agent_fabric_task_duration_seconds{agent_id}`: creation to final status.
    duration: Arc<HistogramVec>,
    /// `agent_fabric_lease_latency_seconds`: first attempts, from creation to lease.
    lease_latency: Arc<Histogram>,
}

impl TaskMetrics {
    /// Declares them, and `agent_fabric_scheduler_tasks{state}` read from `sched` at scrape time.
    fn register(registry: &Registry, sched: std::sync::Weak<Mutex<Scheduler>>) -> Self {
        let metrics = Self {
            finished: registry.counter_vec(
                "agent_fabric_tasks_total",
                "Tasks that reached a final status, by agent and status.",
                &["agent_id", "status"],
            ),
            duration: registry.histogram_vec(
                "agent_fabric_task_duration_seconds",
                "Time from a task's creation to its final status.",
                &["agent_id"],
                TASK_BUCKETS,
            ),
            lease_latency: registry.histogram(
                "agent_fabric_lease_latency_seconds",
                "Time a task waited from queued (or requeued) to leased.",
                crate::telemetry::LATENCY_BUCKETS,
            ),
        };
        registry.collector(move || {
            let stats = sched
                .upgrade()
                .map(|s| s.lock().stats())
                .unwrap_or_default();
            vec![Collected {
                name: "agent_fabric_scheduler_tasks",
                help: "Tasks the scheduler holds, by state (queued = the queue depth).",
                kind: "gauge",
                samples: vec![
                    Sample::new(stats.pending as f64).with("state", "pending"),
                    Sample::new(stats.queued as f64).with("state", "queued"),
                    Sample::new(stats.running as f64).with("state", "running"),
                ],
            }]
        });
        metrics
    }
}

/// Waits for `commits` in order; a finished task leaves the scheduler once its
/// final write is durable. Logs every failure and returns the first.
async fn settle(
    sched: Arc<Mutex<Scheduler>>,
    commits: Vec<(TaskId, bool, Commit)>,
) -> Result<(), TaskError> {
    let mut first_error = None;
    for (id, terminal, commit) in commits {
        match commit.await {
            Ok(WriteOutcome::Applied) => {}
            Ok(WriteOutcome::Rejected) => {
                tracing::warn!(task_id = %id, "store refused a stale task write");
                first_error.get_or_insert(TaskError::ChangedConcurrently(id));
            }
            Err(e) => {
                tracing::error!(task_id = %id, error = %e, "cannot store task");
                first_error.get_or_insert(e.into());
            }
        }
        if terminal {
            sched.lock().forget(&id);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The event a task's new state produces: `status` while it lives, then one
/// `result` (completed) or `error` (any other end), which ends its stream.
fn status_event(task: &Task) -> (EventKind, serde_json::Value) {
    match task.status {
        TaskStatus::Completed => (
            EventKind::Result,
            json!({"status": task.status, "result": task.result}),
        ),
        s if s.is_terminal() => {
            let message = task
                .result
                .as_ref()
                .and_then(|r| r.error.clone())
                .or_else(|| task.reason.clone())
                .unwrap_or_else(|| s.to_string());
            (
                EventKind::Error,
                json!({"status": s, "reason": task.reason, "message": message, "result": task.result}),
            )
        }
        s => (
            EventKind::Status,
            json!({"status": s, "attempt": task.attempt, "reason": task.reason}),
        ),
    }
}
