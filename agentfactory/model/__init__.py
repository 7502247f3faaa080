"""K2 MoE model: config + presets, MLA attention, MoE, causal LM, HF DeepseekV3 checkpoints.

The torch-based names load on first use (PEP 562), so `import agentfactory.model.chat` (used by
the engines and synthesis workers) and `K2Config` do not import torch.
"""

import importlib

from agentfactory.model.config import K2Config, YaRNConfig

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


_LAZY = {
    "K2ForCausalLM": "agentfactory.model.model",
    "K2Output": "agentfactory.model.model",
    "count_params": "agentfactory.model.model",
    "describe": "agentfactory.model.info",
    "update_router_bias": "agentfactory.model.moe",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
