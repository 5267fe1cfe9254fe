//! The behaviour scenarios (`tests/features/*.feature`, Gherkin) run by
//! `cucumber` against the real binary: node registration, node config
//! delivery, and a task calling its model from inside its sandbox (the 413
//! limit and output truncation with it). Each scenario starts its own server
//! (and nodes), like every test here.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use cucumber::{World as _, given, then, when};
use serde_json::Value;

use super::Fabric;
use super::gateway::Mock;
use super::nodes::{self, Node};

#[derive(cucumber::World, Default)]
pub(crate) struct FabricWorld {
    fabric: Option<Fabric>,
    mock: Option<Mock>,
    token: Option<String>,
    nodes: HashMap<String, Node>,
    /// A task's `task result -o json`.
    result: Option<Value>,
}

impl fmt::Debug for FabricWorld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FabricWorld")
            .field("server", &self.fabric.as_ref().map(|s| &s.url))
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl FabricWorld {
    fn fabric(&self) -> &Fabric {
        self.fabric.as_ref().expect("a step started the fabric")
    }

    fn node(&mut self, name: &str) -> &mut Node {
        self.nodes
            .get_mut(name)
            .unwrap_or_else(|| panic!("no node {name} was started"))
    }

    fn node_view(&mut self, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let fabric = self.fabric.as_ref().expect("a fabric");
        let node = self.nodes.get(name).expect("a started node");
        nodes::wait_for_node(fabric, node, name, what, ok)
    }

    /// Runs `commands` as one task of `agent` with `env` (`KEY=VALUE`),
    /// waits for it, keeps its result.
    fn run_task(&mut self, agent: &str, env: &[String], commands: &[String]) {
        let mut cmd = self.fabric().cli();
        cmd.args([
            "-o",
            "json",
            "task",
            "create",
            "--agent",
            agent,
            "--wait",
            "--timeout",
            "60s",
        ]);
        for pair in env {
            cmd.args(["--env", pair]);
        }
        for c in commands {
            cmd.args(["--command", c]);
        }
        let out = cmd.output().unwrap();
        let task: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("task create printed {out:?}"));
        self.result = Some(task);
    }
}

#[given("a fabric with fast node heartbeats")]
fn fabric_with_fast_nodes(w: &mut FabricWorld) {
    w.fabric = Some(Fabric::start_with_env(&nodes::FAST_NODES));
}

#[given("a fabric whose gateway calls a mock Ollama")]
fn fabric_with_mock(w: &mut FabricWorld) {
    let mock = Mock::start("bdd", None);
    w.fabric = Some(Fabric::start_with_env(&[("OLLAMA_BASE_URL", &mock.url)]));
    w.mock = Some(mock);
}

#[given("an admin logged in")]
fn admin_logged_in(w: &mut FabricWorld) {
    w.fabric().login();
}

#[given("a single-use join token")]
fn single_use_token(w: &mut FabricWorld) {
    w.token = Some(nodes::create_token(w.fabric(), &[]));
}

#[given(expr = "node {string} joins with the token and label {string}")]
#[when(expr = "node {string} joins with the token and label {string}")]
fn node_joins(w: &mut FabricWorld, name: String, label: String) {
    let token = w.token.clone().expect("a token");
    let node = Node::start(
        w.fabric(),
        Some(&token),
        &name,
        &["--isolation", "none", "--label", &label],
    );
    w.nodes.insert(name, node);
}

#[when(expr = "node {string} tries to join with the same token")]
fn node_tries_to_join(w: &mut FabricWorld, name: String) {
    node_joins(w, name, "zone=b".into());
}

#[when("the admin revokes the token")]
fn revoke_token(w: &mut FabricWorld) {
    let token = w.token.clone().expect("a token");
    w.fabric()
        .cli()
        .args(["node", "token", "revoke", &token])
        .assert()
        .success();
}

#[given(expr = "node {string} is {string} in the node list")]
#[when(expr = "node {string} is {string} in the node list")]
#[then(expr = "node {string} is {string} in the node list")]
fn node_has_status(w: &mut FabricWorld, name: String, status: String) {
    w.node_view(&name, &status, |n| n["status"] == status.as_str());
}

#[then(expr = "node {string} has the label {string}")]
fn node_has_label(w: &mut FabricWorld, name: String, label: String) {
    let (key, value) = label.split_once('=').unwrap();
    let view = w.node_view(&name, "listed", |_| true);
    assert_eq!(view["labels"][key], value, "{view:#}");
}

#[then(expr = "node {string} offers isolation {string}")]
fn node_offers(w: &mut FabricWorld, name: String, level: String) {
    let view = w.node_view(&name, "listed", |_| true);
    let levels = view["capabilities"]["isolation"].as_array().unwrap();
    assert!(levels.iter().any(|l| l == level.as_str()), "{view:#}");
}

#[then(expr = "node {string} answers its readiness check with {int}")]
fn node_readiness(w: &mut FabricWorld, name: String, code: u16) {
    let node = w.node(&name);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = node.readyz();
        if status == code {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[then(expr = "the join of node {string} is refused because the token was {string}")]
fn join_refused(w: &mut FabricWorld, name: String, why: String) {
    let (code, log) = w.node(&name).wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains(&why), "expected {why:?} in:\n{log}");
}

#[then(expr = "node {string} is not in the node list")]
fn node_not_listed(w: &mut FabricWorld, name: String) {
    let listed = nodes::nodes(w.fabric());
    assert!(
        listed.iter().all(|n| n["name"] != name.as_str()),
        "{listed:#?}"
    );
}

#[when(expr = "the admin removes node {string}")]
fn remove_node(w: &mut FabricWorld, name: String) {
    w.fabric()
        .cli()
        .args(["node", "remove", &name])
        .assert()
        .success();
}

#[then(expr = "node {string}'s credential is refused")]
fn credential_refused(w: &mut FabricWorld, name: String) {
    let credential = w.node(&name).identity()["credential"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = nodes::heartbeat_as(w.fabric(), &name, &credential);
    assert_eq!(status, 401, "{body}");
}

#[then(expr = "the node process of {string} exits")]
fn node_exits(w: &mut FabricWorld, name: String) {
    let (code, log) = w.node(&name).wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{log}");
}

#[when(expr = "the node process of {string} is killed")]
fn kill_node(w: &mut FabricWorld, name: String) {
    let node = w.node(&name);
    let _ = node.child.0.kill();
    let _ = node.child.0.wait();
}

#[when(expr = "the admin sets the node log level to {string}")]
fn set_log_level(w: &mut FabricWorld, level: String) {
    w.fabric()
        .cli()
        .args(["node", "config", "set", "--log-level", &level])
        .assert()
        .success();
}

#[when(expr = "node {string} runs node config version {int}")]
#[then(expr = "node {string} runs node config version {int}")]
fn runs_config(w: &mut FabricWorld, name: String, version: u64) {
    w.node_view(&name, &format!("on config {version}"), |n| {
        n["config_version"] == version
    });
}

#[then(expr = "node {string} stored node config version {int}")]
fn stored_config(w: &mut FabricWorld, name: String, version: u64) {
    let path = w.node(&name).data_dir().join("config.json");
    let stored: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(stored["version"], version, "{stored:#}");
}

#[then(expr = "node {string} refuses node config version {int}")]
fn refuses_config(w: &mut FabricWorld, name: String, version: u64) {
    let view = w.node_view(&name, &format!("refusing config {version}"), |n| {
        n["config_error"]["version"] == version
    });
    assert!(
        view["config_error"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{view:#}"
    );
}

#[given(expr = "an agent {string} at isolation {string} that may read the test Python")]
fn agent_with_python(w: &mut FabricWorld, id: String, level: String) {
    let (_, read_only) = super::mcp::sandboxed_python();
    let mut cmd = w.fabric().cli();
    cmd.args(["agent", "spawn", "--id", &id, "--isolation", &level]);
    for path in read_only {
        cmd.args(["--read-only", &path]);
    }
    cmd.assert().success();
}

#[when(expr = "a task of agent {string} chats {string} with the ollama client")]
fn chat_with_ollama(w: &mut FabricWorld, agent: String, text: String) {
    let (python, _) = super::mcp::sandboxed_python();
    let script = format!(
        "import os, ollama\nc = ollama.Client(host=os.environ['OLLAMA_BASE_URL'])\nr = c.chat(model='llama3', messages=[{{'role': 'user', 'content': {text:?}}}])\nprint(r.message.content)"
    );
    let command = format!("{} -c \"$SCRIPT\"", python.display());
    w.run_task(&agent, &[format!("SCRIPT={script}")], &[command]);
}

#[when(expr = "a task of agent {string} posts {int} MiB to its inference endpoint")]
fn post_big(w: &mut FabricWorld, agent: String, mib: u64) {
    let (python, _) = super::mcp::sandboxed_python();
    let command = format!(
        "{} -c \"import os, urllib.request as u\ntry:\n print(u.urlopen(u.Request(os.environ['OLLAMA_BASE_URL'] + '/api/chat', data=b'x' * ({mib} << 20)), timeout=30).status)\nexcept u.HTTPError as e:\n print(e.code)\"",
        python.display()
    );
    w.run_task(&agent, &[], &[command]);
}

#[when(expr = "a task of agent {string} prints {int} bytes")]
fn print_bytes(w: &mut FabricWorld, agent: String, bytes: u64) {
    w.run_task(
        &agent,
        &[],
        &[format!("head -c {bytes} /dev/zero | tr '\\0' x")],
    );
}

#[then(expr = "the task completes and its output contains {string}")]
fn output_contains(w: &mut FabricWorld, text: String) {
    let task = w.result.as_ref().expect("a task ran");
    assert_eq!(task["status"], "completed", "{task:#}");
    let stdout = task["result"]["stdout"].as_str().unwrap_or_default();
    assert!(stdout.contains(&text), "{task:#}");
}

#[then("the task completes with its stdout truncated")]
fn stdout_truncated(w: &mut FabricWorld) {
    let task = w.result.as_ref().expect("a task ran");
    assert_eq!(task["status"], "completed", "{}", task["status"]);
    assert_eq!(task["result"]["stdout_truncated"], true);
    let kept = task["result"]["stdout"].as_str().unwrap().len();
    assert_eq!(
        kept,
        fabric_runtime::DEFAULT_OUTPUT_LIMIT,
        "what is kept is the limit"
    );
}

#[then("the mock Ollama received no chat")]
fn mock_saw_no_chat(w: &mut FabricWorld) {
    let url = &w.mock.as_ref().expect("a mock").url;
    let port: u16 = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (status, body) = nodes::http(port, "GET", "/__mock/stats", None, None);
    assert_eq!(status, 200, "{body}");
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert!(stats["by_path"].get("/api/chat").is_none(), "{stats:#}");
}

#[then(expr = "the call is metered against agent {string}")]
fn metered(w: &mut FabricWorld, agent: String) {
    let fabric = w.fabric();
    let token = nodes::admin_token(fabric);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = nodes::http(
            nodes::port_of(fabric),
            "GET",
            &format!("/v1/llm/usage?agent={agent}"),
            Some(&token),
            None,
        );
        assert_eq!(status, 200, "{body}");
        let usage: Value = serde_json::from_str(&body).unwrap();
        let records = usage["records"].as_array().cloned().unwrap_or_default();
        if let Some(r) = records.first() {
            assert_eq!(r["agent"], agent.as_str(), "{usage:#}");
            return;
        }
        assert!(Instant::now() < deadline, "no usage for {agent}: {usage:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every feature file, every scenario; a failed or skipped step fails the test.
#[tokio::test(flavor = "multi_thread")]
async fn behaviour_scenarios() {
    let features = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/features");
    FabricWorld::cucumber()
        // Not cucumber's own command line: nextest's arguments are not its.
        .with_default_cli()
        .fail_on_skipped()
        // Each scenario runs servers and nodes: two at a time on 2 cores.
        .max_concurrent_scenarios(2)
        .run_and_exit(features)
        .await;
}
