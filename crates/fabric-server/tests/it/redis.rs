//! The server on the Redis store: the HTTP API creates and completes a task,
//! and everything lives in Redis, not in the data dir.

use fabric_core::TaskStatus;
use fabric_server::StoreConfig;
use fabric_store::redis::testing::RedisServer;
use serde_json::json;

use crate::harness::TestServer;

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
