"""The `Engine` protocol: how every stage talks to a language model (DESIGN §8).

Requests carry either chat messages (+ tools) or exact prompt token ids (token-in-token-out:
multi-turn rollouts and partial-rollout continuations never re-tokenize sampled text).
Completions carry the sampled ids and their logprobs, the text, tool calls parsed in the Kimi K2
format, the finish reason, and the policy version that produced them. An engine never raises for
a bad model output or a failed request: that is a `Completion` with `finish_reason="error"`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import Field, model_validator

from agentfactory.config import StrictModel
from agentfactory.records import Message, ToolCall, ToolSpec


class SamplingParams(StrictModel):
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    stop: list[str] = Field(default_factory=list)
    n: int = Field(1, ge=1)
    seed: int | None = None
    logprobs: bool = Field(False, description="return the logprob of each sampled token")
    ignore_eos: bool = Field(False, description="keep sampling past the end-of-turn token (benchmarks)")


class GenerationRequest(StrictModel):
    """One prompt: chat `messages` (+ `tools`), or exact `prompt_ids` to continue from."""

    id: str = ""
    messages: list[Message] | None = None
    tools: list[ToolSpec] = Field(default_factory=list)
    prompt_ids: list[int] | None = None
    params: SamplingParams = Field(default_factory=SamplingParams)

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerationRequest:
        if (self.messages is None) == (self.prompt_ids is None):
            raise ValueError("give exactly one of 'messages' or 'prompt_ids'")
        return self


FinishReason = Literal["stop", "length", "abort", "error"]


class Completion(StrictModel):
    request_id: str = ""
    index: int = Field(0, description="which of the request's n samples")
    text: str = ""
    token_ids: list[int] = Field(default_factory=list)
    logprobs: list[float] | None = None
    finish_reason: FinishReason = "stop"
    content: str | None = Field(None, description="the text outside the tool-call section")
    tool_calls: list[ToolCall] = Field(default_factory=list)
    parse_error: str | None = Field(None, description="why the tool-call section could not be parsed")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    policy_version: int = 0
    error: str | None = Field(
        None, description="why the request failed ('error') or could not run (an over-long prompt: 'length')"
    )
    cached: bool = Field(False, description="served from a response cache, not generated now")

    def as_message(self) -> Message:
        """The assistant turn this completion stands for."""
        return Message(role="assistant", content=self.content, tool_calls=self.tool_calls or None)


@runtime_checkable
class Engine(Protocol):
    """A text generator: in-process vLLM, an OpenAI-compatible endpoint, ... (test doubles in tests)."""

    name: str
    policy_version: int

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """All requests as one batch; `result[i]` holds request i's `n` completions."""
        ...

    def update_weights(self, weights: Mapping[str, Any] | str | Path, version: int) -> None:
        """Load new policy weights in place (a state dict or a checkpoint path) and tag them `version`."""
        ...

    def sleep(self) -> None:
        """Free accelerator memory for training (a logged no-op where unsupported, e.g. on CPU)."""
        ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...


def chat(
    engine: Engine, messages: Sequence[Message], params: SamplingParams | None = None, **kw: Any
) -> Completion:
    """One chat completion: the convenience every LLM-backed role (user, judge, simulator) uses."""
    request = GenerationRequest(messages=list(messages), params=params or SamplingParams(**kw))
    return engine.generate([request])[0][0]
