"""Tool execution for episodes: the declarative/real runtime, an LLM world-model simulator, and faults.

`ToolExecutor` routes each call to the runtime of the domain that owns the tool (agents may mix
domains). Faults are injected with seeded randomness at configured rates, as real services
misbehave: timeouts and transient errors (nothing changes, the agent may retry) and partial data
(a truncated result). Every fault is counted in the episode's metadata.
"""

from __future__ import annotations

import json
import random
from typing import Any

from pydantic import Field

from agentfactory.config import StrictModel
from agentfactory.llm.base import Engine, GenerationRequest, SamplingParams
from agentfactory.records import Message
from agentfactory.tools.domain import Domain, ToolDef
from agentfactory.tools.runtime import CallRecord, ToolResult, ToolRuntime


class FaultRates(StrictModel):
    timeout: float = Field(0.0, ge=0, le=1)
    transient: float = Field(0.0, ge=0, le=1)
    partial: float = Field(0.0, ge=0, le=1)


class ToolExecConfig(StrictModel):
    mode: str = Field(
        "runtime", pattern="^(runtime|simulated)$", description="runtime: YAML/Python; simulated: LLM"
    )
    faults: FaultRates = Field(default_factory=FaultRates)


def _truncate(content: Any, rng: random.Random) -> Any:
    """Partial data: drop about half of a collection's entries (at least one) or a string's tail."""
    if isinstance(content, dict) and len(content) > 1:
        keys = sorted(content)
        keep = set(rng.sample(keys, max(1, len(keys) // 2)))
        return {k: v for k, v in content.items() if k in keep}
    if isinstance(content, list) and len(content) > 1:
        return content[: max(1, len(content) // 2)]
    if isinstance(content, str) and len(content) > 8:
        return content[: len(content) // 2]
    return content


class ToolExecutor:
    """Runs an episode's tool calls over one world per domain."""

    def __init__(
        self,
        domains: list[Domain],
        world_seed: int,
        home_state: dict | None,
        config: ToolExecConfig,
        rng: random.Random,
        simulator: Any = None,
    ):
        self.rng = rng
        self.config = config
        self.runtimes: dict[str, ToolRuntime] = {}
        self.owner: dict[str, str] = {}
        for i, d in enumerate(domains):
            state = home_state if i == 0 else None
            self.runtimes[d.name] = ToolRuntime(
                d, seed=world_seed, state=state, simulator=simulator, simulate_all=config.mode == "simulated"
            )
            for t in d.tools:
                self.owner.setdefault(t.name, d.name)
        self.faults: dict[str, int] = {"timeout": 0, "transient": 0, "partial": 0}
        self.home = domains[0].name

    @property
    def state(self) -> dict:
        """The home domain's world (what the task's rubric checks)."""
        return self.runtimes[self.home].state

    def call(self, name: str, arguments: Any) -> ToolResult:
        rates = self.config.faults
        roll = self.rng.random()
        if roll < rates.timeout:
            self.faults["timeout"] += 1
            return ToolResult(ok=False, error=f"{name} timed out; the service did not answer, try again")
        if roll < rates.timeout + rates.transient:
            self.faults["transient"] += 1
            return ToolResult(ok=False, error=f"{name}: 503 service temporarily unavailable, try again")
        domain = self.owner.get(name, self.home)
        result = self.runtimes[domain].call(name, arguments)
        if result.ok and self.rng.random() < rates.partial:
            self.faults["partial"] += 1
            result = ToolResult(ok=True, content=_truncate(result.content, self.rng))
        return result


SIM_PROMPT = """You simulate the backend of a software tool. Given the tool's definition, the current
state of the world and the call, reply with ONLY the JSON the tool returns (no prose). If the call
is invalid in this world, reply with {{"error": "<short reason>"}}.
Tool: {tool}
State: {state}
Earlier calls: {history}
Call arguments: {args}"""


class LLMToolSimulator:
    """A world model: the LLM plays the tool from its spec, the state and the call history.

    Its answer must be JSON; anything else is a tool error recorded in the episode, never a crash.
    The simulated world does not change state (the rubric checks only what a real runtime did).
    """

    def __init__(self, engine: Engine, max_tokens: int = 256, temperature: float = 0.3):
        self.engine = engine
        self.params = SamplingParams(max_tokens=max_tokens, temperature=temperature)

    def simulate(self, tool: ToolDef, arguments: dict, state: dict, history: list[CallRecord]) -> ToolResult:
        spec = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
        past = [{"tool": h.tool, "arguments": h.arguments, "ok": h.result.ok} for h in history[-5:]]
        prompt = SIM_PROMPT.format(
            tool=json.dumps(spec),
            state=json.dumps(state)[:4000],
            history=json.dumps(past),
            args=json.dumps(arguments),
        )
        request = GenerationRequest(messages=[Message(role="user", content=prompt)], params=self.params)
        completion = self.engine.generate([request])[0][0]
        if completion.finish_reason == "error":
            return ToolResult(ok=False, error=f"tool simulator failed: {completion.error}")
        text = (completion.content or completion.text).strip().removeprefix("```json").strip("`").strip()
        try:
            content = json.loads(text)
        except json.JSONDecodeError:
            return ToolResult(ok=False, error=f"tool simulator returned non-JSON output: {text[:80]!r}")
        if isinstance(content, dict) and set(content) == {"error"}:
            return ToolResult(ok=False, error=str(content["error"]))
        return ToolResult(ok=True, content=content)
