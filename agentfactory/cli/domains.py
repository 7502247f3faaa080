"""`agentfactory domains`: validate, list, scaffold and export the schema of tool domains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agentfactory.cli.common import err, fail, out
from agentfactory.config import ConfigError

domains_app = typer.Typer(
    help="Validate, list and inspect tool domains (tools_repo/domains/*.yaml).", no_args_is_help=True
)


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
        fail(e)


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


@domains_app.command("new")
def domains_new(
    name: Annotated[str, typer.Argument(help="domain name (lowercase, e.g. pet_clinic)")],
    category: Annotated[str, typer.Option(help="one of tools_repo/categories.yaml")] = "productivity",
    output: Annotated[Path | None, typer.Option("--out", "-o", help="file to write")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
) -> None:
    """Scaffold a valid, commented domain YAML that teaches the format."""
    from agentfactory.tools.loader import REPO_DIR
    from agentfactory.tools.scaffold import scaffold

    path = output or REPO_DIR / "domains" / f"{name}.yaml"
    if path.exists() and not force:
        err.print(f"{path} exists (use --force to overwrite)", markup=False)
        raise typer.Exit(1)
    try:
        text = scaffold(name, category)
    except ValueError as e:
        err.print(str(e), markup=False)
        raise typer.Exit(1) from None
    path.write_text(text)
    out.print(f"wrote {path}: edit it, then run `agentfactory domains validate {path}`", highlight=False)
