"""Pipeline configs (`pipelines/*.yaml`) and `agentfactory run`, which executes their stages in order.

Each stage owns a small config section; a stage that is absent from the file is skipped. The
run directory `runs/<name>/` collects every stage's outputs, so a rerun can skip finished stages.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import Field
from rich.console import Console
from rich.table import Table

from agentfactory.config import StrictModel, writable_dir
from agentfactory.stages import (
    CopyStage,
    CorpusStage,
    EvalStage,
    RLStage,
    TokenizerStage,
    TrainStage,
    done,
    mark_done,
    run_model_stages,
)
from agentfactory.synth.config import SynthConfig
from agentfactory.tools import domain_files, load_domain


class DomainsStage(StrictModel):
    """Load and validate tool domains (the tool repository)."""

    paths: list[str] = Field(
        default_factory=list, description="domain files or folders; default: tools_repo/domains"
    )
    include: list[str] | None = Field(None, description="only these domain names (default: all)")


class ReportStage(StrictModel):
    """The HTML report of the run (built from the files the stages wrote)."""

    tau: float | None = Field(None, description="QK-Clip threshold drawn on the max-logit plot")


class PipelineConfig(StrictModel):
    name: str = Field(
        pattern=r"^[A-Za-z0-9_.\-]+$", description="run name; outputs go to <output_dir>/<name>"
    )
    seed: int = 0
    output_dir: str = "runs"
    domains: DomainsStage | None = DomainsStage()
    synth: SynthConfig | None = Field(
        None, description="agentic data synthesis (then export to a HF dataset)"
    )
    corpus: CorpusStage | None = Field(
        None, description="a generated pretraining corpus (oracle conversations)"
    )
    tokenizer: TokenizerStage | None = None
    curriculum: CopyStage | None = Field(
        None, description="a copy curriculum before pretraining (train.RecallData or train.CopyData)"
    )
    pretrain: TrainStage | None = None
    sft: TrainStage | None = None
    rl: RLStage | None = Field(None, description="colocated RL from the SFT checkpoint")
    eval: EvalStage | None = Field(
        None, description="held-out evaluation of base / SFT / RL checkpoints on vLLM"
    )
    report: ReportStage | None = ReportStage()
    smoke: list[str] = Field(default_factory=list, description="overrides applied by `--smoke` (a quick run)")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _domain_paths(stage: DomainsStage) -> list[Path]:
    if not stage.paths:
        return domain_files()
    out: list[Path] = []
    for p in map(Path, stage.paths):
        out += sorted(p.glob("*.yaml")) if p.is_dir() else [p]
    return out


def run_domains(stage: DomainsStage, run_dir: Path, console: Console) -> dict:
    """Validate every domain and print the tool repository; raises ConfigError on a bad domain."""
    domains = [load_domain(p) for p in _domain_paths(stage)]
    if stage.include is not None:
        domains = [d for d in domains if d.name in stage.include]
    table = Table(title=f"Tool repository: {len(domains)} domains")
    for col in ("domain", "category", "tools", "tasks", "reads/writes"):
        table.add_column(col)
    for d in domains:
        writes = sum(1 for t in d.tools if t.effect)
        table.add_row(
            d.name, d.category, str(len(d.tools)), str(len(d.tasks)), f"{len(d.tools) - writes}/{writes}"
        )
    console.print(table)
    summary = {
        "domains": [
            {
                "name": d.name,
                "category": d.category,
                "tools": [t.name for t in d.tools],
                "tasks": [t.id for t in d.tasks],
            }
            for d in domains
        ]
    }
    (run_dir / "repository.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_pipeline(config: PipelineConfig, console: Console | None = None) -> dict:
    """Run the configured stages in order; returns a summary per stage."""
    console = console or Console()
    run_dir = writable_dir(config.run_dir)
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2, by_alias=True))
    results: dict[str, dict] = {}
    if config.domains is not None:
        t0 = time.perf_counter()
        results["domains"] = run_domains(config.domains, run_dir, console)
        results["domains"]["seconds"] = round(time.perf_counter() - t0, 3)
    if config.synth is not None:
        results["synth"] = run_synth_stage(config, console)
    run_model_stages(config, console, results)
    (run_dir / "summary.json").write_text(json.dumps(results, indent=2))
    if config.report is not None:
        from agentfactory.report import build_report

        path = build_report(run_dir, tau=config.report.tau, title=config.name)
        console.print(f"report: {path}")
    return results


def run_synth_stage(
    config: PipelineConfig, console: Console, use_ray: bool = True, overwrite: bool = False
) -> dict:
    """Synthesize into <run>/synth (resuming what is there), then export <run>/synth/dataset.

    Skipped when an earlier run finished and exported the same synthesis (its records' config and
    task count) and the export is still there: a rerun would start Ray and rewrite the same dataset."""
    import shutil

    from agentfactory.synth.export import export_dataset, write_examples
    from agentfactory.synth.pipeline import run_synth
    from agentfactory.synth.store import ShardStore

    out = writable_dir(config.run_dir / "synth")
    if overwrite and out.exists():
        shutil.rmtree(out)
    key = {"fingerprint": config.synth.fingerprint(), "max_tasks": config.synth.max_tasks}
    prior = done(out)
    if prior is not None and prior.get("key") == key and (out / "dataset" / "hf").exists():
        console.print("[dim]synth: done earlier, skipped")
        return prior
    t0 = time.perf_counter()
    summary = run_synth(config.synth, out, console, use_ray=use_ray)
    store = ShardStore(out, config.synth.fingerprint())
    exported = export_dataset(store.records(), out / "dataset")
    write_examples(store.records(), out / "examples.html")
    console.print(f"dataset: {exported['rows']} rows in {exported['path']}")
    seconds = round(time.perf_counter() - t0, 3)
    return mark_done(
        out,
        {**summary, "dataset": exported["path"], "rows": exported["rows"], "key": key, "seconds": seconds},
    )
