//! What can go wrong talking to Redis, and how it maps onto the port's [`StoreError`].
//!
//! Messages name the server as `host:port` (or the socket path), never the URL:
//! the URL may hold a password (NFR-SEC-2).

use std::time::Duration;

use fabric_core::StoreError;

/// A Redis store failure, with enough context to act on. Callers of the ports
/// see it as a [`StoreError`]; `connect` callers see the same text.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    /// The URL does not parse; `url` is already redacted.
    #[error(
        "invalid Redis URL {url}: {reason}; expected redis://[[user]:password@]host[:port][/db]"
    )]
    InvalidUrl { url: String, reason: String },

    #[error("invalid Redis key prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        prefix: String,
        reason: &'static str,
    },

    #[error("cannot connect to Redis at {addr}: {detail}; is redis-server running?")]
    Connect { addr: String, detail: String },

    #[error(
        "Redis at {addr} refused the credentials: {detail}; check the password in the store URL (FABRIC_STORE)"
    )]
    Auth { addr: String, detail: String },

    /// The connection broke while commands were in flight: they may or may not
    /// have been applied.
    #[error(
        "lost the connection to Redis at {addr} ({detail}); the operation may or may not have been applied, retry it once Redis is back"
    )]
    Lost { addr: String, detail: String },

    /// Redis restarted and is still reading its data from disk.
    #[error("Redis at {addr} is loading its data from disk; retry in a moment")]
    Loading { addr: String },

    #[error(
        "Redis at {addr} did not answer within {secs} s; the operation may or may not have been applied (is Redis overloaded or its disk slow?)"
    )]
    Timeout { addr: String, secs: f64 },

    /// A command failed on the server. `context` says what the store was doing.
    #[error("{context}: Redis answered: {detail}")]
    Command { context: String, detail: String },

    /// The store's own Lua script refused the operation; `message` says why.
    #[error("{0}")]
    Refused(String),

    /// A fenced write carried a leadership generation that is no longer the
    /// current one: another orchestrator took over this prefix. Nothing was written.
    #[error(
        "this orchestrator is no longer the active one for store prefix {prefix:?} (its leadership generation {ours} was superseded by {current}); the write was not applied and it stands down: restart it to run as a standby"
    )]
    Deposed {
        prefix: String,
        ours: String,
        current: String,
    },

    /// A leadership call that needs the leadership taken first.
    #[error(
        "this store never took the leadership of prefix {prefix:?}; call acquire_leadership first"
    )]
    NotLeader { prefix: String },

    /// `NOSCRIPT`: Redis' script cache was emptied under a live connection
    /// (`SCRIPT FLUSH`); the write was not applied and the scripts are reloaded.
    #[error(
        "Redis lost the store's Lua scripts (was SCRIPT FLUSH run?); the write was not applied, retry it"
    )]
    ScriptsLost,

    #[error("the store is closed; no more reads or writes are accepted")]
    Closed,

    #[error(
        "the Redis store writer stopped unexpectedly; see earlier errors in the log and restart the server"
    )]
    WriterGone,

    /// A value does not fit what the store can represent exactly.
    #[error("{what} {value} is too large to store in Redis (the limit is {limit})")]
    OutOfRange {
        what: &'static str,
        value: u64,
        limit: u64,
    },

    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        what: String,
        source: serde_json::Error,
    },

    /// Stored bytes do not decode: a bug, or something else wrote under our prefix.
    #[error(
        "{what}: {detail}; restore Redis from a backup, or check that nothing else writes under this key prefix"
    )]
    Corrupt { what: String, detail: String },
}

impl RedisStoreError {
    /// Classifies a client error. `addr` is the redacted server address.
    pub(crate) fn from_client(
        addr: &str,
        response_timeout: Duration,
        context: impl FnOnce() -> String,
        e: &::redis::RedisError,
    ) -> Self {
        let detail = client_detail(e);
        if e.kind() == ::redis::ErrorKind::AuthenticationFailed
            || e.code().is_some_and(|c| c == "WRONGPASS" || c == "NOAUTH")
        {
            return Self::Auth {
                addr: addr.to_owned(),
                detail,
            };
        }
        if e.is_timeout() {
            return Self::Timeout {
                addr: addr.to_owned(),
                secs: response_timeout.as_secs_f64(),
            };
        }
        if e.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::BusyLoading) {
            return Self::Loading {
                addr: addr.to_owned(),
            };
        }
        if e.is_connection_refusal() {
            return Self::Connect {
                addr: addr.to_owned(),
                detail,
            };
        }
        if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
            return Self::Lost {
                addr: addr.to_owned(),
                detail,
            };
        }
        Self::Command {
            context: context(),
            detail,
        }
    }

    /// Whether the connection this came from is unusable and must be replaced.
    pub(crate) fn breaks_connection(&self) -> bool {
        matches!(self, Self::Lost { .. } | Self::Connect { .. })
    }
}

/// The client's error text, which names neither the URL nor the password.
fn client_detail(e: &::redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (None, Some(detail)) => detail.to_owned(),
        _ => e.to_string(),
    }
}

impl From<RedisStoreError> for StoreError {
    fn from(e: RedisStoreError) -> Self {
        let message = e.to_string();
        match e {
            RedisStoreError::Connect { .. }
            | RedisStoreError::Lost { .. }
            | RedisStoreError::Timeout { .. }
            | RedisStoreError::Loading { .. }
            | RedisStoreError::ScriptsLost
            | RedisStoreError::Deposed { .. }
            | RedisStoreError::Closed
            | RedisStoreError::WriterGone => StoreError::Unavailable(message),
            RedisStoreError::Corrupt { .. } => StoreError::Corrupt(message),
            RedisStoreError::InvalidUrl { .. }
            | RedisStoreError::InvalidPrefix { .. }
            | RedisStoreError::Auth { .. }
            | RedisStoreError::Command { .. }
            | RedisStoreError::Refused(_)
            | RedisStoreError::NotLeader { .. }
            | RedisStoreError::OutOfRange { .. }
            | RedisStoreError::Encode { .. } => StoreError::Backend(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_problems_are_retryable() {
        let e = StoreError::from(RedisStoreError::Connect {
            addr: "127.0.0.1:1".to_owned(),
            detail: "Connection refused (os error 111)".to_owned(),
        });
        assert!(e.is_retryable(), "{e:?}");
        assert_eq!(
            e.to_string(),
            "store unavailable: cannot connect to Redis at 127.0.0.1:1: Connection refused (os error 111); is redis-server running?"
        );
        let e = StoreError::from(RedisStoreError::Closed);
        assert!(e.is_retryable());
    }

    #[test]
    fn refusals_are_backend_errors() {
        let e = StoreError::from(RedisStoreError::Refused("no".to_owned()));
        assert!(matches!(e, StoreError::Backend(_)), "{e:?}");
        let e = StoreError::from(RedisStoreError::Corrupt {
            what: "stored task x does not decode".to_owned(),
            detail: "eof".to_owned(),
        });
        assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    }
}
