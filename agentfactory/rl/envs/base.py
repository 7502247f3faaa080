"""The RL environment protocol and the single-turn base most verifiable envs share.

An env is a task source plus a scorer (verifiers' Taskset + Rubric, composed rather than inherited):
- `reset(seed)` gives a frozen `EnvTask`: the prompt messages (+ tools) the policy sees, the
  hidden reference answer, and a `kind` that picks the token budget;
- `rollout(tasks, engine, n, ...)` samples `n` responses per task (single-turn: one engine call
  for the whole batch; multi-turn envs override it with the episode runner);
- `score(task, trajectory)` verifies one response and returns a `RewardBreakdown`, and
  `score_group(task, trajectories)` scores a prompt's K responses together (the self-critique
  reward needs the group: it is a win rate among them).

Rollouts are token-in-token-out: each trajectory keeps the sampled ids, their logprobs and the
policy version, cut at the kind's token budget (over-budget responses are penalized in `rewards`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import ConfigDict, Field

from agentfactory.config import StrictModel
from agentfactory.llm.base import Completion, Engine, GenerationRequest, SamplingParams
from agentfactory.model.chat import parse_assistant
from agentfactory.records import Message, RewardBreakdown, RolloutStatus, ToolSpec, Trajectory
from agentfactory.rl.rewards import DEFAULT_REWARDS, RewardFn, Sample, enforce_budget, score


class EnvTask(StrictModel):
    """One prompt of an env: what the policy sees, and the hidden reference the scorer uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    env: str = Field(description="name of the env that made it (EnvMixture routes scoring by it)")
    kind: str = Field(description="task kind for the token budget: math, reasoning, code, tool_use, chat")
    prompt: list[Message]
    tools: list[ToolSpec] = Field(default_factory=list)
    answer: Any = Field(None, description="hidden reference (gold answer, test names, ...)")
    verifiable: bool = True
    meta: dict[str, Any] = Field(default_factory=dict)


@runtime_checkable
class Env(Protocol):
    name: str
    kind: str
    verifiable: bool

    def reset(self, seed: int) -> EnvTask:
        """The task for `seed` (deterministic: the same seed gives the same task)."""
        ...

    def rollout(
        self, tasks: Sequence[EnvTask], engine: Engine, n: int, params: SamplingParams, budget: int
    ) -> list[list[Trajectory]]:
        """`n` responses per task, each at most `budget` response tokens."""
        ...

    def score(self, task: EnvTask, trajectory: Trajectory) -> RewardBreakdown: ...

    def score_group(self, task: EnvTask, trajectories: Sequence[Trajectory]) -> list[RewardBreakdown]: ...


def response_trajectory(
    task: EnvTask,
    text: str,
    token_ids: list[int],
    logprobs: list[float] | None,
    finish_reason: str,
    policy_version: int,
    budget: int,
    versions: list[int] | None = None,
    error: str | None = None,
) -> Trajectory:
    """A single-turn response as a `Trajectory`, cut at `budget` tokens (`meta.over_budget`).

    The text is cut only when ids were cut: then it is re-derived from the kept share of the text
    (engines stop at max_tokens=budget, so this is the rare case of a caller with a larger cap).
    """
    finished = finish_reason == "stop"
    kept, kept_lp, over = enforce_budget(token_ids, logprobs, budget, finished)
    if len(kept) < len(token_ids) and token_ids:
        text = text[: round(len(text) * len(kept) / len(token_ids))]
    parsed = parse_assistant(text)
    content = parsed.content if parsed.ok else text
    calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in parsed.tool_calls]
    if error or finish_reason == "error":
        status = RolloutStatus.error
    elif over or not finished:
        status = RolloutStatus.truncated
    else:
        status = RolloutStatus.completed
    meta: dict[str, Any] = {
        "env": task.env,
        "kind": task.kind,
        "finish_reason": finish_reason,
        "over_budget": over,
        "response_tokens": len(kept),
        "parse_error": parsed.error,
    }
    if versions is not None:
        meta["token_versions"] = versions[: len(kept)]
    if error:
        meta["errors"] = [error]
    return Trajectory(
        task_id=task.id,
        messages=[*task.prompt, Message(role="assistant", content=content, tool_calls=calls or None)],
        tools=task.tools,
        token_ids=kept,
        logprobs=kept_lp,
        policy_version=policy_version,
        status=status,
        meta=meta,
    )


def completion_trajectory(task: EnvTask, c: Completion, budget: int) -> Trajectory:
    return response_trajectory(
        task, c.text, c.token_ids, c.logprobs, c.finish_reason, c.policy_version, budget, error=c.error
    )


def single_turn_rollout(
    tasks: Sequence[EnvTask], engine: Engine, n: int, params: SamplingParams, budget: int
) -> list[list[Trajectory]]:
    """All tasks' `n` samples as one engine batch; max_tokens is capped at the budget."""
    p = params.model_copy(update={"n": n, "max_tokens": min(params.max_tokens, budget), "logprobs": True})
    requests = [GenerationRequest(id=t.id, messages=t.prompt, tools=t.tools, params=p) for t in tasks]
    groups = engine.generate(requests) if requests else []
    return [
        [completion_trajectory(t, c, budget) for c in group] for t, group in zip(tasks, groups, strict=True)
    ]


class SingleTurnEnv:
    """Base of the verifiable single-turn envs: subclasses give `reset` and `verify`.

    `verify(task, trajectory)` returns the outcome dict the reward functions read (`correct`,
    `format_ok`, env-specific metrics); `weights` overrides reward weights by name.
    """

    name: str = "env"
    kind: str = "chat"
    verifiable: bool = True
    rewards: tuple[RewardFn, ...] = DEFAULT_REWARDS

    def __init__(self, weights: Mapping[str, float] | None = None):
        self.weights = dict(weights or {})

    def reset(self, seed: int) -> EnvTask:
        raise NotImplementedError

    def verify(self, task: EnvTask, trajectory: Trajectory) -> dict[str, Any]:
        raise NotImplementedError

    def rollout(
        self, tasks: Sequence[EnvTask], engine: Engine, n: int, params: SamplingParams, budget: int
    ) -> list[list[Trajectory]]:
        return single_turn_rollout(tasks, engine, n, params, budget)

    def score(self, task: EnvTask, trajectory: Trajectory) -> RewardBreakdown:
        if trajectory.status == RolloutStatus.error:  # an engine failure is not the policy's answer
            outcome: dict[str, Any] = {"correct": 0.0, "format_ok": False}
        else:
            try:
                outcome = self.verify(task, trajectory)
            except Exception as e:  # a verifier bug is a recorded zero, never a crash
                outcome = {"correct": 0.0, "format_ok": False, "verify_error": f"{type(e).__name__}: {e}"}
        return score(self.rewards, Sample(task, trajectory, outcome), self.weights)

    def score_group(self, task: EnvTask, trajectories: Sequence[Trajectory]) -> list[RewardBreakdown]:
        return [self.score(task, t) for t in trajectories]
