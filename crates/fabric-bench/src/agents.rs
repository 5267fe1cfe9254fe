//! `fabric-bench agents`: agent spawn latency per isolation level beside the
//! namespace floor, and many sandboxed agents sharing many tasks.
//!
//! - spawn: `POST /v1/agents` (answered once the first session runs) for
//!   `command: "sleep 1000"` agents with isolation `none`, `process` built
//!   from scratch (cold) and `process` from the warm pool, and for the
//!   built-in shell agent (no process at spawn) cold and warm; each followed
//!   by a timed `DELETE ?drain_timeout=0` (stop latency). Every spawn and
//!   stop follows the same quiet pause (the pool refills in it). Beside
//!   them, on the same machine: `fork+exec /bin/true`, `unshare -m -p -n -i
//!   -u -f /bin/true` to exit (the same namespaces as a sandbox: the floor),
//!   the sandbox helper's `init` alone, and the sandbox's cgroup v1
//!   directories, limits and process moves, made from this process. The
//!   server logs (JSON, at debug for the sandbox) when each sandbox was
//!   ready or took its limits and each session started; matched against the
//!   bench's wall clock, they split a spawn into phases.
//! - fleet: `N` built-in shell agents in `process` sandboxes, then `T`
//!   tasks `{"agent":"w-(i mod N)","commands":["true"]}` created by a few
//!   clients; tasks/s until all are durably completed, server RSS before and
//!   after the spawns and at the end, the sandboxes' memory and CPU. The
//!   baseline row sends the same tasks to the server's own `shell` agent
//!   (isolation `none` as the fabric's user, `--shell-concurrency N`).
//! - shell: the fleet's tasks through the server's own `shell` agent in each
//!   way `serve` can run it: as the fabric's user, confined on the host
//!   (Landlock, seccomp), and in one sandbox; the cost of the confinement.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use fabric_core::agent::Agent;
use fabric_core::api::AgentList;
use reqwest::StatusCode;
use tokio::task::JoinSet;

use crate::http::{count_completed, list, wait_until_finished};
use crate::server::{Client, Server, resolve_binary};
use crate::stats::{
    ProcessCpu, Summary, descendants, median, millis, nanos, proc_status_kb, smaps_rollup_kb,
};

/// What the spawn runs log: when each sandbox was ready and each session started.
const SPAWN_LOG_FILTER: &str =
    "warn,fabric_runtime::sandbox=debug,fabric_server::services::agents=info";
/// The floor: the namespaces of a sandbox (mount, pid, net, ipc, uts), nothing else.
const UNSHARE_FLOOR: [&str; 8] = ["unshare", "-m", "-p", "-n", "-i", "-u", "-f", "/bin/true"];
/// The hidden subcommand of `reactor-fabric` that builds sandboxes.
const HELPER_ARG: &str = "__sandbox-helper";
/// Where cgroup v1 controllers are mounted on this kind of host.
const CGROUP_V1_ROOT: &str = "/sys/fs/cgroup";
/// The v1 hierarchies a sandbox gets a directory in (see fabric-runtime's `cgroup.rs`).
const CGROUP_V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];
/// Tries per fleet agent when the server answers 500 `spawn_failed`.
const SPAWN_ATTEMPTS: usize = 3;
/// Quiet time before an "idle" cgroup attach: a move into a cgroup takes
/// the kernel's `cgroup_threadgroup_rwsem` for writing, which waits for an
/// RCU grace period unless another writer did so very recently.
const ATTACH_IDLE_GAP: Duration = Duration::from_millis(100);
/// How long a warm spawn may wait for the pool to show an idle sandbox
/// after its pause before it is attempted anyway (and probably misses).
const POOL_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Spawn and stop latency per isolation level, the floors, phases
    Spawn,
    /// Many sandboxed built-in shell agents sharing many tasks, and the baseline
    Fleet,
    /// The server's own shell agent as the fabric's user, confined, and
    /// sandboxed: the same tasks through each, alternating
    Shell,
}

#[derive(Debug, clap::Args)]
pub struct AgentsArgs {
    /// The server binary [default: reactor-fabric next to this binary]
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// What to run
    #[arg(long, value_enum, value_delimiter = ',', default_value = "spawn,fleet")]
    parts: Vec<Part>,
    /// Repetitions of every measurement (fresh server each)
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Spawns per isolation level and repetition (also floor samples)
    #[arg(long, default_value_t = 100)]
    spawns: usize,
    /// `isolation.memory_mb` of the spawned agents
    #[arg(long, default_value_t = 128)]
    memory_mb: u64,
    /// Quiet time before every spawn and every stop (ms): the warm pool
    /// refills in it, and every isolation level gets the same pacing
    #[arg(long, default_value_t = 150)]
    pause_ms: u64,
    /// Sandboxed built-in shell agents of the fleet
    #[arg(long, default_value_t = 200)]
    agents: usize,
    /// `isolation.memory_mb` of each fleet agent
    #[arg(long, default_value_t = 64)]
    agent_memory_mb: u64,
    /// Tasks the fleet shares
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Concurrent clients creating the tasks
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds to let the server settle before each memory reading
    #[arg(long, default_value_t = 2)]
    settle: u64,
}

pub async fn run(args: &AgentsArgs) -> anyhow::Result<()> {
    let binary = resolve_binary(args.server_bin.as_deref())?;
    anyhow::ensure!(
        args.reps > 0 && args.spawns > 0 && args.agents > 0 && args.tasks > 0 && args.clients > 0,
        "--reps, --spawns, --agents, --tasks and --clients must be at least 1"
    );
    println!(
        "agents: server {}, {} CPUs shared by server, sandboxes and this bench",
        binary.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if args.parts.contains(&Part::Spawn) {
        spawn_part(args, &binary).await?;
    }
    if args.parts.contains(&Part::Fleet) {
        let fleets = [Fleet::Sandboxed, Fleet::Default(ShellMode::FabricUser)];
        fleet_part(args, &binary, &fleets).await?;
    }
    if args.parts.contains(&Part::Shell) {
        let fleets = [
            Fleet::Default(ShellMode::FabricUser),
            Fleet::Default(ShellMode::Confined),
            Fleet::Default(ShellMode::Sandbox),
        ];
        fleet_part(args, &binary, &fleets).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------- spawn

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    None,
    Cold,
    Warm,
    /// The built-in shell agent (no program of its own) in a cold sandbox.
    ColdShell,
    /// The built-in shell agent in a sandbox from the warm pool.
    WarmShell,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::None,
        Kind::Cold,
        Kind::Warm,
        Kind::ColdShell,
        Kind::WarmShell,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::None => "none, `sleep 1000`",
            Kind::Cold => "process cold, `sleep 1000`",
            Kind::Warm => "process warm pool, `sleep 1000`",
            Kind::ColdShell => "process cold, built-in shell",
            Kind::WarmShell => "process warm pool, built-in shell",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Kind::None => "none",
            Kind::Cold => "cold",
            Kind::Warm => "warm",
            Kind::ColdShell => "coldsh",
            Kind::WarmShell => "warmsh",
        }
    }

    fn warm(self) -> bool {
        matches!(self, Kind::Warm | Kind::WarmShell)
    }

    fn sandboxed(self) -> bool {
        self != Kind::None
    }

    /// The spawn latency target of NFR-PERF-4 for the p50, if any.
    fn p50_target_ms(self) -> Option<f64> {
        match self {
            Kind::None => None,
            Kind::Cold | Kind::ColdShell => Some(50.0),
            Kind::Warm | Kind::WarmShell => Some(5.0),
        }
    }

    fn body(self, id: &str, memory_mb: u64) -> serde_json::Value {
        match self {
            Kind::None => serde_json::json!({"id": id, "command": "sleep 1000"}),
            Kind::Cold | Kind::Warm => serde_json::json!({
                "id": id,
                "command": "sleep 1000",
                "isolation": {"level": "process", "memory_mb": memory_mb},
            }),
            Kind::ColdShell | Kind::WarmShell => serde_json::json!({
                "id": id,
                "isolation": {"level": "process", "memory_mb": memory_mb},
            }),
        }
    }
}

/// One timed spawn, for matching against the server's log.
struct SpawnMark {
    id: String,
    /// Wall clock (seconds since the epoch) when the request was sent and answered.
    sent: f64,
    answered: f64,
}

/// Samples of one isolation level, in nanoseconds.
#[derive(Default)]
struct KindSamples {
    spawn: Vec<u64>,
    stop: Vec<u64>,
    /// Warm spawns that got a sandbox built from scratch (not in `spawn`).
    misses: Vec<u64>,
    /// Spawns the server answered with 500 `spawn_failed` (not in `spawn`).
    failed: Vec<u64>,
    /// The first such answer.
    first_failure: Option<String>,
    /// Warm spawns whose pause was not enough for the pool to show an idle sandbox.
    late_refills: usize,
    marks: Vec<SpawnMark>,
    /// Request sent → sandbox ready (cold only).
    to_sandbox: Vec<u64>,
    /// Request sent (warm, none) or sandbox ready (cold) → session started.
    to_session: Vec<u64>,
    /// Session started → 201 received.
    to_answer: Vec<u64>,
}

/// Reference points measured beside the server, in nanoseconds.
#[derive(Default)]
struct Floors {
    fork_exec: Vec<u64>,
    unshare: Vec<u64>,
    helper_init: Vec<u64>,
    cgroup_v1: Vec<u64>,
    /// Moving one process into those four cgroups (`cgroup.procs` writes),
    /// right after another move and after an idle gap.
    cgroup_attach_hot: Vec<u64>,
    cgroup_attach_idle: Vec<u64>,
}

#[derive(Default)]
struct SpawnRun {
    floors: Floors,
    kinds: BTreeMap<Kind, KindSamples>,
}

fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn wall_nanos(from: f64, to: f64) -> u64 {
    ((to - from) * 1e9).max(0.0) as u64
}

/// What `POST /v1/agents` answered.
enum Spawned {
    Running(Box<Agent>),
    /// 500 `spawn_failed`: the server could not start it (the message says why).
    Failed(String),
}

async fn try_spawn_agent(client: &Client, body: &serde_json::Value) -> anyhow::Result<Spawned> {
    let resp = client
        .http
        .post(client.url("/v1/agents"))
        .json(body)
        .send()
        .await
        .context("POST /v1/agents failed")?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    let text = || String::from_utf8_lossy(&bytes).into_owned();
    match status {
        StatusCode::CREATED => Ok(Spawned::Running(Box::new(serde_json::from_slice(&bytes)?))),
        StatusCode::INTERNAL_SERVER_ERROR if text().contains("spawn_failed") => {
            Ok(Spawned::Failed(text()))
        }
        _ => bail!("POST /v1/agents {body} answered {status}: {}", text()),
    }
}

async fn spawn_agent(client: &Client, body: &serde_json::Value) -> anyhow::Result<Agent> {
    match try_spawn_agent(client, body).await? {
        Spawned::Running(agent) => Ok(*agent),
        Spawned::Failed(message) => bail!("POST /v1/agents {body} answered 500: {message}"),
    }
}

async fn terminate_agent(client: &Client, id: &str) -> anyhow::Result<()> {
    let resp = client
        .http
        .delete(client.url(&format!("/v1/agents/{id}?drain_timeout=0")))
        .send()
        .await
        .context("DELETE /v1/agents failed")?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if status != StatusCode::OK {
        bail!(
            "DELETE /v1/agents/{id} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(())
}

async fn list_agents(client: &Client) -> anyhow::Result<Vec<Agent>> {
    let resp = client.http.get(client.url("/v1/agents")).send().await?;
    let status = resp.status();
    if !status.is_success() {
        bail!("GET /v1/agents answered {status}: {}", resp.text().await?);
    }
    Ok(resp.json::<AgentList>().await?.agents)
}

/// The memory-controller cgroup directory of a process (v1: in the `memory`
/// hierarchy; v2: the unified one), from `/proc/<pid>/cgroup`.
fn memory_cgroup(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mut unified = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Some(Path::new(CGROUP_V1_ROOT).join("memory").join(rel));
        }
        if controllers.is_empty() {
            unified = Some(Path::new(CGROUP_V1_ROOT).join(rel));
        }
    }
    unified
}

/// Whether a process runs in a sandbox the warm pool made (named `pool-...`).
fn in_pooled_sandbox(pid: u32) -> Option<bool> {
    let dir = memory_cgroup(pid)?;
    Some(dir.file_name()?.to_str()?.starts_with("pool-"))
}

/// Idle pooled sandboxes under a server's instance cgroup, when no spawned
/// agent holds one: every `pool-*` directory there.
fn pooled_sandboxes(instance: &Path) -> usize {
    std::fs::read_dir(instance).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("pool-"))
            .count()
    })
}

/// Spawns then stops `count` agents of `kind`, one at a time.
async fn spawn_series(
    client: &Client,
    kind: Kind,
    count: usize,
    args: &AgentsArgs,
    instance: Option<&Path>,
) -> anyhow::Result<KindSamples> {
    let mut samples = KindSamples::default();
    let pause = Duration::from_millis(args.pause_ms);
    for i in 0..count {
        let id = format!("{}-{i}", kind.prefix());
        // Paced alike for every level: some kernel costs (a cgroup move,
        // see ATTACH_IDLE_GAP) are cheaper right after the previous spawn.
        tokio::time::sleep(pause).await;
        if kind.warm()
            && let Some(instance) = instance
            && pooled_sandboxes(instance) == 0
        {
            samples.late_refills += 1;
            let deadline = Instant::now() + POOL_WAIT;
            while pooled_sandboxes(instance) == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let body = kind.body(&id, args.memory_mb);
        let sent = wall_now();
        let started = Instant::now();
        let spawned = try_spawn_agent(client, &body).await?;
        let took = nanos(started.elapsed());
        let agent = match spawned {
            Spawned::Running(agent) => agent,
            Spawned::Failed(message) => {
                // Left crashed; the next spawn uses another id.
                eprintln!("warning: spawn {id} failed: {message}");
                samples.failed.push(took);
                samples.first_failure.get_or_insert(message);
                continue;
            }
        };
        let answered = wall_now();
        let warm_hit = kind.warm()
            && agent
                .pid
                .and_then(in_pooled_sandbox)
                .context("cannot tell which sandbox the spawned agent runs in")?;
        if kind.warm() && !warm_hit {
            samples.misses.push(took);
        } else {
            samples.spawn.push(took);
            samples.marks.push(SpawnMark {
                id: id.clone(),
                sent,
                answered,
            });
        }
        // The pool refills right after a take; let that finish so the stop
        // is timed alone (and the others alike).
        tokio::time::sleep(pause).await;
        let started = Instant::now();
        terminate_agent(client, &id).await?;
        samples.stop.push(nanos(started.elapsed()));
    }
    Ok(samples)
}

/// Spawn to exit of `argv`, `count` times.
async fn time_to_exit(argv: &'static [&'static str], count: usize) -> anyhow::Result<Vec<u64>> {
    tokio::task::spawn_blocking(move || {
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            let started = Instant::now();
            let status = std::process::Command::new(argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .with_context(|| format!("cannot run {}", argv.join(" ")))?;
            samples.push(nanos(started.elapsed()));
            if !status.success() {
                bail!("{} exited with {status} (root needed)", argv.join(" "));
            }
        }
        Ok(samples)
    })
    .await?
}

/// The command line of a live sandbox init of `server_pid`: the helper with
/// the arguments the server gave it (read-only paths, masks, tmpfs size).
fn helper_init_argv(server_pid: u32) -> anyhow::Result<Vec<String>> {
    for pid in descendants(server_pid)? {
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if argv.get(1).map(String::as_str) == Some(HELPER_ARG)
            && argv.get(2).map(String::as_str) == Some("init")
        {
            return Ok(argv);
        }
    }
    bail!("no sandbox init of server {server_pid} found to copy the helper's arguments from")
}

/// `argv` with the values of `--name` and `--workdir` replaced.
fn with_name_and_workdir(argv: &[String], name: &str, workdir: &Path) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        out.push(a.clone());
        match a.as_str() {
            "--name" => {
                it.next();
                out.push(name.to_owned());
            }
            "--workdir" => {
                it.next();
                out.push(workdir.display().to_string());
            }
            _ => {}
        }
    }
    out
}

/// The helper's `init` alone, as the server starts it (minus joining a cgroup
/// and setting rlimits): spawn → `ready` on its stdout. Then SIGKILL its init
/// (untimed), which ends the whole sandbox.
async fn time_helper_init(argv: Vec<String>, count: usize) -> anyhow::Result<Vec<u64>> {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::Builder::new()
            .prefix("fabric-bench-helper-")
            .tempdir()?;
        let mut samples = Vec::with_capacity(count);
        for i in 0..count {
            let name = format!("fb-helper-{i}");
            let workdir = dir.path().join(&name);
            std::fs::create_dir_all(workdir.join(".tmp"))?;
            let argv = with_name_and_workdir(&argv, &name, &workdir);
            let started = Instant::now();
            let mut holder = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .env_clear()
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start {}", argv[0]))?;
            let stdout = holder.stdout.take().context("the helper has no stdout")?;
            let mut init_pid = None;
            let mut ready = false;
            for line in BufReader::new(stdout).lines() {
                let line = line?;
                if let Some(pid) = line.strip_prefix("pid ") {
                    init_pid = pid.trim().parse::<u32>().ok();
                } else if line == "ready" {
                    ready = true;
                } else if line.starts_with("error ") {
                    break;
                }
                // Two processes write these two lines: either may come first.
                if ready && init_pid.is_some() {
                    break;
                }
            }
            let took = nanos(started.elapsed());
            if let Some(pid) = init_pid {
                // `kill(1)`: the workspace denies unsafe code. The init may be
                // gone already: the control socket named in the copied
                // arguments is not open here, so it exits once ready.
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = holder.kill();
            holder.wait()?;
            std::fs::remove_dir_all(&workdir)?;
            if !ready {
                bail!(
                    "the sandbox helper did not report ready: {}",
                    argv.join(" ")
                );
            }
            samples.push(took);
        }
        Ok(samples)
    })
    .await?
}

/// Samples of [`time_cgroup_v1`], in nanoseconds.
struct CgroupTimes {
    create: Vec<u64>,
    attach_hot: Vec<u64>,
    attach_idle: Vec<u64>,
}

/// What `Cgroup::create` does on a cgroup v1 host, from this process: a
/// directory in each of the four hierarchies, the memory, CPU and pids
/// limits, `cgroup.procs` opened for joining. Then, timed apart, what joining
/// costs: a `sleep` child moved into the four by writing its pid to each
/// `cgroup.procs` (the server's children write "0" from `pre_exec`, the same
/// kernel path), once right after the previous move and once after
/// [`ATTACH_IDLE_GAP`] without any. Removing everything is untimed. `None`
/// on hosts without the v1 memory hierarchy.
async fn time_cgroup_v1(count: usize, memory_mb: u64) -> anyhow::Result<Option<CgroupTimes>> {
    if !Path::new(CGROUP_V1_ROOT)
        .join("memory/memory.limit_in_bytes")
        .exists()
    {
        return Ok(None);
    }
    tokio::task::spawn_blocking(move || {
        let parent = format!("fabric-bench-{}", std::process::id());
        let parents: Vec<PathBuf> = CGROUP_V1_CONTROLLERS
            .iter()
            .map(|c| Path::new(CGROUP_V1_ROOT).join(c).join(&parent))
            .collect();
        for p in &parents {
            std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        let memory = (memory_mb << 20).to_string();
        let mut create = Vec::with_capacity(count);
        let mut attach_hot = Vec::with_capacity(count);
        let mut attach_idle = Vec::with_capacity(count);
        let result = (|| -> anyhow::Result<()> {
            for i in 0..count {
                let dirs: Vec<PathBuf> = parents.iter().map(|p| p.join(format!("s{i}"))).collect();
                let started = Instant::now();
                for d in &dirs {
                    std::fs::create_dir(d)?;
                }
                let (mem, cpu, pids) = (&dirs[0], &dirs[1], &dirs[3]);
                let _current = std::fs::read_to_string(mem.join("memory.limit_in_bytes"))?;
                std::fs::write(mem.join("memory.limit_in_bytes"), &memory)?;
                let memsw = mem.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    std::fs::write(memsw, &memory)?;
                }
                std::fs::write(cpu.join("cpu.cfs_period_us"), "100000")?;
                std::fs::write(cpu.join("cpu.cfs_quota_us"), "100000")?;
                std::fs::write(pids.join("pids.max"), "256")?;
                let procs: Vec<std::fs::File> = dirs
                    .iter()
                    .map(|d| {
                        std::fs::OpenOptions::new()
                            .write(true)
                            .open(d.join("cgroup.procs"))
                    })
                    .collect::<Result<_, _>>()?;
                create.push(nanos(started.elapsed()));

                // Back to back (the last attach was a few ms ago), then
                // after an idle gap, as between the server's spawns.
                attach_hot.push(attach_sleeper(&procs)?);
                std::thread::sleep(ATTACH_IDLE_GAP);
                attach_idle.push(attach_sleeper(&procs)?);
                drop(procs);
                for d in &dirs {
                    std::fs::remove_dir(d)?;
                }
            }
            Ok(())
        })();
        for p in &parents {
            let _ = std::fs::remove_dir(p);
        }
        result.map(|()| {
            Some(CgroupTimes {
                create,
                attach_hot,
                attach_idle,
            })
        })
    })
    .await?
}

/// Moves a fresh `sleep` child into the cgroups whose `cgroup.procs` are
/// open in `procs`; returns how long the writes took, in nanoseconds.
fn attach_sleeper(procs: &[std::fs::File]) -> anyhow::Result<u64> {
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start sleep")?;
    let pid = child.id().to_string();
    let started = Instant::now();
    let joined = procs
        .iter()
        .try_for_each(|mut f| std::io::Write::write_all(&mut f, pid.as_bytes()));
    let took = nanos(started.elapsed());
    child.kill()?;
    child.wait()?;
    joined.context("cannot move a process into the cgroups")?;
    Ok(took)
}

/// Seconds since the epoch of a log timestamp like `2026-11-23T12:46:12.706563Z`.
fn parse_log_time(s: &str) -> Option<f64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let h: f64 = t.next()?.parse().ok()?;
    let min: f64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next()?.parse().ok()?;
    Some(days_from_civil(y, m, day) as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// When each agent's sandbox was ready and its first session started, by agent id.
#[derive(Default)]
struct LogTimes {
    sandbox_ready: HashMap<String, f64>,
    session_started: HashMap<String, f64>,
    /// Every "sandbox limits changed": a pooled sandbox taken by a session
    /// (named after the pool, not the agent, so matched by time).
    limits_changed: Vec<f64>,
}

fn parse_server_log(log: &str) -> LogTimes {
    let mut times = LogTimes::default();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // `ts` since the log schema of issue #7; `timestamp` before.
        let stamp = v["ts"].as_str().or_else(|| v["timestamp"].as_str());
        let Some(at) = stamp.and_then(parse_log_time) else {
            continue;
        };
        match v["message"].as_str() {
            Some("sandbox ready") => {
                // `<agent>-<session>-<random>`; pooled ones are `pool-<random>`.
                if let Some(agent) = v["sandbox"].as_str().and_then(|s| s.rsplitn(3, '-').nth(2)) {
                    times.sandbox_ready.entry(agent.to_owned()).or_insert(at);
                }
            }
            Some("agent session started") => {
                if let Some(agent) = v["agent_id"].as_str() {
                    times.session_started.entry(agent.to_owned()).or_insert(at);
                }
            }
            Some("sandbox limits changed") => times.limits_changed.push(at),
            _ => {}
        }
    }
    times
}

/// Splits each spawn at the server's log events. Spawns run one at a time,
/// so the one limit change between a warm spawn's request and answer is its.
fn split_phases(samples: &mut KindSamples, kind: Kind, times: &LogTimes) {
    for mark in &samples.marks {
        let Some(&session) = times.session_started.get(&mark.id) else {
            continue;
        };
        let sandbox = if kind.warm() {
            times
                .limits_changed
                .iter()
                .copied()
                .find(|t| (mark.sent..=session).contains(t))
        } else if kind.sandboxed() {
            times.sandbox_ready.get(&mark.id).copied()
        } else {
            None
        };
        let before_session = match (kind.sandboxed(), sandbox) {
            (false, _) => mark.sent,
            (true, Some(at)) => {
                samples.to_sandbox.push(wall_nanos(mark.sent, at));
                at
            }
            (true, None) => continue,
        };
        samples.to_session.push(wall_nanos(before_session, session));
        samples.to_answer.push(wall_nanos(session, mark.answered));
    }
}

async fn spawn_once(args: &AgentsArgs, binary: &Path) -> anyhow::Result<SpawnRun> {
    let server = Server::spawn_logging(binary, &[], SPAWN_LOG_FILTER).await?;
    let client = server.login().await?;
    let mut run = SpawnRun::default();

    run.floors.fork_exec = time_to_exit(&["/bin/true"], args.spawns).await?;
    run.floors.unshare = time_to_exit(&UNSHARE_FLOOR, args.spawns).await?;

    // Cold before anything asks for a pool, then the holder that does.
    for kind in [Kind::None, Kind::Cold, Kind::ColdShell] {
        let samples = spawn_series(&client, kind, args.spawns, args, None).await?;
        run.kinds.insert(kind, samples);
    }
    let holder = spawn_agent(
        &client,
        &serde_json::json!({
            "id": "holder",
            "command": "sleep 1000",
            "isolation": {"level": "process", "memory_mb": args.memory_mb},
            "pool": {"min_idle": 1},
        }),
    )
    .await?;
    let instance = holder
        .pid
        .and_then(memory_cgroup)
        .and_then(|d| d.parent().map(Path::to_path_buf))
        .context("cannot find the server's sandbox cgroup from the holder agent")?;
    for kind in [Kind::Warm, Kind::WarmShell] {
        let samples = spawn_series(&client, kind, args.spawns, args, Some(&instance)).await?;
        run.kinds.insert(kind, samples);
    }

    let argv = helper_init_argv(server.pid)?;
    run.floors.helper_init = time_helper_init(argv, args.spawns).await?;
    if let Some(t) = time_cgroup_v1(args.spawns, args.memory_mb).await? {
        run.floors.cgroup_v1 = t.create;
        run.floors.cgroup_attach_hot = t.attach_hot;
        run.floors.cgroup_attach_idle = t.attach_idle;
    }

    let times = parse_server_log(&server.log()?);
    for (kind, samples) in &mut run.kinds {
        split_phases(samples, *kind, &times);
    }
    server.stop().await?;
    Ok(run)
}

fn ms3(s: &Summary) -> String {
    format!(
        "{:.2}/{:.2}/{:.2}",
        millis(s.p50),
        millis(s.p99),
        millis(s.max)
    )
}

async fn spawn_part(args: &AgentsArgs, binary: &Path) -> anyhow::Result<()> {
    let mut all = SpawnRun::default();
    for rep in 1..=args.reps {
        let run = spawn_once(args, binary).await.context("spawn run")?;
        let f = &run.floors;
        println!(
            "rep {rep} floors p50/p99/max ms: fork+exec {} | unshare {} | helper init {} | cgroup v1 create {} | attach hot {} | attach idle {}",
            ms3(&Summary::of(&mut f.fork_exec.clone())),
            ms3(&Summary::of(&mut f.unshare.clone())),
            ms3(&Summary::of(&mut f.helper_init.clone())),
            ms3(&Summary::of(&mut f.cgroup_v1.clone())),
            ms3(&Summary::of(&mut f.cgroup_attach_hot.clone())),
            ms3(&Summary::of(&mut f.cgroup_attach_idle.clone())),
        );
        for (kind, s) in &run.kinds {
            println!(
                "rep {rep} {}: spawn {} ms ({} samples, {} spawn_failed), stop {} ms{}",
                kind.label(),
                ms3(&Summary::of(&mut s.spawn.clone())),
                s.spawn.len(),
                s.failed.len(),
                ms3(&Summary::of(&mut s.stop.clone())),
                if kind.warm() {
                    format!(
                        "; {} misses (cold instead), {} pauses too short for the refill",
                        s.misses.len(),
                        s.late_refills
                    )
                } else {
                    String::new()
                }
            );
        }
        all.floors.fork_exec.extend(run.floors.fork_exec);
        all.floors.unshare.extend(run.floors.unshare);
        all.floors.helper_init.extend(run.floors.helper_init);
        all.floors.cgroup_v1.extend(run.floors.cgroup_v1);
        all.floors
            .cgroup_attach_hot
            .extend(run.floors.cgroup_attach_hot);
        all.floors
            .cgroup_attach_idle
            .extend(run.floors.cgroup_attach_idle);
        for (kind, s) in run.kinds {
            let into = all.kinds.entry(kind).or_default();
            into.spawn.extend(s.spawn);
            into.stop.extend(s.stop);
            into.misses.extend(s.misses);
            into.failed.extend(s.failed);
            if into.first_failure.is_none() {
                into.first_failure = s.first_failure;
            }
            into.late_refills += s.late_refills;
            into.to_sandbox.extend(s.to_sandbox);
            into.to_session.extend(s.to_session);
            into.to_answer.extend(s.to_answer);
        }
    }

    let floor = Summary::of(&mut all.floors.unshare.clone());
    let ratio = |s: &Summary| {
        if floor.p50 == 0 {
            0.0
        } else {
            s.p50 as f64 / floor.p50 as f64
        }
    };
    println!();
    println!(
        "Spawn latency, all samples of {} reps pooled (nearest-rank percentiles):",
        args.reps
    );
    println!();
    println!(
        "| what (spawn → ready) | samples | p50 (ms) | p99 (ms) | max (ms) | p50 ÷ unshare floor | target |"
    );
    println!("|---|--:|--:|--:|--:|--:|---|");
    let row = |label: &str, samples: &[u64], target: &str| {
        let s = Summary::of(&mut samples.to_vec());
        println!(
            "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {target} |",
            s.count,
            millis(s.p50),
            millis(s.p99),
            millis(s.max),
            ratio(&s)
        );
    };
    row("`fork+exec /bin/true` to exit", &all.floors.fork_exec, "");
    row(
        "`unshare -m -p -n -i -u -f /bin/true` to exit (floor)",
        &all.floors.unshare,
        "",
    );
    row(
        "sandbox helper `init` alone → `ready` (no cgroup)",
        &all.floors.helper_init,
        "",
    );
    if !all.floors.cgroup_v1.is_empty() {
        row(
            "cgroup v1: 4 dirs + limits, from the bench",
            &all.floors.cgroup_v1,
            "",
        );
        row(
            "cgroup v1: move a process into those 4, right after another move",
            &all.floors.cgroup_attach_hot,
            "",
        );
        row(
            &format!(
                "cgroup v1: move a process into those 4, after {} ms without moves",
                ATTACH_IDLE_GAP.as_millis()
            ),
            &all.floors.cgroup_attach_idle,
            "",
        );
    }
    let targets = |kind: Kind, s: &Summary| -> String {
        let p99_ok = millis(s.p99) < 1000.0;
        let mut out = Vec::new();
        if let Some(t) = kind.p50_target_ms() {
            let ok = millis(s.p50) < t;
            out.push(format!(
                "p50 < {t} ms: {}",
                if ok { "met" } else { "**missed**" }
            ));
        }
        out.push(format!(
            "p99 < 1 s: {}",
            if p99_ok { "met" } else { "**missed**" }
        ));
        out.join("; ")
    };
    for kind in Kind::ALL {
        if let Some(s) = all.kinds.get(&kind) {
            let summary = Summary::of(&mut s.spawn.clone());
            row(
                &format!("`POST /v1/agents`, {}", kind.label()),
                &s.spawn,
                &targets(kind, &summary),
            );
        }
    }
    for kind in Kind::ALL {
        if let Some(s) = all.kinds.get(&kind) {
            row(
                &format!("`DELETE ?drain_timeout=0` (stop), {}", kind.label()),
                &s.stop,
                "",
            );
        }
    }
    println!();
    for kind in Kind::ALL {
        if let Some(k) = all.kinds.get(&kind)
            && !k.failed.is_empty()
        {
            println!(
                "{}: {} of {} spawns answered 500 spawn_failed (not in the table), first: {}",
                kind.label(),
                k.failed.len(),
                k.failed.len() + k.spawn.len() + k.misses.len(),
                k.first_failure.as_deref().unwrap_or("")
            );
        }
    }
    for kind in Kind::ALL.into_iter().filter(|k| k.warm()) {
        if let Some(w) = all.kinds.get(&kind) {
            println!(
                "{}: {} of {} spawns took a pooled sandbox; {} pauses of {} ms were too short for the refill",
                kind.label(),
                w.spawn.len(),
                w.spawn.len() + w.misses.len(),
                w.late_refills,
                args.pause_ms
            );
        }
    }

    println!();
    println!(
        "Where a spawn's time goes (server log timestamps against the bench's clock), p50 / p99 in ms:"
    );
    println!();
    println!(
        "| agent | request → sandbox (cold: built and ready; warm: taken, limits set) | → session started | session started → 201 received | samples |"
    );
    println!("|---|--:|--:|--:|--:|");
    for kind in Kind::ALL {
        let Some(s) = all.kinds.get(&kind) else {
            continue;
        };
        let p = |v: &[u64]| {
            if v.is_empty() {
                "–".to_owned()
            } else {
                let s = Summary::of(&mut v.to_vec());
                format!("{:.2} / {:.2}", millis(s.p50), millis(s.p99))
            }
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            kind.label(),
            p(&s.to_sandbox),
            p(&s.to_session),
            p(&s.to_answer),
            s.to_session.len()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- fleet

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fleet {
    /// `agents` built-in shell agents in `process` sandboxes.
    Sandboxed,
    /// The server's own `shell` agent, concurrency = agents, run as `serve`'s
    /// shell flags say.
    Default(ShellMode),
}

/// How `serve` runs its own shell agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShellMode {
    /// `--shell-as-fabric-user`: plain host processes (the level `none` of
    /// releases before the confinement).
    FabricUser,
    /// `--shell-isolation none`: host processes under Landlock and seccomp.
    Confined,
    /// `--shell-isolation process`: one sandbox for all its tasks.
    Sandbox,
}

impl ShellMode {
    fn args(self) -> &'static [&'static str] {
        match self {
            ShellMode::FabricUser => &["--shell-as-fabric-user"],
            ShellMode::Confined => &["--shell-isolation", "none"],
            ShellMode::Sandbox => &["--shell-isolation", "process"],
        }
    }
}

impl Fleet {
    fn label(self, agents: usize) -> String {
        match self {
            Fleet::Sandboxed => format!("{agents} shell agents, isolation process"),
            Fleet::Default(ShellMode::FabricUser) => {
                format!("1 shell agent, isolation none as the fabric's user, concurrency {agents}")
            }
            Fleet::Default(ShellMode::Confined) => {
                format!("1 shell agent, isolation none confined, concurrency {agents}")
            }
            Fleet::Default(ShellMode::Sandbox) => {
                format!("1 shell agent, isolation process, concurrency {agents}")
            }
        }
    }
}

/// Memory of the processes a server started (its sandboxes), summed, in kB.
#[derive(Debug, Clone, Copy, Default)]
struct ChildMemory {
    processes: usize,
    rss_kb: u64,
    pss_kb: u64,
}

fn child_memory(server_pid: u32) -> anyhow::Result<ChildMemory> {
    let mut m = ChildMemory::default();
    for pid in descendants(server_pid)? {
        // A process may exit between the listing and the reads.
        let (Ok(rss), Ok(pss)) = (proc_status_kb(pid, "VmRSS"), smaps_rollup_kb(pid, "Pss")) else {
            continue;
        };
        m.processes += 1;
        m.rss_kb += rss;
        m.pss_kb += pss;
    }
    Ok(m)
}

/// Server memory at one moment, kB.
#[derive(Debug, Clone, Copy, Default)]
struct ServerMemory {
    rss_kb: u64,
    children: ChildMemory,
    /// Sum of the agents' cgroup `usage.memory_bytes` (page cache included), kB.
    cgroups_kb: u64,
    /// Open file descriptors of the server: every one is closed again in
    /// each child it forks (close-on-exec), so they cost per spawned command.
    fds: usize,
}

/// CPU time of every agent, as the API reports it (cgroup counters for
/// sandboxed agents), in ms.
async fn agents_cpu_ms(client: &Client) -> anyhow::Result<u64> {
    Ok(list_agents(client)
        .await?
        .iter()
        .map(|a| a.usage.cpu_millis)
        .sum())
}

async fn server_memory(server: &Server, client: &Client) -> anyhow::Result<ServerMemory> {
    let agents = list_agents(client).await?;
    Ok(ServerMemory {
        rss_kb: proc_status_kb(server.pid, "VmRSS")?,
        children: child_memory(server.pid)?,
        cgroups_kb: agents.iter().map(|a| a.usage.memory_bytes).sum::<u64>() / 1024,
        fds: std::fs::read_dir(format!("/proc/{}/fd", server.pid)).map_or(0, |d| d.count()),
    })
}

struct FleetRun {
    before: ServerMemory,
    after_spawn: ServerMemory,
    end: ServerMemory,
    peak_rss_kb: u64,
    spawn_secs: f64,
    spawn_latency: Summary,
    /// Spawns answered 500 `spawn_failed` (each retried).
    spawn_failures: usize,
    created: usize,
    create_secs: f64,
    completed: u64,
    failed: usize,
    /// First create sent → every task seen finished (polled).
    end_to_end_secs: f64,
    /// Server's first `created_at` → last `finished_at`.
    server_span_secs: f64,
    /// CPU seconds over the task phase: the server's own, its children (the
    /// reaped ones, plus the sandboxes' processes from their cgroups), this bench.
    server_cpu: f64,
    children_cpu: f64,
    bench_cpu: f64,
    stop_secs: f64,
}

impl FleetRun {
    fn tasks_per_sec(&self) -> f64 {
        self.completed as f64 / self.end_to_end_secs
    }
}

async fn create_tasks(
    client: &Client,
    fleet: Fleet,
    agents: usize,
    tasks: usize,
    clients: usize,
) -> anyhow::Result<usize> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..clients {
        let (client, next) = (client.clone(), Arc::clone(&next));
        workers.spawn(async move {
            let url = client.url("/v1/tasks");
            let mut created = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tasks {
                    break;
                }
                let body = match fleet {
                    Fleet::Sandboxed => serde_json::json!({
                        "agent": format!("w-{}", i % agents),
                        "commands": ["true"],
                    }),
                    Fleet::Default(_) => serde_json::json!({"commands": ["true"]}),
                };
                let resp = client.http.post(&url).json(&body).send().await?;
                let status = resp.status();
                let text = resp.bytes().await?;
                if status != StatusCode::CREATED {
                    bail!(
                        "POST /v1/tasks answered {status}: {}",
                        String::from_utf8_lossy(&text)
                    );
                }
                created += 1;
            }
            anyhow::Ok(created)
        });
    }
    let mut created = 0;
    while let Some(joined) = workers.join_next().await {
        created += joined??;
    }
    Ok(created)
}

async fn fleet_once(args: &AgentsArgs, binary: &Path, fleet: Fleet) -> anyhow::Result<FleetRun> {
    let concurrency = args.agents.to_string();
    let extra: Vec<&str> = match fleet {
        Fleet::Sandboxed => vec![],
        Fleet::Default(mode) => {
            let mut extra = vec!["--shell-concurrency", concurrency.as_str()];
            extra.extend_from_slice(mode.args());
            extra
        }
    };
    let (server, client) = Server::start(binary, &extra).await?;
    let settle = Duration::from_secs(args.settle);
    tokio::time::sleep(settle).await;
    let before = server_memory(&server, &client).await?;

    let spawn_started = Instant::now();
    let mut spawn_latency = Vec::new();
    let mut spawn_failures = 0;
    if fleet == Fleet::Sandboxed {
        for i in 0..args.agents {
            let body = serde_json::json!({
                "id": format!("w-{i}"),
                "isolation": {"level": "process", "memory_mb": args.agent_memory_mb},
            });
            // A failed spawn leaves the agent crashed; spawning it again is allowed.
            let mut attempts = 0;
            loop {
                attempts += 1;
                let started = Instant::now();
                match try_spawn_agent(&client, &body)
                    .await
                    .with_context(|| format!("spawning agent {i} of {}", args.agents))?
                {
                    Spawned::Running(_) => {
                        spawn_latency.push(nanos(started.elapsed()));
                        break;
                    }
                    Spawned::Failed(message) if attempts < SPAWN_ATTEMPTS => {
                        eprintln!("warning: spawn w-{i} failed, trying again: {message}");
                        spawn_failures += 1;
                    }
                    Spawned::Failed(message) => {
                        bail!("spawn w-{i} failed {attempts} times, last: {message}")
                    }
                }
            }
        }
    }
    let spawn_secs = spawn_started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let after_spawn = server_memory(&server, &client).await?;

    let server_cpu = ProcessCpu::of(server.pid)?;
    let bench_cpu = ProcessCpu::of(std::process::id())?;
    let sandboxes_cpu_ms = agents_cpu_ms(&client).await?;
    let started = Instant::now();
    let created = create_tasks(&client, fleet, args.agents, args.tasks, args.clients).await?;
    let create_secs = started.elapsed().as_secs_f64();
    let finished = wait_until_finished(&client).await?;
    let end_to_end_secs = finished.duration_since(started).as_secs_f64();
    let (server_cpu, reaped_cpu) = ProcessCpu::of(server.pid)?.seconds_since(&server_cpu);
    let (bench_cpu, _) = ProcessCpu::of(std::process::id())?.seconds_since(&bench_cpu);
    // Sandboxed commands are children of their sandbox's init, which is not
    // reaped until the sandbox goes: their CPU is in the agents' cgroups.
    let sandboxes_cpu_ms = agents_cpu_ms(&client)
        .await?
        .saturating_sub(sandboxes_cpu_ms);
    let children_cpu = reaped_cpu + sandboxes_cpu_ms as f64 / 1000.0;
    let end = server_memory(&server, &client).await?;
    let peak_rss_kb = proc_status_kb(server.pid, "VmHWM")?;
    let (completed, first, last) = count_completed(&client).await?;
    let failed = list(&client, "status=failed&limit=1000").await?.tasks.len();
    if completed != created as u64 || failed > 0 {
        eprintln!("warning: {created} tasks created, {completed} completed, {failed} failed");
    }
    let stop_started = Instant::now();
    server.stop().await?;
    Ok(FleetRun {
        before,
        after_spawn,
        end,
        peak_rss_kb,
        spawn_secs,
        spawn_latency: Summary::of(&mut spawn_latency),
        spawn_failures,
        created,
        create_secs,
        completed,
        failed,
        end_to_end_secs,
        server_span_secs: last.since(first).as_secs_f64().max(1e-3),
        server_cpu,
        children_cpu,
        bench_cpu,
        stop_secs: stop_started.elapsed().as_secs_f64(),
    })
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

async fn fleet_part(args: &AgentsArgs, binary: &Path, fleets: &[Fleet]) -> anyhow::Result<()> {
    let mut runs: Vec<(Fleet, Vec<FleetRun>)> = fleets.iter().map(|f| (*f, Vec::new())).collect();
    for rep in 1..=args.reps {
        for (fleet, done) in &mut runs {
            let r = fleet_once(args, binary, *fleet)
                .await
                .with_context(|| format!("fleet run: {}", fleet.label(args.agents)))?;
            println!(
                "rep {rep} {}: spawned in {:.1} s (p50/p99/max {} ms, {} spawn_failed retried); {} tasks created in {:.1} s ({:.0}/s), \
                 {} completed, {} failed; end to end {:.1} s = {:.0} tasks/s (server clock {:.0}/s); \
                 CPU s: server {:.1}, its children {:.1}, bench {:.1}; server stop {:.1} s",
                fleet.label(args.agents),
                r.spawn_secs,
                ms3(&r.spawn_latency),
                r.spawn_failures,
                r.created,
                r.create_secs,
                r.created as f64 / r.create_secs,
                r.completed,
                r.failed,
                r.end_to_end_secs,
                r.tasks_per_sec(),
                r.completed as f64 / r.server_span_secs,
                r.server_cpu,
                r.children_cpu,
                r.bench_cpu,
                r.stop_secs,
            );
            for (when, m) in [
                ("before", r.before),
                ("after spawn", r.after_spawn),
                ("end", r.end),
            ] {
                println!(
                    "    {when}: server RSS {:.1} MB, {} open fds; {} child processes RSS {:.1} MB, PSS {:.1} MB; agent cgroups {:.1} MB",
                    mb(m.rss_kb),
                    m.fds,
                    m.children.processes,
                    mb(m.children.rss_kb),
                    mb(m.children.pss_kb),
                    mb(m.cgroups_kb)
                );
            }
            done.push(r);
        }
    }

    let med = |rs: &[FleetRun], f: &dyn Fn(&FleetRun) -> f64| {
        median(&rs.iter().map(f).collect::<Vec<_>>())
    };
    println!();
    println!(
        "{} tasks `true` over {} agents, {} creating clients; median of {} reps:",
        args.tasks, args.agents, args.clients, args.reps
    );
    println!();
    println!(
        "| run | spawn all agents (s) | created/s | tasks/s end to end | tasks/s server clock | server CPU (s) | children CPU (s) | bench CPU (s) | CPU ms per task |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (fleet, rs) in &runs {
        println!(
            "| {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} |",
            fleet.label(args.agents),
            med(rs, &|r| r.spawn_secs),
            med(rs, &|r| r.created as f64 / r.create_secs),
            med(rs, &|r| r.tasks_per_sec()),
            med(rs, &|r| r.completed as f64 / r.server_span_secs),
            med(rs, &|r| r.server_cpu),
            med(rs, &|r| r.children_cpu),
            med(rs, &|r| r.bench_cpu),
            med(rs, &|r| (r.server_cpu + r.children_cpu) * 1e3
                / r.completed.max(1) as f64),
        );
    }
    println!();
    println!(
        "| run | server RSS before / after spawn / end (MB) | server peak RSS (MB) | server RSS per agent (KB) | sandbox processes after spawn | their RSS / PSS (MB) | PSS per agent (KB) | agent cgroups memory (MB) | per agent (KB) |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    let n = args.agents as f64;
    for (fleet, rs) in &runs {
        println!(
            "| {} | {:.1} / {:.1} / {:.1} | {:.1} | {:.0} | {:.0} | {:.1} / {:.1} | {:.0} | {:.1} | {:.0} |",
            fleet.label(args.agents),
            med(rs, &|r| mb(r.before.rss_kb)),
            med(rs, &|r| mb(r.after_spawn.rss_kb)),
            med(rs, &|r| mb(r.end.rss_kb)),
            med(rs, &|r| mb(r.peak_rss_kb)),
            med(rs, &|r| (r.after_spawn.rss_kb as f64
                - r.before.rss_kb as f64)
                / n),
            med(rs, &|r| r.after_spawn.children.processes as f64),
            med(rs, &|r| mb(r.after_spawn.children.rss_kb)),
            med(rs, &|r| mb(r.after_spawn.children.pss_kb)),
            med(rs, &|r| r.after_spawn.children.pss_kb as f64 / n),
            med(rs, &|r| mb(r.after_spawn.cgroups_kb)),
            med(rs, &|r| r.after_spawn.cgroups_kb as f64 / n),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps_are_epoch_seconds() {
        assert_eq!(parse_log_time("1970-01-01T00:00:00Z"), Some(0.0));
        let t = parse_log_time("2026-11-23T12:46:12.706563Z").unwrap();
        // date -u -d 2026-11-23T12:46:12Z +%s
        assert!((t - 1_795_437_972.706_563).abs() < 1e-5, "{t}");
        assert_eq!(parse_log_time("not a time"), None);
    }

    #[test]
    fn sandbox_and_session_lines_are_matched_to_agents() {
        let log = concat!(
            r#"{"timestamp":"1970-01-01T00:00:01.5Z","message":"sandbox ready","sandbox":"cold-7-1-b741ac"}"#,
            "\n",
            r#"{"ts":"1970-01-01T00:00:02Z","message":"agent session started","agent_id":"cold-7"}"#,
            "\n",
            "not json\n",
        );
        let t = parse_server_log(log);
        assert_eq!(t.sandbox_ready.get("cold-7"), Some(&1.5));
        assert_eq!(t.session_started.get("cold-7"), Some(&2.0));
    }

    #[test]
    fn helper_arguments_get_a_new_name_and_workdir() {
        let argv: Vec<String> = [
            "rf",
            "__sandbox-helper",
            "init",
            "--name",
            "a",
            "--workdir",
            "/x",
            "--ro",
            "/usr",
        ]
        .map(String::from)
        .to_vec();
        let out = with_name_and_workdir(&argv, "b", Path::new("/y"));
        assert_eq!(
            out,
            [
                "rf",
                "__sandbox-helper",
                "init",
                "--name",
                "b",
                "--workdir",
                "/y",
                "--ro",
                "/usr"
            ]
        );
    }
}
