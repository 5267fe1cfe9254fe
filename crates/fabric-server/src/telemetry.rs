//! Log output. Libraries only emit `tracing` events; this is where they are written.

use tracing_subscriber::EnvFilter;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line (the default; what log pipelines want).
    #[default]
    Json,
    /// Human-readable lines for a terminal.
    Pretty,
}

/// Env var with a `tracing` filter, e.g. `info,fabric_server=debug`.
pub const ENV_LOG: &str = "FABRIC_LOG";

/// Sets up the global subscriber on stderr. Safe to call twice (the second is ignored).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env(ENV_LOG).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
