"""The fabric as an MCP server, driven by the official Python `mcp` SDK.

    python mcp_fabric.py http     # /mcp over Streamable HTTP: 2026-07-28 (auto) and 2025-11-25 (legacy)
    python mcp_fabric.py stdio    # `reactor-fabric mcp serve` as a stdio server

Environment: FABRIC_URL, FABRIC_TOKEN (http), FABRIC_CLI and FABRIC_CONFIG
(stdio: the CLI uses the stored login). Prints "<mode>: ok" at the end.
"""

import asyncio
import os
import sys

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client


async def exercise(client: Client, label: str) -> None:
    listed = await client.list_tools()
    names = {tool.name for tool in listed.tools}
    expected = {"create_task", "get_task", "wait_task", "list_tasks", "cancel_task",
                "list_agents", "list_approvals", "decide_approval"}
    assert expected <= names, f"{label}: tools/list gave {sorted(names)}"

    created = await client.call_tool("create_task", {"commands": [f"echo hello-from-{label}"]})
    assert not created.is_error, f"{label}: create_task failed: {created.content}"
    task = created.structured_content
    assert task["status"] in ("queued", "running", "completed"), task

    waited = await client.call_tool("wait_task", {"task_id": task["id"], "timeout_seconds": 60})
    assert not waited.is_error, waited.content
    done = waited.structured_content
    assert done["status"] == "completed", done
    assert f"hello-from-{label}" in done["result"]["stdout"], done["result"]

    listed = await client.call_tool("list_tasks", {"limit": 5})
    assert task["id"] in [t["id"] for t in listed.structured_content["tasks"]]

    agents = await client.call_tool("list_agents", {})
    assert "shell" in [a["config"]["id"] for a in agents.structured_content["agents"]], agents.structured_content

    # The API's refusals are tool errors the model can read and act on.
    bad = await client.call_tool("get_task", {"task_id": "not-a-task-id"})
    assert bad.is_error, bad
    assert "invalid_request" in bad.content[0].text, bad.content[0].text
    misspelt = await client.call_tool("wait_task", {"task": task["id"]})
    assert misspelt.is_error and "unknown argument" in misspelt.content[0].text, misspelt.content

    # A finished task cannot be canceled: 409 from the API, an error here.
    late = await client.call_tool("cancel_task", {"task_id": task["id"]})
    assert late.is_error, late

    print(f"{label}: protocol {client.protocol_version}, tools {len(names)}")


async def over_http() -> None:
    url = os.environ["FABRIC_URL"] + "/mcp"
    headers = {"Authorization": f"Bearer {os.environ['FABRIC_TOKEN']}"}
    # Without the token: the API's 401, as an error the client raises.
    try:
        async with Client(streamable_http_client(url, http_client=httpx2.AsyncClient())) as client:
            await client.list_tools()
        raise AssertionError("the fabric answered /mcp without a token")
    except AssertionError:
        raise
    except Exception as e:  # noqa: BLE001 - any refusal will do; what matters is that it refused
        print(f"no token: refused ({type(e).__name__})")

    for mode in ("auto", "legacy"):
        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(120.0))
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            expected = "2026-07-28" if mode == "auto" else "2025-11-25"
            assert client.protocol_version == expected, (mode, client.protocol_version)
            await exercise(client, f"http-{mode}")
    print("http: ok")


async def over_stdio() -> None:
    env = {key: os.environ[key] for key in ("PATH", "HOME", "FABRIC_URL", "FABRIC_CONFIG") if key in os.environ}
    params = StdioServerParameters(command=os.environ["FABRIC_CLI"], args=["mcp", "serve"], env=env)
    for mode in ("auto", "legacy"):
        async with Client(params, mode=mode) as client:
            await exercise(client, f"stdio-{mode}")
    print("stdio: ok")


if __name__ == "__main__":
    mode = sys.argv[1]
    asyncio.run({"http": over_http, "stdio": over_stdio}[mode]())
