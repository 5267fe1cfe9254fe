//! `fabric-bench dispatch`: tasks run by agents on real worker nodes.
//!
//! A release `reactor-fabric serve` and real `reactor-fabric node`
//! processes on loopback (isolation `none`). Three built-in shell agents
//! (concurrency 4 each) run on the orchestrator itself (the baseline, no
//! node), all on one node, or one per node, and the same load goes through
//! the three layouts in the same session:
//!
//! - dispatch latency: one task at a time, each `date +%s%N` as its only
//!   command; latency = the command's clock reading minus the task's
//!   `started_at` (when the lease was granted), so it is the trip from the
//!   lease to the command running on the node (the worker's lease answer,
//!   its policy check through the API, the process start). p50 / p99;
//! - throughput: `--tasks` short tasks (`true`) spread over the three
//!   agents by 16 submitters, from the first submission to the last
//!   completion.
//!
//! Everything shares the machine's two cores: the node processes compete
//! with the orchestrator, so "3 nodes" measures the protocol's overhead,
//! not more hardware.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::server::{Client, Server, resolve_binary};
use crate::stats::{Summary, median, millis};
use fabric_core::{Task, TaskStatus};

#[derive(Debug, clap::Args)]
pub struct DispatchArgs {
    /// The reactor-fabric binary (default: target/release, else target/debug)
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Short tasks of the throughput run
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// One-at-a-time tasks of the latency run
    #[arg(long, default_value_t = 300)]
    samples: usize,
    #[arg(long, default_value_t = 3)]
    reps: u32,
}

const AGENTS: usize = 3;
const SUBMITTERS: usize = 16;

struct Run {
    latency: Summary,
    throughput: f64,
}

pub async fn run(args: &DispatchArgs) -> anyhow::Result<()> {
    let binary = resolve_binary(args.server_bin.as_deref())?;
    println!(
        "dispatch: {AGENTS} shell agents (concurrency 4) on the orchestrator vs 1 node vs 3 nodes; {} latency samples, {} tasks; {} reps; {}",
        args.samples,
        args.tasks,
        args.reps,
        binary.display()
    );
    let mut here = Vec::new();
    let mut one = Vec::new();
    let mut three = Vec::new();
    for rep in 1..=args.reps {
        for (nodes, runs) in [(0usize, &mut here), (1, &mut one), (3, &mut three)] {
            let r = one_run(&binary, args, nodes).await?;
            println!(
                "rep {rep}, {nodes} node(s) (0: on the orchestrator): dispatch p50 {:.2} ms p99 {:.2} ms | {} tasks at {:.0} tasks/s",
                millis(r.latency.p50),
                millis(r.latency.p99),
                args.tasks,
                r.throughput
            );
            runs.push(r);
        }
    }
    let med =
        |runs: &[Run], f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    println!();
    println!(
        "| medians of {} reps | on the orchestrator (no node) | 1 node | 3 nodes |",
        args.reps
    );
    println!("|---|---|---|---|");
    let row = |what: &str, f: &dyn Fn(&Run) -> f64| {
        println!(
            "| {what} | {:.2} ms | {:.2} ms | {:.2} ms |",
            med(&here, f),
            med(&one, f),
            med(&three, f)
        );
    };
    row("dispatch (lease → command running) p50", &|r| {
        millis(r.latency.p50)
    });
    row("dispatch p99", &|r| millis(r.latency.p99));
    let (t0, t1, t3) = (
        med(&here, &|r| r.throughput),
        med(&one, &|r| r.throughput),
        med(&three, &|r| r.throughput),
    );
    println!(
        "| {} short tasks, throughput | {t0:.0} tasks/s | {t1:.0} tasks/s ({:.2}×) | {t3:.0} tasks/s ({:.2}×; {:.2}× of 1 node) |",
        args.tasks,
        t1 / t0,
        t3 / t0,
        t3 / t1
    );
    Ok(())
}

/// A `reactor-fabric node` child, killed when dropped.
struct NodeProcess {
    _child: Child,
    _dir: tempfile::TempDir,
}

async fn start_node(
    binary: &Path,
    base: &str,
    token: &str,
    name: &str,
) -> anyhow::Result<NodeProcess> {
    let dir = tempfile::Builder::new()
        .prefix("fabric-bench-node-")
        .tempdir()?;
    let child = Command::new(binary)
        .args(["node", "--join", base, "--token", token, "--name", name])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--isolation", "none", "--listen", "127.0.0.1:0"])
        .env("FABRIC_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start node {name}"))?;
    Ok(NodeProcess {
        _child: child,
        _dir: dir,
    })
}

async fn one_run(binary: &Path, args: &DispatchArgs, nodes: usize) -> anyhow::Result<Run> {
    let (server, admin) = Server::start(binary, &[]).await?;
    let token = crate::nodes::join_token(&admin).await?;

    let mut processes = Vec::new();
    for i in 0..nodes {
        processes.push(start_node(binary, &server.base, &token, &format!("d{i}")).await?);
    }
    if nodes > 0 {
        wait_nodes_ready(&admin, nodes).await?;
    }
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let id = format!("worker-{i}");
        let mut agent = json!({
            "id": id, "concurrency": 4, "max_queue_depth": 100_000,
            "isolation": {"level": "none", "as_fabric_user": true},
        });
        if nodes > 0 {
            agent["node"] = json!(format!("d{}", i % nodes));
        }
        admin
            .http
            .post(admin.url("/v1/agents"))
            .json(&agent)
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("cannot spawn {id}"))?;
        agents.push(id);
    }
    let latency = dispatch_latency(&admin, &agents, args.samples).await?;
    let throughput = throughput(&admin, &agents, args.tasks).await?;
    drop(processes);
    server.kill().await?;
    Ok(Run {
        latency,
        throughput,
    })
}

async fn wait_nodes_ready(admin: &Client, nodes: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = crate::nodes::count_ready(admin).await?;
        if ready == nodes {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {nodes} nodes became ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create(admin: &Client, agent: &str, command: &str) -> anyhow::Result<String> {
    let task: Value = admin
        .http
        .post(admin.url("/v1/tasks"))
        .json(&json!({"agent": agent, "commands": [command]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    task["id"].as_str().map(str::to_owned).context("no task id")
}

/// Polls a task until it is finished; its final view.
async fn wait_done(admin: &Client, id: &str) -> anyhow::Result<Task> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let task: Task = admin
            .http
            .get(admin.url(&format!("/v1/tasks/{id}")))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if task.status.is_terminal() {
            return Ok(task);
        }
        if Instant::now() > deadline {
            bail!("task {id} is still {} after 60 s", task.status);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn dispatch_latency(
    admin: &Client,
    agents: &[String],
    samples: usize,
) -> anyhow::Result<Summary> {
    let mut ns = Vec::with_capacity(samples);
    for i in 0..samples {
        let id = create(admin, &agents[i % agents.len()], "date +%s%N").await?;
        let task = wait_done(admin, &id).await?;
        if task.status != TaskStatus::Completed {
            bail!("task {id} ended {}", task.status);
        }
        let ran: i128 = task
            .result
            .as_ref()
            .and_then(|r| r.stdout.trim().parse().ok())
            .with_context(|| format!("task {id} printed no clock"))?;
        let leased = task.started_at.context("no started_at")?;
        // Timestamps are milliseconds: the lease is known to within one.
        let leased_ns = i128::from(leased.as_millis()) * 1_000_000;
        ns.push(u64::try_from((ran - leased_ns).max(0)).unwrap_or(0));
    }
    Ok(Summary::of(&mut ns))
}

async fn throughput(admin: &Client, agents: &[String], tasks: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut submitters = tokio::task::JoinSet::new();
    for _ in 0..SUBMITTERS {
        let (admin, agents, next) = (admin.clone(), agents.to_vec(), Arc::clone(&next));
        submitters.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= tasks {
                    return anyhow::Ok(());
                }
                create(&admin, &agents[i % agents.len()], "true").await?;
            }
        });
    }
    while let Some(done) = submitters.join_next().await {
        done??;
    }
    let finished = crate::http::wait_until_finished(admin).await?;
    let (completed, _, _) = crate::http::count_completed(admin).await?;
    // The latency run's tasks are completed too.
    if (completed as usize) < tasks {
        bail!("only {completed} tasks completed of {tasks}");
    }
    Ok(tasks as f64 / finished.duration_since(start).as_secs_f64())
}
