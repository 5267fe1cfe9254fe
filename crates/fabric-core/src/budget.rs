//! Budgets (REQUIREMENTS §8, FR-BUD): who a budget is for ([`BudgetEntity`]), its
//! limits ([`BudgetSpec`]), what the store keeps of it ([`BudgetRecord`]),
//! the [`BudgetStore`] port, and the API bodies of `/v1/budgets` and
//! `/v1/usage`. The accounting itself lives in `fabric-engine::budget`.

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, TenantId};
use crate::store::StoreError;
use crate::time::Timestamp;

/// Length of a budget period: one UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// What a budget is attached to: `agent:<id>`, `user:<name>` or `tenant:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BudgetEntity {
    Agent(AgentId),
    User(String),
    Tenant(TenantId),
}

/// Why a string is not a budget entity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetEntityError {
    #[error(
        "invalid budget entity {0:?}: use agent:<id>, user:<name> or tenant:<id> (e.g. agent:coder)"
    )]
    Shape(String),
    #[error("invalid budget entity {entity:?}: unknown kind {kind:?}; use agent, user or tenant")]
    Kind { entity: String, kind: String },
    #[error("invalid budget entity {entity:?}: {reason}")]
    Name { entity: String, reason: String },
}

impl BudgetEntity {
    pub fn kind(&self) -> &'static str {
        match self {
            BudgetEntity::Agent(_) => "agent",
            BudgetEntity::User(_) => "user",
            BudgetEntity::Tenant(_) => "tenant",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            BudgetEntity::Agent(a) => a.as_str(),
            BudgetEntity::User(u) => u,
            BudgetEntity::Tenant(t) => t.as_str(),
        }
    }
}

impl fmt::Display for BudgetEntity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.name())
    }
}

impl FromStr for BudgetEntity {
    type Err = BudgetEntityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((kind, name)) = s.split_once(':') else {
            return Err(BudgetEntityError::Shape(s.to_owned()));
        };
        let name_err = |reason: String| BudgetEntityError::Name {
            entity: s.to_owned(),
            reason,
        };
        match kind {
            "agent" => AgentId::new(name)
                .map(BudgetEntity::Agent)
                .map_err(|e| name_err(e.to_string())),
            "tenant" => TenantId::new(name)
                .map(BudgetEntity::Tenant)
                .map_err(|e| name_err(e.to_string())),
            "user" => {
                // User names follow the same rule as the other names.
                AgentId::new(name)
                    .map(|_| BudgetEntity::User(name.to_owned()))
                    .map_err(|e| name_err(e.to_string().replace("agent id", "user name")))
            }
            other => Err(BudgetEntityError::Kind {
                entity: s.to_owned(),
                kind: other.to_owned(),
            }),
        }
    }
}

impl Serialize for BudgetEntity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BudgetEntity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What happens to a period's allowance when the period ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ResetPolicy {
    /// Every UTC day starts with the full limit; unused allowance is lost.
    #[default]
    Daily,
    /// Unused allowance carries into the next day, capped at one day's
    /// limit: a day's allowance is at most twice its limit. Overspending
    /// (a settled call used more than it reserved) is not carried as debt.
    Carryover,
}

impl ResetPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetPolicy::Daily => "daily",
            ResetPolicy::Carryover => "carryover",
        }
    }
}

impl FromStr for ResetPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "daily" => Ok(ResetPolicy::Daily),
            "carryover" => Ok(ResetPolicy::Carryover),
            other => Err(format!(
                "unknown reset policy {other:?}: use daily or carryover"
            )),
        }
    }
}

fn default_alert_threshold() -> u8 {
    80
}

/// `PUT /v1/budgets/{entity}`: the REQUIREMENTS §5 budget fields plus the reset
/// policy. An unset limit is unlimited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(maximum = 9223372036854775807_u64))]
    pub max_tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(maximum = 1099511627776_u64))]
    pub max_compute_seconds_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1e9))]
    pub max_cost_per_day_usd: Option<f64>,
    /// Percent of a limit at which the soft alert fires (once per period).
    #[serde(default = "default_alert_threshold")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub alert_threshold_percent: u8,
    #[serde(default)]
    pub reset: ResetPolicy,
}

impl Default for BudgetSpec {
    fn default() -> Self {
        Self {
            max_tokens_per_day: None,
            max_compute_seconds_per_day: None,
            max_cost_per_day_usd: None,
            alert_threshold_percent: default_alert_threshold(),
            reset: ResetPolicy::Daily,
        }
    }
}

impl BudgetSpec {
    /// Checks the values a client may get wrong; the message says what to send.
    pub fn validate(&self) -> Result<(), String> {
        if self.alert_threshold_percent == 0 || self.alert_threshold_percent > 100 {
            return Err(format!(
                "alert_threshold_percent {} is out of range: use 1 to 100",
                self.alert_threshold_percent
            ));
        }
        if let Some(usd) = self.max_cost_per_day_usd
            && !(0.0..=1e9).contains(&usd)
        {
            return Err(format!(
                "max_cost_per_day_usd {usd} is invalid: use a non-negative number of US dollars up to 1e9"
            ));
        }
        if self
            .max_compute_seconds_per_day
            .is_some_and(|s| s > 1 << 40)
        {
            return Err("max_compute_seconds_per_day is too large".to_owned());
        }
        // Stores keep counts as signed 64-bit integers.
        if self
            .max_tokens_per_day
            .is_some_and(|t| i64::try_from(t).is_err())
        {
            return Err(format!(
                "max_tokens_per_day is too large: use at most {}",
                i64::MAX
            ));
        }
        Ok(())
    }

    /// The cost limit in billionths of a dollar (the ledger's unit).
    pub fn max_cost_nano_usd(&self) -> Option<u64> {
        self.max_cost_per_day_usd
            .map(|usd| (usd * 1e9).round() as u64)
    }
}

impl From<&crate::agent::BudgetConfig> for BudgetSpec {
    fn from(c: &crate::agent::BudgetConfig) -> Self {
        Self {
            max_tokens_per_day: c.max_tokens_per_day,
            max_compute_seconds_per_day: c.max_compute_seconds_per_day,
            max_cost_per_day_usd: c.max_cost_per_day_usd,
            alert_threshold_percent: c.alert_threshold_percent,
            reset: ResetPolicy::Daily,
        }
    }
}

/// Tokens, compute and cost: what a budget limits and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Amounts {
    pub tokens: u64,
    /// CPU milliseconds (reported as seconds).
    pub compute_ms: u64,
    pub cost_nano_usd: u64,
}

impl Amounts {
    pub fn saturating_add(self, o: Amounts) -> Amounts {
        Amounts {
            tokens: self.tokens.saturating_add(o.tokens),
            compute_ms: self.compute_ms.saturating_add(o.compute_ms),
            cost_nano_usd: self.cost_nano_usd.saturating_add(o.cost_nano_usd),
        }
    }

    pub fn saturating_sub(self, o: Amounts) -> Amounts {
        Amounts {
            tokens: self.tokens.saturating_sub(o.tokens),
            compute_ms: self.compute_ms.saturating_sub(o.compute_ms),
            cost_nano_usd: self.cost_nano_usd.saturating_sub(o.cost_nano_usd),
        }
    }
}

/// The durable state of a period: enough to restart without losing the
/// period (token and cost usage is rebuilt from the usage ledger; compute
/// usage is not in that ledger, so it is kept here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PeriodState {
    /// Start of the period this state belongs to (UTC midnight).
    pub start: Timestamp,
    /// Allowance carried into this period (carryover policy only).
    pub carry: Amounts,
    /// CPU milliseconds used in this period, as last persisted.
    pub compute_ms: u64,
    /// Whether the soft alert already fired in this period.
    pub alerted: bool,
    /// Whether the hard-limit event already fired in this period.
    #[serde(default)]
    pub exceeded: bool,
}

/// A budget as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BudgetRecord {
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "agent:coder"))]
    pub entity: BudgetEntity,
    pub spec: BudgetSpec,
    pub period: PeriodState,
    pub updated_at: Timestamp,
}

/// The budgets port: one record per entity.
pub trait BudgetStore: Send + Sync + 'static {
    /// Inserts or replaces the record of `record.entity`.
    fn put_budget(
        &self,
        record: BudgetRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    fn get_budget(
        &self,
        entity: BudgetEntity,
    ) -> impl Future<Output = Result<Option<BudgetRecord>, StoreError>> + Send + 'static;

    /// Every record, ordered by entity (`agent:…`, `tenant:…`, `user:…`).
    fn list_budgets(
        &self,
    ) -> impl Future<Output = Result<Vec<BudgetRecord>, StoreError>> + Send + 'static;

    /// `false` if there was none.
    fn delete_budget(
        &self,
        entity: BudgetEntity,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static;
}

/// A limit of a budget, by name (`which limit` in errors and alerts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BudgetLimit {
    MaxTokensPerDay,
    MaxComputeSecondsPerDay,
    MaxCostPerDayUsd,
}

impl BudgetLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetLimit::MaxTokensPerDay => "max_tokens_per_day",
            BudgetLimit::MaxComputeSecondsPerDay => "max_compute_seconds_per_day",
            BudgetLimit::MaxCostPerDayUsd => "max_cost_per_day_usd",
        }
    }
}

/// `GET /v1/budgets/{entity}`: the record and its live numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BudgetView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "agent:coder"))]
    pub entity: BudgetEntity,
    // Inlined: a reference to `BudgetSpec` would bring its
    // `additionalProperties: false` (unknown fields are refused in a PUT),
    // which `entity` and `updated_at` beside it would break.
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(inline))]
    pub spec: BudgetSpec,
    pub updated_at: Timestamp,
}

/// `GET /v1/budgets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BudgetList {
    pub budgets: Vec<BudgetView>,
    /// Pass as `?cursor=` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Used, limit, remaining and projection of one quantity, in its display unit
/// (tokens, seconds, US dollars).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageLine {
    pub used: f64,
    /// Held by calls in flight (estimates, settled when they finish).
    pub reserved: f64,
    /// The period's allowance: the limit plus what carried over; absent when unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<f64>,
    /// used ÷ allowance × 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Linear projection of `used` to the end of the period.
    pub projected: f64,
}

/// A budget alert: the soft threshold crossed, or a hard limit hit (each at
/// most once per entity and period).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BudgetAlert {
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "agent:coder"))]
    pub entity: BudgetEntity,
    pub kind: BudgetAlertKind,
    pub limit: BudgetLimit,
    /// Used in the limit's unit (tokens, seconds, US dollars).
    pub used: f64,
    pub allowance: f64,
    pub threshold_percent: u8,
    pub period_start: Timestamp,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BudgetAlertKind {
    /// Usage crossed `alert_threshold_percent` of a limit.
    Threshold,
    /// A call or task was refused: the limit is spent.
    Exceeded,
}

/// `GET /v1/usage/{entity}?period=day`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BudgetUsageReport {
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "agent:coder"))]
    pub entity: BudgetEntity,
    /// Always `day` for now.
    pub period: String,
    pub period_start: Timestamp,
    /// When the period ends and the limits reset.
    pub resets_at: Timestamp,
    pub tokens: UsageLine,
    pub compute_seconds: UsageLine,
    pub cost_usd: UsageLine,
    /// LLM calls in the period (from the usage ledger).
    pub calls: u64,
    /// The budget, if the entity has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
    /// Whether the soft alert fired in this period.
    pub alerted: bool,
    /// Alerts of this period, oldest first.
    pub alerts: Vec<BudgetAlert>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_parse_and_print() {
        for s in ["agent:coder", "user:alice", "tenant:default"] {
            let e: BudgetEntity = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(json, format!("\"{s}\""));
        }
        assert!(matches!(
            "team:x".parse::<BudgetEntity>(),
            Err(BudgetEntityError::Kind { .. })
        ));
        assert!(matches!(
            "coder".parse::<BudgetEntity>(),
            Err(BudgetEntityError::Shape(_))
        ));
        assert!(matches!(
            "agent:".parse::<BudgetEntity>(),
            Err(BudgetEntityError::Name { .. })
        ));
    }

    #[test]
    fn specs_validate_and_default() {
        let spec: BudgetSpec = serde_json::from_str(r#"{"max_tokens_per_day": 10}"#).unwrap();
        assert_eq!(spec.alert_threshold_percent, 80);
        assert_eq!(spec.reset, ResetPolicy::Daily);
        assert!(spec.validate().is_ok());
        let bad = BudgetSpec {
            max_cost_per_day_usd: Some(-1.0),
            ..BudgetSpec::default()
        };
        assert!(bad.validate().unwrap_err().contains("non-negative"));
        assert!(serde_json::from_str::<BudgetSpec>(r#"{"max_tokens_per_day": -1}"#).is_err());
        assert!(serde_json::from_str::<BudgetSpec>(r#"{"max_tokenz": 1}"#).is_err());
    }
}
