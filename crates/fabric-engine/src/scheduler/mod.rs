//! The scheduler (FR-SCHED-1..6): who runs what next, and what happens when
//! things go wrong.
//!
//! It owns every task that is not yet terminal. Each mutation returns
//! [`Changes`]: the task versions to persist (as fenced [`TaskWrite`]s, in the
//! order they must commit), the running attempts to kill, and the agents that
//! have new work. Keeping decisions here and IO in the caller is what makes the
//! scheduler testable with a hand-driven clock.
//!
//! Fencing: every lease bumps the task's `lease_epoch`; completions, heartbeats
//! and store writes carry the epoch they were issued under, and anything
//! carrying an old epoch is refused. A task whose lease runs out is requeued
//! (a new attempt, a new epoch) until `max_attempts`, then fails with
//! `lease_expired`.

mod queue;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use fabric_core::{AgentId, Task, TaskId, TaskResult, TaskStatus, TaskWrite, Timestamp, reason};

use self::queue::{Item, ReadyQueue};

/// Scheduler-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// How long a lease lasts without a heartbeat.
    pub lease_ttl: Duration,
    /// Priority head start per level: a task waiting this much longer than one
    /// a level above it goes first (see `queue.rs`).
    pub aging_step: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            aging_step: Duration::from_secs(10),
        }
    }
}

/// Per-agent queue settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentQueueConfig {
    /// Most tasks (pending + queued) that may wait for this agent (FR-SCHED-3).
    pub max_queue_depth: usize,
}

impl Default for AgentQueueConfig {
    fn default() -> Self {
        Self {
            max_queue_depth: 100_000,
        }
    }
}

/// Why the scheduler refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error(
        "agent {0} does not exist: create it first, or omit the agent to use the built-in shell agent"
    )]
    UnknownAgent(AgentId),
    #[error(
        "agent {agent} has {depth} tasks waiting, its limit (max_queue_depth); retry later or raise the agent's max_queue_depth"
    )]
    QueueFull { agent: AgentId, depth: usize },
    #[error("dependency {0} does not exist: depends_on must name tasks created earlier")]
    UnknownDependency(TaskId),
    #[error("dependency {0} is still being created; retry")]
    DependencyNotReady(TaskId),
    #[error("task {0} is not known to the scheduler (finished or never created)")]
    UnknownTask(TaskId),
    #[error("task {id} already finished ({status})")]
    AlreadyFinished { id: TaskId, status: TaskStatus },
    #[error(
        "lease on task {id} is no longer valid (epoch {presented}, current {current}); its work was reassigned or ended"
    )]
    StaleLease {
        id: TaskId,
        presented: u64,
        current: u64,
    },
    #[error("a completion must end the task as completed or failed, not {0}")]
    InvalidCompletion(TaskStatus),
    #[error("task {0} already exists")]
    Duplicate(TaskId),
}

/// What persisting and notifying a scheduler decision takes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    /// New task versions, to be committed in this order.
    pub writes: Vec<TaskWrite>,
    /// Running attempts that must be stopped (canceled or timed out).
    pub kills: Vec<KillOrder>,
    /// Agents whose queue gained work (wake their waiting workers).
    pub woken: Vec<AgentId>,
}

impl Changes {
    fn extend(&mut self, other: Changes) {
        self.writes.extend(other.writes);
        self.kills.extend(other.kills);
        self.woken.extend(other.woken);
    }

    /// Tasks among `writes` that ended (are now terminal).
    pub fn finished(&self) -> impl Iterator<Item = &Task> {
        self.writes
            .iter()
            .map(|w| &w.task)
            .filter(|t| t.status.is_terminal())
    }
}

/// Stop a running attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillOrder {
    pub task_id: TaskId,
    pub agent_id: AgentId,
    pub epoch: u64,
    /// `canceled` or `timed_out`.
    pub reason: &'static str,
}

/// A task handed to an agent, valid while `epoch` is current.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub task: Task,
    pub epoch: u64,
    pub expires_at: Timestamp,
    /// Persist this before anything else about the attempt.
    pub write: TaskWrite,
}

/// How an agent says an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// `Completed` or `Failed`.
    pub status: TaskStatus,
    pub reason: Option<String>,
    pub result: Option<TaskResult>,
}

/// A claim on one queue slot, taken before the (slow, durable) insert so
/// concurrent creators cannot overshoot `max_queue_depth`.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a reservation holds a queue slot until submitted or released"]
pub struct Reservation {
    agent: AgentId,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub pending: usize,
    pub queued: usize,
    pub running: usize,
}

#[derive(Debug)]
enum State {
    Pending { waiting_on: usize },
    Queued { ticket: u64 },
    Running { expires_at: Timestamp },
}

#[derive(Debug)]
struct Entry {
    task: Task,
    state: State,
}

#[derive(Debug)]
struct AgentQueue {
    config: AgentQueueConfig,
    ready: ReadyQueue,
    /// Pending + queued tasks for this agent, plus reservations.
    waiting: usize,
}

/// The scheduler. Not thread-safe by itself: the server wraps it in a mutex.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    agents: HashMap<AgentId, AgentQueue>,
    /// Boxed so a table resize moves pointers, not whole tasks: with 100k
    /// tasks an unboxed doubling moved ~50 MB under the server's lock (a 60 ms
    /// stall measured by `fabric-bench sched`).
    active: HashMap<TaskId, Box<Entry>>,
    /// Terminal tasks whose final write may not have committed yet; kept so
    /// readers and new dependents see the outcome until [`Scheduler::forget`].
    finished: HashMap<TaskId, Task>,
    /// Dependency → tasks waiting for it.
    dependents: HashMap<TaskId, Vec<TaskId>>,
    /// (expiry, task, epoch) of every lease handed out; stale ones are skipped.
    lease_expiries: BTreeSet<(Timestamp, TaskId, u64)>,
    /// (deadline, task, epoch) of running attempts with a timeout.
    deadlines: BTreeSet<(Timestamp, TaskId, u64)>,
    next_ticket: u64,
    stats: SchedulerStats,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            agents: HashMap::new(),
            active: HashMap::new(),
            finished: HashMap::new(),
            dependents: HashMap::new(),
            lease_expiries: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            next_ticket: 0,
            stats: SchedulerStats::default(),
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Adds an agent queue, or updates its settings if it exists.
    pub fn register_agent(&mut self, agent: AgentId, config: AgentQueueConfig) {
        self.agents
            .entry(agent)
            .and_modify(|q| q.config = config)
            .or_insert_with(|| AgentQueue {
                config,
                ready: ReadyQueue::default(),
                waiting: 0,
            });
    }

    pub fn has_agent(&self, agent: &AgentId) -> bool {
        self.agents.contains_key(agent)
    }

    /// Tasks waiting (pending or queued) for `agent`, reservations included.
    pub fn queue_depth(&self, agent: &AgentId) -> usize {
        self.agents.get(agent).map_or(0, |q| q.waiting)
    }

    pub fn stats(&self) -> SchedulerStats {
        self.stats
    }

    /// The scheduler's view of a task that is active or just finished.
    pub fn get(&self, id: &TaskId) -> Option<&Task> {
        self.active
            .get(id)
            .map(|e| &e.task)
            .or_else(|| self.finished.get(id))
    }

    /// Claims a queue slot for a task about to be created for `agent`.
    pub fn reserve(&mut self, agent: &AgentId) -> Result<Reservation, SchedulerError> {
        let queue = self
            .agents
            .get_mut(agent)
            .ok_or_else(|| SchedulerError::UnknownAgent(agent.clone()))?;
        if queue.waiting >= queue.config.max_queue_depth {
            return Err(SchedulerError::QueueFull {
                agent: agent.clone(),
                depth: queue.waiting,
            });
        }
        queue.waiting += 1;
        Ok(Reservation {
            agent: agent.clone(),
        })
    }

    /// Gives back a slot that was not used (the create failed or was a replay).
    pub fn release(&mut self, reservation: Reservation) {
        if let Some(q) = self.agents.get_mut(&reservation.agent) {
            q.waiting = q.waiting.saturating_sub(1);
        }
    }

    /// Accepts a durable new task (status `pending` or `queued` as stored, or
    /// `awaiting_approval` once its approval is granted).
    ///
    /// `known` gives the status of dependencies the scheduler no longer holds
    /// (looked up in the store). A dependency in neither is
    /// [`SchedulerError::UnknownDependency`]. The returned writes hold the
    /// task's resulting status when it differs from what was stored.
    pub fn submit(
        &mut self,
        task: Task,
        reservation: Reservation,
        known: &HashMap<TaskId, TaskStatus>,
        now: Timestamp,
    ) -> Result<Changes, SchedulerError> {
        if reservation.agent != task.agent_id {
            self.release(reservation);
            return Err(SchedulerError::UnknownAgent(task.agent_id.clone()));
        }
        // The slot moves from "reserved" to "waiting" (same counter), unless
        // admit fails, in which case it is given back.
        let result = self.admit(task, known, now);
        if result.is_err() {
            self.release(reservation);
        }
        result
    }

    /// Reloads an unfinished task after a restart. A task that was running has
    /// lost its agent with the old process: it goes back to the queue as if its
    /// lease had expired, with a new epoch (or fails, when out of attempts). Tasks must be
    /// restored oldest first, so dependencies are known before their dependents.
    pub fn restore(
        &mut self,
        mut task: Task,
        known: &HashMap<TaskId, TaskStatus>,
        now: Timestamp,
    ) -> Result<Changes, SchedulerError> {
        let reservation = self.reserve_unbounded(&task.agent_id)?;
        let mut requeue = None;
        if task.status == TaskStatus::Running {
            let expected = Some(task.lease_epoch);
            if task.attempt >= task.max_attempts {
                self.release(reservation);
                self.finish_detached(&mut task, TaskStatus::Failed, reason::LEASE_EXPIRED, now);
                let write = TaskWrite {
                    task: task.clone(),
                    expected_epoch: expected,
                };
                self.finished.insert(task.id, task);
                return Ok(Changes {
                    writes: vec![write],
                    ..Changes::default()
                });
            }
            task.status = TaskStatus::Queued;
            task.reason = Some(reason::LEASE_EXPIRED.to_owned());
            task.updated_at = now;
            // A new epoch at once, not only at the next lease: the process that
            // ran it may still be alive (a deposed orchestrator sharing the
            // store), and a completion it writes with the old epoch must not
            // apply to the requeued task.
            task.lease_epoch += 1;
            requeue = Some(TaskWrite {
                task: task.clone(),
                expected_epoch: expected,
            });
        }
        let mut changes = self.submit(task, reservation, known, now)?;
        if let Some(write) = requeue {
            changes.writes.insert(0, write);
        }
        Ok(changes)
    }

    /// A slot that ignores `max_queue_depth`: restored tasks were already accepted.
    fn reserve_unbounded(&mut self, agent: &AgentId) -> Result<Reservation, SchedulerError> {
        let queue = self
            .agents
            .get_mut(agent)
            .ok_or_else(|| SchedulerError::UnknownAgent(agent.clone()))?;
        queue.waiting += 1;
        Ok(Reservation {
            agent: agent.clone(),
        })
    }

    /// Shared by submit and restore: places the task by its dependencies.
    /// Expects the agent's `waiting` count to already include this task.
    fn admit(
        &mut self,
        mut task: Task,
        known: &HashMap<TaskId, TaskStatus>,
        now: Timestamp,
    ) -> Result<Changes, SchedulerError> {
        if self.active.contains_key(&task.id) {
            return Err(SchedulerError::Duplicate(task.id));
        }
        let mut waiting_on = 0;
        let mut failed_dep = None;
        for dep in &task.depends_on {
            let status = match self.get(dep) {
                Some(t) => t.status,
                None => match known.get(dep) {
                    Some(s) if s.is_terminal() => *s,
                    // Held outside the scheduler until approved: waited for
                    // like any unfinished dependency (`settle` ends the wait
                    // if it is denied).
                    Some(TaskStatus::AwaitingApproval) => TaskStatus::AwaitingApproval,
                    // Stored but not yet handed to the scheduler: its create is in flight.
                    Some(_) => return Err(SchedulerError::DependencyNotReady(*dep)),
                    None => return Err(SchedulerError::UnknownDependency(*dep)),
                },
            };
            match status {
                TaskStatus::Completed => {}
                s if s.is_terminal() => failed_dep = failed_dep.or(Some(*dep)),
                _ => waiting_on += 1,
            }
        }
        let stored_status = task.status;
        let mut changes = Changes::default();
        if let Some(dep) = failed_dep {
            if let Some(q) = self.agents.get_mut(&task.agent_id) {
                q.waiting = q.waiting.saturating_sub(1);
            }
            task.status = TaskStatus::Failed;
            task.reason = Some(reason::DEPENDENCY_FAILED.to_owned());
            task.result = Some(TaskResult {
                error: Some(format!("dependency {dep} did not complete")),
                ..Default::default()
            });
            task.finished_at = Some(now);
            task.updated_at = now;
            changes.writes.push(TaskWrite {
                task: task.clone(),
                expected_epoch: None,
            });
            self.finished.insert(task.id, task);
            return Ok(changes);
        }
        if waiting_on > 0 {
            task.status = TaskStatus::Pending;
            for dep in &task.depends_on {
                if self
                    .get(dep)
                    .is_none_or(|t| t.status != TaskStatus::Completed)
                    && known.get(dep).is_none_or(|s| *s != TaskStatus::Completed)
                {
                    self.dependents.entry(*dep).or_default().push(task.id);
                }
            }
            self.stats.pending += 1;
            if stored_status != TaskStatus::Pending {
                task.updated_at = now;
                changes.writes.push(TaskWrite {
                    task: task.clone(),
                    expected_epoch: None,
                });
            }
            self.active.insert(
                task.id,
                Box::new(Entry {
                    task,
                    state: State::Pending { waiting_on },
                }),
            );
        } else {
            task.status = TaskStatus::Queued;
            if stored_status != TaskStatus::Queued {
                task.updated_at = now;
                changes.writes.push(TaskWrite {
                    task: task.clone(),
                    expected_epoch: None,
                });
            }
            changes.woken.push(task.agent_id.clone());
            self.enqueue(task, now, false);
        }
        Ok(changes)
    }

    fn enqueue(&mut self, task: Task, now: Timestamp, front: bool) {
        self.next_ticket += 1;
        let item = Item {
            id: task.id,
            ticket: self.next_ticket,
            enqueued_at: now,
        };
        if let Some(q) = self.agents.get_mut(&task.agent_id) {
            if front {
                q.ready.push_front(&task.tenant, task.priority, item);
            } else {
                q.ready.push(&task.tenant, task.priority, item);
            }
        }
        self.stats.queued += 1;
        self.active.insert(
            task.id,
            Box::new(Entry {
                task,
                state: State::Queued {
                    ticket: self.next_ticket,
                },
            }),
        );
    }

    /// Hands the next task of `agent` to a worker, or `None` if nothing is ready.
    pub fn lease(&mut self, agent: &AgentId, now: Timestamp) -> Option<Lease> {
        let aging = self.config.aging_step;
        let queue = self.agents.get_mut(agent)?;
        let active = &self.active;
        let item = queue.ready.pop(aging, |item| {
            matches!(active.get(&item.id).map(Box::as_ref), Some(Entry { state: State::Queued { ticket }, .. }) if *ticket == item.ticket)
        })?;
        queue.waiting = queue.waiting.saturating_sub(1);
        self.stats.queued -= 1;
        self.stats.running += 1;
        let entry = self.active.get_mut(&item.id)?;
        let expected = entry.task.lease_epoch;
        let task = &mut entry.task;
        task.status = TaskStatus::Running;
        task.attempt += 1;
        task.lease_epoch += 1;
        task.started_at = Some(now);
        task.updated_at = now;
        let expires_at = now.plus(self.config.lease_ttl);
        let deadline = task.timeout.map(|t| now.plus(t));
        entry.state = State::Running { expires_at };
        self.lease_expiries
            .insert((expires_at, task.id, task.lease_epoch));
        if let Some(d) = deadline {
            self.deadlines.insert((d, task.id, task.lease_epoch));
        }
        Some(Lease {
            task: task.clone(),
            epoch: task.lease_epoch,
            expires_at,
            write: TaskWrite {
                task: task.clone(),
                expected_epoch: Some(expected),
            },
        })
    }

    /// Extends a live lease; returns the new expiry.
    pub fn heartbeat(
        &mut self,
        id: &TaskId,
        epoch: u64,
        now: Timestamp,
    ) -> Result<Timestamp, SchedulerError> {
        let ttl = self.config.lease_ttl;
        let entry = self.running_entry(id, epoch)?;
        let expires_at = now.plus(ttl);
        if let State::Running { expires_at: e, .. } = &mut entry.state {
            *e = expires_at;
        }
        self.lease_expiries.insert((expires_at, *id, epoch));
        Ok(expires_at)
    }

    /// Refuses changes to a task that just finished (its final write may still be in flight).
    fn ensure_not_finished(&self, id: &TaskId) -> Result<(), SchedulerError> {
        match self.finished.get(id) {
            Some(t) => Err(SchedulerError::AlreadyFinished {
                id: *id,
                status: t.status,
            }),
            None => Ok(()),
        }
    }

    fn running_entry(&mut self, id: &TaskId, epoch: u64) -> Result<&mut Entry, SchedulerError> {
        self.ensure_not_finished(id)?;
        let entry = self
            .active
            .get_mut(id)
            .ok_or(SchedulerError::UnknownTask(*id))?;
        let current = entry.task.lease_epoch;
        if epoch != current || !matches!(entry.state, State::Running { .. }) {
            return Err(SchedulerError::StaleLease {
                id: *id,
                presented: epoch,
                current,
            });
        }
        Ok(entry)
    }

    /// Records how an attempt ended. Refused unless `epoch` is the task's live lease.
    pub fn complete(
        &mut self,
        id: &TaskId,
        epoch: u64,
        completion: Completion,
        now: Timestamp,
    ) -> Result<Changes, SchedulerError> {
        if !matches!(
            completion.status,
            TaskStatus::Completed | TaskStatus::Failed
        ) {
            return Err(SchedulerError::InvalidCompletion(completion.status));
        }
        self.running_entry(id, epoch)?;
        let reason_text = completion.reason.unwrap_or_else(|| {
            if completion.status == TaskStatus::Failed {
                reason::AGENT_FAILED.to_owned()
            } else {
                String::new()
            }
        });
        let Some(mut entry) = self.active.remove(id) else {
            return Err(SchedulerError::UnknownTask(*id));
        };
        self.stats.running -= 1;
        entry.task.result = completion.result;
        Ok(self.finish(
            entry.task,
            completion.status,
            &reason_text,
            Some(epoch),
            now,
        ))
    }

    /// Cancels a task that has not finished (FR-SCHED-4). A running attempt is
    /// also returned as a [`KillOrder`].
    pub fn cancel(&mut self, id: &TaskId, now: Timestamp) -> Result<Changes, SchedulerError> {
        self.ensure_not_finished(id)?;
        let entry = self
            .active
            .remove(id)
            .ok_or(SchedulerError::UnknownTask(*id))?;
        let mut kills = Vec::new();
        let expected = match entry.state {
            State::Running { .. } => {
                self.stats.running -= 1;
                kills.push(KillOrder {
                    task_id: *id,
                    agent_id: entry.task.agent_id.clone(),
                    epoch: entry.task.lease_epoch,
                    reason: reason::CANCELED,
                });
                Some(entry.task.lease_epoch)
            }
            State::Queued { .. } => {
                self.stats.queued -= 1;
                self.unwait(&entry.task.agent_id);
                None
            }
            State::Pending { .. } => {
                self.stats.pending -= 1;
                self.unwait(&entry.task.agent_id);
                None
            }
        };
        let mut changes = self.finish(
            entry.task,
            TaskStatus::Canceled,
            reason::CANCELED,
            expected,
            now,
        );
        changes.kills.extend(kills);
        Ok(changes)
    }

    fn unwait(&mut self, agent: &AgentId) {
        if let Some(q) = self.agents.get_mut(agent) {
            q.waiting = q.waiting.saturating_sub(1);
        }
    }

    /// Expires leases and enforces timeouts up to `now`.
    pub fn tick(&mut self, now: Timestamp) -> Changes {
        let mut changes = Changes::default();
        while let Some(&(at, id, epoch)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            if !self.is_live_attempt(&id, epoch) {
                continue;
            }
            if let Some(entry) = self.active.remove(&id) {
                self.stats.running -= 1;
                changes.kills.push(KillOrder {
                    task_id: id,
                    agent_id: entry.task.agent_id.clone(),
                    epoch,
                    reason: reason::TIMED_OUT,
                });
                let c = self.finish(
                    entry.task,
                    TaskStatus::TimedOut,
                    reason::TIMED_OUT,
                    Some(epoch),
                    now,
                );
                changes.extend(c);
            }
        }
        while let Some(&(at, id, epoch)) = self.lease_expiries.first() {
            if at > now {
                break;
            }
            self.lease_expiries.pop_first();
            let expired = matches!(
                self.active.get(&id).map(Box::as_ref),
                Some(Entry { task, state: State::Running { expires_at, .. } })
                    if task.lease_epoch == epoch && *expires_at <= now
            );
            if expired {
                changes.extend(self.expire_lease(&id, epoch, reason::LEASE_EXPIRED, now));
            }
        }
        changes
    }

    fn is_live_attempt(&self, id: &TaskId, epoch: u64) -> bool {
        matches!(self.active.get(id).map(Box::as_ref), Some(Entry { task, state: State::Running { .. } }) if task.lease_epoch == epoch)
    }

    /// Ends a running attempt whose agent is gone (it died, or was stopped
    /// past its drain timeout) without waiting for the lease to expire: the
    /// task goes back to its queue, or fails with `why` when it has no
    /// attempts left. `why` is recorded as the task's reason either way.
    pub fn abandon(
        &mut self,
        id: &TaskId,
        epoch: u64,
        why: &str,
        now: Timestamp,
    ) -> Result<Changes, SchedulerError> {
        self.running_entry(id, epoch)?;
        Ok(self.expire_lease(id, epoch, why, now))
    }

    /// Drops a running attempt whose lease the store refused to record: the
    /// stored task is no longer what this scheduler holds (another writer
    /// changed it), so it must neither be handed out nor written from here.
    /// Returns whether the attempt was live. Tasks pending on it stay pending
    /// here; the store's view wins at the next restart.
    pub fn disown(&mut self, id: &TaskId, epoch: u64) -> bool {
        if !self.is_live_attempt(id, epoch) {
            return false;
        }
        // Its lease expiry and deadline entries go stale and are skipped.
        if self.active.remove(id).is_some() {
            self.stats.running -= 1;
        }
        true
    }

    /// Running attempts `(task, epoch)` of one agent.
    pub fn running_of(&self, agent: &AgentId) -> Vec<(TaskId, u64)> {
        self.active
            .values()
            .filter(|e| matches!(e.state, State::Running { .. }) && &e.task.agent_id == agent)
            .map(|e| (e.task.id, e.task.lease_epoch))
            .collect()
    }

    fn expire_lease(&mut self, id: &TaskId, epoch: u64, why: &str, now: Timestamp) -> Changes {
        let Some(mut entry) = self.active.remove(id) else {
            return Changes::default();
        };
        self.stats.running -= 1;
        if entry.task.attempt >= entry.task.max_attempts {
            return self.finish(entry.task, TaskStatus::Failed, why, Some(epoch), now);
        }
        let task = &mut entry.task;
        task.status = TaskStatus::Queued;
        task.reason = Some(why.to_owned());
        task.updated_at = now;
        let mut changes = Changes::default();
        changes.writes.push(TaskWrite {
            task: task.clone(),
            expected_epoch: Some(epoch),
        });
        changes.woken.push(task.agent_id.clone());
        if let Some(q) = self.agents.get_mut(&entry.task.agent_id) {
            q.waiting += 1;
        }
        self.enqueue(entry.task, now, true);
        changes
    }

    /// Drops a finished task once its final write has committed.
    pub fn forget(&mut self, id: &TaskId) {
        self.finished.remove(id);
    }

    /// Sets a task's terminal status, then settles everything that depended on it.
    fn finish(
        &mut self,
        mut task: Task,
        status: TaskStatus,
        why: &str,
        expected_epoch: Option<u64>,
        now: Timestamp,
    ) -> Changes {
        let mut changes = Changes::default();
        self.finish_detached(&mut task, status, why, now);
        changes.writes.push(TaskWrite {
            task: task.clone(),
            expected_epoch,
        });
        let settled = vec![(task.id, status)];
        self.finished.insert(task.id, task);
        self.settle_dependents(settled, now, &mut changes);
        changes
    }

    /// A task the scheduler never held (one that was awaiting an approval)
    /// ended with `status`: its dependents go on (or fail) as if it had
    /// finished here.
    pub fn settle(&mut self, id: TaskId, status: TaskStatus, now: Timestamp) -> Changes {
        let mut changes = Changes::default();
        self.settle_dependents(vec![(id, status)], now, &mut changes);
        changes
    }

    /// Settles the dependents of finished tasks breadth-first; a failure
    /// cascades down the chain.
    fn settle_dependents(
        &mut self,
        mut settled: Vec<(TaskId, TaskStatus)>,
        now: Timestamp,
        changes: &mut Changes,
    ) {
        while let Some((done_id, done_status)) = settled.pop() {
            for waiter in self.dependents.remove(&done_id).unwrap_or_default() {
                let Some(entry) = self.active.get_mut(&waiter) else {
                    continue;
                };
                let State::Pending { waiting_on } = &mut entry.state else {
                    continue;
                };
                if done_status == TaskStatus::Completed {
                    *waiting_on -= 1;
                    if *waiting_on == 0 {
                        let Some(mut entry) = self.active.remove(&waiter) else {
                            continue;
                        };
                        self.stats.pending -= 1;
                        entry.task.status = TaskStatus::Queued;
                        entry.task.updated_at = now;
                        changes.writes.push(TaskWrite {
                            task: entry.task.clone(),
                            expected_epoch: None,
                        });
                        changes.woken.push(entry.task.agent_id.clone());
                        self.enqueue(entry.task, now, false);
                    }
                } else {
                    let Some(mut entry) = self.active.remove(&waiter) else {
                        continue;
                    };
                    self.stats.pending -= 1;
                    self.unwait(&entry.task.agent_id);
                    self.finish_detached(
                        &mut entry.task,
                        TaskStatus::Failed,
                        reason::DEPENDENCY_FAILED,
                        now,
                    );
                    entry.task.result = Some(TaskResult {
                        error: Some(format!("dependency {done_id} ended {done_status}")),
                        ..Default::default()
                    });
                    changes.writes.push(TaskWrite {
                        task: entry.task.clone(),
                        expected_epoch: None,
                    });
                    settled.push((waiter, TaskStatus::Failed));
                    self.finished.insert(waiter, entry.task);
                }
            }
        }
    }

    fn finish_detached(&self, task: &mut Task, status: TaskStatus, why: &str, now: Timestamp) {
        task.status = status;
        task.reason = (!why.is_empty()).then(|| why.to_owned());
        task.finished_at = Some(now);
        task.updated_at = now;
    }
}
