"""The `agentfactory` command: parse arguments, build a config, call one function.

Exit codes: 0 success, 1 invalid input (every problem printed as `file:line:col: message`),
2 usage errors (typer's default).
"""

from __future__ import annotations

from importlib.metadata import version as pkg_version
from typing import Annotated

import typer

from agentfactory.cli import data, domains, model, pipeline, tools, train
from agentfactory.cli.common import out
from agentfactory.cli.eval import eval_command

app = typer.Typer(
    name="agentfactory",
    help="The Kimi K2 post-training recipe, runnable: tool domains, agentic data synthesis, SFT and RL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(domains.domains_app, name="domains")
app.add_typer(tools.tools_app, name="tools")
app.add_typer(model.model_app, name="model")
app.add_typer(model.tokenizer_app, name="tokenizer")
app.add_typer(data.synth_app, name="synth")
app.add_typer(data.data_app, name="data")
app.add_typer(train.train_app, name="train")
app.add_typer(train.rl_app, name="rl")
app.add_typer(pipeline.config_app, name="config")
app.command("run")(pipeline.run)
app.command("eval")(eval_command)


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


if __name__ == "__main__":
    app()
