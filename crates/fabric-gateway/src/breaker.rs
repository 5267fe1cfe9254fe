//! A per-provider circuit breaker: `failure_threshold` consecutive failures
//! open it; while open the router skips the provider; after `open_for` one
//! probe is let through (half-open): its success closes the circuit, its
//! failure opens it again. Time is `tokio::time::Instant`, so tests drive it
//! with `tokio::time::pause()`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::BreakerConfig;

/// The breaker's state, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
pub struct Breaker {
    provider: String,
    config: BreakerConfig,
    state: Mutex<State>,
    opened: AtomicU64,
}

impl Breaker {
    pub fn new(provider: &str, config: BreakerConfig) -> Arc<Self> {
        Arc::new(Self {
            provider: provider.to_owned(),
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
            opened: AtomicU64::new(0),
        })
    }

    /// Leave to call the provider: `None` while the circuit is open (or
    /// half-open with its one probe in flight).
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut state = self.state.lock();
        let probe = match &*state {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() >= *until => {
                tracing::info!(provider = %self.provider, "circuit half-open: letting one probe through");
                *state = State::HalfOpen { probing: true };
                true
            }
            State::Open { .. } | State::HalfOpen { probing: true } => return None,
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                true
            }
        };
        Some(Permit {
            breaker: Arc::clone(self),
            probe,
            settled: false,
        })
    }

    pub fn state(&self) -> BreakerState {
        match &*self.state.lock() {
            State::Closed { .. } => BreakerState::Closed,
            // An open circuit whose time is up is as good as half-open.
            State::Open { until } if Instant::now() >= *until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Consecutive failures while closed.
    pub fn failures(&self) -> u32 {
        match &*self.state.lock() {
            State::Closed { failures } => *failures,
            _ => self.config.failure_threshold,
        }
    }

    /// How often the circuit has opened since start.
    pub fn opened_total(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn open(&self, state: &mut State) {
        *state = State::Open {
            until: Instant::now() + self.config.open_for,
        };
        self.opened.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(provider = %self.provider, open_for_ms = self.config.open_for.as_millis() as u64,
            "circuit opened: the provider is skipped until a probe succeeds");
    }

    fn settle(&self, probe: bool, outcome: Outcome) {
        let mut state = self.state.lock();
        match (&mut *state, probe, outcome) {
            (State::HalfOpen { .. }, true, Outcome::Success) => {
                tracing::info!(provider = %self.provider, "circuit closed: the probe succeeded");
                *state = State::Closed { failures: 0 };
            }
            (State::HalfOpen { .. }, true, Outcome::Failure) => self.open(&mut state),
            (State::HalfOpen { probing }, true, Outcome::Released) => *probing = false,
            (State::Closed { failures }, false, Outcome::Success) => *failures = 0,
            (State::Closed { failures }, false, Outcome::Failure) => {
                *failures += 1;
                if *failures >= self.config.failure_threshold {
                    self.open(&mut state);
                }
            }
            // Calls that began before the circuit changed state say nothing new.
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Success,
    Failure,
    Released,
}

/// Leave for one call; settle it with [`Permit::success`] or
/// [`Permit::failure`]. Dropped unsettled (the call was abandoned, or it
/// failed in a way that says nothing about the provider's health), a probe
/// frees the half-open slot for the next call.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    settled: bool,
}

impl Permit {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn success(mut self) {
        self.settled = true;
        self.breaker.settle(self.probe, Outcome::Success);
    }

    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.settle(self.probe, Outcome::Failure);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.settle(self.probe, Outcome::Released);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn breaker() -> Arc<Breaker> {
        Breaker::new(
            "p",
            BreakerConfig {
                failure_threshold: 3,
                open_for: Duration::from_secs(10),
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_half_opens_for_one_probe() {
        let b = breaker();
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().success();
        assert_eq!(b.failures(), 0, "a success resets the count");
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none());
        assert_eq!(b.opened_total(), 1);

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire().unwrap();
        assert!(probe.is_probe());
        assert!(b.try_acquire().is_none(), "one probe at a time");
        probe.failure();
        assert_eq!(b.state(), BreakerState::Open, "a failed probe reopens");
        assert_eq!(b.opened_total(), 2);

        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.try_acquire().unwrap();
        drop(probe);
        let probe = b.try_acquire().expect("an abandoned probe frees the slot");
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.try_acquire().unwrap().is_probe());
    }
}
