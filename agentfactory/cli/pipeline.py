"""`agentfactory run` and `agentfactory config`: whole pipelines and their resolved configs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from agentfactory.cli.common import Overrides, err, fail, out
from agentfactory.config import ConfigError, load_config

config_app = typer.Typer(help="Inspect pipeline configs (pipelines/*.yaml).", no_args_is_help=True)


@config_app.command("show")
def config_show(
    file: Annotated[Path, typer.Argument(help="pipeline config YAML")],
    overrides: Overrides = None,
) -> None:
    """Load a pipeline config, apply --set overrides, validate, and print the resolved YAML."""
    from agentfactory.pipeline import PipelineConfig

    try:
        cfg = load_config(file, PipelineConfig, overrides or [])
    except ConfigError as e:
        fail(e)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False), nl=False)


def run(
    config: Annotated[Path, typer.Argument(help="pipeline config YAML, e.g. pipelines/quickstart.yaml")],
    overrides: Overrides = None,
    smoke: Annotated[
        bool, typer.Option("--smoke", help="apply the config's `smoke:` overrides (a quick run)")
    ] = False,
) -> None:
    """Run a pipeline's stages in order; outputs go to <output_dir>/<name>/; a rerun resumes."""
    from agentfactory.config import load_yaml
    from agentfactory.pipeline import PipelineConfig, run_pipeline

    try:
        extra = list(overrides or [])
        if smoke:
            data, _ = load_yaml(config)
            extra = [
                *(data.get("smoke") or [] if isinstance(data, dict) else []),
                "name=" + str(data.get("name", "run")) + "_smoke",
                *extra,
            ]
        cfg = load_config(config, PipelineConfig, extra)
        run_pipeline(cfg, out)
    except ConfigError as e:
        fail(e)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # a stage failed: say which and why
        err.print(f"run failed: {type(e).__name__}: {e}", markup=False)
        err.print(
            f"finished stages are kept; fix the cause and rerun to resume ({cfg.run_dir})", markup=False
        )
        raise typer.Exit(1) from None
    out.print(f"[bold green]done[/]: outputs in {cfg.run_dir}")
