"""Execute tool calls against a world: validate arguments, check errors and preconditions, apply effects.

A call never raises for bad input: unknown tools, arguments that fail the tool's JSON Schema,
declared errors, failed preconditions and failing effects all become a `ToolResult` with
`ok=False` and a message the agent sees (and can recover from). A failed call changes nothing.

Modes (per tool): `declarative` (let → errors → requires → effect → returns, all from YAML),
`real` (a Python `impl`, called with the arguments and, if it asks for it, the `state`), and
`simulated` (delegated to a `ToolSimulator`, e.g. the LLM world model of the synthesis stage).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import importlib
import inspect
import json
import random
from collections.abc import Callable
from typing import Any, Protocol

import jsonpatch
import jsonschema

from agentfactory.config import StrictModel
from agentfactory.records import JSON
from agentfactory.tools import expr as ex
from agentfactory.tools.domain import Domain, ToolDef
from agentfactory.tools.world import world_of


class ToolResult(StrictModel):
    ok: bool
    content: JSON = None
    error: str | None = None

    def to_message_content(self) -> str:
        """What the agent reads in the tool turn."""
        if not self.ok:
            return f"Error: {self.error}"
        return self.content if isinstance(self.content, str) else json.dumps(self.content, ensure_ascii=False)


class CallRecord(StrictModel):
    tool: str
    arguments: JSON
    result: ToolResult


class ToolSimulator(Protocol):
    """Plays a tool as a world model (e.g. an LLM given the spec, the state and the call history)."""

    def simulate(
        self, tool: ToolDef, arguments: dict, state: dict, history: list[CallRecord]
    ) -> ToolResult: ...


def state_hash(state: Any) -> str:
    """A stable hash of a state document (key order and whitespace do not matter)."""
    canonical = json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _with_defaults(schema: dict, args: dict) -> dict:
    """Omitted optional arguments take their schema `default`, else None (so expressions can test them)."""
    out = dict(args)
    for name, prop in schema.get("properties", {}).items():
        if name not in out:
            out[name] = (
                copy.deepcopy(prop["default"]) if isinstance(prop, dict) and "default" in prop else None
            )
    return out


def world_functions(rng: random.Random, today: dt.date) -> dict[str, Callable]:
    """The runtime functions of expressions that need a world: seeded `pick`, `today()`, `now()`."""

    def pick(coll: Any) -> Any:
        if isinstance(coll, dict):
            return rng.choice(sorted(coll)) if coll else None
        return rng.choice(list(coll)) if coll else None

    return {
        "pick": pick,
        "today": lambda: today.isoformat(),
        "now": lambda: dt.datetime.combine(today, dt.time(9, 0)).isoformat(),
    }


def _load_impl(ref: str) -> Callable:
    module, _, fn = ref.partition(":")
    return getattr(importlib.import_module(module), fn)


class ToolRuntime:
    """One episode's tools over one world. Deterministic for a (domain, seed)."""

    def __init__(
        self,
        domain: Domain,
        seed: int = 0,
        state: dict | None = None,
        simulator: ToolSimulator | None = None,
        simulate_all: bool = False,
    ):
        self.domain = domain
        self.seed = seed
        self.state = copy.deepcopy(state) if state is not None else world_of(domain, seed)
        self.simulator = simulator
        self.simulate_all = simulate_all  # every tool played by the simulator (a world-model run)
        self.history: list[CallRecord] = []
        self.rng = random.Random(f"{domain.name}:{seed}:calls")
        self.today = self.today_for(seed)
        self._validators = {t.name: jsonschema.Draft202012Validator(t.parameters) for t in domain.tools}
        self._issued: set[str] = set()  # ids handed out by new_id() during the current call

    @staticmethod
    def today_for(seed: int) -> dt.date:
        """The calendar date of world `seed` (deterministic, so rubrics over dates are stable)."""
        return dt.date(2025, 1, 1) + dt.timedelta(days=seed % 365)

    # -- helpers the expressions can call ------------------------------------------------------
    def _functions(self) -> dict[str, Callable]:
        return world_functions(self.rng, self.today) | {"new_id": self._new_id}

    def _new_id(self, prefix: str = "", collection: str | None = None) -> str:
        """The smallest free id `prefix + number` (from 1001) in `collection` (a pointer), if given.

        Derived from the state, not a counter, so failed calls consume nothing and ids are
        reproducible; ids handed out earlier in the same call are skipped too.
        """
        taken = ex.resolve_pointer(self.state, collection) if collection else None
        n = 1000
        while True:
            n += 1
            key = f"{prefix}{n}"
            if key not in self._issued and not (taken and key in taken):
                self._issued.add(key)
                return key

    # -- the public surface --------------------------------------------------------------------
    def snapshot(self) -> dict:
        return copy.deepcopy(self.state)

    def state_hash(self) -> str:
        return state_hash(self.state)

    def call(self, name: str, arguments: Any) -> ToolResult:
        """Execute one call and record it; never raises for bad input."""
        result = self._call(name, arguments)
        self.history.append(CallRecord(tool=name, arguments=copy.deepcopy(arguments), result=result))
        return result

    def _call(self, name: str, arguments: Any) -> ToolResult:
        self._issued = set()
        tool = next((t for t in self.domain.tools if t.name == name), None)
        if tool is None:
            available = ", ".join(t.name for t in self.domain.tools)
            return ToolResult(ok=False, error=f"unknown tool '{name}' (available: {available})")
        if not isinstance(arguments, dict):
            return ToolResult(ok=False, error=f"arguments of {name} must be a JSON object")
        problems = sorted(self._validators[name].iter_errors(arguments), key=lambda e: list(e.absolute_path))
        if problems:
            detail = "; ".join(
                (f"{'/'.join(map(str, e.absolute_path))}: " if e.absolute_path else "") + e.message
                for e in problems
            )
            return ToolResult(ok=False, error=f"invalid arguments for {name}: {detail}")
        args = _with_defaults(tool.parameters, arguments)
        mode = "simulated" if self.simulate_all else tool.exec_mode
        if mode == "simulated":
            if self.simulator is None:
                return ToolResult(
                    ok=False, error=f"{name} is a simulated tool and no simulator is configured"
                )
            return self.simulator.simulate(tool, args, self.state, self.history)
        if mode == "real":
            return self._call_python(tool, args)
        try:
            return self._call_declarative(tool, args)
        except ex.ExprError as e:  # a domain bug surfaces as a tool error, recorded with the episode
            return ToolResult(ok=False, error=f"{name} failed: {e}")

    def _call_python(self, tool: ToolDef, args: dict) -> ToolResult:
        fn = _load_impl(tool.impl)
        kwargs = dict(args)
        if "state" in inspect.signature(fn).parameters:
            kwargs["state"] = work = copy.deepcopy(self.state)
        try:
            content = fn(**kwargs)
        except (ValueError, KeyError, LookupError) as e:  # the impl's way of declaring an error
            return ToolResult(ok=False, error=str(e).strip("'\"") or type(e).__name__)
        except Exception as e:
            return ToolResult(ok=False, error=f"{tool.name} crashed: {type(e).__name__}: {e}")
        if "state" in kwargs:
            self.state = work
        return ToolResult(ok=True, content=content)

    def _call_declarative(self, tool: ToolDef, args: dict) -> ToolResult:
        names = dict(args)
        funcs = self._functions()
        for var, src in tool.let.items():
            try:
                names[var] = ex.evaluate(src, names, self.state, funcs)
            except ex.ExprError:  # e.g. arithmetic on a missing record: declared errors come next
                names[var] = None
        for rule in tool.errors:
            if ex.evaluate(rule.when, names, self.state, funcs):
                return ToolResult(ok=False, error=str(ex.render(rule.message, names)))
        for req in tool.requirements:
            if not ex.evaluate(req.that, names, self.state, funcs):
                message = ex.render(req.message, names) if req.message else f"precondition failed: {req.that}"
                return ToolResult(ok=False, error=str(message))
        if tool.effect:
            ops = []
            for op in tool.effect:
                rendered: dict[str, Any] = {"op": op.op, "path": ex.render(op.path, names, pointer=True)}
                if op.from_:
                    rendered["from"] = ex.render(op.from_, names, pointer=True)
                if op.op in ("add", "replace", "test"):
                    rendered["value"] = self._value(op.value, names, funcs)
                ops.append(rendered)
            try:
                self.state = jsonpatch.apply_patch(self.state, ops, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                return ToolResult(ok=False, error=f"{tool.name} could not be applied: {e}")
        return ToolResult(ok=True, content=self._returns(tool, names, funcs))

    def _value(self, value: Any, names: dict, funcs: dict) -> Any:
        if isinstance(value, dict) and set(value) == {"expr"}:
            return ex.evaluate(value["expr"], names, self.state, funcs)
        if isinstance(value, dict):
            return {k: self._value(v, names, funcs) for k, v in value.items()}
        if isinstance(value, list):
            return [self._value(v, names, funcs) for v in value]
        return ex.render_value(value, names)

    def _returns(self, tool: ToolDef, names: dict, funcs: dict) -> Any:
        if tool.returns is None:
            return {"status": "ok"}
        if isinstance(tool.returns, str):
            return copy.deepcopy(ex.evaluate(tool.returns, names, self.state, funcs))
        return {
            k: copy.deepcopy(ex.evaluate(src, names, self.state, funcs)) for k, src in tool.returns.items()
        }
