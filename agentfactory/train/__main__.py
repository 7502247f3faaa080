"""`python -m agentfactory.train pretrain|sft CONFIG [--set key=value ...]`: the launcher torchrun runs.

    torchrun --nproc_per_node 2 -m agentfactory.train sft pipelines/tool_sft.yaml --set steps=50

(`agentfactory train sft|pretrain` is the same for one process.)
"""

from __future__ import annotations

import argparse
import os
import sys

from agentfactory.config import ConfigError, load_config
from agentfactory.train import PretrainConfig, SFTConfig, TrainingDiverged, pretrain, sft


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agentfactory.train", description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["pretrain", "sft"])
    p.add_argument("config", help="YAML file with a PretrainConfig / SFTConfig")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    cls, fn = (PretrainConfig, pretrain) if args.kind == "pretrain" else (SFTConfig, sft)
    try:
        result = fn(load_config(args.config, cls, args.overrides))
    except (ConfigError, TrainingDiverged, ValueError, OSError) as e:  # ValueError: also NotWritable
        print(f"error: {e}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":
        print(f"done: {result.steps} steps, final loss {result.final_loss}, outputs in {result.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
