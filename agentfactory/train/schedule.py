"""Learning-rate schedules as a pure function of the step: resuming needs no scheduler state.

cosine:   linear warmup to 1, then cosine from 1 to min_lr_ratio at the last step
wsd:      linear warmup, stable at 1, then the last `decay_fraction` of steps decays linearly
          (warmup-stable-decay, as used for Kimi/Moonlight/MiniCPM pretraining)
constant: linear warmup, then 1
"""

from __future__ import annotations

import math

from agentfactory.train.config import ScheduleConfig


def lr_multiplier(step: int, total_steps: int, schedule: ScheduleConfig) -> float:
    """Multiplier of the peak lr for optimizer step `step` (1-based) of `total_steps`."""
    warmup = min(schedule.warmup_steps, total_steps)
    if step <= warmup:
        return step / warmup  # warmup ends exactly at 1
    if schedule.kind == "constant":
        return 1.0
    floor = schedule.min_lr_ratio
    if schedule.kind == "cosine":
        span = max(total_steps - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_steps = max(round(schedule.decay_fraction * total_steps), 1)
    decay_start = max(total_steps - decay_steps, warmup)
    if step <= decay_start:
        return 1.0
    progress = min((step - decay_start) / max(total_steps - decay_start, 1), 1.0)
    return 1.0 - (1.0 - floor) * progress
