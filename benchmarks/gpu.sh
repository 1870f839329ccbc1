#!/usr/bin/env bash
# Every GPU-relevant benchmark case in one prepared run (about 5 minutes on one H100/H200):
# SPA per annotation, count form and 10^10 annotations in one call, then the Bayesian fit on
# 10^6 and 10^7 diverse images. JSON lines go to $OUT (the device tool's folder) or to
# benchmarks/results/. Needs only the packages of a JAX GPU image; nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu_device.txt"
"$py" -c 'import jax; print(jax.__version__, jax.devices())' | tee -a "$out/gpu_device.txt"
timeout 170 "$py" benchmarks/spa_throughput.py --big | tee "$out/spa_throughput_gpu.jsonl"
timeout 170 "$py" benchmarks/fit_scale.py --cases diverse_1e6 diverse_1e7 \
    | tee "$out/fit_scale_gpu.jsonl"
