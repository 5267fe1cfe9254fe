//! Warm pool of pre-started sandboxes (FR-LIFE-6): a `process` session takes
//! one instead of building namespaces and cgroups from scratch, then sets its
//! own limits on it (cgroup limits can change on a live sandbox; mounts
//! cannot, so an agent with extra `read_only_paths` or its own
//! `filesystem_root` always starts cold).
//!
//! The pool holds as many idle sandboxes as the running agents ask for in
//! `pool.min_idle`, summed. A filler task tops it up after every take and
//! trims it when agents stop.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fabric_runtime::sandbox::{HelperCommand, Sandbox, SandboxConfig};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

pub(super) struct WarmPool {
    idle: Mutex<Vec<Sandbox>>,
    target: AtomicUsize,
    wake: Notify,
    helper: Option<HelperCommand>,
    root: PathBuf,
    cgroup_parent: PathBuf,
}

impl WarmPool {
    pub(super) fn new(
        helper: Option<HelperCommand>,
        root: PathBuf,
        cgroup_parent: PathBuf,
    ) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Vec::new()),
            target: AtomicUsize::new(0),
            wake: Notify::new(),
            helper,
            root,
            cgroup_parent,
        })
    }

    /// Changes how many idle sandboxes to keep by `delta`.
    pub(super) fn adjust_target(&self, delta: isize) {
        let _ = self
            .target
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add_signed(delta))
            });
        self.wake.notify_one();
    }

    /// An idle sandbox, if there is one; the filler replaces it.
    pub(super) fn take(&self) -> Option<Sandbox> {
        let taken = self.idle.lock().pop();
        if taken.is_some() {
            self.wake.notify_one();
        }
        taken
    }

    pub(super) fn idle(&self) -> usize {
        self.idle.lock().len()
    }

    /// A sandbox configured as the pool makes them (default limits).
    pub(super) fn config(&self, name: String, workdir: PathBuf) -> Option<SandboxConfig> {
        let helper = self.helper.clone()?;
        let mut config = SandboxConfig::new(name, workdir, helper);
        config.cgroup_parent = self.cgroup_parent.clone();
        Some(config)
    }

    /// Keeps the pool at its target until `shutdown`, then destroys what is idle.
    pub(super) async fn fill(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let wanted = self.target.load(Ordering::SeqCst);
            let have = self.idle();
            if have > wanted {
                let extra = self.idle.lock().pop();
                if let Some(sandbox) = extra {
                    let _ = sandbox.destroy().await;
                }
                continue;
            }
            if have < wanted && failures < 5 {
                let name = format!("pool-{:08x}", rand::random::<u32>());
                let Some(config) = self.config(name.clone(), self.root.join(&name)) else {
                    break;
                };
                match Sandbox::create(config).await {
                    Ok(sandbox) => {
                        failures = 0;
                        self.idle.lock().push(sandbox);
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, "cannot pre-start a pooled sandbox");
                    }
                }
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => { failures = 0; }
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        let idle: Vec<_> = self.idle.lock().drain(..).collect();
        for sandbox in idle {
            let _ = sandbox.destroy().await;
        }
    }
}
