//! `/openapi.json` is the truth about the API (issue #14): it passes
//! openapi-spec-validator, and schemathesis (every check, 50 examples per
//! operation, with an admin token and without one) finds no server error and
//! no failure beyond those `scripts/schemathesis.toml` accepts, each with its
//! reason. `scripts/fuzz-api` runs both against a throwaway server in a mount
//! namespace (fuzzed tasks run the commands the fuzzer makes up).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_openapi_document_validates_and_the_api_keeps_to_it_under_fuzzing() {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let binary = assert_cmd::cargo::cargo_bin("reactor-fabric");
    let out = Command::new(workspace.join("scripts/fuzz-api"))
        .arg(&binary)
        .arg("50")
        .output()
        .expect("scripts/fuzz-api runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/fuzz-api failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("openapi.json: OK"),
        "the validator ran and passed: {stdout}"
    );
    // Both runs happened: with a token and without one.
    assert_eq!(stdout.matches("==> schemathesis as").count(), 2, "{stdout}");
}
