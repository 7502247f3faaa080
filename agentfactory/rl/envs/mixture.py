"""EnvMixture: draw tasks from several envs by weight, reproducibly, and route scoring back.

Each drawn task comes from env `e` with probability weight(e) / Σ weights, using a seeded RNG, so a
run (and its resume) sees the same task sequence. The env's own seed for the task is drawn from
the same RNG. Scoring and rollouts are routed by `EnvTask.env`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence

from agentfactory.llm.base import Engine, SamplingParams
from agentfactory.records import RewardBreakdown, Trajectory
from agentfactory.rl.envs.base import Env, EnvTask


class EnvMixture:
    def __init__(self, envs: Sequence[Env], weights: Mapping[str, float] | None = None):
        names = [e.name for e in envs]
        if len(set(names)) != len(names):
            raise ValueError(f"env names must be unique, got {names}")
        self.envs = {e.name: e for e in envs}
        self.weights = {n: float((weights or {}).get(n, 1.0)) for n in names}
        if unknown := set(weights or {}) - set(names):
            raise ValueError(f"weights for unknown envs: {sorted(unknown)}")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {self.weights}")

    def sample(self, n: int, seed: int) -> list[EnvTask]:
        """`n` tasks for iteration/batch `seed` (same seed, same tasks)."""
        rng = random.Random(f"mixture:{seed}")
        names = list(self.weights)
        picks = rng.choices(names, weights=[self.weights[k] for k in names], k=n)
        return [self.envs[name].reset(rng.randrange(2**31)) for name in picks]

    def env_of(self, task: EnvTask) -> Env:
        return self.envs[task.env]

    def rollout(
        self,
        tasks: Sequence[EnvTask],
        engine: Engine,
        n: int,
        params: SamplingParams,
        budgets: Mapping[str, int],
    ) -> list[list[Trajectory]]:
        """Each env rolls out its own tasks (one batch per env); results come back in task order."""
        out: list[list[Trajectory] | None] = [None] * len(tasks)
        for name, env in self.envs.items():
            idx = [i for i, t in enumerate(tasks) if t.env == name]
            if idx:
                budget = budgets.get(env.kind, max(budgets.values(), default=1024))
                for i, group in zip(
                    idx, env.rollout([tasks[i] for i in idx], engine, n, params, budget), strict=True
                ):
                    out[i] = group
        return [g or [] for g in out]

    def score_group(self, task: EnvTask, trajectories: Sequence[Trajectory]) -> list[RewardBreakdown]:
        return self.env_of(task).score_group(task, trajectories)

    @staticmethod
    def counts(tasks: Sequence[EnvTask]) -> dict[str, int]:
        return dict(Counter(t.env for t in tasks))
