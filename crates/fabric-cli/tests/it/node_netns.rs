//! Issue #21 across real interfaces: three `reactor-fabric node` processes,
//! each in a network namespace of its own joined to the orchestrator's
//! bridge by a veth pair, so every node↔orchestrator message crosses an
//! interface as between machines. Join, capabilities, config delivery,
//! placement by selector, tasks on the chosen node (`FABRIC_NODE`),
//! inference from inside a sandbox on a node with the official `ollama`
//! client (metered against the agent at the orchestrator), and a partition:
//! the node's link down past the heartbeat timeout, its agent moved, and
//! after the link is back nothing ran twice.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::access::json_of;
use super::gateway::Mock;
use super::node_dispatch::{run_task, stdout_of_task, wait_agent};
use super::nodes::{FAST_NODES, Node, admin_token, create_token, http_to, wait_for_node};
use super::{Fabric, stdout_of};

/// A bridge on the host holding the orchestrator's address, and one
/// network namespace per node with a veth pair into the bridge. Removed
/// when dropped.
struct Lab {
    bridge: String,
    /// The orchestrator's address on the bridge (`10.x.y.1`).
    host: Ipv4Addr,
    namespaces: Vec<String>,
    /// Host ends of the veth pairs, one per namespace.
    links: Vec<String>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    fn new(nodes: usize) -> Lab {
        // Names and a /24 unique to this test process.
        let id = std::process::id() % 100_000;
        let (a, b) = (64 + (id >> 8) % 64, id & 0xff);
        let bridge = format!("rfb{id}");
        let host = Ipv4Addr::new(10, a as u8, b as u8, 1);
        let mut lab = Lab {
            bridge: bridge.clone(),
            host,
            namespaces: Vec::new(),
            links: Vec::new(),
        };
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{host}/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 0..nodes {
            let ns = format!("rfn{id}-{i}");
            let outside = format!("rfh{id}{i}");
            let inside = format!("rfp{id}{i}");
            ip(&["netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ]);
            lab.links.push(outside.clone());
            ip(&["link", "set", &inside, "netns", &ns]);
            ip(&["link", "set", &outside, "master", &bridge]);
            ip(&["link", "set", &outside, "up"]);
            let addr = format!("10.{a}.{b}.{}/24", i + 2);
            ip(&[
                "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", &inside,
            ]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", &inside, "up"]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        }
        lab
    }

    /// Cuts node `i` off (its link down) or reconnects it.
    fn link(&self, i: usize, up: bool) {
        ip(&[
            "link",
            "set",
            &self.links[i],
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for link in &self.links {
            let _ = Command::new("ip").args(["link", "del", link]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// Runs one task and waits for it (sandboxed Python starts slowly on 2 cores).
fn run(fabric: &Fabric, agent: &str, env: &[String], command: &str) -> Value {
    run_task(fabric, agent, env, command, "90s")
}

#[test]
fn three_nodes_in_their_own_namespaces_join_run_placed_agents_and_survive_a_partition() {
    let lab = Lab::new(3);
    let mock = Mock::start("netns", None);
    let fabric = Fabric::start_on(
        lab.host,
        &[
            FAST_NODES[0],
            FAST_NODES[1],
            ("OLLAMA_BASE_URL", mock.url.as_str()),
        ],
    );
    fabric.login();
    let token = create_token(&fabric, &["--uses", "0"]);
    let start = |i: usize, name: &str, labels: &[&str]| {
        let mut extra = vec!["--isolation", "none,process"];
        for label in labels {
            extra.extend(["--label", label]);
        }
        Node::start_in_netns(&fabric, &lab.namespaces[i], &token, name, &extra)
    };
    let n1 = start(0, "n1", &["gpu=true"]);
    let n2 = start(1, "n2", &["zone=b"]);
    let n3 = start(2, "n3", &["zone=b"]);
    let all = [("n1", &n1), ("n2", &n2), ("n3", &n3)];
    for (name, node) in all {
        let view = wait_for_node(&fabric, node, name, "ready", |n| n["status"] == "ready");
        assert_eq!(
            view["capabilities"]["isolation"],
            serde_json::json!(["none", "process"]),
            "{view:#}"
        );
    }

    // Config delivery: every node applies and acknowledges version 1.
    fabric
        .cli()
        .args(["node", "config", "set", "--log-level", "debug"])
        .assert()
        .success();
    for (name, node) in all {
        wait_for_node(&fabric, node, name, "on config 1", |n| {
            n["config_version"] == 1
        });
    }

    // Placement by selector; the task runs on that node, in a sandbox, and
    // chats through its node's inference endpoint with the ollama client.
    let (python, read_only) = super::mcp::sandboxed_python();
    let mut spawn = fabric.cli();
    spawn.args(["-o", "json", "agent", "spawn", "--id", "asks"]);
    spawn.args(["--isolation", "process", "--node-selector", "gpu=true"]);
    for path in &read_only {
        spawn.args(["--read-only", path]);
    }
    let asks = json_of(&mut spawn);
    assert_eq!(asks["node"], "n1", "{asks:#}");
    assert_eq!(
        stdout_of_task(&run(&fabric, "asks", &[], "echo $FABRIC_NODE")),
        "n1"
    );
    let script = "import os, ollama\nc = ollama.Client(host=os.environ['OLLAMA_BASE_URL'])\nr = c.chat(model='llama3', messages=[{'role': 'user', 'content': 'hello from node n1'}])\nprint(os.environ['OLLAMA_BASE_URL'], r.message.content)";
    let chat = run(
        &fabric,
        "asks",
        &[format!("SCRIPT={script}")],
        &format!("{} -c \"$SCRIPT\"", python.display()),
    );
    let said = stdout_of_task(&chat);
    assert!(said.starts_with("http://localhost:11434"), "{chat:#}");
    assert!(said.contains("hello from node n1"), "{chat:#}");
    assert_metered(&fabric, lab.host, "asks");

    // Egress from a sandbox on the node: both targets are in the agent's
    // allowlist, a policy at the orchestrator denies one; the node's proxy
    // asks it, refuses that one with 403, and the decision is audited there.
    let open = serve_text(lab.host, "open-body");
    let closed = serve_text(lab.host, "closed-body");
    let mut spawn = fabric.cli();
    spawn.args(["-o", "json", "agent", "spawn", "--id", "net"]);
    spawn.args(["--isolation", "process", "--node", "n1"]);
    spawn.args(["--egress", &format!("{}:{open}", lab.host)]);
    spawn.args(["--egress", &format!("{}:{closed}", lab.host)]);
    for path in &read_only {
        spawn.args(["--read-only", path]);
    }
    assert_eq!(json_of(&mut spawn)["node"], "n1");
    let policy = fabric.dir.path().join("no-closed.toml");
    std::fs::write(
        &policy,
        format!(
            "[[policies]]\nid = \"no-closed\"\nscope = {{ agent = \"net\" }}\n\n[[policies.rules]]\naction_pattern = \"net:connect:*:{closed}\"\neffect = \"deny\"\n"
        ),
    )
    .unwrap();
    fabric
        .cli()
        .args(["policy", "apply", "-f"])
        .arg(&policy)
        .assert()
        .success();
    let fetch = |port: u16| {
        format!(
            "{} -c \"import urllib.request as u\ntry:\n print(u.urlopen('http://{}:{port}/', timeout=10).read().decode())\nexcept Exception as e:\n print('ERR', e)\"",
            python.display(),
            lab.host
        )
    };
    let fetched = stdout_of_task(&run(
        &fabric,
        "net",
        &[],
        &format!("{}; {}", fetch(open), fetch(closed)),
    ));
    let lines: Vec<&str> = fetched.lines().collect();
    assert_eq!(lines[0], "open-body", "{fetched}");
    assert!(
        lines[1].starts_with("ERR") && lines[1].contains("403"),
        "{fetched}"
    );
    let port: u16 = fabric.url.rsplit(':').next().unwrap().parse().unwrap();
    let (status, body) = http_to(
        lab.host,
        port,
        "GET",
        "/v1/audit?agent=net",
        Some(&admin_token(&fabric)),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let audit: Value = serde_json::from_str(&body).unwrap();
    let denied = format!("net:connect:{}:{closed}", lab.host);
    assert!(
        audit["records"].as_array().unwrap().iter().any(|r| {
            r["source"] == "egress" && r["action"] == denied.as_str() && r["decision"] == "deny"
        }),
        "{audit:#}"
    );

    // Its MCP_URL works on the node too: an agent program there lists and
    // calls a third-party MCP server (mcp_server_time, which the
    // orchestrator runs) with the official `mcp` SDK.
    let py_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/py");
    let mut mcp_add = fabric.cli();
    mcp_add
        .args(["mcp", "add", "time", "--command"])
        .arg(format!(
            "{} -m mcp_server_time --local-timezone UTC",
            python.display()
        ));
    for path in &read_only {
        mcp_add.args(["--read-only", path]);
    }
    mcp_add.assert().success();
    let mut spawn = fabric.cli();
    spawn.args(["-o", "json", "agent", "spawn", "--id", "mcp-agent"]);
    spawn.args([
        "--isolation",
        "process",
        "--node",
        "n1",
        "--tools",
        "time/*",
    ]);
    spawn.arg("--command").arg(format!(
        "{} {}",
        python.display(),
        py_dir.join("mcp_agent.py").display()
    ));
    for path in read_only.iter().chain([&py_dir.display().to_string()]) {
        spawn.args(["--read-only", path]);
    }
    assert_eq!(json_of(&mut spawn)["node"], "n1");
    let listed = super::mcp::ask(&fabric, serde_json::json!({"op": "list"}));
    assert!(
        listed["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|n| n == "time__get_current_time")),
        "{listed}"
    );
    let now = super::mcp::ask(
        &fabric,
        serde_json::json!({"op": "call", "name": "time__get_current_time", "arguments": {"timezone": "UTC"}}),
    );
    assert_eq!(now["ok"], true, "{now}");

    // A partition: the node running `roamer` loses its link for longer
    // than the heartbeat timeout while a task runs there.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs.log");
    let roamer = json_of(fabric.cli().args([
        "-o",
        "json",
        "agent",
        "spawn",
        "--id",
        "roamer",
        "--isolation",
        "none",
        "--as-fabric-user",
        "--node-selector",
        "zone=b",
    ]));
    let cut = roamer["node"].as_str().unwrap().to_owned();
    let (cut_index, other) = if cut == "n2" { (1, "n3") } else { (2, "n2") };
    let command = format!(
        "echo start $FABRIC_NODE >> {log}; sleep 8; echo end $FABRIC_NODE >> {log}",
        log = log.display()
    );
    let task = json_of(fabric.cli().args([
        "-o",
        "json",
        "task",
        "create",
        "--agent",
        "roamer",
        "--command",
        &command,
    ]));
    let task_id = task["id"].as_str().unwrap().to_owned();
    wait_for_line(&log, &format!("start {cut}"));
    lab.link(cut_index, false);
    let cut_node = if cut == "n2" { &n2 } else { &n3 };
    wait_for_node(&fabric, cut_node, &cut, "unreachable", |n| {
        n["status"] == "unreachable"
    });
    wait_agent(&fabric, "roamer", "moved", |a| {
        a["node"] == other && a["state"] == "running"
    });
    let done = json_of(fabric.cli().args([
        "-o",
        "json",
        "task",
        "result",
        &task_id,
        "--wait",
        "--timeout",
        "90s",
    ]));
    assert_eq!(done["status"], "completed", "{done:#}");
    let task = json_of(fabric.cli().args(["-o", "json", "task", "get", &task_id]));
    assert!(task["attempt"].as_u64().unwrap() >= 2, "{task:#}");

    // The link comes back: the node reports again, runs nothing of the
    // moved agent, and what it ran before the cut never finished there.
    lab.link(cut_index, true);
    wait_for_node(&fabric, cut_node, &cut, "ready again", |n| {
        n["status"] == "ready" && n["agents"] == 0
    });
    std::thread::sleep(Duration::from_secs(2));
    let runs = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = runs.lines().collect();
    assert_eq!(
        lines,
        [
            format!("start {cut}"),
            format!("start {other}"),
            format!("end {other}")
        ],
        "the cut node stopped its task before the orchestrator moved it:\n{}",
        cut_node.log()
    );
    assert_eq!(
        stdout_of_task(&run(&fabric, "roamer", &[], "echo $FABRIC_NODE")),
        other
    );
    let list = stdout_of(fabric.cli().args(["node", "list"]));
    assert!(list.contains("n1"), "{list}");
}

/// A tiny HTTP server on `ip` answering every request with `body`; its port.
fn serve_text(ip: Ipv4Addr, body: &'static str) -> u16 {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn wait_for_line(log: &Path, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "{line:?} never appeared: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The orchestrator's usage ledger has a call of `agent`.
fn assert_metered(fabric: &Fabric, host: Ipv4Addr, agent: &str) {
    let port: u16 = fabric.url.rsplit(':').next().unwrap().parse().unwrap();
    let token = admin_token(fabric);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_to(
            host,
            port,
            "GET",
            &format!("/v1/llm/usage?agent={agent}"),
            Some(&token),
            None,
        );
        assert_eq!(status, 200, "{body}");
        let usage: Value = serde_json::from_str(&body).unwrap();
        if usage["records"].as_array().is_some_and(|r| !r.is_empty()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no usage recorded for agent {agent}: {usage:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
