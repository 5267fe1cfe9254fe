//! Telemetry (REQUIREMENTS §9): log output, the metrics registry, the tracer and the
//! alert hub bundled as [`Telemetry`], and the HTTP middleware that measures
//! and traces every request (with its own metrics, [`HttpMetrics`]).
//!
//! The registry, metric families, trace context and exporter are
//! `fabric-telemetry`'s; each service declares its metrics on the registry
//! when it is built.
//!
//! Libraries only emit `tracing` events; [`init_logging`] is where they are
//! written: one JSON object per line (`ts`, `level`, `service`, `message`,
//! `target`, then the fields of the event and of its spans — `request_id`,
//! `task_id`, `agent_id`, `provider`, `model`, `tokens`, `latency_ms`,
//! `outcome` where they apply), or compact human-readable lines.

pub mod task_spans;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use fabric_telemetry::metrics::{CounterVec, HistogramVec, Registry};

use crate::services::alerts::{AlertConfig, AlertHub};
use crate::trace::{
    OtlpConfig, SERVICE_NAME, Span, SpanContext, SpanKind, TRACEPARENT_HEADER, Tracer,
};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line (the default; what log pipelines want).
    #[default]
    Json,
    /// Human-readable lines for a terminal.
    Pretty,
}

/// Env var with a `tracing` filter, e.g. `info,fabric_server=debug`.
pub const ENV_LOG: &str = "FABRIC_LOG";

/// Sets up the global subscriber on stderr. Safe to call twice (the second is ignored).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let _ = tracing_subscriber::registry()
        .with(env_filter())
        .with(stderr_layer(format))
        .try_init();
}

/// [`init_logging`] with a filter that can be changed while running (a
/// worker node applies the `log_level` of its node config): the returned
/// function takes a filter (`info`, `debug,hyper=warn`) and says why one
/// does not parse.
pub fn init_logging_reloadable(format: LogFormat) -> crate::node::LogFilter {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(env_filter());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr_layer(format))
        .try_init();
    Arc::new(move |text: &str| {
        let filter = EnvFilter::try_new(text)
            .map_err(|e| format!("log_level {text:?} is not a log filter: {e}"))?;
        handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log filter: {e}"))
    })
}

/// `FABRIC_LOG`, else `info`.
fn env_filter() -> EnvFilter {
    EnvFilter::try_from_env(ENV_LOG).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The log lines on stderr, in `format`.
fn stderr_layer<S>(format: LogFormat) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => layer
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .boxed(),
        // Colours only for a terminal, and never when NO_COLOR is set (no-color.org).
        LogFormat::Pretty => layer
            .compact()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && no_color_unset())
            .boxed(),
    }
}

/// `NO_COLOR` absent or empty (no-color.org: any non-empty value turns colour off).
fn no_color_unset() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The JSON line format: the fixed keys (`ts`, `level`, `service`, `target`;
/// they win over fields of the same name) and the event's and its spans'
/// fields, flattened (an event's own field wins over a span's).
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = serde_json::Map::new();
        let meta = event.metadata();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && let Ok(serde_json::Value::Object(map)) =
                        serde_json::from_str::<serde_json::Value>(fields)
                {
                    line.extend(map);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        // The fixed keys win over any field of the same name.
        line.insert(
            "ts".into(),
            humantime::format_rfc3339_micros(SystemTime::now())
                .to_string()
                .into(),
        );
        line.insert(
            "level".into(),
            meta.level().as_str().to_ascii_lowercase().into(),
        );
        line.insert("service".into(), SERVICE_NAME.into());
        line.insert("target".into(), meta.target().into());
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// What telemetry does besides logs (`serve` flags and `OTEL_*` env vars).
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// Export traces here; `None` = tracing off.
    pub otlp: Option<OtlpConfig>,
    pub alerts: AlertConfig,
}

/// Metrics registry, tracer and alerts of one server.
#[derive(Debug)]
pub struct Telemetry {
    /// Where every part declares its metrics; rendered by `GET /metrics`.
    pub registry: Arc<Registry>,
    /// The HTTP layer's metrics (one set for the API and every agent's endpoint).
    pub http: HttpMetrics,
    pub tracer: Tracer,
    pub alerts: Arc<AlertHub>,
}

impl Telemetry {
    /// Telemetry with nothing exported (tests of other parts, benchmarks).
    pub fn disabled(clock: Arc<dyn fabric_core::Clock>) -> Arc<Self> {
        let registry = Registry::new();
        Arc::new(Self {
            http: HttpMetrics::register(&registry),
            alerts: AlertHub::new(AlertConfig::default(), &registry, clock),
            registry,
            tracer: Tracer::default(),
        })
    }
}

/// Buckets (seconds) of HTTP request latency.
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// What [`http_layer`] records.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    /// `agent_fabric_http_requests_total{method,route,status}` (also read by
    /// the HTTP error-rate alert).
    pub requests: Arc<CounterVec>,
    /// `agent_fabric_http_request_duration_seconds{method,route}`.
    pub duration: Arc<HistogramVec>,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> Self {
        Self {
            requests: registry.counter_vec(
                "agent_fabric_http_requests_total",
                "HTTP requests served, by method, route template and status code.",
                &["method", "route", "status"],
            ),
            duration: registry.histogram_vec(
                "agent_fabric_http_request_duration_seconds",
                "HTTP request latency (to the response head), by method and route template.",
                &["method", "route"],
                LATENCY_BUCKETS,
            ),
        }
    }
}

/// State of [`http_layer`].
#[derive(Clone)]
pub struct HttpLayer {
    pub telemetry: Arc<Telemetry>,
    /// The route label of every request (the agents' inference endpoints,
    /// which have no routes of their own); `None` = the matched route template.
    pub route: Option<&'static str>,
}

/// The route label of a request: its route template, or `unmatched`.
const UNMATCHED_ROUTE: &str = "unmatched";

/// Middleware: counts and times every request by route template and status,
/// and (with tracing on) records its server span, parented on an incoming
/// `traceparent`. An incoming `traceparent` is passed on (tasks created in
/// the request carry it) even with tracing off.
pub async fn http_layer(State(layer): State<HttpLayer>, request: Request, next: Next) -> Response {
    let t = &layer.telemetry;
    let started = Instant::now();
    let route = match layer.route {
        Some(fixed) => fixed.to_owned(),
        None => request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| UNMATCHED_ROUTE.to_owned(), |p| p.as_str().to_owned()),
    };
    let method = request.method().clone();
    let incoming = request
        .headers()
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(SpanContext::parse);
    // Probes and scrapes are counted but not traced: they would bury the traces that matter.
    let traced =
        t.tracer.enabled() && !matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics");
    let response = if traced {
        let start_nanos = crate::trace::now_nanos();
        let span = Span::new(
            format!("{method} {route}"),
            SpanKind::Server,
            incoming.as_ref(),
            start_nanos,
        );
        let response = crate::trace::scope(span.context, next.run(request)).await;
        let status = response.status();
        let mut span = span
            .attr("http.request.method", method.as_str())
            .attr("http.route", route.as_str())
            .attr("http.response.status_code", i64::from(status.as_u16()))
            .attr("request_id", crate::request_id::current());
        if status.is_server_error() {
            span.error = Some(format!("HTTP {}", status.as_u16()));
        }
        span.end_nanos = crate::trace::now_nanos();
        t.tracer.record(span);
        response
    } else if let Some(parent) = incoming {
        crate::trace::scope(parent, next.run(request)).await
    } else {
        next.run(request).await
    };
    let status = response.status();
    t.http
        .requests
        .inc(&[method.as_str(), &route, status.as_str()]);
    t.http
        .duration
        .observe(&[method.as_str(), &route], started.elapsed());
    response
}

/// `GET /metrics`: the Prometheus text exposition. Unauthenticated like
/// `/healthz` (REQUIREMENTS §10): it holds counts, agent ids and model names, never
/// secrets; keep the API port off untrusted networks or filter `/metrics` at
/// the proxy.
pub async fn metrics_handler(State(state): State<crate::state::AppState>) -> Response {
    let mut response = state.telemetry.registry.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
