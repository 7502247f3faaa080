"""Muon vs torch.optim.Muon, Newton–Schulz spectra, the Muon+AdamW grouping."""

import pytest
import torch
from torch import nn

from agentfactory.model import K2Config, K2ForCausalLM
from agentfactory.optim import (
    Muon,
    OptimizerConfig,
    adjusted_lr,
    build_optimizer,
    param_groups,
    zeropower_via_newtonschulz,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # On a shared 2-core machine two intra-op threads can be 30× slower than one for these tiny matmuls.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("shape", [(64, 64), (48, 96), (96, 48), (8, 256)])
def test_newton_schulz_singular_values_in_a_band(shape):
    torch.manual_seed(0)
    G = torch.randn(shape) * 3.0 + torch.randn(shape[0], 1)  # ill-conditioned: a strong rank-1 part
    s = torch.linalg.svdvals(zeropower_via_newtonschulz(G).float())
    assert s.min() > 0.6 and s.max() < 1.25, (s.min(), s.max())


def test_newton_schulz_batched_equals_per_matrix():
    torch.manual_seed(0)
    G = torch.randn(5, 32, 80)
    batched = zeropower_via_newtonschulz(G)
    for e in range(5):
        assert torch.equal(batched[e], zeropower_via_newtonschulz(G[e]))
    s = torch.linalg.svdvals(batched.float())
    assert s.min() > 0.6 and s.max() < 1.25


def test_newton_schulz_float32_is_closer_to_the_polar_factor():
    torch.manual_seed(0)
    G = torch.randn(32, 64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    polar = U @ Vh
    err32 = (zeropower_via_newtonschulz(G, dtype=torch.float32) - polar).norm()
    err16 = (zeropower_via_newtonschulz(G).float() - polar).norm()
    assert zeropower_via_newtonschulz(G, dtype=torch.float32).dtype == torch.float32
    assert err32 < err16 * 1.1  # the quintic does not converge to the polar factor; bf16 only adds noise


def test_muon_matches_torch_muon_over_several_steps():
    torch.manual_seed(0)
    shapes = [(64, 32), (32, 64), (48, 48)]
    ours = [nn.Parameter(torch.randn(s) * 0.02) for s in shapes]
    ref = [nn.Parameter(p.detach().clone()) for p in ours]
    opt = Muon(ours, lr=0.02, weight_decay=0.1)
    ref_opt = torch.optim.Muon(ref, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for _ in range(6):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(ours, ref, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    for p, q in zip(ours, ref, strict=True):
        rel = ((p - q).norm() / q.norm()).item()
        assert rel < 1e-3, rel
        assert torch.equal(p, q)  # same op sequence: in fact bit-identical


def test_muon_stacked_experts_equal_separate_matrices():
    torch.manual_seed(0)
    stacked = nn.Parameter(torch.randn(4, 16, 24) * 0.02)
    separate = [nn.Parameter(stacked[e].detach().clone()) for e in range(4)]
    opt_s, opt_m = Muon([stacked], lr=0.01), Muon(separate, lr=0.01)
    for _ in range(3):
        g = torch.randn(4, 16, 24)
        stacked.grad = g.clone()
        for e, p in enumerate(separate):
            p.grad = g[e].clone()
        opt_s.step()
        opt_m.step()
    for e in range(4):
        assert torch.equal(stacked[e], separate[e])


def _matrices(tensors):
    return [m for t in tensors for m in (t if t.ndim == 3 else [t])]


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_chunked_batches_match_torch_muon_per_matrix(monkeypatch, nesterov):
    # Tiny NS chunks: an expert stack spans chunks, tall and wide matrices share a batch; every matrix
    # must still get its own torch.optim.Muon update (NS per matrix, lr from its own shape).
    import agentfactory.optim.muon as muon_module

    monkeypatch.setattr(muon_module, "NS_CHUNK_ELEMENTS", 3 * 16 * 24)
    torch.manual_seed(0)
    shapes = [(7, 16, 24), (24, 16), (16, 24), (2, 24, 16), (5, 7)]
    ours = [nn.Parameter(torch.randn(s) * 0.02) for s in shapes]
    ref = [nn.Parameter(m.detach().clone()) for m in _matrices(ours)]
    opt = Muon(ours, lr=0.02, weight_decay=0.1, nesterov=nesterov)
    kw = dict(lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn="match_rms_adamw")
    ref_opt = torch.optim.Muon(ref, **kw)
    for _ in range(3):
        grads = [torch.randn(s) for s in shapes]
        for p, g in zip(ours, grads, strict=True):
            p.grad = g.clone()
        for q, m in zip(ref, _matrices(grads), strict=True):
            q.grad = m.clone()
        opt.step()
        ref_opt.step()
    for p, q in zip(_matrices(ours), ref, strict=True):
        assert ((p - q).norm() / q.norm()).item() < 1e-3


def test_muon_update_rms_matches_adamw_scale():
    # 0.2·√max(A,B)·NS(G) has RMS ≈ 0.2 (the AdamW update RMS Moonlight measured), for any shape.
    torch.manual_seed(0)
    for shape in [(64, 256), (256, 64), (128, 128)]:
        o = zeropower_via_newtonschulz(torch.randn(shape)).float()
        rms = (o * adjusted_lr(1.0, shape)).pow(2).mean().sqrt().item()
        assert 0.15 < rms < 0.25, (shape, rms)


def test_muon_rejects_vectors():
    with pytest.raises(ValueError, match="2-D or stacked 3-D"):
        Muon([nn.Parameter(torch.zeros(4))], lr=0.1)


def test_param_groups_by_role():
    model = K2ForCausalLM(K2Config.preset("debug"))
    groups = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    kinds = {names[id(p)]: kind for kind, ps in groups.items() for p in ps}
    assert set(kinds) == set(names.values())  # every parameter exactly once
    assert kinds["embed_tokens.weight"] == kinds["lm_head.weight"] == "adamw_embed"
    assert kinds["norm.weight"] == kinds["layers.0.self_attn.kv_a_layernorm.weight"] == "adamw_vector"
    for name in (
        "layers.0.self_attn.q_b_proj.weight",
        "layers.0.self_attn.kv_a_proj_with_mqa.weight",
        "layers.0.mlp.down_proj.weight",
        "layers.1.mlp.gate.weight",
        "layers.1.mlp.experts.gate_proj",
        "layers.1.mlp.shared_experts.up_proj.weight",
    ):
        assert kinds[name] == "muon", name


def test_param_groups_are_role_based_not_name_based():
    class Odd(nn.Module):  # unusual names: roles still come from module types and shapes
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(100, 16)
            self.mix = nn.Linear(16, 16, bias=True)
            self.readout = nn.Linear(16, 100, bias=False)

    groups = param_groups(Odd())
    m = Odd()
    assert [p.shape for p in groups["muon"]] == [m.mix.weight.shape]
    assert sorted(p.shape for p in groups["adamw_embed"]) == sorted(
        [m.tok.weight.shape, m.readout.weight.shape]
    )
    assert [p.shape for p in groups["adamw_vector"]] == [m.mix.bias.shape]


def test_build_optimizer_steps_and_schedules():
    torch.manual_seed(0)
    model = K2ForCausalLM(K2Config.preset("debug"))
    opt = build_optimizer(model, OptimizerConfig(lr=0.02, adamw_lr=1e-3, qk_clip_tau=None))
    assert {g["kind"] for g in opt.param_groups} == {"muon", "adamw_embed", "adamw_vector"}
    ids = torch.randint(0, 512, (2, 16))
    losses = []
    for _ in range(5):
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    opt.set_lr_multiplier(0.5)
    lrs = {g["kind"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"muon": 0.01, "adamw_embed": 5e-4, "adamw_vector": 5e-4}
    state = opt.state_dict()
    fresh = build_optimizer(model, OptimizerConfig(lr=0.02, adamw_lr=1e-3, qk_clip_tau=None))
    fresh.load_state_dict(state)
    assert fresh.state_dict()["muon"]["state"].keys() == state["muon"]["state"].keys()
