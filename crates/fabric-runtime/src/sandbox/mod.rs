//! Isolation level `process`: Linux namespaces, cgroups and rlimits around an agent's processes (REQUIREMENTS §5, FR-ISO).
//!
//! A [`Sandbox`] is one isolated environment for one agent session, reused
//! for many commands: the built-in shell agent runs each task's commands in
//! it with [`Sandbox::run_shell`] (same job and outcome types as the `none`
//! level's [`run_shell`](crate::run_shell)); a user agent runs one long-lived
//! program in it with [`Sandbox::spawn`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), fabric_runtime::RuntimeError> {
//! use fabric_runtime::ShellJob;
//! use fabric_runtime::sandbox::{HelperCommand, Sandbox, SandboxConfig};
//!
//! let helper = HelperCommand::new("/usr/libexec/fabric-sandbox-init");
//! let config = SandboxConfig::new("shell-s1", "/var/lib/fabric/sandboxes/shell-s1", helper);
//! let sandbox = Sandbox::create(config).await?;
//! let job = ShellJob::new(vec!["echo hello".into()], sandbox.workdir().to_path_buf());
//! let outcome = sandbox.run_shell(job, None, std::future::pending()).await?;
//! assert_eq!(outcome.stdout, "hello\n");
//! println!("{:?}", sandbox.usage()?);
//! sandbox.destroy().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # How it is built
//!
//! [`Sandbox::create`] makes the sandbox's cgroup (v2, or the v1 hierarchies
//! on hosts without v2 controllers; see `cgroup.rs`) with its memory, CPU and
//! pids limits, then starts the *sandbox helper* in `init` mode with the
//! cgroup joined and the rlimits set before `exec`. The helper creates new
//! mount, pid, network, IPC and UTS namespaces and forks PID 1 of the new pid
//! namespace, which assembles the filesystem, brings up `lo` and stays as the
//! sandbox's init (reaping orphans). Every command and program is then
//! started *by that init*, on request over a control socket (`launch.rs`,
//! `wire.rs`): it forks, and the child, born inside the namespaces and the
//! cgroup, drops its privileges and execs. So a command costs one fork of a
//! small process, not a fork of the fabric, an exec of a helper, a `setns`
//! and a cgroup move (which on cgroup v1 can wait for an RCU grace period).
//!
//! The helper is a separate program: the crate's `fabric-sandbox-init`
//! binary, or any binary that calls [`helper_main`] (the `reactor-fabric`
//! binary can offer it as a hidden subcommand). [`SandboxConfig::helper`]
//! says where it is.
//!
//! # What holds
//!
//! - **Filesystem**: the root is an empty read-only tmpfs holding read-only,
//!   nosuid, nodev binds of [`SandboxConfig::read_only_paths`] (system
//!   directories; by default `/usr`, `/etc`, `/bin`, `/sbin`, `/lib*`), a
//!   fresh `/proc` (with `/proc/sys`, `/proc/sysrq-trigger` and friends
//!   read-only), a minimal `/dev` (`null`, `zero`, `full`, `random`,
//!   `urandom`, a private `/dev/shm`), a private `/tmp` tmpfs, and the
//!   workdir read-write at its host path. The workdir is the only place a
//!   write reaches the host. Nothing else of the host is visible: not
//!   `/home`, `/root`, `/var`, `/run` (no Docker socket), nor other
//!   sandboxes' workdirs. [`SandboxConfig::masked_paths`] hides secrets
//!   inside the read-only paths (`/etc/shadow`, `/etc/ssh`, ...).
//! - **Processes**: a pid namespace; commands see their own sandbox's
//!   processes only, with its init as PID 1. When the init dies the kernel
//!   kills everything in the namespace.
//! - **Tasks apart**: each command of [`Sandbox::run_shell`] runs in pid and
//!   mount namespaces of its own, nested in the sandbox's: when it ends,
//!   everything it started ends too (`setsid` or double fork included, the
//!   kernel kills a pid namespace with its init); its `/proc` shows only its
//!   own processes; `/tmp` is its task's `TMPDIR` (`<task dir>/.tmp`, kept
//!   for the task's next commands, on disk and removed with the task's
//!   directory), `/dev/shm` a fresh tmpfs; and of the sandbox's workdir only
//!   the task's own directory is visible. Programs of [`Sandbox::spawn`]
//!   (user agents) run in the sandbox's own namespaces.
//! - **Network**: a network namespace with only `lo` up: no route out, and
//!   the host's loopback services are unreachable. [`Sandbox::bind_tcp`]
//!   opens a listener *inside* it; the fabric serves the agent's way out on
//!   one, the [`EgressProxy`](crate::net::EgressProxy) (`CONNECT` and plain
//!   HTTP to the `host:port`s of its egress allowlist only, everything else
//!   refused with 403 and audited; empty allowlist, no network), and brings
//!   host services in (`FABRIC_URL`, the inference endpoint) with
//!   [`forward_tcp`](crate::net::forward_tcp).
//! - **IPC and hostname**: own System V IPC / POSIX queues and own hostname
//!   (the sandbox name).
//! - **Privileges**: programs run as uid 0 but with every capability dropped
//!   (bounding set included) and `no_new_privs`: they cannot mount, remount
//!   the read-only binds, `setns`, `ptrace` the init, load modules, or
//!   override file permissions; `exec` cannot regain privileges.
//! - **Resources**: memory limit (no swap), CPU quota (`cpu_cores` × 100 ms
//!   per 100 ms period), a pids limit counting every process and thread of
//!   the sandbox (its init and the helper holding it count: 2 + the commands),
//!   plus rlimits (open files, file size, no core dumps, optionally CPU
//!   seconds) as a last line. [`Sandbox::set_limits`] changes the cgroup
//!   limits of a live sandbox (a warm-pool one taking an agent's);
//!   [`Sandbox::usage`] reads the real counters.
//!
//! # What does not hold yet
//!
//! - No user namespace: uid 0 inside is uid 0 outside. Capabilities are gone,
//!   but files the host's root owns on the read-only paths are readable
//!   (hence the masks), and a kernel bug reachable by an unprivileged
//!   syscall is reachable from the sandbox.
//! - No seccomp filter: every syscall is allowed (e.g. `keyctl` sees root's
//!   keyrings, `perf_event_open` per the host's paranoid level).
//! - No cgroup namespace: `/proc/self/cgroup` shows the host's cgroup path
//!   (read-only information; cgroupfs is not mounted inside).
//! - No time namespace; no disk quota on the workdir (only the per-file size
//!   rlimit); no I/O bandwidth limit.
//! - Egress is only as tight as its rules: agents get the proxy through
//!   `HTTP(S)_PROXY` ([`net::proxy_env`](crate::net::proxy_env)), and a
//!   program that ignores those has no way out at all; but what flows in an
//!   allowed `CONNECT` tunnel is not inspected (TLS SNI or `Host` may name
//!   another site at the same address), and an exact rule admits whatever
//!   its name resolves to, the host's own loopback included (wildcard rules
//!   admit public addresses only). UDP (and so DNS from inside) has no way
//!   out.
//! - Task files of [`Sandbox::run_shell`] are written by the fabric on the
//!   host side, refusing symbolic links; a process running in the sandbox at
//!   the same time (a user agent, or a command that escaped its process
//!   group with `setsid`) could race that check.
//! - If the fabric is SIGKILLed, its sandboxes' inits see the control socket
//!   close and exit, which ends everything in them; their cgroups and
//!   workdirs stay until the next fabric start calls [`sweep_stale`], which
//!   finds them by their cgroups under [`SandboxConfig::cgroup_parent`],
//!   kills whatever is left and removes the cgroups. Their workdirs are left
//!   to the fabric to clear.
//!
//! Requirements: root on the host, Linux 5.12+ (`mount_setattr`, pidfds).

mod cgroup;
mod helper;
mod launch;
mod sweep;
pub(crate) mod sys;
mod wire;

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::Child;
use tokio::sync::mpsc::Sender;
use tokio::time::Instant;

pub use self::cgroup::CgroupVersion;
use self::cgroup::{Cgroup, CgroupError, Layout, Limits};
pub use self::helper::helper_main;
use self::helper::{EXIT_HELPER_FAILED, InitPlan, LINE_ERROR, LINE_PID, LINE_READY};
pub(crate) use self::launch::InitChild;
pub use self::launch::SandboxStdio;
use self::launch::{InitLink, LaunchError, LaunchSpec, Launched};
pub use self::sweep::{SandboxCgroups, SweepReport, remove_parent, sandbox_cgroups, sweep_stale};
use self::wire::TaskScope;
use crate::RuntimeError;
use crate::child::group::ProcessGroup;
use crate::child::{
    self, AnyGroup, AnyLeader, Launcher, LogLine, SHELL, ShellJob, ShellOutcome, Started,
};
use fabric_core::reason;

/// Memory limit when the agent config sets none (REQUIREMENTS §5).
pub const DEFAULT_MEMORY_MB: u64 = 512;
/// CPU limit when the agent config sets none (REQUIREMENTS §5).
pub const DEFAULT_CPU_CORES: f64 = 1.0;
/// Processes and threads a sandbox may have at once: plenty for builds and
/// test runners, few enough that a fork bomb stays a nuisance.
pub const DEFAULT_PIDS_MAX: u32 = 256;
/// Size cap of the sandbox's `/tmp` and `/dev/shm` tmpfs each. Their pages
/// count against the memory limit too.
pub const DEFAULT_TMP_MB: u64 = 64;
/// Where sandbox cgroups go, relative to each hierarchy's root.
pub const DEFAULT_CGROUP_PARENT: &str = "reactor-fabric";
/// Host paths visible (read-only) inside a sandbox by default: what programs
/// need to run, nothing with user or service data. Missing ones are skipped.
pub const DEFAULT_READ_ONLY_PATHS: [&str; 8] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
];
/// Secrets under the read-only paths, covered by an empty file or directory.
pub const DEFAULT_MASKED_PATHS: [&str; 4] = [
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/ssh",
    "/etc/ssl/private",
];
/// CPU accounting period; the quota is `cpu_cores` times this.
pub const CPU_PERIOD: Duration = Duration::from_millis(100);

/// How long [`Sandbox::create`] waits for the helper to report the sandbox ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopping every process may take before it counts as failed.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between rounds of SIGKILL (or checks) while a sandbox is
/// emptied; the first rounds are shorter, since most kills take effect in
/// well under a millisecond.
const KILL_ROUND: Duration = Duration::from_millis(5);

/// Sleeps 0.25 ms, 0.5 ms, 1 ms, ... up to [`KILL_ROUND`], one step per call.
async fn pause(round: &mut u32) {
    let delay = Duration::from_micros(250 << (*round).min(5)).min(KILL_ROUND);
    *round += 1;
    tokio::time::sleep(delay).await;
}

/// How the fabric starts the sandbox helper: `program [args...] init|exec ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperCommand {
    /// Absolute path of a binary whose `main` calls [`helper_main`], such as
    /// the crate's `fabric-sandbox-init`.
    pub program: PathBuf,
    /// Put before the helper's own arguments, for a binary that offers the
    /// helper as a subcommand (`reactor-fabric __sandbox-helper init ...`).
    pub args: Vec<OsString>,
}

impl HelperCommand {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
        }
    }
}

/// Per-process limits, set before `exec` on every process a sandbox starts
/// and inherited by whatever those start. The cgroup limits are the real
/// fence; these are the last line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimits {
    /// `RLIMIT_NOFILE`: open file descriptors per process.
    pub open_files: u64,
    /// `RLIMIT_FSIZE`: largest file a process may write, in bytes; `None` for
    /// no limit. Past it, writes fail and the writer gets SIGXFSZ.
    pub file_size_bytes: Option<u64>,
    /// `RLIMIT_CORE`: 0 means no core dumps (which would land in the workdir).
    pub core_bytes: u64,
    /// `RLIMIT_CPU`: CPU seconds each process may use; `None` for no limit.
    /// Past it the process gets SIGXCPU (reported as
    /// [`reason::CPU_TIME_EXCEEDED`]),
    /// and SIGKILL one second later if it handles that signal. Per process,
    /// not per sandbox: the cgroup's CPU quota limits the rate, this the total.
    pub cpu_seconds: Option<u64>,
}

impl Default for Rlimits {
    fn default() -> Self {
        Self {
            open_files: 4096,
            file_size_bytes: Some(4 << 30),
            core_bytes: 0,
            cpu_seconds: None,
        }
    }
}

/// Everything [`Sandbox::create`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    /// Unique on the host, e.g. `<agent>-<session>`: 1 to 64 of `A-Z a-z 0-9 . _ -`,
    /// not starting with `.` or `-`. Names the cgroup and is the hostname inside.
    pub name: String,
    /// The only writable path inside, at the same path as on the host; created
    /// (mode 0700) if missing, removed by [`Sandbox::destroy`].
    pub workdir: PathBuf,
    pub memory_mb: u64,
    /// CPU time per wall-clock time: 0.5 is half a core, 2.0 two cores.
    pub cpu_cores: f64,
    pub pids_max: u32,
    pub rlimits: Rlimits,
    /// Size cap of `/tmp` and of `/dev/shm`, in MiB each.
    pub tmp_mb: u64,
    /// Host paths bound read-only inside, at the same paths.
    pub read_only_paths: Vec<PathBuf>,
    /// Paths under `read_only_paths` hidden behind an empty file or directory.
    pub masked_paths: Vec<PathBuf>,
    /// Host directories bound writable inside: `(host path, path inside)`
    /// (an MCP server's data directory, say).
    pub read_write_mounts: Vec<(PathBuf, PathBuf)>,
    /// Relative path of the parent cgroup in each hierarchy (Docker's `--cgroup-parent`).
    pub cgroup_parent: PathBuf,
    pub helper: HelperCommand,
}

impl SandboxConfig {
    /// A config with the defaults of REQUIREMENTS §5 (512 MB, 1 core) and of this module.
    pub fn new(
        name: impl Into<String>,
        workdir: impl Into<PathBuf>,
        helper: HelperCommand,
    ) -> Self {
        Self {
            name: name.into(),
            workdir: workdir.into(),
            memory_mb: DEFAULT_MEMORY_MB,
            cpu_cores: DEFAULT_CPU_CORES,
            pids_max: DEFAULT_PIDS_MAX,
            rlimits: Rlimits::default(),
            tmp_mb: DEFAULT_TMP_MB,
            read_only_paths: DEFAULT_READ_ONLY_PATHS.iter().map(PathBuf::from).collect(),
            masked_paths: DEFAULT_MASKED_PATHS.iter().map(PathBuf::from).collect(),
            read_write_mounts: Vec::new(),
            cgroup_parent: PathBuf::from(DEFAULT_CGROUP_PARENT),
            helper,
        }
    }

    /// Checks everything that needs no disk.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let invalid = |reason: String| Err(RuntimeError::InvalidSandboxConfig { reason });
        let name_ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            && !self.name.starts_with(['.', '-']);
        if !name_ok {
            return invalid(format!(
                "name {:?} must be 1 to 64 of A-Z a-z 0-9 . _ - and not start with . or -",
                self.name
            ));
        }
        if !plain_absolute(&self.workdir) || self.workdir == Path::new("/") {
            return invalid(format!(
                "workdir {} must be an absolute path below / without . or ..",
                self.workdir.display()
            ));
        }
        check_limits(self.memory_mb, self.cpu_cores, self.pids_max).or_else(invalid)?;
        if self.tmp_mb == 0 || self.tmp_mb.checked_mul(1 << 20).is_none() {
            return invalid(format!("tmp_mb {} must be at least 1", self.tmp_mb));
        }
        for path in self.read_only_paths.iter().chain(&self.masked_paths) {
            if !plain_absolute(path) || path == Path::new("/") {
                return invalid(format!(
                    "{} must be an absolute path below / without . or ..",
                    path.display()
                ));
            }
        }
        for (host, inside) in &self.read_write_mounts {
            for path in [host, inside] {
                if !plain_absolute(path) || path == Path::new("/") {
                    return invalid(format!(
                        "read-write mount {} must be an absolute path below / without . or ..",
                        path.display()
                    ));
                }
            }
        }
        for path in &self.read_only_paths {
            if self.workdir.starts_with(path) || path.starts_with(&self.workdir) {
                return invalid(format!(
                    "workdir {} overlaps the read-only path {}",
                    self.workdir.display(),
                    path.display()
                ));
            }
        }
        let parent_ok = !self.cgroup_parent.as_os_str().is_empty()
            && self
                .cgroup_parent
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !parent_ok {
            return invalid(format!(
                "cgroup_parent {} must be a relative path without . or ..",
                self.cgroup_parent.display()
            ));
        }
        if !self.helper.program.is_absolute() {
            return invalid(format!(
                "helper program {} must be an absolute path",
                self.helper.program.display()
            ));
        }
        Ok(())
    }

    fn limits(&self) -> Limits {
        Limits::new(self.memory_mb, self.cpu_cores, self.pids_max, CPU_PERIOD)
    }
}

/// The ranges [`SandboxConfig::validate`] and [`Sandbox::set_limits`] accept.
fn check_limits(memory_mb: u64, cpu_cores: f64, pids_max: u32) -> Result<(), String> {
    if memory_mb < 16 || memory_mb.checked_mul(1 << 20).is_none() {
        return Err(format!("memory_mb {memory_mb} must be at least 16"));
    }
    if !(cpu_cores.is_finite() && (0.01..=4096.0).contains(&cpu_cores)) {
        return Err(format!(
            "cpu_cores {cpu_cores} must be between 0.01 and 4096"
        ));
    }
    if pids_max < 8 {
        return Err(format!(
            "pids_max {pids_max} must be at least 8: the sandbox's init and the helper holding it count too"
        ));
    }
    Ok(())
}

fn plain_absolute(path: &Path) -> bool {
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// A sandbox's resource use, read from its cgroup counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResourceUsage {
    /// Memory charged now (page cache and tmpfs included).
    pub memory_bytes: u64,
    /// Most memory charged at once since creation; `None` on cgroup v2 kernels
    /// before 5.19, which have no `memory.peak`.
    pub memory_peak_bytes: Option<u64>,
    /// CPU time used by all its processes, user and system.
    pub cpu_time: Duration,
    /// Processes and threads now (the init and the helper holding it included).
    pub pids: u64,
    /// Processes the out-of-memory killer killed at the memory limit.
    pub oom_kills: u64,
    /// Forks refused because the pids limit was reached.
    pub pids_limit_hits: u64,
}

/// One isolated environment for one agent session; see the [module docs](self).
///
/// Shareable (`Arc<Sandbox>`): every method takes `&self`. Dropping it
/// without [`destroy`](Sandbox::destroy) still kills its processes and
/// removes its cgroups (blocking briefly), but leaves the workdir.
pub struct Sandbox {
    name: String,
    workdir: PathBuf,
    cgroup: Arc<Cgroup>,
    /// PID 1 of the sandbox, as a pidfd: signalling it cannot hit a recycled
    /// pid, and [`bind_tcp`](Sandbox::bind_tcp) enters its network namespace
    /// through it.
    init: OwnedFd,
    /// The control socket to the init, which starts every program.
    link: InitLink,
    init_pid: libc::pid_t,
    /// The helper's outer process (the init's parent, our child).
    holder_pid: libc::pid_t,
    holder: Mutex<Option<Child>>,
    destroyed: AtomicBool,
    /// Commands of `run_shell` without their own namespaces: only ever set
    /// by [`Sandbox::benchmark_without_task_scopes`].
    unscoped: AtomicBool,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("name", &self.name)
            .field("workdir", &self.workdir)
            .field("cgroup", &self.cgroup.dirs())
            .field("init_pid", &self.init_pid)
            .field("destroyed", &self.destroyed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Sandbox {
    /// Creates the sandbox: workdir, cgroup with limits, namespaces, filesystem,
    /// loopback. Returns once its init reports ready (typically a few ms).
    ///
    /// # Errors
    ///
    /// [`RuntimeError::InvalidSandboxConfig`] for a bad config,
    /// [`RuntimeError::SandboxUnavailable`] when the host lacks what the level
    /// needs (root, cgroup controllers, namespaces), [`RuntimeError::SandboxExists`]
    /// for a name in use, [`RuntimeError::SandboxSetup`] otherwise. Nothing is
    /// left behind on error, except a workdir that existed before.
    pub async fn create(config: SandboxConfig) -> Result<Sandbox, RuntimeError> {
        config.validate()?;
        let name = config.name.clone();
        let setup = |reason: String| RuntimeError::SandboxSetup {
            name: name.clone(),
            reason,
        };
        let existed = tokio::fs::try_exists(&config.workdir)
            .await
            .unwrap_or(false);
        let workdir = create_workdir(&config.workdir).await?;
        let remove_new_workdir = || async {
            if !existed {
                let _ = tokio::fs::remove_dir_all(&workdir).await;
            }
        };
        let layout = match Layout::detect() {
            Ok(layout) => layout,
            Err(reason) => {
                remove_new_workdir().await;
                return Err(RuntimeError::SandboxUnavailable { reason });
            }
        };
        let cgroup = match Cgroup::create(
            &layout,
            &config.cgroup_parent,
            &config.name,
            config.limits(),
        ) {
            Ok(cgroup) => Arc::new(cgroup),
            Err(err) => {
                remove_new_workdir().await;
                return Err(cgroup_error(&config.name, err));
            }
        };
        let (ours, theirs) = match sys::seqpacket_pair() {
            Ok(pair) => pair,
            Err(cause) => {
                let _ = remove_cgroup(&cgroup).await;
                remove_new_workdir().await;
                return Err(setup(format!(
                    "cannot create its control socket: {}",
                    crate::error::describe(&cause)
                )));
            }
        };
        let plan = InitPlan {
            name: config.name.clone(),
            workdir: workdir.clone(),
            read_only: config.read_only_paths.clone(),
            read_write: config.read_write_mounts.clone(),
            masked: config.masked_paths.clone(),
            tmp_bytes: config.tmp_mb << 20,
            control: theirs.as_raw_fd(),
            cpu_seconds: config.rlimits.cpu_seconds,
        };
        // The CPU-seconds limit is for the programs (the init applies it to
        // each); the init itself lives as long as the sandbox.
        let init_rlimits = Rlimits {
            cpu_seconds: None,
            ..config.rlimits
        };
        let mut command = helper_command(
            &config.helper,
            plan.to_args(),
            &cgroup,
            init_rlimits,
            theirs.as_raw_fd(),
        );
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_clear()
            .process_group(0)
            .kill_on_drop(true);
        // `spawn` returns only once the child has exec'd, after its `pre_exec`
        // move into the cgroup, which on cgroup v1 can wait for an RCU grace
        // period (10-30 ms): keep that wait off the async workers.
        let spawned = tokio::task::spawn_blocking(move || command.spawn())
            .await
            .unwrap_or_else(|err| Err(io::Error::other(err.to_string())));
        // The helper has its copy now (or never will).
        drop(theirs);
        let started = match spawned {
            Ok(holder) => start(holder, &cgroup).await.map_err(setup),
            Err(cause) => Err(setup(format!(
                "cannot start the sandbox helper {}: {}; point SandboxConfig::helper at the \
                 fabric-sandbox-init binary",
                config.helper.program.display(),
                crate::error::describe(&cause)
            ))),
        };
        let started = started.and_then(|started| {
            InitLink::new(ours)
                .map(|link| (started, link))
                .map_err(|cause| {
                    setup(format!(
                        "cannot use its control socket: {}",
                        crate::error::describe(&cause)
                    ))
                })
        });
        match started {
            Ok(((holder, init, init_pid), link)) => {
                let holder_pid = holder
                    .id()
                    .and_then(|p| libc::pid_t::try_from(p).ok())
                    .unwrap_or(0);
                tracing::debug!(sandbox = %config.name, init_pid, cgroup = ?cgroup.version(), "sandbox ready");
                Ok(Sandbox {
                    name: config.name,
                    workdir,
                    cgroup,
                    init,
                    link,
                    init_pid,
                    holder_pid,
                    holder: Mutex::new(Some(holder)),
                    destroyed: AtomicBool::new(false),
                    unscoped: AtomicBool::new(false),
                })
            }
            Err(err) => {
                // The helper died or was killed (kill_on_drop); empty and remove the cgroup.
                let _ = empty_cgroup(&cgroup, &[]).await;
                let _ = remove_cgroup(&cgroup).await;
                remove_new_workdir().await;
                Err(err)
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The workdir, canonical: the path commands see it at, too.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// Host pid of the sandbox's init (PID 1 inside).
    pub fn init_pid(&self) -> u32 {
        self.init_pid as u32
    }

    pub fn cgroup_version(&self) -> CgroupVersion {
        self.cgroup.version()
    }

    /// The sandbox's cgroup directories: one on v2, one per hierarchy on v1.
    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        self.cgroup.dirs()
    }

    /// Runs a shell job inside the sandbox, with the semantics of
    /// [`run_shell`](crate::run_shell): same environment, output limits, log
    /// lines, cancellation and process-group cleanup. Additionally sets
    /// [`ShellOutcome::oom_killed`] when the out-of-memory killer struck in the
    /// sandbox while the job ran.
    ///
    /// `job.workdir` must be [`workdir`](Sandbox::workdir) or a directory
    /// under it, reached without symbolic links (earlier commands could have
    /// planted them to lead the fabric's own writes elsewhere).
    pub async fn run_shell(
        &self,
        job: ShellJob,
        logs: Option<Sender<LogLine>>,
        cancel: impl Future<Output = ()>,
    ) -> Result<ShellOutcome, RuntimeError> {
        self.check_alive()?;
        self.check_job_workdir(&job.workdir)?;
        let oom_before = self.cgroup.oom_kills();
        let mut outcome = child::run_shell_with(job, logs, cancel, self).await?;
        outcome.oom_killed = self.cgroup.oom_kills() > oom_before;
        Ok(outcome)
    }

    /// Runs this sandbox's shell commands without a pid and mount namespace
    /// of their own per command, as before tasks were kept apart: for
    /// `fabric-bench sandbox-tasks` to measure what that costs, side by side.
    /// Nothing else may call it (what a task leaves would reach the next).
    #[doc(hidden)]
    pub fn benchmark_without_task_scopes(&self) {
        self.unscoped.store(true, Ordering::SeqCst);
    }

    /// Starts a long-lived program inside the sandbox (a user agent).
    ///
    /// It gets the base environment of [`run_shell`](crate::run_shell) (`PATH`,
    /// `HOME` = workdir, `LANG`, `TMPDIR`) plus `command.env`, and leads its
    /// own process group. Dropping the [`SandboxProcess`] SIGKILLs that group.
    pub async fn spawn(&self, command: SandboxCommand) -> Result<SandboxProcess, RuntimeError> {
        self.check_alive()?;
        let shown = command.argv.join(" ");
        if command.argv.is_empty() || command.argv.iter().any(|a| a.contains('\0')) {
            return Err(RuntimeError::InvalidCommand { command: shown });
        }
        child::check_env(&command.env)?;
        let cwd = command.cwd.clone().unwrap_or_else(|| self.workdir.clone());
        if !plain_absolute(&cwd) {
            return Err(RuntimeError::InvalidSandboxConfig {
                reason: format!(
                    "cwd {} must be an absolute path without . or ..",
                    cwd.display()
                ),
            });
        }
        let oom_before = self.cgroup.oom_kills();
        let launched = self
            .launch(
                LaunchSpec {
                    argv: command.argv,
                    env: child::environment(&self.workdir, &command.env),
                    cwd,
                    stdin: command.stdin,
                    stdout: command.stdout,
                    stderr: command.stderr,
                    scope: None,
                },
                &shown,
            )
            .await?;
        let group = ProcessGroup::led_by(launched.pid).ok_or_else(|| RuntimeError::Wait {
            command: shown.clone(),
            cause: io::Error::other("the program has no usable process id"),
        })?;
        Ok(SandboxProcess {
            stdin: launched.stdin,
            stdout: launched.stdout,
            stderr: launched.stderr,
            child: launched.child,
            group,
            pid: launched.pid,
            command: shown,
            cgroup: Arc::clone(&self.cgroup),
            oom_before,
        })
    }

    /// Has the init start a program; `shown` names it in errors.
    async fn launch(&self, spec: LaunchSpec, shown: &str) -> Result<Launched, RuntimeError> {
        self.link.launch(spec).await.map_err(|err| match err {
            LaunchError::Gone => RuntimeError::SandboxGone {
                name: self.name.clone(),
            },
            LaunchError::Failed(reason) => RuntimeError::SandboxLaunch {
                name: self.name.clone(),
                command: shown.to_string(),
                reason,
            },
        })
    }

    /// A TCP listener on `127.0.0.1:port` *inside* the sandbox's network
    /// namespace: processes in the sandbox can connect to it, nothing on the
    /// host can. The fabric accepts on it (it is an ordinary socket of the
    /// fabric's; call `set_nonblocking(true)` before handing it to tokio).
    /// Port 0 picks a free port. The listener keeps the namespace alive: drop
    /// it when the sandbox is destroyed.
    pub fn bind_tcp(&self, port: u16) -> Result<TcpListener, RuntimeError> {
        self.check_alive()?;
        let failed = |cause| RuntimeError::SandboxPort {
            name: self.name.clone(),
            port,
            cause,
        };
        let init = self.init.as_raw_fd();
        // A thread of our own enters the namespace (setns moves only the
        // calling thread) and ends right after, so no tokio worker ever
        // switches namespaces.
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    sys::setns(init, libc::CLONE_NEWNET)?;
                    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
        })
        .map_err(failed)
    }

    /// The sandbox's resource use now. Reads a few cgroup files (microseconds, blocking).
    pub fn usage(&self) -> Result<ResourceUsage, RuntimeError> {
        let counters = self
            .cgroup
            .counters()
            .map_err(|cause| RuntimeError::SandboxUsage {
                name: self.name.clone(),
                cause,
            })?;
        Ok(ResourceUsage {
            memory_bytes: counters.memory_bytes,
            memory_peak_bytes: counters.memory_peak_bytes,
            cpu_time: counters.cpu_usage,
            pids: counters.pids,
            oom_kills: counters.oom_kills,
            pids_limit_hits: counters.pids_limit_hits,
        })
    }

    /// Changes the sandbox's cgroup limits while it runs, as when a warm-pool
    /// sandbox (started with default limits) is handed to an agent with its
    /// own. Takes the units and ranges of [`SandboxConfig`]; rlimits and the
    /// `/tmp` size stay as created.
    ///
    /// Lowering memory below what the sandbox uses makes the kernel reclaim:
    /// on cgroup v2 it OOM-kills if reclaim is not enough; on v1 the write
    /// fails (EBUSY), the old limits stay in place and the error says so.
    /// The pids limit only refuses new forks: processes above it keep running.
    pub fn set_limits(
        &self,
        memory_mb: u64,
        cpu_cores: f64,
        pids_max: u32,
    ) -> Result<(), RuntimeError> {
        check_limits(memory_mb, cpu_cores, pids_max)
            .map_err(|reason| RuntimeError::InvalidSandboxConfig { reason })?;
        self.check_alive()?;
        let limits = Limits::new(memory_mb, cpu_cores, pids_max, CPU_PERIOD);
        self.cgroup
            .write_limits(limits)
            .map_err(|err| RuntimeError::SandboxLimits {
                name: self.name.clone(),
                reason: match err {
                    CgroupError::Io {
                        action,
                        path,
                        cause,
                    } => {
                        let busy = if cause.raw_os_error() == Some(libc::EBUSY) {
                            " (the sandbox uses more memory than the new limit)"
                        } else {
                            ""
                        };
                        format!(
                            "cannot {action} {}: {}{busy}",
                            path.display(),
                            crate::error::describe(&cause)
                        )
                    }
                    CgroupError::Exists { path } => {
                        format!("unexpected cgroup {}", path.display())
                    }
                },
            })?;
        tracing::debug!(sandbox = %self.name, memory_mb, cpu_cores, pids_max, "sandbox limits changed");
        Ok(())
    }

    /// Host pids of every process in the sandbox, its init and the helper holding it included.
    pub fn processes(&self) -> Result<Vec<u32>, RuntimeError> {
        self.cgroup
            .members()
            .map(|pids| pids.into_iter().map(|p| p as u32).collect())
            .map_err(|cause| RuntimeError::SandboxUsage {
                name: self.name.clone(),
                cause,
            })
    }

    /// SIGKILLs every process in the sandbox except its init (and the helper
    /// holding it), and waits until they are gone (repeating, so a fork bomb
    /// cannot outrun it). The sandbox stays usable.
    pub async fn kill_all(&self) -> Result<(), RuntimeError> {
        let spare = [self.init_pid, self.holder_pid];
        let deadline = Instant::now() + KILL_TIMEOUT;
        let mut round = 0;
        loop {
            let members = self
                .cgroup
                .members()
                .map_err(|err| self.cleanup_failed(format!("cannot list processes: {err}")))?;
            let left = members.iter().filter(|pid| !spare.contains(pid)).count();
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.cleanup_failed(format!(
                    "{left} processes still running after {KILL_TIMEOUT:?} of SIGKILL"
                )));
            }
            let _ = self.cgroup.kill_members(&spare);
            pause(&mut round).await;
        }
    }

    fn cleanup_failed(&self, reason: String) -> RuntimeError {
        RuntimeError::SandboxCleanup {
            name: self.name.clone(),
            reason,
        }
    }

    /// Kills everything, removes the cgroups and the workdir; the network,
    /// mount and other namespaces go with the last process. Idempotent: a
    /// second call (or one after the init was killed from outside) finishes
    /// whatever is left and succeeds. Other methods fail with
    /// [`RuntimeError::SandboxGone`] afterwards.
    pub async fn destroy(&self) -> Result<(), RuntimeError> {
        self.destroyed.store(true, Ordering::SeqCst);
        let failed = |reason: String| RuntimeError::SandboxCleanup {
            name: self.name.clone(),
            reason,
        };
        // Killing PID 1 makes the kernel kill the whole pid namespace at once.
        // The init's pidfd turns readable once the namespace is empty and the
        // init has exited.
        let init_exited = match sys::pidfd_signal(&self.init, libc::SIGKILL) {
            Err(_) => true,
            Ok(()) => {
                let deadline = Instant::now() + KILL_TIMEOUT;
                let mut round = 0;
                loop {
                    if sys::wait_readable(self.init.as_raw_fd(), 0) {
                        break true;
                    }
                    if Instant::now() > deadline {
                        break false;
                    }
                    pause(&mut round).await;
                }
            }
        };
        if !init_exited {
            tracing::warn!(
                sandbox = %self.name,
                "the sandbox's init is still exiting after {KILL_TIMEOUT:?}: a process of it awaits \
                 reaping by the host's init; its namespaces outlive the destroy until then"
            );
        }
        let emptied = empty_cgroup(&self.cgroup, &[]).await;
        let holder = self.holder.lock().map(|mut h| h.take()).unwrap_or(None);
        if let Some(mut holder) = holder {
            let _ = holder.start_kill();
            let _ = holder.wait().await;
        }
        emptied.map_err(failed)?;
        remove_cgroup(&self.cgroup).await.map_err(failed)?;
        match tokio::fs::remove_dir_all(&self.workdir).await {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(failed(format!(
                    "cannot remove the workdir {}: {}",
                    self.workdir.display(),
                    crate::error::describe(&err)
                )));
            }
        }
        tracing::debug!(sandbox = %self.name, "sandbox destroyed");
        Ok(())
    }

    /// Before anything is created on the host: `workdir` lies lexically inside
    /// the sandbox's, and no existing part of the way there is a symlink.
    fn check_job_workdir(&self, workdir: &Path) -> Result<(), RuntimeError> {
        let outside = || RuntimeError::WorkdirOutsideSandbox {
            name: self.name.clone(),
            workdir: workdir.to_path_buf(),
            sandbox_workdir: self.workdir.clone(),
        };
        let relative = workdir.strip_prefix(&self.workdir).map_err(|_| outside())?;
        let mut at = self.workdir.clone();
        for part in relative.components() {
            let Component::Normal(part) = part else {
                return Err(outside());
            };
            at.push(part);
            match std::fs::symlink_metadata(&at) {
                Ok(meta) if meta.file_type().is_symlink() => return Err(outside()),
                Ok(_) => {}
                // Missing: created later, by `run_shell`'s own checked path.
                Err(_) => break,
            }
        }
        Ok(())
    }

    fn check_alive(&self) -> Result<(), RuntimeError> {
        // Signal 0 checks existence; a reaped init (its outer parent exited) is ESRCH.
        if self.destroyed.load(Ordering::SeqCst) || sys::pidfd_signal(&self.init, 0).is_err() {
            return Err(RuntimeError::SandboxGone {
                name: self.name.clone(),
            });
        }
        Ok(())
    }
}

impl Launcher for Sandbox {
    async fn start_shell(
        &self,
        command: &str,
        workdir: &Path,
        env: &[(String, String)],
    ) -> Result<Started, RuntimeError> {
        let spec = LaunchSpec {
            argv: vec![SHELL.into(), "-c".into(), command.into()],
            env: env.to_vec(),
            cwd: workdir.to_path_buf(),
            stdin: SandboxStdio::Null,
            stdout: SandboxStdio::Piped,
            stderr: SandboxStdio::Piped,
            // Each command in namespaces of its own: nothing it starts outlives
            // it, and it sees neither other tasks' files nor their processes.
            scope: (!self.unscoped.load(Ordering::Relaxed)).then(|| TaskScope {
                workdir: self.workdir.clone(),
                task_dir: workdir.to_path_buf(),
                tmp: workdir.join(child::workdir::TMP_DIR),
            }),
        };
        let launched = self.launch(spec, command).await?;
        Ok(Started {
            leader: AnyLeader::Sandboxed(launched.child),
            group: AnyGroup::host(launched.pid, command)?,
            stdout: child::boxed(launched.stdout),
            stderr: child::boxed(launched.stderr),
        })
    }

    fn check_workdir(&self, workdir: &Path) -> Result<(), RuntimeError> {
        // `workdir` is canonical here, so a symlink planted by an earlier
        // command cannot point the job (and its host-side file writes) elsewhere.
        if workdir.starts_with(&self.workdir) {
            Ok(())
        } else {
            Err(RuntimeError::WorkdirOutsideSandbox {
                name: self.name.clone(),
                workdir: workdir.to_path_buf(),
                sandbox_workdir: self.workdir.clone(),
            })
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.destroyed.load(Ordering::SeqCst) {
            return;
        }
        // Best effort without async: kill (the init first, see `destroy`),
        // then give the kernel a moment before removing the cgroups.
        if sys::pidfd_signal(&self.init, libc::SIGKILL).is_ok() {
            sys::wait_readable(self.init.as_raw_fd(), 1000);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            let left = self.cgroup.kill_members(&[]).unwrap_or(0);
            if (left == 0 && self.cgroup.remove().is_ok()) || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(KILL_ROUND);
        }
        tracing::warn!(
            sandbox = %self.name,
            workdir = %self.workdir.display(),
            "sandbox dropped without destroy(): its processes were killed, its workdir is left"
        );
    }
}

/// A program to [`Sandbox::spawn`].
#[derive(Debug)]
pub struct SandboxCommand {
    /// Program and arguments; the program is looked up in the sandbox's `PATH`.
    pub argv: Vec<String>,
    /// On top of the base environment; may override it.
    pub env: Vec<(String, String)>,
    /// Absolute path inside the sandbox; the workdir if `None`.
    pub cwd: Option<PathBuf>,
    pub stdin: SandboxStdio,
    pub stdout: SandboxStdio,
    pub stderr: SandboxStdio,
}

impl SandboxCommand {
    /// `argv` with no extra environment, in the workdir, all stdio on `/dev/null`.
    pub fn new(argv: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            stdin: SandboxStdio::Null,
            stdout: SandboxStdio::Null,
            stderr: SandboxStdio::Null,
        }
    }
}

/// A program running in a sandbox, started by [`Sandbox::spawn`].
///
/// Its stdio pipes (if requested) are in the public fields. Dropping it
/// SIGKILLs its process group.
#[derive(Debug)]
pub struct SandboxProcess {
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    child: InitChild,
    group: ProcessGroup,
    pid: u32,
    command: String,
    cgroup: Arc<Cgroup>,
    oom_before: u64,
}

/// How a sandboxed program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// The out-of-memory killer struck in the sandbox while it ran.
    pub oom_killed: bool,
}

impl ProcessExit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// In words, for status reports, with the reasons of
    /// [`fabric_core::reason`] where one fits: `oom_killed` (the OOM killer
    /// struck in the sandbox and the program did not succeed),
    /// `cpu_time_exceeded` (SIGXCPU: [`Rlimits::cpu_seconds`] used up),
    /// `crashed (signal N)` for other signals, `exited (code N)` otherwise.
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(0), _) => "exited (code 0)".to_string(),
            _ if self.oom_killed => reason::OOM_KILLED.to_string(),
            (Some(code), _) => format!("exited (code {code})"),
            (None, Some(libc::SIGXCPU)) => reason::CPU_TIME_EXCEEDED.to_string(),
            (None, Some(signal)) => format!("{} (signal {signal})", reason::CRASHED),
            (None, None) => "ended without a status".to_string(),
        }
    }

    /// Exit status 125 is the sandbox failing to set the program up before
    /// `exec` (it says why on the program's stderr).
    pub fn helper_failed(&self) -> bool {
        self.code == Some(EXIT_HELPER_FAILED)
    }
}

impl SandboxProcess {
    /// Host pid of the program, which leads its process group.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for the program to end; then ends whatever it left running in
    /// its process group.
    pub async fn wait(&mut self) -> Result<ProcessExit, RuntimeError> {
        let status = self.child.wait().await;
        let _ = self.group.terminate(&mut self.child, Duration::ZERO).await;
        Ok(self.exit(status))
    }

    /// Stops the program: SIGTERM to its process group, SIGKILL after `grace`.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ProcessExit, RuntimeError> {
        let status = self
            .group
            .terminate(&mut self.child, grace)
            .await
            .map_err(|cause| self.lost(cause))?;
        Ok(self.exit(status))
    }

    fn exit(&self, status: ExitStatus) -> ProcessExit {
        ProcessExit {
            code: status.code(),
            signal: status.signal(),
            oom_killed: self.cgroup.oom_kills() > self.oom_before,
        }
    }

    fn lost(&self, cause: io::Error) -> RuntimeError {
        RuntimeError::Wait {
            command: self.command.clone(),
            cause,
        }
    }
}

/// Creates the workdir (0700) and its `.tmp`; returns the canonical path.
async fn create_workdir(path: &Path) -> Result<PathBuf, RuntimeError> {
    let failed = |cause| RuntimeError::CreateWorkdir {
        path: path.to_path_buf(),
        cause,
    };
    tokio::fs::create_dir_all(path).await.map_err(failed)?;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .await
        .map_err(failed)?;
    let canonical = tokio::fs::canonicalize(path).await.map_err(failed)?;
    child::workdir::create(&canonical).await?;
    Ok(canonical)
}

/// The helper as a command: cgroup joined and rlimits set before `exec`,
/// and `keep_fd` (the init's end of the control socket) passed on across it.
fn helper_command(
    helper: &HelperCommand,
    args: Vec<OsString>,
    cgroup: &Cgroup,
    rlimits: Rlimits,
    keep_fd: RawFd,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(&helper.program);
    command.args(&helper.args).args(args);
    let procs = cgroup.procs_fds();
    // Runs between fork and exec in a copy of this multi-threaded process:
    // only single syscalls on values captured here, no allocation.
    sys::pre_exec(&mut command, move || {
        cgroup::join_from_pre_exec(&procs)?;
        sys::set_rlimit(libc::RLIMIT_NOFILE, rlimits.open_files)?;
        sys::set_rlimit(libc::RLIMIT_CORE, rlimits.core_bytes)?;
        sys::set_rlimit(
            libc::RLIMIT_FSIZE,
            rlimits.file_size_bytes.unwrap_or(libc::RLIM_INFINITY),
        )?;
        if let Some(seconds) = rlimits.cpu_seconds {
            // The hard limit a second above the soft one: SIGXCPU first, then
            // SIGKILL for a process that ignores it.
            sys::set_rlimit_soft_hard(libc::RLIMIT_CPU, seconds, seconds.saturating_add(1))?;
        }
        sys::clear_cloexec(keep_fd)
    });
    command
}

/// Reads the helper's report: `pid N` (from the outer helper) and `ready`
/// (from the init), in either order since two processes write them, or
/// `error ...`. Returns the holder, a pidfd of the init and its host pid.
async fn start(
    mut holder: Child,
    cgroup: &Cgroup,
) -> Result<(Child, OwnedFd, libc::pid_t), String> {
    let stdout = holder.stdout.take().ok_or("the helper has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut init_pid = None;
    let mut ready = false;
    let report = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
            if let Some(pid) = line.strip_prefix(LINE_PID) {
                init_pid = Some(
                    pid.trim()
                        .parse::<libc::pid_t>()
                        .map_err(|_| format!("the sandbox helper reported a bad pid {pid:?}"))?,
                );
            } else if line == LINE_READY {
                ready = true;
            } else if let Some(message) = line.strip_prefix(LINE_ERROR) {
                return Err(message.to_string());
            }
            if ready && init_pid.is_some() {
                return Ok(());
            }
        }
        Err("the sandbox helper exited without reporting".to_string())
    })
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "the sandbox helper did not report ready within {START_TIMEOUT:?}"
        ))
    });
    if let Err(message) = report {
        let _ = holder.start_kill();
        let mut stderr = String::new();
        if let Some(mut pipe) = holder.stderr.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), pipe.read_to_string(&mut stderr))
                .await;
        }
        let _ = holder.wait().await;
        let stderr = stderr.trim();
        return Err(if stderr.is_empty() {
            message
        } else {
            format!("{message} (helper stderr: {stderr})")
        });
    }
    let init_pid = init_pid.ok_or("the sandbox helper did not report its init's pid")?;
    let init = sys::pidfd_open(init_pid).map_err(|err| format!("cannot open the init: {err}"))?;
    // The init is the holder's child and the holder is ours, unreaped: neither
    // pid can have been recycled, so the pidfd is the init. Check anyway that
    // it is in the sandbox's cgroup, i.e. ours.
    if !cgroup.members().unwrap_or_default().contains(&init_pid) {
        return Err(format!("process {init_pid} is not the sandbox's init"));
    }
    // Nothing more comes on these; the helper pointed its stdio at /dev/null.
    drop(lines);
    drop(holder.stderr.take());
    Ok((holder, init, init_pid))
}

/// SIGKILLs members (except `spare`) round after round until none is left.
async fn empty_cgroup(cgroup: &Cgroup, spare: &[libc::pid_t]) -> Result<(), String> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    let mut round = 0;
    loop {
        let members = cgroup
            .members()
            .map_err(|err| format!("cannot list processes: {err}"))?;
        if members.iter().all(|pid| spare.contains(pid)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} processes still running after {KILL_TIMEOUT:?} of SIGKILL",
                members.len() - spare.len().min(members.len())
            ));
        }
        let _ = cgroup.kill_members(spare);
        pause(&mut round).await;
    }
}

/// Removes the cgroup directories, retrying while the last processes finish exiting.
async fn remove_cgroup(cgroup: &Cgroup) -> Result<(), String> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    let mut round = 0;
    loop {
        match cgroup.remove() {
            Ok(()) => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                pause(&mut round).await;
            }
            Err(err) => {
                return Err(format!(
                    "cannot remove its cgroup: {}",
                    crate::error::describe(&err)
                ));
            }
        }
    }
}

fn cgroup_error(name: &str, err: CgroupError) -> RuntimeError {
    match err {
        CgroupError::Exists { path } => RuntimeError::SandboxExists {
            name: name.to_string(),
            path,
        },
        CgroupError::Io {
            action,
            path,
            cause,
        } => {
            let denied = matches!(
                cause.raw_os_error(),
                Some(libc::EACCES | libc::EPERM | libc::EROFS)
            );
            let reason = format!(
                "cannot {action} {}: {}",
                path.display(),
                crate::error::describe(&cause)
            );
            if denied {
                RuntimeError::SandboxUnavailable {
                    reason: format!(
                        "{reason}; the process isolation level needs root and a writable cgroup tree"
                    ),
                }
            } else {
                RuntimeError::SandboxSetup {
                    name: name.to_string(),
                    reason,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SandboxConfig {
        SandboxConfig::new(
            "a-1",
            "/var/lib/fabric/w/a-1",
            HelperCommand::new("/bin/helper"),
        )
    }

    #[test]
    fn defaults_are_the_spec_defaults_and_valid() {
        let config = config();
        assert_eq!((config.memory_mb, config.cpu_cores), (512, 1.0));
        config.validate().unwrap();
        let limits = config.limits();
        assert_eq!(limits.memory_bytes, 512 << 20);
        assert_eq!(
            (limits.cpu_quota_us, limits.cpu_period_us),
            (100_000, 100_000)
        );
    }

    #[test]
    fn cpu_quota_follows_cores() {
        let mut config = config();
        config.cpu_cores = 0.5;
        assert_eq!(config.limits().cpu_quota_us, 50_000);
        config.cpu_cores = 2.0;
        assert_eq!(config.limits().cpu_quota_us, 200_000);
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        type Change = fn(&mut SandboxConfig);
        let cases: Vec<(Change, &str)> = vec![
            (|c| c.name = "../x".into(), "name"),
            (|c| c.name = String::new(), "name"),
            (|c| c.name = "-x".into(), "name"),
            (|c| c.workdir = "relative".into(), "workdir"),
            (|c| c.workdir = "/".into(), "workdir"),
            (|c| c.workdir = "/usr/work".into(), "overlaps"),
            (|c| c.memory_mb = 1, "memory_mb"),
            (|c| c.cpu_cores = f64::NAN, "cpu_cores"),
            (|c| c.cpu_cores = 0.0, "cpu_cores"),
            (|c| c.pids_max = 2, "pids_max"),
            (|c| c.cgroup_parent = "/abs".into(), "cgroup_parent"),
            (|c| c.cgroup_parent = "a/../b".into(), "cgroup_parent"),
            (
                |c| c.read_only_paths.push("/".into()),
                "absolute path below /",
            ),
            (|c| c.helper.program = "helper".into(), "helper"),
        ];
        for (change, expected) in cases {
            let mut config = config();
            change(&mut config);
            let err = config.validate().unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn exits_are_described_for_status_reports() {
        let exit = |code, signal, oom_killed| ProcessExit {
            code,
            signal,
            oom_killed,
        };
        assert_eq!(exit(Some(0), None, false).describe(), "exited (code 0)");
        assert_eq!(exit(Some(2), None, false).describe(), "exited (code 2)");
        assert_eq!(exit(Some(0), None, true).describe(), "exited (code 0)");
        assert_eq!(exit(Some(137), None, true).describe(), "oom_killed");
        assert_eq!(
            exit(None, Some(11), false).describe(),
            "crashed (signal 11)"
        );
        assert_eq!(exit(None, Some(9), true).describe(), "oom_killed");
        assert_eq!(
            exit(None, Some(libc::SIGXCPU), false).describe(),
            "cpu_time_exceeded"
        );
        assert_eq!(exit(None, Some(9), false).describe(), "crashed (signal 9)");
    }
}
