"""The quickstart report's figures, each drawn from the metrics files a stage leaves in the run dir.

Every function takes plain data (rows of metrics.jsonl, stats dicts) and a path, draws one PNG and
returns its path — or None when the data is absent, so a partial run still gets a report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def training_loss(curves: dict[str, list[dict]], path: Path) -> Path | None:
    """Loss per step for each training stage (pretrain, sft, ...)."""
    curves = {k: rows for k, rows in curves.items() if any("loss" in r for r in rows)}
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], curves.items(), strict=True):
        pts = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        ax.plot(*zip(*pts, strict=True), color=COLORS[0])
        ax.set_title(f"{name}: training loss")
        ax.set_xlabel("step")
        ax.set_yscale("log")
    return _save(fig, path)


def max_logits(
    rows: list[dict], tau: float | None, path: Path, title: str = "max attention logit per layer"
) -> Path | None:
    """Per-layer max pre-softmax logit per step, against the QK-Clip threshold τ."""
    rows = [r for r in rows if r.get("max_logit")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    layers = len(rows[0]["max_logit"])
    for layer in range(layers):
        ax.plot(
            [r["step"] for r in rows],
            [r["max_logit"][layer] for r in rows],
            color=COLORS[layer % len(COLORS)],
            label=f"layer {layer}",
        )
    if tau is not None:
        ax.axhline(tau, color="black", linestyle="--", label=f"τ = {tau:g}")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def expert_balance(rows: list[dict], path: Path) -> Path | None:
    """Max/mean expert load per MoE layer over steps (1.0 = perfectly balanced)."""
    rows = [r for r in rows if r.get("expert_load")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for layer in range(len(rows[0]["expert_load"])):
        ratios = []
        for r in rows:
            load = r["expert_load"][layer]
            mean = sum(load) / max(1, len(load))
            ratios.append(max(load) / mean if mean else 1.0)
        ax.plot(
            [r["step"] for r in rows], ratios, color=COLORS[layer % len(COLORS)], label=f"MoE layer {layer}"
        )
    ax.axhline(1.0, color="black", linestyle=":")
    ax.set_title("expert load balance (max / mean)")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    return _save(fig, path)


def acceptance(stats: dict | None, path: Path) -> Path | None:
    """Synthesis: acceptance rate by domain and the rejection reasons."""
    if not stats or not stats.get("by_domain"):
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    doms = list(stats["by_domain"])
    rates = [stats["by_domain"][d]["accepted"] / max(1, stats["by_domain"][d]["episodes"]) for d in doms]
    a.barh(doms, rates, color=COLORS[2])
    a.set_xlim(0, 1)
    a.set_title("acceptance by domain")
    reasons = stats.get("rejection_reasons") or {"(none)": 0}
    b.barh(list(reasons), list(reasons.values()), color=COLORS[3])
    b.set_title("rejection reasons")
    return _save(fig, path)


def rewards(rows: list[dict], path: Path) -> Path | None:
    """RL: mean reward per iteration by env and by reward component."""
    keys_env = sorted({k for r in rows for k in r if k.startswith("reward/")})
    keys_comp = sorted({k for r in rows for k in r if k.startswith("component/")})
    if not keys_env and not keys_comp:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, keys, title in ((a, keys_env, "reward by env"), (b, keys_comp, "reward by component")):
        for i, k in enumerate(keys):
            pts = [(r["iteration"], r[k]) for r in rows if k in r]
            ax.plot(*zip(*pts, strict=True), color=COLORS[i % len(COLORS)], label=k.split("/", 1)[1])
        ax.set_title(title)
        ax.set_xlabel("iteration")
        if keys:
            ax.legend(fontsize=7)
    return _save(fig, path)


def success_by_domain(evals: dict[str, dict], path: Path) -> Path | None:
    """Held-out success rate by domain for each evaluated model (base, SFT, RL)."""
    evals = {k: v for k, v in evals.items() if v and v.get("by_domain")}
    if not evals:
        return None
    doms = sorted({d for v in evals.values() for d in v["by_domain"]})
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(doms)), 3.6))
    width = 0.8 / len(evals)
    for i, (name, v) in enumerate(evals.items()):
        xs = [j + i * width for j in range(len(doms))]
        ys = [v["by_domain"].get(d, {}).get("rate", 0) for d in doms]
        ax.bar(xs, ys, width, label=f"{name} ({v['success_rate']:.0%})", color=COLORS[i % len(COLORS)])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(doms))])
    ax.set_xticklabels(doms, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("held-out tool-use success by domain")
    ax.legend(fontsize=8)
    return _save(fig, path)


def timings(stages: dict[str, float], split: dict[str, float] | None, path: Path) -> Path | None:
    """Wall time per stage, and the RL iteration split into rollout / train / weight sync."""
    if not stages:
        return None
    fig, axes = plt.subplots(1, 2 if split else 1, figsize=(10 if split else 5, 3.2), squeeze=False)
    names: Sequence[str] = list(stages)
    axes[0][0].barh(names, [stages[n] for n in names], color=COLORS[0])
    axes[0][0].set_title("seconds per stage")
    if split:
        axes[0][1].pie(
            list(split.values()), labels=list(split), autopct="%1.0f%%", colors=COLORS[: len(split)]
        )
        axes[0][1].set_title("RL time split")
    return _save(fig, path)
