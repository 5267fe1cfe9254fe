//! `reactor-fabric mock-llm`: the deterministic mock LLM server
//! (`fabric_gateway::mock::server`) for tests, benchmarks and demos without a model.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use fabric_gateway::mock::server::{MockConfig, serve};

use crate::error::CliError;

#[derive(Debug, clap::Args)]
pub struct MockLlmArgs {
    /// Port to listen on (0: any free port, printed at start)
    #[arg(long, default_value_t = 11435)]
    pub port: u16,

    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Milliseconds to wait before every answer (a fixed upstream latency)
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_ms: u64,

    /// Milliseconds between the pieces of a streamed answer
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub stream_delay_ms: u64,

    /// The only models served, comma-separated (others get 404); default: any model
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub models: Vec<String>,

    /// Environment variable holding a key every request must present
    /// (Bearer for OpenAI/Ollama, x-api-key for Anthropic)
    #[arg(long, value_name = "VAR")]
    pub require_key_env: Option<String>,

    /// JSON file of {"prompt substring": answer}, plus optionally "models": {"<model>": {"prompt substring": answer}} for one model: an answer is a string, {"json": VALUE} or {"tool_calls": [{"name", "arguments"}]}; the longest substring of the last user message or tool result wins ("" matches any)
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,

    /// Name shown in logs and model listings
    #[arg(long, default_value = "mock")]
    pub name: String,
}

pub fn run(args: MockLlmArgs) -> Result<(), CliError> {
    let api_key = match &args.require_key_env {
        None => None,
        Some(var) => Some(std::env::var(var).map_err(|_| {
            CliError::Usage(format!("--require-key-env {var}: the variable is not set"))
        })?),
    };
    let script = match &args.script {
        None => fabric_gateway::mock::Script::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::Usage(format!("cannot read --script {}: {e}", path.display()))
            })?;
            let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                CliError::Usage(format!("--script {}: not JSON: {e}", path.display()))
            })?;
            fabric_gateway::mock::Script::from_value(&value).map_err(|e| {
                CliError::Usage(format!(
                    "--script {}: {e}; give a JSON object of \"prompt substring\": answer (and optionally \"models\": {{\"<model>\": {{\"prompt substring\": answer}}}}), where an answer is a string, {{\"json\": VALUE}} or {{\"tool_calls\": [{{\"name\", \"arguments\"}}]}}",
                    path.display()
                ))
            })?
        }
    };
    let config = MockConfig {
        name: args.name,
        latency: Duration::from_millis(args.latency_ms),
        stream_delay: Duration::from_millis(args.stream_delay_ms),
        models: args.models.into_iter().filter(|m| !m.is_empty()).collect(),
        api_key,
        script,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mock-llm")
        .build()
        .map_err(|e| {
            CliError::Other(anyhow::Error::new(e).context("cannot start the async runtime"))
        })?;
    runtime.block_on(async move {
        let addr = SocketAddr::new(args.host, args.port);
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            CliError::Other(anyhow::anyhow!(
                "cannot listen on {addr}: {e}; choose another --port"
            ))
        })?;
        let local = listener
            .local_addr()
            .map_err(|e| CliError::Other(anyhow::anyhow!("cannot read the listening address: {e}")))?;
        // The one line scripts wait for.
        println!("mock-llm listening on http://{local} (Ollama /api/*, OpenAI /v1/*, Anthropic /v1/messages)");
        serve(listener, config, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| CliError::Other(anyhow::anyhow!("mock-llm stopped: {e}")))
    })
}
