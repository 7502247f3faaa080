"""Real MCP servers over stdio and HTTP: harvest, real calls, hangs, crashes, and our own domain server."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from mcp import Client, StdioServerParameters

from agentfactory.tools import McpConnection, McpServerConfig, harvest_mcp, load_mcp_servers

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
FLAKY = ROOT / "tests" / "data" / "mcp" / "flaky_server.py"


def test_harvest_and_call_mcp_server_time():
    server = McpServerConfig(
        name="time", command=["mcp-server-time", "--local-timezone", "UTC"], category="time"
    )
    specs = harvest_mcp(server)
    by_name = {s.name: s for s in specs}
    assert {"get_current_time", "convert_time"} <= set(by_name)
    spec = by_name["convert_time"]
    assert spec.source == "mcp" and spec.category == "time" and spec.provenance["server"] == "time"
    assert {"source_timezone", "time", "target_timezone"} <= set(spec.parameters["properties"])
    with McpConnection(server) as conn:
        r = conn.call(
            "convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
        )
        assert r.ok, r.error
        assert r.content["target"]["datetime"].split("T")[1].startswith("21:00")
        bad = conn.call(
            "convert_time", {"source_timezone": "Mars/Olympus", "time": "12:00", "target_timezone": "UTC"}
        )
        assert not bad.ok and "Mars/Olympus" in bad.error


def test_mcp_server_git_on_a_temporary_repository(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "hello.txt").write_text("hello\n")
    subprocess.run([*git, "add", "hello.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "first commit"], check=True)
    (repo / "hello.txt").write_text("hello world\n")
    server = McpServerConfig(name="git", command=["mcp-server-git", "--repository", str(repo)])
    specs = harvest_mcp(server)
    assert {"git_status", "git_log", "git_diff_unstaged"} <= {s.name for s in specs}
    with McpConnection(server) as conn:
        log = conn.call("git_log", {"repo_path": str(repo)})
        assert log.ok and "first commit" in json.dumps(log.content)
        diff = conn.call("git_diff_unstaged", {"repo_path": str(repo)})
        assert diff.ok and "+hello world" in json.dumps(diff.content)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_hung_and_crashed_servers_become_error_records_and_reconnect():
    server = McpServerConfig(name="flaky", command=[sys.executable, str(FLAKY)], timeout_s=2)
    with McpConnection(server) as conn:
        first_pid = int(conn.call("pid", {}).content)
        t0 = time.perf_counter()
        hung = conn.call("hang", {})
        assert not hung.ok and hung.error == "MCP tool hang timed out after 2s"
        assert time.perf_counter() - t0 < 10
        deadline = time.time() + 10
        while _alive(first_pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(first_pid), "the hung server process was not killed"
        second_pid = int(conn.call("pid", {}).content)  # reconnected: a fresh process
        assert second_pid != first_pid
        died = conn.call("die", {})
        assert not died.ok and "failed" in died.error
        assert conn.call("echo", {"text": "still here"}).content == "still here"
        assert conn.reconnects == 2


def test_unstartable_server_is_an_error_record():
    server = McpServerConfig(name="nope", command=["definitely-not-an-mcp-server"], connect_timeout_s=5)
    with McpConnection(server) as conn:
        r = conn.call("anything", {})
    assert not r.ok and "unavailable" in r.error


def test_shipped_mcp_servers_file_loads():
    names = [s.name for s in load_mcp_servers(ROOT / "tools_repo" / "mcp_servers.yaml")]
    assert {"time", "git", "retail_orders"} <= set(names)


async def _session_calls(client: Client, order_id: str) -> tuple:
    listed = await client.list_tools()
    bad = await client.call_tool("cancel_order", {"order_id": order_id})  # reason missing
    ok = await client.call_tool("cancel_order", {"order_id": order_id, "reason": "no longer needed"})
    after = await client.call_tool("get_order", {"order_id": order_id})
    return listed, bad, ok, after


def _pending_order(seed: int = 0) -> str:
    from agentfactory.tools import ToolRuntime, find_domain

    rt = ToolRuntime(find_domain("retail_orders"), seed=seed)
    return sorted(k for k, o in rt.state["orders"].items() if o["status"] == "pending")[0]


def test_serve_domain_over_stdio_with_per_session_state():
    order_id = _pending_order()
    params = StdioServerParameters(
        command=str(BIN / "agentfactory"), args=["tools", "serve-mcp", "retail_orders"]
    )

    async def main() -> tuple:
        async with Client(params) as a:
            first = await _session_calls(a, order_id)
        async with Client(params) as b:  # a new session starts from the same fresh world
            fresh = await b.call_tool("get_order", {"order_id": order_id})
        return first, fresh

    (listed, bad, ok, after), fresh = asyncio.run(main())
    assert {t.name for t in listed.tools} >= {"get_order", "cancel_order", "find_user_by_email"}
    assert bad.is_error and "invalid arguments for cancel_order" in bad.content[0].text
    assert not ok.is_error and ok.structured_content["status"] == "cancelled"
    assert json.loads(after.content[0].text)["status"] == "cancelled"
    assert json.loads(fresh.content[0].text)["status"] == "pending"


def test_serve_domain_over_http():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(BIN / "agentfactory"), "tools", "serve-mcp", "retail_orders", "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        specs = harvest_mcp(McpServerConfig(name="retail-http", url=url))
        assert "cancel_order" in {t.name for t in specs}
        with McpConnection(McpServerConfig(name="retail-http", url=url)) as conn:
            order_id = _pending_order()
            r = conn.call("cancel_order", {"order_id": order_id, "reason": "ordered by mistake"})
            assert r.ok and r.content["cancel_reason"] == "ordered by mistake"
            assert conn.call("get_order", {"order_id": order_id}).content["status"] == "cancelled"
    finally:
        proc.terminate()
        proc.wait(10)
