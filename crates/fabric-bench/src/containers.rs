//! `fabric-bench containers`: container agent spawn latency (isolation
//! `container`), cold and from the warm pool, beside `docker run -d` of the
//! same image with the same settings (the floor of a cold spawn) and
//! `docker update` of the limits (the floor of a warm one). Needs dockerd.
//!
//! - cold: `POST /v1/agents` of a built-in shell agent at isolation
//!   `container` (answered once its first session runs): a volume, the agent
//!   container and its sidecar created and started, the sockets bound.
//! - warm: the same with a holder agent keeping `pool.min_idle: 1`, so the
//!   spawn takes a pre-created, started container (and sidecar) and sets its
//!   limits with `docker update`. Each warm spawn is checked to have taken a
//!   pooled container (its init's pid is the pooled one's); misses are counted
//!   apart.
//! - each spawn is followed by a timed `DELETE ?drain_timeout=0` (stop
//!   latency: container, sidecar, volume removed), with the same quiet pause
//!   before every spawn and stop (the pool refills in it).
//!
//! The images (the default agent image, the sidecar image from the server
//! binary) are built by one untimed spawn before the first measurement.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fabric_core::agent::Agent;
use reqwest::StatusCode;

use crate::server::{Client, Server, resolve_binary};
use crate::stats::{Summary, millis, nanos};

/// How long a warm spawn may wait for the pool to show an idle container.
const POOL_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, clap::Args)]
pub struct ContainersArgs {
    /// The server binary [default: reactor-fabric next to this binary]
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// Spawns (and stops) per kind; also `docker run -d` / `docker update` samples
    #[arg(long, default_value_t = 40)]
    spawns: usize,
    /// `isolation.memory_mb` of the spawned agents (the pool's containers start at 512)
    #[arg(long, default_value_t = 128)]
    memory_mb: u64,
    /// Quiet time before every spawn and stop (ms): the pool refills in it
    #[arg(long, default_value_t = 500)]
    pause_ms: u64,
}

#[derive(Default)]
struct Samples {
    spawn: Vec<u64>,
    stop: Vec<u64>,
    misses: Vec<u64>,
}

pub async fn run(args: &ContainersArgs) -> anyhow::Result<()> {
    let binary = resolve_binary(args.server_bin.as_deref())?;
    anyhow::ensure!(args.spawns > 0, "--spawns must be at least 1");
    checked(Command::new("docker").arg("info")).context("dockerd is needed")?;
    println!(
        "containers: server {}, {} CPUs shared by server, dockerd and this bench; {} spawns per kind",
        binary.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.spawns
    );
    let (server, client) = Server::start(&binary, &[]).await?;
    let result = measure(args, &client).await;
    let stopped = server.stop().await;
    let (cold, warm, run_floor, update_floor) = result?;
    stopped?;

    let pause = args.pause_ms;
    println!();
    println!(
        "| what (ms, {} samples, {pause} ms pause) | p50 | p99 | mean | max |",
        args.spawns
    );
    println!("|---|---|---|---|---|");
    let row = |label: &str, samples: &[u64]| {
        let mut s = samples.to_vec();
        let sum = Summary::of(&mut s);
        println!(
            "| {label} | **{:.1}** | {:.1} | {:.1} | {:.1} |",
            millis(sum.p50),
            millis(sum.p99),
            sum.mean / 1e6,
            millis(sum.max)
        );
    };
    row("spawn, container **cold** (built-in shell)", &cold.spawn);
    row(
        "spawn, container **warm pool** (built-in shell)",
        &warm.spawn,
    );
    row(
        "floor: `docker run -d` of the agent image, same settings",
        &run_floor,
    );
    row(
        "floor: `docker update` memory/CPU/pids of a running container",
        &update_floor,
    );
    row("stop (terminate, drain 0), cold", &cold.stop);
    row("stop (terminate, drain 0), warm", &warm.stop);
    if !warm.misses.is_empty() {
        println!(
            "\nwarm spawns that missed the pool (not in the warm row): {}",
            warm.misses.len()
        );
    }
    Ok(())
}

type Measured = (Samples, Samples, Vec<u64>, Vec<u64>);

async fn measure(args: &ContainersArgs, client: &Client) -> anyhow::Result<Measured> {
    let pause = Duration::from_millis(args.pause_ms);
    // Builds the images; learn the owner label and the agent image from its container.
    spawn(client, "warmup", args.memory_mb, None).await?;
    let (owner, image) = owner_and_image("warmup")?;
    terminate(client, "warmup").await?;
    println!("agent image {image}, owner label {owner}");

    let mut cold = Samples::default();
    for i in 0..args.spawns {
        let id = format!("cold-{i}");
        tokio::time::sleep(pause).await;
        let started = Instant::now();
        spawn(client, &id, args.memory_mb, None).await?;
        cold.spawn.push(nanos(started.elapsed()));
        tokio::time::sleep(pause).await;
        let started = Instant::now();
        terminate(client, &id).await?;
        cold.stop.push(nanos(started.elapsed()));
    }
    report("cold", &cold);

    spawn(client, "holder", args.memory_mb, Some(1)).await?;
    let mut warm = Samples::default();
    for i in 0..args.spawns {
        let id = format!("warm-{i}");
        tokio::time::sleep(pause).await;
        let pooled = wait_pooled(&owner).await?;
        let started = Instant::now();
        let agent = spawn(client, &id, args.memory_mb, None).await?;
        let took = nanos(started.elapsed());
        let hit = agent.pid.is_some_and(|pid| pooled.contains(&pid));
        if hit {
            warm.spawn.push(took);
        } else {
            warm.misses.push(took);
        }
        tokio::time::sleep(pause).await;
        let started = Instant::now();
        terminate(client, &id).await?;
        warm.stop.push(nanos(started.elapsed()));
    }
    terminate(client, "holder").await?;
    report("warm", &warm);

    let run_floor = docker_run_floor(&image, args.memory_mb, args.spawns, pause)?;
    let update_floor = docker_update_floor(&image, args.spawns)?;
    Ok((cold, warm, run_floor, update_floor))
}

fn report(kind: &str, s: &Samples) {
    let mut spawn = s.spawn.clone();
    let sum = Summary::of(&mut spawn);
    println!(
        "{kind}: spawn p50 {:.1} ms p99 {:.1} ms ({} samples, {} pool misses)",
        millis(sum.p50),
        millis(sum.p99),
        sum.count,
        s.misses.len()
    );
}

async fn spawn(
    client: &Client,
    id: &str,
    memory_mb: u64,
    min_idle: Option<u32>,
) -> anyhow::Result<Agent> {
    let mut body = serde_json::json!({
        "id": id,
        "isolation": {"level": "container", "memory_mb": memory_mb},
    });
    if let Some(n) = min_idle {
        body["pool"] = serde_json::json!({ "min_idle": n });
    }
    let resp = client
        .http
        .post(client.url("/v1/agents"))
        .json(&body)
        .send()
        .await
        .context("POST /v1/agents failed")?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if status != StatusCode::CREATED {
        bail!(
            "POST /v1/agents {body} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(serde_json::from_slice(&bytes)?)
}

async fn terminate(client: &Client, id: &str) -> anyhow::Result<()> {
    let resp = client
        .http
        .delete(client.url(&format!("/v1/agents/{id}?drain_timeout=0")))
        .send()
        .await?;
    let status = resp.status();
    if status != StatusCode::OK {
        bail!(
            "DELETE /v1/agents/{id} answered {status}: {}",
            resp.text().await?
        );
    }
    Ok(())
}

/// The owner label and image of agent `id`'s container.
fn owner_and_image(id: &str) -> anyhow::Result<(String, String)> {
    let out = checked(Command::new("docker").args([
        "ps",
        "--filter",
        &format!("label=io.reactor-fabric.agent={id}"),
        "--filter",
        "label=io.reactor-fabric.component=agent",
        "--format",
        "{{.Label \"io.reactor-fabric.owner\"}} {{.Image}}",
    ]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some(owner), Some(image)) => Ok((owner.to_owned(), image.to_owned())),
        _ => bail!("no container found for agent {id}"),
    }
}

/// Host pids of this server's idle pooled containers, once there is one.
async fn wait_pooled(owner: &str) -> anyhow::Result<HashSet<u32>> {
    let deadline = Instant::now() + POOL_WAIT;
    loop {
        let out = checked(Command::new("docker").args([
            "ps",
            "-q",
            "--filter",
            &format!("label=io.reactor-fabric.owner={owner}"),
            "--filter",
            "label=io.reactor-fabric.component=agent",
            "--filter",
            "name=reactor-fabric-pool-",
        ]))?;
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let mut cmd = Command::new("docker");
            cmd.args(["inspect", "--format", "{{.State.Pid}}"])
                .args(&ids);
            let out = checked(&mut cmd)?;
            return Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect());
        }
        if Instant::now() > deadline {
            bail!("the warm pool did not refill within {POOL_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `docker run -d` of the agent image with the agent container's settings,
/// then (untimed) `docker rm -f -v`.
fn docker_run_floor(
    image: &str,
    memory_mb: u64,
    count: usize,
    pause: Duration,
) -> anyhow::Result<Vec<u64>> {
    let memory = format!("{memory_mb}m");
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        std::thread::sleep(pause);
        let name = format!("fabric-bench-floor-{}-{i}", std::process::id());
        let started = Instant::now();
        let out = checked(Command::new("docker").args([
            "run",
            "-d",
            "--name",
            &name,
            "--init",
            "--read-only",
            "--user",
            "65534:65534",
            "--network",
            "none",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--memory",
            &memory,
            "--memory-swap",
            &memory,
            "--cpus",
            "1",
            "--pids-limit",
            "256",
            "--tmpfs",
            "/tmp:size=64m,mode=1777",
            "-v",
            "/workspace",
            image,
        ]));
        samples.push(nanos(started.elapsed()));
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        out?;
    }
    Ok(samples)
}

/// `docker update` of memory, swap, CPUs and pids on one running container.
fn docker_update_floor(image: &str, count: usize) -> anyhow::Result<Vec<u64>> {
    let name = format!("fabric-bench-update-{}", std::process::id());
    checked(Command::new("docker").args([
        "run",
        "-d",
        "--name",
        &name,
        "--init",
        "--read-only",
        "--network",
        "none",
        image,
    ]))?;
    let mut samples = Vec::with_capacity(count);
    let result = (|| {
        for i in 0..count {
            let memory = format!("{}m", if i % 2 == 0 { 128 } else { 256 });
            let started = Instant::now();
            checked(Command::new("docker").args([
                "update",
                "--memory",
                &memory,
                "--memory-swap",
                &memory,
                "--cpus",
                "1",
                "--pids-limit",
                "256",
                &name,
            ]))?;
            samples.push(nanos(started.elapsed()));
        }
        Ok::<(), anyhow::Error>(())
    })();
    let _ = Command::new("docker")
        .args(["rm", "-f", &name])
        .stdout(Stdio::null())
        .status();
    result?;
    Ok(samples)
}

fn checked(cmd: &mut Command) -> anyhow::Result<std::process::Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}
