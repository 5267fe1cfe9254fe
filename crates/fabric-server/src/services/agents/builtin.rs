//! Built-in agents that run inside the server process: `shell` (runs a task's
//! commands as host processes, or inside the agent's sandbox) and `noop`
//! (completes every task at once, for benchmarks and tests).
//!
//! `shell` speaks the agent protocol over HTTP to this same server, through
//! the `fabric-agent` SDK, like any agent; only kill orders (cancel, timeout)
//! take an in-process shortcut so a canceled command stops at once. `noop`
//! calls the scheduler directly: it exists to measure the fabric without an
//! agent in the way.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use fabric_agent::{AgentClient, Outcome, RunOptions, TaskContext};
use fabric_core::policy::{CheckResponse, Effect};
use fabric_core::{AgentId, TaskResult, TaskStatus, reason};
use fabric_engine::{Completion, Lease};
use fabric_runtime::confine::Confinement;
use fabric_runtime::container::ContainerShell;
use fabric_runtime::quota::DiskQuota;
use fabric_runtime::sandbox::Sandbox;
use fabric_runtime::{LogLine, ShellJob, run_shell};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::services::tasks::TaskService;

pub const ENV_TASK_ID: &str = "FABRIC_TASK_ID";
pub const ENV_AGENT_ID: &str = "FABRIC_AGENT_ID";
pub const ENV_WORKSPACE_DIR: &str = "FABRIC_WORKSPACE_DIR";

/// Where the shell agent runs a task's commands.
#[derive(Clone)]
pub enum Executor {
    /// Host processes (isolation `none`), each task in `<work_root>/<task id>`,
    /// under the session's confinement unless the agent runs as the
    /// fabric's own user (`None`).
    Host {
        work_root: PathBuf,
        confinement: Option<Arc<Confinement>>,
    },
    /// Inside the agent's sandbox (isolation `process`), each task in
    /// `<sandbox workdir>/<task id>`.
    Sandbox(Arc<Sandbox>),
    /// Inside the agent's container (isolation `container`), one `docker exec`
    /// per command, each task in `/workspace/<task id>`.
    Container(Arc<ContainerShell>),
}

/// What one shell agent session runs with.
pub struct ShellSpec {
    pub agent: AgentId,
    /// Tasks at once.
    pub concurrency: usize,
    pub executor: Executor,
    /// Bytes of stdout / stderr kept per task.
    pub output_limit: usize,
    /// SIGTERM → SIGKILL grace when a task is stopped.
    pub kill_grace: Duration,
    /// Environment every task gets from the agent (`OLLAMA_BASE_URL`, proxies).
    pub env: Vec<(String, String)>,
    /// The agent's `isolation.disk_mb` over its task directories.
    pub disk_quota: DiskQuota,
    /// How long a finished task's directory is kept (`--workdir-retention`).
    pub workdir_retention: Duration,
}

/// The running shell agent of one session: a `fabric-agent` runner talking
/// to this very server over HTTP (the built-in agent speaks the protocol
/// every agent does), with a handler that runs each task's commands.
pub struct ShellWorkers {
    runner: tokio::task::JoinHandle<()>,
    kill: watch::Sender<bool>,
    in_flight: Arc<AtomicUsize>,
}

struct Worker {
    /// The orchestrator's task service: cancels and timeouts stop a command
    /// at once through it. `None` on a worker node, where they arrive with
    /// the next task heartbeat.
    service: Option<Arc<TaskService>>,
    /// This agent's own client: its policy checks go through the agent
    /// protocol (`/v1/agent/check`), as any agent's do.
    client: AgentClient,
    agent: AgentId,
    executor: Executor,
    output_limit: usize,
    kill_grace: Duration,
    kill: watch::Receiver<bool>,
    env: Vec<(String, String)>,
    in_flight: Arc<AtomicUsize>,
    disk_quota: DiskQuota,
    workdir_retention: Duration,
    /// One task at a time: what a container keeps for all its tasks (`/tmp`)
    /// can be emptied between them.
    exclusive: bool,
}

impl ShellWorkers {
    /// Starts leasing tasks of `spec.agent` through `client`.
    pub fn start(service: Option<Arc<TaskService>>, spec: ShellSpec, client: AgentClient) -> Self {
        let ShellSpec {
            agent,
            concurrency,
            executor,
            output_limit,
            kill_grace,
            env,
            disk_quota,
            workdir_retention,
        } = spec;
        let (kill, kill_rx) = watch::channel(false);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let worker = Arc::new(Worker {
            service,
            client: client.clone(),
            agent,
            executor,
            output_limit,
            kill_grace,
            kill: kill_rx,
            env,
            in_flight: Arc::clone(&in_flight),
            disk_quota,
            workdir_retention,
            exclusive: concurrency <= 1,
        });
        let options = RunOptions {
            concurrency: concurrency.max(1),
            // Lines reach streams quickly; the fabric is local.
            log_flush_interval: Duration::from_millis(50),
            cancel_grace: kill_grace + Duration::from_secs(1),
            ..RunOptions::default()
        };
        let handler = move |ctx: TaskContext| {
            let worker = Arc::clone(&worker);
            async move { run_shell_task(&worker, ctx).await }
        };
        let agent_id = client.agent_id().clone();
        let runner = tokio::spawn(async move {
            // Returns when the fabric says the agent is draining and every task is done.
            if let Err(e) = fabric_agent::run(client, options, handler).await {
                tracing::error!(agent_id = %agent_id, error = %e, "shell agent stopped");
            }
        });
        Self {
            runner,
            kill,
            in_flight,
        }
    }

    /// Leasing stops by itself when the fabric answers `agent_draining`.
    pub fn stop_leasing(&self) {}

    /// Stops the running tasks (their fate is the caller's: requeued, or left
    /// `running` for the next start to requeue) and the runner, without
    /// completing anything. Waits up to `grace` plus a margin for the
    /// commands to be killed.
    pub async fn kill(self, grace: Duration) {
        self.kill.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(2);
        while self.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.runner.abort();
        let _ = self.runner.await;
    }
}

/// Most leases the `noop` worker takes before waiting for their writes.
const NOOP_DRAIN: usize = 1024;

/// Starts the `noop` agent's worker (completes every task at once; for benchmarks and tests).
pub fn spawn_noop(service: Arc<TaskService>, shutdown: CancellationToken) -> JoinSet<()> {
    let mut set = JoinSet::new();
    set.spawn(async move {
        let agent = AgentId::noop();
        while let Some(lease) = service.lease_wait(&agent, &shutdown).await {
            complete_noop(&service, lease);
            // Drain everything ready: submit all the lease writes first, then
            // wait for them together (they share the store's batches), and
            // complete each one that applied. Every completion is still
            // durable before its task leaves the scheduler.
            loop {
                let pending: Vec<_> = std::iter::from_fn(|| service.try_lease(&agent))
                    .take(NOOP_DRAIN)
                    .collect();
                if pending.is_empty() {
                    break;
                }
                for pending in pending {
                    // A rejected or failed lease is logged by `confirm`.
                    if let Ok(Some(lease)) = service.confirm(pending).await {
                        complete_noop(&service, lease);
                    }
                }
            }
        }
    });
    set
}

fn complete_noop(service: &TaskService, lease: Lease) {
    let completion = Completion {
        status: TaskStatus::Completed,
        reason: None,
        result: Some(TaskResult {
            exit_code: Some(0),
            ..Default::default()
        }),
    };
    match service.complete(&lease.task.id, lease.epoch, completion) {
        Ok(commit) => {
            tokio::spawn(async move {
                if let Err(e) = commit.await {
                    tracing::warn!(error = %e, "noop completion not stored");
                }
            });
        }
        Err(e) => tracing::debug!(task_id = %lease.task.id, error = %e, "noop completion refused"),
    }
}

/// Asks the policies, as this agent, whether the task may run each of its
/// commands (`shell:<command>`, the whole command line) and write each of its
/// files (`file:write:<path>`), before anything runs: at every isolation
/// level, since the check is the fabric's, not the sandbox's. A
/// `require_approval` answer waits for the approver (the task logs what it
/// waits for); a cancel ends the wait. `Err` is the task's outcome then
/// (`None`: the session is going away, the supervisor decides).
async fn authorize(
    worker: &Worker,
    ctx: &TaskContext,
    commands: &[String],
    files: &[fabric_core::TaskFile],
) -> Result<(), Option<Outcome>> {
    let actions = commands
        .iter()
        .map(|c| format!("shell:{c}"))
        .chain(files.iter().map(|f| format!("file:write:{}", f.path)));
    for action in actions {
        let announce = |pending: &CheckResponse| {
            if let Some(id) = pending.approval_id {
                ctx.log(
                    "stderr",
                    format!(
                        "[fabric] awaiting approval {id} for {action} ({}): approve with 'reactor-fabric approval approve {id}'",
                        decided_by(pending)
                    ),
                );
            }
        };
        let mut kill = worker.kill.clone();
        let answer = tokio::select! {
            answer = worker.client.check_with(&action, None, announce) => answer,
            () = ctx.cancelled() => return Err(Some(Outcome::failed("stopped"))),
            _ = kill.wait_for(|k| *k) => return Err(None),
        };
        let refusal = match answer {
            Ok(answer) if answer.decision == Effect::Allow => continue,
            Ok(answer) => match (answer.approval_id, answer.approval_status) {
                (Some(id), Some(status)) => {
                    format!(
                        "approval {id} for {action} was {status} ({})",
                        decided_by(&answer)
                    )
                }
                _ => format!("{action} is denied ({})", decided_by(&answer)),
            },
            Err(e) => format!("cannot ask the policies whether {action} is allowed: {e}"),
        };
        tracing::info!(task_id = %ctx.task().id, agent_id = %worker.agent, %refusal, "task refused by policy");
        return Err(Some(Outcome::Failed {
            result: TaskResult {
                error: Some(format!("policy_denied: {refusal}")),
                ..TaskResult::default()
            },
            reason: Some(reason::POLICY_DENIED.into()),
        }));
    }
    Ok(())
}

/// `policy P, rule R` (or the default deny) of a check's answer.
fn decided_by(answer: &CheckResponse) -> String {
    match &answer.policy_id {
        Some(policy) => format!("policy {policy}, rule {}", answer.rule),
        None => format!("{}: no policy allows it", answer.rule),
    }
}

/// Runs one task's commands; `pending` forever when the task must not be
/// completed (the session is being killed: the supervisor requeues it).
async fn run_shell_task(worker: &Worker, ctx: TaskContext) -> Outcome {
    worker.in_flight.fetch_add(1, Ordering::SeqCst);
    let workdir = worker.task_dir(&ctx.task().id);
    let outcome = run_commands(worker, &ctx, &workdir).await;
    if outcome.is_some() {
        // Finished: the result holds what the task said; its files go (a
        // task that is requeued keeps them for its next attempt).
        worker.remove_task_dir(workdir).await;
    }
    worker.in_flight.fetch_sub(1, Ordering::SeqCst);
    // Counted as done by the protocol's `complete`, like any agent's.
    match outcome {
        Some(outcome) => outcome,
        None => std::future::pending().await,
    }
}

impl Worker {
    /// Where a task's commands run: `<agent's work root>/<task id>`.
    fn task_dir(&self, id: &fabric_core::TaskId) -> PathBuf {
        let root = match &self.executor {
            Executor::Host { work_root, .. } => work_root.as_path(),
            Executor::Sandbox(sandbox) => sandbox.workdir(),
            Executor::Container(_) => ContainerShell::workspace(),
        };
        root.join(id.to_string())
    }

    /// Removes a finished task's directory, now or after the retention.
    async fn remove_task_dir(&self, dir: PathBuf) {
        let executor = self.executor.clone();
        let clear_tmp = self.exclusive;
        let remove = async move {
            let removed = match &executor {
                Executor::Host { .. } | Executor::Sandbox(_) => {
                    match tokio::fs::remove_dir_all(&dir).await {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                        other => other,
                    }
                }
                Executor::Container(shell) => shell.remove_task_dir(&dir, clear_tmp).await,
            };
            if let Err(e) = removed {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a finished task's directory");
            }
        };
        if self.workdir_retention.is_zero() {
            remove.await;
        } else {
            let retention = self.workdir_retention;
            tokio::spawn(async move {
                tokio::time::sleep(retention).await;
                remove.await;
            });
        }
    }
}

async fn run_commands(
    worker: &Worker,
    ctx: &TaskContext,
    workdir: &std::path::Path,
) -> Option<Outcome> {
    let service = &worker.service;
    let task = ctx.task().clone();
    let (id, epoch) = (task.id, ctx.epoch());
    let workdir = workdir.to_path_buf();
    let mut env: Vec<(String, String)> = task.input.env.into_iter().collect();
    // The agent's own (proxy, inference endpoint) win over the request's.
    env.extend(worker.env.iter().cloned());
    // Last, so they win over anything else (requests cannot set FABRIC_* at all).
    env.push((ENV_TASK_ID.into(), id.to_string()));
    env.push((ENV_AGENT_ID.into(), task.agent_id.to_string()));
    env.push((ENV_WORKSPACE_DIR.into(), workdir.display().to_string()));
    // W3C trace context of this attempt: commands' own spans and calls join the task's trace.
    if let Some(traceparent) = &task.traceparent {
        env.push((crate::trace::TRACEPARENT_ENV.into(), traceparent.clone()));
    }
    let commands = if task.input.commands.is_empty() {
        task.input.prompt.into_iter().collect()
    } else {
        task.input.commands
    };
    if let Err(refused) = authorize(worker, ctx, &commands, &task.input.files).await {
        return refused;
    }
    let job = ShellJob {
        commands,
        files: task.input.files,
        workdir,
        env,
        output_limit: worker.output_limit,
        kill_grace: worker.kill_grace,
    };

    // The lease was durable before the fabric answered it. A cancel or
    // timeout reaches this process at once through the kill handle (an
    // external agent learns it from its next heartbeat): register the
    // handle, *then* check the lease is still live, so no kill is lost.
    let stop = match service {
        Some(service) => {
            let stop = service.track_running(id, epoch);
            if let Err(e) = service.heartbeat(&id, epoch) {
                service.untrack_running(&id);
                tracing::info!(task_id = %id, error = %e, "task ended before it started");
                return Some(Outcome::failed("the task ended before it started"));
            }
            Some(stop)
        }
        None => None,
    };
    let mut kill = worker.kill.clone();
    let lost = ctx.clone();
    // Set when the task is stopped for the agent's disk quota: bytes used then.
    let over_quota = std::sync::OnceLock::new();
    let cancel = async {
        let tracked = async {
            // A dropped sender means "no longer tracked", not "stop".
            let stopped = match stop {
                Some(stop) => stop.await.is_ok(),
                None => false,
            };
            if !stopped {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = tracked => {}
            () = lost.cancelled() => {}
            _ = kill.wait_for(|k| *k) => {}
            used = worker.disk_quota.exceeded() => {
                let _ = over_quota.set(used);
            }
        }
    };
    let (log_tx, mut log_rx) = mpsc::channel::<LogLine>(4096);
    let forwarder = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while let Some(line) = log_rx.recv().await {
                ctx.log(line.stream.as_str(), line.line);
            }
        })
    };
    tracing::info!(task_id = %id, agent_id = %worker.agent, attempt = task.attempt, "task started");

    let run = async {
        match &worker.executor {
            Executor::Host {
                confinement: Some(confinement),
                ..
            } => confinement.run_shell(job, Some(log_tx), cancel).await,
            Executor::Host {
                confinement: None, ..
            } => run_shell(job, Some(log_tx), cancel).await,
            Executor::Sandbox(sandbox) => sandbox.run_shell(job, Some(log_tx), cancel).await,
            Executor::Container(shell) => shell.run_shell(job, Some(log_tx), cancel).await,
        }
    };
    let outcome = run.await;
    if let Some(service) = service {
        service.untrack_running(&id);
    }
    // All log lines are handed over before the result, so a stream shows them in order.
    let _ = forwarder.await;

    // A task that ends past the quota fails too: a fast writer can finish
    // between two of the watcher's measurements.
    if let Ok(o) = &outcome
        && !o.canceled
        && over_quota.get().is_none()
        && let Ok(used) = worker.disk_quota.usage().await
        && used > worker.disk_quota.limit_bytes()
    {
        let _ = over_quota.set(used);
    }
    match outcome {
        Ok(outcome) if over_quota.get().is_some() => {
            let used = over_quota.get().copied().unwrap_or_default();
            let limit = worker.disk_quota.limit_bytes();
            tracing::info!(task_id = %id, agent_id = %worker.agent, used, limit, "task stopped: disk quota exceeded");
            let mut result = TaskResult::from(outcome);
            result.error = Some(format!(
                "disk_quota_exceeded: the agent's task directories use {} MiB, over its disk quota of {} MiB; \
                 write less, or give the agent more (isolation.disk_mb, agent spawn --disk-mb)",
                used.div_ceil(1 << 20),
                limit >> 20
            ));
            Some(Outcome::Failed {
                result,
                reason: Some(reason::DISK_QUOTA_EXCEEDED.into()),
            })
        }
        Ok(outcome) if outcome.canceled => {
            tracing::info!(task_id = %id, "task stopped");
            if *worker.kill.borrow() {
                // The session is going away: the supervisor decides the task's fate.
                return None;
            }
            // Canceled or timed out: the scheduler already decided; this completion is refused.
            Some(Outcome::failed("stopped"))
        }
        Ok(outcome) => {
            let success = outcome.success();
            let why = outcome.oom_killed.then(|| reason::OOM_KILLED.to_owned());
            tracing::info!(task_id = %id, agent_id = %worker.agent, success, exit_code = outcome.exit_code,
                reason = why.as_deref().unwrap_or(""), "task finished");
            let mut result = TaskResult::from(outcome);
            if why.is_some() && result.error.is_none() {
                result.error = Some("killed by the out-of-memory killer: the agent's memory limit (isolation.memory_mb) is too small for this task".into());
            }
            Some(if success {
                Outcome::Completed(result)
            } else {
                Outcome::Failed {
                    result,
                    reason: why,
                }
            })
        }
        Err(e @ fabric_runtime::RuntimeError::ContainerGone { .. }) => {
            // The session is going away with its container: the supervisor
            // requeues the task with the crash as the reason.
            tracing::info!(task_id = %id, error = %e, "task's container stopped");
            None
        }
        Err(e) => {
            tracing::info!(task_id = %id, error = %e, "task could not start");
            Some(Outcome::Failed {
                result: TaskResult {
                    error: Some(e.to_string()),
                    ..Default::default()
                },
                reason: Some(reason::SPAWN_FAILED.into()),
            })
        }
    }
}
