//! Policies, approvals and the audit trail in Redis: [`PolicyStore`] for
//! [`RedisStore`].
//!
//! Policies and approvals are hashes read whole (policies are compiled all at
//! once; pending approvals are few). Audit records live in the `audit` hash
//! and are listed in the eight `aix:{tenant|*}:{agent|*}:{decision|*}` sorted
//! sets (score 0, so members sort by UUIDv7 id = time): any filter reads
//! exactly one index.

use std::future::Future;
use std::sync::LazyLock;

use ::redis::{Script, Value, cmd};
use fabric_core::StoreError;
use fabric_core::policy::{Approval, ApprovalQuery, AuditQuery, AuditRecord, Policy, PolicyStore};

use super::codec::{self, encode_json};
use super::scripts::script;
use super::{RedisStore, flag, ignore, writer};

/// `ARGV`: prefix, id, body, then the eight index keys. Fails when a record
/// with this id exists.
pub(crate) static RECORD_AUDIT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local P, id, body = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HSETNX', P .. 'audit', id, body) == 0 then
  return redis.error_reply('FABRIC audit record ' .. id .. ' already exists')
end
for i = 4, #ARGV do
  redis.call('ZADD', ARGV[i], 0, id)
end
return 1
"#
        .to_owned(),
    )
});

/// `KEYS[1]`: the index. `ARGV`: prefix, limit, the highest id to list as a
/// `ZRANGEBYLEX` bound (`+` for all, `(<id>` for those older than `<id>`).
/// Returns `id, body` pairs, newest first.
pub(crate) static LIST_AUDIT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ids = redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[3], '-', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i, id in ipairs(ids) do
  out[2 * i - 1] = id
  out[2 * i] = redis.call('HGET', ARGV[1] .. 'audit', id)
end
return out
"#
        .to_owned(),
    )
});

impl PolicyStore for RedisStore {
    fn put_policy(
        &self,
        policy: Policy,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = encode_json(|| format!("policy {:?}", policy.id), &policy).map(|body| {
            let c = cmd("HSET")
                .arg(self.inner.keys.policies())
                .arg(&policy.id)
                .arg(body)
                .clone();
            writer::op(
                Some(c),
                format!("cannot store policy {:?}", policy.id),
                ignore,
            )
        });
        self.submit(op)
    }

    fn delete_policy(
        &self,
        id: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let c = cmd("HDEL").arg(self.inner.keys.policies()).arg(&id).clone();
        self.submit(Ok(writer::op(
            Some(c),
            format!("cannot delete policy {id:?}"),
            flag("deleting a policy"),
        )))
    }

    fn list_policies(
        &self,
    ) -> impl Future<Output = Result<Vec<Policy>, StoreError>> + Send + 'static {
        let c = cmd("HGETALL").arg(self.inner.keys.policies()).clone();
        self.read(c, "cannot list policies".to_owned(), |value| {
            let mut policies: Vec<Policy> = codec::json_pairs("policy", value)?;
            // A hash has no order; the port promises id order.
            policies.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(policies)
        })
    }

    fn put_approval(
        &self,
        approval: Approval,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = encode_json(|| format!("approval {}", approval.id), &approval).map(|body| {
            let c = cmd("HSET")
                .arg(self.inner.keys.approvals())
                .arg(approval.id.to_string())
                .arg(body)
                .clone();
            writer::op(
                Some(c),
                format!("cannot store approval {}", approval.id),
                ignore,
            )
        });
        self.submit(op)
    }

    fn get_approval(
        &self,
        id: uuid::Uuid,
    ) -> impl Future<Output = Result<Option<Approval>, StoreError>> + Send + 'static {
        let c = cmd("HGET")
            .arg(self.inner.keys.approvals())
            .arg(id.to_string())
            .clone();
        self.read(c, format!("cannot read approval {id}"), move |value| {
            codec::optional_json(format!("approval {id}"), value)
        })
    }

    fn list_approvals(
        &self,
        query: ApprovalQuery,
    ) -> impl Future<Output = Result<Vec<Approval>, StoreError>> + Send + 'static {
        let c = cmd("HGETALL").arg(self.inner.keys.approvals()).clone();
        self.read(c, "cannot list approvals".to_owned(), move |value| {
            let mut approvals: Vec<Approval> = codec::json_pairs("approval", value)?;
            approvals.retain(|a| query.matches(a));
            approvals.sort_by_key(|a| std::cmp::Reverse(a.id));
            approvals.truncate(query.limit);
            Ok(approvals)
        })
    }

    fn record_audit(
        &self,
        record: AuditRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = encode_json(|| format!("audit record {}", record.id), &record).map(|body| {
            let mut c = self.eval(&RECORD_AUDIT);
            c.arg(record.id.to_string()).arg(body);
            let keys = &self.inner.keys;
            let agent = record.agent.as_ref().map(|a| a.as_str());
            for t in [Some(record.tenant.as_str()), None] {
                for a in [agent, None] {
                    for d in [Some(record.decision.as_str()), None] {
                        c.arg(keys.audit_index(t, a, d));
                    }
                }
            }
            // A record without an agent is only in the agent-wildcard indexes
            // (twice, harmlessly: ZADD of the same member is idempotent).
            writer::op(
                Some(c),
                format!("cannot record audit record {}", record.id),
                |_: Value| Ok(()),
            )
        });
        self.submit(op)
    }

    fn list_audit(
        &self,
        query: AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send + 'static {
        let index = self.inner.keys.audit_index(
            query.tenant.as_ref().map(|t| t.as_str()),
            query.agent.as_ref().map(|a| a.as_str()),
            query.decision.map(|d| d.as_str()),
        );
        let mut c = cmd("EVALSHA");
        c.arg(LIST_AUDIT.get_hash())
            .arg(1)
            .arg(index)
            .arg(&self.inner.keys.prefix)
            .arg(query.limit.min(1_000_000))
            // Every member has score 0, so the index sorts by id (UUIDv7 = time).
            .arg(
                query
                    .before
                    .map_or_else(|| "+".to_owned(), |b| format!("({b}")),
            );
        let read = self.read(c, "cannot list audit records".to_owned(), |value| {
            codec::json_pairs("audit record", value)
        });
        async move {
            if query.limit == 0 {
                return Ok(Vec::new());
            }
            read.await
        }
    }
}

/// MCP servers: one hash read whole at start (a new key, so a store written
/// by an earlier release needs no migration: it simply has none).
impl fabric_core::mcp::McpStore for RedisStore {
    fn put_mcp_server(
        &self,
        record: fabric_core::mcp::McpServerRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let key = format!("{}/{}", record.tenant, record.spec.name);
        let what = format!("MCP server {key:?}");
        self.hset_json(self.inner.keys.mcp_servers(), key, what, record)
    }

    fn list_mcp_servers(
        &self,
    ) -> impl Future<Output = Result<Vec<fabric_core::mcp::McpServerRecord>, StoreError>> + Send + 'static
    {
        let c = cmd("HGETALL").arg(self.inner.keys.mcp_servers()).clone();
        self.read(c, "cannot list MCP servers".to_owned(), |value| {
            codec::json_pairs("MCP server", value)
        })
    }

    fn delete_mcp_server(
        &self,
        tenant: fabric_core::TenantId,
        name: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let key = format!("{tenant}/{name}");
        let what = format!("MCP server {key:?}");
        self.hdel(self.inner.keys.mcp_servers(), key, what)
    }
}
