"""VLLMEngine on the real vLLM-CPU engine (one engine for the session, see conftest.py): batched chat
and exact prompt-id continuations, sampled-token logprobs, over-long prompts, in-place weight updates
that match a fresh load (MLA kv_b_proj and MoE experts included), version tags, token-in-token-out
multi-turn episodes, sleep/wake no-ops on CPU."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from agentfactory.llm import Conversation, GenerationRequest, SamplingParams, generate_turns
from agentfactory.model import K2ForCausalLM, encode
from agentfactory.model.chat import IM_END
from agentfactory.records import Message, ToolSpec

pytestmark = pytest.mark.integration

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CHAT = [Message(role="system", content="Be brief."), Message(role="user", content="check my order status")]
TOOLS = [ToolSpec.from_openai(WEATHER_TOOL)]


def _reference_logprobs(model: K2ForCausalLM, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logp = model(torch.tensor([prompt])).logits.float().log_softmax(-1)[0, :-1]
    return logp.gather(-1, torch.tensor(prompt[1:])[:, None])[:, 0]


@pytest.fixture(scope="module")
def prompts(k2_tokenizer, toolcall_case):
    messages, tools, _ = toolcall_case
    ids = encode(k2_tokenizer, [m.to_openai() for m in CHAT], [WEATHER_TOOL], add_generation_prompt=True)
    return [ids, ids[:40] + list(range(20, 120)), encode(k2_tokenizer, messages, tools)]


def test_worker_threads_use_every_core_on_a_small_machine(vllm_engine):
    """vLLM-CPU keeps a core per worker for its scheduler; on ≤ 2 cores our default keeps none (rollouts
    1.3-1.4x faster, bench/vllm_cpu_cores.py), so the worker's compute threads cover every core."""
    psutil = pytest.importorskip("psutil")
    cores = os.sched_getaffinity(0)
    workers = [p for p in psutil.Process().children(recursive=True) if p.name() == "VLLM::Worker"]
    assert workers
    for worker in workers:
        bound = set().union(*(os.sched_getaffinity(t.id) for t in worker.threads()))
        assert (bound == cores) == (len(cores) <= 2), (bound, cores)
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in os.environ  # set only while the engine started


def test_batched_chat_and_prompt_ids(vllm_engine, k2_tokenizer):
    tools = [t.to_openai() for t in TOOLS]
    chat_ids = encode(k2_tokenizer, [m.to_openai() for m in CHAT], tools, add_generation_prompt=True)
    params = SamplingParams(max_tokens=24, temperature=1.0, seed=7, logprobs=True)
    reqs = [
        GenerationRequest(id="chat", messages=CHAT, tools=TOOLS, params=params),
        GenerationRequest(id="ids", prompt_ids=chat_ids, params=params),
        GenerationRequest(id="n2", prompt_ids=chat_ids, params=params.model_copy(update={"n": 2, "seed": 8})),
        GenerationRequest(id="greedy", messages=CHAT, params=SamplingParams(max_tokens=8, temperature=0)),
    ]
    chat, ids, n2, greedy = vllm_engine.generate(reqs)
    # a chat request is rendered with our template: same prompt ids, same seed -> same sample
    assert chat[0].token_ids == ids[0].token_ids and chat[0].prompt_tokens == len(chat_ids)
    assert [c.index for c in n2] == [0, 1] and n2[0].token_ids != n2[1].token_ids
    for c in (chat[0], ids[0], *n2):
        assert (
            c.finish_reason in ("stop", "length")
            and c.error is None
            and c.policy_version == vllm_engine.policy_version
        )
        assert len(c.logprobs) == len(c.token_ids) == c.completion_tokens and max(c.logprobs) <= 0
        text = k2_tokenizer.decode(c.token_ids, skip_special_tokens=False).removesuffix(IM_END)
        assert text.startswith(c.text) and len(text) - len(c.text) <= 3  # vLLM holds back a cut UTF-8 char
        assert c.parse_error is not None or c.content is not None  # garbage parses to a result, never raises
    assert greedy[0].logprobs is None and len(greedy[0].token_ids) <= 8


def test_sampled_logprobs_are_the_models(vllm_engine, prompts):
    """The logprob reported with each sampled token = vLLM's score of that token in context."""
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=3, logprobs=True)
    (c,) = vllm_engine.generate([GenerationRequest(prompt_ids=prompts[0], params=params)])[0]
    scored = vllm_engine.prompt_logprobs([prompts[0] + c.token_ids])[0][len(prompts[0]) - 1 :]
    assert max(abs(a - b) for a, b in zip(scored, c.logprobs, strict=True)) < 1e-4


def test_continuation_from_a_prefix_is_exact(vllm_engine, prompts):
    greedy = SamplingParams(max_tokens=20, temperature=0)
    full = vllm_engine.generate([GenerationRequest(prompt_ids=prompts[1], params=greedy)])[0][0].token_ids
    cut = 8
    rest = vllm_engine.generate(
        [
            GenerationRequest(
                prompt_ids=prompts[1] + full[:cut], params=greedy.model_copy(update={"max_tokens": 12})
            )
        ]
    )[0][0].token_ids
    assert full[cut:] == rest[: len(full) - cut]


def test_over_long_prompt_is_a_record_not_a_crash(vllm_engine, prompts):
    max_len = vllm_engine.max_model_len
    too_long = GenerationRequest(id="long", prompt_ids=[20] * (max_len + 5))
    ok = GenerationRequest(id="ok", prompt_ids=prompts[0], params=SamplingParams(max_tokens=4))
    near = GenerationRequest(id="near", prompt_ids=[20] * (max_len - 3), params=SamplingParams(max_tokens=50))
    bad = GenerationRequest(id="bad", prompt_ids=[10**7], params=SamplingParams(max_tokens=4))  # out of vocab
    long_out, ok_out, near_out, bad_out = vllm_engine.generate([too_long, ok, near, bad])
    assert long_out[0].finish_reason == "length" and "context" in long_out[0].error
    assert ok_out[0].error is None and ok_out[0].token_ids
    assert near_out[0].finish_reason == "length" and len(near_out[0].token_ids) <= 3  # clipped to the context
    assert bad_out[0].finish_reason == "error" and bad_out[0].error


def test_update_weights_equals_a_fresh_load(vllm_engine, k2_checkpoint, prompts):
    """Perturb every tensor (MLA kv_b_proj, MoE experts and router included), push it in place: the
    engine scores like our reference model of those weights; pushing the original checkpoint back
    gives the logprobs of the engine's fresh load bit for bit (≤ 1e-3 required)."""
    fresh = vllm_engine.prompt_logprobs(prompts)  # the session engine is a fresh load of k2_checkpoint
    model = K2ForCausalLM.from_pretrained(k2_checkpoint)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(
                torch.randn(p.shape, generator=gen)
                * (0.05 if "experts" in name or "kv_b_proj" in name else 0.02)
            )
    timings = vllm_engine.update_weights(model.state_dict(), version=1)
    assert timings["moe_repacked"] == model.config.num_moe_layers and timings["total_s"] < 5
    updated = vllm_engine.prompt_logprobs(prompts)
    ref_diff = 0.0
    for p, got, before in zip(prompts, updated, fresh, strict=True):
        ref_diff = max(ref_diff, float((torch.tensor(got) - _reference_logprobs(model, p)).abs().max()))
        assert (torch.tensor(got) - torch.tensor(before)).abs().max() > 0.05  # the update took effect
    assert ref_diff < 1e-3  # vLLM after the update == our K2ForCausalLM on the perturbed weights
    out = vllm_engine.generate(
        [GenerationRequest(prompt_ids=prompts[0], params=SamplingParams(max_tokens=3))]
    )
    assert out[0][0].policy_version == 1

    # only layer 2 (its MLA and all its experts) changes: the rest keeps its packed kernels
    partial = {k: v for k, v in original.items() if k.startswith("layers.2.")}
    vllm_engine.update_weights(partial, version=2)
    model.load_state_dict({**model.state_dict(), **partial})
    got = vllm_engine.prompt_logprobs(prompts[:1])[0]
    assert (torch.tensor(got) - _reference_logprobs(model, prompts[0])).abs().max() < 1e-3

    vllm_engine.update_weights(k2_checkpoint, version=3)  # back to the original, from the checkpoint dir
    restored = vllm_engine.prompt_logprobs(prompts)
    diff = max(abs(a - b) for r, f in zip(restored, fresh, strict=True) for a, b in zip(r, f, strict=True))
    print(f"\nupdated vs reference model {ref_diff:.2e}; restored vs fresh load {diff:.2e}; push {timings}")
    assert diff <= 1e-3
    assert vllm_engine.policy_version == 3
    with pytest.raises(ValueError, match="all 8 experts"):
        vllm_engine.update_weights(
            {"model.layers.1.mlp.experts.0.gate_proj.weight": torch.zeros(256, 256)}, 4
        )


def test_multi_turn_episode_is_token_in_token_out(vllm_engine, k2_tokenizer):
    convs = [Conversation(k2_tokenizer, CHAT, TOOLS) for _ in range(3)]
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=1, logprobs=True)
    for turn in range(3):
        completions = generate_turns(vllm_engine, convs, params)
        assert all(c.error is None for c in completions)
        for conv in convs:
            conv.add_messages([Message(role="user", content=f"turn {turn}: go on")])
    for conv in convs:
        assert conv.num_sampled > 0 and len(conv.parsed) == 3
        assert len(conv.ids) == len(conv.mask) == len(conv.logprobs) == len(conv.versions)
        # the engine scores the episode's sampled tokens as it sampled them (no re-tokenization)
        scored = vllm_engine.prompt_logprobs([conv.ids])[0]
        pairs = [(s, lp) for s, lp, m in zip(scored, conv.logprobs[1:], conv.mask[1:], strict=True) if m]
        assert len(pairs) == conv.num_sampled and max(abs(s - lp) for s, lp in pairs) < 1e-4


def test_sleep_and_wake_are_noops_on_cpu(vllm_engine, prompts, caplog):
    caplog.set_level(logging.INFO, logger="agentfactory.llm.vllm_engine")
    vllm_engine.sleep()
    vllm_engine.wake_up()
    out = vllm_engine.generate(
        [GenerationRequest(prompt_ids=prompts[0], params=SamplingParams(max_tokens=2))]
    )
    assert out[0][0].token_ids and "no-op" in caplog.text
