"""MuonClip demo: the same high-learning-rate run with and without QK-Clip (K2 §2.1, Figure 2 in small).

A small K2 model learns a synthetic language (a random sparse Markov chain: every token has two
possible successors) with Muon at a learning rate high enough that some heads' max attention logits
keep growing. Without QK-Clip they run far past τ; with it they are held near τ (the clip uses the
logits recorded in the step's forward pass, so a step's own update can overshoot τ slightly before
the next clip pulls it back), at the same loss. Used by the unit tests and by
`bench/optimizer_step.py`, which saves the curves for the report.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from agentfactory.model import K2Config, K2ForCausalLM, update_router_bias
from agentfactory.optim import OptimizerConfig, build_optimizer


def markov_batch(gen: torch.Generator, successors_V2: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """(batch, seq) token ids walking the chain `successors_V2` from random start tokens."""
    V = successors_V2.shape[0]
    ids_BT = torch.empty(batch, seq, dtype=torch.long)
    ids_BT[:, 0] = torch.randint(16, V, (batch,), generator=gen)
    for t in range(1, seq):
        pick_B = torch.randint(0, successors_V2.shape[1], (batch,), generator=gen)
        ids_BT[:, t] = successors_V2[ids_BT[:, t - 1], pick_B]
    return ids_BT


def qk_clip_run(
    tau: float | None,
    *,
    lr: float = 0.1,
    steps: int = 60,
    preset: str = "debug",
    batch: int = 8,
    seq: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Train from scratch; per step: loss, max logit over all heads (recorded in the forward pass),
    and the number of clipped heads. `tau=None` trains with plain Muon (no clipping)."""
    torch.manual_seed(seed)
    model = K2ForCausalLM(K2Config.preset(preset))
    opt = build_optimizer(
        model, OptimizerConfig(lr=lr, adamw_lr=lr / 5, weight_decay=0.0, qk_clip_tau=tau)
    )  # no decay: it would cap the logits by itself and hide the effect
    model.set_track_max_logits(True)
    gen = torch.Generator().manual_seed(seed + 1)
    V = model.config.vocab_size
    successors_V2 = torch.randint(16, V, (V, 2), generator=gen)
    losses, max_logits, clipped = [], [], []
    t0 = time.perf_counter()
    for _ in range(steps):
        ids_BT = markov_batch(gen, successors_V2, batch, seq)
        loss = model(ids_BT, labels=ids_BT).loss
        loss.backward()
        recorded = model.pop_max_logits()
        heads = opt.step(recorded)
        opt.zero_grad()
        update_router_bias(model)
        losses.append(loss.item())
        max_logits.append(max(float(s.max()) for s in recorded if s is not None))
        clipped.append(sum(len(h) for h in heads))
    return {
        "tau": tau,
        "lr": lr,
        "loss": losses,
        "max_logit": max_logits,
        "clipped_heads": clipped,
        "seconds": time.perf_counter() - t0,
    }


def qk_clip_curve(tau: float = 20.0, **kwargs: Any) -> dict[str, Any]:
    """Both runs (same seed, data and lr), `{"muon": ..., "muonclip": ...}`."""
    return {"muon": qk_clip_run(None, **kwargs), "muonclip": qk_clip_run(tau, **kwargs)}
