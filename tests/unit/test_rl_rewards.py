"""Reward functions: weighted sum with per-component breakdown, metrics at weight 0, overrides,
failing rewards recorded (never raised), token budgets per kind and their enforcement."""

import pytest

from agentfactory.records import Message, Trajectory
from agentfactory.rl.rewards import (
    DEFAULT_REWARDS,
    Sample,
    TokenBudget,
    enforce_budget,
    reward,
    score,
)


def sample(outcome, **meta) -> Sample:
    traj = Trajectory(
        task_id="t", messages=[Message(role="assistant", content="x")], token_ids=[1, 2, 3], meta=meta
    )
    return Sample(task=None, trajectory=traj, outcome=outcome)


def test_weighted_sum_with_metrics_and_penalties():
    got = score(DEFAULT_REWARDS, sample({"correct": 1.0, "format_ok": False}, over_budget=True))
    assert got.components == {
        "correct": 1.0,
        "format_error": 1.0,
        "over_budget": 1.0,
        "response_tokens": 3.0,
        "verify_error": 0.0,
    }
    assert got.total == pytest.approx(1.0 - 0.1 - 0.5)
    assert "response_tokens" not in got.weights  # a metric: recorded, no weight


def test_weights_override_by_name_and_zero_turns_a_reward_into_a_metric():
    got = score(
        DEFAULT_REWARDS, sample({"correct": 1.0}, over_budget=True), {"over_budget": 0.0, "correct": 2.0}
    )
    assert got.total == 2.0 and got.components["over_budget"] == 1.0


def test_a_failing_reward_function_scores_zero_and_is_recorded():
    @reward(weight=1.0)
    def broken(s: Sample) -> float:
        raise KeyError("oops")

    @reward(weight=0.5, name="half")
    def constant(s: Sample) -> float:
        return 1.0

    got = score([broken, constant], sample({}))
    assert got.components == {"broken": 0.0, "broken_error": 1.0, "half": 1.0}
    assert got.total == 0.5 and constant.name == "half"


def test_token_budget_per_kind():
    budget = TokenBudget(budgets={"math": 10}, default=7)
    assert budget.for_kind("math") == 10 and budget.for_kind("poetry") == 7


@pytest.mark.parametrize(
    ("n", "finished", "kept", "over"),
    [
        (5, True, 5, False),
        (8, True, 8, False),
        (8, False, 8, True),
        (12, False, 8, True),
        (12, True, 8, True),
    ],
)
def test_enforce_budget_truncates_and_flags(n, finished, kept, over):
    ids, lps, flagged = enforce_budget(list(range(n)), [0.0] * n, 8, finished)
    assert len(ids) == kept and len(lps) == kept and flagged is over
