"""Training data: packed pretraining text, K2-format chat for SFT, and a resumable batch order.

Pretraining: documents are tokenized, joined with [EOS] and cut into `seq_len` rows; every token is a
target. SFT: each row's OpenAI `messages` + `tools` are validated with the `records` models, rendered
with the K2 chat template (`encode_many_with_mask`) and only assistant-generated tokens (text, tool calls,
`<|im_end|>`) are targets; system, user and tool turns and the tool declaration are context only.

Bad input: a row whose messages or tools do not validate raises `DataError` naming the file and the
row id; a row with no assistant turn is skipped and counted, as is a row whose assistant tokens all
fall beyond `seq_len` after truncation.

Copy curriculum (`CopyData`): generated rows of random filler, "Note:", a list of random tokens,
"\nAgain:", the same list again; only the repeat is a target. Recall curriculum (`RecallData`): the
same shape over values in the corpus's formats with fresh content and corpus text in between
(train/recall.py); only the repeat is a target.

Order: the sample at global position k (0, 1, 2, ... over all steps) is row perm_e[k mod N] with
e = k // N and perm_e a permutation seeded by (seed, e). The data position is just k, so a resumed
run continues with exactly the rows an uninterrupted run would have seen. SFT draws the samples of
`length_groups` steps together and hands them out by length (`step_rows`), so a batch pads little.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from agentfactory.model.chat import EOS, SPECIAL_TOKENS, encode_many_with_mask, render
from agentfactory.records import Message, ToolSpec
from agentfactory.train.config import ChatData, CopyData, RecallData, TextData
from agentfactory.train.recall import SEPARATOR, recall_documents

IGNORE = -100


class DataError(ValueError):
    """Training data that cannot be used; the message names the file and the row."""


@dataclass
class DataStats:
    """What loading a dataset did with its rows (written to summary.json)."""

    rows: int = 0
    used: int = 0
    skipped_no_assistant: int = 0
    skipped_truncated_away: int = 0
    truncated: int = 0
    tokens: int = 0
    target_tokens: int = 0


@dataclass
class TokenDataset:
    """Rows of token ids with their labels (IGNORE where no loss); rows may differ in length."""

    ids: list[torch.Tensor]
    labels: list[torch.Tensor]
    pad_id: int
    stats: DataStats = field(default_factory=DataStats)
    length_groups: int = 1  # steps per length-sorted group (see step_rows)

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """Hash of every row's ids and labels: a resumed run refuses different data."""
        h = hashlib.sha1()
        for ids, labels in zip(self.ids, self.labels, strict=True):
            h.update(ids.numpy().tobytes())
            h.update(labels.numpy().tobytes())
        return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------- reading


def _read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(row id, row) from .jsonl, .json (a list), .parquet or a `datasets.save_to_disk` folder."""
    if path.is_dir():
        from datasets import load_from_disk

        for i, row in enumerate(load_from_disk(str(path))):
            yield str(row.get("id") or f"index {i}"), row
        return
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield str(row.get("id") or f"index {i}"), row
        return
    if path.suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        for i, row in enumerate(rows if isinstance(rows, list) else [rows]):
            yield str(row.get("id") or f"index {i}") if isinstance(row, dict) else f"index {i}", row
        return
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n}: not valid JSON: {e}") from None
            yield (str(row.get("id") or f"line {n}") if isinstance(row, dict) else f"line {n}"), row


def _check_files(paths: list[str]) -> list[Path]:
    out = [Path(p) for p in paths]
    for p in out:
        if not p.exists():
            raise DataError(f"{p}: no such file or folder")
    return out


# ------------------------------------------------------------------------------------ pretraining


def _documents(path: Path) -> Iterator[str]:
    if path.suffix == ".txt":
        yield path.read_text(encoding="utf-8")
        return
    for row_id, row in _read_rows(path):
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            yield row["text"]
        elif isinstance(row, dict) and isinstance(row.get("messages"), list):
            yield render(row["messages"], _tools_of(row, path, row_id))
        else:
            raise DataError(f"{path}: row {row_id}: expected a 'text' string or a 'messages' list")


def load_text(data: TextData, tokenizer) -> TokenDataset:
    """Tokenize every document, join them with [EOS] and pack into seq_len rows (the tail is dropped)."""
    eos = tokenizer.convert_tokens_to_ids(EOS)
    stream: list[int] = []
    stats = DataStats()
    for path in _check_files(data.paths):
        docs = list(_documents(path))
        stats.rows += len(docs)
        for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
            stream += ids
            stream.append(eos)
    n_rows = len(stream) // data.seq_len
    if n_rows == 0:
        raise DataError(
            f"{', '.join(data.paths)}: {len(stream)} tokens, fewer than one row of {data.seq_len}"
        )
    rows = torch.tensor(stream[: n_rows * data.seq_len]).view(n_rows, data.seq_len)
    stats.used, stats.tokens = stats.rows, rows.numel()
    stats.target_tokens = n_rows * (data.seq_len - 1)
    return TokenDataset(list(rows), list(rows), pad_id=tokenizer.pad_token_id, stats=stats)


def copy_rows(data: CopyData, tokenizer) -> TokenDataset:
    """`data.rows` copy rows (filler, "Note:", list, "\nAgain:", list), labels on the repeat only.
    "Note:" marks where the list starts, as in the corpus's recall documents: without it the first
    item is unfindable (it follows a random filler token) and no list is ever copied exactly."""
    first = len(SPECIAL_TOKENS)  # special tokens take the lowest ids (see model/tokenizer.py)
    last = len(tokenizer) if data.vocab is None else min(len(tokenizer), first + data.vocab)
    note = tokenizer.encode("Note:", add_special_tokens=False)
    sep = tokenizer.encode("\nAgain:", add_special_tokens=False)
    rng = random.Random(data.seed)
    stats = DataStats(rows=data.rows, used=data.rows)
    ids_rows, label_rows = [], []
    vocab_ids = range(first, last)
    for _ in range(data.rows):
        pool = vocab_ids
        if data.alphabet is not None:
            size = round(math.exp(rng.uniform(*(math.log(n) for n in data.alphabet))))
            pool = rng.sample(vocab_ids, min(size, len(vocab_ids)))
        filler = [rng.choice(pool) for _ in range(rng.randint(*data.filler))]
        items = [rng.choice(pool) for _ in range(rng.randint(*data.items))]
        context = filler + note + items + sep
        ids_rows.append(torch.tensor(context + items))
        label_rows.append(torch.tensor([IGNORE] * len(context) + items))
        stats.tokens += len(context) + len(items)
        stats.target_tokens += len(items)
    return TokenDataset(ids_rows, label_rows, pad_id=tokenizer.pad_token_id, stats=stats)


def recall_rows(docs: list[str], tokenizer) -> TokenDataset:
    """Recall documents (train/recall.py) as rows whose labels mark the repeat (after the last "Again:")."""
    ids_rows, label_rows = [], []
    stats = DataStats(rows=len(docs), used=len(docs))
    for doc in docs:
        # Tokenized whole, as in pretraining: encoding the two halves apart would split "Again: " at
        # the space, which a trailing-space tokenizer never does. Targets: tokens starting after it.
        start = doc.rindex(SEPARATOR) + len(SEPARATOR)
        enc = tokenizer(doc, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor(enc["input_ids"])
        repeat = torch.tensor([a >= start for a, _ in enc["offset_mapping"]])
        ids_rows.append(ids)
        label_rows.append(torch.where(repeat, ids, IGNORE))
        stats.tokens += len(ids)
        stats.target_tokens += int(repeat.sum())
    return TokenDataset(ids_rows, label_rows, pad_id=tokenizer.pad_token_id, stats=stats)


def load_recall(data: RecallData, tokenizer) -> TokenDataset:
    """`data.rows` fresh recall documents over the corpus in `data.paths` (its own recall documents,
    "Note: ..." rows, are neither values nor gap text)."""
    texts = [t for path in _check_files(data.paths) for t in _documents(path) if not t.startswith("Note:")]
    docs = recall_documents(
        texts, data.rows, random.Random(data.seed), data.items, data.gap, keyed=data.keyed
    )
    if not docs:
        raise DataError(f"{', '.join(data.paths)}: no ids, emails or dates to build recall documents from")
    return recall_rows(docs, tokenizer)


def load_pretrain(data: TextData | CopyData | RecallData, tokenizer) -> TokenDataset:
    if isinstance(data, CopyData):
        return copy_rows(data, tokenizer)
    if isinstance(data, RecallData):
        return load_recall(data, tokenizer)
    return load_text(data, tokenizer)


# -------------------------------------------------------------------------------------------- SFT


def _tools_of(row: dict, path: Path, row_id: str) -> list[dict]:
    tools = row.get("tools") or []
    if isinstance(tools, str):  # the exported datasets store tools as a JSON string column
        try:
            tools = json.loads(tools) if tools.strip() else []
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: row {row_id}: 'tools' is not valid JSON: {e}") from None
    if not isinstance(tools, list):
        raise DataError(f"{path}: row {row_id}: 'tools' must be a list of OpenAI tool objects")
    return tools


def validate_chat_row(row: Any, path: Path, row_id: str) -> tuple[list[dict], list[dict]]:
    """The row's (messages, tools) as OpenAI dicts, after checking them with the records models."""
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
        raise DataError(f"{path}: row {row_id}: expected a non-empty 'messages' list")
    tools = _tools_of(row, path, row_id)
    for where, items, model in (("messages", row["messages"], Message), ("tools", tools, ToolSpec)):
        for i, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise ValueError(f"expected an object, got {type(item).__name__}")
                model.from_openai(item)
            except (ValidationError, ValueError, KeyError, TypeError) as e:
                detail = str(e).replace("\n", "; ") if not isinstance(e, KeyError) else f"missing key {e}"
                raise DataError(f"{path}: row {row_id}: {where}[{i}] is invalid: {detail}") from None
    return row["messages"], tools


ENCODE_CHUNK = 1024  # conversations per batch-tokenizer call: the speed of one call, bounded memory


def load_chat(data: ChatData, tokenizer) -> TokenDataset:
    """Encode every conversation; labels are the ids on assistant tokens and IGNORE elsewhere."""
    ids_rows, label_rows = [], []
    stats = DataStats()
    conversations: list[tuple[list[dict], list[dict]]] = []
    for path in _check_files(data.paths):
        for row_id, row in _read_rows(path):
            stats.rows += 1
            messages, tools = validate_chat_row(row, path, row_id)
            if not any(m.get("role") == "assistant" for m in messages):
                stats.skipped_no_assistant += 1
                continue
            conversations.append((messages, tools))
    for start in range(0, len(conversations), ENCODE_CHUNK):
        for ids, mask in encode_many_with_mask(tokenizer, conversations[start : start + ENCODE_CHUNK]):
            if len(ids) > data.seq_len:
                stats.truncated += 1
                ids, mask = ids[: data.seq_len], mask[: data.seq_len]
            # The first token is never a target (nothing precedes it); a row needs one target after it.
            if not any(mask[1:]):
                stats.skipped_truncated_away += 1
                continue
            ids_t = torch.tensor(ids)
            keep = (
                torch.tensor(mask, dtype=torch.bool)
                if data.targets == "assistant"
                else torch.ones_like(ids_t, dtype=torch.bool)
            )
            labels = torch.where(keep, ids_t, IGNORE)
            ids_rows.append(ids_t)
            label_rows.append(labels)
            stats.used += 1
            stats.tokens += len(ids)
            stats.target_tokens += int((labels[1:] != IGNORE).sum())
    if not ids_rows:
        raise DataError(f"{', '.join(data.paths)}: no usable conversations ({stats})")
    return TokenDataset(
        ids_rows, label_rows, pad_id=tokenizer.pad_token_id, stats=stats, length_groups=data.length_groups
    )


# ------------------------------------------------------------------------------------------ order


def sample_indices(n_rows: int, start: int, count: int, seed: int) -> list[int]:
    """Rows for global sample positions start .. start+count-1 (epoch-wise seeded permutations)."""
    out: list[int] = []
    perms: dict[int, list[int]] = {}
    for k in range(start, start + count):
        epoch, pos = divmod(k, n_rows)
        if epoch not in perms:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perms[epoch] = torch.randperm(n_rows, generator=g).tolist()
        out.append(perms[epoch][pos])
    return out


def step_rows(dataset: TokenDataset, start: int, batch_size: int, seed: int) -> list[int]:
    """The rows of the step whose first global sample is `start`.

    With `length_groups` G > 1 the samples of G consecutive steps are drawn together (the same
    samples, so an epoch still sees every row once), sorted by length and cut into G batches, which
    the G steps take in a seeded random order: each batch holds rows of similar length and pads
    little, and the order stays a pure function of the position, so resume is exact.
    """
    groups = dataset.length_groups
    if groups == 1:
        return sample_indices(len(dataset), start, batch_size, seed)
    if start % batch_size:
        raise ValueError(f"length-grouped batches start at a multiple of the batch size, not {start}")
    group, step = divmod(start // batch_size, groups)
    rows = sample_indices(len(dataset), group * groups * batch_size, groups * batch_size, seed)
    rows.sort(key=lambda r: dataset.ids[r].shape[0])
    g = torch.Generator().manual_seed(seed * 1_000_003 + group + 7_919)
    which = int(torch.randperm(groups, generator=g)[step])
    return rows[which * batch_size : (which + 1) * batch_size]


def collate(dataset: TokenDataset, rows: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, labels) of shape (len(rows), length), right-padded with pad_id / IGNORE."""
    ids = torch.full((len(rows), length), dataset.pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    for b, r in enumerate(rows):
        n = dataset.ids[r].shape[0]
        ids[b, :n] = dataset.ids[r]
        labels[b, :n] = dataset.labels[r]
    return ids, labels


def step_micro_batches(
    dataset: TokenDataset,
    start: int,
    batch_size: int,
    micro_batch_size: int,
    seed: int,
    rank: int,
    world: int,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This process's micro-batches for the step whose first global sample is `start`.

    The step's rows are sorted by length and cut into global micro-batches of `micro_batch_size`,
    each padded only to its own longest row (conversations vary 3-4x in length: padding a step to
    its longest row wasted ~40% of SFT compute). Global micro-batch m goes to rank m mod world, so
    the padded tokens (and hence expert loads) are the same for any world size.
    """
    rows = sorted(step_rows(dataset, start, batch_size, seed), key=lambda r: dataset.ids[r].shape[0])
    per_rank = batch_size // world
    out = []
    for j in range(per_rank // micro_batch_size):
        first = (j * world + rank) * micro_batch_size
        chunk = rows[first : first + micro_batch_size]
        out.append(collate(dataset, chunk, max(dataset.ids[r].shape[0] for r in chunk)))
    return out
