"""The Kimi K1.5 / K2 policy objective, the PTX term, truncated importance weights, temperature decay.

For a prompt x with K sampled responses y_1..y_K and rewards r_i (Kimi K1.5 §2.3.2, used by K2 §3.2.2):

    L(θ) = 1/K Σ_i ( r_i − r̄ − τ · log(π_θ(y_i|x) / π_old(y_i|x)) )²,   r̄ = mean_i r_i

a squared regression of the log-ratio onto the advantage: at θ = θ_old its gradient is
−(2τ/K) Σ_i (r_i − r̄) ∇ log π_θ(y_i|x), the policy gradient with a mean baseline, and away from θ_old
the square pulls the ratio back (τ sets how far the policy may drift per iteration; no clipping and
no value network). log π(y|x) is the sum of the response tokens' log-probs under `mask`. Losses are
averaged over the samples of a prompt, then over prompts (`group` says which prompt a row belongs to);
`k1p5_row_loss` is the same sum written per row, for micro-batches that cut across groups.

- **PTX**: a cross-entropy term on curated SFT data, added with weight `ptx_weight`, keeps RL from
  eroding what SFT taught (K2 §3.2.2 "PTX loss").
- **Truncated importance weights** (optional): with partial rollouts some tokens were sampled by older
  weights (the behaviour policy μ, whose log-probs the engine returned). Each token's log-ratio term is
  scaled by w_t = min(π_old(t)/μ(t), cap), detached, which at θ = θ_old gives the per-token
  truncated-IS policy gradient; cap bounds the variance.
- **Temperature decay**: sample hot early (exploration), cooler later (exploitation), K2 §3.2.2.

Shapes: B rows (responses), T tokens; `_BT` tensors are per token, `_B` per response. All pure functions.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from agentfactory.config import StrictModel
from agentfactory.model.loss import cross_entropy


class LossConfig(StrictModel):
    tau: float = Field(0.05, gt=0, description="K1.5's τ: strength of the log-ratio regularizer")
    ptx_weight: float = Field(0.0, ge=0, description="weight of the PTX (SFT cross-entropy) term")
    tis_cap: float | None = Field(2.0, gt=0, description="cap of truncated importance weights (None: off)")


def token_logprobs(logits_BTV: torch.Tensor, ids_BT: torch.Tensor) -> torch.Tensor:
    """log p(ids[t]) under logits[t] (the caller shifts: logits at t predict ids at t), in fp32."""
    logp_BTV = torch.log_softmax(logits_BTV.float(), dim=-1)
    return logp_BTV.gather(-1, ids_BT.unsqueeze(-1)).squeeze(-1)


def group_mean(values_B: torch.Tensor, group_B: torch.Tensor) -> torch.Tensor:
    """Each row's group mean (the K1.5 baseline r̄), broadcast back to rows: (B,)."""
    n_groups = int(group_B.max().item()) + 1 if group_B.numel() else 0
    sums_G = torch.zeros(n_groups, dtype=values_B.dtype, device=values_B.device).index_add_(
        0, group_B, values_B
    )
    counts_G = torch.bincount(group_B, minlength=n_groups).to(values_B.dtype)
    return (sums_G / counts_G.clamp(min=1))[group_B]


def truncated_is_weights(
    logp_old_BT: torch.Tensor, logp_behavior_BT: torch.Tensor, mask_BT: torch.Tensor, cap: float
) -> torch.Tensor:
    """w_t = min(π_old(t) / μ(t), cap) on masked tokens (1 elsewhere), detached."""
    ratio_BT = torch.exp((logp_old_BT - logp_behavior_BT).detach().float()).clamp(max=cap)
    return torch.where(mask_BT.bool(), ratio_BT, torch.ones_like(ratio_BT))


def k1p5_row_terms(rewards_B: torch.Tensor, group_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What each row needs from the rest of the batch: its advantage r_i − r̄ (its group's mean) and
    its weight 1/(K·G) in L (K rows in its group, G groups). With them the loss is a plain sum over
    rows, so rows can be micro-batched in any order (by length) and the parts add up to L."""
    rewards = rewards_B.detach().float()
    n_groups = max(torch.unique(group_B).numel(), 1)
    weight_B = 1.0 / (torch.bincount(group_B)[group_B].float() * n_groups)
    return rewards - group_mean(rewards, group_B), weight_B


def k1p5_row_loss(
    logp_BT: torch.Tensor,
    logp_old_BT: torch.Tensor,
    adv_B: torch.Tensor,
    weight_B: torch.Tensor,
    mask_BT: torch.Tensor,
    tau: float,
    weights_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Σ_i weight_i · (adv_i − τ · log_ratio_i)²: these rows' share of the K1.5 objective (see
    `k1p5_row_terms`); returns (loss, stats).

    logp_BT:     log π_θ of the sampled tokens (carries the gradient)
    logp_old_BT: log π_old of the same tokens (the iteration's starting weights), no gradient
    mask_BT:     1 on response tokens; weights_BT: optional per-token importance weights
    """
    mask = mask_BT.to(logp_BT.dtype)
    diff_BT = (logp_BT.float() - logp_old_BT.detach().float()) * mask
    if weights_BT is not None:
        diff_BT = diff_BT * weights_BT.detach()
    log_ratio_B = diff_BT.sum(-1)
    delta_B = adv_B.detach().float() - tau * log_ratio_B
    loss = (weight_B.detach().float() * delta_B.square()).sum()
    with torch.no_grad():
        x_BT = (logp_old_BT.float() - logp_BT.float()) * mask  # log(π_old/π_θ) per token
        n_tok = mask.sum().clamp(min=1)
        stats = {
            "loss": float(loss.detach()),
            "adv_abs_mean": float(adv_B.abs().mean()),
            "log_ratio_mean": float(log_ratio_B.mean()),
            "kl_k3": float(((torch.exp(x_BT) - 1 - x_BT) * mask).sum() / n_tok),  # Schulman's k3 estimator
            "tokens": float(n_tok),
        }
    return loss, stats


def k1p5_loss(
    logp_BT: torch.Tensor,
    logp_old_BT: torch.Tensor,
    rewards_B: torch.Tensor,
    mask_BT: torch.Tensor,
    group_B: torch.Tensor,
    tau: float,
    weights_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The K1.5 objective over a batch of prompts' groups; returns (loss, stats).

    rewards_B: r_i; group_B: prompt index of each row (0..G-1); the rest as in `k1p5_row_loss`.
    """
    adv_B, weight_B = k1p5_row_terms(rewards_B, group_B)
    loss, stats = k1p5_row_loss(logp_BT, logp_old_BT, adv_B, weight_B, mask_BT, tau, weights_BT)
    return loss, {**stats, "reward_mean": float(rewards_B.float().mean())}


def ptx_loss(logits_BTV: torch.Tensor, labels_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of SFT tokens under `mask` (logits at t predict labels at t); uses the
    model's chunked fused CE, so no fp32 copy of the (B·T, V) logits is made. 0 if nothing is masked in."""
    if not bool(mask_BT.any()):
        return logits_BTV.sum() * 0.0
    targets_N = torch.where(mask_BT.bool(), labels_BT, -100).flatten()
    return cross_entropy(logits_BTV.flatten(0, 1), targets_N, ignore_index=-100)


def total_loss(
    rl: torch.Tensor, ptx: torch.Tensor | None, config: LossConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """RL loss plus `ptx_weight` × PTX (when a PTX batch is given)."""
    if ptx is None or config.ptx_weight == 0:
        return rl, {"rl_loss": float(rl.detach())}
    return rl + config.ptx_weight * ptx, {"rl_loss": float(rl.detach()), "ptx_loss": float(ptx.detach())}


class TemperatureSchedule(StrictModel):
    """Sampling temperature from `start` to `end` over `steps` iterations, then held at `end`."""

    start: float = Field(1.0, ge=0)
    end: float = Field(0.7, ge=0)
    steps: int = Field(100, ge=1)
    shape: Literal["linear", "cosine", "exponential"] = "cosine"

    def at(self, step: int) -> float:
        return temperature_at(step, self.start, self.end, self.steps, self.shape)


def temperature_at(
    step: int,
    start: float,
    end: float,
    steps: int,
    shape: Literal["linear", "cosine", "exponential"] = "cosine",
) -> float:
    """Temperature at iteration `step`: `start` at 0, `end` from `steps` on, monotone in between."""
    frac = min(max(step, 0) / steps, 1.0)
    if shape == "linear":
        return start + (end - start) * frac
    if shape == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * frac))
    if start <= 0 or end <= 0:  # a geometric path needs positive endpoints
        return start + (end - start) * frac
    return start * (end / start) ** frac
