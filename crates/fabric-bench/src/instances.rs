//! `fabric-bench instances`: `reactor-fabric start | list | down` latency beside
//! `docker-compose up -d | down` of the equivalent two-service compose file (same
//! images), each run as a command line, the way a user runs them.
//!
//! `start` returns once the orchestrator answers `/readyz` and Redis PING, while
//! `docker-compose up -d` returns once the containers are started; so compose is
//! also timed up to the moment `/readyz` answers, the like-for-like number.
//! `docker ps --filter label=…` is the floor under `list` (one daemon round trip,
//! no stats). Images are built before the first run (`image build-*`), as a
//! user's first `start` with a new binary would.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::server::resolve_binary;
use crate::stats::{Summary, millis, nanos};

#[derive(Debug, clap::Args)]
pub struct InstancesArgs {
    /// Runs of each operation (median and p99 over them)
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// The reactor-fabric binary [default: the one beside this binary]
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Redis image for both sides [default: built with `reactor-fabric image build-redis`]
    #[arg(long)]
    redis_image: Option<String>,
    /// The docker-compose command (Debian's v1)
    #[arg(long, default_value = "docker-compose")]
    compose: String,
    /// Skip the docker-compose side
    #[arg(long)]
    no_compose: bool,
    /// Times to rebuild the orchestrator image from scratch (removed, then `image build-orchestrator`)
    #[arg(long, default_value_t = 5)]
    image_builds: usize,
}

pub fn run(args: &InstancesArgs) -> anyhow::Result<()> {
    let bin = resolve_binary(args.server_bin.as_deref())?;
    let orchestrator_image = last_line(&checked(
        Command::new(&bin).args(["image", "build-orchestrator"]),
    )?);
    // What a first `start` with a new binary pays on top: hash, strip, tar, import.
    let mut builds = Vec::new();
    for _ in 0..args.image_builds {
        checked(Command::new("docker").args(["rmi", &orchestrator_image]))?;
        builds.push(timed(
            Command::new(&bin).args(["image", "build-orchestrator"]),
        )?);
    }
    let size = last_line(&checked(Command::new("docker").args([
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &orchestrator_image,
    ]))?);
    println!(
        "orchestrator image {orchestrator_image}: {:.1} MB, binary {:.1} MB",
        size.parse::<f64>().unwrap_or(0.0) / 1e6,
        std::fs::metadata(&bin)?.len() as f64 / 1e6
    );
    let redis_image = match &args.redis_image {
        Some(image) => image.clone(),
        None => last_line(&checked(Command::new(&bin).args(["image", "build-redis"]))?),
    };
    println!(
        "images: {orchestrator_image}, {redis_image}; {} runs each",
        args.runs
    );

    let mut start = Vec::new();
    let mut list = Vec::new();
    let mut down = Vec::new();
    let mut ps = Vec::new();
    let prefix = format!("bench-{}", std::process::id());
    for run in 0..args.runs {
        let name = format!("{prefix}-{run}");
        let cli = |sub: &[&str]| {
            let mut cmd = Command::new(&bin);
            cmd.args(sub)
                .env("FABRIC_REDIS_IMAGE", &redis_image)
                .env_remove("FABRIC_ORCHESTRATOR_IMAGE");
            cmd
        };
        let t = timed(&mut cli(&["start", "--name", &name]))?;
        start.push(t);
        let t_list = timed(&mut cli(&["list"]))?;
        list.push(t_list);
        let t_ps = timed(Command::new("docker").args([
            "ps",
            "--filter",
            "label=io.reactor-fabric.instance",
        ]))?;
        ps.push(t_ps);
        let t_down = timed(&mut cli(&["down", "--name", &name]))?;
        down.push(t_down);
        println!(
            "run {run}: start {:.0} ms, list {:.0} ms, docker ps {:.0} ms, down {:.0} ms",
            millis(t),
            millis(t_list),
            millis(t_ps),
            millis(t_down)
        );
    }

    let mut rows = vec![
        row(
            "image build-orchestrator (hash, strip, tar, import)",
            &mut builds,
        ),
        row("reactor-fabric start (until /readyz + PING)", &mut start),
        row(
            "reactor-fabric list (2 containers, CPU + memory)",
            &mut list,
        ),
        row("docker ps --filter label (floor of list)", &mut ps),
        row("reactor-fabric down", &mut down),
    ];

    if !args.no_compose {
        let dir = tempfile::tempdir()?;
        let mut up = Vec::new();
        let mut up_ready = Vec::new();
        let mut compose_down = Vec::new();
        for run in 0..args.runs {
            let port = free_port()?;
            let file = dir.path().join(format!("compose-{run}.yml"));
            std::fs::write(&file, compose_file(&orchestrator_image, &redis_image, port))?;
            let project = format!("{prefix}c{run}");
            let compose = |sub: &[&str]| {
                let mut cmd = Command::new(&args.compose);
                cmd.arg("-f").arg(&file).args(["-p", &project]).args(sub);
                cmd
            };
            let started = Instant::now();
            checked(&mut compose(&["up", "-d"]))?;
            let t_up = started.elapsed();
            wait_readyz(port, Duration::from_secs(60))?;
            let t_ready = started.elapsed();
            let t_down = timed(&mut compose(&["down", "-v"]))?;
            up.push(nanos(t_up));
            up_ready.push(nanos(t_ready));
            compose_down.push(t_down);
            println!(
                "compose run {run}: up -d {:.0} ms, up -d until /readyz {:.0} ms, down -v {:.0} ms",
                t_up.as_secs_f64() * 1e3,
                t_ready.as_secs_f64() * 1e3,
                millis(t_down)
            );
        }
        rows.push(row("docker-compose up -d", &mut up));
        rows.push(row("docker-compose up -d, until /readyz", &mut up_ready));
        rows.push(row("docker-compose down -v", &mut compose_down));
    }

    println!();
    println!("| operation | median | p99 | max |");
    println!("|---|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

fn row(what: &str, samples: &mut [u64]) -> String {
    let s = Summary::of(samples);
    format!(
        "| {what} | {:.0} ms | {:.0} ms | {:.0} ms |",
        millis(s.p50),
        millis(s.p99),
        millis(s.max)
    )
}

/// The compose equivalent of an instance: same images, network, volumes, labels, port.
fn compose_file(orchestrator: &str, redis: &str, port: u16) -> String {
    format!(
        r#"version: "3.7"
services:
  orchestrator:
    image: {orchestrator}
    command: ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/data"]
    environment:
      FABRIC_ADMIN_PASSWORD: bench-password
      FABRIC_STORE: redis://redis:6379
    ports: ["127.0.0.1:{port}:8080"]
    volumes: ["orchestrator-data:/data"]
    init: true
    restart: unless-stopped
    labels: {{io.reactor-fabric.component: orchestrator}}
  redis:
    image: {redis}
    command: ["redis-server", "--appendonly", "yes", "--dir", "/data", "--protected-mode", "no"]
    volumes: ["redis-data:/data"]
    restart: unless-stopped
    labels: {{io.reactor-fabric.component: redis}}
volumes:
  orchestrator-data: {{}}
  redis-data: {{}}
"#
    )
}

/// Runs `cmd` to completion and returns its wall time in ns; fails on a non-zero exit.
fn timed(cmd: &mut Command) -> anyhow::Result<u64> {
    let started = Instant::now();
    checked(cmd)?;
    Ok(nanos(started.elapsed()))
}

fn checked(cmd: &mut Command) -> anyhow::Result<Output> {
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

fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `GET /readyz` on 127.0.0.1:`port` every 25 ms (as `start` does) until 200.
fn wait_readyz(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if readyz(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("127.0.0.1:{port} did not answer /readyz within {timeout:?}")
}

fn readyz(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}
