"""Proof that the colocated RL loop learns: held-out accuracy of a small model, before and during RL.

  1. a K2 model of k2-mini's shapes (2 layers; vocab from a tokenizer trained here) gets a short
     SFT on the task (default: reasoning-gym chain_sum, two single-digit terms, answered as
     `<answer>n</answer>`; or a MathEnv family, answered as `\\boxed{n}`), stopped as soon as a
     greedy probe reaches `--start-accuracy`, so that held-out accuracy starts in the 10-60% band;
  2. `rl_run` trains it with the K1.5 loss on the task's RL split (K samples per prompt,
     temperature decay) for `--rl-minutes` of wall time;
  3. every `--eval-every` iterations the engine (already holding the pushed weights) answers
     `--eval-n` held-out problems greedily; evaluation time is excluded from the RL time budget.

Writes `<out>/rl_learning.json` (curve, start/best/final accuracy, gain in points, RL seconds) and
`<out>/rl_learning.png`. Takes ~15 minutes on 2 CPU cores.

    python bench/rl_learning.py [--out bench/results] [--task rg:chain_sum] [--rl-minutes 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _rl_curves import hardware, rl_with_evals, save

# reasoning-gym chain_sum with two single-digit terms (+/-): small enough for a tiny model to learn
RG_CONFIG = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def env_spec(task: str, split: str) -> dict:
    """(kind, config) of the env for `task` ("rg:<dataset>" or a MathEnv family) and a data split:
    each split is generated from its own seed (reasoning-gym) or index range (MathEnv)."""
    if task.startswith("rg:"):
        seed = {"rl": 0, "heldout": 1, "sft": 2}[split]
        config = {"dataset": task[3:], "size": 10_000, "seed": seed, "system_prompt": "direct"}
        return {"kind": "reasoning_gym", "config": {**config, "dataset_config": RG_CONFIG}}
    return {"kind": "math", "config": {"families": [task], "size": 5000 if split == "rl" else 10**7}}


def make_env(task: str, split: str):
    from agentfactory.rl.config import EnvSpec, build_env

    return build_env(EnvSpec(**env_spec(task, split)))


def first_seed(task: str, split: str) -> int:
    """MathEnv splits are index ranges (RL draws 0..4999); reasoning-gym splits are dataset seeds."""
    if task.startswith("rg:"):
        return 0
    return {"rl": 0, "heldout": 5_000_000, "sft": 1_000_000}[split]


def sft_data(path: Path, task: str, n: int) -> list[str]:
    """n SFT conversations from the SFT split, answered in the env's answer format."""
    env = make_env(task, "sft")
    texts, rows = [], []
    for i in range(n):
        t = env.reset(first_seed(task, "sft") + i)
        messages = [m.to_openai() for m in t.prompt]
        answer = f"<answer>{t.answer}</answer>" if task.startswith("rg:") else f"\\boxed{{{t.answer}}}"
        messages.append({"role": "assistant", "content": answer})
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
    ap.add_argument("--task", default="rg:chain_sum", help="rg:<reasoning-gym dataset> or a MathEnv family")
    ap.add_argument("--sft-rows", type=int, default=4000)
    ap.add_argument("--sft-steps", type=int, default=300, help="at most; stops at --start-accuracy")
    ap.add_argument("--sft-chunk", type=int, default=20)
    ap.add_argument("--sft-lr", type=float, default=0.005, help="Muon lr of the SFT (AdamW: lr/5)")
    ap.add_argument("--start-accuracy", type=float, default=0.15)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rl-minutes", type=float, default=10.0)
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4, help="RL Muon lr (4e-3 collapsed the policy)")
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
    from agentfactory.train import SFTConfig, sft

    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="af-rl-learning-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    # 1. short SFT from scratch
    texts = sft_data(work / "sft.jsonl", args.task, args.sft_rows)
    train_tokenizer(texts, 512, work / "tok")
    sft_cfg = SFTConfig(
        model={"preset": "k2-mini", "overrides": {"num_hidden_layers": args.layers}},
        tokenizer=str(work / "tok"),
        data={"paths": [str(work / "sft.jsonl")], "seq_len": 160},
        steps=args.sft_steps,
        batch_size=32,
        micro_batch_size=32,
        optimizer={"lr": args.sft_lr, "adamw_lr": args.sft_lr / 5},
        schedule={"kind": "constant", "warmup_steps": 10},
        output_dir=str(work / "sft"),
        checkpoint_every=args.sft_chunk,
        threads=args.threads,
    )
    heldout = make_env(args.task, "heldout")
    seeds = range(first_seed(args.task, "heldout"), first_seed(args.task, "heldout") + args.eval_n)
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
    print(f"SFT: {steps} steps, {t_sft:.0f} s", flush=True)
    rl_cfg = RLConfig(
        model=str(model_dir),
        envs=[EnvSpec(**env_spec(args.task, "rl"))],
        iterations=10_000,
        prompts_per_iteration=args.prompts,
        samples_per_prompt=args.samples,
        budgets={"budgets": {"math": 16, "reasoning": 16}},
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
    curve, rewards = rl_with_evals(
        rl_cfg,
        engine,
        lambda e: {"accuracy": accuracy(e, heldout, seeds)},
        score="accuracy",
        minutes=args.rl_minutes,
        every=args.eval_every,
        logged={"reward": f"reward/{heldout.name}"},
        partial=args.out / "rl_learning.partial.json",
    )
    start, best, final = curve[0]["accuracy"], max(c["accuracy"] for c in curve), curve[-1]["accuracy"]
    result = {
        "hardware": hardware(),
        "task": args.task,
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
    labels = {"reward": "train reward (sampled)"}
    title = f"RL on {result['task']}: {result['gain_points']:+.1f} points"
    save(result, args.out, "rl_learning", score="accuracy", labels=labels, title=title)


if __name__ == "__main__":
    main()
