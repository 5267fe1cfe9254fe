//! A long-lived program on the host (isolation `none`): a user agent that
//! leads its own process group, stopped the way [`SandboxProcess`] is.
//!
//! [`SandboxProcess`]: crate::sandbox::SandboxProcess

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

use super::group::ProcessGroup;
use super::{check_env, environment, host_shell_with};
use crate::RuntimeError;
use crate::confine::Confinement;
use crate::sandbox::ProcessExit;

/// A program started by [`spawn_program`]. Dropping it SIGKILLs its group.
#[derive(Debug)]
pub struct HostProcess {
    /// Piped only for [`spawn_program_with_stdin`].
    pub stdin: Option<ChildStdin>,
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
/// With a `confinement`, the program runs under its locks (its session's
/// directory, which `workdir` lies in, is the only writable place).
pub fn spawn_program(
    command: &str,
    workdir: &Path,
    env: &[(String, String)],
    confinement: Option<&Confinement>,
) -> Result<HostProcess, RuntimeError> {
    spawn(command, workdir, env, confinement, false)
}

/// [`spawn_program`] with its stdin piped too: a program spoken to on its
/// stdio (an MCP server).
pub fn spawn_program_with_stdin(
    command: &str,
    workdir: &Path,
    env: &[(String, String)],
    confinement: Option<&Confinement>,
) -> Result<HostProcess, RuntimeError> {
    spawn(command, workdir, env, confinement, true)
}

fn spawn(
    command: &str,
    workdir: &Path,
    env: &[(String, String)],
    confinement: Option<&Confinement>,
    piped_stdin: bool,
) -> Result<HostProcess, RuntimeError> {
    check_env(env)?;
    if command.contains('\0') {
        return Err(RuntimeError::InvalidCommand {
            command: command.to_owned(),
        });
    }
    let env = environment(workdir, env);
    let stdin = |cmd: &mut tokio::process::Command| {
        if piped_stdin {
            cmd.stdin(std::process::Stdio::piped());
        }
    };
    let mut child = match confinement {
        Some(confinement) => confinement.spawn_shell_with(command, workdir, &env, None, stdin)?,
        None => host_shell_with(command, workdir, &env, &[], stdin)?,
    };
    let pid = child.id().unwrap_or(0);
    let group = ProcessGroup::led_by(pid).ok_or_else(|| RuntimeError::Wait {
        command: command.to_owned(),
        cause: io::Error::other("the program has no usable process id"),
    })?;
    Ok(HostProcess {
        stdin: child.stdin.take(),
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

    /// When the program started, in clock ticks since boot (`/proc/<pid>/stat`
    /// field 22): with [`id`](Self::id), what [`kill_stale_group`] needs to
    /// recognise this group after the fabric was killed.
    pub fn start_ticks(&self) -> Option<u64> {
        start_ticks(self.pid)
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

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces and parentheses).
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// SIGKILLs the process group a [`HostProcess`] led, for a fabric that was
/// killed and restarts: its agent programs outlived it. `start_ticks` is
/// what [`HostProcess::start_ticks`] said. Returns whether it signalled.
///
/// Safe against pid reuse: while any member of the group lives, the kernel
/// does not hand its id out again, so a process with that pid and a
/// different start time means the group is gone, and nothing is signalled.
pub fn kill_stale_group(pgid: u32, start_ticks: u64) -> bool {
    if let Some(now) = self::start_ticks(pgid)
        && now != start_ticks
    {
        return false;
    }
    match ProcessGroup::led_by(pgid) {
        // Dropping the (armed) group SIGKILLs it again: harmless.
        Some(group) => group.signal(libc::SIGKILL).is_ok(),
        None => false,
    }
}
