"""Marks every test by its folder (unit / integration / gpu) so `-m unit` selects the fast suite."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(item.fspath).relative_to(ROOT / "tests").parts[0]
        if kind in ("unit", "integration", "gpu"):
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture
def aot_eager_compile(monkeypatch):
    """`compile: true` with the aot_eager backend: dynamo + AOT autograd trace our layers (graph
    breaks, guards, recompiles on new shapes) as with inductor, without inductor's C++ codegen, which
    is PyTorch's part and costs one to two minutes of g++ on a cold 2-core machine. tests/gpu runs
    the default inductor backend on CUDA, where `compile` is for. Yields dynamo's counters, cleared."""
    import torch
    from torch._dynamo.utils import counters

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self: compile_module(self, backend="aot_eager"))
    counters.clear()
    yield counters
