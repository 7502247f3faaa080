"""An episode worker: runs a batch of (task, attempt) episodes in lockstep and judges them.

One worker is one Ray actor (or a plain object in-process). The judge runs where the episode ran
because it needs the episode's final world state. Everything is seeded by (task, attempt), so a
re-run of the same work item reproduces the same record.

In a pool, workers get the task table once (`tasks`) and then batches of (task id, attempt), and
return each record already serialized (`Finished`): a task carries its world (~8 kB) and a record
its tool specs and messages (~9 kB); pickling them both ways cost 0.35 ms per 2.8 ms episode, half
of it in the driver, which shares the CPUs with the workers (bench/synth_scaling.py).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import NamedTuple

from agentfactory.llm.base import Engine
from agentfactory.llm.config import EngineConfig, build_engine
from agentfactory.records import Task, Trajectory
from agentfactory.synth.agents import Agent, OracleAgent, PolicyAgent
from agentfactory.synth.config import SynthConfig
from agentfactory.synth.episode import run_episodes, start_episode
from agentfactory.synth.judge import Judge, reward_of
from agentfactory.synth.store import record_id
from agentfactory.synth.tito import engine_tokenizer
from agentfactory.synth.toolexec import LLMToolSimulator
from agentfactory.synth.users import LLMUser, ScriptedUser, UserSimulator
from agentfactory.tools import load_domain


class Finished(NamedTuple):
    """What the driver needs of a finished episode: who, whether accepted, and the shard line."""

    task_id: str
    attempt: int
    accepted: bool
    line: str  # the Trajectory as JSON


class EpisodeWorker:
    def __init__(self, config: SynthConfig, domain_paths: dict[str, str], tasks: list[Task] = ()):
        self.config = config
        self.tasks = {t.id: t for t in tasks}
        self.domains = {name: load_domain(Path(p)) for name, p in domain_paths.items()}
        self._engines: dict[str, Engine] = {}
        self.agent: Agent = OracleAgent(config.agent.slip)
        if config.agent.kind == "policy":  # token-in-token-out when the engine takes ids (vLLM)
            engine = self._engine(config.agent.engine)
            self.agent = PolicyAgent(engine, config.agent.sampling, engine_tokenizer(engine))
        self.user: UserSimulator = (
            LLMUser(self._engine(config.user.engine)) if config.user.kind == "llm" else ScriptedUser()
        )
        self.simulator = (
            LLMToolSimulator(self._engine(config.tools.engine)) if config.tools.mode == "simulated" else None
        )
        judge_engine = self._engine(config.judge.engine) if config.judge.engine else None
        self.judge = Judge(
            config.judge, judge_engine, config.judge.engine.model if config.judge.engine else None
        )

    def _engine(self, cfg: EngineConfig | None) -> Engine:
        """One engine per distinct config (e.g. the same local model can play user and judge)."""
        assert cfg is not None
        key = cfg.model_dump_json()
        if key not in self._engines:
            self._engines[key] = build_engine(cfg)
        return self._engines[key]

    def run(self, batch: list[tuple[Task, int]]) -> list[Trajectory]:
        states = [
            start_episode(
                task,
                self.domains,
                self.config.agents,
                random.Random(f"{self.config.seed}:{task.id}:{attempt}"),
                self.config.tools,
                self.simulator,
                attempt,
            )
            for task, attempt in batch
        ]
        trajectories = run_episodes(states, self.agent, self.user, self.config.limits)
        verdicts = self.judge.judge_many(
            [
                (s.task, t, s.tools.state, random.Random(f"judge:{s.task.id}:{s.attempt}"))
                for s, t in zip(states, trajectories, strict=True)
            ]
        )
        records = []
        for state, traj, verdict in zip(states, trajectories, verdicts, strict=True):
            task = state.task
            meta = {
                **traj.meta,
                "id": record_id(task.id, state.attempt),
                "domain": task.domain,
                "user_goal": task.user_goal,
                "rubric": task.rubric.model_dump(mode="json"),
                "source": f"{self.agent.name}+{self.user.name}",
            }
            records.append(
                traj.model_copy(update={"judge": verdict, "reward": reward_of(verdict), "meta": meta})
            )
        return records

    def run_ids(self, batch: list[tuple[str, int]]) -> list[Finished]:
        """`run` on (task id, attempt) pairs from the task table, records serialized here."""
        records = self.run([(self.tasks[task_id], attempt) for task_id, attempt in batch])
        return [
            Finished(r.task_id, r.meta["attempt"], r.judge.accepted, r.model_dump_json()) for r in records
        ]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
