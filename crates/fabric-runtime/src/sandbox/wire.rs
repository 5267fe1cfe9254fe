//! The messages between the fabric and a sandbox's init on their control socket.
//!
//! The socket is a `SOCK_SEQPACKET` pair, so every message arrives whole or
//! not at all; file descriptors travel beside a message as `SCM_RIGHTS`.
//!
//! - fabric → init: [`Launch`], with the descriptors it names (the gate, then
//!   stdin, stdout and stderr where they are [`Io::Fd`]).
//! - init → fabric: [`Reply::Started`] with a pidfd of the new process,
//!   [`Reply::Failed`] when it could not fork, [`Reply::Exited`] with the raw
//!   wait status once it has been reaped.
//!
//! Decoding never panics: a malformed message is an error, and the side that
//! receives one treats the link as broken.

use std::path::PathBuf;

/// Largest message either side sends or accepts. Above exec's own limits
/// (`ARG_MAX` is a quarter of the stack limit, 2 MiB by default), so whatever
/// exec could take fits.
pub(crate) const MAX_MESSAGE: usize = 4 << 20;

const KIND_LAUNCH: u8 = b'L';
const KIND_STARTED: u8 = b'S';
const KIND_FAILED: u8 = b'F';
const KIND_EXITED: u8 = b'X';

/// Where one of the new process's standard streams goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Io {
    /// `/dev/null` inside the sandbox.
    Null,
    /// The next descriptor sent with the message.
    Fd,
}

/// Start a program: fork, join a new process group, wait for the gate, exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launch {
    /// Chosen by the fabric, unique per link; replies carry it back.
    pub(crate) id: u64,
    pub(crate) cwd: PathBuf,
    /// Program first; looked up in `PATH` of `env`.
    pub(crate) argv: Vec<String>,
    /// The whole environment, later entries overriding earlier ones.
    pub(crate) env: Vec<(String, String)>,
    pub(crate) stdin: Io,
    pub(crate) stdout: Io,
    pub(crate) stderr: Io,
    /// Run it as one task's command, in namespaces of its own (shell tasks).
    pub(crate) scope: Option<TaskScope>,
}

/// Where a task's command is kept apart from the sandbox's other tasks: the
/// init starts it in a pid namespace of its own (everything it starts ends
/// with it, `setsid` or not) and a mount namespace where `/tmp` is the task's
/// own directory, `/dev/shm` a fresh tmpfs, `/proc` shows its own processes
/// only, and of the sandbox's workdir only the task's directory is visible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskScope {
    /// The sandbox's workdir; covered when `task_dir` is below it.
    pub(crate) workdir: PathBuf,
    /// The task's working directory: `workdir` or a directory below it.
    pub(crate) task_dir: PathBuf,
    /// Mounted at `/tmp`: a directory of the task's (so it is counted with
    /// the task's files and removed with them).
    pub(crate) tmp: PathBuf,
}

impl Launch {
    /// Descriptors the message carries: the gate plus one per [`Io::Fd`].
    pub(crate) fn fd_count(&self) -> usize {
        1 + [self.stdin, self.stdout, self.stderr]
            .iter()
            .filter(|io| **io == Io::Fd)
            .count()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![KIND_LAUNCH];
        out.extend_from_slice(&self.id.to_le_bytes());
        for io in [self.stdin, self.stdout, self.stderr] {
            out.push(u8::from(io == Io::Fd));
        }
        put_count(&mut out, self.argv.len());
        put_count(&mut out, self.env.len());
        put_str(&mut out, &self.cwd.to_string_lossy());
        for arg in &self.argv {
            put_str(&mut out, arg);
        }
        for (key, value) in &self.env {
            put_str(&mut out, key);
            put_str(&mut out, value);
        }
        match &self.scope {
            None => out.push(0),
            Some(scope) => {
                out.push(1);
                for path in [&scope.workdir, &scope.task_dir, &scope.tmp] {
                    put_str(&mut out, &path.to_string_lossy());
                }
            }
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader::new(bytes);
        if r.byte()? != KIND_LAUNCH {
            return Err("not a launch message".into());
        }
        let id = r.u64()?;
        let mut io = [Io::Null; 3];
        for slot in &mut io {
            *slot = match r.byte()? {
                0 => Io::Null,
                1 => Io::Fd,
                other => return Err(format!("bad stdio mode {other}")),
            };
        }
        let argc = r.count()?;
        let envc = r.count()?;
        let cwd = PathBuf::from(r.str()?);
        // Counts come from the peer: never reserve more than the message could hold.
        let mut argv = Vec::with_capacity(argc.min(bytes.len()));
        for _ in 0..argc {
            argv.push(r.str()?);
        }
        let mut env = Vec::with_capacity(envc.min(bytes.len()));
        for _ in 0..envc {
            env.push((r.str()?, r.str()?));
        }
        let scope = match r.byte()? {
            0 => None,
            1 => Some(TaskScope {
                workdir: PathBuf::from(r.str()?),
                task_dir: PathBuf::from(r.str()?),
                tmp: PathBuf::from(r.str()?),
            }),
            other => return Err(format!("bad scope flag {other}")),
        };
        r.end()?;
        if argv.is_empty() {
            return Err("launch without a program".into());
        }
        Ok(Self {
            id,
            cwd,
            argv,
            env,
            stdin: io[0],
            stdout: io[1],
            stderr: io[2],
            scope,
        })
    }
}

/// What the init answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Forked; a pidfd of the process comes with the message.
    Started { id: u64 },
    /// Could not fork (e.g. the sandbox's pids limit).
    Failed { id: u64, message: String },
    /// Reaped, with its raw `waitpid` status.
    Exited { id: u64, status: i32 },
}

impl Reply {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let (kind, id) = match self {
            Reply::Started { id } => (KIND_STARTED, id),
            Reply::Failed { id, .. } => (KIND_FAILED, id),
            Reply::Exited { id, .. } => (KIND_EXITED, id),
        };
        let mut out = vec![kind];
        out.extend_from_slice(&id.to_le_bytes());
        match self {
            Reply::Started { .. } => {}
            Reply::Failed { message, .. } => out.extend_from_slice(message.as_bytes()),
            Reply::Exited { status, .. } => out.extend_from_slice(&status.to_le_bytes()),
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader::new(bytes);
        let kind = r.byte()?;
        let id = r.u64()?;
        let reply = match kind {
            KIND_STARTED => Reply::Started { id },
            KIND_FAILED => Reply::Failed {
                id,
                message: String::from_utf8_lossy(r.rest()).into_owned(),
            },
            KIND_EXITED => Reply::Exited {
                id,
                status: i32::from_le_bytes(r.array()?),
            },
            other => return Err(format!("unknown reply kind {other}")),
        };
        r.end()?;
        Ok(reply)
    }
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

/// A length-prefixed string (lengths are checked against the message on decode).
fn put_str(out: &mut Vec<u8>, s: &str) {
    put_count(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err("message cut short".into());
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn count(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn str(&mut self) -> Result<String, String> {
        let len = self.count()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "string is not UTF-8".into())
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    fn end(&self) -> Result<(), String> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes after the message".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch() -> Launch {
        Launch {
            id: 7,
            cwd: "/w/a b".into(),
            argv: vec!["/bin/sh".into(), "-c".into(), "echo ü; exit 3".into()],
            env: vec![
                ("PATH".into(), "/bin".into()),
                ("EMPTY".into(), String::new()),
            ],
            stdin: Io::Null,
            stdout: Io::Fd,
            stderr: Io::Fd,
            scope: Some(TaskScope {
                workdir: "/w".into(),
                task_dir: "/w/t1".into(),
                tmp: "/w/t1/.tmp".into(),
            }),
        }
    }

    #[test]
    fn launches_round_trip() {
        let message = launch();
        assert_eq!(Launch::decode(&message.encode()), Ok(message.clone()));
        assert_eq!(message.fd_count(), 3);
        let unscoped = Launch {
            scope: None,
            ..message
        };
        assert_eq!(Launch::decode(&unscoped.encode()), Ok(unscoped));
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Started { id: 1 },
            Reply::Failed {
                id: 2,
                message: "cannot fork: resource temporarily unavailable".into(),
            },
            Reply::Exited { id: 3, status: 9 },
            Reply::Exited {
                id: u64::MAX,
                status: 3 << 8,
            },
        ] {
            assert_eq!(Reply::decode(&reply.encode()), Ok(reply));
        }
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let good = launch().encode();
        for cut in 0..good.len() {
            assert!(Launch::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(Launch::decode(&trailing).is_err());
        // A count far beyond the message must not allocate or read past it.
        let mut huge = vec![KIND_LAUNCH];
        huge.extend_from_slice(&1u64.to_le_bytes());
        huge.extend_from_slice(&[0, 0, 0]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&0u32.to_le_bytes());
        assert!(Launch::decode(&huge).is_err());
        assert!(Reply::decode(&[b'?', 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(Reply::decode(&Reply::Started { id: 1 }.encode()[..5]).is_err());
        let mut empty_argv = launch();
        empty_argv.argv.clear();
        assert!(Launch::decode(&empty_argv.encode()).is_err());
    }
}
