"""MuonClip as K2 runs it: Muon on the hidden matrices, AdamW on the rest, QK-Clip after each step.

`param_groups(model)` sorts parameters by role, read from shapes and module types rather than names:

| kind           | which parameters                                                  | optimizer | decay |
|----------------|-------------------------------------------------------------------|-----------|-------|
| `muon`         | hidden 2-D weights and stacked (E, out, in) expert weights, router | Muon      | yes   |
| `adamw_embed`  | nn.Embedding tables, and the output head (a Linear onto the vocab) | AdamW     | yes   |
| `adamw_vector` | every tensor with < 2 dims: norms, biases, a learned router bias   | AdamW     | no    |

(The aux-loss-free routing bias is a buffer moved by `update_router_bias`, not by any optimizer.)
`build_optimizer(model, config)` returns an `OptimizerPair`, whose `step()` runs both optimizers and
then QK-Clip when `config.qk_clip_tau` is set.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch import nn

from agentfactory.config import StrictModel
from agentfactory.devices import resolve_dtype
from agentfactory.optim.muon import Muon
from agentfactory.optim.qk_clip import qk_clip


class OptimizerConfig(StrictModel):
    """MuonClip hyper-parameters (peak learning rates; the trainer's schedule multiplies them)."""

    lr: PositiveFloat = Field(0.02, description="Muon peak learning rate (update RMS matched to AdamW's)")
    adamw_lr: PositiveFloat | None = Field(
        3e-3, description="AdamW peak learning rate for embeddings, head, norms; None = same as lr"
    )
    weight_decay: float = Field(0.1, ge=0, description="decoupled weight decay (matrices and embeddings)")
    momentum: float = Field(0.95, ge=0, lt=1, description="Muon momentum μ")
    nesterov: bool = Field(True, description="Nesterov momentum for Muon")
    ns_steps: PositiveInt = Field(5, description="Newton–Schulz iterations")
    ns_dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto",
        description="Newton–Schulz precision; auto: bfloat16 (as K2) where the device runs it natively",
    )
    adamw_betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW (β1, β2)")
    adamw_eps: PositiveFloat = Field(1e-8, description="AdamW ε")
    qk_clip_tau: PositiveFloat | None = Field(
        100.0, description="QK-Clip threshold τ on per-head max logits (K2: 100); None = no clipping"
    )


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by kind (`muon`, `adamw_embed`, `adamw_vector`); see the module table."""
    vocab_sizes = {m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)}
    embed_like: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding) or (
            isinstance(module, nn.Linear) and module.out_features in vocab_sizes
        ):  # a Linear onto the vocabulary is the output head, an embedding in disguise
            embed_like.add(id(module.weight))
    groups: dict[str, list[nn.Parameter]] = {"muon": [], "adamw_embed": [], "adamw_vector": []}
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in embed_like:
            groups["adamw_embed"].append(p)
        elif p.ndim < 2:
            groups["adamw_vector"].append(p)
        elif p.ndim in (2, 3):
            groups["muon"].append(p)
        else:
            raise ValueError(f"no optimizer rule for a {p.ndim}-D parameter of shape {tuple(p.shape)}")
    return groups


class OptimizerPair:
    """Muon + AdamW (+ QK-Clip) stepped together. Groups are plain dicts tagged `kind`, each with an
    `initial_lr` that `set_lr_multiplier` scales (the learning-rate schedule)."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW, model: nn.Module, qk_clip_tau: float | None):
        self.muon, self.adamw, self.model, self.qk_clip_tau = muon, adamw, model, qk_clip_tau

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return (self.muon, self.adamw)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.muon.param_groups + self.adamw.param_groups

    def set_lr_multiplier(self, multiplier: float) -> None:
        for group in self.param_groups:
            group["lr"] = group["initial_lr"] * multiplier

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, max_logits: list[torch.Tensor | None] | None = None) -> list[list[int]]:
        """Both optimizer steps, then QK-Clip (from `max_logits`, default the model's recorded ones).
        Returns the clipped heads per layer (empty lists when clipping is off)."""
        self.muon.step()
        self.adamw.step()
        if self.qk_clip_tau is None:
            return []
        return qk_clip(self.model, self.qk_clip_tau, max_logits)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def build_optimizer(model: nn.Module, config: OptimizerConfig | None = None) -> OptimizerPair:
    """The Muon + AdamW pair for `model` (groups from `param_groups`), with QK-Clip at config.qk_clip_tau."""
    config = config or OptimizerConfig()
    groups = param_groups(model)
    adamw_lr = config.adamw_lr or config.lr
    muon = Muon(
        [{"params": groups["muon"], "kind": "muon", "initial_lr": config.lr}],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        ns_steps=config.ns_steps,
        ns_dtype=resolve_dtype(config.ns_dtype, _device(model)),
    )
    adamw = torch.optim.AdamW(
        [
            {"params": groups["adamw_embed"], "kind": "adamw_embed", "weight_decay": config.weight_decay},
            {"params": groups["adamw_vector"], "kind": "adamw_vector", "weight_decay": 0.0},
        ],
        lr=adamw_lr,
        betas=config.adamw_betas,
        eps=config.adamw_eps,
    )
    for group in adamw.param_groups:
        group["initial_lr"] = adamw_lr
    return OptimizerPair(muon, adamw, model, config.qk_clip_tau)
