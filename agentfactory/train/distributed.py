"""torch.distributed plumbing for the trainer: process group from torchrun, FSDP2, reductions, state dicts.

`torchrun --nproc_per_node N -m agentfactory.train sft CONFIG` starts N processes; each calls
`setup()` (gloo on CPU, NCCL on CUDA), wraps the model with FSDP2 `fully_shard` (every block, then the
root: parameters become DTensors sharded on dim 0, gradients are reduce-scattered and averaged) and
trains on its slice of every global batch. What must agree across ranks is reduced here: the loss
and target-token counts (SUM), the per-head max logits for QK-Clip (MAX) and the per-expert loads for
the aux-loss-free bias update (SUM). Checkpoints hold full (unsharded) state dicts written by rank 0,
so a run can resume under a different number of processes, or none.

With `parallel.ep = P > 1` the routed experts are split over EP groups of P consecutive ranks
(model/expert_parallel.py) before FSDP wraps the model: each rank's experts are FSDP-sharded over the
world/P ranks that hold the same experts, everything else over the whole world. Full state dicts
gather the experts' rows over the EP group, and loading slices them, so checkpoints stay plain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from agentfactory.model.expert_parallel import (
    EPGroup,
    ExpertShards,
    gather_experts,
    shard_experts,
    slice_experts,
)


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


def shard_model(model: nn.Module, d: Dist, ep: int = 1) -> ExpertShards | None:
    """FSDP2 data parallel: shard every transformer block, then the root (embedding, norm, head).

    With ep > 1, first give each rank its experts (EP groups of `ep` consecutive ranks) and shard
    them over their replicas; returns what was split (None without EP)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    experts = None
    if ep > 1:
        mesh_2d = init_device_mesh(d.device.type, (d.world // ep, ep), mesh_dim_names=("replica", "ep"))
        group = EPGroup(mesh_2d["ep"].get_group(), mesh_2d["ep"].get_local_rank(), ep)
        experts = shard_experts(model, group)
        for block in model.layers:
            if block.is_moe:
                fully_shard(block.mlp.experts, mesh=mesh_2d["replica"])
                # The experts' grads already sum over the EP group: average over the world, not the replicas.
                block.mlp.experts.set_gradient_divide_factor(float(d.world))
                # gloo lacks PREMUL_SUM: reduce with SUM, then divide. (With a single replica FSDP
                # divides in place, and forcing SUM there would divide twice: torch 2.13.)
                if d.world > ep:
                    block.mlp.experts.set_force_sum_reduction_for_comms(True)
    mesh = init_device_mesh(d.device.type, (d.world,))
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return experts


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


def full_state(
    model: nn.Module, optimizers: tuple[torch.optim.Optimizer, ...], experts: ExpertShards | None = None
) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts, keyed by parameter name (collective under FSDP2;
    on rank ≠ 0 the returned dicts are empty when sharded)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    sharded = any(hasattr(p, "device_mesh") for p in model.parameters())
    # Under EP every rank must get its experts' rows, to gather them over the EP group below.
    options = StateDictOptions(full_state_dict=True, cpu_offload=sharded and experts is None)
    model_sd = get_model_state_dict(model, options=options)
    optim_sd = get_optimizer_state_dict(model, optimizers, options=options) if optimizers else {}
    if experts is None:
        return model_sd, optim_sd
    model_sd = gather_experts(model_sd, experts.names, experts.ep)
    for name in experts.names if optim_sd else ():
        if name in optim_sd["state"]:
            per_param = optim_sd["state"][name]
            optim_sd["state"][name] = gather_experts(per_param, _row_tensors(per_param), experts.ep)
    if dist.get_rank() != 0:
        return {}, {}
    return _to_cpu(model_sd), _to_cpu(optim_sd)


def load_full_state(
    model: nn.Module,
    optimizers: tuple[torch.optim.Optimizer, ...],
    model_sd: dict,
    optim_sd: dict,
    experts: ExpertShards | None = None,
) -> None:
    """Load full state dicts (every rank passes the same ones) into a plain or FSDP2 model."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if experts is not None:  # each rank loads its own experts' rows
        model_sd = slice_experts(model_sd, experts.names, experts.ep)
        optim_sd = {**optim_sd, "state": dict(optim_sd["state"])}
        for name in experts.names:
            if name in optim_sd["state"]:
                per_param = optim_sd["state"][name]
                optim_sd["state"][name] = slice_experts(per_param, _row_tensors(per_param), experts.ep)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=options)
    set_optimizer_state_dict(model, optimizers, optim_sd, options=options)


def _row_tensors(per_param: dict) -> list[str]:
    """Keys of an optimizer's per-parameter state that have the parameter's shape (e.g. momentum)."""
    return [k for k, v in per_param.items() if isinstance(v, torch.Tensor) and v.ndim > 0]


def _to_cpu(tree):
    if isinstance(tree, dict):
        return {k: _to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_to_cpu(v) for v in tree]
    return tree.cpu() if isinstance(tree, torch.Tensor) else tree
