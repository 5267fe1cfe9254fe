//! The Redis store: one writer task pipelining writes in call order on one
//! connection, Lua scripts for everything that must be atomic, reads on a
//! second shared connection.
//!
//! # What it requires of Redis
//!
//! "Acknowledged = durable" holds only with `appendonly yes` and
//! `appendfsync always`: Redis then fsyncs the AOF before it answers (once per
//! event-loop turn, so a pipeline of writes shares one fsync), and a restart
//! replays it. Our keys carry no TTL, so any `maxmemory-policy` but the
//! `allkeys-*` ones keeps them. [`RedisStore::connect`] reads these settings
//! (`CONFIG GET`) and logs a warning when they fall short, or when `CONFIG`
//! is disabled and it cannot tell ([`RedisStore::durability`]).
//! Replication is asynchronous: a failover to a replica can lose
//! acknowledged writes, so run one primary with its AOF on a local disk.
//!
//! # Several orchestrators on one prefix
//!
//! Only one may be active: [`RedisStore::acquire_leadership`] takes the
//! prefix's leadership with a TTL and a new *generation*, which every
//! task, event and agent write of this store then carries; the scripts refuse
//! it once another orchestrator has taken over (see `leader.rs`).

mod budget;
mod codec;
mod conn;
mod error;
mod keys;
mod leader;
mod nodes;
mod policy;
mod scripts;
#[cfg(feature = "conformance")]
pub mod testing;
mod usage;
mod writer;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ::redis::{Cmd, Script, Value, cmd};
use fabric_core::agent::{AgentRecord, AgentSession};
use fabric_core::{
    AgentId, AgentStore, ApiToken, AuthStore, CreateOutcome, StoreError, Task, TaskEvent, TaskId,
    TaskQuery, TaskStatus, TaskStore, TaskWrite, Tenant, TenantId, User, WriteOutcome,
};
use tokio::sync::{mpsc, oneshot};

use self::codec::{TaskFields, encode_json, exact_score};
use self::conn::{Endpoint, ReadLink};
use self::keys::Keys;
use self::writer::{Msg, WriteOp};
use crate::StoreStats;

pub use self::conn::{DEFAULT_PREFIX, Durability, RedisConfig, redact_url};
pub use self::error::RedisStoreError;
pub use self::leader::{Acquire, Renewal};

/// State shared by the handles and the writer task.
pub(crate) struct Shared {
    closed: AtomicBool,
    batches: AtomicU64,
    ops: AtomicU64,
    /// The key prefix as configured, for messages.
    prefix: String,
    /// The leadership generation the fenced scripts carry; 0 until
    /// [`RedisStore::acquire_leadership`] succeeds (unchecked).
    generation: AtomicU64,
    /// Turns true when a fenced write was refused or a renewal found the
    /// leadership gone: this store no longer leads.
    deposed: tokio::sync::watch::Sender<bool>,
}

/// A durable store in Redis: the backend of the Docker and scale-out shapes.
///
/// A cheap, cloneable handle; every clone feeds the same writer task. Writes
/// are queued when the method is called and sent in call order on one
/// connection, whatever is queued as one `MULTI`/`EXEC`; a write is
/// acknowledged once Redis has answered it (with `appendfsync always`: once
/// it is in the fsynced AOF). Reads share another
/// connection. Both reconnect after Redis restarts: writes in flight at that
/// moment fail with [`StoreError::Unavailable`], later ones succeed.
///
/// Must be created and used inside a Tokio runtime (the writer is a task).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Arc<Endpoint>,
    keys: Keys,
    // Unbounded for the same reason as SQLite's queue: a write is queued in
    // the method body, which must not block or await.
    tx: mpsc::UnboundedSender<Msg>,
    reads: ReadLink,
    shared: Arc<Shared>,
    durability: Durability,
    /// Who took the leadership and for how long (see `leader.rs`).
    claim: std::sync::Mutex<Option<leader::Claim>>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("addr", &self.inner.endpoint.addr)
            .field("prefix", &self.inner.keys.prefix)
            .field("stats", &self.stats())
            .finish()
    }
}

impl RedisStore {
    /// Connects (two connections: writes and reads), checks the durability
    /// settings and starts the writer task. Fails with
    /// [`StoreError::Unavailable`] when Redis cannot be reached.
    pub async fn connect(config: RedisConfig) -> Result<RedisStore, StoreError> {
        Ok(Self::connect_inner(config).await?)
    }

    async fn connect_inner(config: RedisConfig) -> Result<RedisStore, RedisStoreError> {
        validate_prefix(&config.prefix)?;
        let endpoint = Arc::new(Endpoint::parse(&config)?);
        let write_conn = endpoint.connect().await?;
        let mut read_conn = endpoint.connect().await?;
        let durability = conn::check_durability(&endpoint, &mut read_conn).await;
        match &durability {
            Durability::Durable => {}
            Durability::Weak(why) => tracing::warn!(
                addr = %endpoint.addr,
                "Redis may lose acknowledged writes ({why}); set `appendonly yes`, `appendfsync always` and a `maxmemory-policy` other than allkeys-*"
            ),
            Durability::Unknown(why) => tracing::warn!(
                addr = %endpoint.addr,
                "cannot check Redis' persistence settings ({why}); make sure it runs with `appendonly yes` and `appendfsync always`"
            ),
        }
        let shared = Arc::new(Shared {
            closed: AtomicBool::new(false),
            batches: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            prefix: config.prefix.clone(),
            generation: AtomicU64::new(0),
            deposed: tokio::sync::watch::Sender::new(false),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer::run(
            Arc::clone(&endpoint),
            Some(write_conn),
            rx,
            Arc::clone(&shared),
        ));
        tracing::info!(addr = %endpoint.addr, prefix = %config.prefix, "connected to the Redis store");
        Ok(RedisStore {
            inner: Arc::new(Inner {
                reads: ReadLink::new(Arc::clone(&endpoint), read_conn),
                keys: Keys::new(&config.prefix),
                endpoint,
                tx,
                shared,
                durability,
                claim: std::sync::Mutex::new(None),
            }),
        })
    }

    /// What Redis' persistence settings promised at connect time.
    pub fn durability(&self) -> &Durability {
        &self.inner.durability
    }

    /// `host:port` of the server (never the URL, which may hold a password).
    pub fn addr(&self) -> &str {
        &self.inner.endpoint.addr
    }

    /// What the writer has sent so far: `transactions` counts pipelines.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            transactions: self.inner.shared.batches.load(Ordering::Relaxed),
            ops: self.inner.shared.ops.load(Ordering::Relaxed),
        }
    }

    /// Sends every write submitted before this call, waits for the answers and
    /// stops the writer. Affects every clone: later reads and writes fail with
    /// [`StoreError::Unavailable`]. Calling it again is a no-op.
    pub async fn close(&self) {
        self.inner.shared.closed.store(true, Ordering::Release);
        let (ack, done) = oneshot::channel();
        if self.inner.tx.send(Msg::Close(ack)).is_ok() {
            let _ = done.await;
        }
    }

    fn is_closed(&self) -> bool {
        self.inner.shared.closed.load(Ordering::Acquire)
    }

    /// Queues a write now (eager submission) and returns a future of its
    /// result. Dropping the future leaves the write in the queue.
    fn submit<T: Send + 'static>(
        &self,
        op: Result<(WriteOp, oneshot::Receiver<Result<T, StoreError>>), RedisStoreError>,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        let shared = Arc::clone(&self.inner.shared);
        let sent = match op {
            Err(e) => Err(StoreError::from(e)),
            Ok(_) if self.is_closed() => Err(StoreError::from(RedisStoreError::Closed)),
            Ok((op, rx)) => self
                .inner
                .tx
                .send(Msg::Op(op))
                .map(|()| rx)
                .map_err(|_| writer_gone(&shared)),
        };
        async move {
            let rx = sent?;
            rx.await.unwrap_or_else(|_| Err(writer_gone(&shared)))
        }
    }

    /// Runs one read command on the shared read connection.
    fn read<T: Send + 'static>(
        &self,
        cmd: Cmd,
        context: String,
        decode: impl FnOnce(Value) -> Result<T, RedisStoreError> + Send + 'static,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            if inner.shared.closed.load(Ordering::Acquire) {
                return Err(RedisStoreError::Closed.into());
            }
            let value = inner.reads.query(&cmd, || context.clone()).await?;
            Ok(decode(value)?)
        }
    }

    /// `EVALSHA sha 0 prefix ...`: the scripts take the prefix as `ARGV[1]`.
    fn eval(&self, script: &Script) -> Cmd {
        let mut c = cmd("EVALSHA");
        c.arg(script.get_hash()).arg(0).arg(&self.inner.keys.prefix);
        c
    }

    /// `EVALSHA sha 0 prefix generation ...` for the fenced scripts. The
    /// generation is read now, when the write is submitted.
    fn eval_fenced(&self, script: &Script) -> Cmd {
        let mut c = self.eval(script);
        c.arg(self.inner.shared.generation.load(Ordering::Acquire));
        c
    }
}

fn validate_prefix(prefix: &str) -> Result<(), RedisStoreError> {
    let reason = if prefix.is_empty() {
        "it is empty"
    } else if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "it contains whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(RedisStoreError::InvalidPrefix {
        prefix: prefix.to_owned(),
        reason,
    })
}

/// The writer is gone: closed on purpose, or it died.
fn writer_gone(shared: &Shared) -> StoreError {
    if shared.closed.load(Ordering::Acquire) {
        RedisStoreError::Closed.into()
    } else {
        RedisStoreError::WriterGone.into()
    }
}

/// The `1`/`0` answers of the scripts and hash commands, as a bool.
fn flag(what: &'static str) -> impl FnOnce(Value) -> Result<bool, RedisStoreError> {
    move |value| Ok(codec::int(what, &value)? != 0)
}

fn ignore(_: Value) -> Result<(), RedisStoreError> {
    Ok(())
}

/// Records kept whole in a hash, one field each (MCP servers, nodes, join tokens).
impl RedisStore {
    /// `HSET hash field <json of record>` (`what` names the record in errors).
    pub(super) fn hset_json<T: serde::Serialize + 'static>(
        &self,
        hash: String,
        field: String,
        what: String,
        record: T,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = codec::encode_json(|| what.clone(), &record).map(|body| {
            let c = cmd("HSET").arg(hash).arg(field).arg(body).clone();
            writer::op(Some(c), format!("cannot store {what}"), ignore)
        });
        self.submit(op)
    }

    /// `HDEL hash field`: whether there was one.
    pub(super) fn hdel(
        &self,
        hash: String,
        field: String,
        what: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let c = cmd("HDEL").arg(hash).arg(field).clone();
        self.submit(Ok(writer::op(
            Some(c),
            format!("cannot delete {what}"),
            flag("deleting a hash field"),
        )))
    }
}

impl TaskStore for RedisStore {
    fn create_task(
        &self,
        task: Task,
    ) -> impl Future<Output = Result<CreateOutcome, StoreError>> + Send + 'static {
        let op = TaskFields::encode(&task).map(|fields| {
            let mut c = self.eval_fenced(&scripts::CREATE_TASK);
            fields.args(&mut c);
            let context = format!("creating task {}", fields.id);
            writer::op(Some(c), context, move |value| {
                let what = format!("creating task {}", task.id);
                let mut answer = codec::items(&what, value)?.into_iter();
                match (answer.next(), answer.next()) {
                    (Some(Value::Int(1)), None) => Ok(CreateOutcome::Created(task)),
                    (Some(Value::Int(0)), Some(body)) => {
                        let key = task.idempotency_key.unwrap_or_default();
                        codec::optional_json(format!("task with idempotency key {key:?}"), body)?
                            .map(CreateOutcome::Existing)
                            .ok_or_else(|| codec::unexpected(what, &Value::Nil))
                    }
                    (first, _) => Err(codec::unexpected(what, &first.unwrap_or(Value::Nil))),
                }
            })
        });
        self.submit(op)
    }

    fn write_task(
        &self,
        write: TaskWrite,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send + 'static {
        let op = TaskFields::encode(&write.task).map(|fields| {
            let mut c = self.eval_fenced(&scripts::WRITE_TASK);
            fields.args(&mut c);
            c.arg(
                write
                    .expected_epoch
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
            );
            let context = format!("writing task {}", fields.id);
            writer::op(Some(c), context, |value| {
                Ok(if flag("a task write")(value)? {
                    WriteOutcome::Applied
                } else {
                    WriteOutcome::Rejected
                })
            })
        });
        self.submit(op)
    }

    fn get_task(
        &self,
        id: TaskId,
    ) -> impl Future<Output = Result<Option<Task>, StoreError>> + Send + 'static {
        let c = cmd("HGET")
            .arg(self.inner.keys.task(id))
            .arg("body")
            .clone();
        self.read(c, format!("cannot read task {id}"), move |value| {
            codec::optional_json(format!("task {id}"), value)
        })
    }

    fn list_tasks(
        &self,
        query: TaskQuery,
    ) -> impl Future<Output = Result<Vec<Task>, StoreError>> + Send + 'static {
        let max = query
            .before
            .map_or_else(|| "+".to_owned(), |before| format!("({before}"));
        let mut c = cmd("EVALSHA");
        c.arg(scripts::LIST_TASKS.get_hash())
            .arg(1)
            .arg(self.inner.keys.index(&query))
            .arg(&self.inner.keys.prefix)
            .arg(max)
            // Redis reads a negative count as "no limit".
            .arg(i64::try_from(query.limit).unwrap_or(-1))
            .arg(query.priority.map_or("", |p| p.as_str()))
            .arg(
                query
                    .text
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_default(),
            );
        let read = self.read(c, "cannot list tasks".to_owned(), |value| {
            codec::json_pairs("task", value)
        });
        async move {
            if query.limit == 0 {
                return Ok(Vec::new());
            }
            read.await
        }
    }

    fn count_tasks(
        &self,
        tenant: Option<TenantId>,
        agent: Option<AgentId>,
    ) -> impl Future<Output = Result<std::collections::BTreeMap<TaskStatus, u64>, StoreError>>
    + Send
    + 'static {
        let mut c = cmd("EVALSHA");
        c.arg(scripts::COUNT_TASKS.get_hash())
            .arg(0)
            .arg(&self.inner.keys.prefix)
            .arg(tenant.as_ref().map_or("*", |t| t.as_str()))
            .arg(agent.as_ref().map_or("*", |a| a.as_str()));
        for status in TaskStatus::ALL {
            c.arg(status.as_str());
        }
        self.read(c, "cannot count tasks".to_owned(), |value| {
            let items = codec::items("task counts", value)?;
            items
                .chunks(2)
                .map(|pair| {
                    let [status, n] = pair else {
                        return Err(codec::unexpected("a status and its count", &Value::Nil));
                    };
                    let name = codec::bytes("a task status", status.clone())?.unwrap_or_default();
                    let status = String::from_utf8_lossy(&name)
                        .parse::<TaskStatus>()
                        .map_err(|_| codec::unexpected("a task status", status))?;
                    let n = u64::try_from(codec::int("a task count", n)?).unwrap_or(0);
                    Ok((status, n))
                })
                .collect()
        })
    }

    fn unfinished_tasks(
        &self,
    ) -> impl Future<Output = Result<Vec<Task>, StoreError>> + Send + 'static {
        let c = self.eval(&scripts::UNFINISHED_TASKS);
        self.read(c, "cannot list unfinished tasks".to_owned(), |value| {
            codec::json_pairs("task", value)
        })
    }

    fn delete_tasks(
        &self,
        ids: Vec<TaskId>,
    ) -> impl Future<Output = Result<Vec<TaskId>, StoreError>> + Send + 'static {
        let op = if ids.is_empty() {
            writer::op(None, "deleting no tasks".to_owned(), |_| Ok(Vec::new()))
        } else {
            let mut c = self.eval_fenced(&scripts::DELETE_TASKS);
            for id in &ids {
                c.arg(id.to_string());
            }
            writer::op(
                Some(c),
                format!("cannot delete {} task(s)", ids.len()),
                |value| {
                    codec::items("deleted tasks", value)?
                        .iter()
                        .map(|item| {
                            let text = match item {
                                Value::BulkString(bytes) => {
                                    String::from_utf8_lossy(bytes).into_owned()
                                }
                                other => return Err(codec::unexpected("a deleted task id", other)),
                            };
                            text.parse::<TaskId>()
                                .map_err(|_| codec::unexpected("a deleted task id", item))
                        })
                        .collect()
                },
            )
        };
        self.submit(Ok(op))
    }

    fn append_events(
        &self,
        events: Vec<TaskEvent>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = (|| {
            if events.is_empty() {
                // A barrier (the server's `store_barrier`): no command, answered
                // once every write queued before it is.
                return Ok(writer::op(None, "a store barrier".to_owned(), ignore));
            }
            let mut c = self.eval_fenced(&scripts::APPEND_EVENTS);
            for event in &events {
                exact_score("event seq", event.seq)?;
                c.arg(event.task_id.to_string())
                    .arg(event.seq)
                    .arg(encode_json(|| format!("event {}", event.seq), event)?);
            }
            let context = format!("appending {} events", events.len());
            Ok(writer::op(Some(c), context, ignore))
        })();
        self.submit(op)
    }

    fn task_events(
        &self,
        id: TaskId,
        after_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<TaskEvent>, StoreError>> + Send + 'static {
        let c = cmd("ZRANGEBYSCORE")
            .arg(self.inner.keys.events(id))
            .arg(format!("({after_seq}"))
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(i64::try_from(limit).unwrap_or(-1))
            .clone();
        let read = self.read(c, format!("cannot read events of task {id}"), |value| {
            codec::json_list("event", value)
        });
        async move {
            // No stored seq is above the exact-score limit, so nothing comes after.
            if limit == 0 || after_seq >= codec::MAX_EXACT_SCORE {
                return Ok(Vec::new());
            }
            read.await
        }
    }

    fn last_event_seq(&self) -> impl Future<Output = Result<u64, StoreError>> + Send + 'static {
        let c = cmd("GET").arg(self.inner.keys.event_seq()).clone();
        self.read(c, "cannot read the last event seq".to_owned(), |value| {
            let Some(b) = codec::bytes("the last event seq", value)? else {
                return Ok(0);
            };
            String::from_utf8_lossy(&b)
                .parse()
                .map_err(|e: std::num::ParseIntError| RedisStoreError::Corrupt {
                    what: "the stored last event seq".to_owned(),
                    detail: e.to_string(),
                })
        })
    }
}

/// A user or tenant: a JSON record in one hash, under its name.
struct Named {
    /// The hash.
    key: String,
    /// Its field: the record's name.
    name: String,
    /// `user "alice"`, `tenant acme`: for messages.
    what: String,
    body: Result<String, RedisStoreError>,
}

impl Named {
    fn user(store: &RedisStore, user: &User) -> Named {
        let what = format!("user {:?}", user.name);
        Named {
            key: store.inner.keys.users(),
            name: user.name.clone(),
            body: encode_json(|| what.clone(), user),
            what,
        }
    }

    fn tenant(store: &RedisStore, tenant: &Tenant) -> Named {
        let what = format!("tenant {}", tenant.name);
        Named {
            key: store.inner.keys.tenants(),
            name: tenant.name.to_string(),
            body: encode_json(|| what.clone(), tenant),
            what,
        }
    }
}

impl RedisStore {
    /// Stores a [`Named`] record: only if its name is free (`HSETNX`, `true`
    /// if it was), or replacing any (`HSET`, always `true`).
    fn put_named(
        &self,
        record: Named,
        only_new: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let Named {
            key,
            name,
            what,
            body,
        } = record;
        let op = body.map(|body| {
            let command = if only_new { "HSETNX" } else { "HSET" };
            let c = cmd(command).arg(key).arg(name).arg(body).clone();
            let decode = move |value: Value| {
                if only_new {
                    Ok(codec::int("storing a record", &value)? != 0)
                } else {
                    Ok(true)
                }
            };
            writer::op(Some(c), format!("cannot store {what}"), decode)
        });
        self.submit(op)
    }

    /// Every record of a hash of [`Named`] ones, ordered by `order`.
    fn list_named<T, K>(
        &self,
        key: String,
        kind: &'static str,
        order: fn(&T) -> K,
    ) -> impl Future<Output = Result<Vec<T>, StoreError>> + Send + 'static
    where
        T: serde::de::DeserializeOwned + Send + 'static,
        K: Ord + 'static,
    {
        let c = cmd("HGETALL").arg(key).clone();
        self.read(c, format!("cannot list {kind}s"), move |value| {
            let mut records: Vec<T> = codec::json_pairs(kind, value)?;
            // A hash has no order; the port promises name order.
            records.sort_by_key(order);
            Ok(records)
        })
    }
}

impl AuthStore for RedisStore {
    fn create_user(
        &self,
        user: User,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        self.put_named(Named::user(self, &user), true)
    }

    fn get_user(
        &self,
        name: String,
    ) -> impl Future<Output = Result<Option<User>, StoreError>> + Send + 'static {
        let c = cmd("HGET").arg(self.inner.keys.users()).arg(&name).clone();
        self.read(c, format!("cannot read user {name:?}"), move |value| {
            codec::optional_json(format!("user {name:?}"), value)
        })
    }

    fn count_users(&self) -> impl Future<Output = Result<u64, StoreError>> + Send + 'static {
        let c = cmd("HLEN").arg(self.inner.keys.users()).clone();
        self.read(c, "cannot count users".to_owned(), |value| {
            // HLEN is never negative.
            Ok(u64::try_from(codec::int("counting users", &value)?).unwrap_or(0))
        })
    }

    fn put_user(
        &self,
        user: User,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let write = self.put_named(Named::user(self, &user), false);
        async move { write.await.map(drop) }
    }

    fn list_users(&self) -> impl Future<Output = Result<Vec<User>, StoreError>> + Send + 'static {
        self.list_named(self.inner.keys.users(), "user", |u: &User| u.name.clone())
    }

    fn delete_user(
        &self,
        name: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let mut c = self.eval(&scripts::DELETE_USER);
        c.arg(&name);
        self.submit(Ok(writer::op(
            Some(c),
            format!("cannot delete user {name:?}"),
            flag("deleting a user"),
        )))
    }

    fn create_tenant(
        &self,
        tenant: Tenant,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        self.put_named(Named::tenant(self, &tenant), true)
    }

    fn put_tenant(
        &self,
        tenant: Tenant,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let write = self.put_named(Named::tenant(self, &tenant), false);
        async move { write.await.map(drop) }
    }

    fn list_tenants(
        &self,
    ) -> impl Future<Output = Result<Vec<Tenant>, StoreError>> + Send + 'static {
        self.list_named(self.inner.keys.tenants(), "tenant", |t: &Tenant| {
            t.name.clone()
        })
    }

    fn delete_tenant(
        &self,
        name: TenantId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let c = cmd("HDEL")
            .arg(self.inner.keys.tenants())
            .arg(name.as_str())
            .clone();
        self.submit(Ok(writer::op(
            Some(c),
            format!("cannot delete tenant {name}"),
            flag("deleting a tenant"),
        )))
    }

    fn list_tokens(
        &self,
    ) -> impl Future<Output = Result<Vec<ApiToken>, StoreError>> + Send + 'static {
        let c = cmd("HVALS").arg(self.inner.keys.tokens()).clone();
        self.read(c, "cannot list API tokens".to_owned(), |value| {
            let mut tokens: Vec<ApiToken> = codec::json_list("API token", value)?;
            tokens.sort_by(|a, b| (&a.user, &a.token_hash).cmp(&(&b.user, &b.token_hash)));
            Ok(tokens)
        })
    }

    fn update_token(
        &self,
        token: ApiToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let op = encode_json(|| "API token", &token).map(|body| {
            let mut c = self.eval(&scripts::UPDATE_TOKEN);
            c.arg(&token.token_hash).arg(body);
            writer::op(
                Some(c),
                "cannot update API token".to_owned(),
                flag("updating a token"),
            )
        });
        self.submit(op)
    }

    fn put_token(
        &self,
        token: ApiToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = encode_json(|| "API token", &token).map(|body| {
            let c = cmd("HSET")
                .arg(self.inner.keys.tokens())
                .arg(&token.token_hash)
                .arg(body)
                .clone();
            writer::op(Some(c), "cannot store API token".to_owned(), ignore)
        });
        self.submit(op)
    }

    fn get_token(
        &self,
        token_hash: String,
    ) -> impl Future<Output = Result<Option<ApiToken>, StoreError>> + Send + 'static {
        let c = cmd("HGET")
            .arg(self.inner.keys.tokens())
            .arg(token_hash)
            .clone();
        // The hash is a credential's fingerprint: keep it out of messages.
        self.read(c, "cannot read API token".to_owned(), |value| {
            codec::optional_json("API token", value)
        })
    }

    fn delete_token(
        &self,
        token_hash: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let c = cmd("HDEL")
            .arg(self.inner.keys.tokens())
            .arg(token_hash)
            .clone();
        self.submit(Ok(writer::op(
            Some(c),
            "cannot delete API token".to_owned(),
            flag("deleting a token"),
        )))
    }
}

impl AgentStore for RedisStore {
    fn put_agent(
        &self,
        record: AgentRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let id = record.config.id.to_string();
        let op = encode_json(|| format!("agent {id}"), &record).map(|body| {
            let mut c = self.eval_fenced(&scripts::PUT_AGENT);
            c.arg(&id).arg(body);
            writer::op(Some(c), format!("cannot store agent {id}"), ignore)
        });
        self.submit(op)
    }

    fn get_agent(
        &self,
        id: AgentId,
    ) -> impl Future<Output = Result<Option<AgentRecord>, StoreError>> + Send + 'static {
        let c = cmd("HGET")
            .arg(self.inner.keys.agents())
            .arg(id.as_str())
            .clone();
        self.read(c, format!("cannot read agent {id}"), move |value| {
            codec::optional_json(format!("agent {id}"), value)
        })
    }

    fn list_agents(
        &self,
    ) -> impl Future<Output = Result<Vec<AgentRecord>, StoreError>> + Send + 'static {
        let c = cmd("HGETALL").arg(self.inner.keys.agents()).clone();
        self.read(c, "cannot list agents".to_owned(), |value| {
            let mut records: Vec<AgentRecord> = codec::json_pairs("agent", value)?;
            // A hash has no order; the port promises id order.
            records.sort_by(|a, b| a.config.id.cmp(&b.config.id));
            Ok(records)
        })
    }

    fn delete_agent(
        &self,
        id: AgentId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let mut c = self.eval_fenced(&scripts::DELETE_AGENT);
        c.arg(id.as_str());
        self.submit(Ok(writer::op(
            Some(c),
            format!("cannot delete agent {id}"),
            flag("deleting an agent"),
        )))
    }

    fn put_session(
        &self,
        session: AgentSession,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (agent, n) = (&session.agent_id, session.session);
        let op = encode_json(|| format!("agent {agent} session {n}"), &session).map(|body| {
            let mut c = self.eval_fenced(&scripts::PUT_SESSION);
            c.arg(agent.as_str()).arg(n).arg(body);
            writer::op(
                Some(c),
                format!("cannot store session {n} of agent {agent}"),
                ignore,
            )
        });
        self.submit(op)
    }

    fn list_sessions(
        &self,
        id: AgentId,
        before: Option<u32>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AgentSession>, StoreError>> + Send + 'static {
        // Scored by session number: the cursor is an exclusive upper bound.
        let max = before.map_or_else(|| "+inf".to_owned(), |n| format!("({n}"));
        let c = cmd("ZREVRANGEBYSCORE")
            .arg(self.inner.keys.sessions(&id))
            .arg(max)
            .arg("-inf")
            .arg("LIMIT")
            .arg(0)
            .arg(i64::try_from(limit).unwrap_or(i64::MAX))
            .clone();
        let what = format!("agent {id} session");
        let read = self.read(
            c,
            format!("cannot read the sessions of agent {id}"),
            move |value| codec::json_list(&what, value),
        );
        async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            read.await
        }
    }
}
