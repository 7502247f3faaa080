"""`build_report(run_dir)`: one self-explaining HTML page for a run, from the files its stages wrote.

The report reads files only (metrics.jsonl, stats.json, eval/*.json, summary.json, an examples
fragment) and never live objects, so it can be rebuilt at any time, also for a partial run: a
section whose stage did not run says so. Targets are checked and a missed target is stated plainly.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from agentfactory.report import plots

TARGETS = (("sft", "base", 30.0), ("rl", "sft", 5.0))  # (model, baseline, points of held-out success)
FIGURES = (
    "training_loss",
    "max_logits",
    "expert_balance",
    "acceptance",
    "rewards",
    "success_by_domain",
    "timings",
)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill: the rest of the file is still good
    return rows


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _turn_errors(evals: dict[str, dict]) -> str:
    """Where each checkpoint's assistant turns first go wrong, teacher-forced (`eval.anatomy`)."""
    rows = {k: v["turn_errors"] for k, v in evals.items() if v and v.get("turn_errors")}
    if not rows:
        return ""
    cats = list(next(iter(rows.values()))["first_error"])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["checkpoint", "turns", "right", *cats])
    body = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{t['turns']}</td><td>{t['right']}</td>"
        + "".join(f"<td>{t['first_error'][c]}</td>" for c in cats)
        + "</tr>"
        for k, t in rows.items()
    )
    return (
        "<h3>Where assistant turns first go wrong</h3><p>The oracle's turns of the same episodes, each "
        "predicted greedily given the true conversation before it; a turn counts under its first wrong "
        f"token.</p><table><tr>{head}</tr>{body}</table>"
    )


def _copied(scores: dict | None) -> str:
    if not scores:
        return "<td></td><td></td><td></td>"
    keys = ("token_accuracy", "first_token", "exact")
    return "".join(f"<td>{100 * scores[k]:.0f}%</td>" for k in keys)


def _targets(evals: dict[str, dict]) -> list[str]:
    lines = []
    for model, base, points in TARGETS:
        if model not in evals or base not in evals:
            lines.append(f"<li>{model} vs {base}: not measured (a stage did not run)</li>")
            continue
        gain = 100 * (evals[model]["success_rate"] - evals[base]["success_rate"])
        met = gain >= points
        verdict = "met" if met else "<b style='color:#c44e52'>NOT met</b>"
        lines.append(
            f"<li>{model} ≥ {base} + {points:g} points: {verdict} "
            f"({100 * evals[base]['success_rate']:.1f}% → {100 * evals[model]['success_rate']:.1f}%, {gain:+.1f} points)</li>"
        )
    return lines


def build_report(run_dir: str | Path, tau: float | None = None, title: str | None = None) -> Path:
    run = Path(run_dir)
    figs = run / "report_files"
    summary = read_json(run / "summary.json") or {}
    curves = {stage: read_jsonl(run / stage / "metrics.jsonl") for stage in ("curriculum", "pretrain", "sft")}
    rl_rows = read_jsonl(run / "rl" / "metrics.jsonl")
    order = {"base": 0, "sft": 1, "rl": 2}
    found = (
        sorted((run / "eval").glob("*.json"), key=lambda p: (order.get(p.stem, 9), p.stem))
        if (run / "eval").exists()
        else []
    )
    evals = {p.stem: read_json(p) for p in found}
    stats = read_json(run / "synth" / "dataset" / "stats.json")
    train_rows = curves.get("sft") or curves.get("pretrain") or []
    stage_seconds = {k: v["seconds"] for k, v in summary.items() if isinstance(v, dict) and "seconds" in v}
    split = None
    if rl_rows:
        split = {k: sum(r.get(f"time/{k}", 0) for r in rl_rows) for k in ("rollout", "train", "sync")}
        split = {k: v for k, v in split.items() if v > 0} or None

    figures = [
        ("Training loss", plots.training_loss(curves, figs / "training_loss.png")),
        (
            "Max attention logit per layer vs τ (QK-Clip)",
            plots.max_logits(train_rows, tau, figs / "max_logits.png"),
        ),
        ("Expert load balance", plots.expert_balance(train_rows, figs / "expert_balance.png")),
        ("Synthesis: acceptance and rejection reasons", plots.acceptance(stats, figs / "acceptance.png")),
        ("RL rewards by env and component", plots.rewards(rl_rows, figs / "rewards.png")),
        (
            "Held-out success by domain: base / SFT / RL",
            plots.success_by_domain(evals, figs / "success_by_domain.png"),
        ),
        ("Time per stage and RL split", plots.timings(stage_seconds, split, figs / "timings.png")),
    ]
    sections = []
    for name, path in figures:
        if path is None:
            sections.append(
                f"<h2>{html.escape(name)}</h2><p><i>not available: the stage did not run or wrote no data</i></p>"
            )
        else:
            rel = path.relative_to(run).as_posix()
            sections.append(
                f'<h2>{html.escape(name)}</h2><img src="{rel}" alt="{html.escape(name)}" style="max-width:100%">'
            )
    eval_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['success']}/{v['tasks']}</td><td>{100 * v['success_rate']:.1f}%</td>"
        f"{_copied(v.get('argument_copying'))}</tr>"
        for k, v in evals.items()
        if v
    )
    anatomy = _turn_errors(evals)
    copy_rows = "".join(
        f"<tr><td>after {html.escape(stage)}</td><td>{html.escape(kind.replace('_', ' '))}</td>"
        f"<td>{100 * s['token_accuracy']:.0f}%</td><td>{100 * s['exact']:.0f}%</td></tr>"
        for stage in ("curriculum", "pretrain")
        for kind, s in (summary.get(stage) or {}).get("copy_accuracy", {}).items()
    )
    copying = (
        "<h2>In-context copying (held-out lists; tool use copies ids and emails)</h2><table><tr><th>checkpoint</th>"
        f"<th>lists of</th><th>tokens right</th><th>lists exact</th></tr>{copy_rows}</table>"
        if copy_rows
        else ""
    )
    if spelled := (summary.get("tokenizer") or {}).get("copyable_arguments"):
        copying += (
            f"<p>Tokenizer: {100 * spelled['copyable']:.0f}% of {spelled['arguments']} tool-call argument values "
            "(of the dataset, found earlier in their conversation) are tokenized in the call exactly as where "
            "they were said, so copying them is token for token.</p>"
        )
    examples = run / "synth" / "examples.html"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title or run.name)} — agentfactory report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}} td,th{{padding:2px 10px}}</style>
<script>/* lets a headless browser (and a test) see that every figure loaded */
window.addEventListener("load", () => {{ const im = [...document.images];
  document.body.setAttribute("data-images", im.filter(i => i.complete && i.naturalWidth > 0).length + "/" + im.length); }});
</script></head>
<body>
<h1>{html.escape(title or run.name)}</h1>
<h2>Targets (held-out tool-use success)</h2>
<ul>{"".join(_targets(evals))}</ul>
<table><tr><th>model</th><th>success</th><th>rate</th><th>argument values copied: tokens</th>
<th>first token</th><th>whole values</th></tr>{eval_rows}</table>
<p>Copying is teacher-forced on the oracle's episodes of the same tasks: each string argument value
said earlier in the conversation, predicted token by token after the call's opening quote.</p>
{anatomy}
{copying}
{"".join(sections)}
<h2>Example trajectories</h2>
{examples.read_text() if examples.exists() else "<p><i>no synthesis examples</i></p>"}
<h2>Stage summary</h2><pre>{html.escape(json.dumps(summary, indent=1)[:20000])}</pre>
</body></html>"""
    out = run / "report.html"
    out.write_text(page)
    return out
