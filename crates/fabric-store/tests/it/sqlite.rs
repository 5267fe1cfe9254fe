//! SQLite-specific behaviour: durability across reopen, group commit, errors.

use std::path::Path;

use fabric_core::agent::{AgentSession, DesiredState};
use fabric_core::{
    AgentId, AgentStore, AuthStore, BudgetStore, CreateOutcome, StoreError, TaskQuery, TaskStatus,
    TaskStore, TaskWrite, Timestamp, UsageStore, WriteOutcome,
};
use fabric_store::conformance::{full_agent, full_task, sample_agent, sample_session, sample_task};
use fabric_store::{SqliteStore, StoreStats};

use crate::fixtures::{event, token, user};

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path).unwrap()
}

/// Rewrites a stored column behind the store's back, as damage would.
fn tamper(path: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(sql).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn everything_acknowledged_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("fabric.db");
    let store = open(&path);

    let done = full_task();
    let mut pending = sample_task("acme", "shell");
    pending.status = TaskStatus::Pending;
    assert!(matches!(
        store.create_task(done.clone()).await.unwrap(),
        CreateOutcome::Created(_)
    ));
    assert!(matches!(
        store.create_task(pending.clone()).await.unwrap(),
        CreateOutcome::Created(_)
    ));
    let mut queued = pending.clone();
    queued.status = TaskStatus::Queued;
    let write = TaskWrite {
        task: queued.clone(),
        expected_epoch: Some(0),
    };
    assert_eq!(
        store.write_task(write).await.unwrap(),
        WriteOutcome::Applied
    );
    store
        .append_events(vec![event(&done, 1), event(&queued, 2)])
        .await
        .unwrap();
    assert!(store.create_user(user("admin")).await.unwrap());
    store.put_token(token("abc")).await.unwrap();
    store.close().await;

    let store = open(&path);
    assert_eq!(store.get_task(done.id).await.unwrap(), Some(done.clone()));
    assert_eq!(
        store.get_task(queued.id).await.unwrap(),
        Some(queued.clone())
    );
    assert_eq!(
        store.unfinished_tasks().await.unwrap(),
        vec![queued.clone()]
    );
    assert_eq!(
        store.task_events(done.id, 0, 10).await.unwrap(),
        vec![event(&done, 1)]
    );
    assert_eq!(store.last_event_seq().await.unwrap(), 2);
    assert_eq!(
        store.get_user("admin".to_owned()).await.unwrap(),
        Some(user("admin"))
    );
    assert_eq!(
        store.get_token("abc".to_owned()).await.unwrap(),
        Some(token("abc"))
    );
    // Reopening must not reset the idempotency index either.
    let mut retry = sample_task("acme", "noop");
    retry.idempotency_key = done.idempotency_key.clone();
    assert_eq!(
        store.create_task(retry).await.unwrap(),
        CreateOutcome::Existing(done)
    );
}

fn agent_id(id: &str) -> AgentId {
    AgentId::new(id).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_and_sessions_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fabric.db");
    let store = open(&path);

    let coder = full_agent("coder");
    let mut shell = sample_agent("shell-2");
    shell.sessions = 2;
    let gone = sample_agent("gone");
    for record in [&coder, &shell, &gone] {
        store.put_agent(record.clone()).await.unwrap();
    }
    let first = AgentSession {
        ended_at: Some(Timestamp::from_millis(1_700_000_009_000)),
        exit_reason: Some("crashed (signal 9)".to_owned()),
        tasks_done: 4,
        ..sample_session("shell-2", 1)
    };
    for session in [
        first.clone(),
        sample_session("shell-2", 2),
        sample_session("gone", 1),
    ] {
        store.put_session(session).await.unwrap();
    }
    assert!(store.delete_agent(agent_id("gone")).await.unwrap());
    store.close().await;

    let store = open(&path);
    assert_eq!(
        store.list_agents().await.unwrap(),
        vec![coder.clone(), shell.clone()],
        "what a restarted server respawns from"
    );
    assert_eq!(
        store.get_agent(agent_id("coder")).await.unwrap(),
        Some(coder)
    );
    assert_eq!(
        store
            .list_sessions(agent_id("shell-2"), None, 10)
            .await
            .unwrap(),
        vec![sample_session("shell-2", 2), first]
    );
    assert_eq!(store.get_agent(agent_id("gone")).await.unwrap(), None);
    assert!(
        store
            .list_sessions(agent_id("gone"), None, 10)
            .await
            .unwrap()
            .is_empty(),
        "a delete is durable for the sessions too"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_version_1_database_gains_the_agent_tables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fabric.db");
    let store = open(&path);
    let task = sample_task("acme", "shell");
    store.create_task(task.clone()).await.unwrap();
    store.close().await;
    // What a database written by the previous release looks like.
    tamper(
        &path,
        "DROP TABLE agents; DROP TABLE agent_sessions; DROP TABLE usage; DROP TABLE budgets;
         DROP TABLE policies; DROP TABLE approvals; DROP TABLE audit; DROP TABLE tenants;
         DROP TABLE nodes; DROP TABLE node_join_tokens; DROP TABLE node_settings;
         DROP TABLE mcp_servers; DROP INDEX tokens_user; ALTER TABLE tokens DROP COLUMN user;
         ALTER TABLE tasks DROP COLUMN traceparent; PRAGMA user_version = 1;",
    );

    let store = open(&path);
    assert_eq!(store.get_task(task.id).await.unwrap(), Some(task));
    let mut record = sample_agent("coder");
    record.desired = DesiredState::Stopped;
    store.put_agent(record.clone()).await.unwrap();
    store.put_session(sample_session("coder", 1)).await.unwrap();
    assert_eq!(store.list_agents().await.unwrap(), vec![record]);
    assert_eq!(
        store
            .list_sessions(agent_id("coder"), None, 1)
            .await
            .unwrap(),
        vec![sample_session("coder", 1)]
    );
    // ... and the usage ledger (schema 3).
    let usage = fabric_store::conformance::sample_usage("acme", "bob", Some("coder"), 0);
    store.record_usage(usage.clone()).await.unwrap();
    assert_eq!(
        store.list_usage(Default::default()).await.unwrap(),
        vec![usage]
    );
    // ... and budgets (schema 4).
    let budget = fabric_core::BudgetRecord {
        entity: "agent:coder".parse().unwrap(),
        spec: fabric_core::BudgetSpec::default(),
        period: fabric_core::budget::PeriodState::default(),
        updated_at: fabric_core::Timestamp::from_millis(1),
    };
    store.put_budget(budget.clone()).await.unwrap();
    assert_eq!(store.list_budgets().await.unwrap(), vec![budget]);
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, fabric_store::sqlite::SCHEMA_VERSION);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_version_6_database_gains_tenants_and_token_owners() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fabric.db");
    let store = open(&path);
    store.close().await;
    // Schema 6 as the previous release left it: the bootstrap admin (stored
    // before roles existed) and its login token, in the old shapes.
    tamper(
        &path,
        r#"DROP TABLE tenants; DROP INDEX tokens_user; ALTER TABLE tokens DROP COLUMN user;
         DROP TABLE mcp_servers; DROP TABLE nodes; DROP TABLE node_join_tokens; DROP TABLE node_settings; PRAGMA user_version = 6;
         INSERT INTO users (name, body) VALUES ('admin', '{"name":"admin","tenant":"default","password_hash":"$argon2id$x","scopes":["admin"],"created_at":"2026-01-01T00:00:00Z"}');
         INSERT INTO tokens (hash, body) VALUES ('ab12', '{"token_hash":"ab12","user":"admin","tenant":"default","scopes":["admin"],"name":"login","created_at":"2026-01-01T00:00:00Z","expires_at":null}');"#,
    );

    let store = open(&path);
    let admin = store.get_user("admin".to_owned()).await.unwrap().unwrap();
    assert_eq!(admin.role, fabric_core::Role::Admin);
    assert_eq!(store.list_tokens().await.unwrap().len(), 1);
    assert!(store.list_tenants().await.unwrap().is_empty());
    // The backfilled owner column: deleting the user takes its old token along.
    assert!(store.delete_user("admin".to_owned()).await.unwrap());
    assert!(store.list_tokens().await.unwrap().is_empty());
}

/// Schema 7 (the release before MCP servers) keeps everything it had and
/// gains the `mcp_servers` table.
#[tokio::test(flavor = "multi_thread")]
async fn a_schema_version_7_database_gains_mcp_servers() {
    use fabric_core::mcp::{McpServerRecord, McpServerSpec, McpStore as _};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fabric.db");
    let store = open(&path);
    let task = sample_task("acme", "shell");
    store.create_task(task.clone()).await.unwrap();
    store.close().await;
    tamper(
        &path,
        "DROP TABLE mcp_servers; DROP TABLE nodes; DROP TABLE node_join_tokens; DROP TABLE node_settings; PRAGMA user_version = 7;",
    );

    let store = open(&path);
    assert_eq!(store.get_task(task.id).await.unwrap(), Some(task));
    assert!(store.list_mcp_servers().await.unwrap().is_empty());
    let record = McpServerRecord {
        tenant: "acme".parse().unwrap(),
        spec: McpServerSpec::stdio("time", "python3 -m mcp_server_time"),
        created_at: fabric_core::Timestamp::from_millis(1),
        created_by: "admin".to_owned(),
    };
    store.put_mcp_server(record.clone()).await.unwrap();
    assert_eq!(store.list_mcp_servers().await.unwrap(), vec![record]);
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, fabric_store::sqlite::SCHEMA_VERSION);
}

/// Schema 8 (the release before worker nodes) keeps everything it had and
/// gains the node tables.
#[tokio::test(flavor = "multi_thread")]
async fn a_schema_version_8_database_gains_nodes() {
    use fabric_core::mcp::{McpServerRecord, McpServerSpec, McpStore as _};
    use fabric_core::node::{NodeConfig, NodeStore as _};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fabric.db");
    let store = open(&path);
    let task = sample_task("acme", "shell");
    store.create_task(task.clone()).await.unwrap();
    let record = McpServerRecord {
        tenant: "acme".parse().unwrap(),
        spec: McpServerSpec::stdio("time", "python3 -m mcp_server_time"),
        created_at: fabric_core::Timestamp::from_millis(1),
        created_by: "admin".to_owned(),
    };
    store.put_mcp_server(record.clone()).await.unwrap();
    store.close().await;
    tamper(
        &path,
        "DROP TABLE nodes; DROP TABLE node_join_tokens; DROP TABLE node_settings;
         PRAGMA user_version = 8;",
    );

    let store = open(&path);
    assert_eq!(store.get_task(task.id).await.unwrap(), Some(task));
    assert_eq!(store.list_mcp_servers().await.unwrap(), vec![record]);
    assert!(store.list_nodes().await.unwrap().is_empty());
    assert!(store.list_join_tokens().await.unwrap().is_empty());
    assert_eq!(store.get_node_config().await.unwrap(), None);
    let config = NodeConfig {
        version: 1,
        ..Default::default()
    };
    store.put_node_config(config.clone()).await.unwrap();
    assert_eq!(store.get_node_config().await.unwrap(), Some(config));
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, fabric_store::sqlite::SCHEMA_VERSION);
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_agent_rows_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fabric.db");
    let store = open(&path);
    store.put_agent(sample_agent("coder")).await.unwrap();
    store.put_session(sample_session("coder", 3)).await.unwrap();
    store.close().await;

    tamper(
        &path,
        "UPDATE agents SET body = '{\"config\": 1}'; UPDATE agent_sessions SET body = 'null';",
    );
    let store = open(&path);

    let err = store.get_agent(agent_id("coder")).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("stored agent coder does not decode"),
        "{err}"
    );
    assert!(matches!(
        store.list_agents().await,
        Err(StoreError::Corrupt(_))
    ));
    let err = store
        .list_sessions(agent_id("coder"), None, 10)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("stored agent coder session 3 does not decode"),
        "{err}"
    );
    // Replacing the damaged record repairs it.
    store.put_agent(sample_agent("coder")).await.unwrap();
    assert_eq!(
        store.get_agent(agent_id("coder")).await.unwrap(),
        Some(sample_agent("coder"))
    );
    assert!(store.delete_agent(agent_id("coder")).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_are_on_disk_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fabric.db");
    let store = open(&path);
    let task = sample_task("acme", "shell");
    store.create_task(task.clone()).await.unwrap();
    // No close: the acknowledgement alone promises the commit happened.
    let reader = rusqlite::Connection::open(&path).unwrap();
    let count: i64 = reader
        .query_row("SELECT COUNT(*) FROM tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 1);
    drop(store);

    let store = open(&path);
    assert_eq!(store.get_task(task.id).await.unwrap(), Some(task));
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_write_futures_are_flushed_by_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fabric.db");
    let store = open(&path);
    let tasks: Vec<_> = (0..50).map(|_| sample_task("acme", "shell")).collect();
    for task in &tasks {
        drop(store.create_task(task.clone()));
    }
    store.close().await;

    let store = open(&path);
    let listed = store.list_tasks(TaskQuery::default()).await.unwrap();
    assert_eq!(
        listed.len(),
        tasks.len(),
        "every fire-and-forget write submitted before close is committed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_are_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fabric.db");
    let store = open(&path);
    assert_eq!(store.stats(), StoreStats::default());

    // Another connection holds the write lock: the writer's first
    // transaction waits for it, and every write submitted meanwhile (at the
    // call) queues behind it, so all 500 commit in at most two transactions,
    // however fast or slow the machine.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let pending: Vec<_> = (0..500)
        .map(|_| store.create_task(sample_task("acme", "shell")))
        .collect();
    blocker.execute_batch("ROLLBACK").unwrap();
    for outcome in pending {
        assert!(matches!(outcome.await.unwrap(), CreateOutcome::Created(_)));
    }
    let stats = store.stats();
    assert_eq!(stats.ops, 500, "{stats:?}");
    assert!(stats.transactions <= 2, "no batching happened: {stats:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_op_does_not_fail_its_batch_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("fabric.db"));
    let a = sample_task("acme", "shell");
    let b = sample_task("acme", "shell");

    // Submitted back to back, so they share a transaction (or a few).
    let create_a = store.create_task(a.clone());
    let first = store.append_events(vec![event(&a, 1)]);
    let duplicate = store.append_events(vec![event(&a, 5), event(&a, 1)]);
    let create_b = store.create_task(b.clone());
    let second = store.append_events(vec![event(&b, 2)]);

    assert_eq!(create_a.await.unwrap(), CreateOutcome::Created(a.clone()));
    first.await.unwrap();
    let err = duplicate.await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("event 1: an event with this seq is already stored"),
        "{err}"
    );
    assert_eq!(create_b.await.unwrap(), CreateOutcome::Created(b.clone()));
    second.await.unwrap();

    // The failed append is undone as a whole: seq 5 is not stored.
    assert_eq!(
        store.task_events(a.id, 0, 10).await.unwrap(),
        vec![event(&a, 1)]
    );
    assert_eq!(store.last_event_seq().await.unwrap(), 2);
    assert_eq!(store.stats().ops, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_task_id_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("fabric.db"));
    let task = sample_task("acme", "shell");
    store.create_task(task.clone()).await.unwrap();
    let err = store.create_task(task.clone()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("a task with this id already exists"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_store_refuses_reads_and_writes_as_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("fabric.db"));
    let clone = store.clone();
    store.close().await;
    store.close().await;

    let err = clone
        .create_task(sample_task("acme", "shell"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("the store is closed"), "{err}");
    let err = clone
        .get_task(fabric_core::TaskId::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the store is closed"), "{err}");
    let err = clone.count_users().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = clone.put_agent(sample_agent("coder")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = clone.list_agents().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

#[test]
fn unusable_paths_say_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();

    let err = SqliteStore::open(&file.join("fabric.db")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cannot create data directory"), "{msg}");
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("FABRIC_DATA_DIR"), "{msg}");

    let err = SqliteStore::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("cannot open database at"), "{err}");
}

#[test]
fn a_file_that_is_not_a_database_is_reported_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fabric.db");
    std::fs::write(&path, vec![0x42; 8192]).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("not a database"), "{err}");
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fabric.db");
    tamper(&path, "PRAGMA user_version = 99;");
    let err = SqliteStore::open(&path).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("schema version 99"), "{msg}");
    assert!(msg.contains("upgrade reactor-fabric"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_rows_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fabric.db");
    let store = open(&path);
    let mut task = sample_task("acme", "shell");
    task.idempotency_key = Some("k".to_owned());
    store.create_task(task.clone()).await.unwrap();
    store.append_events(vec![event(&task, 1)]).await.unwrap();
    assert!(store.create_user(user("admin")).await.unwrap());
    store.close().await;

    tamper(
        &path,
        "UPDATE tasks SET body = '{\"id\": 12'; UPDATE events SET body = 'null'; UPDATE users SET body = x'00ff';",
    );
    let store = open(&path);

    let err = store.get_task(task.id).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("stored task {} does not decode", task.id)),
        "{err}"
    );
    assert!(matches!(
        store.list_tasks(TaskQuery::default()).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.unfinished_tasks().await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.task_events(task.id, 0, 10).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.get_user("admin".to_owned()).await,
        Err(StoreError::Corrupt(_))
    ));

    // The writer thread decodes the stored task on an idempotent retry: same answer.
    let mut retry = sample_task("acme", "shell");
    retry.idempotency_key = Some("k".to_owned());
    assert!(matches!(
        store.create_task(retry).await,
        Err(StoreError::Corrupt(_))
    ));
    // And it keeps working for everything else.
    let other = sample_task("acme", "shell");
    assert_eq!(
        store.create_task(other.clone()).await.unwrap(),
        CreateOutcome::Created(other)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_handles_on_one_file_see_each_others_writes() {
    // A second process (CLI, backup) may open the same file; busy_timeout and
    // WAL let both work.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fabric.db");
    let (one, two) = (open(&path), open(&path));
    let (a, b) = (sample_task("acme", "shell"), sample_task("acme", "shell"));
    let (ra, rb) = tokio::join!(one.create_task(a.clone()), two.create_task(b.clone()));
    ra.unwrap();
    rb.unwrap();
    assert_eq!(two.get_task(a.id).await.unwrap(), Some(a));
    assert_eq!(one.get_task(b.id).await.unwrap(), Some(b));
}
