"""Where a checkpoint's assistant turns break: the first wrong token of each, teacher-forced.

On the oracle's episodes of the held-out tasks (the turns the model should produce), each assistant
turn is predicted greedily token by token given the true conversation before it, and its first
wrong token is classified by where it falls. Success rates say how often episodes fail; this says
why. In the quickstart nearly every tool call breaks inside an argument value that was said earlier
in the conversation (copying), rarely in the tool's name or the call's syntax.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import torch

from agentfactory.eval.copying import conversation
from agentfactory.model.chat import ARG_BEGIN, CALL_BEGIN, SECTION_BEGIN, encode_with_mask

CATEGORIES = (
    "right",  # every token of the turn predicted
    "call or answer",  # the turn's first token: whether to call a tool or to write
    "text",  # inside a written answer or question
    "tool name",
    "copied value: first token",  # a string argument said earlier in the conversation
    "copied value: later token",
    "other value",  # a string argument not said before (derived, or the policy's own words)
    "call syntax",  # keys, numbers, JSON punctuation, call markers
)
_OPEN_STRING = re.compile(r':\s*"((?:[^"\\]|\\.)*)$')  # the arguments end inside a string value


def classify(turn: str, wrong_at: str, prior: str) -> str:
    """The category of a turn whose text up to its first wrong token is `wrong_at` (`turn` is the
    whole true turn, `prior` the conversation before it)."""
    if not wrong_at:
        return "call or answer"
    if SECTION_BEGIN not in wrong_at:
        return "text"
    call = wrong_at.rsplit(CALL_BEGIN, 1)[-1]
    if ARG_BEGIN not in call:
        return "tool name"
    args = call.split(ARG_BEGIN, 1)[1]
    if not (m := _OPEN_STRING.search(args)):
        return "call syntax"
    done = m.group(1)
    value = done + re.match(r'(?:[^"\\]|\\.)*', turn[len(wrong_at) :]).group(0)
    if not value or value not in prior:
        return "other value"
    return "copied value: later token" if done else "copied value: first token"


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of 1s: the assistant turns (a header always separates two)."""
    edges = [i for i in range(1, len(mask)) if mask[i] != mask[i - 1]]
    bounds = ([0] if mask and mask[0] else []) + edges + ([len(mask)] if mask and mask[-1] else [])
    return list(zip(bounds[::2], bounds[1::2], strict=True))


@torch.no_grad()
def turn_errors(model: torch.nn.Module, tokenizer, records: Iterable[dict], limit: int = 48) -> dict:
    """{"turns", "right", "first_error": {category: turns}} over the assistant turns of the first
    `limit` records (OpenAI messages + tools)."""
    counts: Counter = Counter()
    was_training = model.training
    model.eval()
    try:
        for k, record in enumerate(records):
            if k == limit:
                break
            ids, mask = encode_with_mask(tokenizer, *conversation(record))
            pred = model(torch.tensor(ids)[None]).logits[0].argmax(-1).tolist()
            for a, b in _runs(mask):
                wrong = next((i for i in range(max(a, 1), b) if pred[i - 1] != ids[i]), None)
                if wrong is None:
                    counts["right"] += 1
                    continue
                turn, prior = tokenizer.decode(ids[a:b]), tokenizer.decode(ids[:a])
                counts[classify(turn, tokenizer.decode(ids[a:wrong]), prior)] += 1
    finally:
        model.train(was_training)
    turns = sum(counts.values())
    return {
        "turns": turns,
        "right": counts["right"],
        "first_error": {c: counts[c] for c in CATEGORIES[1:]},
    }
