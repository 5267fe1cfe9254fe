//! Built-in agents that run inside the server process: `shell` (runs a task's
//! commands as host processes, or inside the agent's sandbox) and `noop`
//! (completes every task at once, for benchmarks and tests).
//!
//! They use the same lease → heartbeat → complete cycle as any agent, with
//! the scheduler instead of HTTP in between. External agents speak it over
//! `/v1/agent/...` (the agents issue).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fabric_core::{AgentId, EventKind, TaskResult, TaskStatus, reason};
use fabric_engine::{Completion, Lease};
use fabric_runtime::sandbox::Sandbox;
use fabric_runtime::{LogLine, ShellJob, run_shell};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::service::TaskService;

pub const ENV_TASK_ID: &str = "FABRIC_TASK_ID";
pub const ENV_AGENT_ID: &str = "FABRIC_AGENT_ID";
pub const ENV_WORKSPACE_DIR: &str = "FABRIC_WORKSPACE_DIR";

/// Where the shell agent runs a task's commands.
#[derive(Clone)]
pub enum Executor {
    /// Host processes (isolation `none`), each task in `<work_root>/<task id>`.
    Host { work_root: PathBuf },
    /// Inside the agent's sandbox (isolation `process`), each task in
    /// `<sandbox workdir>/<task id>`.
    Sandbox(Arc<Sandbox>),
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
}

/// The running workers of one shell agent session.
pub struct ShellWorkers {
    set: JoinSet<()>,
    stop_leasing: watch::Sender<bool>,
    kill: watch::Sender<bool>,
}

struct Worker {
    service: Arc<TaskService>,
    agent: AgentId,
    executor: Executor,
    output_limit: usize,
    kill_grace: Duration,
    kill: watch::Receiver<bool>,
    on_done: Box<dyn Fn() + Send + Sync>,
    env: Vec<(String, String)>,
}

impl ShellWorkers {
    /// Starts `concurrency` workers leasing tasks of `agent`.
    pub fn start(
        service: Arc<TaskService>,
        spec: ShellSpec,
        on_done: Box<dyn Fn() + Send + Sync>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Self {
        let ShellSpec {
            agent,
            concurrency,
            executor,
            output_limit,
            kill_grace,
            env,
        } = spec;
        let (stop_leasing, stop_rx) = watch::channel(false);
        let (kill, kill_rx) = watch::channel(false);
        // The server stopping ends leasing at once (its running tasks are
        // stopped by `TaskService::stop_all_running` and requeued by the next start).
        if *shutdown.borrow() {
            stop_leasing.send_replace(true);
        }
        {
            let (stop_leasing, mut killed) = (stop_leasing.clone(), kill_rx.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => { stop_leasing.send_replace(true); }
                    _ = killed.wait_for(|k| *k) => {}
                }
            });
        }
        let worker = Arc::new(Worker {
            service,
            agent,
            executor,
            output_limit,
            kill_grace,
            kill: kill_rx,
            on_done,
            env,
        });
        let mut set = JoinSet::new();
        for _ in 0..concurrency.max(1) {
            let (worker, mut stop) = (Arc::clone(&worker), stop_rx.clone());
            set.spawn(async move {
                while let Some(lease) = worker.service.lease_wait(&worker.agent, &mut stop).await {
                    run_shell_task(&worker, lease).await;
                }
            });
        }
        Self {
            set,
            stop_leasing,
            kill,
        }
    }

    /// Take no new task; running ones go on.
    pub fn stop_leasing(&self) {
        self.stop_leasing.send_replace(true);
    }

    /// Stops taking tasks and stops the running ones (their tasks' fate is
    /// the caller's: requeued or left for recovery), waiting up to `grace`
    /// plus a margin for the workers to end.
    pub async fn kill(mut self, grace: Duration) {
        self.stop_leasing.send_replace(true);
        self.kill.send_replace(true);
        let all = async { while self.set.join_next().await.is_some() {} };
        if tokio::time::timeout(grace + Duration::from_secs(2), all)
            .await
            .is_err()
        {
            self.set.abort_all();
        }
    }
}

/// Starts the `noop` agent's worker (completes every task at once; for benchmarks and tests).
pub fn spawn_noop(service: Arc<TaskService>, mut shutdown: watch::Receiver<bool>) -> JoinSet<()> {
    let mut set = JoinSet::new();
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

async fn run_shell_task(worker: &Worker, lease: Lease) {
    let service = &worker.service;
    let task = lease.task;
    let (id, epoch) = (task.id, lease.epoch);
    let workdir = match &worker.executor {
        Executor::Host { work_root } => work_root.join(id.to_string()),
        Executor::Sandbox(sandbox) => sandbox.workdir().join(id.to_string()),
    };
    let mut env: Vec<(String, String)> = task.input.env.into_iter().collect();
    // The agent's own (proxy, inference endpoint) win over the request's.
    env.extend(worker.env.iter().cloned());
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
        output_limit: worker.output_limit,
        kill_grace: worker.kill_grace,
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
    let mut kill = worker.kill.clone();
    let cancel = async move {
        let tracked = async {
            // A dropped sender means "no longer tracked", not "stop".
            if stop.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = tracked => {}
            _ = kill.wait_for(|k| *k) => {}
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
    tracing::info!(task_id = %id, agent_id = %worker.agent, attempt = task.attempt, "task started");

    let run = async {
        match &worker.executor {
            Executor::Host { .. } => run_shell(job, Some(log_tx), cancel).await,
            Executor::Sandbox(sandbox) => sandbox.run_shell(job, Some(log_tx), cancel).await,
        }
    };
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
            let why = outcome.oom_killed.then(|| reason::OOM_KILLED.to_owned());
            let exit_code = outcome.exit_code;
            tracing::info!(task_id = %id, agent_id = %worker.agent, outcome = %status, exit_code, reason = why.as_deref().unwrap_or(""), "task finished");
            let mut result = TaskResult::from(outcome);
            if why.is_some() && result.error.is_none() {
                result.error = Some("killed by the out-of-memory killer: the agent's memory limit (isolation.memory_mb) is too small for this task".into());
            }
            Completion {
                status,
                reason: why,
                result: Some(result),
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
            (worker.on_done)();
            if let Err(e) = commit.await {
                tracing::warn!(task_id = %id, error = %e, "completion not stored");
            }
        }
        Err(e) => tracing::info!(task_id = %id, error = %e, "completion refused"),
    }
}
