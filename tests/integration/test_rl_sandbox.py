"""Sandbox security (real bubblewrap): code run by CodeEnv cannot reach the network, write outside its
work dir, read host secrets, fork-bomb the host, exhaust memory or outrun its time limit. Each attack
is contained (checked from the host side) and reported (a status, never an exception)."""

import os
import socket
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from agentfactory.records import Message, Trajectory
from agentfactory.rl.envs import CodeEnv, CodeEnvConfig
from agentfactory.rl.sandbox import SandboxConfig, bwrap_available, run_in_sandbox

pytestmark = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap (bwrap) not installed")

FAST = SandboxConfig(wall_seconds=6, cpu_seconds=2, memory_mb=256, max_processes=16)


def run(code: str, *args: str, config: SandboxConfig = FAST):
    return run_in_sandbox({"main.py": textwrap.dedent(code)}, ["input/main.py", *args], config)


def leftover(marker: str) -> list[int]:
    """Host pids whose command line carries `marker` (processes that escaped the sandbox's end)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker.encode() in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


def test_no_network_not_even_the_hosts_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    result = run(
        f"""
        import socket
        def attempt(f):
            try:
                return "reached: " + str(f())
            except OSError as e:
                return f"blocked: {{type(e).__name__}}"
        print("host loopback", attempt(lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2)))
        print("internet", attempt(lambda: socket.create_connection(("1.1.1.1", 53), timeout=2)))
        print("dns", attempt(lambda: socket.getaddrinfo("example.com", 80)))
        print("interfaces", sorted(n for _, n in socket.if_nameindex()))
        """
    )
    stop.set()
    thread.join()
    server.close()
    assert result.status == "ok", result
    lines = result.stdout.splitlines()
    assert lines[0].startswith("host loopback blocked") and lines[1].startswith("internet blocked")
    assert lines[2].startswith("dns blocked") and lines[3] == "interfaces ['lo']"
    assert accepted == []  # nothing reached the host's listening socket


def test_cannot_write_outside_its_work_dir_or_change_its_inputs(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o777)
    os.chmod(outside, 0o777)  # world-writable on the host: only the mount namespace protects it
    targets = [
        str(outside / "escaped"),
        "/usr/escaped",
        "/escaped",
        "/proc/sys/kernel/hostname",
        "/work/input/solution.py",
    ]
    result = run(
        f"""
        for path in {targets!r}:
            try:
                with open(path, "w") as f:
                    f.write("pwned")
                print(path, "WRITTEN")
            except OSError as e:
                print(path, "blocked", type(e).__name__)
        with open("/work/scratch.txt", "w") as f:
            f.write("fine")
        print("work dir", open("/work/scratch.txt").read())
        """
    )
    assert result.status == "ok", result
    assert "WRITTEN" not in result.stdout and result.stdout.count("blocked") == len(targets)
    assert "work dir fine" in result.stdout
    assert (
        list(outside.iterdir()) == [] and not Path("/usr/escaped").exists() and not Path("/escaped").exists()
    )


def test_cannot_read_host_secrets(tmp_path, monkeypatch):
    secret = f"SECRET-{uuid.uuid4().hex}"
    home_file = Path.home() / f".af-sandbox-secret-{uuid.uuid4().hex[:8]}"
    world_readable = tmp_path / "secret.txt"
    monkeypatch.setenv("AF_SANDBOX_SECRET", secret)
    try:
        home_file.write_text(secret)
        world_readable.write_text(secret)
        os.chmod(world_readable, 0o644)
        os.chmod(tmp_path, 0o755)
        paths = [
            str(home_file),
            str(world_readable),
            "/etc/shadow",
            "/proc/1/environ",
            str(Path.cwd() / "pyproject.toml"),
        ]
        result = run(
            f"""
            import os
            print("env", sorted(os.environ))
            for path in {paths!r}:
                try:
                    print(path, "READ", open(path).read()[:4000])
                except OSError as e:
                    print(path, "blocked", type(e).__name__)
            print("home", os.listdir(os.path.expanduser("~")), "root" in os.listdir("/"))
            """
        )
    finally:
        home_file.unlink(missing_ok=True)
    assert result.status == "ok", result
    assert secret not in result.stdout + result.stderr
    assert result.stdout.count("blocked") == len(paths) - 1  # /proc/1/environ: the sandbox's own init
    assert "/proc/1/environ READ PATH=" in result.stdout and "CONTAINER" not in result.stdout
    assert "AF_SANDBOX_SECRET" not in result.stdout, result.stdout
    assert "home ['input'] False" in result.stdout  # HOME is the work dir; no /root at all


def test_a_fork_bomb_is_contained_and_leaves_no_process_behind():
    marker = f"forkbomb-{uuid.uuid4().hex}"
    start = time.monotonic()
    result = run(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        marker,
        config=FAST.model_copy(update={"wall_seconds": 4}),
    )
    assert time.monotonic() - start < 10
    assert result.status in ("timeout", "cpu_limit", "killed"), result
    time.sleep(0.5)
    assert leftover(marker) == []


def test_memory_exhaustion_is_contained():
    result = run(
        """
        chunks = []
        try:
            while True:
                chunks.append(bytearray(16 << 20))
        except MemoryError:
            print("capped at", len(chunks) * 16, "MiB")
        for path, size in (("/work/fill", 64), ("/tmp/fill", 64)):
            try:
                with open(path, "wb") as f:
                    for _ in range(size):
                        f.write(b"x" * (1 << 20))
                print(path, "FILLED")
            except OSError as e:
                print(path, "blocked", e.strerror)
        """
    )
    assert result.status == "ok", result
    capped = int(result.stdout.split()[2])
    assert capped < FAST.memory_mb
    assert "FILLED" not in result.stdout and result.stdout.count("blocked") == 2
    huge = run("x = bytearray(4 << 30)")
    assert huge.status == "error" and "MemoryError" in huge.detail


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("while True: pass", "cpu_limit"),
        ("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass", "killed"),
        ("import time\ntime.sleep(60)", "timeout"),
    ],
)
def test_time_limits_end_runaway_code(code, status):
    """CPU limits are CPU seconds (1 s soft, 2 s hard here): on a loaded machine they take longer in
    wall time, so the wall limit is set well above them."""
    start = time.monotonic()
    result = run(
        code,
        config=FAST.model_copy(update={"cpu_seconds": 1, "wall_seconds": 20 if status != "timeout" else 3}),
    )
    assert result.status == status, result
    assert time.monotonic() - start < 25


def test_a_detached_sleeper_dies_with_the_sandbox():
    marker = f"sleeper-{uuid.uuid4().hex}"
    result = run(
        """
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            time.sleep(120)
        print("parent done")
        """,
        marker,
    )
    assert result.status == "ok" and "parent done" in result.stdout
    time.sleep(0.5)
    assert leftover(marker) == []


@pytest.mark.parametrize(
    "attack",
    [
        "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)",
        "open('/etc/hostname-pwned', 'w').write('x')",
        "import os\nwhile True:\n    os.fork()",
        "x = bytearray(1 << 33)",
        "while True: pass",
    ],
)
def test_hostile_code_env_solutions_score_zero_and_are_reported(attack):
    env = CodeEnv(CodeEnvConfig(sandbox=FAST.model_copy(update={"wall_seconds": 4}), per_test_seconds=1))
    task = env.reset(3)
    body = textwrap.indent(attack, "    ")
    text = f"```python\ndef gcd(a, b):\n{body}\n    return 1\n```"
    traj = Trajectory(task_id=task.id, messages=[*task.prompt, Message(role="assistant", content=text)])
    reward = env.score(task, traj)
    assert reward.components["correct"] == 0.0 and reward.total <= 0.0
    assert reward.components["pass_rate"] < 1.0


def test_a_sandbox_that_cannot_start_is_reported_as_such():
    result = run("print(1)", config=FAST.model_copy(update={"python": "/usr/bin/no-such-python"}))
    assert result.status == "sandbox_error" and "no-such-python" in result.detail
    missing = run_in_sandbox({"../x": ""}, ["x"])
    assert missing.status == "sandbox_error" and "bad input file name" in missing.detail
