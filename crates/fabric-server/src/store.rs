//! The store backend the server runs on: SQLite in the data dir (the
//! embedded default) or Redis (the Docker and scale-out shapes), chosen by
//! [`StoreConfig`] and dispatched through the [`AnyStore`] enum.

use std::fmt;
use std::future::Future;
use std::path::Path;

use fabric_core::agent::{AgentRecord, AgentSession};
use fabric_core::budget::{BudgetEntity, BudgetRecord, BudgetStore};
use fabric_core::policy::{Approval, ApprovalQuery, AuditQuery, AuditRecord, Policy, PolicyStore};
use fabric_core::{
    AgentId, AgentStore, ApiToken, AuthStore, CreateOutcome, StoreError, Task, TaskEvent, TaskId,
    TaskQuery, TaskStore, TaskWrite, Tenant, TenantId, UsageQuery, UsageRecord, UsageStore,
    UsageTotals, User, WriteOutcome,
};
use fabric_store::{RedisConfig, RedisStore, SqliteStore};
use futures_util::future::Either;

/// What the rest of the server names the store.
pub type Store = AnyStore;

/// Which store the server runs on (`--store`, `FABRIC_STORE`).
///
/// `Debug` never shows a Redis password.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// `<data dir>/fabric.db`.
    #[default]
    Sqlite,
    /// A Redis server, e.g. `redis://:password@redis:6379/0`. `prefix` starts
    /// every key, so several instances can share one Redis.
    Redis { url: String, prefix: String },
}

impl StoreConfig {
    /// `sqlite`, or a `redis://` / `redis+unix://` URL (with `prefix`).
    pub fn parse(spec: &str, prefix: &str) -> Result<StoreConfig, String> {
        let spec = spec.trim();
        if spec.is_empty() || spec.eq_ignore_ascii_case("sqlite") {
            return Ok(StoreConfig::Sqlite);
        }
        if spec.starts_with("redis://")
            || spec.starts_with("redis+unix://")
            || spec.starts_with("unix://")
        {
            return Ok(StoreConfig::Redis {
                url: spec.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        Err(format!(
            "unknown store {:?}: use `sqlite` (the default) or a Redis URL such as redis://127.0.0.1:6379/0",
            fabric_store::redis::redact_url(spec).0
        ))
    }

    /// The same store, logging in to Redis with `password` (read from a
    /// file by `serve --store-password-file`, so it is in no URL, flag or
    /// environment variable).
    pub fn with_password(self, password: &str) -> Result<StoreConfig, String> {
        let StoreConfig::Redis { url, prefix } = self else {
            return Err("a store password needs a Redis store (--store redis://...)".to_owned());
        };
        let encoded: String = password
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let url = if let Some(rest) = url.strip_prefix("redis://") {
            let authority = rest.split('/').next().unwrap_or_default();
            if authority.contains('@') {
                return Err(
                    "the Redis URL has credentials already: give the password in one place"
                        .to_owned(),
                );
            }
            format!("redis://:{encoded}@{rest}")
        } else {
            let separator = if url.contains('?') { '&' } else { '?' };
            format!("{url}{separator}pass={encoded}")
        };
        Ok(StoreConfig::Redis { url, prefix })
    }

    /// Where the data lives, for logs and errors (no password).
    pub fn describe(&self, data_dir: &Path) -> String {
        match self {
            StoreConfig::Sqlite => format!("sqlite at {}", data_dir.join(DB_FILE).display()),
            StoreConfig::Redis { url, prefix } => format!(
                "redis at {} (key prefix {prefix:?})",
                fabric_store::redis::redact_url(url).0
            ),
        }
    }
}

#[cfg(test)]
mod password_tests {
    use super::*;

    #[test]
    fn a_password_file_goes_into_the_url_only() {
        let redis = |url: &str| StoreConfig::parse(url, "p").unwrap();
        assert_eq!(
            redis("redis://r:6379/0").with_password("s3cr#t").unwrap(),
            redis("redis://:s3cr%23t@r:6379/0")
        );
        assert_eq!(
            redis("redis+unix:///run/r.sock")
                .with_password("pw")
                .unwrap(),
            redis("redis+unix:///run/r.sock?pass=pw")
        );
        assert!(redis("redis://:x@r:6379").with_password("pw").is_err());
        assert!(StoreConfig::Sqlite.with_password("pw").is_err());
        let shown = format!(
            "{:?}",
            redis("redis://r:6379").with_password("topsecret").unwrap()
        );
        assert!(!shown.contains("topsecret"), "{shown}");
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Sqlite => f.write_str("Sqlite"),
            StoreConfig::Redis { url, prefix } => f
                .debug_struct("Redis")
                .field("url", &fabric_store::redis::redact_url(url).0)
                .field("prefix", prefix)
                .finish(),
        }
    }
}

/// The SQLite file inside the data dir.
const DB_FILE: &str = "fabric.db";

/// One of the store backends; every port method delegates to it.
#[derive(Clone, Debug)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Redis(RedisStore),
}

impl AnyStore {
    /// Opens the configured store (SQLite under `data_dir`).
    pub async fn open(config: &StoreConfig, data_dir: &Path) -> Result<AnyStore, StoreError> {
        match config {
            StoreConfig::Sqlite => Ok(AnyStore::Sqlite(SqliteStore::open(
                &data_dir.join(DB_FILE),
            )?)),
            StoreConfig::Redis { url, prefix } => {
                let config = RedisConfig::new(url.clone()).with_prefix(prefix.clone());
                Ok(AnyStore::Redis(RedisStore::connect(config).await?))
            }
        }
    }

    /// Whether other servers may write this store too (Redis: several
    /// orchestrators), so nothing read from it may be trusted from memory.
    pub fn is_shared(&self) -> bool {
        matches!(self, AnyStore::Redis(_))
    }

    /// Commits what was submitted, then closes (see each backend's `close`).
    pub async fn close(&self) {
        match self {
            AnyStore::Sqlite(s) => s.close().await,
            AnyStore::Redis(s) => s.close().await,
        }
    }
}

/// Calls the same method on whichever backend this is. The call happens here,
/// not when the future is polled, so writes keep their eager submission.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($s) => Either::Left($call),
            AnyStore::Redis($s) => Either::Right($call),
        }
    };
}

impl TaskStore for AnyStore {
    fn create_task(
        &self,
        task: Task,
    ) -> impl Future<Output = Result<CreateOutcome, StoreError>> + Send + 'static {
        dispatch!(self, s => s.create_task(task))
    }

    fn write_task(
        &self,
        write: TaskWrite,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send + 'static {
        dispatch!(self, s => s.write_task(write))
    }

    fn get_task(
        &self,
        id: TaskId,
    ) -> impl Future<Output = Result<Option<Task>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.get_task(id))
    }

    fn list_tasks(
        &self,
        query: TaskQuery,
    ) -> impl Future<Output = Result<Vec<Task>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.list_tasks(query))
    }

    fn unfinished_tasks(
        &self,
    ) -> impl Future<Output = Result<Vec<Task>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.unfinished_tasks())
    }

    fn append_events(
        &self,
        events: Vec<TaskEvent>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        dispatch!(self, s => s.append_events(events))
    }

    fn task_events(
        &self,
        id: TaskId,
        after_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<TaskEvent>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.task_events(id, after_seq, limit))
    }

    fn last_event_seq(&self) -> impl Future<Output = Result<u64, StoreError>> + Send + 'static {
        dispatch!(self, s => s.last_event_seq())
    }

    fn count_tasks(
        &self,
        tenant: Option<TenantId>,
        agent: Option<AgentId>,
    ) -> impl Future<
        Output = Result<std::collections::BTreeMap<fabric_core::TaskStatus, u64>, StoreError>,
    > + Send
    + 'static {
        dispatch!(self, s => s.count_tasks(tenant, agent))
    }

    fn delete_tasks(
        &self,
        ids: Vec<TaskId>,
    ) -> impl Future<Output = Result<Vec<TaskId>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.delete_tasks(ids))
    }
}

impl AuthStore for AnyStore {
    fn create_user(
        &self,
        user: User,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        dispatch!(self, s => s.create_user(user))
    }

    fn get_user(
        &self,
        name: String,
    ) -> impl Future<Output = Result<Option<User>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.get_user(name))
    }

    fn count_users(&self) -> impl Future<Output = Result<u64, StoreError>> + Send + 'static {
        dispatch!(self, s => s.count_users())
    }

    fn put_user(
        &self,
        user: User,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        dispatch!(self, s => s.put_user(user))
    }

    fn list_users(&self) -> impl Future<Output = Result<Vec<User>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.list_users())
    }

    fn delete_user(
        &self,
        name: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        dispatch!(self, s => s.delete_user(name))
    }

    fn create_tenant(
        &self,
        tenant: Tenant,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        dispatch!(self, s => s.create_tenant(tenant))
    }

    fn put_tenant(
        &self,
        tenant: Tenant,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        dispatch!(self, s => s.put_tenant(tenant))
    }

    fn list_tenants(
        &self,
    ) -> impl Future<Output = Result<Vec<Tenant>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.list_tenants())
    }

    fn delete_tenant(
        &self,
        name: TenantId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        dispatch!(self, s => s.delete_tenant(name))
    }

    fn list_tokens(
        &self,
    ) -> impl Future<Output = Result<Vec<ApiToken>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.list_tokens())
    }

    fn update_token(
        &self,
        token: ApiToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        dispatch!(self, s => s.update_token(token))
    }

    fn put_token(
        &self,
        token: ApiToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        dispatch!(self, s => s.put_token(token))
    }

    fn get_token(
        &self,
        token_hash: String,
    ) -> impl Future<Output = Result<Option<ApiToken>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.get_token(token_hash))
    }

    fn delete_token(
        &self,
        token_hash: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        dispatch!(self, s => s.delete_token(token_hash))
    }
}

impl AgentStore for AnyStore {
    fn put_agent(
        &self,
        record: AgentRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        dispatch!(self, s => s.put_agent(record))
    }

    fn get_agent(
        &self,
        id: AgentId,
    ) -> impl Future<Output = Result<Option<AgentRecord>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.get_agent(id))
    }

    fn list_agents(
        &self,
    ) -> impl Future<Output = Result<Vec<AgentRecord>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.list_agents())
    }

    fn delete_agent(
        &self,
        id: AgentId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        dispatch!(self, s => s.delete_agent(id))
    }

    fn put_session(
        &self,
        session: AgentSession,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        dispatch!(self, s => s.put_session(session))
    }

    fn list_sessions(
        &self,
        id: AgentId,
        before: Option<u32>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AgentSession>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.list_sessions(id, before, limit))
    }
}

impl UsageStore for AnyStore {
    fn record_usage(
        &self,
        record: UsageRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        dispatch!(self, s => s.record_usage(record))
    }

    fn list_usage(
        &self,
        query: UsageQuery,
    ) -> impl Future<Output = Result<Vec<UsageRecord>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.list_usage(query))
    }

    fn usage_totals(
        &self,
        query: UsageQuery,
    ) -> impl Future<Output = Result<UsageTotals, StoreError>> + Send + 'static {
        dispatch!(self, s => s.usage_totals(query))
    }
}

impl BudgetStore for AnyStore {
    fn put_budget(
        &self,
        record: BudgetRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        dispatch!(self, s => s.put_budget(record))
    }

    fn get_budget(
        &self,
        entity: BudgetEntity,
    ) -> impl Future<Output = Result<Option<BudgetRecord>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.get_budget(entity))
    }

    fn list_budgets(
        &self,
    ) -> impl Future<Output = Result<Vec<BudgetRecord>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.list_budgets())
    }

    fn delete_budget(
        &self,
        entity: BudgetEntity,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        dispatch!(self, s => s.delete_budget(entity))
    }
}

impl PolicyStore for AnyStore {
    fn put_policy(
        &self,
        policy: Policy,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        dispatch!(self, s => s.put_policy(policy))
    }

    fn delete_policy(
        &self,
        id: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        dispatch!(self, s => s.delete_policy(id))
    }

    fn list_policies(
        &self,
    ) -> impl Future<Output = Result<Vec<Policy>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.list_policies())
    }

    fn put_approval(
        &self,
        approval: Approval,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        dispatch!(self, s => s.put_approval(approval))
    }

    fn get_approval(
        &self,
        id: uuid::Uuid,
    ) -> impl Future<Output = Result<Option<Approval>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.get_approval(id))
    }

    fn list_approvals(
        &self,
        query: ApprovalQuery,
    ) -> impl Future<Output = Result<Vec<Approval>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.list_approvals(query))
    }

    fn record_audit(
        &self,
        record: AuditRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        dispatch!(self, s => s.record_audit(record))
    }

    fn list_audit(
        &self,
        query: AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send + 'static {
        dispatch!(self, s => s.list_audit(query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_specs_parse_and_never_show_a_password() {
        assert_eq!(StoreConfig::parse("sqlite", "x"), Ok(StoreConfig::Sqlite));
        assert_eq!(StoreConfig::parse("", "x"), Ok(StoreConfig::Sqlite));
        let redis = StoreConfig::parse("redis://:hunter2@cache:6379/1", "fab").unwrap();
        assert_eq!(
            redis,
            StoreConfig::Redis {
                url: "redis://:hunter2@cache:6379/1".into(),
                prefix: "fab".into()
            }
        );
        assert!(!format!("{redis:?}").contains("hunter2"));
        let shown = redis.describe(Path::new("/d"));
        assert_eq!(
            shown,
            "redis at redis://:***@cache:6379/1 (key prefix \"fab\")"
        );

        let err = StoreConfig::parse("postgres://u:hunter2@db/x", "x").unwrap_err();
        assert!(err.contains("unknown store"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

impl fabric_core::mcp::McpStore for AnyStore {
    fn put_mcp_server(
        &self,
        record: fabric_core::mcp::McpServerRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        dispatch!(self, s => s.put_mcp_server(record))
    }

    fn list_mcp_servers(
        &self,
    ) -> impl Future<Output = Result<Vec<fabric_core::mcp::McpServerRecord>, StoreError>> + Send + 'static
    {
        dispatch!(self, s => s.list_mcp_servers())
    }

    fn delete_mcp_server(
        &self,
        tenant: fabric_core::TenantId,
        name: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        dispatch!(self, s => s.delete_mcp_server(tenant, name))
    }
}

impl fabric_core::node::NodeStore for AnyStore {
    fn put_node(
        &self,
        record: fabric_core::node::NodeRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        dispatch!(self, s => s.put_node(record))
    }

    fn list_nodes(
        &self,
    ) -> impl Future<Output = Result<Vec<fabric_core::node::NodeRecord>, StoreError>> + Send + 'static
    {
        dispatch!(self, s => s.list_nodes())
    }

    fn delete_node(
        &self,
        name: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        dispatch!(self, s => s.delete_node(name))
    }

    fn put_join_token(
        &self,
        record: fabric_core::node::JoinTokenRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        dispatch!(self, s => s.put_join_token(record))
    }

    fn list_join_tokens(
        &self,
    ) -> impl Future<Output = Result<Vec<fabric_core::node::JoinTokenRecord>, StoreError>> + Send + 'static
    {
        dispatch!(self, s => s.list_join_tokens())
    }

    fn delete_join_token(
        &self,
        id: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        dispatch!(self, s => s.delete_join_token(id))
    }

    fn put_node_config(
        &self,
        config: fabric_core::node::NodeConfig,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        dispatch!(self, s => s.put_node_config(config))
    }

    fn get_node_config(
        &self,
    ) -> impl Future<Output = Result<Option<fabric_core::node::NodeConfig>, StoreError>> + Send + 'static
    {
        dispatch!(self, s => s.get_node_config())
    }
}
