"""`describe(preset)`: what `agentfactory model info PRESET` prints (sizes counted on the meta device)."""

from __future__ import annotations

from typing import Any

from agentfactory.model.config import K2Config
from agentfactory.model.model import count_params


def describe(preset: str | K2Config, **overrides: Any) -> dict[str, Any]:
    """Total/active parameters and the main dimensions of a preset (or a given config)."""
    config = preset if isinstance(preset, K2Config) else K2Config.preset(preset, **overrides)
    total, active = count_params(config)
    return {
        "preset": preset if isinstance(preset, str) else None,
        "total_params": total,
        "active_params": active,
        "layers": config.num_hidden_layers,
        "dense_layers": config.first_k_dense_replace,
        "hidden_size": config.hidden_size,
        "attention_heads": config.num_attention_heads,
        "q_lora_rank": config.q_lora_rank,
        "kv_lora_rank": config.kv_lora_rank,
        "qk_nope_head_dim": config.qk_nope_head_dim,
        "qk_rope_head_dim": config.qk_rope_head_dim,
        "v_head_dim": config.v_head_dim,
        "routed_experts": config.n_routed_experts,
        "experts_per_token": config.num_experts_per_tok,
        "shared_experts": config.n_shared_experts,
        "expert_groups": f"{config.topk_group} of {config.n_group}",
        "moe_intermediate_size": config.moe_intermediate_size,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "yarn_factor": config.rope_scaling.factor if config.rope_scaling else None,
    }
