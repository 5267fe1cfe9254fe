//! `reactor-fabric node`: run this machine as a worker node of a fabric
//! (`node --join URL --token rfj_… --name n1`), and the admin's commands for
//! nodes (`node list`, `node token create`, `node drain`, `node config set`, ...).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use fabric_core::agent::IsolationLevel;
use fabric_core::node::{CreateJoinTokenRequest, NodeConfig, NodeConfigSpec, NodeView};

use super::Ctx;
use super::agent::ago;
use crate::error::CliError;
use crate::outln;
use crate::output::{print_json, table, write_text};

/// `node`: with `--join`, this machine runs as a node; else one of the subcommands.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: Option<NodeCommand>,
    #[command(flatten)]
    pub run: NodeRunArgs,
}

/// `reactor-fabric node --join URL ...`: the node process.
#[derive(Debug, Args)]
pub struct NodeRunArgs {
    /// Join the fabric whose orchestrator is at URL and run agents for it (the node connects out; it needs no inbound port)
    #[arg(long, env = "FABRIC_NODE_JOIN", value_name = "URL", required = true)]
    pub join: Option<String>,

    /// A join token (rfj_…, from 'node token create'); needed only for the first start, the node keeps its own credential in --data-dir
    #[arg(
        long,
        env = "FABRIC_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// This node's name (a-z, 0-9, '-') [default: the host name]
    /// A file holding the join token (instead of --token: not in argv or the environment)
    #[arg(
        long,
        env = "FABRIC_JOIN_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    #[arg(long, env = "FABRIC_NODE_NAME", value_name = "NAME")]
    pub name: Option<String>,

    /// A label agents select nodes by (--node-selector), repeatable: gpu=true
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// Where the node keeps its credential, config and agents' working directories
    #[arg(
        long,
        env = "FABRIC_NODE_DATA_DIR",
        value_name = "DIR",
        default_value = "/var/lib/reactor-fabric-node"
    )]
    pub data_dir: PathBuf,

    /// Trust this CA (a PEM file) for the orchestrator's TLS certificate, besides the usual roots
    #[arg(long, env = "FABRIC_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Where the node serves /readyz and /healthz [default: 127.0.0.1:8081, else a free loopback port if another node has it; the address is in DATA_DIR/readyz.addr]
    #[arg(long, env = "FABRIC_NODE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// The isolation levels to offer, comma-separated (none, process, container) [default: every level this machine can run]
    #[arg(long, value_delimiter = ',', value_name = "LEVELS", value_parser = parse_isolation)]
    pub isolation: Vec<IsolationLevel>,

    /// A node-local Ollama (http://127.0.0.1:11434) the node's agents call; else they go through the orchestrator's gateway
    #[arg(long, env = "FABRIC_NODE_OLLAMA", value_name = "URL")]
    pub ollama: Option<String>,

    /// Log format on stderr [default: pretty on a terminal, json otherwise]
    #[arg(long, env = "FABRIC_LOG_FORMAT", value_enum)]
    pub log_format: Option<super::serve::LogFormatArg>,
    #[command(flatten)]
    pub containers: super::serve::ContainerArgs,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// The nodes: status, isolation levels, CPU, memory, agents, labels, last heartbeat, config version
    #[command(visible_alias = "ls")]
    List,
    /// One node in full (capabilities, reasons it is not ready, refused config)
    #[command(visible_alias = "inspect")]
    Get { name: String },
    /// Place no new agents on a node
    Cordon { name: String },
    /// Let a node take agents again (ends a cordon or a drain)
    Uncordon { name: String },
    /// Move a node's agents off it and place no new ones
    Drain { name: String },
    /// Remove a node: its credential stops working at once
    #[command(visible_alias = "rm")]
    Remove { name: String },
    /// Create, list and revoke join tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show or change the config every node runs with (versioned; nodes apply and acknowledge it)
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token (printed once)
    Create {
        /// How long it admits nodes (at most 7d)
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = crate::commands::task::parse_duration)]
        expires: Duration,
        /// How many nodes may join with it; 0: any number until it expires
        #[arg(long, value_name = "N", default_value_t = 1)]
        uses: u32,
    },
    /// Join tokens, newest first (never their secrets)
    #[command(visible_alias = "ls")]
    List,
    /// Revoke a join token by its id (rfj_<id>_…)
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// The current node config and its version
    Show,
    /// Change the node config: the fields given replace those of the current one (a new version)
    Set(ConfigSetArgs),
}

#[derive(Debug, Args)]
pub struct ConfigSetArgs {
    /// Memory limit (MiB) of an agent that sets none
    #[arg(long, value_name = "MIB")]
    pub default_memory_mb: Option<u64>,
    /// CPU limit (cores) of an agent that sets none
    #[arg(long, value_name = "CORES")]
    pub default_cpu_cores: Option<f64>,
    /// Egress every agent on a node may reach (host:port), repeatable; replaces the current list
    #[arg(long, value_name = "HOST:PORT")]
    pub egress: Vec<String>,
    /// A node-local Ollama (http://…) the nodes' agents call instead of the orchestrator's gateway
    #[arg(long, value_name = "URL")]
    pub inference_upstream: Option<String>,
    /// The nodes' log filter (info, debug, warn,fabric_server=debug, ...)
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Clear a field, repeatable: default-memory-mb, default-cpu-cores, egress, inference-upstream, log-level
    #[arg(long, value_name = "FIELD")]
    pub unset: Vec<String>,
}

pub(crate) fn parse_label(text: &str) -> Result<(String, String), String> {
    fabric_core::node::parse_label(text)
}

fn parse_isolation(text: &str) -> Result<IsolationLevel, String> {
    match text.trim() {
        "none" => Ok(IsolationLevel::None),
        "process" => Ok(IsolationLevel::Process),
        "container" => Ok(IsolationLevel::Container),
        other => Err(format!(
            "unknown isolation level {other:?}: use none, process or container"
        )),
    }
}

/// Runs this machine as a node until SIGTERM or Ctrl-C.
pub fn run_node(args: NodeRunArgs) -> Result<(), CliError> {
    let orchestrator = args.join.clone().unwrap_or_default();
    let name = match args.name {
        Some(name) => name,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_ascii_lowercase())
            .unwrap_or_default(),
    };
    fabric_core::node::validate_node_name(&name)
        .map_err(|e| CliError::Usage(format!("--name: {e} (the host name is the default)")))?;
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("--token-file {}: {e}", path.display())))?
                .trim()
                .to_owned(),
        ),
        None => args.token,
    };
    let options = fabric_server::node::NodeOptions {
        orchestrator,
        join_token: token.filter(|t| !t.trim().is_empty()),
        name,
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
        data_dir: args.data_dir,
        ca_file: args.cacert,
        listen: args.listen,
        isolation: args.isolation,
        ollama: args.ollama,
        helper: super::serve::sandbox_helper(),
        containers: args.containers.config(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fabric-node")
        .build()
        .map_err(|e| {
            CliError::Other(anyhow::Error::new(e).context("cannot start the async runtime"))
        })?;
    let log_filter = fabric_server::telemetry::init_logging_reloadable(super::serve::log_format(
        args.log_format,
    ));
    runtime
        .block_on(fabric_server::node::run(options, log_filter, stop_signal()))
        .map_err(CliError::Other)
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub async fn run(ctx: &Ctx, command: NodeCommand) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    match command {
        NodeCommand::List => list(ctx, client.list_nodes().await?.nodes),
        NodeCommand::Get { name } => {
            let node = client.get_node(&name).await?;
            if ctx.output.is_json() {
                return print_json(&node);
            }
            write_text(&describe(&node))
        }
        NodeCommand::Cordon { name } => {
            show_change(ctx, client.node_action(&name, "cordon").await?, "cordoned")
        }
        NodeCommand::Uncordon { name } => show_change(
            ctx,
            client.node_action(&name, "uncordon").await?,
            "uncordoned",
        ),
        NodeCommand::Drain { name } => {
            show_change(ctx, client.node_action(&name, "drain").await?, "draining")
        }
        NodeCommand::Remove { name } => {
            client.remove_node(&name).await?;
            if ctx.output.is_json() {
                return print_json(&serde_json::json!({ "removed": name }));
            }
            outln!("removed node {name}: its credential no longer works")
        }
        NodeCommand::Token(TokenCommand::Create { expires, uses }) => {
            let created = client
                .create_join_token(&CreateJoinTokenRequest {
                    ttl_seconds: Some(expires.as_secs()),
                    max_uses: Some(uses),
                })
                .await?;
            if ctx.output.is_json() {
                return print_json(&created);
            }
            if crate::output::is_quiet() {
                return write_text(&created.token);
            }
            let uses = match created.view.max_uses {
                Some(1) => "once".to_owned(),
                Some(n) => format!("{n} times"),
                None => "any number of times".to_owned(),
            };
            outln!("{}", created.token)?;
            outln!(
                "join token {}: usable {uses} until {} (shown only now). On the node:\n  reactor-fabric node --join {} --token {} --name NAME",
                created.view.id,
                created.view.expires_at,
                ctx.settings.url,
                created.token
            )
        }
        NodeCommand::Token(TokenCommand::List) => {
            let list = client.list_join_tokens().await?;
            if ctx.output.is_json() {
                return print_json(&list);
            }
            if crate::output::is_quiet() {
                let ids: Vec<&str> = list.tokens.iter().map(|t| t.id.as_str()).collect();
                return write_text(&ids.join("\n"));
            }
            if list.tokens.is_empty() {
                return outln!("no join tokens: create one with reactor-fabric node token create");
            }
            let rows: Vec<Vec<String>> = list
                .tokens
                .iter()
                .map(|t| {
                    let state = if t.revoked {
                        "revoked"
                    } else if t.valid {
                        "valid"
                    } else if t.max_uses.is_some_and(|max| t.uses >= max) {
                        "used"
                    } else {
                        "expired"
                    };
                    vec![
                        t.id.clone(),
                        state.to_owned(),
                        match t.max_uses {
                            Some(max) => format!("{}/{max}", t.uses),
                            None => format!("{}/any", t.uses),
                        },
                        t.expires_at.to_string(),
                        if t.used_by.is_empty() {
                            "-".to_owned()
                        } else {
                            t.used_by.join(",")
                        },
                    ]
                })
                .collect();
            write_text(&table(&["ID", "STATE", "USES", "EXPIRES", "NODES"], &rows))
        }
        NodeCommand::Token(TokenCommand::Revoke { id }) => {
            let id = id
                .strip_prefix(fabric_core::node::JOIN_TOKEN_PREFIX)
                .map_or(id.as_str(), |rest| rest.split('_').next().unwrap_or(rest))
                .to_owned();
            let view = client.revoke_join_token(&id).await?;
            if ctx.output.is_json() {
                return print_json(&view);
            }
            outln!("revoked join token {}", view.id)
        }
        NodeCommand::Config(ConfigCommand::Show) => {
            let config = client.node_config().await?;
            show_config(ctx, &config)
        }
        NodeCommand::Config(ConfigCommand::Set(args)) => {
            let current = client.node_config().await?;
            let spec = merge(current.spec, args)?;
            let config = client.put_node_config(&spec).await?;
            if ctx.output.is_json() {
                return print_json(&config);
            }
            outln!(
                "node config version {}: nodes apply it now ('node list' shows the version each runs)",
                config.version
            )
        }
    }
}

/// The current spec with the flags' changes.
fn merge(mut spec: NodeConfigSpec, args: ConfigSetArgs) -> Result<NodeConfigSpec, CliError> {
    for field in &args.unset {
        match field.as_str() {
            "default-memory-mb" => spec.default_memory_mb = None,
            "default-cpu-cores" => spec.default_cpu_cores = None,
            "egress" => spec.egress.clear(),
            "inference-upstream" => spec.inference_upstream = None,
            "log-level" => spec.log_level = None,
            other => {
                return Err(CliError::Usage(format!(
                    "--unset {other}: use default-memory-mb, default-cpu-cores, egress, inference-upstream or log-level"
                )));
            }
        }
    }
    let nothing = args.default_memory_mb.is_none()
        && args.default_cpu_cores.is_none()
        && args.egress.is_empty()
        && args.inference_upstream.is_none()
        && args.log_level.is_none()
        && args.unset.is_empty();
    if nothing {
        return Err(CliError::Usage(
            "nothing to change: give --log-level, --egress, --inference-upstream, --default-memory-mb, --default-cpu-cores or --unset".into(),
        ));
    }
    if args.default_memory_mb.is_some() {
        spec.default_memory_mb = args.default_memory_mb;
    }
    if args.default_cpu_cores.is_some() {
        spec.default_cpu_cores = args.default_cpu_cores;
    }
    if !args.egress.is_empty() {
        spec.egress = args.egress;
    }
    if args.inference_upstream.is_some() {
        spec.inference_upstream = args.inference_upstream;
    }
    if args.log_level.is_some() {
        spec.log_level = args.log_level;
    }
    Ok(spec)
}

fn show_config(ctx: &Ctx, config: &NodeConfig) -> Result<(), CliError> {
    if ctx.output.is_json() {
        return print_json(config);
    }
    let s = &config.spec;
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let rows = vec![
        vec!["version".to_owned(), config.version.to_string()],
        vec![
            "default_memory_mb".to_owned(),
            or_dash(s.default_memory_mb.map(|v| v.to_string())),
        ],
        vec![
            "default_cpu_cores".to_owned(),
            or_dash(s.default_cpu_cores.map(|v| v.to_string())),
        ],
        vec![
            "egress".to_owned(),
            if s.egress.is_empty() {
                "-".to_owned()
            } else {
                s.egress.join(",")
            },
        ],
        vec![
            "inference_upstream".to_owned(),
            or_dash(s.inference_upstream.clone()),
        ],
        vec!["log_level".to_owned(), or_dash(s.log_level.clone())],
    ];
    write_text(&table(&["FIELD", "VALUE"], &rows))
}

fn show_change(ctx: &Ctx, node: NodeView, what: &str) -> Result<(), CliError> {
    if ctx.output.is_json() {
        return print_json(&node);
    }
    outln!(
        "node {} {what} (status {})",
        node.name,
        node.status.as_str()
    )
}

fn list(ctx: &Ctx, nodes: Vec<NodeView>) -> Result<(), CliError> {
    if ctx.output.is_json() {
        return print_json(&fabric_core::node::NodeList { nodes });
    }
    if crate::output::is_quiet() {
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        return write_text(&names.join("\n"));
    }
    if nodes.is_empty() {
        return outln!(
            "no worker nodes: create a join token with 'reactor-fabric node token create', then run 'reactor-fabric node --join URL --token TOKEN' on the machine"
        );
    }
    let now = {
        use fabric_core::Clock as _;
        fabric_core::SystemClock.now()
    };
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let c = &n.capabilities;
            vec![
                n.name.clone(),
                n.status.as_str().to_owned(),
                isolation(&c.isolation),
                c.cpus.to_string(),
                gib(c.memory_bytes),
                n.agents.to_string(),
                labels(&n.labels),
                n.last_seen.map_or("never".to_owned(), |at| ago(now, at)),
                match &n.config_error {
                    Some(refused) => format!("{} (refused {})", n.config_version, refused.version),
                    None => n.config_version.to_string(),
                },
            ]
        })
        .collect();
    write_text(&table(
        &[
            "NAME",
            "STATUS",
            "ISOLATION",
            "CPU",
            "MEMORY",
            "AGENTS",
            "LABELS",
            "LAST SEEN",
            "CONFIG",
        ],
        &rows,
    ))
}

fn describe(n: &NodeView) -> String {
    let c = &n.capabilities;
    let mut out = format!(
        "name: {}\nstatus: {}\nhostname: {}\nos: {}\nkernel: {}\narch: {}\ncpus: {}\nmemory: {}\nisolation: {}\ninference: {}{}\nversion: {}\nlabels: {}\nagents: {}\nconfig version: {}\njoined: {}\nlast seen: {}\ncredential expires: {}\n",
        n.name,
        n.status.as_str(),
        c.hostname,
        c.os,
        c.kernel,
        c.arch,
        c.cpus,
        gib(c.memory_bytes),
        isolation(&c.isolation),
        c.inference.mode,
        c.inference
            .url
            .as_deref()
            .map(|u| format!(" ({u})"))
            .unwrap_or_default(),
        c.version,
        labels(&n.labels),
        n.agents,
        n.config_version,
        n.joined_at,
        n.last_seen.map_or("never".to_owned(), |t| t.to_string()),
        n.credential_expires_at,
    );
    for (level, why) in &c.unavailable {
        out.push_str(&format!("unavailable {level}: {why}\n"));
    }
    for reason in &n.reasons {
        out.push_str(&format!("not ready: {reason}\n"));
    }
    if let Some(refused) = &n.config_error {
        out.push_str(&format!(
            "refused config {}: {}\n",
            refused.version, refused.error
        ));
    }
    out
}

fn isolation(levels: &[IsolationLevel]) -> String {
    if levels.is_empty() {
        return "-".to_owned();
    }
    levels
        .iter()
        .map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}
