//! What can go wrong inside a store, and how it maps onto the port's [`StoreError`].

use std::io;
use std::path::PathBuf;

use fabric_core::StoreError;
use rusqlite::ErrorCode;

/// A SQLite store failure, with enough context to act on. Callers of the ports
/// see it as a [`StoreError`]; `open` callers see the same text.
#[derive(Debug, thiserror::Error)]
pub enum SqliteStoreError {
    #[error(
        "cannot create data directory {path}: {source}; check FABRIC_DATA_DIR and its permissions"
    )]
    CreateDir { path: PathBuf, source: io::Error },

    #[error("cannot open database at {path}: {source}; check FABRIC_DATA_DIR and its permissions")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },

    #[error("cannot configure database at {path} ({setting}): {source}")]
    Configure {
        path: PathBuf,
        setting: &'static str,
        source: rusqlite::Error,
    },

    #[error(
        "database at {path} refused write-ahead logging (journal mode is {mode:?}); keep FABRIC_DATA_DIR on a local filesystem"
    )]
    NoWal { path: PathBuf, mode: String },

    #[error(
        "database at {path} has schema version {found}, newer than this build understands ({supported}); upgrade reactor-fabric or restore a backup"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    #[error("cannot migrate database at {path} to schema version {version}: {source}")]
    Migrate {
        path: PathBuf,
        version: i64,
        source: rusqlite::Error,
    },

    #[error(
        "cannot start the store writer thread: {0}; the system may be out of threads or memory"
    )]
    SpawnWriter(io::Error),

    #[error("the store is closed; no more reads or writes are accepted")]
    Closed,

    #[error(
        "the store writer thread stopped unexpectedly; see earlier errors in the log and restart the server"
    )]
    WriterGone,

    #[error("a store read was cancelled (the runtime is shutting down or the read panicked): {0}")]
    ReadAborted(String),

    /// A statement failed. `context` says what the store was doing.
    #[error("{context}: {source}")]
    Sql {
        context: String,
        source: rusqlite::Error,
    },

    /// A value does not fit SQLite's signed 64-bit integers.
    #[error("{what} {value} is too large to store (the limit is {})", i64::MAX)]
    OutOfRange { what: &'static str, value: u64 },

    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        what: String,
        source: serde_json::Error,
    },

    /// Stored bytes do not decode: a bug or a damaged database file.
    #[error("{what}: {detail}; restore the database from a backup")]
    Corrupt { what: String, detail: String },
}

impl SqliteStoreError {
    /// Wraps a statement error with what the store was doing.
    pub(crate) fn sql(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> Self {
        let context = context.into();
        move |source| {
            if is_decode_error(&source) {
                Self::Corrupt {
                    what: context,
                    detail: source.to_string(),
                }
            } else {
                Self::Sql { context, source }
            }
        }
    }
}

/// Errors that mean a column held something other than what the schema promises.
fn is_decode_error(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..)
    )
}

impl From<SqliteStoreError> for StoreError {
    fn from(e: SqliteStoreError) -> Self {
        let message = e.to_string();
        match &e {
            SqliteStoreError::Closed
            | SqliteStoreError::WriterGone
            | SqliteStoreError::ReadAborted(_) => StoreError::Unavailable(message),
            SqliteStoreError::Corrupt { .. } => StoreError::Corrupt(message),
            SqliteStoreError::Sql { source, .. } => match source.sqlite_error_code() {
                // Another process holds the lock longer than busy_timeout: retrying may help.
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                    StoreError::Unavailable(message)
                }
                Some(ErrorCode::DiskFull) => {
                    StoreError::Backend(format!("{message}; free disk space under FABRIC_DATA_DIR"))
                }
                Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                    StoreError::Corrupt(format!("{message}; restore the database from a backup"))
                }
                _ => StoreError::Backend(message),
            },
            SqliteStoreError::Open { source, .. } | SqliteStoreError::Configure { source, .. } => {
                match source.sqlite_error_code() {
                    Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                        StoreError::Corrupt(message)
                    }
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                        StoreError::Unavailable(message)
                    }
                    _ => StoreError::Backend(message),
                }
            }
            SqliteStoreError::CreateDir { .. }
            | SqliteStoreError::NoWal { .. }
            | SqliteStoreError::SchemaTooNew { .. }
            | SqliteStoreError::Migrate { .. }
            | SqliteStoreError::SpawnWriter(_)
            | SqliteStoreError::OutOfRange { .. }
            | SqliteStoreError::Encode { .. } => StoreError::Backend(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn busy_is_retryable_and_disk_full_says_what_to_do() {
        let busy = StoreError::from(SqliteStoreError::sql("inserting task")(failure(
            rusqlite::ffi::SQLITE_BUSY,
        )));
        assert!(busy.is_retryable(), "{busy:?}");
        assert!(busy.to_string().contains("inserting task"), "{busy}");

        let full = StoreError::from(SqliteStoreError::sql("committing")(failure(
            rusqlite::ffi::SQLITE_FULL,
        )));
        assert!(matches!(full, StoreError::Backend(_)), "{full:?}");
        assert!(full.to_string().contains("free disk space"), "{full}");
    }

    #[test]
    fn column_type_mismatches_are_corruption() {
        let e =
            rusqlite::Error::InvalidColumnType(0, "body".into(), rusqlite::types::Type::Integer);
        let mapped = StoreError::from(SqliteStoreError::sql("reading task x")(e));
        assert!(matches!(mapped, StoreError::Corrupt(_)), "{mapped:?}");
    }

    #[test]
    fn closed_is_unavailable() {
        let e = StoreError::from(SqliteStoreError::Closed);
        assert!(e.is_retryable());
        assert_eq!(
            e.to_string(),
            "store unavailable: the store is closed; no more reads or writes are accepted"
        );
    }
}
