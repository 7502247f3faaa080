"""The `agentfactory` command: parse arguments, build a config, call one function.

Exit codes: 0 success, 1 invalid input (every problem printed as `file:line:col: message`),
2 usage errors (typer's default).
"""

from __future__ import annotations

import json
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from agentfactory.config import ConfigError, load_config

app = typer.Typer(
    name="agentfactory",
    help="The Kimi K2 post-training recipe, runnable: tool domains, agentic data synthesis, SFT and RL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
domains_app = typer.Typer(
    help="Validate, list and inspect tool domains (tools_repo/domains/*.yaml).", no_args_is_help=True
)
config_app = typer.Typer(help="Inspect pipeline configs (pipelines/*.yaml).", no_args_is_help=True)
app.add_typer(domains_app, name="domains")
app.add_typer(config_app, name="config")

out = Console()
err = Console(stderr=True)

Overrides = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a key: --set a.b=value")]


def _fail(e: ConfigError) -> None:
    for line in e.errors:
        err.print(str(line), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _version(value: bool) -> None:
    if value:
        out.print(f"agentfactory {pkg_version('agentfactory')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """agentfactory: K2 MoE + MuonClip, agentic data synthesis, RL post-training."""


@domains_app.command("validate")
def domains_validate(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="domain YAML files (default: all in tools_repo/domains)")
    ] = None,
) -> None:
    """Validate domain files; prints one line per error, exits 1 if any file is invalid."""
    from agentfactory.tools import domain_files, load_domain

    failed = 0
    for path in paths or domain_files():
        try:
            d = load_domain(path)
            out.print(
                f"[green]ok[/] {path} ({d.name}: {len(d.tools)} tools, {len(d.tasks)} tasks)", highlight=False
            )
        except ConfigError as e:
            failed += 1
            for line in e.errors:
                err.print(str(line), markup=False, highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@domains_app.command("list")
def domains_list() -> None:
    """List the shipped domains with their category and tool count."""
    from agentfactory.tools import domain_files, load_domain

    table = Table("domain", "category", "tools", "tasks", "file")
    bad = []
    for path in domain_files():
        try:
            d = load_domain(path)
        except ConfigError as e:
            bad.append(e)
            continue
        table.add_row(d.name, d.category, str(len(d.tools)), str(len(d.tasks)), str(path))
    out.print(table)
    for e in bad:
        _fail(e)


@domains_app.command("schema")
def domains_schema(
    output: Annotated[Path | None, typer.Option("--out", "-o", help="write here instead of stdout")] = None,
) -> None:
    """Print (or write) the JSON Schema of domain files, generated from the pydantic model."""
    from agentfactory.tools import domain_json_schema

    text = json.dumps(domain_json_schema(), indent=2, ensure_ascii=False) + "\n"
    if output:
        output.write_text(text)
    else:
        typer.echo(text, nl=False)


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
        _fail(e)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False), nl=False)


@app.command("run")
def run(
    config: Annotated[Path, typer.Argument(help="pipeline config YAML, e.g. pipelines/quickstart.yaml")],
    overrides: Overrides = None,
) -> None:
    """Run a pipeline's stages in order; outputs go to <output_dir>/<name>/."""
    from agentfactory.pipeline import PipelineConfig, run_pipeline

    try:
        cfg = load_config(config, PipelineConfig, overrides or [])
        run_pipeline(cfg, out)
    except ConfigError as e:
        _fail(e)
    out.print(f"[bold green]done[/]: outputs in {cfg.run_dir}")


if __name__ == "__main__":
    app()
