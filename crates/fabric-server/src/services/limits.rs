//! Rate limits per user (REQUIREMENTS §12): requests per second on the API
//! and LLM tokens per minute through the gateway, with per-user overrides.
//!
//! Keyed by user, not by token: every token of a user shares one budget, so
//! minting more tokens buys no more throughput. Agents are not limited here
//! (their budgets and the agent protocol's own pacing govern them). Each
//! orchestrator counts what it serves; behind one leader that is everything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabric_core::UsageRecord;
use fabric_gateway::{Admission, Admitted, Caller, Estimate, GatewayError};
use parking_lot::{Mutex, RwLock};

/// The server-wide limits (`serve --rate-limit-rps`, `--llm-tokens-per-minute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Requests per second per user (bursts up to one second's worth); 0: off.
    pub requests_per_second: u32,
    /// LLM tokens (prompt + completion) per minute per user; `None`: off.
    pub llm_tokens_per_minute: Option<u64>,
    /// Requests without valid credentials (no token, an unknown, expired or
    /// revoked one) per second per client address, in bursts of
    /// [`UNAUTHENTICATED_BURST_SECONDS`]' worth; 0: off.
    pub unauthenticated_per_second: u32,
}

/// The server default for `requests_per_second`.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 50;
/// The server default for `unauthenticated_per_second`.
pub const DEFAULT_UNAUTHENTICATED_PER_SECOND: u32 = 10;
/// An address's allowance of unauthenticated requests holds this many
/// seconds' worth: a client that mistypes its token a few times is not
/// refused, one that guesses tokens is held to the rate.
pub const UNAUTHENTICATED_BURST_SECONDS: u32 = 10;
/// Addresses whose unauthenticated requests are tracked at once; past it,
/// those whose allowance is whole again are forgotten first.
const MAX_TRACKED_ADDRESSES: usize = 65_536;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            llm_tokens_per_minute: None,
            unauthenticated_per_second: DEFAULT_UNAUTHENTICATED_PER_SECOND,
        }
    }
}

/// A user's own limits, where an admin set them (else the server's apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserLimits {
    pub requests_per_second: Option<u32>,
    pub llm_tokens_per_minute: Option<u64>,
}

/// Where a caller stands after a request was counted (the `X-RateLimit-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests a full bucket holds (one second's worth).
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

/// A request over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "rate limit of {} requests per second exceeded; retry in {retry_after_secs} s",
    quota.limit
)]
pub struct Throttled {
    pub quota: Quota,
    /// Seconds until one more request is allowed (`Retry-After`).
    pub retry_after_secs: u64,
}

/// Too many requests without valid credentials from one address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "too many requests without valid credentials from {address} (at most {per_second} per second); retry in {retry_after_secs} s with a valid token"
)]
pub struct AddressThrottled {
    pub address: std::net::IpAddr,
    pub per_second: u32,
    pub retry_after_secs: u64,
}

/// A token bucket: at most `capacity` requests, refilled at `rate` per
/// second (a user's: one second's worth; an address's unauthenticated
/// requests: [`UNAUTHENTICATED_BURST_SECONDS`]' worth).
#[derive(Debug)]
struct Bucket {
    rate: u32,
    capacity: u32,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u32, capacity: u32, now: Instant) -> Self {
        Self {
            rate,
            capacity,
            tokens: f64::from(capacity),
            at: now,
        }
    }

    /// One request of a bucket whose capacity is one second's worth.
    fn take(&mut self, capacity: u32, now: Instant) -> Result<Quota, Throttled> {
        self.take_at_rate(capacity, capacity, now)
    }

    fn take_at_rate(&mut self, rate: u32, capacity: u32, now: Instant) -> Result<Quota, Throttled> {
        if (rate, capacity) != (self.rate, self.capacity) {
            // A changed limit starts full at its new size.
            *self = Self::full(rate, capacity, now);
        }
        let (per_second, most) = (f64::from(rate), f64::from(capacity));
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(most);
        self.at = now;
        let taken = self.tokens >= 1.0;
        if taken {
            self.tokens -= 1.0;
        }
        let quota = Quota {
            limit: capacity,
            // Truncation is the point: whole requests left.
            remaining: self.tokens.floor() as u32,
            reset_secs: ((most - self.tokens) / per_second).ceil() as u64,
        };
        if taken {
            Ok(quota)
        } else {
            Err(Throttled {
                quota,
                retry_after_secs: (((1.0 - self.tokens) / per_second).ceil() as u64).max(1),
            })
        }
    }

    /// Whether it has refilled to its capacity by `now` (a fresh one would be the same).
    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * f64::from(self.rate) >= f64::from(self.capacity)
    }
}

/// LLM tokens used in the current minute.
#[derive(Debug)]
struct Window {
    started: Instant,
    used: u64,
}

const MINUTE: Duration = Duration::from_secs(60);

/// The limiter: buckets and windows per user, and the users' own limits.
#[derive(Debug, Default)]
pub struct RateLimits {
    config: LimitsConfig,
    buckets: Mutex<HashMap<String, Bucket>>,
    windows: Mutex<HashMap<String, Window>>,
    overrides: RwLock<HashMap<String, UserLimits>>,
    addresses: Mutex<HashMap<std::net::IpAddr, Bucket>>,
}

impl RateLimits {
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Sets (or, with all `None`, clears) a user's own limits.
    pub fn set_user(&self, user: &str, limits: UserLimits) {
        let mut overrides = self.overrides.write();
        if limits == UserLimits::default() {
            overrides.remove(user);
        } else {
            overrides.insert(user.to_owned(), limits);
        }
    }

    /// Replaces every user's own limits (at start, and from a shared store).
    pub fn set_all(&self, all: HashMap<String, UserLimits>) {
        *self.overrides.write() = all;
    }

    fn limits_of(&self, user: &str) -> (u32, Option<u64>) {
        let own = self.overrides.read().get(user).copied().unwrap_or_default();
        (
            own.requests_per_second
                .unwrap_or(self.config.requests_per_second),
            own.llm_tokens_per_minute
                .or(self.config.llm_tokens_per_minute),
        )
    }

    /// Counts one API request of `user`; `Ok(None)` when requests are not limited.
    pub fn request(&self, user: &str) -> Result<Option<Quota>, Throttled> {
        let (rps, _) = self.limits_of(user);
        if rps == 0 {
            return Ok(None);
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let bucket = buckets
            .entry(user.to_owned())
            .or_insert_with(|| Bucket::full(rps, rps, now));
        bucket.take(rps, now).map(Some)
    }

    /// Counts one request from `address` that came without valid
    /// credentials; `Err` once the address has used its allowance.
    pub fn unauthenticated(&self, address: std::net::IpAddr) -> Result<(), AddressThrottled> {
        let per_second = self.config.unauthenticated_per_second;
        if per_second == 0 {
            return Ok(());
        }
        let burst = per_second.saturating_mul(UNAUTHENTICATED_BURST_SECONDS);
        let now = Instant::now();
        let mut addresses = self.addresses.lock();
        if addresses.len() >= MAX_TRACKED_ADDRESSES && !addresses.contains_key(&address) {
            // A full bucket is what an unknown address gets anyway.
            addresses.retain(|_, bucket| !bucket.is_full(now));
            if addresses.len() >= MAX_TRACKED_ADDRESSES {
                // All of them busy: a flood from many addresses; refuse newcomers
                // rather than grow without bound.
                return Err(AddressThrottled {
                    address,
                    per_second,
                    retry_after_secs: 1,
                });
            }
        }
        addresses
            .entry(address)
            .or_insert_with(|| Bucket::full(per_second, burst, now))
            .take_at_rate(per_second, burst, now)
            .map(drop)
            .map_err(|throttled| AddressThrottled {
                address,
                per_second,
                retry_after_secs: throttled.retry_after_secs,
            })
    }

    /// Whether `user` may start an LLM call now: refused once the minute's
    /// tokens reach the limit (a call's own size is known only after it).
    fn admit_llm(&self, user: &str) -> Result<(), (u64, u64)> {
        let Some(limit) = self.limits_of(user).1 else {
            return Ok(());
        };
        let now = Instant::now();
        let mut windows = self.windows.lock();
        let window = current_window(&mut windows, user, now);
        if window.used >= limit {
            let left = MINUTE.saturating_sub(now.saturating_duration_since(window.started));
            return Err((limit, (left.as_secs_f64().ceil() as u64).max(1)));
        }
        Ok(())
    }

    fn record_llm(&self, user: &str, tokens: u64) {
        let mut windows = self.windows.lock();
        let window = current_window(&mut windows, user, Instant::now());
        window.used = window.used.saturating_add(tokens);
    }
}

/// `user`'s window as of `now`: a fresh one once a minute has passed.
fn current_window<'a>(
    windows: &'a mut HashMap<String, Window>,
    user: &str,
    now: Instant,
) -> &'a mut Window {
    let fresh = Window {
        started: now,
        used: 0,
    };
    let window = windows.entry(user.to_owned()).or_insert(fresh);
    if now.saturating_duration_since(window.started) >= MINUTE {
        *window = Window {
            started: now,
            used: 0,
        };
    }
    window
}

/// The gateway's admission with the tokens-per-minute limit of users in
/// front of another admission (the budgets).
pub struct RateLimitedAdmission<A> {
    pub limits: Arc<RateLimits>,
    pub inner: A,
}

impl<A: Admission> Admission for RateLimitedAdmission<A> {
    fn admit(
        &self,
        caller: &Caller,
        model: &str,
        estimate: Estimate,
    ) -> Result<Box<dyn Admitted>, GatewayError> {
        if caller.agent.is_some() {
            return self.inner.admit(caller, model, estimate);
        }
        if let Err((limit, retry_after)) = self.limits.admit_llm(&caller.user) {
            return Err(GatewayError::CallerRateLimited {
                message: format!(
                    "{} used the limit of {limit} LLM tokens per minute; retry in {retry_after} s",
                    caller.user
                ),
                retry_after,
            });
        }
        let inner = self.inner.admit(caller, model, estimate)?;
        Ok(Box::new(Counted {
            limits: Arc::clone(&self.limits),
            user: caller.user.clone(),
            inner,
        }))
    }
}

/// An admitted call of a user: its tokens count against the minute.
struct Counted {
    limits: Arc<RateLimits>,
    user: String,
    inner: Box<dyn Admitted>,
}

impl Admitted for Counted {
    fn settle(self: Box<Self>, record: &UsageRecord) {
        self.limits.record_llm(
            &self.user,
            record.tokens_in.saturating_add(record.tokens_out),
        );
        self.inner.settle(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_refills_at_its_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::full(5, 5, start);
        for left in (0..5).rev() {
            assert_eq!(bucket.take(5, start).unwrap().remaining, left);
        }
        let refused = bucket.take(5, start).unwrap_err();
        assert_eq!(refused.retry_after_secs, 1);
        assert_eq!(refused.quota.remaining, 0);
        assert_eq!(refused.quota.reset_secs, 1);
        // A fifth of a second later one request's worth is back.
        let later = start + Duration::from_millis(200);
        assert!(bucket.take(5, later).is_ok());
        assert!(bucket.take(5, later).is_err());
    }

    #[test]
    fn unauthenticated_requests_are_limited_per_address_after_a_burst() {
        let limits = RateLimits::new(LimitsConfig {
            unauthenticated_per_second: 2,
            ..LimitsConfig::default()
        });
        let (a, b): (std::net::IpAddr, std::net::IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..2 * UNAUTHENTICATED_BURST_SECONDS {
            assert!(limits.unauthenticated(a).is_ok());
        }
        let refused = limits.unauthenticated(a).unwrap_err();
        assert_eq!((refused.address, refused.retry_after_secs), (a, 1));
        assert!(refused.to_string().contains("valid token"), "{refused}");
        assert!(
            limits.unauthenticated(b).is_ok(),
            "each address has its own"
        );
        let off = RateLimits::new(LimitsConfig {
            unauthenticated_per_second: 0,
            ..LimitsConfig::default()
        });
        for _ in 0..1000 {
            assert!(off.unauthenticated(a).is_ok());
        }
    }

    #[test]
    fn users_have_their_own_buckets_and_limits() {
        let limits = RateLimits::new(LimitsConfig {
            requests_per_second: 2,
            llm_tokens_per_minute: Some(100),
            ..LimitsConfig::default()
        });
        limits.set_user(
            "vip",
            UserLimits {
                requests_per_second: Some(4),
                llm_tokens_per_minute: None,
            },
        );
        for user in ["a", "b"] {
            assert!(limits.request(user).is_ok());
            assert!(limits.request(user).is_ok());
            assert!(limits.request(user).is_err(), "{user} is over 2");
        }
        for _ in 0..4 {
            assert_eq!(limits.request("vip").unwrap().unwrap().limit, 4);
        }
        assert!(limits.request("vip").is_err());

        assert!(limits.admit_llm("a").is_ok());
        limits.record_llm("a", 100);
        let (limit, retry) = limits.admit_llm("a").unwrap_err();
        assert_eq!(limit, 100);
        assert!((1..=60).contains(&retry), "{retry}");
        assert!(limits.admit_llm("b").is_ok(), "another user's minute");

        let off = RateLimits::new(LimitsConfig {
            requests_per_second: 0,
            llm_tokens_per_minute: None,
            unauthenticated_per_second: 0,
        });
        assert_eq!(off.request("a"), Ok(None));
        off.record_llm("a", u64::MAX);
        assert!(off.admit_llm("a").is_ok());
    }
}
