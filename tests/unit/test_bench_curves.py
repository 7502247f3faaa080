"""bench/_rl_curves.py: a long RL bench keeps its held-out curve on disk as it goes, so a run
killed at a time limit (a lent GPU's) still has its points; the final save replaces them."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
import _rl_curves


class _Engine:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_the_curve_is_on_disk_after_each_evaluation_and_save_replaces_it(tmp_path, monkeypatch):
    partial = tmp_path / "rl.partial.json"
    seen: list[list[int]] = []

    def fake_rl_run(config, *, engine, on_iteration):
        for i in range(1, 6):
            on_iteration(type("Loop", (), {"engine": engine})(), {
                "iteration": i, "time/rollout": 1.0, "time/train": 0.5, "reward/x": i / 10
            })  # fmt: skip
            if partial.exists():
                seen.append([p["iteration"] for p in json.loads(partial.read_text())["curve"]])
        raise KeyboardInterrupt  # killed after iteration 5: what is on disk is all that is left

    monkeypatch.setattr("agentfactory.rl.run.rl_run", fake_rl_run)
    engine = _Engine()
    with pytest.raises(KeyboardInterrupt):
        _rl_curves.rl_with_evals(
            None, engine, lambda e: {"rate": 0.5}, score="rate", minutes=60, every=2,
            logged={"reward": "reward/x"}, partial=partial,
        )  # fmt: skip
    assert engine.closed
    assert seen == [[0], [0, 2], [0, 2], [0, 2, 4], [0, 2, 4]]  # before RL, then at iterations 2 and 4
    kept = json.loads(partial.read_text())
    assert kept["partial"] and [r["reward"] for r in kept["train_reward"]] == [0.1, 0.2, 0.3, 0.4]

    result = {"curve": kept["curve"], "train_reward": kept["train_reward"], "hardware": "test"}
    _rl_curves.save(result, tmp_path, "rl", score="rate", labels={"reward": "r"}, title="t")
    assert json.loads((tmp_path / "rl.json").read_text())["curve"] == kept["curve"]
    assert not partial.exists() and (tmp_path / "rl.png").stat().st_size > 0
