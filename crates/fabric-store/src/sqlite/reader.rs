//! Reads: a small pool of read-only connections, used from blocking threads.
//! WAL lets them read a committed snapshot while the writer keeps writing.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use fabric_core::agent::{AgentRecord, AgentSession};
use fabric_core::{
    AgentId, ApiToken, Task, TaskEvent, TaskId, TaskQuery, TaskStatus, Tenant, TenantId, User,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::Shared;
use super::rows::{UNFINISHED_SQL, decode_json, to_i64};
use crate::error::SqliteStoreError;

/// Idle connections kept for reuse. Busier moments open extra connections and
/// close them afterwards rather than queue behind a fixed pool.
const MAX_IDLE: usize = 4;

pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    shared: Arc<Shared>,
}

impl ReadPool {
    pub fn new(path: PathBuf, first: Connection, shared: Arc<Shared>) -> Self {
        Self {
            path,
            idle: Mutex::new(vec![first]),
            shared,
        }
    }

    /// Runs `f` on an idle connection (or a new one). Blocking: call it from
    /// `spawn_blocking`.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, SqliteStoreError>,
    ) -> Result<T, SqliteStoreError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(SqliteStoreError::Closed);
        }
        // A panic while holding the lock cannot leave a Vec half-pushed; the
        // poison flag carries no information here.
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => super::schema::open_reader(&self.path)?,
        };
        let result = f(&conn);
        if !self.shared.closed.load(Ordering::Acquire) {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        result
    }

    /// Drops every idle connection (on close).
    pub fn clear(&self) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

pub(crate) fn clamp_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// One page of a list: `sql` (a `SELECT id, body ... WHERE ...` whose
/// placeholders `values` fill) ordered newest first (ids are UUIDv7) and
/// cut at `limit`, each body decoded as `T`.
pub(crate) fn collect_newest_first<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    mut sql: String,
    mut values: Vec<Value>,
    limit: usize,
    context: &str,
    kind: &str,
) -> Result<Vec<T>, SqliteStoreError> {
    values.push(Value::Integer(clamp_limit(limit)));
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", values.len()));
    collect(conn, &sql, params_from_iter(values), context, kind)
}

/// Collects `(label, body)` rows, decoding each body as `T`.
pub(crate) fn collect<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    context: &str,
    kind: &str,
) -> Result<Vec<T>, SqliteStoreError> {
    let mut stmt = conn
        .prepare_cached(sql)
        .map_err(SqliteStoreError::sql(context))?;
    let mut rows = stmt.query(params).map_err(SqliteStoreError::sql(context))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(SqliteStoreError::sql(context))? {
        let label: String = row.get(0).map_err(SqliteStoreError::sql(context))?;
        let body: String = row.get(1).map_err(SqliteStoreError::sql(context))?;
        out.push(decode_json(|| format!("{kind} {label}"), &body)?);
    }
    Ok(out)
}

fn one_body(
    conn: &Connection,
    sql: &str,
    key: &str,
    context: &str,
) -> Result<Option<String>, SqliteStoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.query_row(params![key], |r| r.get(0)).optional())
        .map_err(SqliteStoreError::sql(context))
}

pub(crate) fn get_task(conn: &Connection, id: TaskId) -> Result<Option<Task>, SqliteStoreError> {
    let id = id.to_string();
    let body = one_body(
        conn,
        "SELECT body FROM tasks WHERE id = ?1",
        &id,
        &format!("cannot read task {id}"),
    )?;
    body.map(|b| decode_json(|| format!("task {id}"), &b))
        .transpose()
}

pub(crate) fn list_tasks(
    conn: &Connection,
    query: &TaskQuery,
) -> Result<Vec<Task>, SqliteStoreError> {
    // Only the filters present go into the SQL, so each combination gets a plan
    // that can use its index (`?x IS NULL OR ...` would defeat them). Up to 64
    // distinct statements, prepared again when the statement cache drops
    // one. Priority and text
    // have no index: they filter the rows the others leave, newest first.
    let mut sql = String::from("SELECT id, body FROM tasks WHERE 1 = 1");
    let mut values: Vec<Value> = Vec::with_capacity(5);
    if let Some(tenant) = &query.tenant {
        values.push(Value::Text(tenant.to_string()));
        sql.push_str(&format!(" AND tenant = ?{}", values.len()));
    }
    if let Some(status) = query.status {
        values.push(Value::Text(status.as_str().to_owned()));
        sql.push_str(&format!(" AND status = ?{}", values.len()));
    }
    if let Some(agent) = &query.agent_id {
        values.push(Value::Text(agent.to_string()));
        sql.push_str(&format!(" AND agent_id = ?{}", values.len()));
    }
    if let Some(priority) = query.priority {
        values.push(Value::Text(priority.as_str().to_owned()));
        sql.push_str(&format!(
            " AND json_extract(body, '$.priority') = ?{}",
            values.len()
        ));
    }
    if let Some(text) = &query.text {
        // lower() is ASCII-only in SQLite, as TaskQuery::matches_content is.
        values.push(Value::Text(text.to_ascii_lowercase()));
        let n = values.len();
        sql.push_str(&format!(
            " AND (instr(lower(COALESCE(json_extract(body, '$.name'), '')), ?{n}) > 0 \
             OR instr(lower(COALESCE(json_extract(body, '$.input.prompt'), '')), ?{n}) > 0 \
             OR EXISTS (SELECT 1 FROM json_each(body, '$.input.commands') WHERE instr(lower(value), ?{n}) > 0))"
        ));
    }
    if let Some(before) = query.before {
        values.push(Value::Text(before.to_string()));
        sql.push_str(&format!(" AND id < ?{}", values.len()));
    }
    collect_newest_first(conn, sql, values, query.limit, "cannot list tasks", "task")
}

pub(crate) fn count_tasks(
    conn: &Connection,
    tenant: Option<&TenantId>,
    agent: Option<&AgentId>,
) -> Result<std::collections::BTreeMap<TaskStatus, u64>, SqliteStoreError> {
    let mut sql = String::from("SELECT status, COUNT(*) FROM tasks WHERE 1 = 1");
    let mut values: Vec<Value> = Vec::with_capacity(2);
    if let Some(tenant) = tenant {
        values.push(Value::Text(tenant.to_string()));
        sql.push_str(&format!(" AND tenant = ?{}", values.len()));
    }
    if let Some(agent) = agent {
        values.push(Value::Text(agent.to_string()));
        sql.push_str(&format!(" AND agent_id = ?{}", values.len()));
    }
    sql.push_str(" GROUP BY status");
    let context = "cannot count tasks";
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(SqliteStoreError::sql(context))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(values), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(SqliteStoreError::sql(context))?;
    let mut counts = std::collections::BTreeMap::new();
    for row in rows {
        let (status, n) = row.map_err(SqliteStoreError::sql(context))?;
        let status = status
            .parse::<TaskStatus>()
            .map_err(|e| SqliteStoreError::Corrupt {
                what: "a stored task status".to_owned(),
                detail: e.to_string(),
            })?;
        counts.insert(status, u64::try_from(n).unwrap_or(0));
    }
    Ok(counts)
}

pub(crate) fn unfinished_tasks(conn: &Connection) -> Result<Vec<Task>, SqliteStoreError> {
    collect(
        conn,
        &UNFINISHED_SQL,
        [],
        "cannot list unfinished tasks",
        "task",
    )
}

pub(crate) fn task_events(
    conn: &Connection,
    id: TaskId,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<TaskEvent>, SqliteStoreError> {
    // No stored seq exceeds i64::MAX, so a larger cursor means "nothing after".
    let Ok(after) = to_i64("event seq", after_seq) else {
        return Ok(Vec::new());
    };
    collect(
        conn,
        "SELECT CAST(seq AS TEXT), body FROM events WHERE task_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        params![id.to_string(), after, clamp_limit(limit)],
        &format!("cannot read events of task {id}"),
        "event",
    )
}

pub(crate) fn last_event_seq(conn: &Connection) -> Result<u64, SqliteStoreError> {
    let context = "cannot read the last event seq";
    let max: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events")
        .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)))
        .map_err(SqliteStoreError::sql(context))?;
    u64::try_from(max).map_err(|_| SqliteStoreError::Corrupt {
        what: context.to_owned(),
        detail: format!("negative seq {max} stored"),
    })
}

pub(crate) fn get_user(conn: &Connection, name: &str) -> Result<Option<User>, SqliteStoreError> {
    let body = one_body(
        conn,
        "SELECT body FROM users WHERE name = ?1",
        name,
        &format!("cannot read user {name:?}"),
    )?;
    body.map(|b| decode_json(|| format!("user {name:?}"), &b))
        .transpose()
}

pub(crate) fn count_users(conn: &Connection) -> Result<u64, SqliteStoreError> {
    let context = "cannot count users";
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM users")
        .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)))
        .map_err(SqliteStoreError::sql(context))?;
    // COUNT(*) is never negative.
    Ok(u64::try_from(n).unwrap_or(0))
}

pub(crate) fn list_users(conn: &Connection) -> Result<Vec<User>, SqliteStoreError> {
    collect(
        conn,
        "SELECT name, body FROM users ORDER BY name",
        [],
        "cannot list users",
        "user",
    )
}

pub(crate) fn list_tenants(conn: &Connection) -> Result<Vec<Tenant>, SqliteStoreError> {
    collect(
        conn,
        "SELECT name, body FROM tenants ORDER BY name",
        [],
        "cannot list tenants",
        "tenant",
    )
}

pub(crate) fn list_tokens(conn: &Connection) -> Result<Vec<ApiToken>, SqliteStoreError> {
    // Named in errors by the public id, never by the whole hash.
    collect(
        conn,
        "SELECT substr(hash, 1, 12), body FROM tokens ORDER BY user, hash",
        [],
        "cannot list API tokens",
        "API token",
    )
}

pub(crate) fn get_token(
    conn: &Connection,
    hash: &str,
) -> Result<Option<ApiToken>, SqliteStoreError> {
    let body = one_body(
        conn,
        "SELECT body FROM tokens WHERE hash = ?1",
        hash,
        "cannot read API token",
    )?;
    // The hash is a credential's fingerprint: keep it out of error messages.
    body.map(|b| decode_json(|| "API token", &b)).transpose()
}

pub(crate) fn get_agent(
    conn: &Connection,
    id: &AgentId,
) -> Result<Option<AgentRecord>, SqliteStoreError> {
    let body = one_body(
        conn,
        "SELECT body FROM agents WHERE id = ?1",
        id.as_str(),
        &format!("cannot read agent {id}"),
    )?;
    body.map(|b| decode_json(|| format!("agent {id}"), &b))
        .transpose()
}

/// Every agent in id order. Ids are ASCII, so SQLite's byte-wise `BINARY`
/// collation sorts them as `AgentId`'s `Ord` does.
pub(crate) fn list_agents(conn: &Connection) -> Result<Vec<AgentRecord>, SqliteStoreError> {
    collect(
        conn,
        "SELECT id, body FROM agents ORDER BY id",
        [],
        "cannot list agents",
        "agent",
    )
}

pub(crate) fn list_sessions(
    conn: &Connection,
    id: &AgentId,
    before: Option<u32>,
    limit: usize,
) -> Result<Vec<AgentSession>, SqliteStoreError> {
    collect(
        conn,
        "SELECT agent_id || ' session ' || session, body FROM agent_sessions
         WHERE agent_id = ?1 AND session < ?2 ORDER BY session DESC LIMIT ?3",
        params![
            id.as_str(),
            before.map_or(i64::MAX, i64::from),
            clamp_limit(limit)
        ],
        &format!("cannot read the sessions of agent {id}"),
        "agent",
    )
}
