"""Muon: momentum, then Newton–Schulz orthogonalization of each weight matrix (Kimi K2's optimizer).

The math lives in three pure functions (`zeropower_via_newtonschulz`, `muon_update`, `adjusted_lr`);
the `Muon` class keeps the momentum state and runs the same ops batched over matrices (and moves
shards between ranks); tests hold both to torch.optim.Muon.

Update, per matrix W (A×B) with gradient G (K2 §2.1, https://arxiv.org/abs/2507.20534; Moonlight,
"Muon is Scalable for LLM Training", https://arxiv.org/abs/2502.16982):
    M ← μ·M + (1−μ)·G                      (momentum, μ = 0.95, kept as a lerp like torch.optim.Muon)
    U ← (1−μ)·G + μ·M  (Nesterov) or M
    O ← NS₅(U)                              (≈ U·(UᵀU)^(-1/2): singular values pushed into ~[0.7, 1.2])
    W ← W·(1 − lr·λ) − lr·0.2·√max(A, B)·O  (decoupled weight decay; 0.2·√max(A,B) matches AdamW's RMS)
which is exactly `torch.optim.Muon(..., adjust_lr_fn="match_rms_adamw")` for 2-D weights. Stacked expert
weights (E, A, B) are E independent matrices.

Speed: NS costs 5·(4a²b + 2a³) flops for an a×b matrix (a ≤ b) against ~15 per element for AdamW, so a
CPU step is bound by its matmuls. `Muon.step` runs NS as bmm chains over all matrices of one oriented
shape, in cache-sized chunks, and does each matrix's elementwise work right next to its NS.

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

from agentfactory.devices import chunk_elements

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic: steepest slope at 0
EPS = 1e-7
NS_CHUNK_ELEMENTS = 1 << 20  # per batched NS call (whole matrices, ≥ 1): 2 MiB of bf16 stays in cache
NS_CHUNK_ELEMENTS_GPU = 1 << 28  # ~100 expert matrices per bmm chain (agentfactory.devices says why)


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
    tall = G.size(-2) > G.size(-1)
    X = G.mT if tall else G
    if X.ndim == 2:
        a, b, c = NS_COEFFICIENTS
        X = X.to(dtype)
        # Frobenius norm ≥ spectral norm, so all singular values start in (0, 1].
        X = X / X.norm().clamp(min=eps)
        for _ in range(steps):
            gram = X @ X.T
            poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b·A + c·A²
            X = torch.addmm(X, poly, X, beta=a)  # a·X + (b·A + c·A²)·X
    else:
        X = newton_schulz_batch_(X.to(dtype, memory_format=torch.contiguous_format, copy=True), steps, eps)
    return X.mT if tall else X


def newton_schulz_batch_(
    X: Tensor, steps: int = 5, eps: float = EPS, scratch: tuple[Tensor, Tensor, Tensor] | None = None
) -> Tensor:
    """NS on a contiguous wide batch X (n, A, B), A ≤ B, which it overwrites; returns the result:
    X itself after an even number of steps, else the first `scratch` buffer.

    The same ops as the 2-D path, batched (one bmm chain for n matrices), ping-ponging between X and
    `scratch` = (Y like X, gram and poly (n, A, A)): buffers allocated once (by the caller, who may
    reuse them), not per step.
    """
    a, b, c = NS_COEFFICIENTS
    X.div_(X.norm(dim=(-2, -1), keepdim=True).clamp_(min=eps))
    if scratch is None:
        gram = X.new_empty(X.shape[0], X.shape[1], X.shape[1])
        scratch = (torch.empty_like(X), gram, torch.empty_like(gram))
    Y, gram, poly = scratch
    for _ in range(steps):
        torch.bmm(X, X.mT, out=gram)
        torch.baddbmm(gram, gram, gram, beta=b, alpha=c, out=poly)
        torch.baddbmm(X, poly, X, beta=a, out=Y)
        X, Y = Y, X
    return X


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
        """One Muon step: `muon_update`, NS and the decayed, RMS-matched update for every matrix.

        Matrices of one (oriented) shape are orthogonalized together, in cache-sized chunks; each
        matrix's elementwise work runs next to its NS, so its slices are still in cache: momentum and
        the Nesterov direction (cast straight into the bf16 batch) just before, weight decay and the
        update just after. (torch._foreach_* would add a pass over memory each: on the CPU they are
        per-tensor loops anyway.) 2-D weights sharded across ranks are gathered to one owner first.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, decay = group["lr"], 1 - group["lr"] * group["weight_decay"]
            ns = dict(steps=group["ns_steps"], eps=group["eps"], dtype=getattr(torch, group["ns_dtype"]))
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            bufs = [_local(self.state[p]["momentum_buffer"]) for p in params]  # local shards: momentum
            grads = [_local(p.grad) for p in params]  # and decay are elementwise, no communication
            updates = _Updates(grads, bufs, group["momentum"], group["nesterov"])
            local = [_local(p) for p in params]
            sharded = []  # indices of 2-D weights split across ranks
            batches: dict[tuple[int, int, torch.device], list[int]] = {}  # wide (A, B) → indices
            for i, p in enumerate(params):
                if _is_dtensor(p) and p.ndim == 2 and p.device_mesh.size() > 1 and _sharded_rows(p):
                    sharded.append(i)
                    continue
                if _is_dtensor(p) and p.ndim == 3 and not _whole_matrices(p):
                    raise NotImplementedError(f"Muon: unsupported sharding {p.placements} of a 3-D weight")
                A, B = p.shape[-2:]  # plain, replicated, or (E, A, B) sharded on E: whole matrices
                batches.setdefault((min(A, B), max(A, B), local[i].device), []).append(i)
            for (A, B, device), idx in batches.items():
                targets = [(local[i], adjusted_lr(lr, params[i].shape), decay) for i in idx]
                _ns_and_apply(updates, idx, targets, A, B, device, ns)
            if sharded:
                full = [updates(i) for i in sharded]
                for j, o in _gather_ns_scatter([params[i] for i in sharded], full, ns):
                    _apply(local[sharded[j]], o, adjusted_lr(lr, params[sharded[j]].shape), decay)
        return loss


def _apply(weight: Tensor, o: Tensor, lr: float, decay: float) -> None:
    """W ← W·decay − lr·O, as two roundings like torch.optim.Muon; a bf16 O is upcast exactly."""
    if decay != 1:
        weight.mul_(decay)
    weight.add_(o, alpha=-lr)


class _Updates:
    """`muon_update` on demand: `updates(i, out, rows)` advances matrix i's momentum buffer (its
    expert slice `rows`) and writes the update direction into `out`, a slot of an NS batch. A bf16
    slot is filled through one reused fp32 scratch (lerp, then cast): a fresh fp32 temporary per matrix
    costs more in new pages than the lerp itself, and a mixed-dtype lerp is not vectorized."""

    def __init__(self, grads: list[Tensor], bufs: list[Tensor], momentum: float, nesterov: bool):
        self.grads, self.bufs, self.momentum, self.nesterov = grads, bufs, momentum, nesterov
        self.scratch: Tensor | None = None

    def __call__(self, i: int, out: Tensor | None = None, rows: slice = slice(None)) -> Tensor:
        grad, buf = self.grads[i][rows], self.bufs[i][rows]
        buf.lerp_(grad, 1 - self.momentum)
        if not self.nesterov:
            return buf if out is None else out.copy_(buf)
        if out is None or out.dtype == grad.dtype:
            return torch.lerp(grad, buf, self.momentum, out=out)
        tmp = self.scratch
        if tmp is None or tmp.numel() < grad.numel() or (tmp.dtype, tmp.device) != (grad.dtype, grad.device):
            self.scratch = tmp = grad.new_empty(max(grad.numel(), NS_CHUNK_ELEMENTS))  # a slot's size
        tmp = tmp[: grad.numel()].view(grad.shape)
        return out.copy_(torch.lerp(grad, buf, self.momentum, out=tmp))


def _ns_and_apply(
    updates: _Updates,
    idx: list[int],
    targets: list[tuple[Tensor, float, float]],
    A: int,
    B: int,
    device: torch.device,
    ns: dict,
) -> None:
    """For updates idx — each (A, B), (B, A), (E, A, B) or (E, B, A) — and their (weight, lr, decay):
    fill a wide (n, A, B) batch in the NS dtype chunk by chunk, run NS on it, `_apply` each result.

    A chunk holds ~NS_CHUNK_ELEMENTS elements on the CPU (whole matrices; an expert stack may span
    chunks): its operands stay in cache (≈10% faster than one big batch on a 2-core Zen CPU), and the
    few MiB of buffers are reused by every chunk instead of a fresh, page-faulting batch the size of all
    weights. On a GPU chunks are 256× larger: there the cost is launches, not cache.
    """
    counts = [updates.grads[i].shape[0] if updates.grads[i].ndim == 3 else 1 for i in idx]
    size = min(
        sum(counts), max(1, chunk_elements(device, NS_CHUNK_ELEMENTS, NS_CHUNK_ELEMENTS_GPU) // (A * B))
    )
    X = torch.empty(size, A, B, dtype=ns["dtype"], device=device)
    Y, gram, poly = torch.empty_like(X), X.new_empty(size, A, A), X.new_empty(size, A, A)
    pending: list[
        tuple[Tensor, float, float, slice, bool, int, int]
    ] = []  # weight, lr, decay, rows, tall, at, n

    def run(fill: int) -> None:
        result = newton_schulz_batch_(
            X[:fill], ns["steps"], ns["eps"], scratch=(Y[:fill], gram[:fill], poly[:fill])
        )
        for weight, lr, decay, rows, tall, at, n in pending:
            o = result[at : at + n] if weight.ndim == 3 else result[at]
            _apply(weight[rows], o.mT if tall else o, lr, decay)
        pending.clear()

    fill = 0
    for i, n, (weight, lr, decay) in zip(idx, counts, targets, strict=True):
        tall, stacked = weight.shape[-2] > weight.shape[-1], weight.ndim == 3
        done = 0
        while done < n:
            take = min(n - done, size - fill)
            rows = slice(done, done + take) if stacked else slice(None)
            slot = X[fill : fill + take] if stacked else X[fill]
            updates(i, out=slot.mT if tall else slot, rows=rows)
            pending.append((weight, lr, decay, rows, tall, fill, take))
            fill, done = fill + take, done + take
            if fill == size:
                run(fill)
                fill = 0
    if fill:
        run(fill)


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
