//! The sandbox helper: the small program the fabric execs to build a sandbox (`init`) and to run commands in it (`exec`).
//!
//! It runs as a separate, single-threaded process (never inside the fabric),
//! so it may `fork` and then allocate freely. Both modes are started by the
//! fabric with the sandbox's cgroups already joined and its rlimits set (see
//! `helper_command` in `sandbox/mod.rs`).
//!
//! `init --name N --workdir W [--ro PATH]... [--mask PATH]... [--tmp-bytes B]`
//!
//! 1. `unshare` mount, pid, net, ipc and uts namespaces, then `fork`: the child
//!    is PID 1 of the new pid namespace ("inner"); the parent ("outer") prints
//!    `pid <inner's host pid>`, waits for it and exits the way it did.
//! 2. Inner builds the filesystem (see [`build_root`]), sets the hostname,
//!    brings `lo` up, prints `ready` (or `error <what>` and exits), and from
//!    then on only reaps orphans, as an init must.
//!
//! `exec --pidfd FD --cwd DIR -- PROGRAM [ARG]...`
//!
//! Enters all five namespaces of the sandbox's init through its pidfd, forks
//! (a pid namespace only applies to children), and in the child drops every
//! capability, sets `no_new_privs` and execs the program. The parent forwards
//! SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to it and finally
//! exits with its exit code or dies of its signal, so the fabric sees exactly
//! what the program did.

use std::convert::Infallible;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};

use super::sys::{self, SignalSet};

/// First argument of the helper that builds and holds a sandbox.
pub(crate) const MODE_INIT: &str = "init";
/// First argument of the helper that runs one program inside a sandbox.
pub(crate) const MODE_EXEC: &str = "exec";

/// What `init` prints on stdout, one per line.
pub(crate) const LINE_PID: &str = "pid ";
pub(crate) const LINE_READY: &str = "ready";
pub(crate) const LINE_ERROR: &str = "error ";

/// Exit code of `exec` when it cannot enter the sandbox (as `docker run` uses 125).
pub(crate) const EXIT_HELPER_FAILED: i32 = 125;

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

/// Signals `exec` passes on to the program.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
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
        MODE_INIT => match init(&args[1..]) {
            Ok(never) => match never {},
            Err(message) => {
                report(&format!("{LINE_ERROR}{message}"));
                sys::exit_now(1)
            }
        },
        MODE_EXEC => match exec(&args[1..]) {
            Ok(never) => match never {},
            Err(message) => {
                eprintln!("fabric sandbox: {message}");
                sys::exit_now(EXIT_HELPER_FAILED)
            }
        },
        _ => {
            eprintln!(
                "usage: {MODE_INIT} --name NAME --workdir DIR [--ro PATH]... [--mask PATH]... \
                 [--tmp-bytes N] | {MODE_EXEC} --pidfd FD --cwd DIR -- PROGRAM [ARG]...\n\
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
    pub(crate) masked: Vec<PathBuf>,
    pub(crate) tmp_bytes: u64,
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
        ];
        for path in &self.read_only {
            args.extend(["--ro".into(), path.clone().into_os_string()]);
        }
        for path in &self.masked {
            args.extend(["--mask".into(), path.clone().into_os_string()]);
        }
        args
    }

    pub(crate) fn parse(args: &[OsString]) -> Result<Self, String> {
        let mut plan = Self::default();
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
                Some("--tmp-bytes") => {
                    plan.tmp_bytes = value
                        .to_str()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--tmp-bytes needs a number")?;
                }
                _ => return Err(format!("unknown argument {}", flag.to_string_lossy())),
            }
        }
        if plan.name.is_empty() || plan.workdir.as_os_str().is_empty() {
            return Err("--name and --workdir are required".into());
        }
        Ok(plan)
    }
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
    // An init's one job: reap whatever is reparented to it.
    loop {
        while let Ok(Some(_)) = sys::waitpid(-1, libc::WNOHANG) {}
        // Bounded wait: a belt to the braces of the blocked, hence pending, SIGCHLD.
        let _ = sigchld.wait(5_000);
    }
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

    let root = Path::new(STAGING);
    mount_tmpfs(
        root,
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755,size=1m,nr_inodes=4096",
    )?;

    // /proc for the new pid namespace (this process is its PID 1).
    let proc_dir = root.join("proc");
    mount_point(&proc_dir, true)?;
    sys::mount(
        Some(c"proc"),
        &c_path(&proc_dir)?,
        Some(c"proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .map_err(mount_err("mount proc on", &proc_dir))?;
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

    // The sources are no longer needed; none may leak into the sandbox.
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

/// The parsed arguments of `exec`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ExecPlan {
    pub(crate) pidfd: RawFd,
    pub(crate) cwd: PathBuf,
    pub(crate) argv: Vec<OsString>,
}

impl ExecPlan {
    pub(crate) fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            MODE_EXEC.into(),
            "--pidfd".into(),
            self.pidfd.to_string().into(),
            "--cwd".into(),
            self.cwd.clone().into(),
            "--".into(),
        ];
        args.extend(self.argv.iter().cloned());
        args
    }

    pub(crate) fn parse(args: &[OsString]) -> Result<Self, String> {
        let mut pidfd = None;
        let mut cwd = None;
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            match flag.to_str() {
                Some("--") => break,
                Some("--pidfd") => {
                    pidfd = args
                        .next()
                        .and_then(|v| v.to_str())
                        .and_then(|v| v.parse().ok());
                }
                Some("--cwd") => cwd = args.next().map(PathBuf::from),
                _ => return Err(format!("unknown argument {}", flag.to_string_lossy())),
            }
        }
        let argv: Vec<OsString> = args.cloned().collect();
        match (pidfd, cwd) {
            (Some(pidfd), Some(cwd)) if !argv.is_empty() => Ok(Self { pidfd, cwd, argv }),
            _ => Err("exec needs --pidfd FD --cwd DIR -- PROGRAM [ARG]...".into()),
        }
    }
}

fn exec(args: &[OsString]) -> Result<Infallible, String> {
    let plan = ExecPlan::parse(args)?;
    sys::setns(
        plan.pidfd,
        libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS,
    )
    .map_err(|err| format!("cannot enter the sandbox (is it destroyed?): {err}"))?;
    // The program must not inherit a handle on the sandbox's init.
    sys::close(plan.pidfd);
    std::env::set_current_dir(&plan.cwd)
        .map_err(|err| format!("cannot enter {}: {err}", plan.cwd.display()))?;

    let mut waited: Vec<libc::c_int> = FORWARDED.to_vec();
    waited.push(libc::SIGCHLD);
    let signals = SignalSet::of(&waited);
    signals
        .block()
        .map_err(|err| format!("cannot block signals: {err}"))?;

    match sys::fork().map_err(|err| format!("cannot fork: {err}"))? {
        None => run_program(&plan.argv, &waited),
        Some(child) => loop {
            match signals.wait(1_000) {
                Ok(Some(signal)) if signal != libc::SIGCHLD => {
                    let _ = sys::kill(child, signal);
                }
                Ok(_) => {
                    if let Ok(Some((_, status))) = sys::waitpid(child, libc::WNOHANG) {
                        sys::exit_like(status);
                    }
                }
                Err(err) => return Err(format!("cannot wait for signals: {err}")),
            }
        },
    }
}

/// The child of `exec`, inside the sandbox's pid namespace: becomes the program.
fn run_program(argv: &[OsString], handled: &[libc::c_int]) -> ! {
    // Dies with the helper, so killing the helper kills the program even if
    // something moved the program out of the helper's process group.
    let _ = sys::set_parent_death_signal(libc::SIGKILL);
    if let Err(err) = sys::drop_all_capabilities() {
        eprintln!("fabric sandbox: cannot drop capabilities: {err}");
        sys::exit_now(EXIT_HELPER_FAILED);
    }
    sys::reset_signals(handled);
    let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    eprintln!(
        "fabric sandbox: cannot run {}: {err}",
        argv[0].to_string_lossy()
    );
    // As shells do: 127 for "not found", 126 for "found but not runnable".
    sys::exit_now(if err.kind() == ErrorKind::NotFound {
        127
    } else {
        126
    })
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
            masked: vec!["/etc/shadow".into()],
            tmp_bytes: 1 << 20,
        };
        assert_eq!(InitPlan::parse(&plan.to_args()[1..]), Ok(plan));
    }

    #[test]
    fn init_refuses_relative_or_dotted_paths() {
        for bad in ["work", "/a/../b", "./a", "/a/.."] {
            let args: Vec<OsString> = ["--name", "x", "--workdir", bad]
                .iter()
                .map(Into::into)
                .collect();
            assert!(InitPlan::parse(&args).is_err(), "{bad}");
        }
    }

    #[test]
    fn exec_arguments_round_trip_including_dashes_in_the_program() {
        let plan = ExecPlan {
            pidfd: 7,
            cwd: "/w".into(),
            argv: vec!["/bin/sh".into(), "-c".into(), "--".into()],
        };
        assert_eq!(ExecPlan::parse(&plan.to_args()[1..]), Ok(plan));
        assert!(ExecPlan::parse(&["--pidfd".into(), "3".into()]).is_err());
    }

    #[test]
    fn paths_are_placed_under_the_staging_root() {
        assert_eq!(
            under(Path::new("/tmp"), Path::new("/usr/lib")),
            PathBuf::from("/tmp/usr/lib")
        );
    }
}
