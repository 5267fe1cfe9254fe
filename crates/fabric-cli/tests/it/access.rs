//! `reactor-fabric tenant | user | token` against a real server, as the
//! README shows them (issue #15).

use serde_json::Value;

use super::{Fabric, has_line, stdout_of};

pub(crate) fn json_of(cmd: &mut assert_cmd::Command) -> Value {
    serde_json::from_str(&stdout_of(cmd)).unwrap()
}

#[test]
fn tenants_users_and_tokens_from_the_cli() {
    let fabric = Fabric::start();
    fabric.login();

    let out = stdout_of(fabric.cli().args(["tenant", "create", "acme"]));
    assert_eq!(out.trim(), "created tenant acme");
    fabric
        .cli()
        .args(["tenant", "create", "acme"])
        .assert()
        .code(5);
    let out = stdout_of(fabric.cli().args(["tenant", "list"]));
    assert!(out.lines().any(|l| l.starts_with("acme ")), "{out}");

    // A generated one-time password, printed once; it logs in.
    let out = stdout_of(fabric.cli().args([
        "user", "create", "alice", "--tenant", "acme", "--role", "operator",
    ]));
    assert!(
        has_line(&out, "created user alice (tenant acme, role operator)"),
        "{out}"
    );
    let password = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap()
        .to_owned();
    let alice_config = fabric.dir.path().join("alice.toml");
    let alice = || {
        let mut cmd = super::bare_cli(&alice_config);
        cmd.env("FABRIC_URL", &fabric.url);
        cmd
    };
    alice()
        .args([
            "auth",
            "login",
            "--username",
            "alice",
            "--password",
            &password,
        ])
        .assert()
        .success();
    let out = stdout_of(alice().args(["auth", "whoami"]));
    assert!(has_line(&out, "tenant=acme"), "{out}");

    // --password-stdin; a taken name is a conflict (exit 5), an unknown role a usage error.
    fabric
        .cli()
        .args([
            "user",
            "create",
            "bob",
            "--tenant",
            "acme",
            "--role",
            "viewer",
            "--password-stdin",
        ])
        .write_stdin("bob-password-1\n")
        .assert()
        .success();
    fabric
        .cli()
        .args([
            "user",
            "create",
            "bob",
            "--tenant",
            "acme",
            "--role",
            "viewer",
            "--password-stdin",
        ])
        .write_stdin("bob-password-1\n")
        .assert()
        .code(5);
    fabric
        .cli()
        .args(["user", "create", "x", "--role", "root"])
        .assert()
        .code(2);
    let users = json_of(fabric.cli().args(["-o", "json", "user", "list"]));
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "alice", "bob"]);

    // Tokens: the secret once (the `token` field), never in the list; revoke by name.
    let created = json_of(fabric.cli().args([
        "-o",
        "json",
        "token",
        "create",
        "--name",
        "ci",
        "--scope",
        "read:tasks",
        "--scope",
        "write:tasks",
        "--expires",
        "30d",
    ]));
    let secret = created["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("rf_pat_"), "{created}");
    assert_eq!(
        created["scopes"],
        serde_json::json!(["read:tasks", "write:tasks"])
    );
    let with_token = |token: &str| {
        let mut cmd = super::bare_cli(&fabric.dir.path().join("none.toml"));
        cmd.env("FABRIC_URL", &fabric.url)
            .env("FABRIC_TOKEN", token);
        cmd
    };
    with_token(&secret)
        .args(["task", "list"])
        .assert()
        .success();
    let out = stdout_of(fabric.cli().args(["token", "list"]));
    assert!(
        out.lines()
            .any(|l| l.contains(" ci ") && l.contains("read:tasks,write:tasks")),
        "{out}"
    );
    assert!(!out.contains(&secret), "{out}");
    let out = stdout_of(fabric.cli().args(["token", "revoke", "ci"]));
    assert!(out.starts_with("revoked token ci"), "{out}");
    with_token(&secret).args(["task", "list"]).assert().code(3);
    fabric
        .cli()
        .args(["token", "revoke", "ci"])
        .assert()
        .code(4);

    // Passwords: alice changes her own (current, then new, on stdin).
    alice()
        .args(["user", "passwd", "--password-stdin"])
        .write_stdin(format!("{password}\nalice-password-2\n"))
        .assert()
        .success();
    // Disabled: her session is revoked and she cannot log in.
    stdout_of(fabric.cli().args(["user", "disable", "alice"]));
    alice().args(["auth", "whoami"]).assert().code(3);
    alice()
        .args([
            "auth",
            "login",
            "--username",
            "alice",
            "--password",
            "alice-password-2",
        ])
        .assert()
        .code(3);
    stdout_of(fabric.cli().args(["user", "enable", "alice"]));
    alice()
        .args([
            "auth",
            "login",
            "--username",
            "alice",
            "--password",
            "alice-password-2",
        ])
        .assert()
        .success();

    // A tenant goes only once its users are gone.
    fabric.cli().args(["tenant", "rm", "acme"]).assert().code(5);
    for user in ["alice", "bob"] {
        stdout_of(fabric.cli().args(["user", "rm", user]));
    }
    fabric.cli().args(["user", "rm", "alice"]).assert().code(4);
    let out = stdout_of(fabric.cli().args(["tenant", "rm", "acme"]));
    assert_eq!(out.trim(), "deleted tenant acme");
}

/// Issue #15's privilege test: with a token holding only `write:tasks`, a
/// task on the default agent reads none of the server's secrets (its
/// environment through `/proc`, the admin password, a provider key, the
/// data directory) and writes nowhere but its own directory. Run on the
/// default (a sandbox here, as root) and on the confined host level the
/// fabric falls back to where it cannot sandbox.
#[test]
fn tasks_on_the_default_agent_cannot_reach_the_servers_secrets() {
    const PROVIDER_KEY: &str = "sk-privilege-test-9d81c7";
    for isolation in ["auto", "none"] {
        let fabric = Fabric::start_with_env(&[
            ("OPENAI_API_KEY", PROVIDER_KEY),
            ("FABRIC_SHELL_ISOLATION", isolation),
        ]);
        fabric.login();
        let created = json_of(fabric.cli().args([
            "-o",
            "json",
            "token",
            "create",
            "--name",
            "writer",
            "--scope",
            "write:tasks",
        ]));
        let writer = created["token"].as_str().unwrap().to_owned();
        let server_pid = fabric.child.id();
        let data_dir = fabric.dir.path().join("data");
        let outside = fabric.dir.path().join("outside-the-workdir");
        let probes = [
            format!("tr '\\0' '\\n' < /proc/{server_pid}/environ"),
            "tr '\\0' '\\n' < /proc/$PPID/environ".to_owned(),
            format!("cat /proc/{server_pid}/cmdline /proc/{server_pid}/maps"),
            format!("ls -la {}", data_dir.display()),
            format!("cat {}/fabric.db", data_dir.display()),
            format!("grep -r {PROVIDER_KEY} {}", fabric.dir.path().display()),
            format!("touch {}", outside.display()),
            format!("touch {}/planted", data_dir.display()),
            "env".to_owned(),
        ];
        for probe in probes {
            let mut create = super::bare_cli(&fabric.dir.path().join("writer.toml"));
            let out = stdout_of(
                create
                    .env("FABRIC_URL", &fabric.url)
                    .env("FABRIC_TOKEN", &writer)
                    .args(["task", "create", "--command", &probe]),
            );
            let id = out.lines().last().unwrap().trim().to_owned();
            // Reading the result takes read:tasks: the admin does it.
            let (_, result) = fabric.wait_result(&id);
            for secret in [super::ADMIN_PASSWORD, PROVIDER_KEY, "FABRIC_ADMIN_PASSWORD"] {
                assert!(
                    !result.contains(secret),
                    "{isolation}: `{probe}` revealed {secret}:\n{result}"
                );
            }
            // The database's header, or the listing of its directory
            // (error messages may name the path they were refused).
            assert!(
                !result.contains("SQLite format") && !result.contains("fabric.db-wal"),
                "{isolation}: `{probe}` read the data directory:\n{result}"
            );
        }
        assert!(
            !outside.exists(),
            "{isolation}: a task wrote outside its directory"
        );
        assert!(
            !data_dir.join("planted").exists(),
            "{isolation}: a task wrote into the data directory"
        );
        // The agent is what the server says it is.
        let agent = json_of(fabric.cli().args(["-o", "json", "agent", "get", "shell"]));
        let expected = if isolation == "auto" {
            "process"
        } else {
            "none"
        };
        assert_eq!(agent["config"]["isolation"]["level"], expected, "{agent}");
        assert!(
            agent["config"]["isolation"].get("as_fabric_user").is_none(),
            "{agent}"
        );
    }
}
