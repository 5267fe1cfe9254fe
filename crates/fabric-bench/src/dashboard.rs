//! `fabric-bench dashboard`: the web UI's cost, measured in a real headless
//! Chromium (Playwright for Python, Debian's chromium; the script is
//! embedded and written to a temp dir).
//!
//! 1. Time to first render of `/tasks` (navigation start to the first task
//!    row on screen, cold cache each sample), with a small store beside a
//!    store of `--tasks` tasks (server-side paging should make them equal).
//! 2. The server's CPU per second with no browser, then with `--browsers`
//!    signed-in browsers each watching the task list (refreshed every 5 s)
//!    and one task's page (its WebSocket stream).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::task::JoinSet;

use crate::server::{ADMIN_PASSWORD, Client, Server, resolve_binary};
use crate::stats::{ProcessCpu, median, percentile};

const SCRIPT: &str = include_str!("../py/dashboard_bench.py");

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// The server binary [default: reactor-fabric next to this binary]
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// A Python with Playwright [default: target/py-venv/bin/python, which ./scripts/test makes]
    #[arg(long, value_name = "PATH", default_value = "target/py-venv/bin/python")]
    python: PathBuf,
    /// Tasks in the large store
    #[arg(long, default_value_t = 10_000)]
    tasks: u64,
    /// Tasks in the small store (the baseline)
    #[arg(long, default_value_t = 100)]
    small: u64,
    /// First-render samples per store
    #[arg(long, default_value_t = 30)]
    samples: usize,
    /// Browsers watching at once
    #[arg(long, default_value_t = 5)]
    browsers: usize,
    /// Seconds of each CPU window (idle, then watched)
    #[arg(long, default_value_t = 60)]
    window: u64,
}

/// Queues `n` shell tasks behind a `sleep 3600` that holds the one worker:
/// they stay queued (listed, never run).
async fn fill(client: &Client, n: u64) -> anyhow::Result<()> {
    create(
        client,
        serde_json::json!({"name": "blocker", "prompt": "sleep 3600"}),
    )
    .await?;
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..32 {
        let (next, client) = (Arc::clone(&next), client.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                create(
                    &client,
                    serde_json::json!({"name": format!("queued-{i}"), "prompt": "true"}),
                )
                .await?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(())
}

async fn create(client: &Client, body: serde_json::Value) -> anyhow::Result<()> {
    let r = client
        .http
        .post(client.url("/v1/tasks"))
        .json(&body)
        .send()
        .await?;
    if r.status() != reqwest::StatusCode::CREATED {
        bail!(
            "POST /v1/tasks answered {}: {}",
            r.status(),
            r.text().await?
        );
    }
    Ok(())
}

async fn python(
    args: &DashboardArgs,
    script: &Path,
    argv: &[String],
) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(&args.python)
        .arg(script)
        .args(argv)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot run {} (a Python with playwright: ./scripts/test makes target/py-venv)",
                args.python.display()
            )
        })
}

/// First-render times (ms) of `/tasks` on a server holding `tasks` tasks.
async fn first_render(
    args: &DashboardArgs,
    binary: &Path,
    script: &Path,
    tasks: u64,
) -> anyhow::Result<Vec<f64>> {
    let (server, client) = Server::start(binary, &["--shell-concurrency", "1"]).await?;
    fill(&client, tasks).await?;
    let child = python(
        args,
        script,
        &[
            "first-render".into(),
            server.base.clone(),
            ADMIN_PASSWORD.into(),
            args.samples.to_string(),
        ],
    )
    .await?;
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("the first-render script failed ({})", out.status);
    }
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the script printed {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let times = answer["ms"]
        .as_array()
        .context("no ms in the script's answer")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    server.stop().await?;
    Ok(times)
}

fn summary(times: &[f64]) -> (f64, f64) {
    let mut micros: Vec<u64> = times.iter().map(|ms| (ms * 1000.0) as u64).collect();
    micros.sort_unstable();
    (median(times), percentile(&micros, 0.99) as f64 / 1000.0)
}

/// The server's CPU seconds per second over `window`.
async fn cpu_per_second(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = ProcessCpu::of(pid)?;
    tokio::time::sleep(window).await;
    let (own, _) = ProcessCpu::of(pid)?.seconds_since(&before);
    Ok(own / window.as_secs_f64())
}

pub async fn run(args: &DashboardArgs) -> anyhow::Result<()> {
    let binary = resolve_binary(args.server_bin.as_deref())?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("dashboard_bench.py");
    std::fs::write(&script, SCRIPT)?;

    println!(
        "first render of /tasks ({} samples each, cold cache)",
        args.samples
    );
    let small = first_render(args, &binary, &script, args.small).await?;
    let large = first_render(args, &binary, &script, args.tasks).await?;
    let (small_p50, small_p99) = summary(&small);
    let (large_p50, large_p99) = summary(&large);
    println!(
        "  {:>6} tasks: p50 {small_p50:.0} ms, p99 {small_p99:.0} ms",
        args.small
    );
    println!(
        "  {:>6} tasks: p50 {large_p50:.0} ms, p99 {large_p99:.0} ms",
        args.tasks
    );
    println!("  ratio large/small: p50 {:.2}", large_p50 / small_p50);

    let (server, client) = Server::start(&binary, &["--shell-concurrency", "1"]).await?;
    fill(&client, args.tasks).await?;
    let window = Duration::from_secs(args.window);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = cpu_per_second(server.pid, window).await?;
    let mut watchers = python(
        args,
        &script,
        &[
            "watch".into(),
            server.base.clone(),
            ADMIN_PASSWORD.into(),
            args.browsers.to_string(),
            (args.window + 30).to_string(),
        ],
    )
    .await?;
    let mut lines = BufReader::new(watchers.stdout.take().context("no stdout")?).lines();
    while let Some(line) = lines.next_line().await? {
        if line == "watching" {
            break;
        }
    }
    // Past the pages' first loads: the steady cost of watching.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let watched = cpu_per_second(server.pid, window).await?;
    let _ = watchers.kill().await;
    let _ = watchers.wait().await;
    // Idle again after: the server's own background work drifts (the fill's
    // writes settling), so the baseline is the mean of before and after.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_after = cpu_per_second(server.pid, window).await?;
    server.stop().await?;
    let baseline = (idle + idle_after) / 2.0;
    println!(
        "server CPU with {} tasks: idle {:.1} then {:.1} ms/s, {} browsers watching {:.1} ms/s (+{:.1} ms/s over the idle mean, {:.2} ms/s per browser)",
        args.tasks,
        idle * 1000.0,
        idle_after * 1000.0,
        args.browsers,
        watched * 1000.0,
        (watched - baseline) * 1000.0,
        (watched - baseline) * 1000.0 / args.browsers as f64
    );
    Ok(())
}
