//! `fabric-bench rss`: the server's resident memory idle and with 100k queued tasks.
//!
//! Loaded: one shell worker, held busy by `sleep 3600`, so every further
//! shell task stays queued in the scheduler (in memory) and in the store.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fabric_core::{Task, TaskStatus};
use tokio::task::JoinSet;

use crate::server::{Client, Server, resolve_binary};
use crate::stats::{Summary, median, millis, nanos, proc_status_kb};

#[derive(Debug, clap::Args)]
pub struct RssArgs {
    /// The server binary [default: reactor-fabric next to this binary]
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// Shell tasks queued behind the blocker
    #[arg(long, default_value_t = 100_000)]
    tasks: u64,
    /// Concurrent clients creating them
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
    /// Seconds to wait after ready before the idle reading
    #[arg(long, default_value_t = 3)]
    idle_wait: u64,
    /// Seconds to wait after the last create before the loaded reading
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Repetitions (fresh server each); the summary shows medians
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

/// VmRSS and VmHWM (peak) in MB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss: f64,
    peak: f64,
}

fn memory(pid: u32) -> anyhow::Result<Memory> {
    Ok(Memory {
        rss: proc_status_kb(pid, "VmRSS")? as f64 / 1024.0,
        peak: proc_status_kb(pid, "VmHWM")? as f64 / 1024.0,
    })
}

async fn create(client: &Client, body: serde_json::Value) -> anyhow::Result<Task> {
    let resp = client
        .http
        .post(client.url("/v1/tasks"))
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    if status != reqwest::StatusCode::CREATED {
        bail!("POST /v1/tasks answered {status}: {}", resp.text().await?);
    }
    Ok(resp.json().await?)
}

async fn get(client: &Client, task: &Task) -> anyhow::Result<Task> {
    let resp = client
        .http
        .get(client.url(&format!("/v1/tasks/{}", task.id)))
        .send()
        .await?;
    let status = resp.status();
    if !status.is_success() {
        bail!("GET /v1/tasks/{} answered {status}", task.id);
    }
    Ok(resp.json().await?)
}

/// Idle readings: `wait` after ready, then again `wait` after one login.
async fn idle_once(binary: &std::path::Path, wait: Duration) -> anyhow::Result<(Memory, Memory)> {
    let server = Server::spawn(binary, &[]).await?;
    tokio::time::sleep(wait).await;
    let idle = memory(server.pid)?;
    let _client = server.login().await?;
    tokio::time::sleep(wait).await;
    let after_login = memory(server.pid)?;
    server.stop().await?;
    Ok((idle, after_login))
}

struct LoadedRun {
    memory: Memory,
    create_secs: f64,
    /// Of the creates while the queue fills (the scheduler's task map resizes on the way).
    create_latency: Summary,
}

async fn loaded_once(args: &RssArgs, binary: &std::path::Path) -> anyhow::Result<LoadedRun> {
    let (server, client) = Server::start(
        binary,
        &["--shell-concurrency", "1", "--max-queue-depth", "200000"],
    )
    .await?;
    let blocker = create(&client, serde_json::json!({"prompt": "sleep 3600"})).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&client, &blocker).await?.status != TaskStatus::Running {
        if Instant::now() > deadline {
            bail!("the blocking `sleep 3600` task did not start within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, next, total) = (client.clone(), Arc::clone(&next), args.tasks);
        workers.spawn(async move {
            let mut last: Option<Task> = None;
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let sent = Instant::now();
                let t = create(&client, serde_json::json!({"prompt": "true"})).await?;
                latencies.push(nanos(sent.elapsed()));
                if last.as_ref().is_none_or(|l| l.id <= t.id) {
                    last = Some(t);
                }
            }
            anyhow::Ok((last, latencies))
        });
    }
    // Task ids are UUIDv7 (time-ordered): the largest is the last created.
    let mut last: Option<Task> = None;
    let mut latencies = Vec::new();
    while let Some(joined) = workers.join_next().await {
        let (worker_last, worker_latencies) = joined??;
        latencies.extend(worker_latencies);
        if let Some(t) = worker_last
            && last.as_ref().is_none_or(|l| l.id <= t.id)
        {
            last = Some(t);
        }
    }
    let create_secs = started.elapsed().as_secs_f64();
    let create_latency = Summary::of(&mut latencies);
    let last = last.context("no task was created")?;
    let seen = get(&client, &last).await?;
    if seen.status != TaskStatus::Queued {
        bail!(
            "the last task {} is {}, expected queued",
            seen.id,
            seen.status
        );
    }
    if get(&client, &blocker).await?.status != TaskStatus::Running {
        bail!("the blocker stopped running; the queue may have drained");
    }
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let memory = memory(server.pid)?;
    server.stop().await?;
    Ok(LoadedRun {
        memory,
        create_secs,
        create_latency,
    })
}

pub async fn run(args: &RssArgs) -> anyhow::Result<()> {
    let binary = resolve_binary(args.server_bin.as_deref())?;
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    let mut idle = Vec::new();
    let mut idle_login = Vec::new();
    let mut loaded = Vec::new();
    for rep in 1..=args.reps {
        let (i, login) = idle_once(&binary, Duration::from_secs(args.idle_wait))
            .await
            .context("idle run")?;
        println!(
            "rep {rep}: idle RSS {:.1} MB (peak {:.1} MB); after one login {:.1} MB (peak {:.1} MB)",
            i.rss, i.peak, login.rss, login.peak
        );
        let l = loaded_once(args, &binary).await.context("loaded run")?;
        println!(
            "rep {rep}: {} queued shell tasks (created in {:.1} s, {:.0}/s, latency p50/p99/max {:.2}/{:.2}/{:.1} ms): RSS {:.1} MB (peak {:.1} MB)",
            args.tasks,
            l.create_secs,
            args.tasks as f64 / l.create_secs,
            millis(l.create_latency.p50),
            millis(l.create_latency.p99),
            millis(l.create_latency.max),
            l.memory.rss,
            l.memory.peak
        );
        idle.push(i);
        idle_login.push(login);
        loaded.push(l);
    }
    let idle_rss = median(&idle.iter().map(|m| m.rss).collect::<Vec<_>>());
    let loaded_rss = median(&loaded.iter().map(|l| l.memory.rss).collect::<Vec<_>>());
    println!();
    println!("Median of {} reps:", args.reps);
    println!();
    println!("| state | RSS (MB) | peak RSS (MB) |");
    println!("|---|--:|--:|");
    println!(
        "| idle, {} s after ready | {idle_rss:.1} | {:.1} |",
        args.idle_wait,
        median(&idle.iter().map(|m| m.peak).collect::<Vec<_>>())
    );
    println!(
        "| idle, then one login (Argon2 verify), {} s later | {:.1} | {:.1} |",
        args.idle_wait,
        median(&idle_login.iter().map(|m| m.rss).collect::<Vec<_>>()),
        median(&idle_login.iter().map(|m| m.peak).collect::<Vec<_>>())
    );
    println!(
        "| {} shell tasks queued (after login) | {loaded_rss:.1} | {:.1} |",
        args.tasks,
        median(&loaded.iter().map(|l| l.memory.peak).collect::<Vec<_>>())
    );
    println!();
    let login_rss = median(&idle_login.iter().map(|m| m.rss).collect::<Vec<_>>());
    println!(
        "growth over idle-after-login: {:.0} bytes per queued task",
        (loaded_rss - login_rss) * 1024.0 * 1024.0 / args.tasks as f64
    );
    Ok(())
}
