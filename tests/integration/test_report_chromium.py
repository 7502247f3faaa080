"""`agentfactory run pipelines/quickstart.yaml --smoke`: every stage leaves data, a rerun skips
finished stages, and the report renders in headless Chromium (Debian's) with every figure loaded."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentfactory.report import FIGURES

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent / "agentfactory"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def render(page: Path, tmp: Path) -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (make install installs Debian's chromium as root)")
    cmd = [
        chromium,
        *FLAGS,
        f"--user-data-dir={tmp / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


def smoke(out: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    curriculum = "curriculum={data: {rows: 64}, train: {steps: 3, batch_size: 4, micro_batch_size: 4}}"
    sets = [f"output_dir={out}", curriculum, *overrides]
    cmd = [str(BIN), "run", "pipelines/quickstart.yaml", "--smoke", *(x for s in sets for x in ("--set", s))]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def test_quickstart_smoke_and_report(tmp_path):
    r = smoke(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "quickstart_smoke"
    assert json.loads((run / "synth" / "manifest.json").read_text())["accepted"] > 5
    assert (run / "corpus" / "corpus.jsonl").stat().st_size > 0
    assert (run / "tokenizer" / "tokenizer.json").exists()
    for stage in ("curriculum", "pretrain", "sft"):
        assert (run / stage / "model" / "config.json").exists()
        assert len((run / stage / "metrics.jsonl").read_text().splitlines()) >= 3
    pretrain = json.loads((run / "pretrain" / "config.json").read_text())
    assert pretrain["model"]["init_from"] == str(run / "curriculum" / "model")  # the curriculum's weights
    summary = json.loads((run / "summary.json").read_text())
    for stage in ("curriculum", "pretrain"):
        assert set(summary[stage]["copy_accuracy"]) == {"random_lists", "corpus_ids"}
    spelled = summary["tokenizer"]["copyable_arguments"]  # trailing-space tokenizer: values copy as said
    assert spelled["arguments"] > 10 and spelled["copyable"] > 0.9
    assert len((run / "rl" / "metrics.jsonl").read_text().splitlines()) == 2
    for model in ("base", "sft", "rl"):
        scores = json.loads((run / "eval" / f"{model}.json").read_text())
        assert scores["tasks"] > 0
        assert scores["argument_copying"]["rows"] > 0  # values the oracle's episodes copy
    for name in FIGURES:
        assert (run / "report_files" / f"{name}.png").exists(), name

    dom = render(run / "report.html", tmp_path)
    m = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert m, dom[:500]
    loaded, total = map(int, m.groups())
    assert total == len(FIGURES) and loaded == total
    assert "Example trajectories" in dom and "In-context copying" in dom and "tokenized in the call" in dom

    again = smoke(tmp_path)  # every stage finished: the rerun skips them
    assert again.returncode == 0
    assert again.stdout.count("done earlier, skipped") == 8  # synthesis, corpus, tokenizer, ..., eval
    assert "synth: done earlier, skipped" in again.stdout
