//! Budgets in the server (REQUIREMENTS §8): [`BudgetService`] owns the live
//! accounting ([`SharedBudgets`] from `fabric-engine`), keeps the store's
//! budget records in step, rebuilds the current period from the usage ledger
//! at start, delivers alerts through one [`BudgetAlerts`] hook, and plugs
//! into the gateway as its [`Admission`] (reserve before routing, settle with
//! the call's usage record).
//!
//! Reservations live in memory only, in the active orchestrator: there is
//! one per store (the SQLite lock file, the Redis leadership), so no other
//! process reserves against the same budgets. A restart loses only the holds
//! of calls that were in flight (they are refused or metered anew).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fabric_core::budget::{
    Amounts, BudgetAlert, BudgetEntity, BudgetRecord, BudgetSpec, BudgetStore, BudgetUsageReport,
    BudgetView, DAY_MS, PeriodState, UsageLine,
};
use fabric_core::{AgentId, Clock, TenantId, Timestamp, UsageQuery, UsageRecord, UsageStore};
use fabric_engine::budget::{Demand, Refusal, Reservation, SharedBudgets, day_start, project};
use fabric_gateway::{Admission, Admitted, Caller, Estimate, GatewayError};
use parking_lot::Mutex;

use crate::store::Store;

/// Why the budget service refused a request.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// Limits that make no sense (a threshold out of range, …).
    #[error("{0}")]
    Invalid(String),
    #[error("{0} has no budget: set one with 'reactor-fabric budget set --{kind} {name} --max-tokens-per-day N'", kind = .0.kind(), name = .0.name())]
    NoBudget(BudgetEntity),
    /// An entity's budget for the period is spent.
    #[error(transparent)]
    Exceeded(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] fabric_core::StoreError),
}

/// Where budget alerts go: the soft threshold crossed, a hard limit hit
/// (each at most once per entity and period). The server passes its alert
/// hub (log, webhook, metric, `/v1/alerts`) at construction. Alerts are also
/// kept per entity for the current period and shown in `GET /v1/usage/{entity}`.
pub trait BudgetAlerts: Send + Sync + 'static {
    fn alert(&self, alert: &BudgetAlert);
}

/// The clock budget periods follow (`ServerConfig::budget_clock`): the
/// system clock, or a test's.
#[derive(Clone)]
pub struct BudgetClock(pub Arc<dyn Clock>);

impl Default for BudgetClock {
    fn default() -> Self {
        Self(Arc::new(fabric_core::SystemClock))
    }
}

impl fmt::Debug for BudgetClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BudgetClock")
    }
}

/// Budgets: live accounting, persistence, alerts.
pub struct BudgetService {
    book: SharedBudgets,
    store: Store,
    clock: Arc<dyn Clock>,
    /// Where threshold and exceeded alerts go (the server's alert hub).
    alerts: Arc<dyn BudgetAlerts>,
    /// CPU seconds of agents without a budget, today (for usage reports;
    /// in memory only).
    unbudgeted_compute: Mutex<HashMap<BudgetEntity, (Timestamp, u64)>>,
}

impl fmt::Debug for BudgetService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetService").finish_non_exhaustive()
    }
}

/// The entities a caller's usage counts against: its agent (if any), its
/// user and its tenant.
pub fn entities_of(agent: Option<&AgentId>, user: &str, tenant: &TenantId) -> Vec<BudgetEntity> {
    let mut out = Vec::with_capacity(3);
    if let Some(agent) = agent {
        out.push(BudgetEntity::Agent(agent.clone()));
    }
    out.push(BudgetEntity::User(user.to_owned()));
    out.push(BudgetEntity::Tenant(tenant.clone()));
    out
}

fn ledger_query(entity: &BudgetEntity, start: Timestamp) -> UsageQuery {
    let mut q = UsageQuery {
        since: Some(start),
        until: Some(Timestamp::from_millis(start.as_millis() + DAY_MS)),
        limit: 0,
        ..UsageQuery::default()
    };
    match entity {
        BudgetEntity::Agent(a) => q.agent = Some(a.clone()),
        BudgetEntity::User(u) => q.user = Some(u.clone()),
        BudgetEntity::Tenant(t) => q.tenant = Some(t.clone()),
    }
    q
}

impl BudgetService {
    /// An empty service; [`BudgetService::load`] fills it from the store.
    /// Exports `agent_fabric_budget_usage_ratio` on `registry`.
    pub(crate) fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        alerts: Arc<dyn BudgetAlerts>,
        registry: &fabric_telemetry::metrics::Registry,
    ) -> Arc<Self> {
        let service = Arc::new(Self {
            book: SharedBudgets::new(),
            store,
            clock,
            alerts,
            unbudgeted_compute: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&service);
        registry.collector(move || {
            vec![usage_ratio_family(
                weak.upgrade().map(|s| s.usage_ratios()).unwrap_or_default(),
            )]
        });
        service
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Tokens and cost an entity used in the period starting at `start`, from the ledger.
    async fn ledger_used(
        &self,
        entity: &BudgetEntity,
        start: Timestamp,
    ) -> Result<(Amounts, u64), BudgetError> {
        let totals = self.store.usage_totals(ledger_query(entity, start)).await?;
        Ok((
            Amounts {
                tokens: totals.tokens_in.saturating_add(totals.tokens_out),
                compute_ms: 0,
                cost_nano_usd: totals.cost_nano_usd,
            },
            totals.calls,
        ))
    }

    /// Loads every stored budget, with the used amounts of its stored period
    /// rebuilt from the usage ledger (and rolled to today if that period is
    /// over, carrying over what the policy carries). Call once at start,
    /// before requests are served.
    pub async fn load(&self) -> Result<usize, BudgetError> {
        let records = self.store.list_budgets().await?;
        let now = self.now();
        for record in &records {
            let (used, _) = self
                .ledger_used(&record.entity, record.period.start)
                .await?;
            self.book.lock().set(
                record.entity.clone(),
                record.spec.clone(),
                record.period,
                used,
                now,
            );
        }
        self.drain();
        Ok(records.len())
    }

    /// `PUT /v1/budgets/{entity}`: sets the limits; the period's state
    /// (usage, carry, alerts fired) is kept.
    pub async fn put(
        &self,
        entity: BudgetEntity,
        spec: BudgetSpec,
    ) -> Result<BudgetView, BudgetError> {
        spec.validate().map_err(BudgetError::Invalid)?;
        let now = self.now();
        let existing = self.book.lock().snapshot(&entity, now);
        let (period, used) = match existing {
            Some(s) => (s.period, s.used),
            None => {
                let start = day_start(now);
                let stored = self.store.get_budget(entity.clone()).await?;
                let period = stored
                    .filter(|r| r.period.start == start)
                    .map(|r| r.period)
                    .unwrap_or(PeriodState {
                        start,
                        ..PeriodState::default()
                    });
                let (mut used, _) = self.ledger_used(&entity, start).await?;
                used.compute_ms = period
                    .compute_ms
                    .max(self.unbudgeted_compute_ms(&entity, now));
                (
                    PeriodState {
                        compute_ms: used.compute_ms,
                        ..period
                    },
                    used,
                )
            }
        };
        let record = BudgetRecord {
            entity: entity.clone(),
            spec: spec.clone(),
            period,
            updated_at: now,
        };
        self.store.put_budget(record.clone()).await?;
        self.book
            .lock()
            .set(entity.clone(), spec.clone(), period, used, now);
        self.drain();
        Ok(view(record))
    }

    pub async fn get(&self, entity: &BudgetEntity) -> Result<BudgetView, BudgetError> {
        match self.store.get_budget(entity.clone()).await? {
            Some(r) => Ok(view(r)),
            None => Err(BudgetError::NoBudget(entity.clone())),
        }
    }

    /// Every budget, by entity (`agent:…`, `tenant:…`, `user:…`).
    pub async fn list(&self) -> Result<Vec<BudgetView>, BudgetError> {
        let records = self.store.list_budgets().await?;
        let mut budgets: Vec<BudgetView> = records.into_iter().map(view).collect();
        budgets.sort_by_key(|b| b.entity.to_string());
        Ok(budgets)
    }

    pub async fn delete(&self, entity: &BudgetEntity) -> Result<(), BudgetError> {
        let deleted = self.store.delete_budget(entity.clone()).await?;
        let removed = self.book.lock().remove(entity);
        if deleted || removed {
            Ok(())
        } else {
            Err(BudgetError::NoBudget(entity.clone()))
        }
    }

    /// Reserves `demand` against `entities` (all-or-nothing).
    pub fn reserve(
        &self,
        entities: &[BudgetEntity],
        demand: Demand,
    ) -> Result<Reservation, Refusal> {
        let result = self.book.reserve(entities, demand, self.now());
        if result.is_err() {
            self.drain();
        }
        result
    }

    pub fn settle(&self, reservation: Reservation, actual: Amounts) {
        self.book.settle(reservation, actual, self.now());
        self.drain();
    }

    /// Whether `agent` may take new work: `Err` when its compute-seconds
    /// budget is spent.
    pub fn check_compute(&self, agent: &AgentId) -> Result<(), Refusal> {
        let demand = Demand {
            compute_ms: Some(0),
            ..Demand::default()
        };
        // Nothing is held (the demand is zero), so the reservation needs no settling.
        self.reserve(&[BudgetEntity::Agent(agent.clone())], demand)
            .map(drop)
    }

    /// Counts CPU time an agent used (sampled from its cgroup or processes).
    pub fn record_compute(&self, entities: &[BudgetEntity], compute_ms: u64) {
        if compute_ms == 0 {
            return;
        }
        let now = self.now();
        let start = day_start(now);
        {
            let mut book = self.book.lock();
            book.record(
                entities,
                Amounts {
                    compute_ms,
                    ..Amounts::default()
                },
                now,
            );
            let mut other = self.unbudgeted_compute.lock();
            for e in entities.iter().filter(|e| !book.contains(e)) {
                let slot = other.entry(e.clone()).or_insert((start, 0));
                if slot.0 != start {
                    *slot = (start, 0);
                }
                slot.1 = slot.1.saturating_add(compute_ms);
            }
        }
        self.drain();
    }

    fn unbudgeted_compute_ms(&self, entity: &BudgetEntity, now: Timestamp) -> u64 {
        self.unbudgeted_compute
            .lock()
            .get(entity)
            .filter(|(start, _)| *start == day_start(now))
            .map_or(0, |(_, ms)| *ms)
    }

    /// used ÷ allowance of every budgeted entity's most used limit (sorted by
    /// entity): the values of `agent_fabric_budget_usage_ratio{entity_id}`.
    pub fn usage_ratios(&self) -> Vec<(String, f64)> {
        let now = self.now();
        let mut book = self.book.lock();
        let mut out: Vec<(String, f64)> = book
            .entities()
            .into_iter()
            .filter_map(|e| {
                let ratio = book.snapshot(&e, now)?.usage_ratio();
                Some((e.to_string(), ratio))
            })
            .collect();
        drop(book);
        self.drain();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// `GET /v1/usage/{entity}?period=day`.
    pub async fn report(&self, entity: &BudgetEntity) -> Result<BudgetUsageReport, BudgetError> {
        let now = self.now();
        let start = day_start(now);
        let snapshot = self.book.lock().snapshot(entity, now);
        self.drain();
        let (ledger, calls) = self.ledger_used(entity, start).await?;
        let resets_at = Timestamp::from_millis(start.as_millis() + DAY_MS);
        let Some(s) = snapshot else {
            let used = Amounts {
                compute_ms: self.unbudgeted_compute_ms(entity, now),
                ..ledger
            };
            let projected = project(used, start, now);
            return Ok(BudgetUsageReport {
                entity: entity.clone(),
                period: "day".to_owned(),
                period_start: start,
                resets_at,
                tokens: line(used.tokens, 0, None, projected.tokens, 1.0),
                compute_seconds: line(used.compute_ms, 0, None, projected.compute_ms, 1e3),
                cost_usd: line(used.cost_nano_usd, 0, None, projected.cost_nano_usd, 1e9),
                calls,
                budget: None,
                alerted: false,
                alerts: Vec::new(),
            });
        };
        let projected = s.projected(now);
        Ok(BudgetUsageReport {
            entity: entity.clone(),
            period: "day".to_owned(),
            period_start: s.period.start,
            resets_at: s.resets_at,
            tokens: line(
                s.used.tokens,
                s.reserved.tokens,
                s.allowance.tokens,
                projected.tokens,
                1.0,
            ),
            compute_seconds: line(
                s.used.compute_ms,
                s.reserved.compute_ms,
                s.allowance.compute_ms,
                projected.compute_ms,
                1e3,
            ),
            cost_usd: line(
                s.used.cost_nano_usd,
                s.reserved.cost_nano_usd,
                s.allowance.cost_nano_usd,
                projected.cost_nano_usd,
                1e9,
            ),
            calls,
            budget: Some(s.spec),
            alerted: s.period.alerted,
            alerts: s.alerts,
        })
    }

    /// Delivers alerts and stores changed period states, outside the lock.
    fn drain(&self) {
        let outbox = self.book.lock().take_outbox();
        if !outbox.alerts.is_empty() {
            let hook = Arc::clone(&self.alerts);
            for alert in &outbox.alerts {
                hook.alert(alert);
            }
        }
        let now = self.now();
        for (entity, spec, period) in outbox.dirty {
            // Submitted now (the store commits in submission order), awaited
            // elsewhere: a slow disk never holds up a call.
            let write = self.store.put_budget(BudgetRecord {
                entity: entity.clone(),
                spec,
                period,
                updated_at: now,
            });
            tokio::spawn(async move {
                if let Err(e) = write.await {
                    tracing::error!(entity = %entity, error = %e, "cannot store the budget's period state; a restart may lose this period's compute seconds or alert state");
                }
            });
        }
    }
}

fn line(
    used: u64,
    reserved: u64,
    allowance: Option<u64>,
    projected: u64,
    per_unit: f64,
) -> UsageLine {
    let f = |v: u64| v as f64 / per_unit;
    UsageLine {
        used: f(used),
        reserved: f(reserved),
        limit: allowance.map(f),
        remaining: allowance.map(|a| f(a.saturating_sub(used.saturating_add(reserved)))),
        percent: allowance.map(|a| {
            if a == 0 {
                if used > 0 { 100.0 } else { 0.0 }
            } else {
                (used as f64 * 100.0 / a as f64 * 100.0).round() / 100.0
            }
        }),
        projected: f(projected),
    }
}

fn view(r: BudgetRecord) -> BudgetView {
    BudgetView {
        entity: r.entity,
        spec: r.spec,
        updated_at: r.updated_at,
    }
}

/// The gateway's [`Admission`]: reserves `prompt + max_tokens` tokens (and
/// "cost not spent yet") against the caller's agent, user and tenant.
pub struct BudgetAdmission(pub Arc<BudgetService>);

impl Admission for BudgetAdmission {
    fn admit(
        &self,
        caller: &Caller,
        _model: &str,
        estimate: Estimate,
    ) -> Result<Box<dyn Admitted>, GatewayError> {
        let entities = entities_of(caller.agent.as_ref(), &caller.user, &caller.tenant);
        let demand = Demand {
            tokens: Some(estimate.input_tokens.saturating_add(estimate.output_tokens)),
            // The provider (and so the price) is chosen after admission: a
            // call is refused once the cost limit is spent, not on an estimate.
            cost_nano_usd: Some(0),
            compute_ms: None,
        };
        match self.0.reserve(&entities, demand) {
            Ok(reservation) => Ok(Box::new(BudgetHold {
                service: Arc::clone(&self.0),
                reservation: Some(reservation),
            })),
            Err(refusal) => {
                let now = self.0.now();
                let retry_after = refusal.resets_at.since(now).as_secs().max(1);
                let mut message = refusal.to_string();
                if refusal.limit == fabric_core::budget::BudgetLimit::MaxTokensPerDay {
                    // What "this needs" is made of, and how to need less.
                    message.push_str(&format!(
                        " (a call holds its prompt's tokens, estimated at 4 characters each, plus its max_tokens, or {} when it sets none: pass max_tokens to reserve less)",
                        fabric_gateway::router::DEFAULT_OUTPUT_ESTIMATE
                    ));
                }
                Err(GatewayError::BudgetExceeded {
                    message,
                    entity: refusal.entity.to_string(),
                    limit: refusal.limit.as_str().to_owned(),
                    resets_at: refusal.resets_at,
                    retry_after,
                })
            }
        }
    }
}

/// A call's hold; settled with its usage record, or released if dropped.
struct BudgetHold {
    service: Arc<BudgetService>,
    reservation: Option<Reservation>,
}

impl Admitted for BudgetHold {
    fn settle(mut self: Box<Self>, record: &UsageRecord) {
        if let Some(reservation) = self.reservation.take() {
            self.service.settle(
                reservation,
                Amounts {
                    tokens: record.tokens_in.saturating_add(record.tokens_out),
                    compute_ms: 0,
                    cost_nano_usd: record.cost_nano_usd,
                },
            );
        }
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            self.service.settle(reservation, Amounts::default());
        }
    }
}

/// How often agents' CPU time is sampled into their compute budgets.
pub const DEFAULT_COMPUTE_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// `agent_fabric_budget_usage_ratio{entity_id}` of these ratios (sorted, at
/// most `MAX_SERIES`).
fn usage_ratio_family(ratios: Vec<(String, f64)>) -> fabric_telemetry::metrics::Collected {
    use fabric_telemetry::metrics::{Collected, MAX_SERIES, Sample};
    Collected {
        name: "agent_fabric_budget_usage_ratio",
        help: "Budget spent over its limit, by budget entity (1 = exhausted).",
        kind: "gauge",
        samples: ratios
            .into_iter()
            .take(MAX_SERIES)
            .map(|(entity, ratio)| Sample::new(ratio).with("entity_id", entity))
            .collect(),
    }
}
