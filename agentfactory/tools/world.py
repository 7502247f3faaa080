"""Seeded random worlds from a domain's `state.generate` rules (faker-backed, reproducible).

The same (domain, seed) always yields the same world, so a task, its rubric and a recorded
trajectory can be replayed exactly; different seeds give held-out worlds for evaluation.
"""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import random
from functools import lru_cache
from typing import Any

import jsonschema

from agentfactory.tools.domain import (
    ChoiceGen,
    ConstGen,
    Domain,
    FakerGen,
    ListGen,
    ObjectGen,
    RangeGen,
    RefGen,
    TemplateGen,
)
from agentfactory.tools.expr import resolve_pointer


class WorldError(ValueError):
    """A generator that cannot produce a value (a domain bug, reported with its location)."""


@lru_cache(maxsize=1)
def _faker() -> Any:
    from faker import Faker  # slow to import; only world generation needs it

    return Faker()


def _jsonable(v: Any) -> Any:
    if isinstance(v, dt.date | dt.datetime | dt.time):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, tuple | set):
        return [_jsonable(x) for x in v]
    return v


class Generator:
    """Evaluates generators with one seeded RNG and one seeded faker instance."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.fake = _faker()
        self.fake.seed_instance(seed)

    def value(self, gen: Any, state: dict, n: int = 0, record: dict | None = None) -> Any:
        match gen:
            case FakerGen():
                provider = getattr(self.fake, gen.faker, None)
                if provider is None or not callable(provider):
                    raise WorldError(f"faker has no provider '{gen.faker}'")
                return _jsonable(provider(**gen.args))
            case ChoiceGen():
                return copy.deepcopy(self.rng.choices(gen.choice, weights=gen.weights)[0])
            case RangeGen():
                lo, hi = gen.range
                if gen.decimals == 0:
                    return self.rng.randint(int(lo), int(hi))
                return round(self.rng.uniform(lo, hi), gen.decimals)
            case RefGen():
                coll = resolve_pointer(state, gen.ref)
                keys = sorted(coll) if isinstance(coll, dict) else list(range(len(coll or [])))
                if not keys:
                    raise WorldError(f"ref {gen.ref} points at an empty or missing collection")
                return self.rng.choice(keys)
            case TemplateGen():
                try:
                    return gen.template.format(n=n, **(record or {}))
                except (KeyError, IndexError, ValueError) as e:
                    raise WorldError(f"template {gen.template!r}: {e}") from None
            case ListGen():
                k = self.rng.randint(gen.min, max(gen.min, gen.max))
                out: list = []
                for _ in range(k * 10 if gen.unique else k):
                    v = self.value(gen.list, state, n, record)
                    if not gen.unique or v not in out:
                        out.append(v)
                    if len(out) == k:
                        break
                return out
            case ObjectGen():
                obj: dict = {}
                for key, sub in gen.object.items():
                    obj[key] = self.value(sub, state, n, {**(record or {}), **obj})
                return obj
            case ConstGen():
                return copy.deepcopy(gen.const)
            case _:
                return copy.deepcopy(gen)


_WORLDS_CACHED = 256  # per domain: a few MB at most


def world_of(domain: Domain, seed: int) -> dict:
    """A fresh copy of world `seed`, generated once per domain object: an episode's cross-domain
    tools each need a world, and generating one (~7 ms) cost ~20 % of a synthesis episode where a
    deep copy costs ~0.1 ms. Episodes mutate their world, hence the copy."""
    cache = domain._worlds
    if seed not in cache:
        if len(cache) >= _WORLDS_CACHED:
            cache.clear()
        cache[seed] = generate_world(domain, seed)
    return copy.deepcopy(cache[seed])


def generate_world(domain: Domain, seed: int) -> dict:
    """The initial state of world `seed`: the domain's seed merged with generated collections."""
    g = Generator(seed)
    state = copy.deepcopy(domain.state.seed)
    for name, coll in domain.state.generate.items():
        lo, hi = (coll.count, coll.count) if isinstance(coll.count, int) else coll.count
        records = state.setdefault(name, {})
        for i in range(g.rng.randint(lo, hi)):
            record: dict = {}
            for field, gen in coll.fields.items():
                try:
                    record[field] = g.value(gen, state, i + 1, record)
                except WorldError as e:
                    raise WorldError(f"{domain.name}: state.generate.{name}.fields.{field}: {e}") from None
            for _ in range(100):  # keys must be unique within the collection
                key = str(g.value(coll.key, state, i + 1, record))
                if key not in records:
                    break
            else:
                raise WorldError(f"{domain.name}: state.generate.{name}.key: cannot make a unique key")
            records[key] = record
    errors = sorted(jsonschema.Draft202012Validator(domain.state.schema_).iter_errors(state), key=str)
    if errors:
        where = "/" + "/".join(map(str, errors[0].absolute_path))
        raise WorldError(
            f"{domain.name}: world {seed} does not match the state schema at {where}: {errors[0].message}"
        )
    return state
