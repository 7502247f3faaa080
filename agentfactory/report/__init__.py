"""Run reports: plots from the metrics files stages write, and one HTML page per run."""

from agentfactory.report.html import FIGURES, build_report, read_json, read_jsonl

__all__ = ["FIGURES", "build_report", "read_json", "read_jsonl"]
