//! Wire formats: serde types of each API the gateway serves or calls, and the
//! small helpers that turn their polymorphic fields into the gateway's types.

pub mod anthropic;
#[cfg(feature = "openapi")]
pub mod docs;
pub mod ollama;
pub mod openai;

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch (OpenAI's `created`).
pub fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// RFC 3339 now (Ollama's `created_at`).
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
