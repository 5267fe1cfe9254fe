//! The reactor-fabric server (work in progress: the API lands in the next commits).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line (the default; what log pipelines want).
    #[default]
    Json,
    /// Human-readable lines for a terminal.
    Pretty,
}

/// Everything `reactor-fabric serve` needs to know.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the API listens (`--listen`, `FABRIC_LISTEN`; default 127.0.0.1:8080).
    pub listen: SocketAddr,
    /// Where the SQLite database and task working dirs live (`--data-dir`, `FABRIC_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Password for the first admin (`FABRIC_ADMIN_PASSWORD`); generated and printed once when absent.
    pub admin_password: Option<String>,
}

/// Binds `config.listen`, serves until SIGINT/SIGTERM, then shuts down gracefully.
pub async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let _ = config;
    anyhow::bail!("not implemented yet")
}

/// Sets up the global `tracing` subscriber (JSON or pretty) on stderr.
pub fn init_logging(format: LogFormat) {
    let _ = format;
}

#[doc(hidden)]
pub fn _unused(_: impl Future<Output = ()>) {}
