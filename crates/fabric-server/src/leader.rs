//! Active/standby among orchestrators sharing one Redis store prefix.
//!
//! Each orchestrator has its own in-memory scheduler, so only one may act on
//! the prefix's tasks at a time. On start, a server on Redis takes the
//! prefix's leadership before it reloads anything ([`Leadership::acquire`]);
//! while another holds it, it stands by (`/readyz` 503 `standby`, `/v1`
//! refused) and tries again as the holder's TTL runs out. The leader renews
//! every TTL/3 ([`Leadership::keep`]); once it cannot prove it still leads
//! (the key is gone or taken, a fenced write was refused as deposed, or no
//! renewal succeeded within the TTL), it stops serving and exits non-zero so
//! a supervisor restarts it as a standby.
//!
//! Correctness does not rest on these timers: every task, event and agent
//! write carries the leadership generation and Redis refuses it once a newer
//! leader exists (`fabric_store::redis`, `leader.rs`). The timers only decide
//! how soon a standby takes over and how soon a deposed leader notices.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

use fabric_store::RedisStore;
use fabric_store::redis::{Acquire, Renewal};
use tokio::time::Instant;

use crate::state::{Readiness, Role};

/// Default TTL of the leadership (`--leader-ttl`, `FABRIC_LEADER_TTL`).
pub const DEFAULT_LEADER_TTL: Duration = Duration::from_secs(10);
/// Shortest pause between two attempts of a standby.
const MIN_POLL: Duration = Duration::from_millis(10);
/// Slack after the holder's TTL before trying again, so the key has expired.
const EXPIRY_SLACK: Duration = Duration::from_millis(5);

/// One orchestrator's claim on a Redis store prefix.
pub struct Leadership {
    store: RedisStore,
    owner: String,
    ttl: Duration,
    /// Until when the leadership is surely ours: the TTL counted from just
    /// before the last successful acquire or renewal was sent.
    valid_until: Option<Instant>,
}

impl Leadership {
    pub fn new(store: RedisStore, ttl: Duration) -> Self {
        Self {
            store,
            owner: owner_id(),
            ttl,
            valid_until: None,
        }
    }

    /// This orchestrator's owner id (host, pid, random).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Returns once this orchestrator leads the prefix (`true`), or `false`
    /// if `shutdown` came first. Meanwhile it stands by: `readiness` says so,
    /// and the log says so once per holder.
    pub async fn acquire(&mut self, readiness: &Readiness, shutdown: &CancellationToken) -> bool {
        let prefix = self.store.prefix().to_owned();
        let mut announced: Option<String> = None;
        let mut stood_by = false;
        loop {
            if shutdown.is_cancelled() {
                return false;
            }
            let sent = Instant::now();
            let pause = match self.store.acquire_leadership(&self.owner, self.ttl).await {
                Ok(Acquire::Acquired { generation }) => {
                    self.valid_until = Some(sent + self.ttl);
                    // Reloading now; `/readyz` says 200 once that is done.
                    readiness.set_role(Role::Starting);
                    if stood_by {
                        tracing::warn!(prefix = %prefix, owner = %self.owner, generation,
                            "took over as the active orchestrator: the previous one stopped renewing its leadership");
                    } else {
                        tracing::info!(prefix = %prefix, owner = %self.owner, generation, "active orchestrator for the store prefix");
                    }
                    return true;
                }
                Ok(Acquire::Busy { holder, remaining }) => {
                    stood_by = true;
                    if announced.as_ref() != Some(&holder) {
                        tracing::info!(prefix = %prefix, leader = %holder, owner = %self.owner, remaining_ms = remaining.as_millis() as u64,
                            "standing by: another orchestrator is active for this store prefix; taking over when it stops renewing its leadership");
                        readiness.set_role(Role::Standby {
                            prefix: prefix.clone(),
                            leader: holder.clone(),
                        });
                        announced = Some(holder);
                    }
                    // Right after the holder's TTL if it does not renew; in any
                    // case soon enough to notice a clean release.
                    (remaining + EXPIRY_SLACK).min(self.ttl / 3).max(MIN_POLL)
                }
                Err(e) => {
                    tracing::warn!(prefix = %prefix, error = %e, "cannot ask the store for the leadership; retrying");
                    (self.ttl / 3).max(MIN_POLL)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => return false,
            }
        }
    }

    /// Renews the leadership every TTL/3 for as long as it lasts; resolves
    /// with why it ended. Never resolves while all is well.
    pub async fn keep(self) -> String {
        let prefix = self.store.prefix().to_owned();
        let every = (self.ttl / 3).max(MIN_POLL);
        let mut valid_until = self.valid_until.unwrap_or_else(Instant::now);
        let mut next = Instant::now() + every;
        let mut deposed = self.store.deposed();
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                _ = deposed.wait_for(|d| *d) => {
                    return format!("the store refused a write: another orchestrator took over store prefix {prefix:?}");
                }
            }
            let sent = Instant::now();
            match tokio::time::timeout_at(valid_until, self.store.renew_leadership()).await {
                Ok(Ok(Renewal::Renewed)) => {
                    valid_until = sent + self.ttl;
                    next = sent + every;
                }
                Ok(Ok(Renewal::Lost {
                    holder: Some(holder),
                })) => {
                    return format!("orchestrator {holder} took over store prefix {prefix:?}");
                }
                Ok(Ok(Renewal::Lost { holder: None })) => {
                    return format!(
                        "the leadership of store prefix {prefix:?} expired before it was renewed"
                    );
                }
                Ok(Err(e)) => {
                    tracing::warn!(prefix = %prefix, error = %e, "cannot renew the leadership; retrying until it would lapse");
                    next = (Instant::now() + (every / 4).max(MIN_POLL)).min(valid_until);
                }
                Err(_) => {}
            }
            if Instant::now() >= valid_until {
                return format!(
                    "could not renew the leadership of store prefix {prefix:?} within its TTL ({} s); another orchestrator may have taken over",
                    self.ttl.as_secs_f64()
                );
            }
        }
    }
}

/// Unique per process: `host:pid:random`, so two servers on one host, or a
/// restarted one with a recycled pid, never share an id.
fn owner_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_ids_differ_within_one_process() {
        let (a, b) = (owner_id(), owner_id());
        assert_ne!(a, b);
        assert!(a.contains(&format!(":{}:", std::process::id())), "{a}");
    }
}
