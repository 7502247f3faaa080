"""TorchEngine's prefix cache on multi-turn tool-use episodes: the held-out evaluation (greedy,
token in, token out, up to 8 turns an episode) with the cache on and off, in the same run.

Every turn re-sends the conversation so far; without the cache each turn prefills all of it, with
it only the tokens added since the last turn. Both runs must give the same episodes (same success,
same failure reasons); the JSON has the seconds, the ratio and the share of prompt tokens reused.
`--vllm` adds the same evaluation on VLLMEngine (vLLM-CPU keeps no prefix cache for MLA) as a second
baseline; its engine start is timed apart.

    python bench/prefix_cache.py [--model runs/quickstart/sft/model] [--tasks 96] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("runs/quickstart/sft/model"))
    ap.add_argument("--tasks", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vllm", action="store_true", help="also evaluate on VLLMEngine")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    if not (args.model / "config.json").exists():
        print(f"skipped: no checkpoint at {args.model} (run `make demo` first, or pass --model)")
        return

    import torch

    from agentfactory.eval.heldout import EvalConfig, evaluate_engine
    from agentfactory.llm import TorchEngine

    torch.set_num_threads(args.threads)
    config = EvalConfig(worlds=2, max_tasks=args.tasks, agents={"prompt": "compact", "cross_domain": 0})
    rows = {}
    for name, prefix_bytes in (("uncached", 0), ("prefix_cache", 4 << 30)):
        engine = TorchEngine(
            args.model, device=args.device, cache_bytes=8 << 30, prefix_cache_bytes=prefix_bytes
        )
        t0 = time.perf_counter()
        summary = evaluate_engine(engine, config)
        rows[name] = {
            "seconds": time.perf_counter() - t0,
            "success": summary["success"],
            "failure_reasons": summary["failure_reasons"],
            "prompt_tokens": engine.prefix.queried_tokens,
            "reused_tokens": engine.prefix.hit_tokens,
        }
        print(name, json.dumps(rows[name]), flush=True)
        engine.close()
    if args.vllm:
        from agentfactory.llm import VLLMEngine

        t0 = time.perf_counter()
        engine = VLLMEngine(args.model, kv_cache_memory_bytes=1 << 30, max_model_len=4096, enforce_eager=True)
        start_s, t0 = time.perf_counter() - t0, time.perf_counter()
        summary = evaluate_engine(engine, config)
        rows["vllm"] = {
            "seconds": time.perf_counter() - t0,
            "start_seconds": start_s,
            "success": summary["success"],
            "failure_reasons": summary["failure_reasons"],
        }
        print("vllm", json.dumps(rows["vllm"]), flush=True)
        engine.close()
    base, cached = rows["uncached"], rows["prefix_cache"]
    result = {
        "model": str(args.model),
        "tasks": args.tasks,
        "device": args.device,
        "threads": args.threads,
        "speedup": base["seconds"] / cached["seconds"],
        "reused_share": cached["reused_tokens"] / max(cached["prompt_tokens"], 1),
        "same_episodes": base["success"] == cached["success"]
        and base["failure_reasons"] == cached["failure_reasons"],
        "speedup_vs_vllm": rows["vllm"]["seconds"] / cached["seconds"] if args.vllm else None,
        "runs": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prefix_cache.json").write_text(json.dumps(result, indent=2))
    print(
        f"prefix cache: {result['speedup']:.2f}x faster, {100 * result['reused_share']:.0f}% of prompt tokens reused"
    )


if __name__ == "__main__":
    main()
