//! Disk quotas on an agent's working directories (`isolation.disk_mb`).
//!
//! The quota is measured, not enforced by the filesystem: the host's
//! filesystem (ext4 here, whatever a user runs on) has no per-directory
//! quota without project quotas set up at mkfs/mount time, and a
//! loop-mounted image per agent would cost a `mkfs` per sandbox and pin
//! its size. So the fabric measures what the agent's task directories hold
//! ([`DiskQuota::exceeded`]) while a task runs and stops the task once the
//! total is over the limit; the caller reports it as `disk_quota_exceeded`,
//! and measures once more ([`DiskQuota::usage`]) when a task ends, so that a
//! task that wrote past the limit within one interval fails too.
//! Between two measurements a fast writer can go past the limit by what it
//! writes in one interval (250 ms on the host, 1 s in a container, longer for
//! big trees); the sandbox's file-size rlimit bounds any single file.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "docker")]
use crate::container::ContainerShell;

/// Shortest pause between two measurements of a host directory.
const HOST_POLL: Duration = Duration::from_millis(250);
/// Shortest pause between two measurements in a container (each is a `docker exec`).
#[cfg(feature = "docker")]
const CONTAINER_POLL: Duration = Duration::from_secs(1);
/// Longest pause, for trees that take long to walk.
const MAX_POLL: Duration = Duration::from_secs(10);
/// Measuring may take at most 1/this of the time.
const MEASURE_SHARE: u32 = 20;

/// Where an agent's task directories are measured.
#[derive(Debug, Clone)]
pub enum DiskMeter {
    /// A directory on the host (levels `none` and `process`): every task's
    /// directory is below it.
    Host(PathBuf),
    /// The container's workspace volume (level `container`).
    #[cfg(feature = "docker")]
    Container(Box<ContainerShell>),
}

/// An agent's disk quota and how to measure it. Clones share their last
/// measurement: the tasks an agent runs at once watch one tree, and walk it
/// once per interval between them, not once each.
#[derive(Debug, Clone)]
pub struct DiskQuota {
    meter: DiskMeter,
    limit_bytes: u64,
    /// When the tree was last measured, and what it held then.
    last: Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, u64)>>>,
}

impl DiskQuota {
    pub fn new(meter: DiskMeter, limit_mb: u64) -> Self {
        Self {
            meter,
            limit_bytes: limit_mb.saturating_mul(1024 * 1024),
            last: Arc::default(),
        }
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// Bytes the agent's task directories take on disk now.
    pub async fn usage(&self) -> io::Result<u64> {
        match &self.meter {
            DiskMeter::Host(root) => {
                let root = root.clone();
                tokio::task::spawn_blocking(move || directory_usage(&root))
                    .await
                    .map_err(io::Error::other)?
            }
            #[cfg(feature = "docker")]
            DiskMeter::Container(shell) => shell.workspace_usage().await,
        }
    }

    /// The usage measured less than `fresh_for` ago, and not before
    /// `not_before` (by this or another clone), else measured now; one
    /// measurement at a time. `not_before` keeps a watcher from a measurement
    /// taken before it began (of files an earlier task wrote and that are gone).
    async fn recent_usage(
        &self,
        fresh_for: Duration,
        not_before: tokio::time::Instant,
    ) -> io::Result<u64> {
        let mut last = self.last.lock().await;
        if let Some((at, used)) = *last
            && at >= not_before
            && at.elapsed() < fresh_for
        {
            return Ok(used);
        }
        let used = self.usage().await?;
        *last = Some((tokio::time::Instant::now(), used));
        Ok(used)
    }

    /// Resolves with the usage once it is over the limit; never while it is
    /// not. A measurement that fails is logged and tried again later.
    pub async fn exceeded(&self) -> u64 {
        let floor = match &self.meter {
            DiskMeter::Host(_) => HOST_POLL,
            #[cfg(feature = "docker")]
            DiskMeter::Container(_) => CONTAINER_POLL,
        };
        let mut warned = false;
        let watching_since = tokio::time::Instant::now();
        loop {
            let started = tokio::time::Instant::now();
            match self.recent_usage(floor, watching_since).await {
                Ok(used) if used > self.limit_bytes => return used,
                Ok(_) => {}
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(meter = ?self.meter, error = %e, "cannot measure an agent's disk use");
                }
                Err(_) => {}
            }
            let pause = (started.elapsed() * MEASURE_SHARE).clamp(floor, MAX_POLL);
            tokio::time::sleep(pause).await;
        }
    }
}

/// Bytes allocated on disk to `root` and everything below it, as `du`
/// counts (allocated blocks, symbolic links not followed). Entries that
/// vanish while it walks are skipped; a missing `root` is 0.
pub fn directory_usage(root: &std::path::Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if dir == root => return Err(e),
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clones_share_a_recent_measurement() {
        let dir = tempfile::tempdir().unwrap();
        let quota = DiskQuota::new(DiskMeter::Host(dir.path().to_path_buf()), 1);
        let other = quota.clone();
        let minute = Duration::from_secs(60);
        let start = tokio::time::Instant::now();
        let before = quota.recent_usage(minute, start).await.unwrap();
        std::fs::write(dir.path().join("data"), vec![7u8; 2 << 20]).unwrap();
        // Fresh enough: the clone reuses it rather than walking again.
        assert_eq!(other.recent_usage(minute, start).await.unwrap(), before);
        // Too old: measured again, for both.
        let now = other.recent_usage(Duration::ZERO, start).await.unwrap();
        assert!(now >= before + (2 << 20), "{before} then {now}");
        assert_eq!(quota.recent_usage(minute, start).await.unwrap(), now);
        // A watcher that began after it measures for itself.
        std::fs::remove_file(dir.path().join("data")).unwrap();
        let later = tokio::time::Instant::now();
        assert!(quota.recent_usage(minute, later).await.unwrap() < now);
    }

    #[test]
    fn usage_counts_allocated_blocks_below_the_root() {
        let dir = tempfile::tempdir().unwrap();
        assert!(directory_usage(&dir.path().join("missing")).unwrap() == 0);
        let empty = directory_usage(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/data"), vec![7u8; 3 << 20]).unwrap();
        // A sparse file takes no blocks: what counts is what the disk holds.
        let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("link")).unwrap();
        let used = directory_usage(dir.path()).unwrap() - empty;
        assert!(
            (3 << 20..(3 << 20) + (1 << 20)).contains(&used),
            "about 3 MiB, got {used}"
        );
    }
}
