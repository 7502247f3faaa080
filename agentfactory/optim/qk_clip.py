"""QK-Clip: rescale the query/key weights of heads whose attention logits grew past τ (Kimi K2 §2.1).

Muon lets a few heads' max pre-softmax logits S_max^h = max_ij scale·q_i·k_j run away, which ends in
loss spikes. After every optimizer step, for each head h with S_max^h > τ (γ_h = τ / S_max^h < 1),
K2 rescales that head's own weights so the same inputs would give logits ≤ τ:

    MLA head h:  q = [q_nope | q_rope],  k = [k_nope | k_rope (shared by all heads)]
    q_nope rows (q_b_proj)  × √γ     k_nope rows (kv_b_proj) × √γ     → q_nope·k_nope × γ
    q_rope rows (q_b_proj)  × γ      k_rope (kv_a_proj) untouched     → q_rope·k_rope × γ
    v rows (kv_b_proj) untouched

so every logit of head h is multiplied by exactly γ_h, and other heads, values and the shared rotary
key are unchanged. Heads under τ are not touched at all (their rows are multiplied by nothing).

Cost: one vectorized `> τ` over every layer's (H,) max logits and one device→host copy per step
(not a sync per layer); then, in a layer with clipped heads, only those heads' q rows and k_nope rows
are written (FSDP2 shards, whose rows need not align with heads, scale all local rows, ×1 outside).

`qk_clip_row_scales` is the pure math; `qk_clip(model, tau)` applies it to every MLA layer, reading the
per-head max logits the model recorded during the step (`model.set_track_max_logits()`). Sharded FSDP2
weights (DTensor, rows split across ranks) are scaled on their local rows; the max logits must be
the same on every rank (all-reduce them with MAX before calling).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


def qk_clip_row_scales(
    max_logits_H: Tensor, tau: float, nope_dim: int, rope_dim: int, v_dim: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row multipliers for the query projection (H·(N+R),) and kv_b_proj (H·(N+V),), fp32, and
    the clipped-head mask (H,). Rows of unclipped heads get exactly 1."""
    gamma_H = (tau / max_logits_H.float()).clamp(max=1.0)
    clipped_H = max_logits_H.float() > tau
    gamma_H = torch.where(clipped_H, gamma_H, torch.ones_like(gamma_H))
    root_H1 = gamma_H.sqrt()[:, None]
    H = gamma_H.shape[0]
    q_scale_HK = torch.cat((root_H1.expand(H, nope_dim), gamma_H[:, None].expand(H, rope_dim)), dim=1)
    kv_scale_HK = torch.cat((root_H1.expand(H, nope_dim), torch.ones(H, v_dim)), dim=1)
    return q_scale_HK.reshape(-1), kv_scale_HK.reshape(-1), clipped_H


@torch.no_grad()
def scale_rows_(weight: Tensor, scale_rows: Tensor) -> None:
    """weight[i, :] *= scale_rows[i] in place; a DTensor sharded on dim 0 scales only its local rows."""
    if hasattr(weight, "to_local"):
        from torch.distributed.tensor import Replicate, Shard

        local = weight.to_local()
        (placement,) = weight.placements
        if isinstance(placement, Shard) and placement.dim == 0:
            world, rank = weight.device_mesh.size(), weight.device_mesh.get_local_rank()
            chunk = math.ceil(weight.shape[0] / world)  # torch.chunk layout, as FSDP2 shards
            scale_rows = scale_rows[rank * chunk : rank * chunk + local.shape[0]]
        elif not isinstance(placement, Replicate):
            raise NotImplementedError(f"QK-Clip: unsupported placement {placement}")
        weight = local
    weight.mul_(scale_rows.to(weight.dtype)[:, None])


@torch.no_grad()
def scale_head_rows_(weight: Tensor, scale_rows: Tensor, heads: list[int], num_heads: int, rows: int) -> None:
    """weight[first `rows` rows of each head in `heads`] *= scale_rows there; other rows untouched.

    `weight` is (num_heads·K, D), head h owning rows [h·K, (h+1)·K). Multiplies by the same fp32-made
    factors as `scale_rows_`, so the touched rows are bit-identical to its result. A DTensor goes
    through `scale_rows_` (its local rows need not align with heads; ×1 is exact elsewhere).
    """
    if hasattr(weight, "to_local"):
        scale_rows_(weight, scale_rows)
        return
    w_HKD = weight.view(num_heads, -1, weight.shape[-1])
    s_HK1 = scale_rows.to(weight.dtype).view(num_heads, -1, 1)
    runs: list[list[int]] = []  # consecutive heads → one strided in-place multiply each
    for h in sorted(heads):
        if runs and runs[-1][1] == h:
            runs[-1][1] = h + 1
        else:
            runs.append([h, h + 1])
    for first, stop in runs:
        w_HKD[first:stop, :rows].mul_(s_HK1[first:stop, :rows])


@torch.no_grad()
def qk_clip(model: nn.Module, tau: float, max_logits: list[Tensor | None] | None = None) -> list[list[int]]:
    """Apply QK-Clip to every MLA layer of `model`; returns the clipped head indices per layer.

    `max_logits`: per layer, the (H,) max pre-softmax logits of this step (None = layer not seen);
    default: `model.pop_max_logits()` (what the forward passes recorded since the last call).
    """
    from agentfactory.model.attention import MLA

    attns = [m for m in model.modules() if isinstance(m, MLA)]
    if max_logits is None:
        max_logits = model.pop_max_logits()
    if len(max_logits) != len(attns):
        raise ValueError(f"got max logits for {len(max_logits)} layers, the model has {len(attns)}")
    clipped_per_layer: list[list[int]] = [[] for _ in attns]
    seen = [(layer, s_H) for layer, s_H in enumerate(max_logits) if s_H is not None]
    if not seen:
        return clipped_per_layer
    # One vectorized check and one host copy for all layers (per-layer .any() would sync L times).
    s_all = torch.cat([s_H.detach().float().flatten().to(seen[0][1].device) for _, s_H in seen]).cpu()
    over = (s_all > tau).tolist()
    at = 0
    for layer, s_H in seen:
        n_heads = s_H.numel()
        heads = [h for h in range(n_heads) if over[at + h]]
        s_cpu, at = s_all[at : at + n_heads], at + n_heads
        if not heads:
            continue
        attn = attns[layer]
        q_rows, kv_rows, _ = qk_clip_row_scales(s_cpu, tau, attn.nope_dim, attn.rope_dim, attn.v_dim)
        q_proj = attn.q_proj if hasattr(attn, "q_proj") else attn.q_b_proj
        q_w, kv_w = q_proj.weight, attn.kv_b_proj.weight
        # q: q_nope (×√γ) and q_rope (×γ) rows of each clipped head; kv_b: only its k_nope rows.
        scale_head_rows_(q_w, q_rows.to(q_w.device), heads, n_heads, attn.nope_dim + attn.rope_dim)
        scale_head_rows_(kv_w, kv_rows.to(kv_w.device), heads, n_heads, attn.nope_dim)
        clipped_per_layer[layer] = heads
        log.debug(
            "QK-Clip layer %d: heads %s (max logits %s > τ=%g)", layer, heads, s_cpu[heads].tolist(), tau
        )
    return clipped_per_layer
