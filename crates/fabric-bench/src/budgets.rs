//! `fabric-bench budgets`: check-and-reserve throughput under contention, in
//! process. Each op is what a gateway call does to the budgets: reserve an
//! estimate against its agent, user and tenant (all three budgeted, one
//! lock), then settle the actual usage. `threads` OS threads run ops back to
//! back, either all against the same three entities (`same`: every op
//! contends for the same entries) or each thread against its own three
//! (`distinct`: the same single lock, different map entries). Limits are
//! high enough that nothing is refused (the path every admitted call takes).

use std::sync::{Arc, Barrier};
use std::time::Instant;

use fabric_core::budget::{Amounts, BudgetEntity, BudgetSpec, PeriodState};
use fabric_core::{AgentId, Clock, SystemClock, TenantId};
use fabric_engine::budget::{Demand, SharedBudgets, day_start};

use crate::stats::{Summary, median, nanos};

#[derive(Debug, clap::Args)]
pub struct BudgetsArgs {
    /// Thread counts to run, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    threads: Vec<usize>,
    /// Reserve + settle ops per repetition, split over the threads
    #[arg(long, default_value_t = 1_000_000)]
    ops: usize,
    /// Repetitions (fresh budgets each); the summary is the median across them
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Sequential chat calls per repetition through the in-process gateway
    /// (mock provider), with and without the budget admission; 0 skips it
    #[arg(long, default_value_t = 200_000)]
    gateway_calls: usize,
}

struct Run {
    ops_per_sec: f64,
    /// Slowest reserve and settle of the run.
    max_ns: u64,
    reserve: Summary,
    settle: Summary,
}

fn entities(i: usize) -> anyhow::Result<Vec<BudgetEntity>> {
    Ok(vec![
        BudgetEntity::Agent(AgentId::new(format!("agent-{i}"))?),
        BudgetEntity::User(format!("user-{i}")),
        BudgetEntity::Tenant(TenantId::new(format!("tenant-{i}"))?),
    ])
}

fn one_run(threads: usize, distinct: bool, ops: usize) -> anyhow::Result<Run> {
    let budgets = Arc::new(SharedBudgets::new());
    let now = SystemClock.now();
    let spec = BudgetSpec {
        max_tokens_per_day: Some(u64::MAX / 4),
        max_cost_per_day_usd: Some(1e6),
        ..BudgetSpec::default()
    };
    let groups: Vec<Vec<BudgetEntity>> = (0..if distinct { threads } else { 1 })
        .map(entities)
        .collect::<anyhow::Result<_>>()?;
    for group in &groups {
        for e in group {
            budgets.lock().set(
                e.clone(),
                spec.clone(),
                PeriodState {
                    start: day_start(now),
                    ..PeriodState::default()
                },
                Amounts::default(),
                now,
            );
        }
    }
    let per_thread = ops / threads;
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let budgets = Arc::clone(&budgets);
            let barrier = Arc::clone(&barrier);
            let group = groups[if distinct { t } else { 0 }].clone();
            std::thread::spawn(move || {
                let clock = SystemClock;
                let demand = Demand {
                    tokens: Some(528),
                    cost_nano_usd: Some(0),
                    compute_ms: None,
                };
                let actual = Amounts {
                    tokens: 120,
                    compute_ms: 0,
                    cost_nano_usd: 1_000,
                };
                let mut reserve = Vec::with_capacity(per_thread);
                let mut settle = Vec::with_capacity(per_thread);
                barrier.wait();
                for _ in 0..per_thread {
                    // The server reads its clock per call too.
                    let t0 = Instant::now();
                    let r = budgets.reserve(&group, demand, clock.now());
                    let t1 = Instant::now();
                    if let Ok(r) = r {
                        budgets.settle(r, actual, clock.now());
                    }
                    let t2 = Instant::now();
                    reserve.push(nanos(t1 - t0));
                    settle.push(nanos(t2 - t1));
                }
                (reserve, settle)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut reserve = Vec::with_capacity(ops);
    let mut settle = Vec::with_capacity(ops);
    for h in handles {
        let (r, s) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a bench thread panicked"))?;
        reserve.extend(r);
        settle.extend(s);
    }
    let wall = start.elapsed().as_secs_f64();
    let done = reserve.len();
    Ok(Run {
        ops_per_sec: done as f64 / wall,
        max_ns: reserve
            .iter()
            .chain(settle.iter())
            .copied()
            .max()
            .unwrap_or(0),
        reserve: Summary::of(&mut reserve),
        settle: Summary::of(&mut settle),
    })
}

pub fn run(args: &BudgetsArgs) -> anyhow::Result<()> {
    println!(
        "budgets: reserve(agent, user, tenant) + settle, {} ops per run, {} reps",
        args.ops, args.reps
    );
    let mut table = Vec::new();
    for &threads in &args.threads {
        for distinct in [false, true] {
            let mut runs = Vec::new();
            for rep in 0..args.reps {
                let run = one_run(threads.max(1), distinct, args.ops)?;
                println!(
                    "threads={threads} entities={} rep={rep}: {:.0} ops/s, reserve p50 {} ns p99 {} ns, settle p50 {} ns p99 {} ns",
                    if distinct { "distinct" } else { "same" },
                    run.ops_per_sec,
                    run.reserve.p50,
                    run.reserve.p99,
                    run.settle.p50,
                    run.settle.p99,
                );
                runs.push(run);
            }
            let m = |f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
            table.push(format!(
                "| {threads} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                if distinct { "distinct" } else { "same" },
                m(&|r| r.ops_per_sec),
                m(&|r| r.reserve.p50 as f64),
                m(&|r| r.reserve.p99 as f64),
                m(&|r| r.settle.p50 as f64),
                m(&|r| r.settle.p99 as f64),
                m(&|r| r.reserve.p999.max(r.settle.p999) as f64),
                m(&|r| r.max_ns as f64),
            ));
        }
    }
    println!();
    println!(
        "| threads | entities | reserve+settle ops/s | reserve p50 (ns) | reserve p99 (ns) | settle p50 (ns) | settle p99 (ns) | p99.9 (ns) | max (ns) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
    if args.gateway_calls > 0 {
        gateway_overhead(args)?;
    }
    Ok(())
}

/// The server's `BudgetAdmission`, made of the same engine calls (the
/// server crate is not a dependency of the bench).
struct BenchAdmission(Arc<SharedBudgets>);

struct BenchHold {
    budgets: Arc<SharedBudgets>,
    reservation: Option<fabric_engine::budget::Reservation>,
}

impl fabric_gateway::Admission for BenchAdmission {
    fn admit(
        &self,
        caller: &fabric_gateway::Caller,
        _model: &str,
        estimate: fabric_gateway::Estimate,
    ) -> Result<Box<dyn fabric_gateway::Admitted>, fabric_gateway::GatewayError> {
        let mut entities = Vec::with_capacity(3);
        if let Some(agent) = &caller.agent {
            entities.push(BudgetEntity::Agent(agent.clone()));
        }
        entities.push(BudgetEntity::User(caller.user.clone()));
        entities.push(BudgetEntity::Tenant(caller.tenant.clone()));
        let demand = Demand {
            tokens: Some(estimate.input_tokens + estimate.output_tokens),
            cost_nano_usd: Some(0),
            compute_ms: None,
        };
        match self.0.reserve(&entities, demand, SystemClock.now()) {
            Ok(r) => Ok(Box::new(BenchHold {
                budgets: Arc::clone(&self.0),
                reservation: Some(r),
            })),
            Err(refusal) => Err(fabric_gateway::GatewayError::QuotaExceeded(
                refusal.to_string(),
            )),
        }
    }
}

impl fabric_gateway::Admitted for BenchHold {
    fn settle(mut self: Box<Self>, record: &fabric_core::UsageRecord) {
        if let Some(r) = self.reservation.take() {
            self.budgets.settle(
                r,
                Amounts {
                    tokens: record.tokens_in + record.tokens_out,
                    compute_ms: 0,
                    cost_nano_usd: record.cost_nano_usd,
                },
                SystemClock.now(),
            );
        }
    }
}

/// Sequential chat calls through the in-process gateway (the mock provider,
/// no network) with and without the budget admission, alternating per
/// repetition: what a reservation adds to one call.
fn gateway_overhead(args: &BudgetsArgs) -> anyhow::Result<()> {
    use fabric_gateway::types::{ChatRequest, Message, Params, Role};
    use fabric_gateway::{CallOptions, Caller, Gateway, GatewayConfig, NoopSink, ProviderConfig};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = || GatewayConfig {
        providers: vec![ProviderConfig::new(
            "mock",
            fabric_gateway::ProviderKind::Mock,
            None,
        )],
        ..GatewayConfig::default()
    };
    let now = SystemClock.now();
    let budgets = Arc::new(SharedBudgets::new());
    let agent = AgentId::new("coder")?;
    let tenant = TenantId::new("default")?;
    for e in [
        BudgetEntity::Agent(agent.clone()),
        BudgetEntity::User("alice".to_owned()),
        BudgetEntity::Tenant(tenant.clone()),
    ] {
        budgets.lock().set(
            e,
            BudgetSpec {
                max_tokens_per_day: Some(u64::MAX / 4),
                ..BudgetSpec::default()
            },
            PeriodState {
                start: day_start(now),
                ..PeriodState::default()
            },
            Amounts::default(),
            now,
        );
    }
    let plain = Gateway::new(config(), Arc::new(NoopSink))?;
    let budgeted = Gateway::new(config(), Arc::new(NoopSink))?
        .with_admission(Arc::new(BenchAdmission(Arc::clone(&budgets))));
    let caller = Caller {
        tenant,
        user: "alice".to_owned(),
        agent: Some(agent),
        workspace: None,
        request_id: "bench".to_owned(),
    };
    let request = ChatRequest {
        model: "llama3".to_owned(),
        messages: vec![Message::new(Role::User, "hello there, how are you")],
        params: Params {
            max_tokens: Some(64),
            ..Params::default()
        },
        options: Default::default(),
    };
    let mut rows: Vec<(&str, Vec<Summary>)> = vec![
        ("without admission", Vec::new()),
        ("with budget admission", Vec::new()),
    ];
    for rep in 0..args.reps {
        for (i, gateway) in [&plain, &budgeted].into_iter().enumerate() {
            let mut samples = Vec::with_capacity(args.gateway_calls);
            runtime.block_on(async {
                for _ in 0..args.gateway_calls {
                    let opts = CallOptions::new("infer");
                    let t0 = Instant::now();
                    let answer = gateway.chat(&caller, &opts, request.clone()).await;
                    samples.push(nanos(t0.elapsed()));
                    if let Err(e) = answer {
                        return Err(anyhow::anyhow!("gateway call failed: {e}"));
                    }
                }
                Ok(())
            })?;
            let s = Summary::of(&mut samples);
            println!(
                "gateway {} rep={rep}: p50 {} ns p99 {} ns mean {:.0} ns",
                rows[i].0, s.p50, s.p99, s.mean
            );
            rows[i].1.push(s);
        }
    }
    println!();
    println!("| in-process chat call (mock provider) | p50 (µs) | p99 (µs) | mean (µs) |");
    println!("|---|---|---|---|");
    for (name, runs) in rows {
        let m =
            |f: &dyn Fn(&Summary) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>()) / 1000.0;
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            m(&|s| s.p50 as f64),
            m(&|s| s.p99 as f64),
            m(&|s| s.mean)
        );
    }
    Ok(())
}
