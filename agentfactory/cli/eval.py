"""`agentfactory eval`: held-out tool-use success of checkpoints on one vLLM engine.

The quickstart's evaluation stage as a command, for any checkpoints (an SFT run's, an RL run's, one
trained elsewhere in this format): episodes on held-out worlds, judged by their rubrics, plus the
teacher-forced diagnostics (argument copying, where turns first go wrong).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agentfactory.cli.common import err, fail, out
from agentfactory.config import ConfigError, NotWritable, load_config, writable_dir


def checkpoints(specs: list[str]) -> dict[str, Path]:
    """Name each checkpoint: NAME=PATH, or PATH named after its folder (the folder above a
    `model` folder: runs/x/sft/model -> sft)."""
    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        p = Path(path if sep else spec)
        if not sep:
            name = p.parent.name if p.name == "model" else p.name
        if not (p / "config.json").is_file():
            raise typer.BadParameter(f"{p}: not a checkpoint folder (no config.json)")
        if name in models:
            raise typer.BadParameter(f"two checkpoints named {name!r}: name them, NAME=PATH")
        models[name] = p
    return models


def eval_command(
    models: Annotated[list[str], typer.Argument(help="checkpoint folders, PATH or NAME=PATH")],
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML of eval settings (the quickstart's eval: keys)"),
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="override a key: --set worlds=2")
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="summaries and judged episodes go here")
    ] = Path("runs/eval"),
) -> None:
    """Held-out success of checkpoints: worlds no training stage sees, the same tasks for each."""
    from agentfactory.stages import EvalStage, evaluate_models

    named = checkpoints(models)
    try:
        cfg = load_config(config, EvalStage, overrides or [])
        out_dir = writable_dir(out_dir)
    except ConfigError as e:
        fail(e)
    except NotWritable as e:
        err.print(str(e), markup=False, highlight=False)
        raise typer.Exit(1) from None
    evaluate_models(cfg.model_copy(update={"models": list(named)}), named, out_dir, out)
    summaries = {name: json.loads((out_dir / f"{name}.json").read_text()) for name in named}
    rates = {n: s["success_rate"] for n, s in summaries.items()}
    (out_dir / "summary.json").write_text(
        json.dumps({"checkpoints": {n: str(p) for n, p in named.items()}, "success_rate": rates}, indent=2)
    )
    out.print(summary_table(summaries))


def summary_table(summaries: dict[str, dict]) -> Table:
    table = Table("checkpoint", "success", "rate", "values copied: tokens / first / whole", "turns right")
    for name, s in summaries.items():
        c, t = s["argument_copying"], s["turn_errors"]
        table.add_row(
            name,
            f"{s['success']}/{s['tasks']}",
            f"{100 * s['success_rate']:.1f}%",
            " / ".join(f"{100 * c[k]:.0f}%" for k in ("token_accuracy", "first_token", "exact")),
            f"{t['right']}/{t['turns']}",
        )
    return table
