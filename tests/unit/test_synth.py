"""Synthesis without Ray: oracle + scripted user + runtime + judge produce an accepted dataset;
the judge rejects wrong states and forbidden calls; faults appear at their rates; runs resume."""

import json
import random
import re
from collections import Counter

import datasets
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import TypeAdapter

from agentfactory.records import Message, ToolCall
from agentfactory.synth.agents import AgentSampling, sample_agent
from agentfactory.synth.config import SynthConfig
from agentfactory.synth.export import export_dataset
from agentfactory.synth.judge import Judge, JudgeConfig
from agentfactory.synth.pipeline import domain_paths, make_tasks, run_synth
from agentfactory.synth.store import RunMismatch, ShardStore
from agentfactory.synth.toolexec import FaultRates, ToolExecConfig, ToolExecutor
from agentfactory.synth.users import STOP, ScriptedUser, asked_facts
from agentfactory.tools import find_domain

DOMAINS = ["retail_orders", "bank_accounts", "smart_home"]


def small(**kw) -> SynthConfig:
    return SynthConfig(**{"domains": DOMAINS, "worlds": 2, "workers": 1, "batch_size": 8, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = run_synth(small(), out, use_ray=False)
    return out, summary


def test_oracle_and_scripted_user_give_an_accepted_dataset(run, tmp_path):
    out, summary = run
    assert summary["tasks"] > 20 and summary["accepted"] == summary["episodes"] == summary["tasks"]
    records = list(ShardStore(out, small().fingerprint()).records())
    ids = [r.meta["id"] for r in records]
    assert len(ids) == len(set(ids)) == summary["tasks"]
    assert {r.meta["domain"] for r in records} == set(DOMAINS)
    assert set(Counter(r.meta["kind"] for r in records)) >= {
        "single_call",
        "multi_step",
        "clarification",
        "refusal",
    }
    exported = export_dataset(records, tmp_path / "ds")
    ds = datasets.load_from_disk(str(tmp_path / "ds" / "hf"))
    assert ds.column_names == [
        "id",
        "domain",
        "category",
        "messages",
        "tools",
        "rubric",
        "judge",
        "reward",
        "source",
        "meta",
    ]
    assert len(ds) == exported["rows"] == summary["accepted"]
    row = ds[0]
    messages = [{k: v for k, v in m.items() if v is not None} for m in row["messages"]]
    TypeAdapter(list[ChatCompletionMessageParam]).validate_python(messages)
    assert json.loads(row["tools"])[0]["type"] == "function"
    assert datasets.Dataset.from_parquet(str(tmp_path / "ds" / "data.parquet")).num_rows == len(ds)
    card = (tmp_path / "ds" / "README.md").read_text()
    assert "acceptance_by_domain.png" in card and "<details>" in card
    assert len(list((tmp_path / "ds" / "plots").glob("*.png"))) == 4


def test_clarification_episodes_ask_before_acting(run):
    out, _ = run
    for rec in ShardStore(out, small().fingerprint()).records():
        if rec.meta["kind"] != "clarification":
            continue
        first_assistant = next(m for m in rec.messages if m.role == "assistant")
        assert first_assistant.content and "?" in first_assistant.content and not first_assistant.tool_calls
        assert STOP not in rec.messages[-1].content  # the stop marker is not dialogue


def test_judge_rejects_wrong_state_and_forbidden_calls():
    domain = find_domain("retail_orders")
    tasks = [
        t
        for t in make_tasks(small(domains=["retail_orders"]), domain_paths(small(domains=["retail_orders"])))
        if t.meta["template"] == "refuse_cancel_shipped"
    ]
    task = tasks[0]
    order = task.meta["vars"]["order_id"]
    rng = random.Random(0)
    spec = sample_agent(task, {"retail_orders": domain}, AgentSampling(), rng)
    tools = ToolExecutor([domain], task.meta["world_seed"], task.initial_state, ToolExecConfig(), rng)
    tools.runtimes["retail_orders"].state["orders"][order]["status"] = "cancelled"  # a wrong end state
    call = ToolCall(id="c0", name="cancel_order", arguments={"order_id": order, "reason": "no longer needed"})
    from agentfactory.records import RolloutStatus, Trajectory

    traj = Trajectory(
        task_id=task.id,
        messages=[
            Message(role="user", content=task.user_goal),
            Message(role="assistant", tool_calls=[call]),
            Message(role="assistant", content="Done, it is cancelled."),
        ],
        tools=spec.tools,
        status=RolloutStatus.completed,
    )
    verdict = Judge(JudgeConfig()).judge(task, traj, tools.state, rng)
    assert not verdict.accepted
    reasons = " | ".join(verdict.reasons)
    assert "must_not_call failed" in reasons and "final_state failed" in reasons
    truncated = traj.model_copy(update={"status": RolloutStatus.truncated})
    assert Judge().judge(task, truncated, task.initial_state, rng).reasons[0].startswith("status truncated")


def test_faults_appear_at_configured_rates():
    domain = find_domain("retail_orders")
    rates = FaultRates(timeout=0.1, transient=0.15, partial=0.2)
    ex = ToolExecutor([domain], 0, None, ToolExecConfig(faults=rates), random.Random(7))
    user = next(iter(ex.state["users"]))
    n = 4000
    results = [ex.call("get_user", {"user_id": user}) for _ in range(n)]
    assert abs(ex.faults["timeout"] / n - 0.1) < 0.02
    assert abs(ex.faults["transient"] / n - 0.15) < 0.02
    ok = sum(r.ok for r in results)
    assert abs(ex.faults["partial"] / ok - 0.2) < 0.03  # partial applies to successful calls
    full = len(ex.runtimes["retail_orders"].state["users"][user])
    assert any(r.ok and len(r.content) < full for r in results)


def test_scripted_user_reveals_facts_only_when_asked():
    assert asked_facts(
        "Could you tell me your email and order id?", {"email": "a", "order_id": "b", "zip": "c"}
    ) == ["email", "order_id"]
    assert asked_facts("What is the order number?", {"order_id": "W1"}) == ["order_id"]
    from agentfactory.records import Task

    task = Task(
        id="t",
        domain="d",
        user_goal="Cancel my order.",
        persona="terse",
        user_facts={"order_id": "W77", "email": "x@y.z"},
    )
    user, rng = ScriptedUser(), random.Random(0)
    hist = [
        Message(role="user", content="Cancel my order."),
        Message(role="assistant", content="Which order id?"),
    ]
    reply = user.reply([(task, hist, rng)])[0]
    assert "W77" in reply.text and "x@y.z" not in reply.text and not reply.stop
    hist += [Message(role="user", content=reply.text), Message(role="assistant", content="It is cancelled.")]
    assert user.reply([(task, hist, rng)])[0].stop


def test_thousands_of_distinct_agents():
    cfg = SynthConfig(worlds=30, domains=None)
    paths = domain_paths(cfg)
    domains = {n: find_domain(n) for n in paths}
    tasks = make_tasks(cfg, paths)
    ids = {
        sample_agent(t, domains, AgentSampling(), random.Random(f"{t.id}:{a}")).id
        for t in tasks
        for a in range(2)
    }
    assert len(ids) >= 1000
    cross = sum(
        len(sample_agent(t, domains, AgentSampling(), random.Random(t.id)).domains) > 1 for t in tasks
    )
    assert 0.1 < cross / len(tasks) < 0.3


def test_resume_skips_finished_work_and_refuses_another_config(tmp_path):
    cfg = small()
    full = run_synth(cfg, tmp_path / "a", use_ray=False)
    store = ShardStore(tmp_path / "a", cfg.fingerprint())
    shards = store.shard_files()
    before = {r.meta["id"]: r for r in store.records()}
    shards[-1].unlink()  # as if killed before the last shard was written
    (tmp_path / "a" / "shards" / "part-99999.tmp").write_text("half a shard")
    run_synth(cfg.model_copy(update={"shard_size": 5}), tmp_path / "a", use_ray=False)
    after = list(ShardStore(tmp_path / "a", cfg.fingerprint()).records())
    assert sorted(r.meta["id"] for r in after) == sorted(before)  # nothing lost, nothing twice
    assert all(before[r.meta["id"]].messages == r.messages for r in after)  # reproducible per work item
    assert full["tasks"] == len(after)
    with pytest.raises(RunMismatch):
        run_synth(cfg.model_copy(update={"seed": 1}), tmp_path / "a", use_ray=False)


def test_without_ray_installed_the_workers_run_in_process(run, tmp_path, monkeypatch):
    """A machine with only PyTorch (a GPU image) still synthesizes: same records, a warning."""
    import importlib.util
    import sys

    from rich.console import Console

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a)
    )
    monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` now fails
    console = Console(record=True, width=200)
    summary = run_synth(small(), tmp_path, console, use_ray=True)
    assert "Ray is not installed" in console.export_text()
    out, expected = run
    assert summary["accepted"] == expected["accepted"]
    records = ShardStore(tmp_path, small().fingerprint()).records()
    assert sorted(r.meta["id"] for r in records) == sorted(
        r.meta["id"] for r in ShardStore(out, small().fingerprint()).records()
    )


def test_llm_judge_votes_by_majority_with_shuffled_criteria():
    from agentfactory.records import LLMCriterion, RolloutStatus, Rubric, Task, Trajectory

    from .fakes import ScriptedEngine

    criteria = ["The agent is polite.", "The agent never mentions prices."]
    orders = []

    def reply(request):
        text = request.messages[0].content
        listed = [line for line in text.splitlines() if line[:2] in ("1.", "2.")]
        orders.append(tuple(listed))
        votes = {c: "YES" if "polite" in c else ("YES" if len(orders) % 3 == 0 else "NO") for c in listed}
        return "\n".join(f"{line[0]}: {votes[line]}" for line in listed)

    task = Task(
        id="t", domain="d", user_goal="g", rubric=Rubric(checks=[LLMCriterion(criterion=c) for c in criteria])
    )
    traj = Trajectory(
        task_id="t",
        messages=[Message(role="user", content="hi"), Message(role="assistant", content="Hello!")],
        status=RolloutStatus.completed,
    )
    verdict = Judge(JudgeConfig(votes=3, llm_threshold=1.0), ScriptedEngine(reply)).judge(
        task, traj, {}, random.Random(3)
    )
    by = {c.detail.split("'")[1]: c for c in verdict.checks}
    assert by[criteria[0]].passed and by[criteria[0]].score == 1.0
    assert not by[criteria[1]].passed and by[criteria[1]].score == pytest.approx(1 / 3)  # 1 YES of 3 votes
    assert not verdict.accepted and "llm_criterion failed" in verdict.reasons[0]
    assert len(set(orders)) > 1  # the criteria were shown in different orders
    garbage = Judge(JudgeConfig(), ScriptedEngine(lambda r: "I think it is fine")).judge(
        task, traj, {}, random.Random(0)
    )
    assert not garbage.accepted and garbage.reasons == ["llm judge gave no parsable verdict"]


def test_llm_user_stops_and_garbage_aborts():
    from agentfactory.records import Task
    from agentfactory.synth.users import LLMUser

    from .fakes import ScriptedEngine

    task = Task(id="t", domain="d", user_goal="Cancel W1.", user_facts={"email": "a@b.c"})
    hist = [Message(role="user", content="Cancel W1."), Message(role="assistant", content="Your email?")]
    seen = []
    user = LLMUser(ScriptedEngine(lambda r: seen.append(r) or "It is a@b.c."))
    turn = user.reply([(task, hist, random.Random(0))])[0]
    assert turn.text == "It is a@b.c." and not turn.stop
    flipped = seen[0].messages
    assert flipped[0].role == "system" and "a@b.c" in flipped[0].content
    assert [m.role for m in flipped[1:]] == [
        "assistant",
        "user",
    ]  # the simulator sees the dialogue from the user's side
    done = LLMUser(ScriptedEngine(lambda r: "Thanks! ###STOP###")).reply([(task, hist, random.Random(0))])[0]
    assert done.stop and done.text.endswith("###STOP###")
    empty = LLMUser(ScriptedEngine(lambda r: "   ")).reply([(task, hist, random.Random(0))])[0]
    assert empty.stop and empty.error


def test_policy_agent_garbage_becomes_error_records(tmp_path):
    """A policy that emits malformed tool calls yields `error` episodes, rejected with reasons, no crash."""
    from agentfactory.synth.agents import PolicyAgent
    from agentfactory.synth.episode import EpisodeLimits, run_episodes, start_episode
    from agentfactory.synth.users import ScriptedUser

    from .fakes import ScriptedEngine

    cfg = small(domains=["retail_orders"])
    tasks = make_tasks(cfg, domain_paths(cfg))[:6]
    domain = find_domain("retail_orders")
    replies = iter(
        [
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_order<|tool_call_argument_begin|>{oops",
            "I am not sure.",
            "<|tool_calls_section_begin|>",
        ]
        * 10
    )
    agent = PolicyAgent(ScriptedEngine(lambda r: next(replies)))
    states = [
        start_episode(t, {"retail_orders": domain}, AgentSampling(), random.Random(t.id)) for t in tasks
    ]
    trajs = run_episodes(states, agent, ScriptedUser(), EpisodeLimits(max_turns=3))
    statuses = Counter(t.status.value for t in trajs)
    assert statuses["error"] >= 2
    err = next(t for t in trajs if t.status.value == "error")
    assert any("agent:" in e for e in err.meta["errors"])
    verdicts = [
        Judge().judge(s.task, t, s.tools.state, random.Random(0)) for s, t in zip(states, trajs, strict=True)
    ]
    assert not any(v.accepted for v in verdicts if v.reasons and v.reasons[0].startswith("status error"))


def test_llm_tasks_are_kept_only_when_grounded_and_solvable():
    from agentfactory.llm.config import EngineConfig
    from agentfactory.synth.llmtasks import LLMTaskConfig, generate_llm_tasks
    from agentfactory.tools.world import generate_world

    from .fakes import ScriptedEngine

    domain = find_domain("retail_orders")
    state = generate_world(domain, 4)
    order = sorted(k for k, o in state["orders"].items() if o["status"] == "pending")[0]
    good = {
        "kind": "single_call",
        "user_goal": f"Cancel order {order}, ordered by mistake.",
        "blueprint": [{"tool": "cancel_order", "args": {"order_id": order, "reason": "ordered by mistake"}}],
        "answer_facts": ["cancelled"],
        "rubric": {
            "final_state": {f"/orders/{order}/status": "cancelled"},
            "must_call": ["cancel_order"],
            "answer_contains": ["cancelled"],
        },
    }
    replies = iter(
        [
            json.dumps(good),
            json.dumps({**good, "rubric": {"must_call": ["refund_order"]}}),  # no such tool
            json.dumps({**good, "rubric": {"final_state": {f"/orders/{order}/price": 1}}}),  # no such path
            json.dumps({**good, "answer_facts": ["done"]}),  # the blueprint answer misses "cancelled"
            "Sure, here is a task: cancel something.",
        ]
    )
    cfg = LLMTaskConfig(engine=EngineConfig(model="unused"), per_world=5)
    kept, rejected = generate_llm_tasks(ScriptedEngine(lambda r: next(replies)), domain, state, 4, cfg)
    assert [t.id for t in kept] == ["retail_orders.llm0.w4"]
    assert kept[0].rubric.checks[0].path == f"/orders/{order}/status"
    reasons = [r["reason"] for r in rejected]
    assert "unknown tools ['refund_order']" in reasons[0]
    assert "has no 'price'" in reasons[1]
    assert "blueprint fails the rubric" in reasons[2]
    assert reasons[3].startswith("unusable reply")


def test_compact_agents_keep_the_tools_callable_at_a_fraction_of_the_prompt(tmp_path):
    """Compact prompts: one-line role, tools with their first sentence and bare schemas (names,
    types, enums, required kept), and a full episode with them is still accepted by the judge."""
    cfg = small(domains=["retail_orders"])
    domains = {"retail_orders": find_domain("retail_orders")}
    task = make_tasks(cfg, domain_paths(cfg))[0]
    full = sample_agent(task, domains, AgentSampling(), random.Random(0))
    compact = sample_agent(task, domains, AgentSampling(prompt="compact"), random.Random(0))
    assert [t.name for t in compact.tools] == [t.name for t in full.tools]
    size = lambda a: len(a.system_prompt) + len(json.dumps([t.to_openai() for t in a.tools]))  # noqa: E731
    assert size(compact) < 0.7 * size(full)
    assert "\n" not in compact.system_prompt and "Policy" not in compact.system_prompt
    for f, c in zip(full.tools, compact.tools, strict=True):
        assert c.parameters.get("required") == f.parameters.get("required")
        assert set(c.parameters["properties"]) == set(f.parameters["properties"])
        assert "description" not in json.dumps(c.parameters)
        assert c.description and f.description.startswith(c.description.rstrip("."))
    compact_cfg = cfg.model_copy(update={"agents": AgentSampling(prompt="compact")})
    summary = run_synth(compact_cfg, tmp_path, use_ray=False)
    assert summary["accepted"] == summary["episodes"] > 0


def test_worker_runs_ids_from_its_task_table_and_returns_shard_lines():
    from agentfactory.records import Trajectory
    from agentfactory.synth.worker import EpisodeWorker

    cfg = small(domains=["retail_orders"])
    tasks = make_tasks(cfg, domain_paths(cfg))[:6]
    worker = EpisodeWorker(cfg, domain_paths(cfg), tasks)
    finished = worker.run_ids([(t.id, 1) for t in tasks])
    records = worker.run([(t, 1) for t in tasks])
    assert [Trajectory.model_validate_json(f.line) for f in finished] == records  # same, serialized
    assert [(f.task_id, f.attempt, f.accepted) for f in finished] == [
        (r.task_id, 1, r.judge.accepted) for r in records
    ]


def test_pretraining_corpus_is_plain_text_with_recall_documents():
    from agentfactory.synth.render import trajectory_text
    from agentfactory.synth.worker import EpisodeWorker
    from agentfactory.train.recall import ENTITY, recall_documents

    cfg = small(domains=["retail_orders"])
    tasks = make_tasks(cfg, domain_paths(cfg))[:5]
    texts = [trajectory_text(t) for t in EpisodeWorker(cfg, domain_paths(cfg)).run([(t, 0) for t in tasks])]
    assert all("<|" not in t for t in texts)  # no chat template, no tool-call tokens: SFT teaches those
    assert any("The agent ran " in t for t in texts) and any("Customer: " in t for t in texts)
    corpus = "\n".join(texts)
    # the corpus's own values, no gap: what the copy check measures
    docs = recall_documents(texts, 20, random.Random(0), items=(6, 16), gap=0, fresh=False)
    assert len(docs) == 20 and docs == recall_documents(texts, 20, random.Random(0), (6, 16), 0, False)
    for d in docs:
        first, again = d.split("\nAgain: ")
        assert first == "Note: " + again
        assert all(item in corpus for item in again.rstrip(".").split(", "))
    # training documents: fresh values in the same formats, corpus text between list and repeat
    docs = recall_documents(texts, 50, random.Random(0), items=(2, 8), gap=400)
    assert docs == recall_documents(texts, 50, random.Random(0), items=(2, 8), gap=400)

    def shape(value: str) -> str:  # digits and punctuation kept, any word alike
        return re.sub(r"[A-Za-z]+", "a", re.sub(r"\d", "0", value))

    shapes = {shape(v) for v in ENTITY.findall(corpus)}
    fresh = gaps = 0
    for d in docs:
        head, rest = d.split(".\n", 1)
        between, again = rest.rsplit("Again: ", 1)
        listed = head.removeprefix("Note: ")
        assert again == listed + "."  # the repeat is the list, exactly
        values = listed.split(", ")
        assert 2 <= len(values) <= 8
        assert all(shape(v) in shapes for v in values), values  # the formats of the corpus's values
        fresh += sum(v not in corpus for v in values)
        assert len(between) <= 401 and (not between or between[:-1] in corpus)
        gaps += bool(between)
    assert fresh > 0.9 * sum(len(d.split(".\n", 1)[0].split(", ")) for d in docs)  # nothing to recall
    assert gaps > 40
    # keyed: each value named in the note and asked for by name, in another order, as a tool call does
    reordered = 0
    for d in recall_documents(texts, 30, random.Random(1), items=(2, 6), gap=0, keyed=1.0):
        head, again = d.removeprefix("Note: ").split(".\nAgain: ")
        pairs = [pair.split(" is ", 1) for pair in head.split(", ")]
        asked = json.loads(again.removesuffix("."))
        assert asked == dict(pairs) and len(asked) == len(pairs)  # every value, under its own key
        reordered += list(asked) != [k for k, _ in pairs]
    assert reordered > 10
    mixed = recall_documents(texts, 200, random.Random(2), keyed=0.5)
    assert 60 < sum(d.rstrip(".").endswith("}") for d in mixed) < 140


def test_oracle_slips_then_recovers_and_the_slip_is_not_a_target(tmp_path):
    from agentfactory.model import encode_with_mask, load_tokenizer, train_tokenizer

    cfg = small(agent={"kind": "oracle", "slip": 1.0})
    summary = run_synth(cfg, tmp_path / "out", use_ray=False)
    records = list(ShardStore(tmp_path / "out", cfg.fingerprint()).records())
    assert summary["accepted"] >= 0.8 * summary["tasks"]  # a slipped write that went through is rejected
    slipped = 0
    for rec in records:
        weights = [m.weight for m in rec.messages if m.role == "assistant"]
        assert weights.count(0) <= 1
        if 0 not in weights:
            continue
        slipped += 1
        i = next(i for i, m in enumerate(rec.messages) if m.weight == 0)
        wrong, result, right = rec.messages[i : i + 3]
        assert result.role == "tool" and result.content.startswith("Error")
        assert right.role == "assistant" and right.weight is None and right.tool_calls
        (w,), (r,) = wrong.tool_calls, right.tool_calls
        assert w.name == r.name and w.arguments != r.arguments
        changed = [k for k in r.arguments if w.arguments[k] != r.arguments[k]]
        assert len(changed) == 1 and str(r.arguments[changed[0]]) in rec.messages[1].content + "".join(
            m.content or "" for m in rec.messages if m.role == "user"
        )  # the right value is the one the user said
    assert slipped >= 0.6 * len(records)

    export_dataset(records, tmp_path / "ds")
    rows = datasets.Dataset.from_parquet(str(tmp_path / "ds" / "data.parquet"))
    exported = [m.get("weight") for row in rows for m in row["messages"] if m["role"] == "assistant"]
    assert exported.count(0) >= 0.6 * len(rows)  # the export keeps the weights (OpenAI fine-tuning's)
    rec = next(r for r in records if any(m.weight == 0 for m in r.messages))
    messages = [m.to_openai() for m in rec.messages]
    assert [m.get("weight") for m in messages if m["role"] == "assistant"].count(0) == 1
    text = "\n".join(m.get("content") or "" for m in messages) * 3
    train_tokenizer([text], 400, tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    ids, mask = encode_with_mask(tok, messages)
    unweighted = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    ids_all, mask_all = encode_with_mask(tok, unweighted)
    assert ids == ids_all  # the weight changes the targets, never the text
    assert 0 < sum(mask) < sum(mask_all)


def test_mistype_changes_one_digit_or_swaps_two_letters():
    from agentfactory.synth.agents import mistype

    rng = random.Random(0)
    for value in ("ORD-1042", "william84@example.org", "Thomas.Garcia", "ab"):
        wrong = mistype(value, rng)
        assert wrong != value and len(wrong) == len(value)
        diff = [i for i, (a, b) in enumerate(zip(value, wrong, strict=True)) if a != b]
        if any(ch.isdigit() for ch in value):
            assert len(diff) == 1 and wrong[diff[0]].isdigit()
        else:
            assert len(diff) == 2 and diff[1] == diff[0] + 1 and sorted(wrong) == sorted(value)
    assert mistype("aa", rng) == "aa" and mistype("--", rng) == "--"  # nothing to mistype
