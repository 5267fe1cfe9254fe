//! Issue #19: the dashboard in a real headless Chromium (Debian's
//! `chromium`, driven by Playwright for Python from the test venv; its own
//! browsers are never downloaded), against the real binary. Each scenario
//! is a function of `py/dashboard.py`; it saves a screenshot of every step
//! and, when it fails, the page's console log, under
//! `target/dashboard-artifacts/`.

use std::path::PathBuf;
use std::process::Command;

use super::{ADMIN_PASSWORD, Fabric};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Debian's chromium; a clear failure when it is missing.
fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "the dashboard tests drive a real Chromium: apt-get install chromium (./scripts/test does)"
    );
    path
}

/// Runs one scenario of `py/dashboard.py` against a fresh server, signed in
/// on the CLI too (the scenarios use it as a user would, beside the browser).
fn scenario(name: &str) {
    let fabric = Fabric::start();
    fabric.login();
    let artifacts = workspace().join("target/dashboard-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/py/dashboard.py");
    let out = Command::new(crate::telemetry::python())
        .arg(&script)
        .arg(name)
        .env("FABRIC_URL", &fabric.url)
        .env("FABRIC_CONFIG", fabric.config_path())
        .env("FABRIC_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("FABRIC_CLI", assert_cmd::cargo::cargo_bin("reactor-fabric"))
        .env("FABRIC_REPO", workspace())
        .env("CHROMIUM", chromium())
        .env("ARTIFACTS", &artifacts)
        .env_remove("FABRIC_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scenario {name} failed (screenshots and console log in {}):\n{stdout}\n{stderr}",
        artifacts.display()
    );
    assert!(
        stdout.contains(&format!("scenario {name}: ok")),
        "{stdout}\n{stderr}"
    );
    // The steps and what they measured (shown with --no-capture).
    println!("{stdout}");
}

#[test]
fn dashboard_signs_in_shows_cli_tasks_live_streams_logs_and_cancels() {
    scenario("tasks");
}

#[test]
fn dashboard_spawns_agents_and_approves_a_waiting_agent() {
    scenario("agents_and_approvals");
}

#[test]
fn dashboard_shows_policy_errors_in_place_and_signs_out() {
    scenario("policies");
}

#[test]
fn dashboard_lists_mcp_servers_and_opens_their_tools() {
    scenario("tools");
}

#[test]
fn dashboard_every_view_renders_on_a_phone_in_dark_mode_and_the_nav_works_from_the_keyboard() {
    scenario("every_view");
}
