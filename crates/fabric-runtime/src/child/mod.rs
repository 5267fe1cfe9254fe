//! Isolation level `none`: a task's commands as plain child processes of the fabric.
//!
//! This is the executor behind the built-in `shell` agent (REQUIREMENTS §5).
//! [`run_shell`] isolates nothing beyond a clean environment and a working
//! directory: the commands run with the fabric's user, filesystem and
//! network (what an agent's `as_fabric_user` asks for). The fabric's
//! default for level `none` is [`Confinement::run_shell`](crate::confine::Confinement::run_shell):
//! the same jobs under Landlock, seccomp and no privileges.
//!
//! What a job gets:
//!
//! - `/bin/sh -c <command>` for each command, in order, stopping at the first
//!   that fails (non-zero exit or killed by a signal);
//! - its working directory as cwd and `HOME`, created if missing, with the
//!   task's files written into it and `TMPDIR` at `<workdir>/.tmp`;
//! - an environment of only `PATH`, `HOME`, `LANG`, `TMPDIR` and the job's own
//!   variables: nothing of the fabric's environment (which holds secrets such
//!   as the admin password) is inherited;
//! - stdin from `/dev/null`; stdout and stderr captured up to
//!   [`ShellJob::output_limit`] bytes each, and streamed line by line.
//!
//! Each command leads its own process group. When it exits, or when the job is
//! canceled, the whole group gets SIGTERM, then SIGKILL after
//! [`ShellJob::kill_grace`], so background jobs and pipelines do not outlive it.

mod capture;
pub(crate) mod group;
mod program;

pub use self::program::{HostProcess, kill_stale_group, spawn_program, spawn_program_with_stdin};
pub(crate) mod workdir;

use std::fmt;
use std::future::{Future, poll_fn};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::process::{ExitStatus, Stdio};
use std::task::Poll;
use std::time::Duration;

use fabric_core::{TaskFile, TaskResult};
use tokio::sync::mpsc::Sender;

use tokio::io::AsyncRead;

use self::capture::{Capture, pump};
use self::group::{Leader, ProcessGroup};
use crate::RuntimeError;

/// The shell every command runs under, as `SHELL -c <command>`.
pub const SHELL: &str = "/bin/sh";

/// The documented output limit: 1 MiB per stream (stdout and stderr each),
/// over all of a job's commands. Output past it is read and discarded, and the
/// outcome says so (`stdout_truncated`, `stderr_truncated`).
pub const DEFAULT_OUTPUT_LIMIT: usize = 1024 * 1024;

/// Time between SIGTERM and SIGKILL when a job is stopped; the same default as `docker stop`.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

/// Longest line sent to the live log, in bytes; the rest of a longer line is
/// left out of the log (the captured output keeps it, up to the output limit).
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// `PATH` of every job: the standard system directories, nothing user-specific.
pub const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const ENV_PATH: &str = "PATH";
const ENV_HOME: &str = "HOME";
const ENV_LANG: &str = "LANG";
const ENV_TMPDIR: &str = "TMPDIR";

/// How long to keep reading output once a command's process group is gone.
/// What is left in the pipes reads in microseconds; if they are still open
/// after this, a process that left the group (`setsid`) holds them, and
/// waiting for it could take forever.
const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Work for [`run_shell`]: commands to run in a working directory.
///
/// `Debug` shows environment keys and file paths but not their values: those
/// carry agent tokens and task secrets, and jobs end up in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct ShellJob {
    /// Each run as `/bin/sh -c <command>`, in order; the first failure stops the job.
    pub commands: Vec<String>,
    /// Written into `workdir` before the first command. Paths must be relative
    /// and must not contain `..`; files are never written through symbolic links.
    pub files: Vec<TaskFile>,
    /// The commands' cwd and `HOME`; created if missing.
    pub workdir: PathBuf,
    /// Added on top of the base environment (`PATH`, `HOME`, `LANG`, `TMPDIR`),
    /// and may override it. The caller adds the task context (`FABRIC_TASK_ID`, ...)
    /// here, after refusing requests that try to set `FABRIC_*` themselves.
    pub env: Vec<(String, String)>,
    /// Bytes kept per stream over all commands; see [`DEFAULT_OUTPUT_LIMIT`].
    pub output_limit: usize,
    /// Time between SIGTERM and SIGKILL when stopping a command's processes.
    pub kill_grace: Duration,
}

impl fmt::Debug for ShellJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShellJob")
            .field("commands", &self.commands)
            .field(
                "files",
                &self.files.iter().map(|file| &file.path).collect::<Vec<_>>(),
            )
            .field("workdir", &self.workdir)
            .field(
                "env",
                &self.env.iter().map(|(key, _)| key).collect::<Vec<_>>(),
            )
            .field("output_limit", &self.output_limit)
            .field("kill_grace", &self.kill_grace)
            .finish()
    }
}

impl ShellJob {
    /// A job with no files, no extra environment and the default limits.
    pub fn new(commands: Vec<String>, workdir: PathBuf) -> Self {
        Self {
            commands,
            files: Vec::new(),
            workdir,
            env: Vec::new(),
            output_limit: DEFAULT_OUTPUT_LIMIT,
            kill_grace: DEFAULT_KILL_GRACE,
        }
    }
}

/// Which output stream a [`LogLine`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One line of output, sent while the job runs. Without its newline, lossy
/// UTF-8, at most [`MAX_LOG_LINE`] bytes. An unterminated last line is sent
/// when its command's stream ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: Stream,
    pub line: String,
}

/// What a job did. A failing command is an outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShellOutcome {
    /// Exit code of the last command that ran; `None` if it was killed by a
    /// signal or no command ran (canceled before the first).
    pub exit_code: Option<i32>,
    /// The signal that killed the last command's shell, if one did.
    pub signal: Option<i32>,
    /// Output of all commands, in order, lossy UTF-8, at most `output_limit` bytes.
    pub stdout: String,
    pub stderr: String,
    /// `stdout` is not the whole output: it was cut at the limit.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The job was stopped by its cancel future.
    pub canceled: bool,
    /// The kernel's out-of-memory killer killed a process of the job because
    /// the sandbox hit its memory limit (isolation level `process`; always
    /// false for `none`, which has no limit of its own).
    pub oom_killed: bool,
    /// Commands started, counting the last one; less than the job's count
    /// when one failed or the job was canceled.
    pub commands_run: usize,
    /// Log lines not delivered because the consumer's channel was full.
    pub log_lines_dropped: u64,
}

impl ShellOutcome {
    /// Every command ran and exited 0.
    pub fn success(&self) -> bool {
        !self.canceled && self.exit_code == Some(0)
    }

    /// Why the job did not succeed, in words for the task's `error` field.
    pub fn failure(&self) -> Option<String> {
        if self.canceled {
            return Some("canceled".to_string());
        }
        let n = self.commands_run;
        match (self.exit_code, self.signal) {
            (Some(0), _) => None,
            _ if self.oom_killed => Some(format!(
                "command {n} ran out of memory: the out-of-memory killer stopped it at the \
                 sandbox's memory limit"
            )),
            (Some(code), _) => Some(format!("command {n} exited with status {code}")),
            (None, Some(signal)) => Some(format!("command {n} was killed by signal {signal}")),
            (None, None) => Some("no command ran".to_string()),
        }
    }
}

impl From<ShellOutcome> for TaskResult {
    fn from(outcome: ShellOutcome) -> Self {
        let error = outcome.failure();
        TaskResult {
            exit_code: outcome.exit_code,
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            stdout_truncated: outcome.stdout_truncated,
            stderr_truncated: outcome.stderr_truncated,
            output: None,
            error,
        }
    }
}

/// Runs `job`'s commands and returns what they did.
///
/// Complete output lines go to `logs` as they arrive, if given. Sending never
/// waits: when the channel is full the line is dropped and counted in
/// [`ShellOutcome::log_lines_dropped`], because a stalled reader would stall
/// the child. Size the channel for bursts.
///
/// When `cancel` completes, the running command's process group gets SIGTERM,
/// then SIGKILL after `kill_grace`, and the outcome has `canceled: true`.
/// Dropping the returned future SIGKILLs the running command's group.
///
/// # Errors
///
/// A [`RuntimeError`] when the job is invalid (no commands, bad file path or
/// environment; nothing is touched then), the working directory or a file
/// cannot be written, or the shell cannot be started.
pub async fn run_shell(
    job: ShellJob,
    logs: Option<Sender<LogLine>>,
    cancel: impl Future<Output = ()>,
) -> Result<ShellOutcome, RuntimeError> {
    run_shell_with(job, logs, cancel, &OnHost).await
}

/// How a job's commands are started: on the host (isolation level `none`),
/// inside a sandbox (`process`) or in a container (`container`). Everything
/// else about a job — output capture, log lines, limits, cancellation — is the
/// same for all of them.
pub(crate) trait Launcher: Sync {
    /// Starts `SHELL -c <command>` in `workdir` with exactly `env` (nothing
    /// inherited), stdin on `/dev/null`, stdout and stderr piped, leading a
    /// new process group.
    fn start_shell(
        &self,
        command: &str,
        workdir: &Path,
        env: &[(String, String)],
    ) -> impl Future<Output = Result<Started, RuntimeError>> + Send;

    /// Refuses a working directory (created, canonical) the commands must not use.
    fn check_workdir(&self, _workdir: &Path) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Creates the job's working directory (and its `.tmp`), checks it and
    /// writes the task files (paths already checked) into it; returns the
    /// directory as the commands see it. By default on the host's filesystem.
    fn prepare_workdir(
        &self,
        workdir: &Path,
        files: &[(PathBuf, &TaskFile)],
    ) -> impl Future<Output = Result<PathBuf, RuntimeError>> + Send {
        async move {
            let workdir = workdir::create(workdir).await?;
            self.check_workdir(&workdir)?;
            for (relative, file) in files {
                workdir::write_file(&workdir, relative, file).await?;
            }
            Ok(workdir)
        }
    }
}

/// A command a [`Launcher`] started.
pub(crate) struct Started {
    pub(crate) leader: AnyLeader,
    /// How the command and everything it started are stopped.
    pub(crate) group: AnyGroup,
    pub(crate) stdout: Option<OutputPipe>,
    pub(crate) stderr: Option<OutputPipe>,
}

/// A command's output pipe, whichever way it started.
pub(crate) type OutputPipe = Box<dyn AsyncRead + Send + Unpin>;

pub(crate) fn boxed<R: AsyncRead + Send + Unpin + 'static>(pipe: Option<R>) -> Option<OutputPipe> {
    pipe.map(|p| Box::new(p) as OutputPipe)
}

/// The leader of a started command: the closed set of ways one starts.
pub(crate) enum AnyLeader {
    /// A child of the fabric (level `none`); killed if dropped.
    Host(tokio::process::Child),
    /// A program the sandbox's init started (level `process`).
    Sandboxed(crate::sandbox::InitChild),
    /// A `docker exec` in an agent container (level `container`).
    #[cfg(feature = "docker")]
    Container(crate::container::ExecLeader),
}

impl Leader for AnyLeader {
    async fn wait_exit(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            AnyLeader::Host(child) => child.wait().await,
            AnyLeader::Sandboxed(child) => Ok(child.wait().await),
            #[cfg(feature = "docker")]
            AnyLeader::Container(exec) => exec.wait_exit().await,
        }
    }
}

/// Everything a started command made, as one thing to stop.
pub(crate) enum AnyGroup {
    /// A process group on this host (levels `none` and `process`).
    Host(ProcessGroup),
    /// The process group of a `docker exec`, stopped from inside the container.
    #[cfg(feature = "docker")]
    Container(crate::container::ExecGroup),
}

impl AnyGroup {
    /// The process group a freshly started leader `pid` created.
    pub(crate) fn host(pid: u32, command: &str) -> Result<AnyGroup, RuntimeError> {
        // A just-started leader always has an ordinary pid; this is unreachable in practice.
        ProcessGroup::led_by(pid)
            .map(AnyGroup::Host)
            .ok_or_else(|| RuntimeError::Wait {
                command: command.to_string(),
                cause: std::io::Error::other("the shell has no usable process id"),
            })
    }

    /// Stops every process of the command (SIGTERM, up to `grace`, SIGKILL)
    /// and reaps the leader; see [`ProcessGroup::terminate`].
    async fn terminate(
        &mut self,
        leader: &mut AnyLeader,
        grace: Duration,
    ) -> std::io::Result<ExitStatus> {
        match self {
            AnyGroup::Host(group) => group.terminate(leader, grace).await,
            #[cfg(feature = "docker")]
            AnyGroup::Container(group) => group.terminate(leader, grace).await,
        }
    }
}

/// `SHELL -c command` as a child of the fabric, in `workdir`, with exactly
/// `env`, stdin on `/dev/null`, stdout and stderr piped, leading a new
/// process group.
pub(crate) fn host_shell(
    command: &str,
    workdir: &Path,
    env: &[(String, String)],
) -> Result<tokio::process::Child, RuntimeError> {
    host_shell_with(command, workdir, env, &[], |_| {})
}

/// [`host_shell`] run through `wrapper` (a program and its arguments that
/// end by executing the shell they are given, e.g. the confinement
/// trampoline; empty: the shell itself), with `configure` given the command
/// before it is spawned (a confinement without trampoline adds its
/// `pre_exec` there).
pub(crate) fn host_shell_with(
    command: &str,
    workdir: &Path,
    env: &[(String, String)],
    wrapper: &[std::ffi::OsString],
    configure: impl FnOnce(&mut tokio::process::Command),
) -> Result<tokio::process::Child, RuntimeError> {
    let mut shell = match wrapper.split_first() {
        Some((program, args)) => {
            let mut wrapped = tokio::process::Command::new(program);
            wrapped.args(args).arg(SHELL);
            wrapped
        }
        None => tokio::process::Command::new(SHELL),
    };
    shell
        .arg("-c")
        .arg(command)
        .current_dir(workdir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // Backstop for the leader if its owner is dropped; `ProcessGroup`'s
        // drop covers the rest of the group.
        .kill_on_drop(true);
    configure(&mut shell);
    shell.spawn().map_err(|cause| RuntimeError::Spawn {
        command: command.to_string(),
        cause,
    })
}

/// A shell [`host_shell`] started, as a [`Started`] command.
pub(crate) fn started_on_host(
    mut child: tokio::process::Child,
    command: &str,
) -> Result<Started, RuntimeError> {
    Ok(Started {
        group: AnyGroup::host(child.id().unwrap_or(0), command)?,
        stdout: boxed(child.stdout.take()),
        stderr: boxed(child.stderr.take()),
        leader: AnyLeader::Host(child),
    })
}

/// Isolation level `none`: the shell is a plain child of the fabric.
struct OnHost;

impl Launcher for OnHost {
    async fn start_shell(
        &self,
        command: &str,
        workdir: &Path,
        env: &[(String, String)],
    ) -> Result<Started, RuntimeError> {
        started_on_host(host_shell(command, workdir, env)?, command)
    }
}

/// [`run_shell`] with the commands started by `launcher`.
pub(crate) async fn run_shell_with(
    job: ShellJob,
    logs: Option<Sender<LogLine>>,
    cancel: impl Future<Output = ()>,
    launcher: &impl Launcher,
) -> Result<ShellOutcome, RuntimeError> {
    let files = check(&job)?;
    let files: Vec<(PathBuf, &TaskFile)> = files.into_iter().zip(&job.files).collect();
    let workdir = launcher.prepare_workdir(&job.workdir, &files).await?;
    let env = environment(&workdir, &job.env);
    tracing::debug!(workdir = %workdir.display(), commands = job.commands.len(), "running shell job");

    let setting = Setting {
        launcher,
        workdir: &workdir,
        env: &env,
        grace: job.kill_grace,
    };
    let mut cancel = pin!(cancel);
    let mut stdout = Capture::new(Stream::Stdout, job.output_limit, logs.clone());
    let mut stderr = Capture::new(Stream::Stderr, job.output_limit, logs);
    let mut last: Option<ExitStatus> = None;
    let mut canceled = false;
    let mut commands_run = 0;

    for command in &job.commands {
        // Checked before each start, so a job canceled early spawns nothing more.
        if poll_fn(|cx| Poll::Ready(cancel.as_mut().poll(cx).is_ready())).await {
            canceled = true;
            break;
        }
        commands_run += 1;
        let ran = run_command(&setting, command, &mut stdout, &mut stderr, cancel.as_mut()).await?;
        last = Some(ran.status);
        tracing::debug!(command = commands_run, status = %ran.status, canceled = ran.canceled, "command ended");
        if ran.canceled {
            canceled = true;
            break;
        }
        if !ran.status.success() {
            break;
        }
    }

    let log_lines_dropped = stdout.dropped_lines() + stderr.dropped_lines();
    if log_lines_dropped > 0 {
        tracing::debug!(
            log_lines_dropped,
            "log consumer was too slow; lines were dropped"
        );
    }
    let (stdout, stdout_truncated) = stdout.finish();
    let (stderr, stderr_truncated) = stderr.finish();
    Ok(ShellOutcome {
        exit_code: last.and_then(|s| s.code()),
        signal: last.and_then(|s| s.signal()),
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        canceled,
        oom_killed: false,
        commands_run,
        log_lines_dropped,
    })
}

/// Validates everything about `job` that needs no disk: a bad job touches nothing.
/// Returns the files' checked relative paths, in order.
fn check(job: &ShellJob) -> Result<Vec<PathBuf>, RuntimeError> {
    if job.commands.is_empty() {
        return Err(RuntimeError::NoCommands);
    }
    if let Some(command) = job.commands.iter().find(|c| c.contains('\0')) {
        return Err(RuntimeError::InvalidCommand {
            command: command.clone(),
        });
    }
    check_env(&job.env)?;
    job.files
        .iter()
        .map(|f| workdir::checked_file_path(&f.path))
        .collect()
}

/// Refuses variables `Command::env` would choke on.
pub(crate) fn check_env(env: &[(String, String)]) -> Result<(), RuntimeError> {
    for (key, value) in env {
        let reason = if key.is_empty() || key.contains(['=', '\0']) {
            "names must be non-empty and contain neither '=' nor NUL"
        } else if value.contains('\0') {
            "values cannot contain NUL bytes"
        } else {
            continue;
        };
        return Err(RuntimeError::InvalidEnv {
            key: key.clone(),
            reason,
        });
    }
    Ok(())
}

/// The base environment, then the job's variables on top.
pub(crate) fn environment(workdir: &Path, extra: &[(String, String)]) -> Vec<(String, String)> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut env = vec![
        (ENV_PATH.to_string(), BASE_PATH.to_string()),
        (ENV_HOME.to_string(), path(workdir)),
        (ENV_LANG.to_string(), "C.UTF-8".to_string()),
        (
            ENV_TMPDIR.to_string(),
            path(&workdir.join(workdir::TMP_DIR)),
        ),
    ];
    // Later entries win in `Command::envs`, so the job may override the base.
    env.extend(extra.iter().cloned());
    env
}

/// What every command of a job shares.
struct Setting<'a, L> {
    launcher: &'a L,
    workdir: &'a Path,
    env: &'a [(String, String)],
    grace: Duration,
}

/// How one command ended.
struct Ran {
    status: ExitStatus,
    canceled: bool,
}

/// Runs one command to its end (or cancellation), reading both streams the
/// whole time so neither pipe can fill up and block the child.
async fn run_command<C: Future<Output = ()>, L: Launcher>(
    setting: &Setting<'_, L>,
    command: &str,
    stdout: &mut Capture,
    stderr: &mut Capture,
    mut cancel: Pin<&mut C>,
) -> Result<Ran, RuntimeError> {
    let Started {
        leader: mut child,
        mut group,
        stdout: out_pipe,
        stderr: err_pipe,
    } = setting
        .launcher
        .start_shell(command, setting.workdir, setting.env)
        .await?;
    let lost = |cause| RuntimeError::Wait {
        command: command.to_string(),
        cause,
    };

    let mut drain = pin!(async {
        tokio::join!(pump(out_pipe, stdout), pump(err_pipe, stderr));
    });
    let mut drained = false;

    // Until the shell exits or the job is canceled.
    let canceled = loop {
        tokio::select! {
            biased;
            () = cancel.as_mut() => break true,
            status = child.wait_exit() => {
                status.map_err(lost)?;
                break false;
            }
            () = &mut drain, if !drained => drained = true,
        }
    };

    // Stop what is left of the group, still reading: processes may write while
    // they shut down, and must not block on a full pipe while doing so.
    let status = {
        let mut stopping = pin!(group.terminate(&mut child, setting.grace));
        loop {
            tokio::select! {
                status = &mut stopping => break status,
                () = &mut drain, if !drained => drained = true,
            }
        }
    };
    if !drained
        && tokio::time::timeout(PIPE_DRAIN_TIMEOUT, &mut drain)
            .await
            .is_err()
    {
        tracing::warn!(
            command = %crate::error::preview(command),
            "output pipes still open after the command's process group ended: a process left the group \
             (setsid?); its further output is discarded"
        );
    }
    Ok(Ran {
        status: status.map_err(lost)?,
        canceled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_environment_overrides_the_base() {
        let env = environment(
            Path::new("/w"),
            &[
                ("LANG".into(), "de_DE.UTF-8".into()),
                ("X".into(), "1".into()),
            ],
        );
        let lang: Vec<_> = env
            .iter()
            .filter(|(k, _)| k == "LANG")
            .map(|(_, v)| v.as_str())
            .collect();
        // Both are passed; `Command::envs` applies them in order, so the last wins.
        assert_eq!(lang, ["C.UTF-8", "de_DE.UTF-8"]);
        assert!(env.contains(&("HOME".into(), "/w".into())));
        assert!(env.contains(&("TMPDIR".into(), "/w/.tmp".into())));
        assert!(env.contains(&("PATH".into(), BASE_PATH.into())));
    }

    #[test]
    fn debug_output_hides_env_values_and_file_contents() {
        let mut job = ShellJob::new(vec!["true".into()], "/w".into());
        job.env
            .push(("FABRIC_AGENT_TOKEN".into(), "tok-secret".into()));
        job.files.push(TaskFile {
            path: "key.pem".into(),
            content: "pem-secret".into(),
        });
        let shown = format!("{job:?}");
        assert!(
            shown.contains("FABRIC_AGENT_TOKEN") && shown.contains("key.pem"),
            "{shown}"
        );
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn invalid_jobs_are_refused_before_touching_anything() {
        let job = |commands: &[&str]| {
            ShellJob::new(
                commands.iter().map(|c| c.to_string()).collect(),
                "/w".into(),
            )
        };
        assert!(matches!(check(&job(&[])), Err(RuntimeError::NoCommands)));
        assert!(matches!(
            check(&job(&["a\0b"])),
            Err(RuntimeError::InvalidCommand { .. })
        ));
        for (key, value) in [("", "v"), ("A=B", "v"), ("A", "v\0")] {
            let mut bad = job(&["true"]);
            bad.env.push((key.into(), value.into()));
            assert!(
                matches!(check(&bad), Err(RuntimeError::InvalidEnv { .. })),
                "{key:?}={value:?}"
            );
        }
    }

    #[test]
    fn failures_are_described_for_the_task_result() {
        let outcome = |exit_code, signal, canceled| ShellOutcome {
            exit_code,
            signal,
            canceled,
            commands_run: 2,
            ..ShellOutcome::default()
        };
        assert_eq!(outcome(Some(0), None, false).failure(), None);
        assert!(outcome(Some(0), None, false).success());
        assert_eq!(
            outcome(Some(3), None, false).failure().as_deref(),
            Some("command 2 exited with status 3")
        );
        assert_eq!(
            outcome(None, Some(9), false).failure().as_deref(),
            Some("command 2 was killed by signal 9")
        );
        assert_eq!(
            outcome(None, Some(15), true).failure().as_deref(),
            Some("canceled")
        );
        let oom = ShellOutcome {
            oom_killed: true,
            ..outcome(None, Some(9), false)
        };
        assert_eq!(
            oom.failure().as_deref(),
            Some(
                "command 2 ran out of memory: the out-of-memory killer stopped it at the \
                 sandbox's memory limit"
            )
        );
        let result = TaskResult::from(outcome(Some(1), None, false));
        assert_eq!(result.exit_code, Some(1));
        assert_eq!(
            result.error.as_deref(),
            Some("command 2 exited with status 1")
        );
    }
}
