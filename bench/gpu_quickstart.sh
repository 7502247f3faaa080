#!/usr/bin/env bash
# The quickstart at GPU scale (pipelines/quickstart_gpu.yaml) end to end on a GPU machine that has
# PyTorch but neither vLLM nor Ray: the trainer on CUDA, TorchEngine for RL and the held-out eval.
# Synthesis, corpus and tokenizer are CPU work (≈ 3.5 min on 2 cores): `prep` runs them here and
# packs what the later stages read into one archive (≈ 9 MB); `run`, on the GPU machine (carry .gpu
# and .whl, see bench/gpu_wheels.sh), unpacks it, runs the model stages and the report, and copies
# the run's results (not its checkpoints) to OUT_DIR.
#   bash bench/gpu_quickstart.sh prep
#   bash bench/gpu_quickstart.sh run [OUT_DIR]
# Rehearsal on the CPU: NAME=rehearsal CONFIG=pipelines/quickstart.yaml ARGS=--smoke DEVICE=cpu
#   PYTHON=.venv/bin/python, for both.
set -euo pipefail
name=${NAME:-quickstart_gpu}
config=${CONFIG:-pipelines/quickstart_gpu.yaml}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
archive=.gpu/${name}_data.tar.gz
# shellcheck disable=SC2086  # ARGS: several words
agentfactory() { $py -m agentfactory run "$config" ${ARGS:-} --set "name=$name" "$@"; }
case ${1:-} in
prep)
  agentfactory $(for stage in pretrain sft rl eval report; do echo "--set $stage=null"; done)
  mkdir -p .gpu
  tar -czf "$archive" --exclude=synth/shards --exclude=synth/dataset/data.parquet -C runs "$name"
  ls -la "$archive" ;;
run)
  out=${2:-bench/results/gpu_quickstart}
  if [ -d .whl ]; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  mkdir -p runs "$out"
  tar -xzf "$archive" -C runs
  { nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || nproc; } | tee "$out/$name.log"
  agentfactory --set "rl.config.device=$device" \
    --set "rl.config.engine={kind: torch, device: $device, max_model_len: 4096, sleep_during_training: false}" \
    --set "eval.engine={kind: torch, device: $device, max_model_len: 4096}" 2>&1 \
    | grep --line-buffered -v "Warning" | tee -a "$out/$name.log"
  (cd "runs/$name" && find . \( -name "*.json" -o -name "*.jsonl" -o -name "*.html" -o -name "*.png" \) \
    -not -path "*/model/*" -not -path "*/checkpoint/*" -not -path "./synth/*" -not -path "./corpus/*" \
    | tar -cf - -T -) | tar -xf - -C "$out" ;;
*)
  echo "usage: $0 prep | run [OUT_DIR]" >&2; exit 2 ;;
esac
