//! The inference gateway inside the server: building it from
//! [`GatewayConfig`] with the store's usage ledger as its sink, its policy
//! guard and budget admission; and [`EndpointIdentity`], who an agent's
//! inference endpoint (`OLLAMA_BASE_URL`) calls as. The HTTP side (replies
//! as responses, the endpoint's router) is `crate::api::inference`.

use std::sync::Arc;

use fabric_core::{AgentId, TenantId};
use fabric_gateway::{Gateway, GatewayConfig, StoreSink};

use crate::store::Store;

/// Why the inference gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// A provider, route or price in the gateway configuration is unusable
    /// (named in the message, not chained: the CLI prints chains).
    #[error("cannot start the inference gateway: {0}")]
    Config(fabric_gateway::config::ConfigError),
}

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
        limits: Arc<crate::services::limits::RateLimits>,
        telemetry: Arc<crate::telemetry::Telemetry>,
    ) -> Result<Self, LlmError> {
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
            .map_err(LlmError::Config)?
            .with_guard(Arc::new(crate::services::policy::LlmGuard { policy }))
            .with_admission(Arc::new(crate::services::limits::RateLimitedAdmission {
                limits,
                inner: crate::services::budgets::BudgetAdmission(budgets),
            }));
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
    /// On a loopback port (isolation `none`), which any local process can
    /// reach: the first path segment every call must carry, known only to
    /// the agent (its `OLLAMA_BASE_URL` ends with it).
    pub path_secret: Option<String>,
    /// The agent's `tools[]`: what its `MCP_URL` offers.
    pub tools: Vec<String>,
    /// On a worker node: the session's agent token, which the node's
    /// forward to the orchestrator's gateway presents for the agent.
    pub forward_token: Option<ForwardToken>,
}

/// An agent token a worker node's inference forward presents (never printed).
#[derive(Clone)]
pub struct ForwardToken(pub String);

impl std::fmt::Debug for ForwardToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwardToken(<redacted>)")
    }
}
