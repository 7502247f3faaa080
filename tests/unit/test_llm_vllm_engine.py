"""VLLMEngine without vLLM: bad model paths fail before any engine starts, vLLM outputs map to
completions (garbage or half tool calls -> parse_error, never an exception), state dicts convert to
checkpoint names, and partial MoE updates are refused."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from agentfactory.llm import GenerationRequest, SamplingParams
from agentfactory.llm.local import admit, failed
from agentfactory.llm.vllm_engine import VLLMEngine, _cpu_reserved_cores, _native_rope, check_model_dir
from agentfactory.model import K2Config, K2ForCausalLM

pytestmark = pytest.mark.unit


def test_missing_or_invalid_model_path_fails_before_the_engine(tmp_path):
    vllm_loaded = "vllm" in sys.modules
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VLLMEngine(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        VLLMEngine(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        check_model_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match="model_type"):
        check_model_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deepseek_v3"}))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        check_model_dir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="tokenizer"):  # weights but no tokenizer
        VLLMEngine(tmp_path)
    assert vllm_loaded or "vllm" not in sys.modules  # nothing above started (or even imported) vLLM


def _engine(**attrs) -> VLLMEngine:
    engine = object.__new__(VLLMEngine)  # the mapping code only, no vLLM
    engine.__dict__.update(policy_version=4, eos_token_id=1, max_model_len=64, **attrs)
    return engine


def _output(text, ids, finish="stop", logprobs=None):
    return SimpleNamespace(index=0, text=text, token_ids=ids, finish_reason=finish, logprobs=logprobs)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("Sure.", True),
        (
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>"
            '{"a": 1}<|tool_call_end|><|tool_calls_section_end|>',
            True,
        ),
        ("<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{", False),
        ("<|tool_call_end|>garbage<|im_middle|>", False),
        ("<|tool_calls_section_begin|><|tool_call_begin|>functions.f<|tool_call_argument_begin|>{}", False),
    ],
)
def test_outputs_map_to_completions_and_bad_tool_calls_to_parse_errors(text, ok):
    engine = _engine()
    req = GenerationRequest(id="r", prompt_ids=[5, 6], params=SamplingParams(logprobs=True))
    lps = [{7: SimpleNamespace(logprob=-0.5)}, {1: SimpleNamespace(logprob=-0.25)}]
    c = engine._completion(
        req, _output(text, [7, 1], logprobs=lps), SimpleNamespace(prompt_token_ids=[5, 6]), 4
    )
    assert (c.parse_error is None) == ok
    assert c.token_ids == [7, 1] and c.logprobs == [-0.5, -0.25] and c.policy_version == 4
    assert c.prompt_tokens == 2 and c.completion_tokens == 2 and c.request_id == "r"
    if ok:
        assert [t.name for t in c.tool_calls] == (["f"] if "functions.f:0" in text else [])
    else:
        assert c.tool_calls == [] and c.content == text  # the raw text is kept


def test_failed_requests_are_records():
    req = GenerationRequest(id="x", prompt_ids=[1], params=SamplingParams(n=3))
    out = failed(req, "length", "too long", 4, 99)
    assert [(c.index, c.finish_reason, c.error, c.prompt_tokens, c.policy_version) for c in out] == [
        (k, "length", "too long", 99, 4) for k in range(3)
    ]
    # unusable prompts: out-of-vocabulary ids and empty prompts are errors, over-long ones "length"
    for ids, reason in (([1, 70], "error"), ([], "error"), ([1] * 64, "length")):
        _, out = admit(None, GenerationRequest(prompt_ids=ids), vocab_size=64, max_model_len=64, version=0)
        assert out is not None and out[0].finish_reason == reason and out[0].error
    assert admit(None, GenerationRequest(prompt_ids=[1, 2]), 64, 64, 0) == ([1, 2], None)


def test_state_dict_converts_to_checkpoint_names_and_partial_experts_are_refused():
    config = K2Config.preset("debug")
    engine = _engine(config={"n_routed_experts": config.n_routed_experts})
    state = K2ForCausalLM(config).state_dict()
    hf = engine._checkpoint_names(state)
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in hf and "lm_head.weight" in hf
    assert not any(k.startswith("model.rotary") or "tokens_per_expert" in k for k in hf)
    assert engine._checkpoint_names(hf).keys() == hf.keys()  # already in checkpoint format
    partial = {k: v for k, v in hf.items() if ".experts.3." not in k}
    with pytest.raises(ValueError, match="all 8 experts"):
        engine._checkpoint_names(partial)
    only_attention = {k: v for k, v in hf.items() if "self_attn" in k}
    assert engine._checkpoint_names(only_attention).keys() == only_attention.keys()
    assert all(t.is_contiguous() and t.device.type == "cpu" for t in hf.values())


def test_unpadded_experts_required_for_cpu_updates():
    engine = _engine(config={"moe_intermediate_size": 40}, on_cpu=True)
    with pytest.raises(NotImplementedError, match="% 32"):
        engine.update_weights({"lm_head.weight": torch.zeros(1)}, 1)


def test_native_rope_is_forced_on_cpu():
    assert _native_rope(None) == {"custom_ops": ["-rotary_embedding"]}
    assert _native_rope({"custom_ops": ["all"], "mode": 0}) == {
        "custom_ops": ["all", "-rotary_embedding"],
        "mode": 0,
    }
    assert _native_rope({"custom_ops": ["+rotary_embedding"]})["custom_ops"] == ["+rotary_embedding"]


def test_cpu_reserved_cores_none_on_small_machines_else_vllms_choice(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    for cores, expected in ((1, 0), (2, 0), (3, None), (16, None)):
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert _cpu_reserved_cores(None) == expected
        assert _cpu_reserved_cores(1) == 1  # an explicit request always wins
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")
    assert _cpu_reserved_cores(None) is None  # the user's environment stands
