"""Response cache: deterministic-keyed requests are served from sqlite on a re-run (also from another
process), unseeded samples, errors, other params and other policy versions are not."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence

import pytest

from agentfactory.llm import Completion, Engine, GenerationRequest, SamplingParams
from agentfactory.llm.cache import CachedEngine, ResponseCache, cache_key
from agentfactory.records import Message

pytestmark = pytest.mark.unit


class CountingEngine:
    name = "counting"
    model_id = "m1"

    def __init__(self, fail_on: str | None = None):
        self.policy_version = 0
        self.calls: list[list[str]] = []
        self.fail_on = fail_on
        self.closed = False

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        self.calls.append([r.id for r in requests])
        out = []
        for r in requests:
            text = (r.messages[0].content if r.messages else str(r.prompt_ids)) or ""
            if text == self.fail_on:
                out.append([Completion(request_id=r.id, finish_reason="error", error="boom")])
            else:
                out.append(
                    [
                        Completion(
                            request_id=r.id, index=k, text=f"{text}/{len(self.calls)}", token_ids=[1, 2]
                        )
                        for k in range(r.params.n)
                    ]
                )
        return out

    def update_weights(self, weights, version):
        self.policy_version = version

    def sleep(self):
        pass

    def wake_up(self):
        pass

    def close(self):
        self.closed = True


def _req(text, id="", **params):
    return GenerationRequest(
        id=id, messages=[Message(role="user", content=text)], params=SamplingParams(**params)
    )


def test_rerun_reuses_finished_calls(tmp_path):
    inner = CountingEngine()
    engine = CachedEngine(inner, tmp_path / "c.sqlite")
    assert isinstance(engine, Engine)
    reqs = [_req("a", "r0", seed=1), _req("b", "r1", temperature=0), _req("c", "r2", seed=1, n=2)]
    first = engine.generate(reqs)
    assert inner.calls == [["r0", "r1", "r2"]] and not any(c.cached for cs in first for c in cs)
    again = engine.generate(
        [_req("a", "x0", seed=1), _req("b", "x1", temperature=0), _req("c", "x2", seed=1, n=2)]
    )
    assert len(inner.calls) == 1  # nothing new reached the engine
    assert [[c.text for c in cs] for cs in again] == [[c.text for c in cs] for cs in first]
    assert [cs[0].request_id for cs in again] == ["x0", "x1", "x2"] and all(
        c.cached for cs in again for c in cs
    )
    assert (engine.hits, engine.misses) == (3, 3)
    engine.close()
    assert inner.closed
    reopened = CachedEngine(CountingEngine(), tmp_path / "c.sqlite")  # a new run of the pipeline
    assert reopened.generate([_req("b", temperature=0)])[0][0].text == "b/1"
    assert reopened.engine.calls == []


def test_only_deterministic_requests_are_cached(tmp_path):
    inner = CountingEngine()
    engine = CachedEngine(inner, tmp_path / "c.sqlite")
    engine.generate([_req("a", temperature=0.7), _req("a", seed=3)])
    engine.generate([_req("a", temperature=0.7), _req("a", seed=3)])
    assert [len(c) for c in inner.calls] == [2, 1]  # the unseeded sample is asked again


def test_key_covers_params_seed_version_and_model(tmp_path):
    inner = CountingEngine()
    engine = CachedEngine(inner, tmp_path / "c.sqlite")
    engine.generate([_req("a", seed=1)])
    for req in (_req("a", seed=2), _req("a", seed=1, max_tokens=7), _req("a", seed=1, top_p=0.5)):
        engine.generate([req])
    assert len(inner.calls) == 4
    engine.update_weights({}, version=3)
    engine.generate([_req("a", seed=1)])
    assert len(inner.calls) == 5  # new weights, new answers
    assert cache_key("x|m1", 0, _req("a", "id1", seed=1)) == cache_key("x|m1", 0, _req("a", "id2", seed=1))
    assert cache_key("x|m1", 0, _req("a", seed=1)) != cache_key("x|m2", 0, _req("a", seed=1))
    prompt = GenerationRequest(prompt_ids=[5, 6], params=SamplingParams(temperature=0))
    assert cache_key("x", 0, prompt) != cache_key("x", 0, prompt.model_copy(update={"prompt_ids": [5, 7]}))


def test_errors_are_not_cached(tmp_path):
    inner = CountingEngine(fail_on="bad")
    engine = CachedEngine(inner, tmp_path / "c.sqlite")
    out = engine.generate([_req("bad", seed=1), _req("good", seed=1)])
    assert out[0][0].finish_reason == "error"
    engine.generate([_req("bad", seed=1), _req("good", seed=1)])
    assert [len(c) for c in inner.calls] == [2, 1]


def _writer(path, start):
    cache = ResponseCache(path)
    for i in range(start, start + 50):
        cache.put_many({f"k{i}": ("e", [Completion(text=str(i))])})
    cache.close()


def test_shared_by_processes(tmp_path):
    path = tmp_path / "c.sqlite"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, s)) for s in (0, 50, 100, 150)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    cache = ResponseCache(path)
    assert len(cache) == 200
    got = cache.get_many([f"k{i}" for i in range(0, 200, 7)])
    assert {k: v[0].text for k, v in got.items()} == {f"k{i}": str(i) for i in range(0, 200, 7)}


def test_open_retries_a_locked_journal_switch(tmp_path, monkeypatch):
    """Two processes opening a new file at once: the WAL switch can fail "locked" with no busy wait."""
    import sqlite3

    real = sqlite3.connect
    fails = {"left": 2}

    class Flaky:
        def __init__(self, db):
            self.db = db

        def execute(self, sql, *args):
            if sql.startswith("PRAGMA journal_mode") and fails["left"]:
                fails["left"] -= 1
                raise sqlite3.OperationalError("database is locked")
            return self.db.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.db, name)

    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: Flaky(real(*a, **k)))
    cache = ResponseCache(tmp_path / "c.sqlite")
    assert fails["left"] == 0 and len(cache) == 0  # retried, then opened
