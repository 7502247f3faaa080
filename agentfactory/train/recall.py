"""Recall documents: a list of ids, emails and dates, some text, then the same list again.

Using a tool means copying strings from the context (the email a user gave, the id a tool returned),
and a small model learns that in-context copying (an induction head: find where the current token
was said, predict the token after it) late from ordinary text. Recall documents make copying the
one way to predict the repeat — but only if nothing else predicts it: lists of the corpus's *own*
values let k2-mini score ≈ 50 % of the repeat from memorized values with no copying at all, and
after 250 pretraining steps it copied nothing (random lists 0 %). So `fresh=True` (the training
default) redraws each value in its own format — digits at random, most words swapped for other
words of the corpus — and puts up to `gap` characters of corpus text between the list and its
repeat, so the copy must be found by content across a distance, as in a conversation.

Measured on the quickstart's corpus (k2-mini, Muon lr 0.003, loss on the repeat only, 400 steps of
16 rows): copying of held-out lists of the corpus's real values rose from 50 % of tokens / 6 % of
first tokens (pretraining alone) to 88 % / 75 %.
"""

from __future__ import annotations

import random
import re

ENTITY = re.compile(r"[\w.+-]+@[\w.-]+\w|\b[A-Z]{1,5}-?\d[\w-]*|\b\d{4}-\d\d-\d\d\b|\b\d{3,}\b")
_WORD = re.compile(r"[A-Za-z]{2,}")
SEPARATOR = "\nAgain:"


def recall_documents(
    texts: list[str],
    n: int,
    rng: random.Random,
    items: tuple[int, int] = (2, 10),
    gap: int = 800,
    fresh: bool = True,
    keyed: float = 0.0,
) -> list[str]:
    """`n` documents "Note: a, b, c.\n<up to `gap` chars of a text>\nAgain: a, b, c." over the
    values (ids, emails, dates) found in `texts`; `fresh` redraws each value's content (see module).

    A `keyed` share of them name each value and ask for them back in another order, as a tool call
    does: "Note: refund is a, order is b.\n…\nAgain: {"order": "b", "refund": "a"}." — the first
    token of each value is then found by its key, not by continuing the previous value."""
    pool = sorted({m for t in texts for m in ENTITY.findall(t)})
    words = sorted({w for t in texts for w in _WORD.findall(t)})
    docs = []
    for _ in range(n if pool else 0):
        values = rng.sample(pool, min(len(pool), rng.randint(*items)))
        values = [_redraw(v, words, rng) if fresh else v for v in values]
        between = ""
        if gap:
            text, size = rng.choice(texts), rng.randint(0, gap)
            start = rng.randint(0, max(0, len(text) - size))
            between = text[start : start + size] + "\n"
        if keyed and rng.random() < keyed:
            keys = rng.sample(words, len(values))
            note = ", ".join(f"{k} is {v}" for k, v in zip(keys, values, strict=True))
            order = rng.sample(range(len(values)), len(values))
            again = "{" + ", ".join(f'"{keys[i]}": "{values[i]}"' for i in order) + "}"
        else:
            note = again = ", ".join(values)
        docs.append(f"Note: {note}.\n{between}{SEPARATOR[1:]} {again}.")
    return docs


def _redraw(value: str, words: list[str], rng: random.Random) -> str:
    """Same shape, new content: every digit redrawn, 70 % of the words replaced by corpus words."""
    value = re.sub(r"\d", lambda _: str(rng.randrange(10)), value)
    return _WORD.sub(lambda m: rng.choice(words) if rng.random() < 0.7 else m.group(0), value)
