"""Multi-turn groups in the colocated loop: tool-use episodes, rolled out whole within an iteration.

A multi-turn env (`ToolUseEnv`) plays each of a group's K episodes to its end in the iteration that
drew it: all episodes of all such groups advance in lockstep, one engine batch per round
(`synth.run_episodes`), and the env scores each group by its rubric. Unlike single-turn responses
they are not carried across iterations by the partial-rollout buffer, because
- an episode in flight is more than ids: the world state of its tool runtime, the scripted user's
  RNG and the conversation would all have to go into the checkpoint to resume it;
- its long tail is already bounded: every turn has the kind's token budget and an episode has at
  most `limits.max_turns` turns, so one iteration's cost is bounded too;
- all its turns come from one policy version, so the trajectory the rubric rewards is on-policy.

Each episode is token-in-token-out (`synth.tito`): its training row is the first prompt, then
everything the engine saw after it (sampled turns, tool results and user turns, generation
prompts) with a mask that is 1 only on sampled tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentfactory.llm.base import Engine, SamplingParams
from agentfactory.records import RewardBreakdown, Trajectory
from agentfactory.rl.batch import TrainRow
from agentfactory.rl.envs.base import EnvTask
from agentfactory.rl.envs.mixture import EnvMixture
from agentfactory.rl.envs.tool_use import ToolUseEnv
from agentfactory.rl.rewards import TokenBudget
from agentfactory.synth.tito import TokenTrace


def is_multi_turn(env: Any) -> bool:
    return isinstance(env, ToolUseEnv)


Scored = tuple[EnvTask, list[Trajectory], list[RewardBreakdown]]  # a group, scored by its env


@dataclass
class EpisodeGroups:
    rows: list[TrainRow]
    stats: dict[str, float]  # episodes/*, tokens/generated
    scored: list[Scored]  # for the closed-loop critic


def episode_row(traj: Trajectory, breakdown: RewardBreakdown, group: str, env: str) -> TrainRow | None:
    """One episode as one row; None when it is no response to learn from (nothing sampled, or an
    engine failure, which is not the policy's doing)."""
    if "tito" not in traj.meta:
        raise ValueError("multi-turn rows need token-in-token-out episodes (ToolUseEnv(tokenizer=...))")
    trace = TokenTrace.model_validate(traj.meta["tito"])
    if trace.sampled == 0 or "error" in trace.finish_reasons:
        return None
    p = trace.prompt_tokens
    return TrainRow(
        prompt_ids=trace.ids[:p],
        response_ids=trace.ids[p:],
        logprobs=trace.logprobs[p:],
        versions=trace.versions[p:],
        reward=breakdown.total,
        group=group,
        env=env,
        components={k: v for k, v in breakdown.components.items() if breakdown.weights.get(k)},
        metrics={k: v for k, v in breakdown.components.items() if not breakdown.weights.get(k)},
        mask=trace.mask[p:],
    )


def rollout_episode_groups(
    mixture: EnvMixture,
    groups: Sequence[tuple[str, EnvTask]],
    engine: Engine,
    n: int,
    params: SamplingParams,
    budgets: TokenBudget,
) -> EpisodeGroups:
    """`n` episodes per (group name, task), all of an env's in one lockstep run, scored by the env."""
    rows: list[TrainRow] = []
    episodes: list[Trajectory] = []
    scored: list[Scored] = []
    dropped = 0
    for name, env in mixture.envs.items():
        mine = [(g, t) for g, t in groups if t.env == name]
        if not mine:
            continue
        trajs = env.rollout([t for _, t in mine], engine, n, params, budgets.for_kind(env.kind))
        for (group, task), members in zip(mine, trajs, strict=True):
            breakdowns = env.score_group(task, members)
            scored.append((task, members, breakdowns))
            for traj, b in zip(members, breakdowns, strict=True):
                row = episode_row(traj, b, group, task.env)
                dropped += row is None
                rows += [row] if row is not None else []
            episodes += members
    env_tokens = sum(len(r.response_ids) - sum(r.mask or []) for r in rows)
    stats: dict[str, float] = {}
    if episodes:
        k = len(episodes)
        stats = {
            "episodes/groups": float(len(groups)),
            "episodes/turns_mean": sum(int(t.meta.get("assistant_turns", 0)) for t in episodes) / k,
            "episodes/tool_calls_mean": sum(int(t.meta.get("tool_calls", 0)) for t in episodes) / k,
            "episodes/dropped": float(dropped),
            "episodes/env_tokens": float(env_tokens),
        }
    stats["tokens/generated"] = float(sum(len(t.token_ids or []) for t in episodes))
    return EpisodeGroups(rows, stats, scored)
