"""Expert parallelism on real gloo processes: one MoE layer split over EP ranks vs the whole layer.

Every rank builds the same MoE and runs the reference on all tokens; then it keeps only its slice of
the experts (`shard_experts`) and its own (uneven) share of the tokens, which travel by all-to-all.
Outputs, input gradients and the local experts' gradients must equal the reference's rows; the
replicated parts' gradients summed over ranks must equal the reference's. The trainer-level runs
(EP=2 on 2 and 4 processes vs 1 process, checkpoint hand-offs) are in test_train_distributed.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TORCHRUN = Path(sys.executable).parent / "torchrun"

SCRIPT = """
import copy, sys, torch, torch.distributed as dist
from torch import nn
from agentfactory.model import K2Config
from agentfactory.model.moe import MoE
from agentfactory.model.expert_parallel import EPGroup, shard_experts

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
config = K2Config.preset("debug", n_group=1, topk_group=1)
ref = MoE(config)
with torch.no_grad():
    for p in ref.parameters():
        p.normal_(0, 0.3)
    if sys.argv[1] == "skew":  # every token prefers rank 0's experts: the other ranks receive no rows
        ref.gate.e_score_correction_bias[: config.n_routed_experts // world] = 10.0
counts = [5 + 7 * r for r in range(world)]  # uneven tokens per rank
x_all = torch.randn(sum(counts), 1, config.hidden_size)
target = torch.randn_like(x_all)
x_ref = x_all.clone().requires_grad_(True)
y_ref, load_ref, _ = ref(x_ref)
(y_ref * target).sum().backward()

holder = nn.Module()
holder.moe = copy.deepcopy(ref)
holder.moe.zero_grad()
shard_experts(holder, EPGroup(dist.new_group(list(range(world))), rank, world))
moe = holder.moe
lo, hi = sum(counts[:rank]), sum(counts[: rank + 1])
x = x_all[lo:hi].clone().requires_grad_(True)
y, load, _ = moe(x)
(y * target[lo:hi]).sum().backward()

def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()

errs = {"out": rel(y, y_ref[lo:hi]), "x_grad": rel(x.grad, x_ref.grad[lo:hi])}
L = config.n_routed_experts // world
rows = slice(rank * L, (rank + 1) * L)
ref_params = dict(ref.named_parameters())
for name, p in moe.named_parameters():
    if name.startswith("experts."):  # this rank's experts: gradients from every rank's tokens
        errs[name] = rel(p.grad, ref_params[name].grad[rows])
    else:  # replicated (router, shared expert): each rank holds its tokens' share
        g = p.grad.clone()
        dist.all_reduce(g)
        errs[name] = rel(g, ref_params[name].grad)
dist.all_reduce(load)
errs["load"] = float((load != load_ref).sum())
worst = torch.tensor(max(errs.values()))
dist.all_reduce(worst, op=dist.ReduceOp.MAX)
received = torch.tensor(float(moe.experts.gate_proj.grad.abs().sum() > 0))
dist.all_reduce(received)
if rank == 0:
    print(f"WORST {worst.item():.3e} RANKS_WITH_EXPERT_GRADS {int(received.item())}")
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.parametrize(("procs", "routing"), [(2, "balanced"), (2, "skew"), (4, "balanced")])
def test_moe_layer_split_over_ep_ranks_matches_one_process(tmp_path, procs, routing):
    script = tmp_path / "moe_ep.py"
    script.write_text(SCRIPT)
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(procs), str(script), routing]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    line = next(line for line in r.stdout.splitlines() if line.startswith("WORST"))
    _, worst, _, with_grads = line.split()
    assert float(worst) < 1e-5, line  # fp32; only sums over ranks reorder additions
    assert int(with_grads) == (1 if routing == "skew" else procs), line  # skew: ranks ≥ 1 got no rows
