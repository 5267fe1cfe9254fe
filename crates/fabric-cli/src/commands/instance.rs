//! `reactor-fabric start | down | list`: namespaced Docker instances (REQUIREMENTS §2.2, §3).
//!
//! Everything local is checked before Docker is contacted: the name, and the
//! `--config` file (which must exist: exit 2). The work is in `fabric_docker::instance`.

use std::path::PathBuf;

use fabric_docker::DockerClient;
use fabric_docker::config::InstanceConfig;
use fabric_docker::instance::{self, InstanceSummary, StartOptions};
use serde_json::json;

use crate::commands::serve::ENV_ADMIN_PASSWORD;
use crate::config::process_env;
use crate::error::CliError;
use crate::outln;
use crate::output::{OutputFormat, print_json, table, write_text};

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Instance name: letters, digits, '_', '.', '-' (Docker names become reactor-fabric-NAME-…)
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// fabric.yml with images, the published port and memory/CPU limits (must exist)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// Instance name
    #[arg(long, value_name = "NAME")]
    pub name: String,
}

pub async fn start(args: StartArgs, output: OutputFormat) -> Result<(), CliError> {
    fabric_docker::labels::validate_instance_name(&args.name).map_err(CliError::Usage)?;
    let config = InstanceConfig::load(args.config.as_deref(), &process_env)?;
    let binary = std::env::current_exe().map_err(|e| {
        CliError::Other(anyhow::anyhow!(
            "cannot find this program's own binary (the orchestrator image is built from it): {e}"
        ))
    })?;
    let (admin_password, generated) =
        match process_env(ENV_ADMIN_PASSWORD).filter(|p| !p.is_empty()) {
            Some(p) => (p, false),
            None => (instance::generate_password(), true),
        };
    let client = DockerClient::connect().await?;
    let options = StartOptions {
        name: args.name,
        config,
        binary,
        admin_password,
    };
    let interrupt = async {
        // No Ctrl-C handler: never interrupt.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let report = instance::start(&client, &options, interrupt).await?;
    for image in report.images.iter().filter(|i| i.built) {
        let size = image
            .size_bytes
            .map(|b| format!(" ({:.1} MiB)", b as f64 / MIB))
            .unwrap_or_default();
        eprintln!(
            "note: built image {}{size} in {:.1} s",
            image.image,
            image.took.as_secs_f64()
        );
    }
    let redis = &options.config.images.redis;
    if let Some(stand_in) = report
        .images
        .iter()
        .find(|i| i.image.starts_with(fabric_docker::image::LOCAL_REDIS_REPO) && &i.image != redis)
    {
        eprintln!(
            "note: {redis} is not available here; using the local Redis image {}",
            stand_in.image
        );
    }
    let password_shown = generated.then_some(options.admin_password.as_str());
    if output.is_json() {
        return print_json(&json!({
            "name": report.name,
            "url": report.url,
            "admin_user": "admin",
            // Shown once, here; null when it came from FABRIC_ADMIN_PASSWORD.
            "admin_password": password_shown,
            "network": report.network,
            "containers": report.containers,
            "volumes": report.volumes,
            "images": report.images,
            "timings_ms": report.timings_ms.iter().map(|(k, v)| json!({"phase": k, "ms": v})).collect::<Vec<_>>(),
        }));
    }
    outln!("instance {} is ready", report.name)?;
    outln!("  url:      {}", report.url)?;
    outln!("  user:     admin")?;
    match password_shown {
        Some(p) => outln!("  password: {p}  (generated, shown only this once)")?,
        None => outln!("  password: the one in {ENV_ADMIN_PASSWORD}")?,
    }
    outln!(
        "  log in:   reactor-fabric --url {} auth login --username admin",
        report.url
    )
}

pub async fn down(args: DownArgs, output: OutputFormat) -> Result<(), CliError> {
    fabric_docker::labels::validate_instance_name(&args.name).map_err(CliError::Usage)?;
    let client = DockerClient::connect().await?;
    let report = instance::down(&client, &args.name).await?;
    if output.is_json() {
        return print_json(&report);
    }
    if !report.existed {
        return outln!("no instance {:?}, nothing to do", report.name);
    }
    outln!(
        "removed instance {:?}: {} container{}, {} network{}, {} volume{}",
        report.name,
        report.containers,
        plural(report.containers),
        report.networks,
        plural(report.networks),
        report.volumes,
        plural(report.volumes),
    )
}

pub async fn list(output: OutputFormat) -> Result<(), CliError> {
    let client = DockerClient::connect().await?;
    let instances = instance::list(&client).await?;
    if output.is_json() {
        return print_json(&instances);
    }
    if instances.is_empty() {
        eprintln!("no instances (start one with 'reactor-fabric start --name NAME')");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = instances.iter().map(row).collect();
    write_text(&table(
        &["NAME", "STATUS", "CONTAINERS", "CPU", "MEMORY", "URL"],
        &rows,
    ))
}

fn row(i: &InstanceSummary) -> Vec<String> {
    let running = i.containers.iter().filter(|c| c.state == "running").count();
    let containers = if running == i.containers.len() {
        i.containers.len().to_string()
    } else {
        format!("{running}/{} running", i.containers.len())
    };
    // Usage is of running containers only: none running, nothing to show.
    let live = running > 0;
    vec![
        i.name.clone(),
        i.status.as_str().to_owned(),
        containers,
        match i.cpu_percent {
            Some(c) if live => format!("{c:.1}%"),
            _ => "-".to_owned(),
        },
        match i.memory_bytes {
            Some(b) if live => format!("{:.1} MiB", b as f64 / MIB),
            _ => "-".to_owned(),
        },
        i.url.clone().unwrap_or_else(|| "-".to_owned()),
    ]
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
