"""LLM hierarchical tool synthesis, as in K2: categories → domains → tool sets → a domain YAML.

For each category the model proposes domains; for each domain, a tool set (names, JSON Schemas,
behaviours); then it writes the domain file. A draft must pass the same loader as hand-written
domains, generate a world and let the blueprint oracle pass its own rubric on a few worlds;
otherwise the model gets one repair attempt with the exact errors, and a draft that still fails is
dropped with its reason. Every step is recorded, accepted or not. Runs on any `Engine`, as a Ray
actor per category (or in-process).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import Field

from agentfactory.config import ConfigError, StrictModel
from agentfactory.llm.base import Engine, GenerationRequest, SamplingParams
from agentfactory.records import Message
from agentfactory.synth.oracle import play_blueprint
from agentfactory.tools.checks import score_trajectory
from agentfactory.tools.loader import REPO_DIR, load_categories, load_domain_text
from agentfactory.tools.tasks import sample_tasks
from agentfactory.tools.world import WorldError

EXAMPLE = REPO_DIR / "domains" / "retail_orders.yaml"

DOMAINS_PROMPT = """Category: {category} — {description}
Propose {n} distinct, realistic software services in this category that a customer-service agent
could operate with tools. Answer with only a JSON list like
[{{"name": "snake_case_name", "description": "one sentence"}}]."""

TOOLSET_PROMPT = """Service: {name} — {description} (category: {category}).
Design its tool set: 6 to 9 tools that read and change a small world state (records keyed by id),
with meaningful errors (not found, wrong status, limits). Answer with only JSON:
{{"state": {{"collection": "what its records hold"}}, "tools": [{{"name": "...", "description": "...",
"parameters": {{JSON Schema}}, "behaviour": "what it reads or changes, and when it fails"}}]}}"""

YAML_PROMPT = """Write the agentfactory domain file for this service, following EXACTLY the format of the
example below (same keys: name, category, description, policy, state with schema/seed/generate,
tools with parameters/let/errors/requires/effect/returns, tasks with kind/user_goal/sample/blueprint/
answer_facts/rubric). Use name: {name} and category: {category}. Answer with only the YAML.

Tool set:
{toolset}

Example domain:
{example}"""

REPAIR_PROMPT = """The domain file you wrote is invalid:
{errors}

Here it is again:
{yaml}

Answer with only the corrected YAML."""


class ToolSynthConfig(StrictModel):
    categories: list[str] | None = Field(None, description="default: every category")
    per_category: int = Field(2, ge=1, description="domains proposed per category")
    worlds: int = Field(3, ge=1, description="worlds on which the oracle must pass every task")
    max_tokens: int = Field(4096, ge=64)
    temperature: float = Field(0.7, ge=0)
    seed: int = 0


class Draft(StrictModel):
    """One domain's path through synthesis, kept whether accepted or dropped."""

    category: str
    name: str
    description: str = ""
    toolset: Any = None
    yaml: str = ""
    repaired: bool = False
    accepted: bool = False
    stage: str = "domains"
    reason: str | None = None


def _extract(text: str, opener: str, closer: str) -> Any:
    """The first JSON value starting with `opener` in a model reply (code fences and prose tolerated)."""
    start = text.find(opener)
    end = text.rfind(closer)
    if start < 0 or end <= start:
        raise ValueError(f"no JSON {opener}...{closer} in the reply: {text[:80]!r}")
    return json.loads(text[start : end + 1])


def _yaml_block(text: str) -> str:
    m = re.search(r"```(?:ya?ml)?\s*\n(.*?)```", text, re.DOTALL)
    return (m.group(1) if m else text).strip() + "\n"


def check_domain(text: str, worlds: int, categories: dict[str, str]) -> str | None:
    """None if the YAML is a valid, executable, solvable domain; else the errors (one per line)."""
    try:
        domain = load_domain_text(text, "draft.yaml", categories)
    except ConfigError as e:
        return "\n".join(str(x) for x in e.errors[:20])
    if not domain.tasks:
        return "the domain has no tasks"
    try:
        tasks = sample_tasks(domain, range(worlds))
    except (WorldError, ValueError, TypeError) as e:
        return f"cannot generate worlds or tasks: {e}"
    missing = {t.id for t in domain.tasks} - {t.meta["template"] for t in tasks}
    if missing:
        return f"task templates that sample nothing in {worlds} worlds: {sorted(missing)}"
    for task in tasks:
        traj, runtime = play_blueprint(task, domain)
        score, results, _ = score_trajectory(task.rubric, traj, runtime.state)
        if score < 1.0:
            failed = "; ".join(r.detail for r in results if not r.passed)
            return f"task {task.id}: the blueprint does not pass its own rubric ({failed})"
    return None


class ToolSynthesizer:
    """Runs the category → domain → tool set → YAML chain for one category on an engine."""

    def __init__(self, engine: Engine, config: ToolSynthConfig):
        self.engine = engine
        self.config = config
        self.categories = load_categories()
        self.example = EXAMPLE.read_text()

    def _ask(self, prompt: str, salt: int) -> tuple[str, str | None]:
        params = SamplingParams(
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            seed=self.config.seed + salt,
        )
        c = self.engine.generate(
            [GenerationRequest(messages=[Message(role="user", content=prompt)], params=params)]
        )[0][0]
        if c.finish_reason == "error":
            return "", c.error or "engine error"
        return (c.content if c.content is not None else c.text), None

    def run_category(self, category: str) -> list[Draft]:
        desc = self.categories.get(category, "")
        text, error = self._ask(
            DOMAINS_PROMPT.format(category=category, description=desc, n=self.config.per_category), 0
        )
        try:
            if error:
                raise ValueError(error)
            proposals = [p for p in _extract(text, "[", "]") if isinstance(p, dict) and p.get("name")]
            if not proposals:
                raise ValueError("no domain proposals")
        except ValueError as e:
            return [Draft(category=category, name="?", stage="domains", reason=f"unusable domain list: {e}")]
        return [self.run_domain(category, p, i) for i, p in enumerate(proposals[: self.config.per_category])]

    def run_domain(self, category: str, proposal: dict, salt: int) -> Draft:
        name = re.sub(r"[^a-z0-9_]", "_", str(proposal["name"]).lower()).strip("_")[:60] or "domain"
        draft = Draft(
            category=category, name=name, description=str(proposal.get("description", "")), stage="toolset"
        )
        text, error = self._ask(
            TOOLSET_PROMPT.format(name=name, description=draft.description, category=category), 100 + salt
        )
        try:
            if error:
                raise ValueError(error)
            draft.toolset = _extract(text, "{", "}")
        except ValueError as e:
            draft.reason = f"unusable tool set: {e}"
            return draft
        draft.stage = "yaml"
        prompt = YAML_PROMPT.format(
            name=name, category=category, toolset=json.dumps(draft.toolset, indent=1), example=self.example
        )
        text, error = self._ask(prompt, 200 + salt)
        if error:
            draft.reason = f"no YAML: {error}"
            return draft
        draft.yaml = _yaml_block(text)
        problems = check_domain(draft.yaml, self.config.worlds, self.categories)
        if problems:
            draft.stage = "repair"
            text, error = self._ask(REPAIR_PROMPT.format(errors=problems, yaml=draft.yaml), 300 + salt)
            draft.repaired = True
            if error:
                draft.reason = f"repair failed: {error}; first errors: {problems[:300]}"
                return draft
            draft.yaml = _yaml_block(text)
            problems = check_domain(draft.yaml, self.config.worlds, self.categories)
        draft.stage = "done"
        draft.accepted = problems is None
        draft.reason = None if draft.accepted else f"invalid after repair: {problems[:500]}"
        return draft


def synthesize_tools(
    engine_factory: Any, config: ToolSynthConfig, out_dir: str | Path, use_ray: bool = True, workers: int = 2
) -> list[Draft]:
    """Run every category (a Ray actor each, `workers` at a time); write accepted YAMLs and a report.

    `engine_factory()` builds the engine inside each worker (engines are not shipped between processes).
    """
    categories = config.categories or list(load_categories())
    if use_ray:
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(address="local", include_dashboard=False, log_to_driver=False)

        @ray.remote(num_cpus=1)
        class Worker:
            def __init__(self) -> None:
                self.synth = ToolSynthesizer(engine_factory(), config)

            def run(self, category: str) -> list[Draft]:
                return self.synth.run_category(category)

        pool = [Worker.remote() for _ in range(min(workers, len(categories)))]
        refs = [pool[i % len(pool)].run.remote(c) for i, c in enumerate(categories)]
        drafts = [d for out in ray.get(refs) for d in out]
        if started:
            ray.shutdown()
    else:
        synth = ToolSynthesizer(engine_factory(), config)
        drafts = [d for c in categories for d in synth.run_category(c)]
    out = Path(out_dir)
    (out / "domains").mkdir(parents=True, exist_ok=True)
    for d in drafts:
        if d.accepted:
            (out / "domains" / f"{d.name}.yaml").write_text(d.yaml)
    (out / "drafts.jsonl").write_text("".join(d.model_dump_json() + "\n" for d in drafts))
    return drafts
