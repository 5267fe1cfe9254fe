"""An agent that uses its tools through the fabric's MCP gateway (MCP_URL),
with the official Python `mcp` SDK. It leases tasks over the agent protocol;
each task's prompt is one JSON instruction, and the task's stdout the JSON
answer:

    {"op": "list"}                                   -> {"tools": [names]}
    {"op": "call", "name": N, "arguments": {...}}    -> {"ok": true, "is_error": b, "text": ..., "structured": ...}
                                                        or {"ok": false, "code": c, "message": m}
    {"op": "env"}                                    -> {"env": {...}}  (what the agent was given)
"""

import asyncio
import json
import os
import sys
import urllib.error
import urllib.request

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

URL = os.environ["FABRIC_URL"].rstrip("/")
TOKEN = os.environ["FABRIC_TOKEN"]
MCP_URL = os.environ["MCP_URL"]


def api(path, body=None, timeout=40, traceparent=None):
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    if traceparent:
        headers["traceparent"] = traceparent
    data = json.dumps(body).encode() if body is not None else b""
    req = urllib.request.Request(URL + path, data=data, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None)


async def run(instruction, traceparent):
    op = instruction["op"]
    if op == "env":
        return {"env": dict(os.environ)}
    headers = {"traceparent": traceparent} if traceparent else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(120.0))
    async with Client(streamable_http_client(MCP_URL, http_client=http)) as client:
        if op == "list":
            listed = await client.list_tools()
            return {"tools": sorted(t.name for t in listed.tools), "protocol": client.protocol_version}
        try:
            result = await client.call_tool(instruction["name"], instruction.get("arguments", {}))
        except MCPError as e:
            return {"ok": False, "code": e.code, "message": str(e)}
        text = "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")
        return {"ok": True, "is_error": bool(result.is_error), "text": text,
                "structured": result.structured_content}


def main():
    while True:
        try:
            status, lease = api("/v1/agent/lease?wait=30")
        except (urllib.error.URLError, OSError) as e:
            print(f"lease failed: {e}", file=sys.stderr)
            continue
        if status != 200:
            continue
        task, epoch = lease["task"], lease["epoch"]
        traceparent = task.get("traceparent")
        try:
            answer = asyncio.run(run(json.loads(task["input"]["prompt"]), traceparent))
            result = {"stdout": json.dumps(answer), "stderr": "", "exit_code": 0}
        except Exception as e:  # noqa: BLE001 - the task reports whatever went wrong
            result = {"stdout": "", "stderr": f"{type(e).__name__}: {e}", "exit_code": 1}
        print(f"task {task['id']}: {result['stdout'][:200]}{result['stderr'][:200]}", flush=True)
        api(f"/v1/agent/tasks/{task['id']}/complete",
            {"epoch": epoch, "status": "completed", "result": result}, traceparent=traceparent)


if __name__ == "__main__":
    main()
