//! The shared conformance suite against the SQLite backend.

use fabric_store::SqliteStore;

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
