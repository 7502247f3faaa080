"""The K1.5 loss: zero gradient at equal rewards and ratio 1, policy-gradient direction on a toy
policy, masks and groups respected, truncated IS weights, PTX mixing, temperature decay."""

import itertools
import math

import pytest
import torch

from agentfactory.rl.loss import (
    LossConfig,
    TemperatureSchedule,
    group_mean,
    k1p5_loss,
    ptx_loss,
    temperature_at,
    token_logprobs,
    total_loss,
    truncated_is_weights,
)

torch.manual_seed(0)


def toy(B=4, T=5, V=7, seed=0):
    """A toy policy: free logits per position (B, T, V), sampled ids, and their log-probs."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    ids = torch.randint(0, V, (B, T), generator=g)
    return logits, ids


def test_zero_gradient_when_rewards_equal_and_ratio_one():
    logits, ids = toy()
    logp = token_logprobs(logits, ids)
    loss, stats = k1p5_loss(
        logp, logp.detach(), torch.full((4,), 0.7), torch.ones(4, 5), torch.tensor([0, 0, 1, 1]), tau=0.1
    )
    loss.backward()
    assert loss.item() == 0.0 and stats["kl_k3"] == 0.0
    assert torch.count_nonzero(logits.grad) == 0


def test_gradient_raises_the_better_sample_and_matches_the_policy_gradient():
    logits, ids = toy(B=2, T=3)
    mask = torch.ones(2, 3)
    rewards = torch.tensor([1.0, 0.0])
    logp = token_logprobs(logits, ids)
    loss, _ = k1p5_loss(logp, logp.detach(), rewards, mask, torch.tensor([0, 0]), tau=0.5)
    loss.backward()
    # At θ = θ_old: ∇L = -(2τ/K) Σ (r_i - r̄) ∇ log π(y_i)
    ref_logits = logits.detach().clone().requires_grad_(True)
    seq = token_logprobs(ref_logits, ids).sum(-1)
    (-(2 * 0.5 / 2) * ((rewards - rewards.mean()) * seq).sum()).backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)
    with torch.no_grad():  # a small descent step makes the rewarded response more likely
        stepped = logits - 0.5 * logits.grad
        before = token_logprobs(logits, ids).sum(-1)
        after = token_logprobs(stepped, ids).sum(-1)
    assert after[0] > before[0] and after[1] < before[1]


def test_the_square_pulls_a_drifted_policy_back():
    logits, ids = toy(B=2, T=3)
    old = token_logprobs(logits, ids).detach()
    drifted = old + 0.3  # π_θ/π_old > 1 on both samples, rewards equal: the loss wants the ratio down
    drifted.requires_grad_(True)
    loss, stats = k1p5_loss(drifted, old, torch.zeros(2), torch.ones(2, 3), torch.tensor([0, 0]), tau=1.0)
    loss.backward()
    assert loss.item() > 0 and stats["log_ratio_mean"] == pytest.approx(0.9)
    assert torch.all(drifted.grad > 0)  # descending lowers log π_θ back toward π_old


def test_masked_tokens_do_not_count():
    logits, ids = toy(B=2, T=4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    logp = token_logprobs(logits, ids)
    old = logp.detach() + torch.tensor([[0.0, 0.0, 5.0, -3.0], [0.0, 0.0, 0.0, 9.0]])  # junk where masked
    loss, _ = k1p5_loss(logp, old, torch.tensor([1.0, 0.0]), mask, torch.tensor([0, 0]), tau=0.2)
    loss.backward()
    ref = logits.detach().clone().requires_grad_(True)
    lp = token_logprobs(ref, ids)
    ref_loss, _ = k1p5_loss(lp, lp.detach(), torch.tensor([1.0, 0.0]), mask, torch.tensor([0, 0]), tau=0.2)
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item())
    torch.testing.assert_close(logits.grad, ref.grad)
    assert torch.count_nonzero(logits.grad[0, 2:]) == 0 and torch.count_nonzero(logits.grad[1, 3]) == 0


def test_groups_have_their_own_baselines_and_equal_weight():
    rewards = torch.tensor([1.0, 3.0, 10.0, 10.0, 10.0])
    group = torch.tensor([0, 0, 1, 1, 1])
    assert group_mean(rewards, group).tolist() == [2.0, 2.0, 10.0, 10.0, 10.0]
    logp = torch.zeros(5, 2, requires_grad=True)
    loss, _ = k1p5_loss(logp, torch.zeros(5, 2), rewards, torch.ones(5, 2), group, tau=0.1)
    # group 0: 1/2 (1 + 1) = 1; group 1: 0; mean over the 2 groups
    assert loss.item() == pytest.approx(0.5)


def test_truncated_importance_weights_cap_and_scale_the_stale_tokens():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    behavior = torch.log(torch.tensor([[0.5, 0.1, 0.9]]))  # token 1 much less likely under μ: ratio 5
    w = truncated_is_weights(old, behavior, torch.tensor([[1.0, 1.0, 0.0]]), cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, 1.0]]))
    logp = torch.cat([old, old]).requires_grad_(True)  # two samples of one prompt, rewards 1 and 0
    loss, _ = k1p5_loss(
        logp, torch.cat([old, old]), torch.tensor([1.0, 0.0]), torch.ones(2, 3), torch.tensor([0, 0]),
        tau=1.0, weights_BT=torch.cat([w, w]),
    )  # fmt: skip
    loss.backward()
    g = logp.grad[0]  # per-token policy gradient, scaled by each token's weight
    assert g[0] < 0 and g[1] == pytest.approx(2 * g[0]) and g[2] == pytest.approx(g[0])


def test_ptx_loss_matches_cross_entropy_on_masked_tokens_and_mixes_by_weight():
    logits, ids = toy(B=2, T=4)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    got = ptx_loss(logits, ids, mask)
    ref = torch.nn.functional.cross_entropy(logits[mask.bool()], ids[mask.bool()])
    torch.testing.assert_close(got, ref)
    assert ptx_loss(logits, ids, torch.zeros(2, 4)).item() == 0.0
    rl = torch.tensor(0.5)
    total, stats = total_loss(rl, got, LossConfig(ptx_weight=0.2))
    assert total.item() == pytest.approx(0.5 + 0.2 * got.item()) and "ptx_loss" in stats
    assert float(total_loss(rl, got, LossConfig(ptx_weight=0.0))[0]) == 0.5


@pytest.mark.parametrize("shape", ["linear", "cosine", "exponential"])
def test_temperature_decays_monotonically_from_start_to_end(shape):
    temps = [temperature_at(s, 1.2, 0.6, 10, shape) for s in range(0, 14)]
    assert (
        temps[0] == pytest.approx(1.2) and temps[10] == pytest.approx(0.6) and temps[13] == pytest.approx(0.6)
    )
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(temps))
    assert TemperatureSchedule(start=1.0, end=0.5, steps=4, shape="linear").at(2) == pytest.approx(0.75)
    assert math.isclose(temperature_at(5, 1.0, 0.25, 10, "exponential"), 0.5)
