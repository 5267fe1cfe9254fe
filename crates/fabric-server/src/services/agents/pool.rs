//! Warm pools (FR-LIFE-6): pre-started sandboxes (`process`) and pre-created,
//! started containers with their sidecars (`container`), so a session takes
//! one instead of building it from scratch.
//!
//! A session that takes a sandbox sets its own cgroup limits on it; one that
//! takes a container changes its limits with `docker update`. Mounts cannot
//! change on either, so an agent with extra `read_only_paths` or its own
//! `filesystem_root` (or, for containers, its own `image` or `command`) always
//! starts cold.
//!
//! Each pool holds as many idle items as the running agents of its level ask
//! for in `pool.min_idle`, summed. A filler task tops it up after every take
//! and trims it when agents stop; [`Warm`] is what differs per level.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio_util::sync::CancellationToken;

use fabric_runtime::sandbox::{HelperCommand, Sandbox, SandboxConfig};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::container::{ContainerError, DockerRuntime};
use super::session::SessionError;

/// Pause between a take and the refill it triggers; see `WarmPool::fill`.
const REFILL_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// How one level makes and discards the items of its pool.
pub(super) trait Warm: Send + Sync + 'static {
    type Item: Send + 'static;
    /// What the log calls an item.
    const WHAT: &'static str;
    /// Why an item could not be made (logged; the pool retries with backoff).
    type Error: std::error::Error + Send + 'static;
    fn make(&self) -> impl Future<Output = Result<Self::Item, Self::Error>> + Send;
    fn discard(&self, item: Self::Item) -> impl Future<Output = ()> + Send;
}

/// Sandboxes with default limits, workdirs under the agents dir.
pub(super) struct SandboxKind {
    pub(super) helper: Option<HelperCommand>,
    pub(super) root: PathBuf,
    pub(super) cgroup_parent: PathBuf,
}

impl SandboxKind {
    /// A sandbox configured as the pool makes them (default limits).
    pub(super) fn config(&self, name: String, workdir: PathBuf) -> Option<SandboxConfig> {
        let helper = self.helper.clone()?;
        let mut config = SandboxConfig::new(name, workdir, helper);
        config.cgroup_parent = self.cgroup_parent.clone();
        Some(config)
    }
}

impl Warm for SandboxKind {
    type Item = Sandbox;
    const WHAT: &'static str = "sandbox";
    type Error = SessionError;

    async fn make(&self) -> Result<Sandbox, SessionError> {
        let name = format!("pool-{:08x}", rand::random::<u32>());
        let config = self
            .config(name.clone(), self.root.join(&name))
            .ok_or(SessionError::NoSandboxHelper)?;
        Sandbox::create(config)
            .await
            .map_err(SessionError::CreateSandbox)
    }

    async fn discard(&self, sandbox: Sandbox) {
        let _ = sandbox.destroy().await;
    }
}

/// Containers of the default agent image with their sidecars.
pub(super) struct ContainerKind {
    pub(super) docker: Arc<DockerRuntime>,
}

impl Warm for ContainerKind {
    type Item = super::container::ContainerPair;
    const WHAT: &'static str = "container";
    type Error = ContainerError;

    async fn make(&self) -> Result<Self::Item, ContainerError> {
        self.docker.create_pooled().await
    }

    async fn discard(&self, item: Self::Item) {
        self.docker.remove(&item).await;
    }
}

pub(super) struct WarmPool<K: Warm> {
    pub(super) kind: K,
    idle: Mutex<Vec<K::Item>>,
    target: AtomicUsize,
    wake: Notify,
}

impl<K: Warm> WarmPool<K> {
    pub(super) fn new(kind: K) -> Arc<Self> {
        Arc::new(Self {
            kind,
            idle: Mutex::new(Vec::new()),
            target: AtomicUsize::new(0),
            wake: Notify::new(),
        })
    }

    /// Changes how many idle items to keep by `delta`.
    pub(super) fn adjust_target(&self, delta: isize) {
        if delta == 0 {
            return;
        }
        let _ = self
            .target
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add_signed(delta))
            });
        self.wake.notify_one();
    }

    /// An idle item, if there is one; the filler replaces it.
    pub(super) fn take(&self) -> Option<K::Item> {
        let taken = self.idle.lock().pop();
        if taken.is_some() {
            self.wake.notify_one();
        }
        taken
    }

    pub(super) fn idle(&self) -> usize {
        self.idle.lock().len()
    }

    /// Keeps the pool at its target until `shutdown`, then discards what is idle.
    pub(super) async fn fill(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let wanted = self.target.load(Ordering::SeqCst);
            let have = self.idle();
            if have > wanted {
                let extra = self.idle.lock().pop();
                if let Some(item) = extra {
                    self.kind.discard(item).await;
                }
                continue;
            }
            if have < wanted && failures < 5 {
                // Not raced against shutdown: a container dropped half-made would be left behind.
                match self.kind.make().await {
                    Ok(item) => {
                        failures = 0;
                        self.idle.lock().push(item);
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, "cannot pre-start a pooled {}", K::WHAT);
                    }
                }
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => { failures = 0; }
                () = shutdown.cancelled() => break,
            }
            // Woken by a take: let the spawn that took the item finish first.
            // Making a sandbox forks the server, which stalls its threads for
            // a few ms (page tables copied, then copy-on-write faults): a
            // refill started at once lands in that spawn's own latency.
            tokio::select! {
                () = tokio::time::sleep(REFILL_DELAY) => {}
                () = shutdown.cancelled() => break,
            }
        }
        let idle: Vec<_> = self.idle.lock().drain(..).collect();
        for item in idle {
            self.kind.discard(item).await;
        }
    }
}
