"""Tasks and rubrics written by an LLM from a domain, its tools and a concrete world.

Templates give exact, solvable tasks; an LLM gives variety. An LLM task is kept only if its
rubric and blueprint name existing tools, its final-state checks point at paths the state schema
allows, and the blueprint oracle passes the rubric on the task's world (so the task is solvable and
the rubric is not vacuous). Rejections are returned with their reasons.
"""

from __future__ import annotations

import json
import random
from typing import Any

from pydantic import Field, ValidationError

from agentfactory.config import StrictModel
from agentfactory.llm.base import Engine, GenerationRequest, SamplingParams
from agentfactory.llm.config import EngineConfig
from agentfactory.records import BlueprintCall, Message, Task, TaskKind
from agentfactory.synth.oracle import play_blueprint
from agentfactory.tools.checks import score_trajectory
from agentfactory.tools.domain import Domain, RubricSpec, TaskTemplate
from agentfactory.tools.loader import schema_at


class LLMTaskConfig(StrictModel):
    engine: EngineConfig
    per_world: int = Field(2, ge=1, description="LLM tasks requested per domain and world")
    max_tokens: int = Field(1024, ge=64)
    temperature: float = Field(0.8, ge=0)


class LLMTaskDraft(StrictModel):
    kind: TaskKind
    user_goal: str = Field(min_length=5)
    persona: str = ""
    user_facts: dict[str, str] = Field(default_factory=dict)
    blueprint: list[BlueprintCall] = Field(default_factory=list)
    answer_facts: list[str] = Field(default_factory=list)
    rubric: RubricSpec


PROMPT = """You write evaluation tasks for a customer-service agent.
Service: {description}
Policy:
{policy}
Tools (name: description; parameters):
{tools}
Current state of the world (JSON, excerpt):
{world}

Write ONE new task of kind "{kind}" grounded in this exact world. Answer with only JSON:
{{"kind": "{kind}", "user_goal": "what the user asks", "persona": "...",
 "user_facts": {{"fact": "value the user reveals only when asked"}},
 "blueprint": [{{"tool": "tool_name", "args": {{...}}}}],
 "answer_facts": ["short strings a correct final answer contains"],
 "rubric": {{"final_state": {{"/json/pointer": expected_value}}, "must_call": ["tool"], "must_not_call": ["tool"],
             "answer_contains": ["..."]}}}}"""

KINDS: tuple[str, ...] = ("single_call", "multi_step", "clarification", "refusal", "impossible")


def _world_excerpt(state: dict, per_collection: int = 3, limit: int = 3000) -> str:
    excerpt = {}
    for key, value in state.items():
        if isinstance(value, dict):
            excerpt[key] = dict(list(value.items())[:per_collection])
        elif isinstance(value, list):
            excerpt[key] = value[:per_collection]
        else:
            excerpt[key] = value
    return json.dumps(excerpt, ensure_ascii=False)[:limit]


def validate_draft(
    draft: LLMTaskDraft, domain: Domain, state: dict, world_seed: int
) -> tuple[Task | None, str | None]:
    """(task, None) if the draft references real tools and paths and its blueprint passes; else (None, why)."""
    tools = {t.name for t in domain.tools}
    named = [c.tool for c in draft.blueprint] + [t for _, t in draft.rubric.tools_named()]
    unknown = sorted(set(named) - tools)
    if unknown:
        return None, f"unknown tools {unknown}"
    for path in draft.rubric.final_state:
        _, problem = schema_at(domain.state.schema_, path)
        if problem:
            return None, problem
    if not draft.rubric.final_state and not draft.rubric.tools_named() and not draft.rubric.answer_contains:
        return None, "the rubric checks nothing"
    template = TaskTemplate(
        id="llm",
        kind=draft.kind,
        user_goal=draft.user_goal.replace("{", "(").replace("}", ")"),
        persona=draft.persona,
        blueprint=draft.blueprint,
        answer_facts=[f.replace("{", "(").replace("}", ")") for f in draft.answer_facts],
        rubric=draft.rubric,
    )
    try:
        rubric = template.rubric.to_rubric({})
        blueprint = template.blueprint_for({})
    except ValueError as e:  # templates with {placeholders} the LLM should not have used
        return None, f"rubric or blueprint uses variables: {e}"
    task = Task(
        id="",
        domain=domain.name,
        kind=draft.kind,
        user_goal=template.user_goal,
        persona=draft.persona,
        user_facts=draft.user_facts,
        initial_state=state,
        tools=[t.name for t in domain.tools],
        rubric=rubric,
        blueprint=blueprint,
        meta={"template": "llm", "world_seed": world_seed, "category": domain.category},
    )
    traj, runtime = play_blueprint(task, domain)
    score, results, _ = score_trajectory(rubric, traj, runtime.state)
    if score < 1.0:
        return None, "the blueprint fails the rubric: " + "; ".join(r.detail for r in results if not r.passed)
    return task, None


def generate_llm_tasks(
    engine: Engine, domain: Domain, state: dict, world_seed: int, config: LLMTaskConfig
) -> tuple[list[Task], list[dict[str, Any]]]:
    """Ask for `per_world` tasks of rotating kinds; returns (kept tasks, rejected drafts with reasons)."""
    rng = random.Random(f"{domain.name}:{world_seed}:llm")
    tools = "\n".join(
        f"- {t.name}: {t.description}; {json.dumps(t.parameters.get('properties', {}))}" for t in domain.tools
    )
    requests = []
    kinds = [KINDS[(world_seed + i) % len(KINDS)] for i in range(config.per_world)]
    for kind in kinds:
        prompt = PROMPT.format(
            description=domain.description,
            policy=domain.policy,
            tools=tools,
            world=_world_excerpt(state),
            kind=kind,
        )
        params = SamplingParams(
            temperature=config.temperature, max_tokens=config.max_tokens, seed=rng.randrange(2**31)
        )
        requests.append(GenerationRequest(messages=[Message(role="user", content=prompt)], params=params))
    kept, rejected = [], []
    for i, (completion, *_) in enumerate(engine.generate(requests)):
        text = completion.content if completion.content is not None else completion.text
        try:
            if completion.finish_reason == "error":
                raise ValueError(completion.error or "engine error")
            start, end = text.find("{"), text.rfind("}")
            draft = LLMTaskDraft.model_validate(json.loads(text[start : end + 1]))
            task, why = validate_draft(draft, domain, state, world_seed)
        except (ValueError, ValidationError) as e:
            task, why = None, f"unusable reply: {str(e).splitlines()[0][:200]}"
        if task is None:
            rejected.append(
                {
                    "domain": domain.name,
                    "world_seed": world_seed,
                    "kind": kinds[i],
                    "reason": why,
                    "reply": text[:2000],
                }
            )
            continue
        kept.append(task.model_copy(update={"id": f"{domain.name}.llm{i}.w{world_seed}"}))
    return kept, rejected
