//! Records to and from what Redis holds (JSON bodies), and Redis answers to values.

use std::fmt::Display;

use ::redis::Value;
use fabric_core::Task;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::RedisStoreError;

/// Largest seq (a sorted-set score, a double) that is still exact.
pub(crate) const MAX_EXACT_SCORE: u64 = 1 << 53;

/// A task ready for the create and write scripts: the fields they check or
/// index by, plus the JSON body. Encoded on the caller's thread.
pub(crate) struct TaskFields {
    pub id: String,
    pub tenant: String,
    pub agent: String,
    pub status: &'static str,
    pub idempotency_key: Option<String>,
    pub epoch: String,
    pub body: String,
}

impl TaskFields {
    pub fn encode(task: &Task) -> Result<Self, RedisStoreError> {
        Ok(Self {
            id: task.id.to_string(),
            tenant: task.tenant.to_string(),
            agent: task.agent_id.to_string(),
            status: task.status.as_str(),
            idempotency_key: task.idempotency_key.clone(),
            epoch: task.lease_epoch.to_string(),
            body: encode_json(|| format!("task {}", task.id), task)?,
        })
    }

    /// `ARGV[3..=10]` of the task scripts (after prefix and generation).
    pub fn args(&self, cmd: &mut ::redis::Cmd) {
        let (has_key, key) = match &self.idempotency_key {
            Some(key) => ("1", key.as_str()),
            None => ("0", ""),
        };
        cmd.arg(&self.id)
            .arg(&self.tenant)
            .arg(&self.agent)
            .arg(self.status)
            .arg(has_key)
            .arg(key)
            .arg(&self.epoch)
            .arg(&self.body);
    }
}

/// Refuses values a sorted-set score cannot hold exactly.
pub(crate) fn exact_score(what: &'static str, value: u64) -> Result<u64, RedisStoreError> {
    if value > MAX_EXACT_SCORE {
        return Err(RedisStoreError::OutOfRange {
            what,
            value,
            limit: MAX_EXACT_SCORE,
        });
    }
    Ok(value)
}

pub(crate) fn encode_json<T: Serialize, W: Display>(
    what: impl FnOnce() -> W,
    value: &T,
) -> Result<String, RedisStoreError> {
    serde_json::to_string(value).map_err(|source| RedisStoreError::Encode {
        what: what().to_string(),
        source,
    })
}

pub(crate) fn decode_json<T: DeserializeOwned, W: Display>(
    what: impl FnOnce() -> W,
    body: &[u8],
) -> Result<T, RedisStoreError> {
    serde_json::from_slice(body).map_err(|e| RedisStoreError::Corrupt {
        what: format!("stored {} does not decode", what()),
        detail: e.to_string(),
    })
}

/// An answer that should have been of another shape.
pub(crate) fn unexpected(what: impl Display, value: &Value) -> RedisStoreError {
    RedisStoreError::Corrupt {
        what: format!("unexpected answer from Redis for {what}"),
        detail: format!("{value:?}"),
    }
}

/// A bulk string's bytes, or `None` for nil.
pub(crate) fn bytes(what: impl Display, value: Value) -> Result<Option<Vec<u8>>, RedisStoreError> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(b)),
        Value::SimpleString(s) => Ok(Some(s.into_bytes())),
        other => Err(unexpected(what, &other)),
    }
}

/// A JSON body, or `None` for nil.
pub(crate) fn optional_json<T: DeserializeOwned>(
    what: impl Display + Clone,
    value: Value,
) -> Result<Option<T>, RedisStoreError> {
    bytes(what.clone(), value)?
        .map(|b| decode_json(|| what, &b))
        .transpose()
}

pub(crate) fn int(what: impl Display, value: &Value) -> Result<i64, RedisStoreError> {
    match value {
        Value::Int(n) => Ok(*n),
        other => Err(unexpected(what, other)),
    }
}

/// An array answer's items (nil is an empty array).
pub(crate) fn items(what: impl Display, value: Value) -> Result<Vec<Value>, RedisStoreError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        // HGETALL under RESP3.
        Value::Map(pairs) => Ok(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        other => Err(unexpected(what, &other)),
    }
}

/// Bodies from an array of JSON strings.
pub(crate) fn json_list<T: DeserializeOwned>(
    what: &str,
    value: Value,
) -> Result<Vec<T>, RedisStoreError> {
    items(what, value)?
        .into_iter()
        .map(|item| match bytes(what, item)? {
            Some(b) => decode_json(|| what, &b),
            None => Err(RedisStoreError::Corrupt {
                what: format!("stored {what} does not decode"),
                detail: "nil in a list".to_owned(),
            }),
        })
        .collect()
}

/// `id, body, id, body, ...` (from the list scripts or HGETALL) decoded as
/// `kind {id}` bodies. A nil body (an index entry without its record) is damage.
pub(crate) fn json_pairs<T: DeserializeOwned>(
    kind: &str,
    value: Value,
) -> Result<Vec<T>, RedisStoreError> {
    let items = items(kind, value)?;
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(id), Some(body)) = (items.next(), items.next()) {
        let id = bytes(kind, id)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        match bytes(kind, body)? {
            Some(b) => out.push(decode_json(|| format!("{kind} {id}"), &b)?),
            None => {
                return Err(RedisStoreError::Corrupt {
                    what: format!("{kind} {id} is indexed but not stored"),
                    detail: "the index and the records disagree".to_owned(),
                });
            }
        }
    }
    Ok(out)
}
