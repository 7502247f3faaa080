"""Proof that the colocated RL loop learns: held-out accuracy of a small model, before and during RL.

  1. a K2 model of k2-mini's shapes (fewer layers; vocab from a tokenizer trained here) gets a
     short SFT on MathEnv problems answered as `\\boxed{answer}`, stopped early so that held-out
     greedy accuracy starts between 10% and 60%;
  2. `rl_run` trains it with the K1.5 loss on the same family (different problems, K samples per
     prompt, temperature decay) for `--rl-minutes` of wall time;
  3. every `--eval-every` iterations the engine (already holding the pushed weights) answers
     `--eval-n` held-out problems greedily; evaluation time is excluded from the RL time budget.

Writes `<out>/rl_learning.json` (curve, start/best/final accuracy, gain in points, RL seconds) and
`<out>/rl_learning.png`. Takes ~15 minutes on 2 CPU cores.

    python bench/rl_learning.py [--out bench/results] [--family percent] [--rl-minutes 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


class TimeUp(Exception):
    pass


def sft_data(path: Path, family: str, n: int) -> list[str]:
    """n SFT conversations (problems 10^6 + i: disjoint from the RL and held-out index ranges)."""
    from agentfactory.rl.envs import MathEnv, MathEnvConfig

    env = MathEnv(MathEnvConfig(families=[family], size=10**7))
    texts, rows = [], []
    for i in range(n):
        task = env.reset(10**6 + i)
        messages = [m.to_openai() for m in task.prompt]
        messages.append({"role": "assistant", "content": f"\\boxed{{{task.answer}}}"})
        rows.append(json.dumps({"messages": messages}))
        texts += [m["content"] for m in messages]
    path.write_text("\n".join(rows) + "\n")
    return texts


def accuracy(engine, env, seeds: range) -> float:
    """Greedy held-out accuracy (math-verify's `correct`) of the engine's current weights."""
    from agentfactory.llm import GenerationRequest, SamplingParams
    from agentfactory.rl.envs.base import completion_trajectory

    params = SamplingParams(temperature=0.0, max_tokens=24, logprobs=False)
    tasks = [env.reset(s) for s in seeds]
    outs = engine.generate([GenerationRequest(id=t.id, messages=t.prompt, params=params) for t in tasks])
    scores = [
        env.score(t, completion_trajectory(t, o[0], 24)).components["correct"]
        for t, o in zip(tasks, outs, strict=True)
    ]
    return sum(scores) / len(scores)


def torch_accuracy(model_dir: Path, env, seeds: range) -> float:
    """Greedy accuracy with our own model (no engine start): a cheap probe between SFT chunks."""
    import torch

    from agentfactory.model import K2ForCausalLM, encode, load_tokenizer
    from agentfactory.model.chat import IM_END
    from agentfactory.records import Message, Trajectory

    tok = load_tokenizer(model_dir)
    model = K2ForCausalLM.from_pretrained(model_dir).eval()
    end = tok.convert_tokens_to_ids(IM_END)
    correct = 0.0
    with torch.no_grad():
        for s in seeds:
            task = env.reset(s)
            ids = encode(tok, [m.to_openai() for m in task.prompt], None, add_generation_prompt=True)
            out: list[int] = []
            for _ in range(16):
                nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
                if nxt == end:
                    break
                out.append(nxt)
            reply = Message(role="assistant", content=tok.decode(out))
            traj = Trajectory(task_id=task.id, messages=[*task.prompt, reply])
            correct += env.score(task, traj).components["correct"]
    return correct / len(seeds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (default: a temp dir)")
    ap.add_argument("--family", default="percent")
    ap.add_argument("--sft-rows", type=int, default=4000)
    ap.add_argument("--sft-steps", type=int, default=300, help="at most; stops at --start-accuracy")
    ap.add_argument("--sft-chunk", type=int, default=20)
    ap.add_argument("--start-accuracy", type=float, default=0.15)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rl-minutes", type=float, default=10.0)
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: OpenMP barriers stall on a shared 2-core box)",
    )
    args = ap.parse_args()

    import torch

    from agentfactory.llm import VLLMEngine
    from agentfactory.model import train_tokenizer
    from agentfactory.rl.config import EnvSpec, RLConfig
    from agentfactory.rl.envs import MathEnv, MathEnvConfig
    from agentfactory.rl.loop import rl_run
    from agentfactory.train import SFTConfig, sft

    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="af-rl-learning-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    # 1. short SFT from scratch
    texts = sft_data(work / "sft.jsonl", args.family, args.sft_rows)
    train_tokenizer(texts, 512, work / "tok")
    sft_cfg = SFTConfig(
        model={"preset": "k2-mini", "overrides": {"num_hidden_layers": args.layers}},
        tokenizer=str(work / "tok"),
        data={"paths": [str(work / "sft.jsonl")], "seq_len": 160},
        steps=args.sft_steps,
        batch_size=32,
        micro_batch_size=32,
        schedule={"kind": "constant", "warmup_steps": 10},
        output_dir=str(work / "sft"),
        checkpoint_every=args.sft_chunk,
        threads=args.threads,
    )
    heldout = MathEnv(MathEnvConfig(families=[args.family], size=10**7))
    seeds = range(5_000_000, 5_000_000 + args.eval_n)  # RL draws problems 0..4999
    model_dir = work / "sft" / "model"
    steps = 0
    while steps < args.sft_steps:  # stop the SFT early once greedy accuracy reaches the start band
        steps = min(steps + args.sft_chunk, args.sft_steps)
        sft(sft_cfg.model_copy(update={"steps": steps, "resume": True}))
        probe = torch_accuracy(model_dir, heldout, seeds[:100])
        print(f"SFT step {steps}: probe accuracy {probe:.2f}", flush=True)
        if probe >= args.start_accuracy:
            break
    t_sft = time.perf_counter() - t_start

    # 2. RL, evaluating held-out accuracy along the way
    engine = VLLMEngine(model_dir, kv_cache_memory_bytes=256 << 20, max_model_len=512, enforce_eager=True)
    curve = [{"iteration": 0, "rl_seconds": 0.0, "accuracy": accuracy(engine, heldout, seeds)}]
    print(f"SFT ({t_sft:.0f} s): held-out accuracy {curve[0]['accuracy']:.3f}", flush=True)
    rl_cfg = RLConfig(
        model=str(model_dir),
        envs=[EnvSpec(kind="math", config={"families": [args.family], "size": 5000})],
        iterations=10_000,
        prompts_per_iteration=args.prompts,
        samples_per_prompt=args.samples,
        budgets={"budgets": {"math": 16}},
        rollout={"segment_tokens": 16, "iteration_tokens": 1 << 16},
        temperature={"start": 1.0, "end": 0.7, "steps": 60},
        loss={"tau": 0.05},
        optimizer={"lr": args.lr, "adamw_lr": args.lr / 5, "weight_decay": 0.0},
        critic={"enabled": False},
        micro_batch_size=64,
        output_dir=str(work / "rl"),
        checkpoint_every=0,
        save_model=False,
        progress=False,
        threads=args.threads,
    )
    clock = {"eval": 0.0, "t0": time.perf_counter()}
    rewards: list[dict] = []

    def on_iteration(loop, row) -> None:
        rl_s = time.perf_counter() - clock["t0"] - clock["eval"]
        rewards.append({"iteration": row["iteration"], "rl_seconds": rl_s, "reward": row.get("reward/math")})
        if row["iteration"] % args.eval_every == 0 or rl_s >= args.rl_minutes * 60:
            t = time.perf_counter()
            acc = accuracy(loop.engine, heldout, seeds)
            clock["eval"] += time.perf_counter() - t
            curve.append({"iteration": row["iteration"], "rl_seconds": rl_s, "accuracy": acc})
            print(
                f"iter {row['iteration']:4d}  {rl_s:6.0f} s  reward {row.get('reward/math', 0):.3f}  held-out {acc:.3f}",
                flush=True,
            )
        if rl_s >= args.rl_minutes * 60:
            raise TimeUp

    try:
        rl_run(rl_cfg, engine=engine, on_iteration=on_iteration)
    except TimeUp:
        pass
    finally:
        engine.close()
    start, best, final = curve[0]["accuracy"], max(c["accuracy"] for c in curve), curve[-1]["accuracy"]
    result = {
        "family": args.family,
        "eval_n": args.eval_n,
        "sft_steps": steps,
        "sft_seconds": t_sft,
        "rl_seconds": curve[-1]["rl_seconds"],
        "rl_iterations": curve[-1]["iteration"],
        "start_accuracy": start,
        "final_accuracy": final,
        "best_accuracy": best,
        "gain_points": 100 * (final - start),
        "curve": curve,
        "train_reward": rewards,
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rl_learning.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "rl_learning.png")
    print(json.dumps({k: v for k, v in result.items() if k not in ("curve", "train_reward")}, indent=2))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    c = result["curve"]
    ax.plot([p["rl_seconds"] / 60 for p in c], [p["accuracy"] for p in c], "o-", label="held-out (greedy)")
    r = [p for p in result["train_reward"] if p["reward"] is not None]
    ax.plot(
        [p["rl_seconds"] / 60 for p in r], [p["reward"] for p in r], alpha=0.5, label="train reward (sampled)"
    )
    ax.set_xlabel("RL wall time (min, 2 CPU cores)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"RL on MathEnv/{result['family']}: {result['gain_points']:+.1f} points")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
