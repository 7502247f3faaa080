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
    clipped_per_layer: list[list[int]] = []
    for layer, (attn, s_H) in enumerate(zip(attns, max_logits, strict=True)):
        if s_H is None or not bool((s_H > tau).any()):
            clipped_per_layer.append([])
            continue
        q_rows, kv_rows, clipped_H = qk_clip_row_scales(
            s_H.detach().cpu(), tau, attn.nope_dim, attn.rope_dim, attn.v_dim
        )
        q_proj = attn.q_proj if hasattr(attn, "q_proj") else attn.q_b_proj
        scale_rows_(q_proj.weight, q_rows.to(q_proj.weight.device))
        scale_rows_(attn.kv_b_proj.weight, kv_rows.to(attn.kv_b_proj.weight.device))
        heads = clipped_H.nonzero().flatten().tolist()
        clipped_per_layer.append(heads)
        log.debug("QK-Clip layer %d: heads %s (max logits %s > τ=%g)", layer, heads, s_H[heads].tolist(), tau)
    return clipped_per_layer
