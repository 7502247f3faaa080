"""`agentfactory synth` and `agentfactory data`: run synthesis; inspect what it produced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agentfactory.cli.common import Overrides, err, fail, out
from agentfactory.config import ConfigError, load_config

synth_app = typer.Typer(
    help="Agentic data synthesis: simulated tool-use episodes, judged, as a dataset.", no_args_is_help=True
)
data_app = typer.Typer(
    help="Inspect synthesized data (a synth run dir or an exported dataset).", no_args_is_help=True
)


@synth_app.command("run")
def synth_run(
    config: Annotated[
        Path, typer.Argument(help="pipeline YAML with a `synth:` section, e.g. pipelines/tool_sft.yaml")
    ],
    overrides: Overrides = None,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="a Ray cluster (default: local)")
    ] = None,
    no_ray: Annotated[
        bool, typer.Option("--no-ray", help="run the workers in this process (debugging)")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="start afresh instead of resuming")] = False,
) -> None:
    """Synthesize judged tool-use episodes into <output_dir>/<name>/synth; resumes a killed run."""
    from agentfactory.pipeline import PipelineConfig, run_synth_stage
    from agentfactory.synth.store import RunMismatch

    try:
        cfg = load_config(
            config,
            PipelineConfig,
            [*(overrides or []), *([f"synth.ray_address={ray_address}"] if ray_address else [])],
        )
    except ConfigError as e:
        fail(e)
    if cfg.synth is None:
        err.print(f"{config} has no `synth:` section", markup=False)
        raise typer.Exit(1)
    try:
        run_synth_stage(cfg, out, use_ray=not no_ray, overwrite=overwrite)
    except (RunMismatch, ValueError, OSError) as e:  # ValueError includes NotWritable (output dir)
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _load_records(path: Path) -> list:
    from agentfactory.synth.export import from_row
    from agentfactory.synth.store import ShardStore

    if (path / "shards").is_dir():
        manifest = json.loads((path / "manifest.json").read_text())
        return list(ShardStore(path, manifest["fingerprint"]).records())
    if path.suffix == ".jsonl" and path.is_file():  # judged episodes, e.g. runs/<id>/eval/sft.jsonl
        from agentfactory.records import Trajectory

        lines = path.read_text(encoding="utf-8").splitlines()
        return [Trajectory.model_validate_json(line) for line in lines if line.strip()]
    parquet = path / "data.parquet" if path.is_dir() else path
    if parquet.exists():
        import datasets

        return [from_row(r) for r in datasets.Dataset.from_parquet(str(parquet))]
    err.print(
        f"{path}: not a synth run (shards/), an exported dataset (data.parquet) or episodes (.jsonl)",
        markup=False,
    )
    raise typer.Exit(1)


@data_app.command("show")
def data_show(
    path: Annotated[Path, typer.Argument(help="a synth run dir, an exported dataset dir or episodes .jsonl")],
    record_id: Annotated[str | None, typer.Option("--id", help="one record id (or task id)")] = None,
    rejected: Annotated[bool, typer.Option("--rejected", help="only rejected episodes")] = False,
    domain: Annotated[str | None, typer.Option(help="only this domain")] = None,
    limit: Annotated[int, typer.Option(help="how many to show")] = 3,
    system: Annotated[bool, typer.Option("--system", help="also show system prompts")] = False,
) -> None:
    """Render trajectories: turns, tool calls and results, judge verdict and reasons, reward."""
    from agentfactory.synth.render import trajectory_panel

    shown = 0
    for rec in _load_records(path):
        if record_id and record_id not in (rec.meta.get("id"), rec.task_id):
            continue
        if rejected and (rec.judge is None or rec.judge.accepted):
            continue
        if domain and rec.meta.get("domain") != domain:
            continue
        out.print(trajectory_panel(rec, show_system=system))
        shown += 1
        if shown >= limit:
            break
    if not shown:
        err.print("no matching records", markup=False)
        raise typer.Exit(1)


@data_app.command("stats")
def data_stats(
    path: Annotated[Path, typer.Argument(help="a synth run dir or an exported dataset dir")],
) -> None:
    """Print the dataset statistics (those of its card)."""
    from agentfactory.synth.export import statistics

    stats = statistics(_load_records(path))
    table = Table(
        "domain", "episodes", "accepted", title=f"{stats['accepted']} accepted of {stats['episodes']}"
    )
    for d, c in stats["by_domain"].items():
        table.add_row(d, str(c["episodes"]), str(c["accepted"]))
    out.print(table)
    for key in ("task_kinds", "assistant_turns", "tool_calls", "rejection_reasons"):
        out.print(f"{key.replace('_', ' ')}: {stats[key]}", highlight=False)
