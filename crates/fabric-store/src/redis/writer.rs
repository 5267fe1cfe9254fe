//! The writer task: the only sender of writes, on one connection, in call order.
//!
//! Handles queue each write on an unbounded channel in the method call itself
//! (eager submission). The task takes everything queued (up to [`MAX_BATCH`]),
//! sends it as one `MULTI` ... `EXEC` pipeline, waits for the answers, then
//! answers the callers. Redis executes one connection's commands in the order
//! sent, so writes commit in call order.
//!
//! Why `MULTI`/`EXEC`: with `appendfsync always` Redis fsyncs the AOF once per
//! event-loop turn, and it reads a client's commands 16 KB at a time, so a
//! plain pipeline of a few hundred writes would cost one fsync per 16 KB. A
//! transaction executes at `EXEC`, all in one turn: one fsync per batch (group
//! commit, as SQLite's writer does). It also makes a batch all or nothing when
//! the connection breaks before `EXEC`, and the AOF logs it as one unit. A
//! write that fails on its own (a script's refusal) still leaves its
//! neighbours applied: Redis transactions do not roll back.
//!
//! Only one pipeline is in flight at a time: a broken connection then never
//! leaves later writes racing earlier ones on a new connection. When the
//! connection breaks, the writes in flight fail with `Unavailable` (they may
//! or may not have been applied) and the next batch connects anew.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{Cmd, Pipeline, ServerError, Value};
use fabric_core::StoreError;
use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::conn::Endpoint;
use super::error::RedisStoreError;

/// Most writes in one pipeline: bounds how long a batch holds answers back.
pub(crate) const MAX_BATCH: usize = 1024;

/// After this long without a pipeline, `PING` before sending the next one.
/// The connection may have died while idle (Redis restarted); a failed `PING`
/// proves nothing of the batch was sent, so it can go on a new connection
/// instead of failing writes that were submitted after Redis came back.
const IDLE_PROBE_AFTER: Duration = Duration::from_millis(250);

/// Turns the command's answer into the caller's result and sends it; the
/// caller may have dropped its receiver (fire-and-forget), which is fine.
pub(crate) type Finish = Box<dyn FnOnce(Result<Value, StoreError>) + Send>;

/// One write: a single command (so answers pair up with writes one to one),
/// or `None` for a barrier that only waits for the writes before it.
pub(crate) struct WriteOp {
    pub cmd: Option<Cmd>,
    /// What the store was doing, for error messages.
    pub context: String,
    pub finish: Finish,
}

pub(crate) enum Msg {
    Op(WriteOp),
    /// Send everything queued before this, then ack and exit.
    Close(oneshot::Sender<()>),
}

/// Builds an op whose answer `decode` turns into `T` for a oneshot receiver.
pub(crate) fn op<T: Send + 'static>(
    cmd: Option<Cmd>,
    context: String,
    decode: impl FnOnce(Value) -> Result<T, RedisStoreError> + Send + 'static,
) -> (WriteOp, oneshot::Receiver<Result<T, StoreError>>) {
    let (tx, rx) = oneshot::channel();
    let finish: Finish = Box::new(move |answer| {
        let result = answer.and_then(|value| decode(value).map_err(StoreError::from));
        // An error only means the caller dropped its future.
        let _ = tx.send(result);
    });
    (
        WriteOp {
            cmd,
            context,
            finish,
        },
        rx,
    )
}

/// A fenced script's `DEPOSED <ours> <current>` refusal as an error. Also
/// tells the store's watchers (`RedisStore::deposed`): the leadership is gone.
pub(crate) fn deposed(shared: &Shared, e: &ServerError) -> RedisStoreError {
    shared.deposed.send_replace(true);
    let mut detail = e.details().unwrap_or_default().split_whitespace();
    RedisStoreError::Deposed {
        prefix: shared.prefix.clone(),
        ours: detail.next().unwrap_or("?").to_owned(),
        current: detail.next().unwrap_or("?").to_owned(),
    }
}

/// A server error answer as a store error; the scripts' own refusals keep
/// their message.
pub(crate) fn server_error(context: String, e: &ServerError) -> RedisStoreError {
    let detail = e.details().unwrap_or_default();
    if e.code() == "FABRIC" {
        return RedisStoreError::Refused(detail.to_owned());
    }
    RedisStoreError::Command {
        context,
        detail: format!("{} {detail}", e.code()),
    }
}

/// The writer task's body. Returns when every handle is gone or on `Close`.
pub(crate) async fn run(
    endpoint: Arc<Endpoint>,
    mut conn: Option<MultiplexedConnection>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    shared: Arc<Shared>,
) {
    let mut batch: Vec<WriteOp> = Vec::with_capacity(64);
    let mut last_sent = Instant::now();
    let mut reload_scripts = false;
    loop {
        let mut close = match rx.recv().await {
            Some(Msg::Op(op)) => {
                batch.push(op);
                None
            }
            Some(Msg::Close(ack)) => Some(ack),
            None => break,
        };
        while close.is_none() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Op(op)) => batch.push(op),
                Ok(Msg::Close(ack)) => close = Some(ack),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            if last_sent.elapsed() > IDLE_PROBE_AFTER {
                probe(&endpoint, &mut conn).await;
            }
            if reload_scripts {
                reload_scripts = !reload(&endpoint, &mut conn).await;
            }
            reload_scripts |= send_batch(&endpoint, &mut conn, &mut batch, &shared).await;
            last_sent = Instant::now();
        }
        if let Some(ack) = close {
            let _ = ack.send(());
            return;
        }
    }
}

/// Drops the connection if it no longer answers `PING`.
async fn probe(endpoint: &Endpoint, conn: &mut Option<MultiplexedConnection>) {
    if let Some(current) = conn
        && let Err(e) = super::conn::ping(current).await
        && endpoint.error(|| "PING".to_owned(), &e).breaks_connection()
    {
        tracing::info!(addr = %endpoint.addr, "the Redis connection broke while idle; reconnecting");
        *conn = None;
    }
}

/// Loads the scripts again after a `NOSCRIPT`; `false` if that failed too.
async fn reload(endpoint: &Endpoint, conn: &mut Option<MultiplexedConnection>) -> bool {
    let Some(current) = conn else {
        // A new connection loads them anyway.
        return true;
    };
    match super::scripts::load_all(current).await {
        Ok(()) => true,
        Err(e) => {
            let error = endpoint.error(|| "loading the store's scripts".to_owned(), &e);
            tracing::error!(error = %error, "cannot load the store's Lua scripts into Redis");
            if error.breaks_connection() {
                *conn = None;
            }
            false
        }
    }
}

/// Sends `batch` as one transaction and answers every op. Returns whether an
/// answer was `NOSCRIPT` (the scripts must be loaded again).
async fn send_batch(
    endpoint: &Endpoint,
    conn: &mut Option<MultiplexedConnection>,
    batch: &mut Vec<WriteOp>,
    shared: &Shared,
) -> bool {
    let started = Instant::now();
    let mut noscript = false;
    let mut pipe = Pipeline::with_capacity(batch.len());
    pipe.atomic();
    for cmd in batch.iter().filter_map(|op| op.cmd.as_ref()) {
        pipe.add_command(cmd.clone());
    }
    let count = pipe.len();
    let answers = if count == 0 {
        // Only barriers: every earlier batch is already answered.
        Ok(Vec::new())
    } else {
        send(endpoint, conn, &pipe, count).await
    };
    match answers {
        Ok(answers) => {
            shared.batches.fetch_add(1, Ordering::Relaxed);
            shared.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
            tracing::trace!(
                ops = batch.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "redis pipeline"
            );
            let mut answers = answers.into_iter();
            for op in batch.drain(..) {
                let answer = match op.cmd {
                    None => Ok(Value::Okay),
                    Some(_) => match answers.next() {
                        Some(Value::ServerError(e)) if e.code() == "NOSCRIPT" => {
                            noscript = true;
                            Err(RedisStoreError::ScriptsLost.into())
                        }
                        Some(Value::ServerError(e)) if e.code() == "DEPOSED" => {
                            Err(deposed(shared, &e).into())
                        }
                        Some(Value::ServerError(e)) => Err(server_error(op.context, &e).into()),
                        Some(value) => Ok(value),
                        None => Err(RedisStoreError::Command {
                            context: op.context,
                            detail: "the pipeline returned fewer answers than commands".to_owned(),
                        }
                        .into()),
                    },
                };
                (op.finish)(answer);
            }
        }
        Err(e) => {
            tracing::error!(ops = batch.len(), error = %e, "redis pipeline failed; every write in it is reported failed");
            let e = StoreError::from(e);
            for op in batch.drain(..) {
                (op.finish)(Err(e.clone()));
            }
        }
    }
    noscript
}

/// Sends the pipeline on the current connection, connecting first if there is
/// none. A broken connection is dropped so the next batch reconnects.
async fn send(
    endpoint: &Endpoint,
    conn: &mut Option<MultiplexedConnection>,
    pipe: &Pipeline,
    count: usize,
) -> Result<Vec<Value>, RedisStoreError> {
    let current = match conn {
        Some(current) => current,
        None => {
            let fresh = endpoint.connect().await?;
            tracing::info!(addr = %endpoint.addr, "reconnected to Redis");
            conn.insert(fresh)
        }
    };
    // Skip the answers to MULTI and the QUEUED ones; EXEC's is the array.
    match current.send_packed_commands(pipe, count + 1, 1).await {
        Ok(mut exec) => match exec.pop() {
            Some(Value::Array(answers)) if answers.len() == count => Ok(answers),
            Some(Value::ServerError(e)) => {
                Err(server_error(format!("committing {count} writes"), &e))
            }
            other => Err(RedisStoreError::Command {
                context: format!("committing {count} writes"),
                detail: format!("unexpected answer to EXEC: {other:?}"),
            }),
        },
        Err(e) => {
            let error = endpoint.error(|| format!("sending {count} writes"), &e);
            // A timeout keeps the connection: the pipeline may still run, and
            // later writes must queue behind it on the same connection, not
            // overtake it on a new one.
            if error.breaks_connection() {
                *conn = None;
            }
            Err(error)
        }
    }
}
