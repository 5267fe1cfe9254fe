//! Isolation level `container` against the real dockerd (REQUIREMENTS §5 FR-ISO, §6):
//! the built-in shell agent in a container, what its commands can and cannot
//! do (asserted from inside), OOM, the inference sidecar, crash and restart,
//! terminate, the warm pool, Docker being away.
//!
//! Every test's server has its own data dir, so its own owner label; a
//! [`DockerGuard`] removes whatever carries that label when the test ends,
//! even when it fails (the server is dropped without its graceful stop).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fabric_core::TaskStatus;
use serde_json::{Value, json};

use crate::harness::{TestServer, error_code};

/// The `reactor-fabric` binary the sidecar image is built from: built now
/// (once per test process), so a stale one never serves an old proxy.
fn reactor_fabric() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/it-<hash> → target/<profile>/reactor-fabric
        let bin = exe
            .parent()
            .and_then(|deps| deps.parent())
            .unwrap()
            .join("reactor-fabric");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "fabric-cli", "--bin", "reactor-fabric"])
            .status()
            .unwrap();
        assert!(status.success(), "cannot build reactor-fabric");
        assert!(bin.exists(), "{} missing", bin.display());
        bin
    })
    .clone()
}

/// `docker ARGS`: stdout, or the test fails.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Container and volume ids carrying `owner`.
fn owned(owner: &str) -> Vec<String> {
    let filter = format!("label=io.reactor-fabric.owner={owner}");
    let mut ids: Vec<String> = docker(&["ps", "-aq", "--filter", &filter])
        .lines()
        .map(str::to_owned)
        .collect();
    ids.extend(
        docker(&["volume", "ls", "-q", "--filter", &filter])
            .lines()
            .map(str::to_owned),
    );
    ids
}

/// Removes every container and volume of one test server when dropped.
struct DockerGuard {
    owner: String,
}

impl Drop for DockerGuard {
    fn drop(&mut self) {
        let filter = format!("label=io.reactor-fabric.owner={}", self.owner);
        let list = |args: &[&str]| -> Vec<String> {
            Command::new("docker")
                .args(args)
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let containers = list(&["ps", "-aq", "--filter", &filter]);
        if !containers.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&containers)
                .output();
        }
        let volumes = list(&["volume", "ls", "-q", "--filter", &filter]);
        if !volumes.is_empty() {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f"])
                .args(&volumes)
                .output();
        }
    }
}

/// A server that can run container agents, and its guard.
async fn server_with(
    configure: impl FnOnce(&mut fabric_server::ServerConfig),
) -> (TestServer, DockerGuard) {
    let binary = reactor_fabric();
    let server = TestServer::start_with(|c| {
        c.containers.proxy_binary = Some(binary);
        configure(c);
    })
    .await;
    let owner = fabric_server::container_owner(&server.data_dir, None);
    (server, DockerGuard { owner })
}

async fn server() -> (TestServer, DockerGuard) {
    server_with(|_| {}).await
}

/// Runs `commands` on agent `agent`; returns (status, reason, stdout, stderr).
async fn run(
    s: &TestServer,
    token: &str,
    agent: &str,
    commands: &[&str],
) -> (TaskStatus, Option<String>, String, String) {
    let id = s
        .create(token, json!({"agent": agent, "commands": commands}))
        .await;
    let view = s.wait_done(token, &id).await;
    let (_, task) = s.get(token, &format!("/v1/tasks/{id}")).await;
    let result = view.result.unwrap_or_default();
    (
        view.status,
        task["reason"].as_str().map(str::to_owned),
        result.stdout,
        result.stderr,
    )
}

/// The agent's container (not its sidecar), by agent label and owner.
fn agent_container(owner: &str, agent: &str) -> Option<String> {
    docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.reactor-fabric.owner={owner}"),
        "--filter",
        &format!("label=io.reactor-fabric.agent={agent}"),
        "--filter",
        "label=io.reactor-fabric.component=agent",
    ])
    .lines()
    .next()
    .map(str::to_owned)
}

/// REQUIREMENTS §5 FR-ISO: a built-in shell agent in a container runs a task end to
/// end, and from inside, its commands are nobody, without capabilities, on a
/// read-only root with a writable workspace, without any network; Docker
/// says the same; its usage is real; terminate removes container, sidecar,
/// volume and socket directory.
#[tokio::test]
async fn container_shell_agent_runs_tasks_locked_down_and_terminates_clean() {
    let (s, guard) = server().await;
    let token = s.login().await;
    // Something listening on the host: the container must not reach it.
    let host_listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = host_listener.local_addr().unwrap().port();
    let gateway = docker(&[
        "network",
        "inspect",
        "bridge",
        "--format",
        "{{(index .IPAM.Config 0).Gateway}}",
    ]);
    let gateway = gateway.trim();

    let agent = s
        .spawn_agent(
            &token,
            json!({"id": "box", "isolation": {"level": "container", "memory_mb": 128, "cpu_cores": 0.5}}),
        )
        .await;
    assert_eq!(agent["state"], "running", "{agent}");

    let id = s
        .create(
            &token,
            json!({
                "agent": "box",
                "files": [{"path": "in/data.txt", "content": "from the task\n"}],
                "commands": [
                    "id -u; id -g",
                    "cat in/data.txt; echo \"$FABRIC_TASK_ID $FABRIC_AGENT_ID $FABRIC_WORKSPACE_DIR\"; pwd",
                    "touch /oops 2>/dev/null && echo ROOT-WRITABLE || echo root-read-only",
                    "echo ok > $FABRIC_WORKSPACE_DIR/out && echo workspace-writable",
                    "echo ok > /tmp/t && echo tmp-writable",
                    "grep CapEff /proc/self/status",
                    "grep NoNewPrivs /proc/self/status",
                    "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
                ],
            }),
        )
        .await;
    let view = s.wait_done(&token, &id).await;
    let result = view.result.clone().unwrap();
    assert_eq!(view.status, TaskStatus::Completed, "{result:?}");
    let out = result.stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["65534", "65534"], "{out}");
    assert_eq!(lines[2], "from the task", "{out}");
    assert_eq!(
        lines[3],
        format!("{id} box /workspace/{id}"),
        "task context env: {out}"
    );
    assert_eq!(lines[4], format!("/workspace/{id}"), "{out}");
    for expected in [
        "root-read-only",
        "workspace-writable",
        "tmp-writable",
        "CapEff:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        assert!(lines.contains(&expected), "{expected:?} in {out}");
    }
    assert_eq!(lines.last(), Some(&"lo"), "only loopback: {out}");

    // No way out: neither the host's listener nor anything else.
    let (status, _, stdout, stderr) = run(
        &s,
        &token,
        "box",
        &[&format!(
            "nc -w 2 {gateway} {port} </dev/null && echo CONNECTED || echo refused"
        )],
    )
    .await;
    assert_eq!(status, TaskStatus::Completed, "{stderr}");
    assert_eq!(stdout.trim(), "refused", "{stdout} {stderr}");
    drop(host_listener);

    // Docker agrees.
    let container = agent_container(&guard.owner, "box").expect("the agent's container");
    let inspect: Value = serde_json::from_str(&docker(&["inspect", &container])).unwrap();
    let host = &inspect[0]["HostConfig"];
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["NetworkMode"], "none");
    assert_eq!(host["CapDrop"], json!(["ALL"]));
    assert_eq!(host["SecurityOpt"], json!(["no-new-privileges"]));
    assert_eq!(host["Memory"], 128 << 20);
    assert_eq!(host["MemorySwap"], 128 << 20, "no swap");
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert!(host["PidsLimit"].as_i64().unwrap() > 0);
    assert_eq!(inspect[0]["Config"]["User"], "65534:65534");
    assert_eq!(
        inspect[0]["Config"]["Labels"]["io.reactor-fabric.component"],
        "agent"
    );

    // Real usage numbers in GET /v1/agents.
    let (_, list) = s.get(&token, "/v1/agents").await;
    let boxed = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["config"]["id"] == "box")
        .cloned()
        .unwrap();
    assert!(
        boxed["usage"]["memory_bytes"].as_u64().unwrap() > 0,
        "{boxed}"
    );
    assert!(boxed["usage"]["pids"].as_u64().unwrap() >= 2, "{boxed}");
    assert!(boxed["usage"]["cpu_millis"].as_u64().is_some(), "{boxed}");

    // Terminate drains a running task, then removes everything.
    let slow = s
        .create(
            &token,
            json!({"agent": "box", "commands": ["sleep 1; echo drained"]}),
        )
        .await;
    s.wait_status(&token, &slow, TaskStatus::Running).await;
    let (status, agent) = s.delete(&token, "/v1/agents/box?drain_timeout=30").await;
    assert_eq!(status, 200, "{agent}");
    assert_eq!(agent["state"], "stopped");
    let view = s.wait_done(&token, &slow).await;
    assert_eq!(view.status, TaskStatus::Completed, "drained: {view:?}");
    assert!(owned(&guard.owner).is_empty(), "{:?}", owned(&guard.owner));
    let sockets: Vec<_> = std::fs::read_dir(s.data_dir.join("agents"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("s-"))
        .collect();
    assert!(sockets.is_empty(), "socket directories left: {sockets:?}");
}

/// A memory bomb in a 64 MB container agent is killed by the kernel and
/// reported `oom_killed`; the fabric and the agent carry on.
#[tokio::test]
async fn container_memory_bomb_is_oom_killed_and_the_agent_keeps_working() {
    let (s, _guard) = server().await;
    let token = s.login().await;
    s.spawn_agent(
        &token,
        json!({"id": "small", "isolation": {"level": "container", "memory_mb": 64}}),
    )
    .await;
    let (status, reason, _, stderr) = run(
        &s,
        &token,
        "small",
        &["x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}"],
    )
    .await;
    assert_eq!(status, TaskStatus::Failed, "{stderr}");
    assert_eq!(reason.as_deref(), Some("oom_killed"));
    let (status, _, stdout, _) = run(&s, &token, "small", &["echo still here"]).await;
    assert_eq!(
        (status, stdout.as_str()),
        (TaskStatus::Completed, "still here\n")
    );
    let agent = s
        .wait_agent(&token, "small", |a| a["state"] == "running")
        .await;
    assert_eq!(
        agent["session"], 1,
        "the container itself survived: {agent}"
    );
}

/// Issue #16, items 2 and 3 at isolation `container`: a task past the
/// agent's disk quota fails with `disk_quota_exceeded` and the agent goes on;
/// a finished task's directory is removed, its `/tmp` files are gone for the
/// next task (one task at a time), and a process it left in a session of its
/// own does not survive it.
#[tokio::test]
async fn container_disk_quota_fails_the_task_and_nothing_of_a_task_stays() {
    let (s, _guard) = server().await;
    let token = s.login().await;
    s.spawn_agent(
        &token,
        json!({"id": "tight", "isolation": {"level": "container", "memory_mb": 128, "disk_mb": 20}}),
    )
    .await;
    let (status, _, stdout, stderr) = run(
        &s,
        &token,
        "tight",
        &["setsid sleep 307 </dev/null >/dev/null 2>&1 & echo mark > /tmp/mark; echo kept > out.txt; pwd"],
    )
    .await;
    assert_eq!(status, TaskStatus::Completed, "{stderr}");
    let first_dir = stdout.trim().to_owned();
    let (status, reason, stdout, stderr) = run(
        &s,
        &token,
        "tight",
        &["for i in $(seq 1 200); do head -c 1048576 /dev/zero > f$i || exit 1; sleep 0.02; done; echo wrote-it-all"],
    )
    .await;
    assert_eq!(
        (status, reason.as_deref()),
        (TaskStatus::Failed, Some("disk_quota_exceeded")),
        "{stdout} {stderr}"
    );
    assert!(!stdout.contains("wrote-it-all"));
    let (status, _, stdout, stderr) = run(
        &s,
        &token,
        "tight",
        &[&format!(
            "test -e {first_dir} && echo dir-kept || echo dir-gone; \
             test -e /tmp/mark && echo tmp-kept || echo tmp-gone; \
             ps -o args | grep -c '^sleep 307' || true; \
             du -sk /workspace | cut -f1"
        )],
    )
    .await;
    assert_eq!(status, TaskStatus::Completed, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(&lines[..3], ["dir-gone", "tmp-gone", "0"], "{stdout}");
    let used_kib: u64 = lines[3].parse().unwrap();
    assert!(
        used_kib < 1024,
        "the quota-breaking task's files went too: {stdout}"
    );
}

/// Issue #16, item 11: a container agent's sidecar sockets (its model and
/// egress) are reachable by the fabric and that agent's sidecar only, not by
/// any host process running as `nobody` (the uid the sidecar runs as), even
/// when the data directory had been made world-readable before the server
/// started: the server makes it private, and the sockets lie below it.
#[tokio::test]
async fn sidecar_sockets_are_not_reachable_by_other_host_users() {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = tempfile::tempdir().unwrap();
    let data_dir = parent.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    for dir in [parent.path(), data_dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let binary = reactor_fabric();
    let s = TestServer::start_in(data_dir.clone(), |c| {
        c.containers.proxy_binary = Some(binary)
    })
    .await;
    let _guard = DockerGuard {
        owner: fabric_server::container_owner(&s.data_dir, None),
    };
    let mode = std::fs::metadata(&data_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data directory was made private");
    let token = s.login().await;
    s.spawn_agent(
        &token,
        json!({"id": "sc", "isolation": {"level": "container", "memory_mb": 64}}),
    )
    .await;
    s.wait_agent(&token, "sc", |a| a["state"] == "running")
        .await;
    let sockets: Vec<PathBuf> = std::fs::read_dir(data_dir.join("agents"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("s-"))
        .flat_map(|e| {
            std::fs::read_dir(e.path())
                .unwrap()
                .flatten()
                .map(|f| f.path())
        })
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    assert!(!sockets.is_empty(), "the agent has sidecar sockets");
    let connect = |path: &Path, as_nobody: bool| {
        let script =
            "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])";
        let mut command = if as_nobody {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "/usr/bin/python3",
            ]);
            c
        } else {
            std::process::Command::new("/usr/bin/python3")
        };
        let out = command.args(["-c", script]).arg(path).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for socket in &sockets {
        let (ok, stderr) = connect(socket, true);
        assert!(!ok, "nobody reached {}", socket.display());
        assert!(stderr.contains("PermissionError"), "{stderr}");
    }
    // The sockets are live: the fabric's own user reaches them.
    let inference = sockets
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "inference.sock"))
        .expect("an inference socket");
    assert_eq!(connect(inference, false), (true, String::new()));
    s.stop().await;
}

/// The `ollama` provider the agents' endpoints route to: a mock that takes
/// only the fabric's own key, so a call that works came with that key and
/// not with whatever the agent sent.
pub async fn keyed_ollama_mock() -> fabric_gateway::mock::server::MockServer {
    fabric_gateway::mock::server::MockServer::start_local(
        fabric_gateway::mock::server::MockConfig {
            name: "local".to_owned(),
            api_key: Some(PROVIDER_KEY.to_owned()),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// The fabric's key for the mock provider; no agent may ever see it.
pub const PROVIDER_KEY: &str = "provider-key-4f1c";

/// A gateway config with `mock` as the local `ollama` provider (with the
/// fabric's key) and `timeout` as the per-call deadline.
pub fn gateway_to(
    mock: &fabric_gateway::mock::server::MockServer,
    timeout: Duration,
) -> fabric_gateway::GatewayConfig {
    let mut ollama = fabric_gateway::ProviderConfig::new(
        "ollama",
        fabric_gateway::ProviderKind::Ollama,
        Some(mock.url()),
    );
    ollama.api_key = Some(fabric_gateway::secret::Secret::new(PROVIDER_KEY));
    ollama.timeout = timeout;
    fabric_gateway::GatewayConfig {
        providers: vec![ollama],
        request_timeout: timeout,
        ..fabric_gateway::GatewayConfig::default()
    }
}

/// An MCP server over stdio in a dozen lines of Python's standard library:
/// one tool, `echo`, answering its arguments.
const ECHO_MCP_SERVER: &str = r#"
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m:
        continue
    method = m["method"]
    if method == "initialize":
        r = {"protocolVersion": m["params"]["protocolVersion"], "capabilities": {"tools": {}}, "serverInfo": {"name": "echo", "version": "1"}}
    elif method == "tools/list":
        r = {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}
    else:
        r = {"content": [{"type": "text", "text": "echoed " + json.dumps(m["params"].get("arguments"))}]}
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
"#;

/// Issue #20: a container agent reaches its MCP gateway at `MCP_URL`
/// (`localhost:11434/mcp`, its sidecar), with the tools its `tools[]` grants.
#[tokio::test]
async fn a_container_agent_calls_mcp_tools_through_its_sidecar() {
    let (s, _guard) = server().await;
    let token = s.login().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("echo.py"), ECHO_MCP_SERVER).unwrap();
    let (status, body) = s
        .post(
            &token,
            "/v1/mcp/servers",
            json!({"name": "echo", "isolation": "none",
                   "command": format!("/usr/bin/python3 {}/echo.py", dir.path().display()),
                   "read_only_paths": [dir.path().display().to_string()]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    s.spawn_agent(
        &token,
        json!({"id": "tooled", "isolation": {"level": "container"}, "tools": ["echo/*"]}),
    )
    .await;
    let post = |body: &str| {
        format!(
            "wget -Y off -q -O- --header 'Content-Type: application/json' --post-data '{body}' $MCP_URL"
        )
    };
    let (status, _, stdout, stderr) = run(
        &s,
        &token,
        "tooled",
        &[
            "echo $MCP_URL",
            &post(r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}"#),
            "echo",
            &post(
                r#"{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo__echo", "arguments": {"n": 7}}}"#,
            ),
        ],
    )
    .await;
    assert_eq!(status, TaskStatus::Completed, "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("http://localhost:11434/mcp\n"),
        "{stdout}"
    );
    assert!(stdout.contains(r#""name":"echo__echo""#), "{stdout}");
    assert!(stdout.contains(r#"echoed {\"n\": 7}"#), "{stdout}");
}

/// REQUIREMENTS §6: inside the container, `localhost:11434` is the sidecar, which
/// reaches the gateway's Ollama API through the fabric: the call is routed to
/// the provider with the fabric's key (the agent's Authorization goes
/// nowhere), an 11 MiB body gets 413 and never leaves, a provider slower than
/// the deadline 504; the sidecar is labelled and shares the agent's network
/// namespace.
#[tokio::test]
async fn sidecar_serves_inference_inside_the_container() {
    let mock = keyed_ollama_mock().await;
    let gateway = gateway_to(&mock, Duration::from_secs(2));
    let (s, guard) = server_with(move |c| c.gateway = gateway).await;
    let token = s.login().await;
    s.spawn_agent(
        &token,
        json!({"id": "llm", "isolation": {"level": "container"}}),
    )
    .await;
    // busybox wget ignores NO_PROXY: -Y off keeps it off the egress proxy.
    let (status, _, stdout, stderr) = run(
        &s,
        &token,
        "llm",
        &[
            "echo $OLLAMA_BASE_URL",
            "wget -Y off -q -O- --header 'Authorization: Bearer agent-secret' $OLLAMA_BASE_URL/api/tags",
        ],
    )
    .await;
    assert_eq!(status, TaskStatus::Completed, "{stderr}");
    assert!(stdout.starts_with("http://localhost:11434\n"), "{stdout}");
    assert!(
        stdout.contains("mock-small"),
        "the provider's models: {stdout}"
    );
    assert!(!stdout.contains(PROVIDER_KEY), "{stdout}");
    assert_eq!(mock.control().requests_by_path().get("/api/tags"), Some(&1));

    let (_, _, stdout, stderr) = run(
        &s,
        &token,
        "llm",
        // busybox wget posts the file as a C string: no NUL bytes in it.
        &["head -c 11534336 /dev/zero | tr '\\0' a > /tmp/big; wget -Y off -S -O /dev/null --post-file /tmp/big $OLLAMA_BASE_URL/api/chat 2>&1; rm /tmp/big; true"],
    )
    .await;
    assert!(stdout.contains("413"), "{stdout} {stderr}");
    assert_eq!(
        mock.control().requests_by_path().get("/api/chat"),
        None,
        "the big request never left"
    );

    let hang = r#"{"model":"llama3","stream":false,"messages":[{"role":"user","content":"[[mock:hang]]"}]}"#;
    let (_, _, stdout, stderr) = run(
        &s,
        &token,
        "llm",
        &[&format!(
            "wget -Y off -S -O /dev/null --post-data '{hang}' $OLLAMA_BASE_URL/api/chat 2>&1; true"
        )],
    )
    .await;
    assert!(stdout.contains("504"), "{stdout} {stderr}");

    let filter = format!("label=io.reactor-fabric.owner={}", guard.owner);
    let sidecars = docker(&[
        "ps",
        "-q",
        "--filter",
        &filter,
        "--filter",
        "label=io.reactor-fabric.component=sidecar",
    ]);
    let sidecar = sidecars.lines().next().expect("a sidecar");
    let inspect: Value = serde_json::from_str(&docker(&["inspect", sidecar])).unwrap();
    let agent = agent_container(&guard.owner, "llm").unwrap();
    let mode = inspect[0]["HostConfig"]["NetworkMode"].as_str().unwrap();
    let agent_inspect: Value = serde_json::from_str(&docker(&["inspect", &agent])).unwrap();
    assert_eq!(
        mode,
        format!("container:{}", agent_inspect[0]["Id"].as_str().unwrap()),
    );
    assert_eq!(inspect[0]["HostConfig"]["ReadonlyRootfs"], true);
    assert_eq!(inspect[0]["Config"]["User"], "65534:65534");
}

/// FR-LIFE-3: an agent container killed from outside is noticed, its task
/// requeued with the crash as the reason, everything of it removed, and the
/// agent restarted in a new container.
#[tokio::test]
async fn killed_agent_container_is_cleaned_up_and_restarted() {
    let (s, guard) = server().await;
    let token = s.login().await;
    s.spawn_agent(
        &token,
        json!({"id": "victim", "isolation": {"level": "container"}}),
    )
    .await;
    let first = agent_container(&guard.owner, "victim").unwrap();
    let task = s
        .create(
            &token,
            json!({"agent": "victim", "commands": ["sleep 1000"]}),
        )
        .await;
    // Killed while the command runs (a kill before the exec starts is covered
    // too, by the same path: the exec finds no running container).
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if docker(&["top", &first]).contains("sleep 1000") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    docker(&["kill", &first]);
    let agent = s
        .wait_agent(&token, "victim", |a| {
            a["session"] == 2 && a["state"] == "running"
        })
        .await;
    assert_eq!(agent["last_exit"], "crashed (signal 9)", "{agent}");
    let (_, sessions) = s.get(&token, "/v1/agents/victim/sessions").await;
    let first_session = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["session"] == 1)
        .cloned()
        .unwrap();
    assert_eq!(first_session["exit_reason"], "crashed (signal 9)");
    let gone = docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("id={first}"),
    ]);
    assert!(gone.trim().is_empty(), "the killed container was removed");
    let second = agent_container(&guard.owner, "victim").unwrap();
    assert_ne!(first, second);
    // The task went back to the queue (not failed by the dying command) and
    // runs again, in the new container.
    let mut body = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        body = s.get(&token, &format!("/v1/tasks/{task}")).await.1;
        if body["attempt"] == 2 && body["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        (&body["attempt"], &body["status"]),
        (&json!(2), &json!("running")),
        "{body}"
    );
    let (status, _) = s
        .post(&token, &format!("/v1/tasks/{task}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    let filter = format!("label=io.reactor-fabric.owner={}", guard.owner);
    let containers = docker(&["ps", "-aq", "--filter", &filter]);
    assert_eq!(
        containers.lines().count(),
        2,
        "one agent container, one sidecar: {containers}"
    );
}

/// FR-LIFE-6: with `pool.min_idle`, a container (and sidecar) is pre-started,
/// the next spawn takes it (its limits set then), and the pool refills.
#[tokio::test]
async fn warm_pool_spawn_takes_a_pre_created_container() {
    let (s, guard) = server().await;
    let token = s.login().await;
    s.spawn_agent(
        &token,
        json!({"id": "holder", "isolation": {"level": "container"}, "pool": {"min_idle": 1}}),
    )
    .await;
    let pooled = || -> Vec<String> {
        docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=io.reactor-fabric.owner={}", guard.owner),
            "--filter",
            "label=io.reactor-fabric.component=agent",
            "--filter",
            "name=reactor-fabric-pool-",
        ])
        .lines()
        .map(str::to_owned)
        .collect()
    };
    let mut idle = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        idle = pooled();
        if !idle.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(idle.len(), 1, "one idle container");
    s.wait_pool_idle("container", 1).await;
    let pid = |id: &str| -> u64 {
        docker(&["inspect", "--format", "{{.State.Pid}}", id])
            .trim()
            .parse()
            .unwrap()
    };
    let idle_pid = pid(&idle[0]);
    // How fast this is belongs to `fabric-bench agents` (BENCHMARKS.md);
    // here, that the spawn took the pooled container.
    let agent = s
        .spawn_agent(
            &token,
            json!({"id": "warm", "isolation": {"level": "container", "memory_mb": 96}}),
        )
        .await;
    assert_eq!(
        agent["pid"].as_u64(),
        Some(idle_pid),
        "took the pooled container: {agent}"
    );
    let memory = docker(&["inspect", "--format", "{{.HostConfig.Memory}}", &idle[0]]);
    assert_eq!(
        memory.trim(),
        (96u64 << 20).to_string(),
        "limits set on take"
    );
    let (status, _, stdout, _) = run(&s, &token, "warm", &["echo warm"]).await;
    assert_eq!((status, stdout.as_str()), (TaskStatus::Completed, "warm\n"));
    // Refilled: a new idle one (not the taken one).
    let mut refilled = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        refilled = pooled().into_iter().filter(|id| *id != idle[0]).collect();
        if !refilled.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refilled.len(), 1, "the pool refilled");
}

/// An agent with its own program in a container reaches the fabric's API at
/// its `FABRIC_URL` through the sidecar (heartbeat with its token) and gets
/// the protocol's environment; its exit is the container's.
#[tokio::test]
async fn container_program_reaches_the_api_through_its_sidecar() {
    let (s, _guard) = server().await;
    let token = s.login().await;
    // The sidecar starts a moment after the program: retry, as the SDK and the Python agent do.
    let script = "until wget -Y off -q -O- --header \"Authorization: Bearer $FABRIC_TOKEN\" \
        --post-data '' $FABRIC_URL/v1/agent/heartbeat; do sleep 0.1; done; sleep 1000";
    let agent = s
        .spawn_agent(
            &token,
            json!({"id": "prog", "isolation": {"level": "container"}, "command": script, "restart": "never"}),
        )
        .await;
    // Its first heartbeat may beat the spawn's answer (the container start is slow).
    assert!(
        agent["state"] == "starting" || agent["state"] == "running",
        "{agent}"
    );
    let agent = s
        .wait_agent(&token, "prog", |a| a["state"] == "running")
        .await;
    assert_eq!(agent["health"], "healthy", "{agent}");
    assert!(agent["last_heartbeat"].is_string(), "{agent}");
    let (status, agent) = s.delete(&token, "/v1/agents/prog?drain_timeout=0").await;
    assert_eq!(
        (status, agent["state"].as_str()),
        (200, Some("stopped")),
        "{agent}"
    );
}

/// Docker unreachable: spawning a container agent is a clear 503 with the
/// sentence of REQUIREMENTS §3, never a panic; other levels keep working.
#[tokio::test]
async fn docker_unreachable_is_a_clear_error_and_other_levels_work() {
    let (s, _guard) = server_with(|c| {
        c.containers.docker_host = Some("unix:///nonexistent/reactor-fabric-it.sock".into());
    })
    .await;
    let token = s.login().await;
    let (status, body) = s
        .post(
            &token,
            "/v1/agents",
            json!({"id": "nodocker", "isolation": {"level": "container"}}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (503, "docker_unavailable"),
        "{body}"
    );
    assert_eq!(
        body["error"]["message"],
        "Cannot connect to the Docker daemon. Is it running?"
    );
    let (status, _) = s.get(&token, "/v1/agents/nodocker").await;
    assert_eq!(status, 404, "nothing was stored");
    s.spawn_agent(
        &token,
        json!({"id": "plain", "isolation": {"level": "none"}}),
    )
    .await;
    let (status, _, stdout, _) = run(&s, &token, "plain", &["echo fine"]).await;
    assert_eq!((status, stdout.as_str()), (TaskStatus::Completed, "fine\n"));
}
