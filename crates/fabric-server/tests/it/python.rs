//! Real Python clients against the fabric: the official `openai`, `ollama`
//! and `anthropic` SDKs, `litellm`, `langchain-openai`
//! (`tests/python/gateway_clients.py`, `frameworks.py`), and the
//! `openai-agents` framework inside sandboxed agents (`agent_framework.py`):
//! the proof that the APIs are really compatible. Needs the venv
//! `./scripts/test` creates (`target/py-venv`, from
//! `scripts/requirements-test.txt`), or `FABRIC_TEST_PYTHON` naming a python
//! that has those packages.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use fabric_core::{AgentId, TenantId};
use fabric_server::api::inference::{EndpointIdentity, serve_ollama_endpoint};
use serde_json::json;

use crate::gateway::{Upstreams, agent_token, server_with};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's python, checked to import both clients; a clear failure otherwise.
fn python() -> PathBuf {
    let python = std::env::var_os("FABRIC_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/py-venv/bin/python"));
    let how = "create it with ./scripts/test, or: python3 -m venv target/py-venv && target/py-venv/bin/pip install -r scripts/requirements-test.txt";
    assert!(
        python.exists(),
        "the Python client test needs {} (a venv with the packages of scripts/requirements-test.txt): {how}",
        python.display()
    );
    let imports = std::process::Command::new(&python)
        .args([
            "-c",
            "import openai, ollama, anthropic, litellm, langchain_openai, agents",
        ])
        .output()
        .unwrap();
    assert!(
        imports.status.success(),
        "{} cannot import the client libraries ({}): {how}",
        python.display(),
        String::from_utf8_lossy(&imports.stderr).trim()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_and_ollama_python_clients() {
    let python = python();
    let up = Upstreams::start().await;
    let s = server_with(&up).await;
    let admin = s.login().await;
    let (status, body) = s
        .post(&admin, "/v1/auth/tokens", json!({"scopes": ["llm:invoke"]}))
        .await;
    assert_eq!(status, 201, "{body}");
    let user_token = body["token"].as_str().unwrap().to_owned();
    let agent = agent_token(&s, &admin, "py-agent").await;

    // An agent's inference endpoint, as the agent manager serves it.
    let sink = Arc::new(fabric_gateway::MemorySink::default());
    let gateway = fabric_gateway::Gateway::new(
        up.config(),
        Arc::clone(&sink) as Arc<dyn fabric_gateway::UsageSink>,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // As an isolation `none` agent's endpoint is: under a secret path, which
    // the official clients keep when given it as their base URL.
    let secret = "0123456789abcdef0123456789abcdef";
    let endpoint = format!("http://{}/{secret}", listener.local_addr().unwrap());
    let identity = EndpointIdentity {
        tenant: TenantId::default_tenant(),
        user: "admin".into(),
        agent: AgentId::new("py-agent").unwrap(),
        workspace: None,
        path_secret: Some(secret.to_owned()),
        tools: Vec::new(),
        forward_token: None,
    };
    let _endpoint = serve_ollama_endpoint(
        listener,
        gateway,
        identity,
        fabric_server::telemetry::Telemetry::disabled(std::sync::Arc::new(
            fabric_core::SystemClock,
        )),
    );

    let run = |name: &'static str| {
        let script = workspace()
            .join("crates/fabric-server/tests/python")
            .join(name);
        let mut command = tokio::process::Command::new(&python);
        command
            .arg(&script)
            .env("FABRIC_URL", &s.base)
            .env("FABRIC_USER_TOKEN", &user_token)
            .env("FABRIC_AGENT_TOKEN", &agent)
            .env("AGENT_OLLAMA_BASE_URL", &endpoint)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("ANTHROPIC_BASE_URL")
            .env_remove("OLLAMA_API_KEY")
            .env_remove("OLLAMA_HOST")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        async move {
            let output = command.output().await.unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success() && stdout.trim_end().ends_with("ok"),
                "{name} failed ({}):\n{stdout}\n{stderr}",
                output.status
            );
        }
    };
    run("gateway_clients.py").await;

    // The endpoint's calls were metered against the agent: chat, generate
    // (each plain and streamed), embed, embeddings, the failed stream; the
    // refused tool message never reached routing.
    let records = sink.records();
    assert_eq!(records.len(), 7, "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| r.agent.as_ref().map(|a| a.as_str()) == Some("py-agent") && r.api == "ollama")
    );
    // Issue #18: the anthropic SDK, litellm and langchain-openai, through
    // the fabric's API and the agent's endpoint.
    run("frameworks.py").await;
    s.stop().await;
}

/// What an agent's own program does with the environment it is given: an
/// unmodified `OpenAI()` client (base URL and key from the environment)
/// calls tools, retrieves a model and lists models, inside a sandbox
/// (isolation `process`) and as a host process (`none`), every call metered
/// against the agent and no provider key in sight (issue #18, item 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmodified_openai_client_works_inside_agents() {
    let real_venv =
        std::fs::canonicalize(python().parent().and_then(|bin| bin.parent()).unwrap()).unwrap();
    // What the agents see, outside /tmp (a sandboxed command's /tmp is its
    // task's own, which would hide a checkout under /tmp): the venv bound
    // into a directory of this test's, and the scripts beside it.
    let shown = Shown::new(&real_venv);
    let venv = shown.root.join("venv");
    let python = venv.join("bin/python");
    // The interpreter the venv points at (pyenv's, say) must be visible too;
    // the system's is (/usr is in every sandbox).
    let interpreter = std::fs::canonicalize(&python).unwrap();
    let prefix = interpreter
        .parent()
        .and_then(|bin| bin.parent())
        .unwrap()
        .to_owned();
    let mut visible = vec![venv.display().to_string()];
    if !prefix.starts_with("/usr") {
        visible.push(prefix.display().to_string());
    }
    let up = Upstreams::start().await;
    let config = up.config();
    let s = crate::harness::TestServer::start_with(move |c| {
        c.gateway = config;
        c.sandbox_helper = Some(crate::harness::sandbox_helper());
    })
    .await;
    let token = s.login().await;
    let dir = tempfile::tempdir_in(&shown.root).unwrap();
    let script = dir.path().join("client.py");
    std::fs::write(
        &script,
        r#"
import os
from openai import OpenAI

client = OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY from the agent's environment
tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
reply = client.chat.completions.create(
    model="llama3", messages=[{"role": "user", "content": "weather in Oslo?"}], tools=tools
)
call = reply.choices[0].message.tool_calls[0]
print("call", call.function.name, call.function.arguments)
print("model", client.models.retrieve("llama3").id)
print("models", "llama3" in [m.id for m in client.models.list()])
print("key", os.environ["OPENAI_API_KEY"])
"#,
    )
    .unwrap();
    for (agent, level) in [("py-process", "process"), ("py-none", "none")] {
        s.spawn_agent(
            &token,
            json!({"id": agent, "isolation": {"level": level,
                "read_only_paths": visible.iter().cloned().chain([dir.path().display().to_string()]).collect::<Vec<_>>()}}),
        )
        .await;
        let task = s
            .create(
                &token,
                json!({"agent": agent, "commands": [format!("{} {}", python.display(), script.display())]}),
            )
            .await;
        let view = s.wait_done(&token, &task).await;
        let result = view.result.unwrap();
        assert_eq!(
            result.exit_code,
            Some(0),
            "{level}: {}\n{}",
            result.stdout,
            result.stderr
        );
        let out = result.stdout;
        assert!(
            out.contains(r#"call get_weather {"city":"Oslo"}"#),
            "{level}: {out}"
        );
        assert!(out.contains("model llama3\n"), "{level}: {out}");
        assert!(out.contains("models True\n"), "{level}: {out}");
        // A placeholder: the endpoint needs no key and the fabric's stay home.
        assert!(out.contains("key fabric-agent-endpoint"), "{level}: {out}");

        // A real agent framework, unmodified, runs its two-tool agent there.
        let framework = workspace().join("crates/fabric-server/tests/python/agent_framework.py");
        std::fs::copy(&framework, dir.path().join("agent_framework.py")).unwrap();
        let task = s
            .create(
                &token,
                json!({"agent": agent, "commands": [format!("{} {}", python.display(), dir.path().join("agent_framework.py").display())]}),
            )
            .await;
        let result = s.wait_done(&token, &task).await.result.unwrap();
        assert!(
            result.exit_code == Some(0) && result.stdout.trim_end().ends_with("ok"),
            "{level}: openai-agents: {}\n{}",
            result.stdout,
            result.stderr
        );

        // Metered against the agent, through the OpenAI front end.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (status, usage) = s.get(&token, &format!("/v1/llm/usage?agent={agent}")).await;
            assert_eq!(status, 200, "{usage}");
            if let Some(record) = usage["records"].as_array().and_then(|r| r.first()) {
                assert_eq!(record["agent"], agent, "{usage}");
                assert_eq!(record["api"], "openai", "{usage}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{level}: no usage record: {usage}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    s.stop().await;
}

/// A directory outside /tmp (`/srv/fabric-it-<pid>`) with `venv` bound
/// onto a venv; unmounted and removed on drop.
struct Shown {
    root: PathBuf,
}

impl Shown {
    fn new(venv: &std::path::Path) -> Self {
        let root = PathBuf::from(format!("/srv/fabric-it-{}", std::process::id()));
        std::fs::create_dir_all(root.join("venv")).unwrap();
        let status = std::process::Command::new("mount")
            .args(["--bind"])
            .arg(venv)
            .arg(root.join("venv"))
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot bind {} (root needed)",
            venv.display()
        );
        Self { root }
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(self.root.join("venv"))
            .status()
            .is_ok_and(|s| s.success());
        // Only empty directories: were the bind still there, the venv is below.
        if unmounted {
            let _ = std::fs::remove_dir(self.root.join("venv"));
            let _ = std::fs::remove_dir(&self.root);
        }
    }
}
