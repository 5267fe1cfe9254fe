//! `fabric-bench gateway`: what the inference gateway adds to a call.
//!
//! A `reactor-fabric mock-llm` with a fixed latency is the upstream. One open
//! loop sends `POST /v1/chat/completions` (small, non-streamed) at `--rate`
//! through the proxy under test *and*, interleaved half a period later, the
//! same request straight to the mock at the same rate: added latency =
//! percentile(through the proxy) − percentile(direct), in the same run, on
//! the same (shared) machine. The proxies: the fabric (`reactor-fabric serve`
//! with the mock as an OpenAI-compatible provider) and, when installed,
//! LiteLLM's proxy configured with the same mock. Each proxy's resident
//! memory is sampled every 100 ms during its run (the whole process tree for
//! LiteLLM, which may fork workers).
//!
//! Latency counts from each request's due time (no coordinated omission).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::server::{ADMIN_PASSWORD, Server, resolve_binary};
use crate::stats::{
    ProcessCpu, Summary, clock_ticks_per_second, descendants, median, micros, millis, nanos,
    proc_status_kb,
};

/// LiteLLM refuses to start without a master key; requests then send it,
/// as requests to the fabric send a token: both proxies authenticate.
const LITELLM_MASTER_KEY: &str = "sk-fabric-bench-master-0123456789abcdef";

const BODY: &str =
    r#"{"model":"bench","messages":[{"role":"user","content":"hello gateway"}],"max_tokens":8}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proxy {
    /// reactor-fabric serve
    Fabric,
    /// LiteLLM proxy (`litellm`, from --litellm-bin)
    Litellm,
}

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// The reactor-fabric binary (server and mock-llm) [default: next to this binary]
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// The `litellm` executable of a venv with `litellm[proxy]`
    #[arg(
        long,
        value_name = "PATH",
        default_value = "target/litellm-venv/bin/litellm"
    )]
    litellm_bin: PathBuf,
    /// Proxies to measure
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fabric,litellm"
    )]
    proxies: Vec<Proxy>,
    /// Requests per second through the proxy (and as many straight to the mock)
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    rates: Vec<u32>,
    /// Seconds measured per run (after the warm-up)
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of load before measuring (discarded)
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// The mock's fixed latency, milliseconds
    #[arg(long, default_value_t = 10)]
    mock_latency_ms: u64,
    /// Repetitions (fresh processes each); tables show medians
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

/// A child process killed (SIGKILL) on drop.
struct Proc {
    child: Child,
    pid: u32,
}

impl Proc {
    async fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// `reactor-fabric mock-llm --port 0`, and its URL from its first line.
async fn start_mock(binary: &Path, latency_ms: u64) -> anyhow::Result<(Proc, String)> {
    let mut child = Command::new(binary)
        .args(["mock-llm", "--port", "0", "--name", "bench"])
        .args(["--latency-ms", &latency_ms.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {} mock-llm", binary.display()))?;
    let pid = child.id().context("mock-llm exited at once")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .context("mock-llm did not start within 10 s")??;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .with_context(|| format!("mock-llm printed {line:?}"))?
        .to_owned();
    Ok((Proc { child, pid }, url))
}

/// The fabric with the mock as its only provider.
async fn start_fabric(binary: &Path, mock: &str, dir: &Path) -> anyhow::Result<(Server, String)> {
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "policy = \"mock\"\n[[providers]]\nname = \"mock\"\nkind = \"openai-compatible\"\nbase_url = \"{mock}/v1\"\n"
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    let server = Server::spawn(binary, &["--gateway-config", &config]).await?;
    let token = login_token(&server.base).await?;
    Ok((server, token))
}

async fn login_token(base: &str) -> anyhow::Result<String> {
    let resp: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/v1/auth/login"))
        .json(&serde_json::json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await?
        .json()
        .await?;
    resp["token"]
        .as_str()
        .map(str::to_owned)
        .context("login answered without a token")
}

/// LiteLLM's proxy with the mock as `openai/bench`, on a free port.
async fn start_litellm(bin: &Path, mock: &str, dir: &Path) -> anyhow::Result<(Proc, String)> {
    if !bin.is_file() {
        bail!(
            "{} not found: python3 -m venv target/litellm-venv && target/litellm-venv/bin/pip install 'litellm[proxy]'",
            bin.display()
        );
    }
    let config = dir.join("litellm.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/bench\n      api_base: {mock}/v1\n      api_key: sk-bench\nlitellm_settings:\n  telemetry: false\n  drop_params: true\n"
        ),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(dir.join("litellm.log"))?;
    let child = Command::new(bin)
        .args(["--config"])
        .arg(&config)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("LITELLM_LOG", "ERROR")
        .env("LITELLM_MASTER_KEY", LITELLM_MASTER_KEY)
        .env("LITELLM_TELEMETRY", "False")
        .env("DISABLE_ADMIN_UI", "True")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let pid = child.id().context("litellm exited at once")?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = client.get(format!("{base}/health/liveliness")).send().await
            && r.status().is_success()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "LiteLLM did not become live within 120 s; see {}",
                dir.join("litellm.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((Proc { child, pid }, base))
}

/// Resident memory of a process and its descendants, kB.
fn tree_rss_kb(pid: u32) -> u64 {
    let mut pids = vec![pid];
    pids.extend(descendants(pid).unwrap_or_default());
    pids.iter()
        .filter_map(|p| proc_status_kb(*p, "VmRSS").ok())
        .sum()
}

/// CPU clock ticks used so far by a process and its live descendants.
fn tree_cpu_ticks(pid: u32) -> u64 {
    let mut pids = vec![pid];
    pids.extend(descendants(pid).unwrap_or_default());
    pids.iter()
        .filter_map(|p| ProcessCpu::of(*p).ok())
        .map(|c| c.own)
        .sum()
}

/// Samples `tree_rss_kb(pid)` every 100 ms until `stop`; returns the peak.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(tree_rss_kb(pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    })
}

struct Run {
    proxy: Summary,
    direct: Summary,
    failed: u64,
    first_failure: Option<String>,
    rss_idle_kb: u64,
    rss_peak_kb: u64,
    /// The fabric's own overhead histogram (p50, p99 bucket bounds, µs).
    internal: Option<(f64, f64)>,
    /// CPU time per proxied request, µs, of the proxy (all its processes).
    proxy_cpu_us: f64,
    /// CPU time per request of the mock (it serves both twins).
    mock_cpu_us: f64,
}

/// The open loop: request `i` of the proxy at `start + i/rate`, its direct
/// twin half a period later.
async fn measure(
    proxy_url: String,
    token: Option<String>,
    direct_url: String,
    rate: u32,
    duration: Duration,
    warmup: Duration,
) -> anyhow::Result<(Summary, Summary, u64, Option<String>)> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(30))
        .build()?;
    let period = Duration::from_secs(1) / rate;
    let warm = (warmup.as_secs_f64() * f64::from(rate)) as u32;
    let total = warm + (duration.as_secs_f64() * f64::from(rate)) as u32;
    let runtime = tokio::runtime::Handle::current();
    let start = Instant::now() + Duration::from_millis(50);
    let failed = Arc::new(AtomicU64::new(0));
    let dispatcher = {
        let failed = Arc::clone(&failed);
        tokio::task::spawn_blocking(move || {
            let mut handles = Vec::with_capacity(2 * total as usize);
            for i in 0..total {
                for (twin, url) in [(0u32, &proxy_url), (1, &direct_url)] {
                    let due = start + period * i + period * twin / 2;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let mut request = client
                        .post(url.as_str())
                        .header("content-type", "application/json")
                        .body(BODY);
                    if twin == 0
                        && let Some(t) = &token
                    {
                        request = request.bearer_auth(t);
                    }
                    let failed = Arc::clone(&failed);
                    handles.push(runtime.spawn(async move {
                        let outcome = match request.send().await {
                            Ok(r) if r.status().is_success() => match r.bytes().await {
                                Ok(_) => Ok(()),
                                Err(e) => Err(e.to_string()),
                            },
                            Ok(r) => Err(format!(
                                "{}: {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            )),
                            Err(e) => Err(e.to_string()),
                        };
                        if outcome.is_err() {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        (i, twin, due, Instant::now(), outcome)
                    }));
                }
            }
            handles
        })
    };
    let handles = dispatcher.await?;
    let (mut proxy, mut direct) = (Vec::new(), Vec::new());
    let mut first_failure = None;
    let mut failed_measured = 0;
    for h in handles {
        let (i, twin, due, done, outcome) = h.await?;
        if i < warm {
            continue;
        }
        match outcome {
            Ok(()) => {
                let latency = nanos(done.saturating_duration_since(due));
                if twin == 0 {
                    proxy.push(latency);
                } else {
                    direct.push(latency);
                }
            }
            Err(e) => {
                failed_measured += 1;
                first_failure.get_or_insert(e);
            }
        }
    }
    Ok((
        Summary::of(&mut proxy),
        Summary::of(&mut direct),
        failed_measured,
        first_failure,
    ))
}

async fn run_once(
    args: &GatewayArgs,
    binary: &Path,
    proxy: Proxy,
    rate: u32,
) -> anyhow::Result<Run> {
    let dir = tempfile::Builder::new()
        .prefix("fabric-bench-gw-")
        .tempdir()?;
    let (mock, mock_url) = start_mock(binary, args.mock_latency_ms).await?;
    let direct_url = format!("{mock_url}/v1/chat/completions");
    let duration = Duration::from_secs(args.duration);
    let warmup = Duration::from_secs(args.warmup);
    let run = match proxy {
        Proxy::Fabric => {
            let (server, token) = start_fabric(binary, &mock_url, dir.path()).await?;
            let idle = tree_rss_kb(server.pid);
            let stop = Arc::new(AtomicBool::new(false));
            let peak = sample_rss(server.pid, Arc::clone(&stop));
            let url = format!("{}/v1/chat/completions", server.base);
            let cpu = (tree_cpu_ticks(server.pid), tree_cpu_ticks(mock.pid));
            let (p, d, failed, first) =
                measure(url, Some(token.clone()), direct_url, rate, duration, warmup).await?;
            let cpu = (
                tree_cpu_ticks(server.pid).saturating_sub(cpu.0),
                tree_cpu_ticks(mock.pid).saturating_sub(cpu.1),
            );
            stop.store(true, Ordering::Relaxed);
            let peak = peak.await?;
            let status: serde_json::Value = reqwest::Client::new()
                .get(format!("{}/v1/llm/status", server.base))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            let internal = internal_overhead(&status);
            server.stop().await?;
            Run {
                proxy: p,
                direct: d,
                failed,
                first_failure: first,
                rss_idle_kb: idle,
                rss_peak_kb: peak,
                internal,
                proxy_cpu_us: per_request_us(cpu.0, rate, duration + warmup, 1),
                mock_cpu_us: per_request_us(cpu.1, rate, duration + warmup, 2),
            }
        }
        Proxy::Litellm => {
            let (litellm, base) = start_litellm(&args.litellm_bin, &mock_url, dir.path()).await?;
            let idle = tree_rss_kb(litellm.pid);
            let stop = Arc::new(AtomicBool::new(false));
            let peak = sample_rss(litellm.pid, Arc::clone(&stop));
            let url = format!("{base}/v1/chat/completions");
            let cpu = (tree_cpu_ticks(litellm.pid), tree_cpu_ticks(mock.pid));
            let (p, d, failed, first) = measure(
                url,
                Some(LITELLM_MASTER_KEY.to_owned()),
                direct_url,
                rate,
                duration,
                warmup,
            )
            .await?;
            let cpu = (
                tree_cpu_ticks(litellm.pid).saturating_sub(cpu.0),
                tree_cpu_ticks(mock.pid).saturating_sub(cpu.1),
            );
            stop.store(true, Ordering::Relaxed);
            let peak = peak.await?;
            litellm.stop().await;
            Run {
                proxy: p,
                direct: d,
                failed,
                first_failure: first,
                rss_idle_kb: idle,
                rss_peak_kb: peak,
                internal: None,
                proxy_cpu_us: per_request_us(cpu.0, rate, duration + warmup, 1),
                mock_cpu_us: per_request_us(cpu.1, rate, duration + warmup, 2),
            }
        }
    };
    mock.stop().await;
    Ok(run)
}

/// p50 and p99 bucket bounds (µs) of the fabric's overhead histogram.
fn internal_overhead(status: &serde_json::Value) -> Option<(f64, f64)> {
    let h = &status["metrics"]["overhead"];
    let count = h["count"].as_f64()?;
    let bound = |q: f64| {
        h["buckets"].as_array()?.iter().find_map(|b| {
            let (le, c) = (b[0].as_f64()?, b[1].as_f64()?);
            (c >= (count * q).ceil()).then_some(le * 1e6)
        })
    };
    Some((bound(0.5)?, bound(0.99)?))
}

pub async fn run(args: &GatewayArgs) -> anyhow::Result<()> {
    let binary = resolve_binary(args.server_bin.as_deref())?;
    println!(
        "gateway overhead: mock latency {} ms, {} s measured after {} s warm-up, {} reps, small non-streamed chat completions",
        args.mock_latency_ms, args.duration, args.warmup, args.reps
    );
    let mut rows = Vec::new();
    for &rate in &args.rates {
        for &proxy in &args.proxies {
            let mut runs = Vec::new();
            for rep in 0..args.reps {
                match run_once(args, &binary, proxy, rate).await {
                    Ok(r) => {
                        println!(
                            "{proxy:?} @ {rate}/s rep {rep}: proxy p50 {:.2} ms p99 {:.2} ms | direct p50 {:.2} ms p99 {:.2} ms | added p50 {:.0} µs p99 {:.0} µs | failed {} | CPU/request proxy {:.0} µs, mock {:.0} µs | RSS idle {} MB peak {} MB{}{}",
                            millis(r.proxy.p50),
                            millis(r.proxy.p99),
                            millis(r.direct.p50),
                            millis(r.direct.p99),
                            added(r.proxy.p50, r.direct.p50),
                            added(r.proxy.p99, r.direct.p99),
                            r.failed,
                            r.proxy_cpu_us,
                            r.mock_cpu_us,
                            r.rss_idle_kb / 1024,
                            r.rss_peak_kb / 1024,
                            r.internal
                                .map(|(a, b)| format!(
                                    " | internal overhead histogram p50 ≤ {a:.0} µs p99 ≤ {b:.0} µs"
                                ))
                                .unwrap_or_default(),
                            r.first_failure
                                .as_ref()
                                .map(|f| format!(" | first failure: {f}"))
                                .unwrap_or_default(),
                        );
                        runs.push(r);
                    }
                    Err(e) => println!("{proxy:?} @ {rate}/s rep {rep}: skipped: {e:#}"),
                }
            }
            if !runs.is_empty() {
                rows.push((proxy, rate, runs));
            }
        }
    }
    println!();
    println!(
        "| proxy | rate | direct p50 / p99 | through proxy p50 / p99 | added p50 | added p99 | failed | proxy CPU / request | RSS idle → peak |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (proxy, rate, runs) in &rows {
        let med = |f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        println!(
            "| {} | {rate}/s | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.0} µs | {:.0} µs | {:.0} | {:.0} µs | {:.0} → {:.0} MB |",
            match proxy {
                Proxy::Fabric => "reactor-fabric",
                Proxy::Litellm => "LiteLLM proxy",
            },
            med(&|r| millis(r.direct.p50)),
            med(&|r| millis(r.direct.p99)),
            med(&|r| millis(r.proxy.p50)),
            med(&|r| millis(r.proxy.p99)),
            med(&|r| added(r.proxy.p50, r.direct.p50)),
            med(&|r| added(r.proxy.p99, r.direct.p99)),
            med(&|r| r.failed as f64),
            med(&|r| r.proxy_cpu_us),
            med(&|r| r.rss_idle_kb as f64 / 1024.0),
            med(&|r| r.rss_peak_kb as f64 / 1024.0),
        );
    }
    Ok(())
}

/// CPU µs per request from `ticks` over `requests_per_rate × rate × elapsed` requests.
fn per_request_us(ticks: u64, rate: u32, elapsed: Duration, requests_per_rate: u32) -> f64 {
    let requests = f64::from(rate * requests_per_rate) * elapsed.as_secs_f64();
    ticks as f64 / clock_ticks_per_second() * 1e6 / requests.max(1.0)
}

/// `proxy − direct` in µs (negative when noise wins).
fn added(proxy: u64, direct: u64) -> f64 {
    micros(proxy) - micros(direct)
}
