"""Keys and values of the tokens seen so far, per layer, for incremental decoding (llm/torch_engine.py).

Row b of the cache is one sequence; its tokens sit at slots 0 .. lengths[b]-1 and the slots past its
length are free (they may hold junk from padding, masked out and later overwritten). A model call
feeds each row T new tokens (right-padded: row b's first `new[b]` are real), written at slots
lengths[b] .. lengths[b]+T-1; `advance(new)` then moves each row's length by its real count.

MLA's keys and values are cached expanded per head, as SDPA consumes them. K2's serving stacks cache
the compressed latent (kv_lora_rank + rope dims per token, shared by all heads) and fold kv_b_proj
into the query and output projections; at the sizes this repo trains the expanded cache is a few
MiB and needs no second attention formulation.
"""

from __future__ import annotations

import torch

from agentfactory.model.config import K2Config


class KVCache:
    """Per-layer (B, H, slots, K) keys and values (v zero-padded to q/k's head dim, as in MLA)."""

    def __init__(
        self, config: K2Config, rows: int, slots: int, device: torch.device | str, dtype: torch.dtype
    ) -> None:
        shape = (rows, config.num_attention_heads, slots, config.qk_head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.lengths_B = torch.zeros(rows, dtype=torch.long, device=device)
        self.slots = slots
        self.longest = 0  # max(lengths), kept on the host: no device sync per layer
        self._pos_BT: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return self.lengths_B.shape[0]

    def begin(self, new_tokens: int) -> torch.Tensor:
        """Start a model call feeding `new_tokens` per row; returns their positions (B, T)."""
        if self.longest + new_tokens > self.slots:
            raise ValueError(
                f"{self.longest} + {new_tokens} tokens do not fit the cache's {self.slots} slots"
            )
        self.prefill = self.longest == 0
        steps_T = torch.arange(new_tokens, device=self.lengths_B.device)
        self._pos_BT = self.lengths_B[:, None] + steps_T
        span = self.longest + new_tokens
        slots_S = torch.arange(span, device=self.lengths_B.device)
        self._visible_B1TS = (slots_S[None, None, :] <= self._pos_BT[:, :, None])[:, None]
        return self._pos_BT

    def layer(self, i: int) -> LayerKV:
        return LayerKV(self, i)

    def advance(self, new_B: torch.Tensor) -> None:
        """End the call: row b keeps the first new_B[b] of the tokens it was fed."""
        self.lengths_B += new_B
        self.longest = int(self.lengths_B.max()) if self.rows else 0
        self._pos_BT = None

    @classmethod
    def concat(cls, caches: list[KVCache]) -> KVCache:
        """One cache holding the rows of `caches` (same config and slots) in order; the first is
        reused for it."""
        out = caches[0]
        out.k = [torch.cat(ks) for ks in zip(*(c.k for c in caches), strict=True)]
        out.v = [torch.cat(vs) for vs in zip(*(c.v for c in caches), strict=True)]
        out.lengths_B = torch.cat([c.lengths_B for c in caches])
        out.longest = max(c.longest for c in caches)
        return out

    def load_row(self, row: int, k: list[torch.Tensor], v: list[torch.Tensor], n: int) -> None:
        """Start row `row` from the first `n` tokens of a sequence's per-layer (H, ≥n, K) keys/values."""
        for i in range(len(self.k)):
            self.k[i][row, :, :n] = k[i][:, :n]
            self.v[i][row, :, :n] = v[i][:, :n]
        self.lengths_B[row] = n
        self.longest = max(self.longest, n)

    def take_row(self, row: int, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Copies of row `row`'s first `n` slots, per layer (H, n, K)."""
        return [k[row, :, :n].clone() for k in self.k], [v[row, :, :n].clone() for v in self.v]

    def select(self, rows_R: torch.Tensor) -> None:
        """Keep rows `rows_R` in that order (repeat a prompt's row for n samples, drop finished rows)."""
        self.k = [k.index_select(0, rows_R) for k in self.k]
        self.v = [v.index_select(0, rows_R) for v in self.v]
        self.lengths_B = self.lengths_B.index_select(0, rows_R)
        self.longest = int(self.lengths_B.max()) if self.rows else 0


class LayerKV:
    """One layer's view of a `KVCache` during a model call (what `MLA.forward` takes)."""

    def __init__(self, cache: KVCache, layer: int) -> None:
        self.cache, self.i = cache, layer

    @property
    def prefill(self) -> bool:
        """Nothing was cached before this call: attention over the new tokens alone, causal."""
        return self.cache.prefill

    def write(self, k_BHTK: torch.Tensor, v_BHTK: torch.Tensor) -> None:
        c = self.cache
        rows_B1 = torch.arange(c.rows, device=k_BHTK.device)[:, None]
        c.k[self.i][rows_B1, :, c._pos_BT] = k_BHTK.transpose(1, 2).to(c.k[self.i].dtype)
        c.v[self.i][rows_B1, :, c._pos_BT] = v_BHTK.transpose(1, 2).to(c.v[self.i].dtype)

    def read(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys, values (B, H, S, K) over the slots in use, and which slot each new token sees (B, 1, T, S)."""
        c = self.cache
        span = c._visible_B1TS.shape[-1]
        return c.k[self.i][:, :, :span], c.v[self.i][:, :, :span], c._visible_B1TS
