"""What the RL learning benches (rl_learning.py, rl_tool_use.py) share: RL for a budget of wall time
with held-out evaluations along the way (their time is not counted), and the saved curve.

Not a bench itself (`make bench` skips files starting with `_`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class _TimeUp(Exception):
    pass


def rl_with_evals(
    config,
    engine,
    evaluate: Callable[[Any], dict[str, Any]],
    *,
    score: str,
    minutes: float,
    every: int,
    logged: dict[str, str],
    partial: Path | None = None,
) -> tuple[list[dict], list[dict]]:
    """`rl_run(config)` on `engine` for `minutes` of RL wall time; `evaluate(engine)` (a dict holding
    `score`) runs before RL, every `every` iterations and at the end, on the engine that already
    serves the pushed weights. Returns the held-out curve and, per iteration, the metrics rows'
    `logged` values (name → metrics key). Closes the engine.

    After each evaluation the curve so far goes to `partial` (JSON), so a run killed at a time
    limit (a lent GPU's) keeps its points; `save` removes it."""
    from agentfactory.rl.run import rl_run

    curve = [{"iteration": 0, "rl_seconds": 0.0, **evaluate(engine)}]
    print(f"before RL: held-out {score} {curve[0][score]:.3f}", flush=True)
    train: list[dict] = []

    def keep() -> None:
        if partial is not None:
            write_json(partial, {"partial": True, "curve": curve, "train_reward": train})

    keep()
    clock = {"eval": 0.0, "t0": time.perf_counter()}

    def on_iteration(loop, row) -> None:
        rl_s = time.perf_counter() - clock["t0"] - clock["eval"]
        values = {name: row.get(key) for name, key in logged.items()}
        train.append({"iteration": row["iteration"], "rl_seconds": rl_s, **values})
        done = rl_s >= minutes * 60
        shown = "  ".join(f"{k} {v:.3f}" for k, v in values.items() if v is not None)
        split = f"rollout {row['time/rollout']:.1f} s, train {row['time/train']:.1f} s"
        print(f"iter {row['iteration']:4d}  {rl_s:6.0f} s  {shown}  ({split})", flush=True)
        if row["iteration"] % every == 0 or done:
            t = time.perf_counter()
            point = evaluate(loop.engine)
            clock["eval"] += time.perf_counter() - t
            curve.append({"iteration": row["iteration"], "rl_seconds": rl_s, **point})
            print(
                f"iter {row['iteration']:4d}  held-out {point[score]:.3f}  (eval {clock['eval']:.0f} s so far)",
                flush=True,
            )
            keep()
        if done:
            raise _TimeUp

    try:
        rl_run(config, engine=engine, on_iteration=on_iteration)
    except _TimeUp:
        pass
    finally:
        engine.close()
    return curve, train


def write_json(path: Path, data: dict) -> None:
    """Whole or not at all: a kill mid-write leaves the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def hardware(device: str = "cpu") -> str:
    """What the RL ran on, for the plot's time axis and the saved result."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name()
    return f"{len(os.sched_getaffinity(0))} CPU cores"


def save(result: dict, out: Path, name: str, *, score: str, labels: dict[str, str], title: str) -> None:
    """`<out>/<name>.json`, and `<out>/<name>.png`: the held-out `score` of `result["curve"]` and the
    `labels` series (key → legend) of `result["train_reward"]` against RL wall time (on
    `result["hardware"]`). Removes `<out>/<name>.partial.json` (`rl_with_evals`' curve so far)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_json(out / f"{name}.json", result)
    (out / f"{name}.partial.json").unlink(missing_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    c = result["curve"]
    ax.plot(
        [p["rl_seconds"] / 60 for p in c], [p[score] for p in c], "o-", label=f"held-out {score} (greedy)"
    )
    t = [p for p in c if "train" in p]
    if t:
        ax.plot(
            [p["rl_seconds"] / 60 for p in t], [p["train"][score] for p in t], "s-", label=f"RL-world {score}"
        )
    for key, label in labels.items():
        r = [p for p in result["train_reward"] if p.get(key) is not None]
        ax.plot([p["rl_seconds"] / 60 for p in r], [p[key] for p in r], alpha=0.5, label=label)
    ax.set_xlabel(f"RL wall time (min, {result.get('hardware', '2 CPU cores')})")
    ax.set_ylabel(score)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)
    plt.close(fig)
    print(json.dumps({k: v for k, v in result.items() if k not in ("curve", "train_reward")}, indent=2))
