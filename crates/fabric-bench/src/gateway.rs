//! `fabric-bench gateway`: what the inference gateway adds to a call.
//!
//! A `reactor-fabric mock-llm` with a fixed latency is the upstream. One open
//! loop sends `POST /v1/chat/completions` (small, non-streamed) at `--rate`
//! through the proxy under test *and*, interleaved half a period later, the
//! same request straight to the mock at the same rate. Request `i` through
//! the proxy and its direct twin `i` are a pair; the added latency is
//! measured per pair (proxy − direct, both from their due times) and its
//! percentiles reported: the same moment of the same (shared) machine, not
//! a difference of two tails. The proxies: the fabric (`reactor-fabric
//! serve` with the mock as an OpenAI-compatible provider) and, when
//! installed, LiteLLM's proxy configured with the same mock. Each proxy's
//! resident memory is sampled every 100 ms during its run (the whole process
//! tree for LiteLLM, which may fork workers).
//!
//! Latency counts from each request's due time (no coordinated omission). A
//! warm-up phase runs first and is discarded entirely (its requests, and its
//! calls in the fabric's own overhead histogram). In the measured phase every
//! request counts: a failure is counted (out of the requests sent after the
//! warm-up), and a request that hits the client's timeout enters the latency
//! percentiles at that timeout rather than being dropped; pairs with a failed
//! side are left out of the added-latency percentiles, which the failure
//! count qualifies.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::server::{ADMIN_PASSWORD, Server, resolve_binary};
use crate::stats::{
    ProcessCpu, Summary, clock_ticks_per_second, descendants, median, millis, nanos, proc_status_kb,
};

/// LiteLLM refuses to start without a master key; requests then send it,
/// as requests to the fabric send a token: both proxies authenticate.
const LITELLM_MASTER_KEY: &str = "sk-fabric-bench-master-0123456789abcdef";

const BODY: &str =
    r#"{"model":"bench","messages":[{"role":"user","content":"hello gateway"}],"max_tokens":8}"#;

/// A tool-bearing request (issue #18): five tool definitions, and the mock
/// is scripted to answer it with a tool call.
const TOOLS_BODY: &str = r#"{"model":"bench","max_tokens":64,"tool_choice":"auto","messages":[{"role":"user","content":"weather in Oslo?"}],"tools":[
{"type":"function","function":{"name":"get_weather","description":"Today's weather in a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}},
{"type":"function","function":{"name":"get_forecast","description":"The forecast for the next days","parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city"]}}},
{"type":"function","function":{"name":"get_umbrella","description":"Fetch an umbrella","parameters":{"type":"object","properties":{"size":{"type":"string","enum":["small","large"]}},"required":["size"]}}},
{"type":"function","function":{"name":"book_taxi","description":"Book a taxi","parameters":{"type":"object","properties":{"from":{"type":"string"},"to":{"type":"string"},"at":{"type":"string"}},"required":["from","to"]}}},
{"type":"function","function":{"name":"send_message","description":"Send a message to someone","parameters":{"type":"object","properties":{"to":{"type":"string"},"text":{"type":"string"}},"required":["to","text"]}}}]}"#;

/// The mock's script: the tool-bearing request gets a tool call back.
const MOCK_SCRIPT: &str = r#"{"weather in Oslo": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}}"#;

/// Which request the load sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RequestKind {
    /// A small chat, a short text answer
    Plain,
    /// Five tool definitions, a tool-call answer
    Tools,
}

impl RequestKind {
    fn body(self) -> &'static str {
        match self {
            RequestKind::Plain => BODY,
            RequestKind::Tools => TOOLS_BODY,
        }
    }
}

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
    /// Requests to send: a plain chat, a tool-bearing one, or both
    #[arg(long, value_enum, value_delimiter = ',', default_value = "plain")]
    requests: Vec<RequestKind>,
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

/// `reactor-fabric mock-llm --port 0` (scripted to answer the tool-bearing
/// request with a tool call), and its URL from its first line.
async fn start_mock(binary: &Path, latency_ms: u64, dir: &Path) -> anyhow::Result<(Proc, String)> {
    let script = dir.join("mock-script.json");
    std::fs::write(&script, MOCK_SCRIPT)?;
    let mut child = Command::new(binary)
        .args(["mock-llm", "--port", "0", "--name", "bench"])
        .args(["--latency-ms", &latency_ms.to_string()])
        .arg("--script")
        .arg(&script)
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

/// The proxy under test, running.
enum Running {
    Fabric(Server),
    Litellm(Proc),
}

impl Running {
    fn pid(&self) -> u32 {
        match self {
            Self::Fabric(server) => server.pid,
            Self::Litellm(litellm) => litellm.pid,
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::Fabric(server) => server.stop().await.map(drop),
            Self::Litellm(litellm) => {
                litellm.stop().await;
                Ok(())
            }
        }
    }
}

/// The client's deadline per request: a request still unanswered then
/// counts as a failure with this latency.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

struct Run {
    /// Every measured request through the proxy (timeouts at [`CLIENT_TIMEOUT`]).
    proxy: Summary,
    direct: Summary,
    /// Per pair with both sides answered: proxy − direct, ns (p50, p99).
    added: (i64, i64),
    /// Requests through the proxy after the warm-up, and how many failed
    /// (of which timed out).
    proxied: u64,
    failed: u64,
    timed_out: u64,
    direct_failed: u64,
    first_failure: Option<String>,
    rss_idle_kb: u64,
    rss_peak_kb: u64,
    /// The fabric's own overhead histogram over the measured phase (p50, p99
    /// bucket bounds, µs).
    internal: Option<(f64, f64)>,
    /// CPU time per proxied request, µs, of the proxy (all its processes).
    proxy_cpu_us: f64,
    /// CPU time per request of the mock (it serves both twins).
    mock_cpu_us: f64,
}

/// How one request ended.
enum Outcome {
    Ok,
    Failed(String),
    TimedOut,
}

/// One open-loop phase: request `i` of the proxy at `start + i/rate`, its
/// direct twin half a period later.
struct Phase {
    /// `(latency from due, outcome)` of each proxy request, by `i`.
    proxy: Vec<(u64, Outcome)>,
    direct: Vec<(u64, Outcome)>,
}

async fn measure(
    proxy_url: &str,
    token: Option<&str>,
    direct_url: &str,
    rate: u32,
    duration: Duration,
    body: &'static str,
) -> anyhow::Result<Phase> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .timeout(CLIENT_TIMEOUT)
        .build()?;
    let period = Duration::from_secs(1) / rate;
    let total = (duration.as_secs_f64() * f64::from(rate)) as u32;
    let runtime = tokio::runtime::Handle::current();
    let start = Instant::now() + Duration::from_millis(50);
    let (proxy_url, direct_url) = (proxy_url.to_owned(), direct_url.to_owned());
    let token = token.map(str::to_owned);
    let dispatcher = tokio::task::spawn_blocking(move || {
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
                    .body(body);
                if twin == 0
                    && let Some(t) = &token
                {
                    request = request.bearer_auth(t);
                }
                handles.push(runtime.spawn(async move {
                    let outcome = match request.send().await {
                        Ok(r) if r.status().is_success() => match r.bytes().await {
                            Ok(_) => Outcome::Ok,
                            Err(e) if e.is_timeout() => Outcome::TimedOut,
                            Err(e) => Outcome::Failed(e.to_string()),
                        },
                        Ok(r) => Outcome::Failed(format!(
                            "{}: {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )),
                        Err(e) if e.is_timeout() => Outcome::TimedOut,
                        Err(e) => Outcome::Failed(e.to_string()),
                    };
                    let latency = match outcome {
                        Outcome::TimedOut => nanos(CLIENT_TIMEOUT),
                        _ => nanos(Instant::now().saturating_duration_since(due)),
                    };
                    (twin, latency, outcome)
                }));
            }
        }
        handles
    });
    let mut phase = Phase {
        proxy: Vec::with_capacity(total as usize),
        direct: Vec::with_capacity(total as usize),
    };
    for h in dispatcher.await? {
        let (twin, latency, outcome) = h.await?;
        if twin == 0 {
            phase.proxy.push((latency, outcome));
        } else {
            phase.direct.push((latency, outcome));
        }
    }
    Ok(phase)
}

impl Phase {
    /// The run's numbers from the measured phase.
    fn summarise(&self) -> (Summary, Summary, (i64, i64), u64, u64, u64, Option<String>) {
        let mut proxy: Vec<u64> = self.proxy.iter().map(|(l, _)| *l).collect();
        let mut direct: Vec<u64> = self.direct.iter().map(|(l, _)| *l).collect();
        let mut added: Vec<i64> = self
            .proxy
            .iter()
            .zip(&self.direct)
            .filter(|((_, po), (_, dout))| matches!((po, dout), (Outcome::Ok, Outcome::Ok)))
            .map(|((p, _), (d, _))| {
                i64::try_from(*p).unwrap_or(i64::MAX) - i64::try_from(*d).unwrap_or(i64::MAX)
            })
            .collect();
        added.sort_unstable();
        let pick = |q: f64| -> i64 {
            if added.is_empty() {
                return 0;
            }
            let rank = (q * added.len() as f64).ceil() as usize;
            added[rank.clamp(1, added.len()) - 1]
        };
        let failed = self
            .proxy
            .iter()
            .filter(|(_, o)| !matches!(o, Outcome::Ok))
            .count();
        let timed_out = self
            .proxy
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::TimedOut))
            .count();
        let direct_failed = self
            .direct
            .iter()
            .filter(|(_, o)| !matches!(o, Outcome::Ok))
            .count();
        let first_failure = self.proxy.iter().find_map(|(_, o)| match o {
            Outcome::Failed(e) => Some(e.clone()),
            Outcome::TimedOut => Some(format!("no answer within {CLIENT_TIMEOUT:?}")),
            Outcome::Ok => None,
        });
        (
            Summary::of(&mut proxy),
            Summary::of(&mut direct),
            (pick(0.50), pick(0.99)),
            failed as u64,
            timed_out as u64,
            direct_failed as u64,
            first_failure,
        )
    }
}

/// Runs the warm-up (discarded), then `between` (e.g. a snapshot of the
/// proxy's own counters), then the measured phase.
async fn warm_then_measure<F: Future<Output = anyhow::Result<T>>, T>(
    args: &GatewayArgs,
    proxy_url: &str,
    token: Option<&str>,
    direct_url: &str,
    rate: u32,
    body: &'static str,
    between: F,
) -> anyhow::Result<(Phase, T)> {
    if args.warmup > 0 {
        measure(
            proxy_url,
            token,
            direct_url,
            rate,
            Duration::from_secs(args.warmup),
            body,
        )
        .await?;
    }
    let snapshot = between.await?;
    let phase = measure(
        proxy_url,
        token,
        direct_url,
        rate,
        Duration::from_secs(args.duration),
        body,
    )
    .await?;
    Ok((phase, snapshot))
}

async fn run_once(
    args: &GatewayArgs,
    binary: &Path,
    proxy: Proxy,
    rate: u32,
    kind: RequestKind,
) -> anyhow::Result<Run> {
    let dir = tempfile::Builder::new()
        .prefix("fabric-bench-gw-")
        .tempdir()?;
    let (mock, mock_url) = start_mock(binary, args.mock_latency_ms, dir.path()).await?;
    let direct_url = format!("{mock_url}/v1/chat/completions");
    let duration = Duration::from_secs(args.duration);
    let (running, base, token) = match proxy {
        Proxy::Fabric => {
            let (server, token) = start_fabric(binary, &mock_url, dir.path()).await?;
            let base = server.base.clone();
            (Running::Fabric(server), base, token)
        }
        Proxy::Litellm => {
            let (litellm, base) = start_litellm(&args.litellm_bin, &mock_url, dir.path()).await?;
            (
                Running::Litellm(litellm),
                base,
                LITELLM_MASTER_KEY.to_owned(),
            )
        }
    };
    let proxy_pid = running.pid();
    let url = format!("{base}/v1/chat/completions");
    let idle = tree_rss_kb(proxy_pid);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = sample_rss(proxy_pid, Arc::clone(&stop));
    let status_url = format!("{base}/v1/llm/status");
    let is_fabric = matches!(running, Running::Fabric(_));
    let overhead = |token: String, status_url: String| async move {
        if !is_fabric {
            return Ok(None);
        }
        let status: serde_json::Value = reqwest::Client::new()
            .get(status_url)
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        anyhow::Ok(Some(status["metrics"]["overhead"].clone()))
    };
    let cpu_before = std::cell::Cell::new((0, 0));
    let (phase, before) = warm_then_measure(
        args,
        &url,
        Some(&token),
        &direct_url,
        rate,
        kind.body(),
        async {
            cpu_before.set((tree_cpu_ticks(proxy_pid), tree_cpu_ticks(mock.pid)));
            overhead(token.clone(), status_url.clone()).await
        },
    )
    .await?;
    let cpu_before = cpu_before.get();
    let cpu = (
        tree_cpu_ticks(proxy_pid).saturating_sub(cpu_before.0),
        tree_cpu_ticks(mock.pid).saturating_sub(cpu_before.1),
    );
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await?;
    let after = overhead(token.clone(), status_url).await?;
    let internal = match (before, after) {
        (Some(before), Some(after)) => internal_overhead(&before, &after),
        _ => None,
    };
    running.stop().await?;
    mock.stop().await;
    let (proxy_summary, direct, added, failed, timed_out, direct_failed, first_failure) =
        phase.summarise();
    Ok(Run {
        proxy: proxy_summary,
        direct,
        added,
        proxied: phase.proxy.len() as u64,
        failed,
        timed_out,
        direct_failed,
        first_failure,
        rss_idle_kb: idle,
        rss_peak_kb: peak,
        internal,
        proxy_cpu_us: per_request_us(cpu.0, rate, duration, 1),
        mock_cpu_us: per_request_us(cpu.1, rate, duration, 2),
    })
}

/// p50 and p99 bucket bounds (µs) of the fabric's overhead histogram over
/// the measured phase: the snapshot at its end minus the one at its start
/// (cumulative `[le, count]` buckets), so the warm-up's calls are not in it.
fn internal_overhead(before: &serde_json::Value, after: &serde_json::Value) -> Option<(f64, f64)> {
    let buckets = |h: &serde_json::Value| -> Option<Vec<(f64, f64)>> {
        h["buckets"]
            .as_array()?
            .iter()
            .map(|b| Some((b[0].as_f64()?, b[1].as_f64()?)))
            .collect()
    };
    let (start, end) = (buckets(before)?, buckets(after)?);
    let count = after["count"].as_f64()? - before["count"].as_f64()?;
    if start.len() != end.len() || count <= 0.0 {
        return None;
    }
    let delta: Vec<(f64, f64)> = start
        .iter()
        .zip(&end)
        .map(|((le, a), (_, b))| (*le, b - a))
        .collect();
    let bound = |q: f64| {
        delta
            .iter()
            .find_map(|(le, c)| (*c >= (count * q).ceil()).then_some(le * 1e6))
    };
    Some((bound(0.5)?, bound(0.99)?))
}

pub async fn run(args: &GatewayArgs) -> anyhow::Result<()> {
    let binary = resolve_binary(args.server_bin.as_deref())?;
    println!(
        "gateway overhead: mock latency {} ms, {} s measured after {} s warm-up, {} reps, non-streamed chat completions ({:?})",
        args.mock_latency_ms, args.duration, args.warmup, args.reps, args.requests
    );
    let mut rows = Vec::new();
    for &kind in &args.requests {
        for &rate in &args.rates {
            for &proxy in &args.proxies {
                let mut runs = Vec::new();
                for rep in 0..args.reps {
                    match run_once(args, &binary, proxy, rate, kind).await {
                        Ok(r) => {
                            println!(
                            "{proxy:?} {kind:?} @ {rate}/s rep {rep}: proxy p50 {:.2} ms p99 {:.2} ms | direct p50 {:.2} ms p99 {:.2} ms | added per pair p50 {:.0} µs p99 {:.0} µs | failed {} of {} proxied ({} timed out; direct failed {}) | CPU/request proxy {:.0} µs, mock {:.0} µs | RSS idle {} MB peak {} MB{}{}",
                            millis(r.proxy.p50),
                            millis(r.proxy.p99),
                            millis(r.direct.p50),
                            millis(r.direct.p99),
                            r.added.0 as f64 / 1e3,
                            r.added.1 as f64 / 1e3,
                            r.failed,
                            r.proxied,
                            r.timed_out,
                            r.direct_failed,
                            r.proxy_cpu_us,
                            r.mock_cpu_us,
                            r.rss_idle_kb / 1024,
                            r.rss_peak_kb / 1024,
                            r.internal
                                .map(|(a, b)| format!(
                                    " | internal overhead histogram (measured phase) p50 ≤ {a:.0} µs p99 ≤ {b:.0} µs"
                                ))
                                .unwrap_or_default(),
                            r.first_failure
                                .as_ref()
                                .map(|f| format!(" | first failure: {f}"))
                                .unwrap_or_default(),
                        );
                            runs.push(r);
                        }
                        Err(e) => {
                            println!("{proxy:?} {kind:?} @ {rate}/s rep {rep}: skipped: {e:#}")
                        }
                    }
                }
                if !runs.is_empty() {
                    rows.push((proxy, kind, rate, runs));
                }
            }
        }
    }
    println!();
    println!(
        "Medians over reps. Latencies from due times; a timed-out request counts as {} s; added = per-pair proxy − direct over pairs where both answered.",
        CLIENT_TIMEOUT.as_secs()
    );
    println!();
    println!(
        "| proxy | request | rate | direct p50 / p99 | through proxy p50 / p99 | added p50 (pairs) | added p99 (pairs) | failed of proxied (timed out) | proxy CPU / request | RSS idle → peak |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (proxy, kind, rate, runs) in &rows {
        let med = |f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        println!(
            "| {} | {kind:?} | {rate}/s | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.0} µs | {:.0} µs | {:.0} of {:.0} ({:.0}) | {:.0} µs | {:.0} → {:.0} MB |",
            match proxy {
                Proxy::Fabric => "reactor-fabric",
                Proxy::Litellm => "LiteLLM proxy",
            },
            med(&|r| millis(r.direct.p50)),
            med(&|r| millis(r.direct.p99)),
            med(&|r| millis(r.proxy.p50)),
            med(&|r| millis(r.proxy.p99)),
            med(&|r| r.added.0 as f64 / 1e3),
            med(&|r| r.added.1 as f64 / 1e3),
            med(&|r| r.failed as f64),
            med(&|r| r.proxied as f64),
            med(&|r| r.timed_out as f64),
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
