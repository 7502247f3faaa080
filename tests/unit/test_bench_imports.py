"""The bench scripts import what exists: every name a `bench/*.py` imports from agentfactory or from
another bench module (at any depth: most import inside `main`) must resolve. Nothing runs the benches
in CI (they take minutes to hours), so a renamed function would otherwise surface only at the next
`make bench`."""

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    return names


def _missing(script: Path) -> list[str]:
    missing = []
    for node in ast.walk(ast.parse(script.read_text(), filename=str(script))):
        if not isinstance(node, ast.ImportFrom) or node.module is None or node.level:
            continue
        names = [a.name for a in node.names if a.name != "*"]
        local = BENCH / f"{node.module}.py"
        if local.exists():  # another bench module (bench/ is on sys.path when a script runs)
            have = _top_level_names(local)
            missing += [f"{node.module}.{n}" for n in names if n not in have]
        elif node.module.split(".")[0] == "agentfactory":
            module = importlib.import_module(node.module)
            missing += [f"{node.module}.{n}" for n in names if not hasattr(module, n)]
    return missing


def test_there_are_bench_scripts():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_imports_resolve(script):
    assert _missing(script) == []


def test_a_renamed_function_is_caught(tmp_path):
    """The check can fail: names that agentfactory or a bench module does not have."""
    script = tmp_path / "b.py"
    script.write_text(
        "from rl_tool_use import tool_use_rl, tool_use_rl_v2\n\n"
        "def main():\n    from agentfactory.rl.run import rl_run, rl_walk\n"
    )
    assert _missing(script) == ["rl_tool_use.tool_use_rl_v2", "agentfactory.rl.run.rl_walk"]
