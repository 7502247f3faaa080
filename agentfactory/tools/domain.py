"""The domain YAML model (DESIGN §3): a small stateful world, its tools and its task templates.

A domain author writes one YAML file; this module is its grammar. The JSON Schema in
`tools_repo/schema/domain.schema.json` is generated from these models (`python -m
agentfactory.tools.schema`), so editors can validate and complete domain files. Semantic rules
that a schema cannot express (pointers resolve, tools exist, ...) live in `loader.py`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, PrivateAttr, Tag, model_validator

from agentfactory.config import StrictModel
from agentfactory.records import (
    JSON,
    AnswerContainsCheck,
    AnswerMatchesCheck,
    Blueprint,
    BlueprintCall,
    CallOrderCheck,
    FinalStateCheck,
    LLMCriterion,
    MustCallCheck,
    MustNotCallCheck,
    Rubric,
    TaskKind,
    ToolSpec,
)
from agentfactory.tools.expr import render, render_value

NAME = r"^[a-z][a-z0-9_]{1,63}$"
POINTER = r"^(/[^/]*)+$"

# ---------------------------------------------------------------------------------------------
# World generation: each field of a generated record is a generator or a literal value.


class FakerGen(StrictModel):
    """A value from a `faker` provider, e.g. `{faker: email}` or `{faker: bothify, args: {text: "#W####"}}`."""

    faker: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    args: dict[str, JSON] = Field(default_factory=dict)


class ChoiceGen(StrictModel):
    """One of the listed values, optionally weighted."""

    choice: list[JSON] = Field(min_length=1)
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _weights_match(self) -> ChoiceGen:
        if self.weights is not None and len(self.weights) != len(self.choice):
            raise ValueError(f"weights has {len(self.weights)} entries but choice has {len(self.choice)}")
        return self


class RangeGen(StrictModel):
    """A uniform number in [lo, hi]; an int when `decimals` is 0."""

    range: tuple[float, float]
    decimals: int = Field(0, ge=0, le=6)


class RefGen(StrictModel):
    """A random key of an already generated (or seeded) collection, e.g. `{ref: /users}`."""

    ref: str = Field(pattern=POINTER)


class TemplateGen(StrictModel):
    """A string from a template over the record's index `n` and earlier fields: `{template: "u{n}"}`."""

    template: str


class ListGen(StrictModel):
    """A list of `min`..`max` generated values."""

    list: Gen
    min: int = Field(1, ge=0)
    max: int = Field(3, ge=0)
    unique: bool = False


class ObjectGen(StrictModel):
    """A nested object whose fields are generated."""

    object: dict[str, Gen]


class ConstGen(StrictModel):
    """A fixed value, including an object: `{const: {currency: EUR}}`."""

    const: JSON


_GEN_KEYS = ("faker", "choice", "range", "ref", "template", "list", "object", "const")


def _gen_tag(v: Any) -> str:
    if isinstance(v, dict):
        for key in _GEN_KEYS:
            if key in v:
                return key
        return "unknown generator (expected one of: " + ", ".join(_GEN_KEYS) + ")"
    if isinstance(v, StrictModel):
        return type(v).__name__.removesuffix("Gen").lower()
    return "literal"


Gen = Annotated[
    Annotated[FakerGen, Tag("faker")]
    | Annotated[ChoiceGen, Tag("choice")]
    | Annotated[RangeGen, Tag("range")]
    | Annotated[RefGen, Tag("ref")]
    | Annotated[TemplateGen, Tag("template")]
    | Annotated[ListGen, Tag("list")]
    | Annotated[ObjectGen, Tag("object")]
    | Annotated[ConstGen, Tag("const")]
    | Annotated[str | int | float | bool | list | None, Tag("literal")],
    Discriminator(_gen_tag),
]
ListGen.model_rebuild()
ObjectGen.model_rebuild()


class CollectionGen(StrictModel):
    """A generated collection: `count` records keyed by `key`, each with generated `fields`."""

    count: int | tuple[int, int] = Field(description="exact count, or [min, max]")
    key: Gen = Field(description="how to make each record's (unique) key, e.g. {template: 'u{n:03d}'}")
    fields: dict[str, Gen] = Field(default_factory=dict)


class StateSpec(StrictModel):
    schema_: dict[str, JSON] = Field(alias="schema", description="JSON Schema of the state document")
    seed: dict[str, JSON] = Field(default_factory=dict, description="fixed content every world starts with")
    generate: dict[str, CollectionGen] = Field(
        default_factory=dict, description="collections generated per world (in order), merged over the seed"
    )

    model_config = StrictModel.model_config | {"populate_by_name": True}


# ---------------------------------------------------------------------------------------------
# Tools.


class PatchOp(StrictModel):
    """An RFC 6902 JSON Patch operation; `path`/`from` are pointer templates, `value` may hold templates.

    A value `{expr: "..."}` is computed with the expression language (e.g. a new balance).
    """

    op: Literal["add", "remove", "replace", "move", "copy", "test"]
    path: str = Field(pattern=POINTER)
    value: JSON = None
    from_: str | None = Field(None, alias="from", pattern=POINTER)

    model_config = StrictModel.model_config | {"populate_by_name": True}

    @model_validator(mode="before")
    @classmethod
    def _fields_for_op(cls, data: Any) -> Any:
        if isinstance(data, dict) and "op" in data:
            op = data["op"]
            if op in ("add", "replace", "test") and "value" not in data:
                raise ValueError(f"op '{op}' needs a 'value'")
            if op in ("move", "copy") and "from" not in data and "from_" not in data:
                raise ValueError(f"op '{op}' needs a 'from' pointer")
            if op in ("remove", "move", "copy") and "value" in data:
                raise ValueError(f"op '{op}' takes no 'value'")
        return data


class ErrorRule(StrictModel):
    """A declared error: when `when` holds, the call fails with `message` and changes nothing."""

    when: str = Field(description="expression, e.g. '!exists(/orders/{order_id})'")
    message: str = Field(description="template shown to the agent, e.g. 'order {order_id} not found'")


class Requirement(StrictModel):
    """A precondition: the call fails with `message` unless `that` holds."""

    that: str
    message: str | None = None


class ToolDef(StrictModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    description: str = Field(min_length=1)
    parameters: dict[str, JSON] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema of the arguments",
    )
    mode: Literal["declarative", "real", "simulated"] | None = Field(
        None, description="how calls execute; default: real if `impl` is set, else declarative"
    )
    impl: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:function")
    let: dict[str, str] = Field(default_factory=dict, description="named expressions computed before effects")
    errors: list[ErrorRule] = Field(default_factory=list)
    requires: list[str | Requirement] = Field(default_factory=list)
    effect: list[PatchOp] = Field(default_factory=list)
    returns: str | dict[str, str] | None = Field(
        None, description="expression (a pointer, or e.g. where(...)), or a mapping of key → expression"
    )

    @property
    def exec_mode(self) -> str:
        return self.mode or ("real" if self.impl else "declarative")

    @property
    def requirements(self) -> list[Requirement]:
        return [r if isinstance(r, Requirement) else Requirement(that=r) for r in self.requires]

    def spec(self, domain: str, category: str) -> ToolSpec:
        returns = self.returns if isinstance(self.returns, str | None) else dict(self.returns)
        source = "python" if self.impl else "yaml"
        return ToolSpec(
            name=self.name,
            description=self.description,
            parameters=self.parameters,
            returns=returns,
            source=source,
            domain=domain,
            category=category,
        )


# ---------------------------------------------------------------------------------------------
# Task templates with rubrics.


class MustCallSpec(StrictModel):
    tool: str
    args: dict[str, JSON] | None = None


class RubricSpec(StrictModel):
    """A rubric written compactly; strings may hold `{variables}` sampled for the task."""

    final_state: dict[str, JSON] = Field(
        default_factory=dict, description="pointer template → expected value"
    )
    must_call: list[str | MustCallSpec] = Field(default_factory=list)
    must_not_call: list[str] = Field(default_factory=list)
    call_order: list[str] = Field(default_factory=list)
    answer_contains: list[str] = Field(default_factory=list)
    answer_matches: list[str] = Field(default_factory=list)
    llm_criteria: list[str] = Field(default_factory=list)

    def tools_named(self) -> list[tuple[str, str]]:
        """(field, tool) pairs for every tool this rubric mentions."""
        out = [("must_call", c if isinstance(c, str) else c.tool) for c in self.must_call]
        out += [("must_not_call", t) for t in self.must_not_call]
        return out + [("call_order", t) for t in self.call_order]

    def to_rubric(self, names: dict[str, Any]) -> Rubric:
        checks: list = []
        for path, value in self.final_state.items():
            checks.append(
                FinalStateCheck(path=render(path, names, pointer=True), equals=render_value(value, names))
            )
        for c in self.must_call:
            spec = MustCallSpec(tool=c) if isinstance(c, str) else c
            args = render_value(spec.args, names) if spec.args is not None else None
            checks.append(MustCallCheck(tool=spec.tool, args=args))
        checks += [MustNotCallCheck(tool=t) for t in self.must_not_call]
        if self.call_order:
            checks.append(CallOrderCheck(tools=self.call_order))
        checks += [AnswerContainsCheck(text=str(render(t, names))) for t in self.answer_contains]
        checks += [AnswerMatchesCheck(pattern=str(render(p, names))) for p in self.answer_matches]
        checks += [LLMCriterion(criterion=str(render(c, names))) for c in self.llm_criteria]
        return Rubric(checks=checks)


class TaskTemplate(StrictModel):
    id: str = Field(pattern=NAME)
    kind: TaskKind
    user_goal: str = Field(min_length=1, description="template of what the user wants")
    persona: str = ""
    user_facts: dict[str, str] = Field(
        default_factory=dict, description="facts (templates) the user reveals only when asked"
    )
    sample: dict[str, str | Gen] = Field(
        default_factory=dict,
        description="variables, in order: an expression over the world and earlier variables, or a generator",
    )
    tools: list[str] | None = Field(None, description="tools offered to the agent (default: all)")
    blueprint: list[BlueprintCall] = Field(default_factory=list, description="reference solution (templates)")
    answer_facts: list[str] = Field(default_factory=list)
    rubric: RubricSpec = Field(default_factory=RubricSpec)

    def blueprint_for(self, names: dict[str, Any]) -> Blueprint:
        calls = [BlueprintCall(tool=c.tool, args=render_value(c.args, names)) for c in self.blueprint]
        return Blueprint(calls=calls, answer_facts=[str(render(f, names)) for f in self.answer_facts])


class Domain(StrictModel):
    """One YAML file in tools_repo/domains/."""

    name: str = Field(pattern=NAME)
    category: str = Field(description="one of tools_repo/categories.yaml")
    description: str = Field(min_length=1)
    policy: str = Field("", description="rules the agent must follow (part of its system prompt)")
    state: StateSpec
    tools: list[ToolDef] = Field(min_length=1)
    tasks: list[TaskTemplate] = Field(default_factory=list)
    _worlds: dict[int, dict] = PrivateAttr(default_factory=dict)  # world.world_of's cache

    def tool(self, name: str) -> ToolDef:
        for t in self.tools:
            if t.name == name:
                return t
        raise KeyError(f"domain '{self.name}' has no tool '{name}'")

    def tool_specs(self) -> list[ToolSpec]:
        return [t.spec(self.name, self.category) for t in self.tools]
