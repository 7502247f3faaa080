"""Prefix cache for TorchEngine: keys and values of sequences already computed, reused when a later
prompt starts with them.

Why: a multi-turn episode sends the whole conversation again every turn (token in, token out: the
previous prompt, the sampled ids, then the new tool or user message), and on a CPU re-prefilling
it was most of an episode's time. vLLM-CPU disables its prefix caching for MLA; this is the same
idea (vLLM's automatic prefix caching) kept simple: one entry per finished sequence, not pages.

- An entry holds one sequence's per-layer keys/values (H, L, K) and its L token ids.
- Index: a hash chain over blocks of `BLOCK` tokens (hash of block b covers tokens 0 .. 16(b+1)-1),
  so a prompt finds the entry sharing its longest run of whole blocks, checks the tokens, then
  extends the match token by token inside that entry. Entries sharing a system prompt share
  keys (each key lists every entry holding its blocks; a lookup takes the newest).
- Least-recently-used entries are evicted under `max_bytes`; new weights make every entry stale
  (`clear`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

BLOCK = 16


@dataclass
class PrefixEntry:
    ids: tuple[int, ...]  # the tokens whose keys/values are held
    k: list[torch.Tensor]  # per layer (H, L, K)
    v: list[torch.Tensor]
    keys: list[int]  # block hashes of ids
    nbytes: int


def block_hashes(ids: Sequence[int], blocks: int) -> list[int]:
    """Chained hashes of the first `blocks` whole blocks: the b-th identifies tokens 0 .. 16(b+1)-1."""
    out, h = [], 0
    for b in range(blocks):
        h = hash((h, tuple(ids[b * BLOCK : (b + 1) * BLOCK])))
        out.append(h)
    return out


class PrefixCache:
    """Finished sequences' keys/values under a byte budget, looked up by longest shared prefix."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[int, PrefixEntry] = OrderedDict()  # least recently used first
        self.index: dict[int, set[int]] = {}  # block hash -> ids of the entries holding those blocks
        self.bytes = 0
        self._next_id = 0
        self.queried_tokens = 0  # prompt tokens looked up, and how many of them were found cached
        self.hit_tokens = 0

    def clear(self) -> None:
        self.entries.clear()
        self.index.clear()
        self.bytes = 0

    def lookup(self, ids: Sequence[int], limit: int) -> tuple[PrefixEntry | None, int]:
        """The entry sharing the longest prefix with `ids`, and that prefix's length (≤ `limit`)."""
        self.queried_tokens += len(ids)
        hashes = block_hashes(ids, min(len(ids), limit) // BLOCK)
        for b in range(len(hashes) - 1, -1, -1):
            holders = self.index.get(hashes[b])
            if not holders:
                continue
            entry_id = max(holders)
            entry, n = self.entries[entry_id], (b + 1) * BLOCK
            if entry.ids[:n] != tuple(ids[:n]):  # a hash collision
                continue
            end = min(len(entry.ids), limit)
            while n < end and entry.ids[n] == ids[n]:
                n += 1
            self.entries.move_to_end(entry_id)
            self.hit_tokens += n
            return entry, n
        return None, 0

    def add(self, ids: Sequence[int], k: list[torch.Tensor], v: list[torch.Tensor]) -> None:
        """Keep the keys/values (per layer (H, len(ids), K), owned by the cache from now on) of `ids`."""
        if len(ids) < BLOCK or self.max_bytes <= 0:
            return
        nbytes = sum(t.numel() * t.element_size() for t in (*k, *v))
        if nbytes > self.max_bytes:
            return
        while self.bytes + nbytes > self.max_bytes:
            self._evict(next(iter(self.entries)))
        keys = block_hashes(ids, len(ids) // BLOCK)
        entry_id, self._next_id = self._next_id, self._next_id + 1
        self.entries[entry_id] = PrefixEntry(tuple(ids), k, v, keys, nbytes)
        for h in keys:
            self.index.setdefault(h, set()).add(entry_id)
        self.bytes += nbytes

    def _evict(self, entry_id: int) -> None:
        entry = self.entries.pop(entry_id)
        self.bytes -= entry.nbytes
        for h in entry.keys:
            holders = self.index[h]
            holders.discard(entry_id)
            if not holders:
                del self.index[h]
