"""Synthesis episodes with a vLLM policy agent: the lockstep episode runner vs one episode at a time.

An `EpisodeWorker` (the pipeline's code path: agent prompts, scripted user, declarative tools, judge)
with its agent replaced by a k2-mini policy on VLLMEngine (random weights, greedy, so both modes
produce the same turns; a 2,048-token tokenizer trained here on the oracle's conversations of the
same tasks, so prompts are as long as the quickstart's: ≈ 1k tokens). A random policy rarely writes
a well-formed call, so most episodes end after a turn or two: the figure is prompt-bound, as
synthesis with a weak policy is. Batched: the worker runs `--episodes` episodes in
one call and every active episode's next turn goes to the engine as one `generate`. Baseline: the
same engine and worker, the first `--sequential` of those episodes run one per call. Median of
`--repeats`; prints episodes/s and sampled tokens/s of both and writes bench/results/synth_policy.json.

    python bench/synth_policy.py [--episodes 32] [--sequential 4] [--turns 3] [--turn-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "synth_policy.json"


def build_checkpoint(path: Path, worker, tasks: list) -> None:
    """Random k2-mini weights and a tokenizer trained on the oracle's chats of `tasks`."""
    import torch

    from agentfactory.model import K2Config, K2ForCausalLM, train_tokenizer
    from agentfactory.model.chat import render

    records = worker.run([(t, 0) for t in tasks])
    chats = [render([m.to_openai() for m in r.messages], [s.to_openai() for s in r.tools]) for r in records]
    tok = train_tokenizer(chats * 4, 2048, path)
    torch.manual_seed(0)
    config = K2Config.preset("k2-mini", vocab_size=len(tok), bos_token_id=0, eos_token_id=1, pad_token_id=3)
    K2ForCausalLM(config).save_pretrained(path)


def timed(worker, batches: list[list], repeats: int) -> dict:
    """Median seconds over `repeats` passes of running `batches` in order, and what one pass made."""
    seconds, records = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        records = [r for batch in batches for r in worker.run(batch)]
        seconds.append(time.perf_counter() - t0)
    s = statistics.median(seconds)
    tokens = sum(len(r.token_ids or []) for r in records)
    return {
        "episodes": len(records),
        "seconds": s,
        "runs": seconds,
        "episodes_per_s": len(records) / s,
        "sampled_tokens": tokens,
        "tokens_per_s": tokens / s,
        "turns": sum(sum(m.role == "assistant" for m in r.messages) for r in records),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--sequential", type=int, default=4, help="episodes the one-at-a-time baseline runs")
    p.add_argument("--turns", type=int, default=3, help="assistant turns per episode at most")
    p.add_argument("--turn-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    from rich.console import Console
    from rich.table import Table

    from agentfactory.llm import SamplingParams, VLLMEngine
    from agentfactory.synth.agents import PolicyAgent
    from agentfactory.synth.config import SynthConfig
    from agentfactory.synth.episode import EpisodeLimits
    from agentfactory.synth.pipeline import domain_paths, make_tasks
    from agentfactory.synth.tito import engine_tokenizer
    from agentfactory.synth.worker import EpisodeWorker

    console = Console(width=150)
    cfg = SynthConfig(
        domains=["retail_orders", "bank_accounts"],
        worlds=4,
        agents={"prompt": "compact", "cross_domain": 0},
        limits=EpisodeLimits(max_turns=args.turns),
    )
    paths = domain_paths(cfg)
    tasks = make_tasks(cfg, paths)[: args.episodes]
    worker = EpisodeWorker(cfg, paths, tasks)  # the oracle agent until the policy replaces it
    ckpt = Path(tempfile.mkdtemp(prefix="bench_synth_policy_"))
    build_checkpoint(ckpt, worker, tasks)
    engine = VLLMEngine(ckpt, max_model_len=4096, kv_cache_memory_bytes=256 << 20, enforce_eager=True)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=args.turn_tokens, logprobs=True)
        worker.agent = PolicyAgent(engine, params, engine_tokenizer(engine))  # token-in-token-out
        items = [(t, 0) for t in tasks]
        worker.run(items[:2])  # warm-up
        batched = timed(worker, [items], args.repeats)
        sequential = timed(worker, [[i] for i in items[: args.sequential]], args.repeats)
    finally:
        engine.close()
    ratio = batched["episodes_per_s"] / sequential["episodes_per_s"]
    table = Table("runner", "episodes", "turns", "sampled tokens", "episodes/s", "tokens/s", "ratio")
    for name, r in (("lockstep batch", batched), ("one at a time", sequential)):
        table.add_row(
            name,
            str(r["episodes"]),
            str(r["turns"]),
            str(r["sampled_tokens"]),
            f"{r['episodes_per_s']:.2f}",
            f"{r['tokens_per_s']:.0f}",
            f"{r['episodes_per_s'] / sequential['episodes_per_s']:.2f}×",
        )
    console.print(table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "args": vars(args),
                "batched": batched,
                "sequential": sequential,
                "ratio_episodes_per_s": ratio,
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            },
            indent=2,
        )
    )
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
