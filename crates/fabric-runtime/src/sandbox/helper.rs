//! The sandbox helper: the small program the fabric execs to build a sandbox and hold it as its init.
//!
//! It runs as a separate, single-threaded process (never inside the fabric),
//! so it may `fork` and then allocate freely. The fabric starts it with the
//! sandbox's cgroups already joined and its rlimits set (see
//! `helper_command` in `sandbox/mod.rs`).
//!
//! `init --name N --workdir W --control FD [--ro PATH]... [--mask PATH]...
//! [--tmp-bytes B] [--cpu-seconds S]`
//!
//! 1. `unshare` mount, pid, net, ipc and uts namespaces, then `fork`: the child
//!    is PID 1 of the new pid namespace ("inner"); the parent ("outer") prints
//!    `pid <inner's host pid>`, waits for it and exits the way it did.
//! 2. Inner builds the filesystem (see [`build_root`]), sets the hostname,
//!    brings `lo` up, prints `ready` (or `error <what>` and exits).
//! 3. From then on inner is the sandbox's init: it reaps orphans, as an init
//!    must, and starts programs on request. The fabric sends a
//!    [`Launch`] on the control socket `FD` (see `wire.rs`); the init forks,
//!    answers with a pidfd of the child, and reports its exit status once it
//!    reaps it. The child leads a new process group, takes its stdio from the
//!    message, waits until the fabric opens its *gate* (a pipe; the fabric
//!    has then read the child's host pid, so a fast exit cannot race it),
//!    drops every capability, sets `no_new_privs` and execs the program.
//!
//! Starting programs from inside means a launch costs one fork of this small
//! process: no fork of the (large, multi-threaded) fabric, no exec of a
//! helper, no `setns`, and no move into the cgroup (the child is born in it),
//! which on cgroup v1 can wait for an RCU grace period.
//! When the fabric closes the control socket (it destroyed the sandbox, or
//! died), the init exits and the kernel kills everything in the sandbox.
use std::convert::Infallible;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};

use std::collections::HashMap;

use super::sys::{self, SignalSet};
use super::wire::{Io, Launch, MAX_MESSAGE, Reply, TaskScope};

/// First argument of the helper that builds and holds a sandbox.
pub(crate) const MODE_INIT: &str = "init";

/// What `init` prints on stdout, one per line.
pub(crate) const LINE_PID: &str = "pid ";
pub(crate) const LINE_READY: &str = "ready";
pub(crate) const LINE_ERROR: &str = "error ";

/// Exit code of a launched program that could not be set up before `exec`
/// (cwd, capabilities; as `docker run` uses 125). It says why on its stderr.
pub(crate) const EXIT_HELPER_FAILED: i32 = 125;

/// Descriptors a launch message may carry: the gate and three stdio streams.
const MAX_LAUNCH_FDS: usize = 4;

/// Where the new root is assembled before `pivot_root`. Any existing directory
/// works: the mount namespace is private by then and every bind source is
/// opened beforehand, so mounting over it hides nothing we still need.
const STAGING: &str = "/tmp";

/// Device nodes of the sandbox's `/dev`, bound from the host's.
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

/// Parts of `/proc` that stay read-only (as Docker does): writing
/// `/proc/sys/kernel/core_pattern` or `/proc/sysrq-trigger` only needs uid 0
/// and would reach the host.
const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];

/// Parts of `/proc` replaced by an empty file: host-wide information.
const PROC_MASKED: [&str; 5] = [
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
];

/// Runs the sandbox helper with its arguments (after any leading arguments
/// of [`HelperCommand`](super::HelperCommand)); never returns.
///
/// The crate's `fabric-sandbox-init` binary is nothing but this; a binary
/// that embeds the runtime (such as `reactor-fabric`) can offer it as a
/// hidden subcommand instead and point
/// [`SandboxConfig::helper`](super::SandboxConfig::helper) at itself.
pub fn helper_main(args: Vec<OsString>) -> ! {
    let mode = args.first().and_then(|a| a.to_str()).unwrap_or("");
    match mode {
        crate::confine::MODE_CONFINE => crate::confine::confine_main(&args[1..]),
        MODE_INIT => match init(&args[1..]) {
            Ok(never) => match never {},
            Err(message) => {
                report(&format!("{LINE_ERROR}{message}"));
                sys::exit_now(1)
            }
        },
        _ => {
            eprintln!(
                "usage: {MODE_INIT} --name NAME --workdir DIR --control FD [--ro PATH]... \
                 [--mask PATH]... [--tmp-bytes N] [--cpu-seconds S]\n\
                 this is the sandbox helper of reactor-fabric; the fabric starts it, people don't"
            );
            sys::exit_now(2)
        }
    }
}

/// One protocol line on stdout, unbuffered (the helper forks; buffers would be duplicated).
fn report(line: &str) {
    let _ = sys::write_fd(1, format!("{line}\n").as_bytes());
}

/// The parsed arguments of `init`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct InitPlan {
    pub(crate) name: String,
    pub(crate) workdir: PathBuf,
    pub(crate) read_only: Vec<PathBuf>,
    /// Host directories bound writable at a path inside: `(host, inside)`.
    pub(crate) read_write: Vec<(PathBuf, PathBuf)>,
    pub(crate) masked: Vec<PathBuf>,
    pub(crate) tmp_bytes: u64,
    /// The init's end of the control socket (inherited across `exec`).
    pub(crate) control: RawFd,
    /// `RLIMIT_CPU` of every launched program (not of the init, which lives
    /// as long as the sandbox and would use it up over many launches).
    pub(crate) cpu_seconds: Option<u64>,
}

impl InitPlan {
    /// The arguments that [`InitPlan::parse`] reads back.
    pub(crate) fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            MODE_INIT.into(),
            "--name".into(),
            self.name.clone().into(),
            "--workdir".into(),
            self.workdir.clone().into(),
            "--tmp-bytes".into(),
            self.tmp_bytes.to_string().into(),
            "--control".into(),
            self.control.to_string().into(),
        ];
        if let Some(seconds) = self.cpu_seconds {
            args.extend(["--cpu-seconds".into(), seconds.to_string().into()]);
        }
        for path in &self.read_only {
            args.extend(["--ro".into(), path.clone().into_os_string()]);
        }
        for path in &self.masked {
            args.extend(["--mask".into(), path.clone().into_os_string()]);
        }
        for (host, inside) in &self.read_write {
            args.extend([
                "--rw-source".into(),
                host.clone().into_os_string(),
                "--rw-target".into(),
                inside.clone().into_os_string(),
            ]);
        }
        args
    }

    pub(crate) fn parse(args: &[OsString]) -> Result<Self, String> {
        let mut plan = Self {
            control: -1,
            ..Self::default()
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .ok_or_else(|| format!("{} needs a value", flag.to_string_lossy()))?;
            match flag.to_str() {
                Some("--name") => plan.name = value.to_string_lossy().into_owned(),
                Some("--workdir") => plan.workdir = absolute(value)?,
                Some("--ro") => plan.read_only.push(absolute(value)?),
                Some("--mask") => plan.masked.push(absolute(value)?),
                Some("--rw-source") => plan.read_write.push((absolute(value)?, PathBuf::new())),
                Some("--rw-target") => match plan.read_write.last_mut() {
                    Some((_, target)) if target.as_os_str().is_empty() => {
                        *target = absolute(value)?;
                    }
                    _ => return Err("--rw-target must follow its --rw-source".into()),
                },
                Some("--tmp-bytes") => plan.tmp_bytes = number(value, "--tmp-bytes")?,
                Some("--control") => plan.control = number(value, "--control")?,
                Some("--cpu-seconds") => plan.cpu_seconds = Some(number(value, "--cpu-seconds")?),
                _ => return Err(format!("unknown argument {}", flag.to_string_lossy())),
            }
        }
        if plan
            .read_write
            .iter()
            .any(|(_, t)| t.as_os_str().is_empty())
        {
            return Err("every --rw-source needs its --rw-target".into());
        }
        if plan.name.is_empty() || plan.workdir.as_os_str().is_empty() || plan.control < 0 {
            return Err("--name, --workdir and --control are required".into());
        }
        Ok(plan)
    }
}

fn number<T: std::str::FromStr>(value: &OsStr, flag: &str) -> Result<T, String> {
    value
        .to_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{flag} needs a number"))
}

fn absolute(value: &OsStr) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    let plain = path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if path.is_absolute() && plain {
        Ok(path)
    } else {
        Err(format!(
            "{} must be an absolute path without . or ..",
            path.display()
        ))
    }
}

fn init(args: &[OsString]) -> Result<Infallible, String> {
    let plan = InitPlan::parse(args)?;
    sys::unshare(
        libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS,
    )
    .map_err(|err| {
        format!(
            "cannot create namespaces: {err}; the process isolation level needs root \
             (CAP_SYS_ADMIN) and a kernel with mount, pid, net, ipc and uts namespaces"
        )
    })?;
    // Blocked before the fork so the inner init cannot miss a child's exit.
    let sigchld = SignalSet::of(&[libc::SIGCHLD]);
    sigchld
        .block()
        .map_err(|err| format!("cannot block SIGCHLD: {err}"))?;
    match sys::fork().map_err(|err| format!("cannot fork the sandbox init: {err}"))? {
        Some(inner) => {
            // Only inner serves the control socket; with this copy closed,
            // the fabric sees the socket end when inner does.
            sys::close(plan.control);
            report(&format!("{LINE_PID}{inner}"));
            // Only inner reports from here on; the fabric reads until `ready`
            // and then lets go of the pipes.
            if let Ok(null) = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                for fd in 0..3 {
                    let _ = sys::dup2(null.as_raw_fd(), fd);
                }
            }
            loop {
                match sys::waitpid(inner, 0) {
                    Ok(Some((_, status))) => sys::exit_like(status),
                    Ok(None) => {}
                    Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
                    Err(_) => sys::exit_now(1),
                }
            }
        }
        None => inner_init(&plan, &sigchld),
    }
}

/// PID 1 of the sandbox.
fn inner_init(plan: &InitPlan, sigchld: &SignalSet) -> ! {
    // If outer dies (it is what the fabric kills), so does the whole sandbox:
    // the kernel kills every process of a pid namespace whose init exits.
    let _ = sys::set_parent_death_signal(libc::SIGKILL);
    if let Err(message) = sys::set_not_dumpable()
        .map_err(|err| format!("cannot protect the init: {err}"))
        .and_then(|()| build_root(plan))
        .and_then(|()| {
            sys::sethostname(plan.name.as_bytes())
                .map_err(|err| format!("cannot set the hostname: {err}"))
        })
        .and_then(|()| {
            sys::loopback_up()
                .map_err(|err| format!("cannot bring up the loopback interface: {err}"))
        })
    {
        report(&format!("{LINE_ERROR}{message}"));
        sys::exit_now(1);
    }
    report(LINE_READY);
    // Let go of the fabric's pipe (and whatever else stdio was): from now on
    // nothing reads it, and an open pipe would keep the fabric's reader waiting.
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = sys::dup2(null.as_raw_fd(), fd);
        }
    }
    serve(plan, sigchld)
}

/// The init's loop: reap every child (reporting the launched ones) and
/// launch programs on request, until the fabric closes the control socket.
fn serve(plan: &InitPlan, sigchld: &SignalSet) -> ! {
    let control = plan.control;
    // Without a signalfd (it never fails in practice) reaping falls back to polling.
    let signals = sigchld.signalfd().ok();
    let mut launched: HashMap<libc::pid_t, u64> = HashMap::new();
    loop {
        reap(control, &mut launched);
        let mut fds = [
            libc::pollfd {
                fd: control,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_ref().map_or(-1, AsRawFd::as_raw_fd),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = if signals.is_some() { 5_000 } else { 50 };
        match sys::poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(err) if err.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => sys::exit_now(1),
        }
        if fds[1].revents != 0
            && let Some(signals) = &signals
        {
            sys::drain(signals);
        }
        if fds[0].revents == 0 {
            continue;
        }
        match sys::recv_message(control, MAX_MESSAGE, MAX_LAUNCH_FDS) {
            // The fabric let go: the sandbox ends with its init.
            Ok(None) => sys::exit_now(0),
            Ok(Some((bytes, fds))) => match Launch::decode(&bytes) {
                Ok(launch) if fds.len() == launch.fd_count() => {
                    start(control, launch, fds, plan.cpu_seconds, &mut launched);
                }
                // The fabric speaks this protocol or nothing: a bad message
                // means the link is broken, and so is the sandbox.
                _ => sys::exit_now(1),
            },
            Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => sys::exit_now(1),
        }
    }
}

/// Sends a reply; the sandbox cannot go on without its fabric.
fn reply(control: RawFd, reply: &Reply, fds: &[RawFd]) {
    if sys::send_message(control, &reply.encode(), fds).is_err() {
        sys::exit_now(1);
    }
}

/// Reaps every exited child; the launched ones are reported.
fn reap(control: RawFd, launched: &mut HashMap<libc::pid_t, u64>) {
    while let Ok(Some((pid, status))) = sys::waitpid(-1, libc::WNOHANG) {
        if let Some(id) = launched.remove(&pid) {
            reply(control, &Reply::Exited { id, status }, &[]);
        }
    }
}

/// Forks a launched program and reports it started (with a pidfd) or failed.
fn start(
    control: RawFd,
    launch: Launch,
    fds: Vec<OwnedFd>,
    cpu_seconds: Option<u64>,
    launched: &mut HashMap<libc::pid_t, u64>,
) {
    let id = launch.id;
    let mut fds = fds.into_iter();
    let gate = fds.next();
    let mut stdio = [launch.stdin, launch.stdout, launch.stderr].map(|io| match io {
        Io::Fd => fds.next(),
        Io::Null => None,
    });
    match sys::fork() {
        Err(err) => {
            let message = format!("cannot fork in the sandbox: {err}");
            reply(control, &Reply::Failed { id, message }, &[]);
        }
        Ok(None) => run_launched(&launch, gate, &mut stdio, cpu_seconds),
        Ok(Some(pid)) => {
            // Also done by the child; done here too so the group exists by the
            // time the fabric hears of it (the shells' double setpgid).
            let _ = sys::setpgid(pid, pid);
            drop(gate);
            drop(stdio);
            match sys::pidfd_open(pid) {
                Ok(pidfd) => {
                    launched.insert(pid, id);
                    reply(control, &Reply::Started { id }, &[pidfd.as_raw_fd()]);
                }
                Err(err) => {
                    let _ = sys::kill(pid, libc::SIGKILL);
                    let message = format!("cannot open a pidfd of the new process: {err}");
                    reply(control, &Reply::Failed { id, message }, &[]);
                }
            }
        }
    }
}

/// The child of a launch: becomes the program.
fn run_launched(
    launch: &Launch,
    gate: Option<OwnedFd>,
    stdio: &mut [Option<OwnedFd>; 3],
    cpu_seconds: Option<u64>,
) -> ! {
    let _ = sys::setpgid(0, 0);
    let null = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .ok();
    for (target, source) in stdio.iter().enumerate() {
        let from = source
            .as_ref()
            .map(AsRawFd::as_raw_fd)
            .or(null.as_ref().map(AsRawFd::as_raw_fd));
        if let Some(from) = from {
            let _ = sys::dup2(from, target as RawFd);
        }
    }
    // The gate: one byte once the fabric knows our pid; end of file if it gave up.
    let mut byte = [0u8; 1];
    let open = gate.is_some_and(|gate| matches!(sys::read_fd(gate.as_raw_fd(), &mut byte), Ok(1)));
    if !open {
        sys::exit_now(EXIT_HELPER_FAILED);
    }
    // Nothing of the init's (control socket, signalfd, the received fds) may leak in.
    if let Err(err) = sys::close_from(3) {
        fail(&format!("cannot close inherited descriptors: {err}"));
    }
    sys::reset_signals(&[libc::SIGCHLD]);
    if let Some(scope) = &launch.scope
        && let Err(message) = enter_task_scope(scope)
    {
        fail(&message);
    }
    if let Err(err) = std::env::set_current_dir(&launch.cwd) {
        fail(&format!("cannot enter {}: {err}", launch.cwd.display()));
    }
    if let Some(seconds) = cpu_seconds {
        // The hard limit a second above the soft one: SIGXCPU first, then
        // SIGKILL for a process that ignores it.
        if let Err(err) =
            sys::set_rlimit_soft_hard(libc::RLIMIT_CPU, seconds, seconds.saturating_add(1))
        {
            fail(&format!("cannot set the CPU time limit: {err}"));
        }
    }
    if let Err(err) = sys::drop_all_capabilities() {
        fail(&format!("cannot drop capabilities: {err}"));
    }
    let program = &launch.argv[0];
    let err = std::process::Command::new(program)
        .args(&launch.argv[1..])
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .exec();
    eprintln!("fabric sandbox: cannot run {program}: {err}");
    // As shells do: 127 for "not found", 126 for "found but not runnable".
    sys::exit_now(if err.kind() == ErrorKind::NotFound {
        127
    } else {
        126
    })
}

/// Keeps a launched command apart from the sandbox's other tasks (see
/// [`TaskScope`]). Returns only in the process that goes on to become the
/// command; the two processes above it never return:
///
/// 1. this process (the one the fabric knows, its process group's leader)
///    enters new mount and pid namespaces, covers the sandbox's workdir but
///    the task's directory, binds the task's tmp directory at `/tmp` and
///    mounts a fresh `/dev/shm`, forks, waits, and ends the way the command
///    did (status passed up a pipe);
/// 2. its child is PID 1 of the new pid namespace: it mounts that
///    namespace's `/proc`, forks the command and, when the command ends,
///    exits, and the kernel kills whatever the command left, `setsid` or
///    not. Signals from outside cannot stop it (a namespace's init ignores
///    those it has no handler for), only SIGKILL, which ends everything;
/// 3. the command, in the same process group, so the fabric's SIGTERM to
///    the group reaches it directly.
fn enter_task_scope(scope: &TaskScope) -> Result<(), String> {
    let open_dir = |path: &Path| {
        open_path(path, libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .map_err(|err| format!("cannot open {}: {err}", path.display()))
    };
    let shm = Path::new("/dev/shm");
    let shm_bytes = sys::filesystem_bytes(shm).unwrap_or(64 << 20);
    sys::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWPID)
        .map_err(|err| format!("cannot create the task's namespaces: {err}"))?;
    sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(|err| format!("cannot make the task's mount namespace private: {err}"))?;
    // Sources next (a bind source must be a mount of this namespace), before
    // the task's directory is covered below.
    let task_dir = open_dir(&scope.task_dir)?;
    let tmp = open_dir(&scope.tmp)?;
    let null = open_path(Path::new("/dev/null"), 0)
        .map_err(|err| format!("cannot open /dev/null: {err}"))?;
    let writable = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    if scope.task_dir != scope.workdir {
        mount_tmpfs(
            &scope.workdir,
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "mode=0755,size=64k,nr_inodes=256",
        )?;
        mount_point(&scope.task_dir, true)?;
        bind(&task_dir, &scope.task_dir, false, writable)?;
        sys::mount_setattr(&c_path(&scope.workdir)?, false, libc::MOUNT_ATTR_RDONLY)
            .map_err(mount_err("make read-only", &scope.workdir))?;
    }
    let tmp_dir = Path::new("/tmp");
    // What the sandbox binds below /tmp (an agent's read-only paths there)
    // would vanish under the task's /tmp: opened now, bound again after.
    let carried = mounts_below(tmp_dir, &scope.workdir)
        .into_iter()
        .map(|path| {
            let fd = open_path(&path, libc::O_NOFOLLOW)
                .map_err(|err| format!("cannot open {}: {err}", path.display()))?;
            Ok((path.is_dir(), path, fd))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if scope.workdir.starts_with(tmp_dir) {
        // The workdir would be covered by the task's /tmp: carried over into it.
        let work = open_dir(&scope.workdir)?;
        bind(&tmp, tmp_dir, false, writable)?;
        mount_point(&scope.workdir, true)?;
        bind(&work, &scope.workdir, true, 0)?;
    } else {
        bind(&tmp, tmp_dir, false, writable)?;
    }
    for (directory, path, fd) in carried {
        mount_point(&path, directory)?;
        bind(&fd, &path, true, READ_ONLY)?;
    }
    mount_tmpfs(
        shm,
        libc::MS_NOSUID | libc::MS_NODEV,
        &format!("mode=1777,size={shm_bytes}"),
    )?;
    drop((task_dir, tmp));
    let (status_read, status_write) =
        sys::pipe().map_err(|err| format!("cannot create a pipe: {err}"))?;
    let init = sys::fork().map_err(|err| format!("cannot fork the task's init: {err}"))?;
    if let Some(init) = init {
        drop(status_write);
        sys::ignore_signals(&sys::STOP_SIGNALS);
        let _ = sys::set_not_dumpable();
        let init_status = loop {
            match sys::waitpid(init, 0) {
                Ok(Some((_, status))) => break status,
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
                // Cannot happen for our own child; end as if it was killed.
                _ => break libc::SIGKILL,
            }
        };
        let mut status = [0u8; 4];
        match sys::read_fd(status_read.as_raw_fd(), &mut status) {
            Ok(4) => sys::exit_like(i32::from_le_bytes(status)),
            // The init was killed (SIGKILL to the group) before the command ended.
            _ => sys::exit_like(init_status),
        }
    }
    drop(status_read);
    let _ = sys::set_parent_death_signal(libc::SIGKILL);
    let _ = sys::set_not_dumpable();
    mount_proc(Path::new("/proc"), &null)?;
    drop(null);
    let command = sys::fork().map_err(|err| format!("cannot fork the command: {err}"))?;
    let Some(command) = command else {
        drop(status_write);
        return Ok(());
    };
    loop {
        match sys::waitpid(-1, 0) {
            Ok(Some((pid, status))) if pid == command => {
                let _ = sys::write_fd(status_write.as_raw_fd(), &status.to_le_bytes());
                // Leaving ends the namespace: the kernel kills what is left.
                sys::exit_now(0);
            }
            Err(err) if err.raw_os_error() != Some(libc::EINTR) => sys::exit_now(0),
            _ => {}
        }
    }
}

/// A launched program could not be set up: say why on its stderr and exit 125.
fn fail(message: &str) -> ! {
    eprintln!("fabric sandbox: {message}");
    sys::exit_now(EXIT_HELPER_FAILED)
}

/// A host path as a C string.
fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))
}

/// `path` (absolute) under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// A bind source, opened before anything is mounted over it.
/// The outermost mount points strictly below `dir` (from
/// `/proc/self/mountinfo`), leaving out `skip` and what is below it.
fn mounts_below(dir: &Path, skip: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        // Escaped names (`\040` for a space) are left alone.
        .filter(|point| !point.contains('\\'))
        .map(PathBuf::from)
        .filter(|point| point != dir && point.starts_with(dir) && !point.starts_with(skip))
        .collect();
    found.sort();
    found.dedup();
    let outermost: Vec<PathBuf> = found
        .iter()
        .filter(|p| !found.iter().any(|q| q != *p && p.starts_with(q)))
        .cloned()
        .collect();
    outermost
}

fn open_path(path: &Path, extra_flags: libc::c_int) -> std::io::Result<OwnedFd> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | extra_flags)
        .open(path)
        .map(OwnedFd::from)
}

/// `/proc/self/fd/N`: how `mount` is given an already-opened source.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn mount_err(what: &str, target: &Path) -> impl FnOnce(std::io::Error) -> String {
    let text = format!("cannot {what} {}", target.display());
    move |err| format!("{text}: {err}")
}

/// Binds `source` (an open fd) onto `target` and sets `attrs` on the new mount.
fn bind(source: &OwnedFd, target: &Path, recursive: bool, attrs: u64) -> Result<(), String> {
    let target_c = c_path(target)?;
    let mut flags = libc::MS_BIND;
    if recursive {
        flags |= libc::MS_REC;
    }
    sys::mount(
        Some(&c_path(&fd_path(source))?),
        &target_c,
        None,
        flags,
        None,
    )
    .map_err(mount_err("bind-mount onto", target))?;
    if attrs != 0 {
        sys::mount_setattr(&target_c, recursive, attrs).map_err(mount_err("restrict", target))?;
    }
    Ok(())
}

fn mount_tmpfs(target: &Path, flags: libc::c_ulong, options: &str) -> Result<(), String> {
    let options = CString::new(options).map_err(|_| "bad tmpfs options".to_string())?;
    sys::mount(
        Some(c"tmpfs"),
        &c_path(target)?,
        Some(c"tmpfs"),
        flags,
        Some(&options),
    )
    .map_err(mount_err("mount a tmpfs on", target))
}

/// An empty file or directory at `target` to mount something onto.
fn mount_point(target: &Path, directory: bool) -> Result<(), String> {
    let failed = |err: std::io::Error| format!("cannot create {}: {err}", target.display());
    if directory {
        return fs::create_dir_all(target).map_err(failed);
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(failed)?;
    }
    match fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(target)
    {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(failed(err)),
    }
}

const READ_ONLY: u64 = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;

/// A fresh `/proc` at `proc_dir` for the caller's pid namespace, with the
/// kernel's knobs read-only and its secrets masked (by binding `null` over them).
fn mount_proc(proc_dir: &Path, null: &OwnedFd) -> Result<(), String> {
    mount_point(proc_dir, true)?;
    sys::mount(
        Some(c"proc"),
        &c_path(proc_dir)?,
        Some(c"proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .map_err(mount_err("mount proc on", proc_dir))?;
    for name in PROC_READ_ONLY {
        let path = proc_dir.join(name);
        if path.exists() {
            let fd = open_path(&path, 0)
                .map_err(|err| format!("cannot open {}: {err}", path.display()))?;
            bind(&fd, &path, true, READ_ONLY | libc::MOUNT_ATTR_NOEXEC)?;
        }
    }
    for name in PROC_MASKED {
        let path = proc_dir.join(name);
        if path.is_file() {
            bind(null, &path, false, READ_ONLY)?;
        }
    }
    Ok(())
}

/// Builds the sandbox's filesystem and makes it the root:
///
/// - `/`: an empty tmpfs, read-only once built;
/// - each `--ro` path: the host's, bound read-only, nosuid, nodev (recursively;
///   a path that is a symlink on the host, such as `/bin` → `usr/bin`, is
///   recreated as the same symlink);
/// - each `--mask` path (if it exists): covered by an empty file or directory;
/// - `/proc`: fresh, for the new pid namespace; `sys`, `sysrq-trigger`, `irq`,
///   `bus`, `fs` read-only; `kcore`, `keys`, `timer_list`, ... masked;
/// - `/dev`: a read-only tmpfs with `null`, `zero`, `full`, `random`,
///   `urandom`, the `fd`/`stdin`/`stdout`/`stderr` links and a writable
///   `/dev/shm` tmpfs;
/// - `/tmp`: a private tmpfs of at most `--tmp-bytes` (charged to the
///   sandbox's memory limit);
/// - the workdir at its host path, read-write (nosuid, nodev) — the one place
///   writes reach the host. Nothing else of the host is there, so neither are
///   other sandboxes' workdirs.
fn build_root(plan: &InitPlan) -> Result<(), String> {
    sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(|err| format!("cannot make the mount namespace private: {err}"))?;

    // Every source first: STAGING (or a path under it) may be one of them.
    let workdir = open_path(&plan.workdir, libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .map_err(|err| format!("cannot open the workdir {}: {err}", plan.workdir.display()))?;
    let mut devices = Vec::new();
    for name in DEVICES {
        let path = Path::new("/dev").join(name);
        let fd =
            open_path(&path, 0).map_err(|err| format!("cannot open {}: {err}", path.display()))?;
        devices.push((name, fd));
    }
    let null = &devices[0].1;
    enum Source {
        Tree(OwnedFd, bool),
        Link(PathBuf),
    }
    let mut read_only = Vec::new();
    for path in &plan.read_only {
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == ErrorKind::NotFound => continue,
            Err(err) => return Err(format!("cannot inspect {}: {err}", path.display())),
        };
        let source = if meta.file_type().is_symlink() {
            let link = fs::read_link(path)
                .map_err(|err| format!("cannot read link {}: {err}", path.display()))?;
            Source::Link(link)
        } else {
            let fd = open_path(path, libc::O_NOFOLLOW)
                .map_err(|err| format!("cannot open {}: {err}", path.display()))?;
            Source::Tree(fd, meta.is_dir())
        };
        read_only.push((path, source));
    }

    let mut read_write = Vec::new();
    for (host, inside) in &plan.read_write {
        let fd = open_path(host, libc::O_DIRECTORY | libc::O_NOFOLLOW).map_err(|err| {
            format!(
                "cannot open {} to bind it writable: {err} (it must be an existing directory)",
                host.display()
            )
        })?;
        read_write.push((inside, fd));
    }

    let root = Path::new(STAGING);
    mount_tmpfs(
        root,
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755,size=1m,nr_inodes=4096",
    )?;

    // /proc for the new pid namespace (this process is its PID 1).
    mount_proc(&root.join("proc"), null)?;

    // /dev: just the harmless devices.
    let dev = root.join("dev");
    mount_point(&dev, true)?;
    mount_tmpfs(
        &dev,
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "mode=0755,size=64k,nr_inodes=64",
    )?;
    for (name, fd) in &devices {
        let target = dev.join(name);
        mount_point(&target, false)?;
        bind(
            fd,
            &target,
            false,
            libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOEXEC,
        )?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link))
            .map_err(|err| format!("cannot create /dev/{link}: {err}"))?;
    }
    let shm = dev.join("shm");
    mount_point(&shm, true)?;
    mount_tmpfs(
        &shm,
        libc::MS_NOSUID | libc::MS_NODEV,
        &format!("mode=1777,size={}", plan.tmp_bytes),
    )?;
    sys::mount_setattr(&c_path(&dev)?, false, libc::MOUNT_ATTR_RDONLY)
        .map_err(mount_err("make read-only", &dev))?;

    // /tmp before the workdir: a workdir under /tmp gets its mount point in
    // this private tmpfs rather than being covered by it.
    let tmp = root.join("tmp");
    mount_point(&tmp, true)?;
    mount_tmpfs(
        &tmp,
        libc::MS_NOSUID | libc::MS_NODEV,
        &format!("mode=1777,size={}", plan.tmp_bytes),
    )?;

    for (path, source) in &read_only {
        let target = under(root, path);
        match source {
            Source::Link(link) => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
                }
                symlink(link, &target)
                    .map_err(|err| format!("cannot create link {}: {err}", target.display()))?;
            }
            Source::Tree(fd, is_dir) => {
                mount_point(&target, *is_dir)?;
                bind(fd, &target, true, READ_ONLY)?;
            }
        }
    }
    for path in &plan.masked {
        let target = under(root, path);
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => mount_tmpfs(
                &target,
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                "mode=0755,size=4k",
            )?,
            Ok(meta) if meta.is_file() => bind(null, &target, false, READ_ONLY)?,
            _ => {}
        }
    }

    let work_target = under(root, &plan.workdir);
    mount_point(&work_target, true)?;
    bind(
        &workdir,
        &work_target,
        false,
        libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
    )?;

    for (inside, fd) in &read_write {
        let target = under(root, inside);
        mount_point(&target, true)?;
        bind(
            fd,
            &target,
            true,
            libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        )?;
    }

    // The sources are no longer needed; none may leak into the sandbox.
    drop(read_write);
    drop(read_only);
    drop(devices);
    drop(workdir);

    // Swap roots: the old one is stacked under the new and detached.
    std::env::set_current_dir(root)
        .map_err(|err| format!("cannot enter {}: {err}", root.display()))?;
    sys::pivot_root(c".", c".").map_err(|err| format!("cannot pivot_root: {err}"))?;
    sys::umount2(c".", libc::MNT_DETACH)
        .map_err(|err| format!("cannot detach the host root: {err}"))?;
    std::env::set_current_dir("/").map_err(|err| format!("cannot enter the new root: {err}"))?;
    sys::mount_setattr(c"/", false, READ_ONLY)
        .map_err(|err| format!("cannot make / read-only: {err}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_arguments_round_trip() {
        let plan = InitPlan {
            name: "agent-1".into(),
            workdir: "/var/lib/fabric/work/agent-1".into(),
            read_only: vec!["/usr".into(), "/etc".into()],
            read_write: vec![("/srv/shared".into(), "/data".into())],
            masked: vec!["/etc/shadow".into()],
            tmp_bytes: 1 << 20,
            control: 5,
            cpu_seconds: Some(30),
        };
        assert_eq!(InitPlan::parse(&plan.to_args()[1..]), Ok(plan));
    }

    #[test]
    fn init_refuses_relative_or_dotted_paths() {
        for bad in ["work", "/a/../b", "./a", "/a/.."] {
            let args: Vec<OsString> = ["--name", "x", "--control", "3", "--workdir", bad]
                .iter()
                .map(Into::into)
                .collect();
            assert!(InitPlan::parse(&args).is_err(), "{bad}");
        }
    }

    #[test]
    fn init_needs_its_control_socket() {
        let args: Vec<OsString> = ["--name", "x", "--workdir", "/w"]
            .iter()
            .map(Into::into)
            .collect();
        assert!(InitPlan::parse(&args).is_err());
    }

    #[test]
    fn paths_are_placed_under_the_staging_root() {
        assert_eq!(
            under(Path::new("/tmp"), Path::new("/usr/lib")),
            PathBuf::from("/tmp/usr/lib")
        );
    }
}
