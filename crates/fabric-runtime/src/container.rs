//! Isolation level `container`: a task's commands run inside an agent's Docker
//! container, one `docker exec` per command (feature `docker`).
//!
//! [`ContainerShell::run_shell`] has the semantics of [`run_shell`](crate::run_shell)
//! — same job and outcome types, environment, output limits, log lines and
//! cancellation — through the same capture code: only starting a command, the
//! working directory and stopping a command differ, and those are what its
//! `Launcher` implementation (the crate's seam for how commands start) provides.
//!
//! # How a command runs
//!
//! Every command is started as `sh -c WRAPPER CMD PIDFILE GRACE`, where the
//! wrapper ([`WRAPPER`]) starts `sh -c CMD` in a new session with `setsid`
//! (so the command and everything it starts form one process group inside the
//! container, as on the host), notes that group's id in `PIDFILE` on the
//! container's small exec tmpfs, waits for the command and exits with its
//! status. Then, as on the host, whatever the command left running in its
//! group gets SIGTERM and, after the grace, SIGKILL. A process that left the
//! group (`setsid`, a double fork) is found by the mark every process the
//! command starts inherits, `FABRIC_EXEC_SCOPE=<pid file>` in its
//! environment, and gets SIGKILL. (Without privileges in the container there
//! is no pid namespace or cgroup per command: a program that execs itself
//! with a scrubbed environment *and* leaves the group escapes this; the
//! container's end still stops it. The `process` level has no such gap.)
//! The fabric cannot signal
//! processes in a container it does not share a PID namespace with (an
//! orchestrator in its own container), so to stop a command it runs a second
//! exec, `kill -TERM -- -$(cat PIDFILE)`, and SIGKILL after the grace.
//!
//! - stdout and stderr arrive multiplexed on one stream; a task splits them
//!   into the two pipes the capture code reads.
//! - The exit code is the daemon's (`docker exec`'s `ExitCode`): a command
//!   killed by signal N reads as 128 + N, which is reported as that signal
//!   (as shells and Docker do), so `exit 137` looks like SIGKILL.
//! - Out-of-memory kills are counted in the container's cgroup when the
//!   daemon is local ([`ContainerCgroup`]); otherwise Docker's `OOMKilled` flag
//!   (set by any OOM kill in the container since it started) turning true
//!   while the job ran says so.
//! - The working directory must be under [`WORKSPACE`] (the work volume):
//!   task files are copied in with the daemon's archive API, owned by the
//!   agent's user, and a symbolic link planted by an earlier command can only
//!   lead inside the container.
//! - Background jobs of a non-interactive shell ignore SIGINT and SIGQUIT, so
//!   a command here does too (it runs as such a job); SIGTERM and SIGKILL are
//!   what stops commands anyway.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fabric_core::TaskFile;
use fabric_docker::DockerClient;
use fabric_docker::agent::{EXEC_DIR, WORKSPACE};
use fabric_docker::client::ExecSpec;
use fabric_docker::image::{IMAGE_UID, Rootfs};
use fabric_docker::stats::ContainerCgroup;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc::Sender, watch};
use tokio::time::Instant;

use crate::RuntimeError;
use crate::child::group::Leader;
use crate::child::{
    self, AnyGroup, AnyLeader, Launcher, LogLine, OutputPipe, ShellJob, ShellOutcome, Started,
};

/// The shell script every command runs under; see the module docs.
/// `$0` is the command, `$1` the pid file, `$2` the grace in tenths of a second.
pub const WRAPPER: &str = r#"FABRIC_EXEC_SCOPE="$1" setsid /bin/sh -c "$0" & q=$!
echo "$q" >"$1"
wait "$q"; rc=$?
if kill -TERM -- "-$q" 2>/dev/null; then
  n=0
  while [ "$n" -lt "$2" ] && kill -0 -- "-$q" 2>/dev/null; do sleep 0.1; n=$((n+1)); done
  kill -KILL -- "-$q" 2>/dev/null
fi
r=0
while [ "$r" -lt 50 ]; do
  found=
  for e in /proc/[0-9]*/environ; do
    tr '\0' '\n' <"$e" 2>/dev/null | grep -qxF "FABRIC_EXEC_SCOPE=$1" || continue
    p=${e#/proc/}; kill -KILL "${p%/environ}" 2>/dev/null && found=1
  done
  [ -z "$found" ] && break
  r=$((r+1))
done
rm -f "$1"
exit "$rc""#;

/// Buffer between the daemon's stream and the capture code, per stream.
const PIPE_BUFFER: usize = 64 * 1024;
/// How often a running exec's status is asked for while its output is still
/// open: first after this, then twice as long each time up to [`STATUS_POLL_MAX`].
const STATUS_POLL: Duration = Duration::from_millis(250);
const STATUS_POLL_MAX: Duration = Duration::from_secs(2);
/// How long to wait for a command to end after SIGKILL before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long a command that died of a signal waits to see whether its
/// container went down with it (see [`ContainerShell::run_shell`]).
const CONTAINER_EXIT_WINDOW: Duration = Duration::from_millis(750);
/// Pause between tries to signal a command whose pid file is not written yet.
const SIGNAL_RETRY: Duration = Duration::from_millis(50);

/// Runs shell jobs in one running agent container.
#[derive(Debug, Clone)]
pub struct ContainerShell {
    client: DockerClient,
    /// Container name or id.
    container: String,
    /// Its cgroup on this host, when visible (a local daemon): OOM kills are counted there.
    cgroup: Option<ContainerCgroup>,
    /// Grace between SIGTERM and SIGKILL for what a command leaves running.
    kill_grace: Duration,
}

impl ContainerShell {
    /// A shell for `container` (`id` is its full id and `pid` the host pid of
    /// its init, used to find its cgroup; 0 when unknown).
    pub fn new(
        client: DockerClient,
        container: impl Into<String>,
        id: &str,
        pid: i64,
        kill_grace: Duration,
    ) -> ContainerShell {
        ContainerShell {
            client,
            container: container.into(),
            cgroup: (pid > 0).then(|| ContainerCgroup::find(pid, id)).flatten(),
            kill_grace,
        }
    }

    pub fn container(&self) -> &str {
        &self.container
    }

    /// The directory every job's working directory must be under.
    pub fn workspace() -> &'static Path {
        Path::new(WORKSPACE)
    }

    /// Runs `job` in the container, with the semantics of
    /// [`run_shell`](crate::run_shell) (module docs: what differs).
    /// `job.workdir` must be under [`ContainerShell::workspace`].
    pub async fn run_shell(
        &self,
        job: ShellJob,
        logs: Option<Sender<LogLine>>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<ShellOutcome, RuntimeError> {
        let grace = job.kill_grace;
        let shell = ContainerShell {
            kill_grace: grace,
            ..self.clone()
        };
        let before = shell.oom_mark().await;
        let mut outcome = match child::run_shell_with(job, logs, cancel, &shell).await {
            Ok(outcome) => outcome,
            // Files or a command that could not be started in a container that
            // has just stopped: the agent crashed (see below).
            Err(e @ (RuntimeError::ContainerExec { .. } | RuntimeError::ContainerFiles { .. })) => {
                if shell.stopped_within(CONTAINER_EXIT_WINDOW).await {
                    return Err(RuntimeError::ContainerGone {
                        container: self.container.clone(),
                    });
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        outcome.oom_killed = shell.oom_since(before).await;
        // A command killed by a signal nobody here sent may have gone down with
        // its container (killed, crashed): that is the agent's crash, not the
        // task's failure, and the caller must not report it as one.
        if outcome.signal.is_some()
            && !outcome.canceled
            && !outcome.oom_killed
            && shell.stopped_within(CONTAINER_EXIT_WINDOW).await
        {
            return Err(RuntimeError::ContainerGone {
                container: self.container.clone(),
            });
        }
        Ok(outcome)
    }

    /// Removes a finished task's working directory (below the workspace).
    /// With `clear_tmp`, for an agent that runs one task at a time, also
    /// empties the container's `/tmp` and `/dev/shm`, so the next task finds
    /// nothing of this one there (a container has one of each for all its
    /// tasks; at `process` each task has its own).
    pub async fn remove_task_dir(&self, workdir: &Path, clear_tmp: bool) -> io::Result<()> {
        let inside = workdir.strip_prefix(WORKSPACE).is_ok_and(|rest| {
            rest.components().next().is_some()
                && rest.components().all(|c| matches!(c, Component::Normal(_)))
        });
        let Some(dir) = workdir.to_str().filter(|_| inside) else {
            return Err(io::Error::other(format!(
                "{} is not a task directory below {WORKSPACE}",
                workdir.display()
            )));
        };
        let script = r#"rm -rf -- "$0"
[ "$1" = 1 ] && rm -rf /tmp/* /tmp/.[!.]* /tmp/..?* /dev/shm/* /dev/shm/.[!.]* 2>/dev/null
true"#;
        let flag = if clear_tmp { "1" } else { "0" };
        let output = self
            .client
            .exec(&self.container, &["sh", "-c", script, dir, flag])
            .await
            .map_err(io::Error::other)?;
        match output.exit_code {
            Some(0) => Ok(()),
            _ => Err(io::Error::other(format!(
                "removing {dir} failed: {}",
                output.stderr.trim()
            ))),
        }
    }

    /// Bytes the workspace volume's files take (`du -sk`, run in the container).
    pub async fn workspace_usage(&self) -> io::Result<u64> {
        let output = self
            .client
            .exec(&self.container, &["du", "-sk", WORKSPACE])
            .await
            .map_err(io::Error::other)?;
        // Unreadable entries make du complain and exit 1, with the total still printed.
        output
            .stdout
            .split_whitespace()
            .next()
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "du -sk {WORKSPACE} answered {:?} {:?}",
                    output.stdout, output.stderr
                ))
            })
    }

    /// Whether the container stopped (or is gone), looking for up to `window`:
    /// Docker learns that a container's init died a moment after its execs end.
    async fn stopped_within(&self, window: Duration) -> bool {
        let deadline = Instant::now() + window;
        loop {
            match fabric_docker::agent::exit_of(&self.client, &self.container).await {
                Ok(Some(exit)) if exit.running => {}
                Ok(_) => return true,
                Err(_) => return false,
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn oom_mark(&self) -> OomMark {
        match &self.cgroup {
            Some(cgroup) => OomMark::Kills(cgroup.oom_kills().unwrap_or(0)),
            None => OomMark::Flag(self.oom_flag().await),
        }
    }

    async fn oom_since(&self, before: OomMark) -> bool {
        match before {
            OomMark::Kills(n) => self
                .cgroup
                .as_ref()
                .and_then(ContainerCgroup::oom_kills)
                .is_some_and(|now| now > n),
            OomMark::Flag(was) => !was && self.oom_flag().await,
        }
    }

    async fn oom_flag(&self) -> bool {
        match self.client.inspect_container(&self.container).await {
            Ok(Some(c)) => c.state.and_then(|s| s.oom_killed).unwrap_or(false),
            _ => false,
        }
    }

    fn exec_error(&self, command: &str, e: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::ContainerExec {
            container: self.container.clone(),
            command: command.to_owned(),
            reason: e.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum OomMark {
    Kills(u64),
    Flag(bool),
}

/// A name for a command's pid file, unique within this fabric process.
fn pid_file() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{EXEC_DIR}/{}-{n}", std::process::id())
}

impl Launcher for ContainerShell {
    async fn start_shell(
        &self,
        command: &str,
        workdir: &Path,
        env: &[(String, String)],
    ) -> Result<Started, RuntimeError> {
        let pid_file = pid_file();
        let tenths = (self.kill_grace.as_millis() / 100).to_string();
        let spec = ExecSpec {
            cmd: vec![
                child::SHELL.to_owned(),
                "-c".to_owned(),
                WRAPPER.to_owned(),
                command.to_owned(),
                pid_file.clone(),
                tenths,
            ],
            // Later entries win, as with `Command::envs`.
            env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: Some(workdir.to_string_lossy().into_owned()),
            user: None,
        };
        let started = self
            .client
            .exec_start(&self.container, spec)
            .await
            .map_err(|e| self.exec_error(command, e))?;
        let (out_tx, out_rx) = tokio::io::duplex(PIPE_BUFFER);
        let (err_tx, err_rx) = tokio::io::duplex(PIPE_BUFFER);
        let (ended_tx, ended) = watch::channel(false);
        tokio::spawn(demux(started.output, out_tx, err_tx, ended_tx));
        Ok(Started {
            leader: AnyLeader::Container(ExecLeader {
                client: self.client.clone(),
                id: started.id,
                ended,
                status: None,
                poll: STATUS_POLL,
            }),
            group: AnyGroup::Container(ExecGroup {
                client: self.client.clone(),
                container: self.container.clone(),
                pid_file,
                armed: true,
            }),
            stdout: Some(Box::new(out_rx) as OutputPipe),
            stderr: Some(Box::new(err_rx) as OutputPipe),
        })
    }

    fn check_workdir(&self, workdir: &Path) -> Result<(), RuntimeError> {
        let plain = workdir
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if plain && workdir.starts_with(WORKSPACE) && workdir != Path::new(WORKSPACE) {
            Ok(())
        } else {
            Err(RuntimeError::WorkdirOutsideContainer {
                container: self.container.clone(),
                workdir: workdir.to_path_buf(),
                workspace: PathBuf::from(WORKSPACE),
            })
        }
    }

    async fn prepare_workdir(
        &self,
        workdir: &Path,
        files: &[(PathBuf, &TaskFile)],
    ) -> Result<PathBuf, RuntimeError> {
        self.check_workdir(workdir)?;
        let archive =
            workdir_archive(workdir, files).map_err(|reason| RuntimeError::ContainerFiles {
                container: self.container.clone(),
                reason,
            })?;
        // Unpacked by the daemon inside the container's filesystem: links an
        // earlier command planted cannot lead outside the container.
        self.client
            .upload(&self.container, WORKSPACE, archive)
            .await
            .map_err(|e| RuntimeError::ContainerFiles {
                container: self.container.clone(),
                reason: e.to_string(),
            })?;
        Ok(workdir.to_path_buf())
    }
}

/// A tar, relative to [`WORKSPACE`], holding the working directory, its `.tmp`
/// and the task files, all owned by the agent's user.
fn workdir_archive(workdir: &Path, files: &[(PathBuf, &TaskFile)]) -> Result<Vec<u8>, String> {
    let relative = workdir
        .strip_prefix(WORKSPACE)
        .map_err(|e| e.to_string())?
        .to_string_lossy()
        .into_owned();
    let mut fs = Rootfs::new();
    let error = |e: fabric_docker::image::ImageError| e.to_string();
    let mut dir = String::new();
    for part in relative.split('/').filter(|p| !p.is_empty()) {
        dir = if dir.is_empty() {
            part.to_owned()
        } else {
            format!("{dir}/{part}")
        };
        fs.dir(&dir, 0o755, IMAGE_UID).map_err(error)?;
    }
    fs.dir(&format!("{relative}/.tmp"), 0o755, IMAGE_UID)
        .map_err(error)?;
    for (path, file) in files {
        let mut parent = relative.clone();
        if let Some(dirs) = path.parent() {
            for part in dirs.components() {
                parent = format!("{parent}/{}", part.as_os_str().to_string_lossy());
                fs.dir(&parent, 0o755, IMAGE_UID).map_err(error)?;
            }
        }
        let target = format!("{relative}/{}", path.to_string_lossy());
        fs.file(&target, file.content.as_bytes(), 0o644, IMAGE_UID)
            .map_err(error)?;
    }
    fs.finish().map_err(error)
}

/// Splits the daemon's multiplexed output into the two pipes; closes them at
/// the end of the stream and says so on `ended`. Once a reader is gone the
/// rest is read and dropped, so the command never blocks on a full pipe.
async fn demux(
    mut output: futures_util::stream::BoxStream<
        'static,
        Result<bollard::container::LogOutput, fabric_docker::DockerError>,
    >,
    mut stdout: tokio::io::DuplexStream,
    mut stderr: tokio::io::DuplexStream,
    ended: watch::Sender<bool>,
) {
    use bollard::container::LogOutput;
    let (mut out_open, mut err_open) = (true, true);
    while let Some(frame) = output.next().await {
        match frame {
            Ok(LogOutput::StdErr { message }) => {
                if err_open && stderr.write_all(&message).await.is_err() {
                    err_open = false;
                }
            }
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                if out_open && stdout.write_all(&message).await.is_err() {
                    out_open = false;
                }
            }
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading a container command's output failed");
                break;
            }
        }
    }
    drop((stdout, stderr));
    ended.send_replace(true);
}

/// The leader of a command started with `docker exec`: its exit is the exec's.
pub(crate) struct ExecLeader {
    client: DockerClient,
    id: String,
    /// True once the output stream ended.
    ended: watch::Receiver<bool>,
    status: Option<ExitStatus>,
    /// The next status poll interval while the output is open.
    poll: Duration,
}

impl Leader for ExecLeader {
    async fn wait_exit(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            let ended = *self.ended.borrow();
            if !ended {
                // The output closes when the wrapper and everything that shares its
                // pipes are gone; a process that left the group keeps it open, so
                // the exec's own status is polled as well.
                let _ = tokio::time::timeout(self.poll, self.ended.wait_for(|e| *e)).await;
                self.poll = (self.poll * 2).min(STATUS_POLL_MAX);
            }
            match self.client.exec_status(&self.id).await {
                Ok(status) if !status.running => {
                    let code = status.exit_code.unwrap_or(-1);
                    self.status = Some(exit_status(code));
                }
                Ok(_) if ended => tokio::time::sleep(Duration::from_millis(10)).await,
                Ok(_) => {}
                // The exec (its container) is gone: it was killed with it.
                Err(e) if e.is_not_found() => {
                    self.status = Some(ExitStatus::from_raw(libc::SIGKILL));
                }
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
    }
}

/// An exec's exit code as a wait status: 128 + N is signal N (see the module docs).
fn exit_status(code: i64) -> ExitStatus {
    match i32::try_from(code) {
        Ok(code @ 129..=192) => ExitStatus::from_raw(code - 128),
        Ok(code @ 0..=255) => ExitStatus::from_raw(code << 8),
        _ => ExitStatus::from_raw(255 << 8),
    }
}

/// The process group of one exec's command, signalled from inside the container.
pub(crate) struct ExecGroup {
    client: DockerClient,
    container: String,
    pid_file: String,
    /// Dropped while armed (the job's future went away): SIGKILL it.
    armed: bool,
}

impl ExecGroup {
    /// Stops the command: SIGTERM to its group, up to `grace` for the wrapper
    /// to exit, then SIGKILL. Returns at once if the command already ended
    /// (the wrapper has dealt with what it left behind).
    pub(crate) async fn terminate(
        &mut self,
        leader: &mut AnyLeader,
        grace: Duration,
    ) -> io::Result<ExitStatus> {
        self.armed = false;
        if let Ok(status) = tokio::time::timeout(Duration::ZERO, leader.wait_exit()).await {
            return status;
        }
        let deadline = Instant::now() + grace;
        // The pid file appears a moment after the exec starts; a cancel may come sooner.
        let term = async {
            while !self.signal("TERM").await && Instant::now() < deadline {
                tokio::time::sleep(SIGNAL_RETRY).await;
            }
            tokio::time::sleep_until(deadline).await;
        };
        tokio::select! {
            status = leader.wait_exit() => return status,
            () = term => {}
        }
        tracing::warn!(container = %self.container, ?grace, "container command ignored SIGTERM; sending SIGKILL");
        let until = Instant::now() + KILL_WAIT;
        let kill = async {
            while !self.signal("KILL").await && Instant::now() < until {
                tokio::time::sleep(SIGNAL_RETRY).await;
            }
            tokio::time::sleep_until(until).await;
        };
        tokio::select! {
            status = leader.wait_exit() => status,
            () = kill => {
                tracing::warn!(container = %self.container, "container command did not end after SIGKILL; giving up on it");
                Ok(ExitStatus::from_raw(libc::SIGKILL))
            }
        }
    }

    /// Sends `SIG` to the command's group; true once it was delivered.
    async fn signal(&self, signal: &str) -> bool {
        signal_exec(&self.client, &self.container, &self.pid_file, signal).await
    }
}

async fn signal_exec(client: &DockerClient, container: &str, pid_file: &str, signal: &str) -> bool {
    let script =
        format!("q=$(cat {pid_file} 2>/dev/null) && [ -n \"$q\" ] && kill -{signal} -- \"-$q\"");
    match client.exec(container, &[child::SHELL, "-c", &script]).await {
        Ok(out) => out.exit_code == Some(0),
        Err(e) => {
            tracing::debug!(container, error = %e, "cannot signal a container command");
            false
        }
    }
}

impl Drop for ExecGroup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The job was dropped mid-command: nothing it started may outlive it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, container, pid_file) = (
                self.client.clone(),
                self.container.clone(),
                self.pid_file.clone(),
            );
            runtime.spawn(async move {
                for _ in 0..20 {
                    if signal_exec(&client, &container, &pid_file, "KILL").await {
                        break;
                    }
                    tokio::time::sleep(SIGNAL_RETRY).await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_become_wait_statuses() {
        assert_eq!(exit_status(0).code(), Some(0));
        assert_eq!(exit_status(3).code(), Some(3));
        assert_eq!(exit_status(137).signal(), Some(9));
        assert_eq!(exit_status(143).signal(), Some(15));
        assert_eq!(exit_status(-1).code(), Some(255));
    }

    #[test]
    fn workdir_archives_are_owned_by_the_agent() {
        let file = TaskFile {
            path: "sub/a.txt".into(),
            content: "hi".into(),
        };
        let files = vec![(PathBuf::from("sub/a.txt"), &file)];
        let bytes = workdir_archive(Path::new("/workspace/t1"), &files).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let entries: Vec<(String, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().uid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("t1/".to_owned(), IMAGE_UID),
                ("t1/.tmp/".to_owned(), IMAGE_UID),
                ("t1/sub/".to_owned(), IMAGE_UID),
                ("t1/sub/a.txt".to_owned(), IMAGE_UID),
            ]
        );
    }
}
