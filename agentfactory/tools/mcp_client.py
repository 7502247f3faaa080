"""Real MCP servers as tools: harvest their tool lists, call them with timeouts, survive hangs and crashes.

Servers are listed in `tools_repo/mcp_servers.yaml` (a stdio command, or a streamable-HTTP URL).
`McpConnection` keeps one session open on a private event-loop thread, so synchronous callers
(Ray actors, the episode runner) can use it. A call that exceeds its timeout, or a server that
dies, becomes a `ToolResult(ok=False)` record; the connection is torn down (killing a hung
process) and reopened on the next call, so one bad server never stalls a pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from agentfactory.config import StrictModel, load_config
from agentfactory.records import ToolSpec
from agentfactory.tools.runtime import ToolResult


class McpServerConfig(StrictModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_\-]{0,63}$")
    command: list[str] | None = Field(
        None, description="stdio server: argv; the first item is looked up on PATH"
    )
    url: str | None = Field(None, description="streamable-HTTP server URL, e.g. http://127.0.0.1:8000/mcp")
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    category: str = ""
    timeout_s: float = Field(20.0, gt=0, description="per-call timeout")
    connect_timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of 'command' (stdio) or 'url' (streamable HTTP)")
        if self.command is not None and not self.command:
            raise ValueError("command must not be empty")
        return self


class McpServersFile(StrictModel):
    servers: list[McpServerConfig]


def load_mcp_servers(path: str | Path) -> list[McpServerConfig]:
    return load_config(path, McpServersFile).servers


def _resolve(command: list[str]) -> list[str]:
    """Find the executable on PATH or next to this interpreter (console scripts in the same venv)."""
    exe = command[0]
    if os.sep not in exe and shutil.which(exe) is None:
        local = Path(sys.executable).parent / exe
        if local.exists():
            exe = str(local)
    return [exe, *command[1:]]


def _result_from_mcp(result: Any) -> ToolResult:
    texts = [getattr(c, "text", None) for c in result.content]
    text = "\n".join(t for t in texts if t is not None)
    content: Any = result.structured_content if result.structured_content is not None else text
    if result.structured_content is None:
        with contextlib.suppress(json.JSONDecodeError, TypeError):
            content = json.loads(text)
    if result.is_error:
        return ToolResult(ok=False, error=text or "the MCP tool reported an error")
    return ToolResult(ok=True, content=content)


class McpConnection:
    """A synchronous handle on one MCP server, reconnecting after timeouts and crashes."""

    def __init__(self, server: McpServerConfig, errlog: Any = None):
        self.server = server
        self.errlog = errlog or sys.stderr  # where a stdio server's stderr goes (needs a real file)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"mcp-{server.name}", daemon=True)
        self._thread.start()
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self.reconnects = 0

    # -- lifecycle (runs on the loop thread) ----------------------------------------------------
    async def _open(self) -> Any:
        from mcp import Client, StdioServerParameters
        from mcp.client.stdio import stdio_client

        if self.server.url:
            target: Any = self.server.url
        else:
            cmd = _resolve(self.server.command)
            env = {**os.environ, **self.server.env}
            params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=env, cwd=self.server.cwd)
            target = stdio_client(params, errlog=self.errlog)
        client = Client(target, read_timeout_seconds=self.server.timeout_s)
        stack = contextlib.AsyncExitStack()
        try:
            await asyncio.wait_for(stack.enter_async_context(client), self.server.connect_timeout_s)
        except BaseException:
            await self._close_stack(stack)
            raise
        self._client, self._stack = client, stack
        return client

    @staticmethod
    async def _close_stack(stack: contextlib.AsyncExitStack) -> None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(stack.aclose(), 10)

    async def _drop(self) -> None:
        stack, self._client, self._stack = self._stack, None, None
        if stack is not None:
            await self._close_stack(stack)

    async def _ensure(self) -> Any:
        return self._client if self._client is not None else await self._open()

    def _run(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- public ---------------------------------------------------------------------------------
    def list_tools(self) -> list[ToolSpec]:
        async def go() -> Any:
            client = await self._ensure()
            return await client.list_tools()

        result = self._run(go(), self.server.connect_timeout_s + self.server.timeout_s)
        return [
            ToolSpec(
                name=t.name,
                description=t.description or "",
                parameters=t.input_schema or {"type": "object", "properties": {}},
                returns=t.output_schema,
                source="mcp",
                domain=f"mcp:{self.server.name}",
                category=self.server.category,
                provenance={
                    "server": self.server.name,
                    "transport": "http" if self.server.url else "stdio",
                    "target": self.server.url or " ".join(self.server.command or []),
                },
            )
            for t in result.tools
        ]

    def call(self, name: str, arguments: dict, timeout_s: float | None = None) -> ToolResult:
        """Call a tool; timeouts, crashes and protocol errors become error results, never exceptions."""
        timeout = timeout_s or self.server.timeout_s

        async def go() -> ToolResult:
            try:
                client = await self._ensure()
            except Exception as e:
                await self._drop()  # a mute server is killed; the next call starts a fresh one
                why = _describe(e)
                if isinstance(e, TimeoutError):
                    why = f"no answer to the MCP handshake within {self.server.connect_timeout_s:g}s"
                return ToolResult(ok=False, error=f"MCP server '{self.server.name}' is unavailable: {why}")
            try:
                result = await asyncio.wait_for(client.call_tool(name, arguments), timeout)
            except TimeoutError:
                await self._drop()  # a hung server is killed and restarted on the next call
                self.reconnects += 1
                return ToolResult(ok=False, error=f"MCP tool {name} timed out after {timeout:g}s")
            except Exception as e:
                await self._drop()
                self.reconnects += 1
                return ToolResult(ok=False, error=f"MCP tool {name} failed: {_describe(e)}")
            return _result_from_mcp(result)

        return self._run(go(), timeout + self.server.connect_timeout_s + 15)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._run(self._drop(), 20)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> McpConnection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _describe(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(_describe(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def harvest_mcp(server: McpServerConfig) -> list[ToolSpec]:
    """Connect to one server and return its tools as ToolSpecs with provenance."""
    with McpConnection(server) as conn:
        return conn.list_tools()
