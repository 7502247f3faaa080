"""Readable trajectories: rich panels for the terminal (`agentfactory data show`) and HTML for reports."""

from __future__ import annotations

import html
import json

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agentfactory.records import Trajectory

ROLE_STYLE = {"system": "dim", "user": "cyan", "assistant": "green", "tool": "yellow"}


def _args(arguments: dict) -> str:
    return json.dumps(arguments, ensure_ascii=False)


def trajectory_panel(traj: Trajectory, show_system: bool = False) -> Panel:
    parts: list = []
    for m in traj.messages:
        if m.role == "system" and not show_system:
            continue
        style = ROLE_STYLE.get(m.role, "")
        if m.content:
            parts.append(Text.assemble((f"{m.role:>9} ", f"bold {style}"), (m.content, style)))
        for c in m.tool_calls or []:
            parts.append(
                Text.assemble(
                    (f"{'call':>9} ", "bold magenta"), (f"{c.name}({_args(c.arguments)})", "magenta")
                )
            )
    verdict = traj.judge
    if verdict is not None:
        table = Table("check", "passed", "detail", box=None, show_header=True)
        for c in verdict.checks:
            table.add_row(c.kind, "[green]yes" if c.passed else "[red]no", c.detail[:90])
        head = (
            "[bold green]accepted"
            if verdict.accepted
            else "[bold red]rejected: " + "; ".join(verdict.reasons)[:200]
        )
        parts += [Text(""), Text.from_markup(head), table]
    if traj.reward is not None:
        comps = ", ".join(f"{k}={v:.2f}" for k, v in traj.reward.components.items())
        parts.append(Text(f"reward {traj.reward.total:.2f} ({comps})", "bold"))
    title = f"{traj.meta.get('id', traj.task_id)} · {traj.meta.get('domain', '')} · {traj.meta.get('kind', '')} · {traj.status.value}"
    return Panel(Group(*parts), title=title, title_align="left")


def trajectory_html(traj: Trajectory) -> str:
    """A self-contained HTML fragment (inline styles) of one trajectory and its verdict."""
    colors = {"system": "#888", "user": "#1f6feb", "assistant": "#1a7f37", "tool": "#9a6700"}
    rows = []
    for m in traj.messages:
        if m.role == "system":
            continue
        color = colors.get(m.role, "#000")
        if m.content:
            rows.append(f'<div><b style="color:{color}">{m.role}</b> {html.escape(m.content)}</div>')
        for c in m.tool_calls or []:
            rows.append(
                f'<div><b style="color:#8250df">call</b> <code>{html.escape(c.name)}({html.escape(_args(c.arguments))})</code></div>'
            )
    if traj.judge is not None:
        verdict = "accepted" if traj.judge.accepted else "rejected: " + "; ".join(traj.judge.reasons)
        rows.append(f"<div><i>{html.escape(verdict)}</i></div>")
    return (
        '<div style="font-family:sans-serif;font-size:13px;border:1px solid #ddd;padding:6px">'
        + "\n".join(rows)
        + "</div>"
    )


def trajectory_text(traj: Trajectory) -> str:
    """A conversation as plain prose, the way a support log reads on the web: pretraining text that
    teaches the worlds and the language but not the chat template or the tool-call syntax (which
    only SFT teaches, so the base → SFT gain in the report measures what SFT adds)."""
    lines = []
    for m in traj.messages:
        if m.role == "system":
            lines.append(m.content or "")
        elif m.role == "tool":
            lines.append(f"The system answered: {m.content}")
        else:
            who = "Customer" if m.role == "user" else "Agent"
            if m.content:
                lines.append(f"{who}: {m.content}")
            for c in m.tool_calls or []:
                lines.append(f"The agent ran {c.name} with {_args(c.arguments)}.")
    return "\n".join(lines)
