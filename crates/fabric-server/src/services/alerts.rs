//! Anomaly alerts (FR-TEL): the [`AlertHub`] every detector raises into,
//! and the built-in detectors (task and HTTP error rates over a window,
//! agent crash loops; budgets call [`AlertHub::budget_exceeded`]).
//!
//! A raised alert is logged (`warn`, `alert_kind` field), counted in
//! `agent_fabric_alerts_total{kind}`, kept in memory for `GET /v1/alerts`
//! (the newest [`KEEP_ALERTS`]; alerts are signals about the running server,
//! not records, so they are not stored across restarts), and POSTed as JSON to
//! the optional webhook (`--alert-webhook`) by a background task that retries
//! with backoff. The same `(kind, entity)` raises at most once per
//! de-duplication window.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use fabric_core::{Clock, Timestamp};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;
// tokio's clock, so the windows below are tested on paused time.
use tokio::time::Instant;

use fabric_telemetry::metrics::{CounterVec, Registry};

/// Alerts kept for `GET /v1/alerts`.
pub const KEEP_ALERTS: usize = 1000;
/// Webhook deliveries waiting at most (beyond, an alert is not delivered; it is still logged and listed).
const WEBHOOK_QUEUE: usize = 256;
/// Attempts per webhook delivery.
pub const WEBHOOK_ATTEMPTS: u32 = 4;

/// Alert kinds raised by the fabric.
pub mod kind {
    pub const TASK_ERROR_RATE: &str = "task_error_rate";
    pub const HTTP_ERROR_RATE: &str = "http_error_rate";
    pub const AGENT_CRASH_LOOP: &str = "agent_crash_loop";
    pub const BUDGET_EXCEEDED: &str = "budget_exceeded";
    pub const BUDGET_THRESHOLD: &str = "budget_threshold";
}

/// Thresholds of the detectors and where alerts are sent.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// POST every alert here as JSON (`--alert-webhook`, `FABRIC_ALERT_WEBHOOK`).
    pub webhook: Option<String>,
    /// Window the error rates are measured over.
    pub error_window: Duration,
    /// Failed share (0..1) of tasks finished (or HTTP requests answered 5xx) in the window that raises an alert.
    pub error_rate_threshold: f64,
    /// Fewer finished tasks (requests) than this in the window never alert.
    pub error_min_events: u64,
    /// Restarts of one agent within `crash_loop_window` that make a crash loop.
    pub crash_loop_restarts: usize,
    pub crash_loop_window: Duration,
    /// The same kind and entity alert at most once per this long.
    pub dedup_window: Duration,
    /// How often the error-rate detector looks.
    pub check_every: Duration,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            error_window: Duration::from_secs(300),
            error_rate_threshold: 0.5,
            error_min_events: 10,
            crash_loop_restarts: 3,
            crash_loop_window: Duration::from_secs(300),
            dedup_window: Duration::from_secs(600),
            check_every: Duration::from_secs(5),
        }
    }
}

/// One alert event (`GET /v1/alerts`, webhook body).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Alert {
    pub id: String,
    /// `task_error_rate`, `http_error_rate`, `agent_crash_loop`, `budget_exceeded`, ...
    pub kind: String,
    /// What it is about: an agent id, a budget entity, `tasks`, `http`.
    pub entity: String,
    pub message: String,
    pub raised_at: Timestamp,
    /// Numbers behind it (rates, counts, limits).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// Where alerts are raised.
pub struct AlertHub {
    config: AlertConfig,
    metrics: AlertMetrics,
    clock: Arc<dyn Clock>,
    recent: Mutex<VecDeque<Alert>>,
    last_raised: Mutex<HashMap<(String, String), Instant>>,
    restarts: Mutex<HashMap<String, VecDeque<Instant>>>,
    webhook: Option<mpsc::Sender<Alert>>,
}

impl std::fmt::Debug for AlertHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertHub").finish_non_exhaustive()
    }
}

impl AlertHub {
    /// A hub; with a webhook configured it starts the delivery task (ends when the hub is dropped).
    pub fn new(config: AlertConfig, registry: &Registry, clock: Arc<dyn Clock>) -> Arc<Self> {
        let webhook = config.webhook.clone().map(|url| {
            let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
            tokio::spawn(deliver(url, rx));
            tx
        });
        Arc::new(Self {
            config,
            metrics: AlertMetrics::register(registry),
            clock,
            recent: Mutex::new(VecDeque::new()),
            last_raised: Mutex::new(HashMap::new()),
            restarts: Mutex::new(HashMap::new()),
            webhook,
        })
    }

    pub fn config(&self) -> &AlertConfig {
        &self.config
    }

    /// Raises an alert unless the same `(kind, entity)` did within the
    /// de-duplication window. Returns whether it was raised.
    pub fn raise(
        &self,
        kind: &str,
        entity: &str,
        message: impl Into<String>,
        details: serde_json::Value,
    ) -> bool {
        let now = Instant::now();
        {
            let mut last = self.last_raised.lock();
            let key = (kind.to_owned(), entity.to_owned());
            if let Some(at) = last.get(&key)
                && now.duration_since(*at) < self.config.dedup_window
            {
                return false;
            }
            // Bounded like everything else: forget the oldest keys.
            if last.len() >= KEEP_ALERTS {
                last.retain(|_, at| now.duration_since(*at) < self.config.dedup_window);
            }
            last.insert(key, now);
        }
        let alert = Alert {
            id: format!("alert_{}", uuid::Uuid::now_v7().simple()),
            kind: kind.to_owned(),
            entity: entity.to_owned(),
            message: message.into(),
            raised_at: self.clock.now(),
            details,
        };
        tracing::warn!(alert_kind = %alert.kind, entity = %alert.entity, alert_id = %alert.id, outcome = "alert", "{}", alert.message);
        self.metrics.alerts.inc(&[kind]);
        {
            let mut recent = self.recent.lock();
            if recent.len() >= KEEP_ALERTS {
                recent.pop_front();
            }
            recent.push_back(alert.clone());
        }
        if let Some(tx) = &self.webhook
            && tx.try_send(alert).is_err()
        {
            tracing::warn!(
                "alert webhook queue full: this alert is not delivered (it is logged and listed in /v1/alerts)"
            );
        }
        true
    }

    /// A budget ran out (called by the budgets service).
    pub fn budget_exceeded(
        &self,
        entity: &str,
        message: impl Into<String>,
        details: serde_json::Value,
    ) -> bool {
        self.raise(kind::BUDGET_EXCEEDED, entity, message, details)
    }

    /// Newest first, at most `limit`, optionally of one kind; after the
    /// alert with id `before` when given (the paging cursor; ids grow with
    /// time, so one that has been dropped still marks the place).
    pub fn list(&self, kind: Option<&str>, before: Option<&str>, limit: usize) -> Vec<Alert> {
        self.recent
            .lock()
            .iter()
            .rev()
            .filter(|a| before.is_none_or(|b| a.id.as_str() < b))
            .filter(|a| kind.is_none_or(|k| a.kind == k))
            .take(limit)
            .cloned()
            .collect()
    }

    /// An agent is being restarted after a failure: a crash loop once it
    /// happened `crash_loop_restarts` times within `crash_loop_window`.
    pub fn agent_restarted(&self, agent: &str, last_exit: &str) {
        self.metrics.agent_restarts.inc(&[agent]);
        let now = Instant::now();
        let recent = {
            let mut restarts = self.restarts.lock();
            let times = restarts.entry(agent.to_owned()).or_default();
            times.push_back(now);
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) > self.config.crash_loop_window)
            {
                times.pop_front();
            }
            times.len()
        };
        if recent >= self.config.crash_loop_restarts {
            self.raise(
                kind::AGENT_CRASH_LOOP,
                agent,
                format!(
                    "agent {agent} restarted {recent} times within {} s (last exit: {last_exit}); check its logs and sessions (GET /v1/agents/{agent}/sessions)",
                    self.config.crash_loop_window.as_secs()
                ),
                serde_json::json!({"restarts": recent, "window_s": self.config.crash_loop_window.as_secs(), "last_exit": last_exit}),
            );
        }
    }

    /// Runs the error-rate detector until `stop` is cancelled.
    pub async fn watch_error_rates(
        self: Arc<Self>,
        sources: ErrorRateSources,
        stop: CancellationToken,
    ) {
        let mut history: VecDeque<(Instant, Counts)> = VecDeque::new();
        let mut every = tokio::time::interval(self.config.check_every);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stop.cancelled() => return,
            }
            let now = Instant::now();
            let counts = Counts::read(&sources);
            // Keep the oldest sample still inside the window as the baseline.
            while history.len() > 1
                && history
                    .get(1)
                    .is_some_and(|(t, _)| now.duration_since(*t) >= self.config.error_window)
            {
                history.pop_front();
            }
            if let Some((_, base)) = history.front() {
                self.check_rate(
                    kind::TASK_ERROR_RATE,
                    "tasks",
                    counts.tasks_failed.saturating_sub(base.tasks_failed),
                    counts.tasks.saturating_sub(base.tasks),
                    "tasks failed or timed out",
                );
                self.check_rate(
                    kind::HTTP_ERROR_RATE,
                    "http",
                    counts.http_5xx.saturating_sub(base.http_5xx),
                    counts.http.saturating_sub(base.http),
                    "HTTP requests answered 5xx",
                );
            }
            history.push_back((now, counts));
        }
    }

    fn check_rate(&self, kind: &str, entity: &str, bad: u64, total: u64, what: &str) {
        if total < self.config.error_min_events || total == 0 {
            return;
        }
        let rate = bad as f64 / total as f64;
        if rate > self.config.error_rate_threshold {
            self.raise(
                kind,
                entity,
                format!(
                    "{bad} of {total} {what} in the last {} s ({:.0}% > {:.0}% threshold)",
                    self.config.error_window.as_secs(),
                    rate * 100.0,
                    self.config.error_rate_threshold * 100.0
                ),
                serde_json::json!({"errors": bad, "total": total, "rate": rate,
                    "threshold": self.config.error_rate_threshold, "window_s": self.config.error_window.as_secs()}),
            );
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Counts {
    tasks: u64,
    tasks_failed: u64,
    http: u64,
    http_5xx: u64,
}

impl Counts {
    fn read(m: &ErrorRateSources) -> Self {
        Self {
            tasks: m.tasks.sum_where("status", |_| true),
            tasks_failed: m
                .tasks
                .sum_where("status", |s| s == "failed" || s == "timed_out"),
            http: m.http_requests.sum_where("status", |_| true),
            http_5xx: m.http_requests.sum_where("status", |s| s.starts_with('5')),
        }
    }
}

/// The counters the error-rate detector watches (declared by their owners).
#[derive(Debug, Clone)]
pub struct ErrorRateSources {
    /// `agent_fabric_tasks_total{agent_id,status}` (the task service's).
    pub tasks: Arc<CounterVec>,
    /// `agent_fabric_http_requests_total{method,route,status}` (the HTTP layer's).
    pub http_requests: Arc<CounterVec>,
}

/// The hub's own metrics.
struct AlertMetrics {
    /// `agent_fabric_alerts_total{kind}`.
    alerts: Arc<CounterVec>,
    /// `agent_fabric_agent_restarts_total{agent_id}`.
    agent_restarts: Arc<CounterVec>,
}

impl AlertMetrics {
    fn register(registry: &Registry) -> Self {
        Self {
            agent_restarts: registry.counter_vec(
                "agent_fabric_agent_restarts_total",
                "Agent sessions restarted after a failure, by agent.",
                &["agent_id"],
            ),
            alerts: registry.counter_vec(
                "agent_fabric_alerts_total",
                "Alerts raised, by kind.",
                &["kind"],
            ),
        }
    }
}

/// Delivers alerts to the webhook one at a time, retrying each with backoff.
async fn deliver(url: String, mut rx: mpsc::Receiver<Alert>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the alert webhook client; alerts are not delivered");
            return;
        }
    };
    while let Some(alert) = rx.recv().await {
        let mut delay = Duration::from_millis(250);
        for attempt in 1..=WEBHOOK_ATTEMPTS {
            match client.post(&url).json(&alert).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => {
                    tracing::warn!(alert_id = %alert.id, status = r.status().as_u16(), attempt, "alert webhook answered with an error")
                }
                Err(e) => {
                    tracing::warn!(alert_id = %alert.id, error = %e.without_url(), attempt, "cannot reach the alert webhook")
                }
            }
            if attempt == WEBHOOK_ATTEMPTS {
                tracing::error!(alert_id = %alert.id, attempts = WEBHOOK_ATTEMPTS, "alert not delivered to the webhook; gave up");
            } else {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

/// Budget alerts (the soft threshold crossed, a hard limit hit; each at most
/// once per entity and period, which the budget service decides) become
/// alert events: `/v1/alerts`, the log, `agent_fabric_alerts_total`, the webhook.
impl crate::services::budgets::BudgetAlerts for AlertHub {
    fn alert(&self, alert: &fabric_core::budget::BudgetAlert) {
        use fabric_core::budget::BudgetAlertKind;
        let entity = alert.entity.to_string();
        let limit = alert.limit.as_str();
        let (kind, message) = match alert.kind {
            BudgetAlertKind::Threshold => (
                kind::BUDGET_THRESHOLD,
                format!(
                    "{entity} used {:.0}% of its {limit} budget ({} of {}; alert threshold {}%)",
                    percent(alert.used, alert.allowance),
                    alert.used,
                    alert.allowance,
                    alert.threshold_percent
                ),
            ),
            BudgetAlertKind::Exceeded => (
                kind::BUDGET_EXCEEDED,
                format!(
                    "{entity} spent its {limit} budget ({} of {}): calls are refused until the period resets",
                    alert.used, alert.allowance
                ),
            ),
        };
        let details = serde_json::to_value(alert).unwrap_or(serde_json::Value::Null);
        self.raise(kind, &entity, message, details);
    }
}

fn percent(used: f64, allowance: f64) -> f64 {
    if allowance > 0.0 {
        used / allowance * 100.0
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use fabric_core::SystemClock;

    use super::*;

    /// The counters the tests drive or read.
    struct Metrics {
        tasks: Arc<CounterVec>,
        sources: ErrorRateSources,
        alerts: Arc<CounterVec>,
        agent_restarts: Arc<CounterVec>,
    }

    fn hub(config: AlertConfig) -> (Arc<AlertHub>, Metrics) {
        let registry = Registry::new();
        let hub = AlertHub::new(config, &registry, Arc::new(SystemClock));
        let sources = ErrorRateSources {
            tasks: registry.counter_vec("tasks_total", "", &["agent_id", "status"]),
            http_requests: registry.counter_vec("http_total", "", &["method", "route", "status"]),
        };
        let metrics = Metrics {
            tasks: Arc::clone(&sources.tasks),
            sources,
            alerts: Arc::clone(&hub.metrics.alerts),
            agent_restarts: Arc::clone(&hub.metrics.agent_restarts),
        };
        (hub, metrics)
    }

    fn raise(hub: &AlertHub, entity: &str) -> bool {
        hub.raise(kind::AGENT_CRASH_LOOP, entity, "m", serde_json::json!({}))
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_kind_and_entity_raise_once_per_dedup_window() {
        let (hub, metrics) = hub(AlertConfig::default());
        let window = hub.config().dedup_window;
        assert!(raise(&hub, "a"));
        assert!(!raise(&hub, "a"), "again at once: de-duplicated");
        assert!(raise(&hub, "b"), "another entity is another alert");
        tokio::time::advance(window - Duration::from_secs(1)).await;
        assert!(!raise(&hub, "a"), "still inside the window");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(raise(&hub, "a"), "a window later it raises again");
        assert_eq!(metrics.alerts.get(&[kind::AGENT_CRASH_LOOP]), 3);
        assert_eq!(hub.list(None, None, 10).len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_error_rate_detector_raises_once_while_the_rate_stays_high() {
        let config = AlertConfig {
            error_window: Duration::from_secs(10),
            check_every: Duration::from_secs(1),
            ..AlertConfig::default()
        };
        let (hub, metrics) = hub(config);
        let stop = CancellationToken::new();
        let detector =
            tokio::spawn(Arc::clone(&hub).watch_error_rates(metrics.sources.clone(), stop.clone()));
        // A baseline look, then 9 failures: under the minimum of 10 events.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for _ in 0..9 {
            metrics.tasks.inc(&["shell", "failed"]);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            hub.list(None, None, 10).is_empty(),
            "too few events to judge"
        );
        // Three more (one of them a success): 11 of 12 failed.
        metrics.tasks.inc(&["shell", "failed"]);
        metrics.tasks.inc(&["shell", "timed_out"]);
        metrics.tasks.inc(&["shell", "completed"]);
        // Many more looks within the window, the rate as high: one alert.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let alerts = hub.list(Some(kind::TASK_ERROR_RATE), None, 10);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].details["errors"], 11);
        assert_eq!(alerts[0].details["total"], 12);
        assert_eq!(metrics.alerts.get(&[kind::TASK_ERROR_RATE]), 1);
        // Once the window has passed over them, nothing new is counted.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(hub.list(None, None, 10).len(), 1);
        stop.cancel();
        detector.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn three_restarts_within_the_window_are_a_crash_loop() {
        let (hub, metrics) = hub(AlertConfig::default());
        let window = hub.config().crash_loop_window;
        hub.agent_restarted("x", "exited (code 1)");
        hub.agent_restarted("x", "exited (code 1)");
        // The first falls out of the window before the third.
        tokio::time::advance(window + Duration::from_secs(1)).await;
        hub.agent_restarted("x", "exited (code 1)");
        assert!(hub.list(None, None, 10).is_empty());
        hub.agent_restarted("x", "exited (code 1)");
        hub.agent_restarted("x", "exited (code 2)");
        let alerts = hub.list(Some(kind::AGENT_CRASH_LOOP), None, 10);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].details["restarts"], 3);
        assert_eq!(alerts[0].details["last_exit"], "exited (code 2)");
        assert_eq!(metrics.agent_restarts.get(&["x"]), 5);
    }
}
