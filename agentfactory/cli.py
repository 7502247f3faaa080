"""The `agentfactory` command: parse arguments, build a config, call one function.

Exit codes: 0 success, 1 invalid input (every problem printed as `file:line:col: message`),
2 usage errors (typer's default).
"""

from __future__ import annotations

import json
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Annotated, Literal

import typer
import yaml
from rich.console import Console
from rich.table import Table

from agentfactory.config import ConfigError, load_config
from agentfactory.eval.cli import eval_command

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
tools_app = typer.Typer(
    help="The tool repository: list and show tools, harvest MCP servers, serve a domain over MCP.",
    no_args_is_help=True,
)
model_app = typer.Typer(help="The K2 MoE model: presets and sizes.", no_args_is_help=True)
tokenizer_app = typer.Typer(
    help="Train the byte-level BPE tokenizer with the Kimi K2 chat format.", no_args_is_help=True
)
synth_app = typer.Typer(
    help="Agentic data synthesis: simulated tool-use episodes, judged, as a dataset.", no_args_is_help=True
)
data_app = typer.Typer(
    help="Inspect synthesized data (a synth run dir or an exported dataset).", no_args_is_help=True
)
app.add_typer(synth_app, name="synth")
app.add_typer(data_app, name="data")
train_app = typer.Typer(
    help="Pretrain or SFT a K2 model with MuonClip (exact resume, metrics.jsonl).", no_args_is_help=True
)
app.add_typer(train_app, name="train")
rl_app = typer.Typer(
    help="RL post-training: colocated trainer + vLLM, K1.5 loss, partial rollouts.", no_args_is_help=True
)
app.add_typer(rl_app, name="rl")
app.add_typer(model_app, name="model")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(domains_app, name="domains")
app.add_typer(tools_app, name="tools")
app.add_typer(config_app, name="config")
app.command("eval")(eval_command)

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


def _all_specs() -> list:
    from agentfactory.tools import domain_files, load_domain

    specs = []
    for f in domain_files():
        try:
            specs += load_domain(f).tool_specs()
        except ConfigError as e:
            _fail(e)
    return specs


@tools_app.command("list")
def tools_list(
    domain: Annotated[str | None, typer.Option(help="only this domain")] = None,
    category: Annotated[str | None, typer.Option(help="only this category")] = None,
) -> None:
    """List the tools of the shipped domains."""
    table = Table("tool", "domain", "category", "source", "description")
    specs = [s for s in _all_specs() if (domain in (None, s.domain)) and (category in (None, s.category))]
    for s in specs:
        table.add_row(s.name, s.domain, s.category, s.source, s.description[:60])
    out.print(table)
    out.print(f"{len(specs)} tools")


@tools_app.command("show")
def tools_show(
    name: Annotated[str, typer.Argument(help="tool name, or DOMAIN.TOOL when names collide")],
) -> None:
    """Print one tool's spec (OpenAI function format plus provenance) as JSON."""
    dom, _, tool = name.rpartition(".")
    hits = [s for s in _all_specs() if s.name == tool and dom in ("", s.domain)]
    if not hits:
        err.print(f"no tool named {name!r} (see `agentfactory tools list`)", markup=False)
        raise typer.Exit(1)
    typer.echo(json.dumps([s.model_dump(mode="json") for s in hits], indent=2, ensure_ascii=False))


@tools_app.command("harvest")
def tools_harvest(
    config: Annotated[Path, typer.Option("--config", help="MCP servers file")] = Path(
        "tools_repo/mcp_servers.yaml"
    ),
    only: Annotated[list[str] | None, typer.Option("--server", help="harvest only these servers")] = None,
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="write the ToolSpecs here (jsonl)")
    ] = None,
    strict: Annotated[bool, typer.Option(help="exit 1 if any server fails")] = False,
) -> None:
    """Connect to the listed MCP servers and turn their tools into ToolSpecs with provenance."""
    from agentfactory.tools import harvest_mcp, load_mcp_servers

    try:
        servers = [s for s in load_mcp_servers(config) if not only or s.name in only]
    except ConfigError as e:
        _fail(e)
    specs, failed = [], []
    table = Table("server", "tools", "status")
    for server in servers:
        try:
            got = harvest_mcp(server)
        except Exception as e:  # a broken server is reported and skipped; the others go on
            failed.append(server.name)
            table.add_row(server.name, "0", f"[red]failed: {type(e).__name__}: {e}"[:120])
            continue
        specs += got
        table.add_row(server.name, str(len(got)), "[green]ok")
    out.print(table)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("".join(s.model_dump_json() + "\n" for s in specs))
        out.print(f"wrote {len(specs)} tools to {output}", highlight=False)
    if failed and (strict or not specs):
        raise typer.Exit(1)


@tools_app.command("dedup")
def tools_dedup(
    inputs: Annotated[
        list[Path] | None, typer.Argument(help="extra ToolSpec jsonl files (e.g. from harvest)")
    ] = None,
    near: Annotated[float, typer.Option(help="MinHash Jaccard threshold")] = 0.7,
    semantic: Annotated[float, typer.Option(help="embedding cosine threshold (0 disables)")] = 0.9,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="write the report here (JSON)")] = None,
) -> None:
    """Deduplicate domain tools plus harvested/synthesized ones: exact, near (MinHash), semantic."""
    from agentfactory.records import ToolSpec
    from agentfactory.tools.dedup import dedup_tools

    specs = _all_specs()
    for path in inputs or []:
        specs += [
            ToolSpec.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()
        ]
    report = dedup_tools(specs, near_threshold=near, semantic_threshold=semantic or None)
    table = Table("dropped", "kept", "reason", "score", title="Merged tools")
    for m in report.merged:
        table.add_row(m.dropped, m.kept, m.reason, f"{m.score:.2f}")
    out.print(table)
    out.print(report.counts())
    if output:
        output.write_text(report.model_dump_json(indent=2))


@tools_app.command("synth")
def tools_synth(
    model: Annotated[str, typer.Option(help="checkpoint dir (vLLM) or served model name (with --base-url)")],
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    ] = None,
    categories: Annotated[
        list[str] | None, typer.Option("--category", help="categories (default: all)")
    ] = None,
    per_category: Annotated[int, typer.Option(help="domains proposed per category")] = 2,
    output: Annotated[
        Path, typer.Option("--out", "-o", help="where accepted domains and drafts.jsonl go")
    ] = Path("runs/toolsynth"),
    workers: Annotated[int, typer.Option(help="Ray workers (each builds its own engine)")] = 1,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="run in this process")] = False,
) -> None:
    """LLM hierarchical tool synthesis: categories → domains → tool sets → validated domain YAML."""
    from agentfactory.llm.config import EngineConfig, build_engine
    from agentfactory.synth.toolsynth import ToolSynthConfig, synthesize_tools

    engine_cfg = EngineConfig(kind="openai" if base_url else "vllm", model=model, base_url=base_url)
    cfg = ToolSynthConfig(categories=categories, per_category=per_category)
    drafts = synthesize_tools(
        lambda: build_engine(engine_cfg), cfg, output, use_ray=not no_ray, workers=workers
    )
    table = Table("category", "domain", "stage", "accepted", "reason", title="Tool synthesis")
    for d in drafts:
        table.add_row(
            d.category, d.name, d.stage, "[green]yes" if d.accepted else "[red]no", (d.reason or "")[:70]
        )
    out.print(table)
    out.print(
        f"{sum(d.accepted for d in drafts)} of {len(drafts)} drafts accepted; report: {output / 'drafts.jsonl'}"
    )


@tools_app.command("serve-mcp")
def tools_serve_mcp(
    domain: Annotated[str, typer.Argument(help="a shipped domain name or a domain YAML file")],
    seed: Annotated[int, typer.Option(help="world seed (each client session gets its own copy)")] = 0,
    http: Annotated[
        int | None, typer.Option("--http", help="serve streamable HTTP on this port (default: stdio)")
    ] = None,
    host: Annotated[str, typer.Option(help="HTTP bind address")] = "127.0.0.1",
) -> None:
    """Serve a YAML domain as an MCP server over stdio (default) or streamable HTTP."""
    from agentfactory.tools import find_domain
    from agentfactory.tools.mcp_server import serve_http, serve_stdio

    try:
        d = find_domain(domain)
    except ConfigError as e:
        _fail(e)
    if http is None:
        serve_stdio(d, seed)
    else:
        err.print(f"serving {d.name} on http://{host}:{http}/mcp", markup=False)
        serve_http(d, seed, host, http)


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
            _fail(e)
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
        _fail(e)
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


def _train(kind: str, config: Path, overrides: list[str] | None) -> None:
    from agentfactory.train import DataError, PretrainConfig, SFTConfig, TrainingDiverged, pretrain, sft

    cls, fn = (PretrainConfig, pretrain) if kind == "pretrain" else (SFTConfig, sft)
    try:
        cfg = load_config(config, cls, overrides or [])
    except ConfigError as e:
        _fail(e)
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
    from agentfactory.rl.loop import rl_run
    from agentfactory.train import TrainingDiverged

    flags = [f"engine.workers={workers}"] if workers else []
    flags += [f"engine.ray_address={ray_address}"] if ray_address else []
    try:
        cfg = load_config(config, RLConfig, [*(overrides or []), *flags])
    except ConfigError as e:
        _fail(e)
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
        _fail(e)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # a stage failed: say which and why
        err.print(f"run failed: {type(e).__name__}: {e}", markup=False)
        err.print(
            f"finished stages are kept; fix the cause and rerun to resume ({cfg.run_dir})", markup=False
        )
        raise typer.Exit(1) from None
    out.print(f"[bold green]done[/]: outputs in {cfg.run_dir}")


if __name__ == "__main__":
    app()
