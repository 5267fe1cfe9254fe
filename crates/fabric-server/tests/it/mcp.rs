//! Issue #20 in process: MCP server instances, shared or one per agent, as
//! agents (isolation `none`, confined) reach them at their `MCP_URL`.

use serde_json::json;

use crate::harness::TestServer;

/// A stdio MCP server (Python's standard library) whose one tool answers
/// with an id made at its start: which instance answered.
const INSTANCE_SERVER: &str = r#"
import json, os, sys
me = os.urandom(6).hex()
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m:
        continue
    if m["method"] == "initialize":
        r = {"protocolVersion": m["params"]["protocolVersion"], "capabilities": {"tools": {}}, "serverInfo": {"name": "who", "version": "1"}}
    elif m["method"] == "tools/list":
        r = {"tools": [{"name": "whoami", "inputSchema": {"type": "object"}}]}
    else:
        r = {"content": [{"type": "text", "text": "instance-" + me}]}
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
"#;

/// The instance ids two calls of `agent` got, in order.
async fn two_calls(s: &TestServer, token: &str, agent: &str, tool: &str) -> Vec<String> {
    let call = format!(
        r#"curl -sf $MCP_URL -H 'Content-Type: application/json' -d '{{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {{"name": "{tool}", "arguments": {{}}}}}}'; echo"#
    );
    let id = s
        .create(
            token,
            json!({"agent": agent, "commands": [call.clone(), call]}),
        )
        .await;
    let view = s.wait_done(token, &id).await;
    let stdout = view.result.unwrap_or_default().stdout;
    let ids: Vec<String> = stdout
        .split("instance-")
        .skip(1)
        .map(|rest| rest.chars().take(12).collect())
        .collect();
    assert_eq!(ids.len(), 2, "{stdout}");
    ids
}

#[tokio::test]
async fn per_agent_servers_get_an_instance_each_and_shared_ones_one_for_all() {
    let s = TestServer::start().await;
    let token = s.login().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("who.py"), INSTANCE_SERVER).unwrap();
    for (name, instance) in [("mine", "per_agent"), ("ours", "shared")] {
        let (status, body) = s
            .post(
                &token,
                "/v1/mcp/servers",
                json!({"name": name, "isolation": "none", "instance": instance,
                       "command": format!("/usr/bin/python3 {}/who.py", dir.path().display()),
                       "read_only_paths": [dir.path().display().to_string()]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["instance"], instance);
    }
    for agent in ["a1", "a2"] {
        s.spawn_agent(
            &token,
            json!({"id": agent, "tools": ["mine/*", "ours/whoami"]}),
        )
        .await;
    }
    let a1 = two_calls(&s, &token, "a1", "mine__whoami").await;
    let a2 = two_calls(&s, &token, "a2", "mine__whoami").await;
    assert_eq!(a1[0], a1[1], "one agent keeps its instance");
    assert_eq!(a2[0], a2[1]);
    assert_ne!(a1[0], a2[0], "per_agent: each agent its own");
    let shared1 = two_calls(&s, &token, "a1", "ours__whoami").await;
    let shared2 = two_calls(&s, &token, "a2", "ours__whoami").await;
    assert!(
        shared1.iter().chain(&shared2).all(|id| *id == shared1[0]),
        "shared: one for all: {shared1:?} {shared2:?}"
    );

    // Removing a server: gone from the API, and its tools from the agents.
    let (status, _) = s.delete(&token, "/v1/mcp/servers/mine").await;
    assert_eq!(status, 204);
    let (status, body) = s.get(&token, "/v1/mcp/servers/mine").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(crate::harness::error_code(&body), "not_found");
    let call = r#"curl -s $MCP_URL -H 'Content-Type: application/json' -d '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "mine__whoami", "arguments": {}}}'"#;
    let id = s
        .create(&token, json!({"agent": "a1", "commands": [call]}))
        .await;
    let stdout = s
        .wait_done(&token, &id)
        .await
        .result
        .unwrap_or_default()
        .stdout;
    assert!(stdout.contains("unknown tool"), "{stdout}");
}
