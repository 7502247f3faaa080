"""Token-in-token-out multi-turn episodes: the exact ids a policy saw and sampled (DESIGN.md §8).

A `Conversation` starts from the rendered prompt (system/user turns + tool list + generation prompt),
then alternates:
  - `add_completion(c)`: the engine's sampled ids are appended *as sampled* (never decoded and
    re-encoded), with their logprobs and the policy version that produced each token; the loss mask
    is 1 exactly on these tokens;
  - `add_messages(msgs)`: environment turns (tool results, the next user turn) are rendered with the
    chat template and appended via `encode_continuation`, which ends with the next generation prompt.
Because every turn starts and ends at a special token, the ids equal the template's tokenization of
the final transcript wherever the model sampled the canonical tokenization of its own text; where it
sampled another tokenization of the same text, the ids keep the sampled one (what training must see).

Partial rollouts: a turn cut by the token budget (`finish_reason == "length"`) stays open; the next
`request()` continues it from the exact ids (possibly under newer weights: `versions` records each
token's policy version), and `add_messages`/`close_turn` end it with an unsampled `<|im_end|>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agentfactory.llm.base import Completion, Engine, GenerationRequest, SamplingParams
from agentfactory.model.chat import IM_END, ParsedAssistant, encode, encode_continuation, parse_assistant
from agentfactory.records import Message, ToolSpec

NOT_SAMPLED = -1  # `versions` entry of a prompt / environment token


def _as_dicts(items: Sequence[Any] | None) -> list[dict[str, Any]]:
    return [i.to_openai() if hasattr(i, "to_openai") else dict(i) for i in items or []]


class Conversation:
    """The ids, loss mask, logprobs and per-token policy versions of one multi-turn episode."""

    def __init__(
        self,
        tokenizer: Any,
        messages: Sequence[Message | dict[str, Any]],
        tools: Sequence[ToolSpec | dict[str, Any]] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.tools = _as_dicts(tools) or None
        self.messages: list[dict[str, Any]] = _as_dicts(messages)  # the transcript, OpenAI format
        self.eos_id: int = tokenizer.convert_tokens_to_ids(IM_END)
        self.ids: list[int] = encode(tokenizer, self.messages, self.tools, add_generation_prompt=True)
        self.prompt_len = len(self.ids)
        self.mask: list[int] = [0] * len(self.ids)
        self.logprobs: list[float] = [0.0] * len(self.ids)
        self.versions: list[int] = [NOT_SAMPLED] * len(self.ids)
        self.parsed: list[ParsedAssistant] = []  # one per finished assistant turn
        self._turn: list[int] = []  # sampled ids of the assistant turn in progress
        self.turn_open = False  # a turn was cut (length/abort) and can be continued

    # ------------------------------------------------------------------------------ engine side
    def request(self, params: SamplingParams | None = None, id: str = "") -> GenerationRequest:
        """The next generation request: continue from exactly these ids."""
        return GenerationRequest(id=id, prompt_ids=list(self.ids), params=params or SamplingParams())

    def add_completion(self, completion: Completion) -> dict[str, Any] | None:
        """Append a completion's sampled ids; returns the assistant message once its turn ended
        (stop), or None while it is open (cut by length: continue it, or `close_turn()`)."""
        if completion.finish_reason == "error":
            raise ValueError(f"cannot append a failed completion: {completion.error}")
        ids = completion.token_ids
        lps = completion.logprobs if completion.logprobs is not None else [0.0] * len(ids)
        if len(lps) != len(ids):
            raise ValueError(f"{len(ids)} token ids but {len(lps)} logprobs")
        self.ids += ids
        self.mask += [1] * len(ids)
        self.logprobs += lps
        self.versions += [completion.policy_version] * len(ids)
        self._turn += ids
        self.turn_open = True
        if completion.finish_reason == "stop":
            return self.close_turn()
        return None

    def close_turn(self) -> dict[str, Any] | None:
        """End the open assistant turn (appending an unsampled `<|im_end|>` if the model did not
        emit one), parse it and add it to the transcript; returns the assistant message."""
        if not self.turn_open:
            return None
        if not self._turn or self._turn[-1] != self.eos_id:
            self._append_env([self.eos_id])
        text = self.tokenizer.decode(self._turn, skip_special_tokens=False)
        parsed = parse_assistant(text)
        self.parsed.append(parsed)
        message = parsed.to_message()
        self.messages.append(message)
        self._turn, self.turn_open = [], False
        return message

    # ------------------------------------------------------------------------- environment side
    def add_messages(self, new_messages: Sequence[Message | dict[str, Any]]) -> None:
        """Append environment turns (tool results, a user turn) and the next generation prompt."""
        self.close_turn()
        new = _as_dicts(new_messages)
        self._append_env(encode_continuation(self.tokenizer, self.messages, new, self.tools))
        self.messages += new

    def _append_env(self, ids: list[int]) -> None:
        self.ids += ids
        self.mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)
        self.versions += [NOT_SAMPLED] * len(ids)

    # ---------------------------------------------------------------------------------- views
    @property
    def last(self) -> ParsedAssistant | None:
        """The latest finished assistant turn, parsed (tool calls, content, parse error)."""
        return self.parsed[-1] if self.parsed else None

    @property
    def num_sampled(self) -> int:
        return sum(self.mask)

    def transcript(self) -> list[Message]:
        """The episode as records (assistant turns as parsed; a malformed one keeps its raw text)."""
        return [Message.from_openai(m) for m in self.messages]

    def min_version(self) -> int | None:
        """Oldest policy version among sampled tokens (staleness of a resumed partial rollout)."""
        sampled = [v for v in self.versions if v != NOT_SAMPLED]
        return min(sampled) if sampled else None


def generate_turns(
    engine: Engine, conversations: Sequence[Conversation], params: SamplingParams
) -> list[Completion]:
    """The next assistant turn of every conversation, as one batch; appends each successful
    completion to its conversation and returns them all (failed ones are left to the caller)."""
    if params.n != 1:
        raise ValueError("a conversation continues one sample at a time (n=1)")
    requests = [c.request(params, id=str(i)) for i, c in enumerate(conversations)]
    completions = [out[0] for out in engine.generate(requests)]
    for conv, comp in zip(conversations, completions, strict=True):
        if comp.finish_reason != "error" and not comp.error:
            conv.add_completion(comp)
    return completions
