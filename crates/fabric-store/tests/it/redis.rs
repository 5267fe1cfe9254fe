//! Redis-specific behaviour against a real `redis-server`: durability across
//! `kill -9`, reconnection, errors (and passwords kept out of them), the
//! durability check, and fencing between two stores sharing one Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fabric_core::agent::AgentSession;
use fabric_core::{
    AgentId, AgentStore, AuthStore, CreateOutcome, StoreError, Task, TaskQuery, TaskStatus,
    TaskStore, TaskWrite, TenantId, WriteOutcome,
};
use fabric_store::conformance::{full_agent, full_task, sample_agent, sample_session, sample_task};
use fabric_store::redis::Durability;
use fabric_store::redis::testing::RedisServer;
use fabric_store::{RedisConfig, RedisStore, StoreStats};

use crate::fixtures::{event, token, user};

pub async fn connect(url: &str, prefix: &str) -> RedisStore {
    RedisStore::connect(RedisConfig::new(url).with_prefix(prefix))
        .await
        .unwrap()
}

pub fn running(task: &Task, epoch: u64) -> Task {
    let mut next = task.clone();
    next.status = TaskStatus::Running;
    next.lease_epoch = epoch;
    next.attempt += 1;
    next
}

/// Raw access behind the store's back, as damage or an operator would.
fn raw(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

/// What `kill -9` of redis-server proves: an acknowledged write was in the
/// AOF before the reply (the process dies, the page cache stays). That the
/// AOF is also fsynced before the reply (what survives a power cut) is the
/// server's `appendfsync always`, which the store checks at connect and this
/// test reads back; a kill cannot show it.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9_of_redis() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = RedisServer::start(dir.path());
    let store = connect(&server.url(), "fabric").await;
    assert_eq!(store.durability(), &Durability::Durable);
    let fsync: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query(&mut raw(&server.url()))
        .unwrap();
    assert_eq!(fsync, ["appendfsync", "always"]);

    let done = full_task();
    let queued = sample_task("acme", "shell");
    for task in [&done, &queued] {
        store.create_task(task.clone()).await.unwrap();
    }
    let leased = running(&queued, 1);
    let write = TaskWrite {
        task: leased.clone(),
        expected_epoch: Some(0),
    };
    assert_eq!(
        store.write_task(write).await.unwrap(),
        WriteOutcome::Applied
    );
    store
        .append_events(vec![event(&done, 1), event(&leased, 2)])
        .await
        .unwrap();
    assert!(store.create_user(user("admin")).await.unwrap());
    store.put_token(token("abc")).await.unwrap();
    store.put_agent(full_agent("coder")).await.unwrap();
    store.put_session(sample_session("coder", 1)).await.unwrap();

    // No close, no shutdown: the acknowledgement alone promises the write.
    server.kill();
    server.restart();

    let store = connect(&server.url(), "fabric").await;
    assert_eq!(store.get_task(done.id).await.unwrap(), Some(done.clone()));
    assert_eq!(
        store.unfinished_tasks().await.unwrap(),
        vec![leased.clone()]
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
    assert_eq!(
        store.list_agents().await.unwrap(),
        vec![full_agent("coder")]
    );
    assert_eq!(
        store
            .list_sessions(AgentId::new("coder").unwrap(), None, 5)
            .await
            .unwrap(),
        vec![sample_session("coder", 1)]
    );
    // The idempotency index and the fence survive too.
    let mut retry = sample_task("acme", "noop");
    retry.idempotency_key = done.idempotency_key.clone();
    assert_eq!(
        store.create_task(retry).await.unwrap(),
        CreateOutcome::Existing(done)
    );
    let stale = TaskWrite {
        task: running(&queued, 1),
        expected_epoch: Some(0),
    };
    assert_eq!(
        store.write_task(stale).await.unwrap(),
        WriteOutcome::Rejected
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_reconnects_after_redis_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = RedisServer::start(dir.path());
    let store = connect(&server.url(), "fabric").await;
    let before = sample_task("acme", "shell");
    store.create_task(before.clone()).await.unwrap();

    server.kill();
    // Writes and reads while Redis is down fail as retryable, saying where and what to do.
    for _ in 0..3 {
        let err = store
            .create_task(sample_task("acme", "shell"))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(
            err.to_string()
                .contains(&format!("Redis at 127.0.0.1:{}", server.port())),
            "{err}"
        );
    }
    let err = store
        .create_task(sample_task("acme", "shell"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("is redis-server running?"),
        "{err}"
    );
    let err = store.get_task(before.id).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");

    server.restart();
    let after = sample_task("acme", "shell");
    assert_eq!(
        store.create_task(after.clone()).await.unwrap(),
        CreateOutcome::Created(after.clone()),
        "the first write after the restart succeeds"
    );
    assert_eq!(store.get_task(before.id).await.unwrap(), Some(before));
    assert_eq!(store.get_task(after.id).await.unwrap(), Some(after));
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_in_flight_when_redis_dies_fail_and_later_ones_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = RedisServer::start(dir.path());
    let store = connect(&server.url(), "fabric").await;

    // Keep the writer busy from many tasks, each writing until one of its
    // writes fails; kill Redis once writes are being acknowledged.
    let acked = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (store, acked) = (store.clone(), Arc::clone(&acked));
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                loop {
                    let task = sample_task("acme", "shell");
                    let outcome = store.create_task(task.clone()).await;
                    let failed = outcome.is_err();
                    if !failed {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    outcomes.push((task.id, outcome));
                    if failed {
                        return outcomes;
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < 200 {
        assert!(Instant::now() < deadline, "the writers never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let mut outcomes = Vec::new();
    for w in writers {
        outcomes.extend(w.await.unwrap());
    }
    server.restart();

    let mut acknowledged = Vec::new();
    for (id, outcome) in &outcomes {
        match outcome {
            Ok(CreateOutcome::Created(_)) => acknowledged.push(*id),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => assert!(e.is_retryable(), "a failed write must be retryable: {e:?}"),
        }
    }
    assert_eq!(
        outcomes.len() - acknowledged.len(),
        8,
        "each writer ends with its one failed write"
    );
    for id in &acknowledged {
        assert!(
            store.get_task(*id).await.unwrap().is_some(),
            "acknowledged task {id} lost"
        );
    }
    let task = sample_task("acme", "shell");
    store.create_task(task.clone()).await.unwrap();
    assert_eq!(store.get_task(task.id).await.unwrap(), Some(task));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_urls_and_unreachable_servers_are_clear_errors() {
    for url in [
        "http://localhost:6379",
        "redis://host:99999999/0",
        "rediss://h:1/0",
    ] {
        let err = RedisStore::connect(RedisConfig::new(url))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{url}: {err:?}");
        assert!(err.to_string().contains("invalid Redis URL"), "{err}");
    }
    let err = RedisStore::connect(RedisConfig::new("redis://127.0.0.1:6379").with_prefix(""))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("invalid Redis key prefix"),
        "{err}"
    );

    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RedisStore::connect(RedisConfig::new(format!("redis://127.0.0.1:{port}/0")))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "store unavailable: cannot connect to Redis at 127.0.0.1:{port}: "
        )),
        "{msg}"
    );
    assert!(msg.ends_with("is redis-server running?"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn passwords_never_appear_in_errors_or_debug_output() {
    const PASSWORD: &str = "pw-Zq81-secret";
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start_with(dir.path(), Some(PASSWORD), &[]);

    let store = connect(&server.url(), "fabric").await;
    assert!(
        server.url().contains(PASSWORD),
        "the test uses the password"
    );
    store
        .create_task(sample_task("acme", "shell"))
        .await
        .unwrap();
    assert!(!format!("{store:?}").contains(PASSWORD));
    let config = RedisConfig::new(server.url());
    assert!(!format!("{config:?}").contains(PASSWORD));
    assert!(!config.redacted_url().contains(PASSWORD));

    let wrong = format!("redis://:{PASSWORD}-wrong@127.0.0.1:{}/0", server.port());
    let err = RedisStore::connect(RedisConfig::new(wrong))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains(PASSWORD), "{msg}");
    assert!(msg.contains("refused the credentials"), "{msg}");

    let missing = format!("redis://127.0.0.1:{}/0", server.port());
    let err = RedisStore::connect(RedisConfig::new(missing))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("check the password"),
        "no password at all: {err}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("redis://:{PASSWORD}@127.0.0.1:{port}/0");
    let err = RedisStore::connect(RedisConfig::new(unreachable))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains(PASSWORD), "{err}");
    let bad = format!("redis://:{PASSWORD}@127.0.0.1:notaport/0");
    let err = RedisStore::connect(RedisConfig::new(bad))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains(PASSWORD), "{err}");
    assert!(err.to_string().contains(":***@"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn weak_or_unknown_persistence_settings_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start_with(
        &dir.path().join("weak"),
        None,
        &["--appendfsync", "everysec"],
    );
    let store = connect(&server.url(), "fabric").await;
    assert_eq!(
        store.durability(),
        &Durability::Weak("appendfsync is \"everysec\"".to_owned())
    );

    let hidden = RedisServer::start_with(
        &dir.path().join("hidden"),
        None,
        &["--rename-command", "CONFIG", ""],
    );
    let store = connect(&hidden.url(), "fabric").await;
    assert!(
        matches!(store.durability(), Durability::Unknown(why) if why.contains("unknown command")),
        "{:?}",
        store.durability()
    );
    // It still works: CONFIG is only needed for the check.
    store
        .create_task(sample_task("acme", "shell"))
        .await
        .unwrap();
}

/// Two orchestrators sharing one Redis race the same leases: for every task
/// exactly one fenced write applies, and the stored task is the winner's.
#[tokio::test(flavor = "multi_thread")]
async fn racing_fenced_writes_from_two_stores_apply_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let one = connect(&server.url(), "shared").await;
    let two = connect(&server.url(), "shared").await;

    let tasks: Vec<Task> = (0..300).map(|_| sample_task("acme", "shell")).collect();
    for task in &tasks {
        one.create_task(task.clone()).await.unwrap();
    }
    let lease = |task: &Task, who: &str| {
        let mut next = running(task, 1);
        next.reason = Some(who.to_owned());
        TaskWrite {
            task: next,
            expected_epoch: Some(0),
        }
    };
    // Each store leases every task; submissions interleave on the two connections.
    let (a, b): (Vec<_>, Vec<_>) = tasks
        .iter()
        .map(|t| {
            (
                one.write_task(lease(t, "one")),
                two.write_task(lease(t, "two")),
            )
        })
        .unzip();
    let a = futures_join(a).await;
    let b = futures_join(b).await;

    let mut wins = [0, 0];
    for ((task, a), b) in tasks.iter().zip(a).zip(b) {
        let winner = match (a.unwrap(), b.unwrap()) {
            (WriteOutcome::Applied, WriteOutcome::Rejected) => "one",
            (WriteOutcome::Rejected, WriteOutcome::Applied) => "two",
            other => panic!("task {}: {other:?}, want exactly one applied", task.id),
        };
        wins[usize::from(winner == "two")] += 1;
        let stored = two.get_task(task.id).await.unwrap().unwrap();
        assert_eq!(stored.reason.as_deref(), Some(winner));
        assert_eq!(stored.lease_epoch, 1);
    }
    assert_eq!(wins[0] + wins[1], tasks.len());

    // The completion with the winner's epoch applies once; the loser's retry does not.
    let mut done = running(&tasks[0], 1);
    done.status = TaskStatus::Completed;
    let complete = TaskWrite {
        task: done,
        expected_epoch: Some(1),
    };
    let (x, y) = tokio::join!(one.write_task(complete.clone()), two.write_task(complete));
    let mut outcomes = [x.unwrap(), y.unwrap()];
    outcomes.sort_by_key(|o| *o == WriteOutcome::Rejected);
    assert_eq!(outcomes, [WriteOutcome::Applied, WriteOutcome::Rejected]);
}

async fn futures_join<T>(futures: Vec<impl std::future::Future<Output = T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(futures.len());
    for f in futures {
        out.push(f.await);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn prefixes_keep_instances_apart() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let (a, b) = (
        connect(&server.url(), "a").await,
        connect(&server.url(), "b").await,
    );
    let task = sample_task("acme", "shell");
    a.create_task(task.clone()).await.unwrap();
    a.put_agent(sample_agent("coder")).await.unwrap();
    assert!(a.create_user(user("admin")).await.unwrap());
    assert_eq!(b.get_task(task.id).await.unwrap(), None);
    assert!(b.list_tasks(TaskQuery::default()).await.unwrap().is_empty());
    assert!(b.list_agents().await.unwrap().is_empty());
    assert!(b.create_user(user("admin")).await.unwrap());
    assert_eq!(a.count_users().await.unwrap(), 1);
}

/// A store the previous release wrote (everything but the `mcp_servers`
/// hash, which did not exist) keeps its data and gains MCP servers: the new
/// key needs no migration, and an absent hash reads as none.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_from_before_mcp_servers_gains_them() {
    use fabric_core::mcp::{McpServerRecord, McpServerSpec, McpStore as _};
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let old = connect(&server.url(), "up").await;
    let task = sample_task("acme", "shell");
    old.create_task(task.clone()).await.unwrap();
    old.put_agent(sample_agent("coder")).await.unwrap();
    old.close().await;
    let mut conn = raw(&server.url());
    let exists: bool = redis::cmd("EXISTS")
        .arg("up:mcp_servers")
        .query(&mut conn)
        .unwrap();
    assert!(!exists, "the previous release's layout has no MCP servers");

    let store = connect(&server.url(), "up").await;
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
    assert_eq!(store.list_agents().await.unwrap().len(), 1);
}

/// A store the release before worker nodes wrote keeps its data and gains
/// nodes, join tokens and a node config: new keys, absent reads as none.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_from_before_nodes_gains_them() {
    use fabric_core::node::{NodeConfig, NodeStore as _};
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let old = connect(&server.url(), "up").await;
    let task = sample_task("acme", "shell");
    old.create_task(task.clone()).await.unwrap();
    old.put_agent(sample_agent("coder")).await.unwrap();
    old.close().await;
    let mut conn = raw(&server.url());
    for key in ["up:nodes", "up:node_join_tokens", "up:node_config"] {
        let exists: bool = redis::cmd("EXISTS").arg(key).query(&mut conn).unwrap();
        assert!(!exists, "the previous release's layout has no {key}");
    }

    let store = connect(&server.url(), "up").await;
    assert_eq!(store.get_task(task.id).await.unwrap(), Some(task));
    assert_eq!(store.list_agents().await.unwrap().len(), 1);
    assert!(store.list_nodes().await.unwrap().is_empty());
    assert!(store.list_join_tokens().await.unwrap().is_empty());
    assert_eq!(store.get_node_config().await.unwrap(), None);
    let config = NodeConfig {
        version: 1,
        ..Default::default()
    };
    store.put_node_config(config.clone()).await.unwrap();
    assert_eq!(store.get_node_config().await.unwrap(), Some(config));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_share_pipelines_and_close_flushes_dropped_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let store = connect(&server.url(), "fabric").await;
    assert_eq!(store.stats(), StoreStats::default());
    // Redis answers nobody for a second: the first pipeline waits in it, and
    // every write submitted meanwhile (at the call) queues behind it, so all
    // 500 go in at most two pipelines, however fast or slow the machine.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1000)
        .query(&mut raw(&server.url()))
        .unwrap();
    let pending: Vec<_> = (0..500)
        .map(|_| store.create_task(sample_task("acme", "shell")))
        .collect();
    for outcome in pending {
        assert!(matches!(outcome.await.unwrap(), CreateOutcome::Created(_)));
    }
    let stats = store.stats();
    assert_eq!(stats.ops, 500, "{stats:?}");
    assert!(stats.transactions <= 2, "no batching: {stats:?}");

    let dropped: Vec<_> = (0..50).map(|_| sample_task("globex", "shell")).collect();
    for task in &dropped {
        drop(store.create_task(task.clone()));
    }
    store.close().await;
    let err = store.get_task(dropped[0].id).await.unwrap_err();
    assert!(err.to_string().contains("the store is closed"), "{err}");
    let err = store.put_agent(sample_agent("x")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");

    let store = connect(&server.url(), "fabric").await;
    let globex = TaskQuery {
        tenant: Some(TenantId::new("globex").unwrap()),
        limit: 1000,
        ..TaskQuery::default()
    };
    assert_eq!(
        store.list_tasks(globex).await.unwrap().len(),
        dropped.len(),
        "every fire-and-forget write submitted before close is stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_op_does_not_fail_its_pipeline_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let store = connect(&server.url(), "fabric").await;
    let (a, b) = (sample_task("acme", "shell"), sample_task("acme", "shell"));

    let create_a = store.create_task(a.clone());
    let first = store.append_events(vec![event(&a, 1)]);
    let duplicate = store.append_events(vec![event(&a, 5), event(&a, 1)]);
    let same_id = store.create_task(a.clone());
    let create_b = store.create_task(b.clone());
    let second = store.append_events(vec![event(&b, 2)]);

    assert_eq!(create_a.await.unwrap(), CreateOutcome::Created(a.clone()));
    first.await.unwrap();
    let err = duplicate.await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("cannot append event 1: an event with this seq is already stored"),
        "{err}"
    );
    let err = same_id.await.unwrap_err();
    assert!(
        err.to_string()
            .contains("a task with this id already exists"),
        "{err}"
    );
    assert_eq!(create_b.await.unwrap(), CreateOutcome::Created(b.clone()));
    second.await.unwrap();
    // The refused append is all or nothing: seq 5 is not stored.
    assert_eq!(
        store.task_events(a.id, 0, 10).await.unwrap(),
        vec![event(&a, 1)]
    );
    assert_eq!(store.last_event_seq().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_data_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let store = connect(&server.url(), "fabric").await;
    let task = sample_task("acme", "shell");
    store.create_task(task.clone()).await.unwrap();
    store.put_agent(sample_agent("coder")).await.unwrap();
    let session = AgentSession {
        tasks_done: 3,
        ..sample_session("coder", 1)
    };
    store.put_session(session).await.unwrap();

    let mut conn = raw(&server.url());
    let _: () = redis::cmd("HSET")
        .arg(format!("fabric:task:{}", task.id))
        .arg("body")
        .arg("{\"id\": 12")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("fabric:agents")
        .arg("coder")
        .arg("null")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("fabric:event_seq")
        .arg("minus one")
        .query(&mut conn)
        .unwrap();

    let err = store.get_task(task.id).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("stored task {} does not decode", task.id)),
        "{err}"
    );
    for result in [
        store.list_tasks(TaskQuery::default()).await.map(drop),
        store.unfinished_tasks().await.map(drop),
        store.list_agents().await.map(drop),
        store.last_event_seq().await.map(drop),
    ] {
        assert!(matches!(result, Err(StoreError::Corrupt(_))), "{result:?}");
    }
    // A key of the wrong type is a clear error too.
    let _: () = redis::cmd("SET")
        .arg("fabric:users")
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let err = store.count_users().await.unwrap_err();
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    // And the store keeps working for everything else.
    let other = sample_task("acme", "shell");
    assert_eq!(
        store.create_task(other.clone()).await.unwrap(),
        CreateOutcome::Created(other)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_flush_fails_one_write_as_retryable_then_scripts_are_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let store = connect(&server.url(), "fabric").await;
    let first = sample_task("acme", "shell");
    store.create_task(first.clone()).await.unwrap();

    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut raw(&server.url()))
        .unwrap();
    // Reads reload the scripts themselves and retry.
    assert_eq!(
        store.list_tasks(TaskQuery::default()).await.unwrap(),
        vec![first.clone()]
    );
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut raw(&server.url()))
        .unwrap();
    let lost = sample_task("acme", "shell");
    let err = store.create_task(lost.clone()).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("SCRIPT FLUSH"), "{err}");
    assert_eq!(store.get_task(lost.id).await.unwrap(), None);
    assert_eq!(
        store.create_task(lost.clone()).await.unwrap(),
        CreateOutcome::Created(lost)
    );
}
