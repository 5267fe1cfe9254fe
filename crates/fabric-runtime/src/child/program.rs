//! A long-lived program on the host (isolation `none`): a user agent that
//! leads its own process group, stopped the way [`SandboxProcess`] is.
//!
//! [`SandboxProcess`]: crate::sandbox::SandboxProcess

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, ChildStderr, ChildStdout};

use super::group::ProcessGroup;
use super::{SHELL, check_env, environment};
use crate::RuntimeError;
use crate::sandbox::ProcessExit;

/// A program started by [`spawn_program`]. Dropping it SIGKILLs its group.
#[derive(Debug)]
pub struct HostProcess {
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    child: Child,
    group: ProcessGroup,
    pid: u32,
    command: String,
}

/// Starts `/bin/sh -c command` in `workdir` with the base environment of
/// [`run_shell`](crate::run_shell) (`PATH`, `HOME` = workdir, `LANG`,
/// `TMPDIR`) plus `env`; stdin is `/dev/null`, stdout and stderr are piped.
pub fn spawn_program(
    command: &str,
    workdir: &Path,
    env: &[(String, String)],
) -> Result<HostProcess, RuntimeError> {
    check_env(env)?;
    if command.contains('\0') {
        return Err(RuntimeError::InvalidCommand {
            command: command.to_owned(),
        });
    }
    let mut child = tokio::process::Command::new(SHELL)
        .arg("-c")
        .arg(command)
        .current_dir(workdir)
        .env_clear()
        .envs(environment(workdir, env))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|cause| RuntimeError::Spawn {
            command: command.to_owned(),
            cause,
        })?;
    let pid = child.id().unwrap_or(0);
    let group = ProcessGroup::led_by(pid).ok_or_else(|| RuntimeError::Wait {
        command: command.to_owned(),
        cause: io::Error::other("the program has no usable process id"),
    })?;
    Ok(HostProcess {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        child,
        group,
        pid,
        command: command.to_owned(),
    })
}

impl HostProcess {
    /// Host pid of the program (the shell running it), which leads its process group.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for the program to end; then ends whatever it left running in its group.
    pub async fn wait(&mut self) -> Result<ProcessExit, RuntimeError> {
        let status = self.child.wait().await.map_err(|cause| self.lost(cause))?;
        let _ = self.group.terminate(&mut self.child, Duration::ZERO).await;
        Ok(exit(status))
    }

    /// Stops the program: SIGTERM to its process group, SIGKILL after `grace`.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ProcessExit, RuntimeError> {
        let status = self
            .group
            .terminate(&mut self.child, grace)
            .await
            .map_err(|cause| self.lost(cause))?;
        Ok(exit(status))
    }

    fn lost(&self, cause: io::Error) -> RuntimeError {
        RuntimeError::Wait {
            command: self.command.clone(),
            cause,
        }
    }
}

fn exit(status: ExitStatus) -> ProcessExit {
    ProcessExit {
        code: status.code(),
        signal: status.signal(),
        // No cgroup of its own at level `none`: an OOM kill looks like SIGKILL.
        oom_killed: false,
    }
}
