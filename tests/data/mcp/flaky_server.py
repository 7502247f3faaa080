"""A real MCP server over stdio that misbehaves on purpose: `echo` works, `hang` never answers,
`die` kills the process mid-call. Used to test timeouts, crash records and reconnects."""

import os
import sys

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

TOOLS = [
    types.Tool(
        name="echo",
        description="Echo the text back.",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
    ),
    types.Tool(name="hang", description="Never returns.", input_schema={"type": "object", "properties": {}}),
    types.Tool(
        name="die", description="Crashes the server.", input_schema={"type": "object", "properties": {}}
    ),
    types.Tool(
        name="pid", description="The server's process id.", input_schema={"type": "object", "properties": {}}
    ),
]


async def list_tools(ctx, params):
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx, params):
    args = params.arguments or {}
    if params.name == "hang":
        await anyio.sleep(3600)
    if params.name == "die":
        sys.stdout.flush()
        os._exit(3)
    text = str(os.getpid()) if params.name == "pid" else args.get("text", "")
    return types.CallToolResult(content=[types.TextContent(text=text)])


async def main():
    server = Server("flaky", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
