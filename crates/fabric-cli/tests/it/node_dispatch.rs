//! Issue #21, placing agents on worker nodes: `agent spawn --node` and
//! `--node-selector` put an agent's session on a real `reactor-fabric node`
//! process; its tasks run there (`FABRIC_NODE`); `kill -9` of the node in
//! the middle of a load moves its agents to another node and every
//! acknowledged task still completes exactly once; `node drain` moves
//! agents off with their tasks drained.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::access::json_of;
use super::nodes::{FAST_NODES, Node, create_token, nodes, wait_for_node};
use super::{Fabric, stdout_of};

/// Starts a node and waits until it is ready.
fn ready_node(fabric: &Fabric, token: &str, name: &str, labels: &[&str]) -> Node {
    let mut args = vec!["--isolation", "none"];
    for label in labels {
        args.extend(["--label", label]);
    }
    let node = Node::start(fabric, Some(token), name, &args);
    wait_for_node(fabric, &node, name, "ready", |n| n["status"] == "ready");
    node
}

fn spawn(fabric: &Fabric, id: &str, args: &[&str]) -> Value {
    json_of(
        fabric
            .cli()
            .args([
                "-o",
                "json",
                "agent",
                "spawn",
                "--id",
                id,
                "--isolation",
                "none",
            ])
            .args(args),
    )
}

pub(crate) fn agent(fabric: &Fabric, id: &str) -> Value {
    json_of(fabric.cli().args(["-o", "json", "agent", "get", id]))
}

/// Runs one task of `agent` (`env` as `KEY=VALUE`), waiting at most
/// `timeout` (`60s`); its final view, completed.
pub(crate) fn run_task(
    fabric: &Fabric,
    agent: &str,
    env: &[String],
    command: &str,
    timeout: &str,
) -> Value {
    let mut cmd = fabric.cli();
    cmd.args(["-o", "json", "task", "create", "--agent", agent]);
    cmd.args(["--wait", "--timeout", timeout, "--command", command]);
    for pair in env {
        cmd.args(["--env", pair]);
    }
    let task = json_of(&mut cmd);
    assert_eq!(task["status"], "completed", "{task:#}");
    task
}

/// A task's stdout, trimmed.
pub(crate) fn stdout_of_task(task: &Value) -> String {
    task["result"]["stdout"].as_str().unwrap().trim().to_owned()
}

/// Runs one task on `agent`; its stdout.
fn run(fabric: &Fabric, agent: &str, command: &str) -> String {
    stdout_of_task(&run_task(fabric, agent, &[], command, "60s"))
}

/// Polls `agent get` until `ok`.
pub(crate) fn wait_agent(
    fabric: &Fabric,
    id: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = agent(fabric, id);
        if ok(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "agent {id} never {what}: {view:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn agents_on(fabric: &Fabric, node: &str) -> u64 {
    nodes(fabric)
        .iter()
        .find(|n| n["name"] == node)
        .map_or(0, |n| n["agents"].as_u64().unwrap())
}

#[test]
fn agents_run_on_the_node_their_selector_or_name_picks() {
    let fabric = Fabric::start_with_env(&FAST_NODES);
    fabric.login();
    let token = create_token(&fabric, &["--uses", "0"]);
    let _n1 = ready_node(&fabric, &token, "n1", &["gpu=true", "zone=a"]);
    let _n2 = ready_node(&fabric, &token, "n2", &["zone=a"]);

    let big = spawn(&fabric, "big", &["--node-selector", "gpu=true"]);
    assert_eq!(big["node"], "n1", "{big:#}");
    assert_eq!(run(&fabric, "big", "echo $FABRIC_NODE"), "n1");

    let pinned = spawn(&fabric, "pinned", &["--node", "n2"]);
    assert_eq!(pinned["node"], "n2", "{pinned:#}");
    assert_eq!(run(&fabric, "pinned", "echo $FABRIC_NODE"), "n2");
    assert_eq!((agents_on(&fabric, "n1"), agents_on(&fabric, "n2")), (1, 1));

    // `agent get` says where it runs, in words too.
    let text = stdout_of(fabric.cli().args(["agent", "get", "big"]));
    assert!(text.contains("node: n1"), "{text}");

    // No node matches: a clear refusal, nothing left running.
    let out = fabric
        .cli()
        .args(["agent", "spawn", "--id", "nowhere", "--isolation", "none"])
        .args(["--node-selector", "gpu=false"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no ready node with labels gpu=false"), "{err}");

    // A node that does not exist is refused by name.
    let out = fabric
        .cli()
        .args([
            "agent",
            "spawn",
            "--id",
            "lost",
            "--isolation",
            "none",
            "--node",
            "n9",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no node \"n9\""), "{err}");

    // Terminating an agent stops its session on the node.
    fabric
        .cli()
        .args(["agent", "terminate", "pinned"])
        .assert()
        .success();
    wait_agent(&fabric, "pinned", "stopped", |a| a["state"] == "stopped");
    let deadline = Instant::now() + Duration::from_secs(20);
    while agents_on(&fabric, "n2") != 0 {
        assert!(
            Instant::now() < deadline,
            "n2 still runs the terminated agent"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn node_drain_moves_its_agents_to_another_node() {
    let fabric = Fabric::start_with_env(&FAST_NODES);
    fabric.login();
    let token = create_token(&fabric, &["--uses", "0"]);
    let _n1 = ready_node(&fabric, &token, "n1", &["zone=a"]);
    let _n2 = ready_node(&fabric, &token, "n2", &["zone=a"]);
    let first = spawn(&fabric, "mover", &["--node-selector", "zone=a"]);
    let from = first["node"].as_str().unwrap().to_owned();
    let to = if from == "n1" { "n2" } else { "n1" };
    assert_eq!(run(&fabric, "mover", "echo $FABRIC_NODE"), from);

    fabric
        .cli()
        .args(["node", "drain", &from])
        .assert()
        .success();
    let moved = wait_agent(&fabric, "mover", "moved", |a| {
        a["node"] == to && a["state"] == "running"
    });
    assert!(moved["session"].as_u64().unwrap() >= 2, "{moved:#}");
    assert_eq!(run(&fabric, "mover", "echo $FABRIC_NODE"), to);
    assert_eq!(agents_on(&fabric, &from), 0);
}

const TASKS: usize = 500;

#[test]
fn kill_9_of_a_node_mid_load_moves_its_agents_and_completes_every_task_once() {
    // The load is one user submitting far above a person's request rate.
    let fabric =
        Fabric::start_with_env(&[FAST_NODES[0], FAST_NODES[1], ("FABRIC_RATE_LIMIT_RPS", "0")]);
    fabric.login();
    let token = create_token(&fabric, &["--uses", "0"]);
    let mut n1 = ready_node(&fabric, &token, "n1", &["zone=a"]);
    let mut n2 = ready_node(&fabric, &token, "n2", &["zone=a"]);
    let dir = tempfile::tempdir().unwrap();
    let exec_log = dir.path().join("executions.log");
    // As the node's own user, so the tasks can append to a log on the host
    // (where this test counts executions).
    let worker = spawn(
        &fabric,
        "worker",
        &[
            "--node-selector",
            "zone=a",
            "--as-fabric-user",
            "--concurrency",
            "4",
        ],
    );
    let victim = worker["node"].as_str().unwrap().to_owned();

    let mut ids = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let command = format!(
            "echo $FABRIC_TASK_ID $FABRIC_NODE >> {}; sleep 0.02",
            exec_log.display()
        );
        let task = json_of(fabric.cli().args([
            "-o",
            "json",
            "task",
            "create",
            "--agent",
            "worker",
            "--name",
            &format!("t{i}"),
            "--command",
            &command,
        ]));
        ids.push(task["id"].as_str().unwrap().to_owned());
        if i == TASKS / 5 {
            // Some tasks are running on the node now: kill it.
            let node = if victim == "n1" { &mut n1 } else { &mut n2 };
            node.child.0.kill().unwrap();
            let _ = node.child.0.wait();
        }
    }
    let survivor = if victim == "n1" { "n2" } else { "n1" };
    wait_agent(&fabric, "worker", "moved off the killed node", |a| {
        a["node"] == survivor && a["state"] == "running"
    });

    // Every task completes, exactly once at the server.
    let deadline = Instant::now() + Duration::from_secs(240);
    let finals: HashMap<String, Value> = loop {
        let page = json_of(fabric.cli().args([
            "-o", "json", "task", "list", "--agent", "worker", "--limit", "1000",
        ]));
        let tasks = page["tasks"].as_array().unwrap();
        let done = tasks.iter().filter(|t| t["status"] == "completed").count();
        let failed: Vec<&Value> = tasks
            .iter()
            .filter(|t| {
                matches!(
                    t["status"].as_str(),
                    Some("failed" | "timed_out" | "canceled")
                )
            })
            .collect();
        assert!(failed.is_empty(), "tasks failed: {failed:#?}");
        if done == TASKS {
            break tasks
                .iter()
                .map(|t| (t["id"].as_str().unwrap().to_owned(), t.clone()))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {TASKS} tasks completed"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(finals.len(), TASKS);

    // On the nodes: each ran, and only one the server had started on the
    // killed node (attempt 2) ran twice.
    let runs = executions(&exec_log);
    let mut reran = 0;
    for id in &ids {
        let on: &Vec<String> = runs
            .get(id)
            .unwrap_or_else(|| panic!("task {id} never ran"));
        assert!(
            (1..=2).contains(&on.len()),
            "task {id} ran {} times: {on:?}",
            on.len()
        );
        if on.len() == 2 {
            reran += 1;
            assert_eq!(on[0], victim, "task {id} ran twice: {on:?}");
            assert!(
                finals[id]["attempt"].as_u64().unwrap() >= 2,
                "{:#}",
                finals[id]
            );
        }
    }
    assert!(
        runs.values().flatten().any(|n| n == survivor),
        "no task ran on the surviving node"
    );
    eprintln!(
        "node kill -9 mid load: {TASKS} tasks completed once each, {reran} re-ran on {survivor}"
    );
}

/// Task id → the nodes it ran on, in order.
fn executions(log: &Path) -> HashMap<String, Vec<String>> {
    let mut runs: HashMap<String, Vec<String>> = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        if let Some((id, node)) = line.trim().split_once(' ') {
            runs.entry(id.to_owned()).or_default().push(node.to_owned());
        }
    }
    runs
}
