//! `reactor-fabric start | down | list`: namespaced Docker instances (REQUIREMENTS §2.2, §3).
//!
//! Everything local is checked before Docker is contacted: the name, and the
//! `--config` file (which must exist: exit 2). The work is in `fabric_docker::instance`.
//! `start` also leaves a context named after the instance, logged in as its
//! admin (as `kind` adds a kubeconfig context); `down` removes it.

use std::path::PathBuf;

use fabric_core::api::LoginRequest;
use fabric_docker::DockerClient;
use fabric_docker::config::InstanceConfig;
use fabric_docker::instance::{self, InstanceSummary, StartOptions};
use serde_json::json;

use crate::client::FabricClient;
use crate::commands::serve::ENV_ADMIN_PASSWORD;
use crate::config::{FileConfig, Login, config_path, process_env};
use crate::error::CliError;
use crate::outln;
use crate::output::{OutputFormat, print_json, table, write_text};

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Instance name: letters, digits, '_', '.', '-' (Docker names become reactor-fabric-NAME-…)
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// fabric.yml with images, the published port and memory/CPU limits (must exist; - reads stdin)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Worker-node containers to add; with any, they (not the orchestrator) hold the Docker socket and run the container agents
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=16))]
    pub nodes: u8,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// Instance name
    #[arg(long, value_name = "NAME")]
    pub name: String,
}

pub async fn start(args: StartArgs, output: OutputFormat) -> Result<(), CliError> {
    fabric_docker::labels::validate_instance_name(&args.name).map_err(CliError::Usage)?;
    let config = match args.config.as_deref() {
        Some(stdin) if stdin == std::path::Path::new("-") => {
            let bytes = super::read_capped(stdin, "--config -", CliError::Usage)?;
            let text = String::from_utf8(bytes).map_err(|_| {
                CliError::Usage("--config -: standard input is not UTF-8 text".into())
            })?;
            InstanceConfig::load_text(&text, std::path::Path::new("<stdin>"), &process_env)?
        }
        path => InstanceConfig::load(path, &process_env)?,
    };
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
    if args.nodes > 0 && !config.agents.containers {
        return Err(CliError::Usage(
            "--nodes adds nodes for container agents, but this config turns them off (agents.containers: false)".into(),
        ));
    }
    let options = StartOptions {
        name: args.name,
        config,
        binary,
        admin_password,
        nodes: usize::from(args.nodes),
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
    let nodes = if options.nodes > 0 {
        match add_nodes(&client, &options, &report).await {
            Ok(nodes) => nodes,
            Err(e) => {
                // All or nothing: an instance without the nodes asked for is removed.
                if let Err(down) = instance::down(&client, &report.name).await {
                    eprintln!("warning: the instance could not be removed again: {down}");
                }
                return Err(e);
            }
        }
    } else {
        Vec::new()
    };
    let password_shown = generated.then_some(options.admin_password.as_str());
    let context = match save_context(&report.name, &report.url, &options.admin_password).await {
        Ok(()) => Some(report.name.clone()),
        Err(e) => {
            eprintln!(
                "warning: no context saved for the instance ({e}); log in with: reactor-fabric --url {} auth login --username admin",
                report.url
            );
            None
        }
    };
    if output.is_json() {
        return print_json(&json!({
            "name": report.name,
            "url": report.url,
            // A context of the instance's name, logged in as admin; null if it could not be saved.
            "context": context,
            "admin_user": "admin",
            // Shown once, here; null when it came from FABRIC_ADMIN_PASSWORD.
            "admin_password": password_shown,
            "network": report.network,
            "containers": report.containers.iter().chain(&nodes).collect::<Vec<_>>(),
            "nodes": nodes.len(),
            "volumes": report.volumes,
            "images": report.images,
            "timings_ms": report.timings_ms.iter().map(|(k, v)| json!({"phase": k, "ms": v})).collect::<Vec<_>>(),
        }));
    }
    outln!("instance {} is ready", report.name)?;
    outln!("  url:      {}", report.url)?;
    if !nodes.is_empty() {
        outln!(
            "  nodes:    {} ready, holding the Docker socket for container agents",
            nodes.len()
        )?;
    }
    outln!("  user:     admin")?;
    match password_shown {
        Some(p) => outln!("  password: {p}  (generated, shown only this once)")?,
        None => outln!("  password: the one in {ENV_ADMIN_PASSWORD}")?,
    }
    match context {
        Some(name) => outln!(
            "  context:  {name}, logged in as admin (reactor-fabric --context {name} task ls; config use-context {name})"
        ),
        None => outln!(
            "  log in:   reactor-fabric --url {} auth login --username admin",
            report.url
        ),
    }
}

/// Adds the worker-node containers to a started instance: a join token
/// admitting exactly that many nodes (10 minutes), the containers, then
/// waits until every one is ready. Returns their container names.
async fn add_nodes(
    docker: &DockerClient,
    options: &StartOptions,
    report: &instance::StartReport,
) -> Result<Vec<String>, CliError> {
    let issued = FabricClient::new(&report.url, None)?
        .login(&LoginRequest {
            username: "admin".to_owned(),
            password: options.admin_password.clone(),
        })
        .await?;
    let api = FabricClient::new(&report.url, Some(issued.token.clone()))?;
    let token = api
        .create_join_token(&fabric_core::node::CreateJoinTokenRequest {
            ttl_seconds: Some(600),
            max_uses: Some(u32::try_from(options.nodes).unwrap_or(u32::MAX)),
        })
        .await?;
    let containers = instance::start_nodes(
        docker,
        &instance::NodesOptions {
            name: &report.name,
            config: &options.config,
            count: options.nodes,
            join_token: &token.token,
            image: &report.orchestrator_image,
            agent_image: report.agent_image.as_deref(),
        },
    )
    .await?;
    let deadline = std::time::Instant::now() + options.config.readiness_timeout();
    loop {
        let list = api.list_nodes().await?;
        let ready = list
            .nodes
            .iter()
            .filter(|n| n.status == fabric_core::node::NodeStatus::Ready)
            .count();
        if ready >= options.nodes {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(CliError::Other(anyhow::anyhow!(
                "only {ready} of {} worker nodes of instance {} became ready within {} s; see 'docker logs {}'",
                options.nodes,
                report.name,
                options.config.readiness_timeout().as_secs(),
                instance::node_container_name(&report.name, 1)
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let _ = api.logout().await;
    Ok(containers)
}

/// Logs in to a new instance as its admin and stores that login as a
/// context named after the instance (as `kind` adds a kubeconfig context for
/// a cluster it creates), marked so that its `down` removes it. A context of
/// that name from before is replaced: it named an instance of that name.
async fn save_context(name: &str, url: &str, admin_password: &str) -> Result<(), CliError> {
    let issued = FabricClient::new(url, None)?
        .login(&LoginRequest {
            username: "admin".to_owned(),
            password: admin_password.to_owned(),
        })
        .await?;
    let path = config_path(&process_env)?;
    let mut file = FileConfig::load(&path)?;
    file.contexts.insert(
        name.to_owned(),
        Login {
            url: Some(url.to_owned()),
            token: Some(issued.token),
            user: Some(issued.user),
            instance: Some(name.to_owned()),
        },
    );
    file.save(&path)?;
    Ok(())
}

/// Removes the context `start` made for instance `name`, if it is still
/// that instance's (one the user re-pointed elsewhere stays). Returns
/// whether it did.
fn remove_context(name: &str) -> Result<bool, CliError> {
    let path = config_path(&process_env)?;
    let mut file = FileConfig::load(&path)?;
    if file.contexts.get(name).and_then(|c| c.instance.as_deref()) != Some(name) {
        return Ok(false);
    }
    file.contexts.remove(name);
    if file.current_context.as_deref() == Some(name) {
        file.current_context = None;
    }
    file.save(&path)?;
    Ok(true)
}

pub async fn down(args: DownArgs, output: OutputFormat) -> Result<(), CliError> {
    fabric_docker::labels::validate_instance_name(&args.name).map_err(CliError::Usage)?;
    let client = DockerClient::connect().await?;
    let report = instance::down(&client, &args.name).await?;
    let context_removed = match remove_context(&args.name) {
        Ok(removed) => removed,
        Err(e) => {
            eprintln!("warning: the instance's context is still in the config file: {e}");
            false
        }
    };
    if output.is_json() {
        let mut value = serde_json::to_value(&report).map_err(|e| CliError::Other(e.into()))?;
        value["context_removed"] = json!(context_removed);
        return print_json(&value);
    }
    if context_removed {
        eprintln!("removed context {:?}", args.name);
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
