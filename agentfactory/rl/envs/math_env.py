"""MathEnv: math problems whose answers are checked with `math-verify`.

The problems come from a small built-in generator (so the env runs offline and its difficulty is a
knob) or from a JSONL file of `{"question": ..., "answer": ...}` rows (e.g. GSM8K/MATH exports).
Generated families: integer arithmetic with precedence, linear equations with fractional roots,
fraction sums, quadratics with integer roots, percentages and a rate word problem. Answers are
LaTeX strings (`-\\frac{3}{2}`), so math-verify compares them symbolically: `\\boxed{-1.5}` and
`\\boxed{-3/2}` both count.

The policy is asked to put its final answer in `\\boxed{}`; a response without it loses the format
reward but is still checked (math-verify also extracts unanchored answers), so correctness and
form are separate components. `validate()` checks that every gold answer scores 1.0.
math-verify's timeouts use SIGALRM (main thread only); off the main thread, answers that would make
sympy evaluate for minutes (power towers, huge exponents) are refused before parsing.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from agentfactory.config import StrictModel
from agentfactory.records import Message, Trajectory
from agentfactory.rl.envs.base import EnvTask, SingleTurnEnv

Family = Literal["arithmetic", "linear", "fractions", "quadratic", "percent", "rate"]
FAMILIES: tuple[Family, ...] = ("arithmetic", "linear", "fractions", "quadratic", "percent", "rate")

SYSTEM = "Solve the problem step by step. Put only the final answer in \\boxed{}, e.g. \\boxed{42}."


class MathEnvConfig(StrictModel):
    families: list[Family] = Field(default_factory=lambda: list(FAMILIES))
    difficulty: int = Field(1, ge=1, le=3, description="scales operand sizes and step counts")
    size: int = Field(10_000, ge=1, description="distinct problems: task for seed s is problem s % size")
    problems_path: Path | None = Field(
        None, description="JSONL of {question, answer}; replaces the generator"
    )
    weights: dict[str, float] = Field(default_factory=dict, description="reward weight overrides by name")
    timeout_seconds: int = Field(5, ge=1, description="math-verify parse/verify timeout (main thread only)")


def latex(x: Fraction | int) -> str:
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    sign = "-" if x < 0 else ""
    return f"{sign}\\frac{{{abs(x.numerator)}}}{{{x.denominator}}}"


def _nz(rng: random.Random, lo: int, hi: int) -> int:
    return rng.choice([v for v in range(lo, hi + 1) if v != 0])


def generate_problem(family: Family, rng: random.Random, difficulty: int = 1) -> tuple[str, str]:
    """(question, LaTeX answer) for one problem of `family`."""
    m = 10**difficulty
    if family == "arithmetic":
        terms = [rng.randint(1, m) for _ in range(2 + difficulty)]
        ops = [rng.choice("+-*") for _ in terms[1:]]
        expr = str(terms[0]) + "".join(f" {o} {t}" for o, t in zip(ops, terms[1:], strict=True))
        return f"Compute {expr}.", latex(eval(expr))  # our own digits and operators
    if family == "linear":
        a, b, c = _nz(rng, -9 * difficulty, 9 * difficulty), rng.randint(-m, m), rng.randint(-m, m)
        return f"Solve for x: {a}x + {b} = {c}.".replace("+ -", "- "), latex(Fraction(c - b, a))
    if family == "fractions":
        p, q = rng.randint(1, 9 * difficulty), rng.randint(2, 9 * difficulty)
        r, s = rng.randint(1, 9 * difficulty), rng.randint(2, 9 * difficulty)
        op = rng.choice("+-")
        value = Fraction(p, q) + Fraction(r, s) if op == "+" else Fraction(p, q) - Fraction(r, s)
        return f"Compute {p}/{q} {op} {r}/{s} as a fraction in lowest terms.", latex(value)
    if family == "quadratic":
        r1, r2 = rng.randint(-5 * difficulty, 5 * difficulty), rng.randint(-5 * difficulty, 5 * difficulty)
        b, c = -(r1 + r2), r1 * r2
        poly = f"x^2 + {b}x + {c} = 0".replace("+ -", "- ")
        ask = rng.choice(["larger", "smaller"])
        return f"Find the {ask} root of {poly}.", latex(max(r1, r2) if ask == "larger" else min(r1, r2))
    if family == "percent":
        pct, n = rng.choice([5, 10, 12, 15, 20, 25, 40, 50, 75]), rng.randint(1, 20) * 4 * difficulty
        return f"What is {pct}% of {n}?", latex(Fraction(pct * n, 100))
    if family == "rate":
        speed, hours = rng.randint(2, 12 * difficulty), rng.randint(2, 6)
        extra = rng.randint(1, 20)
        question = (
            f"A cyclist rides at {speed} km per hour for {hours} hours, then walks {extra} km more. "
            "How many kilometres does she cover in total?"
        )
        return question, latex(speed * hours + extra)
    raise ValueError(f"unknown math family {family!r}")


# A power tower or a huge exponent makes sympy evaluate for minutes. math-verify's own timeout uses
# SIGALRM, which exists only on the main thread, so answers like these are refused up front instead.
_EXPLOSIVE = re.compile(r"\^\s*\{?[^{}]*\^|\^\s*\{?\s*\d{4,}|\*\*\s*\(?[^()]*\*\*|\*\*\s*\d{4,}")


def _answer_part(text: str) -> str:
    """From the last `\\boxed` on (what math-verify extracts first), else the whole text."""
    at = text.rfind("\\boxed")
    return text[at:] if at >= 0 else text


def _parse(text: str, timeout: int) -> list:
    from math_verify import parse  # imported here: sympy/antlr cost ~0.3 s

    main = threading.current_thread() is threading.main_thread()
    if not main:
        logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled", per call
    return parse(text, parsing_timeout=timeout if main else None)


def check_answer(gold: str, response: str, timeout: int = 5) -> tuple[bool, bool]:
    """(correct, extracted): math-verify's symbolic comparison of `response` to the LaTeX `gold`.
    An answer with a power tower or a 4+ digit exponent is refused (wrong) before sympy sees it."""
    from math_verify import verify

    if _EXPLOSIVE.search(_answer_part(response)):
        return False, True
    pred = _parse(response, timeout)
    if not pred:
        return False, False
    main = threading.current_thread() is threading.main_thread()
    gold_parsed = _parse(f"${gold}$", timeout)
    return bool(verify(gold_parsed, pred, timeout_seconds=timeout if main else None)), True


class MathEnv(SingleTurnEnv):
    """Math problems with `\\boxed{}` answers, verified symbolically by math-verify."""

    name = "math"
    kind = "math"

    def __init__(self, config: MathEnvConfig | None = None):
        self.config = config or MathEnvConfig()
        super().__init__(self.config.weights)
        self._rows: list[dict[str, Any]] | None = None
        if self.config.problems_path is not None:
            lines = self.config.problems_path.read_text(encoding="utf-8").splitlines()
            self._rows = [json.loads(line) for line in lines if line.strip()]

    def problem(self, seed: int) -> tuple[str, str, str]:
        """(question, answer, family) of problem `seed % size` (or of the file's rows)."""
        if self._rows is not None:
            row = self._rows[seed % len(self._rows)]
            return str(row["question"]), str(row["answer"]), "file"
        index = seed % self.config.size
        rng = random.Random(f"math:{index}")
        family = rng.choice(self.config.families)
        question, answer = generate_problem(family, rng, self.config.difficulty)
        return question, answer, family

    def reset(self, seed: int) -> EnvTask:
        question, answer, family = self.problem(seed)
        return EnvTask(
            id=f"math.{family}.{seed % (len(self._rows) if self._rows else self.config.size)}",
            env=self.name,
            kind=self.kind,
            prompt=[Message(role="system", content=SYSTEM), Message(role="user", content=question)],
            answer=answer,
            meta={"family": family},
        )

    def verify(self, task: EnvTask, trajectory: Trajectory) -> dict[str, Any]:
        text = trajectory.final_answer
        correct, extracted = check_answer(str(task.answer), text, self.config.timeout_seconds)
        return {"correct": float(correct), "format_ok": extracted and "\\boxed{" in text}

    def validate(self, n: int = 50) -> None:
        """Every gold answer, boxed, scores 1.0 (and an empty reply scores 0.0); raises otherwise."""
        for seed in range(n):
            task = self.reset(seed)
            for reply, want in ((f"The answer is \\boxed{{{task.answer}}}.", 1.0), ("", 0.0)):
                traj = Trajectory(
                    task_id=task.id, messages=[*task.prompt, Message(role="assistant", content=reply)]
                )
                got = self.score(task, traj).components["correct"]
                if got != want:
                    raise AssertionError(f"{task.id}: {reply!r} scored {got}, expected {want}")
