"""Serve any YAML domain as an MCP server (stdio or streamable HTTP), one world per client session.

`agentfactory tools serve-mcp retail_orders` makes the domain's tools usable from any MCP
client (an IDE, another agent framework, our own harvester). Each stdio client (its own server
process) and each stateful HTTP session gets its own `ToolRuntime` over world `seed`, so
clients never see each other's writes; stateless (2026-07-28) HTTP clients share one world.
Invalid arguments and declared errors come back as `is_error` results the model can read.
"""

from __future__ import annotations

from typing import Any

from agentfactory.tools.domain import Domain
from agentfactory.tools.runtime import ToolRuntime


def build_server(domain: Domain, seed: int = 0) -> Any:
    """A low-level `mcp` Server exposing the domain's tools over per-session worlds."""
    import mcp_types as types
    from mcp.server.lowlevel import Server

    runtimes: dict[str, ToolRuntime] = {}
    tools = [
        types.Tool(name=t.name, description=t.description, input_schema=t.parameters) for t in domain.tools
    ]

    def runtime_for(ctx: Any) -> ToolRuntime:
        # mcp 2.x builds a Connection per request on the stateless 2026-07-28 protocol, so the
        # world is keyed by the HTTP session id when the client has one (handshake-era HTTP),
        # else it belongs to the server process (one stdio client per process).
        conn = getattr(ctx.session, "_connection", None)
        key = getattr(conn, "session_id", None) or "process"
        if key not in runtimes:
            runtimes[key] = ToolRuntime(domain, seed=seed)
        return runtimes[key]

    async def list_tools(ctx: Any, params: Any) -> Any:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: Any) -> Any:
        result = runtime_for(ctx).call(params.name, params.arguments or {})
        text = result.to_message_content()
        structured = result.content if result.ok and isinstance(result.content, dict) else None
        return types.CallToolResult(
            content=[types.TextContent(text=text)], structured_content=structured, is_error=not result.ok
        )

    instructions = f"{domain.description.strip()}\n\nPolicy:\n{domain.policy.strip()}"
    return Server(
        f"agentfactory-{domain.name}",
        version="1",
        instructions=instructions,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def serve_stdio(domain: Domain, seed: int = 0) -> None:
    import anyio
    from mcp.server.stdio import stdio_server

    server = build_server(domain, seed)

    async def main() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)


def serve_http(domain: Domain, seed: int = 0, host: str = "127.0.0.1", port: int = 8765) -> None:
    import uvicorn

    app = build_server(domain, seed).streamable_http_app(host=host)
    uvicorn.run(app, host=host, port=port, log_level="warning")
