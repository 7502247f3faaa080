#!/usr/bin/env bash
# Tool-use RL on a GPU machine that has PyTorch but no vLLM: TorchEngine rolls out, the trainer
# trains, both on CUDA, with hundreds of episodes per step (the CPU runs could afford 32-64). First
# the CUDA TorchEngine test, then `bench/rl_tool_use.py --engine torch --device cuda` from MODEL
# (an SFT checkpoint dir) for MINUTES of RL time, held-out success (and, with TRAIN_EVAL_WORLDS=N,
# success on the first N RL worlds' tasks) every EVAL_EVERY iterations; reward = rubric share +
# task success.
#   [EVAL_EVERY=5] [TRAIN_EVAL_WORLDS=1] bash bench/gpu_rl.sh MODEL [OUT_DIR] [MINUTES] [PROMPTS] [SAMPLES] [LR]
# Defaults: session 16's better H200 run (64 x 8 episodes a step, lr 1e-3: 37 -> 46 of 96 in 3.4 min).
# Python packages the GPU image lacks travel as wheels in .whl/ (bench/gpu_wheels.sh fetches them
# here); they are installed to /tmp/site when present.
set -u
model=$1
out=${2:-bench/results/gpu_rl}
minutes=${3:-6}
prompts=${4:-64}
samples=${5:-8}
lr=${6:-1e-3}
py=${PYTHON:-python3}
if [ -d .whl ]; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu_rl.log"
$py -m pytest -q -p no:cacheprovider tests/gpu -k torch_engine 2>&1 | tee -a "$out/gpu_rl.log"
$py bench/rl_tool_use.py --model "$model" --engine torch --device cuda --worlds 300:364 \
  --prompts "$prompts" --samples "$samples" --lr "$lr" --rl-minutes "$minutes" --eval-every "${EVAL_EVERY:-5}" \
  --reward rubric=1 correct=1 --train-eval-worlds "${TRAIN_EVAL_WORLDS:-1}" \
  --threads 4 --out "$out" 2>&1 | grep --line-buffered -v "Warning" | tee -a "$out/gpu_rl.log"
