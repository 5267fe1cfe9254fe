//! Prometheus metrics (FR-TEL, REQUIREMENTS §9): a small hand-rolled registry of
//! atomic counters and fixed-bucket histograms, rendered in the text
//! exposition format (0.0.4) by `GET /metrics`.
//!
//! Why hand-rolled: the whole registry is a few hundred lines with no new
//! dependency, recording is one read-locked map lookup plus an atomic add,
//! and values owned by other parts (scheduler queue depth, the gateway's
//! `GatewayMetrics`, agents' resource usage, budget ratios) are read at scrape
//! time by collectors instead of being copied on every change.
//!
//! Label cardinality is bounded: no task ids or request ids are labels; each
//! labelled family keeps at most [`MAX_SERIES`] label sets and folds any
//! further ones into one series whose labels read `other` (agent ids and model
//! names are the only open-ended label values; route labels are axum route
//! templates, never raw paths).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

/// Most label sets one family keeps; further ones are counted under `other`.
pub const MAX_SERIES: usize = 2000;
/// The label value that series beyond [`MAX_SERIES`] are folded into.
pub const OVERFLOW_LABEL: &str = "other";

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

/// The series of a family: key (see [`series_key`]) → (label values, value).
type SeriesMap<T> = HashMap<String, (Box<[String]>, Arc<T>)>;

/// A counter family with a fixed list of label names.
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: RwLock<SeriesMap<AtomicU64>>,
}

impl CounterVec {
    fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self {
            name,
            help,
            labels,
            series: RwLock::new(HashMap::new()),
        }
    }

    /// Adds `by` to the series of `values` (one per label name, in order).
    pub fn add(&self, values: &[&str], by: u64) {
        debug_assert_eq!(values.len(), self.labels.len());
        let key = series_key(values);
        // The common case: the series exists (read lock only).
        if let Some((_, c)) = self.series.read().get(&key) {
            c.fetch_add(by, Ordering::Relaxed);
            return;
        }
        let mut series = self.series.write();
        let (key, values) = bounded(series.len(), key, values);
        series
            .entry(key)
            .or_insert_with(|| (values, Arc::new(AtomicU64::new(0))))
            .1
            .fetch_add(by, Ordering::Relaxed);
    }

    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    /// The value of one series (0 when it does not exist).
    pub fn get(&self, values: &[&str]) -> u64 {
        self.series
            .read()
            .get(&series_key(values))
            .map_or(0, |(_, c)| c.load(Ordering::Relaxed))
    }

    /// Sum over every series whose label `label` is `value`.
    pub fn sum_where(&self, label: &str, pred: impl Fn(&str) -> bool) -> u64 {
        let Some(i) = self.labels.iter().position(|l| *l == label) else {
            return 0;
        };
        self.series
            .read()
            .values()
            .filter(|(k, _)| k.get(i).is_some_and(|v| pred(v)))
            .map(|(_, c)| c.load(Ordering::Relaxed))
            .sum()
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        let mut rows: Vec<(Box<[String]>, u64)> = self
            .series
            .read()
            .values()
            .map(|(k, c)| (k.clone(), c.load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for (values, count) in rows {
            sample(out, self.name, "", self.labels, &values, None, count as f64);
        }
    }
}

/// The map key of a label set: its values joined by a separator no label
/// value of ours holds (one small allocation per recording).
fn series_key(values: &[&str]) -> String {
    let mut key = String::with_capacity(values.iter().map(|v| v.len() + 1).sum());
    for v in values {
        key.push_str(v);
        key.push('\u{1f}');
    }
    key
}

/// The key and label values to insert: the overflow series once the family is full.
fn bounded(len: usize, key: String, values: &[&str]) -> (String, Box<[String]>) {
    if len >= MAX_SERIES {
        let overflow = vec![OVERFLOW_LABEL; values.len()];
        (
            series_key(&overflow),
            overflow.into_iter().map(str::to_owned).collect(),
        )
    } else {
        (key, values.iter().map(|v| (*v).to_owned()).collect())
    }
}

/// A fixed-bucket histogram (cumulative on render).
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound plus the `+Inf` overflow.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render_series(&self, out: &mut String, name: &str, labels: &[&str], values: &[String]) {
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += count.load(Ordering::Relaxed);
            sample(
                out,
                name,
                "_bucket",
                labels,
                values,
                Some(&format_float(*bound)),
                cumulative as f64,
            );
        }
        let total = cumulative + self.counts.last().map_or(0, |c| c.load(Ordering::Relaxed));
        sample(
            out,
            name,
            "_bucket",
            labels,
            values,
            Some("+Inf"),
            total as f64,
        );
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        sample(out, name, "_sum", labels, values, None, sum);
        sample(out, name, "_count", labels, values, None, total as f64);
    }
}

/// A histogram family with labels.
pub struct HistogramVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    bounds: &'static [f64],
    series: RwLock<SeriesMap<Histogram>>,
}

impl HistogramVec {
    fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Self {
        Self {
            name,
            help,
            labels,
            bounds,
            series: RwLock::new(HashMap::new()),
        }
    }

    pub fn observe(&self, values: &[&str], d: Duration) {
        let key = series_key(values);
        if let Some((_, h)) = self.series.read().get(&key) {
            h.observe(d);
            return;
        }
        let mut series = self.series.write();
        let (key, values) = bounded(series.len(), key, values);
        series
            .entry(key)
            .or_insert_with(|| (values, Arc::new(Histogram::new(self.bounds))))
            .1
            .observe(d);
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let mut rows: Vec<(Box<[String]>, Arc<Histogram>)> = self
            .series
            .read()
            .values()
            .map(|(k, h)| (k.clone(), Arc::clone(h)))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        for (values, h) in rows {
            h.render_series(out, self.name, self.labels, &values);
        }
    }
}

/// One value a collector reports at scrape time.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Appended to the family name (`_bucket`, `_sum`, `_count` of a histogram).
    pub suffix: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl Sample {
    pub fn new(value: f64) -> Self {
        Self {
            suffix: "",
            labels: Vec::new(),
            value,
        }
    }

    /// The `_bucket`/`_sum`/`_count` samples of a histogram snapshot
    /// (cumulative `(le, count)` buckets), each with `labels`.
    pub fn histogram(
        labels: &[(&'static str, String)],
        buckets: &[(f64, u64)],
        count: u64,
        sum: f64,
    ) -> Vec<Self> {
        let with = |suffix, extra: Option<String>, value| {
            let mut l = labels.to_vec();
            if let Some(le) = extra {
                l.push(("le", le));
            }
            Self {
                suffix,
                labels: l,
                value,
            }
        };
        let mut out: Vec<Self> = buckets
            .iter()
            .map(|(le, c)| with("_bucket", Some(format_float(*le)), *c as f64))
            .collect();
        out.push(with("_bucket", Some("+Inf".to_owned()), count as f64));
        out.push(with("_sum", None, sum));
        out.push(with("_count", None, count as f64));
        out
    }

    pub fn with(mut self, label: &'static str, value: impl Into<String>) -> Self {
        self.labels.push((label, value.into()));
        self
    }
}

/// A metric family whose values are read when `/metrics` is scraped.
pub struct Collected {
    pub name: &'static str,
    pub help: &'static str,
    /// `gauge` or `counter`.
    pub kind: &'static str,
    pub samples: Vec<Sample>,
}

/// Reads values owned elsewhere at scrape time.
pub type Collector = Arc<dyn Fn() -> Vec<Collected> + Send + Sync>;
/// Reports `(entity_id, used / limit)` for `agent_fabric_budget_usage_ratio`.
pub type BudgetRatios = Arc<dyn Fn() -> Vec<(String, f64)> + Send + Sync>;

/// Every metric the server exports.
pub struct Metrics {
    /// `agent_fabric_tasks_total{agent_id,status}`: tasks that reached a final status.
    pub tasks: CounterVec,
    /// `agent_fabric_task_duration_seconds{agent_id}`: creation to final status.
    pub task_duration: HistogramVec,
    /// `agent_fabric_tokens_total{agent_id,model}`: LLM tokens (in + out) through the gateway.
    pub tokens: CounterVec,
    /// `agent_fabric_policy_decisions_total{decision}` (see [`Metrics::policy_decision`]).
    pub policy_decisions: CounterVec,
    /// `agent_fabric_http_requests_total{method,route,status}`.
    pub http_requests: CounterVec,
    /// `agent_fabric_http_request_duration_seconds{method,route}`.
    pub http_duration: HistogramVec,
    /// `agent_fabric_lease_latency_seconds`: time from queued to leased.
    pub lease_latency: Histogram,
    /// `agent_fabric_agent_spawn_seconds{isolation}`: spawn request to a running session.
    pub spawn_latency: HistogramVec,
    /// `agent_fabric_agent_restarts_total{agent_id}`.
    pub agent_restarts: CounterVec,
    /// `agent_fabric_alerts_total{kind}`.
    pub alerts: CounterVec,
    /// `agent_fabric_trace_spans_dropped_total`: spans the exporter queue had no room for.
    pub spans_dropped: AtomicU64,
    /// `agent_fabric_trace_spans_exported_total`.
    pub spans_exported: AtomicU64,
    collectors: RwLock<Vec<Collector>>,
    budget: RwLock<Option<BudgetRatios>>,
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
        Self {
            tasks: CounterVec::new(
                "agent_fabric_tasks_total",
                "Tasks that reached a final status, by agent and status.",
                &["agent_id", "status"],
            ),
            task_duration: HistogramVec::new(
                "agent_fabric_task_duration_seconds",
                "Time from a task's creation to its final status.",
                &["agent_id"],
                TASK_BUCKETS,
            ),
            tokens: CounterVec::new(
                "agent_fabric_tokens_total",
                "LLM tokens (prompt and completion) through the gateway, by calling agent (none for users) and model.",
                &["agent_id", "model"],
            ),
            policy_decisions: CounterVec::new(
                "agent_fabric_policy_decisions_total",
                "Policy engine decisions, by decision.",
                &["decision"],
            ),
            http_requests: CounterVec::new(
                "agent_fabric_http_requests_total",
                "HTTP requests served, by method, route template and status code.",
                &["method", "route", "status"],
            ),
            http_duration: HistogramVec::new(
                "agent_fabric_http_request_duration_seconds",
                "HTTP request latency (to the response head), by method and route template.",
                &["method", "route"],
                LATENCY_BUCKETS,
            ),
            lease_latency: Histogram::new(LATENCY_BUCKETS),
            spawn_latency: HistogramVec::new(
                "agent_fabric_agent_spawn_seconds",
                "Time from an agent spawn request to its running session, by isolation level.",
                &["isolation"],
                SPAWN_BUCKETS,
            ),
            agent_restarts: CounterVec::new(
                "agent_fabric_agent_restarts_total",
                "Agent sessions restarted after a failure, by agent.",
                &["agent_id"],
            ),
            alerts: CounterVec::new(
                "agent_fabric_alerts_total",
                "Alerts raised, by kind.",
                &["kind"],
            ),
            spans_dropped: AtomicU64::new(0),
            spans_exported: AtomicU64::new(0),
            collectors: RwLock::new(Vec::new()),
            budget: RwLock::new(None),
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
        self.collectors.write().push(collector);
    }

    /// A task reached a final status.
    pub fn task_finished(&self, agent: &str, status: &str, took: Duration) {
        self.tasks.inc(&[agent, status]);
        self.task_duration.observe(&[agent], took);
    }

    /// The whole exposition, text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.tasks.render(&mut out);
        self.task_duration.render(&mut out);
        self.tokens.render(&mut out);
        self.policy_decisions.render(&mut out);
        self.http_requests.render(&mut out);
        self.http_duration.render(&mut out);
        header(
            &mut out,
            "agent_fabric_lease_latency_seconds",
            "Time a task waited from queued (or requeued) to leased.",
            "histogram",
        );
        self.lease_latency
            .render_series(&mut out, "agent_fabric_lease_latency_seconds", &[], &[]);
        self.spawn_latency.render(&mut out);
        self.agent_restarts.render(&mut out);
        self.alerts.render(&mut out);
        for (name, help, value) in [
            (
                "agent_fabric_trace_spans_dropped_total",
                "Trace spans dropped because the OTLP export queue was full.",
                &self.spans_dropped,
            ),
            (
                "agent_fabric_trace_spans_exported_total",
                "Trace spans sent to the OTLP endpoint.",
                &self.spans_exported,
            ),
        ] {
            header(&mut out, name, help, "counter");
            sample(
                &mut out,
                name,
                "",
                &[],
                &[],
                None,
                value.load(Ordering::Relaxed) as f64,
            );
        }
        let budget = self.budget.read().clone();
        header(
            &mut out,
            "agent_fabric_budget_usage_ratio",
            "Budget spent over its limit, by budget entity (1 = exhausted).",
            "gauge",
        );
        if let Some(source) = budget {
            let mut ratios = source();
            ratios.sort_by(|a, b| a.0.cmp(&b.0));
            for (entity, ratio) in ratios.into_iter().take(MAX_SERIES) {
                sample(
                    &mut out,
                    "agent_fabric_budget_usage_ratio",
                    "",
                    &["entity_id"],
                    &[entity],
                    None,
                    ratio,
                );
            }
        }
        let collectors = self.collectors.read().clone();
        for collector in collectors {
            for family in collector() {
                header(&mut out, family.name, family.help, family.kind);
                for s in family.samples {
                    let names: Vec<&str> = s.labels.iter().map(|(n, _)| *n).collect();
                    let values: Vec<String> = s.labels.into_iter().map(|(_, v)| v).collect();
                    sample(
                        &mut out,
                        family.name,
                        s.suffix,
                        &names,
                        &values,
                        None,
                        s.value,
                    );
                }
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[&str],
    values: &[String],
    le: Option<&str>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        for (label, v) in labels.iter().zip(values) {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(label);
            out.push_str("=\"");
            escape_into(out, v);
            out.push('"');
        }
        if let Some(le) = le {
            if !first {
                out.push(',');
            }
            out.push_str("le=\"");
            out.push_str(le);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_float(value));
    out.push('\n');
}

/// Label values escape `\`, `"` and newlines (exposition format rules).
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_histograms_and_escaping_render_in_exposition_format() {
        let m = Metrics::new();
        m.task_finished("shell", "completed", Duration::from_millis(30));
        m.task_finished("shell", "completed", Duration::from_secs(2));
        m.policy_decision("deny");
        m.tokens.add(&["a\"b\\c\nd", "m"], 5);
        let text = m.render();
        assert!(
            text.contains("agent_fabric_tasks_total{agent_id=\"shell\",status=\"completed\"} 2\n")
        );
        assert!(text.contains(
            "agent_fabric_task_duration_seconds_bucket{agent_id=\"shell\",le=\"0.05\"} 1\n"
        ));
        assert!(text.contains(
            "agent_fabric_task_duration_seconds_bucket{agent_id=\"shell\",le=\"+Inf\"} 2\n"
        ));
        assert!(text.contains("agent_fabric_task_duration_seconds_count{agent_id=\"shell\"} 2\n"));
        assert!(text.contains("agent_fabric_policy_decisions_total{decision=\"deny\"} 1\n"));
        assert!(text.contains(r#"agent_id="a\"b\\c\nd""#));
    }

    #[test]
    fn label_sets_beyond_the_bound_fold_into_other() {
        let m = Metrics::new();
        for i in 0..MAX_SERIES + 10 {
            m.tokens.inc(&[&format!("agent-{i}"), "m"]);
        }
        assert_eq!(m.tokens.get(&[OVERFLOW_LABEL, OVERFLOW_LABEL]), 10);
        assert_eq!(m.tokens.series.read().len(), MAX_SERIES + 1);
    }
}
