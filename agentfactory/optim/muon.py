"""Muon: momentum, then Newton–Schulz orthogonalization of each weight matrix (Kimi K2's optimizer).

The math lives in three pure functions (`zeropower_via_newtonschulz`, `muon_update`, `adjusted_lr`);
the `Muon` class only keeps the momentum state, batches matrices and moves shards between ranks.

Update, per matrix W (A×B) with gradient G (K2 §2.1, https://arxiv.org/abs/2507.20534; Moonlight,
"Muon is Scalable for LLM Training", https://arxiv.org/abs/2502.16982):
    M ← μ·M + (1−μ)·G                      (momentum, μ = 0.95, kept as a lerp like torch.optim.Muon)
    U ← (1−μ)·G + μ·M  (Nesterov) or M
    O ← NS₅(U)                              (≈ U·(UᵀU)^(-1/2): singular values pushed into ~[0.7, 1.2])
    W ← W·(1 − lr·λ) − lr·0.2·√max(A, B)·O  (decoupled weight decay; 0.2·√max(A,B) matches AdamW's RMS)
which is exactly `torch.optim.Muon(..., adjust_lr_fn="match_rms_adamw")` for 2-D weights. Stacked expert
weights (E, A, B) are E independent matrices, orthogonalized in one batched call.

Distributed (FSDP2, `fully_shard`): parameters are DTensors sharded on dim 0. Momentum is elementwise,
so it runs on the local shard. Newton–Schulz needs a whole matrix: a 2-D weight's shards are gathered
on one owner rank (owners balanced by work), orthogonalized there once, and scattered back; a stacked
(E, A, B) expert weight sharded on dim 0 already holds whole matrices locally, so it needs no traffic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic: steepest slope at 0
EPS = 1e-7


# ---------------------------------------------------------------------------------------- pure math


def zeropower_via_newtonschulz(
    G: Tensor, steps: int = 5, eps: float = EPS, dtype: torch.dtype = torch.bfloat16
) -> Tensor:
    """Approximately orthogonalize G (A, B) or a batch G (E, A, B); returns the same shape in `dtype`.

    Runs in bfloat16 as K2 does: the iteration is self-correcting, so bf16 rounding only jitters the
    singular values inside the band the coefficients produce (~0.7–1.2) anyway. (Five steps lift
    singular values above ~1e-3 of the largest into the band; smaller ones, e.g. of a nearly singular
    square matrix, stay small.) Wide orientation is
    used (A ≤ B) so the Gram matrix X·Xᵀ is the small one. The op sequence (normalize by the Frobenius
    norm, then addmm-fused steps) is torch.optim.Muon's, so 2-D results agree with it bit for bit.
    """
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    # Frobenius norm ≥ spectral norm, so all singular values start in (0, 1].
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    if X.ndim == 2:
        for _ in range(steps):
            gram = X @ X.T
            poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b·A + c·A²
            X = torch.addmm(X, poly, X, beta=a)  # a·X + (b·A + c·A²)·X
    else:
        X = X.contiguous()
        for _ in range(steps):
            gram = X @ X.mT
            poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
            X = torch.baddbmm(X, poly, X, beta=a)
    return X.mT if tall else X


def muon_update(grad: Tensor, momentum_buffer: Tensor, momentum: float, nesterov: bool) -> Tensor:
    """Advance the momentum buffer in place and return the (not yet orthogonalized) update direction."""
    momentum_buffer.lerp_(grad, 1 - momentum)
    return grad.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer.clone()


def adjusted_lr(lr: float, shape: torch.Size | tuple[int, ...]) -> float:
    """lr · 0.2·√max(A, B) for matrices of shape (..., A, B): the orthogonal update gets AdamW's RMS."""
    A, B = shape[-2], shape[-1]
    return lr * 0.2 * math.sqrt(max(A, B))


# ---------------------------------------------------------------------------------- the optimizer


def _is_dtensor(t: Tensor) -> bool:
    return hasattr(t, "device_mesh") and hasattr(t, "to_local")


def _local(t: Tensor) -> Tensor:
    return t.to_local() if _is_dtensor(t) else t


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights and stacked (E, A, B) expert weights; plain tensors or FSDP2 DTensors.

    Same arguments and update as `torch.optim.Muon(params, lr, weight_decay, momentum, nesterov,
    ns_steps=ns_steps, adjust_lr_fn="match_rms_adamw")`, plus `ns_dtype` (bfloat16 as in K2, or float32).
    Param groups may carry extra keys (e.g. `kind`, `initial_lr`); they are kept as is.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.1,
        ns_steps: int = 5,
        *,
        eps: float = EPS,
        ns_dtype: torch.dtype | str = torch.bfloat16,
    ):
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or not 1 <= ns_steps < 100:
            raise ValueError(f"invalid Muon hyper-parameters: {lr=} {momentum=} {weight_decay=} {ns_steps=}")
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, ns_steps=ns_steps,
            eps=eps, ns_dtype=str(ns_dtype).removeprefix("torch."),  # a str: state dicts hold no dtypes
        )  # fmt: skip
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim not in (2, 3):
                    raise ValueError(f"Muon takes 2-D or stacked 3-D weights, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            # Phase 1: momentum on the local shards (elementwise, no communication).
            updates = []
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                buf = _local(self.state[p]["momentum_buffer"])
                updates.append(muon_update(_local(p.grad), buf, group["momentum"], group["nesterov"]))
            # Phase 2: orthogonalize each whole matrix exactly once (gathering 2-D shards if sharded).
            ortho = self._orthogonalize(params, updates, group)
            # Phase 3: decoupled weight decay and the RMS-matched step, on the local shards.
            for p, o in zip(params, ortho, strict=True):
                local = _local(p)
                local.mul_(1 - group["lr"] * group["weight_decay"])
                local.add_(o.to(local.dtype), alpha=-adjusted_lr(group["lr"], p.shape))
        return loss

    def _orthogonalize(self, params: list[Tensor], updates: list[Tensor], group: dict) -> list[Tensor]:
        ns = dict(steps=group["ns_steps"], eps=group["eps"], dtype=getattr(torch, group["ns_dtype"]))
        out: list[Tensor | None] = [None] * len(params)
        sharded = []  # indices of 2-D weights split across ranks
        for i, (p, u) in enumerate(zip(params, updates, strict=True)):
            if _is_dtensor(p) and p.ndim == 2 and p.device_mesh.size() > 1 and _sharded_rows(p):
                sharded.append(i)
            else:  # plain, replicated, or (E, A, B) sharded on E: the local tensor holds whole matrices
                if _is_dtensor(p) and p.ndim == 3 and not _whole_matrices(p):
                    raise NotImplementedError(f"Muon: unsupported sharding {p.placements} of a 3-D weight")
                out[i] = zeropower_via_newtonschulz(u, **ns)
        if sharded:
            for i, o in _gather_ns_scatter([params[i] for i in sharded], [updates[i] for i in sharded], ns):
                out[sharded[i]] = o
        return out  # type: ignore[return-value]


def _sharded_rows(p: Tensor) -> bool:
    from torch.distributed.tensor import Replicate, Shard

    (placement,) = p.placements if len(p.placements) == 1 else (None,)
    if isinstance(placement, Replicate):
        return False
    if isinstance(placement, Shard) and placement.dim == 0:
        return True
    raise NotImplementedError(f"Muon: only 1-D meshes with Shard(0) or Replicate, got {p.placements}")


def _whole_matrices(p: Tensor) -> bool:
    from torch.distributed.tensor import Replicate, Shard

    return all(isinstance(pl, Replicate) or (isinstance(pl, Shard) and pl.dim == 0) for pl in p.placements)


def _gather_ns_scatter(params: list[Tensor], updates: list[Tensor], ns: dict) -> list[tuple[int, Tensor]]:
    """Gather each row-sharded 2-D update on its owner rank, orthogonalize it there, scatter it back.

    Shards follow torch.chunk (FSDP2's layout): rank r holds rows [r·c, (r+1)·c) with c = ⌈A/world⌉,
    the last ranks possibly fewer or none; shards are zero-padded to c rows for gather/scatter.
    Owners are chosen greedily by NS cost (∝ A·B·min(A, B)), identically on every rank.
    """
    group = params[0].device_mesh.get_group()
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    load = [0] * world
    owners = []
    for p in params:
        owner = min(range(world), key=lambda r: (load[r], r))
        load[owner] += p.shape[0] * p.shape[1] * min(p.shape)
        owners.append(owner)

    def padded(t: Tensor, rows: int) -> Tensor:
        return torch.cat((t, t.new_zeros(rows - t.shape[0], *t.shape[1:]))) if t.shape[0] < rows else t

    chunk = [math.ceil(p.shape[0] / world) for p in params]
    works, gathered = [], []
    for p, u, owner, c in zip(params, updates, owners, chunk, strict=True):
        bufs = [u.new_empty(c, p.shape[1]) for _ in range(world)] if rank == owner else None
        dst = dist.get_global_rank(group, owner)
        works.append(dist.gather(padded(u.contiguous(), c), bufs, dst=dst, group=group, async_op=True))
        gathered.append(bufs)
    for w in works:
        w.wait()

    works, results = [], []
    for p, u, owner, c, bufs in zip(params, updates, owners, chunk, gathered, strict=True):
        pieces = None
        if rank == owner:
            full = torch.cat(bufs)[: p.shape[0]]
            o = zeropower_via_newtonschulz(full, **ns)
            pieces = [piece.contiguous() for piece in padded(o, c * world).split(c)]  # NS may return .mT
        recv = u.new_empty(c, p.shape[1], dtype=ns["dtype"])
        src = dist.get_global_rank(group, owner)
        works.append(dist.scatter(recv, pieces, src=src, group=group, async_op=True))
        results.append(recv)
    for w in works:
        w.wait()
    return [(i, r[: u.shape[0]]) for i, (r, u) in enumerate(zip(results, updates, strict=True))]
