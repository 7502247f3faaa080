"""Marks every test by its folder (unit / integration / gpu) so `-m unit` selects the fast suite."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(item.fspath).relative_to(ROOT / "tests").parts[0]
        if kind in ("unit", "integration", "gpu"):
            item.add_marker(getattr(pytest.mark, kind))
