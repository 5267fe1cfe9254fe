//! `fabric-bench flood`: what an idle-connection flood costs the server
//! (issue #16): `/healthz` latency and the server's RSS before, during and
//! after `--connections` idle TCP connections spread over several loopback
//! source addresses (127.0.0.2, .3, …; each holds at most the server's
//! per-address share), while a probe on 127.0.0.1 asks `/healthz` over
//! fresh connections, as a supervisor would. Loopback only.
//!
//! `--baseline-bin` runs the same against another build, alternating.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::server::{Server, builds_to_compare};
use crate::stats::{Summary, median, proc_status_kb};

#[derive(Debug, clap::Args)]
pub struct FloodArgs {
    /// The server binary [default: reactor-fabric next to this binary]
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// Another build to measure the same way, alternating (e.g. before the fix)
    #[arg(long, value_name = "PATH")]
    baseline_bin: Option<PathBuf>,
    /// Idle connections opened
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Source addresses they come from (127.0.0.2 onwards)
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// /healthz requests per phase
    #[arg(long, default_value_t = 300)]
    probes: usize,
    /// Repetitions (fresh server each)
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Phase {
    healthz: Summary,
    failed: usize,
    rss_kb: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Run {
    before: Phase,
    during: Phase,
    after: Phase,
    /// Connections the server still held open when the flood was measured.
    held: usize,
}

pub async fn run(args: &FloodArgs) -> anyhow::Result<()> {
    let mut builds =
        builds_to_compare::<Run>(args.server_bin.as_deref(), args.baseline_bin.as_deref())?;
    for rep in 1..=args.reps {
        for (name, binary, runs) in &mut builds {
            let run = once(args, binary)
                .await
                .with_context(|| format!("{name}, rep {rep}"))?;
            println!(
                "rep {rep} {name}: healthz p50/p99 before {} / {} µs, during {} / {} µs ({} failed), after {} / {} µs; RSS before {} KB, during {} KB, after {} KB; {} of {} connections held",
                run.before.healthz.p50 / 1000,
                run.before.healthz.p99 / 1000,
                run.during.healthz.p50 / 1000,
                run.during.healthz.p99 / 1000,
                run.during.failed,
                run.after.healthz.p50 / 1000,
                run.after.healthz.p99 / 1000,
                run.before.rss_kb,
                run.during.rss_kb,
                run.after.rss_kb,
                run.held,
                args.connections,
            );
            runs.push(run);
        }
    }
    println!();
    println!(
        "{} idle connections from {} addresses, {} /healthz probes per phase; median of {} reps:",
        args.connections, args.sources, args.probes, args.reps
    );
    println!();
    println!(
        "| build | healthz p99 before (µs) | during (µs) | failed during | after (µs) | RSS before (MB) | during (MB) | after (MB) | after ÷ before | connections held |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (name, _, runs) in &builds {
        let med = |f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} |",
            med(&|r| r.before.healthz.p99 as f64 / 1e3),
            med(&|r| r.during.healthz.p99 as f64 / 1e3),
            med(&|r| r.during.failed as f64),
            med(&|r| r.after.healthz.p99 as f64 / 1e3),
            med(&|r| r.before.rss_kb as f64 / 1024.0),
            med(&|r| r.during.rss_kb as f64 / 1024.0),
            med(&|r| r.after.rss_kb as f64 / 1024.0),
            med(&|r| r.after.rss_kb as f64 / r.before.rss_kb.max(1) as f64),
            med(&|r| r.held as f64),
        );
    }
    Ok(())
}

async fn once(args: &FloodArgs, binary: &Path) -> anyhow::Result<Run> {
    let server = Server::spawn(binary, &[]).await?;
    let addr: SocketAddr = server
        .base
        .trim_start_matches("http://")
        .parse()
        .context("server address")?;
    // Warm up (first requests allocate the router's and allocator's pools).
    probe(addr, args.probes).await;
    let before = Phase {
        healthz: probe(addr, args.probes).await.0,
        failed: 0,
        rss_kb: proc_status_kb(server.pid, "VmRSS")?,
    };
    let mut flood = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(args.sources.max(1))) as u8);
        if let Ok(stream) = connect_from(source, addr).await {
            flood.push(stream);
        }
    }
    // Let the server accept (or refuse) them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = still_open(&flood);
    let (healthz, failed) = probe(addr, args.probes).await;
    let during = Phase {
        healthz,
        failed,
        rss_kb: proc_status_kb(server.pid, "VmRSS")?,
    };
    drop(flood);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = Phase {
        healthz: probe(addr, args.probes).await.0,
        failed: 0,
        rss_kb: proc_status_kb(server.pid, "VmRSS")?,
    };
    server.stop().await?;
    Ok(Run {
        before,
        during,
        after,
        held,
    })
}

async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(to).await
}

/// How many of `streams` the server has not closed (a closed one reads EOF).
fn still_open(streams: &[TcpStream]) -> usize {
    let mut buf = [0u8; 64];
    streams
        .iter()
        .filter(|stream| {
            // Nothing to read yet: still open; EOF or an error: closed.
            matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

/// `n` sequential `GET /healthz` over fresh connections from 127.0.0.1,
/// each given 2 s: the latency of those answered, and how many were not.
async fn probe(addr: SocketAddr, n: usize) -> (Summary, usize) {
    let mut samples = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let started = Instant::now();
        let answered = tokio::time::timeout(Duration::from_secs(2), async {
            let mut stream = TcpStream::connect(addr).await?;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                .await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            std::io::Result::Ok(answer.starts_with(b"HTTP/1.1 200"))
        })
        .await;
        match answered {
            Ok(Ok(true)) => {
                samples.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX))
            }
            _ => failed += 1,
        }
    }
    (Summary::of(&mut samples), failed)
}
