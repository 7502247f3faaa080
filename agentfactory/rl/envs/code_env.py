"""CodeEnv: the policy writes a Python function; hidden unit tests run in the bubblewrap sandbox.

The reply's last fenced code block (or the whole reply if it has none but defines the function) is
the solution. It runs with the hidden tests inside `rl.sandbox` (no network, read-only root, a
tmpfs work dir, CPU/memory/process/time limits), through a small runner that executes each
`assert` separately under a per-test alarm (stopping at the first timeout: a hung solution hangs
every test) and reports one JSON line. The line is prefixed with a nonce the runner reads from
stdin before the solution is loaded, so a solution that merely prints a result line is not
believed (a guard against accidents, not a defense against a solution that inspects its caller's
frames: the sandbox limits what such code can reach, not what it reports). The inputs are mounted
read-only, so a solution cannot rewrite the hidden tests.

Reward: `correct` = all tests pass (weight 1), `pass_rate` = share passed (a metric unless weighted),
plus the shared format and token-budget penalties. Sandbox outcomes other than a report (timeout,
CPU limit, killed) score 0 and are counted by the `sandbox_failed` metric. Building a CodeEnv on a
machine without bubblewrap is an error: silently scoring every answer 0 would waste a run.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import Field

from agentfactory.config import StrictModel
from agentfactory.records import Message, RewardBreakdown, Trajectory
from agentfactory.rl.envs.base import EnvTask, SingleTurnEnv
from agentfactory.rl.envs.code_problems import PROBLEMS, CodeProblem
from agentfactory.rl.rewards import DEFAULT_REWARDS, Sample, reward
from agentfactory.rl.sandbox import SandboxConfig, SandboxResult, bwrap_available, run_in_sandbox

RUNNER = r"""
import contextlib, io, json, signal, sys

def main():
    nonce = sys.stdin.readline().strip()
    tests = json.load(open("/work/input/tests.json"))
    per_test = int(sys.argv[1])
    report = {"passed": 0, "total": len(tests), "failures": [], "load_error": None}
    def alarm(signum, frame):
        raise TimeoutError("test timed out")
    signal.signal(signal.SIGALRM, alarm)
    ns = {"__name__": "solution"}
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            signal.alarm(per_test)
            exec(compile(open("/work/input/solution.py").read(), "solution.py", "exec"), ns)
            signal.alarm(0)
    except BaseException as e:
        signal.alarm(0)
        report["load_error"] = f"{type(e).__name__}: {e}"[:300]
        tests = []
    for i, test in enumerate(tests):
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                signal.alarm(per_test)
                exec(test, dict(ns))
                signal.alarm(0)
            report["passed"] += 1
        except BaseException as e:
            signal.alarm(0)
            report["failures"].append(f"{test[:120]} -> {type(e).__name__}: {str(e)[:120]}")
            if isinstance(e, TimeoutError):  # a hung solution hangs every test: stop at the first
                report["failures"] += [f"{t[:120]} -> skipped after a timeout" for t in tests[i + 1 :]]
                break
        sink.seek(0)
        sink.truncate()
    sys.__stdout__.write(nonce + json.dumps(report) + "\n")
    sys.__stdout__.flush()

main()
"""

SYSTEM = (
    "Write the requested Python function. Reply with one ```python code block that defines it "
    "(standard library only; no input() or file access)."
)


class CodeEnvConfig(StrictModel):
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    per_test_seconds: int = Field(2, ge=1)
    workers: int = Field(2, ge=1, description="sandboxes run in parallel when scoring a group")
    weights: dict[str, float] = Field(default_factory=dict)


def extract_code(text: str, name: str) -> str | None:
    """The last ```python (or bare ```) block of `text`; else `text` itself if it defines `name`."""
    blocks = re.findall(r"```(?:python|py)?[ \t]*\n(.*?)```", text, flags=re.DOTALL)
    if blocks:
        return blocks[-1]
    return text if re.search(rf"^\s*def {re.escape(name)}\s*\(", text, flags=re.MULTILINE) else None


class TestReport(StrictModel):
    passed: int = 0
    total: int = 0
    failures: list[str] = Field(default_factory=list)
    load_error: str | None = None
    sandbox: SandboxResult


def run_tests(code: str, tests: list[str], config: CodeEnvConfig | None = None) -> TestReport:
    """Run `tests` (assert statements) against `code` in the sandbox; never raises."""
    cfg = config or CodeEnvConfig()
    nonce = secrets.token_hex(16)
    files = {"solution.py": code, "tests.json": json.dumps(tests), "runner.py": RUNNER}
    result = run_in_sandbox(
        files, ["input/runner.py", str(cfg.per_test_seconds)], cfg.sandbox, stdin=nonce + "\n"
    )
    for line in result.stdout.splitlines():
        if line.startswith(nonce):
            try:
                data = json.loads(line[len(nonce) :])
                return TestReport(**data, sandbox=result)
            except (ValueError, TypeError):
                break
    return TestReport(total=len(tests), sandbox=result)


@reward(weight=0.0)
def pass_rate(s: Sample) -> float:
    """Share of hidden tests passed (a metric by default; weight it for partial credit)."""
    return float(s.outcome.get("pass_rate", 0.0))


@reward(weight=0.0)
def sandbox_failed(s: Sample) -> float:
    """Metric: the run ended without a test report (timeout, CPU limit, killed, sandbox error)."""
    return float(s.outcome.get("sandbox_status", "ok") != "ok")


class CodeEnv(SingleTurnEnv):
    """Implement a function; rewarded when all hidden tests pass in the sandbox."""

    name = "code"
    kind = "code"
    rewards = (*DEFAULT_REWARDS, pass_rate, sandbox_failed)

    def __init__(self, config: CodeEnvConfig | None = None, problems: Sequence[CodeProblem] = PROBLEMS):
        if not bwrap_available():
            raise RuntimeError("CodeEnv needs bubblewrap and prlimit (apt-get install bubblewrap util-linux)")
        self.config = config or CodeEnvConfig()
        super().__init__(self.config.weights)
        self.problems = {p.name: p for p in problems}
        self._order = list(self.problems)

    def reset(self, seed: int) -> EnvTask:
        p = self.problems[self._order[seed % len(self._order)]]
        ask = f"Implement `{p.signature}`.\n\n{p.description}"
        return EnvTask(
            id=f"code.{p.name}",
            env=self.name,
            kind=self.kind,
            prompt=[Message(role="system", content=SYSTEM), Message(role="user", content=ask)],
            answer=p.name,
        )

    def verify(self, task: EnvTask, trajectory: Trajectory) -> dict[str, Any]:
        p = self.problems[str(task.answer)]
        code = extract_code(trajectory.final_answer, p.name)
        if code is None:
            return {"correct": 0.0, "format_ok": False, "pass_rate": 0.0}
        report = run_tests(code, p.tests, self.config)
        return outcome_of(report)

    def score_group(self, task: EnvTask, trajectories: Sequence[Trajectory]) -> list[RewardBreakdown]:
        """The group's sandboxes run `workers` at a time (each is a separate process tree)."""
        with ThreadPoolExecutor(self.config.workers) as pool:
            return list(pool.map(lambda t: self.score(task, t), trajectories))

    def validate(self) -> None:
        """Every reference passes all its tests in the sandbox; raises otherwise."""
        for p in self.problems.values():
            good = run_tests(p.reference, p.tests, self.config)
            if good.passed != len(p.tests):
                raise AssertionError(
                    f"{p.name}: reference passed {good.passed}/{len(p.tests)}: {good.failures}"
                )


def outcome_of(report: TestReport) -> dict[str, Any]:
    total = max(report.total, 1)
    out: dict[str, Any] = {
        "correct": float(report.total > 0 and report.passed == report.total),
        "format_ok": report.load_error is None or not report.load_error.startswith("SyntaxError"),
        "pass_rate": report.passed / total,
    }
    if report.sandbox.status != "ok":
        out["sandbox_status"] = report.sandbox.status
    return out
