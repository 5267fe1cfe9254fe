//! The writer thread: the only owner of the read-write connection, committing
//! whatever is queued as one transaction (group commit).
//!
//! With `synchronous=FULL` every commit costs an fsync, which dominates the cost
//! of a write. Committing every queued op in one transaction spreads that fsync
//! over all of them: under load throughput grows with the queue instead of being
//! capped at one write per fsync, and an idle store still commits at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use fabric_core::{CreateOutcome, StoreError, Task, TaskId, TaskStatus, WriteOutcome};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::oneshot;

use super::Shared;
use super::budget::{delete_budget, put_budget};
use super::policy::{AuditRow, delete_policy, insert_audit, put_approval, put_policy};
use super::rows::{AgentRow, EventRow, FENCED_UPDATE_SQL, SessionRow, TaskRow, decode_json};
use super::usage::{UsageRow, insert_usage};
use crate::error::SqliteStoreError;

/// Most ops in one transaction. Bounds the time a batch holds replies back and
/// the size of the WAL growth per commit; far above what a 2-core box queues.
pub(crate) const MAX_BATCH: usize = 2048;

/// Where an op's result goes; dropped receivers (fire-and-forget) are fine.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What the store handles send to the writer thread.
pub(crate) enum Msg {
    Op(Box<WriteOp>),
    /// Commit what was queued before this, close the connection, then ack and exit.
    Close(oneshot::Sender<()>),
}

/// One write, with its arguments and where to send its result once committed.
#[expect(
    clippy::large_enum_variant,
    reason = "ops cross the channel boxed (`Msg::Op`); the batch is one reused Vec"
)]
pub(crate) enum WriteOp {
    CreateTask(Pending<(Task, TaskRow), CreateOutcome>),
    WriteTask(Pending<(TaskRow, Option<u64>), WriteOutcome>),
    AppendEvents(Pending<Vec<EventRow>, ()>),
    /// Finished tasks to delete with their events; answers the ids deleted.
    DeleteTasks(Pending<Vec<TaskId>, Vec<TaskId>>),
    /// Inserts (or, if `replace`, upserts) a user or tenant; `true` if written.
    PutNamed(Pending<NamedWrite, bool>),
    /// Deletes a user (with its tokens) or a tenant.
    DeleteNamed(Pending<(NamedTable, String), bool>),
    /// `(hash, user, body)`.
    PutToken(Pending<(String, String, String), ()>),
    /// `(hash, body)`: replaces a token only if it is still stored.
    UpdateToken(Pending<(String, String), bool>),
    DeleteToken(Pending<String, bool>),
    PutAgent(Pending<AgentRow, ()>),
    /// The agent's id; deletes its sessions too.
    DeleteAgent(Pending<String, bool>),
    PutSession(Pending<SessionRow, ()>),
    RecordUsage(Pending<UsageRow, ()>),
    /// `(entity, body)`.
    PutBudget(Pending<(String, String), ()>),
    /// The entity.
    DeleteBudget(Pending<String, bool>),
    /// `(id, body)`.
    PutPolicy(Pending<(String, String), ()>),
    DeletePolicy(Pending<String, bool>),
    /// `(id, status, body)`.
    PutApproval(Pending<(String, &'static str, String), ()>),
    RecordAudit(Pending<AuditRow, ()>),
}

/// An op's arguments until it runs, then its result until the commit settles it.
pub(crate) struct Pending<A, T> {
    args: Option<A>,
    result: Option<Result<T, StoreError>>,
    reply: Reply<T>,
}

impl<A, T> Pending<A, T> {
    pub fn new(args: A, reply: Reply<T>) -> Self {
        Self {
            args: Some(args),
            result: None,
            reply,
        }
    }

    /// Runs the op inside the open transaction. An `Err` is fatal for the whole
    /// batch (the transaction is gone); the op's own failures land in `result`.
    fn run(
        &mut self,
        conn: &Connection,
        savepoint: bool,
        op: impl FnOnce(&Connection, A) -> Result<T, SqliteStoreError>,
    ) -> Result<(), StoreError> {
        let Some(args) = self.args.take() else {
            return Ok(());
        };
        if savepoint {
            exec(conn, "SAVEPOINT op")?;
        }
        match op(conn, args) {
            Ok(value) => {
                if savepoint {
                    exec(conn, "RELEASE op")?;
                }
                self.result = Some(Ok(value));
            }
            Err(e) => {
                // SQLITE_FULL, IOERR and friends may roll back the whole
                // transaction; then the ops before this one are gone too.
                if conn.is_autocommit() {
                    return Err(StoreError::from(e));
                }
                if savepoint {
                    exec(conn, "ROLLBACK TO op")?;
                    exec(conn, "RELEASE op")?;
                }
                self.result = Some(Err(StoreError::from(e)));
            }
        }
        Ok(())
    }

    /// Sends the result: the op's own, unless the batch failed to commit.
    fn finish(self, batch_error: Option<&StoreError>) {
        let result = match (batch_error, self.result) {
            // The op failed on its own; that error is the more specific one.
            (_, Some(Err(own))) => Err(own),
            (Some(batch), _) => Err(batch.clone()),
            (None, Some(ok)) => ok,
            (None, None) => Err(StoreError::Backend(
                "the write was never executed; this is a bug in fabric-store".to_owned(),
            )),
        };
        // An error here only means the caller dropped its future: fire-and-forget.
        let _ = self.reply.send(result);
    }
}

impl WriteOp {
    fn run(&mut self, conn: &Connection) -> Result<(), StoreError> {
        // Single-statement ops need no savepoint: SQLite undoes a failed
        // statement by itself and keeps the transaction. Only a multi-row
        // append must be undone as a unit.
        match self {
            WriteOp::CreateTask(p) => {
                p.run(conn, false, |c, (task, row)| create_task(c, task, &row))
            }
            WriteOp::WriteTask(p) => {
                p.run(conn, false, |c, (row, epoch)| write_task(c, &row, epoch))
            }
            WriteOp::AppendEvents(p) => {
                let savepoint = p.args.as_ref().is_some_and(|rows| rows.len() > 1);
                p.run(conn, savepoint, |c, rows| append_events(c, &rows))
            }
            // A task goes with its events: undone as a unit.
            WriteOp::DeleteTasks(p) => p.run(conn, true, |c, ids| delete_tasks(c, &ids)),
            WriteOp::PutNamed(p) => p.run(conn, false, |c, write| put_named(c, &write)),
            // A user goes with its tokens: two statements, undone as a unit.
            WriteOp::DeleteNamed(p) => {
                let savepoint = p
                    .args
                    .as_ref()
                    .is_some_and(|(table, _)| *table == NamedTable::Users);
                p.run(conn, savepoint, |c, (table, name)| {
                    delete_named(c, table, &name)
                })
            }
            WriteOp::PutToken(p) => p.run(conn, false, |c, (hash, user, body)| {
                put_token(c, &hash, &user, &body)
            }),
            WriteOp::UpdateToken(p) => {
                p.run(conn, false, |c, (hash, body)| update_token(c, &hash, &body))
            }
            WriteOp::DeleteToken(p) => p.run(conn, false, |c, hash| delete_token(c, &hash)),
            WriteOp::PutAgent(p) => p.run(conn, false, |c, row| put_agent(c, &row)),
            // Two statements (sessions, then the record): undone as a unit.
            WriteOp::DeleteAgent(p) => p.run(conn, true, |c, id| delete_agent(c, &id)),
            WriteOp::PutSession(p) => p.run(conn, false, |c, row| put_session(c, &row)),
            WriteOp::RecordUsage(p) => p.run(conn, false, |c, row| insert_usage(c, &row)),
            WriteOp::PutBudget(p) => p.run(conn, false, |c, row| put_budget(c, &row)),
            WriteOp::DeleteBudget(p) => p.run(conn, false, |c, e| delete_budget(c, &e)),
            WriteOp::PutPolicy(p) => p.run(conn, false, |c, (id, body)| put_policy(c, &id, &body)),
            WriteOp::DeletePolicy(p) => p.run(conn, false, |c, id| delete_policy(c, &id)),
            WriteOp::PutApproval(p) => p.run(conn, false, |c, (id, status, body)| {
                put_approval(c, &id, status, &body)
            }),
            WriteOp::RecordAudit(p) => p.run(conn, false, |c, row| insert_audit(c, &row)),
        }
    }

    fn finish(self, batch_error: Option<&StoreError>) {
        match self {
            WriteOp::CreateTask(p) => p.finish(batch_error),
            WriteOp::WriteTask(p) => p.finish(batch_error),
            WriteOp::AppendEvents(p) => p.finish(batch_error),
            WriteOp::DeleteTasks(p) => p.finish(batch_error),
            WriteOp::PutNamed(p) => p.finish(batch_error),
            WriteOp::DeleteNamed(p) => p.finish(batch_error),
            WriteOp::PutToken(p) => p.finish(batch_error),
            WriteOp::UpdateToken(p) => p.finish(batch_error),
            WriteOp::DeleteToken(p) => p.finish(batch_error),
            WriteOp::PutAgent(p) => p.finish(batch_error),
            WriteOp::DeleteAgent(p) => p.finish(batch_error),
            WriteOp::PutSession(p) => p.finish(batch_error),
            WriteOp::RecordUsage(p) => p.finish(batch_error),
            WriteOp::PutBudget(p) => p.finish(batch_error),
            WriteOp::DeleteBudget(p) => p.finish(batch_error),
            WriteOp::PutPolicy(p) => p.finish(batch_error),
            WriteOp::DeletePolicy(p) => p.finish(batch_error),
            WriteOp::PutApproval(p) => p.finish(batch_error),
            WriteOp::RecordAudit(p) => p.finish(batch_error),
        }
    }
}

/// The writer thread's body. Returns when every handle is gone or on `Close`.
pub(crate) fn run(conn: Connection, rx: Receiver<Msg>, shared: Arc<Shared>) {
    let mut batch: Vec<WriteOp> = Vec::with_capacity(64);
    loop {
        // Block for the first op, then take whatever else is already queued.
        let mut close = match rx.recv() {
            Ok(Msg::Op(op)) => {
                batch.push(*op);
                None
            }
            Ok(Msg::Close(ack)) => Some(ack),
            // Every handle was dropped and the queue is drained.
            Err(_) => break,
        };
        while close.is_none() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Op(op)) => batch.push(*op),
                Ok(Msg::Close(ack)) => close = Some(ack),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if !batch.is_empty() {
            commit_batch(&conn, &mut batch, &shared);
        }
        if let Some(ack) = close {
            close_connection(conn);
            let _ = ack.send(());
            return;
        }
    }
    close_connection(conn);
}

fn close_connection(conn: Connection) {
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the store's write connection failed");
    }
}

/// Runs `batch` as one transaction and replies to every op after the commit.
fn commit_batch(conn: &Connection, batch: &mut Vec<WriteOp>, shared: &Shared) {
    let started = Instant::now();
    let ops = batch.len();
    let mut outcome = exec(conn, "BEGIN IMMEDIATE");
    if outcome.is_ok() {
        for op in batch.iter_mut() {
            outcome = op.run(conn);
            if outcome.is_err() {
                break;
            }
        }
    }
    if outcome.is_ok() {
        outcome = exec(conn, "COMMIT");
    }
    let batch_error = outcome.err();
    match &batch_error {
        None => {
            shared.transactions.fetch_add(1, Ordering::Relaxed);
            shared.ops.fetch_add(ops as u64, Ordering::Relaxed);
            tracing::trace!(
                ops,
                elapsed_us = started.elapsed().as_micros() as u64,
                "group commit"
            );
        }
        Some(e) => {
            tracing::error!(ops, error = %e, "store transaction failed; every write in it is reported failed");
            if !conn.is_autocommit()
                && let Err(e) = conn.execute_batch("ROLLBACK")
            {
                tracing::error!(error = %e, "rolling back the failed store transaction failed");
            }
        }
    }
    for op in batch.drain(..) {
        op.finish(batch_error.as_ref());
    }
}

/// Runs a statement that returns no rows, through the statement cache.
fn exec(conn: &Connection, sql: &'static str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(drop)
        .map_err(|e| SqliteStoreError::sql(format!("running {sql}"))(e).into())
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
}

fn create_task(
    conn: &Connection,
    task: Task,
    row: &TaskRow,
) -> Result<CreateOutcome, SqliteStoreError> {
    if let Some(key) = &row.idempotency_key {
        let existing: Option<String> = conn
            .prepare_cached("SELECT body FROM tasks WHERE tenant = ?1 AND idempotency_key = ?2")
            .and_then(|mut stmt| {
                stmt.query_row(params![row.tenant, key], |r| r.get(0))
                    .optional()
            })
            .map_err(SqliteStoreError::sql(format!(
                "looking up idempotency key {key:?}"
            )))?;
        if let Some(body) = existing {
            let stored = decode_json(|| format!("task with idempotency key {key:?}"), &body)?;
            return Ok(CreateOutcome::Existing(stored));
        }
    }
    conn.prepare_cached(
        "INSERT INTO tasks (id, tenant, agent_id, status, idempotency_key, lease_epoch, created_ms, body, traceparent)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            row.id,
            row.tenant,
            row.agent_id,
            row.status,
            row.idempotency_key,
            row.lease_epoch,
            row.created_ms,
            row.body,
            row.traceparent
        ])
    })
    .map_err(|e| {
        let context = if is_constraint(&e) {
            format!("cannot create task {}: a task with this id already exists", row.id)
        } else {
            format!("cannot insert task {}", row.id)
        };
        SqliteStoreError::sql(context)(e)
    })?;
    Ok(CreateOutcome::Created(task))
}

/// The guard (exists, not terminal, epoch matches) is part of the UPDATE itself,
/// so checking and writing cannot be separated.
fn write_task(
    conn: &Connection,
    row: &TaskRow,
    expected_epoch: Option<u64>,
) -> Result<WriteOutcome, SqliteStoreError> {
    let expected = match expected_epoch.map(i64::try_from) {
        None => None,
        Some(Ok(epoch)) => Some(epoch),
        // No stored epoch can be that large (see `to_i64`), so it cannot match.
        Some(Err(_)) => return Ok(WriteOutcome::Rejected),
    };
    let changed = conn
        .prepare_cached(&FENCED_UPDATE_SQL)
        .and_then(|mut stmt| {
            stmt.execute(params![
                row.id,
                row.tenant,
                row.agent_id,
                row.status,
                row.idempotency_key,
                row.lease_epoch,
                row.created_ms,
                row.body,
                expected
            ])
        })
        .map_err(|e| {
            let context = if is_constraint(&e) {
                format!(
                    "cannot update task {}: its idempotency key is taken by another task",
                    row.id
                )
            } else {
                format!("cannot update task {}", row.id)
            };
            SqliteStoreError::sql(context)(e)
        })?;
    Ok(if changed == 1 {
        WriteOutcome::Applied
    } else {
        WriteOutcome::Rejected
    })
}

fn append_events(conn: &Connection, rows: &[EventRow]) -> Result<(), SqliteStoreError> {
    let mut stmt = conn
        .prepare_cached("INSERT INTO events (seq, task_id, body) VALUES (?1, ?2, ?3)")
        .map_err(SqliteStoreError::sql("cannot prepare event insert"))?;
    for row in rows {
        stmt.execute(params![row.seq, row.task_id, row.body])
            .map_err(|e| {
                let context = if is_constraint(&e) {
                    format!(
                        "cannot append event {}: an event with this seq is already stored",
                        row.seq
                    )
                } else {
                    format!("cannot append event {}", row.seq)
                };
                SqliteStoreError::sql(context)(e)
            })?;
    }
    Ok(())
}

/// The tables of records kept whole under a unique name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NamedTable {
    Users,
    Tenants,
    /// Keyed `<tenant>/<server>`.
    McpServers,
    Nodes,
    /// Keyed by the token's public id.
    JoinTokens,
    /// The node config, under `config`.
    NodeSettings,
}

impl NamedTable {
    pub(crate) fn what(self) -> &'static str {
        match self {
            NamedTable::Users => "user",
            NamedTable::Tenants => "tenant",
            NamedTable::McpServers => "MCP server",
            NamedTable::Nodes => "node",
            NamedTable::JoinTokens => "join token",
            NamedTable::NodeSettings => "node setting",
        }
    }

    fn table(self) -> &'static str {
        match self {
            NamedTable::Users => "users",
            NamedTable::Tenants => "tenants",
            NamedTable::McpServers => "mcp_servers",
            NamedTable::Nodes => "nodes",
            NamedTable::JoinTokens => "node_join_tokens",
            NamedTable::NodeSettings => "node_settings",
        }
    }
}

/// A user or tenant record to store.
pub(crate) struct NamedWrite {
    pub table: NamedTable,
    pub name: String,
    pub body: String,
    /// Replace a stored record of that name (else leave it and answer `false`).
    pub replace: bool,
}

fn put_named(conn: &Connection, write: &NamedWrite) -> Result<bool, SqliteStoreError> {
    let table = write.table.table();
    let sql = if write.replace {
        format!(
            "INSERT INTO {table} (name, body) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET body = excluded.body"
        )
    } else {
        format!("INSERT INTO {table} (name, body) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING")
    };
    let written = conn
        .prepare_cached(&sql)
        .and_then(|mut stmt| stmt.execute(params![write.name, write.body]))
        .map_err(SqliteStoreError::sql(format!(
            "cannot store {} {:?}",
            write.table.what(),
            write.name
        )))?;
    Ok(written == 1)
}

fn delete_named(
    conn: &Connection,
    table: NamedTable,
    name: &str,
) -> Result<bool, SqliteStoreError> {
    let context = || format!("cannot delete {} {name:?}", table.what());
    if table == NamedTable::Users {
        // A user's tokens go with it.
        conn.prepare_cached("DELETE FROM tokens WHERE user = ?1")
            .and_then(|mut stmt| stmt.execute(params![name]))
            .map_err(SqliteStoreError::sql(context()))?;
    }
    let sql = format!("DELETE FROM {} WHERE name = ?1", table.table());
    let deleted = conn
        .prepare_cached(&sql)
        .and_then(|mut stmt| stmt.execute(params![name]))
        .map_err(SqliteStoreError::sql(context()))?;
    Ok(deleted > 0)
}

fn put_token(
    conn: &Connection,
    hash: &str,
    user: &str,
    body: &str,
) -> Result<(), SqliteStoreError> {
    conn.prepare_cached(
        "INSERT INTO tokens (hash, user, body) VALUES (?1, ?2, ?3)
         ON CONFLICT (hash) DO UPDATE SET user = excluded.user, body = excluded.body",
    )
    .and_then(|mut stmt| stmt.execute(params![hash, user, body]))
    .map_err(SqliteStoreError::sql("cannot store API token"))?;
    Ok(())
}

fn update_token(conn: &Connection, hash: &str, body: &str) -> Result<bool, SqliteStoreError> {
    let updated = conn
        .prepare_cached("UPDATE tokens SET body = ?2 WHERE hash = ?1")
        .and_then(|mut stmt| stmt.execute(params![hash, body]))
        .map_err(SqliteStoreError::sql("cannot update API token"))?;
    Ok(updated > 0)
}

fn delete_tasks(conn: &Connection, ids: &[TaskId]) -> Result<Vec<TaskId>, SqliteStoreError> {
    let terminal: Vec<&str> = TaskStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(TaskStatus::as_str)
        .collect();
    let placeholders = (0..terminal.len())
        .map(|i| format!("?{}", i + 2))
        .collect::<Vec<_>>()
        .join(", ");
    let delete_task = format!("DELETE FROM tasks WHERE id = ?1 AND status IN ({placeholders})");
    let mut deleted = Vec::new();
    for id in ids {
        let key = id.to_string();
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&key];
        args.extend(terminal.iter().map(|s| s as &dyn rusqlite::ToSql));
        let gone = conn
            .prepare_cached(&delete_task)
            .and_then(|mut stmt| stmt.execute(args.as_slice()))
            .map_err(SqliteStoreError::sql(format!("cannot delete task {id}")))?;
        if gone > 0 {
            conn.prepare_cached("DELETE FROM events WHERE task_id = ?1")
                .and_then(|mut stmt| stmt.execute(params![key]))
                .map_err(SqliteStoreError::sql(format!(
                    "cannot delete the events of task {id}"
                )))?;
            deleted.push(*id);
        }
    }
    Ok(deleted)
}

fn delete_token(conn: &Connection, hash: &str) -> Result<bool, SqliteStoreError> {
    let deleted = conn
        .prepare_cached("DELETE FROM tokens WHERE hash = ?1")
        .and_then(|mut stmt| stmt.execute(params![hash]))
        .map_err(SqliteStoreError::sql("cannot delete API token"))?;
    Ok(deleted > 0)
}

fn put_agent(conn: &Connection, row: &AgentRow) -> Result<(), SqliteStoreError> {
    conn.prepare_cached(
        "INSERT INTO agents (id, body) VALUES (?1, ?2)
         ON CONFLICT (id) DO UPDATE SET body = excluded.body",
    )
    .and_then(|mut stmt| stmt.execute(params![row.id, row.body]))
    .map_err(SqliteStoreError::sql(format!(
        "cannot store agent {}",
        row.id
    )))?;
    Ok(())
}

/// Removes the record and its sessions; the op's savepoint makes the two
/// statements one, so a failure leaves both as they were.
fn delete_agent(conn: &Connection, id: &str) -> Result<bool, SqliteStoreError> {
    conn.prepare_cached("DELETE FROM agent_sessions WHERE agent_id = ?1")
        .and_then(|mut stmt| stmt.execute(params![id]))
        .map_err(SqliteStoreError::sql(format!(
            "cannot delete the sessions of agent {id}"
        )))?;
    let deleted = conn
        .prepare_cached("DELETE FROM agents WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute(params![id]))
        .map_err(SqliteStoreError::sql(format!("cannot delete agent {id}")))?;
    Ok(deleted > 0)
}

fn put_session(conn: &Connection, row: &SessionRow) -> Result<(), SqliteStoreError> {
    conn.prepare_cached(
        "INSERT INTO agent_sessions (agent_id, session, body) VALUES (?1, ?2, ?3)
         ON CONFLICT (agent_id, session) DO UPDATE SET body = excluded.body",
    )
    .and_then(|mut stmt| stmt.execute(params![row.agent_id, row.session, row.body]))
    .map_err(SqliteStoreError::sql(format!(
        "cannot store session {} of agent {}",
        row.session, row.agent_id
    )))?;
    Ok(())
}
