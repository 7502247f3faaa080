"""What groups without signal cost the RL update: `uniform_groups` = train vs measure vs skip.

A group whose K rewards are all equal (all solved or all failed) has exactly zero K1.5 gradient, yet
the reference update still runs its forward and backward. `measure` runs its forward only (without
autograd: same update, same mismatch/KL statistics), `skip` runs nothing. This times one
`policy_update` on full k2-mini for each mode, at several shares of flat groups, on the same rows
(prompt ≈ 120 tokens, long-tailed response lengths like tool-use episodes), alternating the modes
so background load hits all alike, and checks the three gradients agree.

    python bench/uniform_groups.py [--groups 8] [--samples 4] [--repeats 3] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODES = ("train", "measure", "skip")


def _rows(groups: int, samples: int, flat_share: float, vocab: int, seed: int):
    from agentfactory.rl.batch import TrainRow

    rng = random.Random(seed)
    n_flat = round(groups * flat_share)
    rows = []
    for g in range(groups):
        prompt = [rng.randrange(10, vocab) for _ in range(120)]
        for k in range(samples):
            n = min(int(rng.paretovariate(1.5) * 48), 448)  # long tail: most short, a few near the cap
            reward = 0.0 if g < n_flat else float(k % 2)  # flat groups first: all failed
            rows.append(
                TrainRow(
                    prompt,
                    [rng.randrange(10, vocab) for _ in range(n)],
                    [-1.0] * n,
                    [0] * n,
                    reward,
                    f"g{g}",
                    "tool_use",
                )
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--shares", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="0 = torch's default for this machine")
    ap.add_argument("--out", type=Path, default=RESULTS / "uniform_groups.json")
    args = ap.parse_args()

    import torch

    from agentfactory.model import K2Config, K2ForCausalLM
    from agentfactory.rl.batch import flat_groups, policy_update
    from agentfactory.rl.loss import LossConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = K2ForCausalLM(K2Config.preset("k2-mini"))
    model.set_track_max_logits()
    cfg = LossConfig(tau=0.05)

    def update(rows, mode: str) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        policy_update(model, rows, cfg, pad_id=0, version=0, micro_batch_size=args.micro_batch, uniform=mode)
        seconds = time.perf_counter() - t0
        model.pop_max_logits()
        return seconds, torch.cat([p.grad.flatten() for p in model.parameters()])

    results = []
    for share in args.shares:
        rows = _rows(args.groups, args.samples, share, model.config.vocab_size, seed=int(share * 100))
        times: dict[str, list[float]] = {m: [] for m in MODES}
        grads = {}
        update(rows, "train")  # warm-up
        for _ in range(args.repeats):
            for mode in MODES:
                seconds, grads[mode] = update(rows, mode)
                times[mode].append(seconds)
        med = {m: statistics.median(v) for m, v in times.items()}
        scale = float(grads["train"].abs().max())
        diff = max(float((grads[m] - grads["train"]).abs().max()) for m in MODES[1:]) / scale
        flat = flat_groups(rows)
        tokens = sum(len(r.prompt_ids) + len(r.response_ids) for r in rows)
        flat_tokens = sum(len(r.prompt_ids) + len(r.response_ids) for r in rows if r.group in flat)
        row = {
            "flat_share": share,
            "tokens": tokens,
            "flat_token_share": round(flat_tokens / tokens, 3),
            "seconds": {m: round(v, 3) for m, v in med.items()},
            "speedup_measure": round(med["train"] / med["measure"], 2),
            "speedup_skip": round(med["train"] / med["skip"], 2),
            "grad_rel_diff": diff,
        }
        results.append(row)
        print(
            f"flat groups {share:.0%} ({row['flat_token_share']:.0%} of {tokens} tokens): "
            f"train {med['train']:.2f}s, measure {med['measure']:.2f}s ({row['speedup_measure']}×), "
            f"skip {med['skip']:.2f}s ({row['speedup_skip']}×); gradient rel. diff {diff:.1e}"
        )
        assert diff < 1e-4, f"the modes' gradients differ ({diff:.1e}): flat groups are not gradient-free"
    out = {
        "model": "k2-mini",
        "groups": args.groups,
        "samples_per_prompt": args.samples,
        "threads": torch.get_num_threads(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
