//! `Sandbox`: isolation level `process` (FR-ISO) against the real kernel: namespaces, cgroups, mounts.
//!
//! These need root and cgroups, as the level itself does. Nothing is
//! skipped: on a host without them `Sandbox::create` fails and so does every
//! test, with the reason in the message.

use std::future::{Future, pending};
use std::io::{ErrorKind, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fabric_runtime::sandbox::{
    CgroupVersion, HelperCommand, SandboxStdio, SweepReport, sweep_stale,
};
use fabric_runtime::{
    LogLine, RuntimeError, Sandbox, SandboxCommand, SandboxConfig, ShellJob, ShellOutcome, Stream,
    run_shell,
};
use tempfile::TempDir;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot};

use crate::child::{assert_gone, is_gone};

/// A config named after the test (names must be unique on the host) with a
/// workdir in a fresh temporary directory.
pub(crate) fn config(tag: &str) -> (TempDir, SandboxConfig) {
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("it-{}-{tag}", std::process::id());
    let helper = HelperCommand::new(env!("CARGO_BIN_EXE_fabric-sandbox-init"));
    let config = SandboxConfig::new(&name, tmp.path().join(&name), helper);
    (tmp, config)
}

pub(crate) async fn create(config: SandboxConfig) -> Sandbox {
    match Sandbox::create(config).await {
        Ok(sandbox) => sandbox,
        Err(err) => panic!("the process isolation level must work on this host: {err}"),
    }
}

fn job_in(workdir: &Path, commands: &[&str]) -> ShellJob {
    ShellJob::new(
        commands.iter().map(|c| c.to_string()).collect(),
        workdir.to_path_buf(),
    )
}

pub(crate) async fn sh(sandbox: &Sandbox, commands: &[&str]) -> ShellOutcome {
    let job = job_in(sandbox.workdir(), commands);
    within(30, sandbox.run_shell(job, None, pending()))
        .await
        .unwrap()
}

pub(crate) async fn within<T>(seconds: u64, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(seconds), future)
        .await
        .expect("timed out")
}

/// Everything the outcome says except what depends on where it ran.
fn comparable(outcome: &ShellOutcome) -> impl PartialEq + std::fmt::Debug {
    (
        outcome.exit_code,
        outcome.signal,
        outcome.stdout.clone(),
        outcome.stderr.clone(),
        outcome.stdout_truncated,
        outcome.stderr_truncated,
        outcome.canceled,
        outcome.commands_run,
        outcome.failure(),
    )
}

async fn with_log_lines(
    run: impl AsyncFnOnce(mpsc::Sender<LogLine>) -> ShellOutcome,
) -> (ShellOutcome, Vec<LogLine>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let outcome = run(tx).await;
    let lines = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    (outcome, lines)
}

#[tokio::test]
async fn run_shell_in_a_sandbox_has_the_outcomes_of_level_none() {
    let (_tmp, config) = config("parity");
    let sandbox = create(config).await;
    let host = tempfile::tempdir().unwrap();

    let mut jobs: Vec<(&str, ShellJob)> = Vec::new();
    let mut add = |label, commands: &[&str], change: fn(&mut ShellJob)| {
        let mut job = job_in(Path::new("/placeholder"), commands);
        change(&mut job);
        jobs.push((label, job));
    };
    add("echo", &["echo hello"], |_| {});
    add(
        "first failure stops",
        &[
            "echo one",
            "echo two >&2",
            "echo three; exit 3",
            "echo never",
        ],
        |_| {},
    );
    add(
        "truncation on a char boundary",
        &["printf 'hello world'; printf 'abcdé' >&2"],
        |j| j.output_limit = 5,
    );
    add(
        "big output is cut at the limit",
        &["head -c 3000000 /dev/zero | tr '\\0' a; echo done >&2"],
        |j| j.output_limit = 1 << 20,
    );
    add("invalid utf-8", &["printf 'a\\377b'"], |_| {});
    add(
        "killed by a signal",
        &["kill -KILL $$", "echo never"],
        |_| {},
    );
    add(
        "unknown program",
        &["definitely-not-a-program-4f1c"],
        |_| {},
    );
    add(
        "environment",
        &["echo $GREETING $LANG; test -d \"$TMPDIR\" && test -w \"$TMPDIR\" && echo tmp-ok"],
        |j| j.env = vec![("GREETING".into(), "hi there".into())],
    );
    add("task files", &["cat a.txt sub/b.txt"], |j| {
        j.files = vec![
            fabric_core::TaskFile {
                path: "a.txt".into(),
                content: "A ".into(),
            },
            fabric_core::TaskFile {
                path: "sub/b.txt".into(),
                content: "B".into(),
            },
        ]
    });
    add(
        "background processes end with their command",
        &["sleep 1000 & echo started", "echo next"],
        |_| {},
    );

    for (label, job) in jobs {
        let mut on_host = job.clone();
        on_host.workdir = host.path().join("w");
        let mut inside = job;
        inside.workdir = sandbox.workdir().to_path_buf();

        let (expected, expected_lines) = with_log_lines(async |tx| {
            within(30, run_shell(on_host, Some(tx), pending()))
                .await
                .unwrap()
        })
        .await;
        let (got, got_lines) = with_log_lines(async |tx| {
            within(30, sandbox.run_shell(inside, Some(tx), pending()))
                .await
                .unwrap()
        })
        .await;
        assert_eq!(comparable(&got), comparable(&expected), "{label}");
        // Stdout and stderr are read concurrently: ordered within a stream only.
        for stream in [Stream::Stdout, Stream::Stderr] {
            let of = |lines: &[LogLine]| -> Vec<String> {
                lines
                    .iter()
                    .filter(|l| l.stream == stream)
                    .map(|l| l.line.clone())
                    .collect()
            };
            assert_eq!(
                of(&got_lines),
                of(&expected_lines),
                "{label}: {stream:?} log lines"
            );
        }
        assert!(!got.oom_killed, "{label}");
    }
    assert_eq!(
        sh(&sandbox, &["printf 12345"]).await.stdout,
        "12345",
        "still usable"
    );
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn cancel_stops_the_command_inside_the_sandbox() {
    let (_tmp, config) = config("cancel");
    let sandbox = create(config).await;
    let mut job = job_in(
        sandbox.workdir(),
        &["echo started; sleep 1000 & wait", "echo never"],
    );
    job.kill_grace = Duration::from_secs(3);
    let (tx, mut rx) = mpsc::channel(8);
    let (stop, stopped) = oneshot::channel::<()>();
    let run = sandbox.run_shell(job, Some(tx), async move {
        let _ = stopped.await;
    });
    let canceled_at = tokio::spawn(async move {
        let line = within(10, rx.recv()).await.unwrap();
        assert_eq!(line.line, "started");
        stop.send(()).unwrap();
        Instant::now()
    });
    let outcome = within(10, run).await.unwrap();
    let took = canceled_at.await.unwrap().elapsed();
    assert!(outcome.canceled);
    assert_eq!(outcome.signal, Some(libc::SIGTERM));
    assert_eq!(outcome.commands_run, 1);
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM was enough: {took:?}"
    );
    // The sleep went with its command: only the init and its holder remain.
    assert_eq!(sandbox.processes().unwrap().len(), 2);
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn a_memory_bomb_is_oom_killed_and_reported() {
    let (_tmp, mut config) = config("oom");
    config.memory_mb = 64;
    let sandbox = create(config).await;
    let outcome = sh(
        &sandbox,
        &["python3 -c 'a = []\nwhile True: a.append(bytearray(10**6))'"],
    )
    .await;
    let usage = sandbox.usage().unwrap();
    assert!(usage.oom_kills >= 1, "{usage:?}");
    assert!(outcome.oom_killed, "{outcome:?}");
    // dash runs the last command in place (signal 9) or reports it (137).
    assert!(
        outcome.signal == Some(libc::SIGKILL) || outcome.exit_code == Some(128 + libc::SIGKILL),
        "{outcome:?}"
    );
    assert!(
        outcome.failure().unwrap().contains("out of memory"),
        "{:?}",
        outcome.failure()
    );
    let peak = usage.memory_peak_bytes.unwrap_or(u64::MAX);
    assert!(
        (32 << 20..=64 << 20).contains(&peak),
        "peak {peak} should be near the 64 MiB limit"
    );
    // The fabric (this test) is alive, and so is the sandbox.
    assert_eq!(sh(&sandbox, &["echo alive"]).await.stdout, "alive\n");
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn a_fork_bomb_hits_the_pids_limit_and_kill_all_ends_it() {
    let (_tmp, mut config) = config("forkbomb");
    config.pids_max = 32;
    let sandbox = create(config).await;
    let pids_max_file = match sandbox.cgroup_version() {
        CgroupVersion::V2 => sandbox.cgroup_dirs()[0].join("pids.max"),
        CgroupVersion::V1 => sandbox
            .cgroup_dirs()
            .iter()
            .map(|d| d.join("pids.max"))
            .find(|f| f.exists())
            .unwrap(),
    };
    assert_eq!(std::fs::read_to_string(pids_max_file).unwrap().trim(), "32");

    let bomb = sandbox
        .spawn(SandboxCommand::new([
            "bash",
            "-c",
            "bomb() { bomb | bomb & }; bomb; wait",
        ]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let usage = loop {
        let usage = sandbox.usage().unwrap();
        assert!(usage.pids <= 32, "pids.current above pids.max: {usage:?}");
        if usage.pids_limit_hits > 0 {
            break usage;
        }
        assert!(
            Instant::now() < deadline,
            "the bomb never hit the limit: {usage:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        usage.pids >= 16,
        "the bomb should be filling the sandbox: {usage:?}"
    );

    let victims = sandbox.processes().unwrap();
    within(10, sandbox.kill_all()).await.unwrap();
    let left = sandbox.processes().unwrap();
    assert_eq!(
        left.len(),
        2,
        "only the init and its holder survive: {left:?}"
    );
    assert!(left.contains(&sandbox.init_pid()));
    let killed: Vec<u32> = victims.into_iter().filter(|p| !left.contains(p)).collect();
    assert_gone(&killed).await;
    drop(bomb);
    // kill_all keeps the sandbox usable.
    assert_eq!(sh(&sandbox, &["echo alive"]).await.stdout, "alive\n");
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn cpu_quota_caps_busy_loops_at_half_a_core() {
    let (_tmp, mut config) = config("cpu");
    config.cpu_cores = 0.5;
    let sandbox = create(config).await;
    match sandbox.cgroup_version() {
        CgroupVersion::V2 => {
            let max = std::fs::read_to_string(sandbox.cgroup_dirs()[0].join("cpu.max")).unwrap();
            assert_eq!(max.trim(), "50000 100000");
        }
        CgroupVersion::V1 => {
            let dir = sandbox
                .cgroup_dirs()
                .iter()
                .find(|d| d.join("cpu.cfs_quota_us").exists())
                .unwrap();
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .unwrap()
                    .trim()
                    .to_string()
            };
            assert_eq!(read("cpu.cfs_quota_us"), "50000");
            assert_eq!(read("cpu.cfs_period_us"), "100000");
        }
    }
    let before = sandbox.usage().unwrap().cpu_time;
    // Two spinning loops for 2 s would use 4 CPU-seconds on two free cores.
    let started = Instant::now();
    let outcome = sh(
        &sandbox,
        &["timeout 2 sh -c 'while :; do :; done' & timeout 2 sh -c 'while :; do :; done'; wait"],
    )
    .await;
    let wall = started.elapsed();
    let used = (sandbox.usage().unwrap().cpu_time - before).as_secs_f64();
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    // Unlimited, the loops would use up to 2 cores (4 CPU-seconds); the quota
    // holds them to 0.5 of the wall time they ran, whatever else loads the box.
    let cores = used / wall.as_secs_f64();
    assert!(
        (0.15..0.75).contains(&cores),
        "0.5 cores for {wall:?} should be about 1 CPU-second, used {used:.2} ({cores:.2} cores)"
    );
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn only_the_workdir_is_writable() {
    let (_tmp, config) = config("fs");
    let sandbox = create(config).await;
    let outcome = sh(
        &sandbox,
        &[
            "for f in /etc/x /usr/x /x /dev/x /proc/x; do touch $f 2>/dev/null && echo \"wrote $f\"; done; \
             touch /work/x 2>/dev/null && echo 'wrote /work/x'; \
             echo inside > $HOME/made-inside && echo scratch > /tmp/scratch && cat /tmp/scratch",
        ],
    )
    .await;
    assert_eq!(outcome.stdout, "scratch\n", "stderr: {}", outcome.stderr);
    assert_eq!(outcome.exit_code, Some(0));
    let errors = sh(&sandbox, &["touch /etc/x", "true"]).await;
    assert!(
        errors.stderr.contains("Read-only file system"),
        "{}",
        errors.stderr
    );
    for path in ["/etc/x", "/usr/x", "/x", "/work/x"] {
        assert!(!Path::new(path).exists(), "{path} was written on the host");
    }
    // The workdir is the host's; /tmp is private to the sandbox.
    assert_eq!(
        std::fs::read_to_string(sandbox.workdir().join("made-inside")).unwrap(),
        "inside\n"
    );
    assert!(!Path::new("/tmp/scratch").exists());
    sandbox.destroy().await.unwrap();
}

/// A read-write mount: a host directory writable inside at another path
/// (an MCP server's data), and nothing beside it.
#[tokio::test]
async fn a_read_write_mount_is_writable_at_its_path_inside() {
    let (tmp, mut config) = config("rw");
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("seen"), "from the host\n").unwrap();
    config
        .read_write_mounts
        .push((shared.clone(), "/data".into()));
    let sandbox = create(config).await;
    let outcome = sh(
        &sandbox,
        &["cat /data/seen && echo made > /data/made && touch /x 2>/dev/null || echo root-read-only"],
    )
    .await;
    assert_eq!(
        outcome.stdout, "from the host\nroot-read-only\n",
        "stderr: {}",
        outcome.stderr
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("made")).unwrap(),
        "made\n"
    );
    sandbox.destroy().await.unwrap();
    // Destroying the sandbox leaves the host directory (it is not the workdir).
    assert!(shared.join("made").exists());

    // A missing host directory is a clear error, not a sandbox without it.
    let (tmp, mut missing) = self::config("rw-missing");
    missing
        .read_write_mounts
        .push((tmp.path().join("nope"), "/data".into()));
    let err = Sandbox::create(missing).await.unwrap_err().to_string();
    assert!(err.contains("it must be an existing directory"), "{err}");
}

#[tokio::test]
async fn another_sandboxs_workdir_and_host_secrets_are_unreadable() {
    let parent = tempfile::tempdir().unwrap();
    let (_a_tmp, mut a) = config("fs-a");
    let (_b_tmp, mut b) = config("fs-b");
    a.workdir = parent.path().join("a");
    b.workdir = parent.path().join("b");
    let a = create(a).await;
    let b = create(b).await;
    assert!(sh(&a, &["echo secret-of-a > secret"]).await.success());
    assert!(a.workdir().join("secret").exists());

    let secret = a.workdir().join("secret");
    let outcome = sh(&b, &[&format!("cat {}", secret.display())]).await;
    assert_ne!(outcome.exit_code, Some(0), "B read A's file");
    assert!(!outcome.stdout.contains("secret-of-a"));
    // B sees only its own workdir in the shared parent directory.
    let listing = sh(
        &b,
        &[&format!(
            "ls -A {}",
            parent.path().canonicalize().unwrap().display()
        )],
    )
    .await;
    assert_eq!(listing.stdout, "b\n");
    // Host data outside the read-only system paths is not there at all.
    let host = sh(
        &b,
        &["ls -d /root /home /var /run /work 2>&1; cat /etc/shadow"],
    )
    .await;
    assert!(!host.stdout.contains("root:"), "{}", host.stdout);
    assert_eq!(
        host.stdout.matches("No such file or directory").count(),
        5,
        "{}",
        host.stdout
    );

    a.destroy().await.unwrap();
    b.destroy().await.unwrap();
}

#[tokio::test]
async fn the_network_is_only_loopback_and_bind_tcp_serves_inside() {
    let (_tmp, config) = config("net");
    let sandbox = create(config).await;

    // A service on the host's loopback is not reachable from inside.
    let host_service = TcpListener::bind("127.0.0.1:0").unwrap();
    host_service.set_nonblocking(true).unwrap();
    let host_port = host_service.local_addr().unwrap().port();
    let outcome = sh(
        &sandbox,
        &[&format!(
            "bash -c 'echo hi > /dev/tcp/127.0.0.1/{host_port}' 2>&1; \
             python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 80), timeout=2)' 2>&1 | tail -1; \
             ip -o link | cut -d: -f2; ip route"
        )],
    )
    .await;
    assert!(
        outcome.stdout.contains("Connection refused"),
        "{}",
        outcome.stdout
    );
    assert!(
        outcome.stdout.contains("Network is unreachable"),
        "{}",
        outcome.stdout
    );
    assert!(
        outcome.stdout.ends_with(" lo\n"),
        "only lo, no routes: {}",
        outcome.stdout
    );
    assert_eq!(
        host_service.accept().map_err(|e| e.kind()).err(),
        Some(ErrorKind::WouldBlock),
        "the host service got a connection from the sandbox"
    );

    // A port that is free on the host, bound inside the sandbox.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let inside = sandbox.bind_tcp(port).unwrap();
    let talk = sandbox
        .spawn(SandboxCommand::new([
            "python3",
            "-c",
            &format!(
                "import socket; s = socket.create_connection(('127.0.0.1', {port})); \
                 s.sendall(b'hello from inside'); s.close()"
            ),
        ]))
        .await
        .unwrap();
    let (mut conn, _) = tokio::task::spawn_blocking(move || {
        let accepted = inside.accept();
        (accepted, inside)
    })
    .await
    .map(|(accepted, _inside)| accepted)
    .unwrap()
    .unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello from inside");
    let mut talk = talk;
    assert!(within(10, talk.wait()).await.unwrap().success());

    // From the host, that port is closed.
    let from_host = TcpStream::connect(("127.0.0.1", port));
    assert_eq!(
        from_host.map(drop).map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionRefused)
    );
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn the_pid_namespace_hides_host_processes() {
    let (_tmp, config) = config("pid");
    let sandbox = create(config).await;
    let outcome = sh(
        &sandbox,
        &[&format!(
            "echo $$; ls /proc | grep -c '^[0-9]'; test -e /proc/{} && echo host-visible; ps -eo pid=,comm=",
            std::process::id()
        )],
    )
    .await;
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    let own_pid: u32 = lines[0].parse().unwrap();
    assert!(own_pid < 10, "the shell should have a low pid: {own_pid}");
    let visible: usize = lines[1].parse().unwrap();
    assert!(visible <= 4, "only init, sh, ls, grep: {}", outcome.stdout);
    assert!(!outcome.stdout.contains("host-visible"));
    let ps: Vec<&str> = lines[2..].iter().map(|l| l.trim()).collect();
    assert_eq!(
        ps[0], "1 fabric-sandbox-",
        "PID 1 is the sandbox init: {ps:?}"
    );
    assert!(ps.len() <= 3, "init, sh, ps: {ps:?}");
    let hostname = sh(&sandbox, &["hostname"]).await.stdout;
    assert_eq!(hostname.trim(), sandbox.name());
    sandbox.destroy().await.unwrap();
}

/// Issue #16, item 2: a task's command leaves nothing behind for the next
/// task: no process (not even one that left its process group with
/// `setsid`), no file in `/tmp` or `/dev/shm`, and no view of other tasks'
/// directories or processes.
#[tokio::test]
async fn a_task_leaves_no_process_or_temp_file_and_sees_only_its_own_directory() {
    let (_tmp, config) = config("scope");
    let sandbox = create(config).await;
    let first = sandbox.workdir().join("task-a");
    let second = sandbox.workdir().join("task-b");
    let escape = "setsid sleep 307 </dev/null >/dev/null 2>&1 & \
                  (sleep 308 &) ; echo a >/tmp/mark; echo a >/dev/shm/mark; echo a >secret";
    let outcome = within(
        30,
        sandbox.run_shell(job_in(&first, &[escape]), None, pending()),
    )
    .await
    .unwrap();
    assert!(outcome.success(), "{outcome:?}");
    let sleepers = |sandbox: &Sandbox| {
        sandbox
            .processes()
            .unwrap()
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while sleepers(&sandbox) > 0 {
        assert!(
            Instant::now() < deadline,
            "a task's background processes outlived it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first task's own files stay where the fabric keeps them.
    assert_eq!(
        std::fs::read_to_string(first.join("secret")).unwrap(),
        "a\n"
    );
    assert_eq!(
        std::fs::read_to_string(first.join(".tmp/mark")).unwrap(),
        "a\n"
    );

    let look = [
        "ls -a .. | tr '\\n' ' '; echo",
        "test -e /tmp/mark && echo tmp-shared || echo tmp-private",
        "test -e /dev/shm/mark && echo shm-shared || echo shm-private",
        "cat ../task-a/secret 2>/dev/null || echo unreadable",
        "ls /proc | grep -c '^[0-9]'",
        "echo b >/tmp/own && cat \"$TMPDIR/own\"",
    ];
    let outcome = within(
        30,
        sandbox.run_shell(job_in(&second, &[&look.join("; ")]), None, pending()),
    )
    .await
    .unwrap();
    assert!(outcome.success(), "{outcome:?}");
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(
        lines[0].trim(),
        ". .. task-b",
        "other tasks' directories are hidden"
    );
    assert_eq!(lines[1], "tmp-private");
    assert_eq!(lines[2], "shm-private");
    assert_eq!(lines[3], "unreadable");
    let visible: usize = lines[4].parse().unwrap();
    assert!(
        visible <= 4,
        "only the task's own processes: {}",
        outcome.stdout
    );
    assert_eq!(lines[5], "b", "/tmp is the task's own TMPDIR");
    sandbox.destroy().await.unwrap();
}

/// The processes between the init and a task's command pass on exactly how
/// it ended, and a stop (SIGTERM to the group) still reaches the command at once.
#[tokio::test]
async fn a_scoped_command_reports_its_status_and_stops_promptly() {
    let (_tmp, config) = config("scope-status");
    let sandbox = create(config).await;
    let outcome = sh(&sandbox, &["exit 7"]).await;
    assert_eq!(outcome.exit_code, Some(7));
    let outcome = sh(&sandbox, &["kill -TERM $$"]).await;
    assert_eq!(outcome.signal, Some(libc::SIGTERM));
    let (stop, stopped) = oneshot::channel::<()>();
    let job = job_in(sandbox.workdir(), &["sleep 300"]);
    let started = Instant::now();
    let run = sandbox.run_shell(job, None, async {
        let _ = stopped.await;
    });
    let stopper = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stop.send(());
    };
    let (outcome, ()) = within(30, async { tokio::join!(run, stopper) }).await;
    let outcome = outcome.unwrap();
    assert!(outcome.canceled, "{outcome:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM must stop the command without waiting for the kill grace: {:?}",
        started.elapsed()
    );
    sandbox.destroy().await.unwrap();
}

/// A read-only path below /tmp (a venv in a checkout under /tmp, say)
/// stays visible to scoped commands, whose /tmp is the task's own: carried
/// over, still read-only.
#[tokio::test]
async fn read_only_paths_below_tmp_survive_the_tasks_own_tmp() {
    let (_tmp, mut config) = config("scope-ro-tmp");
    let shared = tempfile::Builder::new()
        .prefix("ro-below-tmp-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::write(shared.path().join("data.txt"), "visible\n").unwrap();
    config.read_only_paths.push(shared.path().to_path_buf());
    let sandbox = create(config).await;
    let file = shared.path().join("data.txt");
    let outcome = sh(
        &sandbox,
        &[&format!(
            "cat {0}; echo scratch > /tmp/mine && cat /tmp/mine; echo no > {0} || echo refused",
            file.display()
        )],
    )
    .await;
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    assert_eq!(outcome.stdout, "visible\nscratch\nrefused\n", "{outcome:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "visible\n");
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn spawn_runs_programs_and_reports_how_they_ended() {
    let (_tmp, config) = config("spawn");
    let sandbox = create(config).await;

    let mut command = SandboxCommand::new(["sh", "-c", "echo started $GREETING; exit 3"]);
    command.env = vec![("GREETING".into(), "hi".into())];
    command.stdout = SandboxStdio::Piped;
    let mut process = sandbox.spawn(command).await.unwrap();
    let stdout = process.stdout.take().unwrap();
    let line = within(10, tokio::io::BufReader::new(stdout).lines().next_line())
        .await
        .unwrap();
    assert_eq!(line.as_deref(), Some("started hi"));
    let exit = within(10, process.wait()).await.unwrap();
    assert_eq!(
        (exit.code, exit.signal, exit.oom_killed),
        (Some(3), None, false)
    );

    let mut crash = sandbox
        .spawn(SandboxCommand::new(["sh", "-c", "kill -SEGV $$"]))
        .await
        .unwrap();
    let exit = within(10, crash.wait()).await.unwrap();
    assert_eq!(exit.signal, Some(libc::SIGSEGV));
    assert_eq!(exit.describe(), "crashed (signal 11)");

    let mut sleeper = sandbox
        .spawn(SandboxCommand::new(["sleep", "1000"]))
        .await
        .unwrap();
    let exit = within(10, sleeper.terminate(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(exit.signal, Some(libc::SIGTERM));

    let mut missing = sandbox
        .spawn(SandboxCommand::new(["no-such-program-4f1c"]))
        .await
        .unwrap();
    assert_eq!(within(10, missing.wait()).await.unwrap().code, Some(127));
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn programs_start_from_the_init_unprivileged_and_inherit_nothing() {
    let (_tmp, config) = config("launch");
    let sandbox = create(config).await;
    let outcome = sh(
        &sandbox,
        &[
            "echo ppid=$PPID",
            // ls itself holds one descriptor (3) on the directory it lists.
            "ls /proc/self/fd | tr '\\n' ' '; echo",
            "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status",
        ],
    )
    .await;
    assert!(outcome.success(), "{outcome:?}");
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(lines[0], "ppid=1", "started by the sandbox's init");
    assert_eq!(lines[1], "0 1 2 3 ", "nothing of the init's leaks in");
    let status: Vec<Vec<&str>> = lines[2..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        status,
        [
            ["CapEff:", "0000000000000000"],
            ["CapBnd:", "0000000000000000"],
            ["NoNewPrivs:", "1"],
        ]
    );
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn concurrent_and_large_launches_each_get_their_own_outcome() {
    let (_tmp, config) = config("many");
    let sandbox = std::sync::Arc::new(create(config).await);
    let mut jobs = tokio::task::JoinSet::new();
    for i in 0..40 {
        let sandbox = std::sync::Arc::clone(&sandbox);
        jobs.spawn(async move {
            let command = format!("echo out{i}; echo err{i} >&2; exit {}", i % 3);
            let job = job_in(sandbox.workdir(), &[&command]);
            (i, sandbox.run_shell(job, None, pending()).await.unwrap())
        });
    }
    while let Some(done) = within(60, jobs.join_next()).await {
        let (i, outcome) = done.unwrap();
        assert_eq!(outcome.stdout, format!("out{i}\n"));
        assert_eq!(outcome.stderr, format!("err{i}\n"));
        assert_eq!(outcome.exit_code, Some(i % 3));
    }
    // Larger than a control socket's default buffer: a 100 KiB command (a
    // single argument may be 128 KiB) and 1 MiB of environment.
    let filler = "x".repeat(100 * 1024);
    let mut job = job_in(
        sandbox.workdir(),
        &[&format!(": {filler}; echo ${{#BIG_0}} ${{#BIG_9}}")],
    );
    job.env = (0..10)
        .map(|n| (format!("BIG_{n}"), "y".repeat(100 * 1024)))
        .collect();
    let outcome = within(30, sandbox.run_shell(job, None, pending()))
        .await
        .unwrap();
    assert_eq!(outcome.stdout, "102400 102400\n", "{outcome:?}");
    sandbox.destroy().await.unwrap();
}

/// The network namespace's id, as `/proc/<pid>/ns/net` names it.
fn netns_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Whether any process refers to `netns`: lives in it or holds a handle on it.
fn netns_in_use(netns: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|proc_dir| {
            let links = std::fs::read_dir(proc_dir.path().join("fd"))
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|fd| fd.path())
                .chain([proc_dir.path().join("ns/net")]);
            links
                .filter_map(|link| std::fs::read_link(link).ok())
                .any(|target| target.to_string_lossy() == netns)
        })
}

/// Waits until `n` processes of the sandbox run `program`, and returns their
/// pids: `spawn` returns once the program may exec, a moment before it has.
async fn wait_for_program(sandbox: &Sandbox, program: &str, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let running: Vec<u32> = sandbox
            .processes()
            .unwrap()
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == program)
            })
            .collect();
        if running.len() >= n {
            return running;
        }
        assert!(
            Instant::now() < deadline,
            "{program} never ran: {:?}",
            sandbox.processes()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An agent program that starts a `sleep` in a session of its own, out of
/// the program's process group (task commands cannot leave their task, but a
/// long-lived agent program may do this): only the sandbox's end stops it.
async fn spawn_escaped(sandbox: &Sandbox) -> fabric_runtime::SandboxProcess {
    sandbox
        .spawn(SandboxCommand::new([
            "sh",
            "-c",
            "setsid sleep 1000 >/dev/null 2>&1 & wait",
        ]))
        .await
        .unwrap()
}

struct Footprint {
    pids: Vec<u32>,
    cgroup_dirs: Vec<PathBuf>,
    netns: String,
    workdir: PathBuf,
}

fn footprint(sandbox: &Sandbox) -> Footprint {
    Footprint {
        pids: sandbox.processes().unwrap(),
        cgroup_dirs: sandbox.cgroup_dirs().to_vec(),
        netns: netns_of(sandbox.init_pid()),
        workdir: sandbox.workdir().to_path_buf(),
    }
}

async fn assert_nothing_left(footprint: &Footprint) {
    assert_gone(&footprint.pids).await;
    for dir in &footprint.cgroup_dirs {
        assert!(!dir.exists(), "cgroup {} is left", dir.display());
    }
    assert!(
        !netns_in_use(&footprint.netns),
        "{} is still in use",
        footprint.netns
    );
    assert!(!footprint.workdir.exists(), "the workdir is left");
}

#[tokio::test]
async fn destroy_leaves_nothing_behind_and_may_be_repeated() {
    let (_tmp, config) = config("destroy");
    let sandbox = create(config).await;
    assert_ne!(netns_of(sandbox.init_pid()), netns_of(std::process::id()));
    let _agent = sandbox
        .spawn(SandboxCommand::new(["sleep", "1000"]))
        .await
        .unwrap();
    // A process that left its program's process group stays in the sandbox.
    let _escaper = spawn_escaped(&sandbox).await;
    // The agent's sleep and the setsid sleep.
    wait_for_program(&sandbox, "sleep", 2).await;
    let before = footprint(&sandbox);
    assert!(
        before.pids.len() >= 4,
        "init, holder, agent sleep, setsid sleep: {:?}",
        before.pids
    );

    within(10, sandbox.destroy()).await.unwrap();
    assert_nothing_left(&before).await;
    within(10, sandbox.destroy()).await.unwrap();
    let err = sandbox
        .run_shell(job_in(&before.workdir, &["true"]), None, pending())
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::SandboxGone { .. }), "{err}");
    assert!(sandbox.spawn(SandboxCommand::new(["true"])).await.is_err());
}

#[tokio::test]
async fn killing_the_program_or_the_init_then_destroy_leaves_nothing() {
    // kill -9 of the sandboxed program (the process-group leader).
    let (_tmp, first) = config("kill9");
    let sandbox = create(first).await;
    let mut agent = sandbox
        .spawn(SandboxCommand::new(["sleep", "1000"]))
        .await
        .unwrap();
    let agent_pids = wait_for_program(&sandbox, "sleep", 1).await;
    let before = footprint(&sandbox);
    kill(agent.id(), libc::SIGKILL);
    let exit = within(10, agent.wait()).await.unwrap();
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert_gone(&agent_pids).await;
    within(10, sandbox.destroy()).await.unwrap();
    assert_nothing_left(&before).await;

    // kill -9 of the sandbox's init from outside: everything in it dies.
    let (_tmp, second) = config("kill9-init");
    let sandbox = create(second).await;
    let _agent = sandbox
        .spawn(SandboxCommand::new(["sleep", "1000"]))
        .await
        .unwrap();
    wait_for_program(&sandbox, "sleep", 1).await;
    let before = footprint(&sandbox);
    kill(sandbox.init_pid(), libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !is_gone(sandbox.init_pid()) {
        assert!(Instant::now() < deadline, "the init survived SIGKILL");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = sandbox
        .run_shell(job_in(sandbox.workdir(), &["true"]), None, pending())
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::SandboxGone { .. }), "{err}");
    within(10, sandbox.destroy()).await.unwrap();
    assert_nothing_left(&before).await;
}

/// `kill -SIG pid` with the real `kill` program: no unsafe code in tests.
fn kill(pid: u32, signal: libc::c_int) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn misuse_is_refused_with_clear_errors() {
    let (_tmp, config) = config("misuse");
    let again = config.clone();
    let sandbox = create(config).await;

    let err = Sandbox::create(again).await.unwrap_err();
    assert!(matches!(err, RuntimeError::SandboxExists { .. }), "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");

    let outside = tempfile::tempdir().unwrap();
    let err = sandbox
        .run_shell(job_in(outside.path(), &["true"]), None, pending())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::WorkdirOutsideSandbox { .. }),
        "{err}"
    );

    // A symlink planted inside cannot lead a job's workdir out of the sandbox.
    std::os::unix::fs::symlink(outside.path(), sandbox.workdir().join("escape")).unwrap();
    let err = sandbox
        .run_shell(
            job_in(&sandbox.workdir().join("escape"), &["true"]),
            None,
            pending(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::WorkdirOutsideSandbox { .. }),
        "{err}"
    );
    let err = sandbox
        .run_shell(
            job_in(&sandbox.workdir().join("escape/new-dir"), &["true"]),
            None,
            pending(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::WorkdirOutsideSandbox { .. }),
        "{err}"
    );
    assert!(
        !outside.path().join("new-dir").exists(),
        "the fabric created a directory through the link"
    );

    let (_tmp, mut bad) = self::config("bad-helper");
    bad.helper = HelperCommand::new("/nonexistent/fabric-sandbox-init");
    let workdir = bad.workdir.clone();
    let err = Sandbox::create(bad).await.unwrap_err();
    assert!(
        err.to_string().contains("cannot start the sandbox helper"),
        "{err}"
    );
    assert!(!workdir.exists(), "a failed create leaves no workdir");
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn a_sandbox_server_accepts_many_connections_in_turn() {
    // bind_tcp's listener works with tokio, as the fabric will use it.
    let (_tmp, config) = config("serve");
    let sandbox = create(config).await;
    let listener = sandbox.bind_tcp(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let server = tokio::spawn(async move {
        for _ in 0..3 {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut conn, b"pong\n")
                .await
                .unwrap();
        }
    });
    // bash, for its /dev/tcp.
    let outcome = sh(
        &sandbox,
        &[&format!(
            "bash -c 'for i in 1 2 3; do exec 3<>/dev/tcp/127.0.0.1/{port}; head -n1 <&3; exec 3<&-; done'"
        )],
    )
    .await;
    assert_eq!(outcome.stdout, "pong\npong\npong\n", "{}", outcome.stderr);
    within(10, server).await.unwrap();
    sandbox.destroy().await.unwrap();
}

/// A cgroup control file of the sandbox, from whichever of its directories has it.
fn cgroup_file(sandbox: &Sandbox, file: &str) -> String {
    let dir = sandbox
        .cgroup_dirs()
        .iter()
        .find(|d| d.join(file).exists())
        .unwrap_or_else(|| panic!("no cgroup directory of the sandbox has {file}"));
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .trim()
        .to_string()
}

/// memory, cpu quota and pids limit as the kernel holds them.
fn cgroup_limits(sandbox: &Sandbox) -> (String, String, String) {
    match sandbox.cgroup_version() {
        CgroupVersion::V2 => (
            cgroup_file(sandbox, "memory.max"),
            cgroup_file(sandbox, "cpu.max"),
            cgroup_file(sandbox, "pids.max"),
        ),
        CgroupVersion::V1 => (
            cgroup_file(sandbox, "memory.limit_in_bytes"),
            format!(
                "{} {}",
                cgroup_file(sandbox, "cpu.cfs_quota_us"),
                cgroup_file(sandbox, "cpu.cfs_period_us")
            ),
            cgroup_file(sandbox, "pids.max"),
        ),
    }
}

#[tokio::test]
async fn set_limits_changes_a_live_sandbox_and_the_new_memory_limit_holds() {
    // A warm-pool sandbox: default limits (512 MB, 1 core), then an agent's.
    let (_tmp, config) = config("limits");
    let sandbox = create(config).await;
    let mib = |n: u64| (n << 20).to_string();
    assert_eq!(
        cgroup_limits(&sandbox),
        (mib(512), "100000 100000".into(), "256".into())
    );

    sandbox.set_limits(64, 0.5, 64).unwrap();
    assert_eq!(
        cgroup_limits(&sandbox),
        (mib(64), "50000 100000".into(), "64".into())
    );
    let outcome = sh(
        &sandbox,
        &["python3 -c 'a = []\nwhile True: a.append(bytearray(10**6))'"],
    )
    .await;
    assert!(outcome.oom_killed, "{outcome:?}");
    let peak = sandbox.usage().unwrap().memory_peak_bytes.expect(
        "the cgroup reports a peak (v1 max_usage_in_bytes, v2 memory.peak since Linux 5.19)",
    );
    // The bomb ran into the new limit (not the old 512 MiB) and not past it.
    assert!(
        (32 << 20..=64 << 20).contains(&peak),
        "peak {peak}: the bomb should reach, and stop at, the new 64 MiB limit"
    );

    // Raising works too (on v1 the memory+swap limit must move first).
    sandbox.set_limits(128, 2.0, 100).unwrap();
    assert_eq!(
        cgroup_limits(&sandbox),
        (mib(128), "200000 100000".into(), "100".into())
    );
    assert_eq!(sh(&sandbox, &["echo alive"]).await.stdout, "alive\n");

    let err = sandbox.set_limits(8, 1.0, 64).unwrap_err();
    assert!(
        matches!(err, RuntimeError::InvalidSandboxConfig { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("memory_mb"), "{err}");
    assert_eq!(
        cgroup_limits(&sandbox).0,
        mib(128),
        "a refused change changes nothing"
    );

    sandbox.destroy().await.unwrap();
    let err = sandbox.set_limits(64, 1.0, 64).unwrap_err();
    assert!(matches!(err, RuntimeError::SandboxGone { .. }), "{err}");
}

#[tokio::test]
async fn a_program_past_its_cpu_seconds_is_reported_cpu_time_exceeded() {
    let (_tmp, mut config) = config("cpu-seconds");
    config.rlimits.cpu_seconds = Some(1);
    let sandbox = create(config).await;
    let mut spinner = sandbox
        .spawn(SandboxCommand::new(["sh", "-c", "while :; do :; done"]))
        .await
        .unwrap();
    let exit = within(20, spinner.wait()).await.unwrap();
    assert_eq!(exit.signal, Some(libc::SIGXCPU), "{exit:?}");
    assert_eq!(exit.describe(), fabric_core::reason::CPU_TIME_EXCEEDED);
    // The limit is per process: the sandbox goes on.
    assert_eq!(sh(&sandbox, &["echo alive"]).await.stdout, "alive\n");
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn sweep_stale_kills_leaked_sandboxes_and_removes_their_cgroups() {
    // A parent of its own: sweeping the default one would take the sandboxes
    // of the tests running alongside.
    let parent = PathBuf::from(format!("reactor-fabric-it-sweep-{}", std::process::id()));
    let (_tmp, mut leaked) = config("sweep-leaked");
    leaked.cgroup_parent = parent.clone();
    let (_tmp2, mut kept) = config("sweep-kept");
    kept.cgroup_parent = parent.clone();
    let leaked = create(leaked).await;
    let kept = create(kept).await;

    let agent = leaked
        .spawn(SandboxCommand::new(["sleep", "1000"]))
        .await
        .unwrap();
    let escaper = spawn_escaped(&leaked).await;
    wait_for_program(&leaked, "sleep", 2).await;
    let before = footprint(&leaked);
    let leaked_name = leaked.name().to_string();
    // What a SIGKILLed fabric leaves: no destroy, no Drop.
    std::mem::forget(agent);
    std::mem::forget(escaper);
    std::mem::forget(leaked);

    let report = within(20, sweep_stale(&parent, |name| name == kept.name()))
        .await
        .unwrap();
    assert_eq!(report.sandboxes, vec![leaked_name]);
    assert!(
        report.processes_killed >= before.pids.len(),
        "{report:?} vs {:?}",
        before.pids
    );
    assert_gone(&before.pids).await;
    for dir in &before.cgroup_dirs {
        assert!(!dir.exists(), "cgroup {} is left", dir.display());
    }
    assert!(!netns_in_use(&before.netns), "{} is in use", before.netns);

    // The kept one is untouched.
    assert_eq!(sh(&kept, &["echo alive"]).await.stdout, "alive\n");
    let kept_dirs = kept.cgroup_dirs().to_vec();
    kept.destroy().await.unwrap();
    assert_eq!(
        sweep_stale(&parent, |_| false).await.unwrap(),
        SweepReport::default(),
        "nothing left to sweep"
    );
    for dir in kept_dirs {
        let parent_dir = dir.parent().unwrap();
        if parent_dir.exists() {
            std::fs::remove_dir(parent_dir).unwrap();
        }
    }
    let err = sweep_stale(Path::new("../etc"), |_| false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::InvalidSandboxConfig { .. }),
        "{err}"
    );
}
