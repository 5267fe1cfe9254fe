//! The LLM usage ledger (REQUIREMENTS §6 metering, §8 budgets): one [`UsageRecord`] per
//! gateway call, stored through the [`UsageStore`] port and summed by
//! [`UsageTotals`] for budgets and reports.

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, TenantId};
use crate::store::StoreError;
use crate::time::Timestamp;

/// How a metered call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UsageOutcome {
    /// A provider answered (for a stream: it finished).
    Ok,
    /// Every provider tried failed, or the stream broke; see `error_code`.
    Error,
    /// The client went away before the answer was complete (streams).
    Canceled,
}

impl UsageOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageOutcome::Ok => "ok",
            UsageOutcome::Error => "error",
            UsageOutcome::Canceled => "canceled",
        }
    }
}

/// One LLM call through the gateway, as metered: who made it, who answered,
/// what it consumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageRecord {
    /// UUIDv7 (sorts by time).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: uuid::Uuid,
    /// When the call started.
    pub ts: Timestamp,
    pub tenant: TenantId,
    /// The user the token belongs to (an agent's owner for agent tokens).
    pub user: String,
    /// Set when an agent made the call (agent token or the agent's inference endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
    /// The fabric request id (`X-Request-Id`) of the call.
    pub request_id: String,
    /// The API the caller spoke: `openai`, `ollama` or `infer`.
    pub api: String,
    /// The provider that answered (the last one tried when none did; `none` if
    /// none could be tried).
    pub provider: String,
    /// The model name sent to that provider (after model mapping).
    pub model: String,
    /// The model name the caller asked for.
    pub requested_model: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// True when the provider reported no usage and the counts are estimates.
    pub estimated: bool,
    /// Milliseconds from the gateway receiving the call to its answer being complete.
    pub latency_ms: u64,
    /// True when a provider other than the policy's first choice answered.
    pub fallback: bool,
    /// Upstream attempts made (retries and fallbacks included).
    pub attempts: u32,
    /// Cost from the price table, in billionths of a US dollar (exact sums).
    pub cost_nano_usd: u64,
    pub stream: bool,
    pub outcome: UsageOutcome,
    /// The error code (`upstream_error`, `upstream_timeout`, ...) when `outcome` is not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

impl UsageRecord {
    /// The cost in US dollars (for display; sums use `cost_nano_usd`).
    pub fn cost_usd(&self) -> f64 {
        self.cost_nano_usd as f64 / 1e9
    }
}

/// Which records to read or sum: every set filter must match; time bounds are
/// `since <= ts < until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub tenant: Option<TenantId>,
    pub agent: Option<AgentId>,
    pub user: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// Only records after this one in the listing's order (call start,
    /// then id, newest first): the paging cursor. Totals ignore it.
    pub before: Option<uuid::Uuid>,
    /// Most records [`UsageStore::list_usage`] returns (totals ignore it).
    pub limit: usize,
}

impl Default for UsageQuery {
    fn default() -> Self {
        Self {
            tenant: None,
            agent: None,
            user: None,
            since: None,
            until: None,
            before: None,
            limit: 100,
        }
    }
}

impl UsageQuery {
    /// Whether `record` is one this query selects (ignoring `limit` and
    /// `before`, which depends on the listing's order).
    pub fn matches(&self, record: &UsageRecord) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == record.tenant)
            && self
                .agent
                .as_ref()
                .is_none_or(|a| record.agent.as_ref() == Some(a))
            && self.user.as_ref().is_none_or(|u| *u == record.user)
            && self.since.is_none_or(|s| record.ts >= s)
            && self.until.is_none_or(|u| record.ts < u)
    }
}

/// Sums over the records a [`UsageQuery`] selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageTotals {
    pub calls: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_nano_usd: u64,
    /// Calls a fallback provider answered.
    pub fallbacks: u64,
    /// Calls whose token counts are estimates.
    pub estimated_calls: u64,
    /// Calls that did not end `ok`.
    pub errors: u64,
}

impl UsageTotals {
    /// Adds one record (what every backend's sum must equal).
    pub fn add(&mut self, r: &UsageRecord) {
        self.calls += 1;
        self.tokens_in += r.tokens_in;
        self.tokens_out += r.tokens_out;
        self.cost_nano_usd += r.cost_nano_usd;
        self.fallbacks += u64::from(r.fallback);
        self.estimated_calls += u64::from(r.estimated);
        self.errors += u64::from(r.outcome != UsageOutcome::Ok);
    }
}

/// The durable usage ledger. Writes follow the same contract as the other
/// ports (submitted when called, committed in call order).
pub trait UsageStore: Send + Sync + 'static {
    /// Appends a record (ids are unique; a repeated id is an error).
    fn record_usage(
        &self,
        record: UsageRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    /// Matching records, newest first, at most `query.limit`.
    fn list_usage(
        &self,
        query: UsageQuery,
    ) -> impl Future<Output = Result<Vec<UsageRecord>, StoreError>> + Send + 'static;

    /// Sums over every matching record (no limit).
    fn usage_totals(
        &self,
        query: UsageQuery,
    ) -> impl Future<Output = Result<UsageTotals, StoreError>> + Send + 'static;
}
