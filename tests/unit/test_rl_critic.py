"""Self-critique critic: win rates from pairwise judgments in both orders, abstentions, the closed
loop's agreement samples, rubric files validated on load, and RubricEnv on a scripted critic."""

import re

import pytest

from agentfactory.config import ConfigError
from agentfactory.llm.base import Completion
from agentfactory.records import Message, Trajectory
from agentfactory.rl.critic import (
    RUBRICS_DIR,
    Critic,
    CriticConfig,
    Judgment,
    agreement_samples,
    load_rubrics,
    pairs,
    parse_verdict,
    validate_rubrics,
    win_rates,
)
from agentfactory.rl.envs import RubricEnv
from tests.unit.fakes import ScriptedEngine

_PAIR = re.compile(r"Response A:\n(.*?)\n\nResponse B:\n(.*?)\n\nThink briefly", re.DOTALL)


def shown(request) -> tuple[str, str]:
    return _PAIR.search(request.messages[-1].content).groups()


def by_quality(request) -> str:
    """A critic that prefers the response with more '+' signs (a known ground truth)."""
    a, b = shown(request)
    if a.count("+") == b.count("+"):
        return "They are equally good.\nVerdict: tie"
    return "Reasoning...\nVerdict: " + ("A" if a.count("+") > b.count("+") else "B")


def traj(text: str) -> Trajectory:
    return Trajectory(
        task_id="p", messages=[Message(role="user", content="q"), Message(role="assistant", content=text)]
    )


@pytest.fixture
def task():
    return RubricEnv(Critic(ScriptedEngine(by_quality))).reset(0)


def test_win_rates_follow_quality_and_every_pair_is_judged_in_both_orders(task):
    engine = ScriptedEngine(by_quality)
    critic = Critic(engine)
    rewards, judgments = critic.rewards(task, [traj("ok +"), traj("best +++"), traj("bad"), traj("ok too +")])
    assert len(engine.requests) == len(judgments) == 12  # 6 pairs x 2 orders
    assert {(j.a, j.b) for j in judgments} == {(i, k) for i in range(4) for k in range(4) if i != k}
    rates = [r.components["win_rate"] for r in rewards]
    assert rates == [0.5, 1.0, 0.0, 0.5]
    assert [r.total for r in rewards] == rates and rewards[0].components["judgments"] == 6


def test_position_bias_cancels_out_over_both_orders(task):
    critic = Critic(ScriptedEngine(lambda r: "Verdict: A"))
    rewards, _ = critic.rewards(task, [traj("x +++"), traj("y"), traj("z +")])
    assert [r.components["win_rate"] for r in rewards] == [0.5, 0.5, 0.5]


def test_malformed_critic_output_is_a_recorded_abstention_not_a_crash(task):
    replies = iter(
        ["I cannot decide.", "Verdict: B", "", "<|tool_call_begin|> garbage", "Verdict: tie", "Verdict: A"]
    )
    critic = Critic(ScriptedEngine(lambda r: next(replies)))
    rewards, judgments = critic.rewards(task, [traj("a"), traj("b"), traj("c")])
    assert [(j.a, j.b, j.verdict) for j in judgments] == [
        (0, 1, None), (1, 0, "B"), (0, 2, None), (2, 0, None), (1, 2, "tie"), (2, 1, "A"),
    ]  # fmt: skip
    assert [j.reason for j in judgments][:4] == ["no verdict", "", "no verdict", "no verdict"]
    assert [r.components["win_rate"] for r in rewards] == pytest.approx([1.0, 1 / 6, 0.75])
    assert rewards[0].components["critic_abstain_rate"] == 0.5
    silent = Critic(ScriptedEngine(lambda r: "no idea"))
    rewards, _ = silent.rewards(task, [traj("a"), traj("b")])
    assert [r.components["win_rate"] for r in rewards] == [0.5, 0.5]  # no valid judgment: neutral


def test_parse_verdict_forms():
    assert parse_verdict("blah\nVerdict: A") == "A"
    assert parse_verdict("VERDICT: B") == "B"
    assert parse_verdict("The verdict a priori is unclear.") is None
    assert parse_verdict("Verdict: **Tie**") == "tie"
    assert parse_verdict("Verdict: A ... on reflection Verdict: B") == "B"
    assert parse_verdict("[[A]]") == "A"
    assert parse_verdict("Response A is better") is None


def test_ring_pairs_limit_the_comparisons():
    assert pairs(4, None) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    ring = pairs(6, 1)
    assert len(ring) == 6 and all(sum(i in p for p in ring) == 2 for i in range(6))
    assert win_rates(2, [Judgment(a=0, b=1, verdict="tie")]) == ([0.5, 0.5], [1, 1])


def test_task_rubrics_and_prescriptive_rules_reach_the_critic_prompt(task):
    engine = ScriptedEngine(by_quality)
    Critic(engine).rewards(task, [traj("a"), traj("b +")])
    prompt = engine.requests[0].messages[0].content
    assert "[Core] Clarity and relevance" in prompt and "[Prescriptive rule] No initial praise" in prompt
    assert "[Task] Fits the request: Uses an example a child knows" in prompt
    assert "Explain recursion to a ten-year-old." in prompt


def test_closed_loop_rewards_critic_agreement_with_the_verifiable_outcome(task):
    right = Critic(ScriptedEngine(by_quality))
    responses = [traj("correct +"), traj("wrong"), traj("correct too +"), traj("wrong too")]
    outcomes = [1.0, 0.0, 1.0, 0.0]
    samples = right.training_samples(task, responses, outcomes)
    assert len(samples) == 8  # 4 pairs with differing outcomes x 2 orders; equal-outcome pairs skipped
    assert all(s.reward.total == 1.0 for s in samples)
    assert {s.meta["group"] for s in samples} == {f"{task.id}:critic"}
    assert all(s.messages[-1].role == "assistant" and s.token_ids for s in samples)
    contrarian = Critic(ScriptedEngine(lambda r: {"A": "Verdict: B", "B": "Verdict: A"}[by_quality(r)[-1]]))
    assert all(s.reward.total == 0.0 for s in contrarian.training_samples(task, responses, outcomes))
    abstain = agreement_samples("t", [Judgment(a=0, b=1)], [1.0, 0.0])
    assert abstain[0].reward.components == {"agreement": 0.0, "abstained": 1.0}


def test_shipped_rubric_files_load_and_their_references_validate():
    core, prescriptive = (
        load_rubrics(RUBRICS_DIR / "core.yaml"),
        load_rubrics(RUBRICS_DIR / "prescriptive.yaml"),
    )
    assert [r.id for r in core.rubrics] == [
        "clarity_relevance",
        "conversational_fluency",
        "objective_interaction",
    ]
    assert {"no_initial_praise", "no_self_justification"} <= {r.id for r in prescriptive.rubrics}
    assert validate_rubrics([core, prescriptive]) == []
    rule = next(r for r in prescriptive.rubrics if r.id == "no_initial_praise")
    assert rule.check("Great question! The answer is 4.") == 0.0
    assert rule.check("The answer is 4. Great question though.") == 1.0  # only the opening counts
    better = {ex.better for s in (core, prescriptive) for r in s.rubrics for ex in r.examples}

    def oracle(request):
        a, _ = shown(request)
        return "Verdict: A" if a in better else "Verdict: B"

    assert validate_rubrics([core, prescriptive], Critic(ScriptedEngine(oracle))) == []
    biased = validate_rubrics([core], Critic(ScriptedEngine(lambda r: "Verdict: A")))
    assert len(biased) == 3 and "win rate of 0.50" in biased[0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("kind: core\nrubrics: []\n", "at least 1"),
        (
            "kind: core\nrubrics:\n  - {id: a, title: A, criterion: c}\n  - {id: a, title: B, criterion: d}\n",
            "duplicate",
        ),
        (
            "kind: prescriptive\nrubrics:\n  - {id: a, title: A, criterion: c, patterns: ['(']}\n",
            "not a valid regex",
        ),
        ("kind: core\nrubrics:\n  - {id: a, title: A, criterion: c, colour: red}\n", "unknown key 'colour'"),
        (
            "kind: prescriptive\nrubrics:\n  - id: a\n    title: A\n    criterion: c\n    patterns: ['^wow']\n"
            "    examples: [{prompt: p, better: fine, worse: also fine}]\n",
            "'worse' is not flagged",
        ),
    ],
)
def test_bad_rubric_files_are_located_errors(tmp_path, body, message):
    path = tmp_path / "r.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_rubrics(path)


def test_rubric_env_scores_a_group_by_win_rate_with_penalties():
    env = RubricEnv(Critic(ScriptedEngine(by_quality), CriticConfig(neighbors=1)))
    task = env.reset(3)
    assert not task.verifiable and task.kind == "chat"
    group = [traj("fine +"), traj("great ++"), traj("")]
    rewards = env.score_group(task, group)
    assert [r.components["win_rate"] for r in rewards] == [0.5, 1.0, 0.0]
    assert rewards[2].components["format_error"] == 1.0 and rewards[2].total == pytest.approx(-0.1)
    lone = env.score(task, traj("alone"))
    assert lone.components["win_rate"] == 0.5


def test_a_failed_critic_request_is_an_abstention(task):
    class Failing(ScriptedEngine):
        def generate(self, requests):
            return [
                [Completion(request_id=r.id, finish_reason="error", error="engine down")] for r in requests
            ]

    rewards, judgments = Critic(Failing(lambda r: "")).rewards(task, [traj("a"), traj("b")])
    assert {j.reason for j in judgments} == {"engine error: engine down"}
    assert [r.components["win_rate"] for r in rewards] == [0.5, 0.5]
    assert rewards[0].components["critic_abstain_rate"] == 1.0
