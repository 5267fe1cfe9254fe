//! [`CliError`]: every way a command can fail, and the exit code each one means (REQUIREMENTS §11).

use fabric_core::{TaskId, TaskStatus};
use fabric_docker::DockerError;
use fabric_docker::image::ImageError;
use fabric_docker::instance::InstanceError;

use crate::client::ClientError;
use crate::config::ConfigError;

/// Exit codes of REQUIREMENTS §11. clap exits with [`exit::USAGE`] on its own.
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const AUTH: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const CONFLICT: u8 = 5;
    pub const UNREACHABLE: u8 = 6;
    /// `policy check`: denied.
    pub const DENIED: u8 = 7;
    /// `policy check`: needs an approval.
    pub const APPROVAL_REQUIRED: u8 = 8;
}

/// A failed command. `main` prints it as `Error: <message>` and exits with [`CliError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Arguments that parse but make no sense together.
    #[error("{0}")]
    Usage(String),
    /// The command needs a token and none is configured for this server.
    #[error("{}", not_logged_in_message(url, stored_for.as_deref()))]
    NotLoggedIn {
        url: String,
        stored_for: Option<String>,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A bad `--config fabric.yml` (missing, unparsable, invalid): a usage error.
    #[error(transparent)]
    InstanceConfig(#[from] fabric_docker::config::ConfigError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The task ended, but not well (its result has been printed already).
    /// The process exits with the task's own exit code when it has one (as
    /// `docker run` passes its container's through), else 1.
    #[error("task {id} ended {status}{}", detail(status, reason.as_deref()))]
    TaskUnsuccessful {
        id: TaskId,
        status: TaskStatus,
        reason: Option<String>,
        /// The exit code of the task's last command, if it exited with one.
        exit_code: Option<i32>,
    },
    /// `task create --require-running` for an agent that does not run.
    #[error(
        "agent {agent} is {} (not running): no task created; start it with 'reactor-fabric agent spawn', or leave out --require-running to queue the task for when it runs",
        state.as_str()
    )]
    AgentNotRunning {
        agent: fabric_core::AgentId,
        state: fabric_core::agent::AgentState,
    },
    /// The task has no result yet and we were not asked to wait.
    #[error("task {id} is {status} and has no result yet: use --wait to wait for it")]
    TaskNotFinished { id: TaskId, status: TaskStatus },
    /// `--wait --timeout` ran out.
    #[error("gave up waiting for task {id} after {:.1}s: it is still {status}", waited.as_secs_f64())]
    WaitTimedOut {
        id: TaskId,
        status: TaskStatus,
        waited: std::time::Duration,
    },
    /// `policy check`: the action is not allowed (the decision has been printed).
    #[error("the policies say {0}")]
    Decision(fabric_core::Effect),
    /// Writing to stdout failed (a closed pipe is not reported, see [`CliError::is_silent`]).
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// Docker unreachable is 6 like an unreachable server; a taken name is a conflict.
fn docker_exit_code(e: &DockerError) -> u8 {
    match e {
        DockerError::DaemonUnreachable { .. } => exit::UNREACHABLE,
        DockerError::NameConflict { .. } | DockerError::PortInUse { .. } => exit::CONFLICT,
        DockerError::UnsupportedHost { .. } => exit::USAGE,
        _ => exit::ERROR,
    }
}

/// ` (reason)`, unless the reason only repeats the status (`canceled (canceled)`).
fn detail(status: &TaskStatus, reason: Option<&str>) -> String {
    match reason {
        Some(r) if r != status.as_str() => format!(" ({r})"),
        _ => String::new(),
    }
}

fn not_logged_in_message(url: &str, stored_for: Option<&str>) -> String {
    let hint = "run 'reactor-fabric auth login --username <name>' (or set FABRIC_TOKEN)";
    match stored_for {
        Some(other) => format!("not logged in to {url} (the stored login is for {other}): {hint}"),
        None => format!("not logged in: {hint}"),
    }
}

impl CliError {
    /// The process exit code for this error (REQUIREMENTS §11).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::NotLoggedIn { .. } => exit::AUTH,
            CliError::Client(e) => match e {
                ClientError::Unreachable { .. } => exit::UNREACHABLE,
                // 403 is an authorisation failure (token lacks the scope): still "auth failed".
                ClientError::Api {
                    status: 401 | 403, ..
                } => exit::AUTH,
                ClientError::Api { status: 404, .. } => exit::NOT_FOUND,
                ClientError::Api { status: 409, .. } => exit::CONFLICT,
                // The server answered, but its Docker daemon did not (REQUIREMENTS §11: 6).
                ClientError::Api { code, .. } if code == "docker_unavailable" => exit::UNREACHABLE,
                ClientError::Api { .. } | ClientError::Protocol(_) | ClientError::Request(_) => {
                    exit::ERROR
                }
            },
            CliError::Config(
                ConfigError::InvalidUrl { .. } | ConfigError::UnknownContext { .. },
            ) => exit::USAGE,
            CliError::InstanceConfig(_) => exit::USAGE,
            CliError::Docker(e) | CliError::Image(ImageError::Docker(e)) => docker_exit_code(e),
            CliError::Instance(InstanceError::Exists { .. }) => exit::CONFLICT,
            CliError::Instance(InstanceError::InvalidName(_)) => exit::USAGE,
            CliError::Instance(e) => e.docker().map_or(exit::ERROR, docker_exit_code),
            CliError::Image(_) => exit::ERROR,
            CliError::Config(_) => exit::ERROR,
            CliError::Stdout(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
            CliError::Decision(fabric_core::Effect::RequireApproval) => exit::APPROVAL_REQUIRED,
            CliError::Decision(_) => exit::DENIED,
            CliError::AgentNotRunning { .. } => exit::CONFLICT,
            CliError::TaskUnsuccessful {
                exit_code: Some(code),
                ..
            } if (1..=255).contains(code) => *code as u8,
            CliError::TaskUnsuccessful { .. }
            | CliError::TaskNotFinished { .. }
            | CliError::WaitTimedOut { .. }
            | CliError::Stdout(_)
            | CliError::Other(_) => exit::ERROR,
        }
    }

    /// Whether to exit without printing anything: the reader of our stdout went away
    /// (`reactor-fabric task list | head -1`), which is not worth a complaint.
    pub fn is_silent(&self) -> bool {
        matches!(self, CliError::Stdout(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
            || matches!(self, CliError::Decision(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> CliError {
        CliError::Client(ClientError::Api {
            status,
            code: "x".into(),
            message: "boom".into(),
            request_id: None,
        })
    }

    #[test]
    fn a_failed_tasks_exit_code_passes_through() {
        let failed = |exit_code| CliError::TaskUnsuccessful {
            id: TaskId::new(),
            status: TaskStatus::Failed,
            reason: None,
            exit_code,
        };
        assert_eq!(failed(Some(3)).exit_code(), 3);
        assert_eq!(failed(Some(255)).exit_code(), 255);
        assert_eq!(failed(None).exit_code(), 1, "canceled, timed out, killed");
        assert_eq!(failed(Some(0)).exit_code(), 1, "failed all the same");
        assert_eq!(failed(Some(-1)).exit_code(), 1);
    }

    #[test]
    fn exit_codes_follow_the_spec() {
        assert_eq!(api(401).exit_code(), 3);
        assert_eq!(api(404).exit_code(), 4);
        assert_eq!(api(409).exit_code(), 5);
        assert_eq!(api(429).exit_code(), 1);
        assert_eq!(api(500).exit_code(), 1);
        let unreachable = CliError::Client(ClientError::Unreachable {
            url: "http://h".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(unreachable.exit_code(), 6);
        assert_eq!(
            CliError::NotLoggedIn {
                url: "http://h".into(),
                stored_for: None
            }
            .exit_code(),
            3
        );
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        let no_docker = CliError::Docker(DockerError::DaemonUnreachable {
            detail: "refused".into(),
        });
        assert_eq!(no_docker.exit_code(), 6);
        assert_eq!(
            no_docker.to_string(),
            "Cannot connect to the Docker daemon. Is it running?"
        );
        let exists = CliError::Instance(InstanceError::Exists { name: "x".into() });
        assert_eq!(exists.exit_code(), 5);
        let unreachable_in_start =
            CliError::Instance(InstanceError::Docker(DockerError::DaemonUnreachable {
                detail: String::new(),
            }));
        assert_eq!(unreachable_in_start.exit_code(), 6);
        let missing = CliError::InstanceConfig(fabric_docker::config::ConfigError::Missing {
            path: "fabric.yml".into(),
        });
        assert_eq!(missing.exit_code(), 2);
        let pipe = CliError::Stdout(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(pipe.is_silent());
        assert_eq!(pipe.exit_code(), 0);
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = CliError::NotLoggedIn {
            url: "http://h".into(),
            stored_for: None,
        };
        assert!(
            e.to_string()
                .starts_with("not logged in: run 'reactor-fabric auth login --username <name>'")
        );
        assert_eq!(api(404).to_string(), "boom");
    }
}
