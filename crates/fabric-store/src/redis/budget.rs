//! Budgets in Redis: the `budgets` hash (entity → record JSON), written by
//! fenced scripts like the agents; [`BudgetStore`] for [`RedisStore`].

use std::future::Future;
use std::sync::LazyLock;

use ::redis::{Script, cmd};
use fabric_core::StoreError;
use fabric_core::budget::{BudgetEntity, BudgetRecord, BudgetStore};

use super::codec::{self, encode_json};
use super::scripts::{FENCE, script};
use super::{RedisStore, flag, ignore, writer};

/// `ARGV`: prefix, generation, entity, body.
pub(crate) static PUT_BUDGET: LazyLock<Script> = LazyLock::new(|| {
    script(format!(
        r#"{FENCE}
redis.call('HSET', P .. 'budgets', ARGV[3], ARGV[4])
return 1
"#
    ))
});

/// `ARGV`: prefix, generation, entity. Returns 1 if a record was deleted.
pub(crate) static DELETE_BUDGET: LazyLock<Script> = LazyLock::new(|| {
    script(format!(
        r#"{FENCE}
return redis.call('HDEL', P .. 'budgets', ARGV[3])
"#
    ))
});

impl BudgetStore for RedisStore {
    fn put_budget(
        &self,
        record: BudgetRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let entity = record.entity.to_string();
        let op = encode_json(|| format!("budget {entity}"), &record).map(|body| {
            let mut c = self.eval_fenced(&PUT_BUDGET);
            c.arg(&entity).arg(body);
            writer::op(
                Some(c),
                format!("cannot store the budget of {entity}"),
                ignore,
            )
        });
        self.submit(op)
    }

    fn get_budget(
        &self,
        entity: BudgetEntity,
    ) -> impl Future<Output = Result<Option<BudgetRecord>, StoreError>> + Send + 'static {
        let c = cmd("HGET")
            .arg(self.inner.keys.budgets())
            .arg(entity.to_string())
            .clone();
        self.read(
            c,
            format!("cannot read the budget of {entity}"),
            move |value| codec::optional_json(format!("budget {entity}"), value),
        )
    }

    fn list_budgets(
        &self,
    ) -> impl Future<Output = Result<Vec<BudgetRecord>, StoreError>> + Send + 'static {
        let c = cmd("HGETALL").arg(self.inner.keys.budgets()).clone();
        self.read(c, "cannot list budgets".to_owned(), |value| {
            let mut records: Vec<BudgetRecord> = codec::json_pairs("budget", value)?;
            // A hash has no order; the port promises entity order.
            records.sort_by_key(|r| r.entity.to_string());
            Ok(records)
        })
    }

    fn delete_budget(
        &self,
        entity: BudgetEntity,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let mut c = self.eval_fenced(&DELETE_BUDGET);
        c.arg(entity.to_string());
        self.submit(Ok(writer::op(
            Some(c),
            format!("cannot delete the budget of {entity}"),
            flag("deleting a budget"),
        )))
    }
}
