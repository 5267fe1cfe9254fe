//! Confinement of isolation level `none`: host processes that run as the
//! fabric's user yet cannot reach what that user owns.
//!
//! Where the fabric cannot build a sandbox (it is not root, or the kernel
//! gives it no namespaces, as in a container), a task's commands and an
//! agent's program still run under three locks, each set in the child
//! between `fork` and `exec` and inherited by everything it starts:
//!
//! - **Landlock** (Linux 5.13+, no privileges needed): the filesystem is
//!   reduced to the system directories read-only (the same list as the
//!   sandbox's, minus the same masked secrets such as `/etc/shadow`),
//!   `/proc` read-only, `/dev/null`, `zero`, `full`, `random`, `urandom`,
//!   and the working directory read-write. The fabric's data directory,
//!   `/home`, `/root`, `/tmp`, `/run` and other agents' directories do not
//!   exist for it. Landlock also forbids tracing a process outside the
//!   domain, so `/proc/<fabric pid>/environ`, `mem` and friends refuse to
//!   open even for the same user; on kernels with Landlock ABI 6 (6.12+)
//!   signals to the fabric and abstract Unix sockets outside are refused too.
//! - **seccomp**: `socket(AF_UNIX, …)` fails with `EACCES`, because Landlock
//!   does not cover `connect` to a Unix socket by path: without this, a
//!   socket the fabric's user may use (Docker's, a database's) would be a
//!   way out. Pipes and `socketpair` still work.
//! - **no privileges**: `no_new_privs` always; when the fabric is root, every
//!   capability is dropped as well (uid 0 without capabilities only owns
//!   files, and Landlock hides those outside the allowed paths).
//!
//! What does not hold: the network is the host's (TCP and UDP to anywhere,
//! loopback services included: they must authenticate, as the fabric's own
//! API and an instance's Redis do); below Landlock ABI 6 a command can still
//! signal the fabric's user's processes; there are no resource limits beyond
//! the rlimits the fabric has. Isolation `process` (root) or `container`
//! close those.
//!
//! A [`Confinement`] is built once per agent session (the system paths,
//! `/proc`, `/dev` and the session's own directory), then narrowed per task
//! with a second Landlock layer that allows writes only below that task's
//! working directory ([`Confinement::run_shell`]).

#![allow(unsafe_code)]

use std::ffi::{CString, OsString};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc::Sender;

use crate::RuntimeError;
use crate::child::{self, Launcher, LogLine, ShellJob, ShellOutcome, Started};
use crate::sandbox::{HelperCommand, sys};

// Landlock's ABI (include/uapi/linux/landlock.h).
const CREATE_RULESET_VERSION: u32 = 1 << 0;
const RULE_PATH_BENEATH: libc::c_int = 1;

const FS_EXECUTE: u64 = 1 << 0;
const FS_WRITE_FILE: u64 = 1 << 1;
const FS_READ_FILE: u64 = 1 << 2;
const FS_READ_DIR: u64 = 1 << 3;
/// `REMOVE_DIR` through `MAKE_SYM`: the rights of ABI 1 that change a tree.
const FS_CHANGE_TREE_V1: u64 = 0b1_1111_1111 << 4;
/// ABI 2: linking or renaming a file into another directory.
const FS_REFER: u64 = 1 << 13;
/// ABI 3: `truncate` and `open(O_TRUNC)`.
const FS_TRUNCATE: u64 = 1 << 14;
/// ABI 5: `ioctl` on a device file.
const FS_IOCTL_DEV: u64 = 1 << 15;

/// ABI 6: abstract Unix sockets and signals stay inside the domain.
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

const READ: u64 = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR;
/// Rights that make sense on a file (not a directory) in a rule.
const FILE_RIGHTS: u64 = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// Device files every program expects, read-write.
const DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// The Landlock ABI version of the running kernel, or why there is none.
pub fn landlock_abi() -> Result<u32, String> {
    // SAFETY: with a null attribute, size 0 and the VERSION flag the call only
    // returns an integer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::ENOSYS) => "this kernel has no Landlock (Linux 5.13 or later is needed, built with CONFIG_SECURITY_LANDLOCK)".to_owned(),
            Some(libc::EOPNOTSUPP) => "Landlock is built in but not enabled (add landlock to the kernel's lsm= boot parameter)".to_owned(),
            Some(libc::EPERM) => "a seccomp filter refuses Landlock's system calls here (a container's profile?)".to_owned(),
            _ => format!("Landlock cannot be used: {err}"),
        });
    }
    Ok(rc as u32)
}

/// What a confined process may see besides its working directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfineConfig {
    /// Readable (and executable) trees; missing ones are skipped.
    pub read_only_paths: Vec<PathBuf>,
    /// Paths under `read_only_paths` left out of them.
    pub masked_paths: Vec<PathBuf>,
}

impl Default for ConfineConfig {
    /// The sandbox's defaults: system directories, secrets masked.
    fn default() -> Self {
        Self {
            read_only_paths: crate::sandbox::DEFAULT_READ_ONLY_PATHS
                .iter()
                .map(PathBuf::from)
                .collect(),
            masked_paths: crate::sandbox::DEFAULT_MASKED_PATHS
                .iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

/// The locks of one agent session; see the [module docs](self).
#[derive(Debug)]
pub struct Confinement {
    /// What it allows, and where (kept for the trampoline's arguments).
    config: ConfineConfig,
    session: PathBuf,
    /// Starts commands through `<helper> confine …` when set: a fresh
    /// process confines itself and executes the command, so the fabric
    /// spawns it without `fork` (see [`Confinement::with_trampoline`]).
    trampoline: Option<HelperCommand>,
    /// The session's Landlock ruleset: the first layer of every process.
    ruleset: Arc<OwnedFd>,
    abi: u32,
    /// Whether to drop every capability (the fabric is root).
    drop_capabilities: bool,
    /// The seccomp program, built once; the child only points the kernel at it.
    filter: Arc<Vec<libc::sock_filter>>,
}

impl Confinement {
    /// Builds the session's first layer: `config`'s paths, `/proc`, the
    /// devices, and `workdir` (the session's own directory) read-write.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::ConfinementUnavailable`] when the kernel has no usable
    /// Landlock or the seccomp filter has no rules for this architecture;
    /// [`RuntimeError::ConfinementSetup`] when a rule cannot be added.
    pub fn new(config: &ConfineConfig, workdir: &Path) -> Result<Self, RuntimeError> {
        let abi =
            landlock_abi().map_err(|reason| RuntimeError::ConfinementUnavailable { reason })?;
        let filter = unix_socket_filter().ok_or_else(|| RuntimeError::ConfinementUnavailable {
            reason: format!(
                "no seccomp filter for this architecture ({})",
                std::env::consts::ARCH
            ),
        })?;
        let ruleset = new_ruleset(abi).map_err(|e| setup("create the Landlock ruleset", e))?;
        let handled = handled_fs(abi);
        // Only what this user could read needs hiding (as root: all of it);
        // each masked path costs a rule per sibling on the way down to it.
        let masked: Vec<PathBuf> = config
            .masked_paths
            .iter()
            .filter(|p| readable(p))
            .cloned()
            .collect();
        let mut rules = Vec::new();
        for root in &config.read_only_paths {
            rules.extend(unmasked(root, &masked));
        }
        for path in rules {
            add_rule(&ruleset, &path, READ & handled)
                .map_err(|e| setup(&format!("allow reading {}", path.display()), e))?;
        }
        add_rule(
            &ruleset,
            Path::new("/proc"),
            (FS_READ_FILE | FS_READ_DIR) & handled,
        )
        .map_err(|e| setup("allow reading /proc", e))?;
        add_devices(&ruleset, handled)?;
        add_rule(&ruleset, workdir, handled)
            .map_err(|e| setup(&format!("allow writing {}", workdir.display()), e))?;
        Ok(Self {
            config: config.clone(),
            session: workdir.to_path_buf(),
            trampoline: None,
            ruleset: Arc::new(ruleset),
            abi,
            drop_capabilities: sys::is_root(),
            filter: Arc::new(filter),
        })
    }

    /// Starts every command through `helper` (a binary whose `main` calls
    /// [`helper_main`](crate::sandbox::helper_main), as the sandbox's does)
    /// in its `confine` mode. Without it, the locks are set in a `pre_exec`
    /// hook, which makes the standard library `fork` the fabric (copying its
    /// page tables, then taking a copy-on-write fault for every page it
    /// writes until the child executes) instead of `posix_spawn`ing: measured
    /// in `fabric-bench agents --parts shell`.
    pub fn with_trampoline(mut self, helper: HelperCommand) -> Self {
        self.trampoline = Some(helper);
        self
    }

    /// `<helper> [args] confine --session S [--task T] --ro … --mask … --`:
    /// what precedes the shell when a trampoline is set (empty otherwise).
    fn wrapper(&self, task: Option<&Path>) -> Vec<OsString> {
        let Some(helper) = &self.trampoline else {
            return Vec::new();
        };
        let mut argv: Vec<OsString> = vec![helper.program.clone().into_os_string()];
        argv.extend(helper.args.iter().cloned());
        argv.push(MODE_CONFINE.into());
        argv.push("--session".into());
        argv.push(self.session.clone().into_os_string());
        if let Some(task) = task {
            argv.push("--task".into());
            argv.push(task.as_os_str().to_owned());
        }
        for path in &self.config.read_only_paths {
            argv.push("--ro".into());
            argv.push(path.as_os_str().to_owned());
        }
        for path in &self.config.masked_paths {
            argv.push("--mask".into());
            argv.push(path.as_os_str().to_owned());
        }
        argv.push("--".into());
        argv
    }

    /// Starts `command` as [`host_shell`](crate::child) does, confined, with
    /// writes below `task` only when given.
    pub(crate) fn spawn_shell(
        &self,
        command: &str,
        workdir: &Path,
        env: &[(String, String)],
        task: Option<&Path>,
    ) -> Result<tokio::process::Child, RuntimeError> {
        self.spawn_shell_with(command, workdir, env, task, |_| {})
    }

    /// [`Confinement::spawn_shell`] with `configure` given the command
    /// before it is spawned (its stdin piped, say).
    pub(crate) fn spawn_shell_with(
        &self,
        command: &str,
        workdir: &Path,
        env: &[(String, String)],
        task: Option<&Path>,
        configure: impl FnOnce(&mut tokio::process::Command),
    ) -> Result<tokio::process::Child, RuntimeError> {
        if self.trampoline.is_some() {
            return child::host_shell_with(command, workdir, env, &self.wrapper(task), configure);
        }
        let layer = task.map(|t| self.task_layer(t)).transpose()?;
        let layers: Vec<&OwnedFd> = layer.iter().collect();
        child::host_shell_with(command, workdir, env, &[], |cmd| {
            self.apply(cmd, &layers);
            configure(cmd);
        })
    }

    /// The kernel's Landlock ABI version this confinement was built with.
    pub fn abi(&self) -> u32 {
        self.abi
    }

    /// [`run_shell`](crate::run_shell) with every command confined, and
    /// writes allowed only below `job.workdir` (which must lie in the
    /// session's directory).
    pub async fn run_shell(
        &self,
        job: ShellJob,
        logs: Option<Sender<LogLine>>,
        cancel: impl Future<Output = ()>,
    ) -> Result<ShellOutcome, RuntimeError> {
        child::run_shell_with(job, logs, cancel, &Confined { confinement: self }).await
    }

    /// A second layer: reads as the first allows, writes only below `workdir`.
    fn task_layer(&self, workdir: &Path) -> Result<OwnedFd, RuntimeError> {
        let handled = handled_fs(self.abi);
        let layer =
            new_fs_ruleset(handled).map_err(|e| setup("create a task's Landlock layer", e))?;
        add_rule(&layer, Path::new("/"), READ & handled)
            .map_err(|e| setup("allow reading in a task's layer", e))?;
        add_devices(&layer, handled)?;
        add_rule(&layer, workdir, handled)
            .map_err(|e| setup(&format!("allow writing {}", workdir.display()), e))?;
        Ok(layer)
    }

    /// Sets the locks on `command`'s child, with `extra` Landlock layers on
    /// top of the session's. The layers must stay open until it is spawned.
    pub(crate) fn apply(&self, command: &mut tokio::process::Command, extra: &[&OwnedFd]) {
        let mut layers: Vec<RawFd> = vec![self.ruleset.as_raw_fd()];
        layers.extend(extra.iter().map(|fd| fd.as_raw_fd()));
        let drop_capabilities = self.drop_capabilities;
        let filter = Arc::clone(&self.filter);
        sys::pre_exec(command, move || {
            // Order matters: capabilities first (dropping them needs
            // CAP_SETPCAP, which the Landlock domain does not take away but
            // which must not survive), then no_new_privs (needed by both
            // Landlock and seccomp without CAP_SYS_ADMIN), then the locks.
            if drop_capabilities {
                sys::drop_all_capabilities()?;
            }
            sys::set_no_new_privs()?;
            for &layer in &layers {
                restrict_self(layer)?;
            }
            sys::install_seccomp(&filter)
        });
    }
}

/// Starts a confined job's commands on the host.
struct Confined<'a> {
    confinement: &'a Confinement,
}

impl Launcher for Confined<'_> {
    async fn start_shell(
        &self,
        command: &str,
        workdir: &Path,
        env: &[(String, String)],
    ) -> Result<Started, RuntimeError> {
        let child = self
            .confinement
            .spawn_shell(command, workdir, env, Some(workdir))?;
        child::started_on_host(child, command)
    }
}

fn setup(what: &str, cause: io::Error) -> RuntimeError {
    RuntimeError::ConfinementSetup {
        reason: format!("cannot {what}: {cause}"),
    }
}

/// The [`DEVICES`], read-write, in every layer (a layer that left them out
/// would take `> /dev/null` away).
fn add_devices(ruleset: &OwnedFd, handled: u64) -> Result<(), RuntimeError> {
    for device in DEVICES {
        let rights = (FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE | FS_IOCTL_DEV) & handled;
        add_rule(ruleset, Path::new(device), rights)
            .map_err(|e| setup(&format!("allow using {device}"), e))?;
    }
    Ok(())
}

/// Every filesystem right the kernel's ABI knows.
fn handled_fs(abi: u32) -> u64 {
    let mut rights = READ | FS_WRITE_FILE | FS_CHANGE_TREE_V1;
    if abi >= 2 {
        rights |= FS_REFER;
    }
    if abi >= 3 {
        rights |= FS_TRUNCATE;
    }
    if abi >= 5 {
        rights |= FS_IOCTL_DEV;
    }
    rights
}

fn new_ruleset(abi: u32) -> io::Result<OwnedFd> {
    let scoped = if abi >= 6 {
        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    } else {
        0
    };
    create_ruleset(&RulesetAttr {
        handled_access_fs: handled_fs(abi),
        handled_access_net: 0,
        scoped,
    })
}

fn new_fs_ruleset(handled: u64) -> io::Result<OwnedFd> {
    create_ruleset(&RulesetAttr {
        handled_access_fs: handled,
        handled_access_net: 0,
        scoped: 0,
    })
}

fn create_ruleset(attr: &RulesetAttr) -> io::Result<OwnedFd> {
    // Older kernels know a shorter struct: pass only what they know, so
    // they do not refuse the zeroed fields they have never heard of.
    let size = if attr.scoped != 0 {
        std::mem::size_of::<RulesetAttr>()
    } else {
        std::mem::size_of::<u64>()
    };
    // SAFETY: `attr` is a live #[repr(C)] copy of struct landlock_ruleset_attr
    // whose first `size` bytes the kernel reads.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            attr as *const RulesetAttr,
            size,
            0u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd (close-on-exec) to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Allows `rights` beneath `path`; a missing path is skipped, a file gets
/// only the rights a file can have.
fn add_rule(ruleset: &OwnedFd, path: &Path, rights: u64) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid C string; the returned fd is owned below.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => Ok(()),
            _ => Err(err),
        };
    }
    // SAFETY: the fd was just opened and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let rights = if std::fs::metadata(path)?.is_dir() {
        rights
    } else {
        rights & FILE_RIGHTS
    };
    let attr = PathBeneathAttr {
        allowed_access: rights,
        parent_fd: fd.as_raw_fd(),
    };
    // SAFETY: the attribute is a live packed copy of struct
    // landlock_path_beneath_attr; both fds are open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `root` as rules that leave out `masked`: `root` itself when nothing
/// masked lies below it, else its entries (recursively down to the masked
/// paths), minus the masked ones. Landlock only adds rights, so a secret
/// inside an allowed tree is hidden by allowing its siblings instead.
fn unmasked(root: &Path, masked: &[PathBuf]) -> Vec<PathBuf> {
    if masked.iter().any(|m| m == root) {
        return Vec::new();
    }
    let below: Vec<&PathBuf> = masked.iter().filter(|m| m.starts_with(root)).collect();
    if below.is_empty() {
        return vec![root.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut rules = Vec::new();
    for entry in entries.flatten() {
        rules.extend(unmasked(&entry.path(), masked));
    }
    rules
}

/// Whether this process may read `path` (a missing one: no).
fn readable(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string; access(2) only reads it.
    unsafe { libc::access(c_path.as_ptr(), libc::R_OK) == 0 }
}

/// `socket(AF_UNIX, …)` → `EACCES`, every other call allowed; `None` on an
/// architecture this filter does not know (it must check the arch, or a
/// 32-bit call could slip past with other numbers).
fn unix_socket_filter() -> Option<Vec<libc::sock_filter>> {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return None;
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
        const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
        const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
        const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
        // struct seccomp_data: nr at 0, arch at 4, args[0] at 16 (its low
        // half on little-endian machines, which both of these are).
        let stmt = |code, k| libc::sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        };
        let jump = |code, k, jt, jf| libc::sock_filter { code, jt, jf, k };
        let deny = libc::SECCOMP_RET_ERRNO | libc::EACCES as u32;
        Some(vec![
            stmt(LD_W_ABS, 4),
            // Another architecture's calls (x86's int 0x80): refuse them all.
            jump(JEQ_K, ARCH, 1, 0),
            stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
            stmt(LD_W_ABS, 0),
            // x32 numbers (bit 30) are another table: refuse them too.
            jump(JGE_K, 0x4000_0000, 0, 1),
            stmt(RET_K, deny),
            jump(JEQ_K, libc::SYS_socket as u32, 0, 3),
            stmt(LD_W_ABS, 16),
            jump(JEQ_K, libc::AF_UNIX as u32, 0, 1),
            stmt(RET_K, deny),
            stmt(RET_K, libc::SECCOMP_RET_ALLOW),
        ])
    }
}

/// The helper mode that confines itself, then executes a command:
/// `confine --session DIR [--task DIR] [--ro PATH]... [--mask PATH]... -- PROGRAM ARGS...`.
pub const MODE_CONFINE: &str = "confine";

/// `confine` mode of the helper (see [`Confinement::with_trampoline`]):
/// builds the same layers as the fabric would, sets every lock on itself
/// and executes the command. Exits 126 with a message on stderr when it
/// cannot (the shell's "cannot execute").
pub(crate) fn confine_main(args: &[OsString]) -> ! {
    let fail = |message: String| -> ! {
        eprintln!("reactor-fabric confine: {message}");
        sys::exit_now(126)
    };
    let mut config = ConfineConfig {
        read_only_paths: Vec::new(),
        masked_paths: Vec::new(),
    };
    let (mut session, mut task) = (None, None);
    let mut rest = args.iter();
    let command: Vec<&OsString> = loop {
        let Some(flag) = rest.next() else {
            fail("no command after --".to_owned())
        };
        if flag == "--" {
            break rest.collect();
        }
        let Some(value) = rest.next() else {
            fail(format!("{} needs a value", flag.to_string_lossy()))
        };
        let value = PathBuf::from(value);
        match flag.to_str() {
            Some("--session") => session = Some(value),
            Some("--task") => task = Some(value),
            Some("--ro") => config.read_only_paths.push(value),
            Some("--mask") => config.masked_paths.push(value),
            _ => fail(format!("unknown argument {}", flag.to_string_lossy())),
        }
    };
    let Some(session) = session else {
        fail("--session is required".to_owned())
    };
    let Some((program, program_args)) = command.split_first() else {
        fail("no command after --".to_owned())
    };
    if task.is_some() {
        // A task's command: nothing it starts may outlive it.
        keep_task().unwrap_or_else(|e| fail(format!("cannot watch over the command: {e}")));
    }
    let confinement = Confinement::new(&config, &session).unwrap_or_else(|e| fail(e.to_string()));
    let layer = task
        .as_deref()
        .map(|t| confinement.task_layer(t))
        .transpose()
        .unwrap_or_else(|e| fail(e.to_string()));
    let mut layers = vec![confinement.ruleset.as_raw_fd()];
    layers.extend(layer.iter().map(AsRawFd::as_raw_fd));
    if let Err(e) = lock_self(&confinement, &layers) {
        fail(format!("cannot confine itself: {e}"));
    }
    let error = std::os::unix::process::CommandExt::exec(
        std::process::Command::new(program).args(program_args),
    );
    fail(format!(
        "cannot execute {}: {error}",
        program.to_string_lossy()
    ))
}

/// Makes the calling process the *keeper* of a task's command: it becomes a
/// child subreaper (whatever the command starts and orphans, `setsid` or a
/// double fork, is re-parented to it rather than to init), forks, and
/// returns in the child, which goes on to confine itself and become the
/// command. The keeper waits for the command, then SIGKILLs every process
/// left below it, round after round until none is left, and ends the way the
/// command did. It stays in the command's process group and ignores the
/// stop signals, so the fabric's SIGTERM reaches the command and the
/// command's end decides the status; a SIGKILL of the group (the grace ran
/// out) ends the keeper too, and what left the group then outlives it.
fn keep_task() -> io::Result<()> {
    sys::set_child_subreaper()?;
    let Some(command) = sys::fork()? else {
        return Ok(());
    };
    sys::ignore_signals(&sys::STOP_SIGNALS);
    let mut status = None;
    loop {
        match sys::waitpid(-1, 0) {
            Ok(Some((pid, code))) if pid == command => {
                status = Some(code);
                // Whatever is left below us ends with the command.
                sys::kill_children();
            }
            Ok(_) => {
                if status.is_some() {
                    sys::kill_children();
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            // ECHILD: nothing is left below us.
            Err(_) => break,
        }
    }
    sys::exit_like(status.unwrap_or(libc::SIGKILL))
}

/// The locks, on the calling (single-threaded) process: what the `pre_exec`
/// hook of [`Confinement::apply`] does in a forked child.
fn lock_self(confinement: &Confinement, layers: &[RawFd]) -> io::Result<()> {
    if confinement.drop_capabilities {
        sys::drop_all_capabilities()?;
    }
    sys::set_no_new_privs()?;
    for &layer in layers {
        restrict_self(layer)?;
    }
    sys::install_seccomp(&confinement.filter)
}

/// `landlock_restrict_self(2)`: the calling thread enters the ruleset's domain.
fn restrict_self(ruleset: RawFd) -> io::Result<()> {
    // SAFETY: integer arguments; the fd is open.
    let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
