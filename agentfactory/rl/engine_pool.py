"""`EnginePool`: N vLLM engines as Ray actors behind the one-engine surface the RL loop uses.

`engine.workers: N` (N > 1) in an RL config starts one (`start_engine`). Each worker is a Ray actor
(`worker_cpus` CPUs) holding a `VLLMEngine` run in-process inside the actor (one process per
engine; weights reach it by reference once the actor has them).

- `generate(requests)`: requests are split across the workers, each request whole (its n samples on
  one engine), balanced by estimated tokens (prompt + n · max_tokens, largest first onto the least
  loaded worker); the shards run concurrently and the results come back in request order.
  Rollout requests carry their own seeds, so a request's samples do not depend on its worker;
  unseeded ones draw from engine seeds `seed + worker`.
- `update_weights(weights, version)`: a state dict is put once in Ray's object store and every
  worker loads it concurrently (a checkpoint dir is passed by path: on a cluster it must exist on
  every node). Returns the slowest worker's seconds (`worker_max_s`), the wall time and the bytes.
  `policy_version` is the workers' common version (they must agree).
- A worker that dies (its actor or process: kill -9, OOM) is replaced by a fresh actor, which is
  given the last pushed weights at their version, and the call is retried on it (the semantics of
  `RecoveringEngine`); after `max_restarts` replacements the error names the dead worker.

Ray starts locally unless `ray_address` names a cluster (`init_ray`, shared with synthesis); on a
cluster the model dir (and a checkpoint dir pushed by path) must exist on every node.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentfactory.llm.base import Completion, GenerationRequest
from agentfactory.llm.vllm_health import EngineDeadError

log = logging.getLogger(__name__)


def request_cost(request: GenerationRequest) -> int:
    """Estimated tokens of a request: prompt (ids, or ~4 characters a token for chat) + n · max_tokens."""
    if request.prompt_ids is not None:
        prompt = len(request.prompt_ids)
    else:
        chars = sum(len(m.model_dump_json()) for m in request.messages or [])
        prompt = (chars + sum(len(t.model_dump_json()) for t in request.tools)) // 4
    return prompt + request.params.n * request.params.max_tokens


def split_by_cost(costs: Sequence[int], workers: int) -> list[list[int]]:
    """Item indices per worker: largest first onto the least loaded worker; each list ascending."""
    loads, shards = [0] * workers, [[] for _ in range(workers)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        w = min(range(workers), key=lambda w: (loads[w], w))
        shards[w].append(i)
        loads[w] += costs[i]
    return [sorted(s) for s in shards]


def merge_shards(shards: Sequence[Sequence[int]], results: Sequence[Sequence[Any]], total: int) -> list[Any]:
    """Per-shard results back in item order (`shards[k][j]` is the index of `results[k][j]`)."""
    out: list[Any] = [None] * total
    for shard, res in zip(shards, results, strict=True):
        for i, r in zip(shard, res, strict=True):
            out[i] = r
    if any(r is None for r in out):
        raise ValueError("the shards do not cover every item")
    return out


class EngineWorker:
    """One VLLMEngine inside a Ray actor (vLLM imported here, in the actor's process)."""

    def __init__(self, model_path: str, kwargs: dict[str, Any]) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the actor is the engine's process
        from agentfactory.llm.vllm_engine import VLLMEngine

        self.engine = VLLMEngine(model_path, **kwargs)

    def info(self) -> dict[str, Any]:
        import ray

        node = ray.get_runtime_context().get_node_id()
        return {"pid": os.getpid(), "node": node, "start_s": self.engine.start_s}

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        return self.engine.generate(requests)

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[float]]:
        return self.engine.prompt_logprobs(prompts)

    def update_weights(self, weights: Any, version: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        timings = self.engine.update_weights(weights, version)
        return {**timings, "worker_s": time.perf_counter() - t0, "policy_version": self.engine.policy_version}

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def close(self) -> None:
        self.engine.close()


class EnginePool:
    """`workers` VLLMEngines on `model_path` as Ray actors; `kwargs` are VLLMEngine's."""

    name = "vllm"

    def __init__(
        self,
        model_path: str | Path,
        workers: int,
        kwargs: Mapping[str, Any] | None = None,
        *,
        cpus: float = 1.0,
        gpus: float = 0.0,
        ray_address: str | None = None,
        max_restarts: int = 3,
    ) -> None:
        import ray

        from agentfactory.llm.vllm_engine import check_model_dir, model_fingerprint
        from agentfactory.model.tokenizer import load_tokenizer
        from agentfactory.synth.pipeline import init_ray

        if workers < 1:
            raise ValueError(f"an engine pool needs at least one worker, got {workers}")
        self.model_path = Path(model_path).resolve()
        check_model_dir(self.model_path)
        self.kwargs = dict(kwargs or {})
        if self.kwargs.get("tokenizer"):
            self.kwargs["tokenizer"] = str(Path(self.kwargs["tokenizer"]).resolve())
        self.tokenizer = load_tokenizer(self.kwargs.get("tokenizer") or self.model_path)
        self.model_id = f"{self.model_path}@{model_fingerprint(self.model_path)}"
        self.max_restarts, self.restarts = max_restarts, 0
        self._started_ray = init_ray(ray_address, workers * cpus)
        self._actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0)(EngineWorker)
        self._last: tuple[Any, int] | None = None  # the last pushed weights (object ref | path), version
        self.versions = [0] * workers
        self.actors: list[Any] = [self._spawn(i) for i in range(workers)]
        try:
            self.infos: list[dict[str, Any]] = ray.get([a.info.remote() for a in self.actors])
        except BaseException:  # an engine failed to start: stop the others (and our Ray)
            self.close()
            raise
        log.info("engine pool: %d vLLM workers on %s", workers, self.model_path)

    def _spawn(self, i: int) -> Any:
        kwargs = {**self.kwargs, "seed": self.kwargs.get("seed", 0) + i}
        return self._actor_cls.remote(str(self.model_path), kwargs)

    @property
    def workers(self) -> int:
        return len(self.actors)

    @property
    def policy_version(self) -> int:
        if len(set(self.versions)) != 1:
            raise AssertionError(f"engine workers serve different policy versions: {self.versions}")
        return self.versions[0]

    # ---------------------------------------------------------------------------------- dispatch
    def _map(self, method: str, calls: Sequence[tuple[int, tuple]]) -> list[Any]:
        """`method(*args)` on worker i for every (i, args), concurrently; results in call order. A
        worker that died is replaced (and given the last weights) and its call retried."""
        import ray
        from ray.exceptions import RayActorError

        refs = [getattr(self.actors[i], method).remote(*args) for i, args in calls]
        out = []
        for (i, args), ref in zip(calls, refs, strict=True):
            while True:
                try:
                    out.append(ray.get(ref))
                    break
                except RayActorError as exc:
                    self._replace(i, method, exc)
                    ref = getattr(self.actors[i], method).remote(*args)
        return out

    def _replace(self, i: int, during: str, exc: Exception) -> None:
        import ray

        info = self.infos[i]
        who = f"engine worker {i} (pid {info['pid']}, node {info['node'][:12]})"
        if self.restarts >= self.max_restarts:
            raise EngineDeadError(
                f"{who} died during {during} and {self.restarts} restarts are spent: {exc}"
            ) from exc
        log.warning("%s died during %s; starting a fresh one: %s", who, during, exc)
        t0 = time.perf_counter()
        ray.kill(self.actors[i])
        self.actors[i] = self._spawn(i)
        self.infos[i] = ray.get(self.actors[i].info.remote())
        self.versions[i] = 0
        if self._last is not None:
            stats = ray.get(self.actors[i].update_weights.remote(*self._last))
            self.versions[i] = stats["policy_version"]
        self.restarts += 1
        seconds = time.perf_counter() - t0
        log.warning("engine worker %d replaced in %.1f s (v%d)", i, seconds, self.versions[i])

    # ------------------------------------------------------------------------------ the surface
    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """All requests, split across the workers (each whole); `result[i]` is request i's n completions."""
        shards = split_by_cost([request_cost(r) for r in requests], self.workers)
        calls = [(w, ([requests[i] for i in s],)) for w, s in enumerate(shards) if s]
        results = self._map("generate", calls)
        return merge_shards([s for s in shards if s], results, len(requests))

    def prompt_logprobs(self, prompts: Sequence[Sequence[int]]) -> list[list[float]]:
        shards = split_by_cost([len(p) for p in prompts], self.workers)
        calls = [(w, ([list(prompts[i]) for i in s],)) for w, s in enumerate(shards) if s]
        return merge_shards([s for s in shards if s], self._map("prompt_logprobs", calls), len(prompts))

    def update_weights(self, weights: Mapping[str, Any] | str | Path, version: int) -> dict[str, float]:
        """Every worker loads `weights` (a state dict, put once in the object store, or a checkpoint
        dir) concurrently and serves them as `version`. Returns seconds and bytes."""
        import ray
        import torch

        t0 = time.perf_counter()
        if isinstance(weights, (str, Path)):
            payload: Any = str(Path(weights).resolve())
            nbytes = sum(f.stat().st_size for f in Path(payload).glob("*.safetensors"))
        else:
            state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in weights.items()}
            nbytes = sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))
            payload = ray.put(state)
        put_s = time.perf_counter() - t0
        stats = self._map("update_weights", [(i, (payload, version)) for i in range(self.workers)])
        self.versions = [s["policy_version"] for s in stats]
        self._last = (payload, version)
        return {
            "total_s": time.perf_counter() - t0,
            "put_s": put_s,
            "worker_max_s": max(s["worker_s"] for s in stats),
            "bytes": float(nbytes),
            "workers": float(self.workers),
        }

    def sleep(self) -> None:
        self._map("sleep", [(i, ()) for i in range(self.workers)])

    def wake_up(self) -> None:
        self._map("wake_up", [(i, ()) for i in range(self.workers)])

    def close(self) -> None:
        """Stop every worker (and the local Ray this pool started)."""
        import ray

        if not getattr(self, "actors", None):
            return
        for a in self.actors:
            try:
                ray.get(a.close.remote(), timeout=30)
            except Exception:  # dead already, or never started
                log.debug("engine worker close raised", exc_info=True)
            ray.kill(a)
        self.actors, self._last = [], None
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
