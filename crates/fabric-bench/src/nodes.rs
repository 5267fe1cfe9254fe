//! `fabric-bench nodes`: what worker nodes cost the orchestrator.
//!
//! A release `reactor-fabric serve` and `--nodes` simulated nodes in this
//! process, each speaking the real protocol over loopback: it joins with a
//! multi-use join token (`POST /v1/nodes/join`, the capabilities a real node
//! sends), then loops on `POST /v1/nodes/{name}/heartbeat` long polls with
//! its own credential, acknowledging every config it is given. Measured:
//!
//! - join latency (the token check under the service's lock, two store
//!   writes), p50 / p99 over all nodes;
//! - orchestrator CPU per heartbeat: the server's CPU time over a window
//!   divided by the heartbeats answered in it, and the same server's idle
//!   CPU over a window of the same length before any node joined (so the
//!   scheduler's own ticks are not charged to the nodes);
//! - memory per node: the server's RSS with every node joined and
//!   reporting, minus its RSS before, divided by the nodes;
//! - config delivery: `PUT /v1/nodes/config`, then the time until each
//!   node holds the new version (its long poll is answered at once), p50 /
//!   p99 / max over nodes, and until the last one has acknowledged it;
//! - placement latency: `POST /v1/agents` of a built-in shell agent with a
//!   `node_selector` that a tenth of the nodes match, answered once the
//!   chosen node has the session in its set and reports it running (the
//!   simulated node does so in the heartbeat right after), p50 / p99.
//!
//! Every node runs on the bench's runtime (its `--client-threads`), on the
//! same two cores as the server: the numbers include that competition.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::server::{Client, Server, resolve_binary};
use crate::stats::{ProcessCpu, Summary, median, millis, nanos, proc_status_kb};

#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    /// The reactor-fabric binary (default: target/release, else target/debug)
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Simulated nodes
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// The heartbeat interval the orchestrator gives nodes (each heartbeat is a long poll this long)
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Seconds of the CPU window (idle before, loaded after)
    #[arg(long, default_value_t = 20)]
    window: u64,
    /// Agents placed on the simulated nodes (placement latency)
    #[arg(long, default_value_t = 200)]
    placements: usize,
    #[arg(long, default_value_t = 3)]
    reps: u32,
}

struct Run {
    join: Summary,
    idle_cpu_s: f64,
    loaded_cpu_s: f64,
    heartbeats: u64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    deliver: Summary,
    deliver_all_acked: Duration,
    place: Summary,
}

pub async fn run(args: &NodesArgs) -> anyhow::Result<()> {
    let binary = resolve_binary(args.server_bin.as_deref())?;
    println!(
        "nodes: {} simulated nodes over loopback, heartbeat interval {:?}, CPU window {} s, {} reps; server {}",
        args.nodes,
        args.interval,
        args.window,
        args.reps,
        binary.display()
    );
    let mut runs = Vec::new();
    for rep in 1..=args.reps {
        let r = one_run(&binary, args).await?;
        let per_hb_us = cpu_per_heartbeat_us(&r);
        println!(
            "rep {rep}: join p50 {:.2} ms p99 {:.2} ms | {} heartbeats in {} s, server CPU {:.2} s loaded vs {:.2} s idle = {per_hb_us:.1} µs/heartbeat | RSS {:.1} → {:.1} MiB = {:.1} KiB/node | config to every node p50 {:.1} ms p99 {:.1} ms max {:.1} ms, all acked {:.1} ms",
            millis(r.join.p50),
            millis(r.join.p99),
            r.heartbeats,
            args.window,
            r.loaded_cpu_s,
            r.idle_cpu_s,
            r.rss_before_kib as f64 / 1024.0,
            r.rss_after_kib as f64 / 1024.0,
            kib_per_node(&r, args.nodes),
            millis(r.deliver.p50),
            millis(r.deliver.p99),
            millis(r.deliver.max),
            millis(nanos(r.deliver_all_acked)),
        );
        println!(
            "rep {rep}: {} placements p50 {:.2} ms p99 {:.2} ms",
            args.placements,
            millis(r.place.p50),
            millis(r.place.p99)
        );
        runs.push(r);
    }
    let med = |f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    println!();
    println!(
        "| medians of {} reps, {} nodes | value |",
        args.reps, args.nodes
    );
    println!("|---|---|");
    println!(
        "| join latency p50 / p99 | {:.2} / {:.2} ms |",
        med(&|r| millis(r.join.p50)),
        med(&|r| millis(r.join.p99))
    );
    println!(
        "| heartbeats answered per second | {:.0} |",
        med(&|r| r.heartbeats as f64 / args.window as f64)
    );
    println!(
        "| orchestrator CPU per heartbeat (above idle) | {:.1} µs |",
        med(&cpu_per_heartbeat_us)
    );
    println!(
        "| orchestrator CPU, {} nodes reporting | {:.1} % of one core |",
        args.nodes,
        med(&|r| 100.0 * (r.loaded_cpu_s - r.idle_cpu_s) / args.window as f64)
    );
    println!(
        "| memory per node (RSS) | {:.1} KiB |",
        med(&|r| kib_per_node(r, args.nodes))
    );
    println!(
        "| config to every node p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        med(&|r| millis(r.deliver.p50)),
        med(&|r| millis(r.deliver.p99)),
        med(&|r| millis(r.deliver.max))
    );
    println!(
        "| config acknowledged by every node | {:.1} ms |",
        med(&|r| millis(nanos(r.deliver_all_acked)))
    );
    println!(
        "| placement (spawn → running on a node) p50 / p99 | {:.2} / {:.2} ms |",
        med(&|r| millis(r.place.p50)),
        med(&|r| millis(r.place.p99))
    );
    Ok(())
}

fn cpu_per_heartbeat_us(r: &Run) -> f64 {
    if r.heartbeats == 0 {
        return 0.0;
    }
    (r.loaded_cpu_s - r.idle_cpu_s).max(0.0) * 1e6 / r.heartbeats as f64
}

fn kib_per_node(r: &Run, nodes: usize) -> f64 {
    r.rss_after_kib.saturating_sub(r.rss_before_kib) as f64 / nodes.max(1) as f64
}

async fn one_run(binary: &std::path::Path, args: &NodesArgs) -> anyhow::Result<Run> {
    let interval = format!("{}ms", args.interval.as_millis());
    let timeout = format!("{}ms", (args.interval * 5).as_millis());
    let (server, admin) = Server::start(
        binary,
        &[
            "--node-heartbeat-interval",
            &interval,
            "--node-heartbeat-timeout",
            &timeout,
        ],
    )
    .await?;
    let window = Duration::from_secs(args.window);

    // Idle: the server alone, for the same window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = proc_status_kb(server.pid, "VmRSS")?;
    let idle_cpu_s = cpu_over(server.pid, window).await?;

    let token = join_token(&admin).await?;
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(60))
        .build()?;
    // Joins, a few at a time (a fleet comes up over seconds, not at once).
    let mut joined = Vec::with_capacity(args.nodes);
    let mut join_ns = Vec::with_capacity(args.nodes);
    let names: Vec<String> = (0..args.nodes).map(|i| format!("sim-{i:05}")).collect();
    for chunk in names.chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for name in chunk {
            let (http, base, token, name) = (
                http.clone(),
                server.base.clone(),
                token.clone(),
                name.clone(),
            );
            set.spawn(async move { join(&http, &base, &token, &name).await });
        }
        while let Some(done) = set.join_next().await {
            let (credential, name, took) = done??;
            join_ns.push(nanos(took));
            joined.push((name, credential));
        }
    }
    let join = Summary::of(&mut join_ns);

    // Every node reports in a loop; a config it is given it holds, and
    // acknowledges in its next heartbeat.
    let heartbeats = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut holders = Vec::with_capacity(joined.len());
    let mut tasks = tokio::task::JoinSet::new();
    for (name, credential) in joined {
        let (version_tx, version_rx) = watch::channel((0u64, None::<Instant>));
        holders.push(version_rx);
        let node = SimNode {
            http: http.clone(),
            url: format!("{}/v1/nodes/{name}/heartbeat", server.base),
            credential,
            wait_ms: u64::try_from(args.interval.as_millis()).unwrap_or(2000),
            heartbeats: Arc::clone(&heartbeats),
        };
        let stop = stop_rx.clone();
        tasks.spawn(async move { node.run(version_tx, stop).await });
    }
    // Let every node settle into its loop, then measure a window.
    tokio::time::sleep(args.interval * 2).await;
    let before = heartbeats.load(Ordering::Relaxed);
    let loaded_cpu_s = cpu_over(server.pid, window).await?;
    let answered = heartbeats.load(Ordering::Relaxed) - before;
    let rss_after_kib = proc_status_kb(server.pid, "VmRSS")?;
    let ready = count_ready(&admin).await?;
    if ready != args.nodes {
        bail!("only {ready} of {} nodes are ready", args.nodes);
    }

    // Config delivery: one PUT, then until every node holds the version.
    let put_at = Instant::now();
    let config: Value = admin
        .http
        .put(admin.url("/v1/nodes/config"))
        .json(&json!({"log_level": "info", "egress": ["pypi.org:443"]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let version = config["version"].as_u64().context("no version")?;
    let mut deliver_ns = Vec::with_capacity(holders.len());
    for mut rx in holders {
        let (_, at) = *rx
            .wait_for(|(v, _)| *v >= version)
            .await
            .context("a simulated node stopped")?;
        deliver_ns.push(nanos(at.unwrap_or_else(Instant::now) - put_at));
    }
    let deliver = Summary::of(&mut deliver_ns);
    let deliver_all_acked = loop {
        let nodes: Value = admin
            .http
            .get(admin.url("/v1/nodes"))
            .send()
            .await?
            .json()
            .await?;
        let all = nodes["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().all(|n| n["config_version"] == version));
        if all {
            break put_at.elapsed();
        }
        if put_at.elapsed() > Duration::from_secs(60) {
            bail!("not every node acknowledged config {version} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };

    // Placement: agents whose selector a tenth of the nodes match.
    let mut place_ns = Vec::with_capacity(args.placements);
    for i in 0..args.placements {
        let start = Instant::now();
        let agent: Value = admin
            .http
            .post(admin.url("/v1/agents"))
            .json(&json!({
                "id": format!("placed-{i:05}"),
                "isolation": {"level": "none"},
                "node_selector": {"zone": format!("z{}", i % 10)},
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        place_ns.push(nanos(start.elapsed()));
        if agent["node"].as_str().is_none() {
            bail!("agent placed-{i:05} is not on a node: {agent}");
        }
    }
    let place = Summary::of(&mut place_ns);

    let _ = stop_tx.send(true);
    tasks.abort_all();
    server.kill().await?;
    Ok(Run {
        join,
        idle_cpu_s,
        loaded_cpu_s,
        heartbeats: answered,
        rss_before_kib,
        rss_after_kib,
        deliver,
        deliver_all_acked,
        place,
    })
}

/// The server's own CPU seconds over `window`.
async fn cpu_over(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let start = ProcessCpu::of(pid)?;
    tokio::time::sleep(window).await;
    Ok(ProcessCpu::of(pid)?.seconds_since(&start).0)
}

pub(crate) async fn join_token(admin: &Client) -> anyhow::Result<String> {
    let created: Value = admin
        .http
        .post(admin.url("/v1/nodes/tokens"))
        .json(&json!({"ttl_seconds": 3600, "max_uses": 0}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    created["token"]
        .as_str()
        .map(str::to_owned)
        .context("no token in the answer")
}

pub(crate) async fn count_ready(admin: &Client) -> anyhow::Result<usize> {
    let nodes: Value = admin
        .http
        .get(admin.url("/v1/nodes"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(nodes["nodes"]
        .as_array()
        .map_or(0, |n| n.iter().filter(|n| n["status"] == "ready").count()))
}

/// `POST /v1/nodes/join` with what a real node reports.
async fn join(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    name: &str,
) -> anyhow::Result<(String, String, Duration)> {
    // sim-00042 → zone z2: a tenth of the nodes per zone.
    let zone = format!(
        "z{}",
        name.trim_start_matches("sim-")
            .parse::<usize>()
            .unwrap_or(0)
            % 10
    );
    let body = json!({
        "token": token,
        "name": name,
        "labels": {"pool": "sim", "zone": zone},
        "capabilities": {
            "hostname": name, "os": "Debian GNU/Linux 12 (bookworm)", "kernel": "6.1.0",
            "arch": "x86_64", "cpus": 8, "memory_bytes": 34_359_738_368u64,
            "isolation": ["none", "process"], "inference": {"mode": "gateway"},
            "version": fabric_core::VERSION,
        },
    });
    let start = Instant::now();
    let resp = http
        .post(format!("{base}/v1/nodes/join"))
        .json(&body)
        .send()
        .await?;
    let took = start.elapsed();
    if !resp.status().is_success() {
        bail!("join of {name}: {} {}", resp.status(), resp.text().await?);
    }
    let answer: Value = resp.json().await?;
    let credential = answer["credential"]
        .as_str()
        .context("no credential")?
        .to_owned();
    Ok((credential, name.to_owned(), took))
}

/// One simulated node's report loop.
struct SimNode {
    http: reqwest::Client,
    url: String,
    credential: String,
    wait_ms: u64,
    heartbeats: Arc<AtomicU64>,
}

impl SimNode {
    async fn run(
        self,
        version: watch::Sender<(u64, Option<Instant>)>,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        // The session set it runs: each session is reported running at once.
        let mut sessions_version = 0u64;
        let mut sessions: Vec<Value> = Vec::new();
        loop {
            let applied = version.borrow().0;
            let mut body =
                json!({"ready": true, "config_version": applied, "wait_ms": self.wait_ms});
            // The session fields only once there are sessions: a server from
            // before placement (a baseline build) refuses unknown fields.
            if sessions_version > 0 {
                body["sessions_version"] = json!(sessions_version);
                body["sessions"] = json!(sessions);
            }
            let request = self
                .http
                .post(&self.url)
                .bearer_auth(&self.credential)
                .json(&body)
                .send();
            let resp = tokio::select! {
                r = request => r?,
                _ = stop.changed() => return Ok(()),
            };
            if !resp.status().is_success() {
                bail!("heartbeat: {} {}", resp.status(), resp.text().await?);
            }
            let reply: Value = resp.json().await?;
            self.heartbeats.fetch_add(1, Ordering::Relaxed);
            if let Some(v) = reply["config"]["version"].as_u64() {
                version.send_replace((v, Some(Instant::now())));
            }
            if let Some(set) = reply.get("sessions").filter(|s| !s.is_null()) {
                sessions_version = set["version"].as_u64().unwrap_or(0);
                sessions = set["sessions"]
                    .as_array()
                    .map(|all| {
                        all.iter()
                            .map(|a| {
                                json!({
                                    "agent": a["agent"]["id"],
                                    "session": a["session"],
                                    "state": {"state": "running", "reports_in": false},
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
            }
        }
    }
}
