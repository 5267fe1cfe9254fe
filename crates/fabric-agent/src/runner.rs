//! [`run`]: lease tasks, keep their leases alive, hand them to a handler, report how they ended.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fabric_core::api::{AgentLogLine, CompleteRequest, LeaseResponse};
use fabric_core::{Clock, SystemClock, Task, TaskId, TaskResult, TaskStatus, Timestamp};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::Instrument;

use crate::backoff::{self, Backoff};
use crate::client::{AgentClient, LeaseOutcome};
use crate::error::AgentError;

/// Heartbeat interval when the lease's expiry is unusable (already past by our clock).
const FALLBACK_HEARTBEAT: Duration = Duration::from_secs(10);
/// Never heartbeat more often than this, however close the expiry.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);
/// Lines per `events` request.
const MAX_BATCH_LINES: usize = 500;
/// Lines kept per task while the fabric cannot be reached; later ones are counted and dropped.
const MAX_BUFFERED_LINES: usize = 10_000;
/// Attempts at sending the last log lines of a finished task before completing without them.
const FINAL_FLUSH_ATTEMPTS: u32 = 5;

/// How [`run`] works. Start from [`RunOptions::default`] and change what you need.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Tasks worked on at once (at least 1); match the agent's `concurrency`.
    pub concurrency: usize,
    /// How long one `lease` call waits for a task (whole seconds, at most 60).
    pub lease_wait: Duration,
    /// How often the token is renewed (tokens live 15 minutes). `None`: never,
    /// for a token that does not expire.
    pub token_renewal: Option<Duration>,
    /// Log lines are sent at most this long after they were logged (or at
    /// once when 500 are waiting).
    pub log_flush_interval: Duration,
    /// After the lease of a task is lost (canceled, timed out, re-leased), how
    /// long its handler has to notice [`TaskContext::cancelled`] and return
    /// before it is dropped.
    pub cancel_grace: Duration,
    /// After the `shutdown` future of [`run_until`] resolves, how long running
    /// handlers may go on before they are dropped. Their tasks are not
    /// completed: the fabric gives them out again when their leases expire.
    pub shutdown_grace: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            concurrency: 1,
            lease_wait: Duration::from_secs(30),
            token_renewal: Some(Duration::from_secs(5 * 60)),
            log_flush_interval: Duration::from_millis(200),
            cancel_grace: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// How a handler's work on a task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The task did what it was asked.
    Completed(TaskResult),
    /// It did not. A failed completion is final (no retry).
    Failed {
        result: TaskResult,
        /// Machine-readable reason ([`fabric_core::reason`]); the fabric picks
        /// one (`agent_failed`) when absent.
        reason: Option<String>,
    },
}

impl Outcome {
    /// Completed with `result`.
    pub fn completed(result: TaskResult) -> Self {
        Self::Completed(result)
    }

    /// Failed with `error` as the result's human-readable error.
    pub fn failed(error: impl Into<String>) -> Self {
        Self::Failed {
            result: TaskResult {
                error: Some(error.into()),
                ..TaskResult::default()
            },
            reason: None,
        }
    }

    fn into_request(self, epoch: u64) -> CompleteRequest {
        let (status, result, reason) = match self {
            Self::Completed(result) => (TaskStatus::Completed, result, None),
            Self::Failed { result, reason } => (TaskStatus::Failed, result, reason),
        };
        CompleteRequest {
            epoch,
            status,
            result: Some(result),
            reason,
        }
    }
}

/// What a handler gets for one leased task.
///
/// Cheap to clone: pass it into the handler's own spawned work.
#[derive(Clone)]
pub struct TaskContext {
    task: Arc<Task>,
    epoch: u64,
    logs: mpsc::UnboundedSender<AgentLogLine>,
    cancel: watch::Receiver<bool>,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("task_id", &self.task.id)
            .field("epoch", &self.epoch)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl TaskContext {
    /// The task as leased: its input, attempt number, timeout.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// The lease's fencing token.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The W3C `traceparent` of this attempt (the fabric's execution span of
    /// it): parent your own spans on it, pass it to child processes as
    /// `TRACEPARENT` and send it as the `traceparent` header on your calls.
    pub fn traceparent(&self) -> Option<&str> {
        self.task.traceparent.as_deref()
    }

    /// The task's prompt, if it has one.
    pub fn prompt(&self) -> Option<&str> {
        self.task.input.prompt.as_deref()
    }

    /// Logs one line of output (`stream` is conventionally `stdout` or
    /// `stderr`). Lines are batched and sent as task events; they all arrive
    /// before the task's completion.
    pub fn log(&self, stream: impl Into<String>, line: impl Into<String>) {
        // The receiver lives as long as the task is being supervised; a line
        // logged after that has nowhere to go.
        let _ = self.logs.send(AgentLogLine {
            stream: stream.into(),
            line: line.into(),
        });
    }

    /// Resolves when the task's lease is lost: it was canceled, timed out or
    /// given to another agent (a heartbeat or log call was answered
    /// `stale_lease`, or the fabric no longer knows the task). Stop working
    /// on it then; its outcome is ignored and it is never completed.
    pub async fn cancelled(&self) {
        let mut cancel = self.cancel.clone();
        // An error means the runner let go of the task: stop as well.
        let _ = cancel.wait_for(|cancelled| *cancelled).await;
    }

    /// Whether [`cancelled`](Self::cancelled) has resolved.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow() || self.cancel.has_changed().is_err()
    }
}

/// Runs the agent until the fabric drains it: leases up to
/// `options.concurrency` tasks at once, calls `handler` for each, keeps each
/// lease alive with heartbeats, sends logged lines, and completes the task
/// with the handler's [`Outcome`].
///
/// Returns `Ok(())` once the fabric answered `agent_draining` and every
/// running handler has returned. Transient failures (fabric unreachable, 5xx)
/// are retried with backoff (100 ms doubling to 5 s); an error that retrying
/// cannot fix (a revoked token) stops leasing, waits for running handlers,
/// and is returned.
pub async fn run<H, F>(
    client: AgentClient,
    options: RunOptions,
    handler: H,
) -> Result<(), AgentError>
where
    H: Fn(TaskContext) -> F + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    run_until(client, options, handler, std::future::pending()).await
}

/// [`run`], stopping also when `shutdown` resolves: no new leases; running
/// handlers get `options.shutdown_grace` to finish, then they are dropped
/// without completing their tasks. For programs that embed an agent.
///
/// Dropping the returned future drops every running handler at once.
pub async fn run_until<H, F, S>(
    client: AgentClient,
    options: RunOptions,
    handler: H,
    shutdown: S,
) -> Result<(), AgentError>
where
    H: Fn(TaskContext) -> F + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
    S: Future<Output = ()>,
{
    if options.concurrency == 0 {
        return Err(AgentError::Config(
            "RunOptions::concurrency must be at least 1".into(),
        ));
    }
    let handler = Arc::new(handler);
    let settings = TaskSettings {
        log_flush_interval: options.log_flush_interval,
        cancel_grace: options.cancel_grace,
    };
    // Supervisors of running tasks; dropping the set aborts them and their handlers.
    let mut running: JoinSet<()> = JoinSet::new();
    // The in-flight long poll. It is never dropped while we mean to go on: a
    // lease the fabric granted whose answer we discarded would sit unworked
    // until it expired.
    let mut lease: Option<LeaseFuture> = None;
    let mut lease_started = Instant::now();
    let mut retry_at: Option<Instant> = None;
    let mut backoff = Backoff::new();
    let mut stop: Option<Stop> = None;
    let mut abort_at: Option<Instant> = None;
    let mut aborted = false;
    let mut shutdown_seen = false;
    let renewer = renew_tokens(client.clone(), options.token_renewal);
    tokio::pin!(renewer, shutdown);

    loop {
        if stop.is_some() && running.is_empty() {
            break;
        }
        let may_lease = stop.is_none()
            && lease.is_none()
            && running.len() < options.concurrency
            && retry_at.is_none_or(|at| at <= Instant::now());
        if may_lease {
            retry_at = None;
            lease_started = Instant::now();
            let (client, wait) = (client.clone(), options.lease_wait);
            lease = Some(Box::pin(async move { client.lease(wait).await }));
        }
        tokio::select! {
            () = &mut shutdown, if !shutdown_seen => {
                shutdown_seen = true;
                lease = None;
                stop.get_or_insert(Stop::Shutdown);
                tracing::info!(running = running.len(), "shutting down: no new leases");
                abort_at = Some(Instant::now() + options.shutdown_grace);
            }
            Some(joined) = running.join_next(), if !running.is_empty() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    tracing::error!("a task supervisor panicked: {}", panic_message(e));
                }
            }
            outcome = poll_lease(&mut lease) => {
                lease = None;
                match outcome {
                    Ok(LeaseOutcome::Task(leased)) => {
                        backoff.reset();
                        running.spawn(supervise(client.clone(), *leased, handler.clone(), settings));
                    }
                    Ok(LeaseOutcome::Empty) => {
                        // An empty answer well before the wait was up (or a zero
                        // wait): back off rather than spin.
                        let fast = (options.lease_wait / 2).max(backoff::FIRST);
                        if lease_started.elapsed() < fast {
                            retry_at = Some(Instant::now() + backoff.next_delay());
                        } else {
                            backoff.reset();
                        }
                    }
                    Ok(LeaseOutcome::Draining) => {
                        tracing::info!(running = running.len(), "agent is draining: finishing running tasks");
                        stop = Some(Stop::Draining);
                    }
                    Err(e) if e.is_retryable() => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "lease failed");
                        retry_at = Some(Instant::now() + delay);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, running = running.len(), "lease failed for good: finishing running tasks, then stopping");
                        stop = Some(Stop::Failed(e));
                    }
                }
            }
            () = sleep_until_opt(retry_at), if lease.is_none() => {}
            () = sleep_until_opt(abort_at), if !aborted => {
                aborted = true;
                if !running.is_empty() {
                    tracing::warn!(running = running.len(), "shutdown grace is over: dropping running tasks");
                }
                running.abort_all();
            }
            () = &mut renewer => {}
        }
    }
    match stop {
        Some(Stop::Failed(e)) => Err(e),
        _ => Ok(()),
    }
}

type LeaseFuture = Pin<Box<dyn Future<Output = Result<LeaseOutcome, AgentError>> + Send>>;

/// Why the run loop stopped leasing.
enum Stop {
    Draining,
    Shutdown,
    Failed(AgentError),
}

async fn poll_lease(lease: &mut Option<LeaseFuture>) -> Result<LeaseOutcome, AgentError> {
    match lease {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Renews the token every `every`, retrying failures; never returns.
async fn renew_tokens(client: AgentClient, every: Option<Duration>) {
    let Some(every) = every else {
        return std::future::pending().await;
    };
    let mut backoff = Backoff::new();
    let mut delay = every;
    loop {
        sleep(delay).await;
        match client.renew_token().await {
            Ok(fresh) => {
                backoff.reset();
                delay = every;
                tracing::debug!(expires_at = ?fresh.expires_at, "token renewed");
            }
            Err(e) if e.is_retryable() => {
                delay = backoff.next_delay();
                tracing::warn!(error = %e, "token renewal failed; retrying");
            }
            // Not retryable (revoked): `lease` will hit the same error and stop the run.
            Err(e) => {
                delay = every;
                tracing::error!(error = %e, "token renewal refused");
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct TaskSettings {
    log_flush_interval: Duration,
    cancel_grace: Duration,
}

/// Aborts the task when dropped, so dropping a supervisor drops its handler.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Works one leased task to its end: runs the handler, heartbeats, sends
/// logs, completes — or, once the lease is lost, tells the handler to stop.
async fn supervise<H, F>(
    client: AgentClient,
    lease: LeaseResponse,
    handler: Arc<H>,
    settings: TaskSettings,
) where
    H: Fn(TaskContext) -> F + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    let LeaseResponse {
        task,
        epoch,
        lease_expires_at,
    } = lease;
    let task_id = task.id;
    let span = tracing::info_span!("task", task_id = %task_id, epoch);
    async move {
        tracing::debug!(attempt = task.attempt, "leased");
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let (log_tx, mut log_rx) = mpsc::unbounded_channel();
        let ctx_traceparent = task.traceparent.clone();
        let ctx = TaskContext {
            task: Arc::new(task),
            epoch,
            logs: log_tx,
            cancel: cancel_rx,
        };
        // The handler runs in a task of its own so that it goes on while
        // this one waits on the fabric.
        let mut handle = AbortOnDrop(tokio::spawn(handler(ctx)));
        let mut keeper = LeaseKeeper {
            client: client.with_traceparent(ctx_traceparent.as_deref()),
            task_id,
            epoch,
            logs: LogBuffer::default(),
        };
        let mut next_heartbeat = Instant::now() + heartbeat_delay(lease_expires_at);
        let mut heartbeat_backoff = Backoff::new();
        let mut flush_at: Option<Instant> = None;
        let mut flush_backoff = Backoff::new();

        let joined = loop {
            tokio::select! {
                joined = &mut handle.0 => break Some(joined),
                () = sleep_until(next_heartbeat) => {
                    match keeper.client.heartbeat(task_id, epoch).await {
                        Ok(answer) => {
                            heartbeat_backoff.reset();
                            next_heartbeat = Instant::now() + heartbeat_delay(answer.lease_expires_at);
                        }
                        Err(e) if e.is_lease_lost() => break None,
                        Err(e) => {
                            let delay = heartbeat_backoff.next_delay();
                            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "heartbeat failed");
                            next_heartbeat = Instant::now() + delay;
                        }
                    }
                }
                Some(line) = log_rx.recv() => {
                    keeper.logs.push(line);
                    if keeper.logs.len() >= MAX_BATCH_LINES {
                        flush_at = Some(Instant::now());
                    } else if flush_at.is_none() {
                        flush_at = Some(Instant::now() + settings.log_flush_interval);
                    }
                }
                () = sleep_until_opt(flush_at) => {
                    match keeper.flush_batch().await {
                        Ok(()) => {
                            flush_backoff.reset();
                            flush_at = (!keeper.logs.is_empty()).then(Instant::now);
                        }
                        Err(e) if e.is_lease_lost() => break None,
                        Err(e) => {
                            let delay = flush_backoff.next_delay();
                            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "sending log lines failed");
                            flush_at = Some(Instant::now() + delay);
                        }
                    }
                }
            }
        };

        let Some(joined) = joined else {
            // Lease lost: tell the handler, give it time to wind down, never complete.
            tracing::info!("lease lost (canceled, timed out or re-leased): stopping the handler");
            let _ = cancel_tx.send(true);
            if tokio::time::timeout(settings.cancel_grace, &mut handle.0)
                .await
                .is_err()
            {
                tracing::warn!(
                    grace_ms = settings.cancel_grace.as_millis() as u64,
                    "handler ignored cancellation: dropped"
                );
            }
            return;
        };
        let outcome = match joined {
            Ok(outcome) => outcome,
            Err(e) => {
                let message = panic_message(e);
                tracing::error!("handler panicked: {message}");
                Outcome::failed(format!("the agent's handler panicked: {message}"))
            }
        };
        // Every line logged before the handler returned goes out before the completion.
        while let Ok(line) = log_rx.try_recv() {
            keeper.logs.push(line);
        }
        if keeper.flush_all().await.is_err() {
            tracing::info!("lease lost before completion: not completing");
            return;
        }
        keeper.complete(outcome).await;
        drop(cancel_tx);
    }
    .instrument(span)
    .await;
}

/// A task's lease as seen by its supervisor, with the log lines waiting to go out.
struct LeaseKeeper {
    client: AgentClient,
    task_id: TaskId,
    epoch: u64,
    logs: LogBuffer,
}

/// The lease was lost (stale_lease, or the task is gone): stop.
struct LeaseLost;

impl LeaseKeeper {
    /// Sends up to one batch of waiting lines. A refusal that retrying cannot
    /// fix drops the batch (it would block every later line).
    async fn flush_batch(&mut self) -> Result<(), AgentError> {
        let batch = self.logs.batch();
        if batch.is_empty() {
            return Ok(());
        }
        let sent = batch.len();
        match self.client.send_logs(self.task_id, self.epoch, batch).await {
            Ok(()) => {
                self.logs.sent(sent);
                Ok(())
            }
            Err(e) if e.is_lease_lost() || e.is_retryable() => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, lines = sent, "log lines refused: dropped");
                self.logs.sent(sent);
                Ok(())
            }
        }
    }

    /// Sends every waiting line, retrying a few times; gives up on the lines
    /// (not the task) when the fabric stays unreachable.
    async fn flush_all(&mut self) -> Result<(), LeaseLost> {
        let mut backoff = Backoff::new();
        let mut failures = 0;
        while !self.logs.is_empty() {
            match self.flush_batch().await {
                Ok(()) => {}
                Err(e) if e.is_lease_lost() => return Err(LeaseLost),
                Err(e) => {
                    failures += 1;
                    if failures >= FINAL_FLUSH_ATTEMPTS {
                        tracing::warn!(error = %e, lines = self.logs.len(), "cannot send the last log lines: completing without them");
                        return Ok(());
                    }
                    sleep(backoff.next_delay()).await;
                }
            }
        }
        Ok(())
    }

    /// Completes the task, retrying transient failures until the fabric
    /// answers (once back, it says `stale_lease` if the lease ran out meanwhile).
    async fn complete(&self, outcome: Outcome) {
        let request = outcome.into_request(self.epoch);
        let mut backoff = Backoff::new();
        loop {
            match self.client.complete(self.task_id, &request).await {
                Ok(task) => {
                    tracing::info!(status = %task.status, "task completed");
                    return;
                }
                Err(e) if e.is_lease_lost() => {
                    tracing::info!("lease lost before completion: not completed");
                    return;
                }
                Err(e) if e.is_retryable() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "completion failed");
                    sleep(delay).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "completion refused; the task will be retried when its lease expires");
                    return;
                }
            }
        }
    }
}

/// Log lines of one task waiting to be sent, bounded.
#[derive(Debug, Default)]
struct LogBuffer {
    lines: VecDeque<AgentLogLine>,
    /// Lines dropped because the buffer was full (the fabric was unreachable).
    dropped: u64,
    /// Whether the last batch handed out carried the "lines dropped" note.
    note_in_batch: bool,
}

impl LogBuffer {
    fn push(&mut self, line: AgentLogLine) {
        if self.lines.len() >= MAX_BUFFERED_LINES {
            self.dropped += 1;
        } else {
            self.lines.push_back(line);
        }
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.dropped == 0
    }

    /// The next lines to send (copies: they stay until [`sent`](Self::sent)).
    fn batch(&mut self) -> Vec<AgentLogLine> {
        let take = self.lines.len().min(MAX_BATCH_LINES);
        let mut batch: Vec<AgentLogLine> = self.lines.iter().take(take).cloned().collect();
        self.note_in_batch = take == self.lines.len() && self.dropped > 0;
        if self.note_in_batch {
            batch.push(AgentLogLine {
                stream: "stderr".into(),
                line: format!(
                    "[fabric-agent: {} log lines dropped while the fabric could not be reached]",
                    self.dropped
                ),
            });
        }
        batch
    }

    /// Forgets a batch of `n` lines (as returned by [`batch`](Self::batch)).
    fn sent(&mut self, n: usize) {
        let lines = if self.note_in_batch {
            self.dropped = 0;
            n.saturating_sub(1)
        } else {
            n
        };
        self.lines.drain(..lines.min(self.lines.len()));
        self.note_in_batch = false;
    }
}

/// When to heartbeat next: a third of the lease's time left, by our clock.
fn heartbeat_delay(lease_expires_at: Timestamp) -> Duration {
    heartbeat_delay_at(lease_expires_at, SystemClock.now())
}

fn heartbeat_delay_at(lease_expires_at: Timestamp, now: Timestamp) -> Duration {
    let left = lease_expires_at.since(now);
    if left.is_zero() {
        // Our clock is ahead of the fabric's (or we are very late): use the protocol's default.
        FALLBACK_HEARTBEAT
    } else {
        (left / 3).max(MIN_HEARTBEAT)
    }
}

fn panic_message(e: JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into()),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> AgentLogLine {
        AgentLogLine {
            stream: "stdout".into(),
            line: n.to_string(),
        }
    }

    #[test]
    fn heartbeats_at_a_third_of_the_time_left() {
        let now = Timestamp::from_millis(1_000_000);
        assert_eq!(
            heartbeat_delay_at(now.plus(Duration::from_secs(30)), now),
            Duration::from_secs(10)
        );
        assert_eq!(
            heartbeat_delay_at(now.plus(Duration::from_millis(30)), now),
            MIN_HEARTBEAT
        );
        assert_eq!(heartbeat_delay_at(now, now), FALLBACK_HEARTBEAT);
        assert_eq!(
            heartbeat_delay_at(Timestamp::from_millis(5), now),
            FALLBACK_HEARTBEAT
        );
    }

    #[test]
    fn log_buffer_batches_and_keeps_lines_until_sent() {
        let mut logs = LogBuffer::default();
        for n in 0..MAX_BATCH_LINES + 10 {
            logs.push(line(n));
        }
        let batch = logs.batch();
        assert_eq!(batch.len(), MAX_BATCH_LINES);
        // Not sent (say the request failed): the same lines again.
        assert_eq!(logs.batch(), batch);
        logs.sent(batch.len());
        let rest = logs.batch();
        assert_eq!(rest.len(), 10);
        assert_eq!(rest[0].line, MAX_BATCH_LINES.to_string());
        logs.sent(rest.len());
        assert!(logs.is_empty());
    }

    #[test]
    fn log_buffer_is_bounded_and_says_what_it_dropped() {
        let mut logs = LogBuffer::default();
        for n in 0..MAX_BUFFERED_LINES + 3 {
            logs.push(line(n));
        }
        assert_eq!(logs.len(), MAX_BUFFERED_LINES);
        let mut sent = 0;
        let mut last = None;
        while !logs.is_empty() {
            let batch = logs.batch();
            sent += batch.len();
            last = batch.last().cloned();
            logs.sent(batch.len());
        }
        assert_eq!(sent, MAX_BUFFERED_LINES + 1);
        let note = last.unwrap();
        assert_eq!(note.stream, "stderr");
        assert!(note.line.contains("3 log lines dropped"), "{}", note.line);
    }

    #[test]
    fn outcomes_become_completion_requests() {
        let req = Outcome::failed("boom").into_request(7);
        assert_eq!(req.epoch, 7);
        assert_eq!(req.status, TaskStatus::Failed);
        assert_eq!(req.result.unwrap().error.as_deref(), Some("boom"));
        let req = Outcome::completed(TaskResult::default()).into_request(1);
        assert_eq!(req.status, TaskStatus::Completed);
        assert_eq!(req.reason, None);
    }
}
