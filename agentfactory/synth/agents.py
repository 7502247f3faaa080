"""Agents: who answers the user. An `AgentSpec` is a system prompt plus a tool subset; an `Agent`
produces the next assistant turn for many episodes at once.

Specs are drawn per task from the repository: the task's own domain, a style of assistant, the
tools the task needs plus distractors (some from other domains: cross-domain agents), so a few
domains yield thousands of distinct agents. Implementations: the blueprint oracle (gold
trajectories, no model) and a policy on any `Engine` (vLLM in-process, an endpoint).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import Field

from agentfactory.config import StrictModel
from agentfactory.llm.base import Engine, GenerationRequest, SamplingParams
from agentfactory.records import Message, Task, ToolCall, ToolSpec
from agentfactory.synth.tito import TokenizerLike, next_prompt_ids
from agentfactory.synth.users import revealed
from agentfactory.tools.domain import Domain

STYLES = (
    "a friendly and concise",
    "a precise, professional",
    "a warm, patient",
    "a brisk, efficient",
    "a careful, policy-minded",
)


class AgentSpec(StrictModel):
    id: str
    domains: list[str]
    system_prompt: str
    tools: list[ToolSpec]
    style: str = ""


class AgentSampling(StrictModel):
    """How agents are drawn for tasks."""

    distractor_fraction: float = Field(
        0.5, ge=0, le=1, description="share of the domain's other tools offered"
    )
    cross_domain: float = Field(0.2, ge=0, le=1, description="probability of adding tools of another domain")
    cross_domain_tools: int = Field(2, ge=0)
    prompt: Literal["full", "compact"] = Field(
        "full",
        description="full: the domain's description and policy, tools as declared; compact: one line "
        "of role and tools with their first sentence and no parameter prose (~40% fewer prompt tokens)",
    )


def system_prompt(domains: Sequence[Domain], style: str, today: str | None = None) -> str:
    head = f"You are {style} assistant" if style else "You are an assistant"
    parts = [f"{head} for this service: {domains[0].description.strip()}"]
    for d in domains[1:]:
        parts.append(f"You can also use tools of another service: {d.description.strip()}")
    policies = [d.policy.strip() for d in domains if d.policy.strip()]
    if policies:
        parts.append("Policy:\n" + "\n".join(policies))
    if today:
        parts.append(f"Today is {today}.")
    parts.append("Use the tools to look things up and make changes; never invent ids or results.")
    return "\n\n".join(parts)


def compact_system_prompt(domains: Sequence[Domain], style: str) -> str:
    """Role in one line: small models (and the quickstart's 15 minutes) cannot afford a page of policy
    per conversation; what the policy implies is learned from the trajectories instead."""
    services = " and ".join(first_sentence(d.description) for d in domains)
    return f"You are {style or 'an'} assistant. Service: {services} Use the tools; never invent ids."


def first_sentence(text: str) -> str:
    text = " ".join(text.split())
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


_PROSE = {"description", "additionalProperties", "title", "examples"}


def compact_tool(spec: ToolSpec) -> ToolSpec:
    """The tool with its first sentence and a bare parameter schema (types, enums, required)."""

    def bare(schema: Any) -> Any:
        if isinstance(schema, list):
            return [bare(v) for v in schema]
        if not isinstance(schema, dict):
            return schema
        out = {k: bare(v) for k, v in schema.items() if k not in _PROSE and k != "properties"}
        if isinstance(schema.get("properties"), dict):  # keys here are parameter names, not keywords
            out["properties"] = {name: bare(v) for name, v in schema["properties"].items()}
        return out

    parameters = bare(spec.parameters)
    return spec.model_copy(update={"description": first_sentence(spec.description), "parameters": parameters})


def sample_agent(task: Task, domains: dict[str, Domain], cfg: AgentSampling, rng: random.Random) -> AgentSpec:
    """An agent able to solve `task`: its required tools, distractors, maybe another domain's tools."""
    home = domains[task.domain]
    needed = {c.tool for c in task.blueprint.calls} if task.blueprint else set()
    others = [t for t in task.tools if t not in needed]
    chosen = needed | set(rng.sample(others, round(len(others) * cfg.distractor_fraction)))
    specs = [s for s in home.tool_specs() if s.name in chosen]
    used = [home]
    foreign = [d for name, d in sorted(domains.items()) if name != task.domain]
    if foreign and rng.random() < cfg.cross_domain:
        other = rng.choice(foreign)
        names = {s.name for s in specs}
        pool = [s for s in other.tool_specs() if s.name not in names]
        extra = rng.sample(pool, min(cfg.cross_domain_tools, len(pool)))
        if extra:
            specs += extra
            used.append(other)
    rng.shuffle(specs)
    style = rng.choice(STYLES)
    if cfg.prompt == "compact":
        prompt = compact_system_prompt(used, style)
        specs = [compact_tool(s) for s in specs]
    else:
        prompt = system_prompt(used, style)
    key = json.dumps([prompt, [s.name for s in specs]], sort_keys=True)
    return AgentSpec(
        id=hashlib.sha256(key.encode()).hexdigest()[:12],
        domains=[d.name for d in used],
        system_prompt=prompt,
        tools=specs,
        style=style,
    )


@dataclass
class AgentTurn:
    """The agent's next assistant message, with the exact sampled ids when a model produced it."""

    message: Message
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    prompt_ids: list[int] | None = None
    error: str | None = None  # unparsable output or a failed request: recorded, the episode ends
    finish_reason: str = "stop"
    meta: dict[str, Any] = field(default_factory=dict)


class Agent(Protocol):
    name: str

    def act(self, episodes: Sequence[Any]) -> list[AgentTurn]:
        """The next assistant turn of each episode (an `EpisodeState`), batched."""
        ...


class OracleAgent:
    """Follows the task's blueprint: asks for the facts it needs, makes the calls, states the answer.

    With `slip` > 0, that share of episodes shows a recovery: the first call that uses a value the
    user stated is made once with the value mistyped (a digit or two letters swapped), the tool's
    error comes back, and the correct call follows. The mistyped turn has weight 0 (context, not a
    target): SFT learns to recover from a failed lookup, not to mistype. A slipped call that does not
    fail (a write that went through) leaves the wrong world state, and the judge rejects the episode.
    """

    name = "oracle"

    def __init__(self, slip: float = 0.0):
        self.slip = slip

    def act(self, episodes: Sequence[Any]) -> list[AgentTurn]:
        return [self._act(ep) for ep in episodes]

    def _act(self, ep: Any) -> AgentTurn:
        task: Task = ep.task
        calls = task.blueprint.calls if task.blueprint else []
        blueprint_text = json.dumps([c.args for c in calls], ensure_ascii=False)
        known = revealed(task.user_facts, ep.messages)
        missing = [k for k, v in task.user_facts.items() if k not in known and str(v) in blueprint_text]
        if missing and ep.cursor == 0:
            names = " and ".join(k.replace("_", " ") for k in missing)
            return AgentTurn(
                Message(role="assistant", content=f"I can help with that. Could you tell me your {names}?")
            )
        last, before = ep.messages[-1], ep.messages[-2] if len(ep.messages) > 1 else None
        after_slip = before is not None and before.weight == 0
        if last.role == "tool" and "try again" in (last.content or "") and ep.retries < 2 and not after_slip:
            ep.retries += 1  # a transient fault: retry the same call, as a careful agent would
            ep.cursor -= 1
        if ep.cursor < len(calls):
            step = calls[ep.cursor]
            call = ToolCall(id=f"functions.{step.tool}:0", name=step.tool, arguments=step.args)
            if self.slip and not ep.slipped and (slipped := self._mistyped(call, task, ep)) is not None:
                return AgentTurn(Message(role="assistant", content="", tool_calls=[slipped], weight=0))
            ep.cursor += 1
            return AgentTurn(Message(role="assistant", content="", tool_calls=[call]))
        facts = "; ".join(task.blueprint.answer_facts) if task.blueprint else ""
        opener = {
            "refusal": "I'm sorry, I can't do that under our policy",
            "impossible": "I'm sorry, I couldn't complete that",
        }.get(task.kind, "All done")
        return AgentTurn(Message(role="assistant", content=f"{opener}: {facts}." if facts else f"{opener}."))

    def _mistyped(self, call: ToolCall, task: Task, ep: Any) -> ToolCall | None:
        """`call` with its first user-stated string argument mistyped, for `slip` of the episodes
        (decided at the first call that has one); None otherwise."""
        said = {str(v) for v in task.user_facts.values()}
        keys = [k for k, v in call.arguments.items() if isinstance(v, str) and v in said]
        if not keys:
            return None
        ep.slipped = True  # decided once per episode, whichever way
        if ep.rng.random() >= self.slip:
            return None
        value = call.arguments[keys[0]]
        wrong = mistype(value, ep.rng)
        return (
            None
            if wrong == value
            else call.model_copy(update={"arguments": {**call.arguments, keys[0]: wrong}})
        )


def mistype(value: str, rng: random.Random) -> str:
    """A typo a reader makes: one digit changed, else two adjacent letters swapped."""
    digits = [i for i, ch in enumerate(value) if ch.isdigit()]
    if digits:
        i = rng.choice(digits)
        return value[:i] + rng.choice([d for d in "0123456789" if d != value[i]]) + value[i + 1 :]
    pairs = [
        i
        for i in range(len(value) - 1)
        if value[i].isalpha() and value[i + 1].isalpha() and value[i] != value[i + 1]
    ]
    if not pairs:
        return value
    i = rng.choice(pairs)
    return value[:i] + value[i + 1] + value[i] + value[i + 2 :]


class PolicyAgent:
    """A model on any `Engine` plays the agent; its raw ids and logprobs are kept for RL.

    With `tokenizer` (an engine that takes prompt ids: `synth.tito.engine_tokenizer(engine)`), the
    engine continues each episode from its exact ids (token-in-token-out, `synth.tito`); without,
    it gets the messages (endpoints cannot take ids)."""

    name = "policy"

    def __init__(
        self, engine: Engine, params: SamplingParams | None = None, tokenizer: TokenizerLike | None = None
    ):
        self.engine = engine
        self.params = params or SamplingParams(temperature=0.7, max_tokens=256, logprobs=True)
        self.tokenizer = tokenizer

    def act(self, episodes: Sequence[Any]) -> list[AgentTurn]:
        requests = []
        for ep in episodes:
            params = self.params.model_copy(update={"seed": ep.rng.randrange(2**31)})
            if self.tokenizer is not None:
                ids = next_prompt_ids(self.tokenizer, ep)
                requests.append(GenerationRequest(prompt_ids=ids, params=params))
            else:
                requests.append(GenerationRequest(messages=ep.messages, tools=ep.agent.tools, params=params))
        turns = []
        for request, group in zip(requests, self.engine.generate(requests), strict=True):
            c = group[0]
            error = c.error if c.finish_reason == "error" else c.parse_error
            if c.finish_reason == "length" and not error and not c.tool_calls:
                error = "the reply hit max_tokens"
            message = c.as_message() if not error else Message(role="assistant", content=c.text)
            turns.append(
                AgentTurn(
                    message=message,
                    token_ids=c.token_ids,
                    logprobs=c.logprobs,
                    prompt_ids=request.prompt_ids,
                    error=error,
                    finish_reason=c.finish_reason,
                    meta={"policy_version": c.policy_version},
                )
            )
        return turns
