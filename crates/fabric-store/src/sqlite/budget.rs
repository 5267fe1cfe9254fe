//! Budgets in SQLite: one row per entity, the record as JSON; [`BudgetStore`]
//! for [`SqliteStore`].

use std::future::Future;

use fabric_core::StoreError;
use fabric_core::budget::{BudgetEntity, BudgetRecord, BudgetStore};
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use super::rows::{decode_json, encode_json};
use super::writer::{Pending, WriteOp};
use crate::error::SqliteStoreError;

pub(crate) fn put_budget(
    conn: &Connection,
    row: &(String, String),
) -> Result<(), SqliteStoreError> {
    conn.prepare_cached(
        "INSERT INTO budgets (entity, body) VALUES (?1, ?2)
         ON CONFLICT (entity) DO UPDATE SET body = excluded.body",
    )
    .and_then(|mut stmt| stmt.execute(params![row.0, row.1]))
    .map_err(SqliteStoreError::sql(format!(
        "cannot store the budget of {}",
        row.0
    )))?;
    Ok(())
}

pub(crate) fn delete_budget(conn: &Connection, entity: &str) -> Result<bool, SqliteStoreError> {
    let deleted = conn
        .prepare_cached("DELETE FROM budgets WHERE entity = ?1")
        .and_then(|mut stmt| stmt.execute(params![entity]))
        .map_err(SqliteStoreError::sql(format!(
            "cannot delete the budget of {entity}"
        )))?;
    Ok(deleted > 0)
}

fn get(conn: &Connection, entity: &str) -> Result<Option<BudgetRecord>, SqliteStoreError> {
    let context = format!("cannot read the budget of {entity}");
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM budgets WHERE entity = ?1")
        .and_then(|mut stmt| stmt.query_row(params![entity], |r| r.get(0)).optional())
        .map_err(SqliteStoreError::sql(context))?;
    body.map(|b| decode_json(|| format!("budget {entity}"), &b))
        .transpose()
}

fn list(conn: &Connection) -> Result<Vec<BudgetRecord>, SqliteStoreError> {
    let context = "cannot list budgets";
    let mut stmt = conn
        .prepare_cached("SELECT entity, body FROM budgets ORDER BY entity")
        .map_err(SqliteStoreError::sql(context))?;
    let mut rows = stmt.query([]).map_err(SqliteStoreError::sql(context))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(SqliteStoreError::sql(context))? {
        let entity: String = row.get(0).map_err(SqliteStoreError::sql(context))?;
        let body: String = row.get(1).map_err(SqliteStoreError::sql(context))?;
        out.push(decode_json(|| format!("budget {entity}"), &body)?);
    }
    Ok(out)
}

impl BudgetStore for SqliteStore {
    fn put_budget(
        &self,
        record: BudgetRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let entity = record.entity.to_string();
        let op = encode_json(|| format!("budget {entity}"), &record)
            .map(|body| move |reply| WriteOp::PutBudget(Pending::new((entity, body), reply)));
        self.submit(op)
    }

    fn get_budget(
        &self,
        entity: BudgetEntity,
    ) -> impl Future<Output = Result<Option<BudgetRecord>, StoreError>> + Send + 'static {
        self.read(move |conn| get(conn, &entity.to_string()))
    }

    fn list_budgets(
        &self,
    ) -> impl Future<Output = Result<Vec<BudgetRecord>, StoreError>> + Send + 'static {
        self.read(list)
    }

    fn delete_budget(
        &self,
        entity: BudgetEntity,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let op: Result<_, SqliteStoreError> =
            Ok(move |reply| WriteOp::DeleteBudget(Pending::new(entity.to_string(), reply)));
        self.submit(op)
    }
}
