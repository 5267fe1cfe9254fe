//! `run_shell`: isolation level `none` against real `/bin/sh` processes.

use std::future::{Future, pending};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fabric_core::TaskFile;
use fabric_runtime::{
    BASE_PATH, DEFAULT_OUTPUT_LIMIT, LogLine, MAX_LOG_LINE, RuntimeError, ShellJob, ShellOutcome,
    Stream, run_shell,
};
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};

/// A job in a fresh temporary directory; `workdir` does not exist yet.
fn job(commands: &[&str]) -> (TempDir, ShellJob) {
    let tmp = tempfile::tempdir().unwrap();
    let job = ShellJob::new(
        commands.iter().map(|c| c.to_string()).collect(),
        tmp.path().join("work"),
    );
    (tmp, job)
}

/// Runs a job that is never canceled, with a generous overall bound so a hang fails the test.
async fn run(job: ShellJob) -> ShellOutcome {
    try_run(job).await.unwrap()
}

async fn try_run(job: ShellJob) -> Result<ShellOutcome, RuntimeError> {
    tokio::time::timeout(Duration::from_secs(60), run_shell(job, None, pending()))
        .await
        .expect("job hung")
}

/// A process is gone when it no longer exists or is a zombie (dead, waiting
/// for its new parent to reap it).
pub(crate) fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name, which may itself contain spaces.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Waits briefly for processes to vanish: SIGKILL is asynchronous.
pub(crate) async fn assert_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if pids.iter().all(|&p| is_gone(p)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alive: Vec<_> = pids
        .iter()
        .filter(|&&p| !is_gone(p))
        .map(|p| {
            (
                p,
                std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default(),
            )
        })
        .collect();
    panic!("processes still alive: {alive:?}");
}

/// Collects `n` stdout lines from the log that are pids.
async fn read_pids(logs: &mut mpsc::Receiver<LogLine>, n: usize) -> Vec<u32> {
    let mut pids = Vec::new();
    while pids.len() < n {
        let line = tokio::time::timeout(Duration::from_secs(10), logs.recv())
            .await
            .unwrap()
            .unwrap();
        pids.push(
            line.line
                .parse()
                .unwrap_or_else(|_| panic!("not a pid: {line:?}")),
        );
    }
    pids
}

fn cancel_signal() -> (
    oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

#[tokio::test]
async fn echo_prints_hello_and_exits_zero() {
    let (_tmp, job) = job(&["echo hello"]);
    let outcome = run(job).await;
    assert_eq!(outcome.stdout, "hello\n");
    assert_eq!(outcome.stderr, "");
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(outcome.signal, None);
    assert!(!outcome.stdout_truncated && !outcome.stderr_truncated && !outcome.canceled);
    assert!(outcome.success());
}

#[tokio::test]
async fn commands_run_in_order_and_the_first_failure_stops_the_job() {
    let (_tmp, job) = job(&[
        "echo one",
        "echo two >&2",
        "echo three; exit 3",
        "echo never",
        "echo never >&2",
    ]);
    let outcome = run(job).await;
    assert_eq!(outcome.stdout, "one\nthree\n");
    assert_eq!(outcome.stderr, "two\n");
    assert_eq!(outcome.exit_code, Some(3));
    assert_eq!(outcome.commands_run, 3);
    assert_eq!(
        outcome.failure().as_deref(),
        Some("command 3 exited with status 3")
    );
}

#[tokio::test]
async fn commands_share_the_working_directory() {
    let (_tmp, job) = job(&["echo state > f", "cat f", "pwd"]);
    let workdir = job.workdir.clone();
    let outcome = run(job).await;
    let workdir = workdir.canonicalize().unwrap();
    assert_eq!(outcome.stdout, format!("state\n{}\n", workdir.display()));
}

#[tokio::test]
async fn stderr_is_captured_separately() {
    let (_tmp, job) = job(&["echo out; echo oops >&2"]);
    let outcome = run(job).await;
    assert_eq!(outcome.stdout, "out\n");
    assert_eq!(outcome.stderr, "oops\n");
}

#[tokio::test]
async fn output_past_the_limit_is_cut_on_a_char_boundary_and_flagged() {
    let (_tmp, mut job) = job(&["printf 'hello world'; printf 'abcdé' >&2"]);
    job.output_limit = 5;
    let outcome = run(job).await;
    assert_eq!(outcome.stdout, "hello");
    assert!(outcome.stdout_truncated);
    // 'é' is two bytes; the cut at 5 bytes would split it.
    assert_eq!(outcome.stderr, "abcd");
    assert!(outcome.stderr_truncated);
    assert_eq!(outcome.exit_code, Some(0));
}

#[tokio::test]
async fn output_exactly_at_the_limit_is_not_truncated() {
    let (_tmp, mut job) = job(&["printf 12345"]);
    job.output_limit = 5;
    let outcome = run(job).await;
    assert_eq!(
        (outcome.stdout.as_str(), outcome.stdout_truncated),
        ("12345", false)
    );
}

#[tokio::test]
async fn fifty_megabytes_on_both_streams_neither_hang_nor_blow_the_limit() {
    let (_tmp, job) = job(&[
        "(head -c 50000000 /dev/zero | tr '\\0' b >&2) & head -c 50000000 /dev/zero | tr '\\0' a; wait",
    ]);
    let started = Instant::now();
    let outcome = run(job).await;
    assert_eq!(
        outcome.exit_code,
        Some(0),
        "stderr: {:.200}",
        outcome.stderr
    );
    assert_eq!(outcome.stdout.len(), DEFAULT_OUTPUT_LIMIT);
    assert_eq!(outcome.stderr.len(), DEFAULT_OUTPUT_LIMIT);
    assert!(outcome.stdout.bytes().all(|b| b == b'a'));
    assert!(outcome.stderr.bytes().all(|b| b == b'b'));
    assert!(outcome.stdout_truncated && outcome.stderr_truncated);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn output_accumulates_across_commands_under_one_limit() {
    let (_tmp, mut job) = job(&["printf abc", "printf def", "printf ghi"]);
    job.output_limit = 7;
    let outcome = run(job).await;
    assert_eq!(outcome.stdout, "abcdefg");
    assert!(outcome.stdout_truncated);
    assert_eq!(outcome.commands_run, 3);
}

#[tokio::test]
async fn invalid_utf8_is_replaced() {
    let (_tmp, job) = job(&["printf 'a\\377b'"]);
    assert_eq!(run(job).await.stdout, "a\u{FFFD}b");
}

#[tokio::test]
async fn task_files_are_written_before_the_commands_run() {
    let (_tmp, mut job) = job(&["cat hello.txt sub/dir/data.txt"]);
    job.files = vec![
        TaskFile {
            path: "hello.txt".into(),
            content: "hi ".into(),
        },
        TaskFile {
            path: "./sub/dir/data.txt".into(),
            content: "nested".into(),
        },
    ];
    let workdir = job.workdir.clone();
    let outcome = run(job).await;
    assert_eq!(outcome.stdout, "hi nested");
    assert_eq!(
        std::fs::read_to_string(workdir.join("sub/dir/data.txt")).unwrap(),
        "nested"
    );
}

#[tokio::test]
async fn task_files_replace_older_files_of_the_same_name() {
    let (_tmp, mut job) = job(&["cat f"]);
    std::fs::create_dir_all(&job.workdir).unwrap();
    std::fs::write(job.workdir.join("f"), "an older, longer content").unwrap();
    job.files = vec![TaskFile {
        path: "f".into(),
        content: "new".into(),
    }];
    assert_eq!(run(job).await.stdout, "new");
}

#[tokio::test]
async fn file_paths_leaving_the_working_directory_are_refused_and_nothing_runs() {
    for path in ["../x", "/etc/evil", "a/../../x", "", "."] {
        let (_tmp, mut job) = job(&["touch ran"]);
        job.files = vec![TaskFile {
            path: path.into(),
            content: "x".into(),
        }];
        let workdir = job.workdir.clone();
        let err = try_run(job).await.unwrap_err();
        assert!(
            matches!(err, RuntimeError::InvalidFilePath { .. }),
            "{path:?}: {err}"
        );
        assert!(!err.is_retryable());
        assert!(
            !workdir.exists(),
            "{path:?}: a refused job must not touch the disk"
        );
    }
    let (_tmp, mut job) = job(&["true"]);
    job.files = vec![TaskFile {
        path: "../x".into(),
        content: "x".into(),
    }];
    assert_eq!(
        try_run(job).await.unwrap_err().to_string(),
        "invalid file path \"../x\": paths must be relative and stay inside the working directory"
    );
}

#[tokio::test]
async fn task_files_are_never_written_through_symbolic_links() {
    let (tmp, job) = job(&["true"]);
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&job.workdir).unwrap();
    std::os::unix::fs::symlink(&outside, job.workdir.join("dir-link")).unwrap();
    std::os::unix::fs::symlink(outside.join("target"), job.workdir.join("file-link")).unwrap();

    for path in ["dir-link/x", "file-link"] {
        let mut job = job.clone();
        job.files = vec![TaskFile {
            path: path.into(),
            content: "x".into(),
        }];
        let err = try_run(job).await.unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{path}: {err}");
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing may be written outside"
    );
}

#[tokio::test]
async fn job_env_is_visible_and_the_fabric_env_is_not() {
    const SECRET: &str = "s3cret-admin-password-for-the-leak-test";
    // SAFETY: std serialises its own environment access, and nothing in this
    // test binary reads the environment through libc directly while tests run.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("FABRIC_ADMIN_PASSWORD", SECRET);
    }
    assert_eq!(std::env::var("FABRIC_ADMIN_PASSWORD").unwrap(), SECRET);

    let (_tmp, mut job) = job(&[
        "env",
        "test -d \"$TMPDIR\" && test -w \"$TMPDIR\" && echo tmp-ok >&2",
    ]);
    job.env = vec![
        ("GREETING".into(), "hello there".into()),
        ("FABRIC_TASK_ID".into(), "t-1".into()),
    ];
    let workdir = job.workdir.clone();
    let outcome = run(job).await;
    let workdir = workdir.canonicalize().unwrap();

    assert!(
        !outcome.stdout.contains(SECRET),
        "secret leaked: {}",
        outcome.stdout
    );
    let vars: std::collections::BTreeMap<&str, &str> = outcome
        .stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .collect();
    assert!(!vars.contains_key("FABRIC_ADMIN_PASSWORD"));
    assert_eq!(vars.get("GREETING"), Some(&"hello there"));
    assert_eq!(vars.get("FABRIC_TASK_ID"), Some(&"t-1"));
    assert_eq!(vars.get("PATH"), Some(&BASE_PATH));
    assert_eq!(vars.get("LANG"), Some(&"C.UTF-8"));
    assert_eq!(vars.get("HOME").map(PathBuf::from), Some(workdir.clone()));
    assert_eq!(
        vars.get("TMPDIR").map(PathBuf::from),
        Some(workdir.join(".tmp"))
    );
    // Nothing else: the shell itself adds only PWD.
    let expected = [
        "FABRIC_TASK_ID",
        "GREETING",
        "HOME",
        "LANG",
        "PATH",
        "PWD",
        "TMPDIR",
    ];
    assert!(
        vars.keys().all(|k| expected.contains(k)),
        "unexpected variables: {:?}",
        vars.keys()
    );
    assert_eq!(outcome.stderr, "tmp-ok\n");
}

#[tokio::test]
async fn job_env_may_override_the_base() {
    let (_tmp, mut job) = job(&["echo $LANG"]);
    job.env = vec![("LANG".into(), "en_GB.UTF-8".into())];
    assert_eq!(run(job).await.stdout, "en_GB.UTF-8\n");
}

#[tokio::test]
async fn stdin_is_empty() {
    let (_tmp, job) = job(&["readlink /proc/$$/fd/0; wc -c"]);
    assert_eq!(run(job).await.stdout, "/dev/null\n0\n");
}

#[tokio::test]
async fn log_lines_stream_in_order() {
    let (_tmp, job) = job(&[
        "for i in 1 2 3; do echo line$i; done; echo warn >&2",
        "printf 'no newline'",
    ]);
    let (tx, mut rx) = mpsc::channel(64);
    let outcome = run_shell(job, Some(tx), pending()).await.unwrap();
    assert_eq!(outcome.log_lines_dropped, 0);
    let lines: Vec<LogLine> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    let of = |stream| {
        lines
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.line.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(Stream::Stdout),
        ["line1", "line2", "line3", "no newline"]
    );
    assert_eq!(of(Stream::Stderr), ["warn"]);
}

#[tokio::test]
async fn log_lines_arrive_while_the_command_still_runs() {
    // The command only ends when canceled, so the line must come before the end.
    let (_tmp, mut job) = job(&["echo started; exec sleep 1000"]);
    job.kill_grace = Duration::from_secs(5);
    let (tx, mut rx) = mpsc::channel(8);
    let (stop, cancel) = cancel_signal();
    let running = tokio::spawn(run_shell(job, Some(tx), cancel));
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first,
        LogLine {
            stream: Stream::Stdout,
            line: "started".into()
        }
    );
    stop.send(()).unwrap();
    let outcome = running.await.unwrap().unwrap();
    assert!(outcome.canceled);
    assert_eq!(outcome.stdout, "started\n");
}

#[tokio::test]
async fn long_lines_are_cut_in_the_log_only() {
    let (_tmp, job) = job(&["head -c 100000 /dev/zero | tr '\\0' x; echo; echo short"]);
    let (tx, mut rx) = mpsc::channel(8);
    let outcome = run_shell(job, Some(tx), pending()).await.unwrap();
    let lines: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
        .map(|l| l.line)
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].len(), MAX_LOG_LINE);
    assert_eq!(lines[1], "short");
    assert_eq!(outcome.stdout.len(), 100_000 + 1 + 6);
}

#[tokio::test]
async fn a_consumer_that_never_reads_does_not_stall_the_job() {
    let (_tmp, job) = job(&["seq 1 20000"]);
    let (tx, _rx) = mpsc::channel(1);
    let outcome =
        tokio::time::timeout(Duration::from_secs(30), run_shell(job, Some(tx), pending()))
            .await
            .expect("a full log channel stalled the job")
            .unwrap();
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(outcome.stdout.lines().count(), 20000);
    assert_eq!(outcome.log_lines_dropped, 20000 - 1);
}

#[tokio::test]
async fn cancel_terminates_the_whole_process_group() {
    let (_tmp, mut job) = job(&[
        "sleep 1000 & echo $!; sleep 1000 & echo $!; echo $$; wait",
        "echo never",
    ]);
    let grace = Duration::from_secs(3);
    job.kill_grace = grace;
    let (tx, mut rx) = mpsc::channel(8);
    let (stop, cancel) = cancel_signal();
    let running = tokio::spawn(run_shell(job, Some(tx), cancel));
    let pids = read_pids(&mut rx, 3).await;

    let canceled_at = Instant::now();
    stop.send(()).unwrap();
    let outcome = tokio::time::timeout(grace + Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Everything here dies of SIGTERM, so no need to wait out the grace period.
    assert!(
        canceled_at.elapsed() < grace,
        "took {:?}",
        canceled_at.elapsed()
    );
    assert!(outcome.canceled);
    assert_eq!(outcome.signal, Some(libc::SIGTERM));
    assert_eq!(outcome.exit_code, None);
    assert_eq!(outcome.commands_run, 1);
    assert_eq!(outcome.failure().as_deref(), Some("canceled"));
    assert_gone(&pids).await;
}

#[tokio::test]
async fn processes_ignoring_sigterm_are_killed_after_the_grace_period() {
    // `trap '' TERM` is inherited: the background sleep ignores SIGTERM too.
    let (_tmp, mut job) = job(&["trap '' TERM; sleep 1000 & echo $!; echo $$; wait"]);
    let grace = Duration::from_millis(500);
    job.kill_grace = grace;
    let (tx, mut rx) = mpsc::channel(8);
    let (stop, cancel) = cancel_signal();
    let running = tokio::spawn(run_shell(job, Some(tx), cancel));
    let pids = read_pids(&mut rx, 2).await;

    let canceled_at = Instant::now();
    stop.send(()).unwrap();
    let outcome = running.await.unwrap().unwrap();
    let took = canceled_at.elapsed();
    assert!(
        took >= grace,
        "SIGKILL came before the grace period ended: {took:?}"
    );
    assert!(took < grace + Duration::from_secs(3), "took {took:?}");
    assert!(outcome.canceled);
    assert_eq!(outcome.signal, Some(libc::SIGKILL));
    assert_gone(&pids).await;
}

#[tokio::test]
async fn background_processes_end_with_their_command() {
    // The background sleep holds stdout open; the job must not wait for it.
    let (_tmp, job) = job(&[
        "sleep 1000 & echo $!",
        "sleep 1000 >/dev/null 2>&1 & echo $!",
    ]);
    let started = Instant::now();
    let outcome = run(job).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(outcome.exit_code, Some(0));
    let pids: Vec<u32> = outcome.stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    assert_gone(&pids).await;
}

#[tokio::test]
async fn dropping_the_job_kills_its_processes() {
    let (_tmp, job) = job(&["sleep 1000 & echo $!; echo $$; wait"]);
    let (tx, mut rx) = mpsc::channel(8);
    let running = tokio::spawn(run_shell(job, Some(tx), pending()));
    let pids = read_pids(&mut rx, 2).await;
    running.abort();
    let _ = running.await;
    assert_gone(&pids).await;
}

#[tokio::test]
async fn a_job_canceled_before_it_starts_runs_nothing() {
    let (_tmp, job) = job(&["touch ran"]);
    let workdir = job.workdir.clone();
    let outcome = run_shell(job, None, std::future::ready(())).await.unwrap();
    assert!(outcome.canceled);
    assert_eq!(
        (outcome.commands_run, outcome.exit_code, outcome.signal),
        (0, None, None)
    );
    assert!(!workdir.join("ran").exists());
}

#[tokio::test]
async fn a_command_killed_by_a_signal_reports_it() {
    let (_tmp, job) = job(&["kill -KILL $$", "echo never"]);
    let outcome = run(job).await;
    assert_eq!(
        (outcome.exit_code, outcome.signal),
        (None, Some(libc::SIGKILL))
    );
    assert_eq!(outcome.commands_run, 1);
    assert!(!outcome.canceled);
    assert_eq!(
        outcome.failure().as_deref(),
        Some("command 1 was killed by signal 9")
    );
}

#[tokio::test]
async fn an_unknown_program_exits_127() {
    let (_tmp, job) = job(&["definitely-not-a-program-4f1c"]);
    let outcome = run(job).await;
    assert_eq!(outcome.exit_code, Some(127));
    assert!(outcome.stderr.contains("not found"), "{}", outcome.stderr);
}

#[tokio::test]
async fn a_missing_working_directory_is_created() {
    let (tmp, mut job) = job(&["pwd"]);
    job.workdir = tmp.path().join("a/b/c");
    let outcome = run(job).await;
    assert_eq!(
        PathBuf::from(outcome.stdout.trim()),
        tmp.path().canonicalize().unwrap().join("a/b/c")
    );
}

#[tokio::test]
async fn an_unusable_working_directory_is_a_clear_error() {
    let (tmp, mut job) = job(&["true"]);
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    job.workdir = file.join("work");
    let err = try_run(job).await.unwrap_err();
    assert!(matches!(err, RuntimeError::CreateWorkdir { .. }), "{err:?}");
    assert!(err.is_retryable());
    let message = err.to_string();
    let expected = format!(
        "cannot create working directory {}: not a directory; ",
        file.join("work").display()
    );
    assert!(message.starts_with(&expected), "{message}");
}

#[tokio::test]
async fn a_read_only_working_directory_is_a_clear_error() {
    // /proc refuses new directories even to root, so this holds whoever runs the tests.
    let (_tmp, mut job) = job(&["true"]);
    job.workdir = Path::new("/proc/fabric-runtime-test").to_path_buf();
    let err = try_run(job).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot create working directory /proc/fabric-runtime-test: "),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_jobs_are_errors() {
    let (_tmp, empty) = job(&[]);
    let err = try_run(empty).await.unwrap_err();
    assert!(matches!(err, RuntimeError::NoCommands), "{err}");
    let (_tmp, mut job) = job(&["true"]);
    job.env = vec![("A=B".into(), "x".into())];
    let err = try_run(job).await.unwrap_err();
    assert!(
        err.to_string().contains("contain neither '=' nor NUL"),
        "{err}"
    );
}

#[tokio::test]
async fn a_host_program_runs_until_stopped_and_takes_its_group_along() {
    use tokio::io::AsyncBufReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let env = vec![("GREETING".to_owned(), "hi".to_owned())];
    let mut program = fabric_runtime::spawn_program(
        "echo $GREETING from $PWD; sleep 300 & sleep 300",
        dir.path(),
        &env,
        None,
    )
    .unwrap();
    let mut lines = tokio::io::BufReader::new(program.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    assert_eq!(first, format!("hi from {}", dir.path().display()));
    let group = program.id();
    let exit = program
        .terminate(std::time::Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(exit.describe(), "crashed (signal 15)");
    // The background sleep went with it (give the host's init a moment to reap it).
    let mut left = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        left = std::process::Command::new("pgrep")
            .args(["-g", &group.to_string()])
            .output()
            .unwrap()
            .stdout;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(left.is_empty(), "{}", String::from_utf8_lossy(&left));

    let mut quick = fabric_runtime::spawn_program("exit 7", dir.path(), &[], None).unwrap();
    assert_eq!(quick.wait().await.unwrap().describe(), "exited (code 7)");
}
