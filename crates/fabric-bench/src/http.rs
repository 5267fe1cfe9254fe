//! `fabric-bench http`: the task API end to end, through a real server process.
//!
//! - throughput: `C` clients each loop `POST /v1/tasks {"agent":"noop"}` for a
//!   fixed time (closed loop), then the bench waits until every created task
//!   is durably completed; the same loop against `GET /healthz` gives the
//!   HTTP floor of this machine.
//! - latency: an open loop at a fixed rate. Request `i` is due at
//!   `start + i / rate` whatever happened to earlier requests, and its latency
//!   counts from that due time, so a stalled server cannot hide its stall by
//!   slowing the load down (no coordinated omission).
//! - telemetry: the throughput loop with telemetry off (no OTLP endpoint,
//!   nobody scraping) and fully on (traces exported over OTLP/HTTP to a local
//!   receiver in this process, `/metrics` scraped every second), alternating
//!   off/on servers rep by rep so both see the same machine load.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fabric_core::api::TaskList;
use fabric_core::{TaskStatus, Timestamp};
use reqwest::{Method, StatusCode, Url};
use tokio::task::JoinSet;

use crate::server::{Client, Server, resolve_binary};
use crate::stats::{CpuSnapshot, Summary, clock_ticks_per_second, median, millis, nanos};

const NOOP_BODY: &str = r#"{"agent":"noop"}"#;
const CHECK_BODY: &str = r#"{"agent":"coder","action":"tool:t421:read"}"#;
/// Rules loaded before a `policy-check` open loop (one policy, tenant-wide).
const CHECK_RULES: usize = 1000;
/// How long created tasks may take to finish once the load stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Closed-loop create throughput and the /healthz baseline
    Throughput,
    /// Open-loop create latency at a fixed rate
    Latency,
    /// Create throughput with telemetry off vs on (OTLP export + scrapes), alternating
    Telemetry,
    /// What authentication and per-user rate limiting cost: GET /v1/tasks/{id}
    /// latency and create throughput, beside --baseline-bin, alternating
    Access,
}

#[derive(Debug, clap::Args)]
pub struct HttpArgs {
    /// The server binary [default: reactor-fabric next to this binary]
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// What to run
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "throughput,latency"
    )]
    parts: Vec<Part>,
    /// Concurrent clients of the closed loops
    #[arg(long, value_delimiter = ',', default_value = "32,64,128")]
    concurrency: Vec<usize>,
    /// Seconds each closed loop runs
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Repetitions of every measurement (fresh server each); tables show medians
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Creates per second of the open loop
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds the open loop is measured (after its warm-up)
    #[arg(long, default_value_t = 20)]
    rate_duration: u64,
    /// Seconds of open loop at the same rate before measuring (discarded)
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// What the open loop sends
    #[arg(long, value_enum, default_value = "create-task")]
    latency_target: LatencyTarget,
    /// The server binary `access` compares with (built from the commit before)
    #[arg(long, value_name = "PATH")]
    baseline_bin: Option<PathBuf>,
    /// Run the servers on the Redis store: a durable redis-server
    /// (`appendfsync always`) started by the bench, a fresh key prefix per run
    #[arg(long)]
    redis: bool,
}

/// `--store`/`--store-prefix` flags for the servers of one invocation.
struct StoreArgs {
    /// Keeps the redis-server alive for the whole invocation.
    redis: Option<(fabric_store::redis::testing::RedisServer, tempfile::TempDir)>,
    runs: AtomicUsize,
}

impl StoreArgs {
    fn new(redis: bool) -> anyhow::Result<Self> {
        let redis = if redis {
            let dir = tempfile::Builder::new()
                .prefix("fabric-bench-redis-")
                .tempdir()
                .context("cannot create a directory for redis-server")?;
            let server = fabric_store::redis::testing::RedisServer::start(dir.path());
            println!(
                "store: redis-server on port {} (appendfsync always)",
                server.port()
            );
            Some((server, dir))
        } else {
            None
        };
        Ok(Self {
            redis,
            runs: AtomicUsize::new(0),
        })
    }

    /// The flags for the next server (empty: SQLite in its data dir).
    fn next(&self) -> Vec<String> {
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        match &self.redis {
            Some((server, _)) => vec![
                "--store".to_owned(),
                server.url(),
                "--store-prefix".to_owned(),
                format!("bench-{run}"),
            ],
            None => Vec::new(),
        }
    }
}

/// `--latency-target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LatencyTarget {
    /// POST /v1/tasks {"agent":"noop"}
    CreateTask,
    /// POST /v1/policy/check with 1,000 rules loaded (each decision audited)
    PolicyCheck,
    /// GET /healthz: the floor of the HTTP round trip on this machine (no auth, no store)
    Healthz,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    CreateNoop,
    Healthz,
    PolicyCheck,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::CreateNoop => "POST /v1/tasks",
            Target::Healthz => "GET /healthz",
            Target::PolicyCheck => "POST /v1/policy/check",
        }
    }
}

/// A prepared request: parsed once, cloned per send.
#[derive(Clone)]
struct Request {
    client: reqwest::Client,
    method: Method,
    url: Url,
    body: Option<&'static str>,
    expect: StatusCode,
}

impl Request {
    fn new(client: &Client, target: Target) -> anyhow::Result<Self> {
        let (method, path, body, expect) = match target {
            Target::CreateNoop => (
                Method::POST,
                "/v1/tasks",
                Some(NOOP_BODY),
                StatusCode::CREATED,
            ),
            Target::Healthz => (Method::GET, "/healthz", None, StatusCode::OK),
            Target::PolicyCheck => (
                Method::POST,
                "/v1/policy/check",
                Some(CHECK_BODY),
                StatusCode::OK,
            ),
        };
        Ok(Self {
            client: client.http.clone(),
            method,
            url: Url::parse(&client.url(path))?,
            body,
            expect,
        })
    }

    /// `GET path`, expecting 200.
    fn get(client: &Client, path: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: client.http.clone(),
            method: Method::GET,
            url: Url::parse(&client.url(path))?,
            body: None,
            expect: StatusCode::OK,
        })
    }

    /// Sends once and reads the whole body (so the connection is reused).
    /// `Err` carries a description of an unexpected answer.
    async fn send(&self) -> Result<(), String> {
        let mut req = self.client.request(self.method.clone(), self.url.clone());
        if let Some(body) = self.body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if status == self.expect {
            Ok(())
        } else {
            Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
        }
    }
}

/// CPU used by the server (per thread name) and by this process over a window.
#[derive(Debug, Clone, Default)]
struct CpuUse {
    /// Server thread name → cores (CPU seconds per wall second).
    server_threads: BTreeMap<String, f64>,
    server: f64,
    bench: f64,
}

struct CpuWindow {
    server_pid: u32,
    server: CpuSnapshot,
    bench: CpuSnapshot,
    at: Instant,
}

impl CpuWindow {
    fn open(server_pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            server_pid,
            server: CpuSnapshot::of(server_pid)?,
            bench: CpuSnapshot::of(std::process::id())?,
            at: Instant::now(),
        })
    }

    fn close(self) -> anyhow::Result<CpuUse> {
        let server = CpuSnapshot::of(self.server_pid)?;
        let bench = CpuSnapshot::of(std::process::id())?;
        let scale = clock_ticks_per_second() * self.at.elapsed().as_secs_f64();
        let server_threads: BTreeMap<String, f64> = server
            .since(&self.server)
            .into_iter()
            .map(|(name, ticks)| (name, ticks as f64 / scale))
            .collect();
        Ok(CpuUse {
            server: server_threads.values().sum(),
            server_threads,
            bench: bench.total().saturating_sub(self.bench.total()) as f64 / scale,
        })
    }
}

impl CpuUse {
    /// `name=cores` of the busiest server threads.
    fn breakdown(&self) -> String {
        let mut threads: Vec<_> = self.server_threads.iter().collect();
        threads.sort_by(|a, b| b.1.total_cmp(a.1));
        threads
            .iter()
            .filter(|(_, c)| **c >= 0.01)
            .map(|(n, c)| format!("{n}={c:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One closed-loop run.
struct ClosedLoop {
    ok: u64,
    failed: u64,
    first_failure: Option<String>,
    /// From the first send to the last response.
    elapsed: Duration,
    latency: Summary,
    cpu: CpuUse,
    started: Instant,
}

impl ClosedLoop {
    fn per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

async fn closed_loop(
    client: &Client,
    target: Target,
    concurrency: usize,
    duration: Duration,
    server_pid: u32,
) -> anyhow::Result<ClosedLoop> {
    let request = Request::new(client, target)?;
    let cpu = CpuWindow::open(server_pid)?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let request = request.clone();
        workers.spawn(async move {
            let (mut ok, mut failed, mut first_failure) = (0u64, 0u64, None);
            let mut latencies = Vec::with_capacity(1 << 16);
            while Instant::now() < deadline {
                let t = Instant::now();
                match request.send().await {
                    Ok(()) => {
                        ok += 1;
                        latencies.push(nanos(t.elapsed()));
                    }
                    Err(e) => {
                        failed += 1;
                        first_failure.get_or_insert(e);
                    }
                }
            }
            (ok, failed, first_failure, latencies)
        });
    }
    let (mut ok, mut failed, mut first_failure) = (0, 0, None);
    let mut latencies = Vec::new();
    while let Some(joined) = workers.join_next().await {
        let (o, f, e, l) = joined?;
        ok += o;
        failed += f;
        first_failure = first_failure.or(e);
        latencies.extend(l);
    }
    let elapsed = started.elapsed();
    Ok(ClosedLoop {
        ok,
        failed,
        first_failure,
        elapsed,
        latency: Summary::of(&mut latencies),
        cpu: cpu.close()?,
        started,
    })
}

pub(crate) async fn list(client: &Client, query: &str) -> anyhow::Result<TaskList> {
    let resp = client
        .http
        .get(client.url(&format!("/v1/tasks?{query}")))
        .send()
        .await?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "GET /v1/tasks?{query} answered {status}: {}",
            resp.text().await?
        );
    }
    Ok(resp.json().await?)
}

/// Polls until no task is pending, queued or running in the store (the list
/// filters on the stored status, so this means every final write committed).
/// Returns when that was first seen.
pub(crate) async fn wait_until_finished(client: &Client) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let mut unfinished = false;
        for status in [TaskStatus::Pending, TaskStatus::Queued, TaskStatus::Running] {
            if !list(client, &format!("status={status}&limit=1"))
                .await?
                .tasks
                .is_empty()
            {
                unfinished = true;
                break;
            }
        }
        if !unfinished {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("tasks still unfinished {DRAIN_TIMEOUT:?} after the load stopped");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Completed tasks: how many, and the server's first `created_at` and last `finished_at`.
pub(crate) async fn count_completed(
    client: &Client,
) -> anyhow::Result<(u64, Timestamp, Timestamp)> {
    let (mut count, mut first, mut last) = (0u64, None::<Timestamp>, None::<Timestamp>);
    let mut cursor = None;
    loop {
        let mut query = "status=completed&limit=1000".to_owned();
        if let Some(c) = cursor {
            query.push_str(&format!("&cursor={c}"));
        }
        let page = list(client, &query).await?;
        for t in &page.tasks {
            count += 1;
            first = Some(first.map_or(t.created_at, |f| f.min(t.created_at)));
            let finished = t.finished_at.unwrap_or(t.updated_at);
            last = Some(last.map_or(finished, |l| l.max(finished)));
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok((count, first.unwrap_or_default(), last.unwrap_or_default()))
}

/// One throughput measurement at one concurrency.
struct ThroughputRun {
    concurrency: usize,
    create: ClosedLoop,
    /// Completed ÷ (first create sent → all tasks durably finished, as polled).
    completed_per_sec: f64,
    /// Completed ÷ (server's first `created_at` → last `finished_at`).
    completed_per_sec_server: f64,
    drain: Duration,
    healthz: ClosedLoop,
}

async fn throughput_once(
    binary: &std::path::Path,
    store: &[String],
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<ThroughputRun> {
    let store: Vec<&str> = store.iter().map(String::as_str).collect();
    let (server, client) = Server::start(binary, &store).await?;
    let create = closed_loop(
        &client,
        Target::CreateNoop,
        concurrency,
        duration,
        server.pid,
    )
    .await?;
    let load_end = create.started + create.elapsed;
    let finished_at = wait_until_finished(&client).await?;
    let (completed, first, last) = count_completed(&client).await?;
    let failed = list(&client, "status=failed&limit=1000").await?.tasks.len();
    if completed != create.ok || failed > 0 {
        eprintln!(
            "warning: {} tasks created, {completed} completed, {failed} failed",
            create.ok
        );
    }
    let server_span = last.since(first).as_secs_f64().max(1e-3);
    // Let the WAL checkpoint and the last spawned commits settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let healthz = closed_loop(&client, Target::Healthz, concurrency, duration, server.pid).await?;
    server.stop().await?;
    Ok(ThroughputRun {
        concurrency,
        completed_per_sec: completed as f64
            / finished_at.duration_since(create.started).as_secs_f64(),
        completed_per_sec_server: completed as f64 / server_span,
        drain: finished_at.saturating_duration_since(load_end),
        create,
        healthz,
    })
}

/// One open-loop measurement.
struct LatencyRun {
    sent: usize,
    failed: usize,
    first_failure: Option<String>,
    /// Due time → response: what a caller on the schedule experienced.
    from_due: Summary,
    /// Actual send → response.
    service: Summary,
    /// Due time → actual send (the load generator's own lateness).
    dispatch_lag: Summary,
    achieved_rate: f64,
    max_in_flight: usize,
    cpu: CpuUse,
}

async fn latency_once(
    binary: &std::path::Path,
    store: &[String],
    rate: u32,
    duration: Duration,
    warmup: Duration,
    target: Target,
) -> anyhow::Result<LatencyRun> {
    let store: Vec<&str> = store.iter().map(String::as_str).collect();
    let (server, client) = Server::start(binary, &store).await?;
    if target == Target::PolicyCheck {
        load_rules(&client).await?;
    }
    let request = Request::new(&client, target)?;
    let run = open_loop(request, rate, duration, warmup, server.pid).await?;
    server.stop().await?;
    Ok(run)
}

/// Sends `request` on a fixed schedule of `rate` per second (each its own
/// task, so a slow answer delays nobody) and measures what came back.
async fn open_loop(
    request: Request,
    rate: u32,
    duration: Duration,
    warmup: Duration,
    server_pid: u32,
) -> anyhow::Result<LatencyRun> {
    let period = Duration::from_secs(1) / rate;
    let warm = (warmup.as_secs_f64() * f64::from(rate)) as u32;
    let total = warm + (duration.as_secs_f64() * f64::from(rate)) as u32;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let runtime = tokio::runtime::Handle::current();
    let cpu = CpuWindow::open(server_pid)?;
    let start = Instant::now() + Duration::from_millis(50);

    // The schedule runs on its own (blocking-pool) thread with OS sleeps, which
    // are far finer than Tokio's 1 ms timer wheel; each request is its own task.
    let dispatcher = {
        let (in_flight, max_in_flight) = (Arc::clone(&in_flight), Arc::clone(&max_in_flight));
        tokio::task::spawn_blocking(move || {
            let mut handles = Vec::with_capacity(total as usize);
            for i in 0..total {
                let due = start + period * i;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let (request, in_flight, max_in_flight) = (
                    request.clone(),
                    Arc::clone(&in_flight),
                    Arc::clone(&max_in_flight),
                );
                handles.push(runtime.spawn(async move {
                    let sent = Instant::now();
                    let n = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                    max_in_flight.fetch_max(n, Ordering::Relaxed);
                    let outcome = request.send().await;
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    (due, sent, Instant::now(), outcome)
                }));
            }
            handles
        })
    };
    let handles = dispatcher.await?;
    let mut from_due = Vec::with_capacity(handles.len());
    let mut service = Vec::with_capacity(handles.len());
    let mut lag = Vec::with_capacity(handles.len());
    let (mut failed, mut first_failure) = (0, None);
    let (mut first_due, mut last_done) = (None, None);
    for (i, h) in handles.into_iter().enumerate() {
        let (due, sent, done, outcome) = h.await?;
        if i < warm as usize {
            continue;
        }
        first_due.get_or_insert(due);
        last_done = Some(last_done.map_or(done, |l: Instant| l.max(done)));
        match outcome {
            Ok(()) => {
                from_due.push(nanos(done - due));
                service.push(nanos(done - sent));
                lag.push(nanos(sent.saturating_duration_since(due)));
            }
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert(e);
            }
        }
    }
    let cpu = cpu.close()?;
    let measured = (total - warm) as usize;
    let span = match (first_due, last_done) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 1.0,
    };
    Ok(LatencyRun {
        sent: measured,
        failed,
        first_failure,
        from_due: Summary::of(&mut from_due),
        service: Summary::of(&mut service),
        dispatch_lag: Summary::of(&mut lag),
        achieved_rate: (measured - failed) as f64 / span,
        max_in_flight: max_in_flight.load(Ordering::Relaxed),
        cpu,
    })
}

pub async fn run(args: &HttpArgs) -> anyhow::Result<()> {
    let binary = resolve_binary(args.server_bin.as_deref())?;
    anyhow::ensure!(
        args.reps > 0 && args.rate > 0,
        "--reps and --rate must be at least 1"
    );
    println!(
        "http: server {}, client runtime on this machine ({} CPUs shared with the server)",
        binary.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let store = StoreArgs::new(args.redis)?;
    let mut failures = Failures::default();
    if args.parts.contains(&Part::Throughput) {
        throughput(args, &binary, &store, &mut failures).await?;
    }
    if args.parts.contains(&Part::Latency) {
        latency(args, &binary, &store, &mut failures).await?;
    }
    if args.parts.contains(&Part::Telemetry) {
        telemetry(args, &binary, &store, &mut failures).await?;
    }
    if args.parts.contains(&Part::Access) {
        let baseline = args.baseline_bin.as_deref().context(
            "--parts access needs --baseline-bin (the server built from the commit before)",
        )?;
        access(args, baseline, &binary, &store, &mut failures).await?;
    }
    failures.check()
}

/// Requests answered other than expected (a create not `201`, a check not
/// `200`), over every run. The tables count them; any at all fails the bench
/// after the tables are printed: the rates above count only successes, so a
/// run with failures does not measure what it says.
#[derive(Debug, Default)]
struct Failures {
    count: u64,
    first: Option<String>,
}

impl Failures {
    fn add(&mut self, count: u64, first: Option<&str>) {
        self.count += count;
        if self.first.is_none() {
            self.first = first.map(str::to_owned);
        }
    }

    fn check(self) -> anyhow::Result<()> {
        match self.count {
            0 => Ok(()),
            n => anyhow::bail!(
                "{n} requests got an unexpected answer (first: {}); the numbers above count only the expected answers, so they are not a valid measurement",
                self.first.as_deref().unwrap_or("?")
            ),
        }
    }
}

/// A sink for OTLP/HTTP exports: answers every request 200 and counts the
/// requests and bytes (what a collector on the same machine costs the
/// server, minus the collector's own decoding).
pub(crate) async fn otlp_sink() -> anyhow::Result<(String, Arc<std::sync::atomic::AtomicU64>)> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&bytes);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match conn.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    if conn.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    counted.fetch_add(length as u64, Ordering::Relaxed);
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if conn.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((url, bytes))
}

async fn telemetry(
    args: &HttpArgs,
    binary: &std::path::Path,
    store: &StoreArgs,
    failures: &mut Failures,
) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.duration);
    let c = args.concurrency.first().copied().unwrap_or(64);
    let (sink, exported) = otlp_sink().await?;
    // (created/s, completed/s, server CPU µs per task, create p99 ms)
    let mut off: Vec<(f64, f64, f64, f64)> = Vec::new();
    let mut on: Vec<(f64, f64, f64, f64)> = Vec::new();
    for rep in 1..=args.reps {
        for enabled in [false, true] {
            let flags = store.next();
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = if enabled {
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", sink.as_str())]
            } else {
                Vec::new()
            };
            let before = exported.load(Ordering::Relaxed);
            let (server, client) = Server::start_with_env(binary, &flags, &env).await?;
            // Prometheus' part: a scrape every second while the load runs.
            let scraper = enabled.then(|| {
                let url = format!("{}/metrics", server.base);
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    loop {
                        if let Ok(r) = http.get(&url).send().await {
                            let _ = r.bytes().await;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                })
            });
            let create = closed_loop(&client, Target::CreateNoop, c, duration, server.pid).await?;
            failures.add(create.failed, create.first_failure.as_deref());
            let finished_at = wait_until_finished(&client).await?;
            if let Some(s) = scraper {
                s.abort();
            }
            let (completed, _, _) = count_completed(&client).await?;
            server.stop().await?;
            let completed_per_sec =
                completed as f64 / finished_at.duration_since(create.started).as_secs_f64();
            let cpu_us = create.cpu.server * 1e6 / create.per_sec().max(1.0);
            let row = (
                create.per_sec(),
                completed_per_sec,
                cpu_us,
                millis(create.latency.p99),
            );
            println!(
                "rep {rep} telemetry {}: created {} ({:.0}/s, {} failed), completed/s {:.0}, server {:.2} cores ({:.0} µs/task), create p50/p99 {:.2}/{:.2} ms, OTLP bytes received {}",
                if enabled { "on " } else { "off" },
                create.ok,
                row.0,
                create.failed,
                row.1,
                create.cpu.server,
                row.2,
                millis(create.latency.p50),
                row.3,
                exported.load(Ordering::Relaxed) - before,
            );
            if enabled { &mut on } else { &mut off }.push(row);
        }
    }
    let med = |rows: &[(f64, f64, f64, f64)], f: fn(&(f64, f64, f64, f64)) -> f64| {
        median(&rows.iter().map(f).collect::<Vec<_>>())
    };
    println!();
    println!(
        "Telemetry overhead, {c} clients, {} s closed loop, median of {} alternating reps:",
        args.duration, args.reps
    );
    println!();
    println!(
        "| telemetry | created/s | create→complete tasks/s | server CPU µs per task | create p99 (ms) |"
    );
    println!("|---|--:|--:|--:|--:|");
    for (label, rows) in [("off", &off), ("on (OTLP + /metrics scraped 1/s)", &on)] {
        println!(
            "| {label} | {:.0} | {:.0} | {:.0} | {:.2} |",
            med(rows, |r| r.0),
            med(rows, |r| r.1),
            med(rows, |r| r.2),
            med(rows, |r| r.3),
        );
    }
    let ratio: Vec<f64> = off.iter().zip(&on).map(|(a, b)| b.1 / a.1).collect();
    println!();
    println!(
        "on ÷ off, completed/s: median {:.3} (pairs: {})",
        median(&ratio),
        ratio
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

async fn throughput(
    args: &HttpArgs,
    binary: &std::path::Path,
    store: &StoreArgs,
    failures: &mut Failures,
) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.duration);
    let mut runs: BTreeMap<usize, Vec<ThroughputRun>> = BTreeMap::new();
    for rep in 1..=args.reps {
        for &c in &args.concurrency {
            let r = throughput_once(binary, &store.next(), c, duration)
                .await
                .with_context(|| format!("throughput run at concurrency {c}"))?;
            println!(
                "rep {rep} C={c}: created {} ({:.0}/s, {} failed{}), completed/s {:.0} (server clock {:.0}), drain {:.0} ms, \
                 create p50/p99/max {:.2}/{:.2}/{:.1} ms; healthz {:.0}/s ({} failed) p50/p99 {:.2}/{:.2} ms",
                r.create.ok,
                r.create.per_sec(),
                r.create.failed,
                r.create
                    .first_failure
                    .as_deref()
                    .map(|e| format!(", first: {e}"))
                    .unwrap_or_default(),
                r.completed_per_sec,
                r.completed_per_sec_server,
                r.drain.as_secs_f64() * 1e3,
                millis(r.create.latency.p50),
                millis(r.create.latency.p99),
                millis(r.create.latency.max),
                r.healthz.per_sec(),
                r.healthz.failed,
                millis(r.healthz.latency.p50),
                millis(r.healthz.latency.p99),
            );
            println!(
                "    cpu during create: server {:.2} cores [{}], bench {:.2} cores; during healthz: server {:.2}, bench {:.2}",
                r.create.cpu.server,
                r.create.cpu.breakdown(),
                r.create.cpu.bench,
                r.healthz.cpu.server,
                r.healthz.cpu.bench,
            );
            failures.add(r.create.failed, r.create.first_failure.as_deref());
            failures.add(r.healthz.failed, r.healthz.first_failure.as_deref());
            runs.entry(r.concurrency).or_default().push(r);
        }
    }

    println!();
    println!(
        "Throughput, median of {} reps, {} s closed loop each:",
        args.reps, args.duration
    );
    println!();
    println!(
        "| clients | created/s | create→complete tasks/s | create p50 / p99 (ms) | {} req/s | create ÷ healthz | server CPU (cores) | bench CPU (cores) | failed (all reps) |",
        Target::Healthz.label()
    );
    println!("|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (c, rs) in &runs {
        let med = |f: &dyn Fn(&ThroughputRun) -> f64| median(&rs.iter().map(f).collect::<Vec<_>>());
        let created = med(&|r| r.create.per_sec());
        let healthz = med(&|r| r.healthz.per_sec());
        let failed: u64 = rs.iter().map(|r| r.create.failed + r.healthz.failed).sum();
        println!(
            "| {c} | {created:.0} | {:.0} | {:.2} / {:.2} | {healthz:.0} | {:.2} | {:.2} | {:.2} | {failed} |",
            med(&|r| r.completed_per_sec),
            med(&|r| millis(r.create.latency.p50)),
            med(&|r| millis(r.create.latency.p99)),
            med(&|r| r.create.per_sec() / r.healthz.per_sec()),
            med(&|r| r.create.cpu.server),
            med(&|r| r.create.cpu.bench),
        );
    }
    Ok(())
}

async fn latency(
    args: &HttpArgs,
    binary: &std::path::Path,
    store: &StoreArgs,
    failures: &mut Failures,
) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for rep in 1..=args.reps {
        let r = latency_once(
            binary,
            &store.next(),
            args.rate,
            Duration::from_secs(args.rate_duration),
            Duration::from_secs(args.warmup),
            match args.latency_target {
                LatencyTarget::CreateTask => Target::CreateNoop,
                LatencyTarget::PolicyCheck => Target::PolicyCheck,
                LatencyTarget::Healthz => Target::Healthz,
            },
        )
        .await
        .context("open-loop latency run")?;
        println!(
            "rep {rep}: {} sent at {}/s (achieved {:.0}/s), {} failed{}; from due p50/p99/p99.9/max {:.2}/{:.2}/{:.2}/{:.1} ms; \
             service p50/p99 {:.2}/{:.2} ms; dispatch lag p99 {:.3} ms; max in flight {}; server {:.2} cores [{}], bench {:.2} cores",
            r.sent,
            args.rate,
            r.achieved_rate,
            r.failed,
            r.first_failure
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            millis(r.from_due.p50),
            millis(r.from_due.p99),
            millis(r.from_due.p999),
            millis(r.from_due.max),
            millis(r.service.p50),
            millis(r.service.p99),
            millis(r.dispatch_lag.p99),
            r.max_in_flight,
            r.cpu.server,
            r.cpu.breakdown(),
            r.cpu.bench,
        );
        failures.add(r.failed as u64, r.first_failure.as_deref());
        runs.push(r);
    }
    let med = |f: &dyn Fn(&LatencyRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    println!();
    println!(
        "Open loop {}/s for {} s (after {} s warm-up), median of {} reps:",
        args.rate, args.rate_duration, args.warmup, args.reps
    );
    println!();
    let label = match args.latency_target {
        LatencyTarget::CreateTask => Target::CreateNoop.label(),
        LatencyTarget::PolicyCheck => Target::PolicyCheck.label(),
        LatencyTarget::Healthz => Target::Healthz.label(),
    };
    println!("| latency of {label} | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) |");
    println!("|---|--:|--:|--:|--:|");
    for (label, pick) in [
        (
            "from scheduled send (reported)",
            (|r: &LatencyRun| r.from_due) as fn(&LatencyRun) -> Summary,
        ),
        ("from actual send (service time)", |r: &LatencyRun| {
            r.service
        }),
    ] {
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} | {:.1} |",
            med(&|r| millis(pick(r).p50)),
            med(&|r| millis(pick(r).p99)),
            med(&|r| millis(pick(r).p999)),
            med(&|r| millis(pick(r).max)),
        );
    }
    println!();
    println!(
        "failed: {} of {} measured requests (all reps; failures are not in the percentiles)",
        runs.iter().map(|r| r.failed).sum::<usize>(),
        runs.iter().map(|r| r.sent).sum::<usize>(),
    );
    println!(
        "achieved {:.0}/s, max in flight {:.0}, server {:.2} cores, bench {:.2} cores",
        med(&|r| r.achieved_rate),
        med(&|r| r.max_in_flight as f64),
        med(&|r| r.cpu.server),
        med(&|r| r.cpu.bench),
    );
    Ok(())
}

/// PUTs one tenant-wide policy of [`CHECK_RULES`] rules (`tool:t<i>:*`).
async fn load_rules(client: &Client) -> anyhow::Result<()> {
    let rules: Vec<serde_json::Value> = (0..CHECK_RULES)
        .map(|i| {
            let effect = if i % 10 == 9 { "deny" } else { "allow" };
            serde_json::json!({"action_pattern": format!("tool:t{i}:*"), "effect": effect})
        })
        .collect();
    let body = serde_json::json!({"scope": {"tenant": "*"}, "rules": rules});
    let resp = client
        .http
        .put(client.url("/v1/policies/bench"))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == StatusCode::OK,
        "loading the bench policy: {}",
        resp.text().await.unwrap_or_default()
    );
    Ok(())
}

/// One server configuration of the `access` comparison.
struct AccessConfig {
    label: &'static str,
    binary: std::path::PathBuf,
    env: Vec<(&'static str, &'static str)>,
}

/// Per rep: GET p50, GET p99 (µs), created/s.
type AccessRow = (f64, f64, f64);

async fn access(
    args: &HttpArgs,
    baseline: &std::path::Path,
    binary: &std::path::Path,
    store: &StoreArgs,
    failures: &mut Failures,
) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.duration);
    let rate_duration = Duration::from_secs(args.rate_duration);
    let warmup = Duration::from_secs(args.warmup);
    let c = args.concurrency.first().copied().unwrap_or(64);
    // The servers set FABRIC_RATE_LIMIT_RPS=0 unless told otherwise; a rate no
    // bench reaches keeps the limiter counting without ever refusing.
    let configs = [
        AccessConfig {
            label: "before (baseline binary)",
            binary: baseline.to_path_buf(),
            env: Vec::new(),
        },
        AccessConfig {
            label: "after, rate limit on (never reached)",
            binary: binary.to_path_buf(),
            env: vec![("FABRIC_RATE_LIMIT_RPS", "1000000000")],
        },
        AccessConfig {
            label: "after, rate limit off",
            binary: binary.to_path_buf(),
            env: vec![("FABRIC_RATE_LIMIT_RPS", "0")],
        },
    ];
    let mut rows: Vec<Vec<AccessRow>> = vec![Vec::new(); configs.len()];
    for rep in 1..=args.reps {
        for (i, config) in configs.iter().enumerate() {
            let flags = store.next();
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let (server, client) =
                Server::start_with_env(&config.binary, &flags, &config.env).await?;
            let id = create_one(&client).await?;
            let get = Request::get(&client, &format!("/v1/tasks/{id}"))?;
            let read = open_loop(get, args.rate, rate_duration, warmup, server.pid).await?;
            failures.add(read.failed as u64, read.first_failure.as_deref());
            let create = closed_loop(&client, Target::CreateNoop, c, duration, server.pid).await?;
            failures.add(create.failed, create.first_failure.as_deref());
            server.stop().await?;
            let row = (
                read.service.p50 as f64 / 1e3,
                read.service.p99 as f64 / 1e3,
                create.per_sec(),
            );
            println!(
                "rep {rep} {}: GET /v1/tasks/{{id}} at {}/s p50/p99 {:.0}/{:.0} µs ({} failed); create {:.0}/s at C={c}",
                config.label, args.rate, row.0, row.1, read.failed, row.2
            );
            rows[i].push(row);
        }
    }
    let med = |rows: &[AccessRow], f: fn(&AccessRow) -> f64| {
        median(&rows.iter().map(f).collect::<Vec<_>>())
    };
    println!();
    println!(
        "Authentication + rate limiting, median of {} alternating reps: GET /v1/tasks/{{id}} open loop at {}/s for {} s; POST /v1/tasks closed loop, {c} clients, {} s:",
        args.reps, args.rate, args.rate_duration, args.duration
    );
    println!();
    println!("| server | GET p50 (µs) | GET p99 (µs) | created/s |");
    println!("|---|--:|--:|--:|");
    for (config, rows) in configs.iter().zip(&rows) {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} |",
            config.label,
            med(rows, |r| r.0),
            med(rows, |r| r.1),
            med(rows, |r| r.2)
        );
    }
    let ratio = |a: usize, b: usize, f: fn(&AccessRow) -> f64| {
        let pairs: Vec<f64> = rows[a]
            .iter()
            .zip(&rows[b])
            .map(|(x, y)| f(y) / f(x))
            .collect();
        median(&pairs)
    };
    println!();
    println!(
        "after (limit on) ÷ before: GET p50 {:.3}, GET p99 {:.3}, created/s {:.3}; limit on ÷ off: GET p50 {:.3}, created/s {:.3}",
        ratio(0, 1, |r| r.0),
        ratio(0, 1, |r| r.1),
        ratio(0, 1, |r| r.2),
        ratio(2, 1, |r| r.0),
        ratio(2, 1, |r| r.2),
    );
    Ok(())
}

/// Creates one noop task and returns its id (what the GETs read).
async fn create_one(client: &Client) -> anyhow::Result<String> {
    let response = client
        .http
        .post(client.url("/v1/tasks"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(NOOP_BODY)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == StatusCode::CREATED,
        "creating a task answered {}",
        response.status()
    );
    let task: serde_json::Value = response.json().await?;
    task["id"]
        .as_str()
        .map(str::to_owned)
        .context("the created task has no id")
}
