//! Container agents through the CLI (REQUIREMENTS §5, §11): `agent spawn --isolation
//! container`, a task in it, `agent list`, `agent terminate`; Docker away is
//! exit 6 with the sentence of REQUIREMENTS §3. The server is a `reactor-fabric serve`
//! child, killed when the test ends: a guard removes what it left in Docker.

use std::process::Command as StdCommand;

use crate::{Fabric, has_line, stdout_of};

/// Removes every container and volume of one server (its owner label) on drop.
struct DockerGuard(String);

impl DockerGuard {
    fn of(fabric: &Fabric) -> DockerGuard {
        DockerGuard(fabric_server::container_owner(
            &fabric.dir.path().join("data"),
            None,
        ))
    }

    fn left(&self) -> Vec<String> {
        let filter = format!("label=io.reactor-fabric.owner={}", self.0);
        let mut ids = Vec::new();
        for list in [
            &["ps", "-aq", "--filter"][..],
            &["volume", "ls", "-q", "--filter"][..],
        ] {
            let out = StdCommand::new("docker")
                .args(list)
                .arg(&filter)
                .output()
                .unwrap();
            ids.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_owned),
            );
        }
        ids
    }
}

impl Drop for DockerGuard {
    fn drop(&mut self) {
        let filter = format!("label=io.reactor-fabric.owner={}", self.0);
        for (list, remove) in [
            (&["ps", "-aq", "--filter"][..], &["rm", "-f", "-v"][..]),
            (
                &["volume", "ls", "-q", "--filter"][..],
                &["volume", "rm", "-f"][..],
            ),
        ] {
            let Ok(out) = StdCommand::new("docker").args(list).arg(&filter).output() else {
                continue;
            };
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let ids: Vec<&str> = text.lines().collect();
            if !ids.is_empty() {
                let _ = StdCommand::new("docker").args(remove).args(&ids).output();
            }
        }
    }
}

/// The demo: a built-in shell agent in a container runs a task end
/// to end as nobody, shows in `agent list`, and terminates without leftovers.
#[test]
fn container_agent_spawn_task_list_terminate() {
    let fabric = Fabric::start();
    let guard = DockerGuard::of(&fabric);
    fabric.login();
    let out = stdout_of(fabric.cli().args([
        "agent",
        "spawn",
        "--id",
        "box",
        "--isolation",
        "container",
        "--memory-mb",
        "128",
    ]));
    assert!(
        out.starts_with("spawned agent box (running, isolation container"),
        "{out}"
    );
    let id = fabric.create_task(&[
        "--agent",
        "box",
        "--command",
        "id -u",
        "--command",
        "touch /x 2>/dev/null || echo read-only",
    ]);
    let (code, out) = fabric.wait_result(&id);
    assert_eq!(code, 0, "{out}");
    assert!(
        has_line(&out, "status=completed")
            && has_line(&out, "65534")
            && has_line(&out, "read-only"),
        "{out}"
    );
    let out = stdout_of(fabric.cli().args(["agent", "list"]));
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("box "))
        .unwrap_or_else(|| panic!("{out}"))
        .split_whitespace()
        .collect();
    assert_eq!(&row[1..3], ["running", "healthy"], "{out}");
    assert_eq!(row.last(), Some(&"container"), "{out}");
    // ... CPU  MEMORY ISOLATION, MEMORY being "12.3 MiB": the container's real use.
    assert_eq!(row[row.len() - 2], "MiB", "{out}");
    let memory: f64 = row[row.len() - 3].parse().unwrap();
    assert!(memory > 0.0, "memory from the container's cgroup: {out}");
    let out = stdout_of(fabric.cli().args(["agent", "get", "box"]));
    assert!(has_line(&out, "isolation: container"), "{out}");
    assert!(
        !guard.left().is_empty(),
        "the agent's container and sidecar run"
    );
    let out = stdout_of(fabric.cli().args(["agent", "terminate", "box"]));
    assert!(out.contains("stopped"), "{out}");
    assert!(guard.left().is_empty(), "{:?}", guard.left());
}

/// REQUIREMENTS §3/§11: no Docker daemon → the sentence, exit 6; the server lives on.
#[test]
fn container_agent_without_docker_is_exit_6() {
    let fabric =
        Fabric::start_with_env(&[("DOCKER_HOST", "unix:///nonexistent/reactor-fabric.sock")]);
    let _guard = DockerGuard::of(&fabric);
    fabric.login();
    let out = fabric
        .cli()
        .args(["agent", "spawn", "--id", "c", "--isolation", "container"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    // The request id follows, as on every API error, to find it in the server's log.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "Error: Cannot connect to the Docker daemon. Is it running? (request id req_"
        ),
        "{stderr}"
    );
    let id = fabric.create_task(&["--command", "echo still serving"]);
    let (code, out) = fabric.wait_result(&id);
    assert_eq!(code, 0, "{out}");
}
