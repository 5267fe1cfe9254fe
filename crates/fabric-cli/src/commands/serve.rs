//! `reactor-fabric serve`: the embedded fabric (REQUIREMENTS §2.1) in this process.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{self, create_private_dir, process_env};
use crate::error::CliError;

/// First admin's password; generated and printed once by the server when unset.
/// Only from the environment: a flag would show it in `ps`.
pub const ENV_ADMIN_PASSWORD: &str = "FABRIC_ADMIN_PASSWORD";
/// A file holding the first admin's password (the Docker secrets convention), read
/// when `FABRIC_ADMIN_PASSWORD` is unset. Docker instances use it so the password is
/// in neither the container's config nor its environment.
pub const ENV_ADMIN_PASSWORD_FILE: &str = fabric_docker::instance::ENV_ADMIN_PASSWORD_FILE;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address the HTTP API listens on
    #[arg(
        long,
        env = "FABRIC_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Where the database and task working directories live
    /// [default: $XDG_DATA_HOME/reactor-fabric or ~/.local/share/reactor-fabric]
    #[arg(long, env = "FABRIC_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Where tasks, users and agents are stored: `sqlite` (a file in the data dir)
    /// or a Redis URL, redis://[:PASSWORD@]HOST[:PORT][/DB] (put a password in
    /// FABRIC_STORE rather than the flag, which `ps` shows)
    // The env value may hold a password: never print it in --help.
    #[arg(
        long,
        env = "FABRIC_STORE",
        value_name = "URL",
        default_value = "sqlite",
        hide_env_values = true
    )]
    pub store: String,

    /// A file holding the Redis store's password (one line), kept out of the URL, `ps` and `docker inspect`
    #[arg(long, env = "FABRIC_STORE_PASSWORD_FILE", value_name = "PATH")]
    pub store_password_file: Option<PathBuf>,

    /// Prefix of every Redis key, so several instances can share one Redis
    #[arg(long, env = "FABRIC_STORE_PREFIX", value_name = "PREFIX",
          default_value = fabric_server::DEFAULT_STORE_PREFIX)]
    pub store_prefix: String,

    /// With a Redis store: how long this orchestrator's leadership of the key
    /// prefix lasts unless renewed (every third of it), i.e. how soon a standby
    /// sharing the prefix takes over after it dies (e.g. 10s, 2500ms)
    #[arg(long, env = "FABRIC_LEADER_TTL", value_name = "DURATION", default_value = "10s",
          value_parser = parse_leader_ttl)]
    pub leader_ttl: std::time::Duration,

    /// Tasks the built-in shell agent runs at the same time
    #[arg(long, env = "FABRIC_SHELL_CONCURRENCY", value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub shell_concurrency: u16,

    /// Where the built-in shell agent runs tasks: auto (a sandbox where this host can
    /// make one, i.e. as root; else host processes confined by Landlock and seccomp),
    /// process (a sandbox, or refuse to start) or none (confined host processes)
    #[arg(long, env = "FABRIC_SHELL_ISOLATION", value_name = "LEVEL", default_value = "auto",
          value_parser = fabric_server::ShellIsolation::parse)]
    pub shell_isolation: fabric_server::ShellIsolation,

    /// Run the built-in shell agent's tasks unconfined as this server's own user: they can
    /// read everything it can (its environment, the data directory). Only when everyone
    /// who may create tasks is trusted with that
    #[arg(long, env = "FABRIC_SHELL_AS_FABRIC_USER")]
    pub shell_as_fabric_user: bool,

    /// Egress the sandboxed shell agent's tasks may use (through HTTP(S)_PROXY),
    /// repeatable: host:port, *.domain:port or a bare host [default: no network]
    #[arg(long, env = "FABRIC_SHELL_EGRESS", value_name = "HOST:PORT", value_delimiter = ',',
          value_parser = crate::commands::agent::parse_egress_flag)]
    pub shell_egress: Vec<String>,

    /// A directory agents' isolation.filesystem_root may lie in, repeatable (absolute);
    /// none given: no agent may choose where its working dir goes
    #[arg(long, env = "FABRIC_AGENT_ROOTS", value_name = "DIR", value_delimiter = ',',
          value_parser = parse_agent_root)]
    pub agent_root: Vec<PathBuf>,

    /// API connections served at once; past it, a small reserve still answers /healthz,
    /// /readyz, /metrics and the agent protocol (others get 503 server_busy)
    #[arg(long, env = "FABRIC_MAX_CONNECTIONS", value_name = "N", default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// API connections one client address may hold at once (more are closed at once)
    #[arg(long, env = "FABRIC_MAX_CONNECTIONS_PER_ADDRESS", value_name = "N", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_address: u32,

    /// Time a client has to send a request's headers; also how long a keep-alive
    /// connection may sit idle (e.g. 15s)
    #[arg(long, env = "FABRIC_HEADER_TIMEOUT", value_name = "DURATION", default_value = "15s",
          value_parser = crate::commands::task::parse_duration)]
    pub header_timeout: std::time::Duration,

    /// How long a finished task's working directory is kept before it is
    /// removed (its result stays in the store); 0s removes it at once (e.g. 1h)
    #[arg(long, env = "FABRIC_WORKDIR_RETENTION", value_name = "DURATION", default_value = "0s",
          value_parser = crate::commands::task::parse_duration_or_zero)]
    pub workdir_retention: std::time::Duration,

    /// How long finished tasks and their events are kept, from their creation;
    /// older ones are deleted (0s keeps them for ever)
    #[arg(long, env = "FABRIC_TASK_RETENTION", value_name = "DURATION", default_value = "30d",
          value_parser = crate::commands::task::parse_duration_or_zero)]
    pub task_retention: std::time::Duration,

    /// Most tasks that may wait for one agent; beyond it creating a task answers 429
    #[arg(long, env = "FABRIC_MAX_QUEUE_DEPTH", value_name = "N", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queue_depth: u32,

    #[command(flatten)]
    pub containers: ContainerArgs,

    /// Inference gateway config (TOML: providers, policy, model map, timeouts, prices);
    /// OLLAMA_BASE_URL, OPENAI_BASE_URL + OPENAI_API_KEY and ANTHROPIC_API_KEY add
    /// providers it does not define, FABRIC_GATEWAY_POLICY overrides its policy
    #[arg(long, env = "FABRIC_GATEWAY_CONFIG", value_name = "FILE")]
    pub gateway_config: Option<PathBuf>,

    /// Log format on stderr [default: pretty on a terminal, json otherwise]
    #[arg(long, env = "FABRIC_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormatArg>,

    /// POST every alert (error rate, crash loop, budget exceeded) to this URL as JSON
    #[arg(long, env = "FABRIC_ALERT_WEBHOOK", value_name = "URL")]
    pub alert_webhook: Option<String>,

    /// Failed share of tasks (or 5xx share of requests) over --alert-window that raises an alert
    #[arg(
        long,
        env = "FABRIC_ALERT_ERROR_RATE",
        value_name = "RATIO",
        default_value_t = 0.5
    )]
    pub alert_error_rate: f64,

    /// Window the error rates are measured over (e.g. 5m)
    #[arg(long, env = "FABRIC_ALERT_WINDOW", value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub alert_window: std::time::Duration,

    /// Let a browser frontend on ORIGIN (scheme://host[:port]) call the API; repeatable (env: comma-separated). None by default; '*' is refused
    #[arg(
        long = "cors-origin",
        env = "FABRIC_CORS_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<fabric_server::cors::Origin>,

    /// API requests per second per user, in bursts of one second's worth (429 beyond); 0: no limit. Agents' tokens are not counted
    #[arg(
        long,
        env = "FABRIC_RATE_LIMIT_RPS",
        value_name = "N",
        default_value_t = fabric_server::services::limits::DEFAULT_REQUESTS_PER_SECOND
    )]
    pub rate_limit_rps: u32,

    /// Requests without valid credentials per second per client address, in bursts of 10 seconds' worth (429 beyond); 0: no limit
    #[arg(
        long,
        env = "FABRIC_UNAUTHENTICATED_RPS",
        value_name = "N",
        default_value_t = fabric_server::services::limits::DEFAULT_UNAUTHENTICATED_PER_SECOND
    )]
    pub unauthenticated_rps: u32,

    /// LLM tokens (prompt + completion) per minute per user through the gateway (429 beyond) [default: no limit]
    #[arg(long, env = "FABRIC_LLM_TPM", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub llm_tokens_per_minute: Option<u64>,

    /// How often worker nodes report in (each report is a long poll of this length)
    #[arg(long, env = "FABRIC_NODE_HEARTBEAT_INTERVAL", value_name = "DURATION", default_value = "2s",
          value_parser = crate::commands::task::parse_duration)]
    pub node_heartbeat_interval: std::time::Duration,

    /// A worker node without a report for this long is unreachable
    #[arg(long, env = "FABRIC_NODE_HEARTBEAT_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = crate::commands::task::parse_duration)]
    pub node_heartbeat_timeout: std::time::Duration,

    /// How long a worker node's credential is valid (nodes renew it at half of that)
    #[arg(long, env = "FABRIC_NODE_CREDENTIAL_TTL", value_name = "DURATION", default_value = "24h",
          value_parser = crate::commands::task::parse_duration)]
    pub node_credential_ttl: std::time::Duration,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    // One JSON object per line (no doc comments: they would bloat `--help`).
    Json,
    // Human-readable lines.
    Pretty,
}

/// The flag's (or `FABRIC_LOG_FORMAT`'s) format; else readable lines for a
/// person at a terminal, JSON lines for a log pipeline or a file.
pub(crate) fn log_format(chosen: Option<LogFormatArg>) -> fabric_server::LogFormat {
    use std::io::IsTerminal as _;
    match chosen {
        Some(format) => format.into(),
        None if std::io::stderr().is_terminal() => fabric_server::LogFormat::Pretty,
        None => fabric_server::LogFormat::Json,
    }
}

impl From<LogFormatArg> for fabric_server::LogFormat {
    fn from(value: LogFormatArg) -> Self {
        match value {
            LogFormatArg::Json => fabric_server::LogFormat::Json,
            LogFormatArg::Pretty => fabric_server::LogFormat::Pretty,
        }
    }
}

pub fn run(args: ServeArgs) -> Result<(), CliError> {
    if args.node_heartbeat_timeout <= args.node_heartbeat_interval {
        return Err(CliError::Usage(format!(
            "--node-heartbeat-timeout ({:?}) must be longer than --node-heartbeat-interval ({:?}), or every node would look unreachable between two reports",
            args.node_heartbeat_timeout, args.node_heartbeat_interval
        )));
    }
    let mut store = fabric_server::StoreConfig::parse(&args.store, &args.store_prefix)
        .map_err(|e| CliError::Usage(format!("--store: {e}")))?;
    if let Some(path) = &args.store_password_file {
        let password = read_secret_file(path).map_err(|e| {
            CliError::Other(anyhow::anyhow!(
                "cannot read the store password file {}: {e}",
                path.display()
            ))
        })?;
        store = store
            .with_password(&password)
            .map_err(|e| CliError::Usage(format!("--store-password-file: {e}")))?;
    }
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => config::default_data_dir(&process_env)?,
    };
    create_private_dir(&data_dir).map_err(|e| {
        CliError::Other(anyhow::anyhow!(
            "cannot create the data directory {}: {e}",
            data_dir.display()
        ))
    })?;
    // Keys come from the environment or secret files, never from flags.
    let gateway = fabric_gateway::GatewayConfig::load(args.gateway_config.as_deref(), &process_env)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let server_config = fabric_server::ServerConfig {
        listen: args.listen,
        data_dir,
        store,
        leader_ttl: args.leader_ttl,
        admin_password: admin_password()?,
        shell_concurrency: usize::from(args.shell_concurrency),
        shell_isolation: args.shell_isolation,
        shell_as_fabric_user: args.shell_as_fabric_user,
        shell_egress: args.shell_egress,
        agent_roots: args.agent_root,
        listen_limits: fabric_server::listen::ListenLimits {
            max_connections: args.max_connections as usize,
            max_per_address: args.max_connections_per_address as usize,
            header_timeout: args.header_timeout,
        },
        max_queue_depth: args.max_queue_depth as usize,
        workdir_retention: args.workdir_retention,
        task_retention: args.task_retention,
        sandbox_helper: sandbox_helper(),
        containers: args.containers.config(),
        gateway,
        telemetry: telemetry_config(args.alert_webhook, args.alert_error_rate, args.alert_window)?,
        cors_origins: args.cors_origins,
        limits: fabric_server::services::limits::LimitsConfig {
            requests_per_second: args.rate_limit_rps,
            llm_tokens_per_minute: args.llm_tokens_per_minute,
            unauthenticated_per_second: args.unauthenticated_rps,
        },
        nodes: fabric_server::services::nodes::NodeTimings {
            heartbeat_interval: args.node_heartbeat_interval,
            heartbeat_timeout: args.node_heartbeat_timeout,
            credential_ttl: args.node_credential_ttl,
        },
        // The remaining knobs (scheduler timings, output limit) keep the server's defaults.
        ..fabric_server::ServerConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fabric")
        .build()
        .map_err(|e| {
            CliError::Other(anyhow::Error::new(e).context("cannot start the async runtime"))
        })?;
    fabric_server::init_logging(log_format(args.log_format));
    runtime
        .block_on(fabric_server::serve(server_config))
        .map_err(CliError::Other)
}

/// Trace export from the standard `OTEL_*` variables, alert settings from flags.
fn telemetry_config(
    webhook: Option<String>,
    error_rate: f64,
    window: std::time::Duration,
) -> Result<fabric_server::TelemetryConfig, CliError> {
    let otlp = fabric_server::trace::OtlpConfig::from_env().map_err(CliError::Usage)?;
    if !(0.0..=1.0).contains(&error_rate) {
        return Err(CliError::Usage(format!(
            "--alert-error-rate {error_rate} is not a ratio: give a number from 0 to 1 (0.5 = half of the tasks failed)"
        )));
    }
    let webhook = webhook.filter(|w| !w.trim().is_empty());
    if let Some(url) = &webhook
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(CliError::Usage(
            "--alert-webhook must be an http:// or https:// URL".to_owned(),
        ));
    }
    Ok(fabric_server::TelemetryConfig {
        otlp,
        alerts: fabric_server::services::alerts::AlertConfig {
            webhook,
            error_rate_threshold: error_rate,
            error_window: window.max(std::time::Duration::from_secs(1)),
            // Short windows (tests, demos) are looked at more often.
            check_every: (window / 10).clamp(
                std::time::Duration::from_millis(100),
                std::time::Duration::from_secs(5),
            ),
            ..Default::default()
        },
    })
}

/// `FABRIC_ADMIN_PASSWORD`, else the contents of `FABRIC_ADMIN_PASSWORD_FILE` (one
/// trailing newline dropped), else none (the server generates one).
fn admin_password() -> Result<Option<String>, CliError> {
    if let Some(password) = process_env(ENV_ADMIN_PASSWORD) {
        return Ok(Some(password));
    }
    let Some(path) = process_env(ENV_ADMIN_PASSWORD_FILE).filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    read_secret_file(std::path::Path::new(&path))
        .map(Some)
        .map_err(|e| {
            CliError::Other(anyhow::anyhow!(
                "cannot read {ENV_ADMIN_PASSWORD_FILE} {path}: {e}"
            ))
        })
}

/// A secret file's contents without one trailing line end.
pub(crate) fn read_secret_file(path: &std::path::Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    Ok(secret.strip_suffix('\r').unwrap_or(secret).to_owned())
}

/// `--agent-root`: an absolute directory path without `.` or `..`, not `/`.
fn parse_agent_root(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if !fabric_core::agent::is_plain_path_below_root(&path) {
        return Err(format!(
            "{text:?}: give an absolute directory below / without . or .."
        ));
    }
    Ok(path)
}

/// `--leader-ttl`: a duration of at least 300 ms (renewals go every third
/// of it, and each needs a round trip to Redis).
fn parse_leader_ttl(text: &str) -> Result<std::time::Duration, String> {
    let ttl = crate::commands::task::parse_duration(text)?;
    if ttl < std::time::Duration::from_millis(300) {
        return Err("the leader TTL must be at least 300ms".to_owned());
    }
    Ok(ttl)
}

/// Hidden subcommand through which this binary acts as the sandbox helper of
/// isolation `process` (see `fabric_runtime::sandbox`).
pub const SANDBOX_HELPER_ARG: &str = "__sandbox-helper";

/// Isolation `container`: images and, in a Docker instance, where sidecars
/// find their sockets (`serve` and `node` take the same flags).
#[derive(Debug, Clone, clap::Args)]
pub struct ContainerArgs {
    /// Image of container agents without their own (the built-in shell, a command)
    /// [default: built from this host's busybox, or its shell and tools]
    #[arg(long, env = "FABRIC_AGENT_IMAGE", value_name = "IMAGE")]
    pub agent_image: Option<String>,

    /// Image of container agents' sidecars; its entrypoint must be reactor-fabric
    /// [default: built from this binary]
    #[arg(long, env = "FABRIC_PROXY_IMAGE", value_name = "IMAGE")]
    pub proxy_image: Option<String>,

    /// The Docker instance this server runs in (set by 'reactor-fabric start')
    #[arg(long, env = "FABRIC_INSTANCE", value_name = "NAME", hide = true)]
    pub instance: Option<String>,

    /// A named volume shared with sidecars for their sockets (set by 'reactor-fabric start')
    #[arg(
        long,
        env = "FABRIC_SOCKET_VOLUME",
        value_name = "VOLUME",
        hide = true,
        requires = "socket_dir"
    )]
    pub socket_volume: Option<String>,

    /// Where --socket-volume is mounted in this server's container
    #[arg(long, env = "FABRIC_SOCKET_DIR", value_name = "DIR", hide = true)]
    pub socket_dir: Option<PathBuf>,
}

impl ContainerArgs {
    pub(crate) fn config(self) -> fabric_server::ContainerConfig {
        fabric_server::ContainerConfig {
            docker_host: None,
            agent_image: self.agent_image.filter(|i| !i.is_empty()),
            proxy_image: self.proxy_image.filter(|i| !i.is_empty()),
            // The sidecar runs `reactor-fabric proxy` from an image of this very binary.
            proxy_binary: std::env::current_exe().ok(),
            instance: self.instance.filter(|i| !i.is_empty()),
            socket_volume: match (self.socket_volume, self.socket_dir) {
                (Some(name), Some(local_dir)) if !name.is_empty() => {
                    Some(fabric_server::SocketVolume { name, local_dir })
                }
                _ => None,
            },
        }
    }
}

/// This very binary, as the sandbox helper.
pub(crate) fn sandbox_helper() -> Option<fabric_server::HelperCommand> {
    let exe = std::env::current_exe().ok()?;
    Some(fabric_server::HelperCommand {
        program: exe,
        args: vec![SANDBOX_HELPER_ARG.into()],
    })
}
