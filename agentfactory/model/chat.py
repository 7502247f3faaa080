"""The Kimi K2 chat and tool-call format: a Python renderer, an output parser, token-in-token-out helpers.

Every turn is `<|im_{user,assistant,system}|>NAME<|im_middle|>BODY<|im_end|>` (tool results and the
`tool_declare` tool list use `<|im_system|>`), and an assistant turn ends with its tool calls:

    <|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{json}
    <|tool_call_end|>...<|tool_calls_section_end|>

`render` is the twin of `chat_template.jinja` (the template shipped in tokenizer_config.json, which vLLM
and `transformers` use); the unit tests check they agree byte for byte. Inputs are OpenAI chat-format dicts
(`tool_calls[i].function.arguments` a JSON string or a dict; tools `{"type": "function", "function": ...}`).
Deliberate differences from moonshotai/Kimi-K2-Instruct's template: no default "You are Kimi" system turn;
call headers are always `functions.NAME:IDX` with IDX the call's position in its turn (whatever ids the data
carries), and a tool result's `## Return of ID` names the header of the latest earlier call with its
`tool_call_id`, so the model only ever sees the ids it is expected to produce (and vLLM's `kimi_k2` parser
returns); an assistant's `reasoning_content` renders as `<think>...</think>`.
Two rules keep `vllm serve`'s rendering of an OpenAI request identical to ours (integration-tested):
content parts render as their non-empty text parts joined by newlines (vLLM joins them so before
templating), and string arguments render verbatim while dicts render as `json.dumps(d, ensure_ascii=False)`
- the form records export and the form vLLM's server re-serializes string arguments into.

Token-in-token-out (DESIGN.md §8): each turn starts and ends at a special token and `tokenizers` splits
text at special tokens before BPE, so tokenizing a rendering segment by segment gives exactly the ids of
tokenizing it whole. Hence, for conversation `h` ending in an assistant turn and environment turns `e`:

    encode(h + e, add_generation_prompt=True) == encode(h) + encode_continuation(h, e)

and a rollout keeps the engine's sampled assistant ids (ending in `<|im_end|>`) and appends
`encode_continuation` ids for the tool results / user turn that follow; sampled text is never re-tokenized.
Caveat: special-token strings inside content are tokenized as special tokens (as vLLM does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

BOS = "[BOS]"
EOS = "[EOS]"
PAD = "[PAD]"
UNK = "[UNK]"
IM_SYSTEM = "<|im_system|>"
IM_USER = "<|im_user|>"
IM_ASSISTANT = "<|im_assistant|>"
IM_MIDDLE = "<|im_middle|>"
IM_END = "<|im_end|>"
SECTION_BEGIN = "<|tool_calls_section_begin|>"
SECTION_END = "<|tool_calls_section_end|>"
CALL_BEGIN = "<|tool_call_begin|>"
ARG_BEGIN = "<|tool_call_argument_begin|>"
CALL_END = "<|tool_call_end|>"
THINK_BEGIN = "<think>"
THINK_END = "</think>"

# Vocabulary order is fixed (ids 0..15): [BOS]=0 and <|im_end|>=1 match DeepseekV3Config's default
# bos/eos ids, so a config.json that forgets them still stops generation at the end of a turn.
SPECIAL_TOKENS: tuple[str, ...] = (
    BOS, IM_END, EOS, PAD, UNK, IM_SYSTEM, IM_USER, IM_ASSISTANT, IM_MIDDLE,
    SECTION_BEGIN, SECTION_END, CALL_BEGIN, ARG_BEGIN, CALL_END, THINK_BEGIN, THINK_END,
)  # fmt: skip
GENERATION_PROMPT = f"{IM_ASSISTANT}assistant{IM_MIDDLE}"
CHAT_TEMPLATE: str = Path(__file__).with_name("chat_template.jinja").read_text(encoding="utf-8")

Message = Mapping[str, Any]


class TokenizerLike(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class Segment:
    """A piece of a rendering; `trainable` marks text the assistant generates (its loss mask)."""

    text: str
    trainable: bool = False


# ---------------------------------------------------------------------------------------------- render


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = [part["text"] for part in content if part.get("type") == "text"]
    return "\n".join(t for t in texts if t)  # non-empty text parts, joined as vLLM's server joins them


def _arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _call_header(name: str, idx: int) -> str:
    return f"functions.{name}:{idx}"


def _assistant_body(message: Message) -> str:
    parts = []
    if message.get("reasoning_content"):
        parts.append(f"{THINK_BEGIN}{message['reasoning_content']}{THINK_END}")
    parts.append(_content_text(message.get("content")))
    if message.get("tool_calls"):
        parts.append(SECTION_BEGIN)
        for idx, call in enumerate(message["tool_calls"]):
            fn = call["function"]
            parts.append(
                f"{CALL_BEGIN}{_call_header(fn['name'], idx)}{ARG_BEGIN}"
                f"{_arguments_text(fn.get('arguments'))}{CALL_END}"
            )
        parts.append(SECTION_END)
    return "".join(parts)


def _result_ref(messages: Sequence[Message], i: int) -> str:
    """The header a tool result at `messages[i]` answers: its call's, else its tool_call_id verbatim."""
    call_id = messages[i].get("tool_call_id")
    ref = call_id or ""
    if call_id:
        for prev in messages[:i]:
            if prev["role"] == "assistant" and prev.get("tool_calls"):
                for idx, call in enumerate(prev["tool_calls"]):
                    if call.get("id") == call_id:
                        ref = _call_header(call["function"]["name"], idx)
    return ref


def render_segments(
    messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
) -> list[Segment]:
    """The rendering as segments; assistant bodies (with their `<|im_end|>`) are the trainable ones,
    unless the message says `"weight": 0` (a turn kept as context only, as in OpenAI fine-tuning)."""
    segments = []
    if tools:
        tools_json = json.dumps(list(tools), ensure_ascii=False, separators=(",", ":"))
        segments.append(Segment(f"{IM_SYSTEM}tool_declare{IM_MIDDLE}{tools_json}{IM_END}"))
    for i, message in enumerate(messages):
        role = message["role"]
        opener = {"user": IM_USER, "assistant": IM_ASSISTANT}.get(role, IM_SYSTEM)
        header = f"{opener}{message.get('name') or role}{IM_MIDDLE}"
        if role == "assistant":
            segments.append(Segment(header))
            trainable = message.get("weight", 1) != 0
            segments.append(Segment(_assistant_body(message) + IM_END, trainable=trainable))
        elif role == "tool":
            body = f"## Return of {_result_ref(messages, i)}\n{_content_text(message.get('content'))}"
            segments.append(Segment(header + body + IM_END))
        else:
            segments.append(Segment(header + _content_text(message.get("content")) + IM_END))
    if add_generation_prompt:
        segments.append(Segment(GENERATION_PROMPT))
    return segments


def render(
    messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
) -> str:
    """Same text as `tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, ...)`."""
    return "".join(s.text for s in render_segments(messages, tools, add_generation_prompt))


def render_assistant(message: Message) -> str:
    """What the model generates for `message` after the generation prompt, `<|im_end|>` included."""
    return _assistant_body(message) + IM_END


def encode(
    tokenizer: TokenizerLike,
    messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
) -> list[int]:
    """Token ids of `render(...)`; no BOS is added (the template emits none, as Kimi K2's)."""
    return tokenizer.encode(render(messages, tools, add_generation_prompt), add_special_tokens=False)


def encode_with_mask(
    tokenizer: TokenizerLike,
    messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
) -> tuple[list[int], list[int]]:
    """(ids, mask) with mask 1 on assistant-generated tokens; `ids == encode(...)` (segments split at
    special tokens, so per-segment tokenization equals whole-text tokenization)."""
    segments = render_segments(messages, tools, add_generation_prompt)
    return _with_mask(segments, [tokenizer.encode(s.text, add_special_tokens=False) for s in segments])


def encode_many_with_mask(
    tokenizer: Any, conversations: Sequence[tuple[Sequence[Message], Sequence[Mapping[str, Any]] | None]]
) -> list[tuple[list[int], list[int]]]:
    """`encode_with_mask` of many (messages, tools) pairs in one call of a batch tokenizer (a HF fast
    tokenizer encodes the list in Rust: 1.7× faster than segment by segment on 10k conversations)."""
    rendered = [render_segments(messages, tools) for messages, tools in conversations]
    texts = [s.text for segments in rendered for s in segments]
    flat = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out, start = [], 0
    for segments in rendered:
        out.append(_with_mask(segments, flat[start : start + len(segments)]))
        start += len(segments)
    return out


def _with_mask(segments: Sequence[Segment], segment_ids: Sequence[list[int]]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    mask: list[int] = []
    for seg, seg_ids in zip(segments, segment_ids, strict=True):
        ids += seg_ids
        mask += [int(seg.trainable)] * len(seg_ids)
    return ids, mask


def render_continuation(
    history: Sequence[Message],
    new_messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """Text that `new_messages` (tool results, a user turn) add after `history`, plus the next
    generation prompt; `render(history) + this == render(history + new_messages, ...)`."""
    before = render(history, tools)
    after = render([*history, *new_messages], tools, add_generation_prompt)
    if not after.startswith(before):  # cannot happen with this format; guards future template edits
        raise ValueError("rendering of the history changed when turns were appended")
    return after[len(before) :]


def encode_continuation(
    tokenizer: TokenizerLike,
    history: Sequence[Message],
    new_messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Ids to append to a rollout after its last assistant turn. If the sampled ids did not end with
    `<|im_end|>` (finish_reason "length"), append that token's id first."""
    text = render_continuation(history, new_messages, tools, add_generation_prompt)
    return tokenizer.encode(text, add_special_tokens=False)


# ----------------------------------------------------------------------------------------------- parse


class ParsedToolCall(NamedTuple):
    id: str  # the header verbatim, e.g. "functions.get_weather:0" (what vLLM's parser returns as id)
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ParsedAssistant:
    """An assistant turn parsed from model output. Malformed output is data: `error` says what was
    wrong, `tool_calls` is then empty (never execute half a broken turn) and `raw` keeps the text."""

    content: str
    tool_calls: list[ParsedToolCall] = field(default_factory=list)
    error: str | None = None
    reasoning: str | None = None
    raw: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_message(self) -> dict[str, Any]:
        """OpenAI-format assistant message (arguments as JSON strings); on error the raw text as content."""
        if self.error is not None:
            return {"role": "assistant", "content": self.raw}
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            msg["reasoning_content"] = self.reasoning
        if self.tool_calls:
            msg["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
                }
                for c in self.tool_calls
            ]
        return msg


# Names: the OpenAI charset plus dots (vLLM takes everything between "functions." and ":").
_HEADER_RE = re.compile(r"functions\.(?P<name>[A-Za-z0-9_.\-]+):(?P<idx>[0-9]+)")
_STRUCTURE_TOKENS = tuple(t for t in SPECIAL_TOKENS if t not in (BOS, EOS, PAD, UNK))


class _Malformed(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-JSON constant {name}")


def _check_plain(text: str, where: str) -> None:
    for tok in _STRUCTURE_TOKENS:
        if tok in text:
            raise _Malformed(f"unexpected {tok} in {where}")


def _parse_call(chunk: str) -> ParsedToolCall:
    """`chunk` is the text between <|tool_call_begin|> and <|tool_call_end|>."""
    header, sep, args_text = chunk.partition(ARG_BEGIN)
    if not sep:
        raise _Malformed(f"tool call without {ARG_BEGIN}")
    _check_plain(header, "a tool-call header")
    _check_plain(args_text, "tool-call arguments")
    m = _HEADER_RE.fullmatch(header.strip())
    if m is None:
        raise _Malformed(f"bad tool-call header {header.strip()!r} (want functions.NAME:IDX)")
    try:  # empty arguments mean {} (as in vLLM's kimi_k2 parser)
        args = json.loads(args_text, parse_constant=_reject_constant) if args_text.strip() else {}
    except ValueError as exc:
        raise _Malformed(f"invalid JSON arguments for {m['name']}: {exc}") from None
    if not isinstance(args, dict):
        raise _Malformed(f"arguments for {m['name']} are a JSON {type(args).__name__}, not an object")
    return ParsedToolCall(m.group(0), m["name"], args)


def _parse_section(section: str) -> list[ParsedToolCall]:
    calls: list[ParsedToolCall] = []
    rest = section.strip()
    while rest:
        if not rest.startswith(CALL_BEGIN):
            raise _Malformed(f"expected {CALL_BEGIN} in the tool-call section, got {rest[:30]!r}")
        chunk, sep, rest = rest[len(CALL_BEGIN) :].partition(CALL_END)
        if not sep:
            raise _Malformed(f"tool call without {CALL_END}")
        calls.append(_parse_call(chunk))
        rest = rest.strip()
    if not calls:
        raise _Malformed("empty tool-call section")
    for pos, call in enumerate(calls):  # headers are rendered positionally; anything else would not
        if call.id.rsplit(":", 1)[1] != str(pos):  # round-trip through a tool result's "## Return of"
            raise _Malformed(f"tool call {call.id!r} at position {pos} (want index {pos})")
    return calls


def parse_assistant(text: str) -> ParsedAssistant:
    """Parse an assistant turn (the text after the generation prompt, `<|im_end|>` optional; anything
    after `<|im_end|>` is ignored, as the engine stops there). Never raises on malformed text."""
    body = text.split(IM_END, 1)[0]
    reasoning = None
    content = body
    try:
        if body.startswith(THINK_BEGIN):
            reasoning, sep, body = body[len(THINK_BEGIN) :].partition(THINK_END)
            if not sep:
                content, reasoning = "", None
                raise _Malformed(f"unclosed {THINK_BEGIN}")
            _check_plain(reasoning, "reasoning")
        content, sep, section = body.partition(SECTION_BEGIN)
        _check_plain(content, "content")
        if not sep:
            return ParsedAssistant(content, [], None, reasoning, text)
        section, sep, trailing = section.partition(SECTION_END)
        if not sep:
            raise _Malformed("unclosed tool-call section")
        if trailing.strip():
            raise _Malformed(f"text after the tool-call section: {trailing[:30]!r}")
        return ParsedAssistant(content, _parse_section(section), None, reasoning, text)
    except _Malformed as exc:
        return ParsedAssistant(content, [], str(exc), reasoning, text)
