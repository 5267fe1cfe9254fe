//! Task creation that a policy gates on an approval (`task:create:<agent>`
//! with `require_approval`). The task is stored `awaiting_approval` with its
//! `approval_id` and held outside the scheduler (its dependents wait for it
//! like for any unfinished dependency). Approved, it is admitted as a new
//! task would have been (`pending` or `queued`); denied or timed out, it
//! fails with reason `policy_denied`; canceled meanwhile, it is `canceled`.
//! A restart finds it in the store and waits for the same approval again.

use std::sync::Arc;
use std::time::Duration;

use fabric_core::policy::{Approval, ApprovalStatus};
use fabric_core::{CreateOutcome, Task, TaskResult, TaskStatus, TaskStore, TaskWrite, reason};

use super::{TaskError, TaskService, status_event};
use crate::services::policy::{Actor, Decision};

/// How long one wait for a decision lasts before the watcher looks again
/// (the approval's own timeout decides it in the end).
const DECISION_POLL: Duration = Duration::from_secs(60);

impl TaskService {
    /// Stores `task` awaiting an approval of `decision` and starts waiting
    /// for the approver. Answers the stored task (or an idempotent replay's).
    pub(super) async fn hold_for_approval(
        self: &Arc<Self>,
        mut task: Task,
        actor: &Actor,
        decision: &Decision,
    ) -> Result<(Task, bool), TaskError> {
        let action = format!("task:create:{}", task.agent_id);
        let approval = self
            .policy
            .request_approval(
                actor,
                &action,
                None,
                decision,
                &crate::request_id::current(),
            )
            .await?;
        task.status = TaskStatus::AwaitingApproval;
        task.approval_id = Some(approval.id);
        let task = match self.store.create_task(task).await? {
            CreateOutcome::Created(task) => task,
            CreateOutcome::Existing(existing) => {
                let current = self.sched.lock().get(&existing.id).cloned();
                return Ok((current.unwrap_or(existing), false));
            }
        };
        let (kind, payload) = status_event(&task);
        self.events.emit(task.id, kind, task.updated_at, payload);
        self.observe(&task);
        tracing::info!(task_id = %task.id, approval_id = %approval.id, action, "task awaits an approval");
        self.resume_awaiting(&task);
        Ok((task, true))
    }

    /// Holds a stored `awaiting_approval` task and waits for its approval.
    pub(super) fn resume_awaiting(self: &Arc<Self>, task: &Task) {
        let Some(approval) = task.approval_id else {
            tracing::error!(task_id = %task.id, "a task awaiting approval has no approval id; cancel it and create it again");
            return;
        };
        self.awaiting.lock().insert(task.id);
        let (service, id, tenant) = (Arc::downgrade(self), task.id, task.tenant.clone());
        tokio::spawn(async move {
            loop {
                let Some(tasks) = service.upgrade() else {
                    return;
                };
                match tasks
                    .policy
                    .wait_approval(&tenant, approval, DECISION_POLL)
                    .await
                {
                    Ok(decided) if decided.status == ApprovalStatus::Pending => {}
                    Ok(decided) => {
                        tasks.approval_decided(id, decided).await;
                        return;
                    }
                    Err(e) => {
                        tracing::error!(task_id = %id, approval_id = %approval, error = %e, "cannot follow the approval of a task; cancel it and create it again");
                        return;
                    }
                }
            }
        });
    }

    /// Admits an approved task; fails a denied or expired one.
    async fn approval_decided(&self, id: fabric_core::TaskId, approval: Approval) {
        if !self.awaiting.lock().remove(&id) {
            return; // canceled meanwhile
        }
        let task = match self.store.get_task(id).await {
            Ok(Some(task)) if task.status == TaskStatus::AwaitingApproval => task,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(task_id = %id, error = %e, "cannot read a task whose approval was decided; it stays awaiting_approval until the next start");
                return;
            }
        };
        let outcome = if approval.status == ApprovalStatus::Approved {
            self.admit_approved(task.clone()).await
        } else {
            let by = approval.decided_by.as_deref().unwrap_or("nobody");
            let error = format!(
                "creating it needed an approval ({} rule {} of policy {:?}), which was {} by {by}; ask an approver and create it again",
                approval.id, approval.rule, approval.policy_id, approval.status
            );
            self.end_unadmitted(task, TaskStatus::Failed, reason::POLICY_DENIED, Some(error))
                .await
                .map(drop)
        };
        if let Err(e) = outcome {
            tracing::error!(task_id = %id, error = %e, "cannot settle a task after its approval");
        }
    }

    /// Takes a queue slot and hands the approved task to the scheduler; a
    /// full queue or a vanished agent fails it.
    async fn admit_approved(&self, task: Task) -> Result<(), TaskError> {
        let reservation = self.sched.lock().reserve(&task.agent_id);
        match reservation {
            Ok(reservation) => self.admit(task, reservation).await.map(drop),
            Err(e) => {
                let error = format!("approved, but cannot be queued: {e}");
                self.end_unadmitted(task, TaskStatus::Failed, reason::AGENT_FAILED, Some(error))
                    .await
                    .map(drop)
            }
        }
    }

    /// Ends a task the scheduler never held (`canceled`, or `failed` after a
    /// refusal), stores it and settles whatever depended on it.
    pub(super) async fn end_unadmitted(
        &self,
        mut task: Task,
        status: TaskStatus,
        why: &str,
        error: Option<String>,
    ) -> Result<Task, TaskError> {
        let now = self.clock.now();
        task.status = status;
        task.reason = Some(why.to_owned());
        task.result = error.map(|error| TaskResult {
            error: Some(error),
            ..TaskResult::default()
        });
        task.finished_at = Some(now);
        task.updated_at = now;
        let write = TaskWrite {
            task: task.clone(),
            expected_epoch: None,
        };
        let (kind, payload) = status_event(&task);
        self.events.emit(task.id, kind, now, payload);
        self.observe(&task);
        self.store.write_task(write).await?;
        let commits = {
            let mut sched = self.sched.lock();
            let changes = sched.settle(task.id, status, now);
            self.apply(&mut sched, changes)
        };
        self.await_commits(commits).await?;
        Ok(task)
    }
}
