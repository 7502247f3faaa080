"""RubricEnv: non-verifiable prompts (advice, explanation, writing) scored by the self-critique critic.

No answer can be checked, so a response's reward is its win rate among the prompt's K responses
as judged pairwise by the policy acting as critic (`rl.critic`), over the core, prescriptive and
the prompt's own rubrics. Scoring therefore needs the whole group: `score_group` is the real scorer,
and `score` of a lone response gives the neutral 0.5 (it has no one to be compared with).

Prompts come from a JSONL file (`{"prompt": ..., "rubrics": [{id, title, criterion}, ...]}`) or a
small built-in set, each with an optional task-specific rubric.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from agentfactory.config import StrictModel
from agentfactory.llm.base import Engine, SamplingParams
from agentfactory.records import Message, RewardBreakdown, Trajectory
from agentfactory.rl.critic import Critic, CriticRubric
from agentfactory.rl.envs.base import EnvTask, single_turn_rollout
from agentfactory.rl.rewards import Sample, format_error, over_budget, response_tokens, score

SYSTEM = "You are a helpful assistant. Answer directly and concisely."

_BUILTIN: tuple[tuple[str, str | None], ...] = (
    ("Explain recursion to a ten-year-old.", "Uses an example a child knows; no jargon."),
    ("What should I pack for a three-day hiking trip in autumn?", "Covers layers, water and safety gear."),
    ("Write a two-sentence thank-you note to a colleague who covered my shift.", "Exactly two sentences."),
    ("Is it better to rent or buy a home?", "Names the deciding factors instead of a one-sided answer."),
    ("Summarize the causes of the French Revolution in three bullet points.", "Exactly three bullet points."),
    ("How do I politely decline a meeting invitation?", "Gives a usable example sentence."),
    ("Give me a name for a bakery that sells only croissants.", "Offers one clear name, not a list."),
    ("What is the difference between weather and climate?", None),
    ("My code review got harsh comments. How should I respond?", "Acknowledges the feelings before advice."),
    ("Suggest a 20-minute beginner workout with no equipment.", "Includes timings for each part."),
    ("Why do cats purr?", None),
    ("Draft a short message asking my landlord to fix a leaking tap.", "Polite, specific, and short."),
    ("Compare SQL and NoSQL databases in a few sentences.", None),
    ("How can I fall asleep faster?", "Evidence-based tips, no medical overreach."),
    ("What are good questions to ask at the end of a job interview?", None),
    ("Describe the taste of coffee to someone who has never had it.", None),
)


class RubricEnvConfig(StrictModel):
    prompts_path: Path | None = Field(
        None, description="JSONL of {prompt, rubrics?}; default: built-in prompts"
    )
    weights: dict[str, float] = Field(default_factory=dict)


def _builtin_rows() -> list[dict[str, Any]]:
    rows = []
    for prompt, criterion in _BUILTIN:
        rubrics = (
            [{"id": "task_fit", "title": "Fits the request", "criterion": criterion}] if criterion else []
        )
        rows.append({"prompt": prompt, "rubrics": rubrics})
    return rows


class RubricEnv:
    """Open-ended prompts; reward = win rate under the self-critique critic."""

    name = "rubric"
    kind = "chat"
    verifiable = False
    rewards = (format_error, over_budget, response_tokens)

    def __init__(self, critic: Critic, config: RubricEnvConfig | None = None):
        self.critic = critic
        self.config = config or RubricEnvConfig()
        if self.config.prompts_path is not None:
            lines = self.config.prompts_path.read_text(encoding="utf-8").splitlines()
            self.rows = [json.loads(line) for line in lines if line.strip()]
        else:
            self.rows = _builtin_rows()
        for row in self.rows:  # fail at load, not mid-run, on a malformed task rubric
            [CriticRubric.model_validate(r) for r in row.get("rubrics", [])]

    def reset(self, seed: int) -> EnvTask:
        index = seed % len(self.rows)
        row = self.rows[index]
        return EnvTask(
            id=f"rubric.{index}",
            env=self.name,
            kind=self.kind,
            prompt=[Message(role="system", content=SYSTEM), Message(role="user", content=row["prompt"])],
            verifiable=False,
            meta={"rubrics": row.get("rubrics", []), "index": index},
        )

    def rollout(
        self, tasks: Sequence[EnvTask], engine: Engine, n: int, params: SamplingParams, budget: int
    ) -> list[list[Trajectory]]:
        return single_turn_rollout(tasks, engine, n, params, budget)

    def _penalties(self, task: EnvTask, trajectory: Trajectory) -> RewardBreakdown:
        format_ok = trajectory.meta.get("parse_error") is None and bool(trajectory.final_answer.strip())
        return score(self.rewards, Sample(task, trajectory, {"format_ok": format_ok}), self.config.weights)

    def score(self, task: EnvTask, trajectory: Trajectory) -> RewardBreakdown:
        """A lone response: the neutral win rate 0.5 plus the penalties."""
        return self.score_group(task, [trajectory])[0]

    def score_group(
        self, task: EnvTask, trajectories: Sequence[Trajectory], seed: int = 0
    ) -> list[RewardBreakdown]:
        if len(trajectories) < 2:
            critic = [RewardBreakdown.combine({"win_rate": 0.5}, {"win_rate": 1.0}) for _ in trajectories]
        else:
            critic, _ = self.critic.rewards(task, trajectories, seed)
        out = []
        for c, t in zip(critic, trajectories, strict=True):
            p = self._penalties(task, t)
            weights = {**p.weights, **{k: self.config.weights.get(k, v) for k, v in c.weights.items()}}
            out.append(RewardBreakdown.combine({**c.components, **p.components}, weights))
        return out
