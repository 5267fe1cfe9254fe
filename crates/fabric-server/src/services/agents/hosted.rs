//! The worker node's side of a session the orchestrator placed there: the
//! same session code as on the orchestrator, with the token the
//! orchestrator minted for it, on the node's own [`SessionRuntime`].

use std::sync::Arc;
use std::time::Duration;

use fabric_core::agent::ResourceUsage;
use fabric_core::node::{SessionAssignment, SessionState};

use super::SessionRuntime;
use super::session::{Place, Session, SessionError, TokenSource, UsageProbe};

/// A session running on this node for the orchestrator.
pub struct HostedSession {
    session: Session,
}

/// Reads a hosted session's resource use (cheap to clone, readable while
/// the session is waited on).
#[derive(Clone)]
pub struct UsageReader(UsageProbe);

impl UsageReader {
    pub fn read(&self) -> ResourceUsage {
        self.0.read()
    }
}

impl HostedSession {
    /// Starts the session; on error, what the start made is removed again.
    pub async fn start(
        runtime: &Arc<SessionRuntime>,
        assignment: &SessionAssignment,
    ) -> Result<Self, SessionError> {
        let token = TokenSource::Given(assignment.token.clone());
        Session::start(
            runtime,
            &assignment.agent,
            assignment.session,
            &assignment.tenant,
            &assignment.owner,
            &token,
            Place::Here,
        )
        .await
        .map(|session| Self { session })
    }

    /// What the node reports while it runs.
    pub fn running(&self, usage: ResourceUsage) -> SessionState {
        SessionState::Running {
            pid: self.session.pid(),
            reports_in: self.session.reports_in(),
            usage,
        }
    }

    pub fn usage_reader(&self) -> UsageReader {
        UsageReader(self.session.usage_probe())
    }

    /// Resolves when its program (or container) ends by itself.
    pub async fn wait_exit(&mut self) -> SessionState {
        let ended = self.session.wait_exit().await;
        SessionState::Exited {
            reason: ended.why,
            success: ended.success,
            oom_killed: ended.oom_killed,
        }
    }

    /// Stops it: SIGTERM, then SIGKILL after `grace`; then removes
    /// everything it made.
    pub async fn stop(mut self, grace: Duration) {
        self.session.stop_leasing();
        self.session.terminate(grace).await;
        self.session.cleanup().await;
    }

    /// Removes everything it made (after it ended by itself).
    pub async fn cleanup(self) {
        self.session.cleanup().await;
    }
}
