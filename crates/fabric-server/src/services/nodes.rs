//! Worker nodes (SPEC §16, issue #21): join tokens, node identities, their
//! heartbeats and readiness, and the versioned node config.
//!
//! A node joins with a join token (`rfj_<id>_<secret>`), which buys it a
//! credential (`rfn_<secret>`) of its own: the only thing that lets a
//! process act as that node. Both are kept as SHA-256 digests; the
//! credential expires (`credential_ttl`) and the node renews it before then
//! (the replaced one keeps working for [`RENEWAL_GRACE`], so a renewal whose
//! answer was lost does not lock the node out). Removing a node forgets its
//! credential at once.
//!
//! Nodes connect out: a heartbeat is a long poll (`wait_ms`) that the
//! orchestrator answers at once when there is a config the node does not
//! run yet, else when the wait is over; the node sends the next one right
//! after. `last_seen` is the arrival of the latest heartbeat, kept in memory
//! only (a write per heartbeat and node would load the store for nothing);
//! a node not seen for `heartbeat_timeout` is `unreachable`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fabric_core::agent::AgentConfig;
use fabric_core::node::{
    ConfigRejection, CreateJoinTokenRequest, Heartbeat, HeartbeatReply, JOIN_TOKEN_PREFIX,
    JoinRequest, JoinTokenCreated, JoinTokenRecord, JoinTokenView, NODE_CREDENTIAL_PREFIX,
    NodeConfig, NodeConfigSpec, NodeCredential, NodeRecord, NodeStatus, NodeStore, NodeView,
    SessionAssignment, SessionSet, SessionState, validate_label, validate_node_name,
};
use fabric_core::{AgentId, Clock, Identity, MissingScope, Scope, StoreError, Timestamp};
use fabric_telemetry::metrics::{Collected, Registry, Sample};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::services::alerts::AlertHub;
use crate::services::auth::{hash_token, random_secret};
use crate::store::AnyStore as Store;

/// How long a replaced credential keeps working after a renewal.
pub const RENEWAL_GRACE: Duration = Duration::from_secs(300);
/// The longest a heartbeat is held when there is nothing new.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
const DEFAULT_JOIN_TTL: u64 = 3600;
const JOIN_TTL_RANGE: std::ops::RangeInclusive<u64> = 1..=7 * 24 * 3600;

/// Alert kind of a node that stopped reporting.
pub const ALERT_NODE_UNREACHABLE: &str = "node_unreachable";

/// Timings of the node protocol (`serve --node-heartbeat-*`, `--node-credential-ttl`).
#[derive(Debug, Clone, Copy)]
pub struct NodeTimings {
    /// How often a node reports in (the length of its long poll).
    pub heartbeat_interval: Duration,
    /// No report for this long: unreachable.
    pub heartbeat_timeout: Duration,
    /// How long a node credential is valid; nodes renew it at half of that.
    pub credential_ttl: Duration,
}

impl Default for NodeTimings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(10),
            credential_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// What callers of the node service get wrong, or what failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Invalid(String),
    /// A join refused for its token (unknown, expired, used up, revoked).
    #[error("{0}")]
    JoinRefused(String),
    /// A request with a node credential that is not (or no longer) valid.
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("no node {0:?}: reactor-fabric node list shows the nodes")]
    NotFound(String),
    #[error("no join token {0:?}: reactor-fabric node token list shows them")]
    TokenNotFound(String),
    #[error(
        "a node named {0:?} has joined already: remove it first ('reactor-fabric node remove {0}') or join with another --name"
    )]
    NameTaken(String),
    #[error(transparent)]
    MissingScope(#[from] MissingScope),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the orchestrator knows of a node beyond its stored record.
struct Live {
    record: NodeRecord,
    last_seen: Option<Timestamp>,
    ready: bool,
    reasons: Vec<String>,
    config_version: u64,
    config_error: Option<ConfigRejection>,
    /// Counted as unreachable already (so the alert is raised once per outage).
    unreachable: bool,
    /// The agent sessions placed here, by agent.
    placed: BTreeMap<AgentId, Placed>,
    /// Version of the set of sessions the node is to run (bumped on every
    /// change); a heartbeat carrying an older one is answered at once.
    sessions_version: watch::Sender<u64>,
    /// True while the node is draining: its sessions move elsewhere.
    draining: watch::Sender<bool>,
}

/// One agent session placed on a node.
struct Placed {
    assignment: SessionAssignment,
    /// Being stopped: no longer in the node's set, still told its end.
    stopping: bool,
    report: watch::Sender<Remote>,
}

/// What became of a session placed on a node, as the orchestrator sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Remote {
    /// Sent; the node has not reported it yet.
    Pending,
    Reported(SessionState),
    /// The node is gone (unreachable, removed): why, in words.
    Lost(String),
}

/// What a session placed on a node is watched through.
pub struct Placement {
    pub report: watch::Receiver<Remote>,
    /// True once the node is draining.
    pub draining: watch::Receiver<bool>,
}

/// The orchestrator's own load, a placement candidate like any node.
#[derive(Debug, Clone, Copy)]
pub struct LocalLoad {
    pub agents: usize,
    pub cpus: u32,
}

impl Live {
    fn new(record: NodeRecord) -> Self {
        let draining = watch::Sender::new(record.draining);
        Self {
            record,
            last_seen: None,
            ready: false,
            reasons: vec!["has not reported since this orchestrator started".into()],
            config_version: 0,
            config_error: None,
            unreachable: false,
            placed: BTreeMap::new(),
            sessions_version: watch::Sender::new(0),
            draining,
        }
    }

    /// Sessions the node runs (not those being stopped).
    fn agents(&self) -> usize {
        self.placed.values().filter(|p| !p.stopping).count()
    }

    fn session_set(&self) -> SessionSet {
        SessionSet {
            version: *self.sessions_version.borrow(),
            sessions: self
                .placed
                .values()
                .filter(|p| !p.stopping)
                .map(|p| p.assignment.clone())
                .collect(),
        }
    }

    fn sessions_changed(&self) {
        self.sessions_version.send_modify(|v| *v += 1);
    }

    /// Tells every session placed here that the node is gone.
    fn lose_sessions(&self, why: &str) {
        for placed in self.placed.values() {
            placed.report.send_replace(Remote::Lost(why.to_owned()));
        }
    }

    fn status(&self, now: Timestamp, timeout: Duration) -> NodeStatus {
        let seen_recently = self.last_seen.is_some_and(|at| now.since(at) <= timeout);
        if !seen_recently {
            NodeStatus::Unreachable
        } else if self.record.draining {
            NodeStatus::Draining
        } else if self.record.cordoned {
            NodeStatus::Cordoned
        } else if self.ready {
            NodeStatus::Ready
        } else {
            NodeStatus::NotReady
        }
    }

    fn view(&self, now: Timestamp, timeout: Duration) -> NodeView {
        NodeView {
            name: self.record.name.clone(),
            status: self.status(now, timeout),
            reasons: self.reasons.clone(),
            labels: self.record.labels.clone(),
            capabilities: self.record.capabilities.clone(),
            config_version: self.config_version,
            config_error: self.config_error.clone(),
            agents: u32::try_from(self.agents()).unwrap_or(u32::MAX),
            joined_at: self.record.joined_at,
            last_seen: self.last_seen,
            credential_expires_at: self.record.credential_expires_at,
        }
    }
}

#[derive(Default)]
struct State {
    nodes: HashMap<String, Live>,
    tokens: HashMap<String, JoinTokenRecord>,
    /// Credential digest → node name (current and, until their grace ends, replaced ones).
    credentials: HashMap<String, String>,
}

impl State {
    fn live_mut(&mut self, name: &str) -> Result<&mut Live, NodeError> {
        self.nodes
            .get_mut(name)
            .ok_or_else(|| NodeError::NotFound(name.to_owned()))
    }

    fn add_credentials(&mut self, record: &NodeRecord) {
        self.credentials
            .insert(record.credential_hash.clone(), record.name.clone());
        if let Some((hash, _)) = &record.previous_credential {
            self.credentials.insert(hash.clone(), record.name.clone());
        }
    }

    fn forget_credentials(&mut self, record: &NodeRecord) {
        self.credentials.remove(&record.credential_hash);
        if let Some((hash, _)) = &record.previous_credential {
            self.credentials.remove(hash);
        }
    }
}

pub struct NodeService {
    store: Store,
    clock: Arc<dyn Clock>,
    timings: NodeTimings,
    state: Mutex<State>,
    /// The current node config; heartbeats wait on it.
    config: watch::Sender<NodeConfig>,
    alerts: Arc<AlertHub>,
}

impl std::fmt::Debug for NodeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeService")
            .field("timings", &self.timings)
            .finish_non_exhaustive()
    }
}

impl NodeService {
    /// Loads the nodes, join tokens and config from the store, and starts
    /// the watch that raises `node_unreachable` alerts (until `shutdown`).
    pub async fn load(
        store: Store,
        clock: Arc<dyn Clock>,
        timings: NodeTimings,
        alerts: Arc<AlertHub>,
        registry: &Registry,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let (nodes, tokens, config) = tokio::try_join!(
            store.list_nodes(),
            store.list_join_tokens(),
            store.get_node_config()
        )?;
        let mut state = State::default();
        for record in nodes {
            state.add_credentials(&record);
            state.nodes.insert(record.name.clone(), Live::new(record));
        }
        state.tokens = tokens.into_iter().map(|t| (t.id.clone(), t)).collect();
        let service = Arc::new(Self {
            store,
            clock,
            timings,
            state: Mutex::new(state),
            config: watch::Sender::new(config.unwrap_or_default()),
            alerts,
        });
        let weak = Arc::downgrade(&service);
        registry.collector(move || weak.upgrade().map(|s| s.metrics()).unwrap_or_default());
        let watcher = Arc::downgrade(&service);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match watcher.upgrade() {
                    Some(service) => service.watch_unreachable(),
                    None => return,
                }
            }
        });
        Ok(service)
    }

    pub fn timings(&self) -> NodeTimings {
        self.timings
    }

    /// A new join token; the answer is the only place its secret appears.
    pub async fn create_join_token(
        &self,
        by: &Identity,
        req: CreateJoinTokenRequest,
    ) -> Result<JoinTokenCreated, NodeError> {
        by.require(Scope::Admin)?;
        let ttl = req.ttl_seconds.unwrap_or(DEFAULT_JOIN_TTL);
        if !JOIN_TTL_RANGE.contains(&ttl) {
            return Err(NodeError::Invalid(format!(
                "ttl_seconds must be from {} to {} (a week), not {ttl}",
                JOIN_TTL_RANGE.start(),
                JOIN_TTL_RANGE.end()
            )));
        }
        let max_uses = match req.max_uses {
            None => Some(1),
            Some(0) => None,
            Some(n) => Some(n),
        };
        let id = random_secret(4);
        let secret = format!("{JOIN_TOKEN_PREFIX}{id}_{}", random_secret(24));
        let now = self.clock.now();
        let record = JoinTokenRecord {
            id: id.clone(),
            hash: hash_token(&secret),
            created_at: now,
            created_by: by.user.clone(),
            expires_at: now.plus(Duration::from_secs(ttl)),
            max_uses,
            uses: 0,
            used_by: Vec::new(),
            revoked: false,
        };
        self.store.put_join_token(record.clone()).await?;
        let view = record.view(now);
        self.state.lock().tokens.insert(id, record);
        tracing::info!(token_id = %view.id, by = %by.user, expires_at = %view.expires_at, outcome = "ok", "join token created");
        Ok(JoinTokenCreated {
            token: secret,
            view,
        })
    }

    pub fn list_join_tokens(&self, by: &Identity) -> Result<Vec<JoinTokenView>, NodeError> {
        by.require(Scope::Admin)?;
        let now = self.clock.now();
        let mut views: Vec<JoinTokenView> = self
            .state
            .lock()
            .tokens
            .values()
            .map(|t| t.view(now))
            .collect();
        views.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(views)
    }

    /// Revokes a join token: no node joins with it any more (nodes that
    /// joined with it keep their credentials).
    pub async fn revoke_join_token(
        &self,
        by: &Identity,
        id: &str,
    ) -> Result<JoinTokenView, NodeError> {
        by.require(Scope::Admin)?;
        let record = {
            let mut state = self.state.lock();
            let token = state
                .tokens
                .get_mut(id)
                .ok_or_else(|| NodeError::TokenNotFound(id.to_owned()))?;
            token.revoked = true;
            token.clone()
        };
        self.store.put_join_token(record.clone()).await?;
        tracing::info!(token_id = %id, by = %by.user, outcome = "ok", "join token revoked");
        Ok(record.view(self.clock.now()))
    }

    /// A node exchanges a join token for its credential.
    pub async fn join(&self, req: JoinRequest) -> Result<NodeCredential, NodeError> {
        validate_node_name(&req.name).map_err(NodeError::Invalid)?;
        for (key, value) in &req.labels {
            validate_label(key, value).map_err(NodeError::Invalid)?;
        }
        if req.capabilities.isolation.is_empty() {
            return Err(NodeError::Invalid(
                "the node can run no isolation level (none, process or container): it cannot take agents".into(),
            ));
        }
        let id = req
            .token
            .strip_prefix(JOIN_TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id.to_owned())
            .ok_or_else(|| {
                NodeError::JoinRefused(
                    "not a join token (they look like rfj_…): create one with 'reactor-fabric node token create'".into(),
                )
            })?;
        let now = self.clock.now();
        let secret = format!("{NODE_CREDENTIAL_PREFIX}{}", random_secret(32));
        let expires_at = now.plus(self.timings.credential_ttl);
        // Checked and counted under one lock: a single-use token admits one
        // node however many join at once.
        let (token, record) = {
            let mut state = self.state.lock();
            if state.nodes.contains_key(&req.name) {
                return Err(NodeError::NameTaken(req.name));
            }
            let token = state
                .tokens
                .get_mut(&id)
                .filter(|t| t.hash == hash_token(&req.token))
                .ok_or_else(|| {
                    NodeError::JoinRefused(
                        "unknown join token: create one with 'reactor-fabric node token create'"
                            .into(),
                    )
                })?;
            if let Some(why) = token.refusal(now) {
                return Err(NodeError::JoinRefused(why.into()));
            }
            token.uses += 1;
            token.used_by.push(req.name.clone());
            let token = token.clone();
            let record = NodeRecord {
                name: req.name.clone(),
                labels: req.labels,
                capabilities: req.capabilities,
                joined_at: now,
                join_token: id.clone(),
                credential_hash: hash_token(&secret),
                credential_expires_at: expires_at,
                previous_credential: None,
                cordoned: false,
                draining: false,
            };
            state.add_credentials(&record);
            let mut live = Live::new(record.clone());
            live.last_seen = Some(now);
            live.reasons = vec!["joined; waiting for its first heartbeat".into()];
            state.nodes.insert(record.name.clone(), live);
            (token, record)
        };
        let stored = async {
            self.store.put_join_token(token).await?;
            self.store.put_node(record.clone()).await
        };
        if let Err(e) = stored.await {
            let mut state = self.state.lock();
            state.forget_credentials(&record);
            state.nodes.remove(&record.name);
            if let Some(t) = state.tokens.get_mut(&id) {
                t.uses = t.uses.saturating_sub(1);
                t.used_by.retain(|n| n != &record.name);
            }
            return Err(e.into());
        }
        tracing::info!(node = %record.name, token_id = %id, hostname = %record.capabilities.hostname, outcome = "ok", "node joined");
        Ok(self.credential_answer(record.name, secret, expires_at))
    }

    fn credential_answer(
        &self,
        name: String,
        credential: String,
        expires_at: Timestamp,
    ) -> NodeCredential {
        NodeCredential {
            name,
            credential,
            expires_at,
            heartbeat_interval_ms: millis(self.timings.heartbeat_interval),
            heartbeat_timeout_ms: millis(self.timings.heartbeat_timeout),
        }
    }

    /// The node a credential belongs to, if it is `name`'s and valid now.
    pub fn authenticate(&self, name: &str, credential: &str) -> Result<(), NodeError> {
        const REFUSED: &str = "invalid or expired node credential: the node was removed, or its credential expired; join it again with a new token ('reactor-fabric node token create')";
        if !credential.starts_with(NODE_CREDENTIAL_PREFIX) {
            return Err(NodeError::Unauthorized(REFUSED));
        }
        let hash = hash_token(credential);
        let now = self.clock.now();
        let state = self.state.lock();
        let owner = state.credentials.get(&hash).filter(|owner| *owner == name);
        let live = owner.and_then(|owner| state.nodes.get(owner));
        let valid = live.is_some_and(|live| {
            let r = &live.record;
            if r.credential_hash == hash {
                now < r.credential_expires_at
            } else {
                r.previous_credential
                    .as_ref()
                    .is_some_and(|(h, until)| *h == hash && now < *until)
            }
        });
        if valid {
            Ok(())
        } else {
            Err(NodeError::Unauthorized(REFUSED))
        }
    }

    /// A new credential for `name` (already authenticated); the one it
    /// replaces keeps working for [`RENEWAL_GRACE`].
    pub async fn renew(&self, name: &str) -> Result<NodeCredential, NodeError> {
        let now = self.clock.now();
        let secret = format!("{NODE_CREDENTIAL_PREFIX}{}", random_secret(32));
        let expires_at = now.plus(self.timings.credential_ttl);
        let record = {
            let mut state = self.state.lock();
            let live = state.live_mut(name)?;
            let old = live.record.clone();
            let grace_end = now
                .plus(RENEWAL_GRACE)
                .min(live.record.credential_expires_at);
            live.record.previous_credential =
                Some((live.record.credential_hash.clone(), grace_end));
            live.record.credential_hash = hash_token(&secret);
            live.record.credential_expires_at = expires_at;
            let record = live.record.clone();
            state.forget_credentials(&old);
            state.add_credentials(&record);
            record
        };
        self.store.put_node(record).await?;
        tracing::info!(node = %name, expires_at = %expires_at, outcome = "ok", "node credential renewed");
        Ok(self.credential_answer(name.to_owned(), secret, expires_at))
    }

    /// A node reports in (already authenticated). Answers at once with a
    /// config the node does not run yet, else after `wait_ms`.
    pub async fn heartbeat(&self, name: &str, hb: Heartbeat) -> Result<HeartbeatReply, NodeError> {
        let wait = Duration::from_millis(hb.wait_ms).min(MAX_WAIT);
        let mut config_rx = self.config.subscribe();
        let (applied, refused, capabilities_changed, mut sessions_rx) = {
            let mut state = self.state.lock();
            let live = state.live_mut(name)?;
            if live.unreachable {
                tracing::info!(node = %name, outcome = "ok", "node reachable again");
            }
            live.unreachable = false;
            live.last_seen = Some(self.clock.now());
            live.ready = hb.ready;
            live.reasons = hb.reasons;
            live.config_version = hb.config_version;
            if let Some(rejection) = &hb.config_error
                && live.config_error.as_ref() != Some(rejection)
            {
                tracing::warn!(node = %name, version = rejection.version, error = %rejection.error, "node refused a config");
            }
            live.config_error = hb.config_error;
            for report in hb.sessions {
                if let Some(placed) = live.placed.get(&report.agent)
                    && placed.assignment.session == report.session
                {
                    placed.report.send_replace(Remote::Reported(report.state));
                }
            }
            let changed = hb.capabilities.filter(|c| *c != live.record.capabilities);
            if let Some(capabilities) = &changed {
                live.record.capabilities = capabilities.clone();
            }
            (
                live.config_version,
                live.config_error.as_ref().map(|r| r.version),
                changed.map(|_| live.record.clone()),
                live.sessions_version.subscribe(),
            )
        };
        if let Some(record) = capabilities_changed {
            self.store.put_node(record).await?;
        }
        let wanted =
            |config: &NodeConfig| config.version != applied && Some(config.version) != refused;
        let has = hb.sessions_version;
        let idle =
            !wanted(&config_rx.borrow_and_update()) && *sessions_rx.borrow_and_update() == has;
        if idle && !wait.is_zero() {
            let news = async {
                tokio::select! {
                    _ = config_rx.wait_for(|c| wanted(c)) => {}
                    _ = sessions_rx.wait_for(|v| *v != has) => {}
                }
            };
            let _ = tokio::time::timeout(wait, news).await;
        }
        let config = self.config.borrow().clone();
        let mut state = self.state.lock();
        let live = state.live_mut(name)?;
        // Seen at the answer too: a long poll is contact all along.
        live.last_seen = Some(self.clock.now());
        let sessions = (*live.sessions_version.borrow() != has).then(|| live.session_set());
        Ok(HeartbeatReply {
            config: wanted(&config).then_some(config),
            credential_expires_at: live.record.credential_expires_at,
            sessions,
        })
    }

    pub fn list(&self, by: &Identity) -> Result<Vec<NodeView>, NodeError> {
        by.require(Scope::Admin)?;
        let now = self.clock.now();
        let mut views: Vec<NodeView> = self
            .state
            .lock()
            .nodes
            .values()
            .map(|l| l.view(now, self.timings.heartbeat_timeout))
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(views)
    }

    pub fn get(&self, by: &Identity, name: &str) -> Result<NodeView, NodeError> {
        by.require(Scope::Admin)?;
        let now = self.clock.now();
        Ok(self
            .state
            .lock()
            .live_mut(name)?
            .view(now, self.timings.heartbeat_timeout))
    }

    /// Sets a node's scheduling marks: `cordon` (no new agents) and `drain`
    /// (its agents are moved off; implies cordoned). Undrain and uncordon
    /// clear both.
    pub async fn set_schedulable(
        &self,
        by: &Identity,
        name: &str,
        cordoned: bool,
        draining: bool,
    ) -> Result<NodeView, NodeError> {
        by.require(Scope::Admin)?;
        let record = {
            let mut state = self.state.lock();
            let live = state.live_mut(name)?;
            live.record.cordoned = cordoned || draining;
            live.record.draining = draining;
            live.draining.send_replace(draining);
            live.record.clone()
        };
        self.store.put_node(record).await?;
        tracing::info!(node = %name, by = %by.user, cordoned, draining, outcome = "ok", "node scheduling changed");
        self.get(by, name)
    }

    /// Removes a node: its credential stops working at once.
    pub async fn remove(&self, by: &Identity, name: &str) -> Result<(), NodeError> {
        by.require(Scope::Admin)?;
        let removed = {
            let mut state = self.state.lock();
            let live = state
                .nodes
                .remove(name)
                .ok_or_else(|| NodeError::NotFound(name.to_owned()))?;
            state.forget_credentials(&live.record);
            live
        };
        if let Err(e) = self.store.delete_node(name.to_owned()).await {
            // Still stored: keep it known (and its credential valid) rather
            // than have it come back at the next start.
            let mut state = self.state.lock();
            state.add_credentials(&removed.record);
            state.nodes.insert(name.to_owned(), removed);
            return Err(e.into());
        }
        removed.lose_sessions(&format!("node {name} was removed"));
        tracing::info!(node = %name, by = %by.user, outcome = "ok", "node removed");
        Ok(())
    }

    pub fn config(&self, by: &Identity) -> Result<NodeConfig, NodeError> {
        by.require(Scope::Admin)?;
        Ok(self.config.borrow().clone())
    }

    /// Replaces the node config with a new version; nodes get it with their
    /// next heartbeat (at once: their long polls are woken).
    pub async fn set_config(
        &self,
        by: &Identity,
        spec: NodeConfigSpec,
    ) -> Result<NodeConfig, NodeError> {
        by.require(Scope::Admin)?;
        spec.validate().map_err(NodeError::Invalid)?;
        let config = NodeConfig {
            version: self.config.borrow().version + 1,
            spec,
            updated_at: Some(self.clock.now()),
            updated_by: Some(by.user.clone()),
        };
        self.store.put_node_config(config.clone()).await?;
        self.config.send_replace(config.clone());
        tracing::info!(version = config.version, by = %by.user, outcome = "ok", "node config set");
        Ok(config)
    }

    /// Where an agent's next session runs: `Ok(None)` here on the
    /// orchestrator, `Ok(Some(node))` on a worker node. `config.node` names
    /// the node; `config.node_selector` picks among the ready nodes whose
    /// labels match; with neither, the least loaded place (agents per CPU)
    /// that runs the agent's isolation level wins, this orchestrator on a
    /// tie (`local` is `None` when the agent may not run here). `Err` says
    /// why no node will do.
    pub fn place(
        &self,
        config: &AgentConfig,
        local: Option<LocalLoad>,
    ) -> Result<Option<String>, String> {
        let now = self.clock.now();
        let timeout = self.timings.heartbeat_timeout;
        let state = self.state.lock();
        let level = config.isolation.level;
        if let Some(name) = &config.node {
            let live = state.nodes.get(name).ok_or_else(|| {
                format!("no node {name:?}: reactor-fabric node list shows the nodes")
            })?;
            let status = live.status(now, timeout);
            if status != NodeStatus::Ready {
                return Err(format!(
                    "node {name} is {}: it takes no agents now",
                    status.as_str()
                ));
            }
            if !live.record.capabilities.isolation.contains(&level) {
                return Err(format!("node {name} cannot run isolation level {level}"));
            }
            return Ok(Some(name.clone()));
        }
        let load = |agents: usize, cpus: u32| (agents + 1) as f64 / f64::from(cpus.max(1));
        let mut best: Option<(f64, Option<&str>)> = local
            .filter(|_| config.node_selector.is_empty())
            .map(|l| (load(l.agents, l.cpus), None));
        for live in state.nodes.values() {
            let labels = &live.record.labels;
            let fits = live.status(now, timeout) == NodeStatus::Ready
                && live.record.capabilities.isolation.contains(&level)
                && config
                    .node_selector
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v));
            if !fits {
                continue;
            }
            let score = load(live.agents(), live.record.capabilities.cpus);
            if best.is_none_or(|(b, _)| score < b) {
                best = Some((score, Some(live.record.name.as_str())));
            }
        }
        match best {
            Some((_, node)) => Ok(node.map(str::to_owned)),
            None => {
                let selector: Vec<String> = config
                    .node_selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                Err(format!(
                    "no ready node with labels {} runs isolation level {level}: see 'reactor-fabric node list'",
                    selector.join(",")
                ))
            }
        }
    }

    /// Places a session on `node`: the node gets it with its next heartbeat
    /// (at once: its long poll is woken). It replaces any earlier session of
    /// the agent there.
    pub fn assign(
        &self,
        node: &str,
        assignment: SessionAssignment,
    ) -> Result<Placement, NodeError> {
        let mut state = self.state.lock();
        let live = state.live_mut(node)?;
        let (report, report_rx) = watch::channel(Remote::Pending);
        live.placed.insert(
            assignment.agent.id.clone(),
            Placed {
                assignment,
                stopping: false,
                report,
            },
        );
        live.sessions_changed();
        Ok(Placement {
            report: report_rx,
            draining: live.draining.subscribe(),
        })
    }

    /// Asks `node` to stop an agent's session (it reports the end).
    pub fn stop_session(&self, node: &str, agent: &AgentId, session: u32) {
        let mut state = self.state.lock();
        let Ok(live) = state.live_mut(node) else {
            return;
        };
        if let Some(placed) = live.placed.get_mut(agent)
            && placed.assignment.session == session
            && !placed.stopping
        {
            placed.stopping = true;
            live.sessions_changed();
        }
    }

    /// Forgets a session placed on `node` (it ended).
    pub fn release(&self, node: &str, agent: &AgentId, session: u32) {
        let mut state = self.state.lock();
        let Ok(live) = state.live_mut(node) else {
            return;
        };
        if live
            .placed
            .get(agent)
            .is_some_and(|p| p.assignment.session == session)
        {
            let was_running = live.placed.remove(agent).is_some_and(|p| !p.stopping);
            if was_running {
                live.sessions_changed();
            }
        }
    }

    /// Raises `node_unreachable` once for each node that stopped reporting.
    fn watch_unreachable(&self) {
        let now = self.clock.now();
        let lost: Vec<(String, Option<Timestamp>)> = {
            let mut state = self.state.lock();
            state
                .nodes
                .values_mut()
                .filter(|l| {
                    !l.unreachable
                        && l.last_seen.is_some()
                        && l.status(now, self.timings.heartbeat_timeout) == NodeStatus::Unreachable
                })
                .map(|l| {
                    l.unreachable = true;
                    l.lose_sessions(&format!(
                        "node {} is unreachable: no heartbeat for more than {}s",
                        l.record.name,
                        self.timings.heartbeat_timeout.as_secs()
                    ));
                    (l.record.name.clone(), l.last_seen)
                })
                .collect()
        };
        for (name, last_seen) in lost {
            self.alerts.raise(
                ALERT_NODE_UNREACHABLE,
                &format!("node:{name}"),
                format!(
                    "node {name} has not reported for more than {}s: it is unreachable",
                    self.timings.heartbeat_timeout.as_secs()
                ),
                serde_json::json!({ "node": name, "last_seen": last_seen }),
            );
        }
    }

    /// `agent_fabric_nodes{status}` and the per-node gauges.
    fn metrics(&self) -> Vec<Collected> {
        let now = self.clock.now();
        let timeout = self.timings.heartbeat_timeout;
        let mut by_status: BTreeMap<NodeStatus, u64> =
            NodeStatus::ALL.iter().map(|s| (*s, 0)).collect();
        let (mut age, mut agents, mut cpus, mut memory) = (vec![], vec![], vec![], vec![]);
        for live in self.state.lock().nodes.values() {
            *by_status.entry(live.status(now, timeout)).or_default() += 1;
            let node = live.record.name.clone();
            if let Some(seen) = live.last_seen {
                age.push(Sample::new(now.since(seen).as_secs_f64()).with("node", node.clone()));
            }
            agents.push(Sample::new(live.agents() as f64).with("node", node.clone()));
            cpus.push(
                Sample::new(f64::from(live.record.capabilities.cpus)).with("node", node.clone()),
            );
            memory
                .push(Sample::new(live.record.capabilities.memory_bytes as f64).with("node", node));
        }
        let gauge = |name, help, samples| Collected {
            name,
            help,
            kind: "gauge",
            samples,
        };
        vec![
            gauge(
                "agent_fabric_nodes",
                "Worker nodes by status.",
                by_status
                    .into_iter()
                    .map(|(s, n)| Sample::new(n as f64).with("status", s.as_str()))
                    .collect(),
            ),
            gauge(
                "agent_fabric_node_heartbeat_age_seconds",
                "Seconds since each node's last heartbeat.",
                age,
            ),
            gauge(
                "agent_fabric_node_agents",
                "Agents running on each node.",
                agents,
            ),
            gauge("agent_fabric_node_cpus", "CPUs each node reports.", cpus),
            gauge(
                "agent_fabric_node_memory_bytes",
                "Memory each node reports.",
                memory,
            ),
        ]
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
