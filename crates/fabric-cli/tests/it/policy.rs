//! `reactor-fabric policy | approval | audit` against a real server, with the
//! repository's example policy file and the Python example agent waiting on
//! an approval.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Fabric, has_line_starting, stdout_of};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn policy_apply_list_check_and_delete() {
    let fabric = Fabric::start();
    fabric.login();
    let dev = repo().join("policies/dev.toml");
    let out = stdout_of(fabric.cli().args(["policy", "apply", "-f"]).arg(&dev));
    assert!(
        out.contains("applied policy dev-tenant (tenant:default, priority 0, 5 rules)"),
        "{out}"
    );
    assert!(
        out.contains("applied policy coder (agent:coder, priority 10, 3 rules)"),
        "{out}"
    );
    let out = stdout_of(fabric.cli().args(["policy", "list"]));
    for needle in [
        "dev-tenant",
        "coder",
        "default",
        "shell:rm -rf /*",
        "require_approval",
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }
    // The built-in default sits below every other: said in words (issue #17).
    assert!(
        out.lines()
            .any(|l| l.starts_with("default") && l.contains("lowest")),
        "{out}"
    );
    assert!(!out.contains("-2147483648"), "{out}");

    // The decision is printed, and the exit code says it: 0 allow, 7 deny, 8 approval.
    let out = fabric
        .cli()
        .args([
            "policy",
            "check",
            "--agent",
            "coder",
            "--action",
            "shell:rm -rf /",
        ])
        .assert()
        .code(7)
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        out.trim(),
        "deny (rule #0 shell:rm -rf /* of policy dev-tenant)"
    );
    fabric
        .cli()
        .args([
            "policy",
            "check",
            "--agent",
            "coder",
            "--action",
            "net:connect:prod-db:5432",
        ])
        .assert()
        .code(8);
    let out = stdout_of(fabric.cli().args([
        "policy",
        "check",
        "--agent",
        "coder",
        "--action",
        "file:write:/tmp/x",
    ]));
    assert_eq!(
        out.trim(),
        "allow (rule #0 file:write:/tmp/* of policy coder)"
    );
    let out = stdout_of(fabric.cli().args([
        "-o", "json", "policy", "check", "--agent", "coder", "--action", "shell:ls",
    ]));
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["decision"], "allow");
    assert_eq!(answer["policy_id"], "dev-tenant");

    // A bad file never reaches the server: usage error, exit 2, with the reason.
    let bad = fabric.dir.path().join("bad.toml");
    std::fs::write(&bad, "id = \"x\"\nscope = { agent = \"a\" }\nrules = [{ action_pattern = \"x\", effect = \"perhaps\" }]\n").unwrap();
    let err = fabric
        .cli()
        .args(["policy", "apply", "-f"])
        .arg(&bad)
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    assert!(
        String::from_utf8_lossy(&err).contains("perhaps"),
        "{}",
        String::from_utf8_lossy(&err)
    );
    // A glob the server refuses: its 400 message, exit 1.
    std::fs::write(&bad, "id = \"x\"\nscope = { agent = \"a\" }\nrules = [{ action_pattern = \"shell:[x\", effect = \"deny\" }]\n").unwrap();
    let err = fabric
        .cli()
        .args(["policy", "apply", "-f"])
        .arg(&bad)
        .assert()
        .code(1)
        .get_output()
        .stderr
        .clone();
    assert!(
        String::from_utf8_lossy(&err).contains("unclosed"),
        "{}",
        String::from_utf8_lossy(&err)
    );

    stdout_of(fabric.cli().args(["policy", "delete", "dev-tenant"]));
    fabric
        .cli()
        .args(["policy", "delete", "dev-tenant"])
        .assert()
        .code(4);
    // Live: with the tenant rules gone, only the built-in default decides
    // for an agent without a policy of its own: it allows commands but not
    // deploys. (Not `coder`: its policy asks for an approval of deploys on
    // weekdays 09:00-17:00 UTC, so the answer would depend on the clock.)
    fabric
        .cli()
        .args([
            "policy",
            "check",
            "--agent",
            "builder",
            "--action",
            "deploy:prod",
        ])
        .assert()
        .code(7);

    let out = stdout_of(
        fabric
            .cli()
            .args(["audit", "--agent", "coder", "--decision", "deny"]),
    );
    assert!(
        out.contains("shell:rm -rf /") && out.contains("dev-tenant"),
        "{out}"
    );
    let out = stdout_of(fabric.cli().args(["-o", "json", "audit", "--limit", "100"]));
    let audit: Value = serde_json::from_str(&out).unwrap();
    let records = audit["records"].as_array().unwrap();
    let decisions = records.iter().filter(|r| r["source"] == "check").count();
    assert_eq!(decisions, 5, "{audit}");
    // Applying and deleting policies are administrative actions, audited too.
    let admin: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["source"] == "admin")
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["resource"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        admin,
        [
            ("policy:delete", "dev-tenant"),
            ("policy:put", "coder"),
            ("policy:put", "dev-tenant")
        ],
        "{audit}"
    );
}

#[test]
fn approval_list_and_approve_let_the_waiting_agent_proceed() {
    let fabric = Fabric::start();
    fabric.login();
    stdout_of(
        fabric
            .cli()
            .args(["policy", "apply", "-f"])
            .arg(repo().join("policies/dev.toml")),
    );
    let agent = format!(
        "python3 {}",
        repo().join("examples/python-agent/agent.py").display()
    );
    stdout_of(
        fabric
            .cli()
            .args(["agent", "spawn", "--id", "pycoder", "--command", &agent])
            .arg("--read-only")
            .arg(repo().join("examples")),
    );
    let task = fabric.create_task(&[
        "--agent",
        "pycoder",
        "--prompt",
        "check:net:connect:prod-db:5432",
    ]);

    // The agent waits on its approval: it shows up as pending.
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let out = stdout_of(fabric.cli().args(["-o", "json", "approval", "list"]));
        let list: Value = serde_json::from_str(&out).unwrap();
        if let Some(a) = list["approvals"].as_array().unwrap().first() {
            assert_eq!(a["action"], "net:connect:prod-db:5432");
            break a["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no pending approval appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The table shows the end of the id (issue #17), which names it.
    let short = &id[id.len() - 8..];
    let out = stdout_of(fabric.cli().args(["approval", "list"]));
    assert!(
        has_line_starting(&out, &format!("{short}  pending  agent:pycoder")),
        "{out}"
    );
    assert_eq!(
        stdout_of(fabric.cli().args(["approval", "list", "-q"])).trim(),
        id
    );
    fabric
        .cli()
        .args(["approval", "approve", "0000000000"])
        .assert()
        .code(4);
    let out = stdout_of(fabric.cli().args(["approval", "approve", short]));
    assert_eq!(
        out.trim(),
        format!("approved {id}: agent:pycoder net:connect:prod-db:5432")
    );
    fabric
        .cli()
        .args(["approval", "deny", &id])
        .assert()
        .code(5);

    let (code, out) = fabric.wait_result(&task);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("allow"), "{out}");
    let out = stdout_of(
        fabric
            .cli()
            .args(["approval", "list", "--status", "approved"]),
    );
    assert!(has_line_starting(&out, short), "{out}");
}

/// Issue #17: `-f -` reads the file from standard input, for `policy apply`
/// and `agent spawn` alike (TOML or JSON told apart by content).
#[test]
fn files_can_come_from_standard_input() {
    let fabric = Fabric::start();
    fabric.login();
    let out = fabric
        .cli()
        .args(["policy", "apply", "-f", "-"])
        .write_stdin("id = \"from-stdin\"\nscope = { tenant = \"default\" }\npriority = 5\n\n[[rules]]\naction_pattern = \"shell:curl *\"\neffect = \"deny\"\n")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("applied policy from-stdin"), "{out}");
    let out = stdout_of(fabric.cli().args(["policy", "ls"]));
    assert!(out.contains("from-stdin"), "{out}");
    let out = fabric
        .cli()
        .args(["agent", "spawn", "-f", "-"])
        .write_stdin(r#"{"id": "piped", "isolation": {"level": "none"}}"#)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("spawned agent piped"), "{out}");
}
