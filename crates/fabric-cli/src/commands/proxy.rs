//! `reactor-fabric proxy`: the inference sidecar of a container agent (REQUIREMENTS §6).
//!
//! The fabric starts it in a container of its own image that shares the agent
//! container's network namespace; see `fabric_server::proxy`. Not for people,
//! but harmless to run by hand against a socket directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::commands::serve::LogFormatArg;
use crate::error::CliError;

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Directory with the fabric's sockets for this agent: inference.sock, api.sock, egress.sock
    #[arg(long, value_name = "DIR")]
    pub socket_dir: PathBuf,
    /// Where the inference endpoint (the agent's OLLAMA_BASE_URL) listens
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:11434")]
    pub inference_listen: SocketAddr,
    /// Where the fabric API (the agent's FABRIC_URL) listens, forwarded to api.sock
    #[arg(long, value_name = "ADDR")]
    pub api_listen: Option<SocketAddr>,
    /// Where the egress proxy (the agent's HTTP_PROXY) listens, forwarded to egress.sock
    #[arg(long, value_name = "ADDR")]
    pub egress_listen: Option<SocketAddr>,
    /// Longest an inference request may take, response included (then 504)
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub timeout_secs: u64,
    /// Log format on stderr
    #[arg(long, env = "FABRIC_LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Json)]
    pub log_format: LogFormatArg,
}

pub fn run(args: ProxyArgs) -> Result<(), CliError> {
    let config = fabric_server::proxy::SidecarConfig {
        socket_dir: args.socket_dir,
        inference_listen: args.inference_listen,
        api_listen: args.api_listen,
        egress_listen: args.egress_listen,
        timeout: Duration::from_secs(args.timeout_secs.max(1)),
    };
    // Two workers are plenty for one agent's traffic, and keep the sidecar small.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("proxy")
        .build()
        .map_err(|e| {
            CliError::Other(anyhow::Error::new(e).context("cannot start the async runtime"))
        })?;
    fabric_server::init_logging(args.log_format.into());
    runtime
        .block_on(fabric_server::proxy::run_sidecar(config, terminated()))
        .map_err(CliError::Other)
}

/// SIGTERM (`docker stop`) or Ctrl-C.
async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
