//! `examples/python-agent/agent.py` against a real fabric, as a subprocess.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use fabric_core::TaskStatus;
use fabric_core::reason;
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::harness::Fabric;

fn agent_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/python-agent/agent.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_agent_completes_a_task() {
    let fabric = Arc::new(Fabric::start().await);
    let token = fabric.external_agent("py", 1).await;
    let mut agent = tokio::process::Command::new("python3")
        .arg(agent_script())
        .env("FABRIC_URL", &fabric.base)
        .env("FABRIC_TOKEN", &token)
        .env("FABRIC_AGENT_ID", "py")
        .env_remove("FABRIC_WORKSPACE_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is needed to run the Python example agent");
    // Collected in the background so a full pipe never blocks the agent.
    let mut stderr = agent.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut out = String::new();
        let _ = stderr.read_to_string(&mut out).await;
        out
    });

    let id = fabric.create_task("py", "hello from python").await;
    let view = fabric.wait_done(&id).await;
    assert_eq!(view.status, TaskStatus::Completed, "{view:?}");
    let result = view.result.unwrap();
    assert_eq!(result.stdout, "HELLO FROM PYTHON");
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(
        result.output,
        Some(json!({"words": 3, "agent": "py", "workspace": ""}))
    );
    assert_eq!(fabric.task(&id).await["attempt"], 1);
    assert_eq!(
        fabric.log_lines(&id).await,
        [(
            "stdout".to_owned(),
            "python agent py working on 17 bytes".to_owned()
        )]
    );

    let failing = fabric.create_task("py", "fail: not today").await;
    let view = fabric.wait_done(&failing).await;
    assert_eq!(view.status, TaskStatus::Failed, "{view:?}");
    assert_eq!(view.reason.as_deref(), Some(reason::AGENT_FAILED));
    assert_eq!(view.result.unwrap().error.as_deref(), Some("not today"));

    // Terminating the agent drains it: its next lease gets agent_draining and it exits 0.
    let terminate = tokio::spawn({
        let fabric = Arc::clone(&fabric);
        async move { fabric.delete("/v1/agents/py?drain_timeout=5").await }
    });
    // Its long poll waits up to 30 s before it asks again.
    let exit = tokio::time::timeout(Duration::from_secs(45), agent.wait()).await;
    let log = stderr.await.unwrap();
    let exit = exit
        .unwrap_or_else(|_| {
            panic!("the Python agent did not exit after the drain; its stderr:\n{log}")
        })
        .unwrap();
    assert!(exit.success(), "{exit:?}; its stderr:\n{log}");
    assert!(log.contains("agent is draining"), "{log}");
    let (status, body) = terminate.await.unwrap();
    assert_eq!(status, 200, "{body}");
}
