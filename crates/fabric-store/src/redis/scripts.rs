//! The Lua scripts: every operation that reads before it writes, or writes
//! more than one key, runs as one script, which Redis executes atomically (no
//! other command runs in between) and logs to the AOF as one `MULTI`/`EXEC`.
//!
//! Called with `EVALSHA` (40 bytes instead of the script's 2-3 KB: Redis
//! reads a client's commands 16 KB at a time, so smaller commands also mean
//! fewer event-loop turns per batch). Every new connection first loads all
//! scripts (`SCRIPT LOAD`, idempotent), so a Redis restart, which empties the
//! script cache, also breaks the connection and reloads them. Only a
//! `SCRIPT FLUSH` while connected can cause `NOSCRIPT`: the writes it hits
//! fail as retryable and the scripts are loaded again before the next batch.
//!
//! Every script takes the key prefix (`{prefix}:`) as `ARGV[1]` and derives
//! the keys from it, so key names are defined once (see `keys.rs`, mirrored in
//! `PRELUDE`). Scripts that derive keys are fine on standalone Redis; on
//! Redis Cluster they would need every key in one slot (a `{tag}` prefix).
//!
//! The scripts that change tasks, events or agents are *fenced*: `ARGV[2]` is
//! the leadership generation the store holds (see `leader.rs`), and they
//! refuse with a `DEPOSED` error, before writing anything, when
//! `{prefix}:leader_gen` has moved on: an orchestrator that lost the
//! leadership (paused, partitioned) cannot change anything once another took
//! over. Generation `0` (leadership never taken: tests, tools, one server
//! alone) is not checked.
//!
//! Errors a script raises on purpose start with `FABRIC ` (or `DEPOSED `) so
//! the client can tell them from Redis' own.

use std::sync::LazyLock;

use ::redis::Script;
use fabric_core::TaskStatus;

/// Every script, for `SCRIPT LOAD` on each new connection.
pub(crate) fn all() -> [&'static Script; 22] {
    [
        &CREATE_TASK,
        &WRITE_TASK,
        &DELETE_TASKS,
        &APPEND_EVENTS,
        &PUT_AGENT,
        &DELETE_AGENT,
        &PUT_SESSION,
        &LIST_TASKS,
        &COUNT_TASKS,
        &UNFINISHED_TASKS,
        &ACQUIRE_LEADERSHIP,
        &RENEW_LEADERSHIP,
        &RELEASE_LEADERSHIP,
        &super::usage::RECORD_USAGE,
        &super::usage::LIST_USAGE,
        &super::usage::USAGE_TOTALS,
        &super::budget::PUT_BUDGET,
        &super::budget::DELETE_BUDGET,
        &super::policy::RECORD_AUDIT,
        &super::policy::LIST_AUDIT,
        &DELETE_USER,
        &UPDATE_TOKEN,
    ]
}

/// The start of every fenced script: `P` (prefix) and `G` (generation) from
/// `ARGV[1]`, `ARGV[2]`, and the refusal when the leadership moved on. It
/// runs before the first write: a script's writes are not rolled back by a
/// later error.
pub(crate) const FENCE: &str = r#"
local P, G = ARGV[1], ARGV[2]
if G ~= '0' then
  local current = redis.call('GET', P .. 'leader_gen')
  if current ~= G then
    return redis.error_reply('DEPOSED ' .. G .. ' ' .. (current or 'none'))
  end
end
"#;

/// Shared by the task scripts: the terminal statuses (from
/// [`TaskStatus::is_terminal`], so the rule lives in one place) and the index keys.
static PRELUDE: LazyLock<String> = LazyLock::new(|| {
    let terminal = TaskStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(|s| format!("['{}'] = true", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"{FENCE}
local TERMINAL = {{ {terminal} }}
-- The eight sorted sets a task is listed in: every combination of
-- (tenant | *, status | *, agent | *). A list query with any filters reads
-- exactly one of them. Members are task ids with score 0, so they sort by
-- id, which for UUIDv7 is creation order.
local function index_keys(tenant, status, agent)
  local keys = {{}}
  for _, t in ipairs({{tenant, '*'}}) do
    for _, s in ipairs({{status, '*'}}) do
      for _, a in ipairs({{agent, '*'}}) do
        keys[#keys + 1] = P .. 'ix:' .. t .. ':' .. s .. ':' .. a
      end
    end
  end
  return keys
end
local function fail(message)
  return redis.error_reply('FABRIC ' .. message)
end
"#
    )
});

/// `ARGV`: prefix, generation, id, tenant, agent, status, has_key ('1'/'0'),
/// key, epoch, body. Returns `{1}` (created) or `{0, body}` (the task already
/// holding the key).
pub(crate) static CREATE_TASK: LazyLock<Script> = LazyLock::new(|| {
    script(format!(
        r#"{prelude}
local id, tenant, agent, status = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local has_key, key, epoch, body = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local task = P .. 'task:' .. id
if has_key == '1' then
  local holder = redis.call('HGET', P .. 'idem:' .. tenant, key)
  if holder then
    local existing = redis.call('HGET', P .. 'task:' .. holder, 'body')
    if existing then
      return {{0, existing}}
    end
    return fail('idempotency key ' .. key .. ' points at task ' .. holder .. ', which is not stored')
  end
end
if redis.call('EXISTS', task) == 1 then
  return fail('cannot create task ' .. id .. ': a task with this id already exists')
end
redis.call('HSET', task, 'body', body, 'status', status, 'epoch', epoch,
  'tenant', tenant, 'agent', agent)
if has_key == '1' then
  redis.call('HSET', task, 'idem', key)
  redis.call('HSET', P .. 'idem:' .. tenant, key, id)
end
for _, k in ipairs(index_keys(tenant, status, agent)) do
  redis.call('ZADD', k, 0, id)
end
if not TERMINAL[status] then
  redis.call('ZADD', P .. 'open', 0, id)
end
return {{1}}
"#,
        prelude = *PRELUDE
    ))
});

/// `ARGV`: prefix, generation, id, tenant, agent, status, has_key, key, epoch,
/// body, expected epoch ('' = unguarded). Returns 1 (applied) or 0 (rejected:
/// the task is missing, terminal, or has another epoch).
pub(crate) static WRITE_TASK: LazyLock<Script> = LazyLock::new(|| {
    script(format!(
        r#"{prelude}
local id, tenant, agent, status = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local has_key, key, epoch, body, expected = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local task = P .. 'task:' .. id
local cur = redis.call('HMGET', task, 'status', 'epoch', 'tenant', 'agent', 'idem')
local old_status, old_epoch, old_tenant, old_agent, old_key = cur[1], cur[2], cur[3], cur[4], cur[5]
-- The fence. Epochs are compared as decimal strings: exact for all of u64,
-- where Lua numbers (doubles) are not.
if not old_status or TERMINAL[old_status] then
  return 0
end
if expected ~= '' and old_epoch ~= expected then
  return 0
end
local new_key = false
if has_key == '1' then new_key = key end
-- Every check before the first write: a script's writes are not rolled back
-- by a later error.
if new_key and (new_key ~= old_key or tenant ~= old_tenant) then
  local holder = redis.call('HGET', P .. 'idem:' .. tenant, new_key)
  if holder and holder ~= id then
    return fail('cannot update task ' .. id .. ': its idempotency key is taken by another task')
  end
end
if old_key and (old_key ~= new_key or old_tenant ~= tenant) then
  redis.call('HDEL', P .. 'idem:' .. old_tenant, old_key)
end
if new_key then
  redis.call('HSET', P .. 'idem:' .. tenant, new_key, id)
  redis.call('HSET', task, 'idem', new_key)
elseif old_key then
  redis.call('HDEL', task, 'idem')
end
if old_tenant ~= tenant or old_status ~= status or old_agent ~= agent then
  for _, k in ipairs(index_keys(old_tenant, old_status, old_agent)) do
    redis.call('ZREM', k, id)
  end
  for _, k in ipairs(index_keys(tenant, status, agent)) do
    redis.call('ZADD', k, 0, id)
  end
end
if TERMINAL[status] then
  redis.call('ZREM', P .. 'open', id)
end
redis.call('HSET', task, 'body', body, 'status', status, 'epoch', epoch,
  'tenant', tenant, 'agent', agent)
return 1
"#,
        prelude = *PRELUDE
    ))
});

/// `ARGV`: prefix, generation, then (task id, seq, body) per event. All or
/// nothing: a seq already stored for its task fails the whole append. Raises
/// the stored highest seq.
/// `ARGV`: prefix, generation, task ids. Deletes each that is finished, with
/// its index entries, idempotency key and events; returns the ids deleted.
pub(crate) static DELETE_TASKS: LazyLock<Script> = LazyLock::new(|| {
    script(format!(
        r#"{prelude}
local deleted = {{}}
for i = 3, #ARGV do
  local id = ARGV[i]
  local task = P .. 'task:' .. id
  local cur = redis.call('HMGET', task, 'status', 'tenant', 'agent', 'idem')
  local status, tenant, agent, key = cur[1], cur[2], cur[3], cur[4]
  if status and TERMINAL[status] then
    for _, k in ipairs(index_keys(tenant, status, agent)) do
      redis.call('ZREM', k, id)
    end
    if key and redis.call('HGET', P .. 'idem:' .. tenant, key) == id then
      redis.call('HDEL', P .. 'idem:' .. tenant, key)
    end
    redis.call('DEL', task, P .. 'events:' .. id)
    deleted[#deleted + 1] = id
  end
end
return deleted
"#,
        prelude = *PRELUDE
    ))
});

pub(crate) static APPEND_EVENTS: LazyLock<Script> = LazyLock::new(|| {
    script(format!(
        r#"{FENCE}
local seen = {{}}
for i = 3, #ARGV, 3 do
  local key = P .. 'events:' .. ARGV[i]
  local seq = ARGV[i + 1]
  if seen[key .. ' ' .. seq] or redis.call('ZCOUNT', key, seq, seq) > 0 then
    return redis.error_reply('FABRIC cannot append event ' .. seq .. ': an event with this seq is already stored')
  end
  seen[key .. ' ' .. seq] = true
end
local last = tonumber(redis.call('GET', P .. 'event_seq') or '0')
local highest = last
for i = 3, #ARGV, 3 do
  local seq = tonumber(ARGV[i + 1])
  redis.call('ZADD', P .. 'events:' .. ARGV[i], seq, ARGV[i + 2])
  if seq > highest then highest = seq end
end
if highest > last then
  redis.call('SET', P .. 'event_seq', string.format('%d', highest))
end
return 1
"#
    ))
});

/// `ARGV`: prefix, generation, agent id, body. Inserts or replaces the record.
pub(crate) static PUT_AGENT: LazyLock<Script> = LazyLock::new(|| {
    script(format!(
        r#"{FENCE}
redis.call('HSET', P .. 'agents', ARGV[3], ARGV[4])
return 1
"#
    ))
});

/// `ARGV`: prefix, generation, agent id. Deletes the record and its sessions;
/// returns how many records were deleted (0 or 1).
pub(crate) static DELETE_AGENT: LazyLock<Script> = LazyLock::new(|| {
    script(format!(
        r#"{FENCE}
local deleted = redis.call('HDEL', P .. 'agents', ARGV[3])
redis.call('DEL', P .. 'sessions:' .. ARGV[3])
return deleted
"#
    ))
});

/// `ARGV`: prefix, user name. Deletes the user and every token issued to it
/// (tokens are found by the `user` of their JSON: a user holds a handful, and
/// no index means none to migrate); returns 1 if a user was deleted. Users
/// are not fenced: any orchestrator may manage them, like logins.
pub(crate) static DELETE_USER: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local P, name = ARGV[1], ARGV[2]
local tokens = redis.call('HGETALL', P .. 'tokens')
for i = 1, #tokens, 2 do
  local ok, token = pcall(cjson.decode, tokens[i + 1])
  if ok and type(token) == 'table' and token.user == name then
    redis.call('HDEL', P .. 'tokens', tokens[i])
  end
end
return redis.call('HDEL', P .. 'users', name)
"#
        .to_owned(),
    )
});

/// `ARGV`: prefix, token hash, body. Replaces the token only if it is still
/// stored (a revoked token stays revoked); returns 1 if it was.
pub(crate) static UPDATE_TOKEN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local key = ARGV[1] .. 'tokens'
if redis.call('HEXISTS', key, ARGV[2]) == 0 then
  return 0
end
redis.call('HSET', key, ARGV[2], ARGV[3])
return 1
"#
        .to_owned(),
    )
});

/// `ARGV`: prefix, generation, agent id, session number, body. Replaces the
/// session with that number (the sorted set's score).
pub(crate) static PUT_SESSION: LazyLock<Script> = LazyLock::new(|| {
    script(format!(
        r#"{FENCE}
local key = P .. 'sessions:' .. ARGV[3]
redis.call('ZREMRANGEBYSCORE', key, ARGV[4], ARGV[4])
redis.call('ZADD', key, ARGV[4], ARGV[5])
return 1
"#
    ))
});

/// `KEYS[1]`: the index to read. `ARGV`: prefix, upper bound (`+` or
/// `(id`), limit, priority (`''`: any), lower-cased text (`''`: any).
/// Returns `id, body` pairs, newest first. One script, so the bodies are
/// those of the same instant as the index (a snapshot).
pub(crate) static LIST_TASKS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local priority, needle = ARGV[4] or '', ARGV[5] or ''
if priority == '' and needle == '' then
  local ids = redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[2], '-', 'LIMIT', 0, ARGV[3])
  local out = {}
  for i, id in ipairs(ids) do
    out[2 * i - 1] = id
    out[2 * i] = redis.call('HGET', ARGV[1] .. 'task:' .. id, 'body')
  end
  return out
end
-- Priority and text have no index: read the index's tasks newest first, in
-- chunks, until a page passes (TaskQuery::matches_content, ASCII case ignored).
local function has(s)
  return type(s) == 'string' and string.find(string.lower(s), needle, 1, true) ~= nil
end
local function passes(task)
  if priority ~= '' and task.priority ~= priority then return false end
  if needle == '' then return true end
  if has(task.name) then return true end
  local input = task.input
  if type(input) ~= 'table' then return false end
  if has(input.prompt) then return true end
  if type(input.commands) == 'table' then
    for _, c in ipairs(input.commands) do
      if has(c) then return true end
    end
  end
  return false
end
local limit = tonumber(ARGV[3])
if limit < 0 then limit = math.huge end
local out, n, from = {}, 0, ARGV[2]
while n < limit do
  local ids = redis.call('ZREVRANGEBYLEX', KEYS[1], from, '-', 'LIMIT', 0, 500)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local body = redis.call('HGET', ARGV[1] .. 'task:' .. id, 'body')
    if body and passes(cjson.decode(body)) then
      n = n + 1
      out[2 * n - 1] = id
      out[2 * n] = body
      if n >= limit then break end
    end
  end
  from = '(' .. ids[#ids]
end
return out
"#
        .to_owned(),
    )
});

/// `ARGV`: prefix, tenant (or `*`), agent (or `*`), then every status. The
/// size of each status's index, as `status, count` pairs (none for 0).
pub(crate) static COUNT_TASKS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {}
for i = 4, #ARGV do
  local n = redis.call('ZCARD', ARGV[1] .. 'ix:' .. ARGV[2] .. ':' .. ARGV[i] .. ':' .. ARGV[3])
  if n > 0 then
    out[#out + 1] = ARGV[i]
    out[#out + 1] = n
  end
end
return out
"#
        .to_owned(),
    )
});

/// `ARGV`: prefix. Every unfinished task as `id, body` pairs, oldest first.
pub(crate) static UNFINISHED_TASKS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ids = redis.call('ZRANGE', ARGV[1] .. 'open', 0, -1)
local out = {}
for i, id in ipairs(ids) do
  out[2 * i - 1] = id
  out[2 * i] = redis.call('HGET', ARGV[1] .. 'task:' .. id, 'body')
end
return out
"#
        .to_owned(),
    )
});

/// `ARGV`: prefix, owner, ttl (ms). Takes the leadership when nobody holds it
/// (or this owner already does): bumps `leader_gen` and sets `leader` to
/// `"<generation>:<owner>"` with the TTL. Returns `{1, generation}`, or
/// `{0, holder value, remaining ms}` when another owner holds it.
pub(crate) static ACQUIRE_LEADERSHIP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local P, owner, ttl = ARGV[1], ARGV[2], ARGV[3]
local key = P .. 'leader'
local held = redis.call('GET', key)
if held and string.match(held, '^%d+:(.*)$') ~= owner then
  return {0, held, redis.call('PTTL', key)}
end
local generation = redis.call('INCR', P .. 'leader_gen')
redis.call('SET', key, string.format('%d', generation) .. ':' .. owner, 'PX', ttl)
return {1, generation}
"#
        .to_owned(),
    )
});

/// `ARGV`: prefix, owner, generation, ttl (ms). Extends the leadership only if
/// it is still `"<generation>:<owner>"` and `leader_gen` is still that
/// generation. Returns `{1}`, or `{0, holder value or false}`.
pub(crate) static RENEW_LEADERSHIP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local P, owner, generation, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = P .. 'leader'
local held = redis.call('GET', key)
if held == generation .. ':' .. owner and redis.call('GET', P .. 'leader_gen') == generation then
  redis.call('PEXPIRE', key, ttl)
  return {1}
end
return {0, held}
"#
        .to_owned(),
    )
});

/// `ARGV`: prefix, owner, generation. Gives the leadership up (a clean stop),
/// so a standby need not wait for the TTL. Returns 1 if it was ours.
pub(crate) static RELEASE_LEADERSHIP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local key = ARGV[1] .. 'leader'
if redis.call('GET', key) == ARGV[3] .. ':' .. ARGV[2] then
  redis.call('DEL', key)
  return 1
end
return 0
"#
        .to_owned(),
    )
});

pub(crate) fn script(text: String) -> Script {
    Script::new(&text)
}

/// Loads every script into Redis' script cache (idempotent).
pub(crate) async fn load_all(
    conn: &mut ::redis::aio::MultiplexedConnection,
) -> Result<(), ::redis::RedisError> {
    for script in all() {
        script.load_async(conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prelude_lists_exactly_the_terminal_statuses() {
        assert!(
            PRELUDE.contains(
                "{ ['completed'] = true, ['failed'] = true, ['canceled'] = true, ['timed_out'] = true }"
            ),
            "{}",
            *PRELUDE
        );
    }
}
