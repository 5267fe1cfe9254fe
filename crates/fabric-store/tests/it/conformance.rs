//! The shared conformance suite against every backend.

use fabric_store::redis::testing::RedisServer;
use fabric_store::{RedisConfig, RedisStore, SqliteStore};

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    fabric_store::conformance::run_all(|| {
        n += 1;
        // Each check gets its own empty database; the nested path also
        // exercises parent-directory creation.
        let path = dir.path().join(format!("check-{n}")).join("fabric.db");
        async move { SqliteStore::open(&path).unwrap() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let url = server.url();
    let mut n = 0;
    fabric_store::conformance::run_all(|| {
        n += 1;
        // Each check gets its own empty key space on the one server.
        let config = RedisConfig::new(url.clone()).with_prefix(format!("check-{n}"));
        async move { RedisStore::connect(config).await.unwrap() }
    })
    .await;
}
