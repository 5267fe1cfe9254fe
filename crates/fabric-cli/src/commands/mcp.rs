//! `reactor-fabric mcp`: the MCP servers agents' tools come from (`add`,
//! `list`, `tools`, `remove`), and the fabric as an MCP server for a host
//! on stdio (`serve`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use fabric_core::agent::IsolationLevel;
use fabric_core::mcp::{McpInstance, McpServerSpec};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

use super::Ctx;
use crate::client::{ClientError, FabricClient};
use crate::error::CliError;
use crate::outln;
use crate::output::{print_json, table, write_text};

#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Register an MCP server (or replace the one of that name): a stdio
    /// server the fabric runs (--command), or a remote one (--url)
    Add(Box<AddArgs>),
    /// The registered MCP servers
    #[command(visible_alias = "ls")]
    List,
    /// A server's tools: their names at an agent's MCP_URL and the actions
    /// their calls are checked as (starts the server if needed)
    Tools(NameArg),
    /// Unregister an MCP server; its running instances stop
    #[command(visible_alias = "rm")]
    Remove(NameArg),
    /// Serve the fabric's tools to an MCP host over stdio (create, wait for
    /// and cancel tasks; list agents; decide approvals), with the stored
    /// login or FABRIC_TOKEN. Configure a host with the command
    /// `reactor-fabric mcp serve`.
    Serve,
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The server's name
    pub name: String,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Its name: 1 to 32 of a-z, 0-9 and '-' (tools are then
    /// "<name>/<tool>" in an agent's --tools and policies)
    pub name: String,
    /// A stdio server: the command line the fabric runs
    #[arg(long, conflicts_with = "url", required_unless_present = "url")]
    pub command: Option<String>,
    /// A remote server: its Streamable HTTP endpoint
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// An environment variable of a stdio server (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A secret environment variable: stored by the fabric, never shown;
    /// KEY=@FILE reads the value from a file (repeatable)
    #[arg(long = "secret-env", value_name = "KEY=VALUE|KEY=@FILE")]
    pub secret_env: Vec<String>,
    /// A header sent to a remote server (repeatable)
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub header: Vec<String>,
    /// A secret header (Authorization, say): stored, never shown;
    /// NAME=@FILE reads the value from a file (repeatable)
    #[arg(long = "secret-header", value_name = "NAME=VALUE|NAME=@FILE")]
    pub secret_header: Vec<String>,
    /// process (default: a sandbox of its own) or none (a confined host
    /// process; admin only)
    #[arg(long, value_parser = parse_isolation)]
    pub isolation: Option<IsolationLevel>,
    /// Memory limit in MiB [default: 256]
    #[arg(long, value_name = "MB")]
    pub memory: Option<u64>,
    /// CPU limit in cores [default: 0.5]
    #[arg(long, value_name = "CORES")]
    pub cpus: Option<f64>,
    /// Egress the server may open: host:port, *.domain:port or a host (repeatable)
    #[arg(long = "egress", value_name = "RULE")]
    pub egress: Vec<String>,
    /// A host path the server may read, at the same path (repeatable)
    #[arg(long = "read-only", value_name = "PATH")]
    pub read_only: Vec<String>,
    /// A host directory the server may write: HOST:INSIDE, or one path for
    /// both (repeatable)
    #[arg(long = "read-write", value_name = "HOST:INSIDE")]
    pub read_write: Vec<String>,
    /// One instance per agent (for servers keeping per-user state) instead
    /// of one shared by every agent
    #[arg(long)]
    pub per_agent: bool,
    /// Longest a tool call may take [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Largest tool result passed on, in bytes [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub max_result_bytes: Option<u64>,
}

fn parse_isolation(text: &str) -> Result<IsolationLevel, String> {
    match text {
        "process" => Ok(IsolationLevel::Process),
        "none" => Ok(IsolationLevel::None),
        other => Err(format!(
            "{other:?}: MCP servers run at isolation process (a sandbox) or none"
        )),
    }
}

/// `KEY=VALUE` pairs into a map; with `files`, `KEY=@FILE` reads the value.
fn pairs(
    entries: &[String],
    flag: &str,
    files: bool,
) -> Result<BTreeMap<String, String>, CliError> {
    let mut map = BTreeMap::new();
    for entry in entries {
        let Some((key, value)) = entry.split_once('=') else {
            return Err(CliError::Usage(format!("{flag} {entry:?}: give KEY=VALUE")));
        };
        let value = match value.strip_prefix('@') {
            Some(path) if files => super::serve::read_secret_file(std::path::Path::new(path))
                .map_err(|e| CliError::Usage(format!("{flag} {key}: cannot read {path}: {e}")))?,
            _ => value.to_owned(),
        };
        if map.insert(key.to_owned(), value).is_some() {
            return Err(CliError::Usage(format!("{flag}: {key} is given twice")));
        }
    }
    Ok(map)
}

fn spec_of(args: AddArgs) -> Result<McpServerSpec, CliError> {
    let mut spec = McpServerSpec::stdio(&args.name, "");
    spec.command = args.command;
    spec.url = args.url;
    spec.description = args.description;
    spec.env = pairs(&args.env, "--env", false)?;
    spec.secret_env = pairs(&args.secret_env, "--secret-env", true)?;
    spec.headers = pairs(&args.header, "--header", false)?;
    spec.secret_headers = pairs(&args.secret_header, "--secret-header", true)?;
    if let Some(isolation) = args.isolation {
        spec.isolation = isolation;
    }
    if let Some(memory) = args.memory {
        spec.memory_mb = memory;
    }
    if let Some(cpus) = args.cpus {
        spec.cpu_cores = cpus;
    }
    spec.network_egress = args.egress;
    spec.read_only_paths = args.read_only;
    spec.read_write_paths = args.read_write;
    if args.per_agent {
        spec.instance = McpInstance::PerAgent;
    }
    if let Some(timeout) = args.timeout {
        spec.timeout_seconds = timeout;
    }
    if let Some(max) = args.max_result_bytes {
        spec.max_result_bytes = max;
    }
    // The server says what is wrong with the rest; a usage error first
    // for what the CLI can tell.
    spec.validate().map_err(|e| CliError::Usage(e.0))?;
    Ok(spec)
}

pub async fn run(ctx: &Ctx, command: McpCommand) -> Result<(), CliError> {
    match command {
        McpCommand::Add(args) => {
            let spec = spec_of(*args)?;
            let view = ctx.authed_client()?.put_mcp_server(&spec).await?;
            if ctx.output.is_json() {
                return print_json(&view);
            }
            outln!(
                "registered MCP server {} ({}); grant its tools with --tools \"{}/*\" (see: reactor-fabric mcp tools {})",
                view.name,
                view.transport,
                view.name,
                view.name
            )
        }
        McpCommand::List => list(ctx).await,
        McpCommand::Tools(args) => tools(ctx, &args.name).await,
        McpCommand::Remove(args) => {
            ctx.authed_client()?.delete_mcp_server(&args.name).await?;
            if ctx.output.is_json() {
                return print_json(&json!({"removed": args.name}));
            }
            outln!("removed MCP server {}", args.name)
        }
        McpCommand::Serve => serve(ctx).await,
    }
}

async fn list(ctx: &Ctx) -> Result<(), CliError> {
    let list = ctx.authed_client()?.list_mcp_servers().await?;
    if ctx.output.is_json() {
        return print_json(&list);
    }
    if crate::output::is_quiet() {
        let names: Vec<&str> = list.servers.iter().map(|s| s.name.as_str()).collect();
        return write_text(&names.join("\n"));
    }
    if list.servers.is_empty() {
        return outln!("no MCP servers: add one with reactor-fabric mcp add NAME --command CMD");
    }
    let rows: Vec<Vec<String>> = list
        .servers
        .iter()
        .map(|s| {
            let isolation = s.isolation.map_or("-", IsolationLevel::as_str).to_owned();
            let secrets: Vec<&str> = s
                .secret_env
                .iter()
                .chain(&s.secret_headers)
                .map(String::as_str)
                .collect();
            vec![
                s.name.clone(),
                s.transport.clone(),
                s.command
                    .clone()
                    .or_else(|| s.url.clone())
                    .unwrap_or_default(),
                isolation,
                match s.instance {
                    McpInstance::Shared => "shared".to_owned(),
                    McpInstance::PerAgent => "per-agent".to_owned(),
                },
                if secrets.is_empty() {
                    "-".to_owned()
                } else {
                    secrets.join(",")
                },
            ]
        })
        .collect();
    write_text(&table(
        &[
            "NAME",
            "TRANSPORT",
            "COMMAND/URL",
            "ISOLATION",
            "INSTANCE",
            "SECRETS",
        ],
        &rows,
    ))
}

async fn tools(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    let list = ctx.authed_client()?.mcp_server_tools(name).await?;
    if ctx.output.is_json() {
        return print_json(&list);
    }
    if crate::output::is_quiet() {
        let names: Vec<&str> = list.tools.iter().map(|t| t.name.as_str()).collect();
        return write_text(&names.join("\n"));
    }
    if list.tools.is_empty() {
        return outln!("MCP server {name} offers no tools");
    }
    let rows: Vec<Vec<String>> = list
        .tools
        .iter()
        .map(|t| {
            let description: String = t
                .description
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(70)
                .collect();
            vec![
                t.name.clone(),
                t.exposed_as.clone(),
                t.action.clone(),
                description,
            ]
        })
        .collect();
    write_text(&table(
        &["TOOL", "AGENTS SEE", "ACTION", "DESCRIPTION"],
        &rows,
    ))
}

/// Longest one message may take: `wait_task` waits up to 600 s.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(660);

/// Reads JSON-RPC messages line by line from stdin, hands each to the
/// server's `/mcp` (concurrently: a `wait_task` must not hold up a `ping`),
/// and writes each answer as one line to stdout. Nothing else is written to
/// stdout, which belongs to the protocol; problems go to stderr.
async fn serve(ctx: &Ctx) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    let stdout = Arc::new(Mutex::new(tokio::io::stdout()));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut calls = tokio::task::JoinSet::new();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| CliError::Other(anyhow::Error::new(e).context("cannot read stdin")))?
    {
        if line.trim().is_empty() {
            continue;
        }
        let client = client.clone();
        let stdout = Arc::clone(&stdout);
        calls.spawn(async move {
            if let Some(answer) = forward(&client, line).await {
                let mut out = stdout.lock().await;
                let mut text = answer.to_string();
                text.push('\n');
                if out.write_all(text.as_bytes()).await.is_err() || out.flush().await.is_err() {
                    eprintln!("reactor-fabric mcp serve: stdout is closed");
                }
            }
        });
        while calls.try_join_next().is_some() {}
    }
    // The host closed stdin: finish what it asked before exiting.
    while calls.join_next().await.is_some() {}
    Ok(())
}

/// One message to the server; its answer (a JSON-RPC error naming the
/// problem when the server could not be asked), `None` for a notification.
async fn forward(client: &FabricClient, line: String) -> Option<Value> {
    let message: Value = match serde_json::from_str(&line) {
        Ok(message) => message,
        Err(e) => {
            return Some(json!({"jsonrpc": "2.0", "id": null,
                "error": {"code": -32700, "message": format!("not a JSON-RPC message: {e}")}}));
        }
    };
    let id = message.get("id").cloned();
    match client
        .mcp_post(
            line.into_bytes(),
            &routing_headers(&message),
            MESSAGE_TIMEOUT,
        )
        .await
    {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("reactor-fabric mcp serve: {e}");
            // A notification gets no answer, not even an error.
            let id = id?;
            let message = match &e {
                ClientError::Api { code, message, .. } => format!("{code}: {message}"),
                other => other.to_string(),
            };
            Some(json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": message}}))
        }
    }
}

/// The HTTP transport's routing headers, taken from the message itself (a
/// stdio client sends none): the version of a 2026-07-28 request, its
/// method, the tool a `tools/call` names.
fn routing_headers(message: &Value) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    if let Some(version) = message
        .pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion")
        .and_then(Value::as_str)
    {
        headers.push(("mcp-protocol-version", version.to_owned()));
    }
    if let Some(method) = message.get("method").and_then(Value::as_str) {
        headers.push(("mcp-method", method.to_owned()));
        if method == "tools/call"
            && let Some(name) = message.pointer("/params/name").and_then(Value::as_str)
        {
            headers.push(("mcp-name", header_value(name)));
        }
    }
    headers
}

/// A header value as the transport carries it: printable ASCII as is,
/// anything else base64 in `=?base64?…?=`.
fn header_value(value: &str) -> String {
    use base64::Engine as _;
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) && value.trim() == value {
        value.to_owned()
    } else {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(value)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_headers_come_from_the_message() {
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "wait_task", "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
        assert_eq!(
            routing_headers(&call),
            vec![
                ("mcp-protocol-version", "2026-07-28".to_owned()),
                ("mcp-method", "tools/call".to_owned()),
                ("mcp-name", "wait_task".to_owned()),
            ]
        );
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}});
        assert_eq!(
            routing_headers(&init),
            vec![("mcp-method", "initialize".to_owned())]
        );
        assert_eq!(header_value("zeit ü"), "=?base64?emVpdCDDvA==?=");
    }
}
