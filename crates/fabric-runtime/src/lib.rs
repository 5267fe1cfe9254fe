//! Where agent work runs.
//!
//! Today that is a plain child process on the host: isolation level `none`
//! (REQUIREMENTS §5, FR-ISO), the executor behind the built-in `shell` agent. It runs a
//! task's commands with a minimal environment, captures their output up to a
//! documented limit ([`DEFAULT_OUTPUT_LIMIT`]), streams it line by line, and on
//! cancel terminates every process a command started, not just the shell.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fabric_runtime::RuntimeError> {
//! use fabric_runtime::{ShellJob, run_shell};
//!
//! let job = ShellJob::new(vec!["echo hello".into()], "/var/lib/fabric/work/t1".into());
//! let outcome = run_shell(job, None, std::future::pending()).await?;
//! assert_eq!(outcome.stdout, "hello\n");
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`child`]: isolation level `none`. [`run_shell`] and its [`ShellJob`] /
//!   [`ShellOutcome`]; inside it, `workdir` (path checks, writing task files),
//!   `capture` (byte-limited output, log lines) and `group` (signalling a
//!   command's whole process group).
//! - [`confine`]: level `none` without privileges over the host: a
//!   [`Confinement`](confine::Confinement) (Landlock: the system
//!   directories read-only, the agent's own directory read-write, nothing
//!   else; a seccomp filter against Unix sockets; no capabilities) that
//!   [`run_shell`]'s jobs and [`spawn_program`]'s programs run under.
//! - [`RuntimeError`]: everything that can stop a job from running, each
//!   message saying what to do about it.
//!
//! - [`sandbox`]: isolation level `process`. A [`Sandbox`] (Linux namespaces,
//!   cgroup v2 or v1, rlimits, a read-only filesystem but for its workdir, a
//!   network namespace with only `lo`) runs the same [`ShellJob`]s through the
//!   same capture code, and long-lived programs with [`Sandbox::spawn`];
//!   inside it, `cgroup` (limits and counters), `helper` (the program that
//!   builds the namespaces and enters them: [`sandbox::helper_main`], shipped
//!   as the `fabric-sandbox-init` binary) and `sys` (the raw syscalls).
//!
//! - [`net`]: what the fabric serves inside a sandbox's network namespace:
//!   the [`EgressProxy`](net::EgressProxy) (the agent's only way out,
//!   limited to its egress allowlist, every decision audited) and
//!   [`forward_tcp`](net::forward_tcp) (`FABRIC_URL` and the inference
//!   endpoint inside).
//!
//! - `container` (feature `docker`): isolation level `container`. A
//!   `ContainerShell` runs the same [`ShellJob`]s in an agent's Docker
//!   container, one `docker exec` per command, through the same capture code;
//!   the containers themselves are made by `fabric_docker::agent`.

pub mod child;
pub mod confine;
#[cfg(feature = "docker")]
pub mod container;
mod error;
pub mod net;
pub mod quota;
pub mod sandbox;

pub use child::{
    BASE_PATH, DEFAULT_KILL_GRACE, DEFAULT_OUTPUT_LIMIT, HostProcess, LogLine, MAX_LOG_LINE, SHELL,
    ShellJob, ShellOutcome, Stream, kill_stale_group, run_shell, spawn_program,
    spawn_program_with_stdin,
};
pub use error::RuntimeError;
pub use sandbox::sys::release_free_memory;
pub use sandbox::{
    ProcessExit, ResourceUsage, Sandbox, SandboxCommand, SandboxConfig, SandboxProcess,
};
