//! `reactor-fabric image build-orchestrator | build-redis`: local images without a registry.
//!
//! `start` builds the orchestrator image by itself when it is missing; these
//! commands build ahead of time (or for docker-compose), and give a Redis image
//! to machines that cannot pull one. Each prints the image reference last.

use std::path::{Path, PathBuf};

use fabric_docker::DockerClient;
use fabric_docker::image::{self, ImageReady};

use crate::error::CliError;
use crate::outln;
use crate::output::{OutputFormat, print_json};

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Build the orchestrator image from this binary (reactor-fabric:VERSION-HASH) unless it exists
    BuildOrchestrator,
    /// Build a Redis image from this machine's redis-server and redis-cli plus their libraries
    BuildRedis(BuildRedisArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildRedisArgs {
    /// The redis-server binary [default: redis-server on PATH]
    #[arg(long, value_name = "PATH")]
    pub redis_server: Option<PathBuf>,
    /// Image reference to create [default: reactor-fabric-redis:<redis version>]
    #[arg(long, value_name = "IMAGE")]
    pub tag: Option<String>,
}

pub async fn run(cmd: ImageCommand, output: OutputFormat) -> Result<(), CliError> {
    let client = DockerClient::connect().await?;
    let ready = match cmd {
        ImageCommand::BuildOrchestrator => {
            let binary = std::env::current_exe().map_err(|e| {
                CliError::Other(anyhow::anyhow!(
                    "cannot find this program's own binary: {e}"
                ))
            })?;
            image::ensure_orchestrator_image(&client, &binary).await?
        }
        ImageCommand::BuildRedis(args) => {
            let server = match args.redis_server {
                Some(path) => path,
                None => on_path("redis-server").ok_or_else(|| {
                    CliError::Usage(
                        "redis-server is not on PATH: install it (apt-get install redis-server) or pass --redis-server PATH"
                            .to_owned(),
                    )
                })?,
            };
            image::build_redis_image(&client, &server, args.tag.as_deref()).await?
        }
    };
    report(&ready, output)
}

fn report(ready: &ImageReady, output: OutputFormat) -> Result<(), CliError> {
    if output.is_json() {
        return print_json(ready);
    }
    if ready.built {
        let size = ready
            .size_bytes
            .map(|b| format!(" ({:.1} MiB)", b as f64 / (1024.0 * 1024.0)))
            .unwrap_or_default();
        eprintln!("built{size} in {:.1} s", ready.took.as_secs_f64());
    } else {
        eprintln!("up to date");
    }
    outln!("{}", ready.image)
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
