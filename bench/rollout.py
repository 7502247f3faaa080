"""Rollout throughput: VLLMEngine and TorchEngine vs `generate` of transformers' DeepseekV3 and of our
K2ForCausalLM.

One random k2-mini checkpoint (tokenizer trained here), greedy decoding, every engine produces the
same number of tokens (`ignore_eos`), at batch 1/16/64, for
  - single-turn episodes: a chat prompt + `--new-tokens` tokens;
  - multi-turn episodes: `--turns` assistant turns of `--turn-tokens` tokens, each followed by a user
    turn; the engines run them as token-in-token-out `Conversation`s, batching every active
    episode's next turn in one `generate`; the baselines run the same turns with the same ids.
transformers' generate keeps a KV cache, as TorchEngine does; K2ForCausalLM.generate recomputes the
prefix every step (it exists for tests), so it runs only up to `--ours-max-batch` in single-turn.
`--device cuda` runs the torch-side ones on the GPU (vLLM is skipped where it is not installed).
Prints tokens/s and ratios, the fraction of episodes whose greedy ids are identical across engines,
and writes bench/results/rollout.json (`--out`).

    python bench/rollout.py [--batches 1 16 64] [--new-tokens 128] [--turns 3] [--turn-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "rollout.json"
USER_TURN = {"role": "user", "content": "Please continue with the next step."}


def build_checkpoint(path: Path, vocab: int):
    """Random k2-mini weights with a tokenizer trained on synthetic order-desk text."""
    import torch

    from agentfactory.model import K2Config, K2ForCausalLM, train_tokenizer

    rng = random.Random(0)
    syllables = ["or", "der", "ship", "ment", "can", "cel", "re", "fund", "ac", "count", "sta", "tus", "pa"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    texts = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(4000)]
    tok = train_tokenizer(texts, vocab, path)
    torch.manual_seed(0)
    config = K2Config.preset("k2-mini", vocab_size=len(tok), bos_token_id=0, eos_token_id=1, pad_token_id=3)
    K2ForCausalLM(config).save_pretrained(path)
    return tok, config


def episodes(batch: int) -> list[list[dict]]:
    """Chat prompts of identical token length (digits are single tokens), different content."""
    rng = random.Random(batch)
    return [
        [
            {"role": "system", "content": "You are the order desk. Use the tools."},
            {"role": "user", "content": f"Cancel order {rng.randint(10**6, 10**7 - 1)} and refund it."},
        ]
        for _ in range(batch)
    ]


def run_engine(engine, tok, prompts, turns: int, tokens: int) -> tuple[float, list[list[int]]]:
    from agentfactory.llm import Conversation, SamplingParams, generate_turns

    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    convs = [Conversation(tok, p) for p in prompts]
    t0 = time.perf_counter()
    for turn in range(turns):
        if turn:
            for c in convs:
                c.add_messages([USER_TURN])
        generate_turns(engine, convs, params)
    return time.perf_counter() - t0, [c.ids for c in convs]


def run_torch(generate, tok, prompts, turns: int, tokens: int, device: str) -> tuple[float, list[list[int]]]:
    """The same turns through a (B, T) -> (B, T + n) generate function."""
    import torch

    from agentfactory.model import encode, encode_continuation
    from agentfactory.model.chat import IM_END

    ids = torch.tensor([encode(tok, p, add_generation_prompt=True) for p in prompts], device=device)
    # the user turn's ids after an unfinished assistant turn (same for every episode)
    end = tok.convert_tokens_to_ids(IM_END)
    history = [{"role": "assistant", "content": "x"}]
    env = torch.tensor([end, *encode_continuation(tok, history, [USER_TURN])], device=device)
    t0 = time.perf_counter()
    for turn in range(turns):
        if turn:
            ids = torch.cat([ids, env.expand(ids.shape[0], -1)], dim=1)
        ids = generate(ids, tokens)
    return time.perf_counter() - t0, ids.tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--turn-tokens", type=int, default=32)
    p.add_argument("--ours-max-batch", type=int, default=1)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the baselines, and vLLM-CPU's compute threads (the other cores reserved)",
    )
    p.add_argument(
        "--compile", action="store_true", help="vLLM with torch.compile (slower start; default eager)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda: where the torch-side engines run")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    import importlib.util

    import torch
    from rich.console import Console
    from rich.table import Table
    from transformers import DeepseekV3ForCausalLM

    from agentfactory.llm import TorchEngine, VLLMEngine
    from agentfactory.model import K2ForCausalLM, count_params

    torch.set_num_threads(args.threads)
    with_vllm = args.device == "cpu" and importlib.util.find_spec("vllm") is not None
    console = Console(width=150)
    ckpt = Path(tempfile.mkdtemp(prefix="bench_rollout_"))
    tok, config = build_checkpoint(ckpt, args.vocab)
    hf = DeepseekV3ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).to(args.device).eval()
    ours = K2ForCausalLM.from_pretrained(ckpt, device=args.device).eval()
    torch_engine = TorchEngine(ckpt, device=args.device, max_model_len=2048)

    def hf_generate(ids, n):
        with torch.no_grad():
            mask = torch.ones_like(ids)
            return hf.generate(
                ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=3
            )

    def ours_generate(ids, n):
        return ours.generate(ids, max_new_tokens=n, temperature=0.0)

    modes = [("single-turn", 1, args.new_tokens), ("multi-turn", args.turns, args.turn_tokens)]
    cases = [(mode, turns, tokens, batch) for mode, turns, tokens in modes for batch in args.batches]
    # Baselines first, with no vLLM processes alive next to them.
    hf_generate(torch.tensor([[5, 6, 7]], device=args.device), 4)  # first-call overheads off the clock
    run_engine(torch_engine, tok, episodes(2), 1, 8)
    rows, ids = [], {}
    for mode, turns, tokens, batch in cases:
        n_tokens = batch * turns * tokens
        row = {"mode": mode, "batch": batch, "turns": turns, "tokens": n_tokens}
        prompts = episodes(batch)
        secs, ids[mode, batch, "transformers"] = run_torch(
            hf_generate, tok, prompts, turns, tokens, args.device
        )
        row["transformers"] = {"s": secs, "tok_s": n_tokens / secs}
        if mode == "single-turn" and batch <= args.ours_max_batch:
            secs, ids[mode, batch, "ours"] = run_torch(
                ours_generate, tok, prompts, turns, tokens, args.device
            )
            row["ours"] = {"s": secs, "tok_s": n_tokens / secs}
        secs, ids[mode, batch, "torch_engine"] = run_engine(torch_engine, tok, prompts, turns, tokens)
        row["torch_engine"] = {"s": secs, "tok_s": n_tokens / secs}
        rows.append(row)
        console.print(f"baselines and TorchEngine: {mode} batch {batch} done")
    start_s = None
    if with_vllm:
        t0 = time.perf_counter()
        engine = VLLMEngine(
            ckpt,
            kv_cache_memory_bytes=1 << 30,
            max_model_len=2048,
            enforce_eager=not args.compile,
            cpu_reserved_cores=max(len(os.sched_getaffinity(0)) - args.threads, 0),  # as many threads
        )
        start_s = time.perf_counter() - t0
        run_engine(engine, tok, episodes(2), 1, 8)  # first-call overheads off the clock
        for row, (mode, turns, tokens, batch) in zip(rows, cases, strict=True):
            secs, ids[mode, batch, "vllm"] = run_engine(engine, tok, episodes(batch), turns, tokens)
            row["vllm"] = {"s": secs, "tok_s": row["tokens"] / secs}
        engine.close()
    for row, (mode, _, _, batch) in zip(rows, cases, strict=True):
        for name in ("vllm", "torch_engine", "ours"):
            if (mode, batch, name) in ids:
                same = zip(ids[mode, batch, name], ids[mode, batch, "transformers"], strict=True)
                row[f"same_ids_{name}_vs_transformers"] = sum(a == b for a, b in same) / batch

    engines = [("vLLM", "vllm")] if with_vllm else []
    engines += [("TorchEngine", "torch_engine"), ("K2.generate", "ours")]
    table = Table(
        title=f"k2-mini rollouts on {args.device} (greedy, fp32, vocab {len(tok)}): generated tokens/s, "
        "and the ratio to transformers' generate"
    )
    for col in ("episodes", "batch", "tokens", "transformers", *(label for label, _ in engines), "same ids"):
        table.add_column(col, justify="right")
    for r in rows:
        base = r["transformers"]["tok_s"]
        cells = [f"{r[k]['tok_s']:,.0f} ({r[k]['tok_s'] / base:.1f}×)" if k in r else "—" for _, k in engines]
        same = [f"{r[f'same_ids_{k}_vs_transformers']:.0%}" for _, k in engines if k in r]
        table.add_row(
            f"{r['mode']} {r['turns']}×{r['tokens'] // r['batch'] // r['turns']}",
            str(r["batch"]),
            f"{r['tokens']:,}",
            f"{base:,.0f}",
            *cells,
            " / ".join(same),
        )
    console.print(table)
    total, active = count_params(config)
    vllm_note = (
        f"; vLLM ({'compiled' if args.compile else 'eager'}) engine start {start_s:.0f} s"
        if with_vllm
        else ""
    )
    console.print(
        f"params {total / 1e6:.1f}M total / {active / 1e6:.1f}M active; torch on {args.threads} thread(s)"
        + vllm_note
    )
    last = rows[-1]
    for label, key in engines[:2]:
        ratio = last[key]["tok_s"] / last["transformers"]["tok_s"]
        console.print(
            f"[bold]{last['mode']} batch {last['batch']}: {label}/transformers = {ratio:.1f}×[/bold]"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "preset": "k2-mini",
        "device": args.device,
        "vocab": len(tok),
        "params_total": total,
        "params_active": active,
        "vllm_start_s": start_s,
        "vllm_compiled": args.compile,
        "baseline_threads": args.threads,
        "rows": rows,
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
