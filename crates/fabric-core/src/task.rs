//! The task model (REQUIREMENTS §4): what a task asks for, where it is in its life, what it produced.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, TaskId, TenantId};
use crate::time::{Timestamp, opt_duration_ms};

/// Scheduling priority. Higher priorities lease first; aging keeps `low` from starving.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical,
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// 0 for `critical` up to 3 for `low`.
    pub fn rank(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("invalid priority {s:?}: use one of critical, high, normal, low")
            })
    }
}

/// Where a task is in its life. Terminal statuses never change again.
/// Ordered as declared (a life's order), for maps keyed by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Created, but a policy asks an approver first (`task:create:<agent>`
    /// with `require_approval`): held outside the scheduler until the
    /// approval is granted (then `pending` or `queued`), denied or timed out
    /// (`failed`, reason `policy_denied`).
    AwaitingApproval,
    /// Waiting for its dependencies to complete.
    Pending,
    /// Ready, waiting for its agent to lease it.
    Queued,
    /// Leased by an agent.
    Running,
    Completed,
    Failed,
    Canceled,
    TimedOut,
}

/// A status change that the task life cycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("task cannot go from {from} to {to}")]
pub struct IllegalTransition {
    pub from: TaskStatus,
    pub to: TaskStatus,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 8] = [
        TaskStatus::AwaitingApproval,
        TaskStatus::Pending,
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Canceled,
        TaskStatus::TimedOut,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Canceled | Self::TimedOut
        )
    }

    /// The one place the life cycle is written down:
    ///
    /// ```text
    /// awaiting_approval ──► pending | queued   (approved)
    ///         └──► failed | canceled           (denied or timed out | canceled)
    /// pending ──► queued ──► running ──► completed | failed | canceled | timed_out
    ///    │           │          │
    ///    │           │          └──► queued       (lease lost, attempts left: retry)
    ///    │           └──► canceled | failed       (canceled, or its agent went away)
    ///    └──► queued | failed | canceled          (deps done | a dep failed | canceled)
    /// ```
    pub fn can_become(self, next: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, next),
            (AwaitingApproval, Pending | Queued | Failed | Canceled)
                | (Pending, Queued | Failed | Canceled)
                | (Queued, Running | Canceled | Failed)
                | (Running, Completed | Failed | Canceled | TimedOut | Queued)
        )
    }

    /// `next` if the life cycle allows it.
    pub fn transition(self, next: TaskStatus) -> Result<TaskStatus, IllegalTransition> {
        if self.can_become(next) {
            Ok(next)
        } else {
            Err(IllegalTransition {
                from: self,
                to: next,
            })
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingApproval => "awaiting_approval",
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::TimedOut => "timed_out",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| {
            format!(
                "invalid status {s:?}: use one of awaiting_approval, pending, queued, running, completed, failed, canceled, timed_out"
            )
        })
    }
}

/// Machine-readable reasons a task ended the way it did (`Task::reason`).
pub mod reason {
    /// A dependency failed, was canceled or timed out.
    pub const DEPENDENCY_FAILED: &str = "dependency_failed";
    /// The agent stopped renewing its lease and no attempts were left.
    pub const LEASE_EXPIRED: &str = "lease_expired";
    /// The task ran longer than its timeout.
    pub const TIMED_OUT: &str = "timed_out";
    /// A user canceled it.
    pub const CANCELED: &str = "canceled";
    /// The agent reported a failure (non-zero exit, error).
    pub const AGENT_FAILED: &str = "agent_failed";
    /// The agent could not start the work (bad command, missing binary).
    pub const SPAWN_FAILED: &str = "spawn_failed";
    /// The out-of-memory killer struck in the agent's sandbox.
    pub const OOM_KILLED: &str = "oom_killed";
    /// The agent's task directories went past its disk quota (`isolation.disk_mb`).
    pub const DISK_QUOTA_EXCEEDED: &str = "disk_quota_exceeded";
    /// The process used up its CPU-time limit (SIGXCPU).
    pub const CPU_TIME_EXCEEDED: &str = "cpu_time_exceeded";
    /// The agent was terminated and did not finish the task within its drain timeout.
    pub const DRAIN_TIMEOUT: &str = "drain_timeout";
    /// Prefix of `crashed (signal N)` / `crashed (exit N)`: the agent died mid-task.
    pub const CRASHED: &str = "crashed";
    /// A policy denied one of the task's actions (a command, a file write),
    /// or its approval was denied or timed out.
    pub const POLICY_DENIED: &str = "policy_denied";
}

/// A file the task brings along; written into the task's working directory before it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskFile {
    /// Relative path inside the working directory (no `..`, not absolute).
    pub path: String,
    pub content: String,
}

/// What the task asks its agent to do.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskInput {
    /// Free text. The `shell` agent runs it as one shell command when `commands` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Shell commands, run in order; the first failure stops the task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<TaskFile>,
    /// Extra environment. `FABRIC_*` keys are reserved for the fabric and rejected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// What a finished task produced.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// True when `stdout` was cut at the agent's output limit.
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    /// Structured output, for agents that produce more than text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub output: Option<serde_json::Value>,
    /// Human-readable error, when the task failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A unit of work for one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Task {
    pub id: TaskId,
    pub tenant: TenantId,
    /// The user who created it.
    pub owner: String,
    pub agent_id: AgentId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub priority: Priority,
    pub input: TaskInput,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<TaskId>,
    /// Longest one attempt may run (from lease to completion).
    #[serde(
        default,
        rename = "timeout_ms",
        with = "opt_duration_ms",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub timeout: Option<Duration>,
    pub max_attempts: u32,
    /// Leases granted so far (1 on the first run).
    pub attempt: u32,
    /// Fencing token of the latest lease; a completion carrying an older one is rejected.
    pub lease_epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub status: TaskStatus,
    /// Why the task is in its status (see [`reason`]), for failures and cancellations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// W3C trace context of the request that created the task (its
    /// `traceparent`), so that its scheduling, leases and execution join that
    /// trace (FR-TEL traces). Absent when the task was created untraced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The approval its creation waits (or waited) for, when a policy asked
    /// for one (status `awaiting_approval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub approval_id: Option<uuid::Uuid>,
}

impl Task {
    /// Attempts a task gets unless its creator says otherwise.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

    /// A task as created at `now`: a new id, normal priority, no dependencies
    /// or timeout, `queued`, not yet attempted. Set other fields after.
    pub fn new(
        tenant: TenantId,
        owner: impl Into<String>,
        agent_id: AgentId,
        input: TaskInput,
        now: Timestamp,
    ) -> Self {
        Self {
            id: TaskId::new(),
            tenant,
            owner: owner.into(),
            agent_id,
            name: None,
            priority: Priority::Normal,
            input,
            depends_on: Vec::new(),
            timeout: None,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            attempt: 0,
            lease_epoch: 0,
            idempotency_key: None,
            status: TaskStatus::Queued,
            reason: None,
            result: None,
            created_at: now,
            updated_at: now,
            approval_id: None,
            started_at: None,
            finished_at: None,
            traceparent: None,
        }
    }
}

/// The kinds of message in a task's event stream (and the WebSocket stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Log,
    Status,
    Result,
    Error,
    Heartbeat,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Status => "status",
            Self::Result => "result",
            Self::Error => "error",
            Self::Heartbeat => "heartbeat",
        }
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Log,
            Self::Status,
            Self::Result,
            Self::Error,
            Self::Heartbeat,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| format!("invalid event kind {s:?}"))
    }
}

/// One entry of a task's history: a log line, a status change, its result or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskEvent {
    pub task_id: TaskId,
    /// Increases across all events of the fabric; orders and de-duplicates a stream.
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub ts: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_statuses_never_change() {
        for from in TaskStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in TaskStatus::ALL {
                assert!(
                    from.transition(to).is_err(),
                    "{from} -> {to} must be illegal"
                );
            }
        }
    }

    #[test]
    fn life_cycle_allows_the_documented_paths() {
        use TaskStatus::*;
        for (from, to) in [
            (Pending, Queued),
            (Queued, Running),
            (Running, Completed),
            (Running, Queued),
        ] {
            assert_eq!(from.transition(to), Ok(to));
        }
        assert!(Pending.transition(Running).is_err());
        assert!(Queued.transition(Completed).is_err());
        assert_eq!(
            Queued.transition(TimedOut).unwrap_err().to_string(),
            "task cannot go from queued to timed_out"
        );
    }

    #[test]
    fn priorities_parse_and_order() {
        assert_eq!("HIGH".parse::<Priority>(), Ok(Priority::High));
        assert!(
            "urgent"
                .parse::<Priority>()
                .unwrap_err()
                .contains("critical, high, normal, low")
        );
        assert!(Priority::Critical < Priority::Low);
        assert_eq!(
            serde_json::to_string(&TaskStatus::TimedOut).unwrap(),
            "\"timed_out\""
        );
    }
}
