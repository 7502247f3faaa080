"""MuonClip (Kimi K2): Newton–Schulz, Muon, QK-Clip, and the Muon + AdamW param-group builder."""

from agentfactory.optim.groups import OptimizerConfig, OptimizerPair, build_optimizer, param_groups
from agentfactory.optim.muon import (
    Muon,
    adjusted_lr,
    muon_update,
    newton_schulz_batch_,
    zeropower_via_newtonschulz,
)
from agentfactory.optim.qk_clip import qk_clip, qk_clip_row_scales, scale_head_rows_, scale_rows_

__all__ = [
    "Muon",
    "OptimizerConfig",
    "OptimizerPair",
    "adjusted_lr",
    "build_optimizer",
    "muon_update",
    "newton_schulz_batch_",
    "param_groups",
    "qk_clip",
    "qk_clip_row_scales",
    "scale_head_rows_",
    "scale_rows_",
    "zeropower_via_newtonschulz",
]
