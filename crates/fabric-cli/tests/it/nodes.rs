//! Issue #21, worker nodes: real `reactor-fabric node` processes joining a
//! real `reactor-fabric serve`: join tokens (single use, expiring,
//! revocable), node credentials (renewed, dead after `node remove`),
//! capabilities and readiness (`node list`, the node's `/readyz`), config
//! delivery (applied, acknowledged, or refused with the previous one kept),
//! and a node that stops reporting turning `unreachable` with an alert.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::access::json_of;
use super::gateway::KillOnDrop;
use super::{Fabric, free_port, stdout_of};

/// Fast heartbeats, so that losing a node shows within seconds.
pub(crate) const FAST_NODES: [(&str, &str); 2] = [
    ("FABRIC_NODE_HEARTBEAT_INTERVAL", "300ms"),
    ("FABRIC_NODE_HEARTBEAT_TIMEOUT", "2s"),
];

/// A `reactor-fabric node` child process with its own data dir and `/readyz` port.
pub(crate) struct Node {
    pub(crate) child: KillOnDrop,
    dir: TempDir,
    /// `--listen`'s port; `None`: the node's default (read from `readyz.addr`).
    port: Option<u16>,
}

impl Node {
    pub(crate) fn start(fabric: &Fabric, token: Option<&str>, name: &str, extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        Node::start_in(fabric, dir, token, name, extra, Some(free_port()))
    }

    /// A node inside network namespace `netns` (made with `ip netns add`).
    /// Entered with `nsenter --net`, not `ip netns exec`, which mounts a
    /// sysfs of its own and so hides the cgroup mounts sandboxes need.
    pub(crate) fn start_in_netns(
        fabric: &Fabric,
        netns: &str,
        token: &str,
        name: &str,
        extra: &[&str],
    ) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let cmd = node_command(fabric, &dir, name, None, extra);
        let mut wrapped = Command::new("nsenter");
        wrapped
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("--")
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .args(["--token", token])
            .env_remove("FABRIC_JOIN_TOKEN")
            .env_remove("FABRIC_URL")
            .env_remove("FABRIC_TOKEN")
            .stdin(Stdio::null());
        Node::spawn(wrapped, dir, None)
    }

    fn start_in(
        fabric: &Fabric,
        dir: TempDir,
        token: Option<&str>,
        name: &str,
        extra: &[&str],
        port: Option<u16>,
    ) -> Node {
        let mut cmd = node_command(fabric, &dir, name, port, extra);
        if let Some(token) = token {
            cmd.args(["--token", token]);
        }
        Node::spawn(cmd, dir, port)
    }

    fn spawn(mut cmd: Command, dir: TempDir, port: Option<u16>) -> Node {
        let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Node {
            child: KillOnDrop(child),
            dir,
            port,
        }
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// The node's stored identity (`<data>/node.json`).
    pub(crate) fn identity(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.data_dir().join("node.json")).unwrap()).unwrap()
    }

    /// Waits for the process to end; its exit code and log.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return (status.code(), self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the node did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn readyz(&self) -> (u16, Value) {
        let port = self.port.or_else(|| {
            let addr = std::fs::read_to_string(self.data_dir().join("readyz.addr")).ok()?;
            addr.trim().rsplit(':').next()?.parse().ok()
        });
        let Some(port) = port else {
            return (0, Value::Null);
        };
        let (status, body) = http(port, "GET", "/readyz", None, None);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

fn node_command(
    fabric: &Fabric,
    dir: &TempDir,
    name: &str,
    port: Option<u16>,
    extra: &[&str],
) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("reactor-fabric"));
    cmd.args(["node", "--join", &fabric.url, "--name", name, "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--log-format", "json"])
        .args(extra)
        .env_remove("FABRIC_JOIN_TOKEN")
        .env_remove("FABRIC_URL")
        .env_remove("FABRIC_TOKEN")
        .stdin(Stdio::null());
    if let Some(port) = port {
        cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
    }
    cmd
}

/// A plain HTTP/1.1 request to 127.0.0.1:`port`: (status, body).
pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    http_to(
        std::net::Ipv4Addr::LOCALHOST,
        port,
        method,
        path,
        bearer,
        body,
    )
}

/// [`http`] to `ip`:`port`.
pub(crate) fn http_to(
    ip: std::net::Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect((ip, port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.unwrap_or("");
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub(crate) fn port_of(fabric: &Fabric) -> u16 {
    fabric.url.rsplit(':').next().unwrap().parse().unwrap()
}

/// One immediate heartbeat for node `name`, sent with `bearer`: (status, body).
pub(crate) fn heartbeat_as(fabric: &Fabric, name: &str, bearer: &str) -> (u16, String) {
    http(
        port_of(fabric),
        "POST",
        &format!("/v1/nodes/{name}/heartbeat"),
        Some(bearer),
        Some(r#"{"ready":true}"#),
    )
}

/// The admin's token, from the CLI's config file after `login`.
pub(crate) fn admin_token(fabric: &Fabric) -> String {
    std::fs::read_to_string(fabric.config_path())
        .unwrap()
        .split('"')
        .find(|s| s.starts_with("rf_"))
        .expect("logged in")
        .to_owned()
}

pub(crate) fn create_token(fabric: &Fabric, args: &[&str]) -> String {
    stdout_of(
        fabric
            .cli()
            .args(["-q", "node", "token", "create"])
            .args(args),
    )
    .trim()
    .to_owned()
}

pub(crate) fn nodes(fabric: &Fabric) -> Vec<Value> {
    json_of(fabric.cli().args(["-o", "json", "node", "list"]))["nodes"]
        .as_array()
        .cloned()
        .unwrap()
}

/// Polls `node list` until node `name` satisfies `ready`; returns that view.
pub(crate) fn wait_for_node(
    fabric: &Fabric,
    node: &Node,
    name: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = nodes(fabric);
        if let Some(view) = list.iter().find(|n| n["name"] == name && ok(n)) {
            return view.clone();
        }
        assert!(
            Instant::now() < deadline,
            "node {name} never became {what}: {list:#?}\nnode log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_joins_reports_its_capabilities_and_applies_the_config_it_is_sent() {
    let fabric = Fabric::start_with_env(&FAST_NODES);
    fabric.login();
    let token = create_token(&fabric, &["--expires", "10m"]);
    assert!(token.starts_with("rfj_"), "{token}");
    let node = Node::start(
        &fabric,
        Some(&token),
        "n1",
        &[
            "--label",
            "gpu=true",
            "--label",
            "zone=a",
            "--isolation",
            "none,process",
        ],
    );
    let view = wait_for_node(&fabric, &node, "n1", "ready", |n| n["status"] == "ready");
    assert_eq!(view["labels"]["gpu"], "true", "{view:#}");
    assert_eq!(view["labels"]["zone"], "a", "{view:#}");
    let caps = &view["capabilities"];
    assert_eq!(
        caps["isolation"],
        serde_json::json!(["none", "process"]),
        "root with cgroups sandboxes: {view:#}"
    );
    assert!(caps["cpus"].as_u64().unwrap() >= 1, "{view:#}");
    assert!(caps["memory_bytes"].as_u64().unwrap() > 1 << 20, "{view:#}");
    assert!(!caps["hostname"].as_str().unwrap().is_empty(), "{view:#}");
    assert!(caps["kernel"].as_str().unwrap().contains('.'), "{view:#}");
    assert_eq!(caps["inference"]["mode"], "gateway", "{view:#}");
    assert_eq!(caps["version"], fabric_core::VERSION);
    assert_eq!(view["config_version"], 0);

    // The node's own readiness (once the answer to its first heartbeat is in).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, ready) = loop {
        let (status, ready) = node.readyz();
        if status == 200 || Instant::now() > deadline {
            break (status, ready);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["node"], "n1");

    // The table's columns, as the issue names them.
    let table = stdout_of(fabric.cli().args(["node", "list"]));
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATUS",
            "ISOLATION",
            "CPU",
            "MEMORY",
            "AGENTS",
            "LABELS",
            "LAST SEEN",
            "CONFIG"
        ],
        "{table}"
    );
    assert!(table.contains("gpu=true,zone=a"), "{table}");

    // A config is delivered, applied and acknowledged (the long poll brings it at once).
    let set = json_of(fabric.cli().args([
        "-o",
        "json",
        "node",
        "config",
        "set",
        "--log-level",
        "debug",
        "--egress",
        "pypi.org:443",
        "--inference-upstream",
        "http://127.0.0.1:11434",
    ]));
    assert_eq!(set["version"], 1, "{set:#}");
    let view = wait_for_node(&fabric, &node, "n1", "on config 1", |n| {
        n["config_version"] == 1
    });
    assert_eq!(
        view["capabilities"]["inference"],
        serde_json::json!({"mode": "local", "url": "http://127.0.0.1:11434"}),
        "the config's inference upstream is the node's inference path: {view:#}"
    );
    let stored: Value =
        serde_json::from_slice(&std::fs::read(node.data_dir().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(stored["version"], 1);
    assert_eq!(
        stored["spec"]["egress"],
        serde_json::json!(["pypi.org:443"])
    );
    // The debug filter is in force: the node logs at debug now.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.log().contains("\"level\":\"debug\"") {
        assert!(
            Instant::now() < deadline,
            "no debug line after log_level debug:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A config the node cannot apply is refused; it keeps the one it runs.
    fabric
        .cli()
        .args(["node", "config", "set", "--log-level", "warn,fabric=["])
        .assert()
        .success();
    let view = wait_for_node(&fabric, &node, "n1", "refusing config 2", |n| {
        n["config_error"]["version"] == 2
    });
    assert_eq!(view["config_version"], 1, "{view:#}");
    assert!(
        view["config_error"]["error"]
            .as_str()
            .unwrap()
            .contains("not a log filter"),
        "{view:#}"
    );
    assert_eq!(
        view["status"], "ready",
        "a refused config does not stop the node"
    );
    let stored: Value =
        serde_json::from_slice(&std::fs::read(node.data_dir().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(stored["version"], 1, "the applied config stays on disk");
    let table = stdout_of(fabric.cli().args(["node", "list"]));
    assert!(table.contains("1 (refused 2)"), "{table}");

    // The orchestrator refuses what no node could apply, before any node sees it.
    let out = fabric
        .cli()
        .args(["node", "config", "set", "--egress", "host:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("egress"),
        "{out:?}"
    );

    // The metrics count nodes by status.
    let (_, metrics) = http(port_of(&fabric), "GET", "/metrics", None, None);
    assert!(
        metrics.contains("agent_fabric_nodes{status=\"ready\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("agent_fabric_node_heartbeat_age_seconds{node=\"n1\"}"),
        "{metrics}"
    );
}

#[test]
fn join_tokens_admit_only_while_valid_and_only_as_often_as_allowed() {
    let fabric = Fabric::start_with_env(&FAST_NODES);
    fabric.login();
    let refused = |token: &str, name: &str, why: &str| {
        let mut node = Node::start(&fabric, Some(token), name, &["--isolation", "none"]);
        let (code, log) = node.wait_exit(Duration::from_secs(30));
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains(why), "expected {why:?} in:\n{log}");
        assert!(!log.contains(token), "the token is not logged:\n{log}");
    };

    // Single use (the default): one node, not two.
    let single = create_token(&fabric, &[]);
    let first = Node::start(&fabric, Some(&single), "first", &["--isolation", "none"]);
    wait_for_node(&fabric, &first, "first", "ready", |n| {
        n["status"] == "ready"
    });
    refused(&single, "second", "already used");

    // A name is one node's.
    let multi = create_token(&fabric, &["--uses", "0"]);
    refused(&multi, "first", "has joined already");

    // Any number of nodes with a multi-use token.
    let a = Node::start(&fabric, Some(&multi), "multi-a", &["--isolation", "none"]);
    let b = Node::start(&fabric, Some(&multi), "multi-b", &["--isolation", "none"]);
    wait_for_node(&fabric, &a, "multi-a", "ready", |n| n["status"] == "ready");
    wait_for_node(&fabric, &b, "multi-b", "ready", |n| n["status"] == "ready");

    // Revoked.
    let revoked = create_token(&fabric, &["--uses", "0"]);
    fabric
        .cli()
        .args(["node", "token", "revoke", &revoked])
        .assert()
        .success();
    refused(&revoked, "late", "revoked");

    // Expired.
    let short = create_token(&fabric, &["--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    refused(&short, "late", "expired");

    // Made up.
    refused("rfj_00000000_nothing", "late", "unknown join token");

    let tokens = json_of(fabric.cli().args(["-o", "json", "node", "token", "list"]));
    let listed = tokens["tokens"].as_array().unwrap();
    assert_eq!(listed.len(), 4, "{tokens:#}");
    let text = tokens.to_string();
    for secret in [&single, &multi, &revoked, &short] {
        assert!(
            !text.contains(secret.as_str()),
            "a listed token shows its secret: {text}"
        );
    }
    let first_token = listed
        .iter()
        .find(|t| single.contains(t["id"].as_str().unwrap()))
        .unwrap();
    assert_eq!(first_token["uses"], 1);
    assert_eq!(first_token["used_by"], serde_json::json!(["first"]));
    assert_eq!(first_token["valid"], false);

    // Only an admin makes tokens.
    let (status, body) = http(
        port_of(&fabric),
        "POST",
        "/v1/nodes/tokens",
        None,
        Some("{}"),
    );
    assert_eq!(status, 401, "{body}");
}

#[test]
fn a_node_credential_works_for_that_node_alone_and_dies_with_node_remove() {
    let fabric = Fabric::start_with_env(&FAST_NODES);
    fabric.login();
    let token = create_token(&fabric, &[]);
    let mut node = Node::start(&fabric, Some(&token), "n1", &["--isolation", "none"]);
    wait_for_node(&fabric, &node, "n1", "ready", |n| n["status"] == "ready");
    let credential = node.identity()["credential"].as_str().unwrap().to_owned();
    assert!(credential.starts_with("rfn_"));
    let port = port_of(&fabric);
    let (status, body) = heartbeat_as(&fabric, "n1", &credential);
    assert_eq!(status, 200, "{body}");
    // Not for another node's name, and not as a user.
    let (status, _) = heartbeat_as(&fabric, "n2", &credential);
    assert_eq!(status, 401);
    let (status, _) = http(port, "GET", "/v1/tasks", Some(&credential), None);
    assert_eq!(status, 401, "a node credential is no user token");
    let (status, _) = heartbeat_as(&fabric, "n1", &admin_token(&fabric));
    assert_eq!(status, 401, "a user's token cannot act as a node");

    // Removed: the stolen credential stops working, and the node stops, saying why.
    fabric
        .cli()
        .args(["node", "remove", "n1"])
        .assert()
        .success();
    let (status, body) = heartbeat_as(&fabric, "n1", &credential);
    assert_eq!(status, 401, "{body}");
    let (code, log) = node.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("refused this node's credential"), "{log}");
    assert!(
        !log.contains(&credential),
        "the credential is not logged:\n{log}"
    );
    assert!(nodes(&fabric).is_empty());
}

#[test]
fn a_node_renews_its_credential_and_restarts_without_a_token() {
    let mut env = FAST_NODES.to_vec();
    env.push(("FABRIC_NODE_CREDENTIAL_TTL", "4s"));
    let fabric = Fabric::start_with_env(&env);
    fabric.login();
    let token = create_token(&fabric, &[]);
    let node = Node::start(&fabric, Some(&token), "n1", &["--isolation", "none"]);
    wait_for_node(&fabric, &node, "n1", "ready", |n| n["status"] == "ready");
    let first = node.identity()["credential"].as_str().unwrap().to_owned();
    // Two lifetimes later it is still in, on a newer credential.
    std::thread::sleep(Duration::from_secs(8));
    wait_for_node(&fabric, &node, "n1", "ready", |n| n["status"] == "ready");
    let renewed = node.identity()["credential"].as_str().unwrap().to_owned();
    assert_ne!(
        first,
        renewed,
        "the credential was renewed:\n{}",
        node.log()
    );
    assert!(
        node.log().contains("node credential renewed"),
        "{}",
        node.log()
    );
    let (status, _) = heartbeat_as(&fabric, "n1", &first);
    assert_eq!(
        status, 401,
        "a replaced credential ends with its own expiry"
    );

    // Restarted on its data dir, it needs no token (the one it had is used up).
    let Node { child, dir, .. } = node;
    drop(child);
    let restarted = Node::start_in(
        &fabric,
        dir,
        None,
        "n1",
        &["--isolation", "none"],
        Some(free_port()),
    );
    wait_for_node(&fabric, &restarted, "n1", "ready again", |n| {
        n["status"] == "ready"
    });
}

#[test]
fn a_node_that_stops_reporting_becomes_unreachable_with_an_alert() {
    let fabric = Fabric::start_with_env(&FAST_NODES);
    fabric.login();
    let token = create_token(&fabric, &[]);
    let node = Node::start(&fabric, Some(&token), "n1", &["--isolation", "none"]);
    wait_for_node(&fabric, &node, "n1", "ready", |n| n["status"] == "ready");
    for (action, status) in [
        ("cordon", "cordoned"),
        ("drain", "draining"),
        ("uncordon", "ready"),
    ] {
        fabric.cli().args(["node", action, "n1"]).assert().success();
        wait_for_node(&fabric, &node, "n1", status, |n| n["status"] == status);
    }

    let Node { child, .. } = node;
    let killed_at = Instant::now();
    drop(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = nodes(&fabric);
        if list[0]["status"] == "unreachable" {
            break;
        }
        assert!(Instant::now() < deadline, "{list:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        killed_at.elapsed() >= Duration::from_millis(1500),
        "unreachable only after the heartbeat timeout (2s)"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let token = admin_token(&fabric);
    loop {
        let (_, alerts) = http(
            port_of(&fabric),
            "GET",
            "/v1/alerts?kind=node_unreachable",
            Some(&token),
            None,
        );
        if alerts.contains("\"entity\":\"node:n1\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no node_unreachable alert: {alerts}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_node_that_can_run_no_isolation_level_it_is_asked_for_refuses_to_join() {
    let fabric = Fabric::start();
    fabric.login();
    let token = create_token(&fabric, &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = node_command(
        &fabric,
        &dir,
        "n1",
        Some(free_port()),
        &["--isolation", "container", "--token", &token],
    );
    let out = cmd
        .env(
            "DOCKER_HOST",
            format!("unix://{}", dir.path().join("no-docker.sock").display()),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("none of the isolation levels"), "{stderr}");
    assert!(
        stderr.contains("container: Docker is not reachable"),
        "{stderr}"
    );
    assert!(nodes(&fabric).is_empty(), "it did not join");
    // The token is still good for a node that can run something.
    let ok = Node::start(&fabric, Some(&token), "n1", &["--isolation", "none"]);
    wait_for_node(&fabric, &ok, "n1", "joined", |n| n["name"] == "n1");
}

#[test]
fn nodes_on_one_machine_without_listen_each_serve_readyz_on_a_port_of_their_own() {
    let fabric = Fabric::start_with_env(&FAST_NODES);
    fabric.login();
    let token = create_token(&fabric, &["--uses", "2"]);
    let nodes: Vec<Node> = ["a", "b"]
        .iter()
        .map(|name| {
            let dir = tempfile::tempdir().unwrap();
            Node::start_in(
                &fabric,
                dir,
                Some(&token),
                name,
                &["--isolation", "none"],
                None,
            )
        })
        .collect();
    let mut addrs = Vec::new();
    for (node, name) in nodes.iter().zip(["a", "b"]) {
        wait_for_node(&fabric, node, name, "ready", |n| n["status"] == "ready");
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.readyz().0 != 200 {
            assert!(Instant::now() < deadline, "{}", node.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        addrs.push(std::fs::read_to_string(node.data_dir().join("readyz.addr")).unwrap());
    }
    assert_ne!(addrs[0], addrs[1], "two nodes, two /readyz ports");
}
