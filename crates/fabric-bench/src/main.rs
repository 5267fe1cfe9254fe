//! `fabric-bench`: the numbers behind BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p fabric-bench -- sched   # scheduler decision, in process
//! cargo run --release -p fabric-bench -- http    # task API through a real server
//! cargo run --release -p fabric-bench -- rss     # server memory, idle and loaded
//! cargo run --release -p fabric-bench -- agents  # agent spawn latency, 200 sandboxed agents
//! cargo run --release -p fabric-bench -- instances  # Docker start/list/down vs docker-compose
//! cargo run --release -p fabric-bench -- takeover  # standby takeover after kill -9 of the leader
//! cargo run --release -p fabric-bench -- containers # container agent spawn, cold vs warm pool
//! cargo run --release -p fabric-bench -- gateway    # LLM gateway overhead vs direct, vs LiteLLM
//! cargo run --release -p fabric-bench -- budgets    # budget check-and-reserve under contention
//! cargo run --release -p fabric-bench -- policy     # policy decision in process, beside Cedar
//! cargo run --release -p fabric-bench -- flood      # /healthz and RSS under an idle-connection flood
//! cargo run --release -p fabric-bench -- nodes      # 1,000 simulated worker nodes: CPU per heartbeat, memory per node, config delivery
//! ```
//!
//! `http`, `rss` and `agents` start `reactor-fabric serve` from the same target
//! directory, so build it first: `cargo build --release -p fabric-cli`.
//! Each prints one line per run and a Markdown table of medians.
//!
//! # Layout
//!
//! - `sched`: enqueue and lease latency of `fabric_engine::Scheduler`.
//! - `http`: closed-loop create throughput (with the `/healthz` floor beside
//!   it) and open-loop create latency.
//! - `rss`: `VmRSS` of the server idle and with 100k queued shell tasks.
//! - `agents`: spawn and stop latency per isolation level beside the
//!   `unshare` floor; many sandboxed agents sharing many tasks (root only).
//! - `instances`: `reactor-fabric start | list | down` of Docker instances beside
//!   `docker-compose up -d | down` of the same two services (needs dockerd).
//! - `takeover`: two servers on one Redis prefix; time from `kill -9` of the
//!   leader to the standby serving.
//! - `containers`: container agent spawn and stop, cold and from the warm pool,
//!   beside `docker run -d` and `docker update` (needs dockerd).
//! - `gateway`: added latency of the inference gateway (and of LiteLLM's
//!   proxy) over calling `mock-llm` directly, in the same open loop; proxy RSS.
//! - `budgets`: budget reserve + settle throughput and latency, 1 to 64
//!   threads, on the same or distinct entities, in process.
//! - `policy`: one policy decision with 10 / 1,000 / 10,000 rules, ours
//!   beside the same decisions in Cedar (`cedar-policy`), checked equal.
//! - `flood`: `/healthz` latency and server RSS before, during and after
//!   thousands of idle connections from several loopback addresses.
//! - `nodes`: simulated worker nodes speaking the real protocol over
//!   loopback: join latency, orchestrator CPU per heartbeat, memory per
//!   node, time for a new node config to reach every node.
//! - `server`: starting, readying, logging in to and stopping a server child.
//! - `stats`: percentiles, medians, CPU time and memory from `/proc`.

mod agents;
mod budgets;
mod containers;
mod dashboard;
mod dispatch;
mod flood;
mod gateway;
mod http;
mod instances;
mod mcp;
mod nodes;
mod policy;
mod rss;
mod sandbox_tasks;
mod sched;
mod server;
mod stats;
mod takeover;
mod watchers;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "fabric-bench",
    about = "reactor-fabric benchmarks (run in release)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Tokio worker threads of the load generator (`http`, `rss`, `agents`); the server
    /// runs on the same machine and competes for the same cores
    #[arg(long, global = true, default_value_t = 2)]
    client_threads: usize,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scheduling decision latency with a full queue, in process
    Sched(sched::SchedArgs),
    /// Task API throughput and latency through a real server
    Http(http::HttpArgs),
    /// Server resident memory, idle and with queued tasks
    Rss(rss::RssArgs),
    /// Agent spawn latency and many sandboxed agents sharing many tasks
    Agents(agents::AgentsArgs),
    /// Docker instance start/list/down latency beside docker-compose up -d/down
    Instances(instances::InstancesArgs),
    /// Standby takeover after kill -9 of the leader (two servers, one Redis)
    Takeover(takeover::TakeoverArgs),
    /// Container agent spawn latency, cold and warm pool, beside docker run -d
    Containers(containers::ContainersArgs),
    /// Inference gateway overhead vs the mock direct, beside LiteLLM's proxy; proxy memory
    Gateway(gateway::GatewayArgs),
    /// Budget check-and-reserve (+ settle) throughput under contention, in process
    Budgets(budgets::BudgetsArgs),
    /// Policy decision latency in process with 10 to 10,000 rules, beside Cedar
    Policy(policy::PolicyArgs),
    /// /healthz latency and server RSS before, during and after an idle-connection flood
    Flood(flood::FloodArgs),
    /// Server memory per WebSocket watcher of a task, and the watchers refused past the caps
    Watchers(watchers::WatchersArgs),
    /// Sandboxed task latency and throughput with and without per-task namespaces (root)
    SandboxTasks(sandbox_tasks::SandboxTasksArgs),
    /// The web UI in a real Chromium: first render of /tasks with 10,000 tasks, server CPU with browsers watching
    Dashboard(dashboard::DashboardArgs),
    /// What the fabric adds to an agent's MCP tool call (policy, audit, trace) vs calling the server directly
    Mcp(mcp::McpArgs),
    /// Simulated worker nodes over loopback: join latency, orchestrator CPU per heartbeat, memory per node, config delivery
    Nodes(nodes::NodesArgs),
    /// Tasks run by agents on real worker nodes: dispatch latency and throughput, 1 node vs 3
    Dispatch(dispatch::DispatchArgs),
    /// The stdio MCP server `mcp` calls (an echo tool); run by the bench itself
    #[command(hide = true)]
    McpEcho,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Other work on this machine skews every number; say how much there was.
    println!("load average at start: {}", load_average());
    let result = run(&cli);
    println!("load average at end: {}", load_average());
    result
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Sched(args) => sched::run(args),
        Command::Http(args) => block_on(cli.client_threads, http::run(args)),
        Command::Rss(args) => block_on(cli.client_threads, rss::run(args)),
        Command::Agents(args) => block_on(cli.client_threads, agents::run(args)),
        Command::Instances(args) => instances::run(args),
        Command::Takeover(args) => block_on(cli.client_threads, takeover::run(args)),
        Command::Containers(args) => block_on(cli.client_threads, containers::run(args)),
        Command::Gateway(args) => block_on(cli.client_threads, gateway::run(args)),
        Command::Budgets(args) => budgets::run(args),
        Command::Policy(args) => policy::run(args),
        Command::Flood(args) => block_on(cli.client_threads, flood::run(args)),
        Command::Watchers(args) => block_on(cli.client_threads, watchers::run(args)),
        Command::SandboxTasks(args) => block_on(cli.client_threads, sandbox_tasks::run(args)),
        Command::Dashboard(args) => block_on(cli.client_threads, dashboard::run(args)),
        Command::Mcp(args) => block_on(cli.client_threads, mcp::run(args)),
        Command::Nodes(args) => block_on(cli.client_threads, nodes::run(args)),
        Command::Dispatch(args) => block_on(cli.client_threads, dispatch::run(args)),
        Command::McpEcho => mcp::echo_server(),
    }
}

/// Runs the load generator on its own Tokio runtime of `threads` workers.
fn block_on(
    threads: usize,
    bench: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?
        .block_on(bench)
}
