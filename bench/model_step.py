"""Forward+backward tokens/s of our K2ForCausalLM vs transformers' DeepseekV3ForCausalLM at k2-mini.

Both models get the same weights (ours saved, HF loaded from that checkpoint), the same batch, the
same dtype and the same number of threads. Each model lives in its own worker process, so peak
memory (RSS) is per model; the parent alternates single steps between the two workers, so noise
from other load on the machine hits both alike. Prints a table with the ratio (goal ≥ 2×) and
writes bench/results/model_step.json.

    python bench/model_step.py [--batch 8] [--seq 256] [--repeats 7] [--dtype float32]
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


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _worker(kind: str, ckpt: str, args: dict, conn) -> None:
    """Build one model, then answer 'step' (-> seconds) and 'mem' (-> MiB) until 'stop'."""
    import torch

    torch.set_num_threads(args["threads"])
    dtype = getattr(torch, args["dtype"])
    if kind == "ours":
        from agentfactory.model import K2ForCausalLM

        model = K2ForCausalLM.from_pretrained(ckpt, dtype=dtype)
    else:
        from transformers import DeepseekV3ForCausalLM

        model = DeepseekV3ForCausalLM.from_pretrained(ckpt, dtype=dtype)
    model.train()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args["batch"], args["seq"]), generator=gen)
    rss_before = _rss_mib()
    conn.send("ready")
    while (cmd := conn.recv()) != "stop":
        if cmd == "step":
            t0 = time.perf_counter()
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
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=0, help="0 = torch's default for this machine")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from agentfactory.model import K2Config, K2ForCausalLM, count_params

    threads = args.threads or torch.get_num_threads()
    config = K2Config.preset(args.preset)
    cfg = {"batch": args.batch, "seq": args.seq, "dtype": args.dtype, "threads": threads}
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

    times: dict[str, list[float]] = {k: [] for k in workers}
    for i in range(args.warmup + args.repeats):
        for kind, (_, conn) in workers.items():  # alternate: background load hits both alike
            conn.send("step")
            dt = conn.recv()
            if i >= args.warmup:
                times[kind].append(dt)
    mem = {}
    for kind, (proc, conn) in workers.items():
        conn.send("mem")
        mem[kind] = conn.recv()
        conn.send("stop")
        proc.join()

    tokens = args.batch * args.seq
    rows = {
        kind: {
            "median_s": statistics.median(ts),
            "tokens_per_s": tokens / statistics.median(ts),
            "all_s": ts,
            **mem[kind],
        }
        for kind, ts in times.items()
    }
    ratio = rows["ours"]["tokens_per_s"] / rows["transformers"]["tokens_per_s"]
    total, active = count_params(config)

    table = Table(
        title=f"{args.preset} forward+backward, batch {args.batch}×{args.seq}, {args.dtype}, {threads} threads"
    )
    for col in ("model", "tokens/s", "median step", "peak RSS", "step memory"):
        table.add_column(col, justify="right")
    for kind, r in rows.items():
        table.add_row(
            kind,
            f"{r['tokens_per_s']:,.0f}",
            f"{r['median_s'] * 1e3:.0f} ms",
            f"{r['peak_rss_mib']:,.0f} MiB",
            f"{r['step_mib']:,.0f} MiB",
        )
    console = Console()
    console.print(table)
    console.print(f"params: {total / 1e6:.2f}M total, {active / 1e6:.2f}M active")
    console.print(f"[bold]speed ratio ours/transformers: {ratio:.2f}×[/bold] (goal ≥ 2×)")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "preset": args.preset,
        **cfg,
        "params_total": total,
        "params_active": active,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "ratio": ratio,
        "results": rows,
    }
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
