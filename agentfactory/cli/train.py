"""`agentfactory train` and `agentfactory rl`: pretraining, SFT and colocated RL."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentfactory.cli.common import Overrides, err, fail, out
from agentfactory.config import ConfigError, load_config

train_app = typer.Typer(
    help="Pretrain or SFT a K2 model with MuonClip (exact resume, metrics.jsonl).", no_args_is_help=True
)
rl_app = typer.Typer(
    help="RL post-training: colocated trainer + vLLM, K1.5 loss, partial rollouts.", no_args_is_help=True
)


def _train(kind: str, config: Path, overrides: list[str] | None) -> None:
    from agentfactory.train import DataError, PretrainConfig, SFTConfig, TrainingDiverged, pretrain, sft

    cls, fn = (PretrainConfig, pretrain) if kind == "pretrain" else (SFTConfig, sft)
    try:
        cfg = load_config(config, cls, overrides or [])
    except ConfigError as e:
        fail(e)
    try:
        result = fn(cfg)
    except (DataError, TrainingDiverged, ValueError, OSError) as e:  # ValueError: also NotWritable
        err.print(f"{kind} failed: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    out.print(
        f"{kind}: {result.steps} steps, final loss {loss}, {result.tokens_per_s:.0f} tokens/s; model in {result.model_dir}",
        highlight=False,
    )


@train_app.command("pretrain")
def train_pretrain(
    config: Annotated[
        Path, typer.Argument(help="YAML of a PretrainConfig (model, tokenizer, data, optimizer, ...)")
    ],
    overrides: Overrides = None,
) -> None:
    """Pretrain on packed text; resumes from <output_dir>/checkpoint; NaN loss stops with the last good checkpoint."""
    _train("pretrain", config, overrides)


@train_app.command("sft")
def train_sft(
    config: Annotated[
        Path, typer.Argument(help="YAML of an SFTConfig (chat data: jsonl/parquet/HF dataset)")
    ],
    overrides: Overrides = None,
) -> None:
    """Supervised fine-tuning on chat data (loss on assistant turns, tool calls included)."""
    _train("sft", config, overrides)


@rl_app.command("run")
def rl_run_cmd(
    config: Annotated[Path, typer.Argument(help="an RLConfig YAML, e.g. pipelines/rl.yaml")],
    overrides: Overrides = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="rollout engines (> 1: Ray actors)")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="a Ray cluster for the engine workers")
    ] = None,
) -> None:
    """Colocated RL from an SFT checkpoint; resumes from <output_dir>/checkpoint; NaN stops cleanly."""
    from agentfactory.llm.vllm_health import EngineDeadError
    from agentfactory.rl.config import RLConfig
    from agentfactory.rl.run import rl_run
    from agentfactory.train import TrainingDiverged

    flags = [f"engine.workers={workers}"] if workers else []
    flags += [f"engine.ray_address={ray_address}"] if ray_address else []
    try:
        cfg = load_config(config, RLConfig, [*(overrides or []), *flags])
    except ConfigError as e:
        fail(e)
    if not Path(cfg.model).is_dir():
        err.print(
            f"rl failed: model {cfg.model} is not a checkpoint directory (e.g. an SFT run's model/)",
            markup=False,
        )
        raise typer.Exit(1)
    try:
        result = rl_run(cfg, console=out)
    # OSError: a model path that is not a checkpoint; EngineDeadError: vLLM died again after a restart
    except (TrainingDiverged, ValueError, OSError, EngineDeadError) as e:
        err.print(f"rl failed: {e}", markup=False)
        raise typer.Exit(1) from None
    reward = f"{result.final_reward:.3f}" if result.final_reward is not None else "n/a"
    out.print(
        f"rl: {result.iterations} iterations, policy v{result.policy_version}, last reward {reward}; model in {result.model_dir}",
        highlight=False,
    )
