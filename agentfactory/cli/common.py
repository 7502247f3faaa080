"""What every command module shares: the consoles, the --set option and how invalid input exits."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from agentfactory.config import ConfigError

out = Console()
err = Console(stderr=True)

Overrides = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a key: --set a.b=value")]


def fail(e: ConfigError) -> None:
    """Print every problem of an invalid config (`file:line:col: message`) and exit with code 1."""
    for line in e.errors:
        err.print(str(line), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)
