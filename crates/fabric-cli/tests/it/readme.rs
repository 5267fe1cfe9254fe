//! The README is a test (issue #17): each shell block of its tour and
//! sections, and the CLI examples in docs/, runs as written against a real
//! server, so what a newcomer types cannot drift from what the binary does.
//!
//! Most blocks run line by line ([`run_lines`]). What the harness does to a
//! line: a line ending in `\` goes on with the next; `<id>` becomes the id
//! the last command printed alone on its last line (as `task create` does);
//! `auth login` gets the password on stdin (it would prompt); `export
//! NAME=VALUE` sets NAME for the lines after it; a block's fixed names
//! (an instance name, say) may be swapped for unique ones. What it checks
//! comes from the line's own comment: `exits N` is the exit code it must
//! have (0 otherwise), each `key=value` and each `prints "text"` must appear
//! in its output. Blocks that are one script (background jobs, shell
//! variables across lines) run whole with `bash -e` ([`run_script`]). The
//! config files the README shows are loaded as the binary loads them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{ADMIN_PASSWORD, Fabric};

/// The workspace root: README lines that name files (`policies/dev.toml`,
/// `examples/`) run from there.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The README, from the workspace root.
pub(crate) fn readme() -> String {
    doc("README.md")
}

/// A document of the workspace (`README.md`, `docs/POLICY.md`).
fn doc(name: &str) -> String {
    let path = workspace().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of the first ```sh block after the heading `heading`, a line
/// ending in `\` joined with the next.
fn shell_block(text: &str, heading: &str) -> Vec<String> {
    let section = text
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in the document"));
    let rest = &text[section..];
    let start = rest.find("```sh\n").expect("a shell block") + "```sh\n".len();
    let end = rest[start..].find("```").expect("the block's end");
    let mut lines: Vec<String> = Vec::new();
    let mut continued = false;
    for line in rest[start..start + end].lines() {
        if line.trim().is_empty() {
            continue;
        }
        let (text, goes_on) = match line.strip_suffix('\\') {
            Some(head) => (head.trim_end(), true),
            None => (line, false),
        };
        match lines.last_mut() {
            Some(last) if continued => {
                last.push(' ');
                last.push_str(text.trim_start());
            }
            _ => lines.push(text.to_owned()),
        }
        continued = goes_on;
    }
    lines
}

/// A line split into its command and its comment (a `#` after two spaces).
fn split_comment(line: &str) -> (&str, &str) {
    match line.find("  #") {
        Some(at) => (line[..at].trim_end(), line[at + 3..].trim()),
        None => (line.trim_end(), ""),
    }
}

/// What the comment promises: the exit code (`exits N`), and output: each
/// `key=value` and each `prints "text"`.
fn promises(comment: &str) -> (i32, Vec<String>) {
    let mut printed: Vec<String> = Vec::new();
    let mut rest = comment;
    while let Some(at) = rest.find("prints \"") {
        let text = &rest[at + "prints \"".len()..];
        let Some(end) = text.find('"') else { break };
        printed.push(text[..end].to_owned());
        rest = &text[end + 1..];
    }
    let words: Vec<&str> = comment
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    let code = words
        .windows(2)
        .find(|w| w[0] == "exits")
        .and_then(|w| w[1].trim_end_matches([':', '.', ')']).parse().ok())
        .unwrap_or(0);
    let outputs = words
        .iter()
        .filter(|w| {
            w.split_once('=')
                .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty())
        })
        .map(|w| w.trim_end_matches([':', '.', ')']).to_owned())
        .chain(printed)
        .collect();
    (code, outputs)
}

#[test]
fn the_readme_tour_runs_as_written() {
    let fabric = Fabric::start();
    let lines = shell_block(&readme(), "## A short tour");
    assert!(lines.len() >= 15, "the tour has its commands: {lines:?}");
    // The tour writes a file (build.sh): it runs in a directory of its own.
    let workdir = tempfile::tempdir().unwrap();
    run_lines(&mut Session::against(&fabric, workdir.path()), &lines);
}

#[test]
fn the_readme_users_section_runs_as_written() {
    let fabric = Fabric::start();
    fabric.login();
    let lines = shell_block(&readme(), "### Users, tenants and tokens");
    assert!(lines.len() >= 10, "{lines:?}");
    let workdir = tempfile::tempdir().unwrap();
    run_lines(&mut Session::against(&fabric, workdir.path()), &lines);
}

/// The contexts block against two servers, "local" and "prod" (where
/// alice exists), with a config file of its own and no `FABRIC_URL`
/// (which would override every context).
#[test]
fn the_readme_contexts_block_runs_as_written() {
    let (local, prod) = (Fabric::start(), Fabric::start());
    prod.login();
    let mut create_alice = prod.cli();
    create_alice
        .args([
            "user",
            "create",
            "alice",
            "--role",
            "operator",
            "--password-stdin",
        ])
        .write_stdin(format!("{ADMIN_PASSWORD}\n"))
        .assert()
        .success();
    let lines = shell_block(&readme(), "Several servers, kubectl-style");
    assert!(lines.len() >= 6, "{lines:?}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cli.toml");
    let mut session = Session {
        cwd: dir.path().to_owned(),
        env: vec![("FABRIC_CONFIG".into(), config.display().to_string())],
        swaps: vec![
            ("http://127.0.0.1:8080".into(), local.url.clone()),
            ("https://fabric.example.com:8443".into(), prod.url.clone()),
        ],
    };
    run_lines(&mut session, &lines);
    let contexts = super::stdout_of(super::bare_cli(&config).args(["config", "get-contexts"]));
    assert!(
        super::has_line_starting(&contexts, "prod   *"),
        "prod is current: {contexts}"
    );
}

/// The agents section: a sandboxed shell agent, a container agent (real
/// dockerd) and the Python example agent, then their lifecycle commands.
#[test]
fn the_readme_agents_section_runs_as_written() {
    let fabric = Fabric::start();
    fabric.login();
    let lines = shell_block(&readme(), "### Agents");
    assert!(lines.len() >= 12, "{lines:?}");
    run_lines(&mut Session::against(&fabric, &workspace()), &lines);
}

/// The policies section: dev.toml applied, a deny checked, a task held
/// for an approval and approved, the audit trail.
#[test]
fn the_readme_policies_section_runs_as_written() {
    let fabric = Fabric::start();
    fabric.login();
    let lines = shell_block(&readme(), "## Policies and approvals");
    assert!(lines.len() >= 8, "{lines:?}");
    run_lines(&mut Session::against(&fabric, &workspace()), &lines);
}

/// The MCP section: a PyPI MCP server registered (sandboxed; the test
/// venv's python in place of `python3`, with the paths it needs), its
/// tools listed, a shell agent's task reading them at its `MCP_URL`.
#[test]
fn the_readme_mcp_section_runs_as_written() {
    let fabric = Fabric::start();
    fabric.login();
    let lines = shell_block(&readme(), "## Tools over MCP");
    assert!(lines.len() >= 6, "{lines:?}");
    let (python, paths) = crate::mcp::sandboxed_python();
    let read_only: String = paths.iter().map(|p| format!(" --read-only {p}")).collect();
    let mut session = Session::against(&fabric, &workspace());
    session.swaps.push((
        "\"python3 -m mcp_server_time\"".into(),
        format!("\"{} -m mcp_server_time\"{read_only}", python.display()),
    ));
    run_lines(&mut session, &lines);
}

/// docs/POLICY.md's CLI examples, the same way.
#[test]
fn the_policy_docs_cli_examples_run_as_written() {
    let fabric = Fabric::start();
    fabric.login();
    let lines = shell_block(&doc("docs/POLICY.md"), "## CLI");
    assert!(lines.len() >= 8, "{lines:?}");
    run_lines(&mut Session::against(&fabric, &workspace()), &lines);
}

/// docs/POLICY.md's model (a `PUT /v1/policies/{id}` body with `//`
/// comments) is a policy the server accepts as it stands.
#[test]
fn the_policy_docs_model_is_accepted() {
    let fabric = Fabric::start();
    fabric.login();
    let text = doc("docs/POLICY.md");
    let at = text
        .find("```json\nPUT /v1/policies/{id}\n")
        .expect("the model");
    let body = &text[at..];
    let end = body["```json".len()..].find("```").unwrap() + "```json".len();
    // The body starts on the line after `PUT /v1/policies/{id}`.
    let body = &body[body.find("\n{").unwrap()..end];
    let json: String = body
        .lines()
        .map(|l| l.find("//").map_or(l, |at| &l[..at]))
        .collect::<Vec<_>>()
        .join("\n");
    let stdin = tempfile::NamedTempFile::new().unwrap();
    let mut policy: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    policy["id"] = "from-the-docs".into();
    std::fs::write(stdin.path(), policy.to_string()).unwrap();
    let out = fabric
        .cli()
        .args(["policy", "apply", "-f"])
        .arg(stdin.path())
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        stdout.contains("applied policy from-the-docs (tenant:default, priority 0, 3 rules)"),
        "{stdout}"
    );
}

/// The HTTP API section is one script (a token in a shell variable, a
/// cursor read from one answer into the next request): it runs whole
/// against a server with a few completed tasks, 8080 swapped for its port.
#[test]
fn the_readme_http_api_section_runs_as_written() {
    let fabric = Fabric::start();
    fabric.login();
    for _ in 0..3 {
        let id = fabric.create_task(&["--command", "true"]);
        assert_eq!(fabric.wait_result(&id).0, 0);
    }
    let port = fabric.url.rsplit(':').next().unwrap().to_owned();
    let script = shell_block(&readme(), "### The HTTP API")
        .join("\n")
        .replace("8080", &port);
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run_script(
        &script,
        dir.path(),
        &[
            ("FABRIC_URL", fabric.url.as_str()),
            ("FABRIC_CONFIG", fabric.config_path().to_str().unwrap()),
        ],
    );
    assert!(ok, "the HTTP API block failed:\n{stdout}\n{stderr}");
    // curl prints each answer without a newline after it.
    let answers: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(answers.len(), 3, "three answers: {stdout}");
    assert_eq!(answers[0]["tasks"].as_array().map(Vec::len), Some(2));
    assert!(answers[0]["next_cursor"].is_string(), "{stdout}");
    assert_eq!(
        answers[1]["tasks"].as_array().map(Vec::len),
        Some(1),
        "the second page has the third task: {stdout}"
    );
    assert!(answers[1].get("next_cursor").is_none(), "{stdout}");
    assert_eq!(answers[2]["error"]["code"], "invalid_request", "{stdout}");
}

/// The Docker instances section against the real dockerd: `start` (with a
/// context left behind), `list`, a task through the context, the second
/// start's conflict, `down` (the context goes too). Its instance name is
/// swapped for a unique one; `down` runs however the test ends.
#[test]
fn the_readme_instances_section_runs_as_written() {
    struct Down(String, PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = super::bare_cli(&self.1)
                .args(["down", "--name", &self.0])
                .output();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cli.toml");
    let name = format!("it-readme-{}", std::process::id());
    let _down = Down(name.clone(), config.clone());
    let lines = shell_block(&readme(), "## Docker instances");
    assert!(lines.len() >= 6, "{lines:?}");
    let mut session = Session {
        cwd: dir.path().to_owned(),
        env: vec![("FABRIC_CONFIG".into(), config.display().to_string())],
        swaps: vec![("my-test".into(), name.clone())],
    };
    run_lines(&mut session, &lines);
    let contexts =
        super::stdout_of(super::bare_cli(&config).args(["config", "get-contexts", "-q"]));
    assert!(
        !contexts.lines().any(|l| l.trim() == name),
        "down removed the instance's context: {contexts}"
    );
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

/// Where README lines run, with what environment, and the block's fixed
/// words to swap (an instance name for a unique one).
struct Session {
    cwd: PathBuf,
    env: Vec<(String, String)>,
    swaps: Vec<(String, String)>,
}

impl Session {
    /// Lines run in `cwd` against `fabric`, with its CLI config file.
    fn against(fabric: &Fabric, cwd: &Path) -> Session {
        Session {
            cwd: cwd.to_owned(),
            env: vec![
                ("FABRIC_URL".into(), fabric.url.clone()),
                (
                    "FABRIC_CONFIG".into(),
                    fabric.config_path().display().to_string(),
                ),
            ],
            swaps: Vec::new(),
        }
    }
}

/// Runs README lines one by one (see the module docs).
fn run_lines(session: &mut Session, lines: &[String]) {
    let path = path_with_the_binary();
    let mut last_id: Option<String> = None;
    for line in lines {
        let mut line = line.clone();
        for (fixed, unique) in &session.swaps {
            line = line.replace(fixed.as_str(), unique);
        }
        let (command, comment) = split_comment(&line);
        let (code, outputs) = promises(comment);
        let mut command = match &last_id {
            Some(id) => command.replace("<id>", id),
            None => {
                assert!(!command.contains("<id>"), "{line}: no task yet");
                command.to_owned()
            }
        };
        // `export NAME=VALUE`: the shell works out VALUE, later lines get it.
        let exported = command
            .strip_prefix("export ")
            .and_then(|rest| rest.split_once('='))
            .map(|(name, _)| name.to_owned());
        if let Some(name) = &exported {
            command = format!("{command} && printf '%s' \"${name}\"");
        }
        let stdin = if command.contains("auth login") {
            format!("{ADMIN_PASSWORD}\n")
        } else {
            String::new()
        };
        let mut child = Command::new("sh")
            .args(["-c", &command])
            .current_dir(&session.cwd)
            .env("PATH", &path)
            .env_remove("FABRIC_URL")
            .env_remove("FABRIC_TOKEN")
            .env_remove("FABRIC_CONTEXT")
            .envs(session.env.iter().map(|(k, v)| (k, v)))
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
        if let Some(name) = exported {
            session.env.push((name, stdout.into_owned()));
            continue;
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

/// Runs `script` with `bash -e` in `dir` (this build first on `PATH`, no
/// inherited fabric settings, `env` added), in a process group of its own
/// that is ended when the script is: what it leaves in the background goes
/// with it. Returns whether it succeeded, and its stdout and stderr.
fn run_script(script: &str, dir: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new("bash")
        .args(["-e", "-c", script])
        .current_dir(dir)
        .env("PATH", path_with_the_binary())
        .env("FABRIC_LOG", "warn")
        .env_remove("FABRIC_URL")
        .env_remove("FABRIC_TOKEN")
        .env_remove("FABRIC_CONTEXT")
        .env_remove("OLLAMA_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
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
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{group}")])
        .status();
    (
        status.success(),
        stdout.join().unwrap(),
        stderr.join().unwrap(),
    )
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
        promises(r#"exits 7: deny; prints "no (rule #0)""#),
        (7, vec!["no (rule #0)".to_owned()])
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
    let workdir = tempfile::tempdir().unwrap();
    run_lines(&mut Session::against(&fabric, workdir.path()), &lines);
}

/// The gateway section is one script (background mock LLMs and a second
/// server, shell variables across lines): it runs whole with `bash -e`, its
/// fixed ports and data directory swapped for free ones, and must show the
/// call answered locally, then by the cloud after the local mock stops.
#[test]
fn the_readme_gateway_section_runs_as_written() {
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
    let config = dir.path().join("cli.toml");
    let (ok, stdout, stderr) = run_script(
        &script,
        dir.path(),
        &[("FABRIC_CONFIG", config.to_str().unwrap())],
    );
    let stdout = stdout.to_ascii_lowercase();
    assert!(ok, "the gateway block failed:\n{stdout}\n{stderr}");
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

/// The first fenced block of `lang` after `marker` in `text`, its
/// indentation (a block inside a list item) removed.
pub(crate) fn fenced_block(text: &str, marker: &str, lang: &str) -> String {
    let rest = &text[text.find(marker).unwrap_or_else(|| panic!("no {marker:?}"))..];
    let open = format!("```{lang}\n");
    let start = rest.find(&open).expect("the block") + open.len();
    let end = start + rest[start..].find("```").expect("the block's end");
    let block = &rest[start..end];
    let indent = block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    block
        .lines()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The README's config files are ones the binary accepts: the gateway's
/// TOML (`serve --gateway-config`) and an instance's `fabric.yml`
/// (`start --config`), both of which refuse unknown keys.
#[test]
fn the_readme_config_files_are_accepted() {
    let text = readme();
    let dir = tempfile::tempdir().unwrap();
    let gateway = dir.path().join("gateway.toml");
    std::fs::write(
        &gateway,
        fenced_block(&text, "A config file (`--gateway-config", "toml"),
    )
    .unwrap();
    let env = |name: &str| (name == "OPENAI_API_KEY").then(|| "sk-readme".to_owned());
    let config = fabric_gateway::GatewayConfig::load(Some(&gateway), &env)
        .unwrap_or_else(|e| panic!("the README's gateway config: {e}"));
    assert_eq!(config.providers.len(), 2);

    let instance = dir.path().join("fabric.yml");
    std::fs::write(
        &instance,
        fenced_block(&text, "**`--config fabric.yml`**", "yaml"),
    )
    .unwrap();
    fabric_docker::config::InstanceConfig::load(Some(&instance), &|_| None)
        .unwrap_or_else(|e| panic!("the README's fabric.yml: {e}"));
}
