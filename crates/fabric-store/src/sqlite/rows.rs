//! Records to and from rows: queried fields as columns, the whole record as JSON.

use std::fmt::Display;
use std::sync::LazyLock;

use fabric_core::agent::{AgentRecord, AgentSession};
use fabric_core::{Task, TaskEvent, TaskStatus};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::SqliteStoreError;

/// A task ready to insert or update: the columns plus the JSON body. Encoded on
/// the caller's thread so the single writer thread spends its time in SQLite.
#[derive(Debug)]
pub(crate) struct TaskRow {
    pub id: String,
    pub tenant: String,
    pub agent_id: String,
    pub status: &'static str,
    pub idempotency_key: Option<String>,
    pub lease_epoch: i64,
    pub created_ms: i64,
    pub traceparent: Option<String>,
    pub body: String,
}

impl TaskRow {
    pub fn encode(task: &Task) -> Result<Self, SqliteStoreError> {
        Ok(Self {
            id: task.id.to_string(),
            tenant: task.tenant.to_string(),
            agent_id: task.agent_id.to_string(),
            status: task.status.as_str(),
            idempotency_key: task.idempotency_key.clone(),
            lease_epoch: to_i64("lease_epoch", task.lease_epoch)?,
            created_ms: task.created_at.as_millis(),
            traceparent: task.traceparent.clone(),
            body: encode_json(|| format!("task {}", task.id), task)?,
        })
    }
}

/// An event ready to insert.
#[derive(Debug)]
pub(crate) struct EventRow {
    pub seq: i64,
    pub task_id: String,
    pub body: String,
}

impl EventRow {
    pub fn encode(event: &TaskEvent) -> Result<Self, SqliteStoreError> {
        Ok(Self {
            seq: to_i64("event seq", event.seq)?,
            task_id: event.task_id.to_string(),
            body: encode_json(|| format!("event {}", event.seq), event)?,
        })
    }
}

/// An agent record ready to insert or replace; keyed by `config.id`.
#[derive(Debug)]
pub(crate) struct AgentRow {
    pub id: String,
    pub body: String,
}

impl AgentRow {
    pub fn encode(record: &AgentRecord) -> Result<Self, SqliteStoreError> {
        let id = record.config.id.to_string();
        let body = encode_json(|| format!("agent {id}"), record)?;
        Ok(Self { id, body })
    }
}

/// An agent session ready to insert or replace; keyed by `(agent_id, session)`.
#[derive(Debug)]
pub(crate) struct SessionRow {
    pub agent_id: String,
    pub session: i64,
    pub body: String,
}

impl SessionRow {
    pub fn encode(session: &AgentSession) -> Result<Self, SqliteStoreError> {
        Ok(Self {
            agent_id: session.agent_id.to_string(),
            session: i64::from(session.session),
            body: encode_json(
                || format!("agent {} session {}", session.agent_id, session.session),
                session,
            )?,
        })
    }
}

/// SQLite integers are signed; refuse rather than wrap, since seq order matters.
pub(crate) fn to_i64(what: &'static str, value: u64) -> Result<i64, SqliteStoreError> {
    i64::try_from(value).map_err(|_| SqliteStoreError::OutOfRange { what, value })
}

pub(crate) fn encode_json<T: Serialize, W: Display>(
    what: impl FnOnce() -> W,
    value: &T,
) -> Result<String, SqliteStoreError> {
    serde_json::to_string(value).map_err(|source| SqliteStoreError::Encode {
        what: what().to_string(),
        source,
    })
}

pub(crate) fn decode_json<T: DeserializeOwned, W: Display>(
    what: impl FnOnce() -> W,
    body: &str,
) -> Result<T, SqliteStoreError> {
    serde_json::from_str(body).map_err(|e| SqliteStoreError::Corrupt {
        what: format!("stored {} does not decode", what()),
        detail: e.to_string(),
    })
}

/// `'completed','failed',...`: status literals for `IN (...)`, derived from
/// [`TaskStatus::is_terminal`] so the store never keeps its own copy of the rule.
fn status_list(terminal: bool) -> String {
    TaskStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal() == terminal)
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Replaces a task unless it is terminal or (when `?9` is not null) has another epoch.
pub(crate) static FENCED_UPDATE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE tasks SET tenant = ?2, agent_id = ?3, status = ?4, idempotency_key = ?5,
             lease_epoch = ?6, created_ms = ?7, body = ?8
         WHERE id = ?1 AND status NOT IN ({}) AND (?9 IS NULL OR lease_epoch = ?9)",
        status_list(true)
    )
});

/// Every task not yet terminal, oldest first. Written as `status IN` so the
/// `(status, id)` index serves it.
pub(crate) static UNFINISHED_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id, body FROM tasks WHERE status IN ({}) ORDER BY id",
        status_list(false)
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lists_partition_every_status() {
        assert_eq!(
            status_list(false),
            "'awaiting_approval','pending','queued','running'"
        );
        assert_eq!(
            status_list(true),
            "'completed','failed','canceled','timed_out'"
        );
    }

    #[test]
    fn oversized_integers_are_refused_not_wrapped() {
        let err = to_i64("event seq", u64::MAX).unwrap_err();
        assert!(
            err.to_string()
                .contains("event seq 18446744073709551615 is too large"),
            "{err}"
        );
    }

    #[test]
    fn bad_json_is_corruption() {
        let err = decode_json::<Task, _>(|| "task x", "{not json").unwrap_err();
        assert!(matches!(err, SqliteStoreError::Corrupt { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("stored task x does not decode"),
            "{err}"
        );
    }
}
