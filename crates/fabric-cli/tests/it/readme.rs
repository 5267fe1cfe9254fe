//! The README's tour is a test (issue #17): its shell block runs line by
//! line, as written, against a real server, so the first commands a
//! newcomer types cannot drift from what the binary does.
//!
//! What the harness does to a line: `<id>` becomes the id the last command
//! printed alone on its last line (as `task create` does); `auth login`
//! gets the password on stdin (it would prompt). What it checks comes from
//! the line's own comment: `exits N` is the exit code it must have (0
//! otherwise), and each `key=value` must appear in its output.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{ADMIN_PASSWORD, Fabric};

/// The README, from the workspace root.
fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first ```sh block after the heading `heading`.
fn shell_block(readme: &str, heading: &str) -> Vec<String> {
    let section = readme
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in the README"));
    let rest = &readme[section..];
    let start = rest.find("```sh\n").expect("a shell block") + "```sh\n".len();
    let end = rest[start..].find("```").expect("the block's end");
    rest[start..start + end]
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// A line split into its command and its comment (a `#` after two spaces).
fn split_comment(line: &str) -> (&str, &str) {
    match line.find("  #") {
        Some(at) => (line[..at].trim_end(), line[at + 3..].trim()),
        None => (line.trim_end(), ""),
    }
}

/// What the comment promises: the exit code (`exits N`) and `key=value` output.
fn promises(comment: &str) -> (i32, Vec<String>) {
    let words: Vec<&str> = comment
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    let code = words
        .windows(2)
        .find(|w| w[0] == "exits")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(0);
    let outputs = words
        .iter()
        .filter(|w| {
            w.split_once('=')
                .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty())
        })
        .map(|w| (*w).to_owned())
        .collect();
    (code, outputs)
}

#[test]
fn the_readme_tour_runs_as_written() {
    let fabric = Fabric::start();
    let lines = shell_block(&readme(), "## A short tour");
    assert!(lines.len() >= 15, "the tour has its commands: {lines:?}");
    run_lines(&fabric, &lines);
}

#[test]
fn the_readme_users_section_runs_as_written() {
    let fabric = Fabric::start();
    fabric.login();
    let lines = shell_block(&readme(), "### Users, tenants and tokens");
    assert!(lines.len() >= 10, "{lines:?}");
    run_lines(&fabric, &lines);
}

/// `PATH` with this build's `reactor-fabric` first, so README lines run as written.
fn path_with_the_binary() -> String {
    let binary = assert_cmd::cargo::cargo_bin("reactor-fabric");
    let dir = binary.parent().expect("the binary's directory");
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs README lines one by one (see the module docs) against `fabric`.
fn run_lines(fabric: &Fabric, lines: &[String]) {
    let workdir = tempfile::tempdir().unwrap();
    let path = path_with_the_binary();
    let mut last_id: Option<String> = None;
    for line in lines {
        let (command, comment) = split_comment(line);
        let (code, outputs) = promises(comment);
        let command = match &last_id {
            Some(id) => command.replace("<id>", id),
            None => {
                assert!(!command.contains("<id>"), "{line}: no task yet");
                command.to_owned()
            }
        };
        let stdin = if command.contains("auth login") {
            format!("{ADMIN_PASSWORD}\n")
        } else {
            String::new()
        };
        let mut child = Command::new("sh")
            .args(["-c", &command])
            .current_dir(workdir.path())
            .env("PATH", &path)
            .env("FABRIC_URL", &fabric.url)
            .env("FABRIC_CONFIG", fabric.config_path())
            .env_remove("FABRIC_TOKEN")
            .env_remove("FABRIC_CONTEXT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write as _;
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(code),
            "README line {line:?} exited {:?}, the README says {code}\nstdout: {stdout}\nstderr: {stderr}",
            out.status.code()
        );
        for expected in &outputs {
            assert!(
                stdout.contains(expected.as_str()),
                "README line {line:?} promises {expected:?}; stdout: {stdout}"
            );
        }
        if let Some(id) = stdout
            .lines()
            .last()
            .map(str::trim)
            .filter(|l| l.parse::<fabric_core::TaskId>().is_ok())
        {
            last_id = Some(id.to_owned());
        }
    }
}

#[test]
fn comments_say_what_the_harness_checks() {
    assert_eq!(
        split_comment(r#"reactor-fabric x --prompt "a # b"   # exits 3, user=admin"#),
        (
            r#"reactor-fabric x --prompt "a # b""#,
            "exits 3, user=admin"
        )
    );
    assert_eq!(
        promises("status=completed, exit_code=0, hello"),
        (
            0,
            vec!["status=completed".to_owned(), "exit_code=0".to_owned()]
        )
    );
    assert_eq!(
        promises("runs it to its end as docker run does: exits 3").0,
        3
    );
    assert_eq!(
        promises("refused with exit 5 if the agent is not running").0,
        0
    );
}

/// The budgets section, with what it names in place first: an agent
/// `coder` and a user `alice`.
#[test]
fn the_readme_budgets_section_runs_as_written() {
    let fabric = Fabric::start();
    fabric.login();
    for setup in [
        &["agent", "spawn", "--id", "coder", "--isolation", "none"][..],
        &["user", "create", "alice", "--role", "operator"],
    ] {
        fabric.cli().args(setup).assert().success();
    }
    let lines = shell_block(&readme(), "## Budgets");
    assert!(lines.len() >= 8, "{lines:?}");
    run_lines(&fabric, &lines);
}

/// The gateway section is one script (background mock LLMs and a second
/// server, shell variables across lines): it runs whole with `bash -e`, its
/// fixed ports and data directory swapped for free ones, and must show the
/// call answered locally, then by the cloud after the local mock stops.
#[test]
fn the_readme_gateway_section_runs_as_written() {
    use std::os::unix::process::CommandExt as _;
    let block = shell_block(&readme(), "## Inference gateway").join("\n");
    let dir = tempfile::tempdir().unwrap();
    let mut script = block;
    for (fixed, free) in [
        ("8090", super::free_port()),
        ("11435", super::free_port()),
        ("11436", super::free_port()),
    ] {
        assert!(
            script.contains(fixed),
            "the gateway block uses port {fixed}"
        );
        script = script.replace(fixed, &free.to_string());
    }
    script = script.replace(
        "/tmp/gateway-demo",
        &dir.path().join("data").display().to_string(),
    );
    let mut child = Command::new("bash")
        .args(["-e", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path_with_the_binary())
        .env("FABRIC_CONFIG", dir.path().join("cli.toml"))
        .env("FABRIC_LOG", "warn")
        .env_remove("FABRIC_URL")
        .env_remove("FABRIC_TOKEN")
        .env_remove("FABRIC_CONTEXT")
        .env_remove("OLLAMA_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: what the script leaves in the background goes with it.
        .process_group(0)
        .spawn()
        .unwrap();
    let group = child.id();
    // The background jobs hold the pipes open: read them on the side, wait
    // for the script itself, then end its group so the pipes close.
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway block did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{group}")])
        .status();
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let stdout = stdout.to_ascii_lowercase();
    assert!(
        status.success(),
        "the gateway block failed:\n{stdout}\n{stderr}"
    );
    let local = stdout.find("x-fabric-provider: ollama");
    let cloud = stdout.rfind("x-fabric-provider: openai");
    assert!(
        local.is_some() && cloud.is_some() && local < cloud,
        "answered locally, then by the cloud: {stdout}"
    );
    assert!(
        stdout.contains("\"provider\":\"openai\""),
        "policyOverride: {stdout}"
    );
}
