//! The fabric's end of a sandbox's control socket: programs are started by the sandbox's own init.
//!
//! [`InitLink::launch`] sends a [`Launch`] (with the gate and the child's ends
//! of its stdio pipes), waits for the init's `Started` and its pidfd, reads the
//! program's host pid from the pidfd, then opens the gate so the program may
//! `exec`. One reader task per sandbox receives the replies and hands each to
//! whoever waits for it; when the init goes away (destroyed, killed), every
//! waiter learns it: a pending launch fails, a running program counts as
//! killed by SIGKILL (the kernel killed the whole sandbox with its init).

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::sys;
use super::wire::{Io, Launch, MAX_MESSAGE, Reply, TaskScope};
use crate::child::group::Leader;

/// Replies are small; a larger one means the peer is not our init.
const MAX_REPLY: usize = 64 * 1024;

/// What a launched program's standard stream is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxStdio {
    /// `/dev/null` inside the sandbox.
    #[default]
    Null,
    /// A pipe to the fabric, returned in [`Launched`].
    Piped,
}

/// What to launch.
pub(crate) struct LaunchSpec {
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: PathBuf,
    pub(crate) stdin: SandboxStdio,
    pub(crate) stdout: SandboxStdio,
    pub(crate) stderr: SandboxStdio,
    /// A task's command: kept apart from the sandbox's other tasks.
    pub(crate) scope: Option<TaskScope>,
}

/// A program the init started, and the fabric's ends of its pipes.
pub(crate) struct Launched {
    pub(crate) child: InitChild,
    /// Its host pid, which is also its process group's id.
    pub(crate) pid: u32,
    pub(crate) stdin: Option<pipe::Sender>,
    pub(crate) stdout: Option<pipe::Receiver>,
    pub(crate) stderr: Option<pipe::Receiver>,
}

/// Why a launch did not happen.
#[derive(Debug)]
pub(crate) enum LaunchError {
    /// The init is gone: the sandbox was destroyed or killed.
    Gone,
    /// The init could not start it, or the fabric could not ask; in words.
    Failed(String),
}

/// A program started by the init, as a [`Leader`](crate::child::group::Leader)
/// to wait for. The init reaps it and reports the status.
#[derive(Debug)]
pub(crate) struct InitChild {
    exit: oneshot::Receiver<i32>,
    status: Option<ExitStatus>,
}

impl InitChild {
    /// Waits for the program's exit status; cancel-safe and repeatable.
    pub(crate) async fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        // No status coming means the link broke because the init died, and the
        // kernel SIGKILLed everything in the sandbox with it.
        let raw = (&mut self.exit).await.unwrap_or(libc::SIGKILL);
        let status = ExitStatus::from_raw(raw);
        self.status = Some(status);
        status
    }
}

impl Leader for InitChild {
    async fn wait_exit(&mut self) -> io::Result<ExitStatus> {
        Ok(self.wait().await)
    }
}

/// Replies not yet delivered, by launch id.
#[derive(Default)]
struct Waiting {
    /// False once the reader has stopped: nothing will be delivered any more.
    open: bool,
    starts: HashMap<u64, oneshot::Sender<Result<OwnedFd, String>>>,
    exits: HashMap<u64, oneshot::Sender<i32>>,
}

type Shared = Arc<Mutex<Waiting>>;

/// The fabric's end of one sandbox's control socket.
pub(crate) struct InitLink {
    socket: Arc<AsyncFd<OwnedFd>>,
    waiting: Shared,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
}

impl std::fmt::Debug for InitLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitLink")
            .field("socket", &self.socket.get_ref().as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl InitLink {
    /// Takes the fabric's end of the socket pair (the init has the other) and
    /// starts reading replies. Needs a Tokio runtime.
    pub(crate) fn new(socket: OwnedFd) -> io::Result<Self> {
        sys::set_nonblocking(&socket)?;
        // One message may carry a whole environment and command; see MAX_MESSAGE.
        sys::set_send_buffer(&socket, MAX_MESSAGE + 64 * 1024)?;
        let socket = Arc::new(sys::async_fd(socket)?);
        let waiting: Shared = Arc::new(Mutex::new(Waiting {
            open: true,
            ..Waiting::default()
        }));
        let reader = tokio::spawn(read_replies(Arc::clone(&socket), Arc::clone(&waiting)));
        Ok(Self {
            socket,
            waiting,
            next_id: AtomicU64::new(1),
            reader,
        })
    }

    /// Starts a program in the sandbox: returns once it runs (or its `exec`
    /// is under way), with its host pid and the pipes asked for.
    pub(crate) async fn launch(&self, spec: LaunchSpec) -> Result<Launched, LaunchError> {
        let failed = |what: &str, err: io::Error| {
            LaunchError::Failed(format!("{what}: {}", crate::error::describe(&err)))
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (gate_read, mut gate) =
            std::io::pipe().map_err(|e| failed("cannot create a pipe", e))?;
        let mut child_fds: Vec<OwnedFd> = vec![gate_read.into()];
        let stdin = match spec.stdin {
            SandboxStdio::Piped => {
                let (ours, theirs) = pipe::pipe().map_err(|e| failed("cannot create a pipe", e))?;
                child_fds.push(
                    theirs
                        .into_blocking_fd()
                        .map_err(|e| failed("cannot create a pipe", e))?,
                );
                Some(ours)
            }
            SandboxStdio::Null => None,
        };
        let mut output = |mode: SandboxStdio| -> Result<Option<pipe::Receiver>, LaunchError> {
            match mode {
                SandboxStdio::Piped => {
                    let (theirs, ours) =
                        pipe::pipe().map_err(|e| failed("cannot create a pipe", e))?;
                    child_fds.push(
                        theirs
                            .into_blocking_fd()
                            .map_err(|e| failed("cannot create a pipe", e))?,
                    );
                    Ok(Some(ours))
                }
                SandboxStdio::Null => Ok(None),
            }
        };
        let stdout = output(spec.stdout)?;
        let stderr = output(spec.stderr)?;
        let io = |mode| match mode {
            SandboxStdio::Piped => Io::Fd,
            SandboxStdio::Null => Io::Null,
        };
        let message = Launch {
            id,
            cwd: spec.cwd,
            argv: spec.argv,
            env: spec.env,
            stdin: io(spec.stdin),
            stdout: io(spec.stdout),
            stderr: io(spec.stderr),
            scope: spec.scope,
        }
        .encode();
        if message.len() > MAX_MESSAGE {
            return Err(LaunchError::Failed(format!(
                "the command and its environment are too large ({} bytes, at most {MAX_MESSAGE})",
                message.len()
            )));
        }

        let (started_tx, started) = oneshot::channel();
        let (exit_tx, exit) = oneshot::channel();
        {
            let mut waiting = lock(&self.waiting);
            if !waiting.open {
                return Err(LaunchError::Gone);
            }
            waiting.starts.insert(id, started_tx);
            waiting.exits.insert(id, exit_tx);
        }
        // Whatever happens from here, a launch that did not start leaves no entry.
        let forget = || {
            let mut waiting = lock(&self.waiting);
            waiting.starts.remove(&id);
            waiting.exits.remove(&id);
        };
        let raw: Vec<RawFd> = child_fds.iter().map(AsRawFd::as_raw_fd).collect();
        if let Err(err) = self.send(&message, &raw).await {
            forget();
            return Err(match err.raw_os_error() {
                Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN) => LaunchError::Gone,
                _ => failed("cannot reach the sandbox's init", err),
            });
        }
        // The init has its own copies now.
        drop(child_fds);

        let pidfd = match started.await {
            Ok(Ok(pidfd)) => pidfd,
            Ok(Err(message)) => return Err(LaunchError::Failed(message)),
            Err(_) => {
                forget();
                return Err(LaunchError::Gone);
            }
        };
        // The program waits at the gate, so it is alive (or at worst a zombie
        // the init has not reaped): its pid is still its own.
        let pid = host_pid(&pidfd).ok_or_else(|| {
            LaunchError::Failed("the new process was gone before it could start".into())
        })?;
        gate.write_all(&[1])
            .map_err(|e| failed("cannot let the new process start", e))?;
        Ok(Launched {
            child: InitChild { exit, status: None },
            pid,
            stdin,
            stdout,
            stderr,
        })
    }

    async fn send(&self, message: &[u8], fds: &[RawFd]) -> io::Result<()> {
        loop {
            let mut guard = self.socket.writable().await?;
            match guard.try_io(|socket| sys::send_message(socket.as_raw_fd(), message, fds)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

impl Drop for InitLink {
    fn drop(&mut self) {
        // The reader holds the other reference to the socket; once it is gone
        // the socket closes, and the init ends the sandbox.
        self.reader.abort();
    }
}

fn lock(waiting: &Shared) -> std::sync::MutexGuard<'_, Waiting> {
    // Nothing panics while holding it; if something did, the maps are still usable.
    waiting
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Delivers the init's replies until the socket ends, then tells every waiter.
async fn read_replies(socket: Arc<AsyncFd<OwnedFd>>, waiting: Shared) {
    loop {
        let Ok(mut guard) = socket.readable().await else {
            break;
        };
        let received = match guard.try_io(|s| sys::recv_message(s.as_raw_fd(), MAX_REPLY, 1)) {
            Ok(received) => received,
            Err(_would_block) => continue,
        };
        let (bytes, mut fds) = match received {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(err) => {
                tracing::warn!(error = %err, "sandbox control socket failed");
                break;
            }
        };
        let reply = match Reply::decode(&bytes) {
            Ok(reply) => reply,
            Err(err) => {
                tracing::warn!(error = %err, "sandbox init sent a malformed reply");
                break;
            }
        };
        let mut pending = lock(&waiting);
        match reply {
            Reply::Started { id } => {
                if let Some(tx) = pending.starts.remove(&id) {
                    let pidfd = fds
                        .pop()
                        .ok_or_else(|| "the sandbox's init sent no pidfd".to_string());
                    let _ = tx.send(pidfd);
                }
            }
            Reply::Failed { id, message } => {
                pending.exits.remove(&id);
                if let Some(tx) = pending.starts.remove(&id) {
                    let _ = tx.send(Err(message));
                }
            }
            Reply::Exited { id, status } => {
                if let Some(tx) = pending.exits.remove(&id) {
                    let _ = tx.send(status);
                }
            }
        }
    }
    let mut waiting = lock(&waiting);
    waiting.open = false;
    // Dropping the senders wakes every waiter with "gone".
    waiting.starts.clear();
    waiting.exits.clear();
}

/// The pid of a pidfd's process in our pid namespace (`/proc/self/fdinfo`);
/// `None` once it has been reaped.
fn host_pid(pidfd: &OwnedFd) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("Pid:"))
        .and_then(|pid| pid.trim().parse::<i64>().ok())
        .filter(|&pid| pid > 1)
        .and_then(|pid| u32::try_from(pid).ok())
}
