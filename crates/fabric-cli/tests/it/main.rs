//! The real `reactor-fabric` binary against a real `reactor-fabric serve` (REQUIREMENTS §10, §11).
//!
//! Every test that needs a server starts its own on a free port with its own data
//! dir and config file, so tests run in parallel and never see each other's state.

// A panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod access;
mod agents;
mod bdd;
mod containers;
mod crash;
mod dashboard;
mod gateway;
mod instances;
mod mcp;
mod node_dispatch;
mod node_netns;
mod nodes;
mod openapi;
mod policy;
mod readme;
mod telemetry;

use assert_cmd::Command;
use fabric_core::TaskId;
use fabric_core::api::TaskList;
use tempfile::TempDir;

const ADMIN_PASSWORD: &str = "it-admin-password";
/// How long one CLI invocation may take before the test calls it hung.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fresh server may take to answer `/readyz` with 200.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    // Bind, read the port, drop: a tiny race with other processes, acceptable in tests.
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The CLI with a clean environment: no inherited fabric settings leak into a test.
fn bare_cli(config: &Path) -> Command {
    let mut cmd = Command::cargo_bin("reactor-fabric").unwrap();
    for key in [
        "FABRIC_URL",
        "FABRIC_TOKEN",
        "FABRIC_LISTEN",
        "FABRIC_DATA_DIR",
        "FABRIC_ADMIN_PASSWORD",
    ] {
        cmd.env_remove(key);
    }
    cmd.env("FABRIC_CONFIG", config).timeout(CLI_TIMEOUT);
    cmd
}

/// A `reactor-fabric serve` child process; killed on drop (its log is printed if the test failed).
struct Fabric {
    child: Child,
    url: String,
    dir: TempDir,
}

impl Fabric {
    fn start() -> Fabric {
        Fabric::start_with_env(&[])
    }

    /// A server with extra environment (`DOCKER_HOST`, say).
    fn start_with_env(env: &[(&str, &str)]) -> Fabric {
        Fabric::start_on(Ipv4Addr::LOCALHOST, env)
    }

    /// A server listening on `ip` (an address of this host: loopback, or
    /// a bridge the test made for network namespaces).
    fn start_on(ip: Ipv4Addr, env: &[(&str, &str)]) -> Fabric {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let data_dir = dir.path().join("data");
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("reactor-fabric"))
            .args(["serve", "--listen", &format!("{ip}:{port}"), "--data-dir"])
            .arg(&data_dir)
            .env("FABRIC_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("FABRIC_CONFIG", dir.path().join("server-config.toml"))
            .env_remove("FABRIC_LISTEN")
            .env_remove("FABRIC_DATA_DIR")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut fabric = Fabric {
            child,
            url: format!("http://{ip}:{port}"),
            dir,
        };
        fabric.wait_ready(ip, port);
        fabric
    }

    /// Until `/readyz` says 200: `/v1` answers 503 while the server reloads.
    fn wait_ready(&mut self, ip: Ipv4Addr, port: u16) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if readyz_ok_at(ip, port) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the server exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the server did not answer /readyz with 200 in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("cli-config.toml")
    }

    /// The CLI pointed at this server, with its own config file.
    fn cli(&self) -> Command {
        let mut cmd = bare_cli(&self.config_path());
        cmd.env("FABRIC_URL", &self.url);
        cmd
    }

    fn login(&self) {
        self.cli()
            .args([
                "auth",
                "login",
                "--username",
                "admin",
                "--password",
                ADMIN_PASSWORD,
            ])
            .assert()
            .success();
    }

    /// Runs `task create ARGS` and returns the id from the last line of its output.
    fn create_task(&self, args: &[&str]) -> String {
        let out = self
            .cli()
            .args(["task", "create"])
            .args(args)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let out = String::from_utf8(out).unwrap();
        let id = out.lines().last().unwrap_or_default().trim().to_owned();
        id.parse::<TaskId>()
            .unwrap_or_else(|e| panic!("last line of {out:?} is not a task id: {e}"));
        id
    }

    /// Runs `task result ID --wait` and returns (exit code, stdout).
    fn wait_result(&self, id: &str) -> (i32, String) {
        let out = self
            .cli()
            .args(["task", "result", id, "--wait", "--timeout", "30s"])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
        )
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", self.log());
        }
    }
}

/// A plain HTTP/1.1 `GET /readyz`: no client library needed to wait for the server.
fn readyz_ok(port: u16) -> bool {
    readyz_ok_at(Ipv4Addr::LOCALHOST, port)
}

fn readyz_ok_at(ip: Ipv4Addr, port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((ip, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8(cmd.assert().success().get_output().stdout.clone()).unwrap()
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

fn has_line_starting(text: &str, start: &str) -> bool {
    text.lines().any(|l| l.starts_with(start))
}

#[test]
fn version_needs_no_server() {
    let dir = tempfile::tempdir().unwrap();
    let out = stdout_of(bare_cli(&dir.path().join("c.toml")).arg("version"));
    assert_eq!(
        out.trim(),
        format!("reactor-fabric {}", fabric_core::VERSION)
    );
    let out = stdout_of(bare_cli(&dir.path().join("c.toml")).args(["-o", "json", "version"]));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["version"], fabric_core::VERSION);
}

/// REQUIREMENTS §11: exit 6 when the server cannot be reached, with a message that says what to do.
#[test]
fn unreachable_server_exits_6() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = bare_cli(&dir.path().join("c.toml"))
        .args(["status", "--url", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!(
            "Error: cannot reach the fabric at {url}: connection refused."
        )),
        "{stderr}"
    );
    assert!(stderr.contains("reactor-fabric serve"), "{stderr}");
    // FABRIC_URL works as well as --url.
    bare_cli(&dir.path().join("c.toml"))
        .env("FABRIC_URL", &url)
        .arg("status")
        .assert()
        .code(6);
    // Issue #17: not logged in to a server that is not there either: the
    // missing server is what to fix first (6), not the login (3).
    let out = bare_cli(&dir.path().join("c.toml"))
        .env("FABRIC_URL", &url)
        .args(["task", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the fabric"));
}

/// Issue #17: options that a command has no use for are refused, not
/// silently ignored; `-V` belongs to the program, not to every subcommand;
/// flags that had no words have them; a period that does not exist is a
/// usage error (2).
#[test]
fn unused_global_options_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    for argv in [
        &["serve", "--url", "http://127.0.0.1:1"][..],
        &["serve", "-o", "json"],
        &["mock-llm", "-q"],
        &["completion", "bash", "-o", "yaml"],
        &["list", "--url", "http://127.0.0.1:1"],
        &["image", "build-orchestrator", "--url", "http://127.0.0.1:1"],
        &["task", "-V"],
        &["usage", "--user", "admin", "--period", "week"],
        &["config", "current-context", "-q"],
    ] {
        let out = bare_cli(&config).args(argv).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{argv:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{argv:?} says why");
    }
    // -q belongs to lists, config's included.
    bare_cli(&config)
        .args(["config", "set-context", "a", "--url", "http://127.0.0.1:1"])
        .assert()
        .success();
    assert_eq!(
        stdout_of(bare_cli(&config).args(["config", "get-contexts", "-q"])),
        "a\n"
    );
    let out = stdout_of(bare_cli(&config).arg("-V"));
    assert!(out.starts_with("reactor-fabric "), "{out}");
    let help = stdout_of(bare_cli(&config).args(["auth", "login", "--help"]));
    let username = help
        .lines()
        .find(|l| l.trim_start().starts_with("-u, --username"))
        .unwrap();
    assert!(username.contains("The user to log in as"), "{help}");
}

/// REQUIREMENTS §11: a usage error (no --prompt and no --command) exits 2 before anything is sent.
#[test]
fn create_without_work_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = bare_cli(&dir.path().join("c.toml"))
        .args(["task", "create", "--priority", "high"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("--prompt") && stderr.contains("--command"),
        "{stderr}"
    );
}

/// A missing --file fails with exit 1 before any request (no server is running here).
#[test]
fn missing_file_fails_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = bare_cli(&dir.path().join("c.toml"))
        .args([
            "--url",
            &url,
            "task",
            "create",
            "--command",
            "cat x",
            "--file",
        ])
        .arg(dir.path().join("no-such-file.txt"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("cannot read --file") && stderr.contains("no-such-file.txt"),
        "{stderr}"
    );
}

/// Issue #16 item 5: files the CLI sends are read up to a limit, so
/// `--file /dev/zero` is a clear usage error, not a CLI eating the memory.
#[test]
fn oversized_files_are_refused_before_they_are_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = bare_cli(&dir.path().join("c.toml"))
        .args([
            "--url",
            &url,
            "task",
            "create",
            "--command",
            "true",
            "--file",
            "/dev/zero",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("--file /dev/zero is larger than")
            && stderr.contains("FABRIC_MAX_FILE_BYTES"),
        "{stderr}"
    );
    let big = dir.path().join("big.toml");
    std::fs::write(&big, "x".repeat(2048)).unwrap();
    let out = bare_cli(&dir.path().join("c.toml"))
        .env("FABRIC_MAX_FILE_BYTES", "1024")
        .args(["--url", &url, "agent", "spawn", "-f"])
        .arg(&big)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than 1024 bytes"));
}

/// REQUIREMENTS §10 auth, §11 exit code 3: login (flag and stdin), whoami, logout.
#[test]
fn login_whoami_logout() {
    let fabric = Fabric::start();

    let out = stdout_of(fabric.cli().arg("status"));
    assert!(out.starts_with("ok "), "{out}");

    let out = fabric.cli().args(["auth", "whoami"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr
            .starts_with("Error: not logged in: run 'reactor-fabric auth login --username <name>'"),
        "{stderr}"
    );

    let out = fabric
        .cli()
        .args([
            "auth",
            "login",
            "--username",
            "admin",
            "--password",
            "wrong",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .starts_with("Error: ")
    );

    let out = stdout_of(fabric.cli().args([
        "auth",
        "login",
        "--username",
        "admin",
        "--password",
        ADMIN_PASSWORD,
    ]));
    assert_eq!(out.trim(), "logged in as admin");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(fabric.config_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the config file holds a token");
    }
    let out = stdout_of(fabric.cli().args(["auth", "whoami"]));
    assert!(has_line(&out, "user=admin"), "{out}");
    let out = stdout_of(fabric.cli().args(["-o", "json", "auth", "whoami"]));
    let me: fabric_core::api::WhoAmI = serde_json::from_str(&out).unwrap();
    assert_eq!(me.user, "admin");

    let out = stdout_of(fabric.cli().args(["auth", "logout"]));
    assert_eq!(out.trim(), "logged out");
    fabric.cli().args(["auth", "whoami"]).assert().code(3);

    // The password from stdin when it is not a terminal.
    let out = stdout_of(
        fabric
            .cli()
            .args(["auth", "login", "--username", "admin"])
            .write_stdin(format!("{ADMIN_PASSWORD}\n")),
    );
    assert_eq!(out.trim(), "logged in as admin");
    let out = stdout_of(fabric.cli().args(["auth", "whoami"]));
    assert!(has_line(&out, "user=admin"), "{out}");

    // The token from FABRIC_TOKEN works without a stored login.
    let config = std::fs::read_to_string(fabric.config_path()).unwrap();
    let token = config
        .lines()
        .find_map(|l| l.strip_prefix("token = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let other_config = fabric.dir.path().join("other.toml");
    let mut cmd = bare_cli(&other_config);
    cmd.env("FABRIC_URL", &fabric.url)
        .env("FABRIC_TOKEN", &token)
        .args(["auth", "whoami"]);
    assert!(has_line(&stdout_of(&mut cmd), "user=admin"));

    // Logging out revokes the token on the server, not just locally.
    fabric.cli().args(["auth", "logout"]).assert().success();
    let mut cmd = bare_cli(&other_config);
    cmd.env("FABRIC_URL", &fabric.url)
        .env("FABRIC_TOKEN", &token)
        .args(["auth", "whoami"]);
    cmd.assert().code(3);
}

/// FR-SCHED: create (prompt, commands, priority), result --wait, list, get, cancel.
#[test]
fn task_create_result_list_get_cancel() {
    let fabric = Fabric::start();
    // Not logged in: exit 3, nothing created.
    fabric
        .cli()
        .args(["task", "create", "--prompt", "echo hello"])
        .assert()
        .code(3);
    fabric.login();

    let hello = fabric.create_task(&["--prompt", "echo hello"]);
    let (code, out) = fabric.wait_result(&hello);
    assert_eq!(code, 0, "{out}");
    assert!(has_line(&out, "status=completed"), "{out}");
    assert!(has_line(&out, "exit_code=0"), "{out}");
    assert!(has_line(&out, "hello"), "{out}");

    let two = fabric.create_task(&[
        "--command",
        "echo one",
        "--command",
        "echo two",
        "--priority",
        "high",
    ]);
    let (code, out) = fabric.wait_result(&two);
    assert_eq!(code, 0, "{out}");
    assert!(has_line(&out, "one") && has_line(&out, "two"), "{out}");
    let out = stdout_of(fabric.cli().args(["-o", "json", "task", "get", &two]));
    let task: fabric_core::Task = serde_json::from_str(&out).unwrap();
    assert_eq!(task.priority, fabric_core::Priority::High);
    assert_eq!(task.input.commands, vec!["echo one", "echo two"]);

    let out = stdout_of(fabric.cli().args(["-o", "json", "task", "list"]));
    let list: TaskList = serde_json::from_str(&out).unwrap();
    let ids: Vec<String> = list.tasks.iter().map(|t| t.id.to_string()).collect();
    assert!(ids.contains(&hello) && ids.contains(&two), "{ids:?}");
    let out = stdout_of(fabric.cli().args(["task", "list"]));
    assert!(out.starts_with("ID"), "{out}");
    // Tables show an id by its last 8 characters (issue #17).
    assert!(has_line_starting(&out, &hello[hello.len() - 8..]), "{out}");
    assert!(!out.contains(&hello), "{out}");

    let out = stdout_of(fabric.cli().args(["task", "get", &hello]));
    assert!(has_line(&out, &format!("id: {hello}")), "{out}");
    assert!(has_line(&out, "status: completed"), "{out}");

    let unknown = TaskId::new().to_string();
    fabric
        .cli()
        .args(["task", "get", &unknown])
        .assert()
        .code(4);
    fabric
        .cli()
        .args(["task", "result", &unknown])
        .assert()
        .code(4);

    // Canceling a finished task is a conflict.
    let out = fabric
        .cli()
        .args(["task", "cancel", &hello])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .starts_with("Error: ")
    );

    // A failing task: its result is printed and the exit code is the task's own.
    let failing = fabric.create_task(&["--command", "echo oops >&2; exit 3"]);
    let (code, out) = fabric.wait_result(&failing);
    assert_eq!(code, 3, "{out}");
    assert!(has_line(&out, "status=failed"), "{out}");
    assert!(has_line(&out, "exit_code=3"), "{out}");
    assert!(has_line(&out, "oops"), "{out}");

    // Canceling a running task works; its result then says so and exits 1.
    let slow = fabric.create_task(&["--command", "sleep 30"]);
    fabric
        .cli()
        .args(["task", "cancel", &slow])
        .assert()
        .success();
    let (code, out) = fabric.wait_result(&slow);
    assert_eq!(code, 1, "{out}");
    assert!(has_line(&out, "status=canceled"), "{out}");
}

/// `--file` puts a file in the task's working directory; `--env` sets its environment.
#[test]
fn files_and_env_reach_the_task() {
    let fabric = Fabric::start();
    fabric.login();
    let input = fabric.dir.path().join("greeting.txt");
    std::fs::write(&input, "hi from a file\n").unwrap();
    let id = fabric.create_task(&[
        "--command",
        "cat greeting.txt",
        "--command",
        "echo \"$GREETING\"",
        "--file",
        input.to_str().unwrap(),
        "--env",
        "GREETING=hi from env",
        "--name",
        "files",
        "--timeout",
        "30s",
    ]);
    let (code, out) = fabric.wait_result(&id);
    assert_eq!(code, 0, "{out}");
    assert!(has_line(&out, "hi from a file"), "{out}");
    assert!(has_line(&out, "hi from env"), "{out}");

    // NAME=PATH names the file; NAME=- reads it from stdin (issue #17);
    // bare `-` has no name to give it.
    let out = fabric
        .cli()
        .args(["task", "create", "--wait", "--command", "cat build.sh"])
        .args(["--file", "build.sh=-"])
        .write_stdin("echo from stdin\n")
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(has_line(&stdout, "echo from stdin"), "{stdout}");
    let out = fabric
        .cli()
        .args(["task", "create", "--command", "true", "--file", "-"])
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains("--file build.sh=-"), "{stderr}");
}

/// Issue #17: `task create --wait` and `--follow` run a task to its end as
/// `docker run` does: the task's output on stdout, its exit code as the
/// command's; `task result` passes a failed task's exit code through too.
#[test]
fn create_wait_and_follow_pass_the_tasks_exit_code_through() {
    let fabric = Fabric::start();
    fabric.login();
    let out = fabric
        .cli()
        .args([
            "task",
            "create",
            "--wait",
            "--command",
            "echo hello; echo oops >&2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        has_line(&stdout, "hello") && has_line(&stdout, "status=completed"),
        "{stdout}"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("created task "), "{stderr}");

    let out = fabric
        .cli()
        .args([
            "task",
            "create",
            "--wait",
            "--command",
            "echo before; exit 3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        has_line(&stdout, "exit_code=3") && has_line(&stdout, "before"),
        "{stdout}"
    );
    let id = String::from_utf8(out.stderr).unwrap();
    let id = id
        .split_whitespace()
        .nth(2)
        .expect("created task ID on stderr")
        .to_owned();
    let out = fabric.cli().args(["task", "result", &id]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "task result passes it through: {out:?}"
    );

    // --follow: the lines as they come (printed once), then the result.
    let out = fabric
        .cli()
        .args([
            "task",
            "create",
            "-f",
            "--command",
            "echo one; sleep 0.5; echo two; exit 5",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.iter().filter(|l| **l == "one").count(), 1, "{stdout}");
    assert!(
        lines.contains(&"two") && lines.contains(&"exit_code=5"),
        "{stdout}"
    );

    // JSON: the result view, and the same exit code.
    let out = fabric
        .cli()
        .args([
            "-o",
            "json",
            "task",
            "create",
            "--wait",
            "--command",
            "exit 4",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["result"]["exit_code"], 4, "{view}");
}

/// `task logs --follow` streams lines as they come and ends when the task does.
#[test]
fn logs_follow_streams_until_the_task_ends() {
    let fabric = Fabric::start();
    fabric.login();
    let id = fabric.create_task(&["--prompt", "echo a; sleep 1; echo b"]);
    let started = Instant::now();
    let out = stdout_of(fabric.cli().args(["task", "logs", &id, "--follow"]));
    assert!(has_line(&out, "a") && has_line(&out, "b"), "{out}");
    let a = out.lines().position(|l| l == "a");
    let b = out.lines().position(|l| l == "b");
    assert!(a < b, "{out}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "followed to the end, not just a snapshot"
    );

    // Afterwards the recorded history has the same lines.
    let out = stdout_of(fabric.cli().args(["task", "logs", &id]));
    assert!(has_line(&out, "a") && has_line(&out, "b"), "{out}");

    // A task that fails: its lines, then the failure on stderr, and the
    // task's own exit code (as `task result`, and `docker run`).
    let failing = fabric.create_task(&["--prompt", "echo x; exit 42"]);
    let out = fabric
        .cli()
        .args(["task", "logs", &failing, "--follow"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(42), "{out:?}");
    assert!(has_line(&String::from_utf8(out.stdout).unwrap(), "x"));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("[error] status=failed exit_code=42"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("Error: task {failing} ended failed")),
        "{stderr}"
    );

    // JSON: one message per line, each with a type.
    let out = stdout_of(
        fabric
            .cli()
            .args(["-o", "json", "task", "logs", &id, "--follow"]),
    );
    let kinds: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(kinds.iter().any(|k| k == "log"), "{out}");
    // The task completed: its result ends the stream, and nothing is an error.
    assert_eq!(kinds.last().map(String::as_str), Some("result"), "{out}");
    assert!(!kinds.iter().any(|k| k == "error"), "{out}");
}

/// Issue #2 logs / NFR-SEC-2: the server logs one JSON object per line, with
/// request and task ids, and never a password or a token.
#[test]
fn server_logs_are_json_and_hold_no_secrets() {
    let fabric = Fabric::start();
    let wrong_password = "not-the-password-9d1c";
    let out = fabric
        .cli()
        .args([
            "auth",
            "login",
            "--username",
            "admin",
            "--password",
            wrong_password,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    fabric.login();
    let config: toml::Table = std::fs::read_to_string(fabric.config_path())
        .unwrap()
        .parse()
        .unwrap();
    let token = config["token"].as_str().unwrap().to_owned();
    let id = fabric.create_task(&["--prompt", "echo logged"]);
    assert_eq!(fabric.wait_result(&id).0, 0);

    let log = fabric.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
        })
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["ts"].is_string())
    );
    assert!(
        lines.iter().any(|l| l["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_"))),
        "{log}"
    );
    assert!(lines.iter().any(|l| l["task_id"] == id.as_str()), "{log}");
    for secret in [ADMIN_PASSWORD, wrong_password, token.as_str()] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

/// Issue #17: `completion bash|zsh|fish` prints scripts their shells accept,
/// and the bash one completes subcommands and flags at every level.
#[test]
fn completion_scripts_parse_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_of(bare_cli(&config).args(["completion", shell]));
        assert!(
            script.contains("task") && script.contains("--wait"),
            "{shell}"
        );
        let path = dir.path().join(format!("completion.{shell}"));
        std::fs::write(&path, &script).unwrap();
        // zsh and fish check their own where installed; bash is always here.
        if shell == "bash" || installed(shell) {
            let status = std::process::Command::new(shell)
                .arg("-n")
                .arg(&path)
                .status()
                .unwrap();
            assert!(status.success(), "{shell} -n refused the script");
        }
    }
    let bash = dir.path().join("completion.bash");
    let complete = |words: &str, cword: usize, cur: &str, prev: &str| {
        let script = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; _reactor__fabric reactor-fabric {cur} {prev}; echo \"${{COMPREPLY[@]}}\"",
            bash.display()
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(complete("reactor-fabric ta", 1, "ta", "reactor-fabric").contains("task"));
    assert!(complete("reactor-fabric task cr", 2, "cr", "task").contains("create"));
    assert!(complete("reactor-fabric task create --wa", 3, "--wa", "create").contains("--wait"));
}

/// Whether `program` is on the `PATH`.
fn installed(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Issue #17: `task ls` (the docker/kubectl spelling), `-q` for ids only,
/// `-o wide` with more columns, and `rm` beside `delete` where things are removed.
#[test]
fn lists_have_ls_quiet_and_wide() {
    let fabric = Fabric::start();
    fabric.login();
    let first = fabric.create_task(&["--prompt", "true", "--name", "one"]);
    let second = fabric.create_task(&["--prompt", "exit 3", "--name", "two"]);
    for id in [&first, &second] {
        let _ = fabric
            .cli()
            .args(["task", "result", id, "--wait"])
            .output()
            .unwrap();
    }
    let ids = stdout_of(fabric.cli().args(["task", "ls", "-q"]));
    assert_eq!(
        ids.lines().collect::<Vec<_>>(),
        [second.as_str(), first.as_str()],
        "{ids}"
    );
    let wide = stdout_of(fabric.cli().args(["task", "ls", "-o", "wide"]));
    let header = wide.lines().next().unwrap();
    for column in ["ATTEMPT", "OWNER", "EXIT", "FINISHED", "REASON", "NAME"] {
        assert!(header.contains(column), "{wide}");
    }
    let row = wide.lines().find(|l| l.starts_with(&second)).unwrap();
    assert!(
        row.split_whitespace().any(|c| c == "3"),
        "exit code column: {wide}"
    );
    // Budgets and policies: `rm` removes, as `delete` does.
    let help = stdout_of(fabric.cli().args(["policy", "--help"]));
    assert!(help.contains("[alias: rm]"), "{help}");
    let help = stdout_of(fabric.cli().args(["budget", "--help"]));
    assert!(
        help.contains("[alias: rm]") && help.contains("[alias: ls]"),
        "{help}"
    );
}

/// Issue #17: contexts, kubectl-style: two servers side by side in one
/// config file, each with its own login; `use-context` switches, `--context`
/// and `FABRIC_CONTEXT` pick one for a command; an unknown one is a usage
/// error naming the known ones.
#[test]
fn contexts_keep_several_servers_and_their_logins() {
    let one = Fabric::start();
    let two = Fabric::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let cli = || bare_cli(&config);
    let out = stdout_of(cli().args(["config", "set-context", "one", "--url", &one.url]));
    assert!(out.starts_with("created context one"), "{out}");
    stdout_of(cli().args(["config", "set-context", "two", "--url", &two.url]));
    stdout_of(cli().args(["config", "use-context", "one"]));
    assert_eq!(
        stdout_of(cli().args(["config", "current-context"])).trim(),
        "one"
    );
    // Log in to each: the login lands in the context in use.
    for context in ["one", "two"] {
        cli()
            .args([
                "--context",
                context,
                "auth",
                "login",
                "--username",
                "admin",
                "--password",
                ADMIN_PASSWORD,
            ])
            .assert()
            .success();
    }
    // A task on each server, through the current context and through --context.
    let on_one = stdout_of(cli().args(["task", "create", "--prompt", "echo one"]));
    let on_one = on_one.lines().last().unwrap().to_owned();
    let on_two =
        stdout_of(cli().args(["--context", "two", "task", "create", "--prompt", "echo two"]));
    let on_two = on_two.lines().last().unwrap().to_owned();
    let listed_one = stdout_of(cli().args(["task", "ls", "-q"]));
    assert!(
        has_line(&listed_one, &on_one) && !listed_one.contains(&on_two),
        "{listed_one}"
    );
    let listed_two = stdout_of(
        cli()
            .env("FABRIC_CONTEXT", "two")
            .args(["task", "ls", "-q"]),
    );
    assert!(
        has_line(&listed_two, &on_two) && !listed_two.contains(&on_one),
        "{listed_two}"
    );
    let contexts = stdout_of(cli().args(["config", "get-contexts"]));
    let current = contexts.lines().find(|l| l.starts_with("one")).unwrap();
    assert!(
        current.contains('*') && current.contains(&one.url),
        "{contexts}"
    );
    // Logging out of one context leaves the other logged in.
    cli()
        .args(["--context", "two", "auth", "logout"])
        .assert()
        .success();
    cli()
        .args(["--context", "two", "task", "ls"])
        .assert()
        .code(3);
    cli().args(["task", "ls"]).assert().success();
    // Unknown contexts: a usage error that lists the known ones.
    let out = cli()
        .args(["--context", "three", "task", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("no context named \"three\"") && stderr.contains("one, two"),
        "{stderr}"
    );
    cli()
        .args(["config", "use-context", "three"])
        .assert()
        .code(2);
    // The file stays private: it holds tokens.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    stdout_of(cli().args(["config", "delete-context", "one"]));
    // The current context is gone with it: none is current now.
    cli().args(["config", "current-context"]).assert().code(2);
    let contexts = stdout_of(cli().args(["config", "get-contexts", "-o", "json"]));
    let names: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&contexts)
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["two"], "{contexts}");
}

/// Issue #17: a task is named by its full id, by the end of it (at least 6
/// characters; tables show the last 8), or by its name; an ambiguous one is
/// a usage error listing the candidates, an unknown one exit 4.
#[test]
fn tasks_are_found_by_short_id_or_name() {
    let fabric = Fabric::start();
    fabric.login();
    let id = fabric.create_task(&["--prompt", "echo found", "--name", "build-docs"]);
    let (code, _) = fabric.wait_result(&id);
    assert_eq!(code, 0);
    for by in [
        &id[id.len() - 8..],
        &id[id.len() - 6..],
        "build-docs",
        id.as_str(),
    ] {
        let out = stdout_of(fabric.cli().args(["task", "get", by]));
        assert!(has_line(&out, &format!("id: {id}")), "{by}: {out}");
    }
    let out = stdout_of(fabric.cli().args(["task", "result", "build-docs"]));
    assert!(has_line(&out, "found"), "{out}");
    // Two tasks of one name: which one is for the user to say.
    let other = fabric.create_task(&["--prompt", "true", "--name", "build-docs"]);
    let out = fabric
        .cli()
        .args(["task", "get", "build-docs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains(&id) && stderr.contains(&other), "{stderr}");
    // Nothing by that name or tail; and five characters are too few for a tail.
    for unknown in ["no-such-task", &id[id.len() - 5..]] {
        let out = fabric
            .cli()
            .args(["task", "get", unknown])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(4), "{unknown}: {out:?}");
    }
}

/// Issue #17: `task rerun` runs a task again (same agent and input, a new
/// id), `task rm` deletes finished tasks, `task prune --older-than` the
/// finished ones older than an age.
#[test]
fn tasks_rerun_rm_and_prune() {
    let fabric = Fabric::start();
    fabric.login();
    let first = fabric.create_task(&["--command", "echo again-and-again", "--name", "repeat"]);
    assert_eq!(fabric.wait_result(&first).0, 0);
    let out = fabric
        .cli()
        .args(["task", "rerun", &first[first.len() - 8..], "--wait"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(has_line(
        &String::from_utf8(out.stdout).unwrap(),
        "again-and-again"
    ));
    let ids = stdout_of(fabric.cli().args(["task", "ls", "-q"]));
    assert_eq!(ids.lines().count(), 2, "a new task: {ids}");
    let second = ids.lines().next().unwrap().to_owned();
    let second_task = stdout_of(fabric.cli().args(["task", "get", &second]));
    assert!(
        has_line(&second_task, "name: repeat")
            && has_line(&second_task, "command: echo again-and-again"),
        "{second_task}"
    );

    // rm: by id; a running one is refused until canceled (exit 5).
    let out = stdout_of(fabric.cli().args(["task", "rm", &first]));
    assert!(out.starts_with(&format!("deleted task {first}")), "{out}");
    fabric.cli().args(["task", "get", &first]).assert().code(4);
    let slow = fabric.create_task(&["--command", "sleep 30"]);
    let out = fabric.cli().args(["task", "rm", &slow]).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cancel it first"));
    fabric
        .cli()
        .args(["task", "cancel", &slow])
        .assert()
        .success();

    // prune: nothing is a day old; everything finished is older than 0s.
    let out = stdout_of(fabric.cli().args(["task", "prune", "--older-than", "1d"]));
    assert_eq!(out.trim(), "deleted 0 finished tasks");
    let _ = fabric
        .cli()
        .args(["task", "result", &slow, "--wait"])
        .output();
    let out = stdout_of(fabric.cli().args(["task", "prune", "--older-than", "0s"]));
    assert_eq!(
        out.trim(),
        "deleted 2 finished tasks",
        "the rerun and the canceled one"
    );
    assert_eq!(stdout_of(fabric.cli().args(["task", "ls", "-q"])), "");
}
