//! A session on a worker node. The orchestrator mints the session's agent
//! token and places the session with the node service; the node learns it
//! from its next heartbeat answer, runs it with the same session code as
//! here (`crate::node`), and reports its state with every heartbeat. This
//! side only waits: for the start, for the end (the program exited, the
//! node stopped it, or the node was lost), and for a drain of the node,
//! which moves the agent elsewhere.

use std::sync::Arc;
use std::time::Duration;

use fabric_core::AgentId;
use fabric_core::agent::ResourceUsage;
use fabric_core::node::{SessionAssignment, SessionState};
use tokio::sync::watch;

use super::{AgentToken, Ended, Launch, SessionError, UsageProbe};
use crate::services::nodes::{NodeService, Remote};

/// How long a node may take to start a session (a cold container image
/// build is the slow case).
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long past the grace a node may take to report a stopped session.
const STOP_MARGIN: Duration = Duration::from_secs(10);

pub(in crate::services::agents) struct RemoteSession {
    nodes: Arc<NodeService>,
    node: String,
    agent: AgentId,
    number: u32,
    report: watch::Receiver<Remote>,
    draining: watch::Receiver<bool>,
    pid: Option<u32>,
    reports_in: bool,
    /// Revoked when the session ends.
    _token: AgentToken,
}

impl RemoteSession {
    /// Places the session on `node` and waits until the node runs it (or
    /// says why it cannot).
    pub(super) async fn start(
        launch: &Launch<'_>,
        nodes: &Arc<NodeService>,
        node: &str,
    ) -> Result<RemoteSession, SessionError> {
        let (token, secret) = AgentToken::issue(launch);
        let assignment = SessionAssignment {
            agent: launch.config.clone(),
            session: launch.number,
            tenant: launch.tenant.clone(),
            owner: launch.owner.to_owned(),
            token: secret,
        };
        let placement = nodes
            .assign(node, assignment)
            .map_err(|e| SessionError::NoPlacement(e.to_string()))?;
        let mut session = RemoteSession {
            nodes: Arc::clone(nodes),
            node: node.to_owned(),
            agent: launch.agent().clone(),
            number: launch.number,
            report: placement.report,
            draining: placement.draining,
            pid: None,
            reports_in: !launch.config.is_builtin_shell(),
            _token: token,
        };
        let started = tokio::time::timeout(START_TIMEOUT, session.wait_started()).await;
        let outcome = match started {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "the node did not start it within {}s",
                START_TIMEOUT.as_secs()
            )),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(agent_id = %session.agent, session = session.number, node = %session.node, "agent session placed on a node");
                Ok(session)
            }
            Err(error) => {
                let node = session.node.clone();
                session.cleanup();
                Err(SessionError::OnNode { node, error })
            }
        }
    }

    async fn wait_started(&mut self) -> Result<(), String> {
        loop {
            match self.report.borrow_and_update().clone() {
                Remote::Pending | Remote::Reported(SessionState::Starting) => {}
                Remote::Reported(SessionState::Running {
                    pid, reports_in, ..
                }) => {
                    self.pid = pid;
                    self.reports_in = reports_in;
                    return Ok(());
                }
                // Ended before this side looked: `wait_exit` tells.
                Remote::Reported(SessionState::Exited { .. }) => return Ok(()),
                Remote::Reported(SessionState::Failed { error }) => return Err(error),
                Remote::Lost(why) => return Err(why),
            }
            if self.report.changed().await.is_err() {
                return Err(format!("node {} was removed", self.node));
            }
        }
    }

    pub(super) fn node(&self) -> &str {
        &self.node
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub(super) fn runs_program(&self) -> bool {
        self.reports_in
    }

    pub(super) fn usage_probe(&self) -> UsageProbe {
        UsageProbe::Remote(self.report.clone())
    }

    /// Resolves when the node reports the session's end, or is lost.
    pub(super) async fn wait_exit(&mut self) -> Ended {
        loop {
            match self.report.borrow_and_update().clone() {
                Remote::Reported(SessionState::Exited {
                    reason,
                    success,
                    oom_killed,
                }) => {
                    return Ended {
                        why: format!("{reason} on node {}", self.node),
                        success,
                        oom_killed,
                    };
                }
                Remote::Reported(SessionState::Failed { error }) => {
                    return Ended::failed(format!("on node {}: {error}", self.node));
                }
                Remote::Lost(why) => return Ended::failed(why),
                Remote::Pending | Remote::Reported(_) => {}
            }
            if self.report.changed().await.is_err() {
                return Ended::failed(format!("node {} was removed", self.node));
            }
        }
    }

    /// [`wait_exit`](Self::wait_exit), or `None` as soon as the node
    /// drains (the agent moves elsewhere).
    pub(super) async fn wait_exit_or_draining(&mut self) -> Option<Ended> {
        let mut draining = self.draining.clone();
        let drained = async move {
            if draining.wait_for(|d| *d).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            ended = self.wait_exit() => Some(ended),
            () = drained => None,
        }
    }

    /// Asks the node to stop the session and waits for it to say it did
    /// (or for the node to be lost), at most `grace` plus a margin.
    pub(super) async fn terminate(&mut self, grace: Duration) {
        self.nodes
            .stop_session(&self.node, &self.agent, self.number);
        let _ = tokio::time::timeout(grace + STOP_MARGIN, self.wait_exit()).await;
    }

    /// Forgets the placement and revokes the token.
    pub(super) fn cleanup(self) {
        self.nodes.release(&self.node, &self.agent, self.number);
    }
}

/// The usage the node reported last.
pub(super) fn reported_usage(report: &watch::Receiver<Remote>) -> ResourceUsage {
    match &*report.borrow() {
        Remote::Reported(SessionState::Running { usage, .. }) => *usage,
        _ => ResourceUsage::default(),
    }
}
