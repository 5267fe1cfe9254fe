//! Budget accounting (REQUIREMENTS §8, FR-BUD): per entity (`agent:`, `user:`,
//! `tenant:`) limits on tokens, compute seconds and cost per UTC day; used,
//! reserved and remaining amounts; daily reset or carryover; linear
//! projection; a soft alert and a hard-limit event, each at most once per
//! period; and atomic check-and-reserve across every entity a call belongs to.
//!
//! ```text
//! reserve(entities, demand, now) ── all-or-nothing under one lock ──► Reservation | Refusal
//!   ... the call runs ...
//! settle(reservation, actual, now): reserved -= estimate, used += actual, alerts
//! ```
//!
//! [`BudgetBook`] is plain data with `&mut self` methods and time passed in
//! (deterministic, tested with a hand-driven clock). [`SharedBudgets`] puts
//! it behind one mutex: a reservation touches up to three entities and must
//! see and change all of them at once, so one short critical section (a few
//! hash lookups and additions) is both the simplest correct answer and fast
//! enough (see BENCHMARKS.md, "Budgets").

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use fabric_core::Timestamp;
use fabric_core::budget::{
    Amounts, BudgetAlert, BudgetAlertKind, BudgetEntity, BudgetLimit, BudgetSpec, DAY_MS,
    PeriodState, ResetPolicy,
};

/// Start of the UTC day containing `t`.
pub fn day_start(t: Timestamp) -> Timestamp {
    Timestamp::from_millis(t.as_millis().div_euclid(DAY_MS) * DAY_MS)
}

/// The per-day limits of a spec in the book's units; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub tokens: Option<u64>,
    pub compute_ms: Option<u64>,
    pub cost_nano_usd: Option<u64>,
}

impl Limits {
    pub fn of(spec: &BudgetSpec) -> Self {
        Self {
            tokens: spec.max_tokens_per_day,
            compute_ms: spec
                .max_compute_seconds_per_day
                .map(|s| s.saturating_mul(1000)),
            cost_nano_usd: spec.max_cost_nano_usd(),
        }
    }
}

/// What a call asks of its budgets. `Some(x)`: this limit is checked, with
/// `x` the estimate to hold (`Some(0)`: only "not spent yet"); `None`: the
/// limit does not apply to this kind of work (an LLM call does not check
/// compute seconds; a task lease checks nothing else).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    pub tokens: Option<u64>,
    pub compute_ms: Option<u64>,
    pub cost_nano_usd: Option<u64>,
}

impl Demand {
    fn held(&self) -> Amounts {
        Amounts {
            tokens: self.tokens.unwrap_or(0),
            compute_ms: self.compute_ms.unwrap_or(0),
            cost_nano_usd: self.cost_nano_usd.unwrap_or(0),
        }
    }
}

/// A hard limit refused the work: which entity, which limit, when it resets.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub entity: BudgetEntity,
    pub limit: BudgetLimit,
    /// In the limit's unit (tokens, seconds, US dollars).
    pub allowance: f64,
    pub used: f64,
    pub reserved: f64,
    pub requested: f64,
    pub resets_at: Timestamp,
}

impl std::error::Error for Refusal {}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.limit {
            BudgetLimit::MaxTokensPerDay => "tokens",
            BudgetLimit::MaxComputeSecondsPerDay => "compute seconds",
            BudgetLimit::MaxCostPerDayUsd => "USD",
        };
        write!(
            f,
            "budget exceeded for {}: {} allows {} {unit} this period, {} used and {} held by calls in flight",
            self.entity,
            self.limit.as_str(),
            trim(self.allowance),
            trim(self.used),
            trim(self.reserved),
        )?;
        if self.requested > 0.0 {
            write!(f, ", this needs up to {}", trim(self.requested))?;
        }
        write!(
            f,
            "; it resets at {}: wait, or raise the limit with 'reactor-fabric budget set --{} {} ...'",
            self.resets_at,
            self.entity.kind(),
            self.entity.name()
        )
    }
}

fn trim(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.6}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

/// Estimates held for a call until [`BudgetBook::settle`]. Holds no lock and
/// no reference: dropping it without settling leaks the hold, so the server
/// wraps it in a guard that settles (with zero usage) on drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Every entity the call was reserved against (budgeted or not: usage
    /// of an entity that gets a budget while the call runs is counted too).
    pub entities: Vec<BudgetEntity>,
    pub held: Amounts,
}

/// One entity's live numbers, for reports and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub spec: BudgetSpec,
    pub period: PeriodState,
    pub used: Amounts,
    pub reserved: Amounts,
    /// Limit plus carry, per limit; `None` where unlimited.
    pub allowance: Limits,
    pub resets_at: Timestamp,
    pub alerts: Vec<BudgetAlert>,
}

impl Snapshot {
    /// used ÷ allowance of the most used limit (0 when unlimited): what
    /// `agent_fabric_budget_usage_ratio{entity_id}` exports.
    pub fn usage_ratio(&self) -> f64 {
        let ratio = |used: u64, allowance: Option<u64>| match allowance {
            Some(0) if used > 0 => 1.0,
            Some(0) => 0.0,
            Some(a) => used as f64 / a as f64,
            None => 0.0,
        };
        ratio(self.used.tokens, self.allowance.tokens)
            .max(ratio(self.used.compute_ms, self.allowance.compute_ms))
            .max(ratio(self.used.cost_nano_usd, self.allowance.cost_nano_usd))
    }

    /// Linear projection of `used` to the end of the period: used ÷ elapsed
    /// × period length, with elapsed counted as at least one minute (so a
    /// call in the first second of the day does not project to infinity).
    pub fn projected(&self, now: Timestamp) -> Amounts {
        project(self.used, self.period.start, now)
    }
}

/// Linear projection of `used` over a day starting at `start`.
pub fn project(used: Amounts, start: Timestamp, now: Timestamp) -> Amounts {
    let elapsed = (now.as_millis() - start.as_millis()).clamp(60_000, DAY_MS);
    let scale = |v: u64| ((v as f64) * (DAY_MS as f64) / (elapsed as f64)).round() as u64;
    Amounts {
        tokens: scale(used.tokens),
        compute_ms: scale(used.compute_ms),
        cost_nano_usd: scale(used.cost_nano_usd),
    }
}

#[derive(Debug, Clone)]
struct Entry {
    spec: BudgetSpec,
    limits: Limits,
    period: PeriodState,
    used: Amounts,
    reserved: Amounts,
    alerts: Vec<BudgetAlert>,
}

impl Entry {
    fn allowance(&self) -> Limits {
        let carry = self.period.carry;
        let with = |limit: Option<u64>, carry: u64| limit.map(|l| l.saturating_add(carry));
        Limits {
            tokens: with(self.limits.tokens, carry.tokens),
            compute_ms: with(self.limits.compute_ms, carry.compute_ms),
            cost_nano_usd: with(self.limits.cost_nano_usd, carry.cost_nano_usd),
        }
    }

    /// Moves to the period containing `now` if it has begun; true if it did.
    fn roll(&mut self, now: Timestamp) -> bool {
        let start = day_start(now);
        if start <= self.period.start {
            return false;
        }
        let carry = match self.spec.reset {
            ResetPolicy::Daily => Amounts::default(),
            ResetPolicy::Carryover => carry_over(
                &self.limits,
                self.period.carry,
                self.used,
                self.period.start,
                start,
            ),
        };
        self.period = PeriodState {
            start,
            carry,
            compute_ms: 0,
            alerted: false,
            exceeded: false,
        };
        self.used = Amounts::default();
        self.alerts.clear();
        true
    }
}

/// The carry into the period starting at `next` from the one starting at
/// `prev` (with `carry` and `used`): unused allowance, capped at one day's
/// limit. Days in between (nothing used) carry a full limit.
pub fn carry_over(
    limits: &Limits,
    carry: Amounts,
    used: Amounts,
    prev: Timestamp,
    next: Timestamp,
) -> Amounts {
    let gap_days = (next.as_millis() - prev.as_millis()) / DAY_MS;
    let one = |limit: Option<u64>, carry: u64, used: u64| match limit {
        None => 0,
        Some(l) if gap_days > 1 => l,
        Some(l) => l.saturating_add(carry).saturating_sub(used).min(l),
    };
    Amounts {
        tokens: one(limits.tokens, carry.tokens, used.tokens),
        compute_ms: one(limits.compute_ms, carry.compute_ms, used.compute_ms),
        cost_nano_usd: one(
            limits.cost_nano_usd,
            carry.cost_nano_usd,
            used.cost_nano_usd,
        ),
    }
}

/// What changed that the store must learn: entities whose [`PeriodState`]
/// moved (new period, alert fired, compute counted).
#[derive(Debug, Default)]
pub struct Outbox {
    pub alerts: Vec<BudgetAlert>,
    pub dirty: Vec<(BudgetEntity, BudgetSpec, PeriodState)>,
}

impl Outbox {
    /// Raises the soft-threshold alert of `entry` once per period, when its
    /// usage has crossed it; true when it did (the period state changed).
    fn alert_over_threshold(
        &mut self,
        entity: &BudgetEntity,
        entry: &mut Entry,
        now: Timestamp,
    ) -> bool {
        if entry.period.alerted {
            return false;
        }
        let Some((limit, used, allowance)) = over_threshold(entry) else {
            return false;
        };
        entry.period.alerted = true;
        let alert = BudgetAlert {
            entity: entity.clone(),
            kind: BudgetAlertKind::Threshold,
            limit,
            used,
            allowance,
            threshold_percent: entry.spec.alert_threshold_percent,
            period_start: entry.period.start,
            at: now,
        };
        entry.alerts.push(alert.clone());
        self.alerts.push(alert);
        true
    }

    /// Queues `entry`'s budget and period state to be stored.
    fn persist(&mut self, entity: &BudgetEntity, entry: &Entry) {
        self.dirty
            .push((entity.clone(), entry.spec.clone(), entry.period));
    }
}

/// Every budgeted entity's numbers. Entities without a budget are not
/// tracked here (their usage is in the ledger).
#[derive(Debug, Default)]
pub struct BudgetBook {
    entries: HashMap<BudgetEntity, Entry>,
    outbox: Outbox,
}

impl BudgetBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or replaces) a budget. `period` and `used` are what the store
    /// and the ledger say of the current period (after a restart); amounts in
    /// flight for the entity stay reserved.
    pub fn set(
        &mut self,
        entity: BudgetEntity,
        spec: BudgetSpec,
        period: PeriodState,
        used: Amounts,
        now: Timestamp,
    ) {
        let reserved = self
            .entries
            .get(&entity)
            .map(|e| e.reserved)
            .unwrap_or_default();
        let alerts = self
            .entries
            .get(&entity)
            .filter(|e| e.period.start == period.start)
            .map(|e| e.alerts.clone())
            .unwrap_or_default();
        let mut entry = Entry {
            limits: Limits::of(&spec),
            spec,
            period,
            used: Amounts {
                compute_ms: period.compute_ms.max(used.compute_ms),
                ..used
            },
            reserved,
            alerts,
        };
        let mut dirty = entry.roll(now);
        // A limit set (or lowered) below what is already used alerts now,
        // not at the next call.
        dirty |= self.outbox.alert_over_threshold(&entity, &mut entry, now);
        if dirty {
            self.outbox.persist(&entity, &entry);
        }
        self.entries.insert(entity, entry);
    }

    pub fn remove(&mut self, entity: &BudgetEntity) -> bool {
        self.entries.remove(entity).is_some()
    }

    pub fn contains(&self, entity: &BudgetEntity) -> bool {
        self.entries.contains_key(entity)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks `demand` against every budgeted entity of `entities` and, only
    /// if all admit it, holds it against all of them.
    pub fn reserve(
        &mut self,
        entities: &[BudgetEntity],
        demand: Demand,
        now: Timestamp,
    ) -> Result<Reservation, Refusal> {
        for entity in entities {
            if let Some(entry) = self.entries.get_mut(entity) {
                if entry.roll(now) {
                    self.outbox.persist(entity, entry);
                }
                if let Some(refusal) = check(entity, entry, &demand) {
                    if !entry.period.exceeded {
                        entry.period.exceeded = true;
                        let alert = BudgetAlert {
                            entity: entity.clone(),
                            kind: BudgetAlertKind::Exceeded,
                            limit: refusal.limit,
                            used: refusal.used,
                            allowance: refusal.allowance,
                            threshold_percent: entry.spec.alert_threshold_percent,
                            period_start: entry.period.start,
                            at: now,
                        };
                        entry.alerts.push(alert.clone());
                        self.outbox.alerts.push(alert);
                        self.outbox.persist(entity, entry);
                    }
                    return Err(refusal);
                }
            }
        }
        let held = demand.held();
        for entity in entities {
            if let Some(entry) = self.entries.get_mut(entity) {
                entry.reserved = entry.reserved.saturating_add(held);
            }
        }
        Ok(Reservation {
            entities: entities.to_vec(),
            held,
        })
    }

    /// Releases a reservation's hold and counts what the work really used.
    pub fn settle(&mut self, reservation: Reservation, actual: Amounts, now: Timestamp) {
        for entity in &reservation.entities {
            if let Some(entry) = self.entries.get_mut(entity) {
                entry.reserved = entry.reserved.saturating_sub(reservation.held);
            }
        }
        self.record(&reservation.entities, actual, now);
    }

    /// Counts usage that had no reservation (compute seconds sampled from
    /// the agents' cgroups).
    pub fn record(&mut self, entities: &[BudgetEntity], actual: Amounts, now: Timestamp) {
        for entity in entities {
            let Some(entry) = self.entries.get_mut(entity) else {
                continue;
            };
            let mut dirty = entry.roll(now);
            entry.used = entry.used.saturating_add(actual);
            if actual.compute_ms > 0 {
                entry.period.compute_ms = entry.used.compute_ms;
                dirty = true;
            }
            dirty |= self.outbox.alert_over_threshold(entity, entry, now);
            if dirty {
                self.outbox.persist(entity, entry);
            }
        }
    }

    /// An entity's numbers as of `now` (rolling its period if it ended).
    pub fn snapshot(&mut self, entity: &BudgetEntity, now: Timestamp) -> Option<Snapshot> {
        let entry = self.entries.get_mut(entity)?;
        if entry.roll(now) {
            self.outbox.persist(entity, entry);
        }
        Some(Snapshot {
            spec: entry.spec.clone(),
            period: entry.period,
            used: entry.used,
            reserved: entry.reserved,
            allowance: entry.allowance(),
            resets_at: resets_at(entry),
            alerts: entry.alerts.clone(),
        })
    }

    /// Every budgeted entity.
    pub fn entities(&self) -> Vec<BudgetEntity> {
        self.entries.keys().cloned().collect()
    }

    /// What happened since the last call: alerts to deliver, states to store.
    pub fn take_outbox(&mut self) -> Outbox {
        std::mem::take(&mut self.outbox)
    }
}

fn resets_at(entry: &Entry) -> Timestamp {
    Timestamp::from_millis(entry.period.start.as_millis().saturating_add(DAY_MS))
}

/// The first limit `demand` would overrun.
fn check(entity: &BudgetEntity, entry: &Entry, demand: &Demand) -> Option<Refusal> {
    let allowance = entry.allowance();
    let rows = [
        (
            BudgetLimit::MaxTokensPerDay,
            demand.tokens,
            allowance.tokens,
            entry.used.tokens,
            entry.reserved.tokens,
            1.0,
        ),
        (
            BudgetLimit::MaxComputeSecondsPerDay,
            demand.compute_ms,
            allowance.compute_ms,
            entry.used.compute_ms,
            entry.reserved.compute_ms,
            1e3,
        ),
        (
            BudgetLimit::MaxCostPerDayUsd,
            demand.cost_nano_usd,
            allowance.cost_nano_usd,
            entry.used.cost_nano_usd,
            entry.reserved.cost_nano_usd,
            1e9,
        ),
    ];
    for (limit, want, allow, used, reserved, per_unit) in rows {
        let (Some(want), Some(allow)) = (want, allow) else {
            continue;
        };
        let taken = used.saturating_add(reserved);
        let refused = if want == 0 {
            taken >= allow
        } else {
            taken.saturating_add(want) > allow
        };
        if refused {
            return Some(Refusal {
                entity: entity.clone(),
                limit,
                allowance: allow as f64 / per_unit,
                used: used as f64 / per_unit,
                reserved: reserved as f64 / per_unit,
                requested: want as f64 / per_unit,
                resets_at: resets_at(entry),
            });
        }
    }
    None
}

/// The first limit whose use reached the alert threshold.
fn over_threshold(entry: &Entry) -> Option<(BudgetLimit, f64, f64)> {
    let allowance = entry.allowance();
    let pct = u128::from(entry.spec.alert_threshold_percent);
    let rows = [
        (
            BudgetLimit::MaxTokensPerDay,
            entry.used.tokens,
            allowance.tokens,
            1.0,
        ),
        (
            BudgetLimit::MaxComputeSecondsPerDay,
            entry.used.compute_ms,
            allowance.compute_ms,
            1e3,
        ),
        (
            BudgetLimit::MaxCostPerDayUsd,
            entry.used.cost_nano_usd,
            allowance.cost_nano_usd,
            1e9,
        ),
    ];
    rows.into_iter().find_map(|(limit, used, allow, per_unit)| {
        let allow = allow?;
        (u128::from(used) * 100 >= u128::from(allow) * pct && used > 0)
            .then(|| (limit, used as f64 / per_unit, allow as f64 / per_unit))
    })
}

/// [`BudgetBook`] behind one mutex, shared by every request.
#[derive(Debug, Default)]
pub struct SharedBudgets {
    book: Mutex<BudgetBook>,
}

impl SharedBudgets {
    pub fn new() -> Self {
        Self::default()
    }

    /// The book, locked. Critical sections are a few map operations; a
    /// poisoned lock (a panic inside one) still holds consistent numbers
    /// because every method updates entries before it can fail.
    pub fn lock(&self) -> MutexGuard<'_, BudgetBook> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn reserve(
        &self,
        entities: &[BudgetEntity],
        demand: Demand,
        now: Timestamp,
    ) -> Result<Reservation, Refusal> {
        self.lock().reserve(entities, demand, now)
    }

    pub fn settle(&self, reservation: Reservation, actual: Amounts, now: Timestamp) {
        self.lock().settle(reservation, actual, now);
    }
}

#[cfg(test)]
mod tests;
