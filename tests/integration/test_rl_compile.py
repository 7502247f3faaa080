"""The RL loop with torch.compile'd decoder layers gives the eager run (integration: a clean
machine spends ~80 s compiling the training and scoring graphs)."""

import json

import pytest

from agentfactory.rl import rl_run
from tests.unit.test_rl_loop import _config, _engine, tiny_checkpoint  # noqa: F401 (a fixture)


def test_compiled_layers_give_the_eager_run(tiny_checkpoint, tmp_path):  # noqa: F811
    runs = {}
    for compiled in (False, True):
        result = rl_run(
            _config(tiny_checkpoint, tmp_path / str(compiled), iterations=2, compile=compiled),
            engine=_engine(),
        )
        runs[compiled] = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    for eager, compiled in zip(runs[False], runs[True], strict=True):
        assert compiled["reward/math"] == eager["reward/math"]
        assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-4, abs=1e-6)
