"""Token-in-token-out episodes on a scripted engine: the engine is asked to continue from the
episode's exact ids (prompt + sampled + rendered env turns), the mask marks what the policy sampled,
and with canonical sampled ids the trace equals `encode` of the whole conversation."""

import random
from types import SimpleNamespace

import pytest

from agentfactory.llm.base import SamplingParams
from agentfactory.model.chat import IM_END, encode, encode_with_mask, render_assistant
from agentfactory.model.tokenizer import train_tokenizer
from agentfactory.records import Message, RolloutStatus, ToolCall
from agentfactory.synth.agents import AgentSampling, PolicyAgent
from agentfactory.synth.episode import EpisodeLimits, run_episodes, start_episode
from agentfactory.synth.tito import TokenTrace, engine_tokenizer, next_prompt_ids
from agentfactory.synth.users import ScriptedUser
from agentfactory.tools import find_domain
from agentfactory.tools.tasks import sample_tasks
from tests.unit.fakes import ScriptedEngine

PARAMS = SamplingParams(temperature=1.0, max_tokens=64, logprobs=True)


@pytest.fixture(scope="module")
def tok():
    rng = random.Random(0)
    words = "order customer email cancel return address please tell me your id the status".split()
    return train_tokenizer([" ".join(rng.choices(words, k=12)) for _ in range(300)], 400)


@pytest.fixture(scope="module")
def domain():
    return find_domain("retail_orders")


def _tool_task(domain):
    return next(t for t in sample_tasks(domain, [0]) if t.blueprint and t.blueprint.calls)


def _call_text(task) -> str:
    """The blueprint's first call as the model writes it (the engine's text has no `<|im_end|>`)."""
    step = task.blueprint.calls[0]
    call = ToolCall(id=f"functions.{step.tool}:0", name=step.tool, arguments=step.args)
    return render_assistant(Message(role="assistant", content="", tool_calls=[call]).to_openai())[
        : -len(IM_END)
    ]


def _three_turns(engine: ScriptedEngine, task):
    """Ask a question (the user answers), call a tool (a result comes back), then finish."""
    im_assistant = engine.tokenizer.convert_tokens_to_ids("<|im_assistant|>")

    def reply(request):
        turn = request.prompt_ids.count(im_assistant) - 1  # the generation prompt is one
        return ["Could you tell me your email?", _call_text(task), "All done."][turn]

    return reply


def test_episode_ids_are_prompt_plus_sampled_plus_continuations(tok, domain):
    task = _tool_task(domain)
    engine = ScriptedEngine(lambda r: "", tokenizer=tok)
    engine.reply = _three_turns(engine, task)
    sampling = AgentSampling(distractor_fraction=0.0, cross_domain=0.0)
    ep = start_episode(task, {domain.name: domain}, sampling, random.Random(0))
    agent = PolicyAgent(engine, PARAMS, engine_tokenizer(engine))
    (traj,) = run_episodes([ep], agent, ScriptedUser(), EpisodeLimits(max_turns=4))
    assert traj.status == RolloutStatus.completed and traj.meta["assistant_turns"] == 3
    assert [m.role for m in traj.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    trace = TokenTrace.model_validate(traj.meta["tito"])
    tools = [t.to_openai() for t in traj.tools]
    messages = [m.to_openai() for m in traj.messages]

    # every request continues the previous one's ids + its sampled ids; the first is the chat prompt
    prompts = [r.prompt_ids for r in engine.requests]
    assert all(r.messages is None for r in engine.requests)
    assert prompts[0] == encode(tok, messages[:2], tools, add_generation_prompt=True)
    assert trace.prompt_tokens == len(prompts[0])
    sampled = [tok.encode(t + IM_END, add_special_tokens=False) for t in ("Could you tell me your email?", _call_text(task), "All done.")]  # fmt: skip
    for k in range(1, 3):
        assert prompts[k][: len(prompts[k - 1]) + len(sampled[k - 1])] == prompts[k - 1] + sampled[k - 1]
    assert trace.ids == prompts[2] + sampled[2]
    expected_mask = [0] * len(trace.ids)
    for p, s in zip(prompts, sampled, strict=True):
        expected_mask[len(p) : len(p) + len(s)] = [1] * len(s)
    assert trace.mask == expected_mask and trace.sampled == sum(map(len, sampled))
    assert trace.logprobs == [-0.5 if m else 0.0 for m in trace.mask]
    assert trace.finish_reasons == ["stop"] * 3 and traj.token_ids == [t for s in sampled for t in s]

    # the sampled ids are canonical here, so the trace is the whole conversation rendered once,
    # and its mask is the chat format's assistant mask
    ids, mask = encode_with_mask(tok, messages, tools)
    assert trace.ids == ids == encode(tok, messages, tools)
    assert trace.mask == mask


def test_messages_path_keeps_no_trace(tok, domain):
    task = _tool_task(domain)
    engine = ScriptedEngine(lambda r: "All done.")
    sampling = AgentSampling(distractor_fraction=0.0, cross_domain=0.0)
    ep = start_episode(task, {domain.name: domain}, sampling, random.Random(0))
    assert engine_tokenizer(engine) is None  # an endpoint-like engine: messages in
    (traj,) = run_episodes([ep], PolicyAgent(engine, PARAMS), ScriptedUser(), EpisodeLimits())
    assert engine.requests[0].messages is not None and "tito" not in traj.meta and traj.token_ids


def test_a_turn_cut_after_its_tool_calls_gets_its_end_token_as_an_env_token(tok, domain):
    task = _tool_task(domain)
    call = tok.encode(_call_text(task), add_special_tokens=False)  # no <|im_end|>: finish "length"
    tools = [s for s in domain.tool_specs() if s.name == task.blueprint.calls[0].tool]
    system = Message(role="system", content="Help.")
    opening = Message(role="user", content="Hi")
    prompt = encode(tok, [system.to_openai(), opening.to_openai()], [t.to_openai() for t in tools], True)
    trace = TokenTrace()
    trace.extend(prompt, call, [-1.0] * len(call), 3, "length")
    assistant = Message(role="assistant", content="", tool_calls=[ToolCall(id="functions.x:0", name=task.blueprint.calls[0].tool, arguments=task.blueprint.calls[0].args)])  # fmt: skip
    result = Message(role="tool", tool_call_id="functions.x:0", content='{"ok": true}')
    ep = SimpleNamespace(
        messages=[system, opening, assistant, result], agent=SimpleNamespace(tools=tools), trace=trace
    )
    ids = next_prompt_ids(tok, ep)
    im_end = tok.convert_tokens_to_ids(IM_END)
    assert ids[: len(trace.ids) + 1] == [*trace.ids, im_end]
    trace.extend(ids, [5, im_end], [-0.1, -0.2], 4, "stop")
    n = len(prompt) + len(call)
    assert trace.mask[n] == 0 and trace.ids[n] == im_end and trace.mask[-2:] == [1, 1]
    assert trace.versions[-1] == 4 and trace.versions[len(prompt)] == 3
    with pytest.raises(ValueError, match="continue"):
        trace.extend([*ids[:-1], 7], [5], None, 4, "stop")
