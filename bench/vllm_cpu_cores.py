"""vLLM-CPU with one core reserved for its scheduler (vLLM's default) vs none (`cpu_reserved_cores=0`,
our default on machines of ≤ 2 cores): engine start and rollout time, on the same machine and model.

vLLM-CPU binds one compute thread per core it does not reserve; on a 2-core machine its default
leaves a single thread. The workload is either bench/rollout.py's multi-turn rollouts on a random
k2-mini (64 episodes × `--turns` turns of `--turn-tokens` tokens, greedy, the same ids expected from
both settings), or, with `--model DIR`, the quickstart's held-out evaluation of that checkpoint
(`--tasks` tasks, greedy; the same successes expected). Prints the times and ratios and writes
bench/results/vllm_cpu_cores.json (`--out`).

    python bench/vllm_cpu_cores.py [--model runs/quickstart/sft/model] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from rollout import build_checkpoint, episodes, run_engine

RESULTS = Path(__file__).parent / "results" / "vllm_cpu_cores.json"


def measure(model: Path, reserved: int, args: argparse.Namespace) -> dict:
    """Start an engine with `reserved` cores kept off its threads, run the workload, close it."""
    from agentfactory.eval import evaluate_engine
    from agentfactory.eval.heldout import EvalConfig
    from agentfactory.llm import VLLMEngine

    t0 = time.perf_counter()
    engine = VLLMEngine(
        model,
        kv_cache_memory_bytes=512 << 20,
        max_model_len=4096,
        enforce_eager=not args.compile,
        cpu_reserved_cores=reserved,
    )
    row: dict = {"reserved": reserved, "start_s": time.perf_counter() - t0}
    try:
        if args.model is not None:
            config = EvalConfig(
                worlds=2, max_tasks=args.tasks, agents={"prompt": "compact", "cross_domain": 0}
            )
            t0 = time.perf_counter()
            summary = evaluate_engine(engine, config)
            row |= {"work_s": time.perf_counter() - t0, "success": summary["success"]}
        else:
            prompts = episodes(64)
            run_engine(engine, engine.tokenizer, episodes(2), 1, 8)  # first-call overheads off the clock
            row["work_s"], ids = run_engine(engine, engine.tokenizer, prompts, args.turns, args.turn_tokens)
            row["tokens"], row["ids"] = 64 * args.turns * args.turn_tokens, ids
    finally:
        engine.close()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="a checkpoint: time its held-out evaluation instead")
    p.add_argument("--tasks", type=int, default=48, help="held-out tasks with --model")
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--turn-tokens", type=int, default=32)
    p.add_argument("--compile", action="store_true", help="vLLM with torch.compile (default eager)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    from rich.console import Console

    console = Console()
    model = args.model
    if model is None:
        model = Path(tempfile.mkdtemp(prefix="bench_vllm_cores_"))
        build_checkpoint(model, 8192)
    rows = [measure(model, reserved, args) for reserved in (1, 0)]
    base, ours = rows
    cores = len(os.sched_getaffinity(0))
    result = {
        "cores": cores,
        "workload": f"held-out eval, {args.tasks} tasks" if args.model else f"64 × {args.turns} turns",
        "model": str(args.model) if args.model else "random k2-mini",
        "compiled": args.compile,
        "rows": [{k: v for k, v in r.items() if k != "ids"} for r in rows],
        "speedup": base["work_s"] / ours["work_s"],
    }
    if args.model is None:
        result["same_ids"] = sum(a == b for a, b in zip(base["ids"], ours["ids"], strict=True)) / 64
    for r in rows:
        console.print(
            f"reserved {r['reserved']} of {cores} cores: start {r['start_s']:.1f} s, "
            f"work {r['work_s']:.1f} s" + (f", success {r['success']}" if "success" in r else "")
        )
    console.print(
        f"no reserved core vs vLLM's default: {result['speedup']:.2f}× faster on {result['workload']}"
        + (f", same ids {result['same_ids']:.0%}" if "same_ids" in result else "")
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
