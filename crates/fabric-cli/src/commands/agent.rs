//! `reactor-fabric agent spawn | list | get | terminate` (REQUIREMENTS §5, §11).
//!
//! `spawn` builds the [`AgentConfig`] here, from `-f FILE` and flags, and checks it
//! with [`AgentConfig::validate`] before anything is sent: a bad file or flag fails
//! at once with exit 2 and the field's name, not after a round trip.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use fabric_core::agent::{
    Agent, AgentConfig, AgentSession, AgentState, Health, IsolationLevel, ResourceUsage,
    RestartPolicy, parse_egress,
};
use fabric_core::{AgentId, Clock, SystemClock, Timestamp};
use serde::Serialize;

use crate::commands::Ctx;
use crate::commands::task::parse_duration;
use crate::error::CliError;
use crate::outln;
use crate::output::{print_json, short_time, table, write_text};

/// `agent terminate` without `--drain-timeout` (the server's default too).
const DEFAULT_DRAIN: &str = "30";
/// A terminate that has not answered by then gets a note on stderr.
const SLOW_TERMINATE: Duration = Duration::from_secs(1);
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Start an agent from flags or an agent file (-f); answers once it runs
    Spawn(Box<SpawnArgs>),
    /// List agents: state, health, last heartbeat, tasks, CPU, memory
    #[command(visible_alias = "ls")]
    List,
    /// Show one agent: state, last exit, resource usage, config
    Get(GetArgs),
    /// Stop an agent: it leases nothing more, in-flight tasks get the drain timeout
    Terminate(TerminateArgs),
    /// Stop an agent (as terminate does) if it runs, and start it again with its config
    Restart(TerminateArgs),
    /// Forget a stopped agent: its record and its sessions' history (the id is free again)
    #[command(visible_alias = "delete")]
    Rm(RmArgs),
    /// Show the last lines the agent's program wrote (stdout and stderr), across its sessions
    Logs(AgentLogsArgs),
}

#[derive(Debug, clap::Args)]
pub struct AgentLogsArgs {
    /// Agent id
    pub id: AgentId,
    /// How many of the last lines (at most 1000)
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub tail: u32,
    /// Keep printing lines as the program writes them (Ctrl-C stops)
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Agent ids
    #[arg(required = true)]
    pub ids: Vec<AgentId>,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).multiple(true).args(["id", "file"])))]
pub struct SpawnArgs {
    /// Agent id (tasks name it with --agent)
    #[arg(long, value_name = "ID")]
    pub id: Option<AgentId>,
    /// Agent file in the AgentConfig shape, TOML or JSON (- reads standard input); flags given too override its fields
    #[arg(short, long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// none (host processes confined to the system dirs and their own dir: Landlock, seccomp, no privileges), process (namespaces, cgroup limits, egress allowlist) or container (Docker, with an inference sidecar) [default: none]
    #[arg(long, value_name = "LEVEL")]
    pub isolation: Option<IsolationLevel>,
    /// Memory limit in MiB [default: 512]
    #[arg(long, value_name = "N")]
    pub memory_mb: Option<u64>,
    /// CPU limit in cores, e.g. 0.5 [default: 1]
    #[arg(long, value_name = "F")]
    pub cpu_cores: Option<f64>,
    /// Disk quota in MiB for the working directories of its tasks; a task past it fails with disk_quota_exceeded [default: 10240]
    #[arg(long, value_name = "N")]
    pub disk_mb: Option<u64>,
    /// Allowed egress (isolation process or container), repeatable: host:port, *.domain:port or a bare host; none given: no network
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_egress_flag)]
    pub egress: Vec<String>,
    /// Host path the agent may read (at the same path), repeatable; relative to this directory
    #[arg(long = "read-only", value_name = "PATH")]
    pub read_only: Vec<PathBuf>,
    /// Isolation none only, admins only: run unconfined as the fabric's own user, seeing everything it sees (its environment and data directory included)
    #[arg(long)]
    pub as_fabric_user: bool,
    /// What it runs: a shell command line [default: the built-in shell agent, running each task's commands]
    #[arg(long, value_name = "CMD")]
    pub command: Option<String>,
    /// Container image whose own command is the agent (isolation container; with --command, that runs in it)
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Tasks it works on at once [default: 1]
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// Most tasks that may wait for it [default: 1000]
    #[arg(long, value_name = "N")]
    pub max_queue_depth: Option<u32>,
    /// What happens when it exits on its own [default: on-failure]
    #[arg(long, value_enum, value_name = "POLICY")]
    pub restart: Option<RestartArg>,
    /// Restarts in a row before it is left crashed [default: 5]
    #[arg(long, value_name = "N")]
    pub max_restarts: Option<u32>,
    /// Worker node to run on ('reactor-fabric node list'); default: a node matching --node-selector, else wherever has the most free capacity
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Run only on a node with this label (repeatable: all must match)
    #[arg(long = "node-selector", value_name = "KEY=VALUE", value_parser = super::node::parse_label)]
    pub node_selector: Vec<(String, String)>,
    /// Sandboxes or containers kept started so a spawn is served at once (isolation process, or container for the built-in shell) [default: 0]
    #[arg(long, value_name = "N")]
    pub pool_min_idle: Option<u32>,
    /// Model the agent uses
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// Workspace the agent belongs to (policies attached to the workspace apply to it)
    #[arg(long, value_name = "W")]
    pub workspace: Option<String>,
    /// MCP tools the agent may use at its MCP_URL, repeatable:
    /// <server>/<tool>, with * as a wildcard ("time/*", "files/read_file")
    #[arg(long = "tools", value_name = "SERVER/TOOL")]
    pub tools: Vec<String>,
    /// The fabric runs nothing: the agent runs elsewhere and connects with its own token
    #[arg(long)]
    pub external: bool,
}

/// `--restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestartArg {
    Never,
    OnFailure,
}

impl From<RestartArg> for RestartPolicy {
    fn from(arg: RestartArg) -> Self {
        match arg {
            RestartArg::Never => RestartPolicy::Never,
            RestartArg::OnFailure => RestartPolicy::OnFailure,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Agent id
    pub id: AgentId,
    /// Also list its sessions (each run: start, end, exit reason, tasks done), newest first
    #[arg(long)]
    pub sessions: bool,
}

#[derive(Debug, clap::Args)]
pub struct TerminateArgs {
    /// Agent id
    pub id: AgentId,
    /// How long in-flight tasks may take to finish before they are requeued: seconds (0 = at once) or 30s, 5m
    #[arg(long, value_name = "SECS", default_value = DEFAULT_DRAIN, value_parser = parse_drain)]
    pub drain_timeout: Duration,
}

pub async fn run(ctx: &Ctx, cmd: AgentCommand) -> Result<(), CliError> {
    match cmd {
        AgentCommand::Spawn(args) => spawn(ctx, *args).await,
        AgentCommand::List => list(ctx).await,
        AgentCommand::Get(args) => get(ctx, args).await,
        AgentCommand::Terminate(args) => terminate(ctx, args).await,
        AgentCommand::Restart(args) => restart(ctx, args).await,
        AgentCommand::Rm(args) => remove(ctx, &args.ids).await,
        AgentCommand::Logs(args) => logs(ctx, args).await,
    }
}

async fn spawn(ctx: &Ctx, args: SpawnArgs) -> Result<(), CliError> {
    // Everything local first: a bad file or flag never reaches the server.
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::Other(anyhow::anyhow!("cannot read the current directory: {e}")))?;
    let config = build_config(&args, &cwd)?;
    let client = ctx.authed_client()?;
    let agent = client.spawn_agent(&config).await?;
    if ctx.output.is_json() {
        return print_json(&agent);
    }
    let mut line = format!(
        "spawned agent {} ({}, isolation {}",
        agent.config.id,
        agent.state.as_str(),
        agent.config.isolation.level
    );
    if let Some(pid) = agent.pid {
        line.push_str(&format!(", pid {pid}"));
    }
    line.push(')');
    outln!("{line}")?;
    if agent.config.command.is_some() || agent.config.image.is_some() {
        warn_if_it_died(&client, &agent.config.id).await;
    }
    Ok(())
}

/// The config to send: the file's (if any), then each flag given on top, then validated.
fn build_config(args: &SpawnArgs, cwd: &Path) -> Result<AgentConfig, CliError> {
    let mut config = match (&args.file, &args.id) {
        (Some(path), id) => load_config_file(path, id.as_ref())?,
        (None, Some(id)) => AgentConfig::new(id.clone()),
        // clap's "source" group makes one of them required.
        (None, None) => return Err(CliError::Usage("give --id or -f FILE".into())),
    };
    let from_file = args.file.as_ref().map(|_| config.clone());
    if let Some(id) = &args.id {
        config.id = id.clone();
    }
    let iso = &mut config.isolation;
    if let Some(level) = args.isolation {
        iso.level = level;
    }
    if let Some(mb) = args.memory_mb {
        iso.memory_mb = mb;
    }
    if let Some(cores) = args.cpu_cores {
        iso.cpu_cores = cores;
    }
    if let Some(mb) = args.disk_mb {
        iso.disk_mb = mb;
    }
    if !args.egress.is_empty() {
        iso.network_egress = args.egress.clone();
    }
    if !args.read_only.is_empty() {
        iso.read_only_paths = args
            .read_only
            .iter()
            .map(|p| {
                let abs = absolute(cwd, p);
                abs.to_str().map(str::to_owned).ok_or_else(|| {
                    CliError::Usage(format!("--read-only {}: not UTF-8", p.display()))
                })
            })
            .collect::<Result<_, _>>()?;
    }
    if args.as_fabric_user {
        iso.as_fabric_user = true;
    }
    if let Some(command) = &args.command {
        config.command = Some(command.clone());
    }
    if let Some(image) = &args.image {
        config.image = Some(image.clone());
    }
    if let Some(n) = args.concurrency {
        config.concurrency = n;
    }
    if let Some(n) = args.max_queue_depth {
        config.max_queue_depth = n;
    }
    if let Some(restart) = args.restart {
        config.restart = restart.into();
    }
    if let Some(n) = args.max_restarts {
        config.max_restarts = n;
    }
    if let Some(n) = args.pool_min_idle {
        config.pool.min_idle = n;
    }
    if let Some(node) = &args.node {
        config.node = Some(node.clone());
    }
    config
        .node_selector
        .extend(args.node_selector.iter().cloned());
    if let Some(model) = &args.model {
        config.model = Some(model.clone());
    }
    if let Some(workspace) = &args.workspace {
        config.workspace = Some(workspace.clone());
    }
    if !args.tools.is_empty() {
        config.tools = args.tools.clone();
    }
    if args.external {
        config.external = true;
    }
    config
        .validate()
        .map_err(|e| match (&args.file, from_file) {
            // Say where the bad value may come from: the file alone, or the file and flags.
            (Some(path), Some(original)) if original == config => {
                CliError::Usage(format!("{}: {e}", path.display()))
            }
            (Some(path), _) => {
                CliError::Usage(format!("{} with the flags given: {e}", path.display()))
            }
            (None, _) => CliError::Usage(e.to_string()),
        })?;
    Ok(config)
}

/// How an agent file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileFormat {
    Toml,
    Json,
}

impl FileFormat {
    /// By extension; else by content (a JSON document starts with `{`).
    fn detect(path: &Path, text: &str) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Self::Json,
            Some(e) if e.eq_ignore_ascii_case("toml") => Self::Toml,
            _ if text.trim_start().starts_with('{') => Self::Json,
            _ => Self::Toml,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Toml => "TOML",
            Self::Json => "JSON",
        }
    }
}

/// Reads an agent file; `id` stands in for an `id` the file leaves out.
fn load_config_file(path: &Path, id: Option<&AgentId>) -> Result<AgentConfig, CliError> {
    let text = super::read_capped_text(path, &format!("agent file {}", path.display()))?;
    let format = FileFormat::detect(path, &text);
    parse_config(&text, format, id).map_err(|e| {
        CliError::Usage(format!(
            "invalid agent file {} ({}): {}",
            path.display(),
            format.name(),
            e.trim_end()
        ))
    })
}

fn parse_config(
    text: &str,
    format: FileFormat,
    id: Option<&AgentId>,
) -> Result<AgentConfig, String> {
    // The typed parse of the text itself gives the best errors (line and column),
    // so it goes first; only a file without `id` and an `--id` to fill it take the detour.
    let typed = match format {
        FileFormat::Toml => toml::from_str::<AgentConfig>(text).map_err(|e| e.to_string()),
        FileFormat::Json => serde_json::from_str::<AgentConfig>(text).map_err(|e| e.to_string()),
    };
    let err = match typed {
        Ok(config) => return Ok(config),
        Err(err) => err,
    };
    let mut doc = match format {
        FileFormat::Toml => {
            let table = toml::from_str::<toml::Table>(text).map_err(|e| e.to_string())?;
            serde_json::to_value(table).map_err(|e| e.to_string())?
        }
        FileFormat::Json => {
            serde_json::from_str::<serde_json::Value>(text).map_err(|e| e.to_string())?
        }
    };
    let Some(fields) = doc.as_object_mut() else {
        return Err(err);
    };
    if fields.contains_key("id") {
        return Err(err);
    }
    let Some(id) = id else {
        return Err("it has no 'id': add one, or pass --id".into());
    };
    fields.insert("id".into(), serde_json::Value::String(id.to_string()));
    serde_json::from_value(doc).map_err(|e| e.to_string())
}

/// `path` against `cwd` when relative, with `.` and `..` resolved by name,
/// absolute ones too (the server wants absolute paths without `..`).
fn absolute(cwd: &Path, path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in cwd.join(path).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `--egress`: checked at parse time with the server's own rule parser, so the
/// error names the flag.
pub(crate) fn parse_egress_flag(text: &str) -> Result<String, String> {
    parse_egress(text).map(|_| text.to_owned())
}

/// `--drain-timeout`: plain seconds (0 stops at once) or a duration like `30s`, `5m`.
fn parse_drain(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => parse_duration(text),
    }
}

async fn list(ctx: &Ctx) -> Result<(), CliError> {
    let list = ctx.authed_client()?.list_agents().await?;
    if ctx.output.is_json() {
        return print_json(&list);
    }
    if list.agents.is_empty() {
        eprintln!("no agents");
        return Ok(());
    }
    let now = SystemClock.now();
    let wide = ctx.output.is_wide();
    let rows: Vec<Vec<String>> = list
        .agents
        .iter()
        .map(|a| {
            let live = has_usage(a);
            let mut row = vec![
                a.config.id.to_string(),
                a.state.as_str().to_owned(),
                health_name(a.health).to_owned(),
                a.last_heartbeat
                    .map_or_else(|| "-".to_owned(), |t| ago(now, t)),
                a.tasks_running.to_string(),
                a.tasks_done.to_string(),
                if live {
                    cpu(a.usage.cpu_millis)
                } else {
                    "-".into()
                },
                if live {
                    mib(a.usage.memory_bytes)
                } else {
                    "-".into()
                },
                a.config.isolation.level.to_string(),
            ];
            if wide {
                row.extend([
                    a.tenant.to_string(),
                    a.session.to_string(),
                    a.node.clone().unwrap_or_else(|| "-".into()),
                    a.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    a.last_exit.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            row
        })
        .collect();
    // RUNNING and DONE: tasks it works on now, and tasks it has finished (all sessions).
    let mut header = vec![
        "ID",
        "STATE",
        "HEALTH",
        "LAST HEARTBEAT",
        "RUNNING",
        "DONE",
        "CPU",
        "MEMORY",
        "ISOLATION",
    ];
    if wide {
        header.extend(["TENANT", "SESSION", "NODE", "PID", "LAST EXIT"]);
    }
    write_text(&table(&header, &rows))
}

/// `agent get ID --sessions -o json`.
#[derive(Debug, Serialize)]
struct AgentWithSessions {
    agent: Agent,
    sessions: Vec<AgentSession>,
}

async fn get(ctx: &Ctx, args: GetArgs) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    let agent = client.get_agent(&args.id).await?;
    let sessions = if args.sessions {
        Some(client.agent_sessions(&args.id, None).await?.sessions)
    } else {
        None
    };
    if ctx.output.is_json() {
        return match sessions {
            Some(sessions) => print_json(&AgentWithSessions { agent, sessions }),
            None => print_json(&agent),
        };
    }
    let mut text = describe_agent(&agent, SystemClock.now());
    if let Some(sessions) = sessions {
        text.push('\n');
        text.push_str(&sessions_table(&sessions));
    }
    write_text(&text)
}

/// `key: value` lines for `agent get`.
fn describe_agent(agent: &Agent, now: Timestamp) -> String {
    let config = &agent.config;
    let iso = &config.isolation;
    let mut lines: Vec<(&str, String)> = vec![
        ("id", config.id.to_string()),
        ("state", agent.state.as_str().to_owned()),
        ("health", health_name(agent.health).to_owned()),
        ("session", agent.session.to_string()),
    ];
    if let Some(node) = &agent.node {
        lines.push(("node", node.clone()));
    }
    if let Some(pid) = agent.pid {
        lines.push(("pid", pid.to_string()));
    }
    if let Some(t) = agent.last_heartbeat {
        lines.push((
            "last_heartbeat",
            format!("{} ({})", short_time(t), ago(now, t)),
        ));
    }
    if let Some(exit) = &agent.last_exit {
        lines.push(("last_exit", exit.clone()));
    }
    lines.push((
        "tasks",
        format!("{} running, {} done", agent.tasks_running, agent.tasks_done),
    ));
    if has_usage(agent) {
        let u = &agent.usage;
        lines.push((
            "usage",
            format!(
                "cpu {}, memory {} (peak {}), {} pids",
                cpu(u.cpu_millis),
                mib(u.memory_bytes),
                mib(u.memory_peak_bytes),
                u.pids
            ),
        ));
    }
    lines.push(("created", short_time(agent.created_at)));
    let runs = match (&config.command, &config.image) {
        (Some(command), Some(image)) => format!("command {command} in image {image}"),
        (Some(command), None) => format!("command {command}"),
        (None, Some(image)) => format!("image {image}"),
        (None, None) if config.external => "external (connects with its own token)".into(),
        (None, None) => "built-in shell agent".into(),
    };
    lines.push(("runs", runs));
    lines.push(("isolation", iso.level.to_string()));
    lines.push(("disk_quota", format!("{} MiB", iso.disk_mb)));
    if iso.level != IsolationLevel::None {
        lines.push(("memory_limit", format!("{} MiB", iso.memory_mb)));
        let unit = if iso.cpu_cores == 1.0 {
            "core"
        } else {
            "cores"
        };
        lines.push(("cpu_limit", format!("{} {unit}", iso.cpu_cores)));
        let egress = if iso.network_egress.is_empty() {
            "none (no network)".to_owned()
        } else {
            iso.network_egress.join(", ")
        };
        lines.push(("egress", egress));
    }
    if !iso.read_only_paths.is_empty() {
        lines.push(("read_only", iso.read_only_paths.join(", ")));
    }
    if iso.as_fabric_user {
        lines.push(("runs_as", "the fabric's own user, unconfined".to_owned()));
    }
    if let Some(root) = &iso.filesystem_root {
        lines.push(("filesystem_root", root.clone()));
    }
    if let Some(model) = &config.model {
        lines.push(("model", model.clone()));
    }
    if !config.tools.is_empty() {
        lines.push(("tools", config.tools.join(", ")));
    }
    if !config.policies.is_empty() {
        lines.push(("policies", config.policies.join(", ")));
    }
    lines.push(("concurrency", config.concurrency.to_string()));
    lines.push(("max_queue_depth", config.max_queue_depth.to_string()));
    let restart = match config.restart {
        RestartPolicy::Never => "never".to_owned(),
        RestartPolicy::OnFailure => {
            format!("on-failure (at most {} in a row)", config.max_restarts)
        }
    };
    lines.push(("restart", restart));
    if config.pool.min_idle > 0 {
        lines.push(("pool_min_idle", config.pool.min_idle.to_string()));
    }
    if let Some(node) = &config.node {
        lines.push(("placement", format!("node {node}")));
    } else if !config.node_selector.is_empty() {
        let labels: Vec<String> = config
            .node_selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        lines.push(("placement", format!("nodes with {}", labels.join(","))));
    }
    lines.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

fn sessions_table(sessions: &[AgentSession]) -> String {
    if sessions.is_empty() {
        return "no sessions\n".into();
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.session.to_string(),
                short_time(s.started_at),
                s.ended_at.map_or_else(|| "-".to_owned(), short_time),
                s.exit_reason.clone().unwrap_or_else(|| "-".to_owned()),
                s.tasks_done.to_string(),
            ]
        })
        .collect();
    table(
        &["SESSION", "STARTED", "ENDED", "EXIT REASON", "TASKS DONE"],
        &rows,
    )
}

async fn restart(ctx: &Ctx, args: TerminateArgs) -> Result<(), CliError> {
    let agent = ctx
        .authed_client()?
        .restart_agent(&args.id, args.drain_timeout)
        .await?;
    if ctx.output.is_json() {
        return print_json(&agent);
    }
    outln!(
        "restarted agent {} (session {}, {})",
        agent.config.id,
        agent.session,
        agent.state.as_str()
    )
}

/// `agent logs ID`: stdout lines on stdout, stderr lines on stderr (as the
/// program wrote them), so `agent logs coder > out.txt` keeps its output.
async fn logs(ctx: &Ctx, args: AgentLogsArgs) -> Result<(), CliError> {
    if args.follow {
        let json = ctx.output.is_json();
        ctx.authed_client()?
            .follow_agent_logs(&args.id, args.tail, |line| {
                if json {
                    // One object a line, as every followed stream prints.
                    return serde_json::to_string(&line).is_ok_and(|text| outln!("{text}").is_ok());
                }
                print_line(&line)
            })
            .await?;
        return Ok(());
    }
    let logs = ctx.authed_client()?.agent_logs(&args.id, args.tail).await?;
    if ctx.output.is_json() {
        return print_json(&logs);
    }
    if logs.lines.is_empty() {
        eprintln!(
            "agent {} has written nothing yet (the built-in shell agent writes to its tasks' logs: 'reactor-fabric task logs')",
            args.id
        );
    }
    for line in &logs.lines {
        if !print_line(line) {
            break;
        }
    }
    Ok(())
}

/// One program line on the stream it was written to; false once stdout is
/// closed (`| head`), so a follower stops.
fn print_line(line: &fabric_core::api::ProgramLogLine) -> bool {
    let text = crate::output::plain(&line.line);
    if line.stream == "stderr" {
        eprintln!("{text}");
        true
    } else {
        outln!("{text}").is_ok()
    }
}

/// After a spawn: a program that exits within its first seconds is almost
/// always a mistake (a typo in the command, a missing file); say so with its
/// last lines instead of leaving it to `agent get`.
async fn warn_if_it_died(client: &crate::client::FabricClient, id: &AgentId) {
    let deadline = tokio::time::Instant::now() + EARLY_EXIT_WATCH;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let Ok(agent) = client.get_agent(id).await else {
            return;
        };
        use fabric_core::agent::AgentState;
        // Restarting after a crash, or out of restarts: its program is gone.
        if !matches!(agent.state, AgentState::Restarting | AgentState::Crashed) {
            continue;
        }
        eprintln!(
            "warning: agent {id} exited within its first seconds ({}; now {}); its last lines:",
            agent.last_exit.as_deref().unwrap_or("unknown"),
            agent.state.as_str()
        );
        if let Ok(logs) = client.agent_logs(id, 10).await {
            for line in &logs.lines {
                eprintln!("  {}", crate::output::plain(&line.line));
            }
        }
        eprintln!(
            "(more: 'reactor-fabric agent logs {id}', 'reactor-fabric agent get {id} --sessions')"
        );
        return;
    }
}

/// How long `agent spawn` watches a new program for an early exit.
const EARLY_EXIT_WATCH: std::time::Duration = std::time::Duration::from_secs(2);

async fn remove(ctx: &Ctx, ids: &[AgentId]) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    for id in ids {
        client.remove_agent(id).await?;
        if !ctx.output.is_json() {
            outln!("removed agent {id}")?;
        }
    }
    if ctx.output.is_json() {
        print_json(&serde_json::json!({ "removed": ids }))?;
    }
    Ok(())
}

async fn terminate(ctx: &Ctx, args: TerminateArgs) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    let request = client.terminate_agent(&args.id, args.drain_timeout);
    tokio::pin!(request);
    // The answer comes once the agent has stopped, which may take the whole drain:
    // when it is not quick, say what is being waited for (stderr, so -o json stays clean).
    let agent = tokio::select! {
        answer = &mut request => answer?,
        () = tokio::time::sleep(SLOW_TERMINATE) => {
            eprintln!(
                "waiting for agent {} to stop (in-flight tasks get up to {}s to finish)...",
                args.id,
                args.drain_timeout.as_secs_f64()
            );
            request.await?
        }
    };
    if ctx.output.is_json() {
        return print_json(&agent);
    }
    match &agent.last_exit {
        Some(exit) => outln!(
            "agent {} is {} (last exit: {exit})",
            agent.config.id,
            agent.state.as_str()
        ),
        None => outln!("agent {} is {}", agent.config.id, agent.state.as_str()),
    }
}

/// Whether the agent's usage means something now: a session is up, and it has a
/// process or sandbox to measure (a built-in agent at isolation none has neither).
fn has_usage(agent: &Agent) -> bool {
    let up = matches!(
        agent.state,
        AgentState::Starting | AgentState::Running | AgentState::Draining
    );
    up && (agent.pid.is_some() || agent.usage != ResourceUsage::default())
}

fn health_name(health: Health) -> &'static str {
    match health {
        Health::Healthy => "healthy",
        Health::Unresponsive => "unresponsive",
        Health::Dead => "dead",
    }
}

/// `3s ago`, `5m ago`, `2h ago`, `4d ago` (a clock ahead of ours reads `0s ago`).
pub(crate) fn ago(now: Timestamp, then: Timestamp) -> String {
    let secs = now.since(then).as_secs();
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

fn cpu(millis: u64) -> String {
    format!("{:.1}s", millis as f64 / 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn spawn_args(argv: &[&str]) -> SpawnArgs {
        let cli =
            crate::Cli::try_parse_from(["reactor-fabric", "agent", "spawn"].iter().chain(argv))
                .unwrap();
        match cli.command {
            crate::commands::Command::Agent(AgentCommand::Spawn(args)) => *args,
            other => panic!("{other:?}"),
        }
    }

    fn usage_error(argv: &[&str]) -> String {
        let err = build_config(&spawn_args(argv), Path::new("/work")).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        err.to_string()
    }

    #[test]
    fn flags_build_a_config() {
        let config = build_config(
            &spawn_args(&[
                "--id",
                "coder",
                "--isolation",
                "process",
                "--memory-mb",
                "256",
                "--cpu-cores",
                "0.5",
                "--disk-mb",
                "2048",
                "--egress",
                "api.github.com:443",
                "--egress",
                "*.example.org",
                "--read-only",
                "lib",
                "--read-only",
                "../tools/./bin",
                "--read-only",
                "/opt/x",
                "--command",
                "python3 agent.py",
                "--concurrency",
                "2",
                "--max-queue-depth",
                "10",
                "--restart",
                "never",
                "--max-restarts",
                "1",
                "--pool-min-idle",
                "3",
                "--model",
                "llama3",
            ]),
            Path::new("/home/me/proj"),
        )
        .unwrap();
        assert_eq!(config.id.as_str(), "coder");
        let iso = &config.isolation;
        assert_eq!(iso.level, IsolationLevel::Process);
        assert_eq!(
            (iso.memory_mb, iso.cpu_cores, iso.disk_mb),
            (256, 0.5, 2048)
        );
        assert_eq!(iso.network_egress, ["api.github.com:443", "*.example.org"]);
        assert_eq!(
            iso.read_only_paths,
            ["/home/me/proj/lib", "/home/me/tools/bin", "/opt/x"]
        );
        assert_eq!(config.command.as_deref(), Some("python3 agent.py"));
        assert_eq!((config.concurrency, config.max_queue_depth), (2, 10));
        assert_eq!(config.restart, RestartPolicy::Never);
        assert_eq!((config.max_restarts, config.pool.min_idle), (1, 3));
        assert_eq!(config.model.as_deref(), Some("llama3"));
        assert!(!config.external);

        // Nothing but an id: every default, the built-in shell agent.
        let config = build_config(&spawn_args(&["--id", "box"]), Path::new("/")).unwrap();
        assert_eq!(config, AgentConfig::new(AgentId::new("box").unwrap()));
        assert!(config.is_builtin_shell());
    }

    #[test]
    fn bad_flags_are_usage_errors_naming_the_field() {
        assert!(usage_error(&["--id", "a", "--memory-mb", "1"]).contains("isolation.memory_mb"));
        assert!(usage_error(&["--id", "a", "--cpu-cores", "0"]).contains("isolation.cpu_cores"));
        assert!(usage_error(&["--id", "a", "--disk-mb", "0"]).contains("isolation.disk_mb"));
        assert!(usage_error(&["--id", "a", "--concurrency", "0"]).contains("concurrency"));
        assert!(usage_error(&["--id", "a", "--external", "--command", "x"]).contains("external"));
        assert!(
            usage_error(&["--id", "a", "--read-only", "/"]).contains("isolation.read_only_paths")
        );

        let parse = |argv: &[&str]| {
            crate::Cli::try_parse_from(["reactor-fabric", "agent", "spawn"].iter().chain(argv))
                .unwrap_err()
        };
        let err = parse(&["--id", "a", "--egress", "nope:x"]);
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--egress"), "{err}");
        assert!(err.to_string().contains("invalid egress rule"), "{err}");
        let err = parse(&["--id", "a", "--isolation", "vm"]);
        assert!(
            err.to_string().contains("none, process or container"),
            "{err}"
        );
        let err = parse(&["--memory-mb", "64"]);
        assert_eq!(err.exit_code(), 2, "--id or -f is required");
        let err = parse(&["--id", "a", "--restart", "always"]);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn files_load_as_toml_or_json_and_flags_override_them() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("agent.toml");
        std::fs::write(
            &toml_path,
            "id = \"coder\"\ncommand = \"python3 a.py\"\n\n[isolation]\nlevel = \"process\"\nmemory_mb = 128\nnetwork_egress = [\"api.github.com:443\"]\n",
        )
        .unwrap();
        let file = toml_path.to_str().unwrap();
        let config = build_config(&spawn_args(&["-f", file]), dir.path()).unwrap();
        assert_eq!(config.id.as_str(), "coder");
        assert_eq!(config.isolation.level, IsolationLevel::Process);
        assert_eq!(config.isolation.memory_mb, 128);
        assert_eq!(config.isolation.cpu_cores, 1.0, "defaults fill the rest");

        let config = build_config(
            &spawn_args(&[
                "-f",
                file,
                "--id",
                "other",
                "--memory-mb",
                "64",
                "--egress",
                "example.org:80",
            ]),
            dir.path(),
        )
        .unwrap();
        assert_eq!(config.id.as_str(), "other");
        assert_eq!(config.isolation.memory_mb, 64);
        assert_eq!(config.isolation.network_egress, ["example.org:80"]);
        assert_eq!(config.command.as_deref(), Some("python3 a.py"));

        // JSON by content, whatever the extension; the id may come from --id alone.
        let json_path = dir.path().join("agent.conf");
        std::fs::write(&json_path, r#" {"isolation": {"memory_mb": 32}}"#).unwrap();
        let json = json_path.to_str().unwrap();
        let config = build_config(&spawn_args(&["-f", json, "--id", "j"]), dir.path()).unwrap();
        assert_eq!((config.id.as_str(), config.isolation.memory_mb), ("j", 32));
        let err = build_config(&spawn_args(&["-f", json]), dir.path()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("no 'id'"), "{err}");

        // Unknown fields, type errors (with the line), invalid values, missing files.
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "id = \"a\"\ncolour = 1\n").unwrap();
        let err =
            build_config(&spawn_args(&["-f", bad.to_str().unwrap()]), dir.path()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("colour"), "{err}");
        std::fs::write(&bad, "id = \"a\"\n[isolation]\nmemory_mb = \"lots\"\n").unwrap();
        let err =
            build_config(&spawn_args(&["-f", bad.to_str().unwrap()]), dir.path()).unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
        std::fs::write(&bad, "id = \"a\"\n[isolation]\nmemory_mb = 1\n").unwrap();
        let err =
            build_config(&spawn_args(&["-f", bad.to_str().unwrap()]), dir.path()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("isolation.memory_mb"), "{err}");
        let err = build_config(
            &spawn_args(&["-f", dir.path().join("missing.toml").to_str().unwrap()]),
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("cannot read agent file"), "{err}");
    }

    #[test]
    fn drain_timeouts_parse() {
        assert_eq!(parse_drain("0"), Ok(Duration::ZERO));
        assert_eq!(parse_drain("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_drain("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_drain("-1").is_err());
        assert!(parse_drain("soon").is_err());
    }

    #[test]
    fn relative_times_and_units_read_well() {
        let now = Timestamp::from_millis(1_000_000_000);
        let before = |secs: i64| Timestamp::from_millis(1_000_000_000 - secs * 1000);
        assert_eq!(ago(now, before(3)), "3s ago");
        assert_eq!(ago(now, before(125)), "2m ago");
        assert_eq!(ago(now, before(7200)), "2h ago");
        assert_eq!(ago(now, before(3 * 86_400)), "3d ago");
        assert_eq!(ago(now, Timestamp::from_millis(1_000_005_000)), "0s ago");
        assert_eq!(cpu(1234), "1.2s");
        assert_eq!(mib(3 * 1024 * 1024 + 512 * 1024), "3.5 MiB");
    }
}
