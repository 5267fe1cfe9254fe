//! `fabric-bench sandbox-tasks`: what keeping a sandbox's tasks apart costs
//! (issue #16: every command of a task in pid and mount namespaces of its
//! own). Two sandboxes made alike, one running `run_shell` as the fabric
//! does, one with the per-command namespaces turned off (how commands ran
//! before); the same one-command tasks (`true`, each in its own task
//! directory, as the shell agent runs them) alternate between them, one at
//! a time and then with `--concurrency` at once, so both see the same
//! machine. Reports latency per task (median, p99) and tasks per second,
//! and their ratios.

use std::future::pending;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use fabric_runtime::ShellJob;
use fabric_runtime::sandbox::{HelperCommand, Sandbox, SandboxConfig};

use crate::stats::{Summary, median, micros, nanos};

#[derive(Debug, clap::Args)]
pub struct SandboxTasksArgs {
    /// The reactor-fabric binary, whose hidden helper mode builds sandboxes
    /// [default: reactor-fabric beside this program]
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Tasks per variant and repetition
    #[arg(long, default_value_t = 400)]
    tasks: usize,
    /// Tasks at once in the concurrent phase
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Repetitions; medians across them are reported
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

pub async fn run(args: &SandboxTasksArgs) -> anyhow::Result<()> {
    let binary = match &args.binary {
        Some(binary) => binary.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory of this program")?
            .join("reactor-fabric"),
    };
    anyhow::ensure!(
        binary.exists(),
        "{} not found: build it (cargo build --release -p fabric-cli) or pass --binary",
        binary.display()
    );
    let helper = HelperCommand {
        program: binary,
        args: vec!["__sandbox-helper".into()],
    };
    let root = tempfile::Builder::new()
        .prefix("fabric-bench-sandbox-")
        .tempdir_in("/var/tmp")?;
    let make = |name: &str| {
        SandboxConfig::new(
            format!("bench-{}-{name}", std::process::id()),
            root.path().join(name),
            helper.clone(),
        )
    };
    let scoped = Arc::new(Sandbox::create(make("scoped")).await?);
    let unscoped = Arc::new(Sandbox::create(make("unscoped")).await?);
    unscoped.benchmark_without_task_scopes();
    println!(
        "sandbox-tasks: {} one-command tasks per variant and repetition, {} reps, concurrency 1 and {}",
        args.tasks, args.reps, args.concurrency
    );
    println!("| variant | at once | p50 ms | p99 ms | tasks/s |");
    println!("|---|---|---|---|---|");
    for concurrency in [1, args.concurrency] {
        let mut rows: [Vec<(Summary, f64)>; 2] = [Vec::new(), Vec::new()];
        for rep in 0..args.reps {
            // Alternate which goes first, so neither always runs on a warmer machine.
            let order: [(usize, &Arc<Sandbox>); 2] = if rep % 2 == 0 {
                [(0, &scoped), (1, &unscoped)]
            } else {
                [(1, &unscoped), (0, &scoped)]
            };
            for (slot, sandbox) in order {
                rows[slot].push(phase(sandbox, args.tasks, concurrency, rep).await?);
            }
        }
        let mut medians = Vec::new();
        for (name, row) in ["per-task namespaces", "shared (before)"].iter().zip(&rows) {
            let p50 = median(
                &row.iter()
                    .map(|(s, _)| micros(s.p50) / 1000.0)
                    .collect::<Vec<_>>(),
            );
            let p99 = median(
                &row.iter()
                    .map(|(s, _)| micros(s.p99) / 1000.0)
                    .collect::<Vec<_>>(),
            );
            let rate = median(&row.iter().map(|(_, r)| *r).collect::<Vec<_>>());
            println!("| {name} | {concurrency} | {p50:.2} | {p99:.2} | {rate:.0} |");
            medians.push((p50, rate));
        }
        println!(
            "| ratio (namespaces / before) | {concurrency} | {:.2}x | | {:.2}x |",
            medians[0].0 / medians[1].0,
            medians[0].1 / medians[1].1
        );
    }
    for sandbox in [scoped, unscoped] {
        if let Ok(sandbox) = Arc::try_unwrap(sandbox) {
            sandbox.destroy().await?;
        }
    }
    Ok(())
}

/// Runs `tasks` one-command tasks, `concurrency` at once; latencies and tasks per second.
async fn phase(
    sandbox: &Arc<Sandbox>,
    tasks: usize,
    concurrency: usize,
    rep: usize,
) -> anyhow::Result<(Summary, f64)> {
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let sandbox = Arc::clone(sandbox);
        let share = tasks / concurrency + usize::from(worker < tasks % concurrency);
        workers.spawn(async move {
            let mut samples = Vec::with_capacity(share);
            for i in 0..share {
                let dir = task_dir(sandbox.workdir(), rep, worker, i);
                let job = ShellJob::new(vec!["true".into()], dir.clone());
                let begun = Instant::now();
                let outcome = sandbox.run_shell(job, None, pending()).await?;
                samples.push(nanos(begun.elapsed()));
                anyhow::ensure!(outcome.success(), "a task failed: {outcome:?}");
                // As the shell agent does when a task ends (not timed).
                let _ = tokio::fs::remove_dir_all(&dir).await;
            }
            anyhow::Ok(samples)
        });
    }
    let mut samples = Vec::with_capacity(tasks);
    while let Some(done) = workers.join_next().await {
        samples.extend(done??);
    }
    let rate = tasks as f64 / started.elapsed().as_secs_f64();
    Ok((Summary::of(&mut samples), rate))
}

fn task_dir(root: &Path, rep: usize, worker: usize, i: usize) -> PathBuf {
    root.join(format!("t-{rep}-{worker}-{i}"))
}
