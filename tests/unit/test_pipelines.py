"""The shipped pipeline configs: each validates, and the GPU quickstart is the quickstart scaled up."""

import shutil
from pathlib import Path

import pytest
from rich.console import Console

from agentfactory.config import load_config
from agentfactory.pipeline import PipelineConfig, run_synth_stage

PIPELINES = Path(__file__).parents[2] / "pipelines"


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


@pytest.mark.parametrize("name", ["quickstart", "quickstart_gpu"])
def test_quickstart_configs_validate(name):
    cfg = load_config(PIPELINES / f"{name}.yaml", PipelineConfig)
    assert cfg.name == name and cfg.synth and cfg.pretrain and cfg.sft and cfg.rl and cfg.eval


def test_the_gpu_quickstart_differs_from_the_quickstart_only_in_scale():
    """Its measured result (README) speaks for the quickstart's recipe only while nothing else differs:
    same domains, held-out worlds, tokenizer, model, optimizer, RL and evaluation."""
    cpu = _flat(load_config(PIPELINES / "quickstart.yaml", PipelineConfig).model_dump())
    gpu = _flat(load_config(PIPELINES / "quickstart_gpu.yaml", PipelineConfig).model_dump())
    assert cpu.keys() == gpu.keys()
    differ = {k for k in cpu if cpu[k] != gpu[k]}
    train = {"steps", "batch_size", "micro_batch_size", "checkpoint_every", "schedule.warmup_steps"}
    assert differ == {
        "name", "smoke", "synth.worlds", "corpus.worlds", "corpus.recall_docs",
        *(f"{stage}.train.{k}" for stage in ("pretrain", "sft") for k in train),
    }  # fmt: skip
    # more synthesized worlds, still none of them held out or in the corpus
    assert gpu["eval.world_start"] + gpu["eval.worlds"] <= 100 == gpu["synth.world_start"]
    assert gpu["synth.world_start"] + gpu["synth.worlds"] <= gpu["corpus.world_start"]


def test_a_finished_synthesis_is_skipped_until_its_config_changes(tmp_path):
    """A rerun neither starts workers nor rewrites the dataset; more tasks resume and re-export."""
    cfg = PipelineConfig(
        name="s", output_dir=str(tmp_path), synth={"domains": ["smart_home"], "worlds": 1, "max_tasks": 4}
    )
    console = Console(record=True, width=200)
    first = run_synth_stage(cfg, console, use_ray=False)
    hf = tmp_path / "s" / "synth" / "dataset" / "hf"
    stamp = hf.stat().st_mtime_ns
    again = run_synth_stage(cfg, console, use_ray=False)
    assert "synth: done earlier, skipped" in console.export_text()
    assert again == first and hf.stat().st_mtime_ns == stamp
    shutil.rmtree(hf)  # the export deleted by hand: exported again
    assert run_synth_stage(cfg, console, use_ray=False)["rows"] == first["rows"] and hf.exists()
    more = cfg.model_copy(update={"synth": cfg.synth.model_copy(update={"max_tasks": 6})})
    extended = run_synth_stage(more, console, use_ray=False)
    assert extended["tasks"] == 6 > first["tasks"] == 4 and extended["rows"] >= first["rows"]
