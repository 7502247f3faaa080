"""The partial-rollout buffer on the real VLLMEngine: with unchanged weights and greedy decoding, a
rollout resumed across 3 iterations equals one generated in one go, with the right version stamps."""

import pytest

from agentfactory.llm import GenerationRequest, SamplingParams
from agentfactory.model import K2ForCausalLM, encode
from agentfactory.records import Message, ToolSpec
from agentfactory.rl.buffer import PartialRolloutBuffer, PartialRolloutConfig, trajectories
from agentfactory.rl.envs.base import EnvTask

pytest.importorskip("vllm")


def test_resumed_across_three_iterations_equals_one_go(
    vllm_engine, k2_checkpoint, k2_tokenizer, k2_toolcall_checkpoint, toolcall_case
):
    messages, tools, _ = toolcall_case
    prompt = encode(k2_tokenizer, messages, tools, add_generation_prompt=True)
    sd = K2ForCausalLM.from_pretrained(k2_toolcall_checkpoint).state_dict()
    base = vllm_engine.policy_version + 1
    try:
        vllm_engine.update_weights(sd, base)
        greedy = SamplingParams(temperature=0.0, max_tokens=60, logprobs=True)
        whole = vllm_engine.generate([GenerationRequest(prompt_ids=prompt, params=greedy)])[0][0]
        seg = max(1, -(-len(whole.token_ids) // 3))
        task = EnvTask(
            id="t",
            env="x",
            kind="tool_use",
            prompt=[Message.from_openai(m) for m in messages],
            tools=[ToolSpec.from_openai(t) for t in tools],
        )
        buf = PartialRolloutBuffer(PartialRolloutConfig(segment_tokens=seg, max_staleness=5))
        buf.add(task, prompt, n=2, budget=60)
        groups = []
        for i in range(3):
            if i:  # the same weights under a new version: only the stamps may change
                vllm_engine.update_weights(sd, base + i)
            groups += buf.step(vllm_engine, greedy).groups
        (group,) = groups
        for r in group:
            assert r.token_ids == whole.token_ids
            assert r.versions == [base] * seg + [base + 1] * seg + [base + 2] * (
                len(whole.token_ids) - 2 * seg
            )
            assert r.segments == 3
        t = trajectories(groups)[0][0]
        assert t.messages[-1].tool_calls and t.messages[-1].tool_calls[0].name == "get_weather"
        diffs = [abs(a - b) for a, b in zip(group[0].logprobs, whole.logprobs, strict=True)]
        assert max(diffs) < 1e-3
    finally:  # the session engine goes back to its checkpoint's weights
        vllm_engine.update_weights(k2_checkpoint, vllm_engine.policy_version + 1)
