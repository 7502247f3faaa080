"""MCP faults beyond test_mcp.py's (which covers a tool call that hangs and a server dying mid-call),
with real stdio server processes (issue #11): a server that never answers the handshake, and a server
kill -9'd while idle between calls. Each is an error record within a bounded time, the process is
gone, and the connection recovers. Measured: 8 s + 2 s."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil

from agentfactory.tools import McpConnection, McpServerConfig

FLAKY = Path(__file__).parents[1] / "data" / "mcp" / "flaky_server.py"
MUTE = "import time; time.sleep(3600)  # af-mute-mcp-server"


def _mute_servers() -> list[psutil.Process]:
    procs = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "af-mute-mcp-server" in " ".join(p.cmdline()):
                procs.append(p)
        except psutil.Error:
            continue
    return procs


def test_server_that_never_answers_the_handshake_is_an_error_record_and_is_killed():
    server = McpServerConfig(
        name="mute", command=[sys.executable, "-c", MUTE], connect_timeout_s=2, timeout_s=2
    )
    with McpConnection(server) as conn:
        for _ in range(2):  # each call tries a fresh process, and gives up in bounded time
            t0 = time.perf_counter()
            r = conn.call("anything", {})
            took = time.perf_counter() - t0
            assert not r.ok
            assert r.error == "MCP server 'mute' is unavailable: no answer to the MCP handshake within 2s"
            assert took < 15, took
            deadline = time.time() + 10
            while _mute_servers() and time.time() < deadline:
                time.sleep(0.1)
            assert not _mute_servers(), "the mute server process was left running"


def test_server_killed_while_idle_is_an_error_record_then_a_fresh_process():
    server = McpServerConfig(name="flaky", command=[sys.executable, str(FLAKY)], timeout_s=5)
    with McpConnection(server) as conn:
        first = int(conn.call("pid", {}).content)
        os.kill(first, signal.SIGKILL)  # between two calls, nobody waiting on it
        time.sleep(0.5)
        t0 = time.perf_counter()
        lost = conn.call("echo", {"text": "hello"})
        assert not lost.ok and lost.error.startswith("MCP tool echo failed:") and "closed" in lost.error
        assert time.perf_counter() - t0 < 10
        again = conn.call("echo", {"text": "hello"})  # reconnected: a fresh server process
        assert again.ok and again.content == "hello"
        assert int(conn.call("pid", {}).content) != first and conn.reconnects == 1
