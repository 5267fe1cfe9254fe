//! Clearing away sandboxes a previous fabric left running: [`sweep_stale`].
//!
//! A fabric that is SIGKILLed (or crashes) never destroys its sandboxes. Their
//! inits see the control socket close and exit, which ends their processes,
//! but the cgroups stay (and a process may still be exiting, or a sandbox's
//! init may be stuck). The one record of them that survives is their cgroups,
//! `<hierarchy root>/<cgroup_parent>/<sandbox name>`, so that is where a
//! starting fabric looks for them.

use std::path::{Component, Path, PathBuf};

use tokio::time::Instant;

use super::cgroup::{self, CgroupVersion, Layout};
use super::{KILL_TIMEOUT, pause, sys};
use crate::RuntimeError;

/// What [`sweep_stale`] cleared away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Names of the sandboxes whose processes were killed and cgroups removed, sorted.
    pub sandboxes: Vec<String>,
    /// Processes that were still in them (inits, programs, the helpers
    /// holding the inits), all ended now: killed, or gone with their pid
    /// namespace or their child.
    pub processes_killed: usize,
}

/// Kills every process of every sandbox under `cgroup_parent` (as in
/// [`SandboxConfig::cgroup_parent`](super::SandboxConfig::cgroup_parent),
/// e.g. `reactor-fabric`) whose name `keep` rejects, and removes those
/// sandboxes' cgroups, in the v2 hierarchy or every v1 one. Their network
/// and other namespaces go with their last process.
///
/// Meant for fabric startup, before any sandbox of its own exists: `keep`
/// is then `|_| false`, or spares the sandboxes another live owner of the
/// same parent holds. Calling it while this process's own sandboxes run
/// under that parent (and `keep` does not spare them) destroys them under
/// their [`Sandbox`](super::Sandbox) handles.
///
/// Workdirs are not touched: the cgroup does not record where a sandbox's
/// workdir was; the fabric clears its own sandboxes directory.
///
/// Processes inside a sandbox's pid namespace are killed first and the
/// helper holding its init (which lives in the fabric's namespace and reaps
/// the init) after, so no zombie from inside is handed to the host's init.
///
/// # Errors
///
/// [`RuntimeError::InvalidSandboxConfig`] for a bad parent,
/// [`RuntimeError::SandboxUnavailable`] without usable cgroups,
/// [`RuntimeError::SandboxCleanup`] for the first sandbox that could not be
/// cleared (the others are still tried).
pub async fn sweep_stale(
    cgroup_parent: &Path,
    keep: impl Fn(&str) -> bool,
) -> Result<SweepReport, RuntimeError> {
    let parent_ok = !cgroup_parent.as_os_str().is_empty()
        && cgroup_parent
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !parent_ok {
        return Err(RuntimeError::InvalidSandboxConfig {
            reason: format!(
                "cgroup_parent {} must be a relative path without . or ..",
                cgroup_parent.display()
            ),
        });
    }
    let layout = Layout::detect().map_err(|reason| RuntimeError::SandboxUnavailable { reason })?;
    let found =
        layout
            .sandboxes_under(cgroup_parent)
            .map_err(|err| RuntimeError::SandboxCleanup {
                name: cgroup_parent.display().to_string(),
                reason: format!(
                    "cannot list the sandbox cgroups under it: {}",
                    crate::error::describe(&err)
                ),
            })?;
    let own_pid_ns = std::fs::read_link("/proc/self/ns/pid").ok();
    let mut report = SweepReport::default();
    let mut first_error = None;
    for (name, dirs) in found {
        if keep(&name) {
            continue;
        }
        match clear(&dirs, own_pid_ns.as_deref()).await {
            Ok(killed) => {
                tracing::warn!(
                    sandbox = %name,
                    processes_killed = killed,
                    "stale sandbox swept: its processes were killed and its cgroups removed"
                );
                report.sandboxes.push(name);
                report.processes_killed += killed;
            }
            Err(reason) => {
                tracing::error!(sandbox = %name, %reason, "cannot sweep a stale sandbox");
                first_error.get_or_insert(RuntimeError::SandboxCleanup { name, reason });
            }
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(report),
    }
}

/// Empties and removes one sandbox's cgroup directories; returns how many
/// processes it ended.
async fn clear(dirs: &[PathBuf], own_pid_ns: Option<&Path>) -> Result<usize, String> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    let mut seen: Vec<libc::pid_t> = Vec::new();
    let mut helper_rounds = 0;
    let mut round = 0;
    loop {
        let mut members = Vec::new();
        for dir in dirs {
            let pids = cgroup::procs_in_tree(dir)
                .map_err(|err| format!("cannot list the processes of {}: {err}", dir.display()))?;
            members.extend(pids);
        }
        members.sort_unstable();
        members.dedup();
        members.retain(|&pid| pid > 1);
        if members.is_empty() {
            break;
        }
        for &pid in &members {
            if !seen.contains(&pid) {
                seen.push(pid);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} processes still running after {KILL_TIMEOUT:?} of SIGKILL",
                members.len()
            ));
        }
        let (inside, helpers): (Vec<_>, Vec<_>) = members.into_iter().partition(|&pid| {
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
            ns.is_some() && ns.as_deref() != own_pid_ns
        });
        let targets = if !inside.is_empty() {
            helper_rounds = 0;
            inside
        } else {
            // A helper exits by itself once its child is reaped: give it a
            // few rounds before killing it.
            helper_rounds += 1;
            if helper_rounds > 20 {
                helpers
            } else {
                Vec::new()
            }
        };
        for pid in targets {
            // ESRCH: it exited meanwhile.
            let _ = sys::kill(pid, libc::SIGKILL);
        }
        pause(&mut round).await;
    }
    // Members leave their cgroup as they finish exiting; until then rmdir is EBUSY.
    for dir in dirs {
        loop {
            match cgroup::remove_tree(dir) {
                Ok(()) => break,
                Err(err)
                    if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                {
                    pause(&mut round).await;
                }
                Err(err) => {
                    return Err(format!(
                        "cannot remove its cgroup {}: {}",
                        dir.display(),
                        crate::error::describe(&err)
                    ));
                }
            }
        }
    }
    Ok(seen.len())
}

/// The sandbox cgroups under one parent, as [`sandbox_cgroups`] found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxCgroups {
    /// The interface this host's sandboxes use.
    pub version: CgroupVersion,
    /// The hierarchy roots looked in: one on v2, one per distinct v1 mount.
    pub roots: Vec<PathBuf>,
    /// Each sandbox's name with its directory in every hierarchy, sorted by name.
    pub sandboxes: Vec<(String, Vec<PathBuf>)>,
}

/// What is under `cgroup_parent` now: the sandboxes [`sweep_stale`] would
/// clear, or a fabric's live ones. For operators and tests that check
/// nothing was left behind, on whichever cgroup interface the host has.
///
/// # Errors
///
/// [`RuntimeError::SandboxUnavailable`] without usable cgroups,
/// [`RuntimeError::SandboxCleanup`] if the parent cannot be listed.
pub fn sandbox_cgroups(cgroup_parent: &Path) -> Result<SandboxCgroups, RuntimeError> {
    let layout = Layout::detect().map_err(|reason| RuntimeError::SandboxUnavailable { reason })?;
    let sandboxes =
        layout
            .sandboxes_under(cgroup_parent)
            .map_err(|err| RuntimeError::SandboxCleanup {
                name: cgroup_parent.display().to_string(),
                reason: format!(
                    "cannot list the sandbox cgroups under it: {}",
                    crate::error::describe(&err)
                ),
            })?;
    Ok(SandboxCgroups {
        version: layout.version(),
        roots: layout.roots(),
        sandboxes,
    })
}

/// Removes the (empty) parent cgroup `cgroup_parent` in every hierarchy, for
/// a fabric that stops cleanly and leaves no trace. Best effort: a parent
/// that still holds a sandbox, or was never made, stays as it is.
pub fn remove_parent(cgroup_parent: &Path) {
    let plain = !cgroup_parent.as_os_str().is_empty()
        && cgroup_parent
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    let Ok(layout) = Layout::detect() else { return };
    if !plain {
        return;
    }
    for root in layout.roots() {
        // rmdir on a cgroup fails while it has children or processes: safe.
        let _ = std::fs::remove_dir(root.join(cgroup_parent));
    }
}
