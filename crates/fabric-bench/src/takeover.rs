//! `fabric-bench takeover`: how long a standby orchestrator takes to become
//! the active one after `kill -9` of the leader (two `reactor-fabric serve`
//! processes on one Redis key prefix, issue #4).
//!
//! Per run: a leader and a standby start on a fresh prefix of one durable
//! `redis-server` (`appendfsync always`); once the standby says `standby` on
//! `/readyz`, the bench waits a fraction of the TTL (spread evenly over the
//! runs, so the kill lands at every phase of the renewal cycle), sends
//! SIGKILL to the leader, and polls the standby every 5 ms for `/readyz` 200
//! (*ready*), then creates a `noop` task on it and polls until it is
//! completed (*first task*). Both count from the kill.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fabric_store::redis::testing::RedisServer;

use crate::server::{Server, resolve_binary};
use crate::stats::{Summary, millis, nanos};

#[derive(Debug, clap::Args)]
pub struct TakeoverArgs {
    /// The server binary [default: reactor-fabric next to this binary]
    #[arg(long, value_name = "PATH")]
    server_bin: Option<std::path::PathBuf>,
    /// Leadership TTLs to measure, in milliseconds (`serve --leader-ttl`)
    #[arg(long, value_delimiter = ',', default_value = "2000,10000")]
    ttl_ms: Vec<u64>,
    /// Kills per TTL
    #[arg(long, default_value_t = 10)]
    runs: usize,
}

struct Run {
    ready: Duration,
    first_task: Duration,
}

pub async fn run(args: &TakeoverArgs) -> anyhow::Result<()> {
    let binary = resolve_binary(args.server_bin.as_deref())?;
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let dir = tempfile::Builder::new()
        .prefix("fabric-bench-redis-")
        .tempdir()
        .context("cannot create a directory for redis-server")?;
    let redis = RedisServer::start(dir.path());
    println!(
        "takeover: server {}, redis-server on port {} (appendfsync always)",
        binary.display(),
        redis.port()
    );
    let mut table = Vec::new();
    for &ttl_ms in &args.ttl_ms {
        let ttl = Duration::from_millis(ttl_ms);
        let mut runs = Vec::with_capacity(args.runs);
        for i in 0..args.runs {
            let phase = ttl.mul_f64(i as f64 / args.runs as f64);
            let prefix = format!("takeover-{ttl_ms}-{i}");
            let r = once(&binary, &redis.url(), &prefix, ttl, phase)
                .await
                .with_context(|| format!("run {i} with TTL {ttl:?}"))?;
            println!(
                "ttl {ttl_ms} ms run {i}: killed {:.0} ms into the wait; ready after {:.0} ms, first task completed after {:.0} ms",
                phase.as_secs_f64() * 1e3,
                r.ready.as_secs_f64() * 1e3,
                r.first_task.as_secs_f64() * 1e3
            );
            runs.push(r);
        }
        let mut ready: Vec<u64> = runs.iter().map(|r| nanos(r.ready)).collect();
        let mut first: Vec<u64> = runs.iter().map(|r| nanos(r.first_task)).collect();
        table.push((
            ttl_ms,
            Summary::of(&mut ready),
            Summary::of(&mut first),
            ready[0],
        ));
    }
    println!(
        "\nTakeover after kill -9 of the leader, {} runs per TTL (nearest-rank p99 of {} runs = the max):\n",
        args.runs, args.runs
    );
    println!(
        "| leader TTL | standby ready: min / median / p99 (ms) | first task completed: median / p99 (ms) |"
    );
    println!("|--:|--:|--:|");
    for (ttl_ms, ready, first, min) in table {
        println!(
            "| {:.1} s | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} |",
            ttl_ms as f64 / 1e3,
            millis(min),
            millis(ready.p50),
            millis(ready.p99),
            millis(first.p50),
            millis(first.p99)
        );
    }
    Ok(())
}

async fn once(
    binary: &Path,
    url: &str,
    prefix: &str,
    ttl: Duration,
    phase: Duration,
) -> anyhow::Result<Run> {
    let ttl_arg = format!("{}ms", ttl.as_millis());
    let args = [
        "--store",
        url,
        "--store-prefix",
        prefix,
        "--leader-ttl",
        &ttl_arg,
    ];
    let leader = Server::spawn(binary, &args).await?;
    let client = leader.login().await?;
    let mut standby = Server::spawn_unready(binary, &args, "warn").await?;
    standby
        .wait_readyz("standby", Duration::from_millis(20))
        .await?;
    tokio::time::sleep(phase).await;

    leader.kill().await?;
    let killed = Instant::now();
    standby.wait_readyz("ok", Duration::from_millis(5)).await?;
    let ready = killed.elapsed();

    // The leader's login token is stored in Redis: it works on the new leader.
    let http = &client.http;
    let created: serde_json::Value = http
        .post(format!("{}/v1/tasks", standby.base))
        .json(&serde_json::json!({"agent": "noop"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"].as_str().context("no task id")?.to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let task: serde_json::Value = http
            .get(format!("{}/v1/tasks/{id}", standby.base))
            .send()
            .await?
            .json()
            .await?;
        if task["status"] == "completed" {
            break;
        }
        if Instant::now() > deadline {
            bail!("the first task on the new leader never completed: {task}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first_task = killed.elapsed();
    standby.stop().await?;
    Ok(Run { ready, first_task })
}
