//! Leadership of a Redis key prefix against a real `redis-server`: acquire,
//! renew, expiry and takeover, and the fence that keeps a deposed
//! orchestrator's writes out (issue #4: several orchestrators on one Redis).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::redis::{connect, running};
use crate::fixtures::event;
use fabric_core::{
    AgentId, AgentStore, CreateOutcome, StoreError, Task, TaskStatus, TaskStore, TaskWrite,
    WriteOutcome,
};
use fabric_store::RedisStore;
use fabric_store::conformance::{sample_agent, sample_session, sample_task};
use fabric_store::redis::testing::RedisServer;
use fabric_store::redis::{Acquire, Renewal};

/// Long enough that a loaded 2-core machine renews and writes well within it
/// (400 ms was not); the takeovers below wait it out.
const TTL: Duration = Duration::from_secs(2);

async fn acquired(store: &RedisStore, owner: &str, ttl: Duration) -> u64 {
    match store.acquire_leadership(owner, ttl).await.unwrap() {
        Acquire::Acquired { generation } => generation,
        busy => panic!("{owner} did not get the leadership: {busy:?}"),
    }
}

/// Retries until the holder's TTL lapses, as a standby does.
async fn take_over(store: &RedisStore, owner: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.acquire_leadership(owner, TTL).await.unwrap() {
            Acquire::Acquired { generation } => return generation,
            Acquire::Busy { remaining, .. } => {
                assert!(Instant::now() < deadline, "the leadership never lapsed");
                tokio::time::sleep(remaining.min(Duration::from_millis(50))).await;
            }
        }
    }
}

fn is_deposed(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(m) if m.contains("no longer the active one for store prefix \"shared\""))
}

#[tokio::test(flavor = "multi_thread")]
async fn leadership_is_exclusive_renewable_and_taken_over_after_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let (one, two) = (
        connect(&server.url(), "shared").await,
        connect(&server.url(), "shared").await,
    );
    assert_eq!(one.leader_generation(), 0, "unchecked until acquired");
    assert!(
        one.renew_leadership().await.is_err(),
        "nothing to renew yet"
    );

    let first = acquired(&one, "host-a:1:aaaa", TTL).await;
    assert_eq!(first, 1);
    assert_eq!(one.leader_generation(), 1);
    assert_eq!(
        one.leader().await.unwrap().as_deref(),
        Some("host-a:1:aaaa")
    );
    match two.acquire_leadership("host-b:2:bbbb", TTL).await.unwrap() {
        Acquire::Busy { holder, remaining } => {
            assert_eq!(holder, "host-a:1:aaaa");
            assert!(
                remaining > Duration::ZERO && remaining <= TTL,
                "{remaining:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(two.leader_generation(), 0);

    // Renewals keep it well past one TTL.
    let until = Instant::now() + TTL * 2;
    while Instant::now() < until {
        assert_eq!(one.renew_leadership().await.unwrap(), Renewal::Renewed);
        assert!(matches!(
            two.acquire_leadership("host-b:2:bbbb", TTL).await.unwrap(),
            Acquire::Busy { .. }
        ));
        tokio::time::sleep(TTL / 4).await;
    }

    // The same owner acquiring again takes a newer generation.
    assert_eq!(acquired(&one, "host-a:1:aaaa", TTL).await, 2);
    assert_eq!(one.leader_generation(), 2);

    // It stops renewing (a crash or a pause): the other takes over after the TTL.
    let stopped = Instant::now();
    let second = take_over(&two, "host-b:2:bbbb").await;
    assert!(stopped.elapsed() >= TTL / 2, "taken over too early");
    assert_eq!(second, 3);
    assert_eq!(two.leader_generation(), 3);
    let mut deposed = one.deposed();
    assert!(!*deposed.borrow_and_update());
    assert_eq!(
        one.renew_leadership().await.unwrap(),
        Renewal::Lost {
            holder: Some("host-b:2:bbbb".to_owned())
        }
    );
    assert!(
        *deposed.borrow_and_update(),
        "a lost renewal marks the store deposed"
    );

    // A clean stop releases it: a standby need not wait for the TTL.
    assert!(two.release_leadership().await.unwrap());
    assert_eq!(two.leader().await.unwrap(), None);
    assert!(
        !two.release_leadership().await.unwrap(),
        "not ours any more"
    );
    let started = Instant::now();
    assert_eq!(acquired(&one, "host-a:1:aaaa", TTL).await, 4);
    assert!(started.elapsed() < TTL / 2);
    assert_eq!(one.renew_leadership().await.unwrap(), Renewal::Renewed);

    // An expired key with nobody else waiting is a lost renewal too.
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    assert_eq!(
        one.renew_leadership().await.unwrap(),
        Renewal::Lost { holder: None }
    );
}

/// A deposed generation can create, lease, complete, log and touch agents no
/// more; the new leader can, and a store that never took the leadership
/// (generation 0: tools, tests, one server alone) is not checked.
#[tokio::test(flavor = "multi_thread")]
async fn a_deposed_generation_is_refused_and_generation_zero_is_unchecked() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let url = server.url();
    let (old, new, tool) = (
        connect(&url, "shared").await,
        connect(&url, "shared").await,
        connect(&url, "shared").await,
    );
    acquired(&old, "old:1:x", TTL).await;
    let task = sample_task("acme", "shell");
    assert!(matches!(
        old.create_task(task.clone()).await.unwrap(),
        CreateOutcome::Created(_)
    ));
    old.put_agent(sample_agent("coder")).await.unwrap();
    let mut deposed = old.deposed();

    // Another orchestrator takes over once the old one's TTL lapses.
    take_over(&new, "new:2:y").await;

    let lease = TaskWrite {
        task: running(&task, 1),
        expected_epoch: Some(0),
    };
    let mut keyed = sample_task("acme", "shell");
    keyed.idempotency_key = Some("k1".to_owned());
    let refused = [
        old.create_task(sample_task("acme", "shell"))
            .await
            .map(|_| ()),
        old.create_task(keyed.clone()).await.map(|_| ()),
        old.write_task(lease.clone()).await.map(|_| ()),
        old.append_events(vec![event(&task, 1)]).await,
        old.put_agent(sample_agent("other")).await,
        old.put_session(sample_session("coder", 1)).await,
        old.delete_agent(AgentId::new("coder").unwrap())
            .await
            .map(|_| ()),
    ];
    for (i, outcome) in refused.iter().enumerate() {
        match outcome {
            Err(e) if is_deposed(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(e.to_string().contains("stands down"), "{e}");
            }
            other => panic!("write {i} of the deposed store: {other:?}"),
        }
    }
    assert!(
        *deposed.borrow_and_update(),
        "a refused write marks the store deposed"
    );

    // Nothing of it landed.
    assert_eq!(new.get_task(task.id).await.unwrap(), Some(task.clone()));
    assert_eq!(new.unfinished_tasks().await.unwrap(), vec![task.clone()]);
    assert!(new.task_events(task.id, 0, 10).await.unwrap().is_empty());
    assert_eq!(new.last_event_seq().await.unwrap(), 0);
    let agents = new.list_agents().await.unwrap();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert!(
        new.list_sessions(AgentId::new("coder").unwrap(), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The idempotency key was not taken either: the new leader creates with it.
    assert!(matches!(
        new.create_task(keyed.clone()).await.unwrap(),
        CreateOutcome::Created(_)
    ));

    // The new leader's writes apply.
    assert_eq!(new.write_task(lease).await.unwrap(), WriteOutcome::Applied);
    new.append_events(vec![event(&task, 1)]).await.unwrap();
    new.put_session(sample_session("coder", 1)).await.unwrap();

    // Generation 0 is not checked.
    assert_eq!(tool.leader_generation(), 0);
    let mut done = running(&task, 1);
    done.status = TaskStatus::Completed;
    let complete = TaskWrite {
        task: done,
        expected_epoch: Some(1),
    };
    assert_eq!(
        tool.write_task(complete).await.unwrap(),
        WriteOutcome::Applied
    );
    tool.append_events(vec![event(&task, 2)]).await.unwrap();
    assert_eq!(new.last_event_seq().await.unwrap(), 2);
}

/// The old leader keeps writing (events and task writes, many in flight)
/// while the new one takes over: every write it was told succeeded is
/// stored, every other one was refused as deposed, and nothing it sent lands
/// after the takeover.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_the_old_leader_sends_lands_after_the_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let url = server.url();
    let (old, new) = (connect(&url, "shared").await, connect(&url, "shared").await);
    acquired(&old, "old:1:x", TTL).await;
    let task = sample_task("acme", "shell");
    old.create_task(task.clone()).await.unwrap();

    // Highest event seq and task write number the old leader saw succeed.
    let acked = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let writer = {
        let (old, task, acked) = (old.clone(), task.clone(), Arc::clone(&acked));
        tokio::spawn(async move {
            let mut n = 0;
            let mut refused = [false, false];
            while refused != [true, true] {
                let mut batch = Vec::new();
                for _ in 0..20 {
                    n += 1;
                    let mut next = task.clone();
                    next.reason = Some(format!("write {n}"));
                    let write = old.write_task(TaskWrite {
                        task: next,
                        expected_epoch: Some(0),
                    });
                    batch.push((n, old.append_events(vec![event(&task, n)]), write));
                }
                for (n, event, write) in batch {
                    // One decision's event and write are separate ops: the
                    // takeover may fall between them, so each is checked alone.
                    let outcomes = [
                        event.await.map(|()| true),
                        write.await.map(|w| w == WriteOutcome::Applied),
                    ];
                    for (i, outcome) in outcomes.into_iter().enumerate() {
                        match outcome {
                            Ok(true) => {
                                assert!(!refused[i], "op {i} of {n} applied after a refusal");
                                acked[i].fetch_max(n, Ordering::SeqCst);
                            }
                            Err(e) if is_deposed(&e) => refused[i] = true,
                            other => panic!("op {i} of {n}: {other:?}"),
                        }
                    }
                }
            }
        })
    };
    // The takeover comes while the old leader's writes are being acknowledged.
    let deadline = Instant::now() + TTL;
    while acked[1].load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline && !writer.is_finished(),
            "the old leader never got a write acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    take_over(&new, "new:2:y").await;
    let at_takeover = (
        new.last_event_seq().await.unwrap(),
        new.get_task(task.id).await.unwrap(),
    );
    writer.await.unwrap();
    let after = (
        new.last_event_seq().await.unwrap(),
        new.get_task(task.id).await.unwrap(),
    );
    assert_eq!(
        after, at_takeover,
        "a write of the old leader landed after the takeover"
    );
    let (events, writes) = (
        acked[0].load(Ordering::SeqCst),
        acked[1].load(Ordering::SeqCst),
    );
    let stored: Vec<u64> = new
        .task_events(task.id, 0, 100_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        stored,
        (1..=events).collect::<Vec<_>>(),
        "exactly the acknowledged events"
    );
    let reason = after.1.and_then(|t: Task| t.reason);
    assert_eq!(
        reason,
        Some(format!("write {writes}")),
        "the last acknowledged write"
    );
}
