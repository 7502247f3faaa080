"""QK-Clip: row scales, per-head logits after clipping, untouched heads, and a high-lr training run."""

import pytest
import torch

from agentfactory.model import K2Config, K2ForCausalLM
from agentfactory.model.attention import MLA
from agentfactory.optim import qk_clip, qk_clip_row_scales
from agentfactory.train.clip_demo import qk_clip_run


@pytest.fixture(autouse=True)
def _one_thread():
    # On a shared 2-core machine two intra-op threads can be 30× slower than one for these tiny matmuls.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_row_scales():
    s_H = torch.tensor([50.0, 200.0, 100.0, 400.0])
    q, kv, clipped = qk_clip_row_scales(s_H, tau=100.0, nope_dim=3, rope_dim=2, v_dim=4)
    assert clipped.tolist() == [False, True, False, True]
    q_HK, kv_HK = q.view(4, 5), kv.view(4, 7)
    assert torch.equal(q_HK[0], torch.ones(5)) and torch.equal(kv_HK[2], torch.ones(7))
    g = 0.5
    assert torch.allclose(q_HK[1], torch.tensor([g**0.5] * 3 + [g] * 2))
    assert torch.allclose(kv_HK[1], torch.tensor([g**0.5] * 3 + [1.0] * 4))  # v rows untouched
    assert torch.allclose(q_HK[3, 3:], torch.tensor([0.25, 0.25]))


def _hot_model(q_lora_rank) -> K2ForCausalLM:
    """A debug model whose heads have a spread of large max logits."""
    torch.manual_seed(0)
    model = K2ForCausalLM(K2Config.preset("debug", q_lora_rank=q_lora_rank))
    with torch.no_grad():
        for layer in model.layers:
            attn = layer.self_attn
            q = attn.q_proj if q_lora_rank is None else attn.q_b_proj
            head_gain = torch.tensor([2.0, 8.0, 20.0, 40.0]).repeat_interleave(q.weight.shape[0] // 4)
            q.weight.mul_(head_gain[:, None])
            attn.kv_b_proj.weight.mul_(20.0)
            attn.kv_a_proj_with_mqa.weight.mul_(5.0)
    return model


@pytest.mark.parametrize("q_lora_rank", [32, None])
def test_qk_clip_caps_recomputed_logits_and_leaves_other_heads_alone(q_lora_rank):
    model = _hot_model(q_lora_rank)
    inputs = {}
    attns = [m for m in model.modules() if isinstance(m, MLA)]
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, i=i: inputs.__setitem__(i, args))
        for i, m in enumerate(attns)
    ]
    model.set_track_max_logits(True)
    with torch.no_grad():
        model(torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(1)))
    for h in hooks:
        h.remove()
    before = model.pop_max_logits()
    tau = float(torch.stack(before).median())  # about half of all heads are over τ
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}

    clipped = qk_clip(model, tau, [s.clone() for s in before])
    assert 0 < sum(map(len, clipped)) < 12

    for layer, (attn, s_H, heads) in enumerate(zip(attns, before, clipped, strict=True)):
        assert heads == (s_H > tau).nonzero().flatten().tolist()
        with torch.no_grad():  # recompute this layer's logits on the very inputs it saw
            attn(*inputs[layer])
        after = attn.max_logits
        attn.max_logits = None
        for h in range(4):
            if h in heads:
                assert after[h] <= tau * (1 + 1e-5) and after[h] == pytest.approx(tau, rel=1e-4)
            else:
                assert after[h] == s_H[h]  # untouched head: bit-identical logits
        prefix = f"layers.{layer}.self_attn."
        q_name = prefix + ("q_proj.weight" if q_lora_rank is None else "q_b_proj.weight")
        q_HK = model.get_parameter(q_name).view(4, -1)
        kv_HK = model.get_parameter(prefix + "kv_b_proj.weight").view(4, 32, -1)
        for h in range(4):
            if h not in heads:
                assert torch.equal(q_HK[h], weights[q_name].view(4, -1)[h])
                assert torch.equal(kv_HK[h], weights[prefix + "kv_b_proj.weight"].view(4, 32, -1)[h])
        assert torch.equal(kv_HK[:, 16:], weights[prefix + "kv_b_proj.weight"].view(4, 32, -1)[:, 16:])  # v
        assert torch.equal(  # the shared rotary key (and the kv latent) is not touched
            model.get_parameter(prefix + "kv_a_proj_with_mqa.weight"),
            weights[prefix + "kv_a_proj_with_mqa.weight"],
        )


def test_qk_clip_ignores_layers_without_logits():
    model = K2ForCausalLM(K2Config.preset("debug"))
    assert qk_clip(model, 1.0, [None, None, None]) == [[], [], []]
    with pytest.raises(ValueError, match="the model has 3"):
        qk_clip(model, 1.0, [None])


def test_high_lr_run_logits_grow_without_clip_and_stay_near_tau_with_it():
    tau = 10.0
    plain = qk_clip_run(None, lr=0.1, steps=40)
    clipped = qk_clip_run(tau, lr=0.1, steps=40)
    assert max(plain["max_logit"]) > 3 * tau  # plain Muon: logits run away
    assert sum(clipped["clipped_heads"]) > 0
    # Recorded in the forward pass, i.e. one (large, lr = 0.1) update after the last clip: held near τ
    # (overshooting by at most one step's growth: up to ~70 % at this lr) instead of running away.
    assert max(clipped["max_logit"]) < 2 * tau
    assert sorted(clipped["max_logit"][-10:])[5] < 1.5 * tau
    assert max(plain["max_logit"][-10:]) > 2 * max(clipped["max_logit"][-10:])
    tail = slice(-10, None)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(clipped["loss"][tail]) < mean(plain["loss"][tail]) + 0.1
