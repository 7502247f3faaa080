"""Does RL on ToolUseEnv raise held-out tool-use success? A longer run than the quickstart's RL stage.

  1. start from an SFT checkpoint (default: the quickstart's, `runs/quickstart/sft/model`);
  2. colocated RL on multi-turn tool-use episodes only (rubric reward: the task's weighted share
     of programmatic checks), on worlds that neither SFT (100..129), the corpus (1000+) nor the
     held-out set (0..99) contain — so a high reward needs the values of *this* conversation,
     not memorized ones — for `--rl-minutes` of wall time;
  3. every `--eval-every` iterations the engine, already holding the pushed weights, plays the
     held-out tasks greedily (the quickstart's eval: worlds 0..N-1, compact prompts); evaluation
     time is excluded from the RL time budget.

Writes `<out>/rl_tool_use.json` (held-out curve, train reward, start/best/final success) and
`<out>/rl_tool_use.png`.

    python bench/rl_tool_use.py [--model runs/quickstart/sft/model] [--rl-minutes 15] [--out bench/results]

`--engine torch` rolls out with TorchEngine (our decoder; what a GPU machine without vLLM runs) and
`--device cuda` puts it and the trainer on the GPU (`bench/gpu_rl.sh`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _rl_curves import hardware, rl_with_evals, save

DOMAINS = [
    "airline_reservations",
    "bank_accounts",
    "calendar_meetings",
    "ci_deployments",
    "clinic_appointments",
    "course_enrollment",
    "retail_orders",
    "smart_home",
    "support_tickets",
]


AGENTS = {"prompt": "compact", "cross_domain": 0}  # the synthesis agents' format, own domain only


def rl_worlds(args) -> range:
    """The RL world seeds, `--worlds start:stop`."""
    start, stop = (int(x) for x in args.worlds.split(":"))
    return range(start, stop)


def tool_use_rl(args, work: Path, *, weights: dict[str, float] | None = None, **overrides):
    """RLConfig on tool-use episodes alone, over worlds `args.worlds` (`start:stop`), from `args.model`;
    ToolUseEnv reward `weights` (default: the rubric share alone)."""
    from agentfactory.rl.config import EnvSpec, RLConfig

    env = {
        "domains": DOMAINS,
        "world_seeds": list(rl_worlds(args)),
        "agents": AGENTS,
        "weights": weights or {},
    }
    return RLConfig(
        model=str(args.model),
        envs=[EnvSpec(kind="tool_use", config=env)],
        prompts_per_iteration=args.prompts,
        samples_per_prompt=args.samples,
        critic={"enabled": False},
        output_dir=str(work),
        checkpoint_every=0,
        save_model=False,
        progress=False,
        threads=args.threads,
        **overrides,
    )


def heldout_success(engine, config, train_config=None) -> dict:
    """Greedy success on the held-out tasks and, with `train_config`, on tasks of the RL worlds
    (`train`: does RL raise success where it trains, whether or not that carries over)."""
    from agentfactory.eval.heldout import evaluate_engine

    s = evaluate_engine(engine, config)
    point = {
        "success": s["success"],
        "tasks": s["tasks"],
        "rate": s["success_rate"],
        "reasons": s["failure_reasons"],
    }
    if train_config is not None:
        t = evaluate_engine(engine, train_config)
        point["train"] = {"success": t["success"], "tasks": t["tasks"], "rate": t["success_rate"]}
        print(f"  RL-world tasks: {t['success']}/{t['tasks']}", flush=True)
    return point


def weight(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    return name, float(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("runs/quickstart/sft/model"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--work", type=Path, default=None, help="RL output dir (default: a temp dir)")
    ap.add_argument("--rl-minutes", type=float, default=15.0)
    ap.add_argument("--worlds", default="200:264", help="RL world seeds, start:stop")
    ap.add_argument("--eval-worlds", type=int, default=2, help="held-out worlds 0..N-1")
    ap.add_argument("--eval-tasks", type=int, default=96)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument(
        "--train-eval-worlds",
        type=int,
        default=0,
        help="also play the first N RL worlds' tasks greedily at each evaluation (0: off)",
    )
    ap.add_argument(
        "--reward",
        type=weight,
        nargs="*",
        default=[],
        metavar="NAME=W",
        help="ToolUseEnv reward weights, e.g. rubric=1 correct=1 (default: rubric share alone)",
    )
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4, help="RL Muon lr (AdamW groups: lr/5)")
    ap.add_argument("--temperature", type=float, nargs=2, default=(1.0, 0.7), metavar=("START", "END"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--overlap", action="store_true", help="roll out the next iteration while training")
    ap.add_argument("--engine", choices=["vllm", "torch"], default="vllm")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (trainer, and the torch engine)")
    args = ap.parse_args()
    if not (args.model / "config.json").exists():
        print(f"skipped: no checkpoint at {args.model} (run `make demo` first, or pass --model)")
        return

    import torch

    from agentfactory.eval.heldout import EvalConfig
    from agentfactory.llm import TorchEngine, VLLMEngine

    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="af-rl-tool-use-"))
    eval_cfg = EvalConfig(worlds=args.eval_worlds, max_tasks=args.eval_tasks, agents=AGENTS)
    train_cfg = (
        EvalConfig(
            world_start=rl_worlds(args).start, worlds=args.train_eval_worlds, domains=DOMAINS, agents=AGENTS
        )
        if args.train_eval_worlds
        else None
    )

    if args.engine == "torch":
        engine = TorchEngine(args.model, device=args.device, max_model_len=4096, cache_bytes=8 << 30)
    else:
        engine = VLLMEngine(
            args.model, kv_cache_memory_bytes=256 << 20, max_model_len=4096, enforce_eager=True
        )
    weights = dict(args.reward)
    success_weighted = bool(weights.get("correct"))
    rl_cfg = tool_use_rl(
        args,
        work,
        weights=weights,
        device=args.device,
        engine={"kind": args.engine, "device": args.device, "sleep_during_training": False},
        iterations=10_000,
        temperature={"start": args.temperature[0], "end": args.temperature[1], "steps": 30},
        optimizer={"lr": args.lr, "adamw_lr": args.lr / 5, "weight_decay": 0.0},
        overlap=args.overlap,
    )
    curve, rewards = rl_with_evals(
        rl_cfg,
        engine,
        lambda e: heldout_success(e, eval_cfg, train_cfg),
        score="rate",
        minutes=args.rl_minutes,
        every=args.eval_every,
        # a reward component with a weight is logged as component/NAME, a weight-0 one as metric/NAME
        logged={
            "reward": "reward/tool_use",
            "correct": f"{'component' if success_weighted else 'metric'}/correct",
        },
        partial=args.out / "rl_tool_use.partial.json",
    )
    first, last = curve[0], curve[-1]
    result = {
        "model": str(args.model),
        "hardware": hardware(args.device),
        "rl_seconds": last["rl_seconds"],
        "rl_iterations": last["iteration"],
        "start_success": first["success"],
        "final_success": last["success"],
        "best_success": max(c["success"] for c in curve),
        "tasks": first["tasks"],
        "gain_points": 100 * (last["rate"] - first["rate"]),
        "curve": curve,
        "train_reward": rewards,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "work"},
    }
    shown = " + ".join(f"{w:g}·{name}" for name, w in args.reward) or "rubric share"
    labels = {"reward": f"train reward ({shown})", "correct": "train success (sampled)"}
    title = f"RL on ToolUseEnv: {result['gain_points']:+.1f} points held-out"
    save(result, args.out, "rl_tool_use", score="rate", labels=labels, title=title)


if __name__ == "__main__":
    main()
