"""The records every stage exchanges (DESIGN §2): tools, messages, tasks, rubrics, trajectories.

All are strict pydantic models that round-trip to JSON and to the OpenAI chat-completions format.
Tool-call `arguments` are a dict in memory and a JSON *string* on export (the OpenAI convention),
which avoids the type drift (dict vs string) that breaks chat templates downstream.
Failures are data: a trajectory that errored or was cut off is a record with a status, not an
exception.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from agentfactory.config import StrictModel

JSON = Any  # any JSON-serializable value


class ToolSpec(StrictModel):
    """A callable tool as the agent sees it, plus where it came from."""

    name: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$", description="OpenAI-compatible function name"
    )
    description: str = ""
    parameters: dict[str, JSON] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    returns: JSON | None = Field(None, description="what the tool returns (schema or pointer), informational")
    source: Literal["yaml", "mcp", "synthetic", "python"] = "yaml"
    domain: str = ""
    category: str = ""
    provenance: dict[str, JSON] = Field(default_factory=dict, description="e.g. MCP server name and command")

    def to_openai(self) -> dict:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    @classmethod
    def from_openai(cls, tool: dict, **extra: Any) -> ToolSpec:
        fn = tool.get("function", tool)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        return cls(name=fn["name"], description=fn.get("description", ""), parameters=params, **extra)


class ToolCall(StrictModel):
    id: str
    name: str
    arguments: dict[str, JSON] = Field(default_factory=dict)

    def to_openai(self) -> dict:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }

    @classmethod
    def from_openai(cls, call: dict) -> ToolCall:
        args = call["function"].get("arguments") or "{}"
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError as e:
                raise ValueError(f"tool call {call.get('id')!r}: arguments are not valid JSON: {e}") from None
        if not isinstance(args, dict):
            raise ValueError(f"tool call {call.get('id')!r}: arguments must be a JSON object")
        return cls(id=call["id"], name=call["function"]["name"], arguments=args)


Role = Literal["system", "user", "assistant", "tool"]


class Message(StrictModel):
    role: Role
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    weight: Literal[0, 1] | None = Field(
        None, description="assistant turns: 0 = context, not trained on (OpenAI fine-tuning's `weight`)"
    )

    @field_validator("tool_calls")
    @classmethod
    def _no_empty_calls(cls, v: list[ToolCall] | None) -> list[ToolCall] | None:
        return v or None

    def to_openai(self) -> dict:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.role == "assistant" and self.tool_calls:
            out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.role == "tool":
            out["tool_call_id"] = self.tool_call_id or ""
            out["content"] = self.content or ""
        if self.name is not None and self.role != "tool":
            out["name"] = self.name
        if self.role in ("system", "user"):
            out["content"] = self.content or ""
        if self.weight is not None and self.role == "assistant":
            out["weight"] = self.weight
        return out

    @classmethod
    def from_openai(cls, msg: dict) -> Message:
        content = msg.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
        calls = [ToolCall.from_openai(c) for c in msg.get("tool_calls") or []]
        return cls(
            role=msg["role"],
            content=content,
            tool_calls=calls or None,
            tool_call_id=msg.get("tool_call_id"),
            name=msg.get("name") if msg["role"] != "tool" else None,
            weight=msg.get("weight"),
        )


# ---------------------------------------------------------------------------------------------
# Rubrics: programmatic checks wherever possible, free-text LLM criteria otherwise.


class _Check(StrictModel):
    weight: float = Field(1.0, ge=0, description="relative weight in the rubric score")


class FinalStateCheck(_Check):
    """The end state has `equals` at JSON pointer `path`."""

    kind: Literal["final_state"] = "final_state"
    path: str = Field(pattern=r"^(/.*)?$")
    equals: JSON


class MustCallCheck(_Check):
    """The agent called `tool`, with arguments that include `args` (subset match) if given."""

    kind: Literal["must_call"] = "must_call"
    tool: str
    args: dict[str, JSON] | None = None


class MustNotCallCheck(_Check):
    kind: Literal["must_not_call"] = "must_not_call"
    tool: str


class CallOrderCheck(_Check):
    """`tools` appear in this relative order among the agent's calls (other calls may interleave)."""

    kind: Literal["call_order"] = "call_order"
    tools: list[str] = Field(min_length=2)


class AnswerContainsCheck(_Check):
    """The agent's final answer contains `text` (case-insensitive by default)."""

    kind: Literal["answer_contains"] = "answer_contains"
    text: str
    case_sensitive: bool = False


class AnswerMatchesCheck(_Check):
    """The agent's final answer matches the regular expression `pattern`."""

    kind: Literal["answer_matches"] = "answer_matches"
    pattern: str


class LLMCriterion(_Check):
    """A free-text criterion scored by an LLM judge (no programmatic check possible)."""

    kind: Literal["llm_criterion"] = "llm_criterion"
    criterion: str


Check = Annotated[
    FinalStateCheck
    | MustCallCheck
    | MustNotCallCheck
    | CallOrderCheck
    | AnswerContainsCheck
    | AnswerMatchesCheck
    | LLMCriterion,
    Field(discriminator="kind"),
]


class Rubric(StrictModel):
    checks: list[Check] = Field(default_factory=list)

    @property
    def programmatic(self) -> list[Check]:
        return [c for c in self.checks if c.kind != "llm_criterion"]

    @property
    def llm_criteria(self) -> list[LLMCriterion]:
        return [c for c in self.checks if c.kind == "llm_criterion"]


class BlueprintCall(StrictModel):
    """One expected tool call of a reference solution (APIGen-MT's blueprint)."""

    tool: str
    args: dict[str, JSON] = Field(default_factory=dict)


class Blueprint(StrictModel):
    calls: list[BlueprintCall] = Field(default_factory=list)
    answer_facts: list[str] = Field(default_factory=list, description="facts the final answer must state")


TaskKind = Literal["single_call", "multi_step", "clarification", "refusal", "impossible"]


class Task(StrictModel):
    """A user goal in a concrete world, with the rubric that decides success."""

    id: str
    domain: str
    kind: TaskKind = "multi_step"
    user_goal: str
    persona: str = ""
    user_facts: dict[str, JSON] = Field(
        default_factory=dict, description="facts the user knows but reveals only when asked"
    )
    initial_state: dict[str, JSON] = Field(default_factory=dict)
    tools: list[str] = Field(default_factory=list, description="names of the tools the agent may use")
    rubric: Rubric = Field(default_factory=Rubric)
    blueprint: Blueprint | None = None
    meta: dict[str, JSON] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Trajectories and their verdicts.


class RolloutStatus(StrEnum):
    completed = "completed"  # the episode ended normally (answer given / user stopped)
    truncated = "truncated"  # hit max turns or the token budget
    aborted = "aborted"  # stopped on purpose (e.g. user simulator gave up, shutdown)
    error = "error"  # an infrastructure failure, recorded rather than raised
    partial = "partial"  # paused mid-generation; resumed by a later RL iteration


class RewardBreakdown(StrictModel):
    total: float = 0.0
    components: dict[str, float] = Field(default_factory=dict)
    weights: dict[str, float] = Field(default_factory=dict)

    @classmethod
    def combine(cls, components: dict[str, float], weights: dict[str, float]) -> RewardBreakdown:
        """Weighted sum; components without a weight are metrics (weight 0)."""
        total = sum(weights.get(k, 0.0) * v for k, v in components.items())
        return cls(total=total, components=dict(components), weights=dict(weights))


class CheckResult(StrictModel):
    kind: str
    passed: bool
    score: float = Field(ge=0, le=1)
    weight: float = 1.0
    detail: str = ""


class JudgeVerdict(StrictModel):
    accepted: bool
    score: float = Field(ge=0, le=1)
    checks: list[CheckResult] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list, description="why rejected (empty when accepted)")
    votes: list[float] = Field(default_factory=list, description="per-vote LLM scores, if any")
    judge_model: str | None = None


class Trajectory(StrictModel):
    task_id: str
    messages: list[Message]
    tools: list[ToolSpec] = Field(default_factory=list)
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    policy_version: int = 0
    status: RolloutStatus = RolloutStatus.completed
    reward: RewardBreakdown | None = None
    judge: JudgeVerdict | None = None
    meta: dict[str, JSON] = Field(default_factory=dict)

    def to_openai(self) -> dict:
        """The conversation as OpenAI chat-completions `messages` + `tools`."""
        return {
            "messages": [m.to_openai() for m in self.messages],
            "tools": [t.to_openai() for t in self.tools],
        }

    @classmethod
    def from_openai(
        cls, task_id: str, messages: list[dict], tools: list[dict] = (), **fields: Any
    ) -> Trajectory:
        return cls(
            task_id=task_id,
            messages=[Message.from_openai(m) for m in messages],
            tools=[ToolSpec.from_openai(t) for t in tools],
            **fields,
        )

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [c for m in self.messages if m.role == "assistant" for c in m.tool_calls or []]

    @property
    def final_answer(self) -> str:
        """The last assistant text (what answer checks look at)."""
        for m in reversed(self.messages):
            if m.role == "assistant" and m.content:
                return m.content
        return ""
