"""In-context copying accuracy: the skill tool use rests on (repeat an email, an id, a date).

A row is (context, repeat): the model sees the context and, teacher-forced, each token of the repeat;
a token counts when the greedy prediction equals it, a row when every token does. The quickstart
reports it after the copy curriculum and after pretraining, on random-token lists and on lists of
ids and emails from the corpus, so a user sees whether the base model can copy before SFT.
"""

from __future__ import annotations

import torch

from agentfactory.train.data import IGNORE, TokenDataset


@torch.no_grad()
def copy_accuracy(model: torch.nn.Module, rows: TokenDataset, limit: int = 100) -> dict[str, float]:
    """Token accuracy and exact-copy rate over the first `limit` rows (labels mark the repeat)."""
    was_training = model.training
    model.eval()
    hit = total = exact = 0
    n = min(limit, len(rows))
    try:
        for ids, labels in zip(rows.ids[:n], rows.labels[:n], strict=True):
            pred = model(ids[None]).logits[0, :-1].argmax(-1)
            target = labels[1:]
            mask = target != IGNORE
            ok = pred[mask] == target[mask]
            hit, total, exact = hit + int(ok.sum()), total + int(mask.sum()), exact + int(ok.all())
    finally:
        model.train(was_training)
    return {"token_accuracy": hit / max(total, 1), "exact": exact / max(n, 1), "rows": n}


def recall_rows(docs: list[str], tokenizer) -> TokenDataset:
    """Recall documents ("Note: a, b.\\nAgain: a, b.") as rows whose labels mark the repeat."""
    ids_rows, label_rows = [], []
    for doc in docs:
        first, again = doc.split("\nAgain:", 1)
        context = tokenizer.encode(first + "\nAgain:", add_special_tokens=False)
        repeat = tokenizer.encode(again, add_special_tokens=False)
        ids_rows.append(torch.tensor(context + repeat))
        label_rows.append(torch.tensor([IGNORE] * len(context) + repeat))
    return TokenDataset(ids_rows, label_rows, pad_id=tokenizer.pad_token_id)
