//! The server's metrics behind `GET /metrics`, declared on a
//! [`fabric_telemetry::metrics::Registry`] (families, histograms, collectors
//! and the exposition format live in `fabric-telemetry`).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

pub use fabric_telemetry::metrics::{
    Collected, CounterVec, Histogram, HistogramVec, MAX_SERIES, OVERFLOW_LABEL, Registry, Sample,
};
use fabric_telemetry::trace::ExportCounters;

/// Buckets (seconds) of task durations: milliseconds to an hour.
const TASK_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Buckets (seconds) of HTTP request latency and lease latency.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Buckets (seconds) of agent spawn latency.
const SPAWN_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Reads values owned elsewhere at scrape time.
pub type Collector = Arc<dyn Fn() -> Vec<Collected> + Send + Sync>;
/// Reports `(entity_id, used / limit)` for `agent_fabric_budget_usage_ratio`.
pub type BudgetRatios = Arc<dyn Fn() -> Vec<(String, f64)> + Send + Sync>;

/// Every metric the server exports.
pub struct Metrics {
    registry: Arc<Registry>,
    /// `agent_fabric_tasks_total{agent_id,status}`: tasks that reached a final status.
    pub tasks: Arc<CounterVec>,
    /// `agent_fabric_task_duration_seconds{agent_id}`: creation to final status.
    pub task_duration: Arc<HistogramVec>,
    /// `agent_fabric_tokens_total{agent_id,model}`: LLM tokens (in + out) through the gateway.
    pub tokens: Arc<CounterVec>,
    /// `agent_fabric_policy_decisions_total{decision}` (see [`Metrics::policy_decision`]).
    pub policy_decisions: Arc<CounterVec>,
    /// `agent_fabric_http_requests_total{method,route,status}`.
    pub http_requests: Arc<CounterVec>,
    /// `agent_fabric_http_request_duration_seconds{method,route}`.
    pub http_duration: Arc<HistogramVec>,
    /// `agent_fabric_lease_latency_seconds`: time from queued to leased.
    pub lease_latency: Arc<Histogram>,
    /// `agent_fabric_agent_spawn_seconds{isolation}`: spawn request to a running session.
    pub spawn_latency: Arc<HistogramVec>,
    /// `agent_fabric_agent_restarts_total{agent_id}`.
    pub agent_restarts: Arc<CounterVec>,
    /// `agent_fabric_alerts_total{kind}`.
    pub alerts: Arc<CounterVec>,
    /// `agent_fabric_trace_spans_{dropped,exported}_total`.
    pub spans: Arc<ExportCounters>,
    budget: Arc<RwLock<Option<BudgetRatios>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let tasks = r.counter_vec(
            "agent_fabric_tasks_total",
            "Tasks that reached a final status, by agent and status.",
            &["agent_id", "status"],
        );
        let task_duration = r.histogram_vec(
            "agent_fabric_task_duration_seconds",
            "Time from a task's creation to its final status.",
            &["agent_id"],
            TASK_BUCKETS,
        );
        let tokens = r.counter_vec(
            "agent_fabric_tokens_total",
            "LLM tokens (prompt and completion) through the gateway, by calling agent (none for users) and model.",
            &["agent_id", "model"],
        );
        let policy_decisions = r.counter_vec(
            "agent_fabric_policy_decisions_total",
            "Policy engine decisions, by decision.",
            &["decision"],
        );
        let http_requests = r.counter_vec(
            "agent_fabric_http_requests_total",
            "HTTP requests served, by method, route template and status code.",
            &["method", "route", "status"],
        );
        let http_duration = r.histogram_vec(
            "agent_fabric_http_request_duration_seconds",
            "HTTP request latency (to the response head), by method and route template.",
            &["method", "route"],
            LATENCY_BUCKETS,
        );
        let lease_latency = r.histogram(
            "agent_fabric_lease_latency_seconds",
            "Time a task waited from queued (or requeued) to leased.",
            LATENCY_BUCKETS,
        );
        let spawn_latency = r.histogram_vec(
            "agent_fabric_agent_spawn_seconds",
            "Time from an agent spawn request to its running session, by isolation level.",
            &["isolation"],
            SPAWN_BUCKETS,
        );
        let agent_restarts = r.counter_vec(
            "agent_fabric_agent_restarts_total",
            "Agent sessions restarted after a failure, by agent.",
            &["agent_id"],
        );
        let alerts = r.counter_vec(
            "agent_fabric_alerts_total",
            "Alerts raised, by kind.",
            &["kind"],
        );
        let spans = ExportCounters::register(&r);
        let budget: Arc<RwLock<Option<BudgetRatios>>> = Arc::new(RwLock::new(None));
        let source = Arc::clone(&budget);
        r.collector(move || {
            let mut samples = Vec::new();
            if let Some(source) = source.read().clone() {
                let mut ratios = source();
                ratios.sort_by(|a, b| a.0.cmp(&b.0));
                for (entity, ratio) in ratios.into_iter().take(MAX_SERIES) {
                    samples.push(Sample::new(ratio).with("entity_id", entity));
                }
            }
            vec![Collected {
                name: "agent_fabric_budget_usage_ratio",
                help: "Budget spent over its limit, by budget entity (1 = exhausted).",
                kind: "gauge",
                samples,
            }]
        });
        Self {
            registry: r,
            tasks,
            task_duration,
            tokens,
            policy_decisions,
            http_requests,
            http_duration,
            lease_latency,
            spawn_latency,
            agent_restarts,
            alerts,
            spans,
            budget,
        }
    }

    /// Counts one policy decision (`allow`, `deny`, `require_approval`, ...).
    pub fn policy_decision(&self, decision: &str) {
        self.policy_decisions.inc(&[decision]);
    }

    /// Sets where `agent_fabric_budget_usage_ratio{entity_id}` is read from
    /// at scrape time (`telemetry::register_collectors` points it at the budgets).
    pub fn set_budget_ratios(&self, source: BudgetRatios) {
        *self.budget.write() = Some(source);
    }

    /// Adds a scrape-time collector.
    pub fn register(&self, collector: Collector) {
        self.registry.collector(move || collector());
    }

    /// A task reached a final status.
    pub fn task_finished(&self, agent: &str, status: &str, took: Duration) {
        self.tasks.inc(&[agent, status]);
        self.task_duration.observe(&[agent], took);
    }

    /// The whole exposition, text format 0.0.4.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}
