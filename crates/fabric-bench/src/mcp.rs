//! `fabric-bench mcp`: what the fabric adds to an agent's MCP tool call.
//!
//! The upstream is a stdio MCP server that answers at once (`fabric-bench
//! mcp-echo`, this binary). The fabric runs one instance (isolation `none`,
//! confined) for an agent whose `tools[]` grants it; the bench reads the
//! agent's `MCP_URL` from its log and sends `tools/call` there, with tracing
//! on (an OTLP sink of its own) and policy and audit as always. Beside it,
//! the bench runs a second instance of the same server itself and calls it
//! over its stdio: the same call without the fabric. One open loop sends
//! both at `--rate`, the direct twin half a period after its pair; the added
//! latency is measured per pair (through − direct, both from their due
//! times), so both sides see the same moment of the same machine.
//!
//! What "through" includes and "direct" does not: the agent's HTTP request
//! on loopback, the JSON-RPC handling, the grant and policy checks, the
//! audit record (queued), the span and the metrics, and the fabric's pipe to
//! its instance. Latency counts from each call's due time (no coordinated
//! omission); a warm-up is discarded.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, oneshot};

use crate::server::{Client, Server, resolve_binary};
use crate::stats::{Summary, median, micros, nanos};

#[derive(Debug, clap::Args)]
pub struct McpArgs {
    /// The reactor-fabric binary (default: target/release, else target/debug)
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Calls per second, each through the fabric and direct
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Seconds measured per repetition (after a 2 s warm-up)
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 3)]
    reps: u32,
}

/// The stdio MCP server both sides call: `initialize`, `tools/list` (one
/// tool, `echo`) and `tools/call` (its arguments back), nothing else.
pub fn echo_server() -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let message: Value = serde_json::from_str(&line?)?;
        let Some(id) = message.get("id") else {
            continue;
        };
        let result = match message["method"].as_str().unwrap_or_default() {
            "initialize" => json!({"protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}}, "serverInfo": {"name": "echo", "version": "1"}}),
            "tools/list" => json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}),
            "tools/call" => {
                json!({"content": [{"type": "text", "text": message["params"]["arguments"].to_string()}]})
            }
            _ => json!({}),
        };
        writeln!(
            stdout,
            "{}",
            json!({"jsonrpc": "2.0", "id": id, "result": result})
        )?;
        stdout.flush()?;
    }
    Ok(())
}

/// The bench's own client of an echo server over stdio (concurrent calls,
/// matched by id).
struct Direct {
    stdin: Mutex<tokio::process::ChildStdin>,
    pending: Arc<Pending>,
    next: std::sync::atomic::AtomicU64,
    _child: tokio::process::Child,
}

/// Calls waiting for their answers, by id.
type Pending = std::sync::Mutex<HashMap<u64, oneshot::Sender<Value>>>;

impl Direct {
    async fn start() -> anyhow::Result<Arc<Direct>> {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .arg("mcp-echo")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the echo server")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let pending: Arc<Pending> = Arc::default();
        let reader = Arc::clone(&pending);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(message) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(id) = message["id"].as_u64()
                    && let Some(tx) = reader.lock().unwrap_or_else(|e| e.into_inner()).remove(&id)
                {
                    let _ = tx.send(message);
                }
            }
        });
        let direct = Arc::new(Direct {
            stdin: Mutex::new(stdin),
            pending,
            next: std::sync::atomic::AtomicU64::new(1),
            _child: child,
        });
        direct
            .call(
                "initialize",
                json!({"protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "fabric-bench", "version": "1"}}),
            )
            .await?;
        Ok(direct)
    }

    async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let mut line =
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        line.push('\n');
        {
            let mut stdin = self.stdin.lock().await;
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await?;
        }
        let answer = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .context("the echo server did not answer")??;
        Ok(answer)
    }
}

fn call_body(i: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
        "params": {"name": "echo__echo", "arguments": {"i": i, "text": "hello"}}})
}

/// The agent's `MCP_URL`, from the line its command prints.
async fn agent_mcp_url(client: &Client) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs: Value = client
            .http
            .get(client.url("/v1/agents/bench/logs"))
            .send()
            .await?
            .json()
            .await?;
        if let Some(url) = logs["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["line"].as_str())
            .find_map(|l| l.strip_prefix("MCP_URL="))
        {
            return Ok(url.trim().to_owned());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent did not print its MCP_URL: {logs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Run {
    through: Summary,
    direct: Summary,
    added_p50: i64,
    added_p99: i64,
    failed: usize,
}

async fn measure(
    http: &reqwest::Client,
    url: &str,
    direct: &Arc<Direct>,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<Run> {
    type Call = tokio::task::JoinHandle<(u64, bool)>;
    let period = Duration::from_secs(1) / rate;
    let total = (duration.as_secs_f64() * f64::from(rate)) as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let runtime = tokio::runtime::Handle::current();
    let (http, url, direct) = (http.clone(), url.to_owned(), Arc::clone(direct));
    // A thread of its own sends each call at its due time: tokio's timer
    // has a millisecond's grain, as much as what is measured.
    let dispatcher = tokio::task::spawn_blocking(move || {
        let mut handles: Vec<(Call, Call)> = Vec::with_capacity(total as usize);
        for i in 0..total {
            let due = start + period * i as u32;
            sleep_until(due);
            let request = http
                .post(&url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(call_body(i).to_string());
            let through = runtime.spawn(async move {
                let ok = match request.send().await {
                    Ok(r) if r.status().is_success() => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|v| v.get("result").is_some()),
                    _ => false,
                };
                (nanos(Instant::now().saturating_duration_since(due)), ok)
            });
            let twin_due = due + period / 2;
            sleep_until(twin_due);
            let direct = Arc::clone(&direct);
            let twin = runtime.spawn(async move {
                let ok = direct
                    .call(
                        "tools/call",
                        json!({"name": "echo", "arguments": {"i": i, "text": "hello"}}),
                    )
                    .await
                    .is_ok_and(|v| v.get("result").is_some());
                (
                    nanos(Instant::now().saturating_duration_since(twin_due)),
                    ok,
                )
            });
            handles.push((through, twin));
        }
        handles
    });
    let mut through = Vec::new();
    let mut direct = Vec::new();
    let mut added = Vec::new();
    let mut failed = 0;
    for (t, d) in dispatcher.await? {
        let ((t_ns, t_ok), (d_ns, d_ok)) = (t.await?, d.await?);
        through.push(t_ns);
        direct.push(d_ns);
        if t_ok && d_ok {
            added.push(t_ns as i64 - d_ns as i64);
        } else {
            failed += 1;
        }
    }
    added.sort_unstable();
    let pick = |q: f64| {
        if added.is_empty() {
            0
        } else {
            added[((added.len() as f64 * q).ceil() as usize).clamp(1, added.len()) - 1]
        }
    };
    Ok(Run {
        through: Summary::of(&mut through),
        direct: Summary::of(&mut direct),
        added_p50: pick(0.50),
        added_p99: pick(0.99),
        failed,
    })
}

fn sleep_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

pub async fn run(args: &McpArgs) -> anyhow::Result<()> {
    let binary = resolve_binary(args.server_bin.as_deref())?;
    let exe = std::env::current_exe()?;
    let exe_dir = exe.parent().context("the bench binary has no directory")?;
    let (sink, _) = crate::http::otlp_sink().await?;
    let mut runs = Vec::new();
    for rep in 1..=args.reps {
        let (server, client) = Server::start_with_env(
            &binary,
            &[],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", sink.as_str())],
        )
        .await?;
        let spec = json!({"name": "echo", "command": format!("{} mcp-echo", exe.display()),
            "isolation": "none", "read_only_paths": [exe_dir.display().to_string()]});
        let r = client
            .http
            .post(client.url("/v1/mcp/servers"))
            .json(&spec)
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "cannot register the echo server: {}",
            r.text().await?
        );
        let agent = json!({"id": "bench", "tools": ["echo/*"],
            "command": "echo \"MCP_URL=$MCP_URL\"; exec sleep 100000"});
        let r = client
            .http
            .post(client.url("/v1/agents"))
            .json(&agent)
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "cannot spawn the agent: {}",
            r.text().await?
        );
        let url = agent_mcp_url(&client).await?;
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(usize::MAX)
            .timeout(Duration::from_secs(10))
            .build()?;
        let direct = Direct::start().await?;
        measure(&http, &url, &direct, args.rate, Duration::from_secs(2)).await?;
        let run = measure(
            &http,
            &url,
            &direct,
            args.rate,
            Duration::from_secs(args.duration),
        )
        .await?;
        println!(
            "rep {rep} @ {}/s: through the fabric p50 {:.0} µs p99 {:.0} µs | direct (stdio) p50 {:.0} µs p99 {:.0} µs | added per pair p50 {} µs p99 {} µs | failed {} of {}",
            args.rate,
            micros(run.through.p50),
            micros(run.through.p99),
            micros(run.direct.p50),
            micros(run.direct.p99),
            run.added_p50 / 1000,
            run.added_p99 / 1000,
            run.failed,
            run.through.count
        );
        runs.push(run);
        server.stop().await?;
    }
    let med = |f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    println!(
        "\n| rate | through p50 / p99 | direct p50 / p99 | added p50 (pairs) | added p99 (pairs) | failed |\n|---|---|---|---|---|---|\n| {}/s | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {:.0} µs | {:.0} µs | {} of {} |",
        args.rate,
        med(&|r| micros(r.through.p50)),
        med(&|r| micros(r.through.p99)),
        med(&|r| micros(r.direct.p50)),
        med(&|r| micros(r.direct.p99)),
        med(&|r| r.added_p50 as f64 / 1000.0),
        med(&|r| r.added_p99 as f64 / 1000.0),
        runs.iter().map(|r| r.failed).sum::<usize>(),
        runs.iter().map(|r| r.through.count).sum::<usize>(),
    );
    println!(
        "(median of {} repetitions of {} s each)",
        args.reps, args.duration
    );
    Ok(())
}
