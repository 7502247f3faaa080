"""Expert parallelism: routed experts split over the ranks of an EP group, tokens moved by all-to-all.

Each of the P ranks of an EP group owns L = E/P consecutive experts: rank p holds experts
[p·L, (p+1)·L). The router, the shared expert and attention stay replicated (FSDP-sharded by the
trainer). `MoE.forward` is unchanged: it sorts its T·K (token, expert) rows by global expert and
calls `self.experts(x_MD, counts_E)`; `shard_experts` swaps that module for `ExpertParallelExperts`,
which (because experts are owned in contiguous blocks, the sorted rows are already grouped by owner):
  1. exchanges the (P, L) matrix of row counts with all_to_all_single, so that every rank knows how
     many rows it will receive from each peer for each of its local experts;
  2. sends rows with all_to_all_single (uneven splits); what arrives is ordered (source rank, local expert);
  3. re-sorts the arrivals by local expert (stable), runs the L local experts as one grouped matmul,
     and undoes the sort;
  4. sends the outputs back with the splits swapped, so the caller gets y_MD in its own row order and
     un-sorts and combines with the gate weights as in the single-device path.
The backward of an all-to-all is the all-to-all with the splits swapped (`_AllToAll`), so gradients
reach the tokens' home ranks and the experts' owners through the same two exchanges.

Gradient scale: the trainer scales each rank's loss by world/n_targets and FSDP averages over the
world. An expert's gradient already sums the contributions of all P ranks of its EP group (through
the all-to-all backward), and its FSDP group is the world/P replicas holding the same experts, so
its reduce-scatter must divide by the world, not by world/P (`set_gradient_divide_factor`).
Gloo implements all_to_all_single with uneven splits on CPU (checked with torch 2.13), NCCL on GPU.

Shape suffixes: M routed rows sent (T·K), R rows received, D hidden, E experts, L local experts,
P EP ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from agentfactory.model.moe import Experts, MoE


@dataclass(frozen=True)
class EPGroup:
    """This rank's place in its expert-parallel group."""

    group: dist.ProcessGroup
    rank: int  # rank inside the group: owns experts [rank·L, (rank+1)·L)
    size: int  # P


@dataclass(frozen=True)
class ExpertShards:
    """What `shard_experts` did: the group, and the names (state-dict keys) of the sliced parameters."""

    ep: EPGroup
    names: list[str]


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with uneven splits; its backward is the reverse exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, send: list[int], recv: list[int], group: dist.ProcessGroup):
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = x.new_empty(sum(recv), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), recv, send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _AllToAll.apply(grad, ctx.recv, ctx.send, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, send: list[int], recv: list[int], group: dist.ProcessGroup) -> torch.Tensor:
    """Send rows x[sum(send[:p]) : sum(send[:p+1])] to rank p; receive recv[p] rows from rank p."""
    return _AllToAll.apply(x, send, recv, group)


class ExpertParallelExperts(Experts):
    """This rank's L = E/P experts (parameters (L, out, in), same names as `Experts`), fed by all-to-all."""

    def __init__(self, experts: Experts, ep: EPGroup):
        nn.Module.__init__(self)
        E = experts.gate_proj.shape[0]
        if E % ep.size:
            raise ValueError(f"{E} routed experts cannot be split over {ep.size} expert-parallel ranks")
        self.ep, self.n_local = ep, E // ep.size
        rows = slice(ep.rank * self.n_local, (ep.rank + 1) * self.n_local)
        for name in ("gate_proj", "up_proj", "down_proj"):
            setattr(self, name, nn.Parameter(getattr(experts, name).detach()[rows].clone()))

    def forward(self, x_MD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """x_MD: rows sorted by global expert, counts_E[e] of them for expert e; returns (M, D) in that order."""
        P, L, group = self.ep.size, self.n_local, self.ep.group
        send_PL = counts_E.view(P, L)  # rows for each rank's local experts, in send order
        recv_PL = torch.empty_like(send_PL)
        dist.all_to_all_single(recv_PL, send_PL.contiguous(), group=group)  # recv_PL[p, l]: from rank p for l
        send, recv = send_PL.sum(1).tolist(), recv_PL.sum(1).tolist()
        x_RD = all_to_all(x_MD, send, recv, group)

        # Arrivals are ordered (source rank, local expert): regroup them by local expert for the matmul.
        expert_R = torch.arange(L, device=x_RD.device).repeat(P).repeat_interleave(recv_PL.flatten())
        order_R = expert_R.argsort(stable=True)
        y_RD = super().forward(x_RD[order_R], recv_PL.sum(0))
        y_RD = torch.empty_like(y_RD).index_copy_(0, order_R, y_RD)  # back to arrival order
        return all_to_all(y_RD, recv, send, group)


def shard_experts(model: nn.Module, ep: EPGroup) -> ExpertShards:
    """Replace every MoE's experts by this rank's slice, in place (before FSDP wraps the model)."""
    names = []
    for module_name, module in list(model.named_modules()):  # (a snapshot: experts are replaced)
        if isinstance(module, MoE):
            module.experts = ExpertParallelExperts(module.experts, ep)
            names += [f"{module_name}.experts.{n}" for n, _ in module.experts.named_parameters()]
    return ExpertShards(ep, names)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


@torch.no_grad()
def clip_grad_norm_(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip by the global gradient norm when every element lives on exactly one rank of the world
    (FSDP shards of dense parameters, EP × FSDP shards of experts: their DTensors sit on different
    meshes, which torch's clip_grad_norm_ cannot mix). Returns the norm before clipping."""
    grads = [_local(p.grad) for p in params if p.grad is not None]
    sq = torch.zeros((), dtype=torch.float64, device=grads[0].device if grads else "cpu")
    for g in grads:
        sq += g.double().pow(2).sum()
    if dist.is_initialized():
        dist.all_reduce(sq)
    norm = sq.sqrt().float()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return norm


def gather_experts(state: dict[str, torch.Tensor], names: list[str], ep: EPGroup) -> dict[str, torch.Tensor]:
    """Full (E, out, in) tensors from each rank's (L, out, in) slice, for the keys in `names` (collective)."""
    out = dict(state)
    for name in names:
        local = state[name].contiguous()
        parts = [torch.empty_like(local) for _ in range(ep.size)]
        dist.all_gather(parts, local, group=ep.group)
        out[name] = torch.cat(parts)
    return out


def slice_experts(state: dict[str, torch.Tensor], names: list[str], ep: EPGroup) -> dict[str, torch.Tensor]:
    """This rank's (L, out, in) rows of full expert tensors (the inverse of `gather_experts`)."""
    out = dict(state)
    for name in names:
        if name in state:
            L = state[name].shape[0] // ep.size
            out[name] = state[name][ep.rank * L : (ep.rank + 1) * L].clone()
    return out
