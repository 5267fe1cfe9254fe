//! [`RuntimeError`]: why a job could not run.

use std::io;
use std::path::PathBuf;

/// A job could not be prepared, started or followed.
///
/// A command that runs and fails (non-zero exit, killed by a signal) is *not*
/// an error: that is a normal [`ShellOutcome`](crate::ShellOutcome).
///
/// IO causes are kept as plain fields rather than `#[source]` because the
/// message already renders them; a chain printer would otherwise say it twice.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the job has no commands: give the task at least one shell command to run")]
    NoCommands,

    #[error(
        "invalid command {}: shell commands cannot contain NUL bytes",
        preview(command)
    )]
    InvalidCommand { command: String },

    #[error("invalid file path {path:?}: {reason}")]
    InvalidFilePath { path: String, reason: String },

    #[error("invalid environment variable {}: {reason}", preview(key))]
    InvalidEnv { key: String, reason: &'static str },

    #[error(
        "cannot create working directory {}: {}; check that the fabric's user may write there \
         or configure another workspace directory",
        path.display(),
        describe(cause)
    )]
    CreateWorkdir { path: PathBuf, cause: io::Error },

    #[error(
        "cannot write task file {path:?} into {}: {}; check the task's file paths and that \
         the working directory is writable",
        workdir.display(),
        describe(cause)
    )]
    WriteFile {
        path: String,
        workdir: PathBuf,
        cause: io::Error,
    },

    #[error(
        "cannot start {} in sandbox {name:?}: {reason}; the sandbox may be at its pids or memory \
         limit: retry, or raise its limits",
        preview(command)
    )]
    SandboxLaunch {
        name: String,
        command: String,
        reason: String,
    },

    #[error(
        "cannot start command {}: {}; check that {} exists and the working directory is accessible",
        preview(command),
        describe(cause),
        crate::SHELL
    )]
    Spawn { command: String, cause: io::Error },

    #[error(
        "lost track of command {} while waiting for it to exit: {}; the host may be out of \
         resources, retry the task",
        preview(command),
        describe(cause)
    )]
    Wait { command: String, cause: io::Error },

    #[error("invalid sandbox config: {reason}")]
    InvalidSandboxConfig { reason: String },

    #[error(
        "the process isolation level is not available on this host: {reason}; run the fabric as \
         root on Linux 5.12 or later, or use isolation level none or container"
    )]
    SandboxUnavailable { reason: String },

    #[error(
        "sandbox {name:?} already exists ({}); destroy it or choose another name",
        path.display()
    )]
    SandboxExists { name: String, path: PathBuf },

    #[error("cannot set up sandbox {name:?}: {reason}")]
    SandboxSetup { name: String, reason: String },

    #[error(
        "sandbox {name:?} is gone (destroyed, or its init was killed); create a new sandbox for \
         the agent"
    )]
    SandboxGone { name: String },

    #[error(
        "working directory {} is outside sandbox {name:?}, whose only writable directory is {}; \
         use a directory inside it",
        workdir.display(),
        sandbox_workdir.display()
    )]
    WorkdirOutsideSandbox {
        name: String,
        workdir: PathBuf,
        sandbox_workdir: PathBuf,
    },

    #[error(
        "cannot listen on 127.0.0.1:{port} inside sandbox {name:?}: {}; choose another port",
        describe(cause)
    )]
    SandboxPort {
        name: String,
        port: u16,
        cause: io::Error,
    },

    #[error(
        "cannot serve the {service} on its listener: {}; pass a listening TCP socket, such as \
         one from Sandbox::bind_tcp, and call this inside a tokio runtime",
        describe(cause)
    )]
    Listener {
        service: &'static str,
        cause: io::Error,
    },

    #[error(
        "cannot change the limits of sandbox {name:?}: {reason}; its previous limits may still \
         apply, retry or destroy the sandbox"
    )]
    SandboxLimits { name: String, reason: String },

    #[error(
        "cannot read the resource usage of sandbox {name:?}: {}; its cgroup may have been removed \
         from outside",
        describe(cause)
    )]
    SandboxUsage { name: String, cause: io::Error },

    #[error(
        "cannot clean up sandbox {name:?}: {reason}; retry the destroy, or kill its processes \
         and remove its cgroup by hand"
    )]
    SandboxCleanup { name: String, reason: String },

    #[error(
        "cannot run {} in container {container:?}: {reason}; the container may have stopped or \
         be at its pids or memory limit: retry, or raise its limits",
        preview(command)
    )]
    ContainerExec {
        container: String,
        command: String,
        reason: String,
    },

    #[error(
        "isolation level 'none' cannot confine processes here: {reason}; run the fabric as root \
         to use isolation 'process', use isolation 'container', or, trusting every task, run \
         them as the fabric's own user (agent config isolation.as_fabric_user, serve \
         --shell-as-fabric-user)"
    )]
    ConfinementUnavailable { reason: String },

    #[error("cannot confine the command: {reason}")]
    ConfinementSetup { reason: String },

    #[error("cannot write the task's files into container {container:?}: {reason}")]
    ContainerFiles { container: String, reason: String },

    #[error(
        "container {container:?} stopped while the command ran (killed or crashed); the agent's \
         supervisor restarts it and requeues the task"
    )]
    ContainerGone { container: String },

    #[error(
        "working directory {} is outside the workspace {} of container {container:?}, the only \
         place its commands can write; use a directory inside it",
        workdir.display(),
        workspace.display()
    )]
    WorkdirOutsideContainer {
        container: String,
        workdir: PathBuf,
        workspace: PathBuf,
    },
}

impl RuntimeError {
    /// Whether running the same job again might succeed. Host-side failures
    /// (disk, process table) may clear up; a bad job never gets better.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::CreateWorkdir { .. }
                | Self::WriteFile { .. }
                | Self::Spawn { .. }
                | Self::Wait { .. }
                | Self::SandboxSetup { .. }
                | Self::SandboxLaunch { .. }
                | Self::SandboxPort { .. }
                | Self::SandboxUsage { .. }
                | Self::SandboxLimits { .. }
                | Self::SandboxCleanup { .. }
                | Self::ContainerExec { .. }
                | Self::ContainerFiles { .. }
                | Self::ContainerGone { .. }
        )
    }
}

/// An IO error as a lowercase phrase: "permission denied", not
/// "Permission denied (os error 13)".
pub(crate) fn describe(err: &io::Error) -> String {
    let text = err.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => &text[..at],
        _ => text.as_str(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Commands and keys can be long (a whole script); quote the start of one so
/// the message stays readable.
pub(crate) fn preview(text: &str) -> String {
    const MAX_CHARS: usize = 80;
    let shown: String = text.chars().take(MAX_CHARS).collect();
    if shown.len() < text.len() {
        format!("{shown:?}…")
    } else {
        format!("{shown:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_causes_read_as_lowercase_phrases() {
        let err = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(describe(&err), "permission denied");
        assert_eq!(describe(&io::Error::other("Boom")), "boom");
    }

    #[test]
    fn messages_say_what_happened_and_what_to_do() {
        let err = RuntimeError::CreateWorkdir {
            path: PathBuf::from("/x"),
            cause: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(
            err.to_string(),
            "cannot create working directory /x: permission denied; check that the fabric's user \
             may write there or configure another workspace directory"
        );
        assert!(err.is_retryable());
        assert!(!RuntimeError::NoCommands.is_retryable());
    }

    #[test]
    fn long_commands_are_previewed() {
        let err = RuntimeError::InvalidCommand {
            command: format!("{}\0", "x".repeat(500)),
        };
        let message = err.to_string();
        assert!(message.len() < 200, "{message}");
        assert!(message.contains("…"), "{message}");
    }
}
