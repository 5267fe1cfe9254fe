//! Telemetry (REQUIREMENTS §9): log output, the metrics registry, the tracer and the
//! alert hub bundled as [`Telemetry`], and the HTTP middleware that measures
//! and traces every request.
//!
//! Libraries only emit `tracing` events; [`init_logging`] is where they are
//! written: one JSON object per line (`ts`, `level`, `service`, `message`,
//! `target`, then the fields of the event and of its spans — `request_id`,
//! `task_id`, `agent_id`, `provider`, `model`, `tokens`, `latency_ms`,
//! `outcome` where they apply), or compact human-readable lines.

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

use crate::metrics::Metrics;
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
    let filter = EnvFilter::try_from_env(ENV_LOG).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
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

/// Metrics, tracer and alerts of one server.
#[derive(Debug)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub tracer: Tracer,
    pub alerts: Arc<AlertHub>,
}

impl Telemetry {
    /// Telemetry with nothing exported (tests of other parts, benchmarks).
    pub fn disabled(clock: Arc<dyn fabric_core::Clock>) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new());
        Arc::new(Self {
            alerts: AlertHub::new(AlertConfig::default(), Arc::clone(&metrics), clock),
            metrics,
            tracer: Tracer::default(),
        })
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
    t.metrics
        .http_requests
        .inc(&[method.as_str(), &route, status.as_str()]);
    t.metrics
        .http_duration
        .observe(&[method.as_str(), &route], started.elapsed());
    response
}

/// `GET /metrics`: the Prometheus text exposition. Unauthenticated like
/// `/healthz` (REQUIREMENTS §10): it holds counts, agent ids and model names, never
/// secrets; keep the API port off untrusted networks or filter `/metrics` at
/// the proxy.
pub async fn metrics_handler(State(state): State<crate::state::AppState>) -> Response {
    let mut response = state.telemetry.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Registers the scrape-time collectors of values owned elsewhere: the
/// scheduler's queue depths, agents (count, state, CPU, memory) and the
/// gateway's `GatewayMetrics` (exported as is, not duplicated).
pub fn register_collectors(state: &crate::state::AppState) {
    use crate::metrics::{Collected, Sample};
    let metrics = &state.telemetry.metrics;

    let budgets = Arc::clone(&state.budgets);
    metrics.set_budget_ratios(Arc::new(move || budgets.usage_ratios()));

    let tasks = Arc::clone(&state.tasks);
    metrics.register(Arc::new(move || {
        let stats = tasks.stats();
        vec![Collected {
            name: "agent_fabric_scheduler_tasks",
            help: "Tasks the scheduler holds, by state (queued = the queue depth).",
            kind: "gauge",
            samples: vec![
                Sample::new(stats.pending as f64).with("state", "pending"),
                Sample::new(stats.queued as f64).with("state", "queued"),
                Sample::new(stats.running as f64).with("state", "running"),
            ],
        }]
    }));

    let agents = state.agents.clone();
    metrics.register(Arc::new(move || {
        use fabric_core::agent::AgentState;
        let list = agents.list();
        let active = list
            .iter()
            .filter(|a| {
                matches!(
                    a.state,
                    AgentState::Starting | AgentState::Running | AgentState::Draining
                )
            })
            .count();
        let mut cpu = Vec::new();
        let mut memory = Vec::new();
        let mut running_tasks = Vec::new();
        for a in list.iter().take(crate::metrics::MAX_SERIES) {
            let id = a.config.id.as_str();
            cpu.push(Sample::new(a.usage.cpu_millis as f64 / 1000.0).with("agent_id", id));
            memory.push(Sample::new(a.usage.memory_bytes as f64).with("agent_id", id));
            running_tasks.push(Sample::new(f64::from(a.tasks_running)).with("agent_id", id));
        }
        vec![
            Collected {
                name: "agent_fabric_agents_active",
                help: "Agents starting, running or draining.",
                kind: "gauge",
                samples: vec![Sample::new(active as f64)],
            },
            Collected {
                name: "agent_fabric_agent_cpu_seconds_total",
                help: "CPU time used by an agent's current session (its cgroup or process tree); starts again at 0 with each session.",
                kind: "counter",
                samples: cpu,
            },
            Collected {
                name: "agent_fabric_agent_memory_bytes",
                help: "Memory used by an agent's current session.",
                kind: "gauge",
                samples: memory,
            },
            Collected {
                name: "agent_fabric_agent_tasks_running",
                help: "Tasks an agent is running now.",
                kind: "gauge",
                samples: running_tasks,
            },
            Collected {
                name: "agent_fabric_pool_idle",
                help: "Pre-started sandboxes and containers ready for the next spawn (pool.min_idle).",
                kind: "gauge",
                samples: vec![
                    Sample::new(agents.pooled() as f64).with("isolation", "process"),
                    Sample::new(agents.pooled_containers() as f64).with("isolation", "container"),
                ],
            },
        ]
    }));

    let gateway = state.llm.gateway.clone();
    metrics.register(Arc::new(move || {
        let m = gateway.metrics();
        let calls = m
            .calls
            .iter()
            .map(|c| {
                Sample::new(c.count as f64)
                    .with("provider", c.provider.clone())
                    .with("outcome", c.outcome)
            })
            .collect();
        let mut tokens = Vec::new();
        for t in &m.tokens {
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
        for (provider, h) in &m.upstream_latency {
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
                samples: vec![Sample::new(m.fallbacks as f64)],
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
                samples: Sample::histogram(&[], &m.overhead),
            },
        ]
    }));
}
