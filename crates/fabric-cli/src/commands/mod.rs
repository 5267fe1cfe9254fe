//! The argument tree ([`Cli`]) and dispatch; one module per command group.

pub mod access;
pub mod agent;
pub mod auth;
pub mod budget;
pub mod completion;
pub mod config;
pub mod ids;
pub mod image;
pub mod instance;
pub mod mcp;
pub mod mock_llm;
pub mod node;
pub mod policy;
pub mod proxy;
pub mod serve;
pub mod status;
pub mod task;
pub mod version;

use clap::{Parser, Subcommand};

use crate::client::{ClientError, FabricClient};
use crate::config::{ClientSettings, TokenSource, process_env};
use crate::error::CliError;
use crate::output::OutputFormat;

/// Most bytes the CLI reads from one file it sends (`--file`, `-f`): the
/// server's request limit. `FABRIC_MAX_FILE_BYTES` changes it.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Reads at most the file limit of `path`, `-` being standard input (`what` names it in errors, e.g.
/// `--file build.sh`): a device like `/dev/zero` or a huge file is refused
/// (a usage error), not read into memory. A file that cannot be read is
/// `unreadable`'s error.
pub fn read_capped(
    path: &std::path::Path,
    what: &str,
    unreadable: fn(String) -> CliError,
) -> Result<Vec<u8>, CliError> {
    use std::io::Read as _;
    let limit = std::env::var("FABRIC_MAX_FILE_BYTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_MAX_FILE_BYTES);
    // `-` is standard input, as for most tools (`kubectl apply -f -`).
    let source: Box<dyn std::io::Read> = if path == std::path::Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(path)
                .map_err(|e| unreadable(format!("cannot read {what}: {e}")))?,
        )
    };
    let mut bytes = Vec::new();
    source
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(format!("cannot read {what}: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(CliError::Usage(format!(
            "{what} is larger than {limit} bytes, the most the CLI sends from one file (a request may carry 8 MiB); set FABRIC_MAX_FILE_BYTES to change it"
        )));
    }
    Ok(bytes)
}

/// [`read_capped`] as UTF-8 text; a file that cannot be read is a usage error.
pub fn read_capped_text(path: &std::path::Path, what: &str) -> Result<String, CliError> {
    String::from_utf8(read_capped(path, what, CliError::Usage)?)
        .map_err(|_| CliError::Usage(format!("{what} is not UTF-8 text")))
}

/// reactor-fabric: run AI agents safely. One binary: server, CLI and agent runner.
#[derive(Debug, Parser)]
#[command(name = "reactor-fabric", version = fabric_core::VERSION)]
pub struct Cli {
    /// Fabric server URL [env: FABRIC_URL; else the config file's url; else http://127.0.0.1:8080]
    #[arg(
        long,
        global = true,
        value_name = "URL",
        help_heading = "Global options"
    )]
    pub url: Option<String>,

    /// Output format: human text, wide (more columns), or json / yaml for scripts (streams: one object per line / one document each)
    #[arg(short, long, global = true, value_enum, default_value_t = OutputFormat::Human, help_heading = "Global options")]
    pub output: OutputFormat,

    /// Lists print only their ids (or names), one per line
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub quiet: bool,

    /// Use this context (a named server and its login; see 'config get-contexts') [env: FABRIC_CONTEXT; else the current context]
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        help_heading = "Global options"
    )]
    pub context: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version of this binary
    Version,
    /// Check that the fabric server answers (GET /healthz)
    Status,
    /// Run the fabric server in this process (API, scheduler, store, runtime)
    Serve(Box<serve::ServeArgs>),
    /// Run a container agent's inference sidecar (the fabric starts it; REQUIREMENTS §6)
    Proxy(proxy::ProxyArgs),
    /// Run a deterministic mock LLM server speaking the Ollama, OpenAI and Anthropic APIs
    MockLlm(mock_llm::MockLlmArgs),
    /// Log in, log out, show who you are
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Create, list, disable and delete tenants
    #[command(subcommand)]
    Tenant(access::TenantCommand),
    /// Create, list, disable and delete users; change passwords and roles
    #[command(subcommand)]
    User(access::UserCommand),
    /// Create, list and revoke API tokens
    #[command(subcommand)]
    Token(access::TokenCommand),
    /// Create, inspect, cancel and follow tasks
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Spawn, list, inspect and terminate agents
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Set, show, list and delete budgets (daily token, compute and cost limits)
    #[command(subcommand)]
    Budget(budget::BudgetCommand),
    /// Show an agent's, user's or tenant's usage: used, remaining, projection to the end of the period
    Usage(budget::UsageArgs),
    /// Apply, list, delete and check policies (allow / deny / require_approval rules)
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// List pending approvals, approve or deny them
    #[command(subcommand)]
    Approval(policy::ApprovalCommand),
    /// The audit trail of policy decisions, newest first
    Audit(policy::AuditArgs),
    /// MCP: the fabric's tools for an MCP host (serve)
    #[command(subcommand)]
    Mcp(mcp::McpCommand),
    /// Worker nodes: run this machine as one (--join URL), or list, drain and remove them, manage join tokens and the node config
    Node(Box<node::NodeArgs>),
    /// Start a namespaced Docker instance: network, orchestrator and Redis containers
    Start(instance::StartArgs),
    /// Remove a Docker instance: every container, network and volume labelled with it
    Down(instance::DownArgs),
    /// List Docker instances: status, containers, CPU, memory, URL
    #[command(visible_alias = "ls")]
    List,
    /// Build the images Docker instances run, locally (no registry needed)
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Print a shell completion script (bash, zsh or fish)
    Completion(completion::CompletionArgs),
    /// Named servers (contexts): set-context, use-context, get-contexts, current-context, delete-context
    #[command(subcommand)]
    Config(config::ConfigCommand),
}

/// What every client command gets: where the server is, which token to send, how to print.
#[derive(Debug)]
pub struct Ctx {
    pub settings: ClientSettings,
    pub output: OutputFormat,
}

impl Ctx {
    /// A client that sends the configured token, if any.
    pub fn client(&self) -> Result<FabricClient, CliError> {
        Ok(FabricClient::new(
            &self.settings.url,
            self.settings.token().map(str::to_owned),
        )?)
    }

    /// A client with a token; [`CliError::NotLoggedIn`] (exit 3) when there is none.
    pub fn authed_client(&self) -> Result<FabricClient, CliError> {
        match &self.settings.token {
            TokenSource::Env(t) | TokenSource::Login(t) => {
                Ok(FabricClient::new(&self.settings.url, Some(t.clone()))?)
            }
            TokenSource::Missing { stored_for } => Err(CliError::NotLoggedIn {
                url: self.settings.url.clone(),
                stored_for: stored_for.clone(),
            }),
        }
    }
}

/// The global options reach every subcommand (clap), but some have no use
/// for them: saying so beats ignoring them silently.
fn refuse_unused_globals(cli: &Cli) -> Result<(), CliError> {
    let client_options = cli.url.is_some()
        || cli.output != OutputFormat::Human
        || cli.quiet
        || cli.context.is_some();
    match &cli.command {
        Command::Serve(_) | Command::Proxy(_) | Command::MockLlm(_) | Command::Completion(_)
            if client_options =>
        {
            Err(CliError::Usage(
                "--url, --context, -o and -q are options of the commands that talk to a fabric server; \
                 this one has its own flags (see its --help)"
                    .into(),
            ))
        }
        Command::Node(args) if args.command.is_none() && client_options => Err(CliError::Usage(
            "the node process takes the orchestrator's URL from --join, not --url; --context, -o and -q are for the other node commands".into(),
        )),
        Command::Start(_) | Command::Down(_) | Command::List | Command::Image(_)
            if cli.url.is_some() || cli.context.is_some() =>
        {
            Err(CliError::Usage(
                "--url names a fabric server; instance commands talk to Docker (DOCKER_HOST) \
                 and print each instance's URL"
                    .into(),
            ))
        }
        // `set-context NAME --url URL` has a --url of its own (clap shares the name with the global).
        Command::Config(cmd)
            if cli.context.is_some()
                || (cli.url.is_some() && !matches!(cmd, config::ConfigCommand::SetContext(_))) =>
        {
            Err(CliError::Usage(
                "config edits the contexts in the config file: name them as arguments, not with --url or --context".into(),
            ))
        }
        Command::Config(cmd) if cli.quiet && !matches!(cmd, config::ConfigCommand::GetContexts) => {
            Err(CliError::Usage(
                "-q is for lists: of the config commands only get-contexts has one".into(),
            ))
        }
        Command::Version if cli.url.is_some() || cli.quiet || cli.context.is_some() => Err(CliError::Usage(
            "version prints this binary's version and takes only -o".into(),
        )),
        _ => Ok(()),
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    refuse_unused_globals(&cli)?;
    crate::output::configure(cli.output, cli.quiet);
    match cli.command {
        // Neither needs the client config: `version` works with no HOME, `serve` has its own.
        Command::Version => version::run(cli.output),
        Command::Completion(args) => completion::run(&args),
        Command::Config(cmd) => config::run(cmd, cli.output),
        Command::Serve(args) => serve::run(*args),
        Command::Proxy(args) => proxy::run(args),
        Command::MockLlm(args) => mock_llm::run(args),
        // Docker commands: no fabric server, so no client settings either.
        Command::Start(args) => block_on(instance::start(args, cli.output)),
        Command::Down(args) => block_on(instance::down(args, cli.output)),
        Command::List => block_on(instance::list(cli.output)),
        Command::Image(cmd) => block_on(image::run(cmd, cli.output)),
        // The node process: its own runtime and logging, no client settings.
        Command::Node(args) if args.command.is_none() => node::run_node(args.run),
        command => {
            // `mcp add NAME --url URL` names the MCP server's URL, which clap
            // also hands the global --url: the fabric is then the one of
            // FABRIC_URL or the context.
            let server_url = match &command {
                Command::Mcp(mcp::McpCommand::Add(add))
                    if add.url.is_some() && add.url == cli.url =>
                {
                    None
                }
                _ => cli.url.as_deref(),
            };
            let settings =
                ClientSettings::resolve(server_url, cli.context.as_deref(), &process_env)?;
            let ctx = Ctx {
                settings,
                output: cli.output,
            };
            block_on(async move {
                let outcome = match command {
                    Command::Status => status::run(&ctx).await,
                    Command::Auth(cmd) => auth::run(&ctx, cmd).await,
                    Command::Tenant(cmd) => access::run_tenant(&ctx, cmd).await,
                    Command::User(cmd) => access::run_user(&ctx, cmd).await,
                    Command::Token(cmd) => access::run_token(&ctx, cmd).await,
                    Command::Task(cmd) => task::run(&ctx, cmd).await,
                    Command::Agent(cmd) => agent::run(&ctx, cmd).await,
                    Command::Budget(cmd) => budget::run(&ctx, cmd).await,
                    Command::Usage(args) => budget::usage(&ctx, args).await,
                    Command::Policy(cmd) => policy::run(&ctx, cmd).await,
                    Command::Approval(cmd) => policy::run_approval(&ctx, cmd).await,
                    Command::Audit(args) => policy::run_audit(&ctx, args).await,
                    Command::Mcp(cmd) => mcp::run(&ctx, cmd).await,
                    Command::Node(args) => match args.command {
                        Some(cmd) => node::run(&ctx, cmd).await,
                        None => Ok(()),
                    },
                    Command::Version
                    | Command::Serve(_)
                    | Command::Proxy(_)
                    | Command::MockLlm(_)
                    | Command::Start(_)
                    | Command::Down(_)
                    | Command::List
                    | Command::Image(_)
                    | Command::Completion(_)
                    | Command::Config(_) => Ok(()),
                };
                match outcome {
                    // No token for a server that is not there: the server's
                    // absence is the first thing to fix (exit 6, not 3).
                    Err(CliError::NotLoggedIn { url, stored_for }) => {
                        match ctx.client()?.health().await {
                            Err(unreachable @ ClientError::Unreachable { .. }) => {
                                Err(unreachable.into())
                            }
                            _ => Err(CliError::NotLoggedIn { url, stored_for }),
                        }
                    }
                    other => other,
                }
            })
        }
    }
}

/// Runs a command's future. Commands wait on one thing at a time (or join a few):
/// a single-threaded runtime starts fastest.
fn block_on(command: impl Future<Output = Result<(), CliError>>) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CliError::Other(anyhow::Error::new(e).context("cannot start the async runtime"))
        })?;
    runtime.block_on(command)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_argument_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
