"""Inference engines: the `Engine` protocol and its implementations (vLLM in-process, OpenAI-compatible)."""

from agentfactory.llm.base import Completion, Engine, FinishReason, GenerationRequest, SamplingParams, chat

__all__ = ["Completion", "Engine", "FinishReason", "GenerationRequest", "SamplingParams", "chat"]
