//! Isolation `container`: an agent container (from the pool or made now)
//! with its sidecar, the fabric's listeners the sidecar forwards to, and the
//! built-in shell's workers (which run each task's commands in it) or the
//! container's own program.

use fabric_runtime::quota::{DiskMeter, DiskQuota};
use std::sync::Arc;
use std::time::Duration;

use fabric_core::AgentId;
use fabric_docker::DockerClient;
use fabric_runtime::container::ContainerShell;
use fabric_runtime::sandbox::ProcessExit;

use super::{
    AgentToken, Background, Common, ENV_TOKEN, ENV_URL, Launch, SessionError, UsageProbe, Workers,
    loopback,
};
use crate::proxy::{EGRESS_PROXY_PORT, INFERENCE_PORT};
use crate::services::agents::builtin::{Executor, ShellSpec};
use crate::services::agents::container::{self, ContainerPair, ContainerUsage, DockerRuntime};
use crate::services::agents::{ENV_AGENT_ID, ENV_WORKSPACE_DIR};

pub(in crate::services::agents) struct ContainerSession {
    agent: AgentId,
    common: Common,
    docker: Arc<DockerRuntime>,
    client: DockerClient,
    pair: ContainerPair,
    usage: Arc<ContainerUsage>,
    run: ContainerRun,
    /// How the container ended, once known.
    exit: Option<ProcessExit>,
}

enum ContainerRun {
    Shell(Workers),
    /// The agent's program is the container's main process.
    Program,
}

impl ContainerSession {
    pub(super) async fn start(launch: &Launch<'_>) -> Result<ContainerSession, SessionError> {
        let runtime = launch.runtime;
        let config = launch.config;
        let id = launch.agent();
        let api = runtime.config.api_addr;
        let proxy = launch.egress_proxy()?;
        let builtin = config.is_builtin_shell();
        let (token, secret) = AgentToken::issue(launch);
        // The agent's endpoints, as its sidecar serves them on its loopback.
        let mut env = super::inference_env(&format!("http://localhost:{INFERENCE_PORT}"));
        env.extend(fabric_runtime::net::proxy_env(EGRESS_PROXY_PORT));
        env.extend(launch.runtime.config.env.iter().cloned());
        // A program reaches the API through its sidecar too; the built-in
        // shell's workers do not run in the container.
        let api_port = (!builtin).then(|| api.port());
        let container_env = match api_port {
            Some(port) => {
                let url = format!("http://127.0.0.1:{port}");
                let mut container_env = env.clone();
                container_env.extend([
                    (ENV_URL.to_owned(), url.clone()),
                    (ENV_TOKEN.to_owned(), secret.clone()),
                    (ENV_AGENT_ID.to_owned(), id.to_string()),
                    (
                        ENV_WORKSPACE_DIR.to_owned(),
                        fabric_docker::agent::WORKSPACE.to_owned(),
                    ),
                    (
                        "HOME".to_owned(),
                        fabric_docker::agent::WORKSPACE.to_owned(),
                    ),
                ]);
                container_env
            }
            None => Vec::new(),
        };
        let name = container::container_name(id, launch.number);
        let (pair, client) = container::acquire(
            &runtime.docker,
            &runtime.container_pool,
            config,
            &name,
            container_env,
            api_port,
        )
        .await?;
        // The container's own output (its program's) is Docker's log.
        runtime.program_logs.set_container(
            id,
            launch.number,
            client.clone(),
            pair.container.name.clone(),
        );
        let (usage, poller) = ContainerUsage::start(&client, &pair);
        let mut tasks = Background::default();
        tasks.extend(poller);
        let started = match container::listen(
            runtime,
            &pair,
            launch.endpoint_identity(),
            proxy,
            api_port.map(|_| loopback(api)),
        ) {
            Ok(listeners) => {
                tasks.extend(listeners);
                if builtin {
                    start_shell(launch, &client, &pair, env, secret).map(ContainerRun::Shell)
                } else {
                    Ok(ContainerRun::Program)
                }
            }
            Err(e) => Err(SessionError::from(e)),
        };
        let common = Common { tasks, token };
        match started {
            Ok(run) => Ok(ContainerSession {
                agent: id.clone(),
                common,
                docker: Arc::clone(&runtime.docker),
                client,
                pair,
                usage,
                run,
                exit: None,
            }),
            Err(e) => {
                common.release();
                runtime.docker.remove(&pair).await;
                Err(e)
            }
        }
    }

    /// Host pid of the container's init, if the daemon reported it.
    pub(super) fn pid(&self) -> Option<u32> {
        u32::try_from(self.pair.container.pid)
            .ok()
            .filter(|p| *p > 0)
    }

    pub(super) fn usage_probe(&self) -> UsageProbe {
        UsageProbe::Container(Arc::clone(&self.usage))
    }

    pub(super) fn runs_program(&self) -> bool {
        matches!(self.run, ContainerRun::Program)
    }

    /// Resolves when the container stops, whatever runs in it.
    pub(super) async fn wait_exit(&mut self) -> ProcessExit {
        if let Some(exit) = self.exit {
            return exit;
        }
        let exit = container::wait_exit(&self.client, &self.pair.container.name).await;
        self.exit = Some(exit);
        exit
    }

    pub(super) fn stop_leasing(&self) {
        if let ContainerRun::Shell(workers) = &self.run {
            workers.stop_leasing();
        }
    }

    pub(super) async fn terminate(&mut self, grace: Duration) {
        if self.exit.is_some() {
            return;
        }
        match &mut self.run {
            ContainerRun::Shell(workers) => workers.kill(grace).await,
            // SIGTERM to the container's main process, SIGKILL after `grace`.
            ContainerRun::Program => {
                if let Err(e) = self
                    .client
                    .stop_container(&self.pair.container.name, grace)
                    .await
                {
                    tracing::warn!(agent_id = %self.agent, error = %e, "cannot stop the agent's container");
                }
            }
        }
    }

    pub(super) async fn cleanup(self) {
        let ContainerSession {
            common,
            docker,
            pair,
            mut run,
            ..
        } = self;
        if let ContainerRun::Shell(workers) = &mut run {
            workers.kill(Duration::ZERO).await;
        }
        common.release();
        docker.remove(&pair).await;
    }
}

/// The built-in shell's workers, each command one `docker exec` in the container.
fn start_shell(
    launch: &Launch<'_>,
    client: &DockerClient,
    pair: &ContainerPair,
    env: Vec<(String, String)>,
    secret: String,
) -> Result<Workers, SessionError> {
    let kill_grace = launch.runtime.config.kill_grace;
    let shell = ContainerShell::new(
        client.clone(),
        pair.container.name.clone(),
        &pair.container.id,
        pair.container.pid,
        kill_grace,
    );
    let disk_quota = DiskQuota::new(
        DiskMeter::Container(Box::new(shell.clone())),
        launch.config.isolation.disk_mb,
    );
    let spec = ShellSpec {
        agent: launch.agent().clone(),
        concurrency: launch.config.concurrency as usize,
        executor: Executor::Container(Arc::new(shell)),
        output_limit: launch.runtime.config.shell_output_limit,
        kill_grace,
        env,
        disk_quota,
        workdir_retention: launch.runtime.config.workdir_retention,
    };
    launch.start_workers(spec, secret)
}
