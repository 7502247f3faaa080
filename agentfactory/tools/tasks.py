"""Turn a domain's task templates into concrete `Task`s over seeded worlds."""

from __future__ import annotations

import random
from typing import Any

from agentfactory.records import Task
from agentfactory.tools import expr as ex
from agentfactory.tools.domain import Domain, TaskTemplate
from agentfactory.tools.runtime import ToolRuntime, world_functions
from agentfactory.tools.world import Generator, generate_world


def instantiate(
    domain: Domain, template: TaskTemplate, world_seed: int, state: dict | None = None
) -> Task | None:
    """A task for world `world_seed`, or None when the world has nothing to sample (e.g. no pending order).

    Sampling is seeded by (domain, template, world) so the same triple always gives the same task.
    """
    state = state if state is not None else generate_world(domain, world_seed)
    rng = random.Random(f"{domain.name}:{template.id}:{world_seed}")
    gen = Generator(rng.randrange(2**31))

    funcs = world_functions(rng, ToolRuntime.today_for(world_seed))
    names: dict[str, Any] = {}
    for var, spec in template.sample.items():
        value = ex.evaluate(spec, names, state, funcs) if isinstance(spec, str) else gen.value(spec, state)
        if value is None:
            return None
        names[var] = value
    return Task(
        id=f"{domain.name}.{template.id}.w{world_seed}",
        domain=domain.name,
        kind=template.kind,
        user_goal=str(ex.render(template.user_goal, names)),
        persona=template.persona,
        user_facts={k: ex.render(v, names) for k, v in template.user_facts.items()},
        initial_state=state,
        tools=template.tools or [t.name for t in domain.tools],
        rubric=template.rubric.to_rubric(names),
        blueprint=template.blueprint_for(names),
        meta={"template": template.id, "world_seed": world_seed, "vars": names, "category": domain.category},
    )


def sample_tasks(domain: Domain, world_seeds: range | list[int]) -> list[Task]:
    """Every template of the domain instantiated over each world (skipping inapplicable ones)."""
    out = []
    for seed in world_seeds:
        state = generate_world(domain, seed)
        for template in domain.tasks:
            task = instantiate(domain, template, seed, state)
            if task is not None:
                out.append(task)
    return out
