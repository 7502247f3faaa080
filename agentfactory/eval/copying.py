"""In-context copying accuracy: the skill tool use rests on (repeat an email, an id, a date).

A row is (context, repeat): the model sees the context and, teacher-forced, each token of the repeat;
a token counts when the greedy prediction equals it, a row when every token does. The quickstart
reports it after the copy curriculum and after pretraining, on random-token lists and on lists of
ids and emails from the corpus, so a user sees whether the base model can copy before SFT.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator

import torch

from agentfactory.model.chat import render
from agentfactory.train.data import IGNORE, TokenDataset


@torch.no_grad()
def copy_accuracy(model: torch.nn.Module, rows: TokenDataset, limit: int = 100) -> dict[str, float]:
    """Token accuracy, first-token accuracy (the token that must be found by where it was said
    rather than by continuing a copy) and exact-copy rate over the first `limit` rows (labels mark
    the repeat)."""
    was_training = model.training
    model.eval()
    hit = total = exact = first = 0
    n = min(limit, len(rows))
    try:
        for ids, labels in zip(rows.ids[:n], rows.labels[:n], strict=True):
            pred = model(ids[None]).logits[0, :-1].argmax(-1)
            target = labels[1:]
            mask = target != IGNORE
            ok = pred[mask] == target[mask]
            hit, total, exact = hit + int(ok.sum()), total + int(mask.sum()), exact + int(ok.all())
            first += int(ok[:1].all())
    finally:
        model.train(was_training)
    return {
        "token_accuracy": hit / max(total, 1),
        "first_token": first / max(n, 1),
        "exact": exact / max(n, 1),
        "rows": n,
    }


def argument_rows(records: Iterable[dict], tokenizer, limit: int = 64) -> TokenDataset:
    """Teacher-forced rows for copying tool-call argument values: a conversation up to a string
    value inside a tool call, then the value (the labels); only values said earlier in it (an email
    the user gave, an id a tool returned). `copy_accuracy` on them measures the copying tool use
    rests on, with none of an episode's other failure modes and less noise than success rates."""
    ids_rows, label_rows = [], []
    for record in records:
        for messages, tools, j, prior, value in _said_values(record):
            text = render(messages[: j + 1], tools)
            quoted = json.dumps(value, ensure_ascii=False)[1:-1]
            pos = text.rfind(f'"{quoted}"') + 1  # inside this call, after its opening quote
            if pos <= len(prior):
                continue
            context = tokenizer.encode(text[:pos], add_special_tokens=False)
            target = tokenizer.encode(quoted, add_special_tokens=False)
            ids_rows.append(torch.tensor(context + target))
            label_rows.append(torch.tensor([IGNORE] * len(context) + target))
            if len(ids_rows) == limit:
                return TokenDataset(ids_rows, label_rows, pad_id=tokenizer.pad_token_id)
    return TokenDataset(ids_rows, label_rows, pad_id=tokenizer.pad_token_id)


def _said_values(record: dict) -> Iterator[tuple[list[dict], list[dict] | None, int, str, str]]:
    """(messages, tools, j, prior, value) for each string argument of a tool call in messages[j]
    that occurs in `prior`, the rendering of the conversation before that message."""
    messages, tools = conversation(record)
    for j, message in enumerate(messages):
        calls = message.get("tool_calls") or []
        prior = render(messages[:j], tools) if calls else ""
        for call in calls:
            for value in _arguments(call).values():
                if isinstance(value, str) and value and value in prior:
                    yield messages, tools, j, prior, value


def conversation(record: dict) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) of a dataset record or a saved episode, ready for `chat.render`."""
    messages = [{k: v for k, v in m.items() if v is not None} for m in record["messages"]]
    tools = record.get("tools")
    return messages, json.loads(tools) if isinstance(tools, str) else tools


def _arguments(call: dict) -> dict:
    arguments = call["function"]["arguments"] if "function" in call else call["arguments"]
    return json.loads(arguments) if isinstance(arguments, str) else arguments


def copyable_arguments(tokenizer, records: Iterable[dict], limit: int = 200) -> dict[str, float]:
    """Share of tool-call string arguments, said earlier in their conversation, whose tokens as the
    call writes them also occur there token for token. Below 1, copying a value into a call is not
    plain induction: the model must also learn to re-spell it (GPT-2-style leading spaces: 55 % on
    the quickstart's data; trailing spaces: 99 %, see model/tokenizer.py)."""
    found = copyable = 0
    contexts: dict[str, list[int]] = {}  # tokens of each prior rendering (one per call message)
    for record in itertools.islice(records, limit):
        for _, _, _, prior, value in _said_values(record):
            if prior not in contexts:
                contexts = {prior: tokenizer.encode(prior, add_special_tokens=False)}
            found += 1
            copyable += _contains(contexts[prior], _value_tokens(tokenizer, value))
    return {"arguments": found, "copyable": copyable / max(found, 1)}


def _value_tokens(tokenizer, value: str) -> list[int]:
    """The tokens of `value` inside a JSON argument; [] when a token straddles its quotes."""
    text = json.dumps({"k": value}, ensure_ascii=False)
    start = text.index('": "') + 4
    end = start + len(json.dumps(value, ensure_ascii=False)) - 2
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    inside = [
        (i, a, b)
        for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        if b > start and a < end
    ]
    if not inside or inside[0][1] != start or inside[-1][2] != end:
        return []
    return [i for i, _, _ in inside]


def _contains(seq: list[int], part: list[int]) -> bool:
    return bool(part) and any(seq[i : i + len(part)] == part for i in range(len(seq) - len(part) + 1))
