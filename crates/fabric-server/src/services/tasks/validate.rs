//! Checks on a task create request, each failure a [`TaskError::Invalid`]
//! that names the field and the fix.

use std::collections::HashSet;
use std::path::{Component, Path};
use std::time::Duration;

use fabric_core::AgentId;
use fabric_core::api::CreateTaskRequest;

use super::TaskError;

/// Longest allowed attempt timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MAX_ATTEMPTS: u32 = 20;
pub const MAX_COMMANDS: usize = 100;
pub const MAX_FILES: usize = 100;
pub const MAX_DEPENDENCIES: usize = 256;
/// Environment keys starting with this belong to the fabric (task context a request must not forge).
pub const RESERVED_ENV_PREFIX: &str = "FABRIC_";

/// The parts of a create request that need converting.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSpec {
    pub timeout: Option<Duration>,
}

pub fn create_request(
    req: &CreateTaskRequest,
    agent: &AgentId,
    idempotency_key: Option<&str>,
) -> Result<CreateSpec, TaskError> {
    if *agent == AgentId::shell() && req.prompt.is_none() && req.commands.is_empty() {
        return Err(invalid(
            "the shell agent needs something to run: give 'prompt' or 'commands'",
        ));
    }
    if req.name.as_ref().is_some_and(|n| n.chars().count() > 200) {
        return Err(invalid("'name' is longer than 200 characters"));
    }
    if req
        .name
        .as_deref()
        .is_some_and(|n| n.chars().any(char::is_control))
    {
        return Err(invalid(
            "'name' contains a control character (a newline, tab, escape, ...): names are one plain line",
        ));
    }
    // A NUL cannot reach a process (argv and environment are C strings):
    // refused here rather than failing the task at spawn.
    let nul = |field: &str| {
        invalid(format!(
            "'{field}' contains a NUL character, which no command can receive"
        ))
    };
    if req.prompt.as_deref().is_some_and(|p| p.contains('\0')) {
        return Err(nul("prompt"));
    }
    if req.commands.iter().any(|c| c.contains('\0')) {
        return Err(nul("commands"));
    }
    if req.env.values().any(|v| v.contains('\0')) {
        return Err(nul("env"));
    }
    if req.commands.len() > MAX_COMMANDS {
        return Err(invalid(format!(
            "too many commands ({}); at most {MAX_COMMANDS}",
            req.commands.len()
        )));
    }
    if req.commands.iter().any(|c| c.trim().is_empty()) {
        return Err(invalid("'commands' contains an empty command"));
    }
    if req.files.len() > MAX_FILES {
        return Err(invalid(format!(
            "too many files ({}); at most {MAX_FILES}",
            req.files.len()
        )));
    }
    for f in &req.files {
        file_path(&f.path)?;
    }
    for key in req.env.keys() {
        env_key(key)?;
    }
    if req.depends_on.len() > MAX_DEPENDENCIES {
        return Err(invalid(format!(
            "too many dependencies; at most {MAX_DEPENDENCIES}"
        )));
    }
    let unique: HashSet<_> = req.depends_on.iter().collect();
    if unique.len() != req.depends_on.len() {
        return Err(invalid("'depends_on' lists a task twice"));
    }
    if let Some(n) = req.max_attempts.filter(|n| *n == 0 || *n > MAX_ATTEMPTS) {
        return Err(invalid(format!(
            "'max_attempts' must be between 1 and {MAX_ATTEMPTS}, got {n}"
        )));
    }
    if idempotency_key.is_some_and(|key| key.is_empty() || key.len() > 255) {
        return Err(invalid(
            "the Idempotency-Key header must be 1 to 255 characters",
        ));
    }
    let timeout = match req.timeout_seconds {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s <= MAX_TIMEOUT.as_secs_f64() => {
            Some(Duration::from_secs_f64(s))
        }
        Some(s) => {
            return Err(invalid(format!(
                "'timeout_seconds' must be a positive number of seconds up to {} (7 days), got {s}",
                MAX_TIMEOUT.as_secs()
            )));
        }
    };
    Ok(CreateSpec { timeout })
}

/// A task file path: relative, and staying inside the working directory.
pub fn file_path(path: &str) -> Result<(), TaskError> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && path.len() <= 4096
        && !path.contains('\0')
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && p.components().any(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid file path {path:?}: use a relative path inside the task's working directory (no '..', not absolute)"
        )))
    }
}

fn env_key(key: &str) -> Result<(), TaskError> {
    let valid = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(invalid(format!(
            "invalid environment variable name {key:?}: use letters, digits and '_'"
        )));
    }
    if key.to_ascii_uppercase().starts_with(RESERVED_ENV_PREFIX) {
        return Err(invalid(format!(
            "environment variable {key} is reserved: FABRIC_* variables are set by the fabric itself"
        )));
    }
    Ok(())
}

fn invalid(message: impl Into<String>) -> TaskError {
    TaskError::Invalid(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> CreateTaskRequest {
        CreateTaskRequest {
            prompt: Some("echo hi".into()),
            ..Default::default()
        }
    }

    #[test]
    fn shell_tasks_need_something_to_run() {
        let empty = CreateTaskRequest::default();
        assert!(create_request(&empty, &AgentId::shell(), None).is_err());
        assert!(create_request(&empty, &AgentId::noop(), None).is_ok());
        assert!(create_request(&req(), &AgentId::shell(), None).is_ok());
    }

    #[test]
    fn reserved_env_and_escaping_paths_are_refused() {
        let mut r = req();
        r.env.insert("FABRIC_TASK_ID".into(), "forged".into());
        let e = create_request(&r, &AgentId::shell(), None).unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        for bad in ["../x", "/etc/passwd", "a/../../b", "", "."] {
            assert!(file_path(bad).is_err(), "{bad}");
        }
        for good in ["a.txt", "dir/b.sh", "./c"] {
            assert!(file_path(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn timeouts_and_attempts_are_bounded() {
        let mut r = req();
        r.timeout_seconds = Some(1.5);
        assert_eq!(
            create_request(&r, &AgentId::shell(), None).unwrap().timeout,
            Some(Duration::from_millis(1500))
        );
        for bad in [0.0, -1.0, f64::NAN, 1e12] {
            r.timeout_seconds = Some(bad);
            assert!(
                create_request(&r, &AgentId::shell(), None).is_err(),
                "{bad}"
            );
        }
        let mut r = req();
        r.max_attempts = Some(0);
        assert!(create_request(&r, &AgentId::shell(), None).is_err());
    }
}
