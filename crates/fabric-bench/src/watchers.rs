//! `fabric-bench watchers`: what a WebSocket watcher of a task costs the
//! server (issue #16, item 12). `--watchers` WebSockets on `/v1/stream/{id}`
//! spread over `--tasks` long-running tasks and over tokens (a child token
//! per `--per-token` watchers), held open while the server's RSS is read;
//! then closed, and the RSS read again. The per-watcher cost is the RSS
//! growth divided by the watchers the server accepted. Those it refuses
//! (429 `too_many_streams`, past the caps per task and per token) are
//! counted.
//!
//! `--baseline-bin` runs the same against another build, alternating.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::server::{Server, builds_to_compare};
use crate::stats::{median, proc_status_kb};

#[derive(Debug, clap::Args)]
pub struct WatchersArgs {
    /// The server binary [default: reactor-fabric next to this binary]
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// Another build to measure the same way, alternating (e.g. before the caps)
    #[arg(long, value_name = "PATH")]
    baseline_bin: Option<PathBuf>,
    /// WebSocket watchers opened
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Long-running tasks they watch (spread evenly)
    #[arg(long, default_value_t = 10)]
    tasks: usize,
    /// Watchers per token (a child token of the admin's each)
    #[arg(long, default_value_t = 50)]
    per_token: usize,
    /// Repetitions (fresh server each)
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Run {
    before_kb: u64,
    during_kb: u64,
    after_kb: u64,
    accepted: usize,
    refused: usize,
}

pub async fn run(args: &WatchersArgs) -> anyhow::Result<()> {
    let mut builds =
        builds_to_compare::<Run>(args.server_bin.as_deref(), args.baseline_bin.as_deref())?;
    for rep in 1..=args.reps {
        for (name, binary, runs) in &mut builds {
            let run = once(args, binary)
                .await
                .with_context(|| format!("{name}, rep {rep}"))?;
            println!(
                "rep {rep} {name}: RSS before {} KB, with watchers {} KB, after {} KB; {} accepted, {} refused",
                run.before_kb, run.during_kb, run.after_kb, run.accepted, run.refused
            );
            runs.push(run);
        }
    }
    println!();
    println!(
        "| build | watchers accepted | refused | RSS before (MB) | with watchers (MB) | after (MB) | KB per watcher |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|");
    for (name, _, runs) in &builds {
        let med = |f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        println!(
            "| {name} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
            med(|r| r.accepted as f64),
            med(|r| r.refused as f64),
            med(|r| r.before_kb as f64 / 1024.0),
            med(|r| r.during_kb as f64 / 1024.0),
            med(|r| r.after_kb as f64 / 1024.0),
            med(|r| (r.during_kb.saturating_sub(r.before_kb)) as f64 / r.accepted.max(1) as f64),
        );
    }
    Ok(())
}

async fn once(args: &WatchersArgs, binary: &std::path::Path) -> anyhow::Result<Run> {
    let (server, admin) = Server::start(binary, &["--rate-limit-rps", "0"]).await?;
    let mut tasks = Vec::new();
    for i in 0..args.tasks.max(1) {
        let task: Value = admin
            .http
            .post(admin.url("/v1/tasks"))
            .json(&json!({"name": format!("watched-{i}"), "commands": ["sleep 600"], "timeout_seconds": 900}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        tasks.push(task["id"].as_str().context("task id")?.to_owned());
    }
    let mut tokens = Vec::new();
    for i in 0..args.watchers.div_ceil(args.per_token.max(1)) {
        let token: Value = admin
            .http
            .post(admin.url("/v1/auth/tokens"))
            .json(&json!({"name": format!("watcher-{i}")}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        tokens.push(token["token"].as_str().context("token")?.to_owned());
    }
    settle().await;
    let before_kb = proc_status_kb(server.pid, "VmRSS")?;
    let ws_base = server.base.replacen("http://", "ws://", 1);
    let mut open = Vec::new();
    let mut refused = 0;
    for i in 0..args.watchers {
        let task = &tasks[i % tasks.len()];
        let token = &tokens[i / args.per_token.max(1)];
        let mut request = format!("{ws_base}/v1/stream/{task}").into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => open.push(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response))
                if response.status().as_u16() == 429 =>
            {
                refused += 1;
            }
            Err(e) => return Err(e).context("opening a watcher"),
        }
    }
    settle().await;
    let during_kb = proc_status_kb(server.pid, "VmRSS")?;
    let accepted = open.len();
    drop(open);
    settle().await;
    let after_kb = proc_status_kb(server.pid, "VmRSS")?;
    server.stop().await?;
    Ok(Run {
        before_kb,
        during_kb,
        after_kb,
        accepted,
        refused,
    })
}

/// Lets the server finish what the last step started before its RSS is read.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}
