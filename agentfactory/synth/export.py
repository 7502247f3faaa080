"""Export accepted trajectories as a Hugging Face dataset, with a dataset card and plots.

Columns: id, domain, category, messages (OpenAI chat format, tool-call arguments as JSON strings),
tools (JSON string of OpenAI tool specs), rubric, judge, meta (JSON strings: nested records of
varying shape would otherwise fight Arrow's schema inference), reward (float), source.
Written with `save_to_disk` and as parquet; the SFT trainer reads either.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agentfactory.records import Trajectory
from agentfactory.synth.render import trajectory_html

MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name", "weight")


def _message_row(m: dict) -> dict:
    """Every message with the same keys, so Arrow infers one struct type."""
    return {k: m.get(k) for k in MESSAGE_KEYS}


def to_row(rec: Trajectory) -> dict[str, Any]:
    data = rec.to_openai()
    return {
        "id": rec.meta.get("id", rec.task_id),
        "domain": rec.meta.get("domain", ""),
        "category": rec.meta.get("category", ""),
        "messages": [_message_row(m) for m in data["messages"]],
        "tools": json.dumps(data["tools"], ensure_ascii=False),
        "rubric": json.dumps(rec.meta.get("rubric", {}), ensure_ascii=False),
        "judge": rec.judge.model_dump_json() if rec.judge else "null",
        "reward": rec.reward.total if rec.reward else 0.0,
        "source": rec.meta.get("source", ""),
        "meta": json.dumps({k: v for k, v in rec.meta.items() if k not in ("rubric",)}, ensure_ascii=False),
    }


def from_row(row: dict) -> Trajectory:
    """A dataset row back as a Trajectory (for `data show` on an exported dataset)."""
    from agentfactory.records import JudgeVerdict, RewardBreakdown

    messages = [{k: v for k, v in m.items() if v is not None} for m in row["messages"]]
    judge = json.loads(row["judge"])
    meta = json.loads(row["meta"])
    return Trajectory.from_openai(
        meta.get("task_id", row["id"].split("#")[0]),
        messages,
        json.loads(row["tools"]),
        judge=JudgeVerdict.model_validate(judge) if judge else None,
        reward=RewardBreakdown(total=row["reward"]),
        meta={**meta, "rubric": json.loads(row["rubric"])},
    )


def dedup_trajectories(records: Iterable[Trajectory]) -> tuple[list[Trajectory], int]:
    """Drop trajectories whose dialogue (messages) repeats an earlier one exactly."""
    seen, out, dropped = set(), [], 0
    for rec in records:
        key = hashlib.sha256(json.dumps(rec.to_openai()["messages"], sort_keys=True).encode()).hexdigest()
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        out.append(rec)
    return out, dropped


def statistics(records: list[Trajectory]) -> dict[str, Any]:
    by_domain: dict[str, Counter] = {}
    reasons: Counter = Counter()
    turns, calls, kinds = Counter(), Counter(), Counter()
    for rec in records:
        c = by_domain.setdefault(rec.meta.get("domain", "?"), Counter())
        c["episodes"] += 1
        if rec.judge and rec.judge.accepted:
            c["accepted"] += 1
            turns[rec.meta.get("assistant_turns", 0)] += 1
            calls[len(rec.tool_calls)] += 1
            kinds[rec.meta.get("kind", "?")] += 1
        elif rec.judge:
            for r in rec.judge.reasons[:1]:
                reasons[r.split(":")[0]] += 1
    return {
        "episodes": len(records),
        "accepted": sum(c["accepted"] for c in by_domain.values()),
        "by_domain": {
            d: {"episodes": c["episodes"], "accepted": c["accepted"]} for d, c in sorted(by_domain.items())
        },
        "assistant_turns": dict(sorted(turns.items())),
        "tool_calls": dict(sorted(calls.items())),
        "task_kinds": dict(kinds.most_common()),
        "rejection_reasons": dict(reasons.most_common()),
    }


def plot_statistics(stats: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(name: str, fig: Any) -> None:
        path = out_dir / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    for key, title in (
        ("assistant_turns", "Assistant turns per episode"),
        ("tool_calls", "Tool calls per episode"),
    ):
        fig, ax = plt.subplots(figsize=(5, 3))
        data = stats[key]
        ax.bar([str(k) for k in data], list(data.values()), color="#4c72b0")
        ax.set_title(title)
        ax.set_ylabel("accepted episodes")
        save(key, fig)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    doms = list(stats["by_domain"])
    rates = [stats["by_domain"][d]["accepted"] / max(1, stats["by_domain"][d]["episodes"]) for d in doms]
    ax.barh(doms, rates, color="#55a868")
    ax.set_xlim(0, 1)
    ax.set_title("Acceptance by domain")
    save("acceptance_by_domain", fig)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    reasons = stats["rejection_reasons"] or {"(none)": 0}
    ax.barh(list(reasons), list(reasons.values()), color="#c44e52")
    ax.set_title("Rejection reasons")
    save("rejection_reasons", fig)
    return paths


def write_card(
    stats: dict[str, Any], plots: list[Path], examples: list[Trajectory], out_dir: Path, dropped: int
) -> Path:
    lines = [
        "# agentfactory tool-use SFT dataset",
        "",
        "Multi-turn tool-use conversations synthesized by agentfactory (simulated user, agent and tools;",
        "judged by rubric checks). Format: OpenAI chat messages; tool-call arguments are JSON strings.",
        "",
        f"- episodes judged: {stats['episodes']}",
        f"- accepted (in this dataset): {stats['accepted']} ({dropped} exact duplicates dropped)",
        f"- task kinds: {stats['task_kinds']}",
        "",
        "| domain | episodes | accepted |",
        "|---|---|---|",
        *[f"| {d} | {c['episodes']} | {c['accepted']} |" for d, c in stats["by_domain"].items()],
        "",
        *[f"![{p.stem}](plots/{p.name})" for p in plots],
        "",
        "## Examples",
        "",
        *[
            f"<details><summary>{e.meta.get('id')}</summary>\n\n{trajectory_html(e)}\n\n</details>\n"
            for e in examples
        ],
    ]
    path = out_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


def export_dataset(records: Iterable[Trajectory], out_dir: str | Path) -> dict[str, Any]:
    """Write the accepted records as a HF dataset (save_to_disk + parquet), a card and plots."""
    import datasets

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    everything = list(records)
    stats = statistics(everything)
    accepted, dropped = dedup_trajectories(r for r in everything if r.judge and r.judge.accepted)
    rows = [to_row(r) for r in accepted]
    ds = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({k: [] for k in ("id",)})
    ds.save_to_disk(str(out / "hf"))
    ds.to_parquet(str(out / "data.parquet"))
    plots = plot_statistics(stats, out / "plots")
    rejected = [r for r in everything if r.judge and not r.judge.accepted]
    write_card(stats, plots, accepted[:2] + rejected[:2], out, dropped)
    (out / "stats.json").write_text(json.dumps({**stats, "duplicates_dropped": dropped}, indent=2))
    return {**stats, "rows": len(rows), "duplicates_dropped": dropped, "path": str(out)}


def write_examples(records: Iterable[Trajectory], path: Path, per_kind: int = 2) -> Path:
    """An HTML fragment with a few accepted and rejected trajectories (for the run report)."""
    accepted, rejected = [], []
    for rec in records:
        bucket = accepted if rec.judge and rec.judge.accepted else rejected
        if len(bucket) < per_kind:
            bucket.append(rec)
        if len(accepted) >= per_kind and len(rejected) >= per_kind:
            break
    parts = [
        f"<h3>{label}</h3>" + "".join(f"<p><b>{r.meta.get('id')}</b></p>{trajectory_html(r)}" for r in recs)
        for label, recs in (("accepted", accepted), ("rejected", rejected))
        if recs
    ]
    path.write_text("\n".join(parts))
    return path
