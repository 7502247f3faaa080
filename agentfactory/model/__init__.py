"""K2 MoE model: config + presets, MLA attention, MoE, causal LM, HF DeepseekV3 checkpoints."""

from agentfactory.model.config import K2Config, YaRNConfig
from agentfactory.model.info import describe
from agentfactory.model.model import K2ForCausalLM, K2Output, count_params
from agentfactory.model.moe import update_router_bias

__all__ = [
    "K2Config",
    "K2ForCausalLM",
    "K2Output",
    "YaRNConfig",
    "count_params",
    "describe",
    "update_router_bias",
]
