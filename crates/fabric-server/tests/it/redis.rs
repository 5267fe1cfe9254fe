//! The server on the Redis store: the HTTP API creates and completes a task,
//! and everything lives in Redis, not in the data dir; several servers on one
//! key prefix (active/standby, deposed leaders, rejected leases).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fabric_core::{TaskQuery, TaskStatus, TaskStore, TaskWrite, WriteOutcome};
use fabric_server::StoreConfig;
use fabric_store::redis::testing::RedisServer;
use fabric_store::{RedisConfig, RedisStore};
use serde_json::{Value, json};

use crate::harness::{TestServer, error_code};

#[tokio::test(flavor = "multi_thread")]
async fn a_task_runs_to_completion_on_the_redis_store() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&dir.path().join("redis"));
    let store = StoreConfig::Redis {
        url: redis.url(),
        prefix: "it".to_owned(),
    };

    let first_store = store.clone();
    let server = TestServer::start_with(move |c| c.store = first_store).await;
    let token = server.login().await;
    let id = server
        .create(
            &token,
            json!({"commands": ["echo from-redis"], "name": "r"}),
        )
        .await;
    let done = server.wait_done(&token, &id).await;
    assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
    let result = done.result.unwrap();
    assert_eq!(result.stdout, "from-redis\n");
    let (status, events) = server.get(&token, &format!("/v1/tasks/{id}/events")).await;
    assert_eq!(status, 200, "{events}");
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "result"),
        "{events}"
    );
    assert!(
        !server.data_dir.join("fabric.db").exists(),
        "no SQLite database beside the Redis store"
    );
    server.stop().await;

    // Another server with a fresh data dir but the same Redis sees the task
    // and the admin (created on the first start, not again).
    let server = TestServer::start_with(move |c| c.store = store).await;
    let token = server.login().await;
    assert_eq!(server.status_of(&token, &id).await, TaskStatus::Completed);
    let (status, list) = server.get(&token, "/v1/tasks").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1, "{list}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_redis_fails_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = fabric_server::ServerConfig {
        data_dir: dir.path().to_path_buf(),
        store: StoreConfig::Redis {
            url: format!("redis://:topsecret@127.0.0.1:{port}/0"),
            prefix: "it".to_owned(),
        },
        admin_password: Some("x-password-1".into()),
        ..fabric_server::ServerConfig::default()
    };
    let err = fabric_server::run(config, listener, std::future::pending())
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("cannot connect to Redis at 127.0.0.1:{port}")),
        "{msg}"
    );
    assert!(msg.contains("is redis-server running?"), "{msg}");
    assert!(!msg.contains("topsecret"), "{msg}");
}

fn shared_store(redis: &RedisServer, prefix: &str) -> StoreConfig {
    StoreConfig::Redis {
        url: redis.url(),
        prefix: prefix.to_owned(),
    }
}

/// Short, so takeovers are quick; renewals go every third of it, which a
/// loaded 2-core machine still manages (a 1 s TTL missed renewals there).
const TTL: Duration = Duration::from_secs(3);

/// Polls `/readyz` until its body has `status`; returns that body.
async fn wait_readyz(server: &TestServer, status: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = server.readyz().await;
        if body["status"] == status {
            return (code, body);
        }
        assert!(
            Instant::now() < deadline,
            "readyz never said {status}: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue #4: two orchestrators on one Redis prefix: the second stands by
/// (503 `standby` on /readyz, /v1 refused, /healthz fine) for as long as the
/// first renews its leadership, and takes over when the first stops.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_server_on_the_prefix_stands_by_until_the_first_stops() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&dir.path().join("redis"));
    let store = shared_store(&redis, "ha");
    let config = |c: &mut fabric_server::ServerConfig| {
        c.store = store.clone();
        c.leader_ttl = TTL;
    };
    let first = TestServer::start_with(config).await;
    let token = first.login().await;
    let second = TestServer::spawn_with(config).await;

    let (code, body) = wait_readyz(&second, "standby").await;
    assert_eq!(code, 503, "{body}");
    let leader = body["leader"].as_str().unwrap().to_owned();
    assert!(
        leader.contains(&format!(":{}:", std::process::id())),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("standby for store prefix \"ha\""),
        "{body}"
    );
    let r = second
        .client
        .get(second.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a standby is alive");
    let (code, refused) = second
        .post(&token, "/v1/tasks", json!({"prompt": "x"}))
        .await;
    assert_eq!(
        (code, error_code(&refused)),
        (503, "unavailable"),
        "{refused}"
    );
    assert!(refused.to_string().contains("standby"), "{refused}");

    // The first serves for several TTLs while the second keeps standing by.
    let mut ids = Vec::new();
    let until = Instant::now() + TTL * 2;
    while Instant::now() < until {
        let id = first
            .create(&token, json!({"commands": ["echo served"]}))
            .await;
        assert_eq!(
            first.wait_done(&token, &id).await.status,
            TaskStatus::Completed
        );
        ids.push(id);
        let (code, body) = second.readyz().await;
        assert_eq!(
            (code, body["status"].as_str()),
            (503, Some("standby")),
            "{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A clean stop releases the leadership: the takeover need not wait for the TTL.
    first.stop().await;
    let stopped = Instant::now();
    second.wait_ready().await;
    assert!(stopped.elapsed() < TTL, "took {:?}", stopped.elapsed());
    let token = second.login().await;
    for id in &ids {
        assert_eq!(second.status_of(&token, id).await, TaskStatus::Completed);
    }
    let id = second
        .create(&token, json!({"commands": ["echo second"]}))
        .await;
    assert_eq!(
        second.wait_done(&token, &id).await.status,
        TaskStatus::Completed
    );
    second.stop().await;
}

/// What a deposed leader could change: every task and the event numbering.
async fn snapshot(store: &RedisStore) -> (Vec<fabric_core::Task>, u64) {
    let query = TaskQuery {
        limit: 100_000,
        ..TaskQuery::default()
    };
    (
        store.list_tasks(query).await.unwrap(),
        store.last_event_seq().await.unwrap(),
    )
}

/// Leadership taken away behind a running server's back (as a new leader
/// would): it notices, stops serving and exits with an error, and nothing it
/// tried to write after that moment is stored; the next leader reruns what
/// it was running, with a new epoch.
#[tokio::test(flavor = "multi_thread")]
async fn a_deposed_leader_stops_serving_and_none_of_its_later_writes_apply() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&dir.path().join("redis"));
    let store = shared_store(&redis, "dep");
    let config = |c: &mut fabric_server::ServerConfig| {
        c.store = store.clone();
        c.leader_ttl = TTL;
    };
    let server = TestServer::start_with(config).await;
    let token = server.login().await;
    let slow = server
        .create(&token, json!({"commands": ["sleep 1; echo late"]}))
        .await;
    server.wait_status(&token, &slow, TaskStatus::Running).await;
    // Clients keep creating noop tasks (each a create, a lease and a completion).
    let created = Arc::new(AtomicU64::new(0));
    let load = {
        let (client, url, token, created) = (
            server.client.clone(),
            server.url("/v1/tasks"),
            token.clone(),
            Arc::clone(&created),
        );
        tokio::spawn(async move {
            loop {
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"agent": "noop"}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        assert_eq!(status, 503, "{body}");
                        return body;
                    }
                    Err(e) => return json!(e.to_string()),
                }
            }
        })
    };
    // The takeover comes while the load runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while created.load(Ordering::Relaxed) < 10 {
        assert!(
            Instant::now() < deadline && !load.is_finished(),
            "the load never got going"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut raw = ::redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = ::redis::cmd("SET")
        .arg("dep:leader")
        .arg("999:thief")
        .arg("PX")
        .arg(60_000)
        .query(&mut raw)
        .unwrap();
    let _: u64 = ::redis::cmd("INCR")
        .arg("dep:leader_gen")
        .query(&mut raw)
        .unwrap();
    let observer = RedisStore::connect(RedisConfig::new(redis.url()).with_prefix("dep"))
        .await
        .unwrap();
    let at_takeover = snapshot(&observer).await;

    let deposed_at = Instant::now();
    let err = tokio::time::timeout(TTL * 3, server.exit())
        .await
        .expect("the deposed server kept running")
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("lost the leadership of its Redis store prefix"),
        "{msg}"
    );
    assert!(msg.contains("restart it to run as a standby"), "{msg}");
    assert!(
        deposed_at.elapsed() < TTL,
        "noticed after {:?}",
        deposed_at.elapsed()
    );
    let refusal = load.await.unwrap();
    let created = created.load(Ordering::Relaxed);
    eprintln!(
        "deposed: exited {:?} after the takeover; the load created {created} tasks, then got {refusal}",
        deposed_at.elapsed()
    );

    let after = snapshot(&observer).await;
    assert_eq!(
        after.1, at_takeover.1,
        "events were appended after the takeover"
    );
    assert_eq!(
        after.0.len(),
        at_takeover.0.len(),
        "tasks were created after the takeover"
    );
    assert_eq!(
        after.0, at_takeover.0,
        "tasks were changed after the takeover"
    );
    let stored = observer
        .get_task(slow.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.status, stored.attempt), (TaskStatus::Running, 1));

    // The usurper goes away; the next leader requeues the slow task with a
    // new epoch and runs it to completion, recorded once.
    let _: () = ::redis::cmd("DEL")
        .arg("dep:leader")
        .query(&mut raw)
        .unwrap();
    let next = TestServer::start_with(config).await;
    let token = next.login().await;
    let done = next.wait_done(&token, &slow).await;
    assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
    assert_eq!(done.result.unwrap().stdout, "late\n");
    let (_, task) = next.get(&token, &format!("/v1/tasks/{slow}")).await;
    assert_eq!(task["attempt"], 2, "{task}");
    let (_, events) = next.get(&token, &format!("/v1/tasks/{slow}/events")).await;
    let results = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "result")
        .count();
    assert_eq!(results, 1, "{events}");
    next.stop().await;
}

/// A lease whose fenced write the store rejects (another writer changed the
/// task's epoch behind the scheduler) is not handed out: the agent gets the
/// next task instead, and the changed task is left as the store has it.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_the_store_rejects_is_not_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&dir.path().join("redis"));
    let store = shared_store(&redis, "rej");
    let server = TestServer::start_with(|c| c.store = store.clone()).await;
    let token = server.login().await;
    server
        .spawn_agent(&token, json!({"id": "ext", "external": true}))
        .await;
    let (status, minted) = server
        .post(&token, "/v1/auth/tokens", json!({"agent": "ext"}))
        .await;
    assert_eq!(status, 201, "{minted}");
    let agent_token = minted["token"].as_str().unwrap().to_owned();
    let first = server
        .create(&token, json!({"agent": "ext", "prompt": "one"}))
        .await;
    let second = server
        .create(&token, json!({"agent": "ext", "prompt": "two"}))
        .await;

    // A second store handle (generation 0: not fenced) bumps the first
    // task's epoch, as another writer would.
    let other = RedisStore::connect(RedisConfig::new(redis.url()).with_prefix("rej"))
        .await
        .unwrap();
    let mut changed = other
        .get_task(first.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    changed.lease_epoch = 7;
    changed.reason = Some("taken elsewhere".to_owned());
    let write = TaskWrite {
        task: changed.clone(),
        expected_epoch: None,
    };
    assert_eq!(
        other.write_task(write).await.unwrap(),
        WriteOutcome::Applied
    );

    let (status, lease) = server
        .post(&agent_token, "/v1/agent/lease?wait=5", json!({}))
        .await;
    assert_eq!(status, 200, "{lease}");
    assert_eq!(
        lease["task"]["id"],
        second.as_str(),
        "the rejected one is skipped"
    );
    let (status, none) = server
        .post(&agent_token, "/v1/agent/lease?wait=0.5", json!({}))
        .await;
    assert_eq!(status, 204, "the rejected task is never handed out: {none}");
    let stored = other
        .get_task(first.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored, changed,
        "the store keeps the other writer's version"
    );

    let epoch = lease["epoch"].as_u64().unwrap();
    let (status, done) = server
        .post(
            &agent_token,
            &format!("/v1/agent/tasks/{second}/complete"),
            json!({"epoch": epoch, "status": "completed"}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    server.stop().await;
}

/// Without any traffic to trip over the fence, a deposed leader notices at
/// its next renewal (every TTL/3) and exits the same way.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_deposed_leader_notices_at_its_next_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&dir.path().join("redis"));
    let store = shared_store(&redis, "idle");
    let server = TestServer::start_with(|c| {
        c.store = store.clone();
        c.leader_ttl = TTL;
    })
    .await;
    let mut raw = ::redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = ::redis::cmd("SET")
        .arg("idle:leader")
        .arg("7:someone-else")
        .query(&mut raw)
        .unwrap();
    let deposed_at = Instant::now();
    let err = tokio::time::timeout(TTL * 3, server.exit())
        .await
        .expect("the deposed server kept running")
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("orchestrator someone-else took over store prefix \"idle\""),
        "{err:#}"
    );
    assert!(
        deposed_at.elapsed() < TTL,
        "noticed after {:?}",
        deposed_at.elapsed()
    );
}

/// A Redis restart shorter than the TTL is not a lost leadership: failed
/// renewals are retried until the leadership would lapse, and the leader
/// keeps serving once Redis is back (its key survives in the AOF).
#[tokio::test(flavor = "multi_thread")]
async fn the_leader_rides_out_a_redis_restart_shorter_than_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(&dir.path().join("redis"));
    let store = shared_store(&redis, "blip");
    let ttl = Duration::from_secs(4);
    let server = TestServer::start_with(|c| {
        c.store = store.clone();
        c.leader_ttl = ttl;
    })
    .await;
    let token = server.login().await;
    // Longer than a renewal period (TTL/3): at least one renewal fails.
    redis.kill();
    tokio::time::sleep(ttl * 2 / 5).await;
    redis.restart();
    // Past the TTL counted from before the outage: renewals went on.
    tokio::time::sleep(ttl).await;
    let (code, body) = server.readyz().await;
    assert_eq!(code, 200, "{body}");
    let id = server
        .create(&token, json!({"commands": ["echo after the blip"]}))
        .await;
    assert_eq!(
        server.wait_done(&token, &id).await.status,
        TaskStatus::Completed
    );
    server.stop().await;
}

/// Issue #15: a revoked token is refused on the next request by every
/// orchestrator of the store, whichever of them revoked it.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_refused_by_every_orchestrator_of_the_store() {
    use fabric_core::AuthStore;

    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(&dir.path().join("redis"));
    let store = shared_store(&redis, "revoke");
    let config = |c: &mut fabric_server::ServerConfig| {
        c.store = store.clone();
        c.leader_ttl = TTL;
    };
    let first = TestServer::start_with(config).await;
    let admin = first.login().await;
    let mut secrets = Vec::new();
    for name in ["a", "b"] {
        let (status, t) = first
            .post(
                &admin,
                "/v1/auth/tokens",
                json!({"name": name, "scopes": ["read:tasks"]}),
            )
            .await;
        assert_eq!(status, 201, "{t}");
        let secret = t["token"].as_str().unwrap().to_owned();
        assert_eq!(first.get(&secret, "/v1/tasks").await.0, 200);
        secrets.push(secret);
    }

    // Revoked by another orchestrator (its store handle, as its API would):
    // this one refuses the token on the very next request.
    let other = RedisStore::connect(RedisConfig::new(redis.url()).with_prefix("revoke"))
        .await
        .unwrap();
    let a = other
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name.as_deref() == Some("a"))
        .unwrap();
    assert!(other.delete_token(a.token_hash).await.unwrap());
    assert_eq!(first.get(&secrets[0], "/v1/tasks").await.0, 401);
    assert_eq!(first.get(&secrets[1], "/v1/tasks").await.0, 200);

    // Revoked here: refused by the orchestrator that takes over.
    assert_eq!(first.delete(&admin, "/v1/auth/tokens/b").await.0, 200);
    first.stop().await;
    let second = TestServer::start_with(config).await;
    assert_eq!(second.get(&secrets[1], "/v1/tasks").await.0, 401);
    assert_eq!(
        second.get(&admin, "/v1/tasks").await.0,
        200,
        "the rest stay valid"
    );
}
