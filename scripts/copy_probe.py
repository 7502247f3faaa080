"""How fast does k2-mini learn in-context copying? (the quickstart's bottleneck, see README)

Trains k2-mini from scratch on a run's recall documents ("Note: a, b, c.\\nAgain: a, b, c.") with the
loss on the repeated half only, and prints the held-out token accuracy of that half every 50 steps.
`--digits merged` trains a tokenizer that lets BPE merge digit runs instead of one token per digit.
Measured 2026-11-26 (1 thread, busy machine): per-digit 39 % / 42 % at 100 / 200 steps, merged 47 % /
50 % at 100 / 150, no list copied exactly: content-addressed copying is slow to form at this size.

    python scripts/copy_probe.py runs/quickstart/corpus/corpus.jsonl --digits single --steps 200
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
import torch.nn.functional as F

from agentfactory.model import K2Config, K2ForCausalLM, train_tokenizer
from agentfactory.optim import OptimizerConfig, build_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", help="a corpus.jsonl with recall documents (corpus.recall_docs > 0)")
    ap.add_argument("--digits", choices=["single", "merged"], default="single")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.02, help="Muon learning rate")
    ap.add_argument("--adamw-lr", type=float, default=3e-3)
    ap.add_argument("--model", action="append", default=[], metavar="KEY=VALUE", help="K2Config override")
    ap.add_argument("--eval-every", type=int, default=50)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    with open(args.corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    tok = train_tokenizer(texts, 4096, split_digits=args.digits == "single")
    pairs = []
    for doc in (d for d in texts if d.startswith("Note:")):
        first, again = doc.split("\nAgain:")
        pairs.append((tok.encode(first + "\nAgain:"), tok.encode(again)))
    train, test = pairs[:-100], pairs[-100:]
    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.model)}
    model = K2ForCausalLM(K2Config.preset("k2-mini", vocab_size=len(tok), **overrides))
    opt = build_optimizer(model, OptimizerConfig(lr=args.lr, adamw_lr=args.adamw_lr))
    rng, t0 = random.Random(0), time.time()
    for step in range(1, args.steps + 1):
        batch = rng.sample(train, args.batch)
        length = max(len(a) + len(b) for a, b in batch)
        ids = torch.full((len(batch), length), tok.pad_token_id)
        labels = torch.full((len(batch), length), -100)
        for i, (a, b) in enumerate(batch):
            ids[i, : len(a) + len(b)] = torch.tensor(a + b)
            labels[i, len(a) : len(a) + len(b)] = torch.tensor(b)
        logits = model(ids).logits[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        opt.step(model.pop_max_logits())
        opt.zero_grad(set_to_none=True)
        if step % args.eval_every == 0:
            hit = total = exact = 0
            with torch.no_grad():
                for a, b in test[:40]:
                    seq = torch.tensor(a + b)
                    ok = model(seq[None]).logits[0].argmax(-1)[len(a) - 1 : -1] == seq[len(a) :]
                    hit, total, exact = hit + int(ok.sum()), total + len(b), exact + int(ok.all())
            print(
                f"step {step}: loss {loss.item():.3f}, repeated-half token accuracy {hit / total:.3f}, "
                f"lists copied exactly {exact}/40 ({time.time() - t0:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
