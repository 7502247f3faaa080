"""Held-out evaluation of policies on tool-use tasks."""

from agentfactory.eval.heldout import EvalConfig, evaluate, evaluate_engine, evaluate_oracle, heldout_tasks

__all__ = ["EvalConfig", "evaluate", "evaluate_engine", "evaluate_oracle", "heldout_tasks"]
