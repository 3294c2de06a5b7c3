#!/usr/bin/env bash
# Runs on the lent H100 machine over a bundle built with
#   ../shared/tools/device-bundle.sh --features kasmina/wgpu,kasmina/cuda
# and writes its logs and reports under $OUT (or ./device-out). It runs:
#   1. every test binary with KASMINA_REQUIRE_GPU=1 (CUDA and wgpu-on-Vulkan conformance included),
#   2. `kasmina conformance --backend all` (full size),
#   3. `kasmina bench` on cuda and wgpu, and the PyTorch peer, in the same session.
# Usage: bash benches/device-run.sh [tests|bench|all]
set -uo pipefail
out=${OUT:-device-out}; mkdir -p "$out"
what=${1:-all}
r() { bash .device/run.sh "$@"; }
if [ "$what" = tests ] || [ "$what" = all ]; then
  r 2>&1 | tee "$out/tests.log" | grep -E "^(==|test result|device:|skipped|FAILED|failures:)|passed|panicked" | head -200
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  r kasmina bench --backend cuda --json "$out/bench-cuda.json" 2>&1 | tee "$out/bench-cuda.txt"
  r kasmina bench --backend wgpu --json "$out/bench-wgpu.json" 2>&1 | tee "$out/bench-wgpu.txt"
  [ -f benches/peers/torch_kasmina.py ] && PYTHONUNBUFFERED=1 python3 benches/peers/torch_kasmina.py 2>&1 | tee "$out/torch-peer.txt"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
