"""torchrun with 2 real processes (gloo, FSDP2) vs 1 process on the same global batches.

Both runs use the same YAML; the 1-process run goes through the plain (unsharded) model, the 2-process
run through FSDP2 with Muon gathering each 2-D matrix on an owner rank for Newton–Schulz and QK-Clip
scaling the local rows of its shards. τ is set low so heads are actually clipped in 5 steps.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from agentfactory.model import K2ForCausalLM, train_tokenizer

PY = Path(sys.executable)
TORCHRUN = PY.parent / "torchrun"
WORDS = "the order was shipped to customer and cancelled refund pending account balance for".split()


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    rnd = random.Random(0)
    docs = [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(20, 60))) for _ in range(120)]
    (root / "text.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    train_tokenizer(docs, 400, root / "tok")
    (root / "cfg.yaml").write_text(
        f"""
tokenizer: {root}/tok
model: {{preset: debug}}
data: {{paths: [{root}/text.jsonl], seq_len: 48}}
optimizer: {{lr: 0.02, adamw_lr: 0.003, qk_clip_tau: 0.08, ns_dtype: float32}}
schedule: {{kind: constant, warmup_steps: 2}}
steps: 5
batch_size: 8
micro_batch_size: 4
checkpoint_every: 0
progress: false
threads: 1
"""
    )
    return root


def _train(root: Path, out: str, procs: int, *overrides: str) -> list[dict]:
    args = [
        "-m",
        "agentfactory.train",
        "pretrain",
        str(root / "cfg.yaml"),
        "--set",
        f"output_dir={root / out}",
    ]
    for o in overrides:
        args += ["--set", o]
    if procs == 1:
        cmd = [str(PY), *args]
    else:
        cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(procs), *args]  # a free port
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [json.loads(line) for line in (root / out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one(setup_dir) -> list[dict]:
    """The 1-process reference run (plain model, no FSDP)."""
    return _train(setup_dir, "one", 1)


def test_two_processes_match_one(setup_dir, one):
    two = _train(setup_dir, "two", 2)
    assert [r["step"] for r in two] == [1, 2, 3, 4, 5]
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a["step"], a["loss"], b["loss"])
        assert a["clipped_heads"] == b["clipped_heads"]
        assert a["expert_load"] == b["expert_load"]  # loads summed over ranks = the global batch's
    assert sum(len(h) for r in two for h in r["clipped_heads"]) > 0  # QK-Clip ran on sharded weights
    model = K2ForCausalLM.from_pretrained(setup_dir / "two" / "model")  # rank 0 exported the full model
    assert model.config.vocab_size > 0


def test_two_processes_with_gradient_accumulation_match_one(setup_dir, one):
    two = _train(setup_dir, "two_acc", 2, "micro_batch_size=2")  # 2 micro-batches per rank and step
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a["step"], a["loss"], b["loss"])


def test_bf16_newton_schulz_two_processes_stay_close(setup_dir):
    # bf16 Newton–Schulz rounds its input: the ~1e-7 differences of another gradient summation order
    # flip a few roundings, which moves the loss by up to ~1e-3 over 5 steps (also between micro-batch
    # splits in one process); a sharding bug moves it by > 1e-2 from step 2 on.
    one = _train(setup_dir, "one_bf16", 1, "optimizer.ns_dtype=bfloat16")
    two = _train(setup_dir, "two_bf16", 2, "optimizer.ns_dtype=bfloat16")
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) < 3e-3, (a["step"], a["loss"], b["loss"])


def test_two_process_checkpoint_resumes_in_one_process(setup_dir, one):
    _train(setup_dir, "handoff", 2, "steps=3", "save_model=false")  # full state dicts, written by rank 0
    resumed = _train(setup_dir, "handoff", 1, "steps=5", "save_model=false")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5]
    for a, b in zip(one[3:], resumed[3:], strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a["step"], a["loss"], b["loss"])
