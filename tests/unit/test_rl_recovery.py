"""The RL loop survives its engine's core process dying (without vLLM): the engine is restarted, the
trainer's weights are pushed back at the loop's version, the call is retried, and the run's metrics
equal an undisturbed run's; a core that keeps dying ends the run with the engine's error."""

from __future__ import annotations

import json

import pytest
import torch

from agentfactory.llm.vllm_health import EngineDeadError
from tests.unit.test_rl_loop import _config, _engine, tiny_checkpoint  # noqa: F401 (fixture)

DEATH = "the vLLM engine core process EngineCore (pid 1) was killed by SIGKILL; call restart()"


class DyingEngine:
    """The scripted math engine, whose core "dies" at generate call `die_at` (and, with `forever`,
    again after every restart). A restart serves the base weights at version 0, as VLLMEngine's does."""

    def __init__(self, die_at: int, forever: bool = False) -> None:
        self.inner, self.die_at, self.forever = _engine(), die_at, forever
        self.calls, self.dead, self.restarts = 0, False, 0
        self.pushes: list[tuple[int, float]] = []  # (version, checksum of the weights)

    @property
    def policy_version(self) -> int:
        return self.inner.policy_version

    def generate(self, requests):
        self.calls += 1
        self.dead = self.dead or self.calls == self.die_at or (self.forever and self.calls > self.die_at)
        if self.dead:
            raise EngineDeadError(DEATH)
        return self.inner.generate(requests)

    def update_weights(self, weights, version: int) -> None:
        if self.dead:
            raise EngineDeadError(DEATH)
        self.pushes.append((version, float(sum(v.double().sum() for v in weights.values()))))
        self.inner.update_weights(weights, version)

    def restart(self) -> float:
        self.dead, self.inner.policy_version = False, 0
        self.restarts += 1
        return 0.0

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(("time/", "sync/", "engine/"))}


def test_engine_death_mid_run_is_recovered_transparently(tiny_checkpoint, tmp_path):  # noqa: F811
    reference = _rows(rl_run_with(_engine(), tiny_checkpoint, tmp_path / "ref").metrics_path)
    engine = DyingEngine(die_at=2)  # the second iteration's rollout
    result = rl_run_with(engine, tiny_checkpoint, tmp_path / "run")
    rows = _rows(result.metrics_path)
    assert [r["iteration"] for r in rows] == [1, 2]
    assert [r["engine/restarts"] for r in rows] == [0, 1] and engine.restarts == 1
    # pushes: fresh start (v1), iteration 1 (v2), after the restart the same weights again at v2
    assert [v for v, _ in engine.pushes] == [1, 2, 2, 3]
    assert engine.pushes[1][1] == engine.pushes[2][1]
    assert [_same(r) for r in rows] == [_same(r) for r in reference]


def test_a_core_that_keeps_dying_ends_the_run_with_its_error(tiny_checkpoint, tmp_path):  # noqa: F811
    engine = DyingEngine(die_at=2, forever=True)
    with pytest.raises(EngineDeadError, match="killed by SIGKILL"):
        rl_run_with(engine, tiny_checkpoint, tmp_path / "run")
    assert engine.restarts == 1  # one restart per call: a second death in the retry is the error
    ckpt = json.loads((tmp_path / "run" / "checkpoint" / "trainer.json").read_text())
    assert ckpt["iteration"] == 1  # the last good checkpoint is kept for a resume


def rl_run_with(engine, model, out):
    from agentfactory.rl.run import rl_run

    threads = torch.get_num_threads()
    torch.manual_seed(0)
    try:  # 1 thread: on a busy 2-core box 2 threads made each step ~200x slower (12 s vs 0.06 s)
        return rl_run(_config(model, out, iterations=2, threads=1), engine=engine)
    finally:
        torch.set_num_threads(threads)
