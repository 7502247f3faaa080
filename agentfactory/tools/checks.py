"""Programmatic rubric checks: pure functions of (calls, final answer, final state).

LLM criteria cannot be decided here; they are returned as pending for a judge to score.
Scores are in [0, 1]; the rubric score is the weighted mean over the programmatic checks.
"""

from __future__ import annotations

import math
import re
from typing import Any

from agentfactory.records import CheckResult, LLMCriterion, Rubric, ToolCall, Trajectory
from agentfactory.tools.expr import resolve_pointer


def _norm(text: str) -> str:
    return " ".join(str(text).replace("_", " ").lower().split())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool | type(None)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def _subset(expected: dict, actual: dict) -> bool:
    return all(
        k in actual and (_same(actual[k], v) or _norm(actual[k]) == _norm(v)) for k, v in expected.items()
    )


def run_check(check: Any, calls: list[ToolCall], answer: str, state: dict) -> CheckResult:
    names = [c.name for c in calls]
    match check.kind:
        case "final_state":
            actual = resolve_pointer(state, check.path)
            passed, detail = (
                _same(actual, check.equals),
                f"{check.path} = {actual!r}, expected {check.equals!r}",
            )
        case "must_call":
            hits = [c for c in calls if c.name == check.tool]
            passed = any(check.args is None or _subset(check.args, c.arguments) for c in hits)
            detail = f"{check.tool} called {len(hits)}x" + (
                "" if passed or not hits else " but not with the expected args"
            )
        case "must_not_call":
            passed, detail = check.tool not in names, f"{check.tool} called {names.count(check.tool)}x"
        case "call_order":
            it = iter(names)
            passed = all(t in it for t in check.tools)  # subsequence test
            detail = f"calls: {names}"
        case "answer_contains":
            hay, needle = (answer, check.text) if check.case_sensitive else (_norm(answer), _norm(check.text))
            passed, detail = needle in hay, f"looked for {check.text!r}"
        case "answer_matches":
            passed, detail = re.search(check.pattern, answer) is not None, f"pattern {check.pattern!r}"
        case _:
            raise ValueError(f"{check.kind} is not a programmatic check")
    return CheckResult(
        kind=check.kind, passed=passed, score=float(passed), weight=check.weight, detail=detail
    )


def score_rubric(
    rubric: Rubric, calls: list[ToolCall], answer: str, state: dict
) -> tuple[float, list[CheckResult], list[LLMCriterion]]:
    """(weighted score of programmatic checks, their results, LLM criteria left for a judge)."""
    results = [run_check(c, calls, answer, state) for c in rubric.programmatic]
    total = sum(r.weight for r in results)
    score = sum(r.weight * r.score for r in results) / total if total else 1.0
    return score, results, rubric.llm_criteria


def score_trajectory(
    rubric: Rubric, traj: Trajectory, final_state: dict
) -> tuple[float, list[CheckResult], list]:
    return score_rubric(rubric, traj.tool_calls, traj.final_answer, final_state)
