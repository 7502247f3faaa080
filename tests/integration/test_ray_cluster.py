"""Synthesis on a real multi-node Ray cluster on loopback: a head node plus a worker node process.
Killing the worker node mid-run re-queues its batches; the result equals an uninterrupted run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
ARGS = ["--set", "synth.worlds=8", "--set", "synth.shard_size=10", "--set", "synth.batch_size=4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node(*args: str) -> subprocess.Popen:
    cmd = [
        str(BIN / "ray"),
        "start",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--disable-usage-stats",
        *args,
    ]
    return subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


@pytest.fixture
def cluster():
    port = free_port()
    head = node("--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false")
    worker = node(f"--address=127.0.0.1:{port}", "--num-cpus=2")
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        status = subprocess.run(
            [str(BIN / "ray"), "status", f"--address={address}"], env=ENV, capture_output=True, text=True
        )
        if status.stdout.count(" node_") >= 2:
            break
        time.sleep(2)
    else:
        kill(worker), kill(head)
        pytest.fail("the 2-node Ray cluster did not come up")
    yield address, worker
    kill(worker)
    kill(head)


def synth(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        str(BIN / "agentfactory"),
        "synth",
        "run",
        str(ROOT / "pipelines/tool_sft.yaml"),
        "--set",
        f"output_dir={out}",
        *ARGS,
        *extra,
    ]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def ids(out: Path) -> list[str]:
    shards = sorted((out / "tool_sft" / "synth" / "shards").glob("part-*.jsonl"))
    return [json.loads(line)["meta"]["id"] for s in shards for line in s.read_text().splitlines()]


def test_killing_a_worker_node_loses_and_duplicates_nothing(cluster, tmp_path):
    address, worker = cluster
    reference = synth(tmp_path / "ref", "--no-ray")
    assert reference.wait(300) == 0, reference.stdout.read()
    expected = ids(tmp_path / "ref")

    run = synth(tmp_path / "run", "--ray-address", address, "--set", "synth.workers=3")
    shards = tmp_path / "run" / "tool_sft" / "synth" / "shards"
    deadline = time.time() + 300
    while time.time() < deadline and run.poll() is None and len(list(shards.glob("part-*.jsonl"))) < 3:
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before the node could be killed"
    kill(worker)  # the worker node dies mid-run, taking its actors with it
    output = run.communicate(timeout=300)[0]
    assert run.returncode == 0, output
    assert "died; re-queueing" in output
    got = ids(tmp_path / "run")
    assert len(got) == len(set(got)), "duplicated records"
    assert sorted(got) == sorted(expected), "lost records"
