//! Docker instances (REQUIREMENTS §3, FR-INST) against the real dockerd: `start`, `list`,
//! `down`, their errors and exit codes, and the orchestrator's API through the
//! printed URL. Every test uses its own instance name and removes it even when it
//! fails ([`Instance`] runs `down` on drop), so tests run in parallel.
//!
//! The Redis image is built from this machine's `redis-server` with
//! `reactor-fabric image build-redis` (no registry is assumed; scripts/test
//! installs redis-server and starts dockerd).

use std::collections::HashMap;
use std::process::Output;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

use crate::bare_cli;

const NO_DAEMON: &str = "Error: Cannot connect to the Docker daemon. Is it running?\n";

/// A unique instance name per test and process.
fn unique_name(test: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "it-{test}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `docker ARGS`, its stdout as text; the test fails when docker does.
fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Ids of every container, network and volume labelled with `name`.
fn labelled(name: &str) -> Vec<String> {
    let filter = format!("label=io.reactor-fabric.instance={name}");
    let mut all = Vec::new();
    for kind in [
        &["ps", "-a", "-q", "--filter"][..],
        &["network", "ls", "-q", "--filter"][..],
        &["volume", "ls", "-q", "--filter"][..],
    ] {
        let mut args = kind.to_vec();
        args.push(&filter);
        all.extend(docker(&args).lines().map(str::to_owned));
    }
    all
}

/// The local Redis image, built once per test process (the command is idempotent across processes).
fn redis_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = TempDir::new().unwrap();
        let out = bare_cli(&dir.path().join("c.toml"))
            .args(["image", "build-redis"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "image build-redis failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_owned()
    })
}

/// One instance name; `down` on drop, whatever happened.
struct Instance {
    name: String,
    dir: TempDir,
}

impl Instance {
    fn new(test: &str) -> Instance {
        Instance {
            name: unique_name(test),
            dir: TempDir::new().unwrap(),
        }
    }

    /// The CLI with the local Redis image and no inherited Docker or fabric settings.
    fn cli(&self) -> Command {
        let mut cmd = bare_cli(&self.dir.path().join("cli-config.toml"));
        cmd.env("FABRIC_REDIS_IMAGE", redis_image())
            .env_remove("FABRIC_ORCHESTRATOR_IMAGE")
            .env_remove("DOCKER_HOST");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cli().args(args).output().unwrap()
    }

    /// `start --name NAME ARGS`; returns (url, password) from its output.
    fn start(&self, args: &[&str]) -> (String, String) {
        let out = self.run(&[&["start", "--name", &self.name][..], args].concat());
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "start failed ({:?}):\n{stdout}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .map(|v| v.split_whitespace().next().unwrap_or_default().to_owned())
                .unwrap_or_else(|| panic!("no {key} in {stdout}"))
        };
        (field("url:"), field("password:"))
    }

    fn list_json(&self) -> Vec<Value> {
        let out = self.run(&["list", "-o", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn mine<'a>(&self, list: &'a [Value]) -> Option<&'a Value> {
        list.iter().find(|i| i["name"] == self.name.as_str())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.run(&["down", "--name", &self.name]);
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn start_list_down_lifecycle_leaves_nothing_behind() {
    let inst = Instance::new("life");
    let name = inst.name.clone();
    let (url, password) = inst.start(&[]);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    // Names, labels and network as REQUIREMENTS §3 says.
    let network = format!("reactor-fabric-{name}");
    for component in ["orchestrator", "redis"] {
        let container = format!("reactor-fabric-{name}-{component}");
        let inspect: Value = serde_json::from_str(&docker(&["inspect", &container])).unwrap();
        let c = &inspect[0];
        assert_eq!(c["Name"], format!("/{container}"));
        assert_eq!(c["State"]["Running"], true, "{container}");
        let labels = &c["Config"]["Labels"];
        assert_eq!(labels["io.reactor-fabric.instance"], name.as_str());
        assert_eq!(labels["io.reactor-fabric.component"], component);
        assert!(
            c["NetworkSettings"]["Networks"].get(&network).is_some(),
            "{container} is not on {network}: {}",
            c["NetworkSettings"]["Networks"]
        );
        // The admin password is in no container's config or environment.
        assert!(
            !c.to_string().contains(&password),
            "{container} leaks the password"
        );
    }
    // The instance's Redis wants a password (NFR-SEC-1), which only the
    // orchestrator's secret file holds: in no container's config or env.
    let redis = format!("reactor-fabric-{name}-redis");
    let refused = std::process::Command::new("docker")
        .args(["exec", &redis, "redis-cli", "ping"])
        .output()
        .unwrap();
    assert!(
        stdout(&refused).contains("NOAUTH") || stderr(&refused).contains("NOAUTH"),
        "redis-cli without the password: {} {}",
        stdout(&refused),
        stderr(&refused)
    );
    // The orchestrator's image holds this binary alone (no `cat`): copy it out.
    let copied = tempfile::tempdir().unwrap();
    docker(&[
        "cp",
        &format!("reactor-fabric-{name}-orchestrator:/run/fabric/redis-password"),
        copied.path().to_str().unwrap(),
    ]);
    let store_password = std::fs::read_to_string(copied.path().join("redis-password")).unwrap();
    let store_password = store_password.trim();
    assert!(store_password.len() >= 20, "{store_password:?}");
    for component in ["orchestrator", "redis"] {
        let inspect = docker(&["inspect", &format!("reactor-fabric-{name}-{component}")]);
        assert!(
            !inspect.contains(store_password),
            "{component} shows the Redis password"
        );
    }
    let auth = format!("REDISCLI_AUTH={store_password}");
    assert_eq!(
        docker(&["exec", "-e", &auth, &redis, "redis-cli", "ping"]).trim(),
        "PONG"
    );

    let net: Value = serde_json::from_str(&docker(&["network", "inspect", &network])).unwrap();
    assert_eq!(
        net[0]["Labels"]["io.reactor-fabric.instance"],
        name.as_str()
    );
    let volumes = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=io.reactor-fabric.instance={name}"),
    ]);
    // Orchestrator data, Redis data, and the sockets shared with agent sidecars.
    assert_eq!(volumes.lines().count(), 3, "{volumes}");

    // list: human and JSON.
    let out = inst.run(&["list"]);
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in:\n{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cols[1..3], ["running", "2"], "{line}");
    assert!(
        cols[3].ends_with('%') && line.contains("MiB") && line.ends_with(&url),
        "{line}"
    );
    let list = inst.list_json();
    let me = inst.mine(&list).unwrap();
    assert_eq!(me["status"], "running");
    assert_eq!(me["url"], url.as_str());
    assert_eq!(me["containers"].as_array().unwrap().len(), 2);
    assert!(me["memory_bytes"].as_u64().unwrap() > 0, "{me}");
    assert!(me["cpu_percent"].as_f64().is_some(), "{me}");
    assert!(!text.contains(&password) && !me.to_string().contains(&password));
    let logs = std::process::Command::new("docker")
        .args(["logs", &format!("reactor-fabric-{name}-orchestrator")])
        .output()
        .unwrap();
    assert!(!stdout(&logs).contains(&password) && !stderr(&logs).contains(&password));

    // down: everything labelled with the instance is gone.
    let out = inst.run(&["down", "--name", &name]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "removed instance \"{name}\": 2 containers, 1 network, 3 volumes"
        )),
        "{}",
        stdout(&out)
    );
    assert_eq!(labelled(&name), Vec::<String>::new());
    assert!(inst.mine(&inst.list_json()).is_none());
}

#[test]
fn the_api_answers_through_the_printed_url() {
    let inst = Instance::new("api");
    let (url, password) = inst.start(&[]);
    let cli = |args: &[&str]| {
        let mut cmd = inst.cli();
        cmd.env("FABRIC_URL", &url).args(args);
        cmd.output().unwrap()
    };
    let out = cli(&["status"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ok "), "{}", stdout(&out));
    let out = cli(&[
        "auth",
        "login",
        "--username",
        "admin",
        "--password",
        &password,
    ]);
    assert_eq!(
        code(&out),
        0,
        "login with the shown password: {}",
        stderr(&out)
    );
    let out = cli(&[
        "task",
        "create",
        "--command",
        "echo hello from the container",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out).lines().last().unwrap().trim().to_owned();
    let out = cli(&["task", "result", &id, "--wait", "--timeout", "60s"]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}\n{}", stderr(&out));
    assert!(text.contains("status=completed"), "{text}");
    assert!(text.contains("hello from the container"), "{text}");

    // The instance's orchestrator serves the dashboard too, and signs a browser in.
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-i"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let page = curl(&[&format!("{url}/tasks")]);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("/ui/app.js"), "{page}");
    let session = curl(&[
        "-H",
        "Content-Type: application/json",
        "-d",
        &format!(r#"{{"username":"admin","password":"{password}"}}"#),
        &format!("{url}/v1/auth/session"),
    ]);
    assert!(
        session
            .to_ascii_lowercase()
            .contains("set-cookie: fabric_session=")
            && session.contains("csrf_token"),
        "{session}"
    );
}

/// REQUIREMENTS §2.2: the instance's orchestrator runs container agents (through the
/// Docker socket it is given), labelled with the instance, each with its
/// sidecar; `list` shows them and `down` removes them with the rest.
#[test]
fn container_agents_run_inside_an_instance_and_go_with_down() {
    let inst = Instance::new("agents");
    let name = inst.name.clone();
    let (url, password) = inst.start(&[]);
    let cli = |args: &[&str]| {
        let mut cmd = inst.cli();
        cmd.env("FABRIC_URL", &url).args(args);
        cmd.output().unwrap()
    };
    let out = cli(&[
        "auth",
        "login",
        "--username",
        "admin",
        "--password",
        &password,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = cli(&["agent", "spawn", "--id", "box", "--isolation", "container"]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let out = cli(&[
        "task",
        "create",
        "--agent",
        "box",
        "--command",
        "id -u; echo $OLLAMA_BASE_URL",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out).lines().last().unwrap().trim().to_owned();
    let out = cli(&["task", "result", &id, "--wait", "--timeout", "60s"]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}\n{}", stderr(&out));
    assert!(text.contains("\n65534\nhttp://localhost:11434\n"), "{text}");
    // The orchestrator cannot see the container's cgroup: usage comes from the daemon.
    let mut memory = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let out = cli(&["-o", "json", "agent", "get", "box"]);
        let agent: Value = serde_json::from_slice(&out.stdout).unwrap();
        memory = agent["agent"]["usage"]["memory_bytes"]
            .as_u64()
            .or_else(|| agent["usage"]["memory_bytes"].as_u64())
            .unwrap_or(0);
        if memory > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(memory > 0, "usage of a container agent inside an instance");

    let me = inst.mine(&inst.list_json()).cloned().unwrap();
    let mut components: Vec<String> = me["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["component"].as_str().unwrap().to_owned())
        .collect();
    components.sort();
    assert_eq!(
        components,
        ["agent", "orchestrator", "redis", "sidecar"],
        "{me}"
    );
    assert_eq!(me["status"], "running");

    let out = inst.run(&["down", "--name", &name]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(": 4 containers, 1 network,"),
        "{}",
        stdout(&out)
    );
    assert_eq!(labelled(&name), Vec::<String>::new());
}

/// `start --nodes 1` (issue #21): a worker-node container holds the Docker
/// socket, the orchestrator none; container agents are placed on the node
/// and run there; `list` and `down` include it.
#[test]
fn worker_node_containers_hold_the_socket_and_run_container_agents() {
    let inst = Instance::new("nodes");
    let name = inst.name.clone();
    let (url, password) = inst.start(&["--nodes", "1"]);
    let cli = |args: &[&str]| {
        let mut cmd = inst.cli();
        cmd.env("FABRIC_URL", &url).args(args);
        cmd.output().unwrap()
    };
    let out = cli(&[
        "auth",
        "login",
        "--username",
        "admin",
        "--password",
        &password,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = cli(&["-o", "json", "node", "list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let node = &list["nodes"][0];
    assert_eq!(node["name"], "node-1", "{list:#}");
    assert_eq!(node["status"], "ready", "{list:#}");
    assert_eq!(
        node["capabilities"]["isolation"],
        serde_json::json!(["container"]),
        "{list:#}"
    );

    // No selector needed: the orchestrator has no Docker, the node has.
    let out = cli(&[
        "-o",
        "json",
        "agent",
        "spawn",
        "--id",
        "box",
        "--isolation",
        "container",
    ]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let agent: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(agent["node"], "node-1", "{agent:#}");
    let out = cli(&[
        "task",
        "create",
        "--agent",
        "box",
        "--command",
        "id -u; echo $FABRIC_NODE",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out).lines().last().unwrap().trim().to_owned();
    let out = cli(&["task", "result", &id, "--wait", "--timeout", "90s"]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}\n{}", stderr(&out));
    assert!(text.contains("\n65534\nnode-1\n"), "{text}");

    let mounts = |container: &str| docker(&["inspect", "--format", "{{json .Mounts}}", container]);
    let orchestrator = format!("reactor-fabric-{name}-orchestrator");
    let node_container = format!("reactor-fabric-{name}-node-1");
    assert!(
        !mounts(&orchestrator).contains("docker.sock"),
        "{}",
        mounts(&orchestrator)
    );
    assert!(
        mounts(&node_container).contains("docker.sock"),
        "{}",
        mounts(&node_container)
    );

    let me = inst.mine(&inst.list_json()).cloned().unwrap();
    let mut components: Vec<String> = me["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["component"].as_str().unwrap().to_owned())
        .collect();
    components.sort();
    assert_eq!(
        components,
        ["agent", "node", "orchestrator", "redis", "sidecar"],
        "{me}"
    );
    let out = inst.run(&["down", "--name", &name]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(labelled(&name), Vec::<String>::new());
}

#[test]
fn a_second_start_of_one_name_is_a_conflict() {
    let inst = Instance::new("dup");
    inst.start(&[]);
    let out = inst.run(&["start", "--name", &inst.name]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "Error: instance \"{0}\" already exists: pick another name, or remove it first with 'reactor-fabric down --name {0}'\n",
            inst.name
        )
    );
    // The first one is untouched.
    let list = inst.list_json();
    assert_eq!(inst.mine(&list).unwrap()["status"], "running");
}

#[test]
fn down_of_a_missing_instance_succeeds_and_says_so() {
    let inst = Instance::new("none");
    let out = inst.run(&["down", "--name", &inst.name]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("no instance \"{}\", nothing to do\n", inst.name)
    );
    let out = inst.run(&["down", "--name", &inst.name, "-o", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["existed"], false);
}

#[test]
fn no_docker_daemon_exits_6_with_the_spec_message() {
    let dir = TempDir::new().unwrap();
    // A socket nobody listens on any more (connection refused), and no socket at all.
    let dead = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let missing = dir.path().join("missing.sock");
    for socket in [&dead, &missing] {
        let host = format!("unix://{}", socket.display());
        for args in [
            &["start", "--name", "x"][..],
            &["list"][..],
            &["list", "-o", "json"][..],
            &["down", "--name", "x"][..],
            &["image", "build-orchestrator"][..],
        ] {
            let out = bare_cli(&dir.path().join("c.toml"))
                .env("DOCKER_HOST", &host)
                .args(args)
                .output()
                .unwrap();
            assert_eq!(code(&out), 6, "{args:?} with {host}: {}", stderr(&out));
            assert_eq!(stderr(&out), NO_DAEMON, "{args:?} with {host}");
            assert_eq!(stdout(&out), "", "{args:?}");
        }
    }
}

#[test]
fn config_files_must_exist_and_be_valid() {
    let inst = Instance::new("cfg");
    let missing = inst.dir.path().join("nope.yml");
    let out = inst.run(&[
        "start",
        "--name",
        &inst.name,
        "--config",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "Error: config file {} does not exist: check the path given to --config\n",
            missing.display()
        )
    );
    let bad = inst.dir.path().join("bad.yml");
    std::fs::write(&bad, "orchestrator:\n  prot: 8080\n").unwrap();
    let out = inst.run(&[
        "start",
        "--name",
        &inst.name,
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown field `prot`"),
        "{}",
        stderr(&out)
    );
    let invalid = inst.dir.path().join("invalid.yml");
    std::fs::write(&invalid, "redis:\n  cpu_cores: -1\n").unwrap();
    let out = inst.run(&[
        "start",
        "--name",
        &inst.name,
        "--config",
        invalid.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("redis.cpu_cores"), "{}", stderr(&out));
    // `--config -` reads standard input (issue #17), checked the same way.
    let out = inst
        .cli()
        .args(["start", "--name", &inst.name, "--config", "-"])
        .write_stdin("orchestrator:\n  prot: 8080\n")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("<stdin>") && stderr(&out).contains("unknown field `prot`"),
        "{}",
        stderr(&out)
    );
    let out = inst.run(&["start", "--name", "bad/name"]);
    assert_eq!(code(&out), 2);
    assert_eq!(labelled(&inst.name), Vec::<String>::new());
}

#[test]
fn a_config_file_sets_port_and_limits() {
    let inst = Instance::new("limits");
    let port = crate::free_port();
    let config = inst.dir.path().join("fabric.yml");
    std::fs::write(
        &config,
        format!(
            "images:\n  redis: {}\norchestrator:\n  port: {port}\n  memory_mb: 256\n  cpu_cores: 0.5\nredis:\n  memory_mb: 64\n",
            redis_image()
        ),
    )
    .unwrap();
    let mut cmd = inst.cli();
    cmd.env_remove("FABRIC_REDIS_IMAGE");
    let out = cmd
        .args([
            "start",
            "--name",
            &inst.name,
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("url:      http://127.0.0.1:{port}\n")));
    let host = |component: &str| -> Value {
        let c: Value = serde_json::from_str(&docker(&[
            "inspect",
            &format!("reactor-fabric-{}-{component}", inst.name),
        ]))
        .unwrap();
        c[0]["HostConfig"].clone()
    };
    let orchestrator = host("orchestrator");
    assert_eq!(orchestrator["Memory"], 256 << 20);
    assert_eq!(orchestrator["NanoCpus"], 500_000_000);
    assert_eq!(host("redis")["Memory"], 64 << 20);
}

#[test]
fn concurrent_starts_of_one_name_have_exactly_one_winner() {
    let inst = Instance::new("race");
    // Build the images first, so the race is about the instance, not the builds.
    redis_image();
    let out = inst.run(&["image", "build-orchestrator"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let mut cmd =
                std::process::Command::new(assert_cmd::cargo::cargo_bin("reactor-fabric"));
            cmd.args(["start", "--name", &inst.name])
                .env("FABRIC_REDIS_IMAGE", redis_image())
                .env_remove("DOCKER_HOST")
                .env_remove("FABRIC_ADMIN_PASSWORD")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let outs: Vec<Output> = starts
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let codes: Vec<i32> = outs.iter().map(code).collect();
    assert_eq!(
        codes.iter().filter(|c| **c == 0).count(),
        1,
        "{codes:?}: {:?}",
        outs.iter().map(stderr).collect::<Vec<_>>()
    );
    assert_eq!(
        codes.iter().filter(|c| **c == 5).count(),
        3,
        "{codes:?}: {:?}",
        outs.iter().map(stderr).collect::<Vec<_>>()
    );
    for out in outs.iter().filter(|o| code(o) == 5) {
        assert!(stderr(out).contains("already exists"), "{}", stderr(out));
    }
    // The losers removed what they made, and only that.
    let networks = docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("label=io.reactor-fabric.instance={}", inst.name),
    ]);
    assert_eq!(networks.lines().count(), 1, "{networks}");
    let list = inst.list_json();
    let me = inst.mine(&list).unwrap();
    assert_eq!(me["status"], "running");
    assert_eq!(me["containers"].as_array().unwrap().len(), 2);
}

#[test]
fn a_failed_start_cleans_up_and_shows_the_logs() {
    let inst = Instance::new("fail");
    // A Redis "image" whose process exits at once: the orchestrator image runs
    // `reactor-fabric redis-server …`, which is no subcommand.
    let out = inst.run(&["image", "build-orchestrator"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let orchestrator = stdout(&out).lines().last().unwrap().trim().to_owned();
    let mut cmd = inst.cli();
    cmd.env("FABRIC_REDIS_IMAGE", &orchestrator);
    let out = cmd.args(["start", "--name", &inst.name]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "Error: the redis of instance \"{}\" stopped (exit code 2",
            inst.name
        )),
        "{err}"
    );
    assert!(err.contains("it was removed again"), "{err}");
    assert!(
        err.contains(&format!(
            "--- last 30 log lines of reactor-fabric-{}-redis ---",
            inst.name
        )),
        "{err}"
    );
    assert!(err.contains("unrecognized subcommand"), "{err}");
    assert_eq!(labelled(&inst.name), Vec::<String>::new());
}

#[test]
fn a_missing_redis_image_says_how_to_provide_one() {
    let inst = Instance::new("noimg");
    let mut cmd = inst.cli();
    cmd.env("FABRIC_REDIS_IMAGE", "reactor-fabric-it/no-such-redis:0");
    let out = cmd.args(["start", "--name", &inst.name]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.starts_with(
            "Error: image reactor-fabric-it/no-such-redis:0 is missing and cannot be pulled ("
        ),
        "{err}"
    );
    for hint in [
        "docker load",
        "reactor-fabric image build-redis",
        "images.redis",
    ] {
        assert!(err.contains(hint), "{hint} not in {err}");
    }
    assert_eq!(labelled(&inst.name), Vec::<String>::new());
}

/// With the default Redis image neither here nor pullable (no registry), a
/// Redis image built on this machine (`image build-redis`) stands in, and
/// `start` says so: the hint of the error above really works.
#[test]
fn the_default_redis_image_falls_back_to_a_local_build() {
    let local = redis_image();
    let inst = Instance::new("fallback");
    let mut cmd = inst.cli();
    cmd.env_remove("FABRIC_REDIS_IMAGE");
    let out = cmd.args(["start", "--name", &inst.name]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let default_here = std::process::Command::new("docker")
        .args(["image", "inspect", "redis:7-alpine"])
        .output()
        .unwrap()
        .status
        .success();
    if !default_here {
        assert!(
            stderr(&out).contains(&format!(
                "note: redis:7-alpine is not available here; using the local Redis image {local}"
            )),
            "{}",
            stderr(&out)
        );
        let image = docker(&[
            "inspect",
            "-f",
            "{{.Config.Image}}",
            &format!("reactor-fabric-{}-redis", inst.name),
        ]);
        assert_eq!(image.trim(), local);
    }
}

/// `list` shows every container labelled with the instance (agents too) and what
/// is left of a broken instance; `down` removes all of it, the agent included.
#[test]
fn list_shows_agents_and_stopped_parts_and_down_removes_all() {
    let inst = Instance::new("parts");
    inst.start(&[]);
    let name = &inst.name;
    // An agent container as the container runtime will start them: labelled, on the network.
    let agent = format!("reactor-fabric-{name}-agent-a1");
    docker(&[
        "run",
        "-d",
        "--name",
        &agent,
        "--label",
        &format!("io.reactor-fabric.instance={name}"),
        "--label",
        "io.reactor-fabric.component=agent",
        "--network",
        &format!("reactor-fabric-{name}"),
        redis_image(),
        "redis-server",
        "--port",
        "7000",
    ]);
    docker(&["stop", "-t", "0", &format!("reactor-fabric-{name}-redis")]);
    let list = inst.list_json();
    let me = inst.mine(&list).unwrap();
    assert_eq!(me["status"], "degraded", "{me}");
    let states: HashMap<String, String> = me["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["component"].as_str().unwrap().to_owned(),
                c["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(states["redis"], "exited");
    assert_eq!(states["orchestrator"], "running");
    assert_eq!(states["agent"], "running");
    let text = stdout(&inst.run(&["list"]));
    // Column widths depend on the other instances listed (tests run in parallel).
    assert!(
        text.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.starts_with(&[name.as_str(), "degraded", "2/3", "running"])
        }),
        "{text}"
    );
    let out = inst.run(&["down", "--name", name]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(": 3 containers, 1 network, 3 volumes"),
        "{}",
        stdout(&out)
    );
    assert_eq!(labelled(name), Vec::<String>::new());
}
