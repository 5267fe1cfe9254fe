//! Key names, all under `{prefix}:`. The Lua scripts build the same names
//! from the prefix (see `scripts.rs`); a change here must be made there too.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `task:{id}` | hash | `body` (JSON), and `status`, `epoch`, `tenant`, `agent`, `idem` for the scripts |
//! | `ix:{tenant or *}:{status or *}:{agent or *}` | sorted set | task ids (score 0, so by id = creation order): one per filter combination |
//! | `open` | sorted set | ids of unfinished tasks |
//! | `idem:{tenant}` | hash | idempotency key → task id |
//! | `events:{task id}` | sorted set | event JSON, score = seq |
//! | `event_seq` | string | the highest event seq stored |
//! | `users` | hash | name → user JSON |
//! | `tokens` | hash | token hash → token JSON |
//! | `tenants` | hash | tenant name → tenant JSON |
//! | `agents` | hash | agent id → record JSON |
//! | `sessions:{agent id}` | sorted set | session JSON, score = session number |
//! | `budgets` | hash | budget entity (`agent:coder`) → budget record JSON |
//! | `leader` | string with a TTL | `"<generation>:<owner>"`: which orchestrator is active |
//! | `leader_gen` | string | the latest leadership generation (the fencing token of the fenced scripts) |

//! | `usage` | hash | usage record id → record JSON |
//! | `uix:{tenant or *}:{agent or *}:{user or *}` | sorted set | usage record ids, score = call start (ms): one per filter combination |
//!
//! | `policies` | hash | policy id → policy JSON |
//! | `mcp_servers` | hash | `<tenant>/<server>` → MCP server record JSON |
//! | `nodes` | hash | node name → node record JSON |
//! | `node_join_tokens` | hash | join token id → join token record JSON (the secret as a digest) |
//! | `node_config` | string | the node config JSON |
//! | `approvals` | hash | approval id → approval JSON |
//! | `audit` | hash | audit record id → record JSON |
//! | `aix:{tenant or *}:{agent or *}:{decision or *}` | sorted set | audit record ids, all score 0 (so by id = time order): one per filter combination |
//!
//! Tenant and agent ids are `[A-Za-z0-9._-]`, so neither `:` nor `*` can make
//! two index names collide. User names are free text: `%`, `:` and `*` in
//! them are percent-escaped in usage index names.

use fabric_core::{AgentId, TaskId, TaskQuery};

/// Builds the store's key names.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// `{prefix}:`, as the scripts receive it in `ARGV[1]`.
    pub prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: format!("{prefix}:"),
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    pub fn task(&self, id: TaskId) -> String {
        self.key(&format!("task:{id}"))
    }

    /// The one index that serves `query`'s filters.
    pub fn index(&self, query: &TaskQuery) -> String {
        let tenant = query.tenant.as_ref().map_or("*", |t| t.as_str());
        let status = query.status.map_or("*", |s| s.as_str());
        let agent = query.agent_id.as_ref().map_or("*", |a| a.as_str());
        self.key(&format!("ix:{tenant}:{status}:{agent}"))
    }

    pub fn events(&self, id: TaskId) -> String {
        self.key(&format!("events:{id}"))
    }

    pub fn event_seq(&self) -> String {
        self.key("event_seq")
    }

    pub fn users(&self) -> String {
        self.key("users")
    }

    pub fn tokens(&self) -> String {
        self.key("tokens")
    }

    pub fn tenants(&self) -> String {
        self.key("tenants")
    }

    pub fn agents(&self) -> String {
        self.key("agents")
    }

    pub fn budgets(&self) -> String {
        self.key("budgets")
    }

    pub fn sessions(&self, id: &AgentId) -> String {
        self.key(&format!("sessions:{id}"))
    }

    pub fn leader(&self) -> String {
        self.key("leader")
    }

    /// The prefix as configured (without the trailing `:`), for messages.
    pub fn name(&self) -> &str {
        self.prefix.strip_suffix(':').unwrap_or(&self.prefix)
    }

    /// The usage index of one combination of filters (`None` = any).
    pub fn policies(&self) -> String {
        self.key("policies")
    }

    pub fn mcp_servers(&self) -> String {
        self.key("mcp_servers")
    }

    pub fn nodes(&self) -> String {
        self.key("nodes")
    }

    pub fn node_join_tokens(&self) -> String {
        self.key("node_join_tokens")
    }

    pub fn node_config(&self) -> String {
        self.key("node_config")
    }

    pub fn approvals(&self) -> String {
        self.key("approvals")
    }

    /// The audit index serving these filters.
    pub fn audit_index(
        &self,
        tenant: Option<&str>,
        agent: Option<&str>,
        decision: Option<&str>,
    ) -> String {
        self.key(&format!(
            "aix:{}:{}:{}",
            tenant.unwrap_or("*"),
            agent.unwrap_or("*"),
            decision.unwrap_or("*")
        ))
    }

    pub fn usage_index(
        &self,
        tenant: Option<&str>,
        agent: Option<&str>,
        user: Option<&str>,
    ) -> String {
        let user = user.map(escape_user);
        self.key(&format!(
            "uix:{}:{}:{}",
            tenant.unwrap_or("*"),
            agent.unwrap_or("*"),
            user.as_deref().unwrap_or("*")
        ))
    }
}

/// A user name that cannot contain the index separators or the wildcard.
fn escape_user(user: &str) -> String {
    user.replace('%', "%25")
        .replace(':', "%3A")
        .replace('*', "%2A")
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric_core::{TaskStatus, TenantId};

    #[test]
    fn each_filter_combination_has_its_own_index() {
        let keys = Keys::new("fab");
        assert_eq!(keys.index(&TaskQuery::default()), "fab:ix:*:*:*");
        let query = TaskQuery {
            tenant: Some(TenantId::new("acme").unwrap()),
            status: Some(TaskStatus::Queued),
            ..TaskQuery::default()
        };
        assert_eq!(keys.index(&query), "fab:ix:acme:queued:*");
    }
}
