"""TorchEngine: our own K2ForCausalLM behind the `Engine` protocol, decoding with a KV cache.

Why a second in-process engine: machines without vLLM (the GPU hosts this project borrows carry
PyTorch but cannot install vLLM) can still roll out, synthesize and evaluate, and the logprobs it
returns are the trainer's own forward (no kernel mismatch: what RL's importance weights correct
for under vLLM is ≈ 0 here). vLLM stays the engine for throughput (continuous batching, paged KV,
CUDA graphs); this one is plain PyTorch a reader can follow.

- Batching: requests are sorted by prompt length and cut into batches under `max_seqs` sequences and
  `cache_bytes` of KV cache. A batch prefills each distinct prompt once (right-padded, causal),
  repeats its cache rows for the request's `n` samples, then decodes one token per step for every
  row still running; rows that finished are dropped from the cache once a quarter of them are done.
- Prefix cache (`llm/prefix_cache.py`): finished sequences' keys/values are kept, and a prompt that
  continues one (the next turn of an episode) prefills only its new tokens; rows are prefilled
  grouped by how many tokens they still need. New weights drop the cache.
- Sampling per row: temperature 0 is greedy; otherwise temperature then top-p (nucleus), drawn by
  inverse CDF from the row's own `random.Random(seed, sample index)`, so a seeded request gives the
  same tokens whatever else is in the batch. Logprobs are the raw model's (temperature 1, no top-p),
  as vLLM's default `raw_logprobs`.
- Stops: `<|im_end|>` (unless `ignore_eos`), the request's `stop` strings (cut from the text), or
  `max_tokens` / the context end ("length"). Text is decoded with special tokens kept (the tool-call
  markers are special tokens), the final `<|im_end|>` left out of it but kept in the ids.
- `update_weights(state_dict | path, version)` copies tensors into the engine's own model (the
  trainer's model is never shared: a rollout running beside training must not see half an update).
- `sleep()` moves the weights to the host on a GPU (and `wake_up()` back) and drops the prefix cache.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agentfactory.llm.base import Completion, GenerationRequest, SamplingParams
from agentfactory.llm.local import admit, check_model_dir, completion, model_fingerprint, prompt_ids
from agentfactory.llm.prefix_cache import PrefixCache
from agentfactory.model.chat import IM_END
from agentfactory.model.kv_cache import KVCache

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class _Row:
    """One sampled sequence: sample `index` of request `req`, whose prompt is the batch's `prompt`-th
    distinct one."""

    req: int
    prompt: int
    prompt_tokens: int
    index: int
    params: SamplingParams
    rng: random.Random
    budget: int  # max new tokens (params.max_tokens, cut at the context end)
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str | None = None
    stop_at: int | None = None  # where a stop string begins in the decoded text


def sample_tokens(
    logits_RV: torch.Tensor, temperature_R: torch.Tensor, top_p_R: torch.Tensor, u_R: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token per row and its raw logprob. Rows with temperature 0 take the argmax; the others
    draw by inverse CDF at u ∈ [0, 1) over the nucleus (the smallest set of most likely tokens whose
    mass reaches top_p) of softmax(logits / temperature)."""
    logp_RV = logits_RV.float().log_softmax(-1)
    probs_RV = (logp_RV / temperature_R.clamp_min(1e-5)[:, None]).softmax(-1)
    sorted_RV, order_RV = probs_RV.sort(-1, descending=True)
    mass_before_RV = sorted_RV.cumsum(-1) - sorted_RV
    sorted_RV = sorted_RV.masked_fill(mass_before_RV >= top_p_R[:, None], 0.0)
    cdf_RV = sorted_RV.cumsum(-1)
    target_R1 = (u_R * cdf_RV[:, -1])[:, None]
    pick_R1 = torch.searchsorted(cdf_RV, target_R1, right=True).clamp_max(logits_RV.shape[-1] - 1)
    token_R = order_RV.gather(1, pick_R1).squeeze(1)
    token_R = torch.where(temperature_R == 0, logp_RV.argmax(-1), token_R)
    return token_R, logp_RV.gather(1, token_R[:, None]).squeeze(1)


class TorchEngine:
    """`Engine` over K2ForCausalLM loaded from a HF-format checkpoint dir (weights + tokenizer)."""

    name = "torch"

    def __init__(
        self,
        model_path: str | Path,
        *,
        tokenizer: str | Path | None = None,
        dtype: str = "float32",
        device: str = "auto",
        max_model_len: int = 4096,
        seed: int = 0,
        max_seqs: int = 256,
        cache_bytes: int = 1 << 30,
        prefill_tokens: int = 32768,
        prefix_cache_bytes: int = 2 << 30,
    ) -> None:
        """`device`: "auto" (CUDA when present), "cpu" or "cuda[:i]". `max_seqs` sequences and
        `cache_bytes` of KV cache bound one decoding batch (larger request lists run in turns);
        prompts are cached `prefill_tokens` padded tokens per forward (activation memory).
        `prefix_cache_bytes` keeps finished sequences' keys/values for prompts that continue
        them (0: off)."""
        from agentfactory.model import K2ForCausalLM
        from agentfactory.model.tokenizer import load_tokenizer

        self.model_path = Path(model_path).resolve()
        self.config = check_model_dir(self.model_path)
        tok_path = Path(tokenizer).resolve() if tokenizer is not None else self.model_path
        try:
            self.tokenizer = load_tokenizer(tok_path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{tok_path}: not a usable K2 tokenizer dir: {exc}") from exc
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        t0 = time.perf_counter()
        self.model = K2ForCausalLM.from_pretrained(self.model_path, dtype=_DTYPES[dtype], device=self.device)
        self.model.eval().requires_grad_(False)
        self.start_s = time.perf_counter() - t0
        self.model_id = f"{self.model_path}@{model_fingerprint(self.model_path)}"
        self.max_model_len, self.max_seqs, self.cache_bytes = max_model_len, max_seqs, cache_bytes
        self.prefill_tokens = prefill_tokens
        self.prefix = PrefixCache(prefix_cache_bytes)
        self.eos_token_id = self.tokenizer.convert_tokens_to_ids(IM_END)
        self.vocab_size = self.model.config.vocab_size
        self.policy_version = 0
        self.sleeping = False
        self._seeds = random.Random(seed)  # draws the seeds of requests that give none
        c = self.model.config
        elem = torch.finfo(_DTYPES[dtype]).bits // 8
        self._slot_bytes = 2 * c.num_hidden_layers * c.num_attention_heads * c.qk_head_dim * elem

    # ------------------------------------------------------------------------------------- generate
    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The exact ids a request is continued from (chat requests rendered with our K2 format)."""
        return prompt_ids(self.tokenizer, request)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """All requests, in batches by prompt length; `result[i]` holds request i's n completions."""
        if self.sleeping:
            raise RuntimeError("the engine is asleep: call wake_up() before generate()")
        version = self.policy_version
        results: list[list[Completion]] = [[] for _ in requests]
        todo: list[tuple[int, list[int]]] = []
        for i, req in enumerate(requests):
            ids, failure = admit(self.tokenizer, req, self.vocab_size, self.max_model_len, version)
            if failure is not None:
                results[i] = failure
            else:
                todo.append((i, ids))
        todo.sort(key=lambda item: len(item[1]))
        for batch in self._batches(requests, todo):
            rows = self._decode(requests, batch)
            for row in rows:
                results[row.req].append(self._completion(requests[row.req], row, version))
        for out in results:
            out.sort(key=lambda c: c.index)
        return results

    def _batches(
        self, requests: Sequence[GenerationRequest], todo: list[tuple[int, list[int]]]
    ) -> list[list[tuple[int, list[int]]]]:
        """Consecutive (length-sorted) requests under `max_seqs` rows and `cache_bytes` of cache."""
        batches: list[list[tuple[int, list[int]]]] = []
        current: list[tuple[int, list[int]]] = []
        rows = slots = 0
        for i, ids in todo:
            n = requests[i].params.n
            need = min(len(ids) + requests[i].params.max_tokens, self.max_model_len)
            too_big = (rows + n) * max(slots, need) * self._slot_bytes > self.cache_bytes
            if current and (rows + n > self.max_seqs or too_big):
                batches.append(current)
                current, rows, slots = [], 0, 0
            current.append((i, ids))
            rows, slots = rows + n, max(slots, need)
        if current:
            batches.append(current)
        return batches

    @torch.no_grad()
    def _decode(
        self, requests: Sequence[GenerationRequest], batch: list[tuple[int, list[int]]]
    ) -> list[_Row]:
        """Prefill the batch's distinct prompts, then sample until every row stopped."""
        device = self.device
        distinct: dict[tuple[int, ...], int] = {}  # requests with the same prompt share its prefill
        rows: list[_Row] = []
        for i, ids in batch:
            p = distinct.setdefault(tuple(ids), len(distinct))
            params = requests[i].params
            seed = params.seed if params.seed is not None else self._seeds.randrange(2**63)
            budget = min(params.max_tokens, self.max_model_len - len(ids))
            for k in range(params.n):
                rows.append(_Row(i, p, len(ids), k, params, random.Random(f"{seed}:{k}"), budget))
        prompts = [list(ids) for ids in distinct]
        cache, logits, row_of = self._prefill(prompts, max(map(len, prompts)) + max(r.budget for r in rows))
        expand_R = torch.tensor([row_of[r.prompt] for r in rows], device=device)
        cache.select(expand_R)
        logits = logits.index_select(0, expand_R)
        live = list(range(len(rows)))  # cache row j holds rows[live[j]]
        temperature_R = torch.tensor([r.params.temperature for r in rows], device=device)
        top_p_R = torch.tensor([r.params.top_p for r in rows], device=device)
        greedy = all(r.params.temperature == 0 for r in rows)  # no sort of the vocabulary needed
        while True:
            if greedy:
                logp_RV = logits.float().log_softmax(-1)
                logp_R, token_R = logp_RV.max(-1)
            else:
                idx_R = torch.tensor(live, device=device)
                u_R = torch.tensor([rows[j].rng.random() for j in live], device=device)
                token_R, logp_R = sample_tokens(
                    logits, temperature_R.index_select(0, idx_R), top_p_R.index_select(0, idx_R), u_R
                )
            for j, token, logp in zip(live, token_R.tolist(), logp_R.tolist(), strict=True):
                if rows[j].finish is None:
                    self._append(rows[j], token, logp)
            running = [k for k, j in enumerate(live) if rows[j].finish is None]
            if not running:
                self._keep(cache, prompts, [(k, rows[j]) for k, j in enumerate(live)])
                return rows
            if len(running) <= 0.75 * len(live):  # compact: stop computing rows that are done
                self._keep(cache, prompts, [(k, rows[j]) for k, j in enumerate(live) if rows[j].finish])
                keep = torch.tensor(running, device=device)
                cache.select(keep)
                live, token_R = [live[k] for k in running], token_R.index_select(0, keep)
            ones_R = torch.ones(len(live), dtype=torch.long, device=device)
            logits = self.model.decode(token_R[:, None], cache, ones_R)

    def _prefill(self, prompts: list[list[int]], slots: int) -> tuple[KVCache, torch.Tensor, list[int]]:
        """Cache the prompts: from the prefix cache as far as it holds them, the rest computed, by
        how many tokens are left (few-token and many-token rows in separate forwards, at most
        `prefill_tokens` padded tokens each). Returns the cache, the next-token logits, and which
        of their rows holds each prompt."""
        found = [self.prefix.lookup(ids, len(ids) - 1) for ids in prompts]  # ≥ 1 token left to feed
        new = [len(ids) - n for ids, (_, n) in zip(prompts, found, strict=True)]
        order = sorted(range(len(prompts)), key=new.__getitem__)
        chunks: list[list[int]] = [[]]
        for p in order:
            if chunks[-1] and (len(chunks[-1]) + 1) * new[p] > self.prefill_tokens:
                chunks.append([])
            chunks[-1].append(p)
        # a row fed fewer tokens than its chunk's widest is padded past its own end: room for that
        slots = max(slots, *(max(found[p][1] for p in c) + new[c[-1]] for c in chunks))
        caches, logits = [], []
        for chunk in chunks:
            cache = KVCache(
                self.model.config, len(chunk), slots, self.device, self.model.lm_head.weight.dtype
            )
            ids_PT = torch.zeros(len(chunk), new[chunk[-1]], dtype=torch.long)
            for r, p in enumerate(chunk):
                entry, n = found[p]
                ids_PT[r, : new[p]] = torch.tensor(prompts[p][n:])
                if entry is not None:
                    cache.load_row(r, entry.k, entry.v, n)
            new_P = torch.tensor([new[p] for p in chunk], device=self.device)
            logits.append(self.model.decode(ids_PT.to(self.device), cache, new_P))
            caches.append(cache)
        row_of = [0] * len(prompts)
        for r, p in enumerate(order):
            row_of[p] = r
        return KVCache.concat(caches), torch.cat(logits), row_of

    def _keep(self, cache: KVCache, prompts: list[list[int]], finished: list[tuple[int, _Row]]) -> None:
        """Put finished rows (cache row, row) into the prefix cache: the prompt and the sampled ids
        but the last (never fed back, so it has no keys/values)."""
        if self.prefix.max_bytes <= 0:
            return
        for j, row in finished:
            ids = prompts[row.prompt] + row.ids[:-1]
            self.prefix.add(ids, *cache.take_row(j, len(ids)))

    def _append(self, row: _Row, token: int, logp: float) -> None:
        row.ids.append(token)
        row.logprobs.append(logp)
        if token == self.eos_token_id and not row.params.ignore_eos:
            row.finish = "stop"
        elif row.params.stop:
            text = self.tokenizer.decode(row.ids, skip_special_tokens=False)
            hits = [text.find(s) for s in row.params.stop if s in text]
            if hits:
                row.finish, row.stop_at = "stop", min(hits)
        if row.finish is None and len(row.ids) >= row.budget:
            row.finish = "length"

    def text(self, ids: list[int], stop_at: int | None = None) -> str:
        """The text of sampled ids as vLLM gives it: special tokens kept, a final `<|im_end|>` left out,
        cut where a stop string begins, and without the replacement characters of a multi-byte
        character the ids end inside of (vLLM's detokenizer holds those bytes back)."""
        if ids and ids[-1] == self.eos_token_id and stop_at is None:
            ids = ids[:-1]
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return text[:stop_at] if stop_at is not None else text.rstrip("\ufffd")

    def _completion(self, req: GenerationRequest, row: _Row, version: int) -> Completion:
        return completion(
            req,
            index=row.index,
            text=self.text(row.ids, row.stop_at),
            token_ids=row.ids,
            logprobs=row.logprobs,
            finish_reason=row.finish or "length",
            prompt_tokens=row.prompt_tokens,
            version=version,
        )

    def prompt_logprobs(self, prompts: Sequence[Sequence[int]]) -> list[list[float]]:
        """log p(prompt[t] | prompt[:t]) for t ≥ 1 of each prompt, under the current weights."""
        out = []
        with torch.no_grad():
            for ids in prompts:
                ids_1T = torch.tensor([list(ids)], device=self.device)
                logp_TV = self.model(ids_1T).logits[0, :-1].float().log_softmax(-1)
                out.append(logp_TV.gather(1, ids_1T[0, 1:, None]).squeeze(1).tolist())
        return out

    # ------------------------------------------------------------------------------ weight updates
    def update_weights(self, weights: Mapping[str, Any] | str | Path, version: int) -> dict[str, float]:
        """Copy new weights into the engine's model and tag later completions with `version`.

        `weights`: a checkpoint dir, or a state dict with our names (`K2ForCausalLM.state_dict()`)
        or checkpoint names (`model.layers.{i}...`); a partial one updates only its tensors."""
        from agentfactory.model.checkpoint import read_safetensors
        from agentfactory.model.hf_adapter import from_hf_state_dict

        t0 = time.perf_counter()
        if isinstance(weights, (str, Path)):
            check_model_dir(weights)
            weights = read_safetensors(weights)
        state = dict(weights)
        if any(k.startswith("model.") for k in state):  # checkpoint names
            state = from_hf_state_dict(state, self.model.config)
        unexpected = self.model.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"weights the model does not have: {sorted(unexpected)[:5]}")
        self.prefix.clear()  # keys/values computed by the old weights
        self.policy_version = version
        return {"total_s": time.perf_counter() - t0, "tensors": float(len(state))}

    # --------------------------------------------------------------------------------- lifecycle
    def sleep(self) -> None:
        """GPU: move the weights to the host so training has the memory (the prefix cache is
        dropped). CPU: only the prefix cache is dropped."""
        if self.device.type != "cpu":
            self.model.to("cpu")
        self.prefix.clear()
        self.sleeping = True

    def wake_up(self) -> None:
        if self.device.type != "cpu":
            self.model.to(self.device)
        self.sleeping = False

    def close(self) -> None:
        """Drop the model; the engine is unusable afterwards."""
        self.model = None  # type: ignore[assignment]
        self.prefix.clear()
