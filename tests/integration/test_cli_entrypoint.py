"""The installed `agentfactory` console script, run as a user would: real processes, real exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent / "agentfactory"
BAD = Path(__file__).parents[1] / "data" / "bad_domains"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=os.environ
    )


def test_bad_domains_exit_1_with_one_line_per_error_and_no_traceback():
    r = run("domains", "validate", *map(str, sorted(BAD.glob("*.yaml"))))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) >= len(list(BAD.glob("*.yaml")))
    assert all(line.startswith(str(BAD)) for line in lines), lines


def test_run_quickstart_and_resolved_config(tmp_path):
    """The console script runs the data stages of the quickstart (the model stages: the smoke test)."""
    root = Path(__file__).parents[2]
    r = run(
        "run",
        str(root / "pipelines/quickstart.yaml"),
        "--set",
        f"output_dir={tmp_path}",
        *[
            x
            for stage in ("corpus", "tokenizer", "pretrain", "sft", "rl", "eval")
            for x in ("--set", f"{stage}=null")
        ],
        "--set",
        "synth.worlds=1",
        "--set",
        "synth.domains=[retail_orders,smart_home]",
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    assert "retail_orders" in r.stdout
    summary = json.loads((tmp_path / "quickstart" / "summary.json").read_text())
    assert summary["synth"]["accepted"] > 5 and summary["synth"]["rows"] == summary["synth"]["accepted"]
    cfg = json.loads((tmp_path / "quickstart" / "config.json").read_text())
    assert cfg["output_dir"] == str(tmp_path)
