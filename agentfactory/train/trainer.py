"""The pretrain / SFT loop: MuonClip, gradient accumulation, aux-loss-free balancing, exact resume.

One optimizer step:
  1. this process's micro-batches of the global batch (data.step_micro_batches);
  2. per micro-batch: forward (autocast in bfloat16 if asked), summed token cross-entropy divided by
     the *global* number of target tokens of the step, backward. Normalizing by the global count makes
     the gradient the same for any micro-batch size and number of processes (FSDP2 averages over
     ranks, hence the ×world);
  3. a non-finite loss or gradient norm stops training with `TrainingDiverged` before any update,
     so the last checkpoint on disk is the last good one;
  4. grad-norm clipping, lr from the schedule, Muon + AdamW, then QK-Clip from the per-head max
     logits the forward passes recorded (MAX over ranks);
  5. the routers' aux-loss-free bias update from the step's expert loads (SUM over ranks);
  6. one metrics row (metrics.jsonl) and, every `checkpoint_every` steps, a checkpoint.

`pretrain(config)` and `sft(config)` are what the CLI calls; `torchrun -m agentfactory.train` runs
them on several processes (see distributed.py).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console

from agentfactory.config import writable_dir
from agentfactory.devices import resolve_dtype
from agentfactory.model import K2Config, K2ForCausalLM, expert_parallel, load_tokenizer, update_router_bias
from agentfactory.model.moe import MoE
from agentfactory.optim import build_optimizer
from agentfactory.train import distributed as dist_utils
from agentfactory.train.checkpoint import (
    TrainerState,
    find_checkpoint,
    keep_rows_through,
    load_checkpoint,
    save_checkpoint,
)
from agentfactory.train.config import PretrainConfig, SFTConfig, TrainConfig
from agentfactory.train.data import IGNORE, DataError, DataStats, TokenDataset, load_chat, load_pretrain
from agentfactory.train.data import step_micro_batches as micro_batches
from agentfactory.train.schedule import lr_multiplier


class TrainingDiverged(RuntimeError):
    """The loss (or gradient norm) became NaN or infinite; raised before the bad update is applied."""


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path | None
    steps: int
    final_loss: float | None
    metrics_path: Path
    data: DataStats
    tokens_per_s: float


def pretrain(config: PretrainConfig, **kwargs: Any) -> TrainResult:
    """Train (or continue training) a K2 model on packed text or a copy curriculum; see `train` for
    the keyword args."""
    writable_dir(config.output_dir)  # fail before tokenizing the data
    tokenizer = load_tokenizer(config.tokenizer)
    return train(config, load_pretrain(config.data, tokenizer), tokenizer, **kwargs)


def sft(config: SFTConfig, **kwargs: Any) -> TrainResult:
    """Supervised fine-tuning on chat data (loss on assistant tokens only); see `train`."""
    writable_dir(config.output_dir)  # fail before tokenizing the data
    tokenizer = load_tokenizer(config.tokenizer)
    return train(config, load_chat(config.data, tokenizer), tokenizer, **kwargs)


def build_model(config: TrainConfig, tokenizer, device: torch.device) -> K2ForCausalLM:
    """A fresh preset model sized to the tokenizer (seeded by config.seed), or `init_from` weights."""
    if config.model.init_from:
        model = K2ForCausalLM.from_pretrained(config.model.init_from, device=device)
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens, the model at {config.model.init_from} only "
                f"{model.config.vocab_size}"
            )
        return model
    special = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_config = K2Config.preset(config.model.preset, **{**special, **config.model.overrides})
    torch.manual_seed(config.seed)
    with torch.device(device):
        return K2ForCausalLM(model_config)


class Trainer:
    """Holds the model, the MuonClip optimizer pair, the data and the run state of one process."""

    def __init__(self, config: TrainConfig, dataset: TokenDataset, tokenizer, d: dist_utils.Dist):
        self.config, self.dataset, self.tokenizer, self.d = config, dataset, tokenizer, d
        per_step = config.micro_batch_size * d.world
        if config.batch_size % per_step:
            raise ValueError(
                f"batch_size ({config.batch_size}) must be a multiple of micro_batch_size × processes ({per_step})"
            )
        self.out = Path(config.output_dir)
        self.metrics_path = self.out / "metrics.jsonl"
        par = config.parallel
        if par.gpus is not None and par.gpus != d.world:
            raise ValueError(f"parallel.gpus is {par.gpus} but the job has {d.world} processes")
        if d.world % par.ep:
            raise ValueError(f"parallel.ep ({par.ep}) must divide the number of processes ({d.world})")
        self.model = build_model(config, tokenizer, d.device)
        self.model.gradient_checkpointing = par.activation_checkpointing
        if config.compile:
            self.model.compile_layers()
        self.model.train()
        self.model.set_track_max_logits(True)
        self.experts = dist_utils.shard_model(self.model, d, par.ep) if d.enabled else None
        self.opt = build_optimizer(self.model, config.optimizer)
        self.autocast = (
            torch.autocast(d.device.type, dtype=torch.bfloat16)
            if resolve_dtype(config.dtype, d.device) == "bfloat16"
            else nullcontext()
        )
        self.state = TrainerState(data_fingerprint=dataset.fingerprint())
        self.moe_layers = [m for m in self.model.modules() if isinstance(m, MoE)]

    # ------------------------------------------------------------------------------ checkpoints
    def resume(self) -> bool:
        """Load output_dir/checkpoint if resuming and it exists; else start afresh (old metrics dropped)."""
        path = self.out / "checkpoint"
        if self.d.is_main and self.config.resume:
            find_checkpoint(path)  # may recover a checkpoint left half-swapped by a crash
        dist_utils.barrier(self.d)
        found = path if self.config.resume and (path / "trainer.json").exists() else None
        if found is None:
            if self.d.is_main:
                self.metrics_path.unlink(missing_ok=True)
            return False
        model_sd, optim_sd, state = load_checkpoint(found)
        if state.data_fingerprint != self.state.data_fingerprint:
            raise DataError(
                f"{found} was trained on different data (fingerprint {state.data_fingerprint}, now "
                f"{self.state.data_fingerprint}); use a new output_dir or resume: false"
            )
        dist_utils.load_full_state(self.model, self.opt.optimizers, model_sd, optim_sd, self.experts)
        for group in self.opt.param_groups:  # the config's peak lrs win over the checkpoint's
            group["initial_lr"] = self.config.optimizer.lr if group["kind"] == "muon" else self._adamw_lr
        self.state = state
        if self.d.is_main:  # drop rows logged after the checkpoint
            keep_rows_through(self.metrics_path, "step", state.step)
        return True

    @property
    def _adamw_lr(self) -> float:
        return self.config.optimizer.adamw_lr or self.config.optimizer.lr

    def save(self) -> Path:
        model_sd, optim_sd = dist_utils.full_state(self.model, self.opt.optimizers, self.experts)
        path = self.out / "checkpoint"
        if self.d.is_main:
            save_checkpoint(path, model_sd, optim_sd, self.state)
        dist_utils.barrier(self.d)
        return path

    def export(self) -> Path:
        """Final HF DeepseekV3 checkpoint + tokenizer in output_dir/model (loadable by vLLM)."""
        from agentfactory.model.tokenizer import save_tokenizer

        model_dir = self.out / "model"
        if self.d.enabled:
            model_sd, _ = dist_utils.full_state(self.model, (), self.experts)
            if self.d.is_main:
                plain = K2ForCausalLM(self.model.config)
                plain.load_state_dict(model_sd)
                plain.save_pretrained(model_dir)
        else:
            self.model.save_pretrained(model_dir)
        if self.d.is_main:
            save_tokenizer(self.tokenizer, model_dir)
        dist_utils.barrier(self.d)
        return model_dir

    # ----------------------------------------------------------------------------------- one step
    def step(self) -> dict[str, Any]:
        """One optimizer step; returns its metrics row. Raises TrainingDiverged on NaN/inf."""
        c, d = self.config, self.d
        step = self.state.step + 1
        t0 = time.perf_counter()
        batches = micro_batches(
            self.dataset, self.state.samples_seen, c.batch_size, c.micro_batch_size, c.seed, d.rank, d.world
        )
        counts = torch.tensor(
            [sum(int((lab[:, 1:] != IGNORE).sum()) for _, lab in batches)], dtype=torch.float64
        )
        n_targets = dist_utils.all_reduce_(counts, d).item()
        ce_total = torch.zeros((), dtype=torch.float64)
        for j, (ids, labels) in enumerate(batches):
            if d.enabled:  # FSDP2: reduce-scatter the gradients once, after the last micro-batch
                self.model.set_requires_gradient_sync(j == len(batches) - 1)
            ids, labels = ids.to(d.device), labels.to(d.device)
            with self.autocast:
                out = self.model(ids)
            targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
            ce = F.cross_entropy(
                out.logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"
            )
            loss = ce * (d.world / max(n_targets, 1))
            if out.aux_loss is not None:  # sequence-wise balance loss, averaged over all micro-batches
                loss = loss + out.aux_loss / len(batches)
            loss.backward()
            ce_total += ce.detach().double().cpu()
        loss_value = dist_utils.all_reduce_(ce_total, d).item() / max(n_targets, 1)
        if not math.isfinite(loss_value):
            self._diverged(step, f"loss is {loss_value}")
        # Under EP, dense and expert DTensors sit on different meshes: clip by the norm over all shards.
        clip = expert_parallel.clip_grad_norm_ if self.experts else torch.nn.utils.clip_grad_norm_
        grad_norm = clip(list(self.model.parameters()), c.grad_clip or float("inf"))
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        if not math.isfinite(grad_norm):
            self._diverged(step, f"gradient norm is {grad_norm}")

        max_logits = self.model.pop_max_logits()
        for s_H in max_logits:
            if s_H is not None:
                dist_utils.all_reduce_(s_H, d, op="max")
        mult = lr_multiplier(step, c.steps, c.schedule)
        self.opt.set_lr_multiplier(mult)
        clipped = self.opt.step(max_logits)
        self.opt.zero_grad(set_to_none=True)

        loads = [dist_utils.all_reduce_(m.tokens_per_expert, d).tolist() for m in self.moe_layers]
        update_router_bias(self.model)

        elapsed = time.perf_counter() - t0
        tokens = c.batch_size * batches[0][0].shape[1]
        self.state.step, self.state.samples_seen, self.state.loss = (
            step,
            self.state.samples_seen + c.batch_size,
            loss_value,
        )
        return {
            "step": step,
            "loss": loss_value,
            "epoch": self.state.samples_seen / len(self.dataset),
            "lr": c.optimizer.lr * mult,
            "grad_norm": grad_norm,
            "tokens": tokens,
            "target_tokens": int(n_targets),
            "tokens_per_s": tokens / elapsed,
            "step_s": elapsed,
            "max_logit": [None if s is None else float(s.max()) for s in max_logits],
            "clipped_heads": clipped,
            "expert_load": loads,
            "expert_max_over_mean": [max(x) / (sum(x) / len(x)) if sum(x) else 1.0 for x in loads],
        }

    def _diverged(self, step: int, what: str) -> None:
        info = self.out / "checkpoint" / "trainer.json"
        last = (
            f"the last good checkpoint is {info.parent} (step {json.loads(info.read_text())['step']})"
            if info.exists()
            else "no checkpoint was written yet"
        )
        raise TrainingDiverged(f"step {step}: {what}; training stopped before applying the update, {last}")


def progress_bar(console: Console, total: int, done: int, label: str = "train"):
    """A rich bar with a free-text `info` field (loss, tokens/s, ...) shared by the trainers."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )
    return progress, progress.add_task(label, total=total, completed=done, info="")


def train(
    config: TrainConfig,
    dataset: TokenDataset,
    tokenizer,
    *,
    console: Console | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Run (or resume) training to `config.steps`. `on_step(metrics)` is called after every step
    (after its checkpoint, if any), on every process."""
    writable_dir(config.output_dir)
    d = dist_utils.setup(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    console = console or Console(stderr=True)
    try:
        trainer = Trainer(config, dataset, tokenizer, d)
        out = trainer.out
        if d.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(config.model_dump_json(indent=2))
        if trainer.resume() and d.is_main:
            console.print(f"resumed from {out / 'checkpoint'} at step {trainer.state.step}")
        show = config.progress and d.is_main
        progress, task = progress_bar(console, config.steps, trainer.state.step) if show else (None, None)
        speeds: list[float] = []
        with progress or nullcontext(), trainer.metrics_path.open("a") if d.is_main else nullcontext() as log:
            while trainer.state.step < config.steps:
                row = trainer.step()
                speeds.append(row["tokens_per_s"])
                if log is not None:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                if trainer.state.step == config.steps or (
                    config.checkpoint_every and trainer.state.step % config.checkpoint_every == 0
                ):
                    trainer.save()
                if progress is not None:
                    clip = sum(len(h) for h in row["clipped_heads"])
                    info = f"loss {row['loss']:.4f}  {row['tokens_per_s']:,.0f} tok/s  clipped heads {clip}"
                    progress.update(task, completed=trainer.state.step, info=info)
                if on_step is not None:
                    on_step(row)
        model_dir = trainer.export() if config.save_model else None
        tokens_per_s = sorted(speeds)[len(speeds) // 2] if speeds else 0.0
        result = TrainResult(
            out,
            model_dir,
            trainer.state.step,
            trainer.state.loss,
            trainer.metrics_path,
            dataset.stats,
            tokens_per_s,
        )
        if d.is_main:
            summary = {
                "steps": result.steps,
                "final_loss": result.final_loss,
                "median_tokens_per_s": tokens_per_s,
                "processes": d.world,
                "data": asdict(dataset.stats),
            }
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
        return result
    finally:
        dist_utils.teardown(d)
