//! Isolation `process`: the agent's program, or the built-in shell's
//! commands, inside a [`Sandbox`], with the fabric's listeners bound inside
//! its network namespace.

use fabric_runtime::quota::{DiskMeter, DiskQuota};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fabric_core::AgentId;
use fabric_core::agent::AgentConfig;
use fabric_runtime::sandbox::{ProcessExit, Sandbox, SandboxCommand, SandboxProcess, SandboxStdio};

use super::{
    AgentToken, Background, Common, ENV_TOKEN, ENV_URL, Launch, SessionError, UsageProbe, Workers,
    agent_env, log_output, unknown_exit,
};
use crate::proxy::{EGRESS_PROXY_PORT, INFERENCE_PORT};
use crate::services::agents::builtin::{Executor, ShellSpec};
use crate::services::agents::{SessionRuntime, inference};

pub(in crate::services::agents) struct SandboxSession {
    agent: AgentId,
    common: Common,
    sandbox: Arc<Sandbox>,
    run: SandboxRun,
}

enum SandboxRun {
    Shell(Workers),
    Program {
        process: SandboxProcess,
        exit: Option<ProcessExit>,
    },
}

impl SandboxSession {
    pub(super) async fn start(launch: &Launch<'_>) -> Result<SandboxSession, SessionError> {
        let (name, workdir) = launch.workdir();
        let sandbox =
            Arc::new(acquire_sandbox(launch.runtime, launch.config, &name, &workdir).await?);
        match Self::start_in(launch, &sandbox).await {
            Ok((common, run)) => Ok(SandboxSession {
                agent: launch.agent().clone(),
                common,
                sandbox,
                run,
            }),
            Err(e) => {
                destroy(launch.agent(), &sandbox).await;
                Err(e)
            }
        }
    }

    /// The listeners and what runs in `sandbox`.
    async fn start_in(
        launch: &Launch<'_>,
        sandbox: &Arc<Sandbox>,
    ) -> Result<(Common, SandboxRun), SessionError> {
        let runtime = launch.runtime;
        let config = launch.config;
        let builtin = config.is_builtin_shell();
        let (token, secret) = AgentToken::issue(launch);
        let mut tasks = Background::default();
        let mut env = Vec::new();
        if !builtin {
            // The fabric's API, on the same port inside the sandbox.
            let api = runtime.config.api_addr;
            let listener = bind_in(sandbox, api.port())?;
            let forward = fabric_runtime::net::forward_tcp(listener, api, std::future::pending());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = forward.await {
                    tracing::warn!(error = %e, "API forward into a sandbox stopped");
                }
            }));
            env.push((ENV_URL.into(), format!("http://127.0.0.1:{}", api.port())));
        }
        let listener = bind_in(sandbox, INFERENCE_PORT)?;
        tasks.push(inference::serve_std(
            listener,
            runtime,
            launch.endpoint_identity(),
        )?);
        env.extend(super::inference_env(&format!(
            "http://localhost:{INFERENCE_PORT}"
        )));
        let proxy = launch.egress_proxy()?;
        let listener = bind_in(sandbox, EGRESS_PROXY_PORT)?;
        tasks.push(crate::proxy::spawn_egress_proxy(
            proxy,
            listener,
            format!("agent {}", launch.agent()),
        ));
        env.extend(crate::proxy::egress_proxy_env());
        env.extend(launch.runtime.config.env.iter().cloned());
        // The fabric and the inference endpoint are local: never through the proxy.
        env.push(("NO_PROXY".into(), "localhost,127.0.0.1".into()));
        env.push(("no_proxy".into(), "localhost,127.0.0.1".into()));

        let run = if builtin {
            let spec = ShellSpec {
                agent: config.id.clone(),
                concurrency: config.concurrency as usize,
                executor: Executor::Sandbox(Arc::clone(sandbox)),
                output_limit: runtime.config.shell_output_limit,
                kill_grace: runtime.config.kill_grace,
                env: agent_env(env, None),
                disk_quota: DiskQuota::new(
                    DiskMeter::Host(sandbox.workdir().to_path_buf()),
                    config.isolation.disk_mb,
                ),
                workdir_retention: runtime.config.workdir_retention,
            };
            SandboxRun::Shell(launch.start_workers(spec, secret)?)
        } else {
            let Some(command) = &config.command else {
                return Err(SessionError::NothingToRun);
            };
            // A pooled sandbox brings its own working dir.
            let mut env = agent_env(env, Some((&config.id, sandbox.workdir())));
            env.push((ENV_TOKEN.into(), secret));
            let mut cmd = SandboxCommand::new(["/bin/sh", "-c", command.as_str()]);
            cmd.env = env;
            cmd.stdout = SandboxStdio::Piped;
            cmd.stderr = SandboxStdio::Piped;
            let mut process = sandbox
                .spawn(cmd)
                .await
                .map_err(SessionError::SpawnProgram)?;
            log_output(launch, process.stdout.take(), process.stderr.take());
            SandboxRun::Program {
                process,
                exit: None,
            }
        };
        Ok((Common { tasks, token }, run))
    }

    /// The program's pid, else the sandbox's init.
    pub(super) fn pid(&self) -> u32 {
        match &self.run {
            SandboxRun::Program { process, .. } => process.id(),
            SandboxRun::Shell(_) => self.sandbox.init_pid(),
        }
    }

    pub(super) fn usage_probe(&self) -> UsageProbe {
        UsageProbe::Sandbox(Arc::clone(&self.sandbox))
    }

    pub(super) fn runs_program(&self) -> bool {
        matches!(self.run, SandboxRun::Program { .. })
    }

    pub(super) async fn wait_exit(&mut self) -> ProcessExit {
        let SandboxRun::Program { process, exit } = &mut self.run else {
            return std::future::pending().await;
        };
        if let Some(exit) = *exit {
            return exit;
        }
        let waited = process.wait().await.unwrap_or_else(|e| {
            tracing::error!(agent_id = %self.agent, error = %e, "cannot wait for agent");
            unknown_exit()
        });
        *exit = Some(waited);
        waited
    }

    pub(super) fn stop_leasing(&self) {
        if let SandboxRun::Shell(workers) = &self.run {
            workers.stop_leasing();
        }
    }

    pub(super) async fn terminate(&mut self, grace: Duration) {
        match &mut self.run {
            SandboxRun::Shell(workers) => workers.kill(grace).await,
            SandboxRun::Program { process, exit } => {
                if exit.is_none() {
                    *exit = process.terminate(grace).await.ok();
                }
            }
        }
    }

    pub(super) async fn cleanup(self) {
        let SandboxSession {
            agent,
            common,
            sandbox,
            run,
        } = self;
        match run {
            SandboxRun::Shell(mut workers) => workers.kill(Duration::ZERO).await,
            // Dropping the program SIGKILLs its process group.
            SandboxRun::Program { process, .. } => drop(process),
        }
        common.release();
        destroy(&agent, &sandbox).await;
    }
}

/// A sandbox for a session: from the warm pool when the agent's config
/// allows (limits set on it now), else built from scratch.
async fn acquire_sandbox(
    runtime: &SessionRuntime,
    config: &AgentConfig,
    name: &str,
    workdir: &Path,
) -> Result<Sandbox, SessionError> {
    let iso = &config.isolation;
    let poolable = iso.read_only_paths.is_empty() && iso.filesystem_root.is_none();
    if poolable && let Some(sandbox) = runtime.sandbox_pool.take() {
        match sandbox.set_limits(
            iso.memory_mb,
            iso.cpu_cores,
            fabric_runtime::sandbox::DEFAULT_PIDS_MAX,
        ) {
            Ok(()) => return Ok(sandbox),
            Err(e) => {
                tracing::warn!(error = %e, "a pooled sandbox refused new limits; starting a fresh one");
                let _ = sandbox.destroy().await;
            }
        }
    }
    let mut sandbox_config = runtime
        .sandbox_pool
        .kind
        .config(name.to_owned(), workdir.to_path_buf())
        .ok_or(SessionError::NoSandboxHelper)?;
    sandbox_config.memory_mb = iso.memory_mb;
    sandbox_config.cpu_cores = iso.cpu_cores;
    for path in &iso.read_only_paths {
        sandbox_config.read_only_paths.push(PathBuf::from(path));
    }
    Sandbox::create(sandbox_config)
        .await
        .map_err(SessionError::CreateSandbox)
}

/// Removes the sandbox: its processes, cgroups, namespaces and working dir.
async fn destroy(agent: &AgentId, sandbox: &Sandbox) {
    if let Err(e) = sandbox.destroy().await {
        tracing::error!(agent_id = %agent, error = %e, "cannot remove the agent's sandbox");
    }
}

fn bind_in(sandbox: &Sandbox, port: u16) -> Result<std::net::TcpListener, SessionError> {
    let listener = sandbox
        .bind_tcp(port)
        .map_err(SessionError::BindInSandbox)?;
    listener
        .set_nonblocking(true)
        .map_err(|source| SessionError::SandboxPortUnusable { port, source })?;
    Ok(listener)
}
