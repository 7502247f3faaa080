"""Partial-rollout bookkeeping on a deterministic token engine: resumed == one go, per-token version
stamps, the iteration token budget, group release, staleness drop/restart, checkpoint round-trip."""

import json
from dataclasses import replace

import pytest

from agentfactory.llm.base import GenerationRequest, SamplingParams
from agentfactory.records import Message, RolloutStatus
from agentfactory.rl.buffer import PartialRolloutBuffer, PartialRolloutConfig, trajectories
from agentfactory.rl.envs.base import EnvTask
from tests.unit.fakes import ToyTokenEngine, toy_prompt

GREEDY = SamplingParams(temperature=0.0, max_tokens=1024)


def task(i: int = 0) -> EnvTask:
    return EnvTask(id=f"t{i}", env="toy", kind="math", prompt=[Message(role="user", content=f"q{i}")])


def one_go(engine, prompt, budget):
    c = engine.generate(
        [GenerationRequest(prompt_ids=prompt, params=GREEDY.model_copy(update={"max_tokens": budget}))]
    )
    return c[0][0]


def test_resumed_across_three_iterations_equals_one_go_with_version_stamps():
    engine = ToyTokenEngine()
    prompt = toy_prompt(length=24, salt=5)
    whole = one_go(engine, prompt, budget=100)
    assert whole.finish_reason == "stop" and len(whole.token_ids) == 25

    buf = PartialRolloutBuffer(PartialRolloutConfig(segment_tokens=10, max_staleness=5))
    buf.add(task(), prompt, n=1, budget=100)
    seen = []
    for version in range(3):
        engine.update_weights({}, version)  # weights "change" (same function): versions advance
        result = buf.step(engine, GREEDY)
        seen.append(result)
    assert [len(r.groups) for r in seen] == [0, 0, 1]
    assert seen[1].stats["resumed"] == 1 and seen[0].stats["carried"] == 1
    (r,) = seen[2].groups[0]
    assert r.token_ids == whole.token_ids and r.segments == 3 and r.finish_reason == "stop"
    assert r.versions == [0] * 10 + [1] * 10 + [2] * 5
    assert r.logprobs == pytest.approx([-0.1] * 10 + [-0.2] * 10 + [-0.3] * 5)
    assert [req.prompt_ids for req in engine.requests[1:]] == [
        prompt,
        prompt + whole.token_ids[:10],
        prompt + whole.token_ids[:20],
    ]
    (traj,) = trajectories(seen[2].groups)[0]
    assert traj.token_ids == whole.token_ids and traj.meta["token_versions"] == r.versions
    assert (
        traj.status == RolloutStatus.completed and traj.policy_version == 2 and not traj.meta["over_budget"]
    )


def test_iteration_budget_admits_carried_rollouts_first_and_short_ones_finish_early():
    engine = ToyTokenEngine()
    buf = PartialRolloutBuffer(PartialRolloutConfig(segment_tokens=8, iteration_tokens=24, max_staleness=10))
    buf.add(task(0), toy_prompt(30, 1), n=2, budget=64)  # long group
    buf.add(task(1), toy_prompt(3, 2), n=2, budget=64)  # short group
    first = buf.step(engine, GREEDY)
    assert first.stats["admitted"] == 3 and first.stats["generated_tokens"] == 8 + 8 + 4
    assert first.groups == []  # one short sample finished, its sibling was not admitted yet
    second = buf.step(engine, GREEDY)
    assert [g[0].group for g in second.groups] == ["t1"]  # short group done while the long one continues
    assert second.stats["resumed"] == 2
    done = []
    for _ in range(6):
        done += buf.step(engine, GREEDY).groups
    assert [g[0].group for g in done] == ["t0"] and len(buf) == 0
    assert all(len(r.token_ids) == 31 for r in done[0])


def test_over_budget_rollouts_finish_truncated_and_flagged():
    engine = ToyTokenEngine()
    buf = PartialRolloutBuffer(PartialRolloutConfig(segment_tokens=8))
    buf.add(task(), toy_prompt(50, 3), n=1, budget=12)
    buf.step(engine, GREEDY)
    (group,) = buf.step(engine, GREEDY).groups
    (traj,) = trajectories([group])[0]
    assert group[0].finish_reason == "length" and len(group[0].token_ids) == 12
    assert engine.requests[-1].params.max_tokens == 4  # never asks past the budget
    assert traj.meta["over_budget"] and traj.status == RolloutStatus.truncated


@pytest.mark.parametrize("policy", ["drop", "restart"])
def test_stale_rollouts_are_dropped_or_restarted_and_logged(policy):
    engine = ToyTokenEngine()
    buf = PartialRolloutBuffer(PartialRolloutConfig(segment_tokens=5, max_staleness=1, on_stale=policy))
    buf.add(task(0), toy_prompt(40, 4), n=2, budget=100)
    buf.step(engine, GREEDY)  # version 0 tokens
    engine.update_weights({}, 1)
    assert buf.step(engine, GREEDY).stats["restarted_stale"] == 0  # 1 version behind: fine
    engine.update_weights({}, 3)
    stats = buf.step(engine, GREEDY).stats  # oldest token 3 versions behind
    if policy == "drop":
        assert stats["dropped_stale"] == 2 and len(buf) == 0 and buf.sizes == {}
    else:
        assert stats["restarted_stale"] == 2 and len(buf) == 2
        assert all(r.versions == [3] * 5 and r.restarts == 1 for r in buf.pending)


def test_a_group_shrinks_when_a_member_is_dropped():
    engine = ToyTokenEngine()
    buf = PartialRolloutBuffer(PartialRolloutConfig(segment_tokens=4, max_staleness=0, on_stale="drop"))
    buf.add(task(0), toy_prompt(2, 1), n=2, budget=50, group="g")
    buf.pending[1] = replace(buf.pending[1], prompt_ids=toy_prompt(20, 9))  # a sibling with a long answer
    first = buf.step(engine, GREEDY)  # g#0 finishes, g#1 carries
    assert first.groups == []
    engine.update_weights({}, 1)
    second = buf.step(engine, GREEDY)  # g#1 is stale: dropped, the group of one is released
    assert second.stats["dropped_stale"] == 1 and [r.id for r in second.groups[0]] == ["g#0"]


def test_state_dict_round_trips_through_json_and_resumes_identically():
    engine = ToyTokenEngine()
    cfg = PartialRolloutConfig(segment_tokens=6)
    a = PartialRolloutBuffer(cfg)
    a.add(task(0), toy_prompt(15, 7), n=2, budget=40)
    a.step(engine, GREEDY)
    b = PartialRolloutBuffer(cfg)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    ra = [a.step(engine, GREEDY) for _ in range(3)]
    rb = [b.step(engine, GREEDY) for _ in range(3)]
    assert [[r.token_ids for r in g] for x in ra for g in x.groups] == [
        [r.token_ids for r in g] for x in rb for g in x.groups
    ]


def test_disabled_partial_rollouts_run_each_admitted_rollout_to_the_end():
    engine = ToyTokenEngine()
    buf = PartialRolloutBuffer(PartialRolloutConfig(enabled=False, segment_tokens=4))
    buf.add(task(0), toy_prompt(30, 1), n=1, budget=64)
    (group,) = buf.step(engine, GREEDY).groups
    assert group[0].segments == 1 and len(group[0].token_ids) == 31


def test_duplicate_group_is_an_error():
    buf = PartialRolloutBuffer()
    buf.add(task(0), [1, 2, 3], n=1, budget=8)
    with pytest.raises(ValueError, match="already"):
        buf.add(task(0), [1, 2, 3], n=1, budget=8)
