//! A task's `task.lease` and `task.execute` spans, derived from the
//! scheduler's decisions rather than recorded inside `TaskService`.
//!
//! [`TaskSpans`] observes every task version the scheduler writes — the
//! `Changes::writes` of each decision and the write of each lease, in commit
//! order — and keeps the open `task.execute` span of each running attempt:
//!
//! ```text
//! write of a running task (only a lease writes one)
//!     → task.lease (queued → leased; child of the task's traceparent), recorded
//!     → task.execute opened (child of task.lease); agents get its traceparent
//! any later write of the task (requeued, completed, failed, timed out, canceled)
//!     → task.execute ended with task.status (an error unless completed/canceled)
//! a lease the store refused → its task.execute is dropped, never recorded
//! ```
//!
//! `task.schedule` stays where the request is (`TaskService::create`): it
//! spans the durable insert before the scheduler hears of the task.

use std::collections::HashMap;

use fabric_core::{Task, TaskId, TaskStatus, TaskWrite};
use parking_lot::Mutex;

use crate::trace::{Span, SpanContext, SpanKind, Tracer, now_nanos};

/// The task spans of one server; a no-op with tracing off.
#[derive(Debug)]
pub struct TaskSpans {
    tracer: Tracer,
    /// The open `task.execute` span of each running attempt.
    open: Mutex<HashMap<TaskId, Span>>,
}

impl TaskSpans {
    pub fn new(tracer: Tracer) -> Self {
        Self {
            tracer,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Observes the task versions of one scheduler decision, in commit order.
    pub fn observe<'a>(&self, writes: impl IntoIterator<Item = &'a TaskWrite>) {
        if !self.tracer.enabled() {
            return;
        }
        for write in writes {
            let task = &write.task;
            if task.status == TaskStatus::Running {
                self.leased(task);
            } else {
                self.ended(task);
            }
        }
    }

    /// A lease: `task.lease` (queued → leased) and the opening of `task.execute`.
    fn leased(&self, task: &Task) {
        let parent = task.traceparent.as_deref().and_then(SpanContext::parse);
        let now_nanos = now_nanos();
        // The first attempt waited since creation; a retry's requeue time is
        // not kept, so its lease span marks the moment only. (A lease sets
        // `updated_at` to the moment of the lease.)
        let waited = if task.attempt <= 1 {
            u64::try_from(task.updated_at.since(task.created_at).as_nanos()).unwrap_or(0)
        } else {
            0
        };
        let mut lease = Span::new(
            "task.lease",
            SpanKind::Internal,
            parent.as_ref(),
            now_nanos.saturating_sub(waited),
        )
        .attr("task_id", task.id.to_string())
        .attr("agent_id", task.agent_id.as_str())
        .attr("attempt", u64::from(task.attempt));
        lease.end_nanos = now_nanos;
        let exec = Span::new(
            "task.execute",
            SpanKind::Internal,
            Some(&lease.context),
            now_nanos,
        )
        .attr("task_id", task.id.to_string())
        .attr("agent_id", task.agent_id.as_str())
        .attr("attempt", u64::from(task.attempt));
        self.tracer.record(lease);
        self.open.lock().insert(task.id, exec);
    }

    /// The attempt in progress (if any) ended with the task's new status.
    fn ended(&self, task: &Task) {
        let ended = self.open.lock().remove(&task.id);
        if let Some(mut span) = ended {
            span.end_nanos = now_nanos();
            span = span.attr("task.status", task.status.as_str());
            if matches!(task.status, TaskStatus::Failed | TaskStatus::TimedOut)
                || task.status == TaskStatus::Queued
            {
                span.error = Some(
                    task.reason
                        .clone()
                        .unwrap_or_else(|| task.status.to_string()),
                );
            }
            self.tracer.record(span);
        }
    }

    /// The store refused the lease of `id`: the attempt never ran.
    pub fn discard(&self, id: &TaskId) {
        self.open.lock().remove(id);
    }

    /// The `traceparent` an agent running `task` should use: its
    /// `task.execute` span with tracing on, else the context the task was
    /// created in (passed through), if any.
    pub fn traceparent_of(&self, task: &Task) -> Option<String> {
        if let Some(span) = self.open.lock().get(&task.id) {
            return Some(span.context.traceparent());
        }
        task.traceparent.clone()
    }
}
