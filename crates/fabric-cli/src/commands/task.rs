//! `reactor-fabric task create | get | list | cancel | result | logs` (REQUIREMENTS §4, §11).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use fabric_core::agent::AgentState;
use fabric_core::api::{CreateTaskRequest, StreamMessage};
use fabric_core::{AgentId, EventKind, Priority, Task, TaskFile, TaskId, TaskStatus};
use serde_json::Value;

use crate::client::{FabricClient, TaskListQuery};
use crate::commands::{Ctx, ids};
use crate::error::CliError;
use crate::outln;
use crate::output::{print_json, print_json_line, short_time, table, write_text};

/// Page size of `task logs` (the server's cap for `GET /v1/tasks/{id}/events`).
const EVENTS_PAGE: usize = fabric_core::api::PAGE_MAX_LIMIT;
/// Polling of `task result --wait`: start fast (short tasks), back off to this.
const POLL_MIN: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Subcommand)]
pub enum TaskCommand {
    /// Submit a task; prints its id on the last line
    Create(CreateArgs),
    /// Show one task
    Get(IdArg),
    /// List tasks, newest first
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Cancel a task that has not finished
    Cancel(IdArg),
    /// Show a task's result; a task that failed exits with its last command's exit code (1 if it has none: canceled, timed out, killed)
    Result(ResultArgs),
    /// Show a task's log lines and status changes
    Logs(LogsArgs),
    /// Run a task again: a new task with the same agent, input and limits; prints its id
    Rerun(RerunArgs),
    /// Delete finished tasks with their logs (a running one: cancel it first)
    #[command(visible_alias = "delete")]
    Rm(RmArgs),
    /// Delete the finished tasks older than a duration, with their logs
    Prune(PruneArgs),
}

#[derive(Debug, clap::Args)]
pub struct RerunArgs {
    /// Task: its full id, the last 6 or more characters of it, or its name
    #[arg(value_name = "TASK")]
    pub id: String,
    /// Wait for the new task to finish and print its result; exit with its exit code
    #[arg(long, conflicts_with = "follow")]
    pub wait: bool,
    /// Stream the new task's log lines, then print its result; exit with its exit code
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Tasks: full ids, id tails of 6+ characters, or names
    #[arg(value_name = "TASK", required = true)]
    pub ids: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Finished tasks created longer ago than this go, e.g. 7d, 12h (0s: every finished task)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_or_zero)]
    pub older_than: Duration,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("work").required(true).multiple(true).args(["prompt", "command"])))]
pub struct CreateArgs {
    /// Free text; the shell agent runs it as one shell command when no --command is given
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Shell command, repeatable: run in order, the first failure stops the task
    #[arg(long, value_name = "CMD")]
    pub command: Vec<String>,
    /// File to put in the task's working directory, under its own name or NAME (repeatable, UTF-8 text; NAME=- reads stdin)
    #[arg(long, value_name = "[NAME=]PATH")]
    pub file: Vec<PathBuf>,
    /// Agent that runs the task [default: shell]
    #[arg(long, value_name = "ID")]
    pub agent: Option<AgentId>,
    /// critical, high, normal or low [default: normal]
    #[arg(long, value_name = "PRIORITY")]
    pub priority: Option<Priority>,
    /// Task that must complete first (repeatable)
    #[arg(long, value_name = "ID")]
    pub depends_on: Vec<TaskId>,
    /// Longest one attempt may run: 30s, 5m, 1h30m, 250ms, or plain seconds (1.5)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// A name to recognise the task by
    #[arg(long)]
    pub name: Option<String>,
    /// How often the task is tried if its agent dies [default: 3]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,
    /// Environment variable for the task, repeatable (FABRIC_* names are reserved)
    #[arg(long, value_name = "K=V", value_parser = parse_env_pair)]
    pub env: Vec<(String, String)>,
    /// Makes creation safe to retry: the same key returns the same task
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Wait for the task to finish and print its result; exit with its exit code, as `docker run` does
    #[arg(long, conflicts_with = "follow")]
    pub wait: bool,
    /// Stream the task's log lines as they come, then print its result; exit with its exit code
    #[arg(short, long)]
    pub follow: bool,
    /// Refuse (exit 5) instead of queueing when the agent is not running
    #[arg(long)]
    pub require_running: bool,
}

#[derive(Debug, clap::Args)]
pub struct IdArg {
    /// Task: its full id, the last 6 or more characters of it (as tables show), or its name
    #[arg(value_name = "TASK")]
    pub id: String,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only tasks in this status (pending, queued, running, completed, failed, canceled, timed_out)
    #[arg(long)]
    pub status: Option<TaskStatus>,
    /// Only tasks of this agent
    #[arg(long, value_name = "ID")]
    pub agent: Option<AgentId>,
    /// Only tasks of this priority (critical, high, normal, low)
    #[arg(long)]
    pub priority: Option<Priority>,
    /// Only tasks whose name, prompt or a command contains TEXT (case ignored)
    #[arg(long, value_name = "TEXT")]
    pub search: Option<String>,
    /// At most this many tasks
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Tasks older than this one (the cursor a previous page printed)
    #[arg(long, value_name = "ID")]
    pub before: Option<TaskId>,
}

#[derive(Debug, clap::Args)]
pub struct ResultArgs {
    /// Task: its full id, the last 6 or more characters of it (as tables show), or its name
    #[arg(value_name = "TASK")]
    pub id: String,
    /// Wait until the task has finished
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (exit 1), e.g. 30s, 5m
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "wait")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Task: its full id, the last 6 or more characters of it (as tables show), or its name
    #[arg(value_name = "TASK")]
    pub id: String,
    /// Stream new lines as they come until the task ends
    #[arg(short, long)]
    pub follow: bool,
}

pub async fn run(ctx: &Ctx, cmd: TaskCommand) -> Result<(), CliError> {
    match cmd {
        TaskCommand::Create(args) => create(ctx, args).await,
        TaskCommand::Get(args) => get(ctx, resolve(ctx, &args.id).await?).await,
        TaskCommand::List(args) => list(ctx, args).await,
        TaskCommand::Cancel(args) => cancel(ctx, resolve(ctx, &args.id).await?).await,
        TaskCommand::Result(args) => {
            let id = resolve(ctx, &args.id).await?;
            result(ctx, id, args.wait, args.timeout, true).await
        }
        TaskCommand::Logs(args) if args.follow => follow(ctx, resolve(ctx, &args.id).await?).await,
        TaskCommand::Logs(args) => logs(ctx, resolve(ctx, &args.id).await?).await,
        TaskCommand::Rerun(args) => rerun(ctx, args).await,
        TaskCommand::Rm(args) => remove(ctx, &args.ids).await,
        TaskCommand::Prune(args) => prune(ctx, args.older_than).await,
    }
}

/// `task rerun`: the task's request again, as a new task.
async fn rerun(ctx: &Ctx, args: RerunArgs) -> Result<(), CliError> {
    let id = resolve(ctx, &args.id).await?;
    let old = ctx.authed_client()?.get_task(id).await?;
    let request = CreateTaskRequest {
        agent: Some(old.agent_id),
        name: old.name,
        prompt: old.input.prompt,
        commands: old.input.commands,
        files: old.input.files,
        env: old.input.env,
        priority: Some(old.priority),
        depends_on: old.depends_on,
        timeout_seconds: old.timeout.map(|d| d.as_secs_f64()),
        max_attempts: Some(old.max_attempts),
    };
    submit(ctx, request, None, args.wait, args.follow, false).await
}

/// `task rm`: each task, stopping at the first that cannot be deleted.
async fn remove(ctx: &Ctx, names: &[String]) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    let mut deleted = Vec::new();
    for name in names {
        let id = resolve(ctx, name).await?;
        client.delete_task(id).await?;
        if !ctx.output.is_json() {
            outln!("deleted task {id}")?;
        }
        deleted.push(id);
    }
    if ctx.output.is_json() {
        print_json(&serde_json::json!({ "deleted": deleted }))?;
    }
    Ok(())
}

/// `task prune --older-than D`.
async fn prune(ctx: &Ctx, older_than: Duration) -> Result<(), CliError> {
    let answer = ctx
        .authed_client()?
        .prune_tasks(older_than.as_secs())
        .await?;
    if ctx.output.is_json() {
        print_json(&answer)
    } else {
        let s = if answer.deleted == 1 { "" } else { "s" };
        outln!("deleted {} finished task{s}", answer.deleted)
    }
}

/// The task `text` names: a full id; the end of one (at least
/// [`ids::MIN_TAIL`] characters, as tables show ids by their last 8); or a
/// task's name. Short ids and names are looked for among the [`ids::SCAN`]
/// newest tasks one may see; two matches are an error listing both.
async fn resolve(ctx: &Ctx, text: &str) -> Result<TaskId, CliError> {
    if let Ok(id) = text.trim().parse::<TaskId>() {
        return Ok(id);
    }
    let lookup = ids::Lookup::new("task", text);
    let client = ctx.authed_client()?;
    let mut matches: Vec<Task> = Vec::new();
    let mut before = None;
    let mut scanned = 0;
    while scanned < ids::SCAN {
        let page = client
            .list_tasks(&TaskListQuery {
                limit: Some(1000),
                before,
                ..TaskListQuery::default()
            })
            .await?;
        scanned += page.tasks.len();
        matches.extend(
            page.tasks
                .into_iter()
                .filter(|t| lookup.matches(&t.id.to_string(), t.name.as_deref())),
        );
        match page.next_cursor {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    lookup
        .one(matches, |t| (t.id.to_string(), t.name.clone()))
        .map(|t| t.id)
}

async fn create(ctx: &Ctx, args: CreateArgs) -> Result<(), CliError> {
    // Files first: a typo in a path fails before anything is sent.
    let files = read_task_files(&args.file)?;
    let request = CreateTaskRequest {
        agent: args.agent,
        name: args.name,
        prompt: args.prompt,
        commands: args.command,
        files,
        env: args.env.into_iter().collect::<BTreeMap<_, _>>(),
        priority: args.priority,
        depends_on: args.depends_on,
        timeout_seconds: args.timeout.map(|d| d.as_secs_f64()),
        max_attempts: args.max_attempts,
    };
    submit(
        ctx,
        request,
        args.idempotency_key.as_deref(),
        args.wait,
        args.follow,
        args.require_running,
    )
    .await
}

/// Creates a task (`create`, `rerun`) and reports it, or runs it to its end
/// with `wait`/`follow`.
async fn submit(
    ctx: &Ctx,
    request: CreateTaskRequest,
    idempotency_key: Option<&str>,
    wait: bool,
    follow_it: bool,
    require_running: bool,
) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    // A task for an agent that does not run waits in its queue until the
    // agent runs again: say so, or refuse when asked to.
    let idle_agent = match &request.agent {
        Some(agent) => match client.get_agent(agent).await {
            Ok(found) if !matches!(found.state, AgentState::Running | AgentState::Starting) => {
                Some((agent.clone(), found.state))
            }
            // A missing agent: the server's refusal says it best.
            _ => None,
        },
        None => None,
    };
    if let Some((agent, state)) = &idle_agent
        && require_running
    {
        return Err(CliError::AgentNotRunning {
            agent: agent.clone(),
            state: *state,
        });
    }
    let task = client.create_task(&request, idempotency_key).await?;
    if let Some((agent, state)) = &idle_agent {
        eprintln!(
            "warning: agent {agent} is {}: task {} waits in its queue until the agent runs again (reactor-fabric agent spawn --id {agent} ...); --require-running refuses instead",
            state.as_str(),
            task.id
        );
    }
    if wait || follow_it {
        // Like `docker run`: stdout is the task's; the id goes to stderr.
        eprintln!("created task {} (agent {})", task.id, task.agent_id);
        if follow_it && !ctx.output.is_json() {
            // Its exit is decided by the result below, which says it in full.
            let _ = follow(ctx, task.id).await;
        }
        return result(ctx, task.id, true, None, !follow_it).await;
    }
    if ctx.output.is_json() {
        return print_json(&task);
    }
    outln!(
        "created task {} ({}, agent {}, priority {})",
        task.id,
        task.status,
        task.agent_id,
        task.priority
    )?;
    if let Some(approval) = task
        .approval_id
        .filter(|_| task.status == fabric_core::TaskStatus::AwaitingApproval)
    {
        outln!(
            "a policy asks for an approval first: it runs once an approver runs 'reactor-fabric approval approve {approval}'"
        )?;
    }
    // Alone on the last line, for `id=$(reactor-fabric task create ... | tail -n1)`.
    outln!("{}", task.id)
}

/// Reads each `--file` as UTF-8 text, named by its file name in the task's working directory.
fn read_task_files(paths: &[PathBuf]) -> Result<Vec<TaskFile>, CliError> {
    let mut names = BTreeSet::new();
    let mut files = Vec::with_capacity(paths.len());
    for arg in paths {
        // `NAME=PATH` names the file in the task's directory (as kubectl's
        // `--from-file=key=path`); standard input has no name of its own.
        let (name, path) = match arg.to_str().and_then(|a| a.split_once('=')) {
            Some((name, path)) if !name.is_empty() && !name.contains('/') => {
                (name.to_owned(), Path::new(path))
            }
            _ => {
                if arg.as_os_str() == "-" {
                    return Err(CliError::Usage(
                        "--file -: standard input has no file name; name it: --file build.sh=-"
                            .into(),
                    ));
                }
                let name = arg
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| {
                        CliError::Usage(format!("--file {}: not a file name", arg.display()))
                    })?
                    .to_owned();
                (name, arg.as_path())
            }
        };
        let content = read_text_file(path)?;
        if !names.insert(name.clone()) {
            return Err(CliError::Usage(format!(
                "two --file arguments are named {name:?}: files land in one directory, rename one"
            )));
        }
        files.push(TaskFile {
            path: name,
            content,
        });
    }
    Ok(files)
}

fn read_text_file(path: &Path) -> Result<String, CliError> {
    let what = format!("--file {}", path.display());
    let bytes = super::read_capped(path, &what, |message| CliError::Other(anyhow!(message)))?;
    String::from_utf8(bytes).map_err(|_| {
        CliError::Other(anyhow!(
            "{what} is not UTF-8 text: only text files can be attached"
        ))
    })
}

async fn get(ctx: &Ctx, id: TaskId) -> Result<(), CliError> {
    let task = ctx.authed_client()?.get_task(id).await?;
    if ctx.output.is_json() {
        print_json(&task)
    } else {
        write_text(&describe_task(&task))
    }
}

/// `key: value` lines for `task get`.
fn describe_task(task: &Task) -> String {
    let mut lines: Vec<(&str, String)> = vec![("id", task.id.to_string())];
    if let Some(name) = &task.name {
        lines.push(("name", name.clone()));
    }
    lines.push(("status", task.status.to_string()));
    if let Some(reason) = &task.reason {
        lines.push(("reason", reason.clone()));
    }
    lines.push(("agent", task.agent_id.to_string()));
    lines.push(("priority", task.priority.to_string()));
    lines.push(("owner", task.owner.clone()));
    lines.push(("tenant", task.tenant.to_string()));
    lines.push(("attempt", format!("{}/{}", task.attempt, task.max_attempts)));
    if !task.depends_on.is_empty() {
        let deps: Vec<String> = task.depends_on.iter().map(TaskId::to_string).collect();
        lines.push(("depends_on", deps.join(", ")));
    }
    if let Some(timeout) = task.timeout {
        lines.push(("timeout", format!("{}s", timeout.as_secs_f64())));
    }
    lines.push(("created", task.created_at.to_string()));
    if let Some(t) = task.started_at {
        lines.push(("started", t.to_string()));
    }
    if let Some(t) = task.finished_at {
        lines.push(("finished", t.to_string()));
    }
    if let Some(prompt) = &task.input.prompt {
        lines.push(("prompt", prompt.clone()));
    }
    for command in &task.input.commands {
        lines.push(("command", command.clone()));
    }
    for file in &task.input.files {
        lines.push((
            "file",
            format!("{} ({} bytes)", file.path, file.content.len()),
        ));
    }
    for key in task.input.env.keys() {
        lines.push(("env", key.clone()));
    }
    if let Some(code) = task.result.as_ref().and_then(|r| r.exit_code) {
        lines.push(("exit_code", code.to_string()));
    }
    lines.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

async fn list(ctx: &Ctx, args: ListArgs) -> Result<(), CliError> {
    let query = TaskListQuery {
        status: args.status,
        agent: args.agent,
        priority: args.priority,
        search: args.search,
        limit: args.limit,
        before: args.before,
    };
    let page = ctx.authed_client()?.list_tasks(&query).await?;
    if ctx.output.is_json() {
        return print_json(&page);
    }
    if page.tasks.is_empty() {
        eprintln!("no tasks");
        return Ok(());
    }
    let wide = ctx.output.is_wide();
    let rows: Vec<Vec<String>> = page
        .tasks
        .iter()
        .map(|t| {
            // -q and wide print whole ids (for scripts); the table their tails.
            let id = if wide || crate::output::is_quiet() {
                t.id.to_string()
            } else {
                ids::short(&t.id)
            };
            let mut row = vec![
                id,
                t.status.to_string(),
                t.agent_id.to_string(),
                t.priority.to_string(),
                short_time(t.created_at),
            ];
            if wide {
                row.extend([
                    format!("{}/{}", t.attempt, t.max_attempts),
                    t.owner.clone(),
                    t.result
                        .as_ref()
                        .and_then(|r| r.exit_code)
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                    t.finished_at.map(short_time).unwrap_or_default(),
                    t.reason.clone().unwrap_or_default(),
                ]);
            }
            row.push(t.name.clone().unwrap_or_default());
            row
        })
        .collect();
    let header: &[&str] = if wide {
        &[
            "ID", "STATUS", "AGENT", "PRIORITY", "CREATED", "ATTEMPT", "OWNER", "EXIT", "FINISHED",
            "REASON", "NAME",
        ]
    } else {
        &["ID", "STATUS", "AGENT", "PRIORITY", "CREATED", "NAME"]
    };
    write_text(&table(header, &rows))?;
    if let Some(cursor) = page.next_cursor {
        eprintln!("more tasks: add --before {cursor}");
    }
    Ok(())
}

async fn cancel(ctx: &Ctx, id: TaskId) -> Result<(), CliError> {
    let task = ctx.authed_client()?.cancel_task(id).await?;
    if ctx.output.is_json() {
        print_json(&task)
    } else if task.status == TaskStatus::Canceled {
        outln!("canceled task {id}")
    } else {
        outln!("cancel requested for task {id} (now {})", task.status)
    }
}

/// `task result`; `with_output`: print the task's stdout and stderr too
/// (after `--follow` has streamed them already, only the status lines).
async fn result(
    ctx: &Ctx,
    id: TaskId,
    wait: bool,
    timeout: Option<Duration>,
    with_output: bool,
) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    let started = Instant::now();
    let mut delay = POLL_MIN;
    let view = loop {
        let view = client.task_result(id).await?;
        if view.status.is_terminal() || !wait {
            break view;
        }
        let mut sleep = delay;
        if let Some(limit) = timeout {
            let waited = started.elapsed();
            if waited >= limit {
                return Err(CliError::WaitTimedOut {
                    id,
                    status: view.status,
                    waited,
                });
            }
            sleep = sleep.min(limit - waited);
        }
        tokio::time::sleep(sleep).await;
        delay = (delay * 3 / 2).min(POLL_MAX);
    };

    if ctx.output.is_json() {
        print_json(&view)?;
    } else {
        let mut text = format!("status={}\n", view.status);
        if let Some(code) = view.result.as_ref().and_then(|r| r.exit_code) {
            text.push_str(&format!("exit_code={code}\n"));
        }
        if let Some(reason) = &view.reason {
            text.push_str(&format!("reason={reason}\n"));
        }
        if let Some(result) = &view.result {
            if let Some(error) = &result.error {
                text.push_str(&format!("error={error}\n"));
            }
            if let Some(output) = &result.output {
                text.push_str(&format!("output={output}\n"));
            }
        }
        if let Some(result) = view.result.as_ref().filter(|_| with_output) {
            push_block(&mut text, &result.stdout);
            if result.stdout_truncated {
                text.push_str("[stdout truncated]\n");
            }
            if !result.stderr.is_empty() || result.stderr_truncated {
                text.push_str("--- stderr ---\n");
                push_block(&mut text, &result.stderr);
                if result.stderr_truncated {
                    text.push_str("[stderr truncated]\n");
                }
            }
        }
        write_text(&text)?;
    }

    match view.status {
        TaskStatus::Completed => Ok(()),
        status if status.is_terminal() => Err(CliError::TaskUnsuccessful {
            id: view.id,
            status,
            reason: view.reason.clone(),
            exit_code: view.result.as_ref().and_then(|r| r.exit_code),
        }),
        status => Err(CliError::TaskNotFinished {
            id: view.id,
            status,
        }),
    }
}

fn push_block(text: &mut String, block: &str) {
    if block.is_empty() {
        return;
    }
    text.push_str(block);
    if !block.ends_with('\n') {
        text.push('\n');
    }
}

/// `task logs ID`: the recorded history, page by page.
async fn logs(ctx: &Ctx, id: TaskId) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    let mut cursor: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let page = client
            .task_events(id, cursor.as_deref(), EVENTS_PAGE)
            .await?;
        for event in page.events {
            if !ctx.output.is_json() {
                print_event(event.kind, &event.payload)?;
            }
            all.push(event);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    if ctx.output.is_json() {
        print_json(&fabric_core::api::EventList {
            events: all,
            next_cursor: None,
        })?;
    }
    Ok(())
}

/// `task logs ID --follow`: the WebSocket, until the server closes it after the task ended.
async fn follow(ctx: &Ctx, id: TaskId) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    let mut stream = client.stream_task(id).await?;
    let mut last_seq: Option<u64> = None;
    let mut last: Option<StreamMessage> = None;
    while let Some(text) = stream.next_text().await? {
        let message: StreamMessage = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => {
                // A newer server may send kinds this client does not know: pass them on, do not die.
                if ctx.output.is_json() {
                    let value = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                    print_json_line(&value)?;
                } else {
                    eprintln!(
                        "warning: skipping a stream message this client does not understand: {e}"
                    );
                }
                continue;
            }
        };
        // The server replays history before live events; never print one twice.
        if let Some(seq) = message.seq {
            if last_seq.is_some_and(|l| seq <= l) {
                continue;
            }
            last_seq = Some(seq);
        }
        if ctx.output.is_json() {
            print_json_line(&message)?;
        } else {
            print_event(message.kind, &message.payload)?;
        }
        if matches!(message.kind, EventKind::Result | EventKind::Error) {
            last = Some(message);
        }
    }
    drop(stream);
    finish_follow(&client, id, last).await
}

/// Decides the exit of `--follow` once the socket closed.
async fn finish_follow(
    client: &FabricClient,
    id: TaskId,
    last: Option<StreamMessage>,
) -> Result<(), CliError> {
    match last {
        // `error` ends the stream of a task that failed, was canceled or timed out: like
        // `task result`, say so with exit 1 so `task logs -f` can gate a script.
        Some(m) if m.kind == EventKind::Error => {
            let message = payload_str(&m.payload, "message");
            let status =
                payload_str(&m.payload, "status").and_then(|s| s.parse::<TaskStatus>().ok());
            match status {
                Some(status) if status.is_terminal() => Err(CliError::TaskUnsuccessful {
                    id,
                    status,
                    reason: message.or_else(|| payload_str(&m.payload, "reason")),
                    exit_code: m.payload["result"]["exit_code"]
                        .as_i64()
                        .and_then(|c| i32::try_from(c).ok()),
                }),
                _ => Err(CliError::Other(anyhow!(
                    "task {id}: {}",
                    message.unwrap_or_else(|| m.payload.to_string())
                ))),
            }
        }
        Some(_) => Ok(()),
        None => {
            // Closed without a final message: fine if the task is over, otherwise the stream broke.
            let task = client.get_task(id).await?;
            if task.status.is_terminal() {
                Ok(())
            } else {
                Err(CliError::Other(anyhow!(
                    "the stream of task {id} closed before the task finished (it is {}); \
                     run 'reactor-fabric task logs {id} --follow' again to resume",
                    task.status
                )))
            }
        }
    }
}

/// Human form of one event: the task's stdout on stdout, everything else on stderr, so
/// `reactor-fabric task logs ID > out.txt` captures exactly what the task printed.
fn print_event(kind: EventKind, payload: &Value) -> Result<(), CliError> {
    match kind {
        EventKind::Heartbeat => Ok(()),
        EventKind::Log => {
            let line = payload_str(payload, "line").unwrap_or_else(|| payload.to_string());
            if payload_str(payload, "stream").as_deref() == Some("stderr") {
                eprintln!("{line}");
                Ok(())
            } else {
                outln!("{line}")
            }
        }
        EventKind::Status => {
            let status = payload_str(payload, "status")
                .or_else(|| payload_str(payload, "to"))
                .unwrap_or_else(|| payload.to_string());
            match payload_str(payload, "reason") {
                Some(reason) => eprintln!("[status] {status} ({reason})"),
                None => eprintln!("[status] {status}"),
            }
            Ok(())
        }
        EventKind::Result | EventKind::Error => {
            eprintln!("{}", describe_end(kind, payload));
            Ok(())
        }
    }
}

/// `[result] status=completed exit_code=0`, `[error] status=failed exit_code=3 reason=agent_failed: ...`.
fn describe_end(kind: EventKind, payload: &Value) -> String {
    let mut line = format!("[{}]", kind.as_str());
    let status = payload_str(payload, "status");
    if let Some(status) = &status {
        line.push_str(&format!(" status={status}"));
    }
    let exit_code = payload
        .get("exit_code")
        .or_else(|| payload.get("result").and_then(|r| r.get("exit_code")))
        .and_then(Value::as_i64);
    if let Some(code) = exit_code {
        line.push_str(&format!(" exit_code={code}"));
    }
    let reason = payload_str(payload, "reason");
    if let Some(reason) = &reason {
        line.push_str(&format!(" reason={reason}"));
    }
    // The server falls back to the reason or status for the message; do not repeat them.
    if let Some(message) = payload_str(payload, "message")
        && Some(&message) != reason.as_ref()
        && Some(&message) != status.as_ref()
    {
        line.push_str(&format!(": {message}"));
    }
    line
}

fn payload_str(payload: &Value, key: &str) -> Option<String> {
    payload.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// `30s`, `5m`, `1h30m`, `250ms`, `2d`, or plain (fractional) seconds: `1.5`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || {
        format!("invalid duration {text:?}: use e.g. 30s, 5m, 1h30m, 250ms or plain seconds (1.5)")
    };
    if text.is_empty() {
        return Err(invalid());
    }
    let seconds = if let Ok(plain) = text.parse::<f64>() {
        plain
    } else {
        let mut total = 0.0;
        let mut rest = text;
        while !rest.is_empty() {
            let number_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let number: f64 = rest[..number_end].parse().map_err(|_| invalid())?;
            rest = &rest[number_end..];
            let unit_end = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit_seconds = match rest[..unit_end].trim() {
                "ms" => 0.001,
                "s" | "sec" | "secs" => 1.0,
                "m" | "min" | "mins" => 60.0,
                "h" | "hr" | "hrs" => 3600.0,
                "d" => 86400.0,
                _ => return Err(invalid()),
            };
            total += number * unit_seconds;
            rest = &rest[unit_end..];
        }
        total
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!(
            "invalid duration {text:?}: must be greater than zero"
        ));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| invalid())
}

/// [`parse_duration`] that also takes zero (`0`, `0s`): for settings where
/// zero means "not at all" (`serve --workdir-retention 0s`: remove at once).
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    let zero = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if zero.parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_duration(text)
}

/// `KEY=VALUE` for `--env`.
fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("invalid --env {text:?}: use KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_a_duration_where_it_may_be() {
        for zero in ["0", "0s", " 0ms ", "0.0h"] {
            assert_eq!(parse_duration_or_zero(zero), Ok(Duration::ZERO), "{zero}");
        }
        assert_eq!(parse_duration_or_zero("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration_or_zero("-1s").is_err());
        assert!(parse_duration_or_zero("soon").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0.5m"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration(" 2d "), Ok(Duration::from_secs(172_800)));
        for bad in [
            "", "s", "5x", "abc", "-1", "0", "0s", "inf", "NaN", "1.2.3s", "5m3",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_duration("5x").unwrap_err().contains("30s, 5m"));
    }

    #[test]
    fn env_pairs_parse() {
        assert_eq!(parse_env_pair("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env_pair("A="), Ok(("A".into(), String::new())));
        assert!(parse_env_pair("=x").is_err());
        assert!(parse_env_pair("A").is_err());
    }

    #[test]
    fn task_files_are_read_by_name_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, "data\n").unwrap();
        let files = read_task_files(std::slice::from_ref(&path)).unwrap();
        assert_eq!(
            files,
            vec![TaskFile {
                path: "in.txt".into(),
                content: "data\n".into()
            }]
        );

        let missing = dir.path().join("nope.txt");
        let err = read_task_files(&[missing]).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("cannot read --file"), "{err}");

        let binary = dir.path().join("bin");
        std::fs::write(&binary, [0xff, 0xfe]).unwrap();
        assert!(
            read_task_files(&[binary])
                .unwrap_err()
                .to_string()
                .contains("not UTF-8")
        );

        let other = dir.path().join("sub");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("in.txt"), "x").unwrap();
        let err = read_task_files(&[path, other.join("in.txt")]).unwrap_err();
        assert!(err.to_string().contains("two --file arguments"), "{err}");
    }

    #[test]
    fn create_needs_a_prompt_or_a_command() {
        use clap::Parser;
        let err =
            crate::Cli::try_parse_from(["reactor-fabric", "task", "create", "--priority", "high"])
                .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let ok = crate::Cli::try_parse_from([
            "reactor-fabric",
            "task",
            "create",
            "--command",
            "a",
            "--command",
            "b",
        ]);
        assert!(ok.is_ok());
        // A task may be named by a short id or its name: `x` parses, and is
        // looked up (tasks_are_found_by_short_id_or_name).
        assert!(crate::Cli::try_parse_from(["reactor-fabric", "task", "result", "x"]).is_ok());
        let err = crate::Cli::try_parse_from([
            "reactor-fabric",
            "task",
            "create",
            "--prompt",
            "x",
            "--timeout",
            "soon",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }
}
