//! The raw Linux calls behind the sandbox, each a small safe wrapper over one `libc` call.
//!
//! This is the only module of the sandbox with `unsafe` code. Every wrapper
//! passes either plain integers or pointers to memory it owns for the length
//! of the call, and turns the C error convention into `io::Result`.
//!
//! Two kinds of callers:
//!
//! - `pre_exec` closures in the fabric (after `fork`, before `exec`, in a copy
//!   of a multi-threaded process): only [`write_fd`], [`set_rlimit`],
//!   [`set_rlimit_soft_hard`] and [`clear_cloexec`], which are single async-signal-safe syscalls that
//!   allocate nothing.
//! - the sandbox helper process (`helper.rs`), which is single-threaded, so
//!   after its own `fork` it may do anything.

#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn check_long(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

// ---- async-signal-safe: used in `pre_exec` -------------------------------------------------

/// `write(2)` of all of `bytes` (cgroup files take small writes whole).
pub(crate) fn write_fd(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `bytes`, which outlives the call;
    // write(2) only reads that memory.
    let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    match written {
        -1 => Err(io::Error::last_os_error()),
        n if n as usize == bytes.len() => Ok(()),
        _ => Err(io::Error::from_raw_os_error(libc::EIO)),
    }
}

/// `setrlimit(2)` with the same soft and hard value.
pub(crate) fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    set_rlimit_soft_hard(resource, value, value)
}

/// `setrlimit(2)` with distinct soft and hard values.
pub(crate) fn set_rlimit_soft_hard(
    resource: libc::__rlimit_resource_t,
    soft: u64,
    hard: u64,
) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `limit` is a valid rlimit on our stack for the length of the call.
    check(unsafe { libc::setrlimit(resource, &limit) }).map(drop)
}

/// Lets `fd` survive `exec` (in the forked child only: fd flags are per process).
pub(crate) fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl(F_SETFD) takes integers only.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map(drop)
}

/// Registers `hook` to run in the child between `fork` and `exec`.
///
/// Callers must keep `hook` async-signal-safe: no allocation, no locks, only
/// the wrappers above. (The closure may own heap data; it must not allocate or free.)
pub(crate) fn pre_exec<F>(command: &mut tokio::process::Command, hook: F)
where
    F: FnMut() -> io::Result<()> + Send + Sync + 'static,
{
    // SAFETY: every hook passed here is written against the contract above (see
    // `helper_command` in `sandbox/mod.rs`): it only issues write/setrlimit/fcntl syscalls
    // on integers and memory captured before the fork.
    unsafe {
        command.pre_exec(hook);
    }
}

// ---- the fabric side, ordinary threads ------------------------------------------------------

/// `pidfd_open(2)`: a handle on exactly this process, immune to pid reuse.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes integers and returns a new fd we then own.
    let fd = check_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(2)`.
pub(crate) fn pidfd_signal(pidfd: &OwnedFd, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: integers only; a null siginfo means "as kill(2) would send it".
    check_long(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}

/// `kill(2)` of one process. Callers never pass 0 or negative pids.
pub(crate) fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    debug_assert!(pid > 0, "only single processes are signalled here");
    // SAFETY: kill takes integers only.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// `setns(2)`: moves the calling thread into namespaces of `fd` (a pidfd or ns file).
pub(crate) fn setns(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: integers only.
    check(unsafe { libc::setns(fd, nstype) }).map(drop)
}

// ---- the helper process (single-threaded) ---------------------------------------------------

/// `unshare(2)`.
pub(crate) fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: integers only.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// `fork(2)`: `Some(child)` in the parent, `None` in the child.
///
/// Only the sandbox helper calls this, and it is single-threaded: the child
/// inherits no lock held by another thread, so it may allocate freely.
pub(crate) fn fork() -> io::Result<Option<libc::pid_t>> {
    // SAFETY: see above; the helper never starts threads.
    let pid = check(unsafe { libc::fork() })?;
    Ok((pid != 0).then_some(pid))
}

/// `waitpid(2)`: `Some((pid, status))`, or `None` with `WNOHANG` and nothing to reap.
pub(crate) fn waitpid(
    pid: libc::pid_t,
    flags: libc::c_int,
) -> io::Result<Option<(libc::pid_t, libc::c_int)>> {
    let mut status = 0;
    // SAFETY: `status` is ours for the call.
    let reaped = check(unsafe { libc::waitpid(pid, &mut status, flags) })?;
    Ok((reaped != 0).then_some((reaped, status)))
}

/// `mount(2)`.
pub(crate) fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is null or a NUL-terminated string borrowed for the call.
    check(unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    })
    .map(drop)
}

/// `mount_setattr(2)` (Linux 5.12): sets `attr` (`MOUNT_ATTR_*`) on the mount
/// at `target`, and on every mount below it when `recursive`.
pub(crate) fn mount_setattr(target: &CStr, recursive: bool, attr: u64) -> io::Result<()> {
    let mut attrs: libc::mount_attr = libc::mount_attr {
        attr_set: attr,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `target` is NUL-terminated and `attrs` lives on our stack; the size
    // passed is the size of the struct the pointer points to.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            flags,
            &mut attrs as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })
    .map(drop)
}

/// `umount2(2)`.
pub(crate) fn umount2(target: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `target` is NUL-terminated and borrowed for the call.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// `pivot_root(2)`.
pub(crate) fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both are NUL-terminated strings borrowed for the call.
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

/// `sethostname(2)`.
pub(crate) fn sethostname(name: &[u8]) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`, borrowed for the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// `prctl(2)` with integer arguments only.
fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: every option used here takes integer arguments.
    check(unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
    .map(drop)
}

/// The calling process gets `signal` when its parent dies.
pub(crate) fn set_parent_death_signal(signal: libc::c_int) -> io::Result<()> {
    prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong)
}

/// Not dumpable: no core, and `/proc/<pid>` of this process is off limits to
/// the sandbox's (unprivileged) processes.
pub(crate) fn set_not_dumpable() -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, 0)
}

/// Drops every capability for good: bounding set, ambient set, then the
/// effective/permitted/inheritable sets, and sets `no_new_privs` so no
/// `exec` (setuid or file capabilities) can bring any back. Root inside the
/// sandbox is then uid 0 without privileges: it cannot mount, remount, load
/// modules, change the clock, trace other processes or override file modes.
pub(crate) fn drop_all_capabilities() -> io::Result<()> {
    // The bounding set needs CAP_SETPCAP, so it goes first. Caps past the
    // kernel's last one fail with EINVAL: that is where the loop ends.
    for cap in 0..64 {
        match prctl(libc::PR_CAPBSET_DROP, cap) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => break,
            Err(err) => return Err(err),
        }
    }
    // SAFETY: integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })?;

    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // Version 3 takes two data structs (capabilities 0-31 and 32-63).
    let data = [
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: header and data are #[repr(C)] copies of the kernel's
    // __user_cap_header_struct / __user_cap_data_struct[2], alive for the call.
    check_long(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) })?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
}

/// `no_new_privs`: no `exec` can gain privileges; what Landlock and
/// seccomp need from an unprivileged process.
pub(crate) fn set_no_new_privs() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
}

/// Installs `filter` as this thread's seccomp filter (`no_new_privs` set).
pub(crate) fn install_seccomp(filter: &[libc::sock_filter]) -> io::Result<()> {
    let program = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `program` points at `filter`, alive for the call; the kernel
    // copies it.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &program as *const libc::sock_fprog as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
    .map(drop)
}

/// Hands the allocator's free memory back to the system (glibc's
/// `malloc_trim`): after a burst (thousands of connections, say) glibc keeps
/// the freed heap, and the process's RSS stays at its peak. Returns whether
/// anything was released; a no-op elsewhere than glibc.
pub fn release_free_memory() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim takes an integer and only walks the allocator's
        // own structures under its locks.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

/// The effective user is root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A set of signals (`sigset_t`).
#[derive(Clone, Copy)]
pub(crate) struct SignalSet(libc::sigset_t);

impl SignalSet {
    pub(crate) fn of(signals: &[libc::c_int]) -> Self {
        // SAFETY: sigset_t is plain data; sigemptyset fully initialises it and
        // sigaddset only writes inside it.
        unsafe {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            for &signal in signals {
                libc::sigaddset(&mut set, signal);
            }
            Self(set)
        }
    }

    /// Blocks these signals for the calling thread (the whole helper).
    pub(crate) fn block(&self) -> io::Result<()> {
        // SAFETY: the set is initialised; the old-set pointer may be null.
        check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) })
            .map(drop)
    }
}

/// Unblocks every signal and resets the ones the helper handled to their
/// default action, so the program it starts begins in a standard state.
pub(crate) fn reset_signals(handled: &[libc::c_int]) {
    // SAFETY: signal(SIG_DFL) and sigprocmask with an initialised empty set
    // take no memory of ours beyond the call.
    unsafe {
        for &signal in handled {
            libc::signal(signal, libc::SIG_DFL);
        }
        let mut empty = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// `PR_SET_CHILD_SUBREAPER`: orphaned descendants are re-parented to the caller.
pub(crate) fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: integers only.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(drop)
}

/// SIGKILLs every child of the calling process (`/proc/self/task/*/children`).
/// Their own children are re-parented to a subreaper caller as they die, so
/// calling this after each reap empties the whole tree.
pub(crate) fn kill_children() {
    let Ok(threads) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for thread in threads.flatten() {
        let Ok(children) = std::fs::read_to_string(thread.path().join("children")) else {
            continue;
        };
        for pid in children.split_whitespace().filter_map(|p| p.parse().ok()) {
            let _ = kill(pid, libc::SIGKILL);
        }
    }
}

/// The signals a task's command is stopped with. The processes standing
/// between the fabric and a command (a nested namespace's init, the
/// confinement's keeper) ignore them, so the command's own end decides the
/// status they pass on.
pub(crate) const STOP_SIGNALS: [libc::c_int; 4] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// Ignores these signals (`SIG_IGN`, kept across `fork`, reset by [`reset_signals`]).
pub(crate) fn ignore_signals(signals: &[libc::c_int]) {
    // SAFETY: setting a disposition takes no memory of ours.
    unsafe {
        for &signal in signals {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
}

/// `pipe2(2)` with `O_CLOEXEC`: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is ours for the call; on success both are new descriptors we own.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Size in bytes of the filesystem holding `path` (`statvfs(3)`).
pub(crate) fn filesystem_bytes(path: &std::path::Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: statvfs is plain data, filled by the call.
    let mut stat = unsafe { std::mem::zeroed::<libc::statvfs>() };
    // SAFETY: `path` is NUL-terminated and `stat` is ours for the call.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut stat) })?;
    Ok(stat.f_blocks.saturating_mul(stat.f_frsize))
}

/// Ends the helper the same way its child ended: with the same exit code, or
/// killed by the same signal (so the fabric sees exactly what the program did).
pub(crate) fn exit_like(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        reset_signals(&[signal]);
        // SAFETY: raising a signal on ourselves; integers only.
        unsafe {
            libc::raise(signal);
        }
        // Only reachable for signals whose default action is not to terminate.
        exit_now(128 + signal)
    }
    exit_now(libc::WEXITSTATUS(status))
}

/// `_exit(2)`: no destructors, no atexit handlers, no stdio flush (the helper
/// flushes what it writes itself).
pub(crate) fn exit_now(code: libc::c_int) -> ! {
    // SAFETY: _exit never returns and touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// `dup2(2)`.
pub(crate) fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: integers only; the helper owns both descriptors.
    check(unsafe { libc::dup2(from, to) }).map(drop)
}

/// Brings the loopback interface of the current network namespace up
/// (`ip link set lo up`); the kernel assigns 127.0.0.1 and ::1 with it.
pub(crate) fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) takes integers and returns a new fd we then own.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: just returned to us by the kernel.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write only the ifreq we pass,
    // which lives on our stack for both calls.
    unsafe {
        check(libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            &mut request,
        ))?;
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check(libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            &request,
        ))?;
    }
    Ok(())
}

/// `close(2)` of a descriptor inherited by number (not owned by any Rust value).
pub(crate) fn close(fd: RawFd) {
    // SAFETY: the helper got `fd` on its command line and no Rust object owns
    // it, so closing it cannot invalidate anything else.
    unsafe {
        libc::close(fd);
    }
}

/// Waits up to `timeout_ms` for `fd` to become readable (a pidfd: its
/// process has fully exited); true if it did.
pub(crate) fn wait_readable(fd: RawFd, timeout_ms: libc::c_int) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd on our stack, count 1, alive for the call.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
    ready == 1
}

// ---- the control socket between the fabric and a sandbox's init ------------------------------
//
// Used by both sides: the fabric (on nonblocking sockets, from async tasks)
// and the init (single-threaded, blocking).

/// A connected `AF_UNIX` `SOCK_SEQPACKET` pair, close-on-exec: messages keep
/// their boundaries and carry file descriptors.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a two-element array on our stack, as socketpair expects.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: the kernel just returned both fds to us; nobody else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Raises the socket's send buffer to `bytes`, past the system's `wmem_max`
/// when we are privileged (`SO_SNDBUFFORCE`): on a `SOCK_SEQPACKET` socket the
/// send buffer caps the size of one message.
pub(crate) fn set_send_buffer(fd: &OwnedFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |option| {
        // SAFETY: `value` is a c_int on our stack and its size is passed with it.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
        .map(drop)
    };
    set(libc::SO_SNDBUFFORCE).or_else(|_| set(libc::SO_SNDBUF))
}

/// Sets `O_NONBLOCK` on `fd`.
pub(crate) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments only.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// Sends one message with `fds` attached (`SCM_RIGHTS`). Never raises SIGPIPE.
pub(crate) fn send_message(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fds_len = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is pure arithmetic.
    let space = unsafe { libc::CMSG_SPACE(fds_len as libc::c_uint) } as usize;
    // u64 elements: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed, aligned bytes, enough for
        // one header plus `fds_len` bytes of data (CMSG_SPACE), so the first
        // header and its data area lie inside `control`.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(fds_len as libc::c_uint) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(header),
                fds_len,
            );
        }
    }
    // SAFETY: `msg` points at `iov` (describing `bytes`) and `control`, all alive
    // for the call; sendmsg only reads them.
    let sent =
        check_long(unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) as libc::c_long })?;
    if sent as usize == bytes.len() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "message sent in part",
        ))
    }
}

/// Receives one message and the descriptors attached to it (close-on-exec).
/// `Ok(None)` when the peer has closed the socket. A message over `max_len`
/// bytes or with more than `max_fds` descriptors is consumed and refused.
pub(crate) fn recv_message(
    socket: RawFd,
    max_len: usize,
    max_fds: usize,
) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    // With MSG_TRUNC a unix socket reports the whole message's length (Linux 3.4+).
    // SAFETY: a zero-length read into no buffer; integers only otherwise.
    let len = check_long(unsafe {
        libc::recv(
            socket,
            std::ptr::null_mut(),
            0,
            libc::MSG_PEEK | libc::MSG_TRUNC,
        ) as libc::c_long
    })? as usize;
    if len == 0 {
        // We never send empty messages: this is the end of the stream.
        return Ok(None);
    }
    let mut bytes = vec![0u8; len.min(max_len).max(1)];
    let fds_space = std::mem::size_of::<RawFd>() * max_fds.max(1);
    // SAFETY: CMSG_SPACE is pure arithmetic.
    let space = unsafe { libc::CMSG_SPACE(fds_space as libc::c_uint) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` describes `bytes` and `control`, both ours and alive for
    // the call; the kernel writes at most their lengths.
    let got = check_long(unsafe {
        libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) as libc::c_long
    })? as usize;
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` with `msg_controllen` bytes of
    // well-formed headers; CMSG_FIRSTHDR/NXTHDR stay within that length, and
    // each SCM_RIGHTS header's data holds `(cmsg_len - CMSG_LEN(0)) / 4` fds
    // that are now ours.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data_len = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(header);
                for i in 0..data_len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(
                        data.add(i * std::mem::size_of::<RawFd>()).cast::<RawFd>(),
                    );
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    if got < len || len > max_len || fds.len() > max_fds || msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message too large ({len} bytes, {} descriptors)", fds.len()),
        ));
    }
    bytes.truncate(got);
    Ok(Some((bytes, fds)))
}

/// `poll(2)` on `fds`; returns how many are ready (0 on timeout).
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: the slice is ours for the call and its length is passed with it.
    check(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) })
        .map(|n| n as usize)
}

impl SignalSet {
    /// A nonblocking, close-on-exec `signalfd` for these (blocked) signals.
    pub(crate) fn signalfd(&self) -> io::Result<OwnedFd> {
        // SAFETY: the set is initialised; -1 asks for a new fd, which we then own.
        let fd =
            check(unsafe { libc::signalfd(-1, &self.0, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
        // SAFETY: just returned to us by the kernel.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Reads (and discards) everything pending on a nonblocking descriptor.
pub(crate) fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: the buffer is ours and its length is passed with it.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
    }
}

/// `read(2)` into `buf`, retried on EINTR.
pub(crate) fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the buffer is ours and its length is passed with it.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match check_long(n as libc::c_long) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(|n| n as usize),
        }
    }
}

/// `setpgid(2)`.
pub(crate) fn setpgid(pid: libc::pid_t, pgid: libc::pid_t) -> io::Result<()> {
    // SAFETY: integers only.
    check(unsafe { libc::setpgid(pid, pgid) }).map(drop)
}

/// Closes every descriptor from `first` up (`close_range(2)`, Linux 5.9).
pub(crate) fn close_from(first: RawFd) -> io::Result<()> {
    // SAFETY: integers only; the caller (a freshly forked child about to exec)
    // owns every descriptor it closes and never uses them again.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    })
    .map(drop)
}

/// Registers a nonblocking socket with the Tokio reactor (needs a runtime).
pub(crate) fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` owns a valid descriptor, and the AsyncFd takes that
    // ownership: nothing else can close or replace it while it is registered.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            fd,
            tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
        )
    }
    .map_err(io::Error::from)
}
