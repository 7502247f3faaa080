"""Token-in-token-out episodes (DESIGN §8): the exact ids an engine saw and sampled, turn after turn.

A policy on an engine that takes prompt ids (`VLLMEngine`, also behind a response cache) is asked to
continue from the episode's own ids, never from a re-rendering of its messages:

    turn 1 prompt = encode(system + opening user turn, tools, add_generation_prompt=True)
    turn k prompt = turn k-1 prompt + the ids sampled in turn k-1 (ending in <|im_end|>)
                    + encode_continuation(history, environment turns since)   (+ generation prompt)

so sampled text is never re-tokenized (a BPE re-tokenization of sampled text may differ from the
sampled ids, and the trainer would then score tokens the policy never produced). `TokenTrace` keeps
the ids with a per-token mask (1 = sampled by the policy, 0 = rendered by the environment: system,
user, tool results, generation prompts) and the engine's logprob and policy version of each token;
RL trains on exactly these ids, the mask keeping environment tokens out of the loss. Endpoints
(OpenAI-compatible servers) cannot take ids: for them the agent sends messages and keeps no trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from agentfactory.config import StrictModel
from agentfactory.model.chat import IM_END, TokenizerLike, encode, encode_continuation


class TokenTrace(StrictModel):
    """An episode as the engine saw it; `ids[:prompt_tokens]` is the first turn's prompt."""

    ids: list[int] = Field(default_factory=list)
    mask: list[int] = Field(default_factory=list, description="1: sampled by the policy; 0: environment")
    logprobs: list[float] = Field(default_factory=list, description="engine logprob; 0.0 on env tokens")
    versions: list[int] = Field(default_factory=list, description="policy version of each token's turn")
    prompt_tokens: int = 0
    finish_reasons: list[str] = Field(default_factory=list, description="one per assistant turn")

    @property
    def sampled(self) -> int:
        return sum(self.mask)

    def extend(
        self,
        prompt_ids: Sequence[int],
        sampled: Sequence[int],
        logprobs: Sequence[float] | None,
        version: int,
        finish_reason: str,
    ) -> None:
        """Record one turn: the prompt it was sampled from (this trace's ids + env turns) and its ids.
        A turn that sampled nothing (a failed or over-long request) adds no tokens."""
        if list(prompt_ids[: len(self.ids)]) != self.ids:
            raise ValueError("a turn's prompt does not continue the episode's ids")
        self.finish_reasons.append(finish_reason)
        if not sampled:
            return
        if not self.ids:
            self.prompt_tokens = len(prompt_ids)
        env = list(prompt_ids[len(self.ids) :])
        lp = list(logprobs) if logprobs is not None else [0.0] * len(sampled)
        self.ids.extend(env + list(sampled))
        self.mask.extend([0] * len(env) + [1] * len(sampled))
        self.logprobs.extend([0.0] * len(env) + lp)
        self.versions.extend([version] * (len(env) + len(sampled)))


def next_prompt_ids(tokenizer: TokenizerLike, episode: Any) -> list[int]:
    """The ids the engine continues `episode` (an `EpisodeState`) from: its trace, then the turns
    after its last assistant message rendered once (`<|im_end|>` first if that turn was cut)."""
    messages = [m.to_openai() for m in episode.messages]
    tools = [t.to_openai() for t in episode.agent.tools] or None
    trace: TokenTrace | None = episode.trace
    if trace is None or not trace.ids:
        return encode(tokenizer, messages, tools, add_generation_prompt=True)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    ids = list(trace.ids)
    im_end = tokenizer.encode(IM_END, add_special_tokens=False)
    if ids[-len(im_end) :] != im_end:  # cut at max_tokens after a complete tool-call section
        ids += im_end
    return ids + encode_continuation(tokenizer, messages[: last + 1], messages[last + 1 :], tools)


def engine_tokenizer(engine: Any) -> TokenizerLike | None:
    """The tokenizer of an engine that takes prompt ids (VLLMEngine, directly or behind a
    `CachedEngine`), so its episodes are token-in-token-out; None for endpoints."""
    return getattr(engine, "tokenizer", None)
