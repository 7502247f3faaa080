"""`agentfactory model` and `agentfactory tokenizer`: presets, sizes, memory plans; tokenizer training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from agentfactory.cli.common import err, fail, out
from agentfactory.config import ConfigError, load_config

model_app = typer.Typer(help="The K2 MoE model: presets and sizes.", no_args_is_help=True)
tokenizer_app = typer.Typer(
    help="Train the byte-level BPE tokenizer with the Kimi K2 chat format.", no_args_is_help=True
)


def _human(n: int) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


@model_app.command("info")
def model_info(
    preset: Annotated[
        str, typer.Argument(help="debug, k2-mini, moonlight-16b-a3b, deepseek-v3-671b, kimi-k2-1t")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Build a preset on the meta device (no memory) and print its total and active parameters."""
    from agentfactory.model import describe

    try:
        info = describe(preset)
    except (KeyError, ValueError) as e:
        err.print(str(e).strip("'\""), markup=False)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    table = Table("", preset, show_header=False)
    for key, value in info.items():
        if key.endswith("_params"):
            value = f"{_human(value)} ({value:,})"
        table.add_row(key.replace("_", " "), str(value))
    out.print(table)


@model_app.command("plan")
def model_plan(
    preset: Annotated[str | None, typer.Option(help="K2 preset (default kimi-k2-1t)")] = None,
    gpus: Annotated[int | None, typer.Option(help="devices in the job")] = None,
    ep: Annotated[
        int | None, typer.Option(help="expert-parallel degree (default: gcd(experts, fsdp))")
    ] = None,
    fsdp: Annotated[int | None, typer.Option(help="FSDP degree for all parameters (default: gpus)")] = None,
    dtype: Annotated[str | None, typer.Option(help="bfloat16 (fp32 master + optimizer) or float32")] = None,
    seq_len: Annotated[int | None, typer.Option(help="tokens per sequence (default 4096)")] = None,
    micro_batch: Annotated[int | None, typer.Option(help="sequences per forward pass (default 1)")] = None,
    gpu_mem: Annotated[float, typer.Option(help="GiB per device")] = 80.0,
    config: Annotated[
        Path | None, typer.Option("--config", help="a trainer YAML (e.g. pipelines/k2_1t_cluster.yaml)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Memory per device (weights, grads, optimizer states, activations) under FSDP2 + expert parallel."""
    from pydantic import ValidationError

    from agentfactory.model.plan import COMPONENTS, GIB, PlanConfig, plan

    fields: dict = {"preset": "kimi-k2-1t"}
    if config is not None:  # a trainer config gives the defaults; flags override them
        from agentfactory.train import SFTConfig

        try:
            tc = load_config(config, SFTConfig)
        except ConfigError as e:
            fail(e)
        fields = dict(
            preset=tc.model.preset, gpus=tc.parallel.gpus, ep=tc.parallel.ep, dtype=tc.dtype,
            seq_len=tc.data.seq_len, micro_batch=tc.micro_batch_size,
        )  # fmt: skip
    flags = dict(
        preset=preset, gpus=gpus, ep=ep, fsdp=fsdp, dtype=dtype, seq_len=seq_len, micro_batch=micro_batch
    )
    fields.update({k: v for k, v in flags.items() if v is not None}, gpu_mem_gib=gpu_mem)
    if fields.get("gpus") is None:
        err.print("say how many devices: --gpus N (or parallel.gpus in --config)", markup=False)
        raise typer.Exit(1)
    try:
        result = plan(PlanConfig(**fields))
    except ValidationError as e:
        for x in e.errors(include_url=False):
            err.print(
                f"{'.'.join(map(str, x['loc'])) or 'plan'}: {x['msg'].removeprefix('Value error, ')}",
                markup=False,
            )
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return

    def size(b: float) -> str:
        return f"{b / GIB:,.2f} GiB" if b >= GIB / 10 else f"{b / 2**20:,.2f} MiB"

    out.print(
        f"[bold]{result['preset']}[/] ({_human(result['params']['total'])} params) on {result['gpus']} "
        f"devices: fsdp {result['fsdp']}, ep {result['ep']} ({result['experts_per_ep_rank']} experts per "
        f"rank), {result['dtype']}, {result['micro_batch']} × {result['seq_len']} tokens per micro-batch",
        highlight=False,
    )
    table = Table("per device", "memory", "what")
    for key, value in result["bytes_per_device"].items():
        table.add_row(key.replace("_", " "), size(value), COMPONENTS[key])
    table.add_section()
    for key, label in (("no_checkpointing", "no activation checkpointing"), ("checkpointing", "with it")):
        table.add_row("[bold]total", size(result["total_bytes"][key]), label)
    out.print(table)
    color = {"fits": "green", "does not fit": "red"}.get(result["verdict"], "yellow")
    out.print(f"[{color}]{result['verdict']}[/] in {gpu_mem:g} GiB per device", highlight=False)


@tokenizer_app.command("train")
def tokenizer_train(
    corpus: Annotated[
        list[Path], typer.Argument(help=".txt files (one text per line) or chat .jsonl records")
    ],
    output: Annotated[Path, typer.Option("--out", "-o", help="tokenizer directory to write")],
    vocab_size: Annotated[int, typer.Option(help="vocabulary size, special tokens included")] = 8192,
    min_frequency: Annotated[int, typer.Option(help="minimum pair frequency for a merge")] = 2,
    spaces: Annotated[
        Literal["trailing", "leading"],
        typer.Option(help="trailing: a space ends a word, so values copy token for token"),
    ] = "trailing",
) -> None:
    """Train a byte-level BPE (digits split) with the K2 special tokens and chat template."""
    from agentfactory.model import iter_corpus, train_tokenizer

    missing = [str(p) for p in corpus if not p.exists()]
    if missing:
        err.print(f"no such corpus file: {', '.join(missing)}", markup=False)
        raise typer.Exit(1)
    try:
        tok = train_tokenizer(
            iter_corpus(corpus), vocab_size, output, min_frequency=min_frequency, spaces=spaces
        )
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError) as e:
        err.print(
            f"cannot read the corpus: {e} (expected .txt, .jsonl, .parquet or a saved dataset dir)",
            markup=False,
        )
        raise typer.Exit(1) from None
    out.print(f"wrote {output} ({len(tok)} tokens)", highlight=False)
