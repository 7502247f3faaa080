"""EnginePool's pure parts: the cost-balanced split of requests (each whole), the merge back into
request order, and `engine.workers` choosing the pool in `start_engine` (no Ray, no vLLM here;
the pool on real engines: tests/integration/test_rl_engine_pool.py)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from agentfactory.llm.base import GenerationRequest, SamplingParams
from agentfactory.records import Message
from agentfactory.rl.config import EngineSpec, EnvSpec, RLConfig
from agentfactory.rl.engine_pool import merge_shards, request_cost, split_by_cost


def test_request_cost_counts_prompt_and_every_sample():
    ids = GenerationRequest(prompt_ids=[1] * 10, params=SamplingParams(n=3, max_tokens=20))
    assert request_cost(ids) == 10 + 3 * 20
    chat = GenerationRequest(
        messages=[Message(role="user", content="x" * 400)], params=SamplingParams(max_tokens=5)
    )
    assert 100 < request_cost(chat) - 5 < 130  # ~4 characters a token


def test_split_balances_costs_and_keeps_every_item_once():
    costs = [100, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10]  # one long request vs ten short ones
    shards = split_by_cost(costs, 2)
    assert shards == [[0], list(range(1, 11))]
    rng = random.Random(0)
    for _ in range(200):
        workers = rng.randint(1, 5)
        costs = [rng.randint(1, 1000) for _ in range(rng.randint(0, 40))]
        shards = split_by_cost(costs, workers)
        assert len(shards) == workers and all(s == sorted(s) for s in shards)
        assert sorted(i for s in shards for i in s) == list(range(len(costs)))
        loads = [sum(costs[i] for i in s) for s in shards]
        if costs:  # greedy largest-first: no worker exceeds the ideal by more than one item
            assert max(loads) <= sum(costs) / workers + max(costs)


def test_split_is_deterministic_and_round_robins_equal_costs():
    assert split_by_cost([5] * 6, 3) == [[0, 3], [1, 4], [2, 5]]
    assert split_by_cost([5] * 6, 3) == split_by_cost([5] * 6, 3)
    assert split_by_cost([], 2) == [[], []]
    assert split_by_cost([7], 4) == [[0], [], [], []]


def test_merge_restores_request_order():
    costs = [3, 9, 1, 4, 4, 8, 2]
    shards = split_by_cost(costs, 3)
    results = [[f"r{i}" for i in s] for s in shards]  # what each worker returns for its shard
    assert merge_shards(shards, results, len(costs)) == [f"r{i}" for i in range(len(costs))]
    with pytest.raises(ValueError):
        merge_shards([[0], [2]], [["a"], ["c"]], 3)
    with pytest.raises(ValueError):  # a worker returned too few results
        merge_shards([[0, 1]], [["a"]], 2)


def test_engine_workers_config_and_start_engine_picks_the_pool(monkeypatch):
    assert EngineSpec().workers == 1 and EngineSpec().ray_address is None
    with pytest.raises(ValidationError):
        EngineSpec(workers=0)
    with pytest.raises(ValidationError):
        EngineSpec(worker=2)  # extra="forbid": a typo fails at load time
    made = {}

    class FakePool:
        def __init__(self, model, workers, kwargs, *, cpus, gpus, ray_address):
            made.update(
                model=model, workers=workers, kwargs=kwargs, cpus=cpus, gpus=gpus, ray_address=ray_address
            )

    import agentfactory.rl.engine_pool as engine_pool
    from agentfactory.rl.engine import start_engine

    monkeypatch.setattr(engine_pool, "EnginePool", FakePool)
    config = RLConfig(
        model="m",
        envs=[EnvSpec(kind="math")],
        seed=7,
        engine={
            "workers": 3,
            "worker_cpus": 2,
            "worker_gpus": 1,
            "ray_address": "10.0.0.1:6379",
            "max_model_len": 512,
        },
    )
    assert isinstance(start_engine(config), FakePool)
    assert made["workers"] == 3 and made["cpus"] == 2 and made["ray_address"] == "10.0.0.1:6379"
    assert made["gpus"] == 1
    assert made["kwargs"]["max_model_len"] == 512 and made["kwargs"]["seed"] == 7
