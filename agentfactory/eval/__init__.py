"""Held-out evaluation of policies on tool-use tasks.

Names resolve lazily, so `agentfactory.eval.cli` (imported by the CLI at start) costs no synthesis
or engine imports until a command runs.
"""

import importlib

__all__ = ["EvalConfig", "evaluate", "evaluate_engine", "evaluate_oracle", "heldout_tasks"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("agentfactory.eval.heldout"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
