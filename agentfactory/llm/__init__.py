"""Inference engines: the `Engine` protocol and its implementations (vLLM in-process, our own PyTorch
decoder, OpenAI-compatible), a sqlite response cache, and token-in-token-out multi-turn conversations.

`VLLMEngine`, `TorchEngine` and `OpenAIEngine` are resolved lazily (and import vllm / torch / openai
only when built), so `import agentfactory.llm` stays light.
"""

from typing import TYPE_CHECKING, Any

from agentfactory.llm.base import Completion, Engine, FinishReason, GenerationRequest, SamplingParams, chat
from agentfactory.llm.cache import CachedEngine, ResponseCache
from agentfactory.llm.conversation import Conversation, generate_turns

if TYPE_CHECKING:
    from agentfactory.llm.openai_engine import OpenAIEngine
    from agentfactory.llm.torch_engine import TorchEngine
    from agentfactory.llm.vllm_engine import VLLMEngine

__all__ = [
    "CachedEngine",
    "Completion",
    "Conversation",
    "Engine",
    "FinishReason",
    "GenerationRequest",
    "OpenAIEngine",
    "ResponseCache",
    "SamplingParams",
    "TorchEngine",
    "VLLMEngine",
    "chat",
    "generate_turns",
]

_LAZY = {
    "VLLMEngine": "agentfactory.llm.vllm_engine",
    "TorchEngine": "agentfactory.llm.torch_engine",
    "OpenAIEngine": "agentfactory.llm.openai_engine",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
