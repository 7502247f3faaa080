"""The judge: rubric checks on the end state and the dialogue, plus optional LLM criteria by vote.

Programmatic checks decide what they can (final state, must/must-not call, call order, answer
content). Free-text criteria go to an LLM judge — preferably another model family than the
policy — as N independent votes, each listing the criteria in a shuffled order to cancel position
bias; a criterion passes by majority. An episode is accepted when its status is `completed`, the
weighted check score reaches the threshold and (if judged) the LLM criteria pass. Rejections keep
their reasons, so the dataset card can say why episodes failed.
"""

from __future__ import annotations

import random
import re

from pydantic import Field

from agentfactory.config import StrictModel
from agentfactory.llm.base import Engine, GenerationRequest, SamplingParams
from agentfactory.records import (
    CheckResult,
    JudgeVerdict,
    LLMCriterion,
    Message,
    RewardBreakdown,
    RolloutStatus,
    Task,
    Trajectory,
)
from agentfactory.tools.checks import score_rubric


class JudgeConfig(StrictModel):
    threshold: float = Field(1.0, ge=0, le=1, description="minimum weighted score of programmatic checks")
    votes: int = Field(3, ge=1, description="LLM votes per episode (majority per criterion)")
    llm_threshold: float = Field(0.5, ge=0, le=1, description="minimum share of LLM criteria passed")
    require_completed: bool = True


JUDGE_PROMPT = """You are a strict reviewer of a conversation between a user and an assistant that uses tools.
Decide for each numbered criterion whether the assistant satisfied it.

Conversation:
{transcript}

Criteria:
{criteria}

Answer with one line per criterion, exactly in the form "<number>: YES" or "<number>: NO"."""

_VOTE_LINE = re.compile(r"^\s*(\d+)\s*[:.)-]\s*(YES|NO)\b", re.IGNORECASE | re.MULTILINE)


def transcript(messages: list[Message], limit: int = 6000) -> str:
    lines = []
    for m in messages:
        if m.role == "system":
            continue
        if m.tool_calls:
            calls = ", ".join(f"{c.name}({c.arguments})" for c in m.tool_calls)
            lines.append(f"ASSISTANT calls {calls}")
        if m.content:
            lines.append(f"{m.role.upper()}: {m.content}")
    text = "\n".join(lines)
    return text if len(text) <= limit else "..." + text[-limit:]


def parse_votes(text: str, n: int) -> dict[int, bool] | None:
    """{criterion index: passed} from a judge reply, or None when it answers no criterion."""
    got = {int(i) - 1: v.upper() == "YES" for i, v in _VOTE_LINE.findall(text) if 1 <= int(i) <= n}
    return got or None


class Judge:
    def __init__(
        self, config: JudgeConfig | None = None, engine: Engine | None = None, model_name: str | None = None
    ):
        self.config = config or JudgeConfig()
        self.engine = engine
        self.model_name = model_name or (getattr(engine, "name", None) if engine else None)

    def judge(self, task: Task, traj: Trajectory, final_state: dict, rng: random.Random) -> JudgeVerdict:
        return self.judge_many([(task, traj, final_state, rng)])[0]

    def judge_many(self, items: list[tuple[Task, Trajectory, dict, random.Random]]) -> list[JudgeVerdict]:
        """Verdicts for many episodes; their LLM votes go to the engine as one batch."""
        programmatic = [score_rubric(t.rubric, tr.tool_calls, tr.final_answer, s) for t, tr, s, _ in items]
        llm = self._llm_scores(
            [(tr, crit, rng) for (_, tr, _, rng), (_, _, crit) in zip(items, programmatic, strict=True)]
        )
        verdicts = []
        for (_task, traj, _, _), (score, checks, criteria), llm_result in zip(
            items, programmatic, llm, strict=True
        ):
            reasons = [f"{c.kind} failed: {c.detail}" for c in checks if not c.passed]
            status_ok = not self.config.require_completed or traj.status == RolloutStatus.completed
            if not status_ok:
                reasons.insert(
                    0, f"status {traj.status.value}: " + "; ".join(traj.meta.get("errors", [])[:2])
                )
            accepted = status_ok and score >= self.config.threshold
            votes: list[float] = []
            if llm_result is not None:
                llm_checks, votes = llm_result
                checks = checks + llm_checks
                share = sum(c.passed for c in llm_checks) / len(llm_checks)
                if share < self.config.llm_threshold:
                    accepted = False
                    reasons += [f"llm_criterion failed: {c.detail}" for c in llm_checks if not c.passed]
            elif criteria and self.engine is not None:
                accepted = False
                reasons.append("llm judge gave no parsable verdict")
            verdicts.append(
                JudgeVerdict(
                    accepted=accepted,
                    score=score,
                    checks=checks,
                    reasons=[] if accepted else reasons or [f"score {score:.2f} < {self.config.threshold}"],
                    votes=votes,
                    judge_model=self.model_name if llm_result is not None else None,
                )
            )
        return verdicts

    def _llm_scores(
        self, items: list[tuple[Trajectory, list[LLMCriterion], random.Random]]
    ) -> list[tuple[list[CheckResult], list[float]] | None]:
        if self.engine is None:
            return [None] * len(items)
        requests, owners = [], []
        for i, (traj, criteria, rng) in enumerate(items):
            if not criteria:
                continue
            for v in range(self.config.votes):
                order = list(range(len(criteria)))
                rng.shuffle(order)  # each vote sees the criteria in another order
                listing = "\n".join(f"{k + 1}. {criteria[j].criterion}" for k, j in enumerate(order))
                prompt = JUDGE_PROMPT.format(transcript=transcript(traj.messages), criteria=listing)
                params = SamplingParams(temperature=0.7, max_tokens=64, seed=rng.randrange(2**31) + v)
                requests.append(
                    GenerationRequest(messages=[Message(role="user", content=prompt)], params=params)
                )
                owners.append((i, order))
        outputs = self.engine.generate(requests) if requests else []
        tallies: dict[int, list[list[bool]]] = {}
        vote_scores: dict[int, list[float]] = {}
        for (i, order), group in zip(owners, outputs, strict=True):
            c = group[0]
            parsed = parse_votes(c.content or c.text, len(order)) if c.finish_reason != "error" else None
            if parsed is None:
                continue
            n = len(items[i][1])
            row = [False] * n
            for k, ok in parsed.items():
                row[order[k]] = ok
            tallies.setdefault(i, []).append(row)
            vote_scores.setdefault(i, []).append(sum(row) / n)
        results: list[tuple[list[CheckResult], list[float]] | None] = []
        for i, (_, criteria, _) in enumerate(items):
            rows = tallies.get(i)
            if not criteria or not rows:
                results.append(None)
                continue
            checks = []
            for j, crit in enumerate(criteria):
                yes = sum(r[j] for r in rows)
                passed = yes * 2 > len(rows)
                checks.append(
                    CheckResult(
                        kind="llm_criterion",
                        passed=passed,
                        score=yes / len(rows),
                        weight=crit.weight,
                        detail=f"{crit.criterion!r}: {yes}/{len(rows)} votes",
                    )
                )
            results.append((checks, vote_scores[i]))
        return results


def reward_of(verdict: JudgeVerdict) -> RewardBreakdown:
    """The episode's reward: the rubric score, with the LLM score as a metric when judged."""
    components = {"rubric": verdict.score, "accepted": float(verdict.accepted)}
    if verdict.votes:
        components["llm"] = sum(verdict.votes) / len(verdict.votes)
    return RewardBreakdown.combine(components, {"rubric": 1.0})
