"""The episode runner: many simulated user ⇄ agent ⇄ tool conversations advanced in lockstep.

Each round, the next turns of *all* active episodes go to the agent as one batch (one engine call
for a model policy), then all due user replies go to the user simulator as one batch. Episodes end
when the user stops, at max turns (truncated), or on an agent error (unparsable output, failed
request: status `error`). Failures are data: every episode returns a `Trajectory` with a status.

With a token-in-token-out policy (`PolicyAgent(..., tokenizer=...)`, see `synth.tito`) each episode
also keeps a `TokenTrace`: the exact ids the engine saw and sampled, with the per-token mask RL
trains with; it is recorded in the trajectory's `meta["tito"]`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from agentfactory.config import StrictModel
from agentfactory.records import Message, RolloutStatus, Task, Trajectory
from agentfactory.synth.agents import Agent, AgentSampling, AgentSpec, sample_agent
from agentfactory.synth.tito import TokenTrace
from agentfactory.synth.toolexec import ToolExecConfig, ToolExecutor
from agentfactory.synth.users import STOP, UserSimulator


class EpisodeLimits(StrictModel):
    max_turns: int = Field(8, ge=1, description="assistant turns per episode")
    max_tool_calls: int = Field(16, ge=0, description="tool calls per episode")
    max_calls_per_turn: int = Field(4, ge=1)


@dataclass
class EpisodeState:
    task: Task
    agent: AgentSpec
    tools: ToolExecutor
    rng: random.Random
    messages: list[Message]
    attempt: int = 0
    cursor: int = 0  # the oracle's position in the blueprint
    retries: int = 0  # the oracle's retries after transient tool faults
    slipped: bool = False  # the oracle has made its one mistyped call (OracleAgent.slip)
    assistant_turns: int = 0
    tool_calls: int = 0
    status: RolloutStatus | None = None
    errors: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)  # per assistant turn, as sampled
    logprobs: list[list[float]] = field(default_factory=list)
    policy_version: int = 0
    trace: TokenTrace | None = None  # token-in-token-out agents only: the whole episode's ids

    @property
    def done(self) -> bool:
        return self.status is not None


def start_episode(
    task: Task,
    domains: dict[str, Any],
    sampling: AgentSampling,
    rng: random.Random,
    tools: ToolExecConfig | None = None,
    simulator: Any = None,
    attempt: int = 0,
) -> EpisodeState:
    """A new episode for `task`: an agent drawn for it, its tools over the task's world, the system turn."""
    spec = sample_agent(task, domains, sampling, rng)
    executor = ToolExecutor(
        [domains[n] for n in spec.domains],
        task.meta["world_seed"],
        task.initial_state,
        tools or ToolExecConfig(),
        random.Random(rng.randrange(2**63)),
        simulator,
    )
    system = Message(role="system", content=spec.system_prompt)
    return EpisodeState(task=task, agent=spec, tools=executor, rng=rng, messages=[system], attempt=attempt)


def _run_tools(ep: EpisodeState, message: Message, limits: EpisodeLimits) -> None:
    calls = message.tool_calls or []
    if len(calls) > limits.max_calls_per_turn:
        ep.errors.append(f"{len(calls)} tool calls in one turn (max {limits.max_calls_per_turn})")
    for call in calls[: limits.max_calls_per_turn]:
        if ep.tool_calls >= limits.max_tool_calls:
            ep.status = RolloutStatus.truncated
            ep.errors.append(f"more than {limits.max_tool_calls} tool calls")
            return
        ep.tool_calls += 1
        result = ep.tools.call(call.name, call.arguments)
        ep.messages.append(
            Message(role="tool", tool_call_id=call.id, name=None, content=result.to_message_content())
        )


def run_episodes(
    starts: list[EpisodeState], agent: Agent, user: UserSimulator, limits: EpisodeLimits
) -> list[Trajectory]:
    """Advance all episodes to the end; returns one trajectory per episode, in order."""
    for ep in starts:
        ep.messages.append(Message(role="user", content=user.opening(ep.task, ep.rng)))
    while active := [ep for ep in starts if not ep.done]:
        turns = agent.act(active)
        waiting_for_user = []
        for ep, turn in zip(active, turns, strict=True):
            ep.assistant_turns += 1
            ep.messages.append(turn.message)
            if turn.token_ids is not None:
                ep.token_ids.append(turn.token_ids)
                ep.logprobs.append(turn.logprobs or [])
            ep.policy_version = turn.meta.get("policy_version", ep.policy_version)
            if turn.prompt_ids is not None:  # token-in-token-out: the turn continued the episode's ids
                ep.trace = ep.trace or TokenTrace()
                ids, lp = turn.token_ids or [], turn.logprobs
                ep.trace.extend(turn.prompt_ids, ids, lp, ep.policy_version, turn.finish_reason)
            if turn.error:
                ep.errors.append(f"agent: {turn.error}")
                ep.status = RolloutStatus.error
                continue
            if turn.message.tool_calls:
                _run_tools(ep, turn.message, limits)
            else:
                waiting_for_user.append(ep)
            if not ep.done and ep.assistant_turns >= limits.max_turns:
                ep.status = RolloutStatus.truncated
                ep.errors.append(f"reached {limits.max_turns} assistant turns")
        waiting_for_user = [ep for ep in waiting_for_user if not ep.done]
        if waiting_for_user:
            replies = user.reply([(ep.task, ep.messages, ep.rng) for ep in waiting_for_user])
            for ep, reply in zip(waiting_for_user, replies, strict=True):
                if reply.error:
                    ep.errors.append(f"user simulator: {reply.error}")
                    ep.status = RolloutStatus.aborted
                    continue
                ep.messages.append(Message(role="user", content=reply.text))
                if reply.stop:
                    ep.status = RolloutStatus.completed
    return [to_trajectory(ep, agent, user) for ep in starts]


def to_trajectory(ep: EpisodeState, agent: Agent, user: UserSimulator) -> Trajectory:
    """The episode as a record; the final user `###STOP###` turn is dropped (it is not dialogue)."""
    messages = list(ep.messages)
    if messages and messages[-1].role == "user" and STOP in (messages[-1].content or ""):
        messages = messages[:-1]
    flat_ids = [t for turn in ep.token_ids for t in turn] if ep.token_ids else None
    flat_lp = [x for turn in ep.logprobs for x in turn] if ep.logprobs else None
    meta: dict[str, Any] = {
        "attempt": ep.attempt,
        "agent_id": ep.agent.id,
        "agent": agent.name,
        "user": user.name,
        "domains": ep.agent.domains,
        "kind": ep.task.kind,
        "template": ep.task.meta.get("template"),
        "world_seed": ep.task.meta.get("world_seed"),
        "category": ep.task.meta.get("category", ""),
        "assistant_turns": ep.assistant_turns,
        "tool_calls": ep.tool_calls,
        "faults": dict(ep.tools.faults),
        "errors": ep.errors,
    }
    if ep.trace is not None:
        meta["tito"] = ep.trace.model_dump()
    return Trajectory(
        task_id=ep.task.id,
        messages=messages,
        tools=ep.agent.tools,
        token_ids=flat_ids,
        logprobs=flat_lp,
        policy_version=ep.policy_version,
        status=ep.status or RolloutStatus.truncated,
        meta=meta,
    )
