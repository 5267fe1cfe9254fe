"""A remote MCP server over Streamable HTTP, built with the official Python
SDK (sessions and event-stream answers, its defaults), that refuses any
request without `Authorization: Bearer <token>`.

    python remote_mcp_server.py PORT TOKEN
"""

import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse

port, token = int(sys.argv[1]), sys.argv[2]
server = MCPServer("remote")


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two numbers."""
    return a + b


class RequireToken(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        if request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return await call_next(request)


app = server.streamable_http_app()
app.add_middleware(RequireToken)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
