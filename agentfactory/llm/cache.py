"""A sqlite response cache and `CachedEngine`, so re-running synthesis reuses finished LLM calls.

The key hashes (engine name, model id, policy version, the request without its id, its sampling
params and seed): the same prompt asked of the same weights with the same params gets the stored
answer. Only deterministic-keyed requests are cached — those with a `seed` or temperature 0 — since
an unseeded sample is meant to be fresh on every call. Failed completions ("error", or an `error`
set) are never stored, so a re-run retries them.

The file is shared safely by several processes (Ray workers): WAL journal, busy timeout, one
connection per instance guarded by a lock. Cache hits come back with `cached=True` and the caller's
request id.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentfactory.llm.base import Completion, Engine, GenerationRequest

_SCHEMA = """CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    engine TEXT NOT NULL,
    completions TEXT NOT NULL,
    created REAL NOT NULL
)"""


def is_deterministic(request: GenerationRequest) -> bool:
    return request.params.seed is not None or request.params.temperature == 0


def cache_key(engine_id: str, policy_version: int, request: GenerationRequest) -> str:
    body = request.model_dump(mode="json", exclude={"id"})
    blob = json.dumps([engine_id, policy_version, body], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """key -> list of completions, in a sqlite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        self._setup(deadline=time.monotonic() + 60)

    def _setup(self, deadline: float) -> None:
        """WAL mode and the table. Two processes opening a new file at once can get "database is
        locked" from the journal-mode switch straight away — sqlite does not call the busy handler
        there — so it is retried until the connection's own timeout."""
        delay = 0.01
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(_SCHEMA)
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 0.5)

    def get_many(self, keys: Sequence[str]) -> dict[str, list[Completion]]:
        out: dict[str, list[Completion]] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), 500):  # sqlite's host-parameter limit
                chunk = unique[start : start + 500]
                rows = self._db.execute(
                    f"SELECT key, completions FROM responses WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                for key, blob in rows:
                    out[key] = [Completion.model_validate(c) for c in json.loads(blob)]
        return out

    def put_many(self, items: Mapping[str, tuple[str, list[Completion]]]) -> None:
        """`items`: key -> (engine id, completions)."""
        now = time.time()
        rows = [
            (key, engine, json.dumps([c.model_dump(mode="json") for c in comps]), now)
            for key, (engine, comps) in items.items()
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO responses (key, engine, completions, created) VALUES (?, ?, ?, ?)",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedEngine:
    """Wraps an engine; deterministic-keyed requests already answered are served from the cache,
    the rest go to the engine in one batch. Everything else delegates to the wrapped engine."""

    def __init__(self, engine: Engine, path: str | Path) -> None:
        self.engine = engine
        self.cache = ResponseCache(path)
        self.name = f"cached-{engine.name}"
        self.hits = 0
        self.misses = 0

    @property
    def policy_version(self) -> int:
        return self.engine.policy_version

    @property
    def engine_id(self) -> str:
        return f"{self.engine.name}|{getattr(self.engine, 'model_id', '')}"

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        version = self.engine.policy_version
        keys = [cache_key(self.engine_id, version, r) if is_deterministic(r) else None for r in requests]
        found = self.cache.get_many([k for k in keys if k is not None])
        results: list[list[Completion] | None] = [None] * len(requests)
        todo = []
        for i, (req, key) in enumerate(zip(requests, keys, strict=True)):
            if key is not None and key in found:
                results[i] = [c.model_copy(update={"request_id": req.id, "cached": True}) for c in found[key]]
            else:
                todo.append(i)
        self.hits += len(requests) - len(todo)
        self.misses += len(todo)
        if todo:
            fresh = self.engine.generate([requests[i] for i in todo])
            store = {}
            for i, comps in zip(todo, fresh, strict=True):
                results[i] = comps
                ok = comps and all(c.finish_reason != "error" and c.error is None for c in comps)
                if keys[i] is not None and ok:
                    store[keys[i]] = (self.engine_id, comps)
            if store:
                self.cache.put_many(store)
        return [r or [] for r in results]

    def update_weights(self, weights: Mapping[str, Any] | str | Path, version: int) -> Any:
        return self.engine.update_weights(weights, version)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def close(self) -> None:
        self.cache.close()
        self.engine.close()

    def __getattr__(self, name: str) -> Any:  # model_id, tokenizer, prompt_logprobs, ...
        if name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)
