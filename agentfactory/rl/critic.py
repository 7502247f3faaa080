"""The self-critique rubric reward (Kimi K2 §3.2.2): the policy, as critic, ranks its own responses.

For one prompt and its K responses, the critic compares responses pairwise against the core rubrics
(`rubrics/core.yaml`), the prescriptive rubrics (`rubrics/prescriptive.yaml`) and the task's own
rubrics (`EnvTask.meta["rubrics"]`). Each pair is judged in both orders (A/B then B/A) to cancel
position bias, and a response's reward is its win rate (a tie is half a win). A critic reply without
a parsable verdict is an **abstention**: recorded, excluded from the win rate, never an exception;
a response with no valid judgment at all gets the neutral 0.5.

**Closed loop**: on verifiable prompts the same critic judges pairs whose verifiable outcomes
differ, and each judgment becomes a training sample whose reward is its agreement with the
outcome (`training_samples`). The RL update then trains the critic on the same policy weights, so
the critic's judgment improves together with the policy, grounding the subjective reward in
verifiable signal.

Rubric files are validated on load (pydantic, located errors), and `validate_rubrics` checks each
rubric's reference examples: a programmatic rule must score `better` 1.0 and `worse` 0.0, and, given
an engine, the critic must prefer `better` in both orders.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agentfactory.config import ConfigError, SourceError, StrictModel, load_config
from agentfactory.llm.base import Engine, GenerationRequest, SamplingParams
from agentfactory.records import Message, RewardBreakdown, Trajectory
from agentfactory.synth.judge import transcript

RUBRICS_DIR = Path(os.environ.get("AGENTFACTORY_RUBRICS", Path(__file__).resolve().parents[2] / "rubrics"))
PROMPT = Path(__file__).with_name("critic_prompt.txt").read_text(encoding="utf-8")
# "Verdict" and "tie" in any case, A/B in capitals only (so "the verdict a priori..." is no verdict).
_VERDICT = re.compile(r"(?i:verdict)\s*[:：]?\s*\**\s*\[*\s*(A|B|(?i:tie))\b")


class RubricExample(StrictModel):
    prompt: str
    better: str
    worse: str


class CriticRubric(StrictModel):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str
    criterion: str
    patterns: list[str] = Field(default_factory=list, description="regexes flagging a violation")
    scope: Literal["start", "anywhere"] = "anywhere"
    examples: list[RubricExample] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"pattern {p!r} is not a valid regex: {e}") from None
        return v

    def check(self, response: str) -> float | None:
        """1.0 if no pattern flags `response`, 0.0 if one does, None for a judgment-only rubric."""
        if not self.patterns:
            return None
        text = response.strip()
        for p in self.patterns:
            hit = (
                re.match(p, text, re.IGNORECASE)
                if self.scope == "start"
                else re.search(p, text, re.IGNORECASE)
            )
            if hit:
                return 0.0
        return 1.0


class RubricSet(StrictModel):
    kind: Literal["core", "prescriptive", "task"]
    description: str = ""
    rubrics: list[CriticRubric] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> RubricSet:
        ids = [r.id for r in self.rubrics]
        if dup := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"duplicate rubric ids: {dup}")
        return self


def load_rubrics(path: str | Path) -> RubricSet:
    """Load and validate a rubric file; examples of programmatic rules are checked too."""
    rubrics = load_config(path, RubricSet)
    problems = [p for r in rubrics.rubrics for p in check_examples(r)]
    if problems:
        raise ConfigError([SourceError(str(path), 0, 0, p) for p in problems])
    return rubrics


def check_examples(rubric: CriticRubric) -> list[str]:
    """Reference examples of a programmatic rule: `better` scores 1.0, `worse` 0.0 (else a message)."""
    out = []
    for i, ex in enumerate(rubric.examples):
        if rubric.check(ex.better) not in (None, 1.0):
            out.append(f"rubric {rubric.id}: example {i} 'better' violates its own patterns")
        if rubric.check(ex.worse) not in (None, 0.0):
            out.append(f"rubric {rubric.id}: example {i} 'worse' is not flagged by its patterns")
    return out


def task_rubrics(meta: dict[str, Any]) -> list[CriticRubric]:
    """Task-specific rubrics from `EnvTask.meta["rubrics"]` (dicts with id, title, criterion)."""
    return [CriticRubric.model_validate(r) for r in meta.get("rubrics", [])]


# ------------------------------------------------------------------------------------------------


class CriticConfig(StrictModel):
    core: Path = Field(RUBRICS_DIR / "core.yaml")
    prescriptive: Path = Field(RUBRICS_DIR / "prescriptive.yaml")
    neighbors: int | None = Field(
        None, ge=1, description="compare each response with its next N in a ring (None: all pairs)"
    )
    params: SamplingParams = Field(
        default_factory=lambda: SamplingParams(temperature=0.7, max_tokens=256, logprobs=True)
    )
    max_response_chars: int = Field(
        4000, ge=100, description="responses are cut to this length in the prompt"
    )
    margin: float = Field(0.5, gt=0, description="closed loop: outcomes must differ by this much")


class Judgment(StrictModel):
    """One critic call: responses `a` and `b` (indices into the group) shown as A and B."""

    a: int
    b: int
    verdict: Literal["A", "B", "tie"] | None = None
    reason: str = Field("", description="why it is an abstention (empty when a verdict was parsed)")
    prompt: list[Message] = Field(default_factory=list)
    text: str = ""
    token_ids: list[int] = Field(default_factory=list)
    logprobs: list[float] | None = None
    policy_version: int = 0

    @property
    def abstained(self) -> bool:
        return self.verdict is None

    @property
    def winner(self) -> int | None:
        """Index of the preferred response (None for a tie or an abstention)."""
        return {"A": self.a, "B": self.b}.get(self.verdict or "")


def parse_verdict(text: str) -> Literal["A", "B", "tie"] | None:
    """The last `Verdict: A|B|tie` in the critic's reply (also `[[A]]`); None when there is none."""
    found = _VERDICT.findall(text) or re.findall(r"\[\[\s*(A|B|(?i:tie))\s*\]\]", text)
    if not found:
        return None
    v = found[-1]
    return "tie" if v.lower() == "tie" else v.upper()  # type: ignore[return-value]


def pairs(k: int, neighbors: int | None) -> list[tuple[int, int]]:
    """Unordered pairs to compare: all of them, or each response with its next `neighbors` in a ring."""
    if neighbors is None or neighbors >= k - 1:
        return list(itertools.combinations(range(k), 2))
    return sorted({tuple(sorted((i, (i + d) % k))) for i in range(k) for d in range(1, neighbors + 1)})


def win_rates(k: int, judgments: Sequence[Judgment]) -> tuple[list[float], list[int]]:
    """(win rate per response, valid judgments per response); ties count half, abstentions not at all."""
    points, counts = [0.0] * k, [0] * k
    for j in judgments:
        if j.abstained:
            continue
        for side in (j.a, j.b):
            counts[side] += 1
        if j.verdict == "tie":
            points[j.a] += 0.5
            points[j.b] += 0.5
        else:
            points[j.winner] += 1.0  # type: ignore[index]
    return [p / c if c else 0.5 for p, c in zip(points, counts, strict=True)], counts


class Critic:
    """The policy engine as a pairwise critic over core + prescriptive + task rubrics."""

    def __init__(self, engine: Engine, config: CriticConfig | None = None):
        self.engine = engine
        self.config = config or CriticConfig()
        self.core = load_rubrics(self.config.core)
        self.prescriptive = load_rubrics(self.config.prescriptive)

    def rubric_text(self, extra: Sequence[CriticRubric] = ()) -> str:
        lines = []
        for label, rubrics in (
            ("Core", self.core.rubrics),
            ("Prescriptive rule", self.prescriptive.rubrics),
            ("Task", extra),
        ):
            lines += [f"- [{label}] {r.title}: {r.criterion}" for r in rubrics]
        return "\n".join(lines)

    def prompt(
        self, conversation: Sequence[Message], a: str, b: str, extra: Sequence[CriticRubric] = ()
    ) -> list[Message]:
        n = self.config.max_response_chars
        text = PROMPT.format(
            rubrics=self.rubric_text(extra),
            conversation=transcript(list(conversation)),
            response_a=a[:n],
            response_b=b[:n],
        )
        return [Message(role="user", content=text)]

    def judge(
        self,
        conversation: Sequence[Message],
        responses: Sequence[str],
        which: Sequence[tuple[int, int]],
        extra: Sequence[CriticRubric] = (),
        seed: int = 0,
    ) -> list[Judgment]:
        """Judge each pair in `which` in both orders, as one engine batch."""
        ordered = [o for i, j in which for o in ((i, j), (j, i))]
        requests, prompts = [], []
        for n, (a, b) in enumerate(ordered):
            prompt = self.prompt(conversation, responses[a], responses[b], extra)
            params = self.config.params.model_copy(update={"n": 1, "seed": seed * 100_003 + n})
            requests.append(GenerationRequest(id=f"critic:{a}:{b}", messages=prompt, params=params))
            prompts.append(prompt)
        outputs = self.engine.generate(requests) if requests else []
        out = []
        for (a, b), prompt, group in zip(ordered, prompts, outputs, strict=True):
            c = group[0]
            text = c.text if c.content is None else c.content
            verdict = parse_verdict(text) if c.finish_reason != "error" else None
            reason = (
                ""
                if verdict
                else (f"engine error: {c.error}" if c.finish_reason == "error" else "no verdict")
            )
            out.append(
                Judgment(
                    a=a,
                    b=b,
                    verdict=verdict,
                    reason=reason,
                    prompt=prompt,
                    text=c.text,
                    token_ids=c.token_ids,
                    logprobs=c.logprobs,
                    policy_version=c.policy_version,
                )
            )
        return out

    def rewards(
        self, task: Any, trajectories: Sequence[Trajectory], seed: int = 0
    ) -> tuple[list[RewardBreakdown], list[Judgment]]:
        """Win-rate rewards of a prompt's K responses (+ metrics), and the judgments behind them."""
        responses = [response_text(task, t) for t in trajectories]
        judgments = self.judge(
            task.prompt,
            responses,
            pairs(len(responses), self.config.neighbors),
            task_rubrics(task.meta),
            seed,
        )
        rates, counts = win_rates(len(responses), judgments)
        abstain = sum(j.abstained for j in judgments) / max(len(judgments), 1)
        out = []
        for i, text in enumerate(responses):
            checks = [c for r in self.prescriptive.rubrics if (c := r.check(text)) is not None]
            components = {
                "win_rate": rates[i],
                "judgments": float(counts[i]),
                "critic_abstain_rate": abstain,
                "prescriptive": sum(checks) / len(checks) if checks else 1.0,
            }
            out.append(RewardBreakdown.combine(components, {"win_rate": 1.0}))
        return out, judgments

    def training_samples(
        self, task: Any, trajectories: Sequence[Trajectory], outcomes: Sequence[float], seed: int = 0
    ) -> list[Trajectory]:
        """Closed loop: judge pairs whose verifiable outcomes differ; reward each judgment by agreement."""
        m = self.config.margin
        which = [(i, j) for i, j in pairs(len(outcomes), None) if abs(outcomes[i] - outcomes[j]) >= m]
        judgments = self.judge(
            task.prompt, [response_text(task, t) for t in trajectories], which, task_rubrics(task.meta), seed
        )
        return agreement_samples(task.id, judgments, outcomes)


def response_text(task: Any, trajectory: Trajectory, limit: int = 2500) -> str:
    """What the critic reads of a response: a single reply's text; for a multi-turn episode
    (`ToolUseEnv`) everything after the task prompt (tool calls, tool results, user turns, replies),
    because its outcome is decided by the calls, not by the last words (`limit`: characters kept,
    from the end, so that two of them fit the critic's context)."""
    n = len(task.prompt)
    after = trajectory.messages[n:] if trajectory.messages[:n] == list(task.prompt) else trajectory.messages
    if any(m.tool_calls or m.role == "tool" for m in after) or sum(m.role == "assistant" for m in after) > 1:
        return transcript(after, limit=limit)
    return trajectory.final_answer


def agreement_samples(
    task_id: str, judgments: Sequence[Judgment], outcomes: Sequence[float]
) -> list[Trajectory]:
    """Critic-training trajectories: reward 1 when the critic preferred the response with the better
    verifiable outcome, 0 for the wrong one, a tie or an abstention (`abstained` is a metric).
    All samples of one prompt share `meta.group`, the baseline group of the K1.5 loss."""
    out = []
    for j in judgments:
        better = j.a if outcomes[j.a] > outcomes[j.b] else j.b
        components = {"agreement": float(j.winner == better), "abstained": float(j.abstained)}
        out.append(
            Trajectory(
                task_id=f"{task_id}:critic:{j.a}-{j.b}",
                messages=[*j.prompt, Message(role="assistant", content=j.text)],
                token_ids=j.token_ids,
                logprobs=j.logprobs,
                policy_version=j.policy_version,
                reward=RewardBreakdown.combine(components, {"agreement": 1.0}),
                meta={
                    "env": "critic",
                    "kind": "chat",
                    "group": f"{task_id}:critic",
                    "verdict": j.verdict,
                    "reason": j.reason,
                },
            )
        )
    return out


def validate_rubrics(rubric_sets: Sequence[RubricSet], critic: Critic | None = None) -> list[str]:
    """Problems with the rubrics' reference examples: programmatic rules must score `better` 1.0 and
    `worse` 0.0; with a critic, `better` must win both orders against `worse` (win rate 1.0)."""
    problems = [p for s in rubric_sets for r in s.rubrics for p in check_examples(r)]
    if critic is None:
        return problems
    for s in rubric_sets:
        for r in s.rubrics:
            for n, ex in enumerate(r.examples):
                conversation = [Message(role="user", content=ex.prompt)]
                judgments = critic.judge(
                    conversation, [ex.better, ex.worse], [(0, 1)], [r] if s.kind == "task" else ()
                )
                rates, _ = win_rates(2, judgments)
                if rates[0] != 1.0:
                    problems.append(
                        f"rubric {r.id}: critic gave example {n}'s better response a win rate of {rates[0]:.2f}"
                    )
    return problems
