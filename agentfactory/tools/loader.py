"""Load and validate domain YAML files: JSON Schema first, then pydantic, then semantic rules.

Every problem is reported as `file:line:col: what is wrong (what is expected)`, all of them at
once, never as a traceback: domain authors fix their file from the messages alone.
"""

from __future__ import annotations

import ast
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from agentfactory.config import ConfigError, Loc, Positions, SourceError, load_yaml, parse_yaml, validate
from agentfactory.tools import expr as ex
from agentfactory.tools.domain import CollectionGen, Domain, ListGen, ObjectGen, RefGen, TaskTemplate, ToolDef

REPO_DIR = Path(os.environ.get("AGENTFACTORY_TOOLS_REPO", Path(__file__).resolve().parents[2] / "tools_repo"))
SCHEMA_PATH = REPO_DIR / "schema" / "domain.schema.json"


def domain_json_schema() -> dict:
    """The published JSON Schema of a domain file, generated from the pydantic model."""
    schema = Domain.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://agentfactory.dev/schema/domain.schema.json"
    return schema


@lru_cache(maxsize=4)
def load_categories(path: str | None = None) -> dict[str, str]:
    """Known categories (name → description) from tools_repo/categories.yaml."""
    data, _ = load_yaml(path or REPO_DIR / "categories.yaml")
    return {c["name"]: c.get("description", "") for c in data["categories"]}


def _schema_errors(data: Any, positions: Positions) -> list[SourceError]:
    validator = jsonschema.Draft202012Validator(domain_json_schema())
    out = []
    for err in validator.iter_errors(data):
        if err.context:
            err = best_match(err.context)
        loc = tuple(err.absolute_path)
        where = ".".join(str(p) for p in loc) or "<root>"
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = set(err.schema.get("properties", {}))
            for key in sorted(set(err.instance) - allowed):
                expected = ", ".join(sorted(allowed))
                out.append(
                    positions.error(
                        (*loc, key), f"{where}: unknown key '{key}' (expected one of: {expected})"
                    )
                )
            continue
        if err.validator == "required":
            out.append(positions.error(loc, f"{where}: {err.message}"))
            continue
        out.append(positions.error(loc, f"{where}: {err.message}"))
    return out


def schema_at(schema: dict, template: str) -> tuple[Any, str | None]:
    """The state-schema node a pointer (template) points at: ({} if the schema is open there, None),
    or (None, why it does not resolve)."""
    node: Any = schema
    walked = ""
    for seg in template.lstrip("/").split("/"):
        if not isinstance(node, dict) or not node or "$ref" in node:
            return {}, None  # an open schema: nothing to check against
        props = node.get("properties", {})
        extra = node.get("additionalProperties")
        if seg in props:
            node = props[seg]
        elif isinstance(extra, dict):
            node = extra
        elif "items" in node and (seg.isdigit() or seg == "-" or ex.template_vars(seg)):
            node = node["items"]
        elif ex.template_vars(seg) or not (props or extra is False):
            node = {}
        else:
            known = ", ".join(sorted(props)) or "nothing"
            return None, (
                f"pointer {template!r} does not resolve: the state schema has no '{seg}' "
                f"at '{walked or '/'}' (it has: {known})"
            )
        walked += "/" + seg
    return node, None


class _Checker:
    """Semantic rules over a validated Domain; collects located errors."""

    def __init__(self, domain: Domain, positions: Positions, categories: dict[str, str]):
        self.d, self.pos, self.categories = domain, positions, categories
        self.errors: list[SourceError] = []
        self.state_schema = domain.state.schema_

    def err(self, loc: Loc, message: str) -> None:
        where = ".".join(str(p) for p in loc)
        self.errors.append(self.pos.error(loc, f"{where}: {message}"))

    # -- pointers -----------------------------------------------------------------------------
    def pointer(self, loc: Loc, template: str, scope: set[str]) -> Any:
        """A pointer template must use known variables and resolve against the state schema.

        Returns the schema node it points at ({} when the schema is open there), or None on error.
        """
        if "{/" in template:
            self.err(loc, f"pointer {template!r} nests a pointer: compute the inner value in a `let` first")
            return None
        for var in ex.template_vars(template):
            if var not in scope:
                self.err(loc, f"pointer {template!r} uses unknown variable '{var}' (known: {_known(scope)})")
        node, problem = schema_at(self.state_schema, template)
        if problem:
            self.err(loc, problem)
        return node

    # -- expressions and templates ------------------------------------------------------------
    def expression(self, loc: Loc, src: str, scope: set[str]) -> None:
        try:
            parsed = ex.parse(src)
        except ex.ExprError as e:
            self.err(loc, str(e))
            return
        for name in sorted(parsed.names - scope - {"key", "item"}):
            self.err(loc, f"unknown name '{name}' in {src!r} (known: {_known(scope)})")
        for p in parsed.pointers:
            self.pointer(loc, p, scope)
        for coll, item_src in parsed.wheres:
            self.where_names(loc, coll, item_src, scope)

    def where_names(self, loc: Loc, coll: str | None, item_src: str, scope: set[str]) -> None:
        """In where(coll, "expr") item fields shadow variables, so `status == status` is always true."""
        node = self.pointer(loc, coll, scope) if coll else None
        if not isinstance(node, dict):
            return
        item = node.get("additionalProperties") or node.get("items")
        fields = set(item.get("properties", {})) if isinstance(item, dict) else set()
        for cmp in ast.walk(ex.parse(item_src).tree):
            if not isinstance(cmp, ast.Compare):
                continue
            names = [n.id for n in (cmp.left, *cmp.comparators) if isinstance(n, ast.Name)]
            for name in sorted({n for n in names if names.count(n) > 1} & fields & scope):
                self.err(
                    loc,
                    f"in where({coll}, {item_src!r}) '{name} == {name}' compares the item's field with itself "
                    f"(fields shadow variables): rename the variable with `let`, e.g. wanted_{name}",
                )

    def template(self, loc: Loc, text: Any, scope: set[str]) -> None:
        if isinstance(text, dict) and set(text) == {"expr"}:
            self.expression(loc, text["expr"], scope)
        elif isinstance(text, str):
            for var in ex.template_vars(text):
                if var not in scope:
                    self.err(loc, f"template {text!r} uses unknown variable '{var}' (known: {_known(scope)})")
        elif isinstance(text, list):
            for i, v in enumerate(text):
                self.template((*loc, i), v, scope)
        elif isinstance(text, dict):
            for k, v in text.items():
                self.template((*loc, k), v, scope)

    def tool_exists(self, loc: Loc, name: str) -> None:
        if name not in {t.name for t in self.d.tools}:
            known = ", ".join(t.name for t in self.d.tools)
            self.err(loc, f"unknown tool '{name}' (the domain's tools are: {known})")

    # -- rules --------------------------------------------------------------------------------
    def run(self) -> list[SourceError]:
        if self.d.category not in self.categories:
            self.err(("category",), f"unknown category '{self.d.category}' (see tools_repo/categories.yaml)")
        self.state()
        seen: dict[str, int] = {}
        for i, tool in enumerate(self.d.tools):
            if tool.name in seen:
                self.err(
                    ("tools", i, "name"), f"duplicate tool name '{tool.name}' (also tools.{seen[tool.name]})"
                )
            seen.setdefault(tool.name, i)
            self.tool(("tools", i), tool)
        ids: dict[str, int] = {}
        for i, task in enumerate(self.d.tasks):
            if task.id in ids:
                self.err(("tasks", i, "id"), f"duplicate task id '{task.id}' (also tasks.{ids[task.id]})")
            ids.setdefault(task.id, i)
            self.task(("tasks", i), task)
        return self.errors

    def state(self) -> None:
        loc = ("state", "schema")
        try:
            jsonschema.Draft202012Validator.check_schema(self.state_schema)
        except jsonschema.SchemaError as e:
            self.err((*loc, *e.path), f"not a valid JSON Schema: {_schema_message(e)}")
            return
        v = jsonschema.Draft202012Validator(self.state_schema)
        for e in v.iter_errors(self.d.state.seed):
            if e.validator != "required":  # generated collections may fill what the seed leaves out
                self.err(
                    ("state", "seed", *e.absolute_path), f"seed does not match the state schema: {e.message}"
                )
        for name, coll in self.d.state.generate.items():
            gloc = ("state", "generate", name)
            self.pointer(gloc, "/" + ex.escape_pointer_token(name), set())
            self.generator(gloc, coll)

    def generator(self, loc: Loc, coll: CollectionGen) -> None:
        def walk(gloc: Loc, g: Any) -> None:
            if isinstance(g, RefGen):
                self.pointer(gloc, g.ref, set())
            elif isinstance(g, ListGen):
                walk((*gloc, "list"), g.list)
            elif isinstance(g, ObjectGen):
                for k, sub in g.object.items():
                    walk((*gloc, "object", k), sub)

        walk((*loc, "key"), coll.key)
        for k, g in coll.fields.items():
            walk((*loc, "fields", k), g)

    def tool(self, loc: Loc, tool: ToolDef) -> None:
        try:
            jsonschema.Draft202012Validator.check_schema(tool.parameters)
        except jsonschema.SchemaError as e:
            self.err((*loc, "parameters", *e.path), f"not a valid JSON Schema: {_schema_message(e)}")
            return
        if tool.parameters.get("type") != "object":
            self.err((*loc, "parameters"), "parameters must be a JSON Schema with type: object")
        scope = set(tool.parameters.get("properties", {}))
        if tool.impl and tool.exec_mode != "real":
            self.err((*loc, "mode"), f"a tool with impl runs in mode 'real', not '{tool.mode}'")
        for name, src in tool.let.items():
            self.expression((*loc, "let", name), src, scope)
            scope = scope | {name}
        for i, rule in enumerate(tool.errors):
            self.expression((*loc, "errors", i, "when"), rule.when, scope)
            self.template((*loc, "errors", i, "message"), rule.message, scope)
        for i, req in enumerate(tool.requirements):
            field_loc = (*loc, "requires", i)
            self.expression(field_loc, req.that, scope)
            if req.message:
                self.template(field_loc, req.message, scope)
        for i, op in enumerate(tool.effect):
            self.pointer((*loc, "effect", i, "path"), op.path, scope)
            if op.from_:
                self.pointer((*loc, "effect", i, "from"), op.from_, scope)
            self.template((*loc, "effect", i, "value"), op.value, scope)
        returns = tool.returns if isinstance(tool.returns, dict) else {None: tool.returns}
        for key, src in returns.items():
            if src is not None:
                self.expression((*loc, "returns", key) if key else (*loc, "returns"), src, scope)

    def task(self, loc: Loc, task: TaskTemplate) -> None:
        scope: set[str] = set()
        for name, spec in task.sample.items():
            if isinstance(spec, str):
                self.expression((*loc, "sample", name), spec, scope)
            scope.add(name)
        for name in task.tools or []:
            self.tool_exists((*loc, "tools", task.tools.index(name)), name)
        self.template((*loc, "user_goal"), task.user_goal, scope)
        self.template((*loc, "user_facts"), task.user_facts, scope)
        for i, call in enumerate(task.blueprint):
            self.tool_exists((*loc, "blueprint", i, "tool"), call.tool)
            self.template((*loc, "blueprint", i, "args"), call.args, scope)
        self.template((*loc, "answer_facts"), task.answer_facts, scope)
        r = task.rubric
        rloc = (*loc, "rubric")
        for path, value in r.final_state.items():
            self.pointer((*rloc, "final_state", path), path, scope)
            self.template((*rloc, "final_state", path), value, scope)
        for field, name in r.tools_named():
            idx = [c if isinstance(c, str) else c.tool for c in getattr(r, field)].index(name)
            self.tool_exists((*rloc, field, idx), name)
        for field in ("answer_contains", "answer_matches", "llm_criteria"):
            self.template((*rloc, field), getattr(r, field), scope)


def _schema_message(e: jsonschema.SchemaError) -> str:
    where = "/".join(str(p) for p in e.path)
    if e.validator == "anyOf" and where.endswith("type"):
        return f"{e.instance!r} is not a JSON Schema type (string, number, integer, boolean, object, array, null)"
    return f"{e.message} (at {where or 'the top'})"


def _sorted(errors: list[SourceError]) -> list[SourceError]:
    return sorted(errors, key=lambda e: (e.line, e.col))


def _known(scope: set[str]) -> str:
    return ", ".join(sorted(scope)) or "none"


def load_domain(path: str | Path, categories: dict[str, str] | None = None) -> Domain:
    """Load one domain YAML file; raises ConfigError listing every located problem."""
    return _validate_domain(*load_yaml(path), categories)


def load_domain_text(text: str, name: str = "<domain>", categories: dict[str, str] | None = None) -> Domain:
    """The same checks on YAML text (e.g. a domain an LLM just wrote)."""
    data, positions = parse_yaml(text, name)
    if data is None:
        raise ConfigError([positions.error((), "empty document; expected a YAML mapping")])
    return _validate_domain(data, positions, categories)


def _validate_domain(data: Any, positions: Positions, categories: dict[str, str] | None) -> Domain:
    if not isinstance(data, dict):
        raise ConfigError(
            [positions.error((), f"expected a mapping (name, category, tools, ...), got {_kind(data)}")]
        )
    errors = _schema_errors(data, positions)
    if errors:
        raise ConfigError(_sorted(errors))
    domain = validate(Domain, data, positions)
    errors = _Checker(domain, positions, categories if categories is not None else load_categories()).run()
    if errors:
        raise ConfigError(_sorted(errors))
    return domain


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def domain_files(repo: Path = REPO_DIR) -> list[Path]:
    return sorted((repo / "domains").glob("*.yaml"))


def find_domain(name_or_path: str) -> Domain:
    """Load a domain given a file path or the name of a shipped domain."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_domain(path)
    for f in domain_files():
        if f.stem == name_or_path:
            return load_domain(f)
    known = ", ".join(f.stem for f in domain_files())
    raise ConfigError([SourceError(name_or_path, 0, 0, f"no such domain (shipped domains: {known})")])


def write_schema(path: Path = SCHEMA_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(domain_json_schema(), indent=2, ensure_ascii=False) + "\n")
