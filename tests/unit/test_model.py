"""K2ForCausalLM and MLA: max-logit tracking, YaRN, causality, loss, checkpointing, generate, meta init."""

import math

import pytest
import torch
import torch.nn.functional as F

from agentfactory.model import K2Config, K2ForCausalLM
from agentfactory.model.attention import apply_rope, rope_inv_freq, softmax_scale

YARN = dict(
    factor=40.0,
    original_max_position_embeddings=4096,
    beta_fast=32.0,
    beta_slow=1.0,
    mscale=1.0,
    mscale_all_dim=0.7,
)


def _model(seed=0, **overrides) -> K2ForCausalLM:
    torch.manual_seed(seed)
    return K2ForCausalLM(K2Config.preset("debug", **overrides))


def naive_max_logits(attn, x_BTD, cos, sin) -> torch.Tensor:
    """Per head max over all batches and causal pairs of the softmax input, from the raw weights."""
    B, T, _ = x_BTD.shape
    H, N, R = attn.n_heads, attn.nope_dim, attn.rope_dim
    q = attn.q_b_proj(attn.q_a_layernorm(attn.q_a_proj(x_BTD))).view(B, T, H, N + R)
    ckv, k_rope = attn.kv_a_proj_with_mqa(x_BTD).split([attn.kv_lora_rank, R], -1)
    k_nope = attn.kv_b_proj(attn.kv_a_layernorm(ckv)).view(B, T, H, -1)[..., :N]
    best = torch.full((H,), -math.inf)
    for b in range(B):
        for h in range(H):
            qr = apply_rope(q[b, :, h, N:], cos, sin)
            kr = apply_rope(k_rope[b], cos, sin)
            for i in range(T):
                for j in range(i + 1):
                    s = (q[b, i, h, :N] @ k_nope[b, j, h] + qr[i] @ kr[j]) * attn.scale
                    best[h] = max(best[h], s)
    return best


def test_max_logit_tracking_matches_naive():
    model = _model().eval()
    ids = torch.randint(0, 512, (2, 12))
    model.set_track_max_logits(True)
    with torch.no_grad():
        model(ids)
        got = model.pop_max_logits()
        # recompute layer 0's input by hand: embedding -> input_layernorm
        layer = model.layers[0]
        x = layer.input_layernorm(model.embed_tokens(ids))
        cos, sin = model.rotary(torch.arange(12), x.dtype)
        want = naive_max_logits(layer.self_attn, x, cos, sin)
    assert got[0].shape == (4,)
    assert torch.allclose(got[0], want, atol=1e-5)
    assert all(m is None for m in model.pop_max_logits())  # popped = reset


def test_max_logits_are_a_running_max_and_off_by_default():
    model = _model().eval()
    with torch.no_grad():
        model(torch.randint(0, 512, (1, 8)))
        assert model.layers[0].self_attn.max_logits is None  # not tracked unless asked
        model.set_track_max_logits(True)
        model(torch.randint(0, 512, (1, 8)))
        first = model.layers[0].self_attn.max_logits.clone()
        model(torch.randint(0, 512, (1, 8)))
        assert (model.layers[0].self_attn.max_logits >= first).all()


def test_yarn_matches_transformers():
    from transformers import DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = K2Config.preset("k2-mini", rope_scaling=YARN, max_position_embeddings=163840)
    hf = DeepseekV3Config(
        qk_rope_head_dim=64,
        max_position_embeddings=163840,
        rope_scaling={"type": "yarn", **YARN},
        rope_theta=config.rope_theta,
    )
    hf_inv_freq, hf_scale = ROPE_INIT_FUNCTIONS["yarn"](hf)
    inv_freq, scale = rope_inv_freq(config)
    assert torch.allclose(inv_freq, hf_inv_freq) and scale == pytest.approx(hf_scale)
    mscale = 0.1 * 0.7 * math.log(40.0) + 1.0
    assert softmax_scale(config) == pytest.approx(96**-0.5 * mscale**2)
    assert scale == pytest.approx((0.1 * math.log(40.0) + 1.0) / mscale)


def test_causal_and_batch_independent():
    model = _model().eval()
    ids = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        full = model(ids).logits
        prefix = model(ids[:1, :11]).logits
    assert torch.allclose(full[:1, :11], prefix, atol=1e-5)


def test_loss_is_shifted_masked_cross_entropy():
    model = _model().eval()
    ids = torch.randint(0, 512, (2, 10))
    labels = ids.clone()
    labels[0, :4] = -100  # e.g. a prompt that is not trained on
    out = model(ids, labels=labels)
    logits, targets = out.logits[:, :-1], labels[:, 1:]
    want = F.cross_entropy(logits.reshape(-1, 512), targets.reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, want, atol=1e-6)
    assert model(ids).loss is None


def test_activation_checkpointing_gives_same_grads():
    model = _model().train()
    ids = torch.randint(0, 512, (2, 16))
    model(ids, labels=ids).loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    counts = model.layers[1].mlp.tokens_per_expert.clone()
    model.zero_grad()
    model.gradient_checkpointing = True
    model(ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, want[n], atol=1e-6), n
    assert torch.equal(model.layers[1].mlp.tokens_per_expert, 2 * counts)  # recompute not counted


def test_generate_greedy_and_sampled():
    model = _model().eval()
    prompt = torch.randint(0, 512, (2, 5))
    out = model.generate(prompt, max_new_tokens=6)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():  # each greedy token is the argmax given its prefix
        for t in range(5, 11):
            assert torch.equal(model(out[:, :t]).logits[:, -1].argmax(-1), out[:, t])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s1 = model.generate(prompt, 6, temperature=1.0, top_k=20, generator=g1)
    assert torch.equal(s1, model.generate(prompt, 6, temperature=1.0, top_k=20, generator=g2))
    stop = int(out[0, 5])
    early = model.generate(prompt[:1], max_new_tokens=6, eos_token_id=stop)
    assert early.shape == (1, 6)


def test_meta_build_and_init_weights():
    config = K2Config.preset("debug")
    with torch.device("meta"):
        model = K2ForCausalLM(config)
    assert model.lm_head.weight.is_meta
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    std = config.initializer_range
    assert model.embed_tokens.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.layers[1].mlp.experts.down_proj.std().item() == pytest.approx(std, rel=0.05)
    assert torch.equal(model.norm.weight, torch.ones(config.hidden_size))
    assert not model.layers[1].mlp.gate.e_score_correction_bias.any()
    inv_freq, _ = rope_inv_freq(config)
    assert torch.equal(model.rotary.inv_freq, inv_freq)
    assert torch.isfinite(model(torch.randint(0, 512, (1, 8))).logits).all()


def test_bf16_forward_backward():
    model = _model().to(torch.bfloat16).train()
    ids = torch.randint(0, 512, (2, 16))
    out = model(ids, labels=ids)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    out.loss.backward()
    assert model.layers[1].mlp.experts.gate_proj.grad.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 weights, bf16 compute
        loss = _model().train()(ids, labels=ids).loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_cross_entropy_matches_torch(dtype, monkeypatch):
    import agentfactory.model.loss as loss_mod

    monkeypatch.setattr(loss_mod, "CHUNK_ELEMENTS", 7 * 50)  # several chunks, a ragged last one
    logits = (3 * torch.randn(40, 50)).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (40,))
    targets[::3] = -100
    ours = loss_mod.cross_entropy(logits, targets)
    (g_ours,) = torch.autograd.grad(2.0 * ours, logits)
    want = F.cross_entropy(logits.float(), targets, ignore_index=-100)
    (g_want,) = torch.autograd.grad(2.0 * want, logits)
    assert torch.allclose(ours, want, atol=1e-6)
    assert g_ours.dtype == dtype and not g_ours[::3].any()
    assert torch.allclose(g_ours.float(), g_want.float(), atol=1e-6 if dtype == torch.float32 else 1e-3)
    assert torch.isnan(loss_mod.cross_entropy(logits, torch.full((40,), -100)))  # like torch: 0/0
