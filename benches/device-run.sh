#!/usr/bin/env bash
# Runs on the lent H100 machine over a bundle built with
#   ../shared/tools/device-bundle.sh --features kasmina/wgpu,kasmina/cuda
# and writes its logs under $OUT (or ./device-out). Each part fits one device call:
#   cuda     `kasmina bench --backend cuda` (Auto family), the portable / Hopper / Auto table over
#            C in {16, 48, 64, 512, 4096}, and the PyTorch peer, in one session;
#   checks   `kasmina conformance --backend all --quick`, the GPU test binaries (CUDA, Hopper, wgpu),
#            compute-sanitizer on the Hopper kernels, the Hopper SASS, and the wgpu bench.
# Usage: bash benches/device-run.sh cuda|checks
set -uo pipefail
out=${OUT:-device-out}; mkdir -p "$out"
r() { bash .device/run.sh "$@"; }
bin=.device/bin
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
case "${1:-}" in
cuda)
  export KASMINA_AUTOTUNE_CACHE=/tmp/kasmina-autotune.json
  r kasmina bench --backend cuda --json "$out/bench-cuda.json" 2>&1 | tee "$out/bench-cuda.txt"
  # B=16384; H = S * C near 8192 for each chunk size C.
  for shape in 16384,8192,512 16384,6144,128 16384,8192,128 16384,8192,16 16384,8192,2; do
    timeout 150 bash .device/run.sh kasmina bench --backend cuda --cuda-path portable,hopper,auto --reps 10 \
      --shape "$shape" 2>&1 | tee -a "$out/bench-cuda-paths.txt"
  done
  PYTHONUNBUFFERED=1 timeout 120 python3 benches/peers/torch_kasmina.py 2>&1 | tee "$out/torch-peer.txt"
  ;;
checks)
  timeout 300 bash .device/run.sh kasmina conformance --backend all --quick > "$out/conformance-all.txt" 2>&1
  echo "conformance rc=$?"; tail -3 "$out/conformance-all.txt"
  # KASMINA_HOPPER_QUICK: the Hopper reference test on 2 shapes (all 8 take ~3 minutes).
  for t in test-kasmina_cuda--gpu test-kasmina_cuda--hopper_gpu test-kasmina_cuda--conformance_hopper \
           test-kasmina_wgpu--backend; do
    echo "== $t"; KASMINA_HOPPER_QUICK=1 timeout 200 bash .device/run.sh "$t" --test-threads=1 2>&1 |
      grep -E "^test |test result|panicked"
  done > "$out/gpu-tests.txt" 2>&1
  grep -E "^==|test result|panicked" "$out/gpu-tests.txt"
  for tool in memcheck racecheck synccheck; do
    KASMINA_REQUIRE_GPU=1 KASMINA_HOPPER_QUICK=1 KASMINA_AUTOTUNE=off timeout 120 compute-sanitizer --tool $tool \
      --error-exitcode 9 $bin/test-kasmina_cuda--hopper_gpu hopper_kernels_match_the_reference_and_are_taken \
      --test-threads=1 2>&1 | tail -2 | sed "s/^/$tool: /"
  done | tee "$out/sanitizer.txt"
  # SASS of the Hopper module: PTX dumped by the backend, assembled for sm_90a, disassembled.
  KASMINA_CUDA_PATH=hopper KASMINA_CUDA_DUMP=/tmp/kasmina-ptx KASMINA_AUTOTUNE=off timeout 120 bash .device/run.sh \
    kasmina bench --backend cuda --quick >/dev/null 2>&1
  for d in f32 bf16; do
    p=$(ls /tmp/kasmina-ptx/*hopper*"$d"*.ptx 2>/dev/null | head -1); [ -n "$p" ] || continue
    /usr/local/cuda/bin/ptxas -arch=sm_90a "$p" -o /tmp/h-$d.cubin &&
      /usr/local/cuda/bin/cuobjdump -sass /tmp/h-$d.cubin > /tmp/h-$d.sass
    echo "$d ($p):"; grep -ohE 'UTMALDG[.A-Z0-9]*|UTMASTG[.A-Z0-9]*|SYNCS[.A-Z0-9_]*' /tmp/h-$d.sass | sort | uniq -c
  done | tee "$out/sass.txt"
  timeout 150 bash .device/run.sh kasmina bench --backend wgpu --device 0 --json "$out/bench-wgpu.json" 2>&1 |
    tee "$out/bench-wgpu.txt"
  ;;
*) echo "usage: bash benches/device-run.sh cuda|checks" >&2; exit 2 ;;
esac
