"""The model stages of a pipeline run: tokenizer, pretrain corpus + pretrain, SFT, held-out evaluation.

Each stage reads what earlier stages left in the run directory and writes its own subfolder, with a
`stage.done` marker when finished, so a rerun (after Ctrl-C or kill) skips finished stages and the
trainer resumes unfinished ones from their checkpoint. Trainer knobs pass through `train:` and are
validated by the trainer's own strict config.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from rich.console import Console

from agentfactory.config import StrictModel
from agentfactory.eval import EvalConfig


class TokenizerStage(StrictModel):
    vocab_size: int = Field(4096, ge=300)
    spaces: Literal["trailing", "leading"] = Field(
        "trailing", description="which word a space belongs to (trailing: values copy token for token)"
    )
    digits: Literal["single", "pairs", "runs"] = Field(
        "single",
        description="digit tokens: one per digit, two-digit pieces from the left, or BPE-merged runs",
    )


class CorpusStage(StrictModel):
    """A generated pretraining corpus: oracle conversations over worlds no other stage uses."""

    world_start: int = Field(1000, ge=0)
    worlds: int = Field(10, ge=1)
    recall_docs: int = Field(
        0, ge=0, description="extra recall documents: values in the corpus's formats, text, the values again"
    )
    recall_items: tuple[int, int] = Field((6, 16), description="values per recall document (inclusive)")
    recall_gap: int = Field(
        0, ge=0, description="up to this many characters of corpus text before the repeat"
    )
    recall_fresh: bool = Field(
        False, description="redraw each value's content (digits, most words): only copying predicts it"
    )
    recall_keyed: float = Field(
        0.0, ge=0, le=1, description="share of recall documents that ask for each value by name"
    )


class TrainStage(StrictModel):
    preset: str = "k2-mini"
    train: dict[str, Any] = Field(default_factory=dict, description="PretrainConfig / SFTConfig overrides")
    seq_len: int = Field(1024, ge=16)


class CopyStage(StrictModel):
    """The copy curriculum that runs before pretraining: the model learns in-context copying first,
    then pretrains on the corpus from there. `data` holds `train.RecallData` fields with `kind:
    recall` (values in the corpus's formats; `paths` default to the run's corpus) or
    `train.CopyData` fields (random-token lists, the default kind)."""

    preset: str = "k2-mini"
    data: dict[str, Any] = Field(default_factory=dict, description="RecallData or CopyData fields")
    train: dict[str, Any] = Field(default_factory=dict, description="PretrainConfig overrides")

    @field_validator("data")
    @classmethod
    def _valid_copy_data(cls, data: dict[str, Any]) -> dict[str, Any]:
        from agentfactory.train.config import CopyData, RecallData

        if data.get("kind", "copy") == "recall":  # a typo fails at load, not after synthesis
            RecallData.model_validate({"paths": ["corpus.jsonl"], **data})
        else:
            CopyData.model_validate({**data, "kind": "copy"})
        return data

    def data_for(self, corpus: Path) -> dict[str, Any]:
        """The trainer's data section, with a recall curriculum's paths defaulting to `corpus`."""
        if self.data.get("kind") == "recall":
            return {"paths": [str(corpus)], **self.data}
        return {**self.data, "kind": "copy"}

    @property
    def random_lists(self) -> dict[str, Any]:
        """CopyData fields for the held-out random-list check (this curriculum's, if it is one)."""
        return {} if self.data.get("kind") == "recall" else self.data


class RLStage(StrictModel):
    """Colocated RL from the SFT checkpoint; `config` passes through to `RLConfig` (envs, iterations, ...)."""

    config: dict[str, Any] = Field(default_factory=dict)


def run_rl(stage: RLStage, init: Path, out: Path, seed: int, console: Console) -> dict:
    from agentfactory.rl.config import RLConfig
    from agentfactory.rl.run import rl_run

    cfg = RLConfig.model_validate({"seed": seed, **stage.config, "model": str(init), "output_dir": str(out)})
    result = rl_run(cfg, console=console)
    return {
        "iterations": result.iterations,
        "final_reward": result.final_reward,
        "model": str(result.model_dir),
    }


class EvalStage(EvalConfig):
    models: list[str] = Field(
        default_factory=lambda: ["base", "sft"], description="which checkpoints to evaluate"
    )
    engine: dict[str, Any] = Field(
        default_factory=dict,
        description="the engine's keyword arguments; `kind: torch` evaluates on TorchEngine (no vLLM needed)",
    )


def done(stage_dir: Path) -> dict | None:
    marker = stage_dir / "stage.done"
    return json.loads(marker.read_text()) if marker.exists() else None


def mark_done(stage_dir: Path, summary: dict) -> dict:
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "stage.done").write_text(json.dumps(summary, indent=2))
    return summary


def build_corpus(cfg: CorpusStage, out: Path, console: Console) -> dict:
    """Oracle episodes over fresh worlds as plain-text logs (the pretraining 'web' of this world),
    plus `recall_docs` recall documents over the same text (train/recall.py)."""
    from agentfactory.synth.config import SynthConfig
    from agentfactory.synth.pipeline import domain_paths, make_tasks
    from agentfactory.synth.render import trajectory_text
    from agentfactory.synth.worker import EpisodeWorker
    from agentfactory.train.recall import recall_documents

    synth = SynthConfig(world_start=cfg.world_start, worlds=cfg.worlds)
    paths = domain_paths(synth)
    tasks = make_tasks(synth, paths)
    worker = EpisodeWorker(synth, paths)
    texts = [
        trajectory_text(rec)
        for i in range(0, len(tasks), 64)
        for rec in worker.run([(t, 0) for t in tasks[i : i + 64]])
    ]
    recall = recall_documents(
        texts,
        cfg.recall_docs,
        random.Random(cfg.world_start),
        cfg.recall_items,
        cfg.recall_gap,
        cfg.recall_fresh,
        cfg.recall_keyed,
    )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w") as f:
        for text in texts + recall:
            f.write(json.dumps({"text": text}) + "\n")
    console.print(f"pretraining corpus: {len(texts)} conversations, {len(recall)} recall documents")
    return {"documents": len(texts), "recall_documents": len(recall), "path": str(out / "corpus.jsonl")}


def train_tokenizer_stage(
    cfg: TokenizerStage, corpora: list[Path], dataset: Path, out: Path, console: Console
) -> dict:
    """Train the tokenizer; on a chat dataset, also measure how many tool-call argument values it
    spells in the call as in the context they were copied from."""
    from agentfactory.eval.copying import copyable_arguments
    from agentfactory.model import iter_corpus, train_tokenizer

    tok = train_tokenizer(iter_corpus(corpora), cfg.vocab_size, out, spaces=cfg.spaces, digits=cfg.digits)
    summary: dict[str, Any] = {"vocab_size": len(tok), "path": str(out)}
    line = f"tokenizer: {len(tok)} tokens"
    if dataset.exists():
        import datasets

        summary["copyable_arguments"] = copyable_arguments(tok, datasets.load_from_disk(str(dataset)))
        line += f", {100 * summary['copyable_arguments']['copyable']:.0f}% of argument values copyable"
    console.print(line)
    return summary


def _train(
    kind: str,
    stage: TrainStage | CopyStage,
    tokenizer: Path,
    data: dict[str, Any],
    init_from: Path | None,
    out: Path,
    seed: int,
) -> dict:
    from agentfactory.train import PretrainConfig, SFTConfig, pretrain, sft

    base = {
        "model": {"preset": stage.preset, **({"init_from": str(init_from)} if init_from else {})},
        "tokenizer": str(tokenizer),
        "data": data,
        "output_dir": str(out),
        "seed": seed,
        **stage.train,
    }
    cls, fn = (PretrainConfig, pretrain) if kind == "pretrain" else (SFTConfig, sft)
    result = fn(cls.model_validate(base))
    return {
        "steps": result.steps,
        "final_loss": result.final_loss,
        "tokens_per_s": result.tokens_per_s,
        "model": str(result.model_dir),
    }


def copy_scores(model_dir: Path, tokenizer_dir: Path, copy: dict[str, Any], corpus: Path | None) -> dict:
    """Held-out in-context copying of a checkpoint: random-token lists (the curriculum's kind, another
    seed) and, with a corpus, fresh lists of the corpus's ids and emails (what tool use copies)."""
    from agentfactory.eval.copying import copy_accuracy
    from agentfactory.model import K2ForCausalLM, load_tokenizer
    from agentfactory.train import CopyData, copy_rows, recall_rows
    from agentfactory.train.recall import recall_documents

    tok = load_tokenizer(tokenizer_dir)
    model = K2ForCausalLM.from_pretrained(model_dir)
    held_out = CopyData.model_validate({**copy, "kind": "copy", "rows": 100, "seed": -1})
    scores = {"random_lists": copy_accuracy(model, copy_rows(held_out, tok))}
    if corpus is not None and corpus.exists():
        texts = [t for t in (json.loads(line)["text"] for line in corpus.open()) if not t.startswith("Note:")]
        # the corpus's own values, 6-16 in a list, no gap: comparable across recipes
        docs = recall_documents(texts, 100, random.Random(-1), items=(6, 16), gap=0, fresh=False)
        scores["corpus_ids"] = copy_accuracy(model, recall_rows(docs, tok))
    return scores


def evaluate_models(cfg: EvalStage, models: dict[str, Path], out: Path, console: Console) -> dict:
    """Held-out success of each checkpoint on one engine (vLLM, or TorchEngine with `engine.kind:
    torch`): the first is loaded at start, the others are swapped in place (`update_weights`, ~1 s)
    instead of paying an engine start (~35 s for vLLM) each.
    Each summary also gets the checkpoint teacher-forced on the oracle's episodes of the same tasks:
    its copying of tool-call argument values and where its turns first go wrong (`teacher_forced`)."""
    from agentfactory.eval import evaluate, evaluate_engine
    from agentfactory.llm import TorchEngine, VLLMEngine
    from agentfactory.synth.agents import OracleAgent

    results = {}
    config = EvalConfig.model_validate(cfg.model_dump(exclude={"models", "engine"}))
    names = [n for n in cfg.models if n in models]
    if not names:
        return results
    evaluate(OracleAgent(), config, episodes=out / "oracle.jsonl")  # the same tasks, solved
    kwargs = dict(cfg.engine)
    engine_cls = TorchEngine if kwargs.pop("kind", "vllm") == "torch" else VLLMEngine
    engine = engine_cls(str(models[names[0]]), **kwargs)
    try:
        for version, name in enumerate(names):
            if version:
                engine.update_weights(models[name], version)
            t0 = time.perf_counter()
            summary = evaluate_engine(engine, config, episodes=out / f"{name}.jsonl")
            summary |= teacher_forced(models[name], out / "oracle.jsonl")
            (out / f"{name}.json").write_text(json.dumps(summary, indent=2))
            copied, turns = summary["argument_copying"], summary["turn_errors"]
            console.print(
                f"eval {name}: {summary['success']}/{summary['tasks']} held-out tasks, argument values "
                f"copied {100 * copied['token_accuracy']:.0f}% of tokens, first token "
                f"{100 * copied['first_token']:.0f}%; {turns['right']}/{turns['turns']} oracle turns "
                f"right token for token ({time.perf_counter() - t0:.0f}s)"
            )
            results[name] = summary["success_rate"]
    finally:
        engine.close()
    return results


def teacher_forced(model_dir: Path, episodes: Path, rows: int = 48) -> dict:
    """A checkpoint teacher-forced on saved episodes: copying of argument values
    (`eval.copying.argument_rows`) and where its assistant turns first go wrong (`eval.anatomy`)."""
    from agentfactory.eval.anatomy import turn_errors
    from agentfactory.eval.copying import argument_rows, copy_accuracy
    from agentfactory.model import K2ForCausalLM, load_tokenizer
    from agentfactory.records import Trajectory

    records = [Trajectory.model_validate_json(line).to_openai() for line in episodes.read_text().splitlines()]
    tok, model = load_tokenizer(model_dir), K2ForCausalLM.from_pretrained(model_dir)
    return {
        "argument_copying": copy_accuracy(model, argument_rows(records, tok, limit=rows), limit=rows),
        "turn_errors": turn_errors(model, tok, records, limit=rows),
    }


def _copy_line(scores: dict) -> str:
    return ", ".join(
        f"{name.replace('_', ' ')} {100 * s['token_accuracy']:.0f}% of tokens ({100 * s['exact']:.0f}% exact)"
        for name, s in scores.items()
    )


def run_model_stages(config: Any, console: Console, results: dict) -> None:
    """corpus → tokenizer → copy curriculum → pretrain → SFT → RL → eval, each skipped when its
    stage.done exists."""
    run = config.run_dir
    seed = config.seed

    def stage(name: str, fn: Any) -> None:
        d = run / name
        if (prior := done(d)) is not None:
            console.print(f"[dim]{name}: done earlier, skipped")
            results[name] = prior
            return
        t0 = time.perf_counter()
        summary = fn(d)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        results[name] = mark_done(d, summary)

    dataset = run / "synth" / "dataset" / "hf"
    if config.corpus is not None:
        stage("corpus", lambda d: build_corpus(config.corpus, d, console))
    corpora = [p for p in (run / "corpus" / "corpus.jsonl", dataset) if p.exists()]
    if config.tokenizer is not None:
        stage("tokenizer", lambda d: train_tokenizer_stage(config.tokenizer, corpora, dataset, d, console))
    tokenizer = run / "tokenizer"
    corpus = run / "corpus" / "corpus.jsonl"
    models: dict[str, Path] = {}

    def trained(kind: str, cfg: TrainStage | CopyStage, data: dict, init: Path | None, d: Path) -> dict:
        summary = _train(kind, cfg, tokenizer, data, init, d, seed)
        if kind == "pretrain":
            copy = config.curriculum.random_lists if config.curriculum is not None else {}
            summary["copy_accuracy"] = copy_scores(Path(summary["model"]), tokenizer, copy, corpus)
            console.print(f"{d.name}: in-context copying {_copy_line(summary['copy_accuracy'])}")
        return summary

    if config.curriculum is not None:
        copy_data = config.curriculum.data_for(corpus)
        stage("curriculum", lambda d: trained("pretrain", config.curriculum, copy_data, None, d))
        models["curriculum"] = run / "curriculum" / "model"
    if config.pretrain is not None:
        text = {"paths": [str(corpus)], "seq_len": config.pretrain.seq_len}
        stage("pretrain", lambda d: trained("pretrain", config.pretrain, text, models.get("curriculum"), d))
        models["base"] = run / "pretrain" / "model"
    if config.sft is not None:
        chat = {"paths": [str(dataset)], "seq_len": config.sft.seq_len}
        stage("sft", lambda d: trained("sft", config.sft, chat, models.get("base"), d))
        models["sft"] = run / "sft" / "model"
    if config.rl is not None and "sft" in models:
        stage("rl", lambda d: run_rl(config.rl, models["sft"], d, seed, console))
        models["rl"] = run / "rl" / "model"
    if config.eval is not None:
        random.seed(seed)
        stage("eval", lambda d: evaluate_models(config.eval, models, d, console))
