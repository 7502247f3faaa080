"""A dead engine core never hangs a caller (without vLLM): the watchdog on a real child process wakes
a blocked output read and pending RPCs with `EngineDeadError`; `_call` raises a clear error or,
when the served weights are on disk, restarts once and retries."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace

import pytest

from agentfactory.llm.vllm_health import EngineDeadError, EngineWatchdog, SelfHealing


def _fake_llm(procs: list) -> SimpleNamespace:
    core = SimpleNamespace(
        resources=SimpleNamespace(engine_manager=SimpleNamespace(processes=procs)),
        outputs_queue=queue.Queue(),
        utility_results={},
    )
    return SimpleNamespace(llm_engine=SimpleNamespace(engine_core=core))


def test_watchdog_wakes_a_blocked_reader_and_pending_rpcs_when_the_core_is_killed():
    proc = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,), name="EngineCore")
    proc.start()
    try:
        llm = _fake_llm([proc])
        core = llm.llm_engine.engine_core
        rpc: Future = Future()
        core.utility_results[7] = rpc
        watchdog = EngineWatchdog(llm)
        got: list = []
        reader = threading.Thread(target=lambda: got.append(core.outputs_queue.get()), daemon=True)
        reader.start()  # stands for vLLM's get_output(), blocked on the queue
        time.sleep(0.3)
        assert not watchdog.dead.is_set() and watchdog.reason is None
        os.kill(proc.pid, signal.SIGKILL)
        assert watchdog.dead.wait(5)
        reader.join(5)
        assert not reader.is_alive(), "the blocked reader was not woken"
        assert isinstance(got[0], EngineDeadError)
        assert (
            watchdog.reason
            == f"the vLLM engine core process EngineCore (pid {proc.pid}) was killed by SIGKILL"
        )
        with pytest.raises(EngineDeadError, match="SIGKILL"):
            rpc.result(timeout=1)
    finally:
        proc.kill()
        proc.join()


def test_a_stopped_watchdog_ignores_a_deliberate_shutdown():
    proc = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,))
    proc.start()
    watchdog = EngineWatchdog(_fake_llm([proc]))
    watchdog.stop()
    proc.terminate()
    proc.join()
    assert not watchdog.dead.wait(1.5) and watchdog.reason is None


class _Proc:
    def __init__(self) -> None:
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive


class _Engine(SelfHealing):
    """SelfHealing over a fake core: `die()` kills it; `_start` brings up a fresh live one."""

    def __init__(self, auto_restart: bool = True) -> None:
        self.model_path = "/models/base"
        self.auto_restart, self.restarts, self.policy_version = auto_restart, 0, 3
        self._on_disk, self._state_pushed = (None, 0), False
        self.pushed: list = []
        self._start()

    def _start(self) -> None:
        self.proc = _Proc()
        self.llm = object()
        self.watchdog = SimpleNamespace(procs=[self.proc], dead=threading.Event(), reason=None)
        self.start_s = 0.1

    def close(self) -> None:
        self.llm = None

    def _push(self, source):
        self.pushed.append(source)
        return {}

    def die(self) -> None:
        self.proc.alive = False
        self.watchdog.reason = "the vLLM engine core process EngineCore (pid 1) was killed by SIGKILL"
        self.watchdog.dead.set()


def test_call_passes_results_and_ordinary_errors_through():
    engine = _Engine()
    assert engine.alive and engine._call(lambda: 42) == 42
    with pytest.raises(ValueError, match="bad request"):
        engine._call(lambda: (_ for _ in ()).throw(ValueError("bad request")))
    assert engine.restarts == 0


def test_dead_engine_with_pushed_weights_raises_a_clear_error():
    engine = _Engine()
    engine._state_pushed = True
    engine.die()
    assert not engine.alive
    with pytest.raises(EngineDeadError) as err:
        engine._call(lambda: 42)
    assert str(err.value) == (
        "the vLLM engine core process EngineCore (pid 1) was killed by SIGKILL; call restart() "
        "(it reloads /models/base) and push the weights to serve again"
    )
    assert engine.restarts == 0


def test_dead_engine_serving_weights_from_disk_restarts_once_and_retries():
    engine = _Engine()
    engine._on_disk = ("/models/v7", 7)
    calls = []

    def fn():
        calls.append(engine.restarts)
        if engine.restarts == 0:
            engine.die()  # dies during the first try
            raise RuntimeError("EngineCore encountered an issue")
        return "ok"

    assert engine._call(fn) == "ok"
    assert calls == [0, 1] and engine.restarts == 1 and engine.alive
    assert engine.pushed == ["/models/v7"] and engine.policy_version == 7  # the on-disk weights again
    off = _Engine(auto_restart=False)
    off.die()
    with pytest.raises(EngineDeadError, match=r"SIGKILL; call restart\(\) \(it reloads /models/base\)$"):
        off._call(lambda: 42)
    assert off.restarts == 0
