//! Durable stores behind the [`fabric_core::TaskStore`],
//! [`fabric_core::AuthStore`] and [`fabric_core::AgentStore`] ports.
//!
//! [`SqliteStore`] is the embedded default: one file under `FABRIC_DATA_DIR`,
//! WAL mode, `synchronous=FULL`. A write is acknowledged only once its
//! transaction is on disk, so an acknowledged task survives `kill -9`
//! (NFR-REL-1, REQUIREMENTS §4). To still reach thousands of writes per second, all writes
//! go to one writer thread that commits whatever is queued as a single
//! transaction (group commit): one fsync serves the whole batch.
//!
//! [`RedisStore`] (feature `redis`) is the backend of the Docker and
//! scale-out shapes: one writer task pipelines writes in call order on one
//! connection, Lua scripts make the guarded operations atomic, and with
//! `appendfsync always` Redis acknowledges a pipeline after one AOF fsync.
//!
//! # Layout
//!
//! - [`sqlite`]: [`SqliteStore`], the handle and the port implementations.
//!   - `sqlite/writer.rs`: the writer thread, group commit, the write SQL.
//!   - `sqlite/reader.rs`: the read-only connection pool and the read SQL.
//!   - `sqlite/schema.rs`: connection settings and `user_version` migrations.
//!   - `sqlite/rows.rs`: records to rows (columns to query by, JSON body).
//! - `redis` (feature `redis`): `RedisStore`, `RedisConfig`.
//!   - `redis/writer.rs`: the writer task, pipelines, reconnection.
//!   - `redis/scripts.rs`: the Lua scripts (create, fenced write, events, lists,
//!     leadership); the writing ones refuse a deposed leadership generation.
//!   - `redis/leader.rs`: leadership of a key prefix (acquire, renew, release)
//!     among orchestrators sharing one Redis.
//!   - `redis/keys.rs`: the key layout and indexes.
//!   - `redis/conn.rs`: URL (password redaction), connections, durability check.
//!   - `redis/testing.rs` (with `conformance`): a throwaway `redis-server`.
//! - [`error`]: [`SqliteStoreError`] and its mapping onto [`fabric_core::StoreError`].
//! - `conformance` (feature `conformance`): the behaviour every backend must
//!   show, as a generic suite its tests run.

pub mod error;
#[cfg(feature = "redis")]
pub mod redis;
pub mod sqlite;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::SqliteStoreError;
#[cfg(feature = "redis")]
pub use redis::{RedisConfig, RedisStore, RedisStoreError};
pub use sqlite::{SqliteStore, StoreStats};
