"""Iteration throughput of the colocated RL loop with vs without partial rollouts (one run, one engine).

A long-tailed length distribution: most prompts are MathEnv problems with a 16-token budget, a few
(`--long-weight`) are reasoning-gym tasks with a `--long-tokens` budget. The policy is a random
k2-mini (it rarely stops by itself, so responses run to their budgets: the lengths are the budgets).

- **without** partial rollouts every admitted response runs to its budget in one go, so each
  iteration waits for its longest response, decoding the tail at a tiny batch;
- **with** partial rollouts a response gets `--segment` tokens per iteration; long ones continue
  next iteration (batched with new short ones) under the new weights.

Both modes run `rl_run` for the same number of iterations on the same engine (the weights are
reset in between, after a discarded warm-up iteration) and report, end to end (rollout + train +
sync): generated tokens per second (all work done, including responses still in flight: the
headline), trained responses and tokens per second, and the per-iteration time split. Writes bench/results/partial_rollouts.json. ~2 minutes on 2 cores.

    python bench/partial_rollouts.py [--iterations 5] [--long-tokens 256] [--segment 64]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "partial_rollouts.json"


def build_checkpoint(path: Path) -> None:
    import torch

    from agentfactory.model import K2Config, K2ForCausalLM, train_tokenizer
    from agentfactory.model.tokenizer import save_tokenizer

    rng = random.Random(0)
    words = "compute solve answer the sum of and then what is step total".split()
    texts = [" ".join(rng.choice(words) for _ in range(12)) + f" {rng.randint(0, 999)}" for _ in range(2000)]
    tok = train_tokenizer(texts, 512)
    torch.manual_seed(0)
    special = dict(vocab_size=len(tok), bos_token_id=0, eos_token_id=1, pad_token_id=3)
    cfg = K2Config.preset("k2-mini", num_hidden_layers=2, **special)  # 1 dense + 1 MoE: a light trainer
    K2ForCausalLM(cfg).save_pretrained(path)
    save_tokenizer(tok, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--long-tokens", type=int, default=256)
    ap.add_argument("--long-weight", type=float, default=0.15)
    ap.add_argument("--segment", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="trainer threads (1 on a shared 2-core box)")
    args = ap.parse_args()

    import torch

    from agentfactory.llm import VLLMEngine
    from agentfactory.rl.config import EnvSpec, RLConfig
    from agentfactory.rl.run import rl_run

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="af-partial-"))
    build_checkpoint(work / "model")
    engine = VLLMEngine(
        work / "model", kv_cache_memory_bytes=256 << 20, max_model_len=1024, enforce_eager=True
    )
    results = {}
    try:
        # a discarded 1-iteration warm-up first: the first train step and vLLM's first batches are slow
        for mode, enabled in (("warmup", False), ("without", False), ("with", True)):
            cfg = RLConfig(
                model=str(work / "model"),
                envs=[
                    EnvSpec(kind="math", weight=1 - args.long_weight, config={"families": ["arithmetic"]}),
                    EnvSpec(kind="reasoning_gym", weight=args.long_weight, config={"dataset": "chain_sum"}),
                ],
                iterations=1 if mode == "warmup" else args.iterations,
                prompts_per_iteration=args.prompts,
                samples_per_prompt=args.samples,
                budgets={"budgets": {"math": 16, "reasoning": args.long_tokens}},
                rollout={
                    "enabled": enabled,
                    "segment_tokens": args.segment,
                    "iteration_tokens": 1 << 20,
                    "max_staleness": 1 + args.long_tokens // args.segment,
                },
                temperature={"start": 1.0, "end": 1.0},
                critic={"enabled": False},
                micro_batch_size=16,
                output_dir=str(work / mode),
                checkpoint_every=0,
                save_model=False,
                progress=False,
                resume=False,
                threads=args.threads,
            )
            engine.update_weights(work / "model", engine.policy_version + 1)  # same start for both
            t0 = time.perf_counter()
            rl_run(cfg, engine=engine)
            wall = time.perf_counter() - t0
            if mode == "warmup":
                continue
            rows = [json.loads(x) for x in (work / mode / "metrics.jsonl").read_text().splitlines()]
            trained = sum(r["rows"] for r in rows)
            split = {k: sum(r[f"time/{k}"] for r in rows) for k in ("rollout", "train", "sync")}
            loop_s = sum(split.values())
            results[mode] = {
                "iterations": len(rows),
                "trained_responses": trained,
                "trained_tokens": sum(r.get("tokens/train", 0) for r in rows),
                "generated_tokens": sum(r["tokens/generated"] for r in rows),
                "loop_seconds": loop_s,
                "wall_seconds": wall,
                "responses_per_s": trained / loop_s,
                "rollout_responses_per_s": trained / split["rollout"],
                "trained_tokens_per_s": sum(r.get("tokens/train", 0) for r in rows) / loop_s,
                # generated tokens count the work on responses still in flight at the end
                "generated_tokens_per_s": sum(r["tokens/generated"] for r in rows) / loop_s,
                "seconds_per_iteration": loop_s / len(rows),
                "time_split": split,
                "per_iteration": [
                    {k: r[k] for k in ("time/rollout", "time/train", "time/sync", "rows", "rollouts/carried")}
                    for r in rows
                ],
                "staleness_max": max(r["staleness/max"] for r in rows),
            }
            print(
                mode, json.dumps({k: v for k, v in results[mode].items() if k != "per_iteration"}), flush=True
            )
    finally:
        engine.close()
    w, wo = results["with"], results["without"]
    summary = {
        "speedup_responses_per_s": w["responses_per_s"] / wo["responses_per_s"],
        "speedup_rollout_phase": w["rollout_responses_per_s"] / wo["rollout_responses_per_s"],
        "speedup_generated_tokens_per_s": w["generated_tokens_per_s"] / wo["generated_tokens_per_s"],
        "speedup_trained_tokens_per_s": w["trained_tokens_per_s"] / wo["trained_tokens_per_s"],
        "speedup_seconds_per_iteration": wo["seconds_per_iteration"] / w["seconds_per_iteration"],
        "goal": 1.5,
        "config": vars(args),
        **results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k.startswith("speedup")}, indent=2))


if __name__ == "__main__":
    main()
