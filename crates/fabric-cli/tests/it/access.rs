//! `reactor-fabric tenant | user | token` against a real server, as the
//! README shows them (issue #15).

use serde_json::Value;

use super::{Fabric, has_line, stdout_of};

fn json_of(cmd: &mut assert_cmd::Command) -> Value {
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
