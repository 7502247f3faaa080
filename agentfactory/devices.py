"""Chunk sizes for work done in blocks (cross-entropy rows, max-logit rows, Newton–Schulz batches).

The best size differs by orders of magnitude between devices. On a CPU, blocks that stay in cache
are fastest. On a GPU every block is a kernel launch, and small blocks leave it idle waiting on them
(bench/mfu.py on an H200: 1,024 logsumexp launches a step, the GPU idle 40 % of it; Newton–Schulz
one expert matrix at a time), so blocks there are as large as memory comfortably allows.
"""

from __future__ import annotations

import torch


def chunk_elements(device: torch.device, cpu: int, gpu: int) -> int:
    """Elements per block on `device`: `cpu` (cache-sized) there, else `gpu` (launch-amortizing)."""
    return cpu if device.type == "cpu" else gpu
