"""Partial rollouts (Kimi K1.5 §2.6.2, K2 §3.2.2): long responses are generated across iterations.

Each RL iteration has a token budget. A rollout gets at most `segment_tokens` new tokens per
iteration; one that has not finished is saved, with its token ids, their logprobs and the policy
version that sampled **each** token, and resumed in a later iteration under the new weights by
continuing from the exact ids: `GenerationRequest(prompt_ids=prompt + generated)`. Token-in-token-out
means nothing is re-tokenized, so with unchanged weights and greedy decoding a resumed rollout equals
one generated in one go. Long-tail responses thus stop blocking an iteration: short ones finish and
train now, long ones continue in the background of the next iterations.

Staleness is bounded: before each iteration, a rollout whose oldest token is more than
`max_staleness` versions behind the engine is dropped or restarted from its prompt (`on_stale`),
and every iteration reports how many were, plus the staleness of what finished. Samples of one
prompt form a group (the K1.5 baseline is their mean reward), so the buffer hands back whole
groups: a group is released when its last live member finishes (dropped members shrink it).

The buffer is plain data (`state_dict` / `load_state_dict` as JSON) so a checkpoint can carry it.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import Field

from agentfactory.config import StrictModel
from agentfactory.llm.base import Engine, GenerationRequest, SamplingParams
from agentfactory.records import Trajectory
from agentfactory.rl.envs.base import EnvTask, response_trajectory


class PartialRolloutConfig(StrictModel):
    enabled: bool = Field(True, description="False: each admitted rollout runs to its budget in one go")
    segment_tokens: int = Field(256, ge=1, description="new tokens per rollout per iteration")
    iteration_tokens: int = Field(16384, ge=1, description="tokens one iteration may admit in total")
    max_staleness: int = Field(
        2, ge=0, description="max policy versions between a rollout's oldest token and now"
    )
    on_stale: Literal["drop", "restart"] = "restart"


@dataclass
class Rollout:
    """One response in flight: the prompt ids, and per generated token its id, logprob and version."""

    id: str
    group: str
    group_size: int
    task: EnvTask
    prompt_ids: list[int]
    budget: int  # the kind's response token budget (over it: truncated and penalized)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    text: str = ""
    segments: int = 0  # iterations it was generated in
    restarts: int = 0
    finish_reason: str | None = None  # stop | length (hit the budget) | error; None while in flight
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def staleness(self, version: int) -> int:
        return version - min(self.versions) if self.versions else 0

    def to_trajectory(self) -> Trajectory:
        """The finished response as a trajectory (per-token versions in `meta.token_versions`)."""
        t = response_trajectory(
            self.task,
            self.text,
            self.token_ids,
            self.logprobs,
            self.finish_reason or "length",
            max(self.versions, default=0),
            self.budget,
            versions=self.versions,
            error=self.error,
        )
        meta = {
            **t.meta,
            "rollout_id": self.id,
            "group": self.group,
            "segments": self.segments,
            "restarts": self.restarts,
        }
        return t.model_copy(update={"meta": meta})


@dataclass
class StepResult:
    groups: list[list[Rollout]]  # groups whose every live member finished this iteration
    stats: dict[str, float]


class PartialRolloutBuffer:
    """Queue of rollouts; `step(engine, params)` runs one iteration of generation under the budget."""

    def __init__(self, config: PartialRolloutConfig | None = None):
        self.config = config or PartialRolloutConfig()
        self.pending: list[Rollout] = []  # in flight or not yet started, oldest first
        self.finished: dict[str, list[Rollout]] = {}  # group -> finished members awaiting the rest
        self.sizes: dict[str, int] = {}  # group -> live members

    def add(
        self, task: EnvTask, prompt_ids: list[int], n: int, budget: int, group: str | None = None
    ) -> list[Rollout]:
        """Queue `n` samples of `task` (one group) with response budget `budget`."""
        group = group or task.id
        if group in self.sizes:
            raise ValueError(f"group {group!r} is already in the buffer")
        rollouts = [
            Rollout(
                id=f"{group}#{i}",
                group=group,
                group_size=n,
                task=task,
                prompt_ids=list(prompt_ids),
                budget=budget,
            )
            for i in range(n)
        ]
        self.pending += rollouts
        self.sizes[group] = n
        return rollouts

    def __len__(self) -> int:
        return len(self.pending)

    def _enforce_staleness(self, version: int, stats: dict[str, float]) -> None:
        keep = []
        for r in self.pending:
            if r.staleness(version) <= self.config.max_staleness:
                keep.append(r)
            elif self.config.on_stale == "restart":
                r.token_ids, r.logprobs, r.versions, r.text = [], [], [], ""
                r.restarts += 1
                stats["restarted_stale"] += 1
                keep.append(r)
            else:
                stats["dropped_stale"] += 1
                self.sizes[r.group] -= 1
        self.pending = keep

    def _admit(self) -> list[tuple[Rollout, int]]:
        """(rollout, max_tokens) pairs in queue order while the iteration's token budget lasts."""
        admitted, spent = [], 0
        for r in self.pending:
            left = r.budget - len(r.token_ids)
            want = min(self.config.segment_tokens, left) if self.config.enabled else left
            if admitted and spent + want > self.config.iteration_tokens:
                break
            admitted.append((r, max(want, 1)))
            spent += want
        return admitted

    def step(self, engine: Engine, params: SamplingParams) -> StepResult:
        """Generate one iteration's segments; return the groups that completed, with statistics."""
        version = engine.policy_version
        stats: dict[str, float] = {"dropped_stale": 0, "restarted_stale": 0}
        self._enforce_staleness(version, stats)
        admitted = self._admit()
        requests = []
        for r, max_tokens in admitted:
            p = params.model_copy(
                update={
                    "n": 1,
                    "max_tokens": max_tokens,
                    "logprobs": True,
                    "seed": _seed(params.seed, r.id, r.segments),
                }
            )
            requests.append(GenerationRequest(id=r.id, prompt_ids=r.prompt_ids + r.token_ids, params=p))
        outputs = engine.generate(requests) if requests else []
        resumed = sum(1 for r, _ in admitted if r.segments > 0)
        generated = 0
        for (r, _), group in zip(admitted, outputs, strict=True):
            c = group[0]
            r.segments += 1
            r.token_ids += c.token_ids
            r.logprobs += c.logprobs if c.logprobs is not None else [0.0] * len(c.token_ids)
            r.versions += [c.policy_version] * len(c.token_ids)
            r.text += c.text
            generated += len(c.token_ids)
            if c.finish_reason in ("error", "abort"):
                r.finish_reason, r.error = "error", c.error or c.finish_reason
            elif c.finish_reason == "stop":
                r.finish_reason = "stop"
            elif len(r.token_ids) >= r.budget:
                r.finish_reason = "length"
        done = [r for r, _ in admitted if r.done]
        for r in done:
            self.finished.setdefault(r.group, []).append(r)
        self.pending = [r for r in self.pending if not r.done]
        groups = self._release()
        finished_staleness = [r.staleness(version) for g in groups for r in g]
        stats.update(
            admitted=len(admitted),
            resumed=resumed,
            generated_tokens=generated,
            finished=len(done),
            carried=len(self.pending),
            groups_released=len(groups),
            staleness_max=max(finished_staleness, default=0),
            staleness_mean=sum(finished_staleness) / len(finished_staleness) if finished_staleness else 0.0,
            multi_segment=sum(1 for g in groups for r in g if r.segments > 1),
        )
        return StepResult(groups=groups, stats=stats)

    def _release(self) -> list[list[Rollout]]:
        out = []
        for group, members in list(self.finished.items()):
            if len(members) >= self.sizes[group]:
                out.append(sorted(members, key=lambda r: int(r.id.rsplit("#", 1)[1])))
                del self.finished[group], self.sizes[group]
        for group, size in list(self.sizes.items()):  # every member dropped as stale: forget the group
            if size <= 0:
                self.finished.pop(group, None)
                del self.sizes[group]
        return [g for g in out if g]

    # -- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        def dump(r: Rollout) -> dict[str, Any]:
            d = asdict(r)
            d["task"] = r.task.model_dump(mode="json")
            return d

        return {
            "pending": [dump(r) for r in self.pending],
            "finished": {g: [dump(r) for r in rs] for g, rs in self.finished.items()},
            "sizes": dict(self.sizes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def load(d: dict[str, Any]) -> Rollout:
            return Rollout(**{**d, "task": EnvTask.model_validate(d["task"])})

        self.pending = [load(d) for d in state["pending"]]
        self.finished = {g: [load(d) for d in rs] for g, rs in state["finished"].items()}
        self.sizes = dict(state["sizes"])


def _seed(base: int | None, rollout_id: str, segment: int) -> int | None:
    """A distinct, reproducible sampling seed per (rollout, segment); None keeps the engine's own."""
    if base is None:
        return None
    return (base * 1_000_003 + zlib.crc32(f"{rollout_id}:{segment}".encode())) % (2**31)


def trajectories(groups: Sequence[Sequence[Rollout]]) -> list[list[Trajectory]]:
    return [[r.to_trajectory() for r in g] for g in groups]
