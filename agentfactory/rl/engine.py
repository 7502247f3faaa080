"""The colocated loop's inference engine: started from the `engine:` config, recovered after a crash.

`RecoveringEngine` wraps the loop's engine. When a call finds the engine core dead
(`EngineDeadError`: kill -9, the OOM killer), it restarts the engine (`VLLMEngine.restart()`: same
model dir and arguments), pushes the trainer's weights back at the loop's current policy version
(`restore`), and retries the call once. In the colocated loop the engine generates only while it
serves the trainer's weights (rollouts and critic calls come before training, and each sync pushes
the new ones), so the retried call sees exactly the weights it would have seen. Every restart is
printed and counted (`engine/restarts` in metrics.jsonl); after `max_restarts` the error stands.

Its `stop` flag ends a rollout early: when training fails or Ctrl-C lands beside a prefetched
rollout (`overlap`), the loop sets it and the rollout (its critic calls included) ends at its next
`generate` with `RolloutStopped`, so the user waits one call, not the rest of the rollout (nothing
is lost: RL resumes from the last checkpoint, which the stopped rollout never touched).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console

from agentfactory.llm.base import Completion, Engine, GenerationRequest
from agentfactory.llm.vllm_health import EngineDeadError
from agentfactory.rl.config import RLConfig


def engine_kwargs(config: RLConfig) -> dict[str, Any]:
    """VLLMEngine's keyword arguments for the `engine:` settings (the model path aside)."""
    e = config.engine
    return dict(
        tokenizer=config.tokenizer,
        dtype=e.dtype,
        kv_cache_memory_bytes=e.kv_cache_memory_bytes,
        gpu_memory_utilization=e.gpu_memory_utilization,
        max_model_len=e.max_model_len,
        enforce_eager=e.enforce_eager,
        cpu_reserved_cores=e.cpu_reserved_cores,
        seed=config.seed,
    )


def start_engine(config: RLConfig) -> Engine:
    """A VLLMEngine (or, `engine.kind: torch`, a TorchEngine) on `config.model` with the `engine:`
    settings; with `engine.workers` > 1 an `EnginePool` of that many vLLM engines on Ray."""
    e = config.engine
    if e.kind == "torch":
        from agentfactory.llm.torch_engine import TorchEngine

        return TorchEngine(
            config.model,
            tokenizer=config.tokenizer,
            dtype=e.dtype,
            device=e.device,
            max_model_len=e.max_model_len,
            seed=config.seed,
        )
    if e.workers > 1:
        from agentfactory.rl.engine_pool import EnginePool

        return EnginePool(
            config.model,
            e.workers,
            engine_kwargs(config),
            cpus=e.worker_cpus,
            gpus=e.worker_gpus,
            ray_address=e.ray_address,
        )
    from agentfactory.llm.vllm_engine import VLLMEngine

    return VLLMEngine(config.model, **engine_kwargs(config))


class RolloutStopped(Exception):
    """A prefetched rollout gave up because the training beside it failed or was interrupted."""


class RecoveringEngine:
    """Forwards to `engine`; restarts it and calls `restore()` when its core process has died;
    `generate` raises `RolloutStopped` once `stop` is set."""

    def __init__(
        self,
        engine: Any,
        restore: Callable[[], Any],
        console: Console,
        stop: threading.Event | None = None,
        max_restarts: int = 3,
    ) -> None:
        self.engine, self.restore, self.console = engine, restore, console
        self.stop = stop if stop is not None else threading.Event()
        self.max_restarts = max_restarts
        self.recoveries: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        if name == "engine":  # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self.engine, name)

    @property
    def restarts(self) -> int:
        """Restarts of the wrapped engine (including ones it did by itself)."""
        return max(getattr(self.engine, "restarts", 0), len(self.recoveries))

    def _retry(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except EngineDeadError as exc:
            if len(self.recoveries) >= self.max_restarts or not hasattr(self.engine, "restart"):
                raise
            self.console.print(f"[yellow]engine died during {what}: {exc}; restarting it", highlight=False)
            t0 = time.perf_counter()
            self.engine.restart()
            self.restore()
            seconds = time.perf_counter() - t0
            self.recoveries.append({"during": what, "error": str(exc), "seconds": seconds})
            self.console.print(
                f"engine restarted and the trainer's weights pushed back in {seconds:.1f} s "
                f"(policy v{self.engine.policy_version})",
                highlight=False,
            )
            return fn()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        if self.stop.is_set():
            raise RolloutStopped("the iteration this rollout ran beside failed or was interrupted")
        return self._retry("generate", lambda: self.engine.generate(requests))

    def prompt_logprobs(self, prompts: Sequence[Sequence[int]]) -> list[list[float]]:
        return self._retry("prompt_logprobs", lambda: self.engine.prompt_logprobs(prompts))

    def update_weights(self, weights: Any, version: int) -> Any:
        return self._retry("update_weights", lambda: self.engine.update_weights(weights, version))

    def sleep(self) -> None:
        self._retry("sleep", self.engine.sleep)

    def wake_up(self) -> None:
        self._retry("wake_up", self.engine.wake_up)

    def close(self) -> None:
        self.engine.close()
