//! `fabric-bench sched`: one scheduling decision, in process, with a full queue.
//!
//! Prefills `tasks` queued tasks over `agents` agents, `tenants` tenants and
//! the four priorities, then, for each sample, enqueues one task (reserve +
//! submit) and leases one from another agent, so the queue stays at its
//! prefilled size. Only those calls are timed; building the next task and
//! completing + forgetting the leased one happen outside the timed region.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context as _;
use fabric_core::{
    AgentId, Clock, Priority, SystemClock, Task, TaskInput, TaskResult, TaskStatus, TenantId,
    Timestamp,
};
use fabric_engine::{AgentQueueConfig, Completion, Scheduler, SchedulerConfig};

use crate::stats::{Summary, median, micros, nanos, proc_status_kb};

#[derive(Debug, clap::Args)]
pub struct SchedArgs {
    /// Agents, each with its own queue
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Tasks queued before measuring (kept at this level throughout)
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Tenants the tasks are spread over
    #[arg(long, default_value_t = 10)]
    tenants: usize,
    /// Timed enqueue + lease pairs per repetition
    #[arg(long, default_value_t = 200_000)]
    samples: usize,
    /// Repetitions (fresh scheduler each); the summary is the median across them
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Call `tick` (lease expiry, untimed) every this many samples, as the
    /// server's 100 ms ticker would
    #[arg(long, default_value_t = 500)]
    tick_every: usize,
}

/// One repetition's results.
struct SchedRun {
    enqueue: Summary,
    lease: Summary,
    pair: Summary,
    /// Samples ÷ the summed timed enqueue + lease time.
    timed_pairs_per_sec: f64,
    /// Samples ÷ wall time of the whole loop, untimed work included.
    loop_per_sec: f64,
    prefill_secs: f64,
    /// Growth of this process's RSS over the prefill, per queued task.
    prefill_bytes_per_task: f64,
    /// The same after the measured loop (the queue holds as many tasks).
    end_bytes_per_task: f64,
    queued_at_end: usize,
    /// Pairs slower than [`SLOW`], and the slowest few as (sample index, µs).
    slow: usize,
    slowest: Vec<(usize, f64)>,
}

/// The target: a scheduling decision under 100 µs.
const SLOW: u64 = 100_000;

/// Builds queued tasks round-robin over agents, tenants and priorities.
struct TaskFactory {
    agents: Vec<AgentId>,
    tenants: Vec<TenantId>,
    next: usize,
}

impl TaskFactory {
    fn new(agents: usize, tenants: usize) -> anyhow::Result<Self> {
        Ok(Self {
            agents: (0..agents)
                .map(|i| AgentId::new(format!("agent-{i:03}")))
                .collect::<Result<_, _>>()?,
            tenants: (0..tenants)
                .map(|i| TenantId::new(format!("tenant-{i:02}")))
                .collect::<Result<_, _>>()?,
            next: 0,
        })
    }

    /// The `n`th task: agent cycles fastest, then tenant, then priority, so
    /// every agent's queue holds every (tenant, priority) lane.
    fn make(&mut self, now: Timestamp) -> Task {
        let n = self.next;
        self.next += 1;
        let agent = &self.agents[n % self.agents.len()];
        let tenant = &self.tenants[(n / self.agents.len()) % self.tenants.len()];
        let priority =
            Priority::ALL[(n / (self.agents.len() * self.tenants.len())) % Priority::ALL.len()];
        let input = TaskInput {
            prompt: Some("true".to_owned()),
            ..TaskInput::default()
        };
        let mut task = Task::new(tenant.clone(), "bench", agent.clone(), input, now);
        task.priority = priority;
        task
    }
}

pub fn run(args: &SchedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.agents > 0 && args.tenants > 0 && args.reps > 0,
        "--agents, --tenants and --reps must be at least 1"
    );
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; run with `cargo run --release -p fabric-bench -- sched`");
    }
    println!(
        "size_of::<Task>() = {} bytes (held inline by the scheduler's task map)",
        std::mem::size_of::<Task>()
    );
    println!(
        "sched: {} agents, {} queued tasks, {} tenants, 4 priorities, {} samples x {} reps",
        args.agents, args.tasks, args.tenants, args.samples, args.reps
    );
    let mut runs = Vec::new();
    for rep in 1..=args.reps {
        let r = run_once(args)?;
        let slowest: Vec<String> = r
            .slowest
            .iter()
            .map(|(i, us)| format!("#{i}: {us:.0} us"))
            .collect();
        println!(
            "rep {rep}: {} pairs over 100 us; slowest {}",
            r.slow,
            slowest.join(", ")
        );
        println!(
            "rep {rep}: prefill {:.2} s ({:.0} bytes RSS per queued task; {:.0} after the loop), queued at end {}; enqueue p50/p99/p99.9/max {:.2}/{:.2}/{:.2}/{:.1} us; \
             lease {:.2}/{:.2}/{:.2}/{:.1} us; pair {:.2}/{:.2}/{:.2}/{:.1} us; {:.0} pairs/s timed, {:.0} loops/s",
            r.prefill_secs,
            r.prefill_bytes_per_task,
            r.end_bytes_per_task,
            r.queued_at_end,
            micros(r.enqueue.p50),
            micros(r.enqueue.p99),
            micros(r.enqueue.p999),
            micros(r.enqueue.max),
            micros(r.lease.p50),
            micros(r.lease.p99),
            micros(r.lease.p999),
            micros(r.lease.max),
            micros(r.pair.p50),
            micros(r.pair.p99),
            micros(r.pair.p999),
            micros(r.pair.max),
            r.timed_pairs_per_sec,
            r.loop_per_sec,
        );
        runs.push(r);
    }

    println!();
    println!(
        "Median of {} reps (each {} samples):",
        runs.len(),
        args.samples
    );
    println!();
    println!("| operation | p50 (µs) | p99 (µs) | p99.9 (µs) | max (µs) | calls/s (1 / mean) |");
    println!("|---|--:|--:|--:|--:|--:|");
    let med = |f: &dyn Fn(&SchedRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    for (label, pick) in [
        (
            "enqueue (reserve + submit)",
            (|r: &SchedRun| r.enqueue) as fn(&SchedRun) -> Summary,
        ),
        ("lease", |r: &SchedRun| r.lease),
        ("enqueue + lease pair", |r: &SchedRun| r.pair),
    ] {
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} |",
            med(&|r| micros(pick(r).p50)),
            med(&|r| micros(pick(r).p99)),
            med(&|r| micros(pick(r).p999)),
            med(&|r| micros(pick(r).max)),
            med(&|r| 1e9 / pick(r).mean),
        );
    }
    println!();
    println!(
        "pairs/s (timed calls only): {:.0}; full loop incl. untimed complete + forget + task building: {:.0}/s",
        med(&|r| r.timed_pairs_per_sec),
        med(&|r| r.loop_per_sec)
    );
    Ok(())
}

fn run_once(args: &SchedArgs) -> anyhow::Result<SchedRun> {
    let clock = SystemClock;
    let mut sched = Scheduler::new(SchedulerConfig::default());
    let mut factory = TaskFactory::new(args.agents, args.tenants)?;
    // Room for the prefill plus drift: the bench measures decisions, not 429s.
    let queue = AgentQueueConfig {
        max_queue_depth: args.tasks + args.samples + 1,
    };
    for agent in &factory.agents {
        sched.register_agent(agent.clone(), queue);
    }
    let known = HashMap::new();

    let rss_before = proc_status_kb(std::process::id(), "VmRSS")?;
    let prefill = Instant::now();
    for _ in 0..args.tasks {
        let task = factory.make(clock.now());
        let agent = task.agent_id.clone();
        let reservation = sched.reserve(&agent)?;
        sched
            .submit(task, reservation, &known, clock.now())
            .context("prefill submit")?;
    }
    let prefill_secs = prefill.elapsed().as_secs_f64();
    let rss_growth_kb = proc_status_kb(std::process::id(), "VmRSS")?.saturating_sub(rss_before);
    anyhow::ensure!(
        sched.stats().queued == args.tasks,
        "prefill queued {} tasks, expected {}",
        sched.stats().queued,
        args.tasks
    );

    let mut enqueue = Vec::with_capacity(args.samples);
    let mut lease = Vec::with_capacity(args.samples);
    let mut pair = Vec::with_capacity(args.samples);
    let done = Completion {
        status: TaskStatus::Completed,
        reason: None,
        result: Some(TaskResult {
            exit_code: Some(0),
            ..TaskResult::default()
        }),
    };
    let agents = factory.agents.clone();
    let half = agents.len() / 2;
    let started = Instant::now();
    for i in 0..args.samples {
        let now = clock.now();
        let task = factory.make(now);
        let lease_agent = &agents[(i + half) % agents.len()];

        let t0 = Instant::now();
        let submitted = sched
            .reserve(&task.agent_id)
            .map(|r| sched.submit(task, r, &known, now));
        let t1 = Instant::now();
        let leased = sched.lease(lease_agent, now);
        let t2 = Instant::now();

        // Untimed: results are dropped and the leased task finished here.
        submitted?.context("submit")?;
        let leased = leased.with_context(|| format!("agent {lease_agent} had nothing to lease"))?;
        enqueue.push(nanos(t1 - t0));
        lease.push(nanos(t2 - t1));
        pair.push(nanos(t2 - t0));
        sched.complete(&leased.task.id, leased.epoch, done.clone(), now)?;
        sched.forget(&leased.task.id);
        if args.tick_every > 0 && i % args.tick_every == 0 {
            let _ = sched.tick(now);
        }
    }
    let loop_secs = started.elapsed().as_secs_f64();
    let timed_secs = pair.iter().map(|&ns| ns as f64).sum::<f64>() / 1e9;
    let queued_at_end = sched.stats().queued;
    let end_rss_kb = proc_status_kb(std::process::id(), "VmRSS")?.saturating_sub(rss_before);
    let mut by_time: Vec<(usize, u64)> = pair.iter().copied().enumerate().collect();
    by_time.sort_unstable_by_key(|&(_, ns)| std::cmp::Reverse(ns));
    let slow = by_time.iter().take_while(|(_, ns)| *ns > SLOW).count();
    let slowest = by_time
        .iter()
        .take(5)
        .map(|&(i, ns)| (i, micros(ns)))
        .collect();
    Ok(SchedRun {
        enqueue: Summary::of(&mut enqueue),
        lease: Summary::of(&mut lease),
        pair: Summary::of(&mut pair),
        timed_pairs_per_sec: args.samples as f64 / timed_secs,
        loop_per_sec: args.samples as f64 / loop_secs,
        prefill_secs,
        prefill_bytes_per_task: rss_growth_kb as f64 * 1024.0 / args.tasks.max(1) as f64,
        end_bytes_per_task: end_rss_kb as f64 * 1024.0 / args.tasks.max(1) as f64,
        queued_at_end,
        slow,
        slowest,
    })
}
