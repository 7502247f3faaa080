"""The RL update's cost: micro-batches by length vs whole groups, and `uniform_groups` modes.

One `policy_update` on full k2-mini over the same rows (8 prompts × 4 samples, prompt 120 tokens,
long-tailed response lengths like tool-use episodes), at several shares of flat groups:

- `groups whole`: the baseline, the batching used before (micro-batches of whole groups, padded to
  the group's longest row; emulated here by one `policy_update` per such micro-batch: the same
  passes and padding, timing only) with every row trained;
- `train`: rows micro-batched by length (`micro_batch_tokens`), every row trained;
- `measure`: flat groups (all rewards equal: exactly zero gradient) run their forward only;
- `skip`: flat groups run nothing.

The modes alternate (warm-up, then the median of --repeats), so background load hits all alike, and
the script checks that train, measure and skip give the same gradient.

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
MODES = ("groups whole", "train", "measure", "skip")


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


def _whole_groups(rows, max_rows: int) -> list[list]:
    """The former batching: whole groups in order of their longest row, about `max_rows` rows each."""
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(r.group, []).append(r)
    batches: list[list] = [[]]
    for members in sorted(
        groups.values(), key=lambda g: max(len(r.prompt_ids) + len(r.response_ids) for r in g)
    ):
        if batches[-1] and len(batches[-1]) + len(members) > max_rows:
            batches.append([])
        batches[-1] += members
    return batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--shares", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--micro-batch-tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="0 = torch's default for this machine")
    ap.add_argument("--out", type=Path, default=RESULTS / "uniform_groups.json")
    args = ap.parse_args()

    import torch

    from agentfactory.model import K2Config, K2ForCausalLM
    from agentfactory.rl.batch import flat_groups, length_batches, policy_update
    from agentfactory.rl.loss import LossConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = K2ForCausalLM(K2Config.preset("k2-mini"))
    model.set_track_max_logits()
    cfg = LossConfig(tau=0.05)

    def update(rows, mode: str) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        parts = _whole_groups(rows, args.micro_batch) if mode == "groups whole" else [rows]
        t0 = time.perf_counter()
        for part in parts:
            policy_update(
                model,
                part,
                cfg,
                pad_id=0,
                version=0,
                micro_batch_size=len(part) if mode == "groups whole" else args.micro_batch,
                micro_batch_tokens=10**9 if mode == "groups whole" else args.micro_batch_tokens,
                uniform="train" if mode == "groups whole" else mode,
            )
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
        diff = max(float((grads[m] - grads["train"]).abs().max()) for m in ("measure", "skip")) / scale
        flat = flat_groups(rows)
        lengths = [len(r.prompt_ids) + len(r.response_ids) for r in rows]
        tokens = sum(lengths)
        flat_tokens = sum(n for n, r in zip(lengths, rows, strict=True) if r.group in flat)
        batches = length_batches(lengths, args.micro_batch, args.micro_batch_tokens)
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        padded_whole = sum(
            len(b) * max(len(r.prompt_ids) + len(r.response_ids) for r in b)
            for b in _whole_groups(rows, args.micro_batch)
        )
        row = {
            "flat_share": share,
            "tokens": tokens,
            "flat_token_share": round(flat_tokens / tokens, 3),
            "padded_tokens": {"groups whole": padded_whole, "by length": padded},
            "seconds": {m: round(v, 3) for m, v in med.items()},
            **{f"speedup_{m}": round(med["groups whole"] / med[m], 2) for m in MODES[1:]},
            "grad_rel_diff": diff,
        }
        results.append(row)
        speedups = ", ".join(f"{m} {med[m]:.2f}s ({row[f'speedup_{m}']}×)" for m in MODES[1:])
        print(
            f"flat groups {share:.0%} ({row['flat_token_share']:.0%} of {tokens} tokens; "
            f"padded: {padded_whole} groups whole, {padded} by length): groups whole {med['groups whole']:.2f}s, {speedups}; "
            f"gradient rel. diff {diff:.1e}"
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
