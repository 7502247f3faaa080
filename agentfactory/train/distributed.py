"""torch.distributed plumbing for the trainer: process group from torchrun, FSDP2, reductions, state dicts.

`torchrun --nproc_per_node N -m agentfactory.train sft CONFIG` starts N processes; each calls
`setup()` (gloo on CPU, NCCL on CUDA), wraps the model with FSDP2 `fully_shard` (every block, then the
root: parameters become DTensors sharded on dim 0, gradients are reduce-scattered and averaged) and
trains on its slice of every global batch. What must agree across ranks is reduced here: the loss
and target-token counts (SUM), the per-head max logits for QK-Clip (MAX) and the per-expert loads for
the aux-loss-free bias update (SUM). Checkpoints hold full (unsharded) state dicts written by rank 0,
so a run can resume under a different number of processes, or none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (world 1, rank 0 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Dist:
    """Join the torchrun job if there is one (WORLD_SIZE > 1); pick the device."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=dev)


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        try:  # no rank closes its connections while another still talks (gloo aborts on a reset peer)
            dist.barrier()
        finally:
            dist.destroy_process_group()


def shard_model(model: nn.Module, d: Dist) -> nn.Module:
    """FSDP2 data parallel: shard every transformer block, then the root (embedding, norm, head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(d.device.type, (d.world,))
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def all_reduce_(t: torch.Tensor, d: Dist, op: str = "sum") -> torch.Tensor:
    """In place over all ranks (a CPU tensor travels via the device: NCCL reduces only CUDA tensors)."""
    if d.enabled:
        work = t if t.device == d.device else t.to(d.device)
        dist.all_reduce(work, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        if work is not t:
            t.copy_(work)
    return t


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def full_state(model: nn.Module, optimizers: tuple[torch.optim.Optimizer, ...]) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts, keyed by parameter name (collective under FSDP2;
    on rank ≠ 0 the returned dicts are empty when sharded)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    sharded = any(hasattr(p, "device_mesh") for p in model.parameters())
    options = StateDictOptions(full_state_dict=True, cpu_offload=sharded)
    model_sd = get_model_state_dict(model, options=options)
    optim_sd = get_optimizer_state_dict(model, optimizers, options=options) if optimizers else {}
    return model_sd, optim_sd


def load_full_state(
    model: nn.Module, optimizers: tuple[torch.optim.Optimizer, ...], model_sd: dict, optim_sd: dict
) -> None:
    """Load full state dicts (every rank passes the same ones) into a plain or FSDP2 model."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=options)
    set_optimizer_state_dict(model, optimizers, optim_sd, options=options)
