//! Distributed traces (FR-TEL): W3C `traceparent` propagation and a small
//! OTLP/HTTP (protobuf) span exporter.
//!
//! Why hand-written: the `opentelemetry` + `tonic` stack doubles the
//! server's dependency tree and compile time for the few messages needed
//! here (`ExportTraceServiceRequest` → resource → scope → span); their
//! protobuf encoding is below (~150 lines, tested against the reference
//! decoder in the integration tests). Spans are recorded explicitly at the
//! points of a task's life (API request, scheduling, lease, execution, LLM
//! call), not from `tracing` spans, so logs and traces stay independent and
//! the disabled path costs one branch.
//!
//! The exporter never blocks a request: finished spans are pushed onto a
//! bounded buffer ([`QUEUE_CAPACITY`]; when full they are dropped and counted
//! in `agent_fabric_trace_spans_dropped_total`), and a background task takes
//! the whole buffer every [`FLUSH_EVERY`] (or as soon as it holds
//! [`MAX_BATCH`]) and sends it in batches of at most [`MAX_BATCH`], retrying a
//! failed POST twice with backoff. A plain mutex-guarded `Vec` rather than a
//! channel: recording a span must not wake the exporter task (a wake-up per
//! span cost more than the span itself in the HTTP benchmark).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::metrics::{Counter, Registry};

/// Spans waiting for export at most; beyond, new ones are dropped.
pub const QUEUE_CAPACITY: usize = 32_768;
/// Spans per OTLP request at most.
pub const MAX_BATCH: usize = 512;
/// How often queued spans are sent.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// The W3C trace-context header, and the env var agents get it in.
pub const TRACEPARENT_HEADER: &str = "traceparent";
pub const TRACEPARENT_ENV: &str = "TRACEPARENT";

/// Where spans go (from the standard `OTEL_*` environment variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// Full URL spans are POSTed to (…/v1/traces).
    pub traces_url: String,
    /// `service.name` of the resource (`OTEL_SERVICE_NAME`).
    pub service_name: String,
}

/// The default `service.name` and the `service` field of log lines.
pub const SERVICE_NAME: &str = "reactor-fabric";
/// `service.version` of the resource and the scope's version: every crate
/// of the workspace shares one version (`fabric_core::VERSION`; pinned by a test).
pub const SERVICE_VERSION: &str = env!("CARGO_PKG_VERSION");

impl OtlpConfig {
    /// Reads `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces`), `OTEL_EXPORTER_OTLP_PROTOCOL`
    /// (only `http/protobuf`, the default, is supported) and `OTEL_SERVICE_NAME`.
    /// `Ok(None)` when no endpoint is set: tracing is off.
    pub fn from_env() -> Result<Option<Self>, String> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let traces_url = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _) => url,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        let protocol = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".to_owned());
        if protocol != "http/protobuf" {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: reactor-fabric exports traces over OTLP/HTTP with protobuf; set it to http/protobuf (or unset it) and point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (usually 4318)"
            ));
        }
        if !(traces_url.starts_with("http://") || traces_url.starts_with("https://")) {
            return Err(format!(
                "OTLP endpoint {traces_url:?} is not an http:// or https:// URL: set OTEL_EXPORTER_OTLP_ENDPOINT to e.g. http://localhost:4318"
            ));
        }
        Ok(Some(Self {
            traces_url,
            service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| SERVICE_NAME.to_owned()),
        }))
    }
}

/// Identifies one span of one trace (W3C trace context).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl SpanContext {
    /// A new trace's root.
    pub fn root() -> Self {
        Self {
            trace_id: nonzero_id(),
            span_id: nonzero_id(),
            sampled: true,
        }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero_id(),
            ..*self
        }
    }

    /// `00-<trace id>-<span id>-<flags>`.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            u8::from(self.sampled)
        )
    }

    /// Parses a `traceparent` value; `None` for anything malformed (an
    /// invalid header is ignored, as the W3C spec asks).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        // Version 00 has exactly four fields; later versions may add more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let lower = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !lower(version) || !lower(trace) || !lower(span) || flags.len() != 2 || !lower(flags) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(span, &mut span_id).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

fn nonzero_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = std::array::from_fn(|_| rand::random::<u8>());
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An attribute value (the OTLP `AnyValue` kinds used here).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Str(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Str(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Self::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// OTLP span kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub context: SpanContext,
    pub parent: Option<[u8; 8]>,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start_nanos: u64,
    pub end_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// Set when the operation failed (OTLP status `ERROR` with this message).
    pub error: Option<String>,
}

impl Span {
    /// A span named `name` under `parent` (a new trace when `None`), started at `start_nanos`.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: Option<&SpanContext>,
        start_nanos: u64,
    ) -> Self {
        let (context, parent) = match parent {
            Some(p) => (p.child(), Some(p.span_id)),
            None => (SpanContext::root(), None),
        };
        Self {
            context,
            parent,
            name: name.into(),
            kind,
            start_nanos,
            end_nanos: start_nanos,
            attributes: Vec::new(),
            error: None,
        }
    }

    pub fn attr(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.attributes.push((key, value.into()));
        self
    }
}

/// `agent_fabric_trace_spans_{dropped,exported}_total`: what became of the
/// spans handed to the exporter.
#[derive(Debug)]
pub struct ExportCounters {
    /// Spans the export queue had no room for, or the endpoint refused.
    pub dropped: Arc<Counter>,
    pub exported: Arc<Counter>,
}

impl ExportCounters {
    /// Declares both counters on `registry` (exported with tracing off too, at 0).
    pub fn register(registry: &Registry) -> Arc<Self> {
        Arc::new(Self {
            dropped: registry.counter(
                "agent_fabric_trace_spans_dropped_total",
                "Trace spans dropped because the OTLP export queue was full.",
            ),
            exported: registry.counter(
                "agent_fabric_trace_spans_exported_total",
                "Trace spans sent to the OTLP endpoint.",
            ),
        })
    }
}

/// Records spans; a no-op without an OTLP endpoint.
#[derive(Clone, Default)]
pub struct Tracer {
    queue: Option<Arc<SpanBuffer>>,
    counters: Option<Arc<ExportCounters>>,
}

/// Finished spans waiting for the exporter.
#[derive(Default)]
struct SpanBuffer {
    spans: Mutex<Vec<Span>>,
    /// Woken once when the buffer reaches a full batch.
    full: Notify,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("enabled", &self.enabled())
            .finish()
    }
}

impl Tracer {
    /// A tracer exporting to `config`; its sender runs until `shutdown`
    /// flips, then sends what is queued and stops.
    pub fn start(
        config: OtlpConfig,
        counters: Arc<ExportCounters>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let buffer = Arc::new(SpanBuffer::default());
        tracing::info!(endpoint = %without_userinfo(&config.traces_url), service_name = %config.service_name, "exporting traces over OTLP/HTTP");
        let handle = tokio::spawn(export_loop(
            config,
            Arc::clone(&buffer),
            Arc::clone(&counters),
            shutdown,
        ));
        (
            Self {
                queue: Some(buffer),
                counters: Some(counters),
            },
            handle,
        )
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues a finished span (dropped, and counted, when the queue is full).
    pub fn record(&self, span: Span) {
        let Some(queue) = &self.queue else { return };
        if !span.context.sampled {
            return;
        }
        let mut spans = queue.spans.lock();
        if spans.len() >= QUEUE_CAPACITY {
            drop(spans);
            if let Some(c) = &self.counters {
                c.dropped.add(1);
            }
            return;
        }
        spans.push(span);
        if spans.len() == MAX_BATCH {
            drop(spans);
            queue.full.notify_one();
        }
    }
}

/// `url` without a `user:password@` part: endpoints are logged, credentials never.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

async fn export_loop(
    config: OtlpConfig,
    buffer: Arc<SpanBuffer>,
    counters: Arc<ExportCounters>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the OTLP HTTP client; traces are not exported");
            return;
        }
    };
    let mut every = tokio::time::interval(FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = every.tick() => false,
            () = buffer.full.notified() => false,
            _ = shutdown.wait_for(|s| *s) => true,
        };
        let mut batch = std::mem::take(&mut *buffer.spans.lock());
        while !batch.is_empty() {
            let take = batch.len().min(MAX_BATCH);
            let chunk: Vec<Span> = batch.drain(..take).collect();
            send(&client, &config, &chunk, &counters).await;
        }
        if stopping {
            return;
        }
    }
}

async fn send(
    client: &reqwest::Client,
    config: &OtlpConfig,
    spans: &[Span],
    counters: &ExportCounters,
) {
    // Bytes: a retry resends the same buffer without copying it.
    let body = bytes::Bytes::from(encode_export_request(&config.service_name, spans));
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=3 {
        let sent = client
            .post(&config.traces_url)
            .header("content-type", "application/x-protobuf")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                counters.exported.add(spans.len() as u64);
                return;
            }
            // 4xx other than 429: the collector will not take this batch.
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                tracing::warn!(endpoint = %without_userinfo(&config.traces_url), status = r.status().as_u16(), spans = spans.len(), "the OTLP endpoint refused a batch of spans; dropped");
                break;
            }
            Ok(r) => {
                tracing::warn!(endpoint = %without_userinfo(&config.traces_url), status = r.status().as_u16(), attempt, "OTLP export failed");
            }
            Err(e) => {
                tracing::warn!(endpoint = %without_userinfo(&config.traces_url), error = %e.without_url(), attempt, "OTLP export failed; is the collector running?");
            }
        }
        if attempt < 3 {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    counters.dropped.add(spans.len() as u64);
}

// ---- protobuf encoding of opentelemetry/proto/collector/trace/v1 ----

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

/// A length-delimited sub-message written by `f`.
fn put_message(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    put_bytes(out, field, &inner);
}

/// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string = 1; bool = 2; int = 3 }`.
fn put_key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    put_message(out, field, |kv| {
        put_bytes(kv, 1, key.as_bytes());
        put_message(kv, 2, |any| match value {
            Value::Str(s) => put_bytes(any, 1, s.as_bytes()),
            Value::Bool(b) => {
                put_tag(any, 2, 0);
                put_varint(any, u64::from(*b));
            }
            Value::Int(i) => {
                put_tag(any, 3, 0);
                put_varint(any, *i as u64);
            }
        });
    });
}

/// `ExportTraceServiceRequest` with one resource and one scope holding `spans`.
///
/// The spans are encoded once into the final buffer's tail; only the two
/// enclosing headers are written around them (no nested copies of the whole
/// batch: those, and the large temporary buffers, showed in the profile).
pub fn encode_export_request(service_name: &str, spans: &[Span]) -> Vec<u8> {
    let mut span_bytes = Vec::with_capacity(200 * spans.len());
    let mut scratch = Vec::with_capacity(256);
    for span in spans {
        scratch.clear();
        encode_span(&mut scratch, span);
        put_bytes(&mut span_bytes, 2, &scratch);
    }
    // resource = 1 { attributes = 1 }
    let mut resource = Vec::with_capacity(64);
    put_message(&mut resource, 1, |res| {
        put_key_value(res, 1, "service.name", &Value::Str(service_name.to_owned()));
        put_key_value(
            res,
            1,
            "service.version",
            &Value::Str(SERVICE_VERSION.to_owned()),
        );
    });
    // scope_spans = 2 { scope = 1 { name = 1, version = 2 }, spans = 2 (above) }
    let mut scope = Vec::with_capacity(64);
    put_message(&mut scope, 1, |sc| {
        put_bytes(sc, 1, b"reactor-fabric");
        put_bytes(sc, 2, SERVICE_VERSION.as_bytes());
    });
    let scope_spans_len = scope.len() + span_bytes.len();
    let mut scope_spans_header = Vec::with_capacity(16);
    put_tag(&mut scope_spans_header, 2, 2);
    put_varint(&mut scope_spans_header, scope_spans_len as u64);
    let resource_spans_len = resource.len() + scope_spans_header.len() + scope_spans_len;
    let mut out = Vec::with_capacity(resource_spans_len + 16);
    // resource_spans = 1
    put_tag(&mut out, 1, 2);
    put_varint(&mut out, resource_spans_len as u64);
    out.extend_from_slice(&resource);
    out.extend_from_slice(&scope_spans_header);
    out.extend_from_slice(&scope);
    out.extend_from_slice(&span_bytes);
    out
}

fn encode_span(out: &mut Vec<u8>, span: &Span) {
    put_bytes(out, 1, &span.context.trace_id);
    put_bytes(out, 2, &span.context.span_id);
    if let Some(parent) = &span.parent {
        put_bytes(out, 4, parent);
    }
    put_bytes(out, 5, span.name.as_bytes());
    put_tag(out, 6, 0);
    put_varint(out, span.kind as u64);
    put_fixed64(out, 7, span.start_nanos);
    put_fixed64(out, 8, span.end_nanos.max(span.start_nanos));
    for (key, value) in &span.attributes {
        put_key_value(out, 9, key, value);
    }
    // status = 15 { message = 2, code = 3 (1 ok, 2 error) }
    put_message(out, 15, |st| match &span.error {
        Some(message) => {
            put_bytes(st, 2, message.as_bytes());
            put_tag(st, 3, 0);
            put_varint(st, 2);
        }
        None => {
            put_tag(st, 3, 0);
            put_varint(st, 1);
        }
    });
}

tokio::task_local! {
    /// The span of the HTTP request being handled, when tracing is on.
    static CURRENT: SpanContext;
}

/// The current request's span context, if any.
pub fn current() -> Option<SpanContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// Runs `f` with `ctx` as the current span context.
pub async fn scope<F: std::future::Future>(ctx: SpanContext, f: F) -> F::Output {
    CURRENT.scope(ctx, f).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_malformed_values() {
        let ctx = SpanContext::root();
        assert_eq!(SpanContext::parse(&ctx.traceparent()), Some(ctx));
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = SpanContext::parse(valid).unwrap();
        assert_eq!(parsed.traceparent(), valid);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(SpanContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_service_version_is_the_fabrics() {
        assert_eq!(SERVICE_VERSION, fabric_core::VERSION);
    }

    #[test]
    fn logged_endpoints_lose_their_credentials() {
        assert_eq!(
            without_userinfo("https://user:s3cret@collector:4318/v1/traces"),
            "https://collector:4318/v1/traces"
        );
        assert_eq!(
            without_userinfo("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn otlp_env_resolution_follows_the_spec() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(OtlpConfig::from_lookup(env(&[])).unwrap(), None);
        let c = OtlpConfig::from_lookup(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]))
            .unwrap()
            .unwrap();
        assert_eq!(c.traces_url, "http://c:4318/v1/traces");
        assert_eq!(c.service_name, SERVICE_NAME);
        let c = OtlpConfig::from_lookup(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x"),
            ("OTEL_SERVICE_NAME", "fab"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.traces_url.as_str(), c.service_name.as_str()),
            ("http://t:1/x", "fab")
        );
        let err = OtlpConfig::from_lookup(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .unwrap_err();
        assert!(err.contains("http/protobuf"), "{err}");
    }
}
