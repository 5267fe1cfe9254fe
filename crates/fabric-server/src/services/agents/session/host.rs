//! Isolation `none`: the agent's program, or the built-in shell's commands,
//! as host processes in a working dir of the session's own.

use fabric_runtime::quota::{DiskMeter, DiskQuota};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabric_core::AgentId;
use fabric_core::agent::{IsolationConfig, ResourceUsage};
use fabric_runtime::HostProcess;
use fabric_runtime::confine::{ConfineConfig, Confinement};
use fabric_runtime::sandbox::ProcessExit;

use super::{
    AgentToken, Background, Common, ENV_TOKEN, ENV_URL, Launch, SessionError, UsageProbe, Workers,
    agent_env, log_output, loopback, unknown_exit,
};
use crate::services::agents::builtin::{Executor, ShellSpec};
use crate::services::agents::inference;

/// What a confined agent may read: the system directories (secrets masked,
/// as in a sandbox) and its own `read_only_paths`.
pub(in crate::services::agents) fn confine_config(isolation: &IsolationConfig) -> ConfineConfig {
    let mut config = ConfineConfig::default();
    config
        .read_only_paths
        .extend(isolation.read_only_paths.iter().map(PathBuf::from));
    config
}

pub(in crate::services::agents) struct HostSession {
    agent: AgentId,
    common: Common,
    /// Removed at cleanup.
    workdir: PathBuf,
    run: HostRun,
}

enum HostRun {
    Shell(Workers),
    // Boxed: a host process is an order of magnitude larger than the workers.
    Program(Box<HostProgram>),
}

struct HostProgram {
    process: HostProcess,
    /// `<workdir>.pgid`, see [`record_group`].
    group_record: Option<PathBuf>,
    exit: Option<ProcessExit>,
}

impl HostSession {
    pub(super) fn start(launch: &Launch<'_>) -> Result<HostSession, SessionError> {
        let (_, workdir) = launch.workdir();
        create_workdir(&workdir)?;
        Self::start_in(launch, workdir.clone()).inspect_err(|_| {
            remove_workdir(launch.agent(), &workdir);
        })
    }

    fn start_in(launch: &Launch<'_>, workdir: PathBuf) -> Result<HostSession, SessionError> {
        let runtime = launch.runtime;
        let (token, secret) = AgentToken::issue(launch);
        let mut tasks = Background::default();
        let mut env = vec![(
            ENV_URL.to_owned(),
            format!("http://{}", loopback(runtime.config.api_addr)),
        )];
        let (endpoint, server) = inference::serve_loopback(runtime, launch.endpoint_identity())?;
        tasks.push(server);
        env.extend(super::inference_env(&endpoint));
        env.extend(launch.runtime.config.env.iter().cloned());
        let config = launch.config;
        let confinement = if config.isolation.as_fabric_user {
            None
        } else {
            let confinement = Confinement::new(&confine_config(&config.isolation), &workdir)
                .map_err(SessionError::Confine)?;
            // The sandbox helper confines each command in a fresh process,
            // so the fabric spawns instead of forking itself.
            Some(Arc::new(match &runtime.config.helper {
                Some(helper) => confinement.with_trampoline(helper.clone()),
                None => confinement,
            }))
        };
        let run = if config.is_builtin_shell() {
            let spec = ShellSpec {
                agent: config.id.clone(),
                concurrency: config.concurrency as usize,
                executor: Executor::Host {
                    work_root: workdir.clone(),
                    confinement,
                },
                output_limit: runtime.config.shell_output_limit,
                kill_grace: runtime.config.kill_grace,
                env: agent_env(env, None),
                disk_quota: DiskQuota::new(
                    DiskMeter::Host(workdir.clone()),
                    config.isolation.disk_mb,
                ),
                workdir_retention: runtime.config.workdir_retention,
            };
            HostRun::Shell(launch.start_workers(spec, secret)?)
        } else {
            let Some(command) = &config.command else {
                return Err(SessionError::NothingToRun);
            };
            let mut env = agent_env(env, Some((&config.id, &workdir)));
            env.push((ENV_TOKEN.into(), secret));
            let mut process =
                fabric_runtime::spawn_program(command, &workdir, &env, confinement.as_deref())
                    .map_err(SessionError::SpawnProgram)?;
            let group_record = record_group(&config.id, &workdir, &process);
            log_output(launch, process.stdout.take(), process.stderr.take());
            HostRun::Program(Box::new(HostProgram {
                process,
                group_record,
                exit: None,
            }))
        };
        Ok(HostSession {
            agent: config.id.clone(),
            common: Common { tasks, token },
            workdir,
            run,
        })
    }

    pub(super) fn pid(&self) -> Option<u32> {
        match &self.run {
            HostRun::Program(p) => Some(p.process.id()),
            HostRun::Shell(_) => None,
        }
    }

    pub(super) fn usage_probe(&self) -> UsageProbe {
        match &self.run {
            HostRun::Program(p) => UsageProbe::Pid(p.process.id()),
            // No group of its own to read: the workers' commands are the fabric's children.
            HostRun::Shell(_) => UsageProbe::None,
        }
    }

    pub(super) fn runs_program(&self) -> bool {
        matches!(self.run, HostRun::Program(_))
    }

    pub(super) async fn wait_exit(&mut self) -> ProcessExit {
        let HostRun::Program(program) = &mut self.run else {
            return std::future::pending().await;
        };
        if let Some(exit) = program.exit {
            return exit;
        }
        let exit = program.process.wait().await.unwrap_or_else(|e| {
            tracing::error!(agent_id = %self.agent, error = %e, "cannot wait for agent");
            unknown_exit()
        });
        program.exit = Some(exit);
        exit
    }

    pub(super) fn stop_leasing(&self) {
        if let HostRun::Shell(workers) = &self.run {
            workers.stop_leasing();
        }
    }

    pub(super) async fn terminate(&mut self, grace: Duration) {
        match &mut self.run {
            HostRun::Shell(workers) => workers.kill(grace).await,
            HostRun::Program(program) => {
                if program.exit.is_none() {
                    program.exit = program.process.terminate(grace).await.ok();
                }
            }
        }
    }

    pub(super) async fn cleanup(self) {
        let HostSession {
            agent,
            common,
            workdir,
            run,
        } = self;
        let group_record = match run {
            HostRun::Shell(mut workers) => {
                workers.kill(Duration::ZERO).await;
                None
            }
            HostRun::Program(program) => {
                let HostProgram {
                    process,
                    group_record,
                    ..
                } = *program;
                // Dropping the program SIGKILLs its process group.
                drop(process);
                group_record
            }
        };
        common.release();
        if let Some(record) = group_record {
            let _ = std::fs::remove_file(record);
        }
        remove_workdir(&agent, &workdir);
    }
}

pub(super) fn create_workdir(dir: &Path) -> Result<(), SessionError> {
    std::fs::create_dir_all(dir).map_err(|source| SessionError::CreateWorkdir {
        dir: dir.to_path_buf(),
        source,
    })
}

pub(super) fn remove_workdir(agent: &AgentId, dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(agent_id = %agent, dir = %dir.display(), error = %e, "cannot remove working dir");
    }
}

/// Notes the program's process group beside its working dir
/// (`<dir>.pgid`), so a start after a crash can stop it (level `none`
/// has no cgroup to find it by). Removed with the working dir.
fn record_group(agent: &AgentId, workdir: &Path, process: &HostProcess) -> Option<PathBuf> {
    let ticks = process.start_ticks()?;
    let record = PathBuf::from(format!("{}.pgid", workdir.display()));
    if let Err(e) = std::fs::write(&record, format!("{} {ticks}\n", process.id())) {
        tracing::warn!(agent_id = %agent, error = %e, "cannot record the agent's process group");
    }
    Some(record)
}

/// Stops the agent programs (isolation `none`) a killed fabric left running,
/// from the `.pgid` records in `agents_dir`. Returns how many were stopped.
pub(in crate::services::agents) fn kill_stale_programs(agents_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(agents_dir) else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "pgid") {
            continue;
        }
        let record = std::fs::read_to_string(&path).unwrap_or_default();
        let mut fields = record.split_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(pgid)), Some(Ok(ticks))) = (fields.next(), fields.next())
            && let Ok(pgid) = u32::try_from(pgid)
            && fabric_runtime::kill_stale_group(pgid, ticks)
        {
            tracing::warn!(pgid, record = %path.display(), "stopped an agent program a previous run left behind");
            killed += 1;
        }
    }
    killed
}

/// Usage of the host process group `pgid` (isolation `none`), from the shared `/proc` scan.
pub(super) fn group_usage(pgid: u32) -> ResourceUsage {
    host_groups()
        .and_then(|groups| groups.get(&pgid).copied())
        .unwrap_or_default()
}

/// How long one scan of `/proc` serves every level-`none` agent's usage: a
/// listing of many agents costs one scan, not one per agent.
const HOST_SCAN_TTL: Duration = Duration::from_secs(1);

type GroupUsage = Arc<HashMap<u32, ResourceUsage>>;

/// Usage of every host process group, from a `/proc` scan at most
/// [`HOST_SCAN_TTL`] old; `None` if `/proc` cannot be read.
fn host_groups() -> Option<GroupUsage> {
    static CACHE: parking_lot::Mutex<Option<(Instant, GroupUsage)>> = parking_lot::Mutex::new(None);
    let mut cache = CACHE.lock();
    if let Some((at, groups)) = cache.as_ref()
        && at.elapsed() < HOST_SCAN_TTL
    {
        return Some(Arc::clone(groups));
    }
    let groups = Arc::new(scan_proc()?);
    *cache = Some((Instant::now(), Arc::clone(&groups)));
    Some(groups)
}

/// Memory, CPU and process count of every host process group from `/proc`
/// (level `none` has no cgroup to read them from).
fn scan_proc() -> Option<HashMap<u32, ResourceUsage>> {
    let mut groups: HashMap<u32, ResourceUsage> = HashMap::new();
    let page = 4096;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces): state, ppid,
        // pgrp, ..., utime (11), stime (12), ..., rss in pages (21).
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let Ok(pgid) = u32::try_from(field(2)) else {
            continue;
        };
        let peak_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        let usage = groups.entry(pgid).or_default();
        // USER_HZ is 100 on every Linux the fabric supports.
        usage.cpu_millis += (field(11) + field(12)) * 10;
        usage.memory_bytes += field(21) * page;
        usage.memory_peak_bytes += peak_kib * 1024;
        usage.pids += 1;
    }
    Some(groups)
}
#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn one_proc_scan_sums_each_process_group() {
        let mut leader = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = leader.id();
        let mut member = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(i32::try_from(pgid).unwrap())
            .spawn()
            .unwrap();
        let usage = scan_proc().unwrap().get(&pgid).copied().unwrap_or_default();
        // Each killed on its own: no group kill from a test.
        for child in [&mut leader, &mut member] {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(usage.pids, 2, "the leader and the member: {usage:?}");
        assert!(usage.memory_bytes > 0 && usage.memory_peak_bytes >= usage.memory_bytes);
        // The snapshot is shared for a while: a second read costs no scan.
        let first = host_groups().unwrap();
        assert!(Arc::ptr_eq(&first, &host_groups().unwrap()));
    }
}
