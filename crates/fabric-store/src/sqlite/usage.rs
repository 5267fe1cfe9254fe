//! The LLM usage ledger in SQLite: one row per call, filter and sum columns
//! beside the JSON body; [`UsageStore`] for [`SqliteStore`].

use std::future::Future;

use fabric_core::{StoreError, UsageOutcome, UsageQuery, UsageRecord, UsageStore, UsageTotals};
use rusqlite::types::Value;
use rusqlite::{Connection, params, params_from_iter};

use super::SqliteStore;
use super::rows::{decode_json, encode_json, to_i64};
use super::writer::{Pending, WriteOp};
use crate::error::SqliteStoreError;

/// A usage record ready to insert, encoded on the caller's thread.
#[derive(Debug)]
pub(crate) struct UsageRow {
    id: String,
    ts_ms: i64,
    tenant: String,
    user: String,
    agent: Option<String>,
    tokens_in: i64,
    tokens_out: i64,
    cost_nano: i64,
    fallback: bool,
    estimated: bool,
    ok: bool,
    body: String,
}

impl UsageRow {
    fn encode(record: &UsageRecord) -> Result<Self, SqliteStoreError> {
        Ok(Self {
            id: record.id.to_string(),
            ts_ms: record.ts.as_millis(),
            tenant: record.tenant.to_string(),
            user: record.user.clone(),
            agent: record.agent.as_ref().map(ToString::to_string),
            tokens_in: to_i64("usage tokens_in", record.tokens_in)?,
            tokens_out: to_i64("usage tokens_out", record.tokens_out)?,
            cost_nano: to_i64("usage cost_nano_usd", record.cost_nano_usd)?,
            fallback: record.fallback,
            estimated: record.estimated,
            ok: record.outcome == UsageOutcome::Ok,
            body: encode_json(|| format!("usage record {}", record.id), record)?,
        })
    }
}

pub(crate) fn insert_usage(conn: &Connection, row: &UsageRow) -> Result<(), SqliteStoreError> {
    conn.prepare_cached(
        "INSERT INTO usage (id, ts_ms, tenant, user, agent, tokens_in, tokens_out, cost_nano,
                            fallback, estimated, ok, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            row.id,
            row.ts_ms,
            row.tenant,
            row.user,
            row.agent,
            row.tokens_in,
            row.tokens_out,
            row.cost_nano,
            row.fallback,
            row.estimated,
            row.ok,
            row.body
        ])
    })
    .map_err(SqliteStoreError::sql(format!(
        "cannot record usage {}",
        row.id
    )))?;
    Ok(())
}

/// `WHERE` for a query: time bounds always (so one plan per entity filter
/// combination, at most eight), entity filters only when set.
fn filter(query: &UsageQuery) -> (String, Vec<Value>) {
    let mut sql = String::from("WHERE ts_ms >= ?1 AND ts_ms < ?2");
    let mut values = vec![
        Value::Integer(query.since.map_or(i64::MIN, |t| t.as_millis())),
        Value::Integer(query.until.map_or(i64::MAX, |t| t.as_millis())),
    ];
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
    if let Some(user) = &query.user {
        eq("user", user.clone());
    }
    (sql, values)
}

fn list(conn: &Connection, query: &UsageQuery) -> Result<Vec<UsageRecord>, SqliteStoreError> {
    let context = "cannot list usage records";
    let (mut filter, mut values) = filter(query);
    if let Some(before) = query.before {
        // After the cursor record in the listing's order (call start, then
        // id, newest first); a cursor that names no record ends the listing.
        values.push(Value::Text(before.to_string()));
        let n = values.len();
        filter.push_str(&format!(
            " AND (ts_ms, id) < (SELECT ts_ms, id FROM usage WHERE id = ?{n})"
        ));
    }
    values.push(Value::Integer(
        i64::try_from(query.limit).unwrap_or(i64::MAX),
    ));
    let sql = format!(
        "SELECT id, body FROM usage {filter} ORDER BY ts_ms DESC, id DESC LIMIT ?{}",
        values.len()
    );
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(SqliteStoreError::sql(context))?;
    let mut rows = stmt
        .query(params_from_iter(values))
        .map_err(SqliteStoreError::sql(context))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(SqliteStoreError::sql(context))? {
        let id: String = row.get(0).map_err(SqliteStoreError::sql(context))?;
        let body: String = row.get(1).map_err(SqliteStoreError::sql(context))?;
        out.push(decode_json(|| format!("usage record {id}"), &body)?);
    }
    Ok(out)
}

fn totals(conn: &Connection, query: &UsageQuery) -> Result<UsageTotals, SqliteStoreError> {
    let context = "cannot sum usage records";
    let (filter, values) = filter(query);
    let sql = format!(
        "SELECT COUNT(*), COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0),
                COALESCE(SUM(cost_nano), 0), COALESCE(SUM(fallback), 0),
                COALESCE(SUM(estimated), 0), COALESCE(SUM(1 - ok), 0)
         FROM usage {filter}"
    );
    let sums: [i64; 7] = conn
        .prepare_cached(&sql)
        .and_then(|mut stmt| {
            stmt.query_row(params_from_iter(values), |r| {
                Ok([
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ])
            })
        })
        .map_err(SqliteStoreError::sql(context))?;
    // Every summed column is stored from a u64 and never negative.
    let [
        calls,
        tokens_in,
        tokens_out,
        cost,
        fallbacks,
        estimated,
        errors,
    ] = sums.map(|v| u64::try_from(v).unwrap_or(0));
    Ok(UsageTotals {
        calls,
        tokens_in,
        tokens_out,
        cost_nano_usd: cost,
        fallbacks,
        estimated_calls: estimated,
        errors,
    })
}

impl UsageStore for SqliteStore {
    fn record_usage(
        &self,
        record: UsageRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = UsageRow::encode(&record)
            .map(|row| move |reply| WriteOp::RecordUsage(Pending::new(row, reply)));
        self.submit(op)
    }

    fn list_usage(
        &self,
        query: UsageQuery,
    ) -> impl Future<Output = Result<Vec<UsageRecord>, StoreError>> + Send + 'static {
        self.read(move |conn| list(conn, &query))
    }

    fn usage_totals(
        &self,
        query: UsageQuery,
    ) -> impl Future<Output = Result<UsageTotals, StoreError>> + Send + 'static {
        self.read(move |conn| totals(conn, &query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_queries_use_the_agent_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut conn = super::super::schema::open_writer(&path).unwrap();
        super::super::schema::migrate(&mut conn, &path).unwrap();
        let query = UsageQuery {
            agent: Some(fabric_core::AgentId::new("a").unwrap()),
            ..UsageQuery::default()
        };
        let (filter, _) = filter(&query);
        let plan: Vec<String> = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM usage {filter}"
            ))
            .unwrap()
            .query_map(params![0, 1, "a"], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("usage_agent")),
            "{plan:?}"
        );
    }
}
