//! `reactor-fabric agent spawn | list | get | terminate` against a real server (REQUIREMENTS §5, §11).
//!
//! Only isolation `none` here: it needs no privileges, so these run anywhere and fast.
//! The sandbox itself is tested where it lives (fabric-runtime, fabric-server).

use std::path::Path;
use std::time::{Duration, Instant};

use fabric_core::agent::{Agent, AgentState};
use fabric_core::api::AgentList;

use crate::{Fabric, bare_cli, free_port, has_line, stdout_of};

fn agent_json(fabric: &Fabric, id: &str) -> Agent {
    let out = stdout_of(fabric.cli().args(["-o", "json", "agent", "get", id]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Runs the CLI, expecting `code`; returns its stderr.
fn fails_with(cmd: &mut assert_cmd::Command, code: i32) -> String {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

/// Kills an agent program's process group if the test ends before it terminated
/// the agent: the server is killed with SIGKILL and would leave it running.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if Path::new(&format!("/proc/{}", self.0)).exists() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0)])
                .status();
        }
    }
}

/// Issue #3: a built-in shell agent spawned by flags runs tasks, shows up in
/// `list` and `get`, terminates, and can be spawned again under the same id.
#[test]
fn shell_agent_spawn_run_list_get_terminate_respawn() {
    let fabric = Fabric::start();
    fabric.cli().args(["agent", "list"]).assert().code(3);
    fabric.login();

    let out =
        stdout_of(
            fabric
                .cli()
                .args(["agent", "spawn", "--id", "box", "--isolation", "none"]),
        );
    assert!(
        out.starts_with("spawned agent box (running, isolation none"),
        "{out}"
    );

    let id = fabric.create_task(&["--agent", "box", "--command", "echo hi"]);
    let (code, out) = fabric.wait_result(&id);
    assert_eq!(code, 0, "{out}");
    assert!(
        has_line(&out, "status=completed") && has_line(&out, "hi"),
        "{out}"
    );

    let out = stdout_of(fabric.cli().args(["-o", "json", "agent", "list"]));
    let list: AgentList = serde_json::from_str(&out).unwrap();
    let boxed = list
        .agents
        .iter()
        .find(|a| a.config.id.as_str() == "box")
        .unwrap_or_else(|| panic!("no box in {out}"));
    assert_eq!(boxed.state, AgentState::Running);
    assert!(boxed.tasks_done >= 1, "{out}");

    let out = stdout_of(fabric.cli().args(["agent", "list"]));
    let header = out.lines().next().unwrap();
    for column in [
        "ID",
        "STATE",
        "HEALTH",
        "LAST HEARTBEAT",
        "RUNNING",
        "DONE",
        "CPU",
        "MEMORY",
        "ISOLATION",
    ] {
        assert!(header.contains(column), "{out}");
    }
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("box "))
        .unwrap_or_else(|| panic!("{out}"))
        .split_whitespace()
        .collect();
    assert_eq!(&row[1..3], ["running", "healthy"], "{out}");
    let ago = row
        .iter()
        .position(|c| *c == "ago")
        .expect("relative heartbeat");
    assert_eq!(
        &row[ago + 1..ago + 3],
        ["0", "1"],
        "tasks running, done: {out}"
    );

    // Issue #17: `ls`, `-q` (ids only), `-o wide` (more columns), `-o yaml`.
    let ids = stdout_of(fabric.cli().args(["agent", "ls", "-q"]));
    assert!(has_line(&ids, "box") && !ids.contains("STATE"), "{ids}");
    let wide = stdout_of(fabric.cli().args(["agent", "ls", "-o", "wide"]));
    let header = wide.lines().next().unwrap();
    assert!(
        header.contains("TENANT") && header.contains("LAST EXIT"),
        "{wide}"
    );
    let yaml = stdout_of(fabric.cli().args(["agent", "ls", "-o", "yaml"]));
    assert!(yaml.starts_with("agents:\n- config:\n"), "{yaml}");
    // The test venv's python (./scripts/test makes it), which has PyYAML.
    let parsed = std::process::Command::new(crate::telemetry::python())
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(yaml.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        parsed.status.success(),
        "PyYAML reads it: {}\n{yaml}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let from_yaml: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    let from_json: serde_json::Value =
        serde_json::from_str(&stdout_of(fabric.cli().args(["agent", "ls", "-o", "json"]))).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["config"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&from_yaml),
        ids(&from_json),
        "the same document: {yaml}"
    );

    let out = stdout_of(fabric.cli().args(["agent", "get", "box", "--sessions"]));
    for line in [
        "id: box",
        "state: running",
        "isolation: none",
        "runs: built-in shell agent",
    ] {
        assert!(has_line(&out, line), "{line:?} in {out}");
    }
    assert!(out.contains("\nSESSION  STARTED"), "{out}");
    let out = stdout_of(
        fabric
            .cli()
            .args(["-o", "json", "agent", "get", "box", "--sessions"]),
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["agent"]["state"], "running", "{out}");
    assert_eq!(json["sessions"][0]["session"], 1, "{out}");

    // A running id cannot be spawned twice (409 → exit 5).
    let stderr = fails_with(fabric.cli().args(["agent", "spawn", "--id", "box"]), 5);
    assert!(stderr.contains("already exists"), "{stderr}");
    // Unknown agents: exit 4, saying so.
    for args in [
        &["agent", "get", "ghost"][..],
        &["agent", "get", "ghost", "--sessions"],
        &["agent", "terminate", "ghost"],
    ] {
        let stderr = fails_with(fabric.cli().args(args), 4);
        assert!(stderr.contains("agent 'ghost' does not exist"), "{stderr}");
    }
    // The server's own shell agent is not terminable (409 → exit 5).
    fails_with(fabric.cli().args(["agent", "terminate", "shell"]), 5);

    let out = stdout_of(
        fabric
            .cli()
            .args(["agent", "terminate", "box", "--drain-timeout", "5"]),
    );
    assert!(out.starts_with("agent box is stopped"), "{out}");
    let stopped = agent_json(&fabric, "box");
    assert_eq!(stopped.state, AgentState::Stopped);
    assert!(stopped.last_exit.is_some());
    let out = stdout_of(fabric.cli().args(["agent", "get", "box", "--sessions"]));
    assert!(has_line(&out, "state: stopped"), "{out}");
    assert!(
        out.contains("terminated"),
        "the session's exit reason: {out}"
    );

    // Issue #17: a task for a stopped agent queues, with a warning saying
    // so; --require-running refuses it (exit 5) and creates nothing.
    let refused = fails_with(
        fabric.cli().args([
            "task",
            "create",
            "--agent",
            "box",
            "--command",
            "echo refused",
            "--require-running",
        ]),
        5,
    );
    assert!(refused.contains("agent box is stopped"), "{refused}");
    let out = fabric
        .cli()
        .args([
            "task",
            "create",
            "--agent",
            "box",
            "--command",
            "echo queued",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let warning = String::from_utf8(out.stderr).unwrap();
    assert!(
        warning.contains("warning: agent box is stopped") && warning.contains("waits in its queue"),
        "{warning}"
    );
    let queued = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();

    // Terminated, the id is free again: a new session of the same agent.
    stdout_of(fabric.cli().args(["agent", "spawn", "--id", "box"]));
    let again = agent_json(&fabric, "box");
    assert_eq!((again.state, again.session), (AgentState::Running, 2));
    let id = fabric.create_task(&["--agent", "box", "--command", "echo again"]);
    assert_eq!(fabric.wait_result(&id).0, 0);
    // The queued task ran once the agent did; nothing of the refused one.
    let (code, out) = fabric.wait_result(&queued);
    assert_eq!(code, 0, "{out}");
    let all = stdout_of(fabric.cli().args(["task", "ls", "-o", "json"]));
    assert!(!all.contains("echo refused"), "{all}");

    // Issue #17: restart (a new session of the same config), rm (only once stopped).
    let out = stdout_of(
        fabric
            .cli()
            .args(["agent", "restart", "box", "--drain-timeout", "5"]),
    );
    assert!(
        out.starts_with("restarted agent box (session 3, running)"),
        "{out}"
    );
    let stderr = fails_with(fabric.cli().args(["agent", "rm", "box"]), 5);
    assert!(stderr.contains("terminate it first"), "{stderr}");
    fails_with(fabric.cli().args(["agent", "rm", "shell"]), 5);
    stdout_of(
        fabric
            .cli()
            .args(["agent", "terminate", "box", "--drain-timeout", "5"]),
    );
    let out = stdout_of(fabric.cli().args(["agent", "rm", "box"]));
    assert_eq!(out.trim(), "removed agent box");
    fails_with(fabric.cli().args(["agent", "get", "box"]), 4);
    let listed = stdout_of(fabric.cli().args(["agent", "ls", "-q"]));
    assert!(!has_line(&listed, "box"), "{listed}");
    // The id is free: a new agent, its first session.
    stdout_of(fabric.cli().args(["agent", "spawn", "--id", "box"]));
    assert_eq!(agent_json(&fabric, "box").session, 1);
}

/// An agent file (TOML, flags on top) and an agent running its own command.
#[test]
fn spawn_from_a_file_and_a_command_agent() {
    let fabric = Fabric::start();
    fabric.login();

    let file = fabric.dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "id = \"filed\"\nconcurrency = 2\nmax_queue_depth = 50\n\n[isolation]\nlevel = \"none\"\n",
    )
    .unwrap();
    let out = stdout_of(
        fabric
            .cli()
            .args(["-o", "json", "agent", "spawn", "-f"])
            .arg(&file)
            .args(["--max-queue-depth", "7"]),
    );
    let agent: Agent = serde_json::from_str(&out).unwrap();
    assert_eq!(agent.config.id.as_str(), "filed");
    assert_eq!(agent.config.concurrency, 2, "from the file");
    assert_eq!(
        agent.config.max_queue_depth, 7,
        "the flag overrides the file"
    );
    let id = fabric.create_task(&["--agent", "filed", "--command", "echo from-file"]);
    let (code, out) = fabric.wait_result(&id);
    assert_eq!(code, 0, "{out}");
    assert!(has_line(&out, "from-file"), "{out}");

    // A program of its own that never calls in: starting (or running), with a pid.
    let out = stdout_of(fabric.cli().args([
        "-o",
        "json",
        "agent",
        "spawn",
        "--id",
        "sleeper",
        "--isolation",
        "none",
        "--command",
        "sleep 1000",
    ]));
    let agent: Agent = serde_json::from_str(&out).unwrap();
    let pid = agent.pid.unwrap_or_else(|| panic!("no pid: {out}"));
    let _guard = KillOnDrop(pid);
    assert!(
        matches!(agent.state, AgentState::Starting | AgentState::Running),
        "{out}"
    );
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let out = stdout_of(fabric.cli().args(["agent", "get", "sleeper"]));
    assert!(has_line(&out, &format!("pid: {pid}")), "{out}");
    assert!(has_line(&out, "runs: command sleep 1000"), "{out}");

    let out = stdout_of(fabric.cli().args([
        "-o",
        "json",
        "agent",
        "terminate",
        "sleeper",
        "--drain-timeout",
        "5",
    ]));
    let agent: Agent = serde_json::from_str(&out).unwrap();
    assert_eq!(agent.state, AgentState::Stopped, "{out}");
    assert_eq!(agent.pid, None, "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "agent process {pid} outlived its terminate"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A bad flag or file fails with exit 2 and the field's name, before any request:
/// nothing listens at the URL, so a request would have made it exit 6.
#[test]
fn bad_spawns_fail_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let cli = || {
        let mut cmd = bare_cli(&dir.path().join("c.toml"));
        cmd.env("FABRIC_URL", &url);
        cmd
    };
    let stderr = fails_with(
        cli().args(["agent", "spawn", "--id", "a", "--memory-mb", "1"]),
        2,
    );
    assert!(stderr.contains("isolation.memory_mb"), "{stderr}");
    let stderr = fails_with(
        cli().args(["agent", "spawn", "--id", "a", "--egress", "no:where"]),
        2,
    );
    assert!(
        stderr.contains("--egress") && stderr.contains("invalid egress rule"),
        "{stderr}"
    );
    let file = dir.path().join("agent.json");
    std::fs::write(&file, r#"{"id": "a", "isolation": {"cpu_cores": 0}}"#).unwrap();
    let stderr = fails_with(cli().args(["agent", "spawn", "-f"]).arg(&file), 2);
    assert!(stderr.contains("isolation.cpu_cores"), "{stderr}");
    std::fs::write(&file, r#"{"id": "a", "memory": 64}"#).unwrap();
    let stderr = fails_with(cli().args(["agent", "spawn", "-f"]).arg(&file), 2);
    assert!(stderr.contains("unknown field `memory`"), "{stderr}");
    // And a good one gets as far as the network: no server there (exit 6;
    // not being logged in comes second).
    fails_with(cli().args(["agent", "spawn", "--id", "a"]), 6);
}

/// Issue #17: `agent logs` shows what an agent's program wrote (stdout on
/// stdout, stderr on stderr); `agent spawn` of a program that dies at once
/// warns, with its last lines, instead of leaving only `exited (code 2)`.
#[test]
fn agent_logs_and_the_early_exit_warning() {
    let fabric = Fabric::start();
    fabric.login();
    let out = fabric
        .cli()
        .args([
            "agent",
            "spawn",
            "--id",
            "broken",
            "--isolation",
            "none",
            "--restart",
            "never",
            "--command",
            "echo starting up; echo 'config.toml: no such file' >&2; exit 2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("warning: agent broken exited within its first seconds")
            && stderr.contains("config.toml: no such file"),
        "{stderr}"
    );
    let out = fabric
        .cli()
        .args(["agent", "logs", "broken"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "starting up\n");
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("config.toml: no such file")
    );
    let json = stdout_of(
        fabric
            .cli()
            .args(["-o", "json", "agent", "logs", "broken", "--tail", "1"]),
    );
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let lines = json["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{json}");
    assert_eq!(lines[0]["session"], 1);
    fails_with(fabric.cli().args(["agent", "logs", "ghost"]), 4);

    // -f: the old lines, then each new one as the program writes it.
    let out = fabric
        .cli()
        .args([
            "agent",
            "spawn",
            "--id",
            "ticker",
            "--isolation",
            "none",
            "--command",
            "for i in 1 2 3; do echo tick-$i; sleep 0.5; done; sleep 600",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let follow = |id: &str| {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("reactor-fabric"))
            .args(["agent", "logs", id, "-f", "--tail", "1"])
            .env("FABRIC_CONFIG", fabric.config_path())
            .env("FABRIC_URL", &fabric.url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = crate::gateway::KillOnDrop(follow("ticker"));
    let mut seen = Vec::new();
    let reader = std::io::BufReader::new(child.0.stdout.take().unwrap());
    for line in std::io::BufRead::lines(reader) {
        let line = line.unwrap();
        seen.push(line.clone());
        if line == "tick-3" {
            break;
        }
    }
    assert!(seen.ends_with(&["tick-3".to_owned()]), "{seen:?}");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "still following after the last line"
    );
}
