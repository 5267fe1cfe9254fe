//! Durable stores behind the [`fabric_core::TaskStore`],
//! [`fabric_core::AuthStore`] and [`fabric_core::AgentStore`] ports.
//!
//! [`SqliteStore`] is the embedded default: one file under `FABRIC_DATA_DIR`,
//! WAL mode, `synchronous=FULL`. A write is acknowledged only once its
//! transaction is on disk, so an acknowledged task survives `kill -9`
//! (SPEC NFR-REL-1). To still reach thousands of writes per second, all writes
//! go to one writer thread that commits whatever is queued as a single
//! transaction (group commit): one fsync serves the whole batch.
//!
//! # Layout
//!
//! - [`sqlite`]: [`SqliteStore`], the handle and the port implementations.
//!   - `sqlite/writer.rs`: the writer thread, group commit, the write SQL.
//!   - `sqlite/reader.rs`: the read-only connection pool and the read SQL.
//!   - `sqlite/schema.rs`: connection settings and `user_version` migrations.
//!   - `sqlite/rows.rs`: records to rows (columns to query by, JSON body).
//! - [`error`]: [`SqliteStoreError`] and its mapping onto [`fabric_core::StoreError`].
//! - `conformance` (feature `conformance`): the behaviour every backend must
//!   show, as a generic suite its tests run.

pub mod error;
pub mod sqlite;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::SqliteStoreError;
pub use sqlite::{SqliteStore, StoreStats};
