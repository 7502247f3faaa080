"""MoE: router and sorted grouped-matmul dispatch vs a naive per-token loop; aux-loss-free balancing."""

import pytest
import torch
import torch.nn.functional as F

from agentfactory.model import K2Config, K2ForCausalLM, update_router_bias
from agentfactory.model.moe import MoE, grouped_mm, sequence_balance_loss


def _moe(seed=0, **overrides) -> MoE:
    torch.manual_seed(seed)
    config = K2Config.preset("debug", **overrides)
    moe = MoE(config)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.3)
        moe.gate.e_score_correction_bias.normal_(0, 0.1)
    return moe


def naive_route(moe: MoE, x_D: torch.Tensor) -> tuple[list[int], list[torch.Tensor]]:
    """One token, plain Python: the DeepSeek-V3 routing rule as written in the paper."""
    g = moe.gate
    scores = torch.sigmoid(g.weight @ x_D)
    choice = (scores + g.e_score_correction_bias).tolist()
    per_group = g.n_experts // g.n_group
    group_score = [sum(sorted(choice[i * per_group : (i + 1) * per_group])[-2:]) for i in range(g.n_group)]
    best_groups = sorted(range(g.n_group), key=lambda i: -group_score[i])[: g.topk_group]
    allowed = [e for e in range(g.n_experts) if e // per_group in best_groups]
    experts = sorted(allowed, key=lambda e: -choice[e])[: g.top_k]
    w = [scores[e] for e in experts]
    total = sum(w)
    if g.norm_topk_prob:
        w = [v / total for v in w]
    return experts, [v * g.scaling for v in w]


def naive_moe(moe: MoE, x_TD: torch.Tensor) -> torch.Tensor:
    out = []
    ex = moe.experts
    for x_D in x_TD:
        y = moe.shared_experts(x_D)
        for e, w in zip(*naive_route(moe, x_D), strict=True):
            h = F.silu(ex.gate_proj[e] @ x_D) * (ex.up_proj[e] @ x_D)
            y = y + w * (ex.down_proj[e] @ h)
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"n_group": 1, "topk_group": 1, "num_experts_per_tok": 4}, {"norm_topk_prob": False}],
)
def test_router_matches_naive(overrides):
    moe = _moe(**overrides)
    x_TD = torch.randn(64, moe.gate.weight.shape[1])
    idx_TK, w_TK, _ = moe.gate(x_TD)
    for t in range(64):
        experts, weights = naive_route(moe, x_TD[t])
        got = dict(zip(idx_TK[t].tolist(), w_TK[t].tolist(), strict=True))
        assert sorted(got) == sorted(experts)
        assert [got[e] for e in experts] == pytest.approx([w.item() for w in weights], rel=1e-5)


def test_bias_steers_selection_not_weights():
    moe = _moe(n_group=1, topk_group=1)
    x_TD = torch.randn(32, moe.gate.weight.shape[1])
    with torch.no_grad():
        moe.gate.e_score_correction_bias.zero_()
        moe.gate.e_score_correction_bias[5] = 10.0  # expert 5 always selected ...
    idx_TK, w_TK, scores_TE = moe.gate(x_TD)
    assert (idx_TK == 5).any(-1).all()
    chosen = scores_TE.gather(1, idx_TK)  # ... but weighted by its unbiased score
    assert torch.allclose(w_TK, chosen / chosen.sum(-1, keepdim=True) * moe.gate.scaling)


def test_moe_matches_naive_loop_and_grads():
    moe = _moe()
    x_BSD = torch.randn(2, 24, moe.gate.weight.shape[1], requires_grad=True)
    out, counts_E, _ = moe(x_BSD)
    ref = naive_moe(moe, x_BSD.detach().reshape(-1, x_BSD.shape[-1])).view_as(out)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-4)
    assert counts_E.sum() == 48 * moe.top_k
    # gradients: compare with autograd through the naive loop
    g = torch.randn_like(out)
    (out * g).sum().backward()
    grads = {n: p.grad.clone() for n, p in moe.named_parameters()}
    x_grad = x_BSD.grad.clone()
    moe.zero_grad()
    x_BSD.grad = None
    (naive_moe(moe, x_BSD.reshape(-1, x_BSD.shape[-1])).view_as(out) * g).sum().backward()
    assert torch.allclose(x_grad, x_BSD.grad, rtol=1e-5, atol=1e-4)
    for n, p in moe.named_parameters():
        assert torch.allclose(grads[n], p.grad, rtol=1e-5, atol=1e-4), n


def test_grouped_mm_handles_empty_groups_and_strided_grads():
    x = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(4, 8, 4, requires_grad=True)
    counts = torch.tensor([3, 0, 7, 0])
    y = grouped_mm(x, w, counts.cumsum(0).to(torch.int32))
    ref = torch.cat([x[:3] @ w[0], x[3:] @ w[2]])
    assert torch.allclose(y, ref, atol=1e-6)
    y.sum().backward()  # a stride-0 grad, which the CPU kernel rejects without the wrapper
    assert not w.grad[1].any() and not w.grad[3].any()
    assert torch.allclose(w.grad[0], x[:3].sum(0)[:, None].expand(8, 4).detach(), atol=1e-5)


def test_aux_loss_free_balancing_reduces_skew():
    """Skewed router: bias updates alone (no gradient) drive max/mean load toward 1."""
    torch.manual_seed(0)
    model = K2ForCausalLM(K2Config.preset("debug", n_group=1, topk_group=1, num_hidden_layers=2))
    moe = model.layers[1].mlp
    x_BSD = torch.randn(2, 32, model.config.hidden_size)
    x_BSD[..., 0] = 4.0  # a feature every token shares ...
    with torch.no_grad():  # ... that makes experts 0 and 1 attract almost every token
        moe.gate.weight.normal_(0, 0.1)
        moe.gate.weight[:2, 0] += 1.0

    def imbalance() -> float:
        with torch.no_grad():
            _, counts_E, _ = moe(x_BSD)
        return (counts_E.max() / counts_E.float().mean()).item()

    before = imbalance()
    for _ in range(150):
        with torch.no_grad():
            moe.tokens_per_expert += moe(x_BSD)[1]
        update_router_bias(model, gamma=3e-3)
    after = imbalance()
    print(f"max/mean expert load: {before:.2f} -> {after:.2f}")
    assert before > 3.0 and after < 1.3
    assert moe.tokens_per_expert.sum() == 0  # consumed


def test_model_accumulates_load_for_bias_update():
    model = K2ForCausalLM(K2Config.preset("debug"))
    ids = torch.randint(0, 512, (2, 16))
    out = model(ids)
    assert out.expert_load.shape == (2, 8) and out.expert_load.sum() == 2 * 2 * 16 * 2
    model(ids)
    assert torch.equal(model.layers[1].mlp.tokens_per_expert, 2 * out.expert_load[0])
    stats = model.update_router_bias()
    assert stats["max_over_mean_load"] >= 1.0
    bias = model.layers[1].mlp.gate.e_score_correction_bias
    step = torch.tensor(model.config.bias_update_speed)
    assert ((bias == 0) | (bias.abs() == step)).all()


def test_sequence_balance_loss():
    B, S, E, K = 3, 8, 8, 2
    scores = torch.rand(B, S, E)
    idx = scores.topk(K, dim=-1).indices
    f = torch.zeros(B, E)
    for b in range(B):
        for e in idx[b].flatten().tolist():
            f[b, e] += E / (K * S)
    p = (scores / scores.sum(-1, keepdim=True)).mean(1)
    assert torch.allclose(sequence_balance_loss(idx, scores), (f * p).sum(-1).mean())
    # perfectly uniform routing and scores give exactly 1
    idx_u = torch.arange(E).repeat(B, S * K // E).view(B, S, K)
    assert sequence_balance_loss(idx_u, torch.ones(B, S, E)).item() == pytest.approx(1.0)


def test_balance_loss_is_added_when_enabled():
    torch.manual_seed(0)
    model = K2ForCausalLM(K2Config.preset("debug", aux_loss_alpha=0.01)).train()
    ids = torch.randint(0, 512, (2, 16))
    out = model(ids, labels=ids)
    assert out.aux_loss is not None and out.aux_loss > 0
    out.loss.backward()
    assert model.layers[1].mlp.gate.weight.grad.abs().sum() > 0
    assert model.eval()(ids).aux_loss is None  # training only
