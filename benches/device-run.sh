#!/usr/bin/env bash
# Runs on a GPU machine over a bundle built with
#   ../shared/tools/device-bundle.sh --features kasmina-cli/wgpu,kasmina-cli/cuda
# and writes its logs under $OUT (or ./device-out). Each part fits one device call:
#   cuda     `kasmina bench --backend cuda` (Auto family), the portable / Hopper / Auto table over
#            C in {16, 48, 64, 512, 4096}, and the PyTorch peer, in one call;
#   checks   `kasmina conformance --backend all --quick`, the GPU test binaries (CUDA, Hopper, wgpu),
#            compute-sanitizer on the Hopper kernels, the Hopper SASS, and the wgpu bench;
#   sanitize compute-sanitizer (memcheck, racecheck, synccheck) over the whole conformance suite with
#            the Hopper path forced, then over the portable suite (memcheck);
#   profile  Nsight Compute over the big forward kernels (bf16 and f32, mixed seeds);
#   variants the big forward with each build switch of kasmina_cuda::kernels (streaming accesses,
#            L2 prefetch, launch bounds), each tuned afresh; the small forward with and without
#            one block per seed; then the CUDA conformance suite and GPU tests;
#   seedwarp the big mixed forward with one seed per warp against one row per warp (interleaved),
#            then the conformance suite (three modes) and the CUDA GPU tests;
#   stages   the big bf16 forward with loads staged through shared memory (KASMINA_CUDA_STAGES)
#            against direct loads, then the row-group conformance suite and GPU tests with stages.
#   goals    the default CUDA bench table, the PyTorch peer, and the big mixed forward with the
#            warp-per-seed kernel's loads staged (default) and direct, interleaved.
#   tests    the CUDA GPU test binaries with every conformance row timestamped as it completes.
#   pytests  the Python package's test suite with its CUDA cases required (about 5 minutes cold);
#   pybench  the Python package's benchmark (`python -m kasmina.bench`: the layer through PyTorch
#            against `kasmina bench` in the same process, torch.compile of the reference, CUDA-graph
#            steps at the small shape).
# The PyTorch peer and the Python parts need the package's wheel in .device: build it here with
#   maturin build --release -m kasmina-py/Cargo.toml -o .device
# Usage: bash benches/device-run.sh cuda|checks|sanitize|profile|variants|seedwarp|stages|goals|tests|pytests|pybench
set -uo pipefail
out=${OUT:-device-out}; mkdir -p "$out"
r() { bash .device/run.sh "$@"; }
bin=.device/bin
# The Python package (abi3 wheel) under the machine's own Python and PyTorch, where bundled.
if ls .device/kasmina-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/kasmina-site .device/kasmina-*.whl &&
    export PYTHONPATH=/tmp/kasmina-site${PYTHONPATH:+:$PYTHONPATH}
fi
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
  timeout 150 bash .device/run.sh kasmina bench --device wgpu:0 --json "$out/bench-wgpu.json" 2>&1 |
    tee "$out/bench-wgpu.txt"
  ;;
sanitize)
  # Quick-size suite (every group), path forced, autotuning off so every launch is a suite launch.
  for tool in memcheck racecheck synccheck; do
    KASMINA_REQUIRE_GPU=1 KASMINA_CUDA_PATH=hopper KASMINA_AUTOTUNE=off timeout 170 compute-sanitizer \
      --tool $tool --error-exitcode 9 $bin/test-kasmina_cuda--conformance_hopper --test-threads=1 \
      > "$out/sanitize-hopper-$tool.txt" 2>&1
    echo "hopper $tool rc=$? $(grep -E 'test result|ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitize-hopper-$tool.txt" | tr '\n' ' ')"
  done | tee "$out/sanitize.txt"
  KASMINA_REQUIRE_GPU=1 KASMINA_CUDA_PATH=portable KASMINA_AUTOTUNE=off timeout 60 compute-sanitizer \
    --tool memcheck --error-exitcode 9 $bin/test-kasmina_cuda--conformance --test-threads=1 \
    > "$out/sanitize-portable-memcheck.txt" 2>&1
  echo "portable memcheck rc=$? $(grep -E 'test result|ERROR SUMMARY' "$out/sanitize-portable-memcheck.txt" | tr '\n' ' ')" |
    tee -a "$out/sanitize.txt"
  ;;
profile)
  export KASMINA_AUTOTUNE_CACHE=/tmp/kasmina-autotune.json
  for d in bf16 f32; do
    r kasmina bench --backend cuda --shape 16384,8192,128 --dtype $d --mix mixed --reps 5 2>&1 | tail -4
    KASMINA_REQUIRE_GPU=1 timeout 200 ncu --clock-control none -k regex:'kasmina_fwd' --launch-skip 40 --launch-count 2 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats --section MemoryWorkloadAnalysis \
      $bin/kasmina bench --backend cuda --shape 16384,8192,128 --dtype $d --mix mixed --reps 3 \
      > "$out/ncu-$d.txt" 2>&1
    grep -E 'kasmina_|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Registers|Achieved Occ|Theoretical Occ|Issue Slots|No Eligible|Warp Cycles Per Issued|Block Size|Grid Size|Stall' "$out/ncu-$d.txt" | head -60
  done
  ;;
variants)
  for v in base KASMINA_CUDA_STREAMING=on KASMINA_CUDA_PREFETCH=1 KASMINA_CUDA_PREFETCH=2 KASMINA_CUDA_FWDU_MINB=4 \
           "KASMINA_CUDA_STREAMING=on KASMINA_CUDA_PREFETCH=1"; do
    echo "== $v"
    # shellcheck disable=SC2046
    env $([ "$v" = base ] || echo "$v") KASMINA_AUTOTUNE_CACHE="/tmp/at-${v// /_}.json" timeout 120 bash .device/run.sh \
      kasmina bench --backend cuda --shape 16384,8192,128 --dtype bf16,f32 --reps 10 2>&1 | grep -E "^cuda"
  done 2>&1 | tee "$out/variants.txt"
  for sw in on off; do
    echo "== KASMINA_CUDA_SEEDWISE=$sw"
    KASMINA_CUDA_SEEDWISE=$sw KASMINA_AUTOTUNE_CACHE=/tmp/at-small.json timeout 100 bash .device/run.sh \
      kasmina bench --backend cuda --shape 32,768,16 2>&1 | grep -E "^cuda"
  done 2>&1 | tee "$out/small.txt"
  for t in test-kasmina_cuda--conformance test-kasmina_cuda--gpu test-kasmina_cuda--hopper_gpu; do
    echo "== $t"; KASMINA_HOPPER_QUICK=1 timeout 150 bash .device/run.sh "$t" --test-threads=1 2>&1 |
      grep -E "^test |test result|panicked|assert"
  done > "$out/gpu-tests.txt" 2>&1
  grep -E "^==|test result|panicked" "$out/gpu-tests.txt"
  ;;
seedwarp)
  # One seed per warp (default) against one row per warp (KASMINA_CUDA_SEEDWARP=off) on the big
  # mixed forward, interleaved, C = 64 and C = 16 (both mappings differ) and C = 48 (same kernel,
  # a control); then the tests that cover it (conformance in all three modes, the GPU tests).
  # SEEDWARP_SHAPES, SEEDWARP_MODES, SEEDWARP_MIX (mixed, or "all" for both mixes) and
  # SEEDWARP_TESTS=0 narrow or widen it to fit one call; SEEDWARP_PROFILE=1 adds Nsight Compute
  # over the bf16 mixed forward's main kernel at the end.
  mix=(--mix "${SEEDWARP_MIX:-mixed}"); [ "${SEEDWARP_MIX:-}" = all ] && mix=()
  for shape in ${SEEDWARP_SHAPES:-16384,8192,128 16384,8192,512 16384,6144,128}; do
    for sw in ${SEEDWARP_MODES:-on off on off}; do
      echo "== $shape KASMINA_CUDA_SEEDWARP=$sw"
      KASMINA_CUDA_SEEDWARP=$sw KASMINA_AUTOTUNE_CACHE=/tmp/at-sw.json timeout 200 bash .device/run.sh \
        kasmina bench --backend cuda --shape "$shape" --dtype bf16,f32 "${mix[@]}" --reps 10 2>&1 | grep -E "^cuda"
    done
  done 2>&1 | tee "$out/seedwarp.txt"
  for v in ${SEEDWARP_VARIANTS:-}; do
    # A build switch (e.g. KASMINA_CUDA_FWDU_MINB=4) with its own tuning cache (the key hashes
    # the source, not the switches).
    echo "== 16384,8192,128 $v"
    env "$v" KASMINA_AUTOTUNE_CACHE="/tmp/at-sw-$v.json" timeout 120 bash .device/run.sh \
      kasmina bench --backend cuda --shape 16384,8192,128 --dtype bf16,f32 --mix mixed --reps 10 2>&1 | grep -E "^cuda"
  done 2>&1 | tee -a "$out/seedwarp.txt"
  if [ "${SEEDWARP_TESTS:-1}" = 1 ]; then
    for t in test-kasmina_cuda--conformance test-kasmina_cuda--gpu; do
      echo "== $t"; timeout 200 bash .device/run.sh "$t" --test-threads=1 2>&1 |
        grep -E "^test |test result|panicked|assert"
    done > "$out/gpu-tests.txt" 2>&1
    grep -E "^==|test result|panicked" "$out/gpu-tests.txt"
  fi
  if [ "${SEEDWARP_PROFILE:-0}" = 1 ]; then
    KASMINA_AUTOTUNE_CACHE=/tmp/at-sw.json KASMINA_REQUIRE_GPU=1 timeout 150 ncu --clock-control none \
      -k regex:'kasmina_fwdu' --launch-skip 40 --launch-count 1 --section SpeedOfLight --section Occupancy \
      --section LaunchStats --section WarpStateStats --section SchedulerStats \
      $bin/kasmina bench --backend cuda --shape 16384,8192,128 --dtype bf16 --mix mixed --reps 3 > "$out/ncu-ws.txt" 2>&1
    grep -E 'kasmina_|Duration|DRAM Throughput|Compute \(SM\)|Registers|Achieved Occ|Theoretical Occ|Issue Slots|No Eligible|Warp Cycles Per Issued|Active Warps|Eligible Warps|Block Size|Grid Size|Stall' "$out/ncu-ws.txt" | head -40
  fi
  ;;
goals)
  # The default CUDA bench table in one call: `kasmina bench --backend cuda` (big and small shapes, both dtypes
  # and mixes, Auto family), the PyTorch peer, then the big mixed forward (portable family) with
  # the warp-per-seed kernel loading directly (KASMINA_CUDA_WS_STAGES=0) against its default
  # staged loads, interleaved. The GPU tests are the `tests` part (they fill a call of their own).
  export KASMINA_AUTOTUNE_CACHE=/tmp/kasmina-autotune.json
  timeout 300 bash .device/run.sh kasmina bench --backend cuda --json "$out/bench-cuda.json" 2>&1 |
    tee "$out/bench-cuda.txt" | grep -E "^cuda"
  PYTHONUNBUFFERED=1 timeout 150 python3 benches/peers/torch_kasmina.py 2>&1 | tee "$out/torch-peer.txt" | tail -12
  for v in KASMINA_CUDA_WS_STAGES=0 base KASMINA_CUDA_WS_STAGES=0 base; do
    echo "== $v"
    # shellcheck disable=SC2046
    env $([ "$v" = base ] || echo "$v") KASMINA_AUTOTUNE_CACHE="/tmp/at-ws-$v.json" timeout 120 bash .device/run.sh \
      kasmina bench --backend cuda --cuda-path portable --shape 16384,8192,128 --dtype bf16,f32 --mix mixed --reps 10 \
      2>&1 | grep -E "^cuda" | grep forward
  done 2>&1 | tee "$out/bench-ws-stages.txt"
  ;;
stages)
  # The big bf16 forward with its loads staged through shared memory (KASMINA_CUDA_STAGES, cp.async)
  # against direct loads, each tuned afresh; then the row-group conformance suite and the CUDA GPU
  # tests with stages on. STAGES_VARIANTS overrides the list ("base" = no switch; commas separate
  # the variables of one variant), STAGES_DTYPE the dtypes, STAGES_TESTS=0 skips the tests.
  for v in ${STAGES_VARIANTS:-base KASMINA_CUDA_STAGES=3 KASMINA_CUDA_STAGES=2 KASMINA_CUDA_STAGES=3,KASMINA_CUDA_SEEDWARP=off}; do
    echo "== $v"
    # shellcheck disable=SC2046
    env $([ "$v" = base ] || echo "${v//,/ }") KASMINA_AUTOTUNE_CACHE="/tmp/at-st-$v.json" timeout 200 \
      bash .device/run.sh kasmina bench --backend cuda --shape 16384,8192,128 --dtype "${STAGES_DTYPE:-bf16}" --reps 10 2>&1 |
      grep -E "^cuda"
  done 2>&1 | tee "$out/stages.txt"
  [ "${STAGES_TESTS:-1}" = 1 ] || exit 0
  for t in "test-kasmina_cuda--conformance rowgroups" "test-kasmina_cuda--gpu"; do
    echo "== KASMINA_CUDA_STAGES=3 $t"
    # shellcheck disable=SC2086
    KASMINA_CUDA_STAGES=3 timeout 150 bash .device/run.sh $t --test-threads=1 2>&1 |
      grep -E "^test |test result|panicked|assert"
  done > "$out/gpu-tests-stages.txt" 2>&1
  grep -E "^==|test result|panicked" "$out/gpu-tests-stages.txt"
  ;;
tests)
  # The CUDA GPU test binaries, each row of the conformance suite timestamped (seconds since
  # the start) as it completes: conformance (three modes), gpu, the Hopper ones.
  t0=$(date +%s)
  for t in test-kasmina_cuda--conformance test-kasmina_cuda--gpu test-kasmina_cuda--hopper_gpu \
           test-kasmina_cuda--conformance_hopper; do
    echo "== $t"; KASMINA_HOPPER_QUICK=1 timeout "${TESTS_TIMEOUT:-240}" bash .device/run.sh "$t" --test-threads=1 \
      --nocapture 2>&1 | while IFS= read -r l; do echo "$(( $(date +%s) - t0 )) $l"; done
    echo "rc=${PIPESTATUS[0]}"
  done > "$out/gpu-tests.txt" 2>&1
  grep -E "^==|test result|panicked|FAIL|rc=" "$out/gpu-tests.txt"
  ;;
pytests)
  export PYTHONUNBUFFERED=1 KASMINA_AUTOTUNE_CACHE=/tmp/kasmina-autotune.json
  (cd kasmina-py && KASMINA_REQUIRE_GPU=1 KASMINA_CLI="$PWD/../$bin/kasmina" timeout 540 python3 -m pytest -q \
    -p no:cacheprovider --durations=10 tests) 2>&1 | tee "$out/pytest.txt" | tail -20
  ;;
pybench)
  export PYTHONUNBUFFERED=1 KASMINA_AUTOTUNE_CACHE=/tmp/kasmina-autotune.json
  (cd kasmina-py && timeout 540 python3 -m kasmina.bench --json "$out/bench-python.json" \
    --markdown "$out/bench-python.md") 2>&1 | grep -v Warning | tee "$out/bench-python.txt" | tail -30
  ;;
*) echo "usage: bash benches/device-run.sh cuda|checks|sanitize|profile|variants|seedwarp|stages|goals|tests|pytests|pybench" >&2; exit 2 ;;
esac
