"""K2Config: the shape of a Kimi K2 / DeepSeek-V3 model, validated, with named presets.

Field names follow Hugging Face's `DeepseekV3Config` (`n_routed_experts`, `num_experts_per_tok`,
`first_k_dense_replace`, ...), so a checkpoint's config.json maps onto this class almost 1:1
(see hf_adapter.py) and users who know the HF names know ours.

Presets (`K2Config.preset(name, **overrides)`):
  debug              < 1M params, 3 layers, 8 experts in 4 groups: unit tests, seconds on a CPU
  k2-mini            ~10M params, 4 layers (1 dense), 8 experts top-2 + 1 shared: the CPU default;
                     kv_lora_rank 512 and qk_rope_head_dim 64 because vLLM-CPU's MLA kernel needs them
  moonlight-16b-a3b  moonshotai/Moonlight-16B-A3B (no q low-rank, 64 experts top-6 + 2 shared)
  deepseek-v3-671b   deepseek-ai/DeepSeek-V3 (8 groups, top-4 groups, 3 dense layers)
  kimi-k2-1t         moonshotai/Kimi-K2 (61 layers, 384 experts top-8 + 1 shared, 64 heads, YaRN to 128K)
Papers: DeepSeek-V3 https://arxiv.org/abs/2412.19437, Kimi K2 https://arxiv.org/abs/2507.20534.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from agentfactory.config import StrictModel

PresetName = Literal["debug", "k2-mini", "moonlight-16b-a3b", "deepseek-v3-671b", "kimi-k2-1t"]


class YaRNConfig(StrictModel):
    """YaRN RoPE scaling as in DeepSeek-V3 (https://arxiv.org/abs/2309.00071).

    Frequencies are interpolated between `beta_slow` and `beta_fast` rotations over the original
    context; cos/sin are scaled by mscale(factor, mscale)/mscale(factor, mscale_all_dim) and the
    softmax scale by mscale(factor, mscale_all_dim)**2, exactly as HF's DeepseekV3 and vLLM do.
    """

    factor: float = Field(ge=1.0, description="context extension factor (new length / original length)")
    original_max_position_embeddings: PositiveInt = Field(description="context length seen in pretraining")
    beta_fast: float = Field(
        32.0, gt=0, description="rotations above which frequencies are kept (extrapolated)"
    )
    beta_slow: float = Field(1.0, gt=0, description="rotations below which frequencies are interpolated")
    mscale: float = Field(1.0, description="numerator mscale coefficient for cos/sin")
    mscale_all_dim: float = Field(
        1.0, description="mscale coefficient applied to the softmax scale (squared)"
    )


class K2Config(StrictModel):
    """Architecture of a K2 (DeepSeek-V3 family) MoE causal LM."""

    # --- sizes
    vocab_size: PositiveInt = Field(
        8192, description="vocabulary size; set it to the trained tokenizer's size"
    )
    hidden_size: PositiveInt = Field(256, description="model width D")
    num_hidden_layers: PositiveInt = Field(4, description="number of transformer blocks")
    intermediate_size: PositiveInt = Field(768, description="hidden size of the dense SwiGLU MLP layers")
    max_position_embeddings: PositiveInt = Field(4096, description="longest sequence the RoPE tables cover")
    # --- MLA attention
    num_attention_heads: PositiveInt = Field(4, description="attention heads H")
    q_lora_rank: PositiveInt | None = Field(128, description="query low-rank latent size; None = full q_proj")
    kv_lora_rank: PositiveInt = Field(512, description="compressed KV latent size (vLLM-CPU MLA needs 512)")
    qk_nope_head_dim: PositiveInt = Field(32, description="per-head q/k dims without RoPE")
    qk_rope_head_dim: PositiveInt = Field(
        64, description="per-head q/k RoPE dims (k shared by heads; vLLM-CPU: 64)"
    )
    v_head_dim: PositiveInt = Field(32, description="per-head value dims")
    rope_theta: PositiveFloat = Field(10000.0, description="RoPE base")
    rope_scaling: YaRNConfig | None = Field(None, description="YaRN context extension; None = plain RoPE")
    # --- MoE
    n_routed_experts: PositiveInt = Field(8, description="routed experts E")
    num_experts_per_tok: PositiveInt = Field(2, description="experts chosen per token K")
    n_shared_experts: int = Field(1, ge=0, description="always-on shared experts (one SwiGLU of n×width)")
    moe_intermediate_size: PositiveInt = Field(256, description="hidden size F of each expert")
    n_group: PositiveInt = Field(1, description="expert groups for group-limited routing")
    topk_group: PositiveInt = Field(1, description="groups a token may route to")
    routed_scaling_factor: PositiveFloat = Field(2.5, description="multiplies the routed experts' weights")
    norm_topk_prob: bool = Field(True, description="normalize the top-k sigmoid scores to sum to 1")
    first_k_dense_replace: int = Field(1, ge=0, description="the first k layers use a dense MLP, not MoE")
    bias_update_speed: float = Field(1e-3, ge=0, description="γ of the aux-loss-free bias update")
    aux_loss_alpha: float = Field(0.0, ge=0, description="weight of the sequence-wise balance loss (0 = off)")
    # --- misc
    rms_norm_eps: PositiveFloat = Field(1e-6, description="RMSNorm epsilon")
    initializer_range: PositiveFloat = Field(0.02, description="std of the normal init of all weights")
    bos_token_id: int | None = Field(None, description="written to config.json for HF/vLLM")
    eos_token_id: int | None = Field(None, description="written to config.json for HF/vLLM")
    pad_token_id: int | None = Field(None, description="written to config.json for HF/vLLM")

    @model_validator(mode="after")
    def _check(self) -> K2Config:
        # MLA has explicit head dims, so hidden_size need not be divisible by num_attention_heads.
        errors = []
        for name in ("hidden_size", "moe_intermediate_size"):
            if getattr(self, name) % 8:  # F.grouped_mm wants 16-byte aligned rows, in fp32 and bf16
                errors.append(f"{name} ({getattr(self, name)}) must be a multiple of 8 (grouped matmul)")
        if self.qk_rope_head_dim % 2:
            errors.append(f"qk_rope_head_dim ({self.qk_rope_head_dim}) must be even (RoPE rotates pairs)")
        if self.num_experts_per_tok > self.n_routed_experts:
            errors.append(
                f"num_experts_per_tok ({self.num_experts_per_tok}) > n_routed_experts ({self.n_routed_experts})"
            )
        if self.n_routed_experts % self.n_group:
            errors.append(f"n_group ({self.n_group}) must divide n_routed_experts ({self.n_routed_experts})")
        elif self.n_group > 1 and self.n_routed_experts // self.n_group < 2:
            errors.append(
                "group-limited routing scores a group by its top-2 experts: need ≥ 2 experts per group"
            )
        if self.topk_group > self.n_group:
            errors.append(f"topk_group ({self.topk_group}) > n_group ({self.n_group})")
        elif self.n_routed_experts % self.n_group == 0:
            reachable = self.topk_group * (self.n_routed_experts // self.n_group)
            if self.num_experts_per_tok > reachable:
                errors.append(
                    f"num_experts_per_tok ({self.num_experts_per_tok}) > experts in the top {self.topk_group} "
                    f"groups ({reachable})"
                )
        if self.first_k_dense_replace > self.num_hidden_layers:
            errors.append(
                f"first_k_dense_replace ({self.first_k_dense_replace}) > num_hidden_layers ({self.num_hidden_layers})"
            )
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            tok = getattr(self, name)
            if tok is not None and not 0 <= tok < self.vocab_size:
                errors.append(f"{name} ({tok}) outside the vocabulary [0, {self.vocab_size})")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    # --- derived sizes
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def num_moe_layers(self) -> int:
        return self.num_hidden_layers - self.first_k_dense_replace

    def is_moe_layer(self, layer_idx: int) -> bool:
        return layer_idx >= self.first_k_dense_replace

    @classmethod
    def preset(cls, name: PresetName | str, **overrides: Any) -> K2Config:
        """A named preset, with optional field overrides (e.g. `vocab_size=tokenizer_size`)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name](), **overrides})


def debug() -> dict[str, Any]:
    """< 1M params; group-limited routing (4 groups, top-2) and one dense layer, for unit tests."""
    return dict(
        vocab_size=512, hidden_size=64, num_hidden_layers=3, intermediate_size=128,
        max_position_embeddings=512, num_attention_heads=4, q_lora_rank=32, kv_lora_rank=64,
        qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
        n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=32,
        n_group=4, topk_group=2, routed_scaling_factor=2.5, first_k_dense_replace=1,
    )  # fmt: skip


def k2_mini() -> dict[str, Any]:
    """~10M params at vocab 8192 (~7.5M without embeddings); shapes vLLM-CPU can serve."""
    return dict(
        vocab_size=8192, hidden_size=256, num_hidden_layers=4, intermediate_size=768,
        max_position_embeddings=4096, num_attention_heads=4, q_lora_rank=128, kv_lora_rank=512,
        qk_nope_head_dim=32, qk_rope_head_dim=64, v_head_dim=32, rope_theta=10000.0,
        n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=256,
        n_group=1, topk_group=1, routed_scaling_factor=2.5, first_k_dense_replace=1,
    )  # fmt: skip


def moonlight_16b_a3b() -> dict[str, Any]:
    """moonshotai/Moonlight-16B-A3B: ~16B total / ~3B active."""
    return dict(
        vocab_size=163840, hidden_size=2048, num_hidden_layers=27, intermediate_size=11264,
        max_position_embeddings=8192, num_attention_heads=16, q_lora_rank=None, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, rope_theta=50000.0,
        n_routed_experts=64, num_experts_per_tok=6, n_shared_experts=2, moe_intermediate_size=1408,
        n_group=1, topk_group=1, routed_scaling_factor=2.446, first_k_dense_replace=1,
        bos_token_id=163584, eos_token_id=163585,
    )  # fmt: skip


def deepseek_v3_671b() -> dict[str, Any]:
    """deepseek-ai/DeepSeek-V3 (without the MTP module): ~671B total / ~37B active."""
    return dict(
        vocab_size=129280, hidden_size=7168, num_hidden_layers=61, intermediate_size=18432,
        max_position_embeddings=163840, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, rope_theta=10000.0,
        rope_scaling=dict(factor=40.0, original_max_position_embeddings=4096, beta_fast=32.0,
                          beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0),
        n_routed_experts=256, num_experts_per_tok=8, n_shared_experts=1, moe_intermediate_size=2048,
        n_group=8, topk_group=4, routed_scaling_factor=2.5, first_k_dense_replace=3,
        aux_loss_alpha=1e-4, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip


def kimi_k2_1t() -> dict[str, Any]:
    """moonshotai/Kimi-K2: ~1.03T total / ~32.9B active (published: 1.04T / 32.6B)."""
    return dict(
        vocab_size=163840, hidden_size=7168, num_hidden_layers=61, intermediate_size=18432,
        max_position_embeddings=131072, num_attention_heads=64, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, rope_theta=50000.0,
        rope_scaling=dict(factor=32.0, original_max_position_embeddings=4096, beta_fast=1.0,
                          beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0),
        n_routed_experts=384, num_experts_per_tok=8, n_shared_experts=1, moe_intermediate_size=2048,
        n_group=1, topk_group=1, routed_scaling_factor=2.827, first_k_dense_replace=1,
        bos_token_id=163584, eos_token_id=163585,
    )  # fmt: skip


PRESETS: dict[str, Callable[[], dict[str, Any]]] = {
    "debug": debug,
    "k2-mini": k2_mini,
    "moonlight-16b-a3b": moonlight_16b_a3b,
    "deepseek-v3-671b": deepseek_v3_671b,
    "kimi-k2-1t": kimi_k2_1t,
}
