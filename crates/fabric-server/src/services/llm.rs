//! The inference gateway inside the server: building it from
//! [`GatewayConfig`] with the store's usage ledger as its sink, turning its
//! framework-free [`Reply`]s into axum responses, and
//! [`ollama_endpoint`], the Ollama-compatible router an agent's inference
//! endpoint (`OLLAMA_BASE_URL`) serves for one agent identity.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fabric_core::{AgentId, TenantId};
use fabric_gateway::api::{self, Reply, ReplyBody};
use fabric_gateway::{CallOptions, Caller, Gateway, GatewayConfig, StoreSink};
use futures_util::StreamExt as _;

use crate::store::Store;

/// The gateway and the ledger it writes, shared by every handler.
#[derive(Clone, Debug)]
pub struct Llm {
    pub gateway: Gateway,
    pub(crate) store: Store,
    sink: StoreSink<Store>,
}

impl Llm {
    /// The gateway of `config`, metering into `store`'s usage ledger.
    pub(crate) fn new(
        config: GatewayConfig,
        store: Store,
        budgets: Arc<crate::services::budgets::BudgetService>,
        policy: Arc<crate::services::policy::PolicyService>,
        telemetry: Arc<crate::telemetry::Telemetry>,
    ) -> anyhow::Result<Self> {
        let providers: Vec<String> = config
            .providers
            .iter()
            .map(|p| {
                format!(
                    "{} ({}, {}, {})",
                    p.name,
                    p.kind.as_str(),
                    p.tier().as_str(),
                    p.base_url()
                )
            })
            .collect();
        let routing = config.policy.to_string();
        let sink = StoreSink::new(store.clone(), fabric_gateway::metering::DEFAULT_FLUSH_EVERY);
        let metered = TelemetrySink {
            ledger: sink.clone(),
            tokens: telemetry.registry.counter_vec(
                "agent_fabric_tokens_total",
                "LLM tokens (prompt and completion) through the gateway, by calling agent (none for users) and model.",
                &["agent_id", "model"],
            ),
            telemetry: Arc::clone(&telemetry),
        };
        let gateway = Gateway::new(config, Arc::new(metered))
            .map_err(|e| anyhow::anyhow!("cannot start the inference gateway: {e}"))?
            .with_guard(Arc::new(crate::services::policy::LlmGuard { policy }))
            .with_admission(Arc::new(crate::services::budgets::BudgetAdmission(budgets)));
        gateway.register_metrics(&telemetry.registry);
        if providers.is_empty() {
            tracing::warn!(
                "inference gateway: no provider configured; LLM calls answer 503 until OLLAMA_BASE_URL, OPENAI_API_KEY or --gateway-config is set"
            );
        } else {
            tracing::info!(providers = %providers.join(", "), policy = %routing, "inference gateway ready");
        }
        Ok(Self {
            gateway,
            store,
            sink,
        })
    }

    /// Stores the usage records still gathering (at shutdown, before the store closes).
    pub async fn flush(&self) {
        self.sink.flush().await;
    }
}

/// The ledger, plus `agent_fabric_tokens_total` and (with tracing on) an
/// `llm.call` span under the request's span for every gateway call.
struct TelemetrySink {
    ledger: StoreSink<Store>,
    /// `agent_fabric_tokens_total{agent_id,model}`.
    tokens: Arc<fabric_telemetry::metrics::CounterVec>,
    telemetry: Arc<crate::telemetry::Telemetry>,
}

impl fabric_gateway::UsageSink for TelemetrySink {
    fn record(&self, record: fabric_core::UsageRecord) {
        let tokens = record.tokens_in + record.tokens_out;
        if tokens > 0 {
            let agent = record.agent.as_ref().map_or("none", AgentId::as_str);
            self.tokens.add(&[agent, &record.model], tokens);
        }
        // A streamed answer is recorded when its stream ends, outside the
        // request's scope: it then has no parent and is not traced.
        if self.telemetry.tracer.enabled()
            && let Some(parent) = crate::trace::current()
        {
            let end = crate::trace::now_nanos();
            let start = end.saturating_sub(record.latency_ms.saturating_mul(1_000_000));
            let mut span = crate::trace::Span::new(
                "llm.call",
                crate::trace::SpanKind::Client,
                Some(&parent),
                start,
            )
            .attr("gen_ai.system", record.provider.as_str())
            .attr("gen_ai.request.model", record.requested_model.as_str())
            .attr("gen_ai.response.model", record.model.as_str())
            .attr("gen_ai.usage.input_tokens", record.tokens_in)
            .attr("gen_ai.usage.output_tokens", record.tokens_out)
            .attr("llm.fallback", record.fallback)
            .attr("llm.attempts", u64::from(record.attempts))
            .attr("outcome", record.outcome.as_str());
            if let Some(agent) = &record.agent {
                span = span.attr("agent_id", agent.as_str());
            }
            if let Some(code) = &record.error_code {
                span.error = Some(code.clone());
            }
            span.end_nanos = end;
            self.telemetry.tracer.record(span);
        }
        self.ledger.record(record);
    }
}

/// The gateway's reply as an axum response, with `X-Fabric-Provider` (always)
/// and `X-Fabric-Model`, `Retry-After` when known.
pub fn into_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match reply.body {
        ReplyBody::Full(bytes) => Body::from(bytes),
        ReplyBody::Stream(chunks) => Body::from_stream(chunks.map(Ok::<_, Infallible>)),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(reply.content_type),
    );
    let provider = reply.provider.as_deref().unwrap_or(api::NO_PROVIDER);
    if let Ok(v) = HeaderValue::from_str(provider) {
        headers.insert(HeaderName::from_static("x-fabric-provider"), v);
    }
    if let Some(v) = reply
        .model
        .as_deref()
        .and_then(|m| HeaderValue::from_str(m).ok())
    {
        headers.insert(HeaderName::from_static("x-fabric-model"), v);
    }
    if let Some(secs) = reply.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if reply.content_type != api::JSON {
        // Streams must reach the client as produced, not after a proxy's buffer.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
    }
    response
}

/// Reads a request body of at most `limit` bytes (draining a moderately
/// larger one first, see `crate::body`); `Err` is the 413 (or a 400 when the
/// body could not be read).
pub(crate) async fn read_body(
    request: Request,
    limit: usize,
    request_id: &str,
) -> Result<(axum::http::request::Parts, bytes::Bytes), Response> {
    let (parts, body) = request.into_parts();
    match crate::body::read_limited(&parts.headers, body, limit).await {
        Ok(body) => Ok((parts, body)),
        Err(crate::body::BodyError::TooLarge { .. }) => {
            Err(into_response(Reply::too_large(limit, request_id)))
        }
        Err(e @ crate::body::BodyError::Unreadable(_)) => {
            let err = fabric_gateway::GatewayError::InvalidRequest {
                message: e.to_string(),
                provider: None,
            };
            Err(into_response(Reply::error(&err, request_id)))
        }
    }
}

/// Who an agent's inference endpoint calls as.
#[derive(Clone, Debug)]
pub struct EndpointIdentity {
    pub tenant: TenantId,
    /// The user the agent runs for (its owner).
    pub user: String,
    pub agent: AgentId,
    /// The agent's workspace (a policy attribute of its `llm:<model>` calls,
    /// which the gateway's guard decides).
    pub workspace: Option<String>,
}

#[derive(Clone)]
struct Endpoint {
    gateway: Gateway,
    identity: Arc<EndpointIdentity>,
}

/// The agent-facing Ollama API for one agent: mount it on the listener of an
/// agent's inference endpoint (`localhost:11434` in its sandbox, or a
/// loopback port for isolation `none`). No credential is asked of the agent
/// (the listener is the agent's alone) and none is ever passed to it; every
/// call is metered against `identity`. Bodies over the gateway's limit
/// (10 MiB) get 413; the gateway's request timeout (120 s) bounds each call.
pub fn ollama_endpoint(
    gateway: Gateway,
    identity: EndpointIdentity,
    telemetry: Arc<crate::telemetry::Telemetry>,
) -> Router {
    let state = Endpoint {
        gateway,
        identity: Arc::new(identity),
    };
    let http = crate::telemetry::HttpLayer {
        telemetry,
        route: Some(AGENT_ENDPOINT_ROUTE),
    };
    Router::new()
        .fallback(endpoint_call)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            http,
            crate::telemetry::http_layer,
        ))
        .layer(axum::middleware::from_fn(crate::request_id::layer))
}

/// The `route` label of calls to agents' inference endpoints.
pub const AGENT_ENDPOINT_ROUTE: &str = "agent_inference_endpoint";

/// Serves [`ollama_endpoint`] on `listener` (TCP_NODELAY, so streams flow
/// token by token) until the task is aborted or the listener fails.
pub fn serve_ollama_endpoint(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    identity: EndpointIdentity,
    telemetry: Arc<crate::telemetry::Telemetry>,
) -> tokio::task::JoinHandle<()> {
    let agent = identity.agent.clone();
    let app = ollama_endpoint(gateway, identity, telemetry);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(agent_id = %agent, error = %e, "inference endpoint stopped");
        }
    })
}

async fn endpoint_call(State(endpoint): State<Endpoint>, request: Request) -> Response {
    let request_id = crate::request_id::current();
    let opts = CallOptions::new("ollama");
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let (_, body) = match read_body(request, endpoint.gateway.max_body_bytes(), &request_id).await {
        Ok(read) => read,
        Err(too_large) => {
            tracing::info!(agent_id = %endpoint.identity.agent, "inference request over the size limit refused");
            return too_large;
        }
    };
    // The gateway's guard decides `llm:<model>` (its policy, with this
    // agent's identity and workspace).
    let caller = Caller {
        tenant: endpoint.identity.tenant.clone(),
        user: endpoint.identity.user.clone(),
        agent: Some(endpoint.identity.agent.clone()),
        workspace: endpoint.identity.workspace.clone(),
        request_id,
    };
    into_response(
        api::ollama::handle(&endpoint.gateway, &caller, opts, &method, &path, &body).await,
    )
}

impl IntoResponse for ReplyResponse {
    fn into_response(self) -> Response {
        into_response(self.0)
    }
}

/// A gateway [`Reply`] returned from an axum handler.
pub struct ReplyResponse(pub Reply);
