"""Configuration plumbing: the strict pydantic base, YAML with source positions, dotted overrides.

Every config and record in agentfactory is a `StrictModel` (pydantic v2, `extra="forbid"`), so a
typo in a YAML file is an error rather than a silently ignored key. YAML is read only at the
edges, through `load_yaml`, which also returns where every key and item came from, so that any
error (YAML syntax, JSON Schema, pydantic, semantic rules) can be reported as `file:line:col: what`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

Loc = tuple[str | int, ...]


class StrictModel(BaseModel):
    """Base of every config and record: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class SourceError:
    """One problem in a source file, located to a line and column (1-based)."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """A file (or override) could not be loaded; carries every `SourceError` found."""

    def __init__(self, errors: Iterable[SourceError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class Positions:
    """Maps a location inside loaded YAML data (a tuple of keys/indices) to its line and column."""

    def __init__(self, file: str, marks: dict[Loc, tuple[int, int]] | None = None):
        self.file = file
        self.marks = marks or {}
        self.overrides: dict[Loc, str] = {}  # values that came from `--set`, not from the file

    def at(self, loc: Iterable[str | int]) -> tuple[int, int]:
        """Line/col of `loc`, or of its nearest located ancestor (e.g. a missing key's parent)."""
        loc = tuple(loc)
        while loc and loc not in self.marks:
            loc = loc[:-1]
        return self.marks.get(loc, (1, 1))

    def error(self, loc: Iterable[str | int], message: str) -> SourceError:
        loc = tuple(loc)
        for key, item in self.overrides.items():  # the override created or replaced this location
            n = min(len(key), len(loc))
            if n and key[:n] == loc[:n]:
                return SourceError(f"--set {item}", 0, 0, message)
        line, col = self.at(loc)
        return SourceError(self.file, line, col, message)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first defined on line {first})", key_node.start_mark
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _record_marks(node: yaml.Node, loc: Loc, marks: dict[Loc, tuple[int, int]]) -> None:
    # A mapping value is located at its key (where an editor should jump); a list item at itself.
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            child = (*loc, key)
            mark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            marks[child] = mark
            if key_node.tag.endswith((":bool", ":int")):  # also locate the key as pydantic reports it
                value = yaml.safe_load(key)
                marks[(*loc, int(value))] = marks[(*loc, value)] = mark
            _record_marks(value_node, child, marks)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*loc, i)
            marks[child] = (item.start_mark.line + 1, item.start_mark.column + 1)
            _record_marks(item, child, marks)


def parse_yaml(text: str, file: str = "<string>") -> tuple[Any, Positions]:
    """Parse YAML text into plain data plus the position of every key and item."""
    try:
        loader = _StrictLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(p for p in (e.context, e.problem) if p)
        if e.context_mark and e.problem_mark and e.context_mark.line != e.problem_mark.line:
            what += f" (the construct started on line {e.context_mark.line + 1})"
        raise ConfigError([SourceError(file, line, col, f"invalid YAML: {what}")]) from None
    except yaml.YAMLError as e:  # reader errors (control characters) carry a position too
        line, col = (getattr(e, "line", 0) + 1, getattr(e, "column", 0) + 1)
        raise ConfigError([SourceError(file, line, col, f"invalid YAML: {e}")]) from None
    marks: dict[Loc, tuple[int, int]] = {(): (1, 1)}
    if node is not None:
        marks[()] = (node.start_mark.line + 1, node.start_mark.column + 1)
        _record_marks(node, (), marks)
    return data, Positions(file, marks)


def load_yaml(path: str | Path) -> tuple[Any, Positions]:
    """Read a YAML file; unreadable, binary or empty files are `ConfigError`s, never tracebacks."""
    path = Path(path)
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError([SourceError(file, 1, 1, f"cannot read file: {e.strerror}")]) from None
    if b"\x00" in raw:
        raise ConfigError([SourceError(file, 1, 1, "not a text file (contains NUL bytes); expected YAML")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError([SourceError(file, line, 1, "not UTF-8 text; expected a YAML file")]) from None
    data, positions = parse_yaml(text, file)
    if data is None:
        raise ConfigError([SourceError(file, 1, 1, "file is empty; expected a YAML mapping")])
    return data, positions


def pydantic_errors(err: ValidationError, positions: Positions) -> list[SourceError]:
    """Turn a pydantic ValidationError into located, one-line messages."""
    out = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        # Drop the union-tag segments pydantic inserts (e.g. 'replace' in ('effect', 0, 'replace', 'x')).
        data_loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        where = ".".join(str(p) for p in data_loc) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown key '{data_loc[-1]}'"
            where = ".".join(str(p) for p in data_loc[:-1]) or "<root>"
        elif "[key]" in data_loc:  # YAML 1.1 reads unquoted on/off/yes/no as booleans, 1 as an int
            i = data_loc.index("[key]")
            where = ".".join(str(p) for p in data_loc[: i - 1]) or "<root>"
            msg = "this key must be a string: quote it (YAML reads unquoted on/off/yes/no as booleans)"
            data_loc = data_loc[:i]
        elif e["type"] == "missing":
            msg = f"missing required key '{data_loc[-1]}'"
            where = ".".join(str(p) for p in data_loc[:-1]) or "<root>"
        out.append(positions.error(data_loc, f"{where}: {msg}"))
    return out


M = TypeVar("M", bound=BaseModel)


def validate(cls: type[M], data: Any, positions: Positions) -> M:
    """Validate plain data into `cls`, raising a located ConfigError."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(pydantic_errors(e, positions)) from None


def apply_overrides(data: dict, overrides: Iterable[str], positions: Positions | None = None) -> dict:
    """Apply `a.b.c=value` overrides in place (values parsed as YAML scalars/flow: 3, true, [1,2])."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                [SourceError("--set", 0, 0, f"override {item!r} is not KEY=VALUE (e.g. seed=3)")]
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part) if isinstance(node, dict) else None
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    [SourceError("--set", 0, 0, f"override {item!r}: '{part}' is a value, not a section")]
                )
            node = child
        node[parts[-1]] = value
        if positions is not None:  # errors in overridden values point at the override, not the file
            positions.overrides[tuple(parts)] = item
    return data


def load_config(path: str | Path | None, cls: type[M], overrides: Iterable[str] = ()) -> M:
    """Load a YAML config file into `cls`, applying dotted overrides first (no file: the
    overrides on `cls`'s defaults)."""
    data, positions = load_yaml(path) if path is not None else ({}, Positions("--set"))
    if not isinstance(data, dict):
        raise ConfigError(
            [positions.error((), f"expected a mapping at the top level, got {type(data).__name__}")]
        )
    apply_overrides(data, overrides, positions)
    return validate(cls, data, positions)


class NotWritable(ValueError):
    """An output directory cannot be created or written; the message names the path and why."""


def writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and prove it writable by writing a probe file, so that a run stops at
    once with one clear line instead of a traceback deep inside a stage (mode bits alone would not
    tell: root ignores them, and a read-only mount or a file in the way is only found by trying)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotWritable(f"{path}: not writable (a file is in the way of this output directory)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise NotWritable(f"{path}: not writable ({e.strerror or e})") from None
    return path
