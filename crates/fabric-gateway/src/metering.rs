//! Metering: every call becomes a [`UsageRecord`] (tokens from the provider,
//! else estimated and flagged; latency; provider; fallback; cost from the
//! price table) handed to a [`UsageSink`], and in-memory counters and
//! histograms ([`GatewayMetrics`]) the telemetry layer can export as
//! Prometheus metrics (the histogram buckets are cumulative-ready `le` bounds).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fabric_core::{UsageRecord, UsageStore};
use parking_lot::Mutex;
use serde::Serialize;

use crate::config::Price;
use crate::types::{ChatRequest, ChatResponse, Message, ResponseFormat};

use fabric_telemetry::metrics::{Collected, Sample};
/// The fabric's one histogram type (also behind the server's own families).
pub use fabric_telemetry::metrics::{Histogram, HistogramSnapshot};

/// Where usage records go. Fire and forget: `record` must not block.
pub trait UsageSink: Send + Sync + 'static {
    fn record(&self, record: UsageRecord);
}

/// Drops every record (no ledger).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopSink;

impl UsageSink for NoopSink {
    fn record(&self, _: UsageRecord) {}
}

/// Keeps records in memory (tests).
#[derive(Debug, Default)]
pub struct MemorySink {
    records: Mutex<Vec<UsageRecord>>,
}

impl MemorySink {
    pub fn records(&self) -> Vec<UsageRecord> {
        self.records.lock().clone()
    }
}

impl UsageSink for MemorySink {
    fn record(&self, record: UsageRecord) {
        self.records.lock().push(record);
    }
}

/// How long [`StoreSink`] gathers records before submitting them.
pub const DEFAULT_FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Most records [`StoreSink`] holds before submitting at once.
const MAX_PENDING: usize = 512;

/// Writes records to a store's usage ledger in batches.
///
/// A store commits every write it is given at once (group commit: all that
/// is queued, one fsync). At a thousand calls a second that is hundreds of
/// fsyncs a second for a few bytes each, paid in disk time and CPU beside the
/// calls. So records gather here for up to `flush_every` (or 512 of them) and
/// are then submitted together, in order: one commit per interval. The price:
/// a crash loses the records of the last interval (they are also in the log
/// line of each call). [`StoreSink::flush`] submits and waits, for shutdown.
#[derive(Debug)]
pub struct StoreSink<S> {
    inner: Arc<SinkInner<S>>,
}

impl<S> Clone for StoreSink<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

#[derive(Debug)]
struct SinkInner<S> {
    store: S,
    pending: Mutex<Vec<UsageRecord>>,
}

impl<S: UsageStore> SinkInner<S> {
    /// Submits what is pending (in order); the writes' futures, to await.
    fn submit(&self) -> Vec<Write> {
        let records = std::mem::take(&mut *self.pending.lock());
        records
            .into_iter()
            .map(|r| Box::pin(self.store.record_usage(r)) as Write)
            .collect()
    }
}

/// A submitted ledger write (the store's future, boxed to be named).
type Write = futures_util::future::BoxFuture<'static, Result<(), fabric_core::StoreError>>;

async fn settle(writes: Vec<Write>) {
    let n = writes.len();
    for write in writes {
        if let Err(e) = write.await {
            tracing::error!(records = n, error = %e, "cannot store usage records; these calls are missing from the ledger");
            break;
        }
    }
}

impl<S: UsageStore> StoreSink<S> {
    /// A sink submitting every `flush_every`. Spawns its flusher: call it
    /// inside a Tokio runtime. The flusher ends when the last clone is dropped.
    pub fn new(store: S, flush_every: Duration) -> Self {
        let inner = Arc::new(SinkInner {
            store,
            pending: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(flush_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else {
                    break;
                };
                let writes = inner.submit();
                drop(inner);
                settle(writes).await;
            }
        });
        Self { inner }
    }

    /// Submits every pending record and waits for the writes.
    pub async fn flush(&self) {
        settle(self.inner.submit()).await;
    }
}

impl<S: UsageStore> UsageSink for StoreSink<S> {
    fn record(&self, record: UsageRecord) {
        let full = {
            let mut pending = self.inner.pending.lock();
            pending.push(record);
            pending.len() >= MAX_PENDING
        };
        if full {
            let writes = self.inner.submit();
            tokio::spawn(settle(writes));
        }
    }
}

/// Rough tokens of a text when the provider reports none: 4 characters a token.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Estimated input tokens of a conversation (a few per message for the framing).
pub fn estimate_prompt_tokens(messages: &[Message]) -> u64 {
    messages
        .iter()
        .map(|m| {
            estimate_tokens(&m.content)
                + 3
                + m.tool_calls
                    .iter()
                    .map(|c| estimate_tokens(&c.name) + estimate_tokens(&c.arguments) + 3)
                    .sum::<u64>()
                + IMAGE_TOKENS * m.images.len() as u64
        })
        .sum()
}

/// What an image is counted as before a provider reports usage (OpenAI's
/// price of a low-detail image).
const IMAGE_TOKENS: u64 = 85;

/// A chat request's input: its messages, and the tool definitions and
/// answer schema a provider puts in front of them.
pub fn estimate_request_tokens(req: &ChatRequest) -> u64 {
    let json = |v: &serde_json::Value| estimate_tokens(&v.to_string());
    let tools: u64 = req
        .options
        .tools
        .iter()
        .map(|t| {
            estimate_tokens(&t.name)
                + t.description.as_deref().map_or(0, estimate_tokens)
                + json(&t.parameters)
                + 8
        })
        .sum();
    let schema = match &req.options.response_format {
        Some(ResponseFormat::JsonSchema { schema, .. }) => json(schema),
        _ => 0,
    };
    estimate_prompt_tokens(&req.messages) + tools + schema
}

/// An answer's output: its text and its tool calls.
pub fn estimate_answer_tokens(answer: &ChatResponse) -> u64 {
    estimate_tokens(&answer.content)
        + answer
            .tool_calls
            .iter()
            .map(|c| estimate_tokens(&c.name) + estimate_tokens(&c.arguments))
            .sum::<u64>()
}

/// Prices by `provider/model`, `provider/*`, then `model`.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    prices: BTreeMap<String, Price>,
}

impl PriceTable {
    pub fn new(prices: BTreeMap<String, Price>) -> Self {
        Self { prices }
    }

    /// Cost of a call in billionths of a dollar (prices are USD per million tokens).
    pub fn cost_nano_usd(&self, provider: &str, model: &str, input: u64, output: u64) -> u64 {
        let price = self
            .prices
            .get(&format!("{provider}/{model}"))
            .or_else(|| self.prices.get(&format!("{provider}/*")))
            .or_else(|| self.prices.get(model));
        let Some(price) = price else {
            return 0;
        };
        // USD per 1e6 tokens = 1000 nano-USD per token.
        let nanos = input as f64 * price.input * 1000.0 + output as f64 * price.output * 1000.0;
        nanos.round() as u64
    }
}

/// Upper bounds (seconds) of the overhead histogram: 50 µs to 1 s.
pub const OVERHEAD_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];
/// Upper bounds (seconds) of the upstream latency histograms: 5 ms to 120 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// In-memory counters of the gateway (reset on restart; the ledger is durable).
#[derive(Debug)]
pub struct GatewayMetrics {
    /// (provider, outcome) → calls.
    calls: Mutex<HashMap<(String, &'static str), u64>>,
    /// (provider, model) → (tokens in, tokens out).
    tokens: Mutex<HashMap<(String, String), (u64, u64)>>,
    fallbacks: AtomicU64,
    /// Gateway time minus upstream time, per call.
    overhead: Histogram,
    /// Per provider: duration of each attempt.
    upstream: Mutex<HashMap<String, Arc<Histogram>>>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self {
            calls: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            fallbacks: AtomicU64::new(0),
            overhead: Histogram::new(&OVERHEAD_BUCKETS),
            upstream: Mutex::new(HashMap::new()),
        }
    }
}

impl GatewayMetrics {
    pub(crate) fn call(&self, record: &UsageRecord) {
        *self
            .calls
            .lock()
            .entry((record.provider.clone(), record.outcome.as_str()))
            .or_default() += 1;
        if record.fallback {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        if record.tokens_in + record.tokens_out > 0 {
            let mut tokens = self.tokens.lock();
            let entry = tokens
                .entry((record.provider.clone(), record.model.clone()))
                .or_default();
            entry.0 += record.tokens_in;
            entry.1 += record.tokens_out;
        }
    }

    pub(crate) fn overhead(&self, d: Duration) {
        self.overhead.observe(d);
    }

    pub(crate) fn attempt(&self, provider: &str, d: Duration) {
        let histogram = {
            let mut upstream = self.upstream.lock();
            match upstream.get(provider) {
                Some(h) => Arc::clone(h),
                None => {
                    let h = Arc::new(Histogram::new(&LATENCY_BUCKETS));
                    upstream.insert(provider.to_owned(), Arc::clone(&h));
                    h
                }
            }
        };
        histogram.observe(d);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut calls: Vec<CallCount> = self
            .calls
            .lock()
            .iter()
            .map(|((provider, outcome), count)| CallCount {
                provider: provider.clone(),
                outcome,
                count: *count,
            })
            .collect();
        calls.sort_by(|a, b| (&a.provider, a.outcome).cmp(&(&b.provider, b.outcome)));
        let mut tokens: Vec<TokenCount> = self
            .tokens
            .lock()
            .iter()
            .map(|((provider, model), (input, output))| TokenCount {
                provider: provider.clone(),
                model: model.clone(),
                input: *input,
                output: *output,
            })
            .collect();
        tokens.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
        let mut upstream: Vec<(String, HistogramSnapshot)> = self
            .upstream
            .lock()
            .iter()
            .map(|(p, h)| (p.clone(), h.snapshot()))
            .collect();
        upstream.sort_by(|a, b| a.0.cmp(&b.0));
        MetricsSnapshot {
            calls,
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            tokens,
            overhead: self.overhead.snapshot(),
            upstream_latency: upstream,
        }
    }
}

/// The gateway's counters at one moment (`llm_*` metrics to be).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// `llm_calls_total{provider, outcome}`.
    pub calls: Vec<CallCount>,
    /// `llm_fallbacks_total`.
    pub fallbacks: u64,
    /// `llm_tokens_total{provider, model, direction}`.
    pub tokens: Vec<TokenCount>,
    /// `llm_gateway_overhead_seconds` (histogram).
    pub overhead: HistogramSnapshot,
    /// `llm_upstream_duration_seconds{provider}` (histogram).
    pub upstream_latency: Vec<(String, HistogramSnapshot)>,
}

impl MetricsSnapshot {
    /// The `agent_fabric_llm_*` families of `/metrics` (exported as is, not
    /// copied into counters of the server's).
    pub fn families(&self) -> Vec<Collected> {
        let calls = self
            .calls
            .iter()
            .map(|c| {
                Sample::new(c.count as f64)
                    .with("provider", c.provider.clone())
                    .with("outcome", c.outcome)
            })
            .collect();
        let mut tokens = Vec::new();
        for t in &self.tokens {
            for (direction, n) in [("input", t.input), ("output", t.output)] {
                tokens.push(
                    Sample::new(n as f64)
                        .with("provider", t.provider.clone())
                        .with("model", t.model.clone())
                        .with("direction", direction),
                );
            }
        }
        let mut upstream = Vec::new();
        for (provider, h) in &self.upstream_latency {
            upstream.extend(Sample::histogram(&[("provider", provider.clone())], h));
        }
        vec![
            Collected {
                name: "agent_fabric_llm_calls_total",
                help: "Gateway calls, by the provider that answered (last tried) and outcome.",
                kind: "counter",
                samples: calls,
            },
            Collected {
                name: "agent_fabric_llm_fallbacks_total",
                help: "Gateway calls answered by a provider other than the policy's first choice.",
                kind: "counter",
                samples: vec![Sample::new(self.fallbacks as f64)],
            },
            Collected {
                name: "agent_fabric_llm_tokens_total",
                help: "Tokens through the gateway, by provider, model and direction.",
                kind: "counter",
                samples: tokens,
            },
            Collected {
                name: "agent_fabric_llm_upstream_duration_seconds",
                help: "Duration of each upstream attempt, by provider.",
                kind: "histogram",
                samples: upstream,
            },
            Collected {
                name: "agent_fabric_llm_gateway_overhead_seconds",
                help: "Time the gateway adds to a call (total minus upstream).",
                kind: "histogram",
                samples: Sample::histogram(&[], &self.overhead),
            },
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallCount {
    pub provider: String,
    pub outcome: &'static str,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenCount {
    pub provider: String,
    pub model: String,
    pub input: u64,
    pub output: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_match_most_specific_first_in_nano_dollars() {
        let mut p = BTreeMap::new();
        p.insert(
            "openai/gpt-4o-mini".into(),
            Price {
                input: 0.15,
                output: 0.60,
            },
        );
        p.insert(
            "openai/*".into(),
            Price {
                input: 1.0,
                output: 1.0,
            },
        );
        p.insert(
            "llama3".into(),
            Price {
                input: 0.0,
                output: 0.0,
            },
        );
        let t = PriceTable::new(p);
        // 1000 in × 0.15 $/M = 150 000 n$, 100 out × 0.60 $/M = 60 000 n$.
        assert_eq!(t.cost_nano_usd("openai", "gpt-4o-mini", 1000, 100), 210_000);
        assert_eq!(t.cost_nano_usd("openai", "gpt-4o", 1, 0), 1000);
        assert_eq!(t.cost_nano_usd("ollama", "llama3", 10, 10), 0);
        assert_eq!(t.cost_nano_usd("x", "y", 10, 10), 0);
        assert_eq!(estimate_tokens("abcde"), 2);
    }

    #[test]
    fn histograms_are_cumulative_with_an_inf_bucket() {
        let h = Histogram::new(&OVERHEAD_BUCKETS);
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(5));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.000_05, 1));
        assert_eq!(s.buckets[4], (0.001, 2));
        assert_eq!(s.buckets.last().unwrap().1, 2);
        assert_eq!(s.quantile_bound(0.5), Some(0.001));
    }
}
