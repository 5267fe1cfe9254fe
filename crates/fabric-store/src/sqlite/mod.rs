//! The embedded SQLite store: one writer thread with group commit, pooled readers.

mod budget;
mod policy;
mod reader;
mod rows;
mod schema;
mod usage;
mod writer;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use fabric_core::agent::{AgentRecord, AgentSession};
use fabric_core::{
    AgentId, AgentStore, ApiToken, AuthStore, CreateOutcome, StoreError, Task, TaskEvent, TaskId,
    TaskQuery, TaskStore, TaskWrite, Tenant, TenantId, User, WriteOutcome,
};
use rusqlite::Connection;
use tokio::sync::oneshot;

use self::rows::{AgentRow, EventRow, SessionRow, TaskRow, encode_json};
use self::writer::{Msg, NamedTable, NamedWrite, Pending, Reply, WriteOp};
use crate::error::SqliteStoreError;

pub use self::schema::SCHEMA_VERSION;

/// Counters of a store's writer, to see group commit at work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Transactions committed (SQLite) or pipelines answered (Redis).
    pub transactions: u64,
    /// Write operations committed; `ops / transactions` is the mean batch size.
    pub ops: u64,
}

/// State shared by the handles and the writer thread.
pub(crate) struct Shared {
    closed: AtomicBool,
    transactions: AtomicU64,
    ops: AtomicU64,
}

/// A durable store in one SQLite file: the embedded default backend.
///
/// A cheap, cloneable handle; every clone talks to the same writer thread.
/// Writes go to that one thread, which commits everything queued as one
/// transaction (group commit) and acknowledges each write after the commit is
/// on disk. Reads run on a small pool of read-only connections on blocking
/// threads, so they never wait for the writer.
///
/// Dropping the last handle lets the writer commit what is queued and exit in
/// the background; call [`SqliteStore::close`] to wait for that.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    // Unbounded: a write is queued in the method body (eager submission), which
    // must not block an async caller. Callers that await acks are paced by
    // the commits; only fire-and-forget floods can grow the queue.
    tx: mpsc::Sender<Msg>,
    readers: reader::ReadPool,
    shared: Arc<Shared>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("stats", &self.stats())
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and its parent
    /// directories, migrates the schema and starts the writer thread.
    ///
    /// Blocking: it touches the filesystem. Call it at startup or from
    /// `spawn_blocking`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Ok(Self::open_inner(path)?)
    }

    fn open_inner(path: &Path) -> Result<SqliteStore, SqliteStoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| SqliteStoreError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
        }
        let mut conn = schema::open_writer(path)?;
        schema::migrate(&mut conn, path)?;
        // Open one reader now so a database readers cannot open fails here, not
        // on the first request.
        let first_reader = schema::open_reader(path)?;

        let shared = Arc::new(Shared {
            closed: AtomicBool::new(false),
            transactions: AtomicU64::new(0),
            ops: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("fabric-store-writer".to_owned())
            .spawn(move || writer::run(conn, rx, writer_shared))
            .map_err(SqliteStoreError::SpawnWriter)?;
        tracing::info!(path = %path.display(), "opened SQLite store");

        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                tx,
                readers: reader::ReadPool::new(path.to_owned(), first_reader, Arc::clone(&shared)),
                shared,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What the writer thread has committed so far.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            transactions: self.inner.shared.transactions.load(Ordering::Relaxed),
            ops: self.inner.shared.ops.load(Ordering::Relaxed),
        }
    }

    /// Commits every write submitted before this call, closes the database and
    /// stops the writer thread. Affects every clone of this handle: later reads
    /// and writes fail with [`StoreError::Unavailable`]. Calling it again is a
    /// no-op that also waits for the close.
    pub async fn close(&self) {
        self.inner.shared.closed.store(true, Ordering::Release);
        self.inner.readers.clear();
        let (ack, done) = oneshot::channel();
        // If the writer has already exited, the send fails or the ack is
        // dropped with its queue: either way the database is closed.
        if self.inner.tx.send(Msg::Close(ack)).is_ok() {
            let _ = done.await;
        }
    }

    /// Queues a write now (eager submission) and returns a future of its
    /// committed result. The future owns nothing but the reply channel, so
    /// dropping it leaves the write in place in the queue.
    fn submit<T: Send + 'static>(
        &self,
        op: Result<impl FnOnce(Reply<T>) -> WriteOp, SqliteStoreError>,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        let shared = Arc::clone(&self.inner.shared);
        let (reply, rx) = oneshot::channel();
        let sent = match op {
            Err(e) => Err(StoreError::from(e)),
            Ok(_) if shared.closed.load(Ordering::Acquire) => {
                Err(StoreError::from(SqliteStoreError::Closed))
            }
            Ok(make) => self
                .inner
                .tx
                .send(Msg::Op(Box::new(make(reply))))
                .map_err(|_| writer_gone(&shared)),
        };
        async move {
            sent?;
            // The reply is dropped unanswered only if the writer exited first.
            rx.await.unwrap_or_else(|_| Err(writer_gone(&shared)))
        }
    }

    /// Runs `f` on a pooled read connection on a blocking thread.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, SqliteStoreError> + Send + 'static,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            tokio::task::spawn_blocking(move || inner.readers.with(f))
                .await
                .map_err(|e| SqliteStoreError::ReadAborted(e.to_string()))?
                .map_err(StoreError::from)
        }
    }
}

/// The writer is gone: closed on purpose, or it died.
fn writer_gone(shared: &Shared) -> StoreError {
    if shared.closed.load(Ordering::Acquire) {
        SqliteStoreError::Closed.into()
    } else {
        SqliteStoreError::WriterGone.into()
    }
}

impl TaskStore for SqliteStore {
    fn create_task(
        &self,
        task: Task,
    ) -> impl Future<Output = Result<CreateOutcome, StoreError>> + Send + 'static {
        let op = TaskRow::encode(&task)
            .map(|row| move |reply| WriteOp::CreateTask(Pending::new((task, row), reply)));
        self.submit(op)
    }

    fn write_task(
        &self,
        write: TaskWrite,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send + 'static {
        let op = TaskRow::encode(&write.task).map(|row| {
            move |reply| WriteOp::WriteTask(Pending::new((row, write.expected_epoch), reply))
        });
        self.submit(op)
    }

    fn get_task(
        &self,
        id: TaskId,
    ) -> impl Future<Output = Result<Option<Task>, StoreError>> + Send + 'static {
        self.read(move |conn| reader::get_task(conn, id))
    }

    fn list_tasks(
        &self,
        query: TaskQuery,
    ) -> impl Future<Output = Result<Vec<Task>, StoreError>> + Send + 'static {
        self.read(move |conn| reader::list_tasks(conn, &query))
    }

    fn unfinished_tasks(
        &self,
    ) -> impl Future<Output = Result<Vec<Task>, StoreError>> + Send + 'static {
        self.read(reader::unfinished_tasks)
    }

    fn append_events(
        &self,
        events: Vec<TaskEvent>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = events
            .iter()
            .map(EventRow::encode)
            .collect::<Result<Vec<_>, _>>()
            .map(|rows| move |reply| WriteOp::AppendEvents(Pending::new(rows, reply)));
        self.submit(op)
    }

    fn task_events(
        &self,
        id: TaskId,
        after_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<TaskEvent>, StoreError>> + Send + 'static {
        self.read(move |conn| reader::task_events(conn, id, after_seq, limit))
    }

    fn delete_tasks(
        &self,
        ids: Vec<TaskId>,
    ) -> impl Future<Output = Result<Vec<TaskId>, StoreError>> + Send + 'static {
        self.submit(Ok::<_, SqliteStoreError>(move |reply| {
            WriteOp::DeleteTasks(Pending::new(ids, reply))
        }))
    }

    fn last_event_seq(&self) -> impl Future<Output = Result<u64, StoreError>> + Send + 'static {
        self.read(reader::last_event_seq)
    }

    fn count_tasks(
        &self,
        tenant: Option<TenantId>,
        agent: Option<AgentId>,
    ) -> impl Future<
        Output = Result<std::collections::BTreeMap<fabric_core::TaskStatus, u64>, StoreError>,
    > + Send
    + 'static {
        self.read(move |conn| reader::count_tasks(conn, tenant.as_ref(), agent.as_ref()))
    }
}

impl SqliteStore {
    /// Stores a user or tenant record under its name (`record` is its JSON).
    fn put_named(
        &self,
        table: NamedTable,
        name: String,
        record: Result<String, SqliteStoreError>,
        replace: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let op = record.map(|body| {
            move |reply| {
                WriteOp::PutNamed(Pending::new(
                    NamedWrite {
                        table,
                        name,
                        body,
                        replace,
                    },
                    reply,
                ))
            }
        });
        self.submit(op)
    }

    fn delete_named(
        &self,
        table: NamedTable,
        name: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let op: Result<_, SqliteStoreError> =
            Ok(move |reply| WriteOp::DeleteNamed(Pending::new((table, name), reply)));
        self.submit(op)
    }
}

/// The key of an MCP server's row: its tenant and name (neither holds `/`).
fn mcp_key(tenant: &TenantId, name: &str) -> String {
    format!("{tenant}/{name}")
}

impl fabric_core::mcp::McpStore for SqliteStore {
    fn put_mcp_server(
        &self,
        record: fabric_core::mcp::McpServerRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let key = mcp_key(&record.tenant, &record.spec.name);
        let body = encode_json(|| format!("MCP server {key:?}"), &record);
        let write = self.put_named(NamedTable::McpServers, key, body, true);
        async move { write.await.map(drop) }
    }

    fn list_mcp_servers(
        &self,
    ) -> impl Future<Output = Result<Vec<fabric_core::mcp::McpServerRecord>, StoreError>> + Send + 'static
    {
        self.read(|conn| {
            reader::collect(
                conn,
                "SELECT name, body FROM mcp_servers ORDER BY name",
                [],
                "cannot list MCP servers",
                "MCP server",
            )
        })
    }

    fn delete_mcp_server(
        &self,
        tenant: TenantId,
        name: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        self.delete_named(NamedTable::McpServers, mcp_key(&tenant, &name))
    }
}

impl fabric_core::node::NodeStore for SqliteStore {
    fn put_node(
        &self,
        record: fabric_core::node::NodeRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let name = record.name.clone();
        let body = encode_json(|| format!("node {name:?}"), &record);
        let write = self.put_named(NamedTable::Nodes, name, body, true);
        async move { write.await.map(drop) }
    }

    fn list_nodes(
        &self,
    ) -> impl Future<Output = Result<Vec<fabric_core::node::NodeRecord>, StoreError>> + Send + 'static
    {
        self.read(|conn| {
            reader::collect(
                conn,
                "SELECT name, body FROM nodes ORDER BY name",
                [],
                "cannot list nodes",
                "node",
            )
        })
    }

    fn delete_node(
        &self,
        name: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        self.delete_named(NamedTable::Nodes, name)
    }

    fn put_join_token(
        &self,
        record: fabric_core::node::JoinTokenRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let id = record.id.clone();
        let body = encode_json(|| format!("join token {id:?}"), &record);
        let write = self.put_named(NamedTable::JoinTokens, id, body, true);
        async move { write.await.map(drop) }
    }

    fn list_join_tokens(
        &self,
    ) -> impl Future<Output = Result<Vec<fabric_core::node::JoinTokenRecord>, StoreError>> + Send + 'static
    {
        self.read(|conn| {
            reader::collect(
                conn,
                "SELECT name, body FROM node_join_tokens ORDER BY name",
                [],
                "cannot list join tokens",
                "join token",
            )
        })
    }

    fn delete_join_token(
        &self,
        id: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        self.delete_named(NamedTable::JoinTokens, id)
    }

    fn put_node_config(
        &self,
        config: fabric_core::node::NodeConfig,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let body = encode_json(|| "node config".to_owned(), &config);
        let write = self.put_named(NamedTable::NodeSettings, NODE_CONFIG.into(), body, true);
        async move { write.await.map(drop) }
    }

    fn get_node_config(
        &self,
    ) -> impl Future<Output = Result<Option<fabric_core::node::NodeConfig>, StoreError>> + Send + 'static
    {
        self.read(|conn| {
            let mut found: Vec<fabric_core::node::NodeConfig> = reader::collect(
                conn,
                "SELECT name, body FROM node_settings WHERE name = ?1",
                [NODE_CONFIG],
                "cannot read the node config",
                "node setting",
            )?;
            Ok(found.pop())
        })
    }
}

/// The `node_settings` row of the node config.
const NODE_CONFIG: &str = "config";

fn user_json(user: &User) -> Result<String, SqliteStoreError> {
    encode_json(|| format!("user {:?}", user.name), user)
}

fn tenant_json(tenant: &Tenant) -> Result<String, SqliteStoreError> {
    encode_json(|| format!("tenant {}", tenant.name), tenant)
}

impl AuthStore for SqliteStore {
    fn create_user(
        &self,
        user: User,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        self.put_named(
            NamedTable::Users,
            user.name.clone(),
            user_json(&user),
            false,
        )
    }

    fn get_user(
        &self,
        name: String,
    ) -> impl Future<Output = Result<Option<User>, StoreError>> + Send + 'static {
        self.read(move |conn| reader::get_user(conn, &name))
    }

    fn count_users(&self) -> impl Future<Output = Result<u64, StoreError>> + Send + 'static {
        self.read(reader::count_users)
    }

    fn put_user(
        &self,
        user: User,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let write = self.put_named(NamedTable::Users, user.name.clone(), user_json(&user), true);
        async move { write.await.map(drop) }
    }

    fn list_users(&self) -> impl Future<Output = Result<Vec<User>, StoreError>> + Send + 'static {
        self.read(reader::list_users)
    }

    fn delete_user(
        &self,
        name: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        self.delete_named(NamedTable::Users, name)
    }

    fn create_tenant(
        &self,
        tenant: Tenant,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        self.put_named(
            NamedTable::Tenants,
            tenant.name.to_string(),
            tenant_json(&tenant),
            false,
        )
    }

    fn put_tenant(
        &self,
        tenant: Tenant,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let write = self.put_named(
            NamedTable::Tenants,
            tenant.name.to_string(),
            tenant_json(&tenant),
            true,
        );
        async move { write.await.map(drop) }
    }

    fn list_tenants(
        &self,
    ) -> impl Future<Output = Result<Vec<Tenant>, StoreError>> + Send + 'static {
        self.read(reader::list_tenants)
    }

    fn delete_tenant(
        &self,
        name: TenantId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        self.delete_named(NamedTable::Tenants, name.to_string())
    }

    fn put_token(
        &self,
        token: ApiToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = encode_json(|| "API token", &token).map(|body| {
            move |reply| {
                WriteOp::PutToken(Pending::new((token.token_hash, token.user, body), reply))
            }
        });
        self.submit(op)
    }

    fn get_token(
        &self,
        token_hash: String,
    ) -> impl Future<Output = Result<Option<ApiToken>, StoreError>> + Send + 'static {
        self.read(move |conn| reader::get_token(conn, &token_hash))
    }

    fn list_tokens(
        &self,
    ) -> impl Future<Output = Result<Vec<ApiToken>, StoreError>> + Send + 'static {
        self.read(reader::list_tokens)
    }

    fn update_token(
        &self,
        token: ApiToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let op = encode_json(|| "API token", &token).map(|body| {
            move |reply| WriteOp::UpdateToken(Pending::new((token.token_hash, body), reply))
        });
        self.submit(op)
    }

    fn delete_token(
        &self,
        token_hash: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let op: Result<_, SqliteStoreError> =
            Ok(move |reply| WriteOp::DeleteToken(Pending::new(token_hash, reply)));
        self.submit(op)
    }
}

impl AgentStore for SqliteStore {
    fn put_agent(
        &self,
        record: AgentRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = AgentRow::encode(&record)
            .map(|row| move |reply| WriteOp::PutAgent(Pending::new(row, reply)));
        self.submit(op)
    }

    fn get_agent(
        &self,
        id: AgentId,
    ) -> impl Future<Output = Result<Option<AgentRecord>, StoreError>> + Send + 'static {
        self.read(move |conn| reader::get_agent(conn, &id))
    }

    fn list_agents(
        &self,
    ) -> impl Future<Output = Result<Vec<AgentRecord>, StoreError>> + Send + 'static {
        self.read(reader::list_agents)
    }

    fn delete_agent(
        &self,
        id: AgentId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let op: Result<_, SqliteStoreError> =
            Ok(move |reply| WriteOp::DeleteAgent(Pending::new(String::from(id), reply)));
        self.submit(op)
    }

    fn put_session(
        &self,
        session: AgentSession,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = SessionRow::encode(&session)
            .map(|row| move |reply| WriteOp::PutSession(Pending::new(row, reply)));
        self.submit(op)
    }

    fn list_sessions(
        &self,
        id: AgentId,
        before: Option<u32>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AgentSession>, StoreError>> + Send + 'static {
        self.read(move |conn| reader::list_sessions(conn, &id, before, limit))
    }
}
