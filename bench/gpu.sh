#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go (GPU time is scarce): the CUDA tests against the CPU,
# then the MFU benchmark — eager with transformers' DeepseekV3 as the baseline and a kernel profile,
# 4 micro-batches per optimizer step, a k2-mini-shaped stack scaled up, and compiled layers with 16
# micro-batches (the README's headline). Writes logs and JSON under OUT_DIR (≈ 3 minutes on an H200).
#   bash bench/gpu.sh [OUT_DIR]        (PYTHON=python3 unless set; `make bench-gpu` uses the venv)
set -u
out=${1:-bench/results}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  $py -m pytest -q -p no:cacheprovider tests/gpu 2>&1
} | tee "$out/test_gpu.log"
mfu() { $py bench/mfu.py "$@" 2>&1 | tee -a "$out/mfu.log"; }
mfu --hf --profile --out "$out/mfu.json"
mfu --accum 4 --steps 5 --out "$out/mfu_accum4.json"
# k2-mini's shape (8 routed experts top-2 + 1 shared, first layer dense) scaled up to fill the GPU
mfu --preset k2-mini --layers 8 --steps 5 --out "$out/mfu_k2mini_scaled.json" --set hidden_size=2048 \
  intermediate_size=8192 moe_intermediate_size=2048 num_attention_heads=16 q_lora_rank=1024 \
  qk_nope_head_dim=128 v_head_dim=128
mfu --compile --accum 16 --steps 3 --warmup 2 --out "$out/mfu_compile_accum16.json"
