"""The RL loop with torch.compile'd decoder layers gives the eager run (dynamo + AOT autograd over
the training and scoring passes, whose shapes change every iteration; see `aot_eager_compile`)."""

import json

import pytest

from agentfactory.rl import rl_run
from tests.unit.test_rl_loop import _config, _engine, tiny_checkpoint  # noqa: F401 (a fixture)


def test_compiled_layers_give_the_eager_run(tiny_checkpoint, tmp_path, aot_eager_compile):  # noqa: F811
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
    assert aot_eager_compile["aot_autograd"]["ok"] >= 3  # the dense layer, the MoE layer's two halves
