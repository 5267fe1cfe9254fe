//! Scheduler behaviour under a hand-driven clock (FR-SCHED-1..6).

use std::collections::HashMap;
use std::time::Duration;

use fabric_core::{
    AgentId, Priority, Task, TaskId, TaskInput, TaskStatus, TenantId, Timestamp, reason,
};

use super::*;

const T0: i64 = 1_000_000;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(T0 + ms)
}

fn agent() -> AgentId {
    AgentId::new("worker").unwrap()
}

fn task(tenant: &str, priority: Priority) -> Task {
    let mut task = Task::new(
        TenantId::new(tenant).unwrap(),
        "alice",
        agent(),
        TaskInput::default(),
        at(0),
    );
    task.priority = priority;
    task
}

fn sched(depth: usize) -> Scheduler {
    let mut s = Scheduler::new(SchedulerConfig {
        lease_ttl: Duration::from_secs(30),
        aging_step: Duration::from_secs(10),
    });
    s.register_agent(
        agent(),
        AgentQueueConfig {
            max_queue_depth: depth,
        },
    );
    s
}

fn submit(s: &mut Scheduler, t: Task, now: Timestamp) -> Changes {
    let r = s.reserve(&t.agent_id).unwrap();
    s.submit(t, r, &HashMap::new(), now).unwrap()
}

fn ok() -> Completion {
    Completion {
        status: TaskStatus::Completed,
        reason: None,
        result: None,
    }
}

#[test]
fn higher_priority_leases_first_fifo_within_a_priority() {
    let mut s = sched(100);
    let low = task("t", Priority::Low);
    let n1 = task("t", Priority::Normal);
    let n2 = task("t", Priority::Normal);
    let crit = task("t", Priority::Critical);
    for t in [&low, &n1, &n2, &crit] {
        submit(&mut s, t.clone(), at(0));
    }
    let order: Vec<TaskId> = (0..4)
        .map(|_| s.lease(&agent(), at(1)).unwrap().task.id)
        .collect();
    assert_eq!(order, vec![crit.id, n1.id, n2.id, low.id]);
    assert!(s.lease(&agent(), at(1)).is_none());
}

#[test]
fn aging_lets_low_priority_overtake_a_stream_of_critical() {
    let mut s = sched(10_000);
    let low = task("t", Priority::Low);
    submit(&mut s, low.clone(), at(0));
    // Critical work keeps arriving every second and is served every second.
    let mut served_low_at = None;
    for sec in 1..100 {
        submit(&mut s, task("t", Priority::Critical), at(sec * 1000));
        let leased = s.lease(&agent(), at(sec * 1000)).unwrap();
        if leased.task.id == low.id {
            served_low_at = Some(sec);
            break;
        }
    }
    // Low's virtual deadline is 0 + 3×10 s: served once critical arrivals pass 30 s.
    let sec = served_low_at.expect("low-priority task starved");
    assert!((30..=32).contains(&sec), "low served at {sec}s");
}

#[test]
fn tenants_are_served_round_robin() {
    let mut s = sched(1000);
    for _ in 0..10 {
        submit(&mut s, task("big", Priority::Normal), at(0));
    }
    let small = task("small", Priority::Normal);
    submit(&mut s, small.clone(), at(1));
    let first_two: Vec<TenantId> = (0..2)
        .map(|_| s.lease(&agent(), at(2)).unwrap().task.tenant)
        .collect();
    assert!(
        first_two.contains(&small.tenant),
        "the small tenant waited behind the big one: {first_two:?}"
    );
}

#[test]
fn full_queue_is_refused_and_reservations_count() {
    let mut s = sched(2);
    submit(&mut s, task("t", Priority::Normal), at(0));
    let held = s.reserve(&agent()).unwrap();
    let err = s.reserve(&agent()).unwrap_err();
    assert!(
        matches!(err, SchedulerError::QueueFull { depth: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("max_queue_depth"));
    s.release(held);
    assert_eq!(s.queue_depth(&agent()), 1);
    s.lease(&agent(), at(1)).unwrap();
    assert_eq!(s.queue_depth(&agent()), 0);
    let unknown = s.reserve(&AgentId::new("ghost").unwrap()).unwrap_err();
    assert!(matches!(unknown, SchedulerError::UnknownAgent(_)));
}

#[test]
fn dependent_waits_then_runs_after_its_dependency_completes() {
    let mut s = sched(100);
    let a = task("t", Priority::Normal);
    let mut b = task("t", Priority::Critical);
    b.depends_on = vec![a.id];
    b.status = TaskStatus::Pending;
    submit(&mut s, a.clone(), at(0));
    let c = submit(&mut s, b.clone(), at(0));
    assert!(c.writes.is_empty(), "stored as pending already");
    assert_eq!(s.get(&b.id).unwrap().status, TaskStatus::Pending);
    let lease = s.lease(&agent(), at(1)).unwrap();
    assert_eq!(lease.task.id, a.id, "b is not ready, even though critical");
    assert!(s.lease(&agent(), at(1)).is_none());
    let changes = s.complete(&a.id, lease.epoch, ok(), at(2)).unwrap();
    let statuses: Vec<_> = changes
        .writes
        .iter()
        .map(|w| (w.task.id, w.task.status))
        .collect();
    assert_eq!(
        statuses,
        vec![(a.id, TaskStatus::Completed), (b.id, TaskStatus::Queued)]
    );
    assert_eq!(changes.woken, vec![agent()]);
    assert_eq!(s.lease(&agent(), at(3)).unwrap().task.id, b.id);
}

/// A dependency held outside the scheduler for an approval: its dependents
/// wait; approved, it is submitted with its stored status and they run after
/// it; denied, `settle` fails them.
#[test]
fn dependents_of_a_task_awaiting_approval_wait_for_its_outcome() {
    for approved in [true, false] {
        let mut s = sched(100);
        let mut a = task("t", Priority::Normal);
        a.status = TaskStatus::AwaitingApproval;
        let mut b = task("t", Priority::Normal);
        b.depends_on = vec![a.id];
        b.status = TaskStatus::Pending;
        let known = HashMap::from([(a.id, TaskStatus::AwaitingApproval)]);
        let r = s.reserve(&agent()).unwrap();
        s.submit(b.clone(), r, &known, at(0)).unwrap();
        assert_eq!(s.get(&b.id).unwrap().status, TaskStatus::Pending);
        assert!(s.lease(&agent(), at(1)).is_none());
        if approved {
            let r = s.reserve(&agent()).unwrap();
            let c = s.submit(a.clone(), r, &HashMap::new(), at(2)).unwrap();
            assert_eq!(
                c.writes[0].task.status,
                TaskStatus::Queued,
                "stored status changes"
            );
            let lease = s.lease(&agent(), at(3)).unwrap();
            assert_eq!(lease.task.id, a.id);
            s.complete(&a.id, lease.epoch, ok(), at(4)).unwrap();
            assert_eq!(s.lease(&agent(), at(5)).unwrap().task.id, b.id);
        } else {
            let c = s.settle(a.id, TaskStatus::Failed, at(2));
            assert_eq!(c.writes.len(), 1);
            assert_eq!(c.writes[0].task.id, b.id);
            assert_eq!(c.writes[0].task.status, TaskStatus::Failed);
            assert_eq!(
                c.writes[0].task.reason.as_deref(),
                Some(reason::DEPENDENCY_FAILED)
            );
            assert_eq!(s.stats().pending, 0);
        }
    }
}

#[test]
fn failed_dependency_fails_the_chain_with_dependency_failed() {
    let mut s = sched(100);
    let a = task("t", Priority::Normal);
    let mut b = task("t", Priority::Normal);
    b.depends_on = vec![a.id];
    let mut c = task("t", Priority::Normal);
    c.depends_on = vec![b.id];
    for t in [&a, &b, &c] {
        submit(&mut s, t.clone(), at(0));
    }
    let lease = s.lease(&agent(), at(1)).unwrap();
    let fail = Completion {
        status: TaskStatus::Failed,
        reason: None,
        result: None,
    };
    let changes = s.complete(&a.id, lease.epoch, fail, at(2)).unwrap();
    let ended: Vec<_> = changes
        .finished()
        .map(|t| (t.id, t.status, t.reason.clone()))
        .collect();
    assert_eq!(
        ended,
        vec![
            (
                a.id,
                TaskStatus::Failed,
                Some(reason::AGENT_FAILED.to_owned())
            ),
            (
                b.id,
                TaskStatus::Failed,
                Some(reason::DEPENDENCY_FAILED.to_owned())
            ),
            (
                c.id,
                TaskStatus::Failed,
                Some(reason::DEPENDENCY_FAILED.to_owned())
            ),
        ]
    );
    assert_eq!(s.queue_depth(&agent()), 0);
    assert_eq!(s.stats(), SchedulerStats::default());
}

#[test]
fn depending_on_an_already_failed_or_unknown_task() {
    let mut s = sched(100);
    let done = TaskId::new();
    let mut b = task("t", Priority::Normal);
    b.depends_on = vec![done];
    let known = HashMap::from([(done, TaskStatus::Canceled)]);
    let r = s.reserve(&agent()).unwrap();
    let c = s.submit(b.clone(), r, &known, at(0)).unwrap();
    assert_eq!(c.writes[0].task.status, TaskStatus::Failed);
    assert_eq!(
        c.writes[0].task.reason.as_deref(),
        Some(reason::DEPENDENCY_FAILED)
    );
    assert_eq!(s.queue_depth(&agent()), 0);

    let mut d = task("t", Priority::Normal);
    d.depends_on = vec![TaskId::new()];
    let r = s.reserve(&agent()).unwrap();
    assert!(matches!(
        s.submit(d, r, &HashMap::new(), at(0)),
        Err(SchedulerError::UnknownDependency(_))
    ));
    assert_eq!(
        s.queue_depth(&agent()),
        0,
        "a refused submit gives its slot back"
    );
}

#[test]
fn cancel_queued_is_immediate_and_running_is_killed() {
    let mut s = sched(100);
    let queued = task("t", Priority::Low);
    let running = task("t", Priority::High);
    submit(&mut s, queued.clone(), at(0));
    submit(&mut s, running.clone(), at(0));
    let lease = s.lease(&agent(), at(1)).unwrap();
    assert_eq!(lease.task.id, running.id);

    let c = s.cancel(&queued.id, at(2)).unwrap();
    assert_eq!(c.writes[0].task.status, TaskStatus::Canceled);
    assert!(c.kills.is_empty());
    assert!(
        s.lease(&agent(), at(3)).is_none(),
        "canceled task must not be leased"
    );

    let c = s.cancel(&running.id, at(4)).unwrap();
    assert_eq!(
        c.kills,
        vec![KillOrder {
            task_id: running.id,
            agent_id: agent(),
            epoch: lease.epoch,
            reason: reason::CANCELED
        }]
    );
    assert_eq!(c.writes[0].expected_epoch, Some(lease.epoch));
    // The agent's late completion is refused: the task stays canceled.
    assert!(matches!(
        s.complete(&running.id, lease.epoch, ok(), at(5)),
        Err(SchedulerError::AlreadyFinished { .. })
    ));
    assert!(matches!(
        s.cancel(&running.id, at(5)),
        Err(SchedulerError::AlreadyFinished { .. })
    ));
    s.forget(&running.id);
    assert!(matches!(
        s.cancel(&running.id, at(5)),
        Err(SchedulerError::UnknownTask(_))
    ));
}

#[test]
fn timeout_ends_the_attempt_as_timed_out() {
    let mut s = sched(100);
    let mut t = task("t", Priority::Normal);
    t.timeout = Some(Duration::from_secs(5));
    submit(&mut s, t.clone(), at(0));
    let lease = s.lease(&agent(), at(0)).unwrap();
    assert!(s.tick(at(4_999)).writes.is_empty());
    s.heartbeat(&t.id, lease.epoch, at(4_000)).unwrap();
    let c = s.tick(at(5_000));
    assert_eq!(c.writes[0].task.status, TaskStatus::TimedOut);
    assert_eq!(c.kills[0].reason, reason::TIMED_OUT);
    assert!(s.complete(&t.id, lease.epoch, ok(), at(5_001)).is_err());
}

#[test]
fn expired_lease_is_retried_with_a_new_epoch_and_the_old_one_is_fenced() {
    let mut s = sched(100);
    let mut t = task("t", Priority::Normal);
    t.max_attempts = 2;
    submit(&mut s, t.clone(), at(0));
    let first = s.lease(&agent(), at(0)).unwrap();
    assert_eq!((first.epoch, first.task.attempt), (1, 1));
    // A heartbeat keeps it alive past the original expiry.
    s.heartbeat(&t.id, first.epoch, at(20_000)).unwrap();
    assert!(s.tick(at(30_000)).writes.is_empty());
    let c = s.tick(at(50_000));
    assert_eq!(c.writes[0].task.status, TaskStatus::Queued);
    assert_eq!(c.writes[0].expected_epoch, Some(1));
    let second = s.lease(&agent(), at(50_001)).unwrap();
    assert_eq!((second.epoch, second.task.attempt), (2, 2));
    // The first worker comes back late: fenced.
    let err = s
        .complete(&t.id, first.epoch, ok(), at(50_002))
        .unwrap_err();
    assert!(
        matches!(
            err,
            SchedulerError::StaleLease {
                presented: 1,
                current: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(s.heartbeat(&t.id, first.epoch, at(50_002)).is_err());
    // Out of attempts: the next expiry fails it.
    let c = s.tick(at(90_000));
    assert_eq!(c.writes[0].task.status, TaskStatus::Failed);
    assert_eq!(
        c.writes[0].task.reason.as_deref(),
        Some(reason::LEASE_EXPIRED)
    );
}

#[test]
fn restore_requeues_running_tasks_and_keeps_pending_ones_waiting() {
    let mut s = sched(1);
    let mut running = task("t", Priority::Normal);
    running.status = TaskStatus::Running;
    running.attempt = 1;
    running.lease_epoch = 1;
    let mut pending = task("t", Priority::Normal);
    pending.status = TaskStatus::Pending;
    pending.depends_on = vec![running.id];
    let c = s.restore(running.clone(), &HashMap::new(), at(0)).unwrap();
    assert_eq!(c.writes[0].task.status, TaskStatus::Queued);
    assert_eq!(c.writes[0].expected_epoch, Some(1));
    // A new epoch at once: a completion of the old run (epoch 1) is stale.
    assert_eq!(c.writes[0].task.lease_epoch, 2);
    // Restored tasks ignore max_queue_depth: they were already accepted.
    s.restore(pending.clone(), &HashMap::new(), at(0)).unwrap();
    assert_eq!(s.get(&pending.id).unwrap().status, TaskStatus::Pending);
    let lease = s.lease(&agent(), at(1)).unwrap();
    assert_eq!((lease.task.id, lease.epoch), (running.id, 3));
    assert_eq!(lease.write.expected_epoch, Some(2));

    let mut exhausted = task("t", Priority::Normal);
    exhausted.status = TaskStatus::Running;
    exhausted.attempt = 3;
    let c = s.restore(exhausted, &HashMap::new(), at(0)).unwrap();
    assert_eq!(c.writes[0].task.status, TaskStatus::Failed);
}

#[test]
fn many_agents_and_tasks_keep_counts_consistent() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    let agents: Vec<AgentId> = (0..100)
        .map(|i| AgentId::new(format!("a{i}")).unwrap())
        .collect();
    for a in &agents {
        s.register_agent(a.clone(), AgentQueueConfig::default());
    }
    for i in 0..10_000 {
        let mut t = task(&format!("t{}", i % 7), Priority::ALL[i % 4]);
        t.agent_id = agents[i % 100].clone();
        submit(&mut s, t, at(0));
    }
    assert_eq!(s.stats().queued, 10_000);
    let mut done = 0;
    for a in &agents {
        while let Some(l) = s.lease(a, at(1)) {
            s.complete(&l.task.id, l.epoch, ok(), at(2)).unwrap();
            s.forget(&l.task.id);
            done += 1;
        }
        assert_eq!(s.queue_depth(a), 0);
    }
    assert_eq!(done, 10_000);
    assert_eq!(s.stats(), SchedulerStats::default());
}

#[test]
fn abandoned_attempts_requeue_at_once_then_fail_with_the_given_reason() {
    let mut s = sched(100);
    let mut t = task("t", Priority::Normal);
    t.max_attempts = 2;
    submit(&mut s, t.clone(), at(0));
    let first = s.lease(&agent(), at(0)).unwrap();
    assert_eq!(s.running_of(&agent()), vec![(t.id, first.epoch)]);
    assert!(s.running_of(&AgentId::new("other").unwrap()).is_empty());
    // The agent died: no waiting for the 30 s lease.
    let c = s
        .abandon(&t.id, first.epoch, "crashed (signal 9)", at(1))
        .unwrap();
    assert_eq!(c.writes[0].task.status, TaskStatus::Queued);
    assert_eq!(
        c.writes[0].task.reason.as_deref(),
        Some("crashed (signal 9)")
    );
    assert!(s.running_of(&agent()).is_empty());
    // A stale epoch cannot abandon the next attempt.
    let second = s.lease(&agent(), at(2)).unwrap();
    assert!(s.abandon(&t.id, first.epoch, "x", at(3)).is_err());
    let c = s
        .abandon(&t.id, second.epoch, reason::DRAIN_TIMEOUT, at(4))
        .unwrap();
    assert_eq!(c.writes[0].task.status, TaskStatus::Failed);
    assert_eq!(
        c.writes[0].task.reason.as_deref(),
        Some(reason::DRAIN_TIMEOUT)
    );
    assert_eq!(s.stats().running, 0);
}

#[test]
fn a_disowned_lease_leaves_the_scheduler() {
    let mut s = sched(1);
    let t = task("t", Priority::Normal);
    let r = s.reserve(&agent()).unwrap();
    s.submit(t.clone(), r, &HashMap::new(), at(0)).unwrap();
    let lease = s.lease(&agent(), at(1)).unwrap();
    assert!(!s.disown(&t.id, lease.epoch + 1), "only the live epoch");
    assert!(s.disown(&t.id, lease.epoch));
    assert!(s.get(&t.id).is_none());
    assert_eq!(s.stats(), SchedulerStats::default());
    assert!(!s.disown(&t.id, lease.epoch), "gone already");
    // Its lease expiry is skipped, not requeued.
    assert!(s.tick(at(1_000_000)).writes.is_empty());
    assert!(s.lease(&agent(), at(1_000_001)).is_none());
}
