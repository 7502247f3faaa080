"""GPU model FLOPs utilization (MFU) of a full MuonClip training step, and Muon vs AdamW on the GPU.

A K2 layer stack scaled up to fill a GPU (default: Moonlight-16B-A3B's layer shape, 4 layers,
vocab 32k: hidden 2048, 16 heads, MLA with kv_lora 512, 64 routed experts top-6 + 2 shared) trains
in autocast-bf16 with the trainer's step: forward with max-logit recording, backward, MuonClip step
with QK-Clip. MFU = model FLOPs per token (agentfactory/model/flops.py; training = 3x forward,
attention over the full context) x tokens/s / the GPU's peak dense bf16 FLOPs. Goal: >= 30 %.
The same step with AdamW in place of MuonClip runs in the same process as the baseline; `--hf`
adds transformers' DeepseekV3ForCausalLM with the same weights and AdamW (the model-step baseline of
bench/model_step.py, on the GPU). `--accum N` runs N micro-batches per optimizer step, as real
training does (K2 steps on millions of tokens), so the optimizer's share shrinks as it would there.
`--profile` writes the top GPU kernels of one step of each next to the JSON.

On a machine without CUDA it prints a notice and exits 0 (`make bench` skips it); `--device cpu
--peak-tflops X` runs the same code on the CPU (what the unit test does, at toy size).

    python bench/mfu.py [--layers 4] [--batch 8] [--seq 2048] [--steps 10] [--accum 1] [--hf] [--profile]
    python bench/mfu.py --preset k2-mini --layers 8 --set hidden_size=2048 ...   # k2-mini's shape, scaled
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

RESULTS = Path(__file__).parent / "results" / "mfu.json"
# Dense bf16 tensor-core peaks (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 125.0, "4090": 165.2}


def peak_tflops(device: torch.device, override: float | None) -> float:
    if override:
        return override
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops
    raise SystemExit(f"unknown peak bf16 FLOPs for {name!r}: pass --peak-tflops")


def train_step(model, step, ids, accum: int) -> None:
    for _ in range(accum):
        with torch.autocast(ids.device.type, dtype=torch.bfloat16):
            loss = model(ids, labels=ids).loss / accum
        loss.backward()
    step()
    model.zero_grad(set_to_none=True)


def time_steps(model, step, ids, steps: int, warmup: int, accum: int = 1) -> list[float]:
    out = []
    for i in range(warmup + steps):
        _sync(ids.device)
        t0 = time.perf_counter()
        train_step(model, step, ids, accum)
        _sync(ids.device)
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_step(model, step, ids, accum: int, path: Path) -> None:
    """The 30 costliest kernels of one step, so a GPU session leaves evidence of where time goes."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ids.is_cuda else [])
    with profile(activities=activities) as prof:
        train_step(model, step, ids, accum)
        _sync(ids.device)
    key = "cuda_time_total" if ids.is_cuda else "cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70))


def hf_baseline(model, device: torch.device):
    """transformers' DeepseekV3ForCausalLM loaded from our checkpoint (same weights), on `device`."""
    from transformers import DeepseekV3ForCausalLM

    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    shm = Path("/dev/shm")
    in_memory = shm.is_dir() and shutil.disk_usage(shm).free > 2 * size
    with tempfile.TemporaryDirectory(dir=shm if in_memory else None) as ckpt:
        model.save_pretrained(ckpt)
        hf = DeepseekV3ForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    return hf.to(device).train()


def optimizer_step(name: str, model) -> Callable[[], object]:
    """MuonClip as the trainer runs it (QK-Clip from the recorded max logits), or plain AdamW."""
    from agentfactory.optim import OptimizerConfig, build_optimizer

    if name == "muonclip":
        pair = build_optimizer(model, OptimizerConfig())
        return lambda: pair.step(model.pop_max_logits())
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused).step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="moonlight-16b-a3b", help="the layer shape")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="K2Config overrides")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--hf", action="store_true", help="also time transformers' DeepseekV3 (AdamW)")
    p.add_argument("--profile", action="store_true", help="write the top kernels of one step of each")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile each decoder layer (fuses the elementwise)"
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("mfu: no CUDA device, skipped (the GPU benchmark; --device cpu --peak-tflops X runs it here)")
        return

    from rich.console import Console
    from rich.table import Table

    from agentfactory.model import K2Config, K2ForCausalLM, count_params
    from agentfactory.model.flops import train_flops_per_token

    device = torch.device(args.device)
    dense = min(1, args.layers - 1)
    special = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}  # inside the smaller vocab
    config = K2Config.preset(
        args.preset,
        num_hidden_layers=args.layers,
        first_k_dense_replace=dense,
        vocab_size=args.vocab,
        **special,
        **{k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)},
    )
    torch.manual_seed(0)
    with device:
        model = K2ForCausalLM(config).train()
        ids = torch.randint(0, args.vocab, (args.batch, args.seq))
    model.set_track_max_logits(True)
    if args.compile:
        model.compile_layers()
    runs = {}
    for name in ("muonclip", "adamw"):  # one optimizer's state in memory at a time
        step = optimizer_step(name, model)
        runs[name] = time_steps(model, step, ids, args.steps, args.warmup, args.accum)
        if args.profile:
            profile_step(model, step, ids, args.accum, args.out.with_suffix(f".profile.{name}.txt"))
        del step
    experts_impl = None
    if args.hf:
        hf = hf_baseline(model, device)
        del model
        experts_impl = getattr(hf.config, "_experts_implementation", None)
        runs["hf-adamw"] = time_steps(
            hf, optimizer_step("adamw", hf), ids, args.steps, args.warmup, args.accum
        )
    tokens = args.batch * args.seq * args.accum
    flops = train_flops_per_token(config, args.seq)
    peak = peak_tflops(device, args.peak_tflops) * 1e12
    results = {}
    for name, ts in runs.items():
        tps = tokens / statistics.median(ts)
        results[name] = {"median_s": statistics.median(ts), "tokens_per_s": tps, "mfu": flops * tps / peak}
    total, active = count_params(config)
    ratio = results["muonclip"]["median_s"] / results["adamw"]["median_s"]

    title = f"{args.preset} x {args.layers} layers, batch {args.batch}x{args.seq} x {args.accum} micro, bf16"
    table = Table(title=title)
    for col in ("optimizer", "step (s)", "tokens/s", "MFU"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(name, f"{r['median_s']:.3f}", f"{r['tokens_per_s']:,.0f}", f"{100 * r['mfu']:.1f}%")
    console = Console()
    console.print(table)
    mfu = results["muonclip"]["mfu"]
    console.print(f"MuonClip MFU {100 * mfu:.1f}% (goal >= 30%: {'met' if mfu >= 0.3 else 'NOT met'}); "
                  f"MuonClip step / AdamW step {ratio:.2f}x")  # fmt: skip
    if args.hf:
        speedup = results["hf-adamw"]["median_s"] / results["adamw"]["median_s"]
        console.print(
            f"ours vs transformers' DeepseekV3 (both AdamW, experts {experts_impl}): {speedup:.2f}x"
        )
    args.out.write_text(
        json.dumps(
            {
                "config": {k: v for k, v in vars(args).items() if k != "out"},
                "params": {"total": total, "active": active},
                "train_flops_per_token": flops,
                "peak_flops": peak,
                "results": results,
                "muonclip_vs_adamw_step": ratio,
                "ours_vs_hf_step": speedup if args.hf else None,
                "hf_experts_implementation": experts_impl,
                "goal_mfu": 0.3,
                "device": torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else platform.processor(),
                "versions": _versions(),
            },
            indent=1,
        )
    )


def _versions() -> dict[str, str]:
    import transformers

    return {
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "transformers": transformers.__version__,
    }


if __name__ == "__main__":
    main()
