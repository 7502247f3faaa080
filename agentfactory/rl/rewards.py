"""Reward functions: pure, named and weighted, combined into a per-component `RewardBreakdown`.

As in verifiers' Rubric, a reward is a sum of named functions times weights, and a metric is a
function with weight 0 (recorded in the breakdown, no effect on the total). Each function reads one
typed `Sample` (the task, the trajectory, and the env's verification `outcome`), so the expensive
work (running the sandbox, calling math-verify) happens once in the env and every reward is a cheap
pure function of its result.

Two penalties every env shares:
- **format**: the response could not be parsed into what the env needs (no answer tag, no code
  block, a malformed tool call);
- **token budget** (Kimi K2 §3.2.2 "budget control"): each task kind has a maximum response
  length; a longer response is truncated at the budget and penalized, which teaches the policy
  to spend tokens where the task needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from agentfactory.config import StrictModel
from agentfactory.records import RewardBreakdown, Trajectory


@dataclass(frozen=True)
class Sample:
    """What a reward function sees: the env's task record, the finished trajectory, and the env's
    verification outcome (e.g. `correct`, the sandbox test report, the rubric score)."""

    task: Any  # an `EnvTask` (typed loosely to keep this module free of env imports)
    trajectory: Trajectory
    outcome: Mapping[str, Any] = field(default_factory=dict)

    @property
    def response(self) -> str:
        return self.trajectory.final_answer

    @property
    def truncated(self) -> bool:
        return bool(self.trajectory.meta.get("over_budget", False))

    @property
    def n_tokens(self) -> int:
        return int(self.trajectory.meta.get("response_tokens", len(self.trajectory.token_ids or [])))


@dataclass(frozen=True)
class RewardFn:
    """A named reward: `fn(sample) -> float`; weight 0 makes it a metric, a negative weight a penalty."""

    name: str
    fn: Callable[[Sample], float]
    weight: float = 1.0


def reward(weight: float = 1.0, name: str | None = None) -> Callable[[Callable[[Sample], float]], RewardFn]:
    """Decorator: `@reward(weight=1.0) def correct(s): ...` gives a `RewardFn` named `correct`."""

    def wrap(fn: Callable[[Sample], float]) -> RewardFn:
        return RewardFn(name or fn.__name__, fn, weight)

    return wrap


def score(
    funcs: Iterable[RewardFn], sample: Sample, weights: Mapping[str, float] | None = None
) -> RewardBreakdown:
    """Evaluate every function on `sample`; `weights` overrides the functions' own weights by name.

    A function that raises scores 0.0 and is recorded as `<name>_error` = 1 (a metric): a reward
    bug must be visible in the metrics, but must not kill an RL iteration.
    """
    components: dict[str, float] = {}
    w: dict[str, float] = {}
    for f in funcs:
        try:
            components[f.name] = float(f.fn(sample))
        except Exception:  # any reward failure is recorded, never raised
            components[f.name] = 0.0
            components[f"{f.name}_error"] = 1.0
        weight = (weights or {}).get(f.name, f.weight)
        if weight:
            w[f.name] = weight
    return RewardBreakdown.combine(components, w)


# ---------------------------------------------------------------------------------------------
# Shared reward functions. Envs put their verifier's result in `outcome` under these keys.


@reward(weight=1.0)
def correct(s: Sample) -> float:
    """1.0 when the env's verifier accepted the answer (math-verify, score_answer, all tests pass)."""
    return float(s.outcome.get("correct", 0.0))


@reward(weight=-0.1)
def format_error(s: Sample) -> float:
    """1.0 when the response lacks the required form (answer tag, code block, parsable tool call)."""
    return float(not s.outcome.get("format_ok", True))


@reward(weight=-0.5)
def over_budget(s: Sample) -> float:
    """1.0 when the response was truncated at its task kind's token budget."""
    return float(s.truncated)


@reward(weight=0.0)
def response_tokens(s: Sample) -> float:
    """Metric: length of the response in tokens."""
    return float(s.n_tokens)


@reward(weight=0.0)
def verify_error(s: Sample) -> float:
    """Metric: the env's verifier itself failed (a bug to fix, scored as a wrong answer)."""
    return float(bool(s.outcome.get("verify_error")))


DEFAULT_REWARDS: tuple[RewardFn, ...] = (correct, format_error, over_budget, response_tokens, verify_error)


# ---------------------------------------------------------------------------------------------
# Token budgets per task kind.


class TokenBudget(StrictModel):
    """Maximum response tokens per task kind (`EnvTask.kind`); over-budget responses are truncated."""

    budgets: dict[str, int] = Field(
        default_factory=lambda: {
            "math": 1024,
            "reasoning": 1024,
            "code": 1536,
            "tool_use": 512,
            "chat": 768,
        },
        description="tokens per kind; kinds not listed get `default`",
    )
    default: int = Field(1024, ge=1)

    def for_kind(self, kind: str) -> int:
        return self.budgets.get(kind, self.default)


def enforce_budget(
    token_ids: list[int], logprobs: list[float] | None, budget: int, finished: bool
) -> tuple[list[int], list[float] | None, bool]:
    """(ids, logprobs, over_budget): cut a response to `budget` tokens.

    A response is over budget when it has more tokens than the budget, or when it reached exactly the
    budget without finishing (the engine stopped it at max_tokens = budget).
    """
    over = len(token_ids) > budget or (len(token_ids) == budget and not finished)
    if len(token_ids) > budget:
        token_ids = token_ids[:budget]
        logprobs = logprobs[:budget] if logprobs is not None else None
    return token_ids, logprobs, over
