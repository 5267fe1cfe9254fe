//! Policies, approvals and the audit trail in SQLite; [`PolicyStore`] for
//! [`SqliteStore`]. Audit records go through the writer like every write, so
//! under load they share its group commits instead of costing an fsync each.

use std::future::Future;

use fabric_core::StoreError;
use fabric_core::policy::{Approval, ApprovalQuery, AuditQuery, AuditRecord, Policy, PolicyStore};
use rusqlite::types::Value;
use rusqlite::{Connection, params};

use super::SqliteStore;
use super::reader::{collect, collect_newest_first};
use super::rows::encode_json;
use super::writer::{Pending, WriteOp};
use crate::error::SqliteStoreError;

/// An audit record ready to insert, encoded on the caller's thread.
#[derive(Debug)]
pub(crate) struct AuditRow {
    id: String,
    tenant: String,
    agent: Option<String>,
    decision: &'static str,
    body: String,
}

pub(crate) fn put_policy(conn: &Connection, id: &str, body: &str) -> Result<(), SqliteStoreError> {
    conn.prepare_cached(
        "INSERT INTO policies (id, body) VALUES (?1, ?2)
         ON CONFLICT (id) DO UPDATE SET body = excluded.body",
    )
    .and_then(|mut stmt| stmt.execute(params![id, body]))
    .map_err(SqliteStoreError::sql(format!("cannot store policy {id:?}")))?;
    Ok(())
}

pub(crate) fn delete_policy(conn: &Connection, id: &str) -> Result<bool, SqliteStoreError> {
    let deleted = conn
        .prepare_cached("DELETE FROM policies WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute(params![id]))
        .map_err(SqliteStoreError::sql(format!(
            "cannot delete policy {id:?}"
        )))?;
    Ok(deleted > 0)
}

pub(crate) fn put_approval(
    conn: &Connection,
    id: &str,
    status: &str,
    body: &str,
) -> Result<(), SqliteStoreError> {
    conn.prepare_cached(
        "INSERT INTO approvals (id, status, body) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, body = excluded.body",
    )
    .and_then(|mut stmt| stmt.execute(params![id, status, body]))
    .map_err(SqliteStoreError::sql(format!("cannot store approval {id}")))?;
    Ok(())
}

pub(crate) fn insert_audit(conn: &Connection, row: &AuditRow) -> Result<(), SqliteStoreError> {
    conn.prepare_cached(
        "INSERT INTO audit (id, tenant, agent, decision, body) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            row.id,
            row.tenant,
            row.agent,
            row.decision,
            row.body
        ])
    })
    .map_err(SqliteStoreError::sql(format!(
        "cannot record audit record {}",
        row.id
    )))?;
    Ok(())
}

fn list_audit(conn: &Connection, query: &AuditQuery) -> Result<Vec<AuditRecord>, SqliteStoreError> {
    let mut sql = String::from("SELECT id, body FROM audit WHERE 1 = 1");
    let mut values = Vec::new();
    let mut eq = |column: &str, value: String| {
        values.push(Value::Text(value));
        sql.push_str(&format!(" AND {column} = ?{}", values.len()));
    };
    if let Some(tenant) = &query.tenant {
        eq("tenant", tenant.to_string());
    }
    if let Some(agent) = &query.agent {
        eq("agent", agent.to_string());
    }
    if let Some(decision) = query.decision {
        eq("decision", decision.as_str().to_owned());
    }
    if let Some(before) = query.before {
        values.push(Value::Text(before.to_string()));
        sql.push_str(&format!(" AND id < ?{}", values.len()));
    }
    collect_newest_first(
        conn,
        sql,
        values,
        query.limit,
        "cannot list audit records",
        "audit record",
    )
}

fn list_approvals(
    conn: &Connection,
    query: &ApprovalQuery,
) -> Result<Vec<Approval>, SqliteStoreError> {
    let mut sql = String::from("SELECT id, body FROM approvals WHERE 1 = 1");
    let mut values = Vec::new();
    let mut add = |condition: &str, value: String| {
        values.push(Value::Text(value));
        sql.push_str(&format!(" AND {condition} ?{}", values.len()));
    };
    if let Some(status) = query.status {
        add("status =", status.as_str().to_owned());
    }
    if let Some(before) = query.before {
        add("id <", before.to_string());
    }
    // Approvals are few (pending ones expire): the tenant is read from the
    // body rather than indexed.
    if let Some(tenant) = &query.tenant {
        add("json_extract(body, '$.tenant') =", tenant.to_string());
    }
    collect_newest_first(
        conn,
        sql,
        values,
        query.limit,
        "cannot list approvals",
        "approval",
    )
}

impl PolicyStore for SqliteStore {
    fn put_policy(
        &self,
        policy: Policy,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = encode_json(|| format!("policy {:?}", policy.id), &policy)
            .map(|body| move |reply| WriteOp::PutPolicy(Pending::new((policy.id, body), reply)));
        self.submit(op)
    }

    fn delete_policy(
        &self,
        id: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let op: Result<_, SqliteStoreError> =
            Ok(move |reply| WriteOp::DeletePolicy(Pending::new(id, reply)));
        self.submit(op)
    }

    fn list_policies(
        &self,
    ) -> impl Future<Output = Result<Vec<Policy>, StoreError>> + Send + 'static {
        self.read(|conn| {
            collect(
                conn,
                "SELECT id, body FROM policies ORDER BY id",
                [],
                "cannot list policies",
                "policy",
            )
        })
    }

    fn put_approval(
        &self,
        approval: Approval,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = encode_json(|| format!("approval {}", approval.id), &approval).map(|body| {
            move |reply| {
                WriteOp::PutApproval(Pending::new(
                    (approval.id.to_string(), approval.status.as_str(), body),
                    reply,
                ))
            }
        });
        self.submit(op)
    }

    fn get_approval(
        &self,
        id: uuid::Uuid,
    ) -> impl Future<Output = Result<Option<Approval>, StoreError>> + Send + 'static {
        self.read(move |conn| {
            let mut found: Vec<Approval> = collect(
                conn,
                "SELECT id, body FROM approvals WHERE id = ?1",
                params![id.to_string()],
                &format!("cannot read approval {id}"),
                "approval",
            )?;
            Ok(found.pop())
        })
    }

    fn list_approvals(
        &self,
        query: ApprovalQuery,
    ) -> impl Future<Output = Result<Vec<Approval>, StoreError>> + Send + 'static {
        self.read(move |conn| list_approvals(conn, &query))
    }

    fn record_audit(
        &self,
        record: AuditRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = encode_json(|| format!("audit record {}", record.id), &record).map(|body| {
            let row = AuditRow {
                id: record.id.to_string(),
                tenant: record.tenant.to_string(),
                agent: record.agent.as_ref().map(ToString::to_string),
                decision: record.decision.as_str(),
                body,
            };
            move |reply| WriteOp::RecordAudit(Pending::new(row, reply))
        });
        self.submit(op)
    }

    fn list_audit(
        &self,
        query: AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send + 'static {
        self.read(move |conn| list_audit(conn, &query))
    }
}
