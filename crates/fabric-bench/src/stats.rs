//! Percentiles from sorted samples, medians across repetitions, CPU time from `/proc`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;

/// Order statistics of one run's latency samples, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Summary {
    /// Sorts `samples` in place and summarises them (all zero when empty).
    pub fn of(samples: &mut [u64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Self {
            count: samples.len(),
            p50: percentile(samples, 0.50),
            p99: percentile(samples, 0.99),
            p999: percentile(samples, 0.999),
            max: samples[samples.len() - 1],
            mean: sum as f64 / samples.len() as f64,
        }
    }
}

/// Nearest-rank percentile of sorted, non-empty `sorted`: the smallest sample
/// with at least `q` of all samples at or below it.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of `values` (mean of the middle two for an even count; 0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn micros(ns: u64) -> f64 {
    ns as f64 / 1e3
}

pub fn millis(ns: u64) -> f64 {
    ns as f64 / 1e6
}

pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// CPU time (user + system) of a process, per thread name.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot {
    /// Thread name → clock ticks, summed over threads of that name.
    pub by_thread: BTreeMap<String, u64>,
}

impl CpuSnapshot {
    /// Reads `/proc/<pid>/task/*/stat`. Threads that exited before the read are
    /// missing, so compare snapshots of long-lived thread pools only.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let dir = format!("/proc/{pid}/task");
        let mut by_thread = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
            let path = entry?.path().join("stat");
            // A thread may exit between the listing and the read.
            let Ok(stat) = std::fs::read_to_string(&path) else {
                continue;
            };
            if let Some((name, ticks)) = parse_stat(&stat) {
                *by_thread.entry(name).or_insert(0) += ticks;
            }
        }
        Ok(Self { by_thread })
    }

    pub fn total(&self) -> u64 {
        self.by_thread.values().sum()
    }

    /// Ticks spent per thread name since `earlier`.
    pub fn since(&self, earlier: &CpuSnapshot) -> BTreeMap<String, u64> {
        self.by_thread
            .iter()
            .map(|(name, &t)| {
                let before = earlier.by_thread.get(name).copied().unwrap_or(0);
                (name.clone(), t.saturating_sub(before))
            })
            .collect()
    }
}

/// `(comm, utime + stime)` from a `/proc/.../stat` line. The name sits in
/// parentheses and may contain spaces, so fields are counted after the last `)`.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let mut fields = stat.get(close + 2..)?.split(' ');
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((name, utime + stime))
}

/// CPU clock ticks of a whole process from `/proc/<pid>/stat`: its own
/// (`utime + stime`, exited threads included) and those of its children it
/// has reaped (`cutime + cstime`, which include their reaped descendants).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessCpu {
    pub own: u64,
    pub children: u64,
}

impl ProcessCpu {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let fields = stat_fields(&stat).with_context(|| format!("cannot parse {path}"))?;
        // Fields 14-17 (1-based, state is 3): utime, stime, cutime, cstime.
        let field = |n: usize| -> anyhow::Result<u64> {
            fields
                .get(n - 3)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("no field {n} in {path}"))
        };
        Ok(Self {
            own: field(14)? + field(15)?,
            children: field(16)? + field(17)?,
        })
    }

    /// Seconds of CPU since `earlier`: (own, children).
    pub fn seconds_since(&self, earlier: &ProcessCpu) -> (f64, f64) {
        let hz = clock_ticks_per_second();
        (
            self.own.saturating_sub(earlier.own) as f64 / hz,
            self.children.saturating_sub(earlier.children) as f64 / hz,
        )
    }
}

/// The fields of a `/proc/.../stat` line after the parenthesised name,
/// starting with the state (field 3).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat.get(close + 2..)?.split_whitespace().collect())
}

/// Every live descendant of `pid` (children, grandchildren, ...), from the
/// parent pids in `/proc/*/stat`. Processes come and go while it reads, so
/// the answer is a snapshot, good for long-lived processes only.
pub fn descendants(pid: u32) -> anyhow::Result<Vec<u32>> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let Some(child) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Field 4, the parent pid, is the second after the name.
        if let Some(parent) = stat_fields(&stat).and_then(|f| f.get(1).and_then(|p| p.parse().ok()))
        {
            parent_of.push((child, parent));
        }
    }
    let mut found = vec![pid];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        next += 1;
    }
    found.remove(0);
    Ok(found)
}

/// A field of `/proc/<pid>/smaps_rollup` in kB, e.g. `Pss` (resident memory
/// with each shared page divided among the processes that map it).
pub fn smaps_rollup_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().strip_suffix("kB")?.trim().parse().ok()
        })
        .with_context(|| format!("no {field} line in {path}"))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we run on).
pub fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A `/proc/<pid>/status` field in kB, e.g. `VmRSS`.
pub fn proc_status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().strip_suffix("kB")?.trim().parse().ok()
        })
        .with_context(|| format!("no {field} line in {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u64> = (1..=1000).rev().collect();
        let s = Summary::of(&mut samples);
        assert_eq!((s.p50, s.p99, s.p999, s.max), (500, 990, 999, 1000));
        assert_eq!(s.count, 1000);
        assert!((s.mean - 500.5).abs() < 1e-9);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[1, 2], 0.0), 1);
        assert_eq!(Summary::of(&mut []), Summary::default());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn stat_lines_with_spaces_in_the_name() {
        let line = "42 (tokio rt (w)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat(line), Some(("tokio rt (w)".to_owned(), 300)));
    }

    #[test]
    fn own_process_accounting() {
        let pid = std::process::id();
        let cpu = ProcessCpu::of(pid).unwrap();
        assert!(cpu.own <= ProcessCpu::of(pid).unwrap().own);
        assert!(smaps_rollup_kb(pid, "Pss").unwrap() > 0);
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = descendants(pid).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(!found.contains(&pid));
    }

    #[test]
    fn status_fields() {
        let pid = std::process::id();
        assert!(proc_status_kb(pid, "VmRSS").unwrap() > 0);
        assert!(proc_status_kb(pid, "NoSuchField").is_err());
    }
}
