//! The cgroup(s) of one sandbox: cgroup v2 when its controllers are usable, else the v1 hierarchies.
//!
//! Detection reads `/proc/self/mountinfo`: a `cgroup2` mount whose root lists
//! `memory`, `cpu` and `pids` in `cgroup.controllers` means v2 (one directory
//! per sandbox). Otherwise every controller must have a v1 mount (`memory`,
//! `cpu`, `cpuacct`, `pids`; co-mounted ones share a directory) and the
//! sandbox gets one directory in each. Hybrid hosts, whose v2 mount carries no
//! controllers, end up on v1.
//!
//! Sandboxes live at `<hierarchy root>/<parent>/<name>`, `parent` being
//! [`SandboxConfig::cgroup_parent`](super::SandboxConfig::cgroup_parent)
//! (like Docker's `--cgroup-parent`): outside the fabric's own cgroup, so on
//! v2 the "no processes in inner cgroups" rule never bites.
//!
//! The integration tests exercise the one interface the test host offers
//! (`./scripts/test` prints which); the unit tests below run detection,
//! limits, counters and listing of both over fake cgroupfs trees in a temp
//! dir, so the v2 code runs on a v1 host and the reverse.

use std::fs;
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::sys;

/// Which cgroup interface a sandbox's limits and counters use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The unified hierarchy: one directory with every controller.
    V2,
    /// Legacy per-controller hierarchies: one directory in each.
    V1,
}

/// The controllers a sandbox needs.
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Where the cgroup hierarchies are mounted on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    V2 {
        root: PathBuf,
    },
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        cpuacct: PathBuf,
        pids: PathBuf,
    },
}

impl Layout {
    /// Finds the hierarchies, or says what is missing.
    pub(crate) fn detect() -> Result<Self, String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|err| format!("cannot read /proc/self/mountinfo: {err}"))?;
        Self::from_mountinfo(&mountinfo)
    }

    /// [`detect`](Layout::detect) from a mountinfo text; the v2 root's
    /// `cgroup.controllers` is read from wherever the text says it is mounted.
    fn from_mountinfo(mountinfo: &str) -> Result<Self, String> {
        let mounts = parse_mountinfo(mountinfo);
        let v2_root = mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .map(|m| m.mount_point.clone());
        if let Some(root) = &v2_root {
            let controllers =
                fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            let available: Vec<&str> = controllers.split_whitespace().collect();
            if V2_CONTROLLERS.iter().all(|c| available.contains(c)) {
                return Ok(Self::V2 { root: root.clone() });
            }
        }
        let v1 = |controller: &str| {
            mounts
                .iter()
                .find(|m| {
                    m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == controller)
                })
                .map(|m| m.mount_point.clone())
        };
        match (v1("memory"), v1("cpu"), v1("cpuacct"), v1("pids")) {
            (Some(memory), Some(cpu), Some(cpuacct), Some(pids)) => Ok(Self::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
            }),
            _ => Err(match v2_root {
                Some(root) => format!(
                    "cgroup v2 at {} lacks some of the memory, cpu and pids controllers and \
                     cgroup v1 does not mount all of memory, cpu, cpuacct and pids",
                    root.display()
                ),
                None => "no cgroup v2 mount and cgroup v1 does not mount all of memory, cpu, \
                         cpuacct and pids"
                    .to_string(),
            }),
        }
    }
}

impl Layout {
    /// Which interface this layout is.
    pub(crate) fn version(&self) -> CgroupVersion {
        match self {
            Self::V2 { .. } => CgroupVersion::V2,
            Self::V1 { .. } => CgroupVersion::V1,
        }
    }

    /// The hierarchies' roots, each once (co-mounted v1 controllers share one).
    pub(crate) fn roots(&self) -> Vec<PathBuf> {
        let all = match self {
            Self::V2 { root } => vec![root.clone()],
            Self::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
            } => vec![memory.clone(), cpu.clone(), cpuacct.clone(), pids.clone()],
        };
        let mut roots: Vec<PathBuf> = Vec::new();
        for root in all {
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
        roots
    }

    /// The sandbox cgroups under `parent`, by name: each name with its
    /// directory in every hierarchy that has one. Sorted by name.
    pub(crate) fn sandboxes_under(&self, parent: &Path) -> io::Result<Vec<(String, Vec<PathBuf>)>> {
        let mut found: Vec<(String, Vec<PathBuf>)> = Vec::new();
        for root in self.roots() {
            let entries = match fs::read_dir(root.join(parent)) {
                Ok(entries) => entries,
                Err(err) if err.kind() == ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            for entry in entries {
                let entry = entry?;
                if !entry.file_type()?.is_dir() {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                match found.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, dirs)) => dirs.push(entry.path()),
                    None => found.push((name, vec![entry.path()])),
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

/// Host pids in a cgroup directory and every cgroup below it; a missing
/// directory has none.
pub(crate) fn procs_in_tree(dir: &Path) -> io::Result<Vec<libc::pid_t>> {
    let mut pids = Vec::new();
    let text = match fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(text) => text,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(pids),
        Err(err) => return Err(err),
    };
    pids.extend(
        text.lines()
            .filter_map(|l| l.trim().parse::<libc::pid_t>().ok()),
    );
    for child in child_dirs(dir)? {
        pids.extend(procs_in_tree(&child)?);
    }
    Ok(pids)
}

/// Removes a cgroup directory and every cgroup below it, deepest first.
/// Fails with EBUSY while a member is still exiting; a missing directory is fine.
pub(crate) fn remove_tree(dir: &Path) -> io::Result<()> {
    for child in child_dirs(dir)? {
        remove_tree(&child)?;
    }
    match fs::remove_dir(dir) {
        Err(err) if err.kind() != ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

fn child_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry?;
        // cgroupfs lists controls as files; child cgroups are the directories.
        if entry.file_type()?.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// The limits written into a sandbox's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) memory_bytes: u64,
    pub(crate) cpu_quota_us: u64,
    pub(crate) cpu_period_us: u64,
    pub(crate) pids_max: u32,
}

impl Limits {
    /// From the units of the agent config: MiB, cores (CPU time per wall
    /// time, over a `period` of accounting) and a process count.
    pub(crate) fn new(memory_mb: u64, cpu_cores: f64, pids_max: u32, period: Duration) -> Self {
        let period_us = period.as_micros() as u64;
        Self {
            memory_bytes: memory_mb << 20,
            // The kernel's minimum quota is 1 ms.
            cpu_quota_us: ((cpu_cores * period_us as f64).round() as u64).max(1000),
            cpu_period_us: period_us,
            pids_max,
        }
    }
}

/// One sandbox's cgroup directories, with the counters read from them.
#[derive(Debug)]
pub(crate) struct Cgroup {
    version: CgroupVersion,
    /// Created for this sandbox: one (v2) or one per distinct v1 mount.
    dirs: Vec<PathBuf>,
    memory: PathBuf,
    cpu: PathBuf,
    cpuacct: PathBuf,
    pids: PathBuf,
    /// `cgroup.procs` of each directory, open for writing: a starting process
    /// writes "0" ("me") into each from `pre_exec`, which must not open paths.
    procs: Vec<OwnedFd>,
}

/// Counters of a cgroup at one moment; see [`ResourceUsage`](super::ResourceUsage).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Counters {
    pub(crate) memory_bytes: u64,
    pub(crate) memory_peak_bytes: Option<u64>,
    pub(crate) cpu_usage: Duration,
    pub(crate) pids: u64,
    pub(crate) oom_kills: u64,
    pub(crate) pids_limit_hits: u64,
}

impl Cgroup {
    /// Creates `<parent>/<name>` in each hierarchy and writes `limits`.
    /// On failure nothing created is left behind.
    pub(crate) fn create(
        layout: &Layout,
        parent: &Path,
        name: &str,
        limits: Limits,
    ) -> Result<Self, CgroupError> {
        match layout {
            Layout::V2 { root } => enable_v2_controllers(root, parent)?,
            Layout::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
            } => {
                for mount in [memory, cpu, cpuacct, pids] {
                    let parent_dir = mount.join(parent);
                    fs::create_dir_all(&parent_dir)
                        .map_err(|cause| CgroupError::new("create", &parent_dir, cause))?;
                }
            }
        }
        let mut cgroup = Self::at(layout, parent, name);
        let mut created = Vec::new();
        let result = cgroup.populate(limits, &mut created);
        if let Err(err) = result {
            for dir in created.iter().rev() {
                let _ = fs::remove_dir(dir);
            }
            return Err(err);
        }
        Ok(cgroup)
    }

    /// Where `<parent>/<name>` lives in `layout`'s hierarchies; touches nothing.
    fn at(layout: &Layout, parent: &Path, name: &str) -> Self {
        match layout {
            Layout::V2 { root } => {
                let dir = root.join(parent).join(name);
                Self {
                    version: CgroupVersion::V2,
                    dirs: vec![dir.clone()],
                    memory: dir.clone(),
                    cpu: dir.clone(),
                    cpuacct: dir.clone(),
                    pids: dir,
                    procs: Vec::new(),
                }
            }
            Layout::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
            } => {
                let at = |mount: &Path| mount.join(parent).join(name);
                let mut dirs: Vec<PathBuf> = Vec::new();
                for dir in [at(memory), at(cpu), at(cpuacct), at(pids)] {
                    if !dirs.contains(&dir) {
                        dirs.push(dir);
                    }
                }
                Self {
                    version: CgroupVersion::V1,
                    dirs,
                    memory: at(memory),
                    cpu: at(cpu),
                    cpuacct: at(cpuacct),
                    pids: at(pids),
                    procs: Vec::new(),
                }
            }
        }
    }

    fn populate(&mut self, limits: Limits, created: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            match fs::create_dir(dir) {
                Ok(()) => created.push(dir.clone()),
                Err(err) if err.kind() == ErrorKind::AlreadyExists => {
                    return Err(CgroupError::Exists { path: dir.clone() });
                }
                Err(cause) => return Err(CgroupError::new("create", dir, cause)),
            }
        }
        self.write_limits(limits)?;
        for dir in &self.dirs {
            let path = dir.join("cgroup.procs");
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|cause| CgroupError::new("open", &path, cause))?;
            self.procs.push(file.into());
        }
        Ok(())
    }

    /// Writes `limits` into the cgroup files; also what a live sandbox's
    /// limits change through.
    pub(crate) fn write_limits(&self, limits: Limits) -> Result<(), CgroupError> {
        let memory = limits.memory_bytes.to_string();
        match self.version {
            CgroupVersion::V2 => {
                write(&self.memory, "memory.max", &memory)?;
                // No swap: the limit means RAM. Absent without swap accounting.
                write_optional(&self.memory, "memory.swap.max", "0")?;
                let cpu = format!("{} {}", limits.cpu_quota_us, limits.cpu_period_us);
                write(&self.cpu, "cpu.max", &cpu)?;
            }
            CgroupVersion::V1 => {
                // memory+swap ≥ memory must hold after every write: lowering
                // goes memory first, raising memory+swap first. The memsw file
                // is absent when the kernel does no swap accounting.
                let current = read_u64(&self.memory, "memory.limit_in_bytes").unwrap_or(u64::MAX);
                if limits.memory_bytes > current {
                    write_optional(&self.memory, "memory.memsw.limit_in_bytes", &memory)?;
                    write(&self.memory, "memory.limit_in_bytes", &memory)?;
                } else {
                    write(&self.memory, "memory.limit_in_bytes", &memory)?;
                    write_optional(&self.memory, "memory.memsw.limit_in_bytes", &memory)?;
                }
                write(
                    &self.cpu,
                    "cpu.cfs_period_us",
                    &limits.cpu_period_us.to_string(),
                )?;
                write(
                    &self.cpu,
                    "cpu.cfs_quota_us",
                    &limits.cpu_quota_us.to_string(),
                )?;
            }
        }
        write(&self.pids, "pids.max", &limits.pids_max.to_string())
    }

    pub(crate) fn version(&self) -> CgroupVersion {
        self.version
    }

    pub(crate) fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The open `cgroup.procs` descriptors, for [`join_from_pre_exec`].
    pub(crate) fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The counters now. Fails only if the cgroup vanished or its files are unreadable.
    pub(crate) fn counters(&self) -> io::Result<Counters> {
        Ok(match self.version {
            CgroupVersion::V2 => Counters {
                memory_bytes: read_u64(&self.memory, "memory.current")?,
                // memory.peak arrived in Linux 5.19.
                memory_peak_bytes: read_u64(&self.memory, "memory.peak").ok(),
                cpu_usage: Duration::from_micros(read_key(&self.cpu, "cpu.stat", "usage_usec")?),
                pids: read_u64(&self.pids, "pids.current")?,
                oom_kills: read_key(&self.memory, "memory.events", "oom_kill")?,
                pids_limit_hits: read_key(&self.pids, "pids.events", "max").unwrap_or(0),
            },
            CgroupVersion::V1 => Counters {
                memory_bytes: read_u64(&self.memory, "memory.usage_in_bytes")?,
                memory_peak_bytes: Some(read_u64(&self.memory, "memory.max_usage_in_bytes")?),
                cpu_usage: Duration::from_nanos(read_u64(&self.cpuacct, "cpuacct.usage")?),
                pids: read_u64(&self.pids, "pids.current")?,
                oom_kills: read_key(&self.memory, "memory.oom_control", "oom_kill")?,
                pids_limit_hits: read_key(&self.pids, "pids.events", "max").unwrap_or(0),
            },
        })
    }

    /// OOM kills so far; 0 if unreadable (used to compare before and after a command).
    pub(crate) fn oom_kills(&self) -> u64 {
        let (dir, file) = match self.version {
            CgroupVersion::V2 => (&self.memory, "memory.events"),
            CgroupVersion::V1 => (&self.memory, "memory.oom_control"),
        };
        read_key(dir, file, "oom_kill").unwrap_or(0)
    }

    /// Host pids of every process in the sandbox (all hierarchies, deduplicated).
    /// Zombies are not listed: a process leaves its cgroup when it exits.
    pub(crate) fn members(&self) -> io::Result<Vec<libc::pid_t>> {
        let mut pids = Vec::new();
        for dir in &self.dirs {
            let text = match fs::read_to_string(dir.join("cgroup.procs")) {
                Ok(text) => text,
                Err(err) if err.kind() == ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            for pid in text.lines().filter_map(|l| l.trim().parse().ok()) {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        Ok(pids)
    }

    /// SIGKILLs every member except `spare`; returns how many were signalled.
    pub(crate) fn kill_members(&self, spare: &[libc::pid_t]) -> io::Result<usize> {
        let mut signalled = 0;
        for pid in self.members()? {
            if pid > 1 && !spare.contains(&pid) {
                // ESRCH: it exited meanwhile.
                if sys::kill(pid, libc::SIGKILL).is_ok() {
                    signalled += 1;
                }
            }
        }
        Ok(signalled)
    }

    /// Removes the directories. Fails with EBUSY while a member is still exiting;
    /// the caller retries. Already-removed directories are fine.
    pub(crate) fn remove(&self) -> io::Result<()> {
        let mut first_error = None;
        for dir in &self.dirs {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Moves the calling process into the sandbox's cgroups, from `pre_exec`:
/// writing "0" to `cgroup.procs` means "the writer". Async-signal-safe.
pub(crate) fn join_from_pre_exec(procs_fds: &[RawFd]) -> io::Result<()> {
    for &fd in procs_fds {
        sys::write_fd(fd, b"0")?;
    }
    Ok(())
}

/// Why a sandbox's cgroup could not be set up.
#[derive(Debug)]
pub(crate) enum CgroupError {
    Exists {
        path: PathBuf,
    },
    Io {
        action: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
}

impl CgroupError {
    fn new(action: &'static str, path: &Path, cause: io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            cause,
        }
    }
}

/// v2: every level from the root down to `parent` must pass the controllers
/// on to its children (`+memory +cpu +pids` in `cgroup.subtree_control`).
fn enable_v2_controllers(root: &Path, parent: &Path) -> Result<(), CgroupError> {
    let mut dir = root.to_path_buf();
    let mut levels = vec![dir.clone()];
    for part in parent.components() {
        dir.push(part);
        levels.push(dir.clone());
    }
    for (i, level) in levels.iter().enumerate() {
        if i > 0 {
            match fs::create_dir(level) {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::AlreadyExists => {}
                Err(cause) => return Err(CgroupError::new("create", level, cause)),
            }
        }
        let enabled = fs::read_to_string(level.join("cgroup.subtree_control")).unwrap_or_default();
        // One write with every missing controller (`+memory +pids`): the
        // kernel takes a space-separated list.
        let missing: Vec<String> = V2_CONTROLLERS
            .iter()
            .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if !missing.is_empty() {
            write(level, "cgroup.subtree_control", &missing.join(" "))?;
        }
    }
    Ok(())
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|cause| CgroupError::new("write", &path, cause))
}

fn write_optional(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    match write(dir, file, value) {
        Err(CgroupError::Io { cause, .. }) if cause.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn read_u64(dir: &Path, file: &str) -> io::Result<u64> {
    let text = fs::read_to_string(dir.join(file))?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            ErrorKind::InvalidData,
            format!("{file}: not a number: {text:?}"),
        )
    })
}

/// The value of `key` in a flat keyed file (`key value` lines, as `memory.events`).
fn read_key(dir: &Path, file: &str, key: &str) -> io::Result<u64> {
    let text = fs::read_to_string(dir.join(file))?;
    parse_key(&text, key)
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, format!("{file} has no {key:?}")))
}

fn parse_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// One line of `/proc/self/mountinfo`, the parts we need.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    mount_point: PathBuf,
    fstype: String,
    super_options: String,
}

/// `id parent dev root mount_point options [optional...] - fstype source super_options`
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let super_options = right.next().unwrap_or("");
            Some(Mount {
                mount_point: PathBuf::from(unescape_octal(mount_point)),
                fstype: fstype.to_string(),
                super_options: super_options.to_string(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
34 30 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
37 25 0:33 / /mnt/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 9);
        assert_eq!(
            mounts[2],
            Mount {
                mount_point: "/sys/fs/cgroup/cpu".into(),
                fstype: "cgroup".into(),
                super_options: "rw,cpu".into(),
            }
        );
        assert_eq!(mounts[8].mount_point, PathBuf::from("/mnt/with space"));
    }

    #[test]
    fn controllers_are_matched_exactly() {
        // "cpu" must not match the "cpuacct" or "cpuset" mounts, nor the reverse.
        let mounts = parse_mountinfo(HYBRID);
        let find = |c: &str| {
            mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == c))
                .map(|m| m.mount_point.clone())
        };
        assert_eq!(find("cpu"), Some("/sys/fs/cgroup/cpu".into()));
        assert_eq!(find("cpuacct"), Some("/sys/fs/cgroup/cpuacct".into()));
    }

    #[test]
    fn keyed_files_parse() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_key(oom_control, "oom_kill"), Some(3));
        assert_eq!(parse_key(oom_control, "oom"), None);
        let events = "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_key(events, "oom_kill"), Some(2));
        assert_eq!(parse_key(events, "max"), Some(7));
    }

    /// What the kernel puts in a new cgroup directory, as plain files: the
    /// controls a sandbox writes and the counters it reads.
    fn fake_mkdir(dir: &Path, files: &[(&str, &str)]) {
        fs::create_dir_all(dir).unwrap();
        for (name, content) in files {
            fs::write(dir.join(name), content).unwrap();
        }
    }

    fn mountinfo_line(id: u32, mount_point: &Path, fstype: &str, options: &str) -> String {
        format!(
            "{id} 30 0:{id} / {} rw,relatime - {fstype} {fstype} {options}\n",
            mount_point.display()
        )
    }

    fn limits() -> Limits {
        Limits::new(96, 0.5, 64, Duration::from_millis(100))
    }

    #[test]
    fn v2_over_a_fake_cgroupfs_detects_limits_counts_lists_and_removes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("unified");
        fake_mkdir(
            &root,
            &[
                ("cgroup.controllers", "cpuset cpu io memory pids\n"),
                ("cgroup.subtree_control", "cpu memory pids\n"),
            ],
        );
        let layout = Layout::from_mountinfo(&mountinfo_line(36, &root, "cgroup2", "rw")).unwrap();
        assert_eq!(layout, Layout::V2 { root: root.clone() });
        assert_eq!(layout.roots(), std::slice::from_ref(&root));

        // Every level below the root passes the controllers on; the root,
        // which already does, is not written.
        let parent = Path::new("reactor-fabric/i-test");
        enable_v2_controllers(&root, parent).unwrap();
        let subtree =
            |dir: PathBuf| fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap();
        assert_eq!(subtree(root.clone()), "cpu memory pids\n");
        assert_eq!(subtree(root.join("reactor-fabric")), "+memory +cpu +pids");
        assert_eq!(subtree(root.join(parent)), "+memory +cpu +pids");

        let cgroup = Cgroup::at(&layout, parent, "sb-1");
        let dir = root.join(parent).join("sb-1");
        assert_eq!(cgroup.version(), CgroupVersion::V2);
        assert_eq!(cgroup.dirs(), std::slice::from_ref(&dir));
        fake_mkdir(
            &dir,
            &[
                ("cgroup.procs", "41\n42\n"),
                ("memory.max", "max\n"),
                ("cpu.max", "max 100000\n"),
                ("pids.max", "max\n"),
                ("memory.current", "3145728\n"),
                ("memory.peak", "8388608\n"),
                (
                    "cpu.stat",
                    "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
                ),
                ("pids.current", "2\n"),
                ("memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n"),
                ("pids.events", "max 3\n"),
            ],
        );
        cgroup.write_limits(limits()).unwrap();
        let read = |file: &str| fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(read("memory.max"), (96u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "64");
        assert!(
            !dir.join("memory.limit_in_bytes").exists(),
            "no v1 file on v2"
        );

        assert_eq!(
            cgroup.counters().unwrap(),
            Counters {
                memory_bytes: 3 << 20,
                memory_peak_bytes: Some(8 << 20),
                cpu_usage: Duration::from_millis(1500),
                pids: 2,
                oom_kills: 1,
                pids_limit_hits: 3,
            }
        );
        assert_eq!(cgroup.oom_kills(), 1);
        assert_eq!(cgroup.members().unwrap(), [41, 42]);
        // Kernels before 5.19 have no memory.peak: no peak, not an error.
        fs::remove_file(dir.join("memory.peak")).unwrap();
        assert_eq!(cgroup.counters().unwrap().memory_peak_bytes, None);

        fake_mkdir(&root.join(parent).join("sb-2"), &[("cgroup.procs", "")]);
        fs::write(root.join(parent).join("cgroup.procs"), "").unwrap();
        let found = layout.sandboxes_under(parent).unwrap();
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sb-1", "sb-2"]);
        assert_eq!(found[0].1, std::slice::from_ref(&dir));
        assert_eq!(procs_in_tree(&root.join(parent)).unwrap(), [41, 42]);

        // A fake directory holds files, which the kernel's would not: empty it first.
        for entry in fs::read_dir(&dir).unwrap() {
            fs::remove_file(entry.unwrap().path()).unwrap();
        }
        cgroup.remove().unwrap();
        assert!(!dir.exists());
        cgroup.remove().unwrap();
    }

    #[test]
    fn v1_over_a_fake_cgroupfs_detects_limits_and_counts_with_co_mounted_controllers() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        // cpu and cpuacct co-mounted, as systemd does: one directory serves both.
        let (memory, cpu, pids) = (
            base.join("memory"),
            base.join("cpu,cpuacct"),
            base.join("pids"),
        );
        let unified = base.join("unified");
        fake_mkdir(&unified, &[("cgroup.controllers", "")]);
        let mountinfo = [
            mountinfo_line(31, &cpu, "cgroup", "rw,cpu,cpuacct"),
            mountinfo_line(34, &memory, "cgroup", "rw,memory"),
            mountinfo_line(35, &pids, "cgroup", "rw,pids"),
            // A hybrid host's v2 mount carries no controllers: v1 is used.
            mountinfo_line(36, &unified, "cgroup2", "rw"),
        ]
        .concat();
        let layout = Layout::from_mountinfo(&mountinfo).unwrap();
        assert_eq!(
            layout,
            Layout::V1 {
                memory: memory.clone(),
                cpu: cpu.clone(),
                cpuacct: cpu.clone(),
                pids: pids.clone(),
            }
        );
        assert_eq!(layout.roots(), [memory.clone(), cpu.clone(), pids.clone()]);

        let parent = Path::new("reactor-fabric/i-test");
        let cgroup = Cgroup::at(&layout, parent, "sb-1");
        let at = |mount: &Path| mount.join(parent).join("sb-1");
        assert_eq!(cgroup.version(), CgroupVersion::V1);
        assert_eq!(cgroup.dirs(), [at(&memory), at(&cpu), at(&pids)]);
        fake_mkdir(
            &at(&memory),
            &[
                ("cgroup.procs", "7\n"),
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.memsw.limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "1048576\n"),
                ("memory.max_usage_in_bytes", "2097152\n"),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
                ),
            ],
        );
        fake_mkdir(
            &at(&cpu),
            &[
                ("cgroup.procs", "7\n"),
                ("cpu.cfs_period_us", "100000\n"),
                ("cpu.cfs_quota_us", "-1\n"),
                ("cpuacct.usage", "250000000\n"),
            ],
        );
        fake_mkdir(
            &at(&pids),
            &[
                ("cgroup.procs", "7\n"),
                ("pids.max", "max\n"),
                ("pids.current", "1\n"),
            ],
        );
        cgroup.write_limits(limits()).unwrap();
        let read = |dir: PathBuf, file: &str| fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(
            read(at(&memory), "memory.limit_in_bytes"),
            (96u64 << 20).to_string()
        );
        assert_eq!(
            read(at(&memory), "memory.memsw.limit_in_bytes"),
            (96u64 << 20).to_string(),
            "memory+swap follows, so the limit means RAM"
        );
        assert_eq!(read(at(&cpu), "cpu.cfs_period_us"), "100000");
        assert_eq!(read(at(&cpu), "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(at(&pids), "pids.max"), "64");
        assert_eq!(
            cgroup.counters().unwrap(),
            Counters {
                memory_bytes: 1 << 20,
                memory_peak_bytes: Some(2 << 20),
                cpu_usage: Duration::from_millis(250),
                pids: 1,
                oom_kills: 2,
                pids_limit_hits: 0,
            }
        );
        assert_eq!(cgroup.members().unwrap(), [7], "one process, listed once");
    }

    #[test]
    fn v2_without_the_needed_controllers_and_no_v1_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("unified");
        fake_mkdir(&root, &[("cgroup.controllers", "cpu memory\n")]);
        let err = Layout::from_mountinfo(&mountinfo_line(36, &root, "cgroup2", "rw")).unwrap_err();
        assert!(
            err.contains("lacks some of the memory, cpu and pids controllers"),
            "{err}"
        );
        let err = Layout::from_mountinfo("").unwrap_err();
        assert!(err.starts_with("no cgroup v2 mount"), "{err}");
    }
}
