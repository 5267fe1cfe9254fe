//! The policy engine (REQUIREMENTS §7, FR-POL): policies compiled into a
//! [`PolicySet`] that answers "may this actor do this action?" in
//! microseconds, with no IO and no clock of its own.
//!
//! # Precedence (docs/POLICY.md has the long form)
//!
//! Policies attach to a tenant (`*` = every tenant), a workspace or an agent.
//! For one request, each *level* (tenant, workspace, agent) that has a
//! matching rule yields a verdict: its highest-priority matching rule, and at
//! equal priority the stricter effect (`deny` > `require_approval` > `allow`).
//! Then:
//!
//! 1. The tenant level is a floor: a tenant `deny` is final, and nothing below
//!    can loosen a tenant `require_approval` to `allow`.
//! 2. Otherwise the most specific level with a match decides (agent, then
//!    workspace, then tenant); it may tighten the tenant's verdict freely.
//! 3. No matching rule anywhere: deny (default deny).
//!
//! # Layout
//!
//! - [`glob`]: the action pattern matcher.
//! - `index`: per-scope prefix tries, so a check only tests rules whose
//!   literal prefix the action starts with.

pub mod glob;
mod index;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

use fabric_core::Timestamp;
use fabric_core::policy::{
    Conditions, DEFAULT_APPROVAL_TIMEOUT_SECS, Effect, MAX_APPROVAL_TIMEOUT_SECS, Policy,
    PolicyScope, validate_policy_id,
};

pub use self::glob::{Glob, GlobError};
use self::index::PrefixIndex;

/// Why a policy cannot be compiled; names the policy and rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    InvalidId(String),
    #[error("policy {policy:?} has no rules: add at least one rule, or delete the policy")]
    NoRules { policy: String },
    #[error("policy {policy:?} scope {scope} is invalid: {message}")]
    InvalidScope {
        policy: String,
        scope: String,
        message: String,
    },
    #[error("policy {policy:?} rule #{rule}: {message}")]
    InvalidRule {
        policy: String,
        rule: usize,
        message: String,
    },
}

/// What is being asked: one actor, one action, now.
#[derive(Debug, Clone, Copy)]
pub struct PolicyRequest<'a> {
    pub tenant: &'a str,
    pub workspace: Option<&'a str>,
    pub agent: Option<&'a str>,
    pub action: &'a str,
    pub resource: Option<&'a str>,
    pub now: Timestamp,
}

/// A compiled rule with what a decision needs to report.
#[derive(Debug)]
pub struct CompiledRule {
    pub policy_id: String,
    /// Position in its policy's `rules`.
    pub index: usize,
    /// `#<index> <pattern>`, as decisions and the audit trail name it.
    pub label: String,
    pub level: u8,
    pub priority: i32,
    pub effect: Effect,
    pub approvers: Vec<String>,
    pub approval_timeout: Duration,
    glob: Glob,
    conditions: CompiledConditions,
}

#[derive(Debug, Default)]
struct CompiledConditions {
    tenant: Vec<Glob>,
    workspace: Vec<Glob>,
    agent: Vec<Glob>,
    resource: Vec<Glob>,
    hours: Option<(u8, u8)>,
    /// Bit `d` set: holds on weekday `d` (Monday 0).
    weekdays: Option<u8>,
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl CompiledConditions {
    fn compile(c: &Conditions) -> Result<Self, String> {
        let globs = |what: &str, list: &[String]| {
            list.iter()
                .map(|p| Glob::new(p).map_err(|e| format!("conditions.{what}: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        let hours = match c.hours_utc {
            None => None,
            Some([from, to]) if from <= 24 && to <= 24 && from != to => Some((from, to)),
            Some([from, to]) => {
                return Err(format!(
                    "conditions.hours_utc [{from}, {to}] is invalid: give [from, to] with hours 0-24 that differ (e.g. [9, 17]; [22, 6] wraps midnight)"
                ));
            }
        };
        let weekdays = if c.weekdays.is_empty() {
            None
        } else {
            let mut mask = 0u8;
            for day in &c.weekdays {
                let d = day.to_ascii_lowercase();
                let Some(i) = WEEKDAYS.iter().position(|w| *w == d) else {
                    return Err(format!(
                        "conditions.weekdays: unknown day {day:?}: use mon, tue, wed, thu, fri, sat or sun"
                    ));
                };
                mask |= 1 << i;
            }
            Some(mask)
        };
        Ok(Self {
            tenant: globs("tenant", &c.tenant)?,
            workspace: globs("workspace", &c.workspace)?,
            agent: globs("agent", &c.agent)?,
            resource: globs("resource", &c.resource)?,
            hours,
            weekdays,
        })
    }

    fn hold(&self, req: &PolicyRequest<'_>) -> bool {
        fn any(globs: &[Glob], value: Option<&str>) -> bool {
            globs.is_empty() || value.is_some_and(|v| globs.iter().any(|g| g.is_match(v)))
        }
        if !(any(&self.tenant, Some(req.tenant))
            && any(&self.workspace, req.workspace)
            && any(&self.agent, req.agent)
            && any(&self.resource, req.resource))
        {
            return false;
        }
        let ms = req.now.as_millis();
        if let Some((from, to)) = self.hours {
            let hour = ms.div_euclid(3_600_000).rem_euclid(24) as u8;
            let inside = if from < to {
                from <= hour && hour < to
            } else {
                hour >= from || hour < to
            };
            if !inside {
                return false;
            }
        }
        if let Some(mask) = self.weekdays {
            // 1970-01-01 was a Thursday (Monday-based index 3).
            let day = (ms.div_euclid(86_400_000) + 3).rem_euclid(7);
            if mask & (1 << day) == 0 {
                return false;
            }
        }
        true
    }
}

/// The outcome of [`PolicySet::evaluate`].
#[derive(Debug, Clone, Copy)]
pub struct Verdict<'a> {
    pub effect: Effect,
    /// The deciding rule; `None` for the default deny.
    pub rule: Option<&'a CompiledRule>,
}

impl Verdict<'_> {
    pub fn policy_id(&self) -> Option<&str> {
        self.rule.map(|r| r.policy_id.as_str())
    }

    /// The rule's label, or `default deny`.
    pub fn rule_label(&self) -> &str {
        self.rule.map_or(DEFAULT_DENY, |r| r.label.as_str())
    }
}

/// How decisions made by no rule are labelled.
pub const DEFAULT_DENY: &str = "default deny";

/// Every policy, compiled. Immutable: an update compiles a new set and swaps
/// it in whole (FR-POL-6), so a check never sees half an update.
#[derive(Debug, Default)]
pub struct PolicySet {
    rules: Vec<CompiledRule>,
    tenants: HashMap<String, PrefixIndex>,
    workspaces: HashMap<String, PrefixIndex>,
    agents: HashMap<String, PrefixIndex>,
}

/// Compiles one policy's rules (also what `PUT /v1/policies` validates with).
pub fn compile_policy(policy: &Policy) -> Result<Vec<CompiledRule>, PolicyError> {
    validate_policy_id(&policy.id).map_err(PolicyError::InvalidId)?;
    let scope_value = match &policy.scope {
        PolicyScope::Tenant(v) | PolicyScope::Workspace(v) | PolicyScope::Agent(v) => v,
    };
    let wildcard_ok = matches!(policy.scope, PolicyScope::Tenant(_)) && scope_value == "*";
    if !wildcard_ok {
        validate_policy_id(scope_value).map_err(|_| PolicyError::InvalidScope {
            policy: policy.id.clone(),
            scope: policy.scope.to_string(),
            message: "name it with 1-64 characters from a-z, A-Z, 0-9, '-', '_' and '.' (tenant \"*\" means every tenant)".to_owned(),
        })?;
    }
    if policy.rules.is_empty() {
        return Err(PolicyError::NoRules {
            policy: policy.id.clone(),
        });
    }
    policy
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let invalid = |message: String| PolicyError::InvalidRule {
                policy: policy.id.clone(),
                rule: index,
                message,
            };
            let glob =
                Glob::new(&rule.action_pattern).map_err(|e| invalid(format!("action_pattern: {e}")))?;
            let conditions = CompiledConditions::compile(&rule.conditions).map_err(invalid)?;
            let timeout = rule
                .approval_timeout_secs
                .unwrap_or(DEFAULT_APPROVAL_TIMEOUT_SECS);
            if timeout == 0 || timeout > MAX_APPROVAL_TIMEOUT_SECS {
                return Err(invalid(format!(
                    "approval_timeout_secs must be between 1 and {MAX_APPROVAL_TIMEOUT_SECS}, got {timeout}"
                )));
            }
            Ok(CompiledRule {
                policy_id: policy.id.clone(),
                index,
                label: format!("#{index} {}", rule.action_pattern),
                level: policy.scope.level(),
                priority: policy.priority,
                effect: rule.effect,
                approvers: rule.approvers.clone(),
                approval_timeout: Duration::from_secs(timeout),
                glob,
                conditions,
            })
        })
        .collect()
}

impl PolicySet {
    /// Compiles every policy; the first invalid one fails the whole set.
    pub fn compile(policies: &[Policy]) -> Result<PolicySet, PolicyError> {
        let mut set = PolicySet::default();
        for policy in policies {
            let scope_value = match &policy.scope {
                PolicyScope::Tenant(v) | PolicyScope::Workspace(v) | PolicyScope::Agent(v) => {
                    v.clone()
                }
            };
            for rule in compile_policy(policy)? {
                let id = set.rules.len();
                let map = match policy.scope {
                    PolicyScope::Tenant(_) => &mut set.tenants,
                    PolicyScope::Workspace(_) => &mut set.workspaces,
                    PolicyScope::Agent(_) => &mut set.agents,
                };
                map.entry(scope_value.clone())
                    .or_default()
                    .insert(rule.glob.literal_prefix().as_bytes(), id);
                set.rules.push(rule);
            }
        }
        Ok(set)
    }

    /// How many rules the set holds.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Decides `req` (see the module docs for the precedence).
    pub fn evaluate(&self, req: &PolicyRequest<'_>) -> Verdict<'_> {
        // Per level: (priority, strictness, rule id) of the best matching rule.
        let mut best: [Option<(i32, u8, usize)>; 3] = [None; 3];
        let mut consider = |index: Option<&PrefixIndex>| {
            let Some(index) = index else { return };
            index.for_each_candidate(req.action.as_bytes(), |id| {
                let Some(rule) = self.rules.get(id) else {
                    return;
                };
                if !rule.glob.is_match(req.action) || !rule.conditions.hold(req) {
                    return;
                }
                let key = (rule.priority, rule.effect.strictness());
                let slot = &mut best[usize::from(rule.level)];
                // Ties on (priority, strictness) keep the first rule compiled:
                // stable across evaluations of one set.
                if slot.is_none_or(|(p, s, _)| key > (p, s)) {
                    *slot = Some((key.0, key.1, id));
                }
            });
        };
        consider(self.tenants.get(req.tenant));
        if req.tenant != "*" {
            consider(self.tenants.get("*"));
        }
        if let Some(ws) = req.workspace {
            consider(self.workspaces.get(ws));
        }
        if let Some(agent) = req.agent {
            consider(self.agents.get(agent));
        }

        let rule = |slot: Option<(i32, u8, usize)>| slot.and_then(|(_, _, id)| self.rules.get(id));
        let tenant = rule(best[0]);
        let specific = rule(best[2]).or_else(|| rule(best[1]));
        let decided = match (tenant, specific) {
            (None, None) => None,
            (Some(t), None) => Some(t),
            (None, Some(s)) => Some(s),
            // The tenant's verdict is a floor: the specific level may only tighten it.
            // A tenant deny is final (and reported as the deciding rule).
            (Some(t), Some(s)) => Some(
                if t.effect == Effect::Deny || t.effect.strictness() > s.effect.strictness() {
                    t
                } else {
                    s
                },
            ),
        };
        match decided {
            Some(rule) => Verdict {
                effect: rule.effect,
                rule: Some(rule),
            },
            None => Verdict {
                effect: Effect::Deny,
                rule: None,
            },
        }
    }
}

/// The built-in policy created on first start (id [`DEFAULT_POLICY_ID`]), so
/// everything the fabric did before policies existed keeps working: it
/// allows task creation, LLM calls and egress (the agent's egress allowlist
/// still applies first) in every tenant, at the lowest priority, so any
/// other tenant policy overrides it. Admins may edit or delete it; the
/// server creates it again only at a start that finds no policy at all.
pub fn default_policy() -> Policy {
    use fabric_core::policy::PolicyRule;
    let allow = |pattern: &str| PolicyRule {
        action_pattern: pattern.to_owned(),
        effect: Effect::Allow,
        conditions: Conditions::default(),
        approvers: Vec::new(),
        approval_timeout_secs: None,
    };
    Policy {
        id: DEFAULT_POLICY_ID.to_owned(),
        priority: i32::MIN,
        scope: PolicyScope::Tenant("*".to_owned()),
        rules: vec![
            allow("task:create:*"),
            allow("llm:*"),
            allow("net:connect:*"),
            allow("shell:*"),
            allow("file:write:*"),
            allow("tool:*"),
        ],
        description: Some(DEFAULT_POLICY_DESCRIPTION.to_owned()),
        updated_at: None,
    }
}

const DEFAULT_POLICY_DESCRIPTION: &str = "built-in: allows task creation, tasks' shell commands and file writes, LLM calls, allowlisted egress and granted MCP tools in every tenant; edit or delete it to tighten";

/// The built-in default policy as releases before the shell agent checked
/// `shell:` and `file:write:` stored it (an install that never edited it).
const DEFAULT_POLICY_BEFORE_SHELL_CHECKS: (&str, &[&str]) = (
    "built-in: allows task creation, LLM calls and allowlisted egress in every tenant; edit or delete it to tighten",
    &["task:create:*", "llm:*", "net:connect:*"],
);

/// The built-in default policy as releases before MCP tools stored it: an
/// agent's `tools[]` is the first gate of its tool calls (as its egress
/// allowlist is of its connections), so the default allows `tool:*` behind it.
const DEFAULT_POLICY_BEFORE_TOOLS: (&str, &[&str]) = (
    "built-in: allows task creation, tasks' shell commands and file writes, LLM calls and allowlisted egress in every tenant; edit or delete it to tighten",
    &[
        "task:create:*",
        "llm:*",
        "net:connect:*",
        "shell:*",
        "file:write:*",
    ],
);

/// Whether `stored` is the built-in default policy of an earlier release,
/// untouched: then it is upgraded to [`default_policy`] (what was added
/// since allowed, as it ran before it was checked). An edited one is left
/// as its admin wrote it.
pub fn is_outdated_default(stored: &Policy) -> bool {
    stored.id == DEFAULT_POLICY_ID
        && [
            DEFAULT_POLICY_BEFORE_SHELL_CHECKS,
            DEFAULT_POLICY_BEFORE_TOOLS,
        ]
        .into_iter()
        .any(|(description, patterns)| {
            stored.description.as_deref() == Some(description)
                && stored.rules.len() == patterns.len()
                && stored.rules.iter().zip(patterns).all(|(rule, pattern)| {
                    rule.action_pattern == *pattern
                        && rule.effect == Effect::Allow
                        && rule.conditions == Conditions::default()
                })
        })
}

/// The id of [`default_policy`].
pub const DEFAULT_POLICY_ID: &str = "default";
