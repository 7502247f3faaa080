"""Model FLOPs for MFU: the analytic count equals what torch's FlopCounterMode sees in a real step."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from agentfactory.model import K2Config, K2ForCausalLM
from agentfactory.model.flops import (
    attention_flops_per_token,
    forward_flops_per_token,
    matmul_params_per_token,
    train_flops_per_token,
)


@pytest.mark.parametrize("preset", ["debug", "k2-mini"])
def test_flops_per_token_match_the_flop_counter(preset):
    c = K2Config.preset(preset, vocab_size=1024)
    model = K2ForCausalLM(c)
    B, T = 2, 64
    ids = torch.randint(0, c.vocab_size, (B, T), generator=torch.Generator().manual_seed(0))
    # The math SDPA path is made of bmm's the counter sees; our CPU path zero-pads v to the q/k
    # head dim (kernel overhead, not model FLOPs), which the counter does count.
    padding = 2 * c.num_hidden_layers * c.num_attention_heads * T * (c.qk_head_dim - c.v_head_dim) * B * T
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        loss = model(ids, labels=ids).loss
        forward = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
        loss.backward()
    # Every weight matmul, the routed experts (our custom grouped-mm op) included, exactly:
    assert forward["aten.mm"] + forward["agentfactory.grouped_mm"] == 2 * matmul_params_per_token(c) * B * T
    assert forward["aten.bmm"] == pytest.approx(attention_flops_per_token(c, T) * B * T + padding, rel=0.02)
    assert sum(forward.values()) == pytest.approx(forward_flops_per_token(c, T) * B * T + padding, rel=0.01)
    train = train_flops_per_token(c, T) * B * T + 3 * padding
    assert counter.get_total_flops() == pytest.approx(train, rel=0.02)  # backward = 2x forward


def test_kimi_k2_flops_are_six_times_active_params_plus_attention():
    c = K2Config.preset("kimi-k2-1t")
    per_token = train_flops_per_token(c, 4096)
    # ~32.6B active params less the 1.2B embedding (a lookup) and norms: 31.7B -> 190 GFLOP per
    # trained token, plus attention at a 4K context: 3 x 2 x 61 layers x 64 heads x 4096 x (192 + 128)
    # = 30.7 GFLOP.
    assert 31e9 < matmul_params_per_token(c) < 32e9
    assert per_token == pytest.approx(6 * matmul_params_per_token(c) + 3 * attention_flops_per_token(c, 4096))
    assert 2.0e11 < per_token < 2.5e11


def test_mfu_bench_skips_without_cuda_and_runs_on_the_cpu(tmp_path):
    import json
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real benchmark")
    bench = ["bench/mfu.py"]
    r = subprocess.run([sys.executable, *bench], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "no CUDA device, skipped" in r.stdout
    out = tmp_path / "mfu.json"
    tiny = "--preset k2-mini --layers 2 --vocab 512 --batch 2 --seq 32 --steps 1 --warmup 0".split()
    cmd = [sys.executable, *bench, "--device", "cpu", "--peak-tflops", "1", *tiny, "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    muon = data["results"]["muonclip"]
    assert muon["mfu"] == pytest.approx(data["train_flops_per_token"] * muon["tokens_per_s"] / 1e12)
    assert data["muonclip_vs_adamw_step"] > 0 and data["params"]["active"] < data["params"]["total"]
