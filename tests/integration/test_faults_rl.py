"""Fault injection for the RL loop's resume logic (issue #11): a run (the scripted math engine, no
vLLM: tests/data/rl/scripted_rl.py) is kill -9'd at 10 seeded random moments — during start-up,
mid-iteration, while writing a checkpoint — and resumed each time. Every resume continues from the
last checkpoint on disk; at the end metrics.jsonl has exactly one row per iteration 1..N, each equal
to an uninterrupted run's (timings aside). On the real vLLM engine via `agentfactory rl run`:
test_faults_vllm.py. Measured: 56-70 s on 2 busy cores."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DRIVER = ROOT / "tests" / "data" / "rl" / "scripted_rl.py"
ITERATIONS = 150
KILLS = 10


@pytest.fixture(scope="module")
def debug_model(tmp_path_factory) -> Path:
    from tests.unit.fakes import tiny_math_checkpoint

    return tiny_math_checkpoint(tmp_path_factory.mktemp("rl-faults") / "model")


def start(model: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(model), str(out), str(ITERATIONS)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def own_rows(out: Path, since_ns: int) -> int:
    """Rows on disk once this process has resumed (it rewrites the file first, dropping stale rows)."""
    path = out / "metrics.jsonl"
    try:
        return len(rows(out)) if path.stat().st_mtime_ns > since_ns else 0
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def writing(out: Path, since_ns: int) -> bool:
    try:
        return (out / "checkpoint.tmp").stat().st_mtime_ns > since_ns
    except FileNotFoundError:
        return False


def checkpoint_iteration(out: Path) -> int:
    """The iteration a resume will start from (the `.old` copy counts: a kill mid-swap leaves it)."""
    for name in ("checkpoint", "checkpoint.old"):
        info = out / name / "trainer.json"
        if info.exists():
            return json.loads(info.read_text())["iteration"]
    return 0


def comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(("time/", "sync/"))}


def test_kill_9_rl_at_ten_random_points_and_resume(debug_model, tmp_path):
    t_start = time.perf_counter()
    reference = start(debug_model, tmp_path / "ref")
    output = reference.communicate(timeout=300)[0]
    assert reference.returncode == 0, output
    expected = rows(tmp_path / "ref")
    assert [r["iteration"] for r in expected] == list(range(1, ITERATIONS + 1))

    out = tmp_path / "run"
    rng = random.Random(7)
    triggers = ["rows"] * 4 + ["seconds"] * 3 + ["checkpoint"] * 3
    rng.shuffle(triggers)
    delays = [rng.uniform(lo, hi) for lo, hi in ((0.3, 2.0), (2.0, 3.5), (3.5, 5.0))]  # stratified
    rng.shuffle(delays)
    log, resumed_at = [], []
    for k in range(KILLS):
        ckpt = checkpoint_iteration(out)
        started = time.time_ns()
        proc = start(debug_model, out)
        if triggers[k] == "rows":  # mid-run, ≥ 1 new checkpoint (every 2 iterations) written
            target = ckpt + rng.randint(3, 6)
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline and own_rows(out, started) < target:
                time.sleep(0.01)
        elif triggers[k] == "checkpoint":  # while it writes a checkpoint (into checkpoint.tmp/)
            target = "writing"
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline and not writing(out, started):
                time.sleep(0.002)
        else:  # anywhere: imports, model load, an iteration, a checkpoint write
            target = round(delays.pop(), 2)
            time.sleep(target)
        assert proc.poll() is None, f"round {k}: the run ended before its kill point\n{proc.stdout.read()}"
        os.killpg(proc.pid, signal.SIGKILL)
        text = proc.communicate(timeout=30)[0]
        if m := re.search(r"resumed from\s+\S+\s+at\s+iteration\s+(\d+)", text):
            resumed_at.append(int(m.group(1)))
            assert int(m.group(1)) == ckpt, f"round {k} resumed at {m.group(1)}, last checkpoint {ckpt}"
        got = [r["iteration"] for r in rows(out)]
        assert got == list(range(1, len(got) + 1)), f"round {k}: metrics rows {got}"
        log.append((k, triggers[k], target, ckpt, len(got), checkpoint_iteration(out)))
    print(
        "kills (round, trigger, at, checkpoint before, rows at kill, checkpoint after):",
        *log,
        f"resumed at {resumed_at}",
        sep="\n  ",
    )
    assert len(resumed_at) >= 4 and max(resumed_at) > 0
    assert 0 < checkpoint_iteration(out) < ITERATIONS

    final = start(debug_model, out)
    output = final.communicate(timeout=300)[0]
    assert final.returncode == 0, output
    assert f"resumed from {out / 'checkpoint'} at iteration {log[-1][-1]}" in " ".join(output.split())
    got = rows(out)
    assert [r["iteration"] for r in got] == list(range(1, ITERATIONS + 1)), "duplicated or missing rows"
    assert [comparable(r) for r in got] == [comparable(r) for r in expected]
    assert checkpoint_iteration(out) == ITERATIONS
    assert json.loads((out / "summary.json").read_text())["iterations"] == ITERATIONS
    print(f"total {time.perf_counter() - t_start:.1f} s")
