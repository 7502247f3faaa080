"""Held-out evaluation: a policy plays tool-use tasks on worlds it never trained on.

Synthesis and RL draw worlds from `world_start` ≥ 100 by default; evaluation uses worlds 0..N-1,
so every user, order id, address and phrasing sample is new to the model. Success = the episode
completed and the rubric's programmatic checks all pass (the judge with threshold 1.0). Results
are reported per domain and per task kind, with the failure reasons; the judged episodes go to
`<label>.jsonl` beside the summary (`agentfactory data show runs/<id>/eval/sft.jsonl --rejected`).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field

from agentfactory.config import StrictModel
from agentfactory.llm.base import Engine, SamplingParams
from agentfactory.records import Task
from agentfactory.synth.agents import Agent, AgentSampling, OracleAgent, PolicyAgent
from agentfactory.synth.episode import EpisodeLimits, run_episodes, start_episode
from agentfactory.synth.judge import Judge, JudgeConfig
from agentfactory.synth.users import ScriptedUser
from agentfactory.tools import domain_files, load_domain
from agentfactory.tools.tasks import sample_tasks


class EvalConfig(StrictModel):
    domains: list[str] | None = None
    world_start: int = Field(0, ge=0, description="held-out worlds (training uses ≥ 100 by default)")
    worlds: int = Field(5, ge=1)
    max_tasks: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1, description="episodes advanced in lockstep (one engine batch per turn)")
    limits: EpisodeLimits = Field(default_factory=EpisodeLimits)
    agents: AgentSampling = Field(
        default_factory=lambda: AgentSampling(distractor_fraction=1.0, cross_domain=0.0),
        description="agents drawn per task (default: the task's own domain with all its tools)",
    )
    temperature: float = Field(0.0, ge=0, description="0: greedy")
    max_tokens: int = Field(192, ge=8)
    seed: int = 1234


def heldout_tasks(config: EvalConfig) -> list[Task]:
    files = {f.stem: f for f in domain_files()}
    names = config.domains or sorted(files)
    tasks = [
        t
        for n in names
        for t in sample_tasks(
            load_domain(files[n]), range(config.world_start, config.world_start + config.worlds)
        )
    ]
    random.Random(config.seed).shuffle(tasks)
    return tasks[: config.max_tasks] if config.max_tasks else tasks


def evaluate(
    agent: Agent, config: EvalConfig, tasks: list[Task] | None = None, episodes: Path | None = None
) -> dict[str, Any]:
    """Success rates of `agent` on held-out tasks, per domain and kind, plus failure reasons;
    the judged trajectories are written to the jsonl file `episodes` if given."""
    tasks = tasks if tasks is not None else heldout_tasks(config)
    domains = {t.domain: load_domain(next(f for f in domain_files() if f.stem == t.domain)) for t in tasks}
    judge = Judge(JudgeConfig(threshold=1.0))
    results = []
    for start in range(0, len(tasks), config.batch_size):
        states = [
            start_episode(task, domains, config.agents, random.Random(f"eval:{config.seed}:{task.id}"))
            for task in tasks[start : start + config.batch_size]
        ]
        trajs = run_episodes(states, agent, ScriptedUser(), config.limits)
        for state, traj in zip(states, trajs, strict=True):
            verdict = judge.judge(state.task, traj, state.tools.state, state.rng)
            results.append((state.task, traj.model_copy(update={"judge": verdict}), verdict))
    if episodes is not None:
        episodes.parent.mkdir(parents=True, exist_ok=True)
        episodes.write_text(
            "".join(traj.model_dump_json() + "\n" for _, traj, _ in results), encoding="utf-8"
        )
    return summarize(results)


def summarize(results: list) -> dict[str, Any]:
    by_domain: dict[str, Counter] = {}
    by_kind: dict[str, Counter] = {}
    reasons: Counter = Counter()
    for task, _traj, verdict in results:
        for table, key in ((by_domain, task.domain), (by_kind, task.kind)):
            c = table.setdefault(key, Counter())
            c["tasks"] += 1
            c["success"] += int(verdict.accepted)
        if not verdict.accepted and verdict.reasons:
            reasons[verdict.reasons[0].split(":")[0]] += 1
    n = len(results)
    ok = sum(int(v.accepted) for _, _, v in results)

    def rates(table: dict[str, Counter]) -> dict[str, dict]:
        return {
            k: {"tasks": c["tasks"], "success": c["success"], "rate": c["success"] / c["tasks"]}
            for k, c in sorted(table.items())
        }

    return {
        "tasks": n,
        "success": ok,
        "success_rate": ok / n if n else 0.0,
        "by_domain": rates(by_domain),
        "by_kind": rates(by_kind),
        "failure_reasons": dict(reasons.most_common()),
    }


def evaluate_engine(engine: Engine, config: EvalConfig, episodes: Path | None = None) -> dict[str, Any]:
    """Evaluate a model on an engine (greedy by default); the summary, and with `episodes` the
    judged episodes written there as jsonl."""
    params = SamplingParams(temperature=config.temperature, max_tokens=config.max_tokens, logprobs=False)
    from agentfactory.synth.tito import engine_tokenizer

    # Token-in-token-out, as in RL: the model continues from the exact ids it sampled.
    agent = PolicyAgent(engine, params, tokenizer=engine_tokenizer(engine))
    return evaluate(agent, config, episodes=episodes)


def evaluate_oracle(config: EvalConfig) -> dict[str, Any]:
    """The blueprint oracle's score: the ceiling of the evaluation (should be 100%)."""
    return evaluate(OracleAgent(), config)
