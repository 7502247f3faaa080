"""Memory per device for training a K2 preset under FSDP2 + expert parallelism (`agentfactory model plan`).

Layout (torchtitan's for DeepSeek-V3, and what train/distributed.py + model/expert_parallel.py build):
dense parameters (attention, dense MLPs, shared experts, routers, norms, embeddings, head) are FSDP-
sharded `fsdp` ways; the routed experts of every MoE layer are split `ep` ways (each EP rank owns
E/ep whole experts) and each rank's experts are FSDP-sharded over the fsdp/ep ranks that own the
same experts. So steady-state memory is sharded `fsdp` ways for every parameter; what EP changes is
the transient: FSDP all-gathers only E/ep experts of a layer instead of all E (33.8 GB in bf16 for
one kimi-k2-1t layer) and tokens travel by all-to-all instead.

Bytes per parameter and device (the parameter split is the real one: `optim.param_groups` on a
meta-device model): weights in `dtype` (what FSDP all-gathers), an fp32 master copy when dtype is
bf16, fp32 gradients (reduced in fp32), Muon's one fp32 momentum for matrices, AdamW's two fp32
moments for embeddings/head/norms; all divided by `fsdp` (fsdp = gpus/replicas, HSDP replicates).
FSDP buffers: the root unit (embeddings, norm, head) stays gathered, two blocks are gathered at a
time (current + prefetch), and one unit's unsharded gradient, in `dtype`.

Activations are counted per token from the tensors autograd saves in model.py, attention.py and
moe.py (tests/unit/test_model_plan.py measures them on the debug preset with saved-tensor hooks);
attention is counted as the memory-efficient SDPA kernel saves it (q, k, v, out, logsumexp: no T×T
matrix). With activation checkpointing (one checkpoint per block) only block inputs are kept, plus
one block's activations while it is recomputed. Transient: the (H, T, T) fp32 score block that
QK-Clip's max-logit tracking builds per sequence, and the logits' gradient.
Not modelled: CUDA context and NCCL buffers, allocator fragmentation, Muon's gathered matrix (≤ the
largest dense matrix), routing imbalance (a max/mean expert load r multiplies the expert rows by r).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from agentfactory.config import StrictModel
from agentfactory.model.config import K2Config, PresetName

GIB = 1024**3
DTYPE_BYTES = {"bfloat16": 2, "float32": 4}
COMPONENTS = {  # what each row of `bytes_per_device` holds
    "weights": "parameter shards in dtype",
    "master_weights": "fp32 copy of the shards (bf16 only)",
    "gradients": "fp32 gradient shards",
    "muon_momentum": "Muon: one fp32 buffer per matrix",
    "adamw_moments": "AdamW: two fp32 moments (embeddings, head, norms)",
    "fsdp_buffers": "gathered root + 2 blocks, 1 unsharded grad",
    "activations": "saved for backward, no checkpointing",
    "activations_checkpointed": "block inputs + one recomputed block",
    "transient": "QK-Clip score block, logits gradient",
}


class PlanConfig(StrictModel):
    """What to plan: a preset on `gpus` devices with FSDP degree `fsdp` and expert parallelism `ep`."""

    preset: PresetName = Field("kimi-k2-1t", description="K2Config preset")
    gpus: PositiveInt = Field(description="devices (processes) in the job")
    ep: PositiveInt | None = Field(
        None, description="expert-parallel degree; None = the largest that divides both E and fsdp"
    )
    fsdp: PositiveInt | None = Field(None, description="FSDP sharding degree; None = gpus (no replicas)")
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="weights and activations")
    seq_len: PositiveInt = Field(4096, description="tokens per sequence")
    micro_batch: PositiveInt = Field(1, description="sequences per forward pass on one device")
    gpu_mem_gib: PositiveFloat = Field(80.0, description="memory of one device, GiB")
    qk_clip: bool = Field(True, description="max-logit tracking for QK-Clip (a transient T×T block)")

    def degrees(self) -> tuple[int, int]:
        """(fsdp, ep) with the defaults filled in."""
        fsdp = self.fsdp or self.gpus
        return fsdp, self.ep or math.gcd(K2Config.preset(self.preset).n_routed_experts, fsdp)

    @model_validator(mode="after")
    def _check(self) -> PlanConfig:
        experts = K2Config.preset(self.preset).n_routed_experts
        fsdp, ep = self.degrees()
        if self.gpus % fsdp:
            raise ValueError(f"fsdp ({fsdp}) must divide gpus ({self.gpus})")
        if fsdp % ep or experts % ep:
            raise ValueError(f"ep ({ep}) must divide fsdp ({fsdp}) and the routed experts ({experts})")
        return self


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by optimizer and by sharding, counted on the meta device."""

    experts: int  # routed experts' stacked weights (Muon), split over EP ranks
    muon: int  # every other Muon matrix (attention, dense MLPs, shared experts, routers)
    adamw: int  # embeddings, head, norms (AdamW)
    root: int  # outside the blocks: embeddings, final norm, head (one FSDP unit)
    block_dense: tuple[int, ...]  # per block: parameters other than routed experts
    block_experts: tuple[int, ...]  # per block: routed-expert parameters

    @property
    def total(self) -> int:
        return self.experts + self.muon + self.adamw


def count_param_kinds(config: K2Config) -> ParamCounts:
    """Split a meta-device model's parameters as the optimizer and the sharding see them."""
    import torch

    from agentfactory.model.model import K2ForCausalLM
    from agentfactory.model.moe import Experts
    from agentfactory.optim import param_groups

    with torch.device("meta"):
        model = K2ForCausalLM(config)
    expert_ids = {id(p) for m in model.modules() if isinstance(m, Experts) for p in m.parameters()}
    groups = param_groups(model)
    experts = sum(p.numel() for p in groups["muon"] if id(p) in expert_ids)
    block_dense, block_experts = [], []
    for block in model.layers:
        sizes = [(p.numel(), id(p) in expert_ids) for p in block.parameters()]
        block_dense.append(sum(n for n, e in sizes if not e))
        block_experts.append(sum(n for n, e in sizes if e))
    in_blocks = sum(block_dense) + sum(block_experts)
    return ParamCounts(
        experts=experts,
        muon=sum(p.numel() for p in groups["muon"]) - experts,
        adamw=sum(p.numel() for p in groups["adamw_embed"] + groups["adamw_vector"]),
        root=sum(p.numel() for p in model.parameters()) - in_blocks,
        block_dense=tuple(block_dense),
        block_experts=tuple(block_experts),
    )


def activation_bytes_per_token(config: K2Config, a: int) -> dict[str, int]:
    """Bytes autograd saves per token: one dense block, one MoE block, the head, the embedding.

    `a` is the compute dtype's size; fp32 and int64 tensors are counted as such. RMSNorm saves its
    input, x·rstd (d each) and rstd (fp32); a Linear saves its input.
    """
    c = config
    D, H, C, R = c.hidden_size, c.num_attention_heads, c.kv_lora_rank, c.qk_rope_head_dim
    N, V, K, E = c.qk_nope_head_dim, c.v_head_dim, c.num_experts_per_tok, c.n_routed_experts
    F, Fs, Q = c.moe_intermediate_size, c.moe_intermediate_size * c.n_shared_experts, c.q_lora_rank

    def norm(d: int) -> int:
        return 2 * d * a + 4

    attention = (
        norm(D) + D * a  # input_layernorm; its output feeds q_a_proj (or q_proj) and kv_a_proj
        + (norm(Q) + Q * a if Q else 0)  # q_a_layernorm, q_b_proj's input
        + (C + R) * a + 4 + C * a  # kv_a_layernorm: its input (a view of kv_a's C+R output), rstd, x·rstd
        + C * a  # kv_b_proj's input
        + 2 * H * (N + R) * a  # SDPA: q and k
        + (H * (N + R) * a if V < N + R else H * (N + V) * a)  # v zero-padded to N+R (else a view of kv_b)
        + H * max(V, N + R) * a + H * 4  # SDPA: out (padded like v) and the fp32 logsumexp
        + H * V * a  # o_proj's input (out as (B, T, H·V))
    )  # fmt: skip
    mlp_in = norm(D) + D * a  # post_attention_layernorm and its output
    dense = attention + mlp_in + 4 * c.intermediate_size * a  # SwiGLU: gate, up, silu(gate), product
    moe = (
        attention + mlp_in
        + (D * 4 if a != 4 else 0)  # the router's fp32 input (the same tensor when computing in fp32)
        + E * 4 + K * 8 + (K + 1) * 4  # sigmoid scores, top-k ids (int64), weights and their sum (fp32)
        + K * 8 + K * D * a  # dispatch index (int64) and the K token copies the experts read
        + 4 * K * F * a  # routed SwiGLU: gate, up, silu(gate), product for each of K experts
        + K * 8 + K * a + K * D * a  # un-sort index, combine weights, the K expert outputs
        + 4 * Fs * a  # shared expert SwiGLU
    )  # fmt: skip
    head = norm(D) + D * a + c.vocab_size * a + 4 + 8 + 1  # norm, lm_head input, logits, lse, target, mask
    return {"dense_block": dense, "moe_block": moe, "head": head, "embedding": 8}


def activation_bytes(config: K2Config, tokens: int, seq_len: int, a: int, checkpointing: bool) -> int:
    """Saved activations of one forward pass over `tokens` (= micro_batch × seq_len)."""
    per = activation_bytes_per_token(config, a)
    blocks = [
        per["moe_block"] if config.is_moe_layer(i) else per["dense_block"]
        for i in range(config.num_hidden_layers)
    ]
    rope = seq_len * config.qk_rope_head_dim * a  # the cos/sin tables, shared by every block
    outside = tokens * (per["head"] + per["embedding"]) + rope
    if not checkpointing:
        return tokens * sum(blocks) + outside
    # Checkpointed blocks keep their input; in backward one block at a time holds all it saves again.
    return tokens * (len(blocks) * config.hidden_size * a + max(blocks)) + outside


def plan(cfg: PlanConfig) -> dict[str, Any]:
    """Per-device bytes of each memory component, totals and the verdict (see the module docstring)."""
    config = K2Config.preset(cfg.preset)
    counts = count_param_kinds(config)
    (fsdp, ep), a = cfg.degrees(), DTYPE_BYTES[cfg.dtype]
    tokens = cfg.micro_batch * cfg.seq_len
    sharded = counts.total / fsdp
    if fsdp > 1:  # the root stays gathered; two blocks at a time; one unit's unsharded gradient
        block = max(d + e / ep for d, e in zip(counts.block_dense, counts.block_experts, strict=True))
        buffers = (counts.root + 2 * block) * a + max(counts.root, block) * a
    else:
        buffers = 0.0
    components = {
        "weights": sharded * a,
        "master_weights": sharded * 4 if a != 4 else 0.0,
        "gradients": sharded * 4,
        "muon_momentum": (counts.experts + counts.muon) / fsdp * 4,
        "adamw_moments": counts.adamw / fsdp * 8,
        "fsdp_buffers": buffers,
        "activations": float(activation_bytes(config, tokens, cfg.seq_len, a, checkpointing=False)),
        "activations_checkpointed": float(activation_bytes(config, tokens, cfg.seq_len, a, checkpointing=True)),
        "transient": (
            (config.num_attention_heads * cfg.seq_len**2 * 4 if cfg.qk_clip else 0)  # one sequence's scores
            + tokens * config.vocab_size * a  # the logits' gradient
        ),
    }  # fmt: skip
    states = sum(v for k, v in components.items() if not k.startswith("activations"))
    totals = {
        "no_checkpointing": states + components["activations"],
        "checkpointing": states + components["activations_checkpointed"],
    }
    budget = cfg.gpu_mem_gib * GIB
    fits = {k: v <= budget for k, v in totals.items()}
    if fits["no_checkpointing"]:
        verdict = "fits"
    elif fits["checkpointing"]:
        verdict = "fits with activation checkpointing"
    else:
        verdict = "does not fit"
    return {
        **cfg.model_dump(),
        "fsdp": fsdp,
        "ep": ep,
        "params": {
            "total": counts.total,
            "routed_experts": counts.experts,
            "muon_other": counts.muon,
            "adamw": counts.adamw,
        },
        "experts_per_ep_rank": config.n_routed_experts // ep,
        "bytes_per_device": components,
        "total_bytes": totals,
        "gpu_mem_bytes": budget,
        "fits": fits,
        "verdict": verdict,
    }
