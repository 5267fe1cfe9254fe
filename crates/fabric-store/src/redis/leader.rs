//! Leadership of a key prefix: which one of several orchestrators sharing a
//! Redis is the active one, and the generation that fences everybody else.
//!
//! `{prefix}:leader` holds `"<generation>:<owner>"` with a TTL, and
//! `{prefix}:leader_gen` counts takeovers. The active orchestrator renews the
//! TTL well before it runs out; when it stops renewing (crash, pause,
//! partition) the key expires and a standby takes it, bumping the generation.
//! From then on every fenced script (task create and write, events, agents)
//! called with the old generation refuses before writing anything, whatever
//! the deposed orchestrator still believes. Safety rests on that check inside
//! Redis, not on clocks: the TTL only decides how soon a standby may take over.
//!
//! The leadership calls go over the read connection, which retries once after
//! a broken connection. That is safe for all three: a repeated acquire finds
//! the key already ours and takes a newer generation (the one it returns),
//! and renew and release are idempotent.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::redis::{Value, cmd};
use fabric_core::StoreError;
use tokio::sync::watch;

use super::error::RedisStoreError;
use super::{RedisStore, codec, scripts};

/// The leadership this store took.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    owner: String,
    ttl: Duration,
    generation: u64,
}

/// What [`RedisStore::acquire_leadership`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// This store leads now; its fenced writes carry `generation`.
    Acquired { generation: u64 },
    /// Another orchestrator (`holder`, its owner id) leads, for `remaining`
    /// more unless it renews.
    Busy { holder: String, remaining: Duration },
}

/// What [`RedisStore::renew_leadership`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours, for another TTL from now.
    Renewed,
    /// The key expired (`holder` is `None`) or another orchestrator took it:
    /// this store no longer leads, and its fenced writes are refused.
    Lost { holder: Option<String> },
}

impl RedisStore {
    /// Takes the leadership of this store's prefix for `owner` (unique per
    /// process) if nobody holds it, or `owner` already does. On success, every
    /// fenced write this store submits from now on carries the new generation.
    pub async fn acquire_leadership(
        &self,
        owner: &str,
        ttl: Duration,
    ) -> Result<Acquire, StoreError> {
        let mut c = self.eval(&scripts::ACQUIRE_LEADERSHIP);
        c.arg(owner).arg(ttl_ms(ttl));
        let prefix = self.prefix().to_owned();
        let answer = self
            .read(
                c,
                format!("cannot take the leadership of prefix {prefix:?}"),
                |value| {
                    let what = "taking the leadership";
                    let items = codec::items(what, value)?;
                    match items.as_slice() {
                        [Value::Int(1), Value::Int(generation)] => Ok(Acquire::Acquired {
                            generation: u64::try_from(*generation).unwrap_or(0),
                        }),
                        [Value::Int(0), held, Value::Int(remaining)] => Ok(Acquire::Busy {
                            holder: holder(held.clone())?.unwrap_or_default(),
                            remaining: Duration::from_millis(
                                u64::try_from(*remaining).unwrap_or(0),
                            ),
                        }),
                        _ => Err(codec::unexpected(what, &Value::Array(items))),
                    }
                },
            )
            .await?;
        if let Acquire::Acquired { generation } = answer {
            *self.claim() = Some(Claim {
                owner: owner.to_owned(),
                ttl,
                generation,
            });
            self.inner
                .shared
                .generation
                .store(generation, Ordering::Release);
            self.inner.shared.deposed.send_replace(false);
            tracing::info!(prefix = %prefix, owner, generation, "took the leadership of the store prefix");
        }
        Ok(answer)
    }

    /// Extends the leadership by its TTL from now, if it is still ours.
    /// [`Renewal::Lost`] also marks the store deposed ([`RedisStore::deposed`]).
    pub async fn renew_leadership(&self) -> Result<Renewal, StoreError> {
        let claim = self.current_claim()?;
        let mut c = self.eval(&scripts::RENEW_LEADERSHIP);
        c.arg(&claim.owner)
            .arg(claim.generation)
            .arg(ttl_ms(claim.ttl));
        let answer = self
            .read(
                c,
                format!("cannot renew the leadership of prefix {:?}", self.prefix()),
                |value| {
                    let what = "renewing the leadership";
                    let items = codec::items(what, value)?;
                    match items.as_slice() {
                        [Value::Int(1)] => Ok(Renewal::Renewed),
                        [Value::Int(0), held] => Ok(Renewal::Lost {
                            holder: holder(held.clone())?,
                        }),
                        // Lua's `false` (no key) arrives as nil, which may drop out of the array.
                        [Value::Int(0)] => Ok(Renewal::Lost { holder: None }),
                        _ => Err(codec::unexpected(what, &Value::Array(items))),
                    }
                },
            )
            .await?;
        if answer != Renewal::Renewed {
            self.inner.shared.deposed.send_replace(true);
        }
        Ok(answer)
    }

    /// Gives the leadership up (a clean stop), so a standby takes over at once
    /// instead of after the TTL. `false` if it was no longer ours.
    pub async fn release_leadership(&self) -> Result<bool, StoreError> {
        let claim = self.current_claim()?;
        let mut c = self.eval(&scripts::RELEASE_LEADERSHIP);
        c.arg(&claim.owner).arg(claim.generation);
        let released = self
            .read(
                c,
                format!(
                    "cannot release the leadership of prefix {:?}",
                    self.prefix()
                ),
                super::flag("releasing the leadership"),
            )
            .await?;
        Ok(released)
    }

    /// The owner id of whoever leads this prefix now, if anyone.
    pub async fn leader(&self) -> Result<Option<String>, StoreError> {
        let c = cmd("GET").arg(self.inner.keys.leader()).clone();
        self.read(c, "cannot read the leader".to_owned(), holder)
            .await
    }

    /// The generation this store's fenced writes carry (0: never took the
    /// leadership, so they are not checked).
    pub fn leader_generation(&self) -> u64 {
        self.inner.shared.generation.load(Ordering::Acquire)
    }

    /// Turns `true` once this store is known to have lost the leadership: a
    /// fenced write was refused, or a renewal found the key gone or taken.
    pub fn deposed(&self) -> watch::Receiver<bool> {
        self.inner.shared.deposed.subscribe()
    }

    /// The key prefix (without the trailing `:`).
    pub fn prefix(&self) -> &str {
        self.inner.keys.name()
    }

    fn claim(&self) -> std::sync::MutexGuard<'_, Option<Claim>> {
        // A panic while holding the lock cannot leave the claim half-written.
        self.inner
            .claim
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn current_claim(&self) -> Result<Claim, RedisStoreError> {
        self.claim()
            .clone()
            .ok_or_else(|| RedisStoreError::NotLeader {
                prefix: self.prefix().to_owned(),
            })
    }
}

/// `PX` wants at least 1 ms.
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The owner part of a `"<generation>:<owner>"` value (nil: nobody).
fn holder(value: Value) -> Result<Option<String>, RedisStoreError> {
    Ok(codec::bytes("the leader key", value)?.map(|b| {
        let text = String::from_utf8_lossy(&b);
        match text.split_once(':') {
            Some((_, owner)) => owner.to_owned(),
            None => text.into_owned(),
        }
    }))
}
