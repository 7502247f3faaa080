"""What the device is good at: block sizes for chunked work, and whether bfloat16 is fast.

The best block size differs by orders of magnitude between devices. On a CPU, blocks that stay in
cache are fastest. On a GPU every block is a kernel launch, and small blocks leave it idle waiting on
them (bench/mfu.py on an H200: 1,024 logsumexp launches a step, the GPU idle 40 % of it;
Newton–Schulz one expert matrix at a time), so blocks there are as large as memory comfortably allows.

bfloat16 is the K2 recipe's compute dtype, but only some CPUs run it natively (oneDNN's bf16 kernels
need AVX-512 or AMX). Elsewhere torch falls back to a reference path: on a 2-core AVX2 EPYC a bf16
matmul ran at 1.2 GFLOP/s against 56 in float32, a k2-mini training step 20× slower. `dtype: auto`
takes bfloat16 only where it is fast.
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import torch

Dtype = Literal["float32", "bfloat16"]


def chunk_elements(device: torch.device, cpu: int, gpu: int) -> int:
    """Elements per block on `device`: `cpu` (cache-sized) there, else `gpu` (launch-amortizing)."""
    return cpu if device.type == "cpu" else gpu


@functools.cache
def fast_bfloat16(device_type: str) -> bool:
    """Whether bfloat16 matmuls run natively on this machine's `device_type` ("cpu" or "cuda")."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without oneDNN: ask the CPU directly
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_dtype(dtype: Dtype | Literal["auto"], device: torch.device) -> Dtype:
    """`auto` → bfloat16 where it is fast on `device`, else float32; an explicit bfloat16 on a device
    without fast bf16 is kept (the user asked for it) but warned about once."""
    fast = fast_bfloat16(device.type)
    if dtype == "auto":
        return "bfloat16" if fast else "float32"
    if dtype == "bfloat16" and not fast:
        warnings.warn(
            f"bfloat16 has no native kernels on this {device.type} (oneDNN needs AVX-512/AMX): it runs "
            "many times slower than float32 here; use dtype: auto (or float32)",
            stacklevel=2,
        )
    return dtype
