//! The Rust SDK against a real fabric: the client's calls, then `run`.

use std::sync::Arc;
use std::time::Duration;

use fabric_agent::{AgentClient, AgentError, LeaseOutcome, Outcome, TaskContext};
use fabric_core::api::{AgentLogLine, CompleteRequest};
use fabric_core::{AgentId, EventKind, TaskResult, TaskStatus, reason};
use serde_json::json;
use tokio::sync::{Barrier, mpsc};

use crate::harness::{Fabric, Runner, quick_options};

/// What the test handler tells the test: `(task id, "started" | "cancelled")`.
#[derive(Clone)]
struct Probe {
    seen: mpsc::UnboundedSender<(String, &'static str)>,
    meet: Arc<Barrier>,
}

impl Probe {
    fn new() -> (Self, mpsc::UnboundedReceiver<(String, &'static str)>) {
        let (seen, rx) = mpsc::unbounded_channel();
        let meet = Arc::new(Barrier::new(2));
        (Self { seen, meet }, rx)
    }
}

/// The handler under test. By prompt: `fail: why` fails; `block` waits to be
/// canceled; `sleep:MS` works that long; `meet` waits for a second `meet`
/// task (so both must run at once); anything else is upper-cased.
async fn handle(ctx: TaskContext, probe: Probe) -> Outcome {
    let id = ctx.task().id.to_string();
    let prompt = ctx.prompt().unwrap_or_default().to_owned();
    ctx.log("stdout", format!("got {prompt}"));
    let _ = probe.seen.send((id.clone(), "started"));
    if let Some(why) = prompt.strip_prefix("fail:") {
        ctx.log("stderr", "giving up");
        return Outcome::failed(why.trim());
    }
    if prompt == "block" {
        ctx.cancelled().await;
        assert!(ctx.is_cancelled());
        let _ = probe.seen.send((id, "cancelled"));
        // Must be ignored: the runner never completes a task whose lease is lost.
        return Outcome::completed(TaskResult {
            stdout: "must never be recorded".into(),
            ..TaskResult::default()
        });
    }
    if let Some(ms) = prompt.strip_prefix("sleep:") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    if prompt == "meet"
        && tokio::time::timeout(Duration::from_secs(10), probe.meet.wait())
            .await
            .is_err()
    {
        return Outcome::failed("the other task never ran alongside");
    }
    for i in 0..3 {
        ctx.log("stdout", format!("line {i}"));
    }
    Outcome::completed(TaskResult {
        exit_code: Some(0),
        stdout: prompt.to_uppercase(),
        output: Some(json!({"words": prompt.split_whitespace().count()})),
        ..TaskResult::default()
    })
}

async fn next_seen(rx: &mut mpsc::UnboundedReceiver<(String, &'static str)>, what: &str) -> String {
    loop {
        let (id, seen) = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("handler never reported {what:?}"))
            .unwrap();
        if seen == what {
            return id;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_completes_a_task_and_its_logs_arrive_before_the_completion() {
    let fabric = Fabric::start().await;
    let client = fabric.client_for_new_agent("rs", 1).await;
    let (probe, _seen) = Probe::new();
    let runner = Runner::spawn(client, quick_options(1), move |ctx| {
        handle(ctx, probe.clone())
    });

    let id = fabric.create_task("rs", "hello agent fabric").await;
    let view = fabric.wait_done(&id).await;
    assert_eq!(view.status, TaskStatus::Completed, "{view:?}");
    let result = view.result.unwrap();
    assert_eq!(result.stdout, "HELLO AGENT FABRIC");
    assert_eq!(result.output, Some(json!({"words": 3})));
    assert_eq!(fabric.task(&id).await["attempt"], 1);

    let lines = fabric.log_lines(&id).await;
    let expected: Vec<(String, String)> = ["got hello agent fabric", "line 0", "line 1", "line 2"]
        .iter()
        .map(|l| ("stdout".to_owned(), (*l).to_owned()))
        .collect();
    assert_eq!(lines, expected);
    // Every log line is recorded before the task's end.
    let events = fabric.events(&id).await;
    let last_log = events
        .iter()
        .filter(|e| e.kind == EventKind::Log)
        .map(|e| e.seq)
        .max();
    let end = events
        .iter()
        .filter(|e| e.kind != EventKind::Log && e.payload.to_string().contains("completed"))
        .map(|e| e.seq)
        .min();
    assert!(last_log < end, "logs after the completion: {events:#?}");

    runner.stop().await.unwrap();
    fabric.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_outcome_is_recorded_as_failed() {
    let fabric = Fabric::start().await;
    let client = fabric.client_for_new_agent("rs", 1).await;
    let (probe, _seen) = Probe::new();
    let runner = Runner::spawn(client, quick_options(1), move |ctx| {
        handle(ctx, probe.clone())
    });

    let id = fabric.create_task("rs", "fail: no such file").await;
    let view = fabric.wait_done(&id).await;
    assert_eq!(view.status, TaskStatus::Failed, "{view:?}");
    assert_eq!(view.reason.as_deref(), Some(reason::AGENT_FAILED));
    assert_eq!(view.result.unwrap().error.as_deref(), Some("no such file"));
    // Final: a failed completion is not retried.
    assert_eq!(fabric.task(&id).await["attempt"], 1);
    assert!(
        fabric
            .log_lines(&id)
            .await
            .contains(&("stderr".to_owned(), "giving up".to_owned()))
    );

    runner.stop().await.unwrap();
    fabric.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_a_running_task_resolves_cancelled_and_it_is_never_completed() {
    // A short lease, so heartbeats (which learn of the cancel) come often.
    let fabric = Fabric::start_with(|c| c.scheduler.lease_ttl = Duration::from_millis(1500)).await;
    let client = fabric.client_for_new_agent("rs", 1).await;
    let (probe, mut seen) = Probe::new();
    let runner = Runner::spawn(client, quick_options(1), move |ctx| {
        handle(ctx, probe.clone())
    });

    let id = fabric.create_task("rs", "block").await;
    assert_eq!(next_seen(&mut seen, "started").await, id);
    let (status, body) = fabric
        .post(&format!("/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_seen(&mut seen, "cancelled").await, id);

    // The handler's "completed" outcome was dropped, and the slot is free again.
    let next = fabric.create_task("rs", "after the cancel").await;
    assert_eq!(fabric.wait_done(&next).await.status, TaskStatus::Completed);
    let view = fabric.wait_done(&id).await;
    assert_eq!(view.status, TaskStatus::Canceled, "{view:?}");
    assert!(
        !format!("{view:?}").contains("must never be recorded"),
        "{view:?}"
    );

    runner.stop().await.unwrap();
    fabric.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_up_to_concurrency_tasks_at_once() {
    let fabric = Fabric::start().await;
    let client = fabric.client_for_new_agent("rs", 2).await;
    let (probe, _seen) = Probe::new();
    let runner = Runner::spawn(client, quick_options(2), move |ctx| {
        handle(ctx, probe.clone())
    });

    // Each `meet` task waits for the other: both finish only if both run at once.
    let a = fabric.create_task("rs", "meet").await;
    let b = fabric.create_task("rs", "meet").await;
    for id in [a, b] {
        let view = fabric.wait_done(&id).await;
        assert_eq!(view.status, TaskStatus::Completed, "{view:?}");
    }

    runner.stop().await.unwrap();
    fabric.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_task_longer_than_its_lease() {
    // A lease of 3 s (heartbeats every third of it) and a task of 7 s: the
    // task outlives two leases, and a loaded machine still heartbeats in time.
    let fabric = Fabric::start_with(|c| c.scheduler.lease_ttl = Duration::from_secs(3)).await;
    let client = fabric.client_for_new_agent("rs", 1).await;
    let (probe, _seen) = Probe::new();
    let runner = Runner::spawn(client, quick_options(1), move |ctx| {
        handle(ctx, probe.clone())
    });

    let id = fabric.create_task("rs", "sleep:7000").await;
    let view = fabric.wait_done(&id).await;
    assert_eq!(view.status, TaskStatus::Completed, "{view:?}");
    // Never lost its lease: one attempt.
    assert_eq!(fabric.task(&id).await["attempt"], 1);

    runner.stop().await.unwrap();
    fabric.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_lets_the_running_task_finish_then_run_returns_ok() {
    let fabric = Arc::new(Fabric::start().await);
    let client = fabric.client_for_new_agent("rs", 1).await;
    let (probe, mut seen) = Probe::new();
    let runner = Runner::spawn(client, quick_options(1), move |ctx| {
        handle(ctx, probe.clone())
    });

    let id = fabric.create_task("rs", "sleep:1500").await;
    assert_eq!(next_seen(&mut seen, "started").await, id);
    // Answers once the agent has stopped, so in a task of its own.
    let terminate = tokio::spawn({
        let fabric = Arc::clone(&fabric);
        async move { fabric.delete("/v1/agents/rs?drain_timeout=20").await }
    });

    // `run` (not the test's shutdown) ends: the fabric said agent_draining.
    let returned = tokio::time::timeout(Duration::from_secs(15), runner.handle)
        .await
        .expect("run did not return after the agent was drained")
        .unwrap();
    assert!(returned.is_ok(), "{returned:?}");
    assert_eq!(fabric.wait_done(&id).await.status, TaskStatus::Completed);
    let (status, body) = terminate.await.unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_its_grace_drops_the_handler_without_completing() {
    let fabric = Fabric::start().await;
    let client = fabric.client_for_new_agent("rs", 1).await;
    let (probe, mut seen) = Probe::new();
    let options = fabric_agent::RunOptions {
        shutdown_grace: Duration::from_millis(200),
        ..quick_options(1)
    };
    let runner = Runner::spawn(client, options, move |ctx| handle(ctx, probe.clone()));

    let id = fabric.create_task("rs", "block").await;
    assert_eq!(next_seen(&mut seen, "started").await, id);
    let started = tokio::time::Instant::now();
    runner.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    // Still leased to the agent that went away: the fabric requeues it when the lease expires.
    assert_eq!(fabric.status_of(&id).await, TaskStatus::Running);
    fabric.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_backs_off_while_the_fabric_is_down_and_carries_on_after() {
    let fabric = Fabric::start().await;
    let client = fabric.client_for_new_agent("rs", 1).await;
    let addr: std::net::SocketAddr = fabric.base.trim_start_matches("http://").parse().unwrap();
    let dir = fabric.stop_keeping_data().await;

    // Down: its port accepts connections and hangs up at once; count the tries.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let refuser = tokio::spawn(async move {
        let mut attempts = 0u32;
        loop {
            tokio::select! {
                _ = &mut stop_rx => return (listener, attempts),
                accepted = listener.accept() => {
                    drop(accepted.unwrap());
                    attempts += 1;
                }
            }
        }
    });
    let (probe, _seen) = Probe::new();
    let runner = Runner::spawn(client, quick_options(1), move |ctx| {
        handle(ctx, probe.clone())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send(()).unwrap();
    let (listener, attempts) = refuser.await.unwrap();
    // Waits of 100, 200, 400, 800 ms...: a handful of tries, not a spin.
    assert!(
        (2..=12).contains(&attempts),
        "{attempts} lease attempts in 2 s"
    );

    // Back, with the same data: the agent and its token survived the restart.
    let fabric = Fabric::start_in(listener, dir, |_| {}).await;
    let id = fabric.create_task("rs", "after the outage").await;
    let view = fabric.wait_done(&id).await;
    assert_eq!(view.status, TaskStatus::Completed, "{view:?}");

    runner.stop().await.unwrap();
    fabric.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_speaks_each_endpoint() {
    let fabric = Fabric::start().await;
    let client = fabric.client_for_new_agent("raw", 1).await;

    assert_eq!(
        client.lease(Duration::ZERO).await.unwrap(),
        LeaseOutcome::Empty
    );
    client.agent_heartbeat().await.unwrap();

    let id = fabric.create_task("raw", "by hand").await;
    let LeaseOutcome::Task(lease) = client.lease(Duration::from_secs(5)).await.unwrap() else {
        panic!("no task leased");
    };
    assert_eq!(lease.task.id.to_string(), id);
    assert_eq!(lease.task.input.prompt.as_deref(), Some("by hand"));
    let task_id = lease.task.id;

    let beat = client.heartbeat(task_id, lease.epoch).await.unwrap();
    assert!(beat.lease_expires_at >= lease.lease_expires_at);
    let stale = client
        .heartbeat(task_id, lease.epoch + 1)
        .await
        .unwrap_err();
    assert!(stale.is_stale_lease(), "{stale:?}");

    client
        .send_logs(
            task_id,
            lease.epoch,
            vec![AgentLogLine {
                stream: "stdout".into(),
                line: "by hand".into(),
            }],
        )
        .await
        .unwrap();

    // A renewed token replaces the old one in this client.
    let fresh = client.renew_token().await.unwrap();
    assert!(fresh.expires_at.is_some());
    client.agent_heartbeat().await.unwrap();

    let stale = client
        .complete(
            task_id,
            &CompleteRequest {
                epoch: lease.epoch + 1,
                status: TaskStatus::Completed,
                result: None,
                reason: None,
            },
        )
        .await
        .unwrap_err();
    assert!(stale.is_stale_lease(), "{stale:?}");
    let done = client
        .complete(
            task_id,
            &CompleteRequest {
                epoch: lease.epoch,
                status: TaskStatus::Completed,
                result: Some(TaskResult {
                    stdout: "done".into(),
                    ..TaskResult::default()
                }),
                reason: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.result.unwrap().stdout, "done");
    assert_eq!(
        fabric.log_lines(&id).await,
        [("stdout".to_owned(), "by hand".to_owned())]
    );
    fabric.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reports_bad_tokens_and_unreachable_fabrics() {
    let fabric = Fabric::start().await;
    fabric.external_agent("raw", 1).await;
    let id = AgentId::new("raw").unwrap();

    let forged = AgentClient::new(&fabric.base, "not-a-token", id.clone()).unwrap();
    let err = forged.lease(Duration::ZERO).await.unwrap_err();
    assert!(
        matches!(err, AgentError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    // A user's token is not an agent token.
    let admin = AgentClient::new(&fabric.base, fabric.admin.clone(), id.clone()).unwrap();
    let err = admin.lease(Duration::ZERO).await.unwrap_err();
    assert!(
        matches!(err, AgentError::Unauthorized { status: 403, .. }),
        "{err:?}"
    );

    // Nothing listens on port 1.
    let nowhere = AgentClient::new("http://127.0.0.1:1", "t", id).unwrap();
    let err = nowhere.agent_heartbeat().await.unwrap_err();
    assert!(matches!(err, AgentError::Transport { .. }), "{err:?}");
    assert!(err.is_retryable());
    fabric.stop().await;
}

/// The protocol's promise (docs/AGENT_PROTOCOL.md): once a task is canceled,
/// its agent's heartbeat, events and complete get 409 `stale_lease`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_a_canceled_task_answer_stale_lease() {
    let fabric = Fabric::start().await;
    let client = fabric.client_for_new_agent("raw", 1).await;
    let id = fabric.create_task("raw", "to be canceled").await;
    let LeaseOutcome::Task(lease) = client.lease(Duration::from_secs(5)).await.unwrap() else {
        panic!("no task leased");
    };
    let (status, body) = fabric
        .post(&format!("/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");

    let task_id = lease.task.id;
    let heartbeat = client.heartbeat(task_id, lease.epoch).await.unwrap_err();
    assert!(heartbeat.is_stale_lease(), "heartbeat: {heartbeat:?}");
    let events = client
        .send_logs(task_id, lease.epoch, Vec::new())
        .await
        .unwrap_err();
    assert!(events.is_stale_lease(), "events: {events:?}");
    let complete = client
        .complete(
            task_id,
            &CompleteRequest {
                epoch: lease.epoch,
                status: TaskStatus::Completed,
                result: None,
                reason: None,
            },
        )
        .await
        .unwrap_err();
    assert!(complete.is_stale_lease(), "complete: {complete:?}");
    assert_eq!(fabric.status_of(&id).await, TaskStatus::Canceled);
    fabric.stop().await;
}
