"""Forward+backward tokens/s of our K2ForCausalLM vs transformers' DeepseekV3ForCausalLM at k2-mini.

Both models get the same weights (ours saved, HF loaded from that checkpoint), the same batch, the
same precision and the same number of threads. Each model lives in its own worker process, so
peak memory (RSS) is per model; the parent alternates single steps between the two workers, so
noise from other load on the machine hits both alike. Precisions: `float32` (weights and math), and
`autocast-bf16` (fp32 weights, bf16 matmuls under torch.autocast: on CPUs with AVX512-BF16/AMX the
matmuls run several times faster). Prints a table with the ratios (goal ≥ 2×) and writes
bench/results/model_step.json.

    python bench/model_step.py [--batch 4] [--seq 256] [--repeats 5] [--precision float32 autocast-bf16]
    python bench/model_step.py --batch 2 --seq 2048 --out bench/results/model_step_seq2048.json  # SFT's length

On a machine shared with other work use `--threads 1`: with 2 intra-op threads and one core busy
elsewhere, every op waits on the descheduled thread and steps get ~10× slower and erratic.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "model_step.json"
PRECISIONS = ("float32", "autocast-bf16")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _worker(kind: str, ckpt: str, args: dict, conn) -> None:
    """Build one model, then answer a precision name (-> seconds of one step) and 'mem' (-> MiB) until 'stop'."""
    import contextlib

    import torch

    torch.set_num_threads(args["threads"])
    if kind == "ours":
        from agentfactory.model import K2ForCausalLM

        model = K2ForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    else:
        from transformers import DeepseekV3ForCausalLM

        model = DeepseekV3ForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    model.train()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args["batch"], args["seq"]), generator=gen)
    rss_before = _rss_mib()
    conn.send("ready")
    while (cmd := conn.recv()) != "stop":
        if cmd in PRECISIONS:
            autocast = cmd == "autocast-bf16"
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            t0 = time.perf_counter()
            with ctx:
                loss = model(ids, labels=ids).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
            conn.send(time.perf_counter() - t0)
        elif cmd == "mem":
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            conn.send(
                {"rss_before_steps_mib": rss_before, "peak_rss_mib": peak, "step_mib": peak - rss_before}
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="k2-mini")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument(
        "--precision", nargs="+", default=None, choices=PRECISIONS, help="default: both where bf16 is native"
    )
    p.add_argument("--threads", type=int, default=0, help="0 = torch's default for this machine")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = p.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from agentfactory.devices import fast_bfloat16
    from agentfactory.model import K2Config, K2ForCausalLM, count_params

    if args.precision is None:  # bf16 autocast without native kernels crawls (agentfactory.devices)
        args.precision = list(PRECISIONS) if fast_bfloat16("cpu") else ["float32"]
    threads = args.threads or torch.get_num_threads()
    config = K2Config.preset(args.preset)
    cfg = {"batch": args.batch, "seq": args.seq, "threads": threads}
    ckpt = tempfile.mkdtemp(prefix="bench_model_step_")
    torch.manual_seed(0)
    K2ForCausalLM(config).save_pretrained(ckpt)

    ctx = mp.get_context("spawn")
    workers = {}
    for kind in ("ours", "transformers"):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(kind, ckpt, cfg, child), daemon=True)
        proc.start()
        workers[kind] = (proc, parent)
    for _, conn in workers.values():
        assert conn.recv() == "ready"

    tokens = args.batch * args.seq
    results: dict[str, dict] = {}
    for precision in args.precision:
        times: dict[str, list[float]] = {k: [] for k in workers}
        for i in range(args.warmup + args.repeats):
            for kind, (_, conn) in workers.items():  # alternate: background load hits both alike
                conn.send(precision)
                dt = conn.recv()
                if i >= args.warmup:
                    times[kind].append(dt)
        results[precision] = {
            kind: {
                "median_s": statistics.median(ts),
                "tokens_per_s": tokens / statistics.median(ts),
                "all_s": ts,
            }
            for kind, ts in times.items()
        }
        results[precision]["ratio"] = (
            results[precision]["ours"]["tokens_per_s"] / results[precision]["transformers"]["tokens_per_s"]
        )
    mem = {}
    for kind, (proc, conn) in workers.items():
        conn.send("mem")
        mem[kind] = conn.recv()
        conn.send("stop")
        proc.join()
    total, active = count_params(config)

    title = f"{args.preset} forward+backward, batch {args.batch}×{args.seq}, {threads} threads"
    table = Table(title=title)
    for col in ("precision", "model", "tokens/s", "median step", "ratio"):
        table.add_column(col, justify="right")
    for precision, r in results.items():
        for kind in workers:
            ratio = f"{r['ratio']:.2f}×" if kind == "ours" else ""
            table.add_row(
                precision,
                kind,
                f"{r[kind]['tokens_per_s']:,.0f}",
                f"{r[kind]['median_s'] * 1e3:.0f} ms",
                ratio,
            )
    console = Console()
    console.print(table)
    for kind, m in mem.items():
        console.print(
            f"{kind}: peak RSS {m['peak_rss_mib']:,.0f} MiB ({m['step_mib']:,.0f} MiB above the loaded model)"
        )
    console.print(f"params: {total / 1e6:.2f}M total, {active / 1e6:.2f}M active")
    for precision, r in results.items():
        console.print(f"[bold]{precision}: ours/transformers = {r['ratio']:.2f}×[/bold] (goal ≥ 2×)")
    if len(results) == 2:
        cross = (
            results["autocast-bf16"]["ours"]["tokens_per_s"]
            / results["float32"]["transformers"]["tokens_per_s"]
        )
        console.print(f"ours autocast-bf16 vs transformers float32: {cross:.2f}× (different precision)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "preset": args.preset,
        **cfg,
        "params_total": total,
        "params_active": active,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "results": results,
        "memory": mem,
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
