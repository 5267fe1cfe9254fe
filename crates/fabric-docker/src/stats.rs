//! CPU and memory use of containers, fast enough for `list`.
//!
//! dockerd answers a stats request only on its 1 s collection tick (2 s when it
//! must include the previous sample for CPU%: measured on 20.10, see
//! BENCHMARKS.md), so asking it for every container would make `list` take
//! seconds. The numbers it reports are the kernel's cgroup counters, so when the
//! daemon is on this machine we read those directly: find the container's cgroup
//! through `/proc/<pid>/cgroup` (works for cgroup v1 and v2, cgroupfs and systemd
//! drivers), sample the CPU counter twice [`CPU_WINDOW`] apart, and read memory
//! the way `docker stats` does (usage minus inactive file cache). Containers whose
//! cgroup is not visible (a remote daemon, another PID namespace) fall back to the
//! daemon's stats, all fetched concurrently.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::models::ContainerStatsResponse;

use crate::client::DockerClient;

/// The interval CPU use is averaged over on the fast path.
pub const CPU_WINDOW: Duration = Duration::from_millis(100);

/// Resource use of one container; `None` where it could not be measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// Percent of one core, averaged over the sampling window (200 = two cores busy).
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
}

/// A running container to measure: its id and its main process as the daemon reports it.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: String,
    pub pid: Option<i64>,
}

/// Usage of every target, in order; the slow daemon path only for those that need it.
pub async fn usage_of(client: &DockerClient, targets: &[Target]) -> Vec<Usage> {
    let local: Vec<Option<CgroupFiles>> = targets
        .iter()
        .map(|t| t.pid.and_then(|pid| CgroupFiles::find(pid, &t.id)))
        .collect();
    let remote = futures_util::future::join_all(targets.iter().zip(&local).map(
        |(target, files)| async move {
            match files {
                Some(_) => None,
                None => Some(match client.stats_once(&target.id).await {
                    Ok(stats) => from_daemon(&stats),
                    Err(e) => {
                        tracing::debug!(container = %target.id, error = %e, "no stats");
                        Usage::default()
                    }
                }),
            }
        },
    ));
    let fast = async {
        let first: Vec<Option<u64>> = local
            .iter()
            .map(|f| f.as_ref().and_then(CgroupFiles::cpu_nanos))
            .collect();
        let t0 = Instant::now();
        if local.iter().any(Option::is_some) {
            tokio::time::sleep(CPU_WINDOW).await;
        }
        let elapsed = t0.elapsed().as_nanos() as f64;
        local
            .iter()
            .zip(first)
            .map(|(files, before)| {
                let files = files.as_ref()?;
                let cpu_percent = match (before, files.cpu_nanos()) {
                    (Some(a), Some(b)) if elapsed > 0.0 => {
                        Some(b.saturating_sub(a) as f64 / elapsed * 100.0)
                    }
                    _ => None,
                };
                Some(Usage {
                    cpu_percent,
                    memory_bytes: files.memory_bytes(),
                })
            })
            .collect::<Vec<_>>()
    };
    let (remote, fast) = tokio::join!(remote, fast);
    remote
        .into_iter()
        .zip(fast)
        .map(|(r, f)| r.or(f).unwrap_or_default())
        .collect()
}

/// CPU% and memory as `docker stats` computes them from a daemon sample.
pub fn from_daemon(stats: &ContainerStatsResponse) -> Usage {
    let cpu = stats.cpu_stats.as_ref();
    let pre = stats.precpu_stats.as_ref();
    let total = |c: Option<&bollard::models::ContainerCpuStats>| {
        c.and_then(|c| c.cpu_usage.as_ref()?.total_usage)
    };
    let system =
        |c: Option<&bollard::models::ContainerCpuStats>| c.and_then(|c| c.system_cpu_usage);
    let cpu_percent = match (total(cpu), total(pre), system(cpu), system(pre)) {
        (Some(t), Some(pt), Some(s), Some(ps)) if s > ps && pt > 0 => {
            let cpus = cpu.and_then(|c| c.online_cpus).unwrap_or(1).max(1);
            Some(t.saturating_sub(pt) as f64 / (s - ps) as f64 * f64::from(cpus) * 100.0)
        }
        _ => None,
    };
    let memory_bytes = stats.memory_stats.as_ref().and_then(|m| {
        let usage = m.usage?;
        let inactive = m.stats.as_ref().and_then(|s| {
            s.get("total_inactive_file")
                .or_else(|| s.get("inactive_file"))
                .copied()
        });
        Some(usage.saturating_sub(inactive.unwrap_or(0)))
    });
    Usage {
        cpu_percent,
        memory_bytes,
    }
}

/// One container's cgroup on this host, read directly: the fast way to its
/// resource use and out-of-memory kills while the daemon is local.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerCgroup {
    files: CgroupFiles,
}

/// What [`ContainerCgroup::read`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// As `docker stats` counts it: usage minus inactive file cache.
    pub memory_bytes: u64,
    /// Most memory charged at once (v1 `max_usage_in_bytes`, v2 `memory.peak`).
    pub memory_peak_bytes: Option<u64>,
    pub cpu_nanos: Option<u64>,
    /// Processes and threads now.
    pub pids: Option<u64>,
}

impl ContainerCgroup {
    /// The cgroup of container `id` whose main process has host pid `pid`;
    /// `None` when it is not visible here (a remote daemon, another PID namespace).
    pub fn find(pid: i64, id: &str) -> Option<ContainerCgroup> {
        CgroupFiles::find(pid, id).map(|files| ContainerCgroup { files })
    }

    pub fn read(&self) -> CgroupUsage {
        let f = &self.files;
        CgroupUsage {
            memory_bytes: f.memory_bytes().unwrap_or(0),
            memory_peak_bytes: read_u64(&f.memory_peak),
            cpu_nanos: f.cpu_nanos(),
            pids: f.pids_current.as_deref().and_then(read_u64),
        }
    }

    /// Processes the kernel's out-of-memory killer killed in this cgroup so far
    /// (v1 `memory.oom_control`, v2 `memory.events`: `oom_kill N`, Linux 4.13+).
    pub fn oom_kills(&self) -> Option<u64> {
        stat_value(
            &std::fs::read_to_string(&self.files.oom_events).ok()?,
            "oom_kill",
        )
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The counter files of one container's cgroup on this host.
#[derive(Debug, Clone, PartialEq)]
struct CgroupFiles {
    /// cgroup v1 `cpuacct.usage` (ns) or v2 `cpu.stat` (`usage_usec`).
    cpu: CpuCounter,
    /// v1 `memory.usage_in_bytes` or v2 `memory.current`.
    memory_usage: PathBuf,
    /// `memory.stat`, for the inactive file cache to subtract.
    memory_stat: PathBuf,
    /// v1 `memory.max_usage_in_bytes` or v2 `memory.peak`.
    memory_peak: PathBuf,
    /// v1 `memory.oom_control` or v2 `memory.events`.
    oom_events: PathBuf,
    /// `pids.current`, when the pids controller is there.
    pids_current: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
enum CpuCounter {
    V1Nanos(PathBuf),
    V2Stat(PathBuf),
}

impl CgroupFiles {
    /// The cgroup files of process `pid`, provided its cgroup path names `container_id`
    /// (so a reused pid or a process from another namespace is never measured).
    fn find(pid: i64, container_id: &str) -> Option<CgroupFiles> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        CgroupFiles::from_proc(&text, container_id, Path::new("/sys/fs/cgroup"))
    }

    fn from_proc(text: &str, container_id: &str, root: &Path) -> Option<CgroupFiles> {
        if container_id.len() < 12 {
            return None;
        }
        let mut cpu = None;
        let mut memory = None;
        let mut pids = None;
        let mut unified = None;
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if !path.contains(container_id) {
                continue;
            }
            let rel = path.trim_start_matches('/');
            let list: Vec<&str> = controllers.split(',').collect();
            if list.contains(&"cpuacct") {
                cpu = [controllers, "cpuacct", "cpu,cpuacct"]
                    .iter()
                    .map(|dir| root.join(dir).join(rel).join("cpuacct.usage"))
                    .find(|p| p.exists())
                    .map(CpuCounter::V1Nanos);
            }
            if list.contains(&"memory") {
                memory = Some(root.join("memory").join(rel));
            }
            if list.contains(&"pids") {
                pids = Some(root.join("pids").join(rel).join("pids.current"));
            }
            if controllers.is_empty() {
                unified = Some(root.join(rel));
            }
        }
        if let (Some(cpu), Some(mem)) = (cpu, memory) {
            return Some(CgroupFiles {
                cpu,
                memory_usage: mem.join("memory.usage_in_bytes"),
                memory_stat: mem.join("memory.stat"),
                memory_peak: mem.join("memory.max_usage_in_bytes"),
                oom_events: mem.join("memory.oom_control"),
                pids_current: pids,
            });
        }
        // Pure v2: one hierarchy; only when it really carries the controllers.
        let dir = unified?;
        let files = CgroupFiles {
            cpu: CpuCounter::V2Stat(dir.join("cpu.stat")),
            memory_usage: dir.join("memory.current"),
            memory_stat: dir.join("memory.stat"),
            memory_peak: dir.join("memory.peak"),
            oom_events: dir.join("memory.events"),
            pids_current: Some(dir.join("pids.current")),
        };
        files.memory_usage.exists().then_some(files)
    }

    fn cpu_nanos(&self) -> Option<u64> {
        match &self.cpu {
            CpuCounter::V1Nanos(path) => std::fs::read_to_string(path).ok()?.trim().parse().ok(),
            CpuCounter::V2Stat(path) => {
                stat_value(&std::fs::read_to_string(path).ok()?, "usage_usec")
                    .map(|us| us.saturating_mul(1000))
            }
        }
    }

    fn memory_bytes(&self) -> Option<u64> {
        let usage: u64 = std::fs::read_to_string(&self.memory_usage)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(&self.memory_stat).unwrap_or_default();
        let inactive = stat_value(&stat, "total_inactive_file")
            .or_else(|| stat_value(&stat, "inactive_file"))
            .unwrap_or(0);
        Some(usage.saturating_sub(inactive))
    }
}

/// The value of `key` in a `key value` per line file (`memory.stat`, `cpu.stat`).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "b8a97203a3514e10a2d12f76d5584a12ecdb5b6d89166bbb40ba0012f0778260";

    #[test]
    fn v1_cgroup_paths_are_found() {
        let root = tempfile::tempdir().unwrap();
        let cpu_dir = root.path().join("cpuacct/docker").join(ID);
        let mem_dir = root.path().join("memory/docker").join(ID);
        std::fs::create_dir_all(&cpu_dir).unwrap();
        std::fs::create_dir_all(&mem_dir).unwrap();
        std::fs::write(cpu_dir.join("cpuacct.usage"), "31786167\n").unwrap();
        std::fs::write(mem_dir.join("memory.usage_in_bytes"), "811008\n").unwrap();
        std::fs::write(
            mem_dir.join("memory.stat"),
            "cache 0\ninactive_file 4096\ntotal_inactive_file 8192\n",
        )
        .unwrap();
        let proc = format!(
            "4:memory:/docker/{ID}\n2:cpuacct:/docker/{ID}\n1:cpu:/docker/{ID}\n0::/docker/{ID}\n"
        );
        std::fs::write(
            mem_dir.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        let files = CgroupFiles::from_proc(&proc, ID, root.path()).unwrap();
        assert_eq!(files.cpu_nanos(), Some(31_786_167));
        assert_eq!(files.memory_bytes(), Some(811_008 - 8192));
        assert_eq!(ContainerCgroup { files }.oom_kills(), Some(2));
        // Another container's process is never measured.
        assert!(CgroupFiles::from_proc(&proc, &"f".repeat(64), root.path()).is_none());
    }

    #[test]
    fn v2_cgroup_paths_are_found() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(format!("system.slice/docker-{ID}.scope"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        std::fs::write(dir.join("memory.current"), "1000000\n").unwrap();
        std::fs::write(dir.join("memory.stat"), "anon 1\ninactive_file 1000\n").unwrap();
        let proc = format!("0::/system.slice/docker-{ID}.scope\n");
        let files = CgroupFiles::from_proc(&proc, ID, root.path()).unwrap();
        assert_eq!(files.cpu_nanos(), Some(1_500_000));
        assert_eq!(files.memory_bytes(), Some(999_000));
    }

    #[test]
    fn daemon_samples_give_docker_stats_numbers() {
        let stats: ContainerStatsResponse = serde_json::from_value(serde_json::json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 3_000_000_000u64}, "system_cpu_usage": 20_000_000_000u64, "online_cpus": 2},
            "precpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000u64}, "system_cpu_usage": 18_000_000_000u64},
            "memory_stats": {"usage": 10_000_000u64, "stats": {"total_inactive_file": 1_000_000u64}}
        }))
        .unwrap();
        let usage = from_daemon(&stats);
        assert_eq!(usage.cpu_percent, Some(100.0));
        assert_eq!(usage.memory_bytes, Some(9_000_000));
    }
}
