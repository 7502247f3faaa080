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

# Tokenizer and Kimi K2 chat / tool-call format (chat.py imports no torch; tokenizer.py imports lazily).
from agentfactory.model.chat import (
    ParsedAssistant,
    ParsedToolCall,
    encode,
    encode_continuation,
    encode_with_mask,
    parse_assistant,
    render,
    render_assistant,
    render_continuation,
)
from agentfactory.model.tokenizer import iter_corpus, load_tokenizer, train_tokenizer

__all__ += [
    "ParsedAssistant",
    "ParsedToolCall",
    "encode",
    "encode_continuation",
    "encode_with_mask",
    "iter_corpus",
    "load_tokenizer",
    "parse_assistant",
    "render",
    "render_assistant",
    "render_continuation",
    "train_tokenizer",
]
