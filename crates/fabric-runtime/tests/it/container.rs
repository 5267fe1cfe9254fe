//! Isolation level `container` (feature `docker`) against the real dockerd:
//! shell jobs in an agent container through `docker exec`, with the same
//! output, limits, cancellation and process-group semantics as on the host.
//!
//! Each test makes its own container (the default agent image, no sidecar)
//! and removes it, with its volume, when it ends, even on failure.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fabric_core::TaskFile;
use fabric_docker::DockerClient;
use fabric_docker::agent::{
    AgentContainer, AgentContainerSpec, DEFAULT_PIDS_LIMIT, DEFAULT_TMP_MB,
};
use fabric_docker::labels::LABEL_OWNER;
use fabric_runtime::container::ContainerShell;
use fabric_runtime::{LogLine, ShellJob};
use tokio::sync::mpsc;

/// A running agent container; removed (with its volume) on drop.
struct Agent {
    shell: ContainerShell,
    name: String,
    volume: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", "-v", &self.name])
            .output();
        let _ = std::process::Command::new("docker")
            .args(["volume", "rm", "-f", &self.volume])
            .output();
    }
}

async fn container(test: &str, memory_mb: u64) -> Agent {
    let client = DockerClient::connect().await.unwrap();
    let image = fabric_docker::image::ensure_agent_image(&client)
        .await
        .unwrap()
        .image;
    let name = format!(
        "reactor-fabric-it-{test}-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let spec = AgentContainerSpec {
        name: name.clone(),
        image,
        cmd: None,
        env: Vec::new(),
        memory_mb,
        cpu_cores: 1.0,
        pids_limit: DEFAULT_PIDS_LIMIT,
        tmp_mb: DEFAULT_TMP_MB,
        read_only_paths: Vec::new(),
        labels: HashMap::from([(LABEL_OWNER.to_owned(), format!("it-runtime-{name}"))]),
    };
    let volume = spec.volume_name();
    let made = AgentContainer::create(&client, &spec, None, None)
        .await
        .unwrap();
    let shell = ContainerShell::new(
        client,
        made.name.clone(),
        &made.id,
        made.pid,
        Duration::from_secs(1),
    );
    Agent {
        shell,
        name,
        volume,
    }
}

fn job(commands: &[&str], task: &str) -> ShellJob {
    let mut job = ShellJob::new(
        commands.iter().map(|c| (*c).to_owned()).collect(),
        ContainerShell::workspace().join(task),
    );
    job.kill_grace = Duration::from_secs(1);
    job
}

/// `ps` inside the container: the command lines running now.
async fn processes(b: &Agent) -> String {
    let client = DockerClient::connect().await.unwrap();
    client
        .exec(&b.name, &["ps", "-o", "args"])
        .await
        .unwrap()
        .stdout
}

#[tokio::test]
async fn container_jobs_capture_output_env_files_and_exit_codes() {
    let b = container("output", 256).await;
    let mut j = job(
        &[
            "cat in/x.txt; echo \"$GREETING from $(id -u) in $PWD\"; echo to-stderr >&2",
            "exit 3",
            "echo never",
        ],
        "t1",
    );
    j.env.push(("GREETING".into(), "hello".into()));
    j.files.push(TaskFile {
        path: "in/x.txt".into(),
        content: "file content\n".into(),
    });
    let (tx, mut rx) = mpsc::channel::<LogLine>(64);
    let outcome = b
        .shell
        .run_shell(j, Some(tx), std::future::pending())
        .await
        .unwrap();
    assert_eq!(outcome.exit_code, Some(3), "{outcome:?}");
    assert_eq!(outcome.commands_run, 2);
    assert_eq!(
        outcome.stdout,
        "file content\nhello from 65534 in /workspace/t1\n"
    );
    assert_eq!(outcome.stderr, "to-stderr\n");
    let mut lines = Vec::new();
    while let Ok(line) = rx.try_recv() {
        lines.push(line.line);
    }
    assert!(lines.contains(&"to-stderr".to_owned()), "{lines:?}");

    // The documented output limit holds here too.
    let mut j = job(&["head -c 5000 /dev/zero | tr '\\0' x"], "t2");
    j.output_limit = 1000;
    let outcome = b
        .shell
        .run_shell(j, None, std::future::pending())
        .await
        .unwrap();
    assert!(
        outcome.stdout_truncated && outcome.stdout.len() == 1000,
        "{outcome:?}"
    );

    // Working dirs outside the workspace are refused before anything runs.
    let mut j = job(&["true"], "t3");
    j.workdir = "/tmp/x".into();
    let err = b
        .shell
        .run_shell(j, None, std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("outside the workspace"), "{err}");
}

#[tokio::test]
async fn canceling_stops_the_command_and_everything_it_started() {
    let b = container("cancel", 256).await;
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel::<()>();
    let run = b.shell.run_shell(
        job(&["sleep 1001 & sleep 1002; echo not-reached"], "t1"),
        None,
        async {
            let _ = cancel_rx.await;
        },
    );
    let canceler = async {
        wait_for_process(&b, "sleep 1002").await;
        let _ = cancel_tx.send(());
        Instant::now()
    };
    let (outcome, canceled_at) = tokio::join!(run, canceler);
    let outcome = outcome.unwrap();
    assert!(outcome.canceled, "{outcome:?}");
    // SIGTERM ended it: no need to wait out the grace for SIGKILL.
    assert_eq!(outcome.signal, Some(libc::SIGTERM), "{outcome:?}");
    assert!(
        canceled_at.elapsed() < Duration::from_secs(10),
        "stopped promptly: {:?}",
        canceled_at.elapsed()
    );
    let ps = processes(&b).await;
    assert!(!ps.contains("sleep 100"), "nothing of it is left: {ps}");

    // A command that ignores SIGTERM gets SIGKILL after the grace, not before.
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel::<()>();
    let t2 = job(&["trap '' TERM; sleep 1003; sleep 1004"], "t2");
    let grace = t2.kill_grace;
    let run = b.shell.run_shell(t2, None, async {
        let _ = cancel_rx.await;
    });
    let canceler = async {
        wait_for_process(&b, "sleep 1003").await;
        let _ = cancel_tx.send(());
        Instant::now()
    };
    let (outcome, canceled_at) = tokio::join!(run, canceler);
    let took = canceled_at.elapsed();
    let outcome = outcome.unwrap();
    assert!(outcome.canceled, "{outcome:?}");
    assert_eq!(outcome.signal, Some(libc::SIGKILL), "{outcome:?}");
    assert!(
        took >= grace,
        "SIGKILL came before the grace period ended: {took:?}"
    );
    assert!(took < grace + Duration::from_secs(10), "took {took:?}");
    let ps = processes(&b).await;
    assert!(!ps.contains("sleep 100"), "{ps}");
}

/// Waits until `ps` in the container shows `command` (30 s at most).
async fn wait_for_process(b: &Agent, command: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ps = processes(b).await;
        if ps.contains(command) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{command:?} never started in the container: {ps}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn what_a_command_leaves_running_ends_with_it() {
    let b = container("stragglers", 256).await;
    let outcome = b
        .shell
        .run_shell(
            job(
                &["sleep 1005 >/dev/null 2>&1 & \
                   setsid sleep 1006 </dev/null >/dev/null 2>&1 & \
                   (setsid sh -c 'sleep 1007 & sleep 1008' </dev/null >/dev/null 2>&1 &) ; \
                   echo started"],
                "t1",
            ),
            None,
            std::future::pending(),
        )
        .await
        .unwrap();
    assert_eq!(outcome.stdout, "started\n");
    assert_eq!(outcome.exit_code, Some(0));
    let ps = processes(&b).await;
    // Issue #16, item 2: not even what left the command's process group.
    assert!(!ps.contains("sleep 100"), "{ps}");
}

#[tokio::test]
async fn a_memory_bomb_is_oom_killed_and_the_container_lives_on() {
    let b = container("oom", 64).await;
    let outcome = b
        .shell
        .run_shell(
            job(
                &["x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}"],
                "t1",
            ),
            None,
            std::future::pending(),
        )
        .await
        .unwrap();
    assert!(outcome.oom_killed, "{outcome:?}");
    assert!(!outcome.success());
    let outcome = b
        .shell
        .run_shell(job(&["echo alive"], "t2"), None, std::future::pending())
        .await
        .unwrap();
    assert_eq!(
        (outcome.stdout.as_str(), outcome.oom_killed),
        ("alive\n", false)
    );
}
