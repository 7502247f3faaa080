"""`python -m agentfactory ...`: the CLI where its console script is not installed (a checkout on
PYTHONPATH, as on a borrowed GPU machine)."""

from agentfactory.cli import app

app(prog_name="agentfactory")
