"""`rl_run(RLConfig)`: a colocated RL run from start (or its last checkpoint) to the end: the
iteration loop around `RLLoop.step()` with its metrics log, checkpoints, progress bar, the
`on_iteration` hook (held-out evals, benches) and the exported policy."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from agentfactory.llm.base import Engine
from agentfactory.rl.config import RLConfig
from agentfactory.rl.loop import RLLoop


@dataclass
class RLResult:
    output_dir: Path
    model_dir: Path | None
    iterations: int
    policy_version: int
    metrics_path: Path
    final_reward: float | None


def rl_run(
    config: RLConfig,
    *,
    engine: Engine | None = None,
    console: Console | None = None,
    on_iteration: Callable[[RLLoop, dict[str, Any]], None] | None = None,
) -> RLResult:
    """Run (or resume) colocated RL to `config.iterations`. With `engine` given (e.g. a shared test
    engine), it is used instead of starting a VLLMEngine on `config.model`, and is left open.
    `on_iteration(loop, row)` runs after each iteration's checkpoint (held-out evals, benches)."""
    loop = RLLoop(config, engine, console)
    try:
        loop.out.mkdir(parents=True, exist_ok=True)
        (loop.out / "config.json").write_text(config.model_dump_json(indent=2))
        if loop.resume():
            loop.console.print(f"resumed from {loop.out / 'checkpoint'} at iteration {loop.iteration}")
        show = config.progress
        from agentfactory.train.trainer import progress_bar

        progress, task = (
            progress_bar(loop.console, config.iterations, loop.iteration, "rl") if show else (None, None)
        )
        with progress or nullcontext(), loop.metrics_path.open("a") as log:
            while loop.iteration < config.iterations:
                row = loop.step()
                log.write(json.dumps(row) + "\n")
                log.flush()
                every = config.checkpoint_every
                if loop.iteration == config.iterations or (every and loop.iteration % every == 0):
                    loop.save()
                if progress is not None:
                    info = (
                        f"reward {row.get('reward_mean', float('nan')):.3f}  "
                        f"rollout {row['time/rollout']:.1f}s train {row['time/train']:.1f}s "
                        f"sync {row['time/sync']:.2f}s  carried {row['rollouts/carried']}"
                    )
                    progress.update(task, completed=loop.iteration, info=info)
                if on_iteration is not None:
                    on_iteration(loop, row)
        model_dir = loop.export() if config.save_model else None
        result = RLResult(
            loop.out, model_dir, loop.iteration, loop.version, loop.metrics_path, loop.last_reward
        )
        summary = {
            "iterations": loop.iteration,
            "policy_version": loop.version,
            "final_reward": loop.last_reward,
        }
        (loop.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return result
    finally:
        loop.close()
