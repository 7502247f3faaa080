"""Training checkpoints for exact resume: model, optimizer, step, data position, RNG states.

Layout of `output_dir/checkpoint/`:
    model.pt      full model state dict (persistent buffers included: the routers' balancing biases)
    optim.pt      full Muon + AdamW state, keyed by parameter name
    trainer.json  step, samples seen, data fingerprint, last loss
    rng.pt        torch and Python RNG states of rank 0
The learning-rate schedule is a pure function of the step, so it needs no state. A checkpoint is
written to `checkpoint.tmp/` and swapped in by renames, so a crash while saving leaves the previous
checkpoint intact: the last good checkpoint always survives. `keep_rows_through` cuts a metrics log
back to the checkpoint on resume, atomically, so a kill at any moment loses no row and duplicates none.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass
class TrainerState:
    """Where training stands after `step` optimizer steps."""

    step: int = 0
    samples_seen: int = 0
    data_fingerprint: str = ""
    loss: float | None = None


def write_checkpoint_dir(
    directory: Path, model_sd: dict, optim_sd: dict, state: dict, extra: dict[str, str] | None = None
) -> Path:
    """Write weights, optimizer, RNG states, `trainer.json` (+ extra text files) atomically: into
    `<dir>.tmp`, then swapped in by renames, so a crash keeps the last complete checkpoint."""
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(model_sd, tmp / "model.pt")
    torch.save(optim_sd, tmp / "optim.pt")
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / "rng.pt")
    for name, text in (extra or {}).items():
        (tmp / name).write_text(text)
    (tmp / "trainer.json").write_text(json.dumps(state, indent=2))
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def save_checkpoint(directory: Path, model_sd: dict, optim_sd: dict, state: TrainerState) -> Path:
    """Write the checkpoint atomically (call on rank 0 only)."""
    return write_checkpoint_dir(directory, model_sd, optim_sd, asdict(state))


def find_checkpoint(directory: Path) -> Path | None:
    """The checkpoint dir if complete; also recovers one left as `.old` by a crash mid-swap."""
    old = directory.with_name(directory.name + ".old")
    if not (directory / "trainer.json").exists() and (old / "trainer.json").exists():
        old.rename(directory)
    return directory if (directory / "trainer.json").exists() else None


def keep_rows_through(metrics: Path, key: str, last: int) -> None:
    """Keep the jsonl rows with `row[key] <= last` (dropping a torn line a kill may leave), replacing
    the file by a rename: a kill during the rewrite leaves the old file or the new one, never less."""
    if not metrics.exists():
        return
    kept = []
    for line in metrics.read_text().splitlines():
        try:
            if json.loads(line).get(key, 0) <= last:
                kept.append(line + "\n")
        except (json.JSONDecodeError, AttributeError):
            continue
    tmp = metrics.with_name(metrics.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(metrics)


def load_checkpoint(directory: Path) -> tuple[dict, dict, TrainerState]:
    """(model state dict, optimizer state dict, trainer state); restores the RNG states too."""
    state = TrainerState(**json.loads((directory / "trainer.json").read_text()))
    model_sd = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    optim_sd = torch.load(directory / "optim.pt", map_location="cpu", weights_only=False)
    rng = torch.load(directory / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    return model_sd, optim_sd, state
