//! The router: [`Gateway`] turns a call into a route (policy or override,
//! model mapping, a capped chain without repeats), tries each provider with
//! its timeout, retries retryable failures with backoff, skips providers
//! whose circuit is open, falls back on the rest, and meters the outcome.
//!
//! ```text
//! call ─► guard (policy hook) ─► admission (budget reserve) ─► plan: [(provider, model)] ≤ 1 + max_fallbacks
//!   for each step: breaker open? skip ─► attempt (timeout) ─► ok: done
//!                  retryable & retries left? backoff, again
//!                  bad request? stop (4xx)          else: next step
//!   none left: the most telling error (404 if nobody has the model, else the
//!   last failure with its provider and correlation id; 503 if all were open)
//! ```
//!
//! Chat, streamed chat and embeddings take that one path (`Gateway::call`),
//! generic over a private `CallKind`: the request's type says how to check
//! and estimate it (`CallRequest`), the kind says which provider method one
//! attempt calls (so its reply has the right type) and how the routed reply
//! reaches the caller. Chat and embeddings are metered at once; a stream is
//! routed the same way up to its first event and metered when it ends,
//! fails or is dropped (`StreamMeter`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fabric_core::{AgentId, TenantId, Timestamp, UsageOutcome, UsageRecord};
use futures_util::StreamExt as _;
use futures_util::stream;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::{Instant, timeout};

use crate::breaker::{Breaker, BreakerState};
use crate::config::{ConfigError, GatewayConfig, Policy, PolicyStep, RetryConfig, Tier};
use crate::error::{GatewayError, ProviderError, ProviderErrorKind};
use crate::metering::{
    GatewayMetrics, MetricsSnapshot, PriceTable, UsageSink, estimate_answer_tokens,
    estimate_request_tokens, estimate_tokens,
};
use crate::providers::{AnyProvider, Call, Provider as _};
use crate::secret::Redactor;
use crate::types::{
    ChatRequest, ChatResponse, ChatStream, EmbedRequest, EmbedResponse, ModelInfo, StreamEvent,
    TokenCounts, Usage,
};

/// Who is calling: the identity every call is metered against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: TenantId,
    /// The user (for an agent: the user it runs for).
    pub user: String,
    /// Set when an agent calls.
    pub agent: Option<AgentId>,
    /// The calling agent's workspace (an attribute its policies match on).
    pub workspace: Option<String>,
    /// The fabric request id (`X-Request-Id`), in error bodies and records.
    pub request_id: String,
}

/// How one call is to be routed and accounted.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Replaces the configured policy for this call (`policyOverride`, `X-Fabric-Policy`).
    pub policy_override: Option<Policy>,
    /// The API the caller spoke (`openai`, `ollama`, `infer`), for the ledger.
    pub api: &'static str,
    /// When the call arrived: the overhead histogram and latency count from here.
    pub started: Instant,
    started_at: Timestamp,
}

impl CallOptions {
    /// Options for a call arriving now.
    pub fn new(api: &'static str) -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self {
            policy_override: None,
            api,
            started: Instant::now(),
            started_at: Timestamp::from_millis(ms),
        }
    }

    pub fn with_policy(mut self, policy: Option<Policy>) -> Self {
        self.policy_override = policy;
        self
    }
}

/// A boxed future borrowed for `'a` (what [`CallGuard::check`] returns).
pub type GuardFuture<'a> = Pin<Box<dyn Future<Output = Result<(), GatewayError>> + Send + 'a>>;

/// A check run before every call, once its model is known: where the
/// fabric's policy decides `llm:<model>` (403 `policy_denied` or
/// `approval_required`), for every front end alike.
pub trait CallGuard: Send + Sync + 'static {
    fn check<'a>(&'a self, caller: &'a Caller, model: &'a str) -> GuardFuture<'a>;
}

/// What an [`Admission`] is told about a call before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Estimated prompt tokens (4 characters a token, as metering estimates).
    pub input_tokens: u64,
    /// The request's `max_tokens`, else [`DEFAULT_OUTPUT_ESTIMATE`]; 0 for embeddings.
    pub output_tokens: u64,
}

/// Output tokens an [`Estimate`] assumes when the request sets no `max_tokens`.
pub const DEFAULT_OUTPUT_ESTIMATE: u64 = 512;

/// A pre-call check that holds something for the call until it is metered:
/// the seam for budgets (reserve an estimate, settle the actual usage).
/// Runs after the [`CallGuard`], so a call policy refuses holds nothing.
pub trait Admission: Send + Sync + 'static {
    /// Admits the call (returning what settles it) or refuses it.
    fn admit(
        &self,
        caller: &Caller,
        model: &str,
        estimate: Estimate,
    ) -> Result<Box<dyn Admitted>, GatewayError>;
}

/// What an admitted call holds. The gateway calls [`Admitted::settle`] once
/// with the call's usage record (failures and canceled streams included);
/// if the call's future is dropped before it is metered, the box is dropped
/// unsettled and its `Drop` must release the hold.
pub trait Admitted: Send + Sync + 'static {
    fn settle(self: Box<Self>, record: &UsageRecord);
}

/// A successful call: the value and who produced it.
#[derive(Debug)]
pub struct Answer<T> {
    pub value: T,
    /// The provider that answered.
    pub provider: String,
    /// The model name that provider was asked for.
    pub model: String,
    /// True when it was not the route's first choice.
    pub fallback: bool,
    /// Upstream attempts, retries and fallbacks included.
    pub attempts: u32,
    /// Metered tokens (streams: known only at the end, so zero here).
    pub usage: Usage,
}

/// A streamed answer's events: deltas, then one `Done`, or an error in-band.
pub type GatewayStream = stream::BoxStream<'static, Result<StreamEvent, GatewayError>>;

/// A provider's live state, for status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderStatus {
    pub name: String,
    pub kind: &'static str,
    pub tier: Tier,
    pub breaker: BreakerState,
    pub consecutive_failures: u32,
    pub circuit_opened_total: u64,
}

struct Slot {
    name: String,
    kind: &'static str,
    tier: Tier,
    provider: AnyProvider,
    breaker: Arc<Breaker>,
    timeout: Duration,
    max_retries: u32,
    /// The only models this provider is asked for, when set.
    models: Vec<String>,
}

impl Slot {
    /// The error of an attempt that took its whole `budget`.
    fn timed_out(&self, budget: Duration, call: &Call) -> ProviderError {
        ProviderError::new(
            ProviderErrorKind::Timeout,
            format!(
                "{} did not answer within {:.1}s",
                self.name,
                budget.as_secs_f64()
            ),
        )
        .with_correlation(Some(call.correlation_id.clone()))
    }
}

struct Inner {
    slots: Vec<Slot>,
    policy: Policy,
    max_fallbacks: usize,
    request_timeout: Duration,
    max_body_bytes: usize,
    retry: RetryConfig,
    model_map: BTreeMap<String, BTreeMap<String, String>>,
    prices: PriceTable,
    sink: Arc<dyn UsageSink>,
    metrics: Arc<GatewayMetrics>,
    guard: Option<Arc<dyn CallGuard>>,
    admission: Option<Arc<dyn Admission>>,
    models_cache: Mutex<Option<(Instant, Vec<ModelInfo>)>>,
}

/// The inference gateway: cheap to clone, shared by every API front end.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.inner.slots.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("Gateway")
            .field("providers", &names)
            .field("policy", &self.inner.policy.to_string())
            .finish()
    }
}

/// How long `/v1/models` answers from its cache.
const MODELS_CACHE_TTL: Duration = Duration::from_secs(30);
/// How long listing one provider's models may take.
const MODELS_LIST_TIMEOUT: Duration = Duration::from_secs(3);

/// One step of a route.
#[derive(Debug, Clone)]
struct Step {
    slot: usize,
    model: String,
}

/// What routing did, for the ledger and the overhead histogram.
#[derive(Debug, Default)]
struct Trace {
    attempts: u32,
    /// Time inside upstream attempts.
    upstream: Duration,
    /// Time sleeping between retries.
    waited: Duration,
    /// The last provider tried and the model it was asked for.
    provider: Option<(usize, String)>,
    fallback: bool,
}

/// A routed success: the reply and the step that produced it.
struct Routed<'a, R> {
    reply: R,
    /// The provider that answered.
    slot: &'a Slot,
    /// The model name it was asked for.
    model: String,
}

impl<R> Routed<'_, R> {
    /// Meters the call now, with `usage`, and answers with the reply as it is.
    fn answer_metered(self, gateway: &Gateway, meter: Meter, usage: Usage) -> Answer<R> {
        let (fallback, attempts) = (meter.trace.fallback, meter.trace.attempts);
        meter.finish(gateway, usage, Ended::Ok);
        Answer {
            value: self.reply,
            provider: self.slot.name.clone(),
            model: self.model,
            fallback,
            attempts,
            usage,
        }
    }
}

impl Gateway {
    /// Builds the gateway from a validated config; `sink` receives every usage record.
    pub fn new(config: GatewayConfig, sink: Arc<dyn UsageSink>) -> Result<Self, ConfigError> {
        config.validate()?;
        let redactor = Redactor::new(config.secrets());
        let mut slots = Vec::with_capacity(config.providers.len());
        for p in &config.providers {
            let provider = AnyProvider::build(p, redactor.clone())
                .map_err(|e| ConfigError::Invalid(format!("provider {}: {e}", p.name)))?;
            slots.push(Slot {
                name: p.name.clone(),
                kind: p.kind.as_str(),
                tier: p.tier(),
                provider,
                breaker: Breaker::new(&p.name, config.breaker),
                timeout: p.timeout,
                max_retries: p.max_retries.unwrap_or(config.retry.max_retries),
                models: p.models.clone(),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                slots,
                policy: config.policy,
                max_fallbacks: config.max_fallbacks,
                request_timeout: config.request_timeout,
                max_body_bytes: config.max_body_bytes,
                retry: config.retry,
                model_map: config.models,
                prices: PriceTable::new(config.prices),
                sink,
                metrics: Arc::default(),
                guard: None,
                admission: None,
                models_cache: Mutex::new(None),
            }),
        })
    }

    /// Adds the pre-call check (policy, budgets). Call before sharing the gateway.
    pub fn with_guard(mut self, guard: Arc<dyn CallGuard>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.guard = Some(guard);
        }
        self
    }

    /// Adds the admission check (budgets). Call before sharing the gateway.
    pub fn with_admission(mut self, admission: Arc<dyn Admission>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.admission = Some(admission);
        }
        self
    }

    /// Largest request body the front ends accept (413 beyond).
    pub fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }

    /// Longest one call may take, fallbacks included (504 beyond).
    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// Whether any provider is configured.
    pub fn has_providers(&self) -> bool {
        !self.inner.slots.is_empty()
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// Exports the gateway's counters on `registry` (`agent_fabric_llm_*`),
    /// read at scrape time.
    pub fn register_metrics(&self, registry: &fabric_telemetry::metrics::Registry) {
        let metrics = Arc::clone(&self.inner.metrics);
        registry.collector(move || metrics.snapshot().families());
    }

    pub fn providers(&self) -> Vec<ProviderStatus> {
        self.inner
            .slots
            .iter()
            .map(|s| ProviderStatus {
                name: s.name.clone(),
                kind: s.kind,
                tier: s.tier,
                breaker: s.breaker.state(),
                consecutive_failures: s.breaker.failures(),
                circuit_opened_total: s.breaker.opened_total(),
            })
            .collect()
    }

    /// A complete chat answer.
    pub async fn chat(
        &self,
        caller: &Caller,
        opts: &CallOptions,
        req: ChatRequest,
    ) -> Result<Answer<ChatResponse>, GatewayError> {
        self.call::<Chat>(caller, opts, &req).await
    }

    /// A streamed chat answer. Routing (and fallback) happen before the first
    /// event, which is awaited here: once this returns, the provider is fixed
    /// and later failures arrive in the stream.
    pub async fn chat_stream(
        &self,
        caller: &Caller,
        opts: &CallOptions,
        req: ChatRequest,
    ) -> Result<Answer<GatewayStream>, GatewayError> {
        self.call::<StreamedChat>(caller, opts, &req).await
    }

    /// Embeddings, one vector per input.
    pub async fn embed(
        &self,
        caller: &Caller,
        opts: &CallOptions,
        req: EmbedRequest,
    ) -> Result<Answer<EmbedResponse>, GatewayError> {
        self.call::<Embed>(caller, opts, &req).await
    }

    /// Every model the gateway can route: mapped names first, then what each
    /// provider lists (or its configured `models` when listing fails).
    /// Cached for 30 s; providers with an open circuit are not asked.
    pub async fn models(&self) -> Vec<ModelInfo> {
        if let Some((at, models)) = &*self.inner.models_cache.lock()
            && at.elapsed() < MODELS_CACHE_TTL
        {
            return models.clone();
        }
        let order = self.policy_order(&self.inner.policy);
        let listings = futures_util::future::join_all(self.inner.slots.iter().map(|slot| async {
            if slot.breaker.state() == BreakerState::Open {
                return slot.models.clone();
            }
            match timeout(MODELS_LIST_TIMEOUT, slot.provider.list_models(&Call::new())).await {
                Ok(Ok(models)) if slot.models.is_empty() => models,
                Ok(Ok(models)) => models
                    .into_iter()
                    .filter(|m| slot.models.contains(m))
                    .collect(),
                Ok(Err(e)) => {
                    tracing::debug!(provider = %slot.name, error = %e, "cannot list models");
                    slot.models.clone()
                }
                Err(_) => slot.models.clone(),
            }
        }))
        .await;
        let mut out: Vec<ModelInfo> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (alias, targets) in &self.inner.model_map {
            let provider = order
                .iter()
                .map(|&i| &self.inner.slots[i].name)
                .find(|name| targets.contains_key(*name))
                .or_else(|| targets.keys().next());
            if let Some(provider) = provider
                && seen.insert(alias.clone())
            {
                out.push(ModelInfo {
                    id: alias.clone(),
                    provider: provider.clone(),
                });
            }
        }
        let mut slot_order: Vec<usize> = order.clone();
        slot_order.extend((0..self.inner.slots.len()).filter(|i| !order.contains(i)));
        for i in slot_order {
            for model in &listings[i] {
                if seen.insert(model.clone()) {
                    out.push(ModelInfo {
                        id: model.clone(),
                        provider: self.inner.slots[i].name.clone(),
                    });
                }
            }
        }
        *self.inner.models_cache.lock() = Some((Instant::now(), out.clone()));
        out
    }

    fn admit(
        &self,
        caller: &Caller,
        model: &str,
        estimate: Estimate,
    ) -> Result<Option<Box<dyn Admitted>>, GatewayError> {
        match &self.inner.admission {
            Some(admission) => admission.admit(caller, model, estimate).map(Some),
            None => Ok(None),
        }
    }

    async fn check_guard(&self, caller: &Caller, model: &str) -> Result<(), GatewayError> {
        match &self.inner.guard {
            Some(guard) => guard.check(caller, model).await,
            None => Ok(()),
        }
    }

    /// Slots a policy selects, in order, without repeats.
    fn policy_order(&self, policy: &Policy) -> Vec<usize> {
        let mut order = Vec::new();
        for step in &policy.steps {
            for (i, slot) in self.inner.slots.iter().enumerate() {
                let selected = match step {
                    PolicyStep::Tier(t) => slot.tier == *t,
                    PolicyStep::Provider(name) => slot.name == *name,
                };
                if selected && !order.contains(&i) {
                    order.push(i);
                }
            }
        }
        order
    }

    /// The route for `model`: `provider/model` pins one provider; otherwise
    /// the policy's providers that serve the (mapped) model, capped.
    fn plan(
        &self,
        model: &str,
        policy_override: Option<&Policy>,
    ) -> Result<Vec<Step>, GatewayError> {
        let slots = &self.inner.slots;
        if slots.is_empty() {
            return Err(GatewayError::NoProvider(
                "no inference provider is configured: start the fabric with OLLAMA_BASE_URL, OPENAI_API_KEY (and OPENAI_BASE_URL) or ANTHROPIC_API_KEY set, or with --gateway-config".to_owned(),
            ));
        }
        if let Some((prefix, rest)) = model.split_once('/')
            && let Some(i) = slots.iter().position(|s| s.name == prefix)
            && !rest.is_empty()
        {
            return Ok(vec![Step {
                slot: i,
                model: rest.to_owned(),
            }]);
        }
        let policy = policy_override.unwrap_or(&self.inner.policy);
        if let Some(PolicyStep::Provider(unknown)) = policy.steps.iter().find(
            |s| matches!(s, PolicyStep::Provider(name) if !slots.iter().any(|sl| sl.name == *name)),
        ) {
            return Err(GatewayError::invalid(format!(
                "policy {policy} names provider {unknown:?}, which is not configured: use local, cloud or one of {}",
                slots
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let order = self.policy_order(policy);
        if order.is_empty() {
            return Err(GatewayError::NoProvider(format!(
                "policy {policy} selects none of the configured providers ({}): choose another policy",
                slots
                    .iter()
                    .map(|s| format!("{} ({})", s.name, s.tier.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mapping = self.inner.model_map.get(model);
        let mut steps = Vec::new();
        for &i in &order {
            let slot = &slots[i];
            let upstream = match mapping {
                Some(targets) => match targets.get(&slot.name) {
                    Some(m) => m.clone(),
                    None => continue,
                },
                None => model.to_owned(),
            };
            if !slot.models.is_empty() && !slot.models.contains(&upstream) {
                continue;
            }
            steps.push(Step {
                slot: i,
                model: upstream,
            });
        }
        steps.truncate(1 + self.inner.max_fallbacks);
        if steps.is_empty() {
            return Err(GatewayError::ModelNotFound {
                model: model.to_owned(),
                tried: order
                    .iter()
                    .map(|&i| slots[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(steps)
    }

    /// The one call path every kind takes: validate, guard, admission, then
    /// route (attempts, retries, breaker, fallback) and meter the outcome.
    /// A refusal before routing holds nothing and is not metered.
    async fn call<K: CallKind>(
        &self,
        caller: &Caller,
        opts: &CallOptions,
        req: &K::Request,
    ) -> Result<Answer<K::Value>, GatewayError> {
        req.validate()?;
        let requested = req.model();
        self.check_guard(caller, requested).await?;
        let admitted = self.admit(caller, requested, req.estimate())?;
        let mut meter = Meter {
            caller: caller.clone(),
            api: opts.api,
            started: opts.started,
            started_at: opts.started_at,
            requested: requested.to_owned(),
            stream: K::STREAM,
            trace: Trace::default(),
            admitted,
        };
        match self.route::<K>(opts, req, &mut meter.trace).await {
            Ok(routed) => {
                self.observe_overhead(opts, &meter.trace);
                Ok(K::deliver(self, req, routed, meter))
            }
            Err(e) => {
                meter.finish(self, Usage::default(), Ended::Failed { code: e.code() });
                Err(e)
            }
        }
    }

    /// Plans the route and walks it until a provider answers; `trace` keeps
    /// what it did, for the ledger.
    async fn route<K: CallKind>(
        &self,
        opts: &CallOptions,
        req: &K::Request,
        trace: &mut Trace,
    ) -> Result<Routed<'_, K::Reply>, GatewayError> {
        let model = req.model();
        let steps = self.plan(model, opts.policy_override.as_ref())?;
        let deadline = opts.started + self.inner.request_timeout;
        let mut failures: Vec<Failure<'_>> = Vec::new();
        let mut skipped: Vec<&str> = Vec::new();
        // Providers of the route that cannot honour a field of the request:
        // not asked (the caller would get less than it asked for).
        let mut unable: Vec<(&Slot, String)> = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            let slot = &self.inner.slots[step.slot];
            if let Some(field) = req.unsupported_by(&slot.provider) {
                tracing::debug!(provider = %slot.name, field, "the provider cannot honour a field: skipping it");
                unable.push((slot, field));
                continue;
            }
            let Some(mut permit) = slot.breaker.try_acquire() else {
                tracing::debug!(provider = %slot.name, "circuit open: skipping the provider");
                skipped.push(&slot.name);
                continue;
            };
            trace.provider = Some((step.slot, step.model.clone()));
            let mut retry = 0;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return Err(GatewayError::UpstreamTimeout {
                        provider: slot.name.clone(),
                        after: self.inner.request_timeout,
                        correlation_id: None,
                    });
                }
                let budget = slot.timeout.min(deadline - now);
                let call = Call::new();
                trace.attempts += 1;
                // For a stream the budget covers its first event too.
                let attempt = K::attempt(slot, req, &step.model, &call);
                let result = match timeout(budget, attempt).await {
                    Ok(result) => result,
                    Err(_) => Err(slot.timed_out(budget, &call)),
                };
                let took = now.elapsed();
                trace.upstream += took;
                self.inner.metrics.attempt(&slot.name, took);
                let e = match result {
                    Ok(reply) => {
                        permit.success();
                        trace.fallback = index > 0;
                        return Ok(Routed {
                            reply,
                            slot,
                            model: step.model.clone(),
                        });
                    }
                    Err(e) => e,
                };
                tracing::info!(provider = %slot.name, model = %step.model, kind = e.kind.as_str(),
                    status = e.status, correlation_id = e.correlation_id.as_deref(), error = %e.message,
                    attempt = retry + 1, "provider attempt failed");
                if e.kind.trips_breaker() {
                    permit.failure();
                } else {
                    // It answered: healthy, whatever it thought of the request.
                    permit.success();
                }
                if !e.kind.falls_back() {
                    return Err(GatewayError::from_provider(&slot.name, model, e, budget));
                }
                let backoff = backoff(&self.inner.retry, retry);
                let retry_left = e.kind.is_retryable()
                    && retry < slot.max_retries
                    && Instant::now() + backoff < deadline;
                if retry_left && let Some(next) = slot.breaker.try_acquire() {
                    tokio::time::sleep(backoff).await;
                    trace.waited += backoff;
                    retry += 1;
                    permit = next;
                    continue;
                }
                failures.push(Failure {
                    slot,
                    error: e,
                    budget,
                });
                break;
            }
        }
        if failures.is_empty() && skipped.is_empty() {
            return Err(unhonoured(&unable));
        }
        Err(final_error(model, failures, &skipped))
    }

    fn observe_overhead(&self, opts: &CallOptions, trace: &Trace) {
        let total = opts.started.elapsed();
        self.inner
            .metrics
            .overhead(total.saturating_sub(trace.upstream + trace.waited));
    }

    /// Meters a call: metrics, the log line, the admission's settlement, the sink.
    fn record(&self, record: UsageRecord, admitted: Option<Box<dyn Admitted>>) {
        if let Some(admitted) = admitted {
            admitted.settle(&record);
        }
        self.inner.metrics.call(&record);
        tracing::info!(
            request_id = %record.request_id,
            agent_id = record.agent.as_ref().map(|a| a.as_str()),
            user = %record.user,
            api = %record.api,
            provider = %record.provider,
            model = %record.model,
            tokens_in = record.tokens_in,
            tokens_out = record.tokens_out,
            tokens = record.tokens_in + record.tokens_out,
            estimated = record.estimated,
            latency_ms = record.latency_ms,
            fallback = record.fallback,
            attempts = record.attempts,
            stream = record.stream,
            outcome = record.outcome.as_str(),
            error_code = record.error_code.as_deref(),
            "llm call"
        );
        self.inner.sink.record(record);
    }
}

/// A step that failed for good (retries spent, or not worth it).
struct Failure<'a> {
    slot: &'a Slot,
    error: ProviderError,
    /// The attempt's timeout, for a timeout's message.
    budget: Duration,
}

/// The caller's error when no provider of the route can honour the
/// request: a 400 naming the field and each provider (never a silent drop).
fn unhonoured(unable: &[(&Slot, String)]) -> GatewayError {
    let each: Vec<String> = unable
        .iter()
        .map(|(slot, field)| format!("{field} by provider {} ({})", slot.name, slot.kind))
        .collect();
    GatewayError::invalid(format!(
        "the request cannot be honoured: {} is not supported; leave the field out, or route to a provider that supports it (a provider/model name, or a policy)",
        each.join(", nor ")
    ))
}

/// The caller's error when no step succeeded.
fn final_error(model: &str, mut failures: Vec<Failure<'_>>, skipped: &[&str]) -> GatewayError {
    if failures.is_empty() {
        return GatewayError::NoProvider(format!(
            "every provider that serves {model:?} is failing (circuit open for {}): retry in a few seconds",
            skipped.join(", ")
        ));
    }
    if failures
        .iter()
        .all(|f| f.error.kind == ProviderErrorKind::ModelNotFound)
    {
        return GatewayError::ModelNotFound {
            model: model.to_owned(),
            tried: failures
                .iter()
                .map(|f| f.slot.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        };
    }
    // Report the last failure that is not "no such model": where the
    // provider was down, the model may well exist.
    let chosen = failures
        .iter()
        .rposition(|f| f.error.kind != ProviderErrorKind::ModelNotFound)
        .unwrap_or(failures.len() - 1);
    let mut earlier = String::new();
    for (i, f) in failures.iter().enumerate() {
        if i != chosen {
            let _ = write!(
                earlier,
                "; {} also failed: {}",
                f.slot.name, f.error.message
            );
        }
    }
    for name in skipped {
        let _ = write!(earlier, "; {name} was skipped (circuit open)");
    }
    let last = failures.swap_remove(chosen);
    match GatewayError::from_provider(&last.slot.name, model, last.error, last.budget) {
        GatewayError::Upstream {
            provider,
            message,
            correlation_id,
        } => GatewayError::Upstream {
            provider,
            message: format!("{message}{earlier}"),
            correlation_id,
        },
        GatewayError::RateLimited {
            provider,
            message,
            correlation_id,
            retry_after,
        } => GatewayError::RateLimited {
            provider,
            message: format!("{message}{earlier}"),
            correlation_id,
            retry_after,
        },
        other => other,
    }
}

/// What the router asks of a request before routing it, whatever its kind.
trait CallRequest: Sync {
    /// The model as the caller named it.
    fn model(&self) -> &str;

    /// Refuses a request no provider should see (400), before the guard.
    fn validate(&self) -> Result<(), GatewayError>;

    /// What the call may consume, for the admission.
    fn estimate(&self) -> Estimate;

    /// The field of the request `provider` cannot honour, if any.
    fn unsupported_by(&self, provider: &AnyProvider) -> Option<String> {
        let _ = provider;
        None
    }
}

impl CallRequest for ChatRequest {
    fn model(&self) -> &str {
        &self.model
    }

    fn validate(&self) -> Result<(), GatewayError> {
        if self.model.trim().is_empty() {
            return Err(GatewayError::invalid("model is required"));
        }
        if self.messages.is_empty() {
            return Err(GatewayError::invalid(
                "messages must not be empty: send at least one user message",
            ));
        }
        if let Some(t) = self.params.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(GatewayError::invalid(format!(
                "temperature {t} is out of range: use 0 to 2"
            )));
        }
        if let Some(p) = self.params.top_p
            && !(0.0..=1.0).contains(&p)
        {
            return Err(GatewayError::invalid(format!(
                "top_p {p} is out of range: use 0 to 1"
            )));
        }
        Ok(())
    }

    fn unsupported_by(&self, provider: &AnyProvider) -> Option<String> {
        provider.unsupported(self)
    }

    /// Its prompt (tool definitions and an answer schema included) and at
    /// most `max_tokens` more.
    fn estimate(&self) -> Estimate {
        Estimate {
            input_tokens: estimate_request_tokens(self),
            output_tokens: self
                .params
                .max_tokens
                .map_or(DEFAULT_OUTPUT_ESTIMATE, u64::from),
        }
    }
}

impl CallRequest for EmbedRequest {
    fn model(&self) -> &str {
        &self.model
    }

    fn validate(&self) -> Result<(), GatewayError> {
        if self.model.trim().is_empty() {
            return Err(GatewayError::invalid("model is required"));
        }
        if self.inputs.is_empty() {
            return Err(GatewayError::invalid("input must not be empty"));
        }
        Ok(())
    }

    /// Its inputs; embeddings generate no tokens.
    fn estimate(&self) -> Estimate {
        Estimate {
            input_tokens: self.inputs.iter().map(|t| estimate_tokens(t)).sum(),
            output_tokens: 0,
        }
    }
}

/// One kind of call the router routes: its request, what one provider
/// attempt returns, and how a success reaches the caller and the ledger.
/// [`Gateway::call`] is the path every kind takes; each kind calls the
/// provider method that returns its own reply type, so no reply is ever of
/// the wrong kind.
trait CallKind {
    type Request: CallRequest;
    /// What one successful attempt returns.
    type Reply: Send;
    /// What the caller's [`Answer`] carries.
    type Value;
    /// Whether the ledger marks the call as streamed.
    const STREAM: bool;

    /// One attempt at `slot`'s provider, asked for `model` (its own name for
    /// the model); the router bounds it with the attempt's timeout.
    fn attempt(
        slot: &Slot,
        req: &Self::Request,
        model: &str,
        call: &Call,
    ) -> impl Future<Output = Result<Self::Reply, ProviderError>> + Send;

    /// Hands the routed reply to the caller and meters the call: at once, or
    /// (streams) when the answer ends.
    fn deliver(
        gateway: &Gateway,
        req: &Self::Request,
        routed: Routed<'_, Self::Reply>,
        meter: Meter,
    ) -> Answer<Self::Value>;
}

/// A complete chat answer ([`Gateway::chat`]).
enum Chat {}

impl CallKind for Chat {
    type Request = ChatRequest;
    type Reply = ChatResponse;
    type Value = ChatResponse;
    const STREAM: bool = false;

    async fn attempt(
        slot: &Slot,
        req: &ChatRequest,
        model: &str,
        call: &Call,
    ) -> Result<ChatResponse, ProviderError> {
        slot.provider.chat(&with_model(req, model), call).await
    }

    fn deliver(
        gateway: &Gateway,
        req: &ChatRequest,
        routed: Routed<'_, ChatResponse>,
        meter: Meter,
    ) -> Answer<ChatResponse> {
        let usage = metered_usage(
            routed.reply.usage,
            || estimate_request_tokens(req),
            || estimate_answer_tokens(&routed.reply),
        );
        routed.answer_metered(gateway, meter, usage)
    }
}

/// A streamed chat answer ([`Gateway::chat_stream`]): routed like a chat up
/// to its first event, metered when the stream ends.
enum StreamedChat {}

/// A provider's stream that has produced its first event.
struct OpenedStream {
    first: StreamEvent,
    rest: ChatStream,
}

impl CallKind for StreamedChat {
    type Request = ChatRequest;
    type Reply = OpenedStream;
    type Value = GatewayStream;
    const STREAM: bool = true;

    /// The attempt includes the first event, so a provider that accepts and
    /// then fails at once still falls back.
    async fn attempt(
        slot: &Slot,
        req: &ChatRequest,
        model: &str,
        call: &Call,
    ) -> Result<OpenedStream, ProviderError> {
        let mut rest = slot
            .provider
            .chat_stream(&with_model(req, model), call)
            .await?;
        match rest.next().await {
            Some(Ok(first)) => Ok(OpenedStream { first, rest }),
            Some(Err(e)) => Err(e.with_correlation(Some(call.correlation_id.clone()))),
            None => Err(ProviderError::protocol(format!(
                "{} ended the stream without any event",
                slot.name
            ))),
        }
    }

    fn deliver(
        gateway: &Gateway,
        req: &ChatRequest,
        routed: Routed<'_, OpenedStream>,
        meter: Meter,
    ) -> Answer<GatewayStream> {
        let Routed {
            reply: OpenedStream { first, rest },
            slot,
            model,
        } = routed;
        let (fallback, attempts) = (meter.trace.fallback, meter.trace.attempts);
        let deadline = meter.started + gateway.inner.request_timeout;
        let stream = MeteredStream {
            first: Some(first),
            rest,
            meter: StreamMeter {
                gateway: gateway.clone(),
                meter: Some(meter),
                prompt_estimate: estimate_request_tokens(req),
                output_chars: 0,
            },
            provider: slot.name.clone(),
            model: model.clone(),
            idle: slot.timeout,
            deadline,
            done: false,
        };
        Answer {
            value: stream.into_stream(),
            provider: slot.name.clone(),
            model,
            fallback,
            attempts,
            // Known only when the stream ends.
            usage: Usage::default(),
        }
    }
}

/// Embeddings ([`Gateway::embed`]).
enum Embed {}

impl CallKind for Embed {
    type Request = EmbedRequest;
    type Reply = EmbedResponse;
    type Value = EmbedResponse;
    const STREAM: bool = false;

    async fn attempt(
        slot: &Slot,
        req: &EmbedRequest,
        model: &str,
        call: &Call,
    ) -> Result<EmbedResponse, ProviderError> {
        let req = EmbedRequest {
            model: model.to_owned(),
            inputs: req.inputs.clone(),
        };
        slot.provider.embed(&req, call).await
    }

    fn deliver(
        gateway: &Gateway,
        req: &EmbedRequest,
        routed: Routed<'_, EmbedResponse>,
        meter: Meter,
    ) -> Answer<EmbedResponse> {
        let reported = routed
            .reply
            .input_tokens
            .map(|input| TokenCounts { input, output: 0 });
        let usage = metered_usage(reported, || req.estimate().input_tokens, || 0);
        routed.answer_metered(gateway, meter, usage)
    }
}

/// `req` with the model name one provider knows it by.
fn with_model(req: &ChatRequest, model: &str) -> ChatRequest {
    ChatRequest {
        model: model.to_owned(),
        messages: req.messages.clone(),
        params: req.params.clone(),
        options: req.options.clone(),
    }
}

/// Exponential backoff with ±25% jitter, capped.
fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let base = retry
        .backoff
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(retry.max_backoff);
    let jitter = 0.75 + rand::random::<f64>() * 0.5;
    base.mul_f64(jitter)
}

/// Reported counts, or estimates flagged as such.
fn metered_usage(
    reported: Option<TokenCounts>,
    prompt: impl FnOnce() -> u64,
    output: impl FnOnce() -> u64,
) -> Usage {
    match reported {
        Some(c) => Usage {
            input_tokens: c.input,
            output_tokens: c.output,
            estimated: false,
        },
        None => Usage {
            input_tokens: prompt(),
            output_tokens: output(),
            estimated: true,
        },
    }
}

/// How a metered call ended: the record's outcome, and the error's code
/// exactly when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Ok,
    Failed { code: &'static str },
    Canceled,
}

/// A call's usage record in the making: who asked for what and when, what
/// routing did, and the admission's hold. [`Meter::finish`] consumes it, so a
/// call is recorded, and its hold settled, at most once.
struct Meter {
    caller: Caller,
    api: &'static str,
    started: Instant,
    started_at: Timestamp,
    /// The model as the caller named it.
    requested: String,
    stream: bool,
    trace: Trace,
    admitted: Option<Box<dyn Admitted>>,
}

impl Meter {
    /// Records the call with the usage it consumed: priced, settled with the
    /// admission, counted, logged and sent to the sink.
    fn finish(self, gateway: &Gateway, usage: Usage, ended: Ended) {
        let Meter {
            caller,
            api,
            started,
            started_at,
            requested,
            stream,
            trace,
            admitted,
        } = self;
        // Before any step was tried (no route at all) nobody answered: the
        // record names no provider and the model as the caller named it.
        let (provider, model) = match trace.provider {
            Some((slot, model)) => (gateway.inner.slots[slot].name.clone(), model),
            None => ("none".to_owned(), requested.clone()),
        };
        let (outcome, error_code) = match ended {
            Ended::Ok => (UsageOutcome::Ok, None),
            Ended::Failed { code } => (UsageOutcome::Error, Some(code.to_owned())),
            Ended::Canceled => (UsageOutcome::Canceled, None),
        };
        let Caller {
            tenant,
            user,
            agent,
            request_id,
            ..
        } = caller;
        gateway.record(
            UsageRecord {
                id: uuid::Uuid::now_v7(),
                ts: started_at,
                tenant,
                user,
                agent,
                request_id,
                api: api.to_owned(),
                cost_nano_usd: gateway.inner.prices.cost_nano_usd(
                    &provider,
                    &model,
                    usage.input_tokens,
                    usage.output_tokens,
                ),
                provider,
                model,
                requested_model: requested,
                tokens_in: usage.input_tokens,
                tokens_out: usage.output_tokens,
                estimated: usage.estimated,
                latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                fallback: trace.fallback,
                attempts: trace.attempts,
                stream,
                outcome,
                error_code,
            },
            admitted,
        );
    }
}

/// Meters a stream when it ends, fails, or is dropped by a departing client.
struct StreamMeter {
    gateway: Gateway,
    /// Taken by the first [`StreamMeter::finish`]: later ends (the drop after
    /// `Done`) find nothing left to record.
    meter: Option<Meter>,
    prompt_estimate: u64,
    output_chars: u64,
}

impl StreamMeter {
    /// Records the call once. Without reported usage the counts are estimated
    /// from the prompt and the text streamed so far (a broken or abandoned
    /// stream still consumed what it produced).
    fn finish(&mut self, usage: Option<TokenCounts>, ended: Ended) {
        let Some(meter) = self.meter.take() else {
            return;
        };
        let chars = self.output_chars;
        let usage = metered_usage(usage, || self.prompt_estimate, || chars.div_ceil(4));
        meter.finish(&self.gateway, usage, ended);
    }
}

impl Drop for StreamMeter {
    fn drop(&mut self) {
        self.finish(None, Ended::Canceled);
    }
}

/// A routed stream on its way to the caller: the provider's stream with the
/// first event put back, an idle timeout between events, the call's
/// deadline, errors translated, and metering.
struct MeteredStream {
    first: Option<StreamEvent>,
    rest: ChatStream,
    meter: StreamMeter,
    /// Who is streaming, for the errors: fixed once the first event came.
    provider: String,
    model: String,
    idle: Duration,
    deadline: Instant,
    done: bool,
}

impl MeteredStream {
    fn into_stream(self) -> GatewayStream {
        stream::unfold(self, |mut s| async move {
            if s.done {
                return None;
            }
            let next = match s.first.take() {
                Some(first) => Some(Ok(first)),
                None => {
                    let wait = s
                        .idle
                        .min(s.deadline.saturating_duration_since(Instant::now()));
                    match timeout(wait, s.rest.next()).await {
                        Ok(next) => next,
                        Err(_) => Some(Err(ProviderError::new(
                            ProviderErrorKind::Timeout,
                            format!("no token for {:.1}s", wait.as_secs_f64()),
                        ))),
                    }
                }
            };
            match next {
                Some(Ok(StreamEvent::Delta(text))) => {
                    s.meter.output_chars += text.chars().count() as u64;
                    Some((Ok(StreamEvent::Delta(text)), s))
                }
                Some(Ok(StreamEvent::ToolCall(call))) => {
                    s.meter.output_chars += (call.arguments.chars().count()
                        + call.name.as_deref().map_or(0, |n| n.chars().count()))
                        as u64;
                    Some((Ok(StreamEvent::ToolCall(call)), s))
                }
                Some(Ok(event @ StreamEvent::Logprobs(_))) => Some((Ok(event), s)),
                Some(Ok(StreamEvent::Done {
                    finish_reason,
                    usage,
                })) => {
                    s.meter.finish(usage, Ended::Ok);
                    s.done = true;
                    Some((
                        Ok(StreamEvent::Done {
                            finish_reason,
                            usage,
                        }),
                        s,
                    ))
                }
                Some(Err(e)) => {
                    let timeout_after = s.idle;
                    let err = GatewayError::from_provider(&s.provider, &s.model, e, timeout_after);
                    s.meter.finish(None, Ended::Failed { code: err.code() });
                    s.done = true;
                    Some((Err(err), s))
                }
                None => {
                    let err = GatewayError::Upstream {
                        provider: s.provider.clone(),
                        message: "the stream ended before it was complete".to_owned(),
                        correlation_id: None,
                    };
                    s.meter.finish(None, Ended::Failed { code: err.code() });
                    s.done = true;
                    Some((Err(err), s))
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use fabric_core::{TenantId, UsageOutcome};
    use futures_util::StreamExt as _;

    use super::*;
    use crate::config::{GatewayConfig, ProviderConfig, ProviderKind};
    use crate::metering::MemorySink;
    use crate::types::{Message, Params, Role};

    fn caller() -> Caller {
        Caller {
            tenant: TenantId::new("acme").unwrap(),
            user: "alice".into(),
            agent: None,
            workspace: None,
            request_id: "req_unit".into(),
        }
    }

    fn chat(model: &str, messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            model: model.into(),
            messages,
            params: Params::default(),
            options: Default::default(),
        }
    }

    /// The in-process mock serving only `m`, and the sink it meters into.
    fn gateway() -> (Gateway, Arc<MemorySink>) {
        let mut provider = ProviderConfig::new("mock", ProviderKind::Mock, None);
        provider.models = vec!["m".into()];
        let config = GatewayConfig {
            providers: vec![provider],
            ..GatewayConfig::default()
        };
        let sink = Arc::new(MemorySink::default());
        let gw = Gateway::new(config, Arc::clone(&sink) as Arc<dyn UsageSink>).unwrap();
        (gw, sink)
    }

    /// Every kind takes `Gateway::call`: one record per routed call, marked
    /// streamed only for streams, with the outcome its end deserves; a call
    /// refused before routing records nothing.
    #[tokio::test]
    async fn every_kind_meters_one_record_per_routed_call() {
        let (gw, sink) = gateway();
        let opts = CallOptions::new("infer");
        let hello = || vec![Message::new(Role::User, "a b c")];

        let err = gw.chat(&caller(), &opts, chat("m", vec![])).await;
        assert_eq!(err.unwrap_err().status(), 400);
        assert!(sink.records().is_empty(), "refused before routing");

        gw.chat(&caller(), &opts, chat("m", hello())).await.unwrap();
        let embed = EmbedRequest {
            model: "m".into(),
            inputs: vec!["one".into()],
        };
        let a = gw.embed(&caller(), &opts, embed).await.unwrap();
        assert_eq!(a.value.embeddings.len(), 1);
        let s = gw
            .chat_stream(&caller(), &opts, chat("m", hello()))
            .await
            .unwrap();
        let events: Vec<_> = s.value.collect().await;
        assert!(matches!(events.last(), Some(Ok(StreamEvent::Done { .. }))));
        let mut s = gw
            .chat_stream(&caller(), &opts, chat("m", hello()))
            .await
            .unwrap();
        assert!(matches!(
            s.value.next().await,
            Some(Ok(StreamEvent::Delta(_)))
        ));
        drop(s);
        let err = gw
            .chat(&caller(), &opts, chat("other", hello()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "model_not_found");

        let seen: Vec<_> = sink
            .records()
            .into_iter()
            .map(|r| {
                (
                    r.stream,
                    r.outcome,
                    r.error_code,
                    r.provider,
                    r.model,
                    r.attempts,
                )
            })
            .collect();
        let ok = |stream, outcome| (stream, outcome, None, "mock".into(), "m".into(), 1);
        assert_eq!(
            seen,
            vec![
                ok(false, UsageOutcome::Ok),
                ok(false, UsageOutcome::Ok),
                ok(true, UsageOutcome::Ok),
                ok(true, UsageOutcome::Canceled),
                // No provider serves it: nobody was tried.
                (
                    false,
                    UsageOutcome::Error,
                    Some("model_not_found".into()),
                    "none".into(),
                    "other".into(),
                    0
                ),
            ]
        );
    }
}
