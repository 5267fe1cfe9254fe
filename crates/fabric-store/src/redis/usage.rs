//! The LLM usage ledger in Redis: [`UsageStore`] for [`RedisStore`].
//!
//! Records live whole in the `usage` hash; each is listed (score = call start
//! in ms) in the eight `uix:{tenant|*}:{agent|*}:{user|*}` sorted sets, so a
//! query with any entity filter reads exactly one index by score range.
//! Totals are summed by a script over that range: fine for the day-sized
//! windows budgets ask about, but a script blocks Redis while it runs, so
//! sums over millions of records should come from running counters instead
//! (the budgets issue's seam).

use std::future::Future;
use std::sync::LazyLock;

use ::redis::{Script, Value, cmd};
use fabric_core::{StoreError, UsageQuery, UsageRecord, UsageStore, UsageTotals};

use super::codec::{self, encode_json};
use super::error::RedisStoreError;
use super::scripts::script;
use super::{RedisStore, writer};

/// `ARGV`: prefix, id, score (ms), body, then the eight index keys. Fails
/// when a record with this id exists.
pub(crate) static RECORD_USAGE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local P, id, score, body = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HSETNX', P .. 'usage', id, body) == 0 then
  return redis.error_reply('FABRIC usage record ' .. id .. ' already exists')
end
for i = 5, #ARGV do
  redis.call('ZADD', ARGV[i], score, id)
end
return 1
"#
        .to_owned(),
    )
});

/// `KEYS[1]`: the index. `ARGV`: prefix, min score, max score, limit, and
/// the paging cursor (a record id, or empty). Returns `id, body` pairs,
/// newest first: by score (call start), then by id, both descending, as
/// `ZREVRANGEBYSCORE` orders them. After a cursor: the rest of its own
/// millisecond (lower ids at the same score), then the lower scores.
pub(crate) static LIST_USAGE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local limit, cursor = tonumber(ARGV[4]), ARGV[5]
local ids
if cursor == '' then
  ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[3], ARGV[2], 'LIMIT', 0, limit)
else
  local score = redis.call('ZSCORE', KEYS[1], cursor)
  if not score then return {} end
  ids = {}
  local same = redis.call('ZRANGEBYSCORE', KEYS[1], score, score)
  for i = #same, 1, -1 do
    if #ids >= limit then break end
    if same[i] < cursor then ids[#ids + 1] = same[i] end
  end
  if #ids < limit then
    local older = redis.call('ZREVRANGEBYSCORE', KEYS[1], '(' .. score, ARGV[2], 'LIMIT', 0, limit - #ids)
    for _, id in ipairs(older) do ids[#ids + 1] = id end
  end
end
local out = {}
for i, id in ipairs(ids) do
  out[2 * i - 1] = id
  out[2 * i] = redis.call('HGET', ARGV[1] .. 'usage', id)
end
return out
"#
        .to_owned(),
    )
});

/// `KEYS[1]`: the index. `ARGV`: prefix, min score, max score. Returns
/// `{calls, tokens_in, tokens_out, cost_nano_usd, fallbacks, estimated, errors}`.
/// Lua numbers are doubles: sums are exact up to 2^53.
pub(crate) static USAGE_TOTALS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], ARGV[3])
local t = {0, 0, 0, 0, 0, 0, 0}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', ARGV[1] .. 'usage', id)
  if body then
    local r = cjson.decode(body)
    t[1] = t[1] + 1
    t[2] = t[2] + r.tokens_in
    t[3] = t[3] + r.tokens_out
    t[4] = t[4] + r.cost_nano_usd
    if r.fallback then t[5] = t[5] + 1 end
    if r.estimated then t[6] = t[6] + 1 end
    if r.outcome ~= 'ok' then t[7] = t[7] + 1 end
  end
end
return t
"#
        .to_owned(),
    )
});

/// `[min, max]` score bounds of a query (`until` is exclusive).
fn bounds(query: &UsageQuery) -> (String, String) {
    let min = query
        .since
        .map_or_else(|| "-inf".to_owned(), |t| t.as_millis().to_string());
    let max = query
        .until
        .map_or_else(|| "+inf".to_owned(), |t| format!("({}", t.as_millis()));
    (min, max)
}

impl RedisStore {
    /// The one index that serves `query`'s entity filters.
    fn usage_index(&self, query: &UsageQuery) -> String {
        self.inner.keys.usage_index(
            query.tenant.as_ref().map(|t| t.as_str()),
            query.agent.as_ref().map(|a| a.as_str()),
            query.user.as_deref(),
        )
    }
}

impl UsageStore for RedisStore {
    fn record_usage(
        &self,
        record: UsageRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = encode_json(|| format!("usage record {}", record.id), &record).map(|body| {
            let mut c = self.eval(&RECORD_USAGE);
            c.arg(record.id.to_string())
                .arg(record.ts.as_millis())
                .arg(body);
            let keys = &self.inner.keys;
            let (tenant, agent) = (record.tenant.as_str(), record.agent.as_ref());
            for t in [Some(tenant), None] {
                for a in [agent.map(|a| a.as_str()), None] {
                    for u in [Some(record.user.as_str()), None] {
                        c.arg(keys.usage_index(t, a, u));
                    }
                }
            }
            // A record without an agent is only in the agent-wildcard indexes
            // (twice, harmlessly: ZADD of the same member is idempotent).
            writer::op(
                Some(c),
                format!("cannot record usage {}", record.id),
                |_: Value| Ok(()),
            )
        });
        self.submit(op)
    }

    fn list_usage(
        &self,
        query: UsageQuery,
    ) -> impl Future<Output = Result<Vec<UsageRecord>, StoreError>> + Send + 'static {
        let (min, max) = bounds(&query);
        let mut c = cmd("EVALSHA");
        c.arg(LIST_USAGE.get_hash())
            .arg(1)
            .arg(self.usage_index(&query))
            .arg(&self.inner.keys.prefix)
            .arg(min)
            .arg(max)
            .arg(i64::try_from(query.limit).unwrap_or(i64::MAX))
            .arg(query.before.map(|b| b.to_string()).unwrap_or_default());
        let read = self.read(c, "cannot list usage records".to_owned(), |value| {
            codec::json_pairs("usage record", value)
        });
        async move {
            if query.limit == 0 {
                return Ok(Vec::new());
            }
            read.await
        }
    }

    fn usage_totals(
        &self,
        query: UsageQuery,
    ) -> impl Future<Output = Result<UsageTotals, StoreError>> + Send + 'static {
        let (min, max) = bounds(&query);
        let mut c = cmd("EVALSHA");
        c.arg(USAGE_TOTALS.get_hash())
            .arg(1)
            .arg(self.usage_index(&query))
            .arg(&self.inner.keys.prefix)
            .arg(min)
            .arg(max);
        self.read(c, "cannot sum usage records".to_owned(), |value| {
            let what = "usage totals";
            let items = codec::items(what, value)?;
            let sums = items
                .iter()
                .map(|v| codec::int(what, v).map(|n| u64::try_from(n).unwrap_or(0)))
                .collect::<Result<Vec<_>, _>>()?;
            match sums[..] {
                [
                    calls,
                    tokens_in,
                    tokens_out,
                    cost,
                    fallbacks,
                    estimated,
                    errors,
                ] => Ok(UsageTotals {
                    calls,
                    tokens_in,
                    tokens_out,
                    cost_nano_usd: cost,
                    fallbacks,
                    estimated_calls: estimated,
                    errors,
                }),
                _ => Err(RedisStoreError::Corrupt {
                    what: what.to_owned(),
                    detail: format!("expected 7 sums, got {}", sums.len()),
                }),
            }
        })
    }
}
