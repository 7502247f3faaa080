"""RL envs on scripted engines: math-verify answers, reasoning-gym scoring, sandboxed code tests,
multi-turn tool-use episodes scored by rubric, token budgets in rollouts, and seeded mixtures."""

import json
import random
from types import SimpleNamespace

import pytest

from agentfactory.llm.base import SamplingParams
from agentfactory.model.chat import render_assistant
from agentfactory.records import Message, RolloutStatus, Trajectory
from agentfactory.rl.envs import (
    CodeEnv,
    Env,
    EnvMixture,
    MathEnv,
    MathEnvConfig,
    ReasoningGymConfig,
    ReasoningGymEnv,
    ToolUseEnv,
    check_answer,
    extract_code,
    generate_problem,
)
from agentfactory.rl.envs.math_env import FAMILIES
from agentfactory.rl.sandbox import bwrap_available
from agentfactory.synth.agents import OracleAgent
from tests.unit.fakes import ScriptedEngine

PARAMS = SamplingParams(temperature=1.0, max_tokens=64)


def reply(task, text: str) -> Trajectory:
    return Trajectory(task_id=task.id, messages=[*task.prompt, Message(role="assistant", content=text)])


# -- math ------------------------------------------------------------------------------------------


def test_math_env_gold_answers_validate_and_tasks_are_seeded():
    env = MathEnv()
    env.validate(60)
    assert env.reset(7) == env.reset(7) and env.reset(7).id != env.reset(8).id
    assert {env.reset(s).meta["family"] for s in range(60)} == set(FAMILIES)
    assert all(generate_problem(f, random.Random(1), 3)[1] for f in FAMILIES)


def test_math_env_checks_symbolically_and_separates_form_from_correctness():
    env = MathEnv(MathEnvConfig(families=["linear"]))
    task = next(t for t in (env.reset(s) for s in range(50)) if "frac" in t.answer)
    num, den = (int(x) for x in task.answer.lstrip("-").removeprefix("\\frac{").rstrip("}").split("}{"))
    value = -num / den if task.answer.startswith("-") else num / den
    as_decimal = env.score(task, reply(task, f"So x = \\boxed{{{value:.6f}}}"))
    assert as_decimal.components["correct"] == 1.0 and as_decimal.total == 1.0
    unboxed = env.score(task, reply(task, f"x = {task.answer}"))
    assert unboxed.components["format_error"] == 1.0
    wrong = env.score(task, reply(task, "\\boxed{12345}"))
    assert wrong.components["correct"] == 0.0 and wrong.total == 0.0
    assert env.score(task, reply(task, "I do not know")).total == pytest.approx(-0.1)


def test_math_env_reads_a_problem_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"question": "What is 6*7?", "answer": "42"}) + "\n")
    env = MathEnv(MathEnvConfig(problems_path=path))
    task = env.reset(5)
    assert task.prompt[-1].content == "What is 6*7?"
    assert env.score(task, reply(task, "\\boxed{42}")).total == 1.0


def test_single_turn_rollout_caps_at_the_budget_and_penalizes_truncation():
    env = MathEnv()
    engine = ScriptedEngine(lambda r: "word " * 40)  # 40 "tokens", never finishes in time
    engine_short = ScriptedEngine(lambda r: "\\boxed{1}")
    tasks = [env.reset(0), env.reset(1)]
    groups = env.rollout(tasks, engine, n=3, params=PARAMS, budget=16)
    assert [len(g) for g in groups] == [3, 3]
    assert engine.requests[0].params.max_tokens == 16 and engine.requests[0].params.n == 3
    t = groups[0][0]
    assert len(t.token_ids) == 16 and t.meta["over_budget"] and t.status == RolloutStatus.truncated
    assert env.score(tasks[0], t).components["over_budget"] == 1.0
    ok = env.rollout(tasks, engine_short, n=1, params=PARAMS, budget=16)[0][0]
    assert not ok.meta["over_budget"] and ok.status == RolloutStatus.completed


def test_an_engine_error_scores_as_a_failure_not_an_exception():
    env = MathEnv()
    task = env.reset(0)
    t = reply(task, f"\\boxed{{{task.answer}}}").model_copy(update={"status": RolloutStatus.error})
    assert env.score(task, t).components["correct"] == 0.0


# -- reasoning-gym ---------------------------------------------------------------------------------


def test_reasoning_gym_env_scores_with_the_dataset_scorer():
    env = ReasoningGymEnv(ReasoningGymConfig(dataset="chain_sum", size=20, seed=3))
    env.validate()
    task = env.reset(4)
    assert env.name == "rg.chain_sum" and task.kind == "reasoning" and "<answer>" in task.prompt[0].content
    right = env.score(task, reply(task, f"Adding up... <answer>{task.answer}</answer>"))
    assert right.components["correct"] == 1.0
    assert env.score(task, reply(task, "<answer>-99999</answer>")).components["correct"] == 0.0
    no_tag = env.score(task, reply(task, str(task.answer)))
    assert no_tag.components["format_error"] == 1.0 and no_tag.components["correct"] == 0.0
    other = ReasoningGymEnv(ReasoningGymConfig(dataset="chain_sum", size=20, seed=4))
    assert other.reset(4).prompt != task.prompt  # another seed: a held-out set


# -- code ------------------------------------------------------------------------------------------


def test_extract_code_takes_the_last_block_or_a_bare_definition():
    assert (
        extract_code("x\n```python\ndef f(): return 1\n```\n```py\ndef f(): return 2\n```", "f")
        == "def f(): return 2\n"
    )
    assert extract_code("def f(x):\n    return x", "f") == "def f(x):\n    return x"
    assert extract_code("I would write a loop.", "f") is None


needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap (bwrap) not installed")


@needs_bwrap
def test_code_env_runs_hidden_tests_in_the_sandbox():
    env = CodeEnv()
    task = env.reset(3)  # gcd
    assert task.answer == "gcd" and "def gcd" in task.prompt[-1].content
    good = "```python\ndef gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n```"
    half = "```python\ndef gcd(a, b):\n    return a if b == 0 else 1\n```"
    cases = [
        good,
        half,
        "Use Euclid's algorithm.",
        "```python\ndef gcd(a, b)\n    return 1\n```",
        "```python\nprint('ok')\ndef gcd(a, b):\n    raise SystemExit(0)\n```",
    ]
    results = env.score_group(task, [reply(task, text) for text in cases])
    assert [r.components["correct"] for r in results] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert results[1].components["pass_rate"] == 0.5
    assert [r.components["format_error"] for r in results] == [0.0, 0.0, 1.0, 1.0, 0.0]
    assert results[4].components["sandbox_failed"] == 0.0  # SystemExit in a test is a failed test


@needs_bwrap
def test_code_env_references_pass_their_tests():
    CodeEnv().validate()


# -- tool use --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool_env():
    return ToolUseEnv()


def oracle_engine(env: ToolUseEnv, tasks) -> ScriptedEngine:
    """A policy engine that plays the blueprint oracle, writing its turns in the K2 format."""
    by_opening = {(t.prompt[0].content, t.prompt[1].content): env.tasks_by_id[t.answer] for t in tasks}

    def play(request):
        task = by_opening[(request.messages[0].content, request.messages[1].content)]
        calls = sum(1 for m in request.messages if m.role == "assistant" and m.tool_calls)
        state = SimpleNamespace(task=task, messages=request.messages, cursor=calls, retries=0)
        return render_assistant(OracleAgent()._act(state).message.to_openai())

    return ScriptedEngine(play)


def test_tool_use_env_rolls_out_episodes_and_scores_them_by_rubric(tool_env):
    tasks = [tool_env.reset(s) for s in range(0, 40, 5)]
    assert all(t.kind == "tool_use" and t.tools and t.prompt[0].role == "system" for t in tasks)
    assert tool_env.reset(5) == tasks[1]
    groups = tool_env.rollout(tasks, oracle_engine(tool_env, tasks), n=2, params=PARAMS, budget=128)
    assert [len(g) for g in groups] == [2] * len(tasks)
    for task, group in zip(tasks, groups, strict=True):
        for traj in group:
            assert traj.task_id == task.id and traj.messages[1].content == task.prompt[1].content
            assert traj.status == RolloutStatus.completed and "final_state" in traj.meta and traj.token_ids
        rewards = tool_env.score_group(task, group)
        assert [r.components["rubric"] for r in rewards] == [1.0, 1.0], task.id
        assert all(r.total == 1.0 and r.components["correct"] == 1.0 for r in rewards)


def test_tool_use_env_penalizes_lazy_and_malformed_policies(tool_env):
    tasks = [
        t
        for t in (tool_env.reset(s) for s in range(40))
        if t.meta["task_id"].split(".")[1] == "cancel_pending_order"
    ][:2]
    lazy = tool_env.rollout(tasks, ScriptedEngine(lambda r: "All done."), n=1, params=PARAMS, budget=128)
    for task, (traj,) in zip(tasks, lazy, strict=True):
        r = tool_env.score(task, traj)
        assert r.components["correct"] == 0.0 and r.total < 1.0 and r.components["format_error"] == 0.0
    garbage = "<|tool_calls_section_begin|><|tool_call_begin|>functions.cancel_order:0 {oops"
    (bad,) = tool_env.rollout(tasks[:1], ScriptedEngine(lambda r: garbage), n=1, params=PARAMS, budget=128)[0]
    assert bad.status == RolloutStatus.error
    assert tool_env.score(tasks[0], bad).components["format_error"] == 1.0


# -- mixture ---------------------------------------------------------------------------------------


def test_env_mixture_samples_by_weight_reproducibly_and_routes_scoring(tool_env):
    math, rg = MathEnv(), ReasoningGymEnv(ReasoningGymConfig(dataset="chain_sum", size=10))
    assert isinstance(math, Env) and isinstance(tool_env, Env)
    mix = EnvMixture([math, rg, tool_env], {"math": 3.0, "rg.chain_sum": 1.0, "tool_use": 0.0})
    tasks = mix.sample(400, seed=11)
    assert tasks == mix.sample(400, seed=11) and tasks != mix.sample(400, seed=12)
    counts = EnvMixture.counts(tasks)
    assert "tool_use" not in counts and 2.4 < counts["math"] / counts["rg.chain_sum"] < 3.8
    batch = tasks[:6]
    engine = ScriptedEngine(lambda r: "<answer>1</answer> \\boxed{1}")
    groups = mix.rollout(batch, engine, 2, PARAMS, {"math": 32, "reasoning": 16})
    assert [t.env for t in batch] == [g[0].meta["env"] for g in groups]
    assert all(len(g) == 2 for g in groups)
    assert len(mix.score_group(batch[0], groups[0])) == 2
    with pytest.raises(ValueError, match="unknown envs"):
        EnvMixture([math], {"maths": 1.0})


def test_math_answers_that_would_hang_sympy_are_refused_even_off_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    replies = [
        "\\boxed{9^{9^{9^{9}}}}",
        "\\boxed{10^{100000}}",
        "\\boxed{2**99999}",
        "2^{2^{3}} = 256, so \\boxed{3}",
    ]
    with ThreadPoolExecutor(1) as pool:  # math-verify has no timeout here (SIGALRM is main-thread only)
        got = list(pool.map(lambda r: check_answer("3", r, timeout=2), replies))
    assert got == [(False, True), (False, True), (False, True), (True, True)]
