//! Built-in agents that run inside the server process: `shell` (runs a task's
//! commands as child processes, isolation level `none`) and `noop` (completes
//! every task at once, for benchmarks and tests).
//!
//! They use the same lease → heartbeat → complete cycle as any agent, with
//! the scheduler instead of HTTP in between. External agents speak it over
//! `/v1/agent/...` (the agents issue).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fabric_core::{AgentId, EventKind, TaskResult, TaskStatus, reason};
use fabric_engine::{Completion, Lease};
use fabric_runtime::{LogLine, ShellJob, run_shell};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::service::TaskService;

pub const ENV_TASK_ID: &str = "FABRIC_TASK_ID";
pub const ENV_AGENT_ID: &str = "FABRIC_AGENT_ID";
pub const ENV_WORKSPACE_DIR: &str = "FABRIC_WORKSPACE_DIR";

/// Settings of the built-in `shell` agent.
#[derive(Debug, Clone)]
pub struct ShellAgentConfig {
    /// Tasks run at the same time.
    pub concurrency: usize,
    /// Bytes of stdout and of stderr kept per task (the rest is cut and marked truncated).
    pub output_limit: usize,
    /// Time between SIGTERM and SIGKILL when a running task is canceled or times out.
    pub kill_grace: Duration,
    /// Parent of the per-task working directories (`<work_root>/<task id>`).
    pub work_root: PathBuf,
}

impl ShellAgentConfig {
    pub fn new(work_root: PathBuf) -> Self {
        Self {
            concurrency: 4,
            output_limit: fabric_runtime::DEFAULT_OUTPUT_LIMIT,
            kill_grace: Duration::from_secs(5),
            work_root,
        }
    }
}

/// Starts the built-in agents' workers; they stop when `shutdown` turns true.
pub fn spawn(
    service: Arc<TaskService>,
    shell: ShellAgentConfig,
    shutdown: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    let shell = Arc::new(shell);
    for _ in 0..shell.concurrency.max(1) {
        let (service, shell, mut shutdown) =
            (Arc::clone(&service), Arc::clone(&shell), shutdown.clone());
        set.spawn(async move {
            let agent = AgentId::shell();
            while let Some(lease) = service.lease_wait(&agent, &mut shutdown).await {
                run_shell_task(&service, &shell, lease).await;
            }
        });
    }
    let mut shutdown = shutdown;
    set.spawn(async move {
        let agent = AgentId::noop();
        while let Some(lease) = service.lease_wait(&agent, &mut shutdown).await {
            // Drain everything ready without waiting for each commit; every
            // completion is still durable before its task leaves the scheduler.
            let mut next = Some(lease);
            while let Some(lease) = next {
                complete_noop(&service, lease);
                next = service.try_lease(&agent);
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

async fn run_shell_task(service: &Arc<TaskService>, config: &ShellAgentConfig, lease: Lease) {
    let task = lease.task;
    let (id, epoch) = (task.id, lease.epoch);
    let workdir = config.work_root.join(id.to_string());
    let mut env: Vec<(String, String)> = task.input.env.into_iter().collect();
    // Last, so they win over anything else (requests cannot set FABRIC_* at all).
    env.push((ENV_TASK_ID.into(), id.to_string()));
    env.push((ENV_AGENT_ID.into(), task.agent_id.to_string()));
    env.push((ENV_WORKSPACE_DIR.into(), workdir.display().to_string()));
    let commands = if task.input.commands.is_empty() {
        task.input.prompt.into_iter().collect()
    } else {
        task.input.commands
    };
    let job = ShellJob {
        commands,
        files: task.input.files,
        workdir,
        env,
        output_limit: config.output_limit,
        kill_grace: config.kill_grace,
    };

    // Nothing runs before its attempt is durable: after a crash, the store
    // then names every task that may have started (status `running`).
    if let Err(e) = service.store_barrier().await {
        tracing::error!(task_id = %id, error = %e, "cannot record the lease; not running the task");
        return;
    }
    // Register the kill handle, *then* check the lease is still live: a cancel
    // or timeout decided before the check fails it, and one decided after it
    // finds the handle. Either way the kill is not lost.
    let stop = service.track_running(id, epoch);
    if let Err(e) = service.heartbeat(&id, epoch) {
        service.untrack_running(&id);
        tracing::info!(task_id = %id, error = %e, "task ended before it started");
        return;
    }
    let cancel = async move {
        // A dropped sender means "no longer tracked", not "stop".
        if stop.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let (log_tx, mut log_rx) = mpsc::channel::<LogLine>(4096);
    let forwarder = {
        let service = Arc::clone(service);
        tokio::spawn(async move {
            while let Some(line) = log_rx.recv().await {
                service.events().emit(
                    id,
                    EventKind::Log,
                    service.now(),
                    json!({"stream": line.stream.as_str(), "line": line.line}),
                );
            }
        })
    };
    tracing::info!(task_id = %id, agent_id = "shell", attempt = task.attempt, "task started");

    let run = run_shell(job, Some(log_tx), cancel);
    tokio::pin!(run);
    let mut heartbeat = tokio::time::interval(service.lease_ttl() / 3);
    heartbeat.tick().await;
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            _ = heartbeat.tick() => {
                if let Err(e) = service.heartbeat(&id, epoch) {
                    tracing::debug!(task_id = %id, error = %e, "heartbeat refused");
                }
            }
        }
    };
    service.untrack_running(&id);
    // All log lines are out before the result, so a stream shows them in order.
    let _ = forwarder.await;

    let completion = match outcome {
        Ok(outcome) if outcome.canceled => {
            // Canceled, timed out or shutting down: the scheduler already decided the task's fate.
            tracing::info!(task_id = %id, "task stopped");
            return;
        }
        Ok(outcome) => {
            let status = if outcome.success() {
                TaskStatus::Completed
            } else {
                TaskStatus::Failed
            };
            let exit_code = outcome.exit_code;
            tracing::info!(task_id = %id, agent_id = "shell", outcome = %status, exit_code, "task finished");
            Completion {
                status,
                reason: None,
                result: Some(TaskResult::from(outcome)),
            }
        }
        Err(e) => {
            tracing::info!(task_id = %id, error = %e, "task could not start");
            Completion {
                status: TaskStatus::Failed,
                reason: Some(reason::SPAWN_FAILED.into()),
                result: Some(TaskResult {
                    error: Some(e.to_string()),
                    ..Default::default()
                }),
            }
        }
    };
    match service.complete(&id, epoch, completion) {
        Ok(commit) => {
            if let Err(e) = commit.await {
                tracing::warn!(task_id = %id, error = %e, "completion not stored");
            }
        }
        Err(e) => tracing::info!(task_id = %id, error = %e, "completion refused"),
    }
}
