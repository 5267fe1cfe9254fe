//! Issue #20: the fabric as an MCP server, driven by the official Python
//! `mcp` SDK (`py/mcp_fabric.py`, from the test venv): `/mcp` over
//! Streamable HTTP in both protocol eras, and `reactor-fabric mcp serve`
//! over stdio with the stored login.

use std::path::PathBuf;
use std::process::Command;

use super::Fabric;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/py/mcp_fabric.py")
}

/// Runs `py/mcp_fabric.py MODE` with `env`, and checks it said `MODE: ok`.
fn run_client(mode: &str, fabric: &Fabric, env: &[(&str, &str)]) -> String {
    let out = Command::new(crate::telemetry::python())
        .arg(script())
        .arg(mode)
        .env("FABRIC_URL", &fabric.url)
        .env("FABRIC_CONFIG", fabric.config_path())
        .env("FABRIC_CLI", assert_cmd::cargo::cargo_bin("reactor-fabric"))
        .env_remove("FABRIC_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(&format!("{mode}: ok")),
        "the MCP client ({mode}) failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        fabric.log()
    );
    stdout
}

#[test]
fn mcp_sdk_creates_and_waits_for_a_task_through_the_fabrics_mcp_endpoint() {
    let fabric = Fabric::start();
    fabric.login();
    let created = super::access::json_of(fabric.cli().args([
        "-o",
        "json",
        "token",
        "create",
        "--name",
        "mcp-host",
        "--scope",
        "read:tasks",
        "--scope",
        "write:tasks",
        "--scope",
        "approve",
    ]));
    let token = created["token"].as_str().unwrap().to_owned();
    let out = run_client("http", &fabric, &[("FABRIC_TOKEN", &token)]);
    assert!(out.contains("http-auto: protocol 2026-07-28"), "{out}");
    assert!(out.contains("http-legacy: protocol 2025-11-25"), "{out}");
}

#[test]
fn mcp_serve_gives_an_mcp_host_the_fabric_over_stdio_with_the_stored_login() {
    let fabric = Fabric::start();
    fabric.login();
    let out = run_client("stdio", &fabric, &[]);
    assert!(out.contains("stdio-auto: protocol 2026-07-28"), "{out}");

    // Without a login it says so on stderr, and stdout (the protocol's) stays empty.
    let none = tempfile::tempdir().unwrap();
    let out = super::bare_cli(&none.path().join("config.toml"))
        .env("FABRIC_URL", &fabric.url)
        .args(["mcp", "serve"])
        .write_stdin("")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not logged in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The venv's python, and the host paths a sandbox must show for it to run
/// (the venv, and the installation its python links to).
pub(crate) fn sandboxed_python() -> (PathBuf, Vec<String>) {
    // Without `..` in it: a sandbox shows only the paths it is given.
    let python = crate::telemetry::python();
    let python = std::fs::canonicalize(python.parent().unwrap())
        .unwrap()
        .join(python.file_name().unwrap());
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys; print(sys.prefix); print(sys.base_prefix)",
        ])
        .output()
        .unwrap();
    let paths = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    (python, paths)
}

/// Runs one instruction of `py/mcp_agent.py` as a task of agent `mcp-agent`
/// and gives its JSON answer.
pub(crate) fn ask(fabric: &Fabric, instruction: serde_json::Value) -> serde_json::Value {
    let out = fabric
        .cli()
        .args([
            "task",
            "create",
            "--agent",
            "mcp-agent",
            "--timeout",
            "120",
            "--wait",
            "--prompt",
        ])
        .arg(instruction.to_string())
        .timeout(std::time::Duration::from_secs(150))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no answer to {instruction}: {stdout}\n{}\nagent log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                agent_logs(fabric)
            )
        });
    serde_json::from_str(line).unwrap()
}

/// The newest task, as `task list -o json` gives it.
fn last_task(fabric: &Fabric) -> serde_json::Value {
    let list = super::access::json_of(
        fabric
            .cli()
            .args(["-o", "json", "task", "list", "--limit", "1"]),
    );
    list["tasks"][0].clone()
}

fn agent_logs(fabric: &Fabric) -> String {
    let out = fabric
        .cli()
        .args(["agent", "logs", "mcp-agent"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply_policy(fabric: &Fabric, toml: &str) {
    let path = fabric.dir.path().join("mcp-policy.toml");
    std::fs::write(&path, toml).unwrap();
    fabric
        .cli()
        .args(["policy", "apply", "-f"])
        .arg(&path)
        .assert()
        .success();
}

/// Polls `approval list` until one is pending for `action`; its id.
fn pending_approval(fabric: &Fabric, action: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let list = super::access::json_of(fabric.cli().args(["-o", "json", "approval", "list"]));
        if let Some(approval) = list["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["action"] == action && a["status"] == "pending")
        {
            return approval["id"].as_str().unwrap().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no pending approval for {action}: {list}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The agent's call was refused with an error whose message says `text`.
fn assert_refused(answer: &serde_json::Value, text: &str) {
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains(text),
        "{answer} does not say {text:?}"
    );
}

const SECRET: &str = "s3cret-time-key-0a8f";
const REMOTE_TOKEN: &str = "remote-bearer-7c1d9e";

fn wait_for_port(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Issue #20 end to end: a third-party MCP server from PyPI
/// (`mcp-server-time`) and a misbehaving one, each in a sandbox of its
/// own, used by a sandboxed agent with the official `mcp` SDK at its
/// `MCP_URL`: grants, policy (allow, deny, approval, approval timeout),
/// audit, metrics, secrets, a crash and a hang.
#[test]
fn a_sandboxed_agent_uses_mcp_tools_through_the_fabric_under_policy() {
    let spans_dir = tempfile::tempdir().unwrap();
    let receiver = crate::telemetry::Receiver::start(spans_dir.path());
    let fabric = Fabric::start_with_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)]);
    fabric.login();
    let (python, mut paths) = sandboxed_python();
    let py_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/py");
    paths.push(py_dir.display().to_string());
    let read_only: Vec<String> = paths
        .iter()
        .flat_map(|p| ["--read-only".to_owned(), p.clone()])
        .collect();
    let secret_file = fabric.dir.path().join("time.key");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();

    // Registered: a PyPI server, sandboxed (the default), with a secret.
    fabric
        .cli()
        .args(["mcp", "add", "time", "--command"])
        .arg(format!(
            "{} -m mcp_server_time --local-timezone UTC",
            python.display()
        ))
        .args(&read_only)
        .arg("--secret-env")
        .arg(format!("TIME_API_KEY=@{}", secret_file.display()))
        .assert()
        .success();
    fabric
        .cli()
        .args([
            "mcp",
            "add",
            "flaky",
            "--timeout",
            "3",
            "--max-result-bytes",
            "65536",
            "--command",
        ])
        .arg(format!(
            "{} {}",
            python.display(),
            py_dir.join("flaky_mcp_server.py").display()
        ))
        .args(&read_only)
        .assert()
        .success();
    // A remote one (the SDK's own Streamable HTTP server, sessions and event
    // streams), which wants a bearer token: a secret header.
    let port = super::free_port();
    let _remote = crate::gateway::KillOnDrop(
        Command::new(&python)
            .arg(py_dir.join("remote_mcp_server.py"))
            .arg(port.to_string())
            .arg(REMOTE_TOKEN)
            .spawn()
            .unwrap(),
    );
    let header_file = fabric.dir.path().join("remote.header");
    std::fs::write(&header_file, format!("Bearer {REMOTE_TOKEN}")).unwrap();
    wait_for_port(port);
    fabric
        .cli()
        .args(["mcp", "add", "remote", "--url"])
        .arg(format!("http://127.0.0.1:{port}/mcp"))
        .arg("--secret-header")
        .arg(format!("Authorization=@{}", header_file.display()))
        .assert()
        .success();
    let listed = super::stdout_of(fabric.cli().args(["-o", "json", "mcp", "list"]));
    assert!(
        listed.contains("TIME_API_KEY") && !listed.contains(SECRET),
        "{listed}"
    );
    assert!(
        listed.contains("Authorization") && !listed.contains(REMOTE_TOKEN),
        "{listed}"
    );
    let remote_tools = super::stdout_of(fabric.cli().args(["mcp", "tools", "remote"]));
    assert!(remote_tools.contains("remote__add"), "{remote_tools}");
    let tools = super::stdout_of(fabric.cli().args(["mcp", "tools", "time"]));
    assert!(
        tools.contains("time__get_current_time") && tools.contains("tool:time/convert_time"),
        "{tools}"
    );

    // A policy for the agent: convert_time denied.
    apply_policy(
        &fabric,
        r#"
[[policies]]
id = "mcp-agent-tools"
scope = { agent = "mcp-agent" }
[[policies.rules]]
action_pattern = "tool:time/convert_time"
effect = "deny"
"#,
    );
    fabric
        .cli()
        .args([
            "agent",
            "spawn",
            "--id",
            "mcp-agent",
            "--isolation",
            "process",
            "--tools",
            "time/*",
            "--tools",
            "flaky/*",
            "--tools",
            "remote/add",
            "--command",
        ])
        .arg(format!(
            "{} {}",
            python.display(),
            py_dir.join("mcp_agent.py").display()
        ))
        .args(&read_only)
        .assert()
        .success();

    // tools/list: what the grants and the policy allow, prefixed.
    let listed = ask(&fabric, serde_json::json!({"op": "list"}));
    let names: Vec<&str> = listed["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(names.contains(&"time__get_current_time"), "{listed}");
    assert!(names.contains(&"flaky__echo"), "{listed}");
    assert!(
        !names.contains(&"time__convert_time"),
        "a denied tool is hidden: {listed}"
    );
    assert_eq!(listed["protocol"], "2026-07-28", "{listed}");

    // An allowed call reaches the sandboxed server and answers.
    let now = ask(
        &fabric,
        serde_json::json!({"op": "call", "name": "time__get_current_time", "arguments": {"timezone": "UTC"}}),
    );
    assert_eq!(now["ok"], true, "{now}");
    assert!(now["text"].as_str().unwrap().contains("UTC"), "{now}");

    // Traced in the task's trace (the agent sends the task's traceparent).
    let traced_task = last_task(&fabric);
    let trace_id = traced_task["traceparent"]
        .as_str()
        .unwrap()
        .split('-')
        .nth(1)
        .unwrap()
        .to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let spans = receiver.spans();
        if spans.iter().any(|s| {
            s["name"] == "mcp.tools/call"
                && s["trace_id"] == trace_id.as_str()
                && s["attributes"]["mcp.tool"] == "get_current_time"
                && s["attributes"]["outcome"] == "ok"
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no mcp.tools/call span in trace {trace_id}: {spans:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // Through the remote server, with the secret header the agent never sees.
    let sum = ask(
        &fabric,
        serde_json::json!({"op": "call", "name": "remote__add", "arguments": {"a": 2, "b": 3}}),
    );
    assert_eq!(sum["ok"], true, "{sum}");
    assert_eq!(sum["text"], "5", "{sum}");

    // A hidden tool called by name is refused, naming the rule.
    let denied = ask(
        &fabric,
        serde_json::json!({"op": "call", "name": "time__convert_time",
        "arguments": {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Oslo"}}),
    );
    assert_refused(
        &denied,
        "rule #0 tool:time/convert_time of policy \"mcp-agent-tools\"",
    );
    // An ungranted server's tool is unknown.
    let ungranted = ask(
        &fabric,
        serde_json::json!({"op": "call", "name": "files__read_file", "arguments": {}}),
    );
    assert_eq!(ungranted["ok"], false, "{ungranted}");

    // Audited with the arguments' digest, never the arguments.
    let audit =
        super::stdout_of(
            fabric
                .cli()
                .args(["-o", "json", "audit", "--agent", "mcp-agent"]),
        );
    let audit: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let records = audit["records"].as_array().unwrap();
    let refused = records
        .iter()
        .find(|r| r["action"] == "tool:time/convert_time")
        .unwrap_or_else(|| panic!("{audit}"));
    assert_eq!(refused["decision"], "deny");
    assert!(
        refused["resource"].as_str().unwrap().starts_with("sha256:"),
        "{refused}"
    );
    assert!(!audit.to_string().contains("Europe/Oslo"), "{audit}");
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "tool:time/get_current_time" && r["decision"] == "allow")
    );

    // require_approval: the call waits, is approved on the CLI, answers.
    apply_policy(
        &fabric,
        r#"
[[policies]]
id = "mcp-agent-tools"
scope = { agent = "mcp-agent" }
[[policies.rules]]
action_pattern = "tool:time/get_current_time"
effect = "require_approval"
approval_timeout_secs = 60
[[policies.rules]]
action_pattern = "tool:time/convert_time"
effect = "require_approval"
approval_timeout_secs = 1
"#,
    );
    let waiting = {
        let cli = super::bare_cli(&fabric.config_path());
        let url = fabric.url.clone();
        std::thread::spawn(move || {
            let mut cli = cli;
            let out = cli
                .env("FABRIC_URL", url)
                .args(["task", "create", "--agent", "mcp-agent", "--timeout", "120", "--wait", "--prompt"])
                .arg(serde_json::json!({"op": "call", "name": "time__get_current_time", "arguments": {"timezone": "Europe/Oslo"}}).to_string())
                .timeout(std::time::Duration::from_secs(150))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let approval = pending_approval(&fabric, "tool:time/get_current_time");
    fabric
        .cli()
        .args([
            "approval",
            "approve",
            &approval,
            "--reason",
            "checking the clock is fine",
        ])
        .assert()
        .success();
    let approved = waiting.join().unwrap();
    assert!(
        approved.contains("Europe/Oslo") && approved.contains("\"ok\": true"),
        "{approved}"
    );
    // An approval nobody gives in time is a denial.
    let timed_out = ask(
        &fabric,
        serde_json::json!({"op": "call", "name": "time__convert_time",
        "arguments": {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Oslo"}}),
    );
    assert_refused(&timed_out, "which was timed_out");

    // A crashing server is restarted: the next call succeeds, in a new process.
    let first = ask(
        &fabric,
        serde_json::json!({"op": "call", "name": "flaky__echo", "arguments": {"n": 1}}),
    );
    assert_eq!(first["ok"], true, "{first}");
    let crashed = ask(
        &fabric,
        serde_json::json!({"op": "call", "name": "flaky__crash", "arguments": {}}),
    );
    assert_eq!(crashed["ok"], false, "{crashed}");
    let again = ask(
        &fabric,
        serde_json::json!({"op": "call", "name": "flaky__echo", "arguments": {"n": 2}}),
    );
    assert_eq!(again["ok"], true, "{again}");
    let instance = |answer: &serde_json::Value| {
        serde_json::from_str::<serde_json::Value>(answer["text"].as_str().unwrap()).unwrap()["instance"].clone()
    };
    assert_ne!(
        instance(&first),
        instance(&again),
        "a new process answers after the crash"
    );
    // A hanging one times out with a clear error; an oversized answer is refused.
    let hung = ask(
        &fabric,
        serde_json::json!({"op": "call", "name": "flaky__hang", "arguments": {}}),
    );
    assert_refused(&hung, "did not answer tools/call within 3.0 s");
    let big = ask(
        &fabric,
        serde_json::json!({"op": "call", "name": "flaky__big", "arguments": {}}),
    );
    assert_refused(&big, "max_result_bytes");

    // Secrets: not in the agent's environment, its logs, the API or the server log.
    let env = ask(&fabric, serde_json::json!({"op": "env"}));
    assert!(
        env["env"]["MCP_URL"].as_str().unwrap().ends_with("/mcp"),
        "{env}"
    );
    assert!(
        !env.to_string().contains(SECRET),
        "the secret reached the agent"
    );
    assert!(!agent_logs(&fabric).contains(SECRET));
    assert!(
        !fabric.log().contains(SECRET),
        "the secret is in the server log"
    );
    assert!(
        !env.to_string().contains(REMOTE_TOKEN) && !fabric.log().contains(REMOTE_TOKEN),
        "the remote token reached the agent or the server log"
    );
    let spans = serde_json::to_string(&receiver.spans()).unwrap();
    let audit = super::stdout_of(fabric.cli().args(["-o", "json", "audit"]));
    for secret in [SECRET, REMOTE_TOKEN] {
        assert!(!spans.contains(secret), "a secret is in the traces");
        assert!(!audit.contains(secret), "a secret is in the audit trail");
    }

    // Counted per server, tool and outcome.
    let metrics = reqwest_blocking_get(&format!("{}/metrics", fabric.url));
    for series in [
        r#"agent_fabric_mcp_tool_calls_total{server="time",tool="get_current_time",outcome="ok"}"#,
        r#"agent_fabric_mcp_tool_calls_total{server="time",tool="convert_time",outcome="denied"}"#,
        r#"agent_fabric_mcp_tool_calls_total{server="flaky",tool="hang",outcome="timeout"}"#,
        r#"agent_fabric_mcp_server_starts_total{server="flaky",reason="stopped"}"#,
        r#"agent_fabric_mcp_server_starts_total{server="flaky",reason="unresponsive"}"#,
        r#"agent_fabric_mcp_server_starts_total{server="time",reason="first_use"}"#,
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}

/// A plain GET (the metrics page needs no token).
fn reqwest_blocking_get(url: &str) -> String {
    let out = Command::new("curl").args(["-sf", url]).output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// A server that cannot start says why (its last stderr lines), and a
/// registration the fabric cannot accept names the field.
#[test]
fn a_server_that_does_not_start_says_why_and_bad_registrations_name_the_field() {
    let fabric = Fabric::start();
    fabric.login();
    fabric
        .cli()
        .args([
            "mcp",
            "add",
            "broken",
            "--command",
            "no-such-mcp-server --flag",
        ])
        .assert()
        .success();
    let out = fabric
        .cli()
        .args(["mcp", "tools", "broken"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot start MCP server \"broken\"")
            && stderr.contains("no-such-mcp-server: not found"),
        "{stderr}"
    );

    for (args, says) in [
        (
            vec!["mcp", "add", "Bad_Name", "--command", "x"],
            "must be 1 to 32 of a-z, 0-9 and '-'",
        ),
        (
            vec!["mcp", "add", "both", "--command", "x", "--header", "A=b"],
            "'headers' and 'secret_headers' are for remote servers",
        ),
        (
            vec!["mcp", "add", "web", "--url", "ftp://example.com/mcp"],
            "must be an http:// or https:// URL",
        ),
    ] {
        let out = fabric.cli().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }
    let out = fabric
        .cli()
        .args(["agent", "spawn", "--id", "t", "--tools", "time"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("must be <server>/<tool>"),
        "{stderr}"
    );
    let listed = super::stdout_of(fabric.cli().args(["mcp", "list", "-q"]));
    assert_eq!(listed.trim(), "broken");
}
