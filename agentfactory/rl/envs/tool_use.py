"""ToolUseEnv: a domain task, played multi-turn by the policy against the scripted user and real tools.

Tasks come from the domains' templates over the given world seeds (`tools.tasks.sample_tasks`); an
agent (system prompt + tool subset with distractors) is drawn per task with `synth.sample_agent`,
exactly as in synthesis, so RL trains on the distribution the SFT data came from. A rollout is a
synthesis episode (`synth.run_episodes`) with the policy as agent, the scripted user (exact and
reproducible, the default in synthesis too) and the declarative tool runtime; the episode's final
world state is kept in `trajectory.meta["final_state"]`, so scoring is a pure function of the
task and the trajectory.

Reward: the task rubric's weighted programmatic score (`rubric`, weight 1), with `correct` (every
check passed) and `completed` as metrics, plus the shared penalties: `format_error` when the
policy's output could not be parsed (the episode ends in `error`) and `over_budget` when a turn hit
the kind's token budget (per turn). `trajectory.token_ids` are the assistant turns' sampled ids,
concatenated; given the policy's tokenizer, episodes are token-in-token-out (`synth.tito`) and
`meta["tito"]` holds the whole episode as the engine saw it (prompt, sampled turns, environment
turns, with the mask of sampled tokens): what the RL loop trains on.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from agentfactory.config import StrictModel
from agentfactory.llm.base import Engine, SamplingParams
from agentfactory.model.chat import TokenizerLike
from agentfactory.records import Message, RewardBreakdown, RolloutStatus, Task, Trajectory
from agentfactory.rl.envs.base import EnvTask
from agentfactory.rl.rewards import (
    RewardFn,
    Sample,
    format_error,
    over_budget,
    response_tokens,
    reward,
    score,
)
from agentfactory.synth.agents import AgentSampling, AgentSpec, PolicyAgent, sample_agent
from agentfactory.synth.episode import EpisodeLimits, EpisodeState, run_episodes
from agentfactory.synth.toolexec import ToolExecConfig, ToolExecutor
from agentfactory.synth.users import ScriptedUser, UserTurn
from agentfactory.tools.checks import score_rubric
from agentfactory.tools.domain import Domain
from agentfactory.tools.loader import find_domain
from agentfactory.tools.tasks import sample_tasks


class ToolUseEnvConfig(StrictModel):
    domains: list[str] = Field(default_factory=lambda: ["retail_orders"], description="names or YAML paths")
    world_seeds: list[int] = Field(
        default_factory=lambda: list(range(100, 108)),
        description="worlds to draw tasks in (held-out evaluation uses worlds 0..99: keep clear of them)",
    )
    agents: AgentSampling = Field(default_factory=AgentSampling)
    limits: EpisodeLimits = Field(default_factory=EpisodeLimits)
    tools: ToolExecConfig = Field(default_factory=ToolExecConfig)
    weights: dict[str, float] = Field(default_factory=dict)


@reward(weight=1.0)
def rubric(s: Sample) -> float:
    """The task rubric's weighted share of programmatic checks passed."""
    return float(s.outcome.get("rubric", 0.0))


@reward(weight=0.0)
def correct(s: Sample) -> float:
    """Metric: every rubric check passed (task success)."""
    return float(s.outcome.get("correct", 0.0))


@reward(weight=0.0)
def completed(s: Sample) -> float:
    """Metric: the episode ended normally (the user stopped), not by error or turn limit."""
    return float(s.trajectory.status == RolloutStatus.completed)


class _FixedOpening:
    """The scripted user, but opening with the message already in the EnvTask prompt."""

    name = "scripted"

    def __init__(self, openings: dict[str, str]):
        self.openings = openings
        self.user = ScriptedUser()

    def opening(self, task: Task, rng: random.Random) -> str:
        return self.openings[task.id]

    def reply(self, items: Sequence[tuple[Task, list[Message], random.Random]]) -> list[UserTurn]:
        return self.user.reply(items)


class ToolUseEnv:
    """Domain tasks with rubrics, rolled out as multi-turn episodes."""

    name = "tool_use"
    kind = "tool_use"
    verifiable = True
    rewards: tuple[RewardFn, ...] = (rubric, correct, completed, format_error, over_budget, response_tokens)

    def __init__(
        self,
        config: ToolUseEnvConfig | None = None,
        domains: dict[str, Domain] | None = None,
        tokenizer: TokenizerLike | None = None,
    ):
        self.config = config or ToolUseEnvConfig()
        self.tokenizer = tokenizer  # the policy's: token-in-token-out episodes (None: messages)
        self.domains = domains or {d.name: d for d in (find_domain(n) for n in self.config.domains)}
        self.tasks: list[Task] = [
            t for d in self.domains.values() for t in sample_tasks(d, self.config.world_seeds)
        ]
        if not self.tasks:
            raise ValueError(
                f"no tasks in domains {sorted(self.domains)} over worlds {self.config.world_seeds}"
            )
        self.tasks_by_id = {t.id: t for t in self.tasks}
        self._agents: dict[str, AgentSpec] = {}

    def reset(self, seed: int) -> EnvTask:
        task = self.tasks[seed % len(self.tasks)]
        rng = random.Random(f"tool_use:{task.id}:{seed}")
        spec = sample_agent(task, self.domains, self.config.agents, rng)
        opening = ScriptedUser().opening(task, rng)
        env_id = f"tool.{task.id}.{spec.id}"
        self._agents[env_id] = spec
        return EnvTask(
            id=env_id,
            env=self.name,
            kind=self.kind,
            prompt=[
                Message(role="system", content=spec.system_prompt),
                Message(role="user", content=opening),
            ],
            tools=spec.tools,
            answer=task.id,
            meta={"task_id": task.id, "agent_id": spec.id, "domains": spec.domains, "seed": seed},
        )

    def _spec(self, task: EnvTask) -> AgentSpec:
        if task.id not in self._agents:  # a task made by another env instance: redraw it from its seed
            self.reset(int(task.meta["seed"]))
        return self._agents[task.id]

    def rollout(
        self, tasks: Sequence[EnvTask], engine: Engine, n: int, params: SamplingParams, budget: int
    ) -> list[list[Trajectory]]:
        """`n` episodes per task, all advanced in lockstep (one engine batch per round)."""
        p = params.model_copy(update={"n": 1, "max_tokens": min(params.max_tokens, budget), "logprobs": True})
        agent = PolicyAgent(engine, p, self.tokenizer)
        openings: dict[str, str] = {}
        states: list[EpisodeState] = []
        for et in tasks:
            task, spec = self.tasks_by_id[str(et.answer)], self._spec(et)
            openings[task.id] = et.prompt[-1].content or ""
            for i in range(n):
                rng = random.Random(f"{et.id}:{et.meta.get('seed')}:{i}:{engine.policy_version}")
                executor = ToolExecutor(
                    [self.domains[d] for d in spec.domains],
                    task.meta["world_seed"],
                    copy.deepcopy(task.initial_state),
                    self.config.tools,
                    random.Random(rng.randrange(2**63)),
                )
                messages = [Message(role="system", content=spec.system_prompt)]
                states.append(
                    EpisodeState(task=task, agent=spec, tools=executor, rng=rng, messages=messages, attempt=i)
                )
        trajectories = run_episodes(states, agent, _FixedOpening(openings), self.config.limits)
        out: list[list[Trajectory]] = [[] for _ in tasks]
        for k, (state, traj) in enumerate(zip(states, trajectories, strict=True)):
            et = tasks[k // n]
            errors = traj.meta.get("errors", [])
            meta = {
                **traj.meta,
                "env": self.name,
                "kind": self.kind,
                "final_state": copy.deepcopy(state.tools.state),
                "over_budget": any("hit max_tokens" in e for e in errors),
                "response_tokens": len(traj.token_ids or []),
                "parse_error": next(
                    (e for e in errors if e.startswith("agent:") and "max_tokens" not in e), None
                ),
            }
            out[k // n].append(traj.model_copy(update={"task_id": et.id, "meta": meta}))
        return out

    def verify(self, task: EnvTask, trajectory: Trajectory) -> dict[str, Any]:
        rubric_task = self.tasks_by_id[str(task.answer)]
        state = trajectory.meta.get("final_state", rubric_task.initial_state)
        value, results, _ = score_rubric(
            rubric_task.rubric, trajectory.tool_calls, trajectory.final_answer, state
        )
        format_ok = not (trajectory.status == RolloutStatus.error and trajectory.meta.get("parse_error"))
        return {"rubric": value, "correct": float(all(r.passed for r in results)), "format_ok": format_ok}

    def score(self, task: EnvTask, trajectory: Trajectory) -> RewardBreakdown:
        return score(
            self.rewards, Sample(task, trajectory, self.verify(task, trajectory)), self.config.weights
        )

    def score_group(self, task: EnvTask, trajectories: Sequence[Trajectory]) -> list[RewardBreakdown]:
        return [self.score(task, t) for t in trajectories]
