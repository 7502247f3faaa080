"""The small expression language of domain YAML: templates, JSON-pointer reads, safe expressions.

Domain authors write three kinds of strings:

* **templates** — `"order {order_id} not found"`: `{name}` is replaced by a variable's value.
  Inside a JSON pointer (`/orders/{order_id}/status`) the value is escaped per RFC 6901.
  A template that is exactly `"{name}"` yields the raw value (keeps ints, lists, dicts).
* **expressions** — Python syntax evaluated by `simpleeval` (no attribute access, no imports):
  `/orders/{order_id}/status == 'pending' and quantity <= 5`. A bare JSON pointer reads the
  world state (missing → `None`); `!x` means `not x`. Names are the tool's arguments and `let`
  variables. Functions: `exists`, `where(coll, "item expr")` (items whose fields, as names,
  satisfy the expression), `where(coll, "field", value)` (items whose field equals value),
  `first(coll)` (first key/element or None), `pick(coll)` (a seeded random key/element), `keys`,
  `values`, `len`, `sum`, `min`,
  `max`, `round`, `abs`, `int`, `float`, `str`, `lower`, `upper`, `sorted`, plus what the runtime adds
  (e.g. `new_id`, `today`).
* **pointers** — templates that must resolve against the domain's state schema (checked on load).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import simpleeval

_TEMPLATE_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ONLY_VAR = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
# A pointer token starts with '/' and a name or placeholder; it cannot follow a value (that is division).
_POINTER = re.compile(
    r"/(?:[A-Za-z0-9_\-.~]|\{[A-Za-z_][A-Za-z0-9_]*\})+(?:/(?:[A-Za-z0-9_\-.~]|\{[A-Za-z_][A-Za-z0-9_]*\})+)*"
)

BUILTINS: dict[str, Callable] = {
    "exists": lambda v: v is not None,
    "keys": lambda c: list(c.keys()) if isinstance(c, Mapping) else list(range(len(c or []))),
    "values": lambda c: list(c.values()) if isinstance(c, Mapping) else list(c or []),
    "len": lambda c: len(c or []),
    "sum": sum,
    "min": min,
    "max": max,
    "round": round,
    "abs": abs,
    "int": int,
    "float": float,
    "str": str,
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "sorted": sorted,
    "first": lambda c: next(iter(c), None) if c else None,
}
RUNTIME_FUNCTIONS = ("where", "pick", "new_id", "today", "now")
_KEYWORDS = {"and", "or", "not", "in", "is", "if", "else"}


class ExprError(ValueError):
    """An expression or template that cannot be parsed or evaluated."""


def template_vars(text: str) -> list[str]:
    """Names of the `{placeholders}` in a template."""
    return _TEMPLATE_VAR.findall(text)


def escape_pointer_token(value: Any) -> str:
    return str(value).replace("~", "~0").replace("/", "~1")


def render(text: str, names: Mapping[str, Any], *, pointer: bool = False) -> Any:
    """Fill a template. `"{x}"` alone returns the raw value; pointers escape values per RFC 6901."""
    if not pointer and (m := _ONLY_VAR.match(text)):
        if m.group(1) not in names:
            raise ExprError(f"unknown variable '{m.group(1)}' in {text!r}")
        return names[m.group(1)]

    def sub(m: re.Match) -> str:
        if m.group(1) not in names:
            raise ExprError(f"unknown variable '{m.group(1)}' in {text!r}")
        value = names[m.group(1)]
        return escape_pointer_token(value) if pointer else str(value)

    return _TEMPLATE_VAR.sub(sub, text)


def render_value(value: Any, names: Mapping[str, Any]) -> Any:
    """Fill templates in every string inside a JSON value."""
    if isinstance(value, str):
        return render(value, names)
    if isinstance(value, list):
        return [render_value(v, names) for v in value]
    if isinstance(value, dict):
        return {k: render_value(v, names) for k, v in value.items()}
    return value


def resolve_pointer(doc: Any, pointer: str) -> Any:
    """Value at an RFC 6901 pointer, or None if any step is missing."""
    if pointer in ("", "/"):
        return doc
    node = doc
    for raw in pointer.lstrip("/").split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping):
            if token not in node:
                return None
            node = node[token]
        elif isinstance(node, list):
            if not token.isdigit() or int(token) >= len(node):
                return None
            node = node[int(token)]
        else:
            return None
    return node


def _translate(src: str) -> tuple[str, list[str]]:
    """Rewrite pointer tokens to `_ptr("...")` calls and `!` to `not`, skipping string literals."""
    out, pointers, i, n = [], [], 0, len(src)
    while i < n:
        ch = src[i]
        if ch in "'\"":  # copy a string literal verbatim
            j = i + 1
            while j < n and src[j] != ch:
                j += 2 if src[j] == "\\" else 1
            out.append(src[i : j + 1])
            i = j + 1
            continue
        if ch == "!" and not src.startswith("!=", i):
            out.append(" not ")
            i += 1
            continue
        before = "".join(out).rstrip()
        word = re.search(r"[A-Za-z_]\w*$", before)
        after_value = bool(before) and (before[-1] in "_)]}'\"" or before[-1].isalnum())
        if word and word.group(0) in _KEYWORDS:
            after_value = False  # `and /a/b`: a keyword, not a value, precedes the slash
        if ch == "/" and not after_value:
            m = _POINTER.match(src, i)
            if m:
                pointers.append(m.group(0))
                out.append(f"_ptr({m.group(0)!r})")
                i = m.end()
                continue
        out.append(ch)
        i += 1
    return "".join(out), pointers


@dataclass(frozen=True)
class Expr:
    """A parsed expression: its source, the pointer templates it reads and the free names it uses."""

    source: str
    translated: str
    tree: ast.Expression = field(repr=False)
    pointers: tuple[str, ...]
    names: frozenset[str]
    item_exprs: tuple[str, ...]  # the string arguments of where(...), themselves expressions
    wheres: tuple[tuple[str | None, str], ...] = ()  # (collection pointer if literal, item expression)


@lru_cache(maxsize=4096)
def parse(src: str) -> Expr:
    """Parse an expression; raises ExprError with a readable message."""
    if not isinstance(src, str) or not src.strip():
        raise ExprError("empty expression")
    if "{/" in src:
        raise ExprError(
            f"nested pointers are not supported in {src!r}: compute the inner value in a `let` first"
        )
    translated, pointers = _translate(src)
    try:
        tree = ast.parse(translated.strip(), mode="eval")
    except SyntaxError as e:
        raise ExprError(f"cannot parse expression {src!r}: {e.msg}") from None
    names, items, wheres = set(), [], []
    bound = {  # comprehension variables are not free names
        n.id
        for c in ast.walk(tree)
        if isinstance(c, ast.comprehension)
        for n in ast.walk(c.target)
        if isinstance(n, ast.Name)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in {*BUILTINS, *RUNTIME_FUNCTIONS, "_ptr", *bound}:
            names.add(node.id)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "where":
            arg = node.args[1] if len(node.args) in (2, 3) else None
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                raise ExprError(
                    f"where() takes (collection, 'item expression') or (collection, 'field', value), in {src!r}"
                )
            if len(node.args) == 2:
                items.append(arg.value)
                coll = node.args[0]
                is_ptr = (
                    isinstance(coll, ast.Call) and isinstance(coll.func, ast.Name) and coll.func.id == "_ptr"
                )
                wheres.append((coll.args[0].value if is_ptr else None, arg.value))
        if isinstance(node, ast.Attribute | ast.Lambda | ast.NamedExpr):
            raise ExprError(f"{type(node).__name__.lower()} is not allowed in expressions: {src!r}")
    for item in items:
        parse(item)
    pointer_vars = {v for p in pointers for v in template_vars(p)}
    return Expr(
        src,
        translated.strip(),
        tree,
        tuple(pointers),
        frozenset(names | pointer_vars),
        tuple(items),
        tuple(wheres),
    )


def evaluate(
    src: str,
    names: Mapping[str, Any],
    state: Any,
    functions: Mapping[str, Callable] | None = None,
) -> Any:
    """Evaluate an expression against variables `names` and the world `state`."""
    return _eval(_evaluator(state, functions), parse(src), names)


def _evaluator(state: Any, functions: Mapping[str, Callable] | None) -> simpleeval.EvalWithCompoundTypes:
    """An evaluator bound to `state`; `_eval` sets its names. Building one costs ~0.1 ms (simpleeval's
    set-up), so a `where` filter builds one for its predicate and reuses it over every item: that was
    a third of a synthesis episode's time."""
    funcs: dict[str, Callable] = dict(BUILTINS)
    evaluator = simpleeval.EvalWithCompoundTypes(names={}, functions=funcs)  # keeps `funcs` by reference
    funcs["_ptr"] = lambda tmpl: resolve_pointer(state, render(tmpl, evaluator.names, pointer=True))
    funcs["where"] = lambda coll, item_src, *value: _where(
        coll, item_src, value, evaluator.names, state, functions
    )
    funcs.update(functions or {})
    return evaluator


def _where(
    coll: Any,
    item_src: str,
    value: tuple,
    names: Mapping[str, Any],
    state: Any,
    functions: Mapping[str, Callable] | None,
) -> Any:
    if value:  # equality form: where(coll, "field", value)

        def ok(key: Any, item: Any) -> bool:
            return isinstance(item, Mapping) and item.get(item_src) == value[0]
    else:
        predicate, expr = _evaluator(state, functions), parse(item_src)

        def ok(key: Any, item: Any) -> bool:
            scope = {**names, "key": key, "item": item, **(item if isinstance(item, Mapping) else {})}
            return bool(_eval(predicate, expr, scope))

    if isinstance(coll, Mapping):
        return {k: v for k, v in coll.items() if ok(k, v)}
    return [v for i, v in enumerate(coll or []) if ok(i, v)]


def _eval(evaluator: simpleeval.EvalWithCompoundTypes, expr: Expr, names: Mapping[str, Any]) -> Any:
    evaluator.names = dict(names)
    src = expr.source
    try:
        return evaluator.eval(expr.translated, previously_parsed=expr.tree.body)
    except simpleeval.NameNotDefined as e:
        raise ExprError(f"unknown name '{e.name}' in {src!r}") from None
    except (
        TypeError,
        ValueError,
        KeyError,
        IndexError,
        ZeroDivisionError,
        simpleeval.InvalidExpression,
    ) as e:
        raise ExprError(f"cannot evaluate {src!r}: {e}") from None
