//! The agent sessions a node runs for the orchestrator.
//!
//! Every heartbeat answer may carry the full set of sessions the node is to
//! run (versioned); [`Hosting::reconcile`] starts what is new and stops what
//! is gone. Each session runs in a task of its own with the same session
//! code the orchestrator uses for its own agents, on this node's
//! [`SessionRuntime`], and its state goes out with the next heartbeat (at
//! once when it changes). A session that ended is reported until a
//! heartbeat carrying that report was answered, and is never started again
//! (a restart is a new session number).
//!
//! **Fencing.** A node that has not been answered for most of the
//! heartbeat timeout stops every session at once, without grace: by the
//! time the orchestrator calls it unreachable and requeues its agents'
//! tasks elsewhere, nothing of them runs here any more.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fabric_core::AgentId;
use fabric_core::agent::IsolationConfig;
use fabric_core::node::{
    NodeConfigSpec, SessionAssignment, SessionReport, SessionSet, SessionState,
};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use crate::services::agents::{HostedSession, SessionRuntime, UsageReader};

type Key = (AgentId, u32);

/// Why and how a session is stopped.
#[derive(Clone, Copy)]
pub(super) struct Stop {
    pub(super) grace: Duration,
    pub(super) reason: &'static str,
    /// Whether the orchestrator asked for it (a fenced session failed).
    pub(super) asked: bool,
}

struct Hosted {
    state: SessionState,
    stop: watch::Sender<Option<Stop>>,
    usage: Option<UsageReader>,
}

/// The sessions of one node.
pub(super) struct Hosting {
    runtime: Arc<SessionRuntime>,
    sessions: Mutex<BTreeMap<Key, Hosted>>,
    /// Sessions that ended (never started again).
    ended: Mutex<HashSet<Key>>,
    /// The version of the last set applied.
    version: Mutex<u64>,
    /// A session's state changed: report now.
    pub(super) changed: Notify,
    kill_grace: Duration,
}

impl Hosting {
    pub(super) fn new(runtime: Arc<SessionRuntime>, kill_grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            sessions: Mutex::new(BTreeMap::new()),
            ended: Mutex::new(HashSet::new()),
            version: Mutex::new(0),
            changed: Notify::new(),
            kill_grace,
        })
    }

    pub(super) fn version(&self) -> u64 {
        *self.version.lock()
    }

    /// Sessions that still run (what `/readyz` and the logs count).
    pub(super) fn running(&self) -> usize {
        self.sessions
            .lock()
            .values()
            .filter(|h| !is_final(&h.state))
            .count()
    }

    /// Starts the sessions of `set` this node does not run, and stops the
    /// ones it runs that `set` no longer has.
    pub(super) fn reconcile(self: &Arc<Self>, set: SessionSet, defaults: &NodeConfigSpec) {
        let wanted: HashSet<Key> = set
            .sessions
            .iter()
            .map(|a| (a.agent.id.clone(), a.session))
            .collect();
        {
            let sessions = self.sessions.lock();
            for (key, hosted) in sessions.iter() {
                if !wanted.contains(key) && !is_final(&hosted.state) {
                    tracing::info!(agent_id = %key.0, session = key.1, "the orchestrator no longer places this session here: stopping it");
                    hosted.stop.send_replace(Some(Stop {
                        grace: self.kill_grace,
                        reason: "stopped at the orchestrator's request",
                        asked: true,
                    }));
                }
            }
        }
        for assignment in set.sessions {
            let key = (assignment.agent.id.clone(), assignment.session);
            if self.ended.lock().contains(&key) || self.sessions.lock().contains_key(&key) {
                continue;
            }
            let (stop, stop_rx) = watch::channel(None);
            self.sessions.lock().insert(
                key,
                Hosted {
                    state: SessionState::Starting,
                    stop,
                    usage: None,
                },
            );
            tokio::spawn(Arc::clone(self).run(with_defaults(assignment, defaults), stop_rx));
        }
        *self.version.lock() = set.version;
    }

    /// Stops every session at once (the orchestrator is out of reach, or
    /// the node is stopping).
    pub(super) fn stop_all(&self, stop: Stop) -> usize {
        let sessions = self.sessions.lock();
        let mut stopped = 0;
        for hosted in sessions.values() {
            if !is_final(&hosted.state) && hosted.stop.borrow().is_none() {
                hosted.stop.send_replace(Some(stop));
                stopped += 1;
            }
        }
        stopped
    }

    /// Waits until no session runs any more (after `stop_all`).
    pub(super) async fn wait_idle(&self) {
        while self.running() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the next heartbeat reports: every session, running ones with
    /// their usage now.
    pub(super) fn reports(&self) -> Vec<SessionReport> {
        self.sessions
            .lock()
            .iter()
            .map(|((agent, session), hosted)| {
                let state = match (&hosted.state, &hosted.usage) {
                    (
                        SessionState::Running {
                            pid, reports_in, ..
                        },
                        Some(usage),
                    ) => SessionState::Running {
                        pid: *pid,
                        reports_in: *reports_in,
                        usage: usage.read(),
                    },
                    (state, _) => state.clone(),
                };
                SessionReport {
                    agent: agent.clone(),
                    session: *session,
                    state,
                }
            })
            .collect()
    }

    /// The orchestrator has these reports: forget the sessions they ended.
    pub(super) fn delivered(&self, reports: &[SessionReport]) {
        let mut sessions = self.sessions.lock();
        for report in reports {
            let key = (report.agent.clone(), report.session);
            if is_final(&report.state) && sessions.get(&key).is_some_and(|h| is_final(&h.state)) {
                sessions.remove(&key);
            }
        }
    }

    fn set_state(&self, key: &Key, state: SessionState, usage: Option<UsageReader>) {
        if let Some(hosted) = self.sessions.lock().get_mut(key) {
            hosted.state = state;
            if usage.is_some() {
                hosted.usage = usage;
            }
        }
        self.changed.notify_one();
    }

    async fn run(
        self: Arc<Self>,
        assignment: SessionAssignment,
        mut stop: watch::Receiver<Option<Stop>>,
    ) {
        let key = (assignment.agent.id.clone(), assignment.session);
        let agent = key.0.clone();
        tracing::info!(agent_id = %agent, session = key.1, isolation = %assignment.agent.isolation.level, "starting an agent session");
        let started = HostedSession::start(&self.runtime, &assignment).await;
        let end = match started {
            Err(e) => {
                tracing::error!(agent_id = %agent, session = key.1, error = %e, "agent session did not start");
                SessionState::Failed {
                    error: e.to_string(),
                }
            }
            Ok(mut session) => {
                let usage = session.usage_reader();
                self.set_state(&key, session.running(usage.read()), Some(usage));
                let stopped = tokio::select! {
                    ended = session.wait_exit() => Err(ended),
                    stop = stop.wait_for(Option::is_some) => Ok(stop.ok().and_then(|s| *s)),
                };
                match stopped {
                    Err(ended) => {
                        session.cleanup().await;
                        ended
                    }
                    Ok(stop) => {
                        let stop = stop.unwrap_or(Stop {
                            grace: Duration::ZERO,
                            reason: "stopped",
                            asked: false,
                        });
                        session.stop(stop.grace).await;
                        SessionState::Exited {
                            reason: stop.reason.into(),
                            success: stop.asked,
                            oom_killed: false,
                        }
                    }
                }
            }
        };
        tracing::info!(agent_id = %agent, session = key.1, state = ?end, "agent session ended");
        self.ended.lock().insert(key.clone());
        self.set_state(&key, end, None);
    }
}

/// The session as this node runs it: the node config's default limits for
/// an agent that kept the built-in ones, and its egress added to the
/// agent's allowlist.
fn with_defaults(
    mut assignment: SessionAssignment,
    defaults: &NodeConfigSpec,
) -> SessionAssignment {
    let builtin = IsolationConfig::default();
    let iso = &mut assignment.agent.isolation;
    if let Some(mb) = defaults.default_memory_mb
        && iso.memory_mb == builtin.memory_mb
    {
        iso.memory_mb = mb;
    }
    if let Some(cores) = defaults.default_cpu_cores
        && iso.cpu_cores == builtin.cpu_cores
    {
        iso.cpu_cores = cores;
    }
    for rule in &defaults.egress {
        if !iso.network_egress.contains(rule) {
            iso.network_egress.push(rule.clone());
        }
    }
    assignment
}

fn is_final(state: &SessionState) -> bool {
    matches!(
        state,
        SessionState::Exited { .. } | SessionState::Failed { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(memory_mb: u64, egress: &[&str]) -> SessionAssignment {
        let mut agent = fabric_core::agent::AgentConfig::new("a".parse().unwrap());
        agent.isolation.memory_mb = memory_mb;
        agent.isolation.network_egress = egress.iter().map(|e| e.to_string()).collect();
        SessionAssignment {
            agent,
            session: 1,
            tenant: fabric_core::TenantId::default_tenant(),
            owner: "u".into(),
            token: "t".into(),
        }
    }

    /// The node config's defaults apply where the agent kept the built-in
    /// ones; its egress joins the agent's allowlist.
    #[test]
    fn the_node_config_fills_in_defaults_and_adds_egress() {
        let defaults = NodeConfigSpec {
            default_memory_mb: Some(1024),
            default_cpu_cores: Some(2.0),
            egress: vec!["pypi.org:443".into()],
            ..NodeConfigSpec::default()
        };
        let builtin = IsolationConfig::default();
        let plain = with_defaults(assignment(builtin.memory_mb, &[]), &defaults);
        assert_eq!(plain.agent.isolation.memory_mb, 1024);
        assert_eq!(plain.agent.isolation.cpu_cores, 2.0);
        assert_eq!(plain.agent.isolation.network_egress, ["pypi.org:443"]);
        let own = with_defaults(assignment(64, &["pypi.org:443", "a.b:80"]), &defaults);
        assert_eq!(own.agent.isolation.memory_mb, 64);
        assert_eq!(
            own.agent.isolation.network_egress,
            ["pypi.org:443", "a.b:80"]
        );
    }
}
