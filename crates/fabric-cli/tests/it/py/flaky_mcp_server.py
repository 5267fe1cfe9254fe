"""A small stdio MCP server (standard library only) with tools that
misbehave on purpose: `crash` exits the process, `hang` never answers,
`big` answers more than a result limit, `echo` answers its arguments.
Each answer names the process (a random id), so a restart shows."""

import json
import os
import sys
import time

# Names this process: a restarted server answers with another.
INSTANCE = os.urandom(8).hex()

TOOLS = [
    {"name": name, "description": desc, "inputSchema": {"type": "object"}}
    for name, desc in [("echo", "answers its arguments"), ("crash", "exits the server"),
                       ("hang", "never answers"), ("big", "answers 200 kB")]
]


def reply(id, result=None, error=None):
    message = {"jsonrpc": "2.0", "id": id}
    message["error" if error else "result"] = error or result
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    message = json.loads(line)
    method, id = message.get("method"), message.get("id")
    if id is None:
        continue
    if method == "initialize":
        reply(id, {"protocolVersion": message["params"]["protocolVersion"], "capabilities": {"tools": {}},
                   "serverInfo": {"name": "flaky", "version": "1"}})
    elif method == "tools/list":
        reply(id, {"tools": TOOLS})
    elif method == "tools/call":
        name, args = message["params"]["name"], message["params"].get("arguments", {})
        if name == "crash":
            print("crashing on purpose", file=sys.stderr, flush=True)
            os._exit(3)
        if name == "hang":
            time.sleep(3600)
        text = "x" * 200_000 if name == "big" else json.dumps({"instance": INSTANCE, "args": args})
        reply(id, {"content": [{"type": "text", "text": text}], "isError": False})
    else:
        reply(id, error={"code": -32601, "message": f"no {method}"})
