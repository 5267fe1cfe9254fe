//! Process groups: a command and everything it started are signalled together.
//!
//! Each command's shell leads a new process group, so `kill(-pgid)` reaches
//! its pipelines and background jobs too. A process that calls `setsid` or
//! `setpgid` leaves the group and escapes this; containing those needs the
//! cgroups of the `process` isolation level.
//!
//! A group counts as empty once only zombies are left. Orphaned members are
//! reaped by PID 1, which may be slow (or, for a fabric running as PID 1 in a
//! container without an init, never); a dead process must not keep a stop
//! waiting for the whole grace period.

use std::future::Future;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;

/// A process-group leader whose exit status can be awaited: a child of the
/// fabric, or a program a sandbox's init started and reaps.
pub(crate) trait Leader: Send {
    /// Waits for the leader to exit (reaping it); cancel-safe and repeatable.
    fn wait_exit(&mut self) -> impl Future<Output = io::Result<ExitStatus>> + Send;
}

impl Leader for tokio::process::Child {
    fn wait_exit(&mut self) -> impl Future<Output = io::Result<ExitStatus>> + Send {
        self.wait()
    }
}

/// How often to look whether a signalled group has emptied.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// The process group led by one command's shell.
///
/// Dropping it while armed SIGKILLs the group: if the job's future is dropped
/// mid-run (its caller timed out or went away), nothing it started survives.
#[derive(Debug)]
pub(crate) struct ProcessGroup {
    pgid: libc::pid_t,
    armed: bool,
}

impl ProcessGroup {
    /// The group a freshly spawned leader (`process_group(0)`) created.
    /// `None` for ids that do not name an ordinary group: signalling
    /// `-0` or `-1` would hit our own group or every process we may signal.
    pub(crate) fn led_by(pid: u32) -> Option<Self> {
        let pgid = libc::pid_t::try_from(pid).ok().filter(|&p| p > 1)?;
        Some(Self { pgid, armed: true })
    }

    /// Stops every process in the group and reaps the leader: SIGTERM, up to
    /// `grace` for the group to empty, then SIGKILL.
    ///
    /// Also used after a command exits normally: whatever it left running in
    /// the background is part of the task and ends with it (as `docker stop`
    /// ends a container's stragglers). An empty group costs one `kill` call.
    pub(crate) async fn terminate(
        &mut self,
        leader: &mut impl Leader,
        grace: Duration,
    ) -> io::Result<ExitStatus> {
        if self.signal(libc::SIGTERM).is_err() {
            // ESRCH: nobody is left, not even the (unreaped) leader. EPERM: only
            // processes we may not signal are left; waiting cannot change that.
            self.armed = false;
            return leader.wait_exit().await;
        }
        let deadline = Instant::now() + grace;
        let emptied = async {
            let status = leader.wait_exit().await;
            // The leader is reaped first so it does not count as "alive" here.
            while self.has_live_members().await {
                tokio::time::sleep(GROUP_POLL).await;
            }
            status
        };
        let ended = tokio::time::timeout_at(deadline, emptied).await;
        let status = match ended {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(
                    pgid = self.pgid,
                    ?grace,
                    "process group ignored SIGTERM; sending SIGKILL"
                );
                // Best effort: an error means the group emptied in the meantime.
                let _ = self.signal(libc::SIGKILL);
                leader.wait_exit().await
            }
        };
        self.armed = false;
        status
    }

    /// Whether any member is still running (zombies do not count).
    async fn has_live_members(&self) -> bool {
        // Signal 0 only checks for existence (zombies included); EPERM means
        // someone is there. It is the cheap, exact answer when the group is empty.
        let exists = match self.signal(0) {
            Ok(()) => true,
            Err(err) => err.raw_os_error() == Some(libc::EPERM),
        };
        if !exists {
            return false;
        }
        let pgid = self.pgid;
        // Reading /proc is blocking IO, if fast; keep it off the async workers.
        match tokio::task::spawn_blocking(move || running_member_in_proc(pgid)).await {
            Ok(Some(running)) => running,
            // No /proc (not Linux) or the scan failed: trust `kill`.
            Ok(None) | Err(_) => true,
        }
    }

    pub(crate) fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        kill_group(self.pgid, signal)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.signal(libc::SIGKILL);
        }
    }
}

/// Whether /proc lists a process of group `pgid` that is not a zombie;
/// `None` if /proc cannot be read.
fn running_member_in_proc(pgid: libc::pid_t) -> Option<bool> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let running = entries.filter_map(Result::ok).any(|entry| {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            return false;
        };
        // A process may exit between listing and reading: then it is not running.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| parse_stat(&stat))
            .is_some_and(|(state, group)| group == pgid && !matches!(state, 'Z' | 'X'))
    });
    Some(running)
}

/// State and process group from a `/proc/<pid>/stat` line:
/// `pid (comm) state ppid pgrp ...`, where `comm` may hold spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(char, libc::pid_t)> {
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// `kill(-pgid, signal)`: the one unsafe call of this crate.
///
/// The group id outlives its leader only while members remain; once the group
/// is empty and the leader reaped, the kernel may reuse the id. Callers signal
/// right after reaping and stop once the group is seen empty, which keeps that
/// window to the same microseconds every process supervisor lives with.
#[allow(unsafe_code)]
fn kill_group(pgid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    debug_assert!(
        pgid > 1,
        "never signal our own group (0) or every process (-1)"
    );
    // SAFETY: kill(2) takes two integers and touches no memory of ours, so it
    // cannot break Rust's invariants. `led_by` guarantees pgid > 1, so `-pgid`
    // names exactly one process group.
    let rc = unsafe { libc::kill(-pgid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_despite_odd_command_names() {
        let stat = "4242 (my (odd) cmd) Z 1 4240 4240 0 -1 4194560 0";
        assert_eq!(parse_stat(stat), Some(('Z', 4240)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn zombies_do_not_count_as_running_members() {
        use std::os::unix::process::CommandExt;

        let mut sleeper = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = libc::pid_t::try_from(sleeper.id()).unwrap();
        assert_eq!(running_member_in_proc(pgid), Some(true));

        sleeper.kill().unwrap();
        // Not reaped yet: a zombie, which `kill(-pgid, 0)` would still count.
        let stat = format!("/proc/{pgid}/stat");
        while std::fs::read_to_string(&stat)
            .ok()
            .and_then(|s| parse_stat(&s))
            .is_some_and(|(st, _)| st != 'Z')
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            kill_group(pgid, 0).is_ok(),
            "the zombie still exists for kill(2)"
        );
        assert_eq!(running_member_in_proc(pgid), Some(false));
        sleeper.wait().unwrap();
    }

    #[test]
    fn only_ordinary_group_ids_are_accepted() {
        assert!(ProcessGroup::led_by(0).is_none());
        assert!(ProcessGroup::led_by(1).is_none());
        assert!(ProcessGroup::led_by(u32::MAX).is_none());
        let group = ProcessGroup::led_by(4242);
        assert_eq!(group.as_ref().map(|g| g.pgid), Some(4242));
        // Don't let the test's drop signal a random group.
        if let Some(mut group) = group {
            group.armed = false;
        }
    }
}
