//! [`DockerError`]: every way the Docker daemon (or reaching it) can fail, in words a user can act on.
//!
//! bollard's own errors never leave this crate: [`DockerError::from_bollard`] sorts
//! them into the cases a caller handles differently (exit codes, retries, cleanup).

use bollard::errors::Error as BollardError;

/// What REQUIREMENTS §3 says every command prints when there is no daemon, word for word.
pub const DAEMON_UNREACHABLE: &str = "Cannot connect to the Docker daemon. Is it running?";

/// A failed Docker operation.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No daemon answers at `DOCKER_HOST` (or the default socket).
    // REQUIREMENTS §3 fixes this text (capitalised, with a question mark), unlike our other messages.
    #[error("{}", DAEMON_UNREACHABLE)]
    DaemonUnreachable {
        /// What the connection attempt said (for `--verbose`-style diagnostics, not printed).
        detail: String,
    },
    /// An image is not on this machine and could not be pulled.
    #[error("image {image} is missing and cannot be pulled ({reason}): {hint}")]
    ImageMissing {
        image: String,
        reason: String,
        /// What to do about it (load it, build it, or name another one).
        hint: String,
    },
    /// A container, network or volume with that name already exists.
    #[error("{what} already exists: {message}")]
    NameConflict { what: String, message: String },
    /// The host port asked for is taken.
    #[error(
        "port {port} on 127.0.0.1 is already in use: choose another port, or leave it out to get a free one"
    )]
    PortInUse { port: String },
    /// Disk, memory or address space ran out on the Docker host.
    #[error(
        "docker is out of resources ({message}): free disk space (docker system prune) or memory, then retry"
    )]
    OutOfResources { message: String },
    /// The thing operated on does not exist (any more).
    #[error("not found: {message}")]
    NotFound { message: String },
    /// The container must run for this (an exec, joining its network) and does not.
    #[error("{what}: the container is not running ({message})")]
    NotRunning { what: String, message: String },
    /// `DOCKER_HOST` names something this client cannot speak to.
    #[error(
        "DOCKER_HOST {host:?} is not supported: use unix:///path/to/docker.sock or tcp://host:port"
    )]
    UnsupportedHost { host: String },
    /// The daemon did not answer in time.
    #[error("the Docker daemon did not answer within {seconds} s: is it overloaded?")]
    Timeout { seconds: u64 },
    /// Anything else the daemon refused.
    #[error("docker: {message}")]
    Other {
        status: Option<u16>,
        message: String,
    },
}

impl DockerError {
    /// Sorts a bollard error into the cases above; `context` names what was being done
    /// (`"create container reactor-fabric-x-redis"`), used where the daemon's own text is vague.
    pub fn from_bollard(err: BollardError, context: &str) -> DockerError {
        match err {
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => from_status(status_code, message, context),
            BollardError::DockerStreamError { error } => from_status(500, error, context),
            BollardError::RequestTimeoutError => DockerError::Timeout { seconds: 120 },
            BollardError::UnsupportedURISchemeError { uri } => {
                DockerError::UnsupportedHost { host: uri }
            }
            // Connection-level failures: no socket, refused, reset, not an HTTP peer.
            BollardError::SocketNotFoundError(_)
            | BollardError::HyperLegacyError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::IOError { .. } => DockerError::DaemonUnreachable {
                detail: err.to_string(),
            },
            other => DockerError::Other {
                status: None,
                message: format!("{context}: {other}"),
            },
        }
    }

    /// Whether this is the daemon saying "no such thing" (safe to ignore when removing).
    pub fn is_not_found(&self) -> bool {
        matches!(self, DockerError::NotFound { .. })
    }

    /// Whether a name was already taken.
    pub fn is_conflict(&self) -> bool {
        matches!(self, DockerError::NameConflict { .. })
    }
}

fn from_status(status: u16, message: String, context: &str) -> DockerError {
    let lower = message.to_lowercase();
    // The daemon reports resource exhaustion as a plain 500; the text is all there is.
    if lower.contains("no space left on device")
        || lower.contains("cannot allocate memory")
        || lower.contains("out of memory")
        || lower.contains("could not find an available, non-overlapping ipv4 address pool")
    {
        return DockerError::OutOfResources { message };
    }
    if lower.contains("port is already allocated") || lower.contains("address already in use") {
        return DockerError::PortInUse {
            port: port_in(&message).unwrap_or_else(|| "?".to_owned()),
        };
    }
    match status {
        404 => DockerError::NotFound { message },
        409 if lower.contains("is not running") || lower.contains("non running") => {
            DockerError::NotRunning {
                what: context.to_owned(),
                message,
            }
        }
        409 => DockerError::NameConflict {
            what: context.to_owned(),
            message,
        },
        _ => DockerError::Other {
            status: Some(status),
            message: format!("{context}: {message}"),
        },
    }
}

/// The port in "Bind for 127.0.0.1:8080 failed: port is already allocated".
fn port_in(message: &str) -> Option<String> {
    let bind = message.split("Bind for ").nth(1)?;
    let addr = bind.split_whitespace().next()?;
    Some(addr.rsplit(':').next()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status_code: u16, message: &str) -> BollardError {
        BollardError::DockerResponseServerError {
            status_code,
            message: message.to_owned(),
        }
    }

    #[test]
    fn daemon_errors_are_sorted_by_what_to_do() {
        let e = DockerError::from_bollard(server(404, "No such container: x"), "inspect x");
        assert!(e.is_not_found());
        let e = DockerError::from_bollard(
            server(409, "Conflict. The container name \"/x\" is already in use"),
            "container x",
        );
        assert!(e.is_conflict());
        assert!(e.to_string().starts_with("container x already exists"));
        let e =
            DockerError::from_bollard(server(409, "Container 0123 is not running"), "exec in x");
        assert!(matches!(e, DockerError::NotRunning { .. }), "{e:?}");
        assert!(!e.is_conflict());
        let e = DockerError::from_bollard(
            server(
                500,
                "driver failed programming external connectivity on endpoint x: Bind for 127.0.0.1:8080 failed: port is already allocated",
            ),
            "start x",
        );
        assert!(
            matches!(&e, DockerError::PortInUse { port } if port == "8080"),
            "{e:?}"
        );
        let e = DockerError::from_bollard(
            server(500, "write /var/lib/docker/tmp/x: no space left on device"),
            "import",
        );
        assert!(matches!(e, DockerError::OutOfResources { .. }));
        assert!(e.to_string().contains("docker system prune"));
    }

    #[test]
    fn no_daemon_is_the_spec_sentence() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = DockerError::from_bollard(BollardError::IOError { err: io }, "version");
        assert_eq!(
            e.to_string(),
            "Cannot connect to the Docker daemon. Is it running?"
        );
        let e = DockerError::from_bollard(
            BollardError::SocketNotFoundError("/nope.sock".into()),
            "version",
        );
        assert!(matches!(e, DockerError::DaemonUnreachable { .. }));
    }
}
