"""Detecting a dead vLLM engine core process, so that no call into `vllm.LLM` hangs on it.

vLLM 0.32's `LLM` runs the engine in a child process (`VLLM::EngineCore`). If that process dies
(OOM killer, kill -9, a crash in a kernel), vLLM marks itself dead but a call already waiting for
its output blocks forever (measured: `generate` waits on an output queue nobody feeds again, and
`collective_rpc` on a future nobody resolves). `EngineWatchdog` waits on the engine processes'
sentinels; when one exits it records why and fails every pending wait with `EngineDeadError`.
`SelfHealing` (a base of `VLLMEngine`) turns that into an error or a restart.

Imports no vLLM: `EngineDeadError` is safe to catch anywhere.
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import weakref
from collections.abc import Callable
from multiprocessing import connection
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class EngineDeadError(RuntimeError):
    """The engine's core process died; the engine serves nothing until `restart()`."""


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class EngineWatchdog:
    """Watches the engine core processes of one `vllm.LLM` from a daemon thread.

    `reason` is None while they live, else a sentence naming the process and how it ended;
    `dead` is set at the same moment. `stop()` before a deliberate shutdown."""

    def __init__(self, llm: Any) -> None:
        self.core = llm.llm_engine.engine_core
        manager = getattr(getattr(self.core, "resources", None), "engine_manager", None)
        self.procs = list(getattr(manager, "processes", None) or [])  # none in-process
        self.reason: str | None = None
        self.dead = threading.Event()
        self._stop = threading.Event()
        if self.procs:
            threading.Thread(target=self._watch, name="af-engine-watchdog", daemon=True).start()
            ref = weakref.ref(self)  # at exit vLLM stops its processes: that is no crash
            atexit.register(lambda: (w := ref()) is not None and w.stop())

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _watch(self) -> None:
        by_sentinel = {p.sentinel: p for p in self.procs}
        while not self._stop.is_set():
            ended = connection.wait(list(by_sentinel), timeout=0.5)
            if not ended or self._stop.is_set():
                continue
            proc = by_sentinel[ended[0]]
            proc.join(5)  # it has exited (its sentinel fired): this only waits for the reap
            self.reason = (
                f"the vLLM engine core process {proc.name} (pid {proc.pid}) {_exit_text(proc.exitcode)}"
            )
            log.error("%s", self.reason)
            self.dead.set()
            self._fail_waiters()
            return

    def _fail_waiters(self) -> None:
        """Wake a `generate` blocked on the output queue and every pending utility RPC."""
        error = EngineDeadError(self.reason)
        queue = getattr(self.core, "outputs_queue", None)
        if queue is not None:
            queue.put_nowait(error)
        for future in list(getattr(self.core, "utility_results", {}).values()):
            if not future.done():
                try:
                    future.set_exception(error)
                except Exception:  # resolved meanwhile
                    log.debug("utility future already resolved", exc_info=True)

    def stop(self) -> None:
        self._stop.set()


class SelfHealing:
    """`VLLMEngine`'s crash handling: `alive`, `restart()`, and `_call`, through which every call
    into `vllm.LLM` goes. Needs `_start()` (sets `llm`, `watchdog`, `start_s`), `close()`, `_push()`."""

    llm: Any
    watchdog: EngineWatchdog
    model_path: Path
    policy_version: int
    start_s: float
    auto_restart: bool
    restarts: int
    _on_disk: tuple[str | None, int]
    _state_pushed: bool

    def _start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _push(self, source: Any) -> dict[str, float]:
        raise NotImplementedError

    @property
    def alive(self) -> bool:
        """False after `close()` or once an engine core process has died."""
        w = getattr(self, "watchdog", None)
        return self.llm is not None and w is not None and not w.dead.is_set() and self._procs_alive()

    def _procs_alive(self) -> bool:
        return all(p.is_alive() for p in self.watchdog.procs)

    def _call(self, fn: Callable[[], T]) -> T:
        """`fn()` against the engine; a dead engine core raises `EngineDeadError` instead of hanging,
        after one restart + retry when the served weights are on disk and `auto_restart` is on."""
        for attempt in (0, 1):
            if self.llm is None:
                raise RuntimeError("the vLLM engine is closed")
            try:
                if not self._procs_alive():
                    raise EngineDeadError("engine core process not alive")
                return fn()
            except Exception as exc:
                dead = isinstance(exc, EngineDeadError) or type(exc).__name__ == "EngineDeadError"
                if not dead and self._procs_alive():
                    raise
                self.watchdog.dead.wait(5)  # its reason names the process and the signal
                reason = self.watchdog.reason or "the vLLM engine core process died"
                if attempt == 0 and self.auto_restart and not self._state_pushed:
                    log.warning("%s; restarting the engine on %s", reason, self.model_path)
                    self.restart()
                    continue
                pushed = " and push the weights to serve again" if self._state_pushed else ""
                raise EngineDeadError(
                    f"{reason}; call restart() (it reloads {self._on_disk[0] or self.model_path}){pushed}"
                ) from exc
        raise AssertionError("unreachable")

    def restart(self) -> float:
        """A fresh engine core on the same model dir and arguments (+ the last checkpoint-dir weight
        update, at its version). Weights pushed as state dicts are not restored: push them again.
        Returns the start time in seconds."""
        self.close()
        self._start()
        path, version = self._on_disk
        if path is not None:
            self._push(path)
        self.policy_version, self._state_pushed = version, False
        self.restarts += 1
        log.warning("vLLM engine restarted (%d restarts) in %.1f s", self.restarts, self.start_s)
        return self.start_s
