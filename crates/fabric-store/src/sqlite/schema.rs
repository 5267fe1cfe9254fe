//! Connection settings and schema migrations, versioned with `PRAGMA user_version`.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::SqliteStoreError;

/// How long a statement waits for a lock held by another connection before failing
/// with "busy". Within one process only the writer thread writes, so this only
/// matters when a second process (a backup, the CLI) touches the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Migration `i` moves the schema from version `i` to `i + 1`. Append only: a
/// released migration never changes, or databases created by it diverge.
///
/// Records are stored whole as JSON in `body`, so adding a field to a record
/// needs no migration; only fields the store filters or orders by are columns.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "
    CREATE TABLE tasks (
        id              TEXT PRIMARY KEY NOT NULL, -- UUIDv7: sorts by creation
        tenant          TEXT NOT NULL,
        agent_id        TEXT NOT NULL,
        status          TEXT NOT NULL,
        idempotency_key TEXT,
        lease_epoch     INTEGER NOT NULL,
        created_ms      INTEGER NOT NULL,
        body            TEXT NOT NULL
    );
    -- Idempotent creation is per tenant; tasks without a key never collide.
    CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX tasks_tenant ON tasks (tenant, id);
    -- Serves both status filters and the restart scan for unfinished tasks.
    CREATE INDEX tasks_status ON tasks (status, id);

    CREATE TABLE events (
        seq     INTEGER PRIMARY KEY NOT NULL,
        task_id TEXT NOT NULL,
        body    TEXT NOT NULL
    );
    CREATE INDEX events_task ON events (task_id, seq);

    CREATE TABLE users (
        name TEXT PRIMARY KEY NOT NULL,
        body TEXT NOT NULL
    );

    CREATE TABLE tokens (
        hash TEXT PRIMARY KEY NOT NULL,
        body TEXT NOT NULL
    );
    ",
    // 2: agents (FR-LIFE-1) and their sessions (FR-LIFE-5).
    "
    -- Read whole (by id, or all in id order, to respawn after a restart), so
    -- nothing besides the id needs a column.
    CREATE TABLE agents (
        id   TEXT PRIMARY KEY NOT NULL,
        body TEXT NOT NULL
    );

    -- No foreign key: the store deletes an agent's sessions together with it
    -- in one op, and SQLite leaves foreign keys unenforced by default anyway.
    -- WITHOUT ROWID: the primary key is the only access path (per agent,
    -- highest session first), so the table is that index.
    CREATE TABLE agent_sessions (
        agent_id TEXT NOT NULL,
        session  INTEGER NOT NULL,
        body     TEXT NOT NULL,
        PRIMARY KEY (agent_id, session)
    ) WITHOUT ROWID;
    ",
    // 3: the LLM usage ledger (REQUIREMENTS §6 metering, read by budgets).
    "
    -- One row per gateway call; the filter and sum columns beside the JSON body.
    CREATE TABLE usage (
        id         TEXT PRIMARY KEY NOT NULL, -- UUIDv7
        ts_ms      INTEGER NOT NULL,
        tenant     TEXT NOT NULL,
        user       TEXT NOT NULL,
        agent      TEXT,
        tokens_in  INTEGER NOT NULL,
        tokens_out INTEGER NOT NULL,
        cost_nano  INTEGER NOT NULL,
        fallback   INTEGER NOT NULL,
        estimated  INTEGER NOT NULL,
        ok         INTEGER NOT NULL,
        body       TEXT NOT NULL
    );
    -- Budgets ask per agent, user or tenant since a point in time.
    CREATE INDEX usage_tenant ON usage (tenant, ts_ms);
    CREATE INDEX usage_agent ON usage (agent, ts_ms) WHERE agent IS NOT NULL;
    CREATE INDEX usage_user ON usage (user, ts_ms);
    CREATE INDEX usage_ts ON usage (ts_ms);
    ",
    // 4: budgets (REQUIREMENTS §8): limits, reset policy and the current period's
    // state per entity (`agent:coder`, `user:alice`, `tenant:default`).
    "
    CREATE TABLE budgets (
        entity TEXT PRIMARY KEY NOT NULL,
        body   TEXT NOT NULL
    );
    ",
    // 5: the trace context a task was created in (FR-TEL traces). The body holds
    // it for the server; the column lets an operator find the tasks of a
    // trace in SQL (`WHERE traceparent LIKE '00-<trace id>-%'`).
    "
    ALTER TABLE tasks ADD COLUMN traceparent TEXT;
    ",
    // 6: policies, approvals and the audit trail (REQUIREMENTS §7).
    "
    -- Read whole (all of them, to compile the policy set).
    CREATE TABLE policies (
        id   TEXT PRIMARY KEY NOT NULL,
        body TEXT NOT NULL
    );

    CREATE TABLE approvals (
        id     TEXT PRIMARY KEY NOT NULL, -- UUIDv7: sorts by creation
        status TEXT NOT NULL,
        body   TEXT NOT NULL
    );
    CREATE INDEX approvals_status ON approvals (status, id);

    -- Append only; listed newest first, by agent or by decision.
    CREATE TABLE audit (
        id       TEXT PRIMARY KEY NOT NULL, -- UUIDv7: sorts by time
        tenant   TEXT NOT NULL,
        agent    TEXT,
        decision TEXT NOT NULL,
        body     TEXT NOT NULL
    );
    CREATE INDEX audit_agent ON audit (agent, id) WHERE agent IS NOT NULL;
    CREATE INDEX audit_decision ON audit (decision, id);
    ",
    // 7: tenants (REQUIREMENTS §12), and the user of each token as a column:
    // a user's tokens are listed, and deleted with the user, by it.
    "
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY NOT NULL,
        body TEXT NOT NULL
    );

    ALTER TABLE tokens ADD COLUMN user TEXT;
    UPDATE tokens SET user = json_extract(body, '$.user');
    CREATE INDEX tokens_user ON tokens (user);
    ",
    // 8: MCP servers registered with the fabric (REQUIREMENTS §14), keyed
    // `<tenant>/<server>`; read whole at start.
    "
    CREATE TABLE mcp_servers (
        name TEXT PRIMARY KEY NOT NULL,
        body TEXT NOT NULL
    );
    ",
    // 9: worker nodes (REQUIREMENTS §16, issue #21), their join tokens and
    // the node config (one row, named `config`); all read whole at start.
    "
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE node_join_tokens (
        name TEXT PRIMARY KEY NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE node_settings (
        name TEXT PRIMARY KEY NOT NULL,
        body TEXT NOT NULL
    );
    ",
];

/// The schema version (`PRAGMA user_version`) this build creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Opens the one read-write connection: WAL (readers never block the writer nor
/// each other) and `synchronous=FULL` (a commit is on disk when it returns,
/// which is what an acknowledged write promises).
pub(crate) fn open_writer(path: &Path) -> Result<Connection, SqliteStoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(|source| SqliteStoreError::Open {
            path: path.to_owned(),
            source,
        })?;
    let configure = |setting: &'static str| {
        move |source| SqliteStoreError::Configure {
            path: path.to_owned(),
            setting,
            source,
        }
    };
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(configure("busy_timeout"))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(configure("journal_mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(SqliteStoreError::NoWal {
            path: path.to_owned(),
            mode,
        });
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(configure("synchronous"))?;
    // Per-op savepoints keep small statement journals; keep them off the disk.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(configure("temp_store"))?;
    // The writer runs a dozen distinct statements; keep all of them prepared.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Opens a read-only connection for the read pool.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, SqliteStoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(|source| SqliteStoreError::Open {
            path: path.to_owned(),
            source,
        })?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|source| SqliteStoreError::Configure {
            path: path.to_owned(),
            setting: "busy_timeout",
            source,
        })?;
    // `list_tasks` builds up to 16 statement variants; keep them all prepared.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Brings the schema up to [`SCHEMA_VERSION`], one transaction per migration so a
/// crash mid-way leaves a consistent, older version that the next open continues.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), SqliteStoreError> {
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|source| SqliteStoreError::Configure {
            path: path.to_owned(),
            setting: "user_version",
            source,
        })?;
    if current > SCHEMA_VERSION {
        return Err(SqliteStoreError::SchemaTooNew {
            path: path.to_owned(),
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(current).unwrap_or(0))
    {
        let fail = |source| SqliteStoreError::Migrate {
            path: path.to_owned(),
            version,
            source,
        };
        let tx = conn.transaction().map_err(fail)?;
        tx.execute_batch(sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(path = %path.display(), version, "migrated store schema");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_uses_wal_and_full_sync_and_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut conn = open_writer(&path).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        // 2 = FULL
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2);

        migrate(&mut conn, &path).unwrap();
        migrate(&mut conn, &path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn unfinished_scan_uses_the_status_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut conn = open_writer(&path).unwrap();
        migrate(&mut conn, &path).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                super::super::rows::UNFINISHED_SQL.as_str()
            ))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("tasks_status")),
            "{plan:?}"
        );
    }

    #[test]
    fn sessions_are_listed_from_the_primary_key_without_sorting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut conn = open_writer(&path).unwrap();
        migrate(&mut conn, &path).unwrap();
        let plan: Vec<String> = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT body FROM agent_sessions
                 WHERE agent_id = 'a' ORDER BY session DESC LIMIT 5",
            )
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("PRIMARY KEY")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "{plan:?}"
        );
    }
}
