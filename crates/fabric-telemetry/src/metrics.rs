//! Prometheus metrics (FR-TEL, REQUIREMENTS §9): a small hand-written
//! registry of atomic counters and fixed-bucket histograms, rendered in the
//! text exposition format (0.0.4).
//!
//! A [`Registry`] is a value, not a global: the server makes one and hands it
//! to each part at construction, and each part declares its own families on it
//! ([`Registry::counter_vec`], [`Registry::histogram`], ...) or registers a
//! scrape-time [`Registry::collector`] for values it already keeps (queue
//! depths, agents' resource usage, the gateway's counters). Families render
//! in the order they were registered. Tests run several registries (servers)
//! in one process.
//!
//! Why hand-written rather than `prometheus-client`: see docs/ARCHITECTURE.md
//! (Telemetry). In short: no new dependency, recording is one read-locked map
//! lookup plus an atomic add, and the label-cardinality bound below is ours.
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
use serde::Serialize;

/// Most label sets one family keeps; further ones are counted under `other`.
pub const MAX_SERIES: usize = 2000;
/// The label value that series beyond [`MAX_SERIES`] are folded into.
pub const OVERFLOW_LABEL: &str = "other";

/// The series of a family: key (see [`series_key`]) → (label values, value).
type SeriesMap<T> = HashMap<String, (Box<[String]>, Arc<T>)>;

/// Where metric families are declared and from where `/metrics` is rendered.
#[derive(Default)]
pub struct Registry {
    families: RwLock<Vec<Family>>,
}

/// One registered family.
#[derive(Clone)]
enum Family {
    CounterVec(Arc<CounterVec>),
    Counter(Arc<Counter>),
    HistogramVec(Arc<HistogramVec>),
    Histogram(Arc<Histogram>),
    Collector(Collector),
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("families", &self.families.read().len())
            .finish()
    }
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn add(&self, family: Family) {
        self.families.write().push(family);
    }

    /// Declares a counter family with these label names.
    pub fn counter_vec(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Arc<CounterVec> {
        let family = Arc::new(CounterVec::new(name, help, labels));
        self.add(Family::CounterVec(Arc::clone(&family)));
        family
    }

    /// Declares a counter without labels (rendered from the start, at 0).
    pub fn counter(&self, name: &'static str, help: &'static str) -> Arc<Counter> {
        let counter = Arc::new(Counter {
            name,
            help,
            value: AtomicU64::new(0),
        });
        self.add(Family::Counter(Arc::clone(&counter)));
        counter
    }

    /// Declares a histogram family with these label names and bucket bounds (seconds).
    pub fn histogram_vec(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Arc<HistogramVec> {
        let family = Arc::new(HistogramVec::new(name, help, labels, bounds));
        self.add(Family::HistogramVec(Arc::clone(&family)));
        family
    }

    /// Declares a histogram without labels (rendered from the start, empty).
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        bounds: &'static [f64],
    ) -> Arc<Histogram> {
        let histogram = Arc::new(Histogram::named(name, help, bounds));
        self.add(Family::Histogram(Arc::clone(&histogram)));
        histogram
    }

    /// Adds a scrape-time collector of values kept elsewhere. Capture a
    /// `Weak` of what it reads: the registry outlives nothing it reads, and a
    /// strong reference back to an owner of the registry would be a cycle.
    pub fn collector(&self, collector: impl Fn() -> Vec<Collected> + Send + Sync + 'static) {
        self.add(Family::Collector(Arc::new(collector)));
    }

    /// The whole exposition, text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Collectors run outside the lock: they may take locks of their own.
        let families = self.families.read().clone();
        for family in families {
            match family {
                Family::CounterVec(c) => c.render(&mut out),
                Family::Counter(c) => c.render(&mut out),
                Family::HistogramVec(h) => h.render(&mut out),
                Family::Histogram(h) => {
                    header(&mut out, h.name, h.help, "histogram");
                    h.render_series(&mut out, h.name, &[], &[]);
                }
                Family::Collector(collector) => {
                    for family in collector() {
                        family.render(&mut out);
                    }
                }
            }
        }
        out
    }
}

/// A counter without labels.
#[derive(Debug)]
pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    pub fn add(&self, by: u64) {
        self.value.fetch_add(by, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        sample(out, self.name, "", &[], &[], None, self.get() as f64);
    }
}

/// A counter family with a fixed list of label names.
#[derive(Debug)]
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

/// A fixed-bucket histogram of durations with lock-free recording: one
/// series of a [`HistogramVec`], a family of its own
/// ([`Registry::histogram`]), or a plain value read through
/// [`Histogram::snapshot`] (the gateway's, exported by a collector).
pub struct Histogram {
    /// Family name and help when registered on its own (empty otherwise).
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("name", &self.name)
            .field("count", &self.count())
            .finish_non_exhaustive()
    }
}

impl Histogram {
    /// A histogram with these upper bucket bounds (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self::named("", "", bounds)
    }

    fn named(name: &'static str, help: &'static str, bounds: &'static [f64]) -> Self {
        Self {
            name,
            help,
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

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += count.load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let count = cumulative + self.counts.last().map_or(0, |c| c.load(Ordering::Relaxed));
        HistogramSnapshot {
            buckets,
            count,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    fn render_series(&self, out: &mut String, name: &str, labels: &[&str], values: &[String]) {
        let snapshot = self.snapshot();
        for (bound, cumulative) in &snapshot.buckets {
            sample(
                out,
                name,
                "_bucket",
                labels,
                values,
                Some(&format_float(*bound)),
                *cumulative as f64,
            );
        }
        let total = snapshot.count as f64;
        sample(out, name, "_bucket", labels, values, Some("+Inf"), total);
        sample(
            out,
            name,
            "_sum",
            labels,
            values,
            None,
            snapshot.sum_seconds,
        );
        sample(out, name, "_count", labels, values, None, total);
    }
}

/// A histogram as Prometheus exports it: cumulative `(le, count)` buckets,
/// total count (the `+Inf` bucket) and sum.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// The smallest bucket bound holding at least `q` of the observations
    /// (an upper estimate of the quantile), or `None` if empty/beyond the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let want = (self.count as f64 * q).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, c)| *c >= want && self.count > 0)
            .map(|(b, _)| *b)
    }
}

/// A histogram family with labels.
#[derive(Debug)]
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

    /// The `_bucket`/`_sum`/`_count` samples of a histogram snapshot, each with `labels`.
    pub fn histogram(labels: &[(&'static str, String)], h: &HistogramSnapshot) -> Vec<Self> {
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
        let mut out: Vec<Self> = h
            .buckets
            .iter()
            .map(|(le, c)| with("_bucket", Some(format_float(*le)), *c as f64))
            .collect();
        out.push(with("_bucket", Some("+Inf".to_owned()), h.count as f64));
        out.push(with("_sum", None, h.sum_seconds));
        out.push(with("_count", None, h.count as f64));
        out
    }

    pub fn with(mut self, label: &'static str, value: impl Into<String>) -> Self {
        self.labels.push((label, value.into()));
        self
    }
}

/// A metric family whose values are read when `/metrics` is scraped.
#[derive(Debug, Clone)]
pub struct Collected {
    pub name: &'static str,
    pub help: &'static str,
    /// `gauge`, `counter` or `histogram`.
    pub kind: &'static str,
    pub samples: Vec<Sample>,
}

impl Collected {
    fn render(self, out: &mut String) {
        header(out, self.name, self.help, self.kind);
        for s in self.samples {
            let names: Vec<&str> = s.labels.iter().map(|(n, _)| *n).collect();
            let values: Vec<String> = s.labels.into_iter().map(|(_, v)| v).collect();
            sample(out, self.name, s.suffix, &names, &values, None, s.value);
        }
    }
}

/// Reads values owned elsewhere at scrape time.
type Collector = Arc<dyn Fn() -> Vec<Collected> + Send + Sync>;

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

    const BUCKETS: &[f64] = &[0.01, 0.05, 1.0, 5.0];

    #[test]
    fn counters_histograms_and_escaping_render_in_exposition_format() {
        let r = Registry::new();
        let tasks = r.counter_vec("t_total", "Tasks.", &["agent_id", "status"]);
        let took = r.histogram_vec("t_seconds", "Took.", &["agent_id"], BUCKETS);
        let plain = r.histogram("p_seconds", "Plain.", BUCKETS);
        let dropped = r.counter("d_total", "Dropped.");
        r.collector(|| {
            vec![Collected {
                name: "g",
                help: "Gauge.",
                kind: "gauge",
                samples: vec![Sample::new(1.5).with("state", "queued")],
            }]
        });
        for d in [Duration::from_millis(30), Duration::from_secs(2)] {
            tasks.inc(&["shell", "completed"]);
            took.observe(&["shell"], d);
        }
        tasks.add(&["a\"b\\c\nd", "m"], 5);
        dropped.add(3);
        let text = r.render();
        assert!(text.contains("t_total{agent_id=\"shell\",status=\"completed\"} 2\n"));
        assert!(text.contains("t_seconds_bucket{agent_id=\"shell\",le=\"0.05\"} 1\n"));
        assert!(text.contains("t_seconds_bucket{agent_id=\"shell\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("t_seconds_count{agent_id=\"shell\"} 2\n"));
        assert!(text.contains(r#"agent_id="a\"b\\c\nd""#));
        // Unlabelled families render before anything is recorded.
        assert!(text.contains("# TYPE p_seconds histogram\np_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(text.contains("p_seconds_count 0\n"));
        assert!(text.contains("# HELP d_total Dropped.\n# TYPE d_total counter\nd_total 3\n"));
        assert!(text.contains("# HELP g Gauge.\n# TYPE g gauge\ng{state=\"queued\"} 1.5\n"));
        plain.observe(Duration::from_millis(20));
        assert_eq!(plain.count(), 1);
        // Registration order is rendering order.
        let order: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            order,
            [
                "t_total counter",
                "t_seconds histogram",
                "p_seconds histogram",
                "d_total counter",
                "g gauge"
            ]
        );
    }

    #[test]
    fn label_sets_beyond_the_bound_fold_into_other() {
        let r = Registry::new();
        let tokens = r.counter_vec("tokens_total", "Tokens.", &["agent_id", "model"]);
        for i in 0..MAX_SERIES + 10 {
            tokens.inc(&[&format!("agent-{i}"), "m"]);
        }
        assert_eq!(tokens.get(&[OVERFLOW_LABEL, OVERFLOW_LABEL]), 10);
        assert_eq!(tokens.series.read().len(), MAX_SERIES + 1);
    }

    #[test]
    fn histograms_are_cumulative_with_an_inf_bucket() {
        let h = Histogram::new(BUCKETS);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(700));
        h.observe(Duration::from_secs(50));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets, [(0.01, 1), (0.05, 1), (1.0, 2), (5.0, 2)]);
        assert_eq!(s.quantile_bound(0.5), Some(1.0));
        // The snapshot and the rendered series agree (collectors export snapshots).
        let mut direct = String::new();
        h.render_series(&mut direct, "h", &["p"], &["x".to_owned()]);
        let mut collected = String::new();
        Collected {
            name: "h",
            help: "",
            kind: "histogram",
            samples: Sample::histogram(&[("p", "x".to_owned())], &s),
        }
        .render(&mut collected);
        assert_eq!(
            collected.split_once("histogram\n").map(|c| c.1),
            Some(direct.as_str())
        );
    }
}
