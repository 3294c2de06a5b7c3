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
#   startup  start-up of new processes: `kasmina forward --device cuda` on a small input with the
#            kernel cache empty (every module compiled), again (loaded from the cache), and with
#            the cache off; then `kasmina conformance --device cuda --quick` with the cache empty
#            and again warm;
#   goals    the default CUDA bench table and the PyTorch peer.
#   tests    the CUDA GPU test binaries with every conformance row timestamped as it completes.
#   pytests  the Python package's test suite with its CUDA cases required (about 5 minutes cold);
#   randomized the randomized conformance group at full size (1000 cases) on cuda and wgpu:0 (or
#            the devices in RANDOMIZED_DEVICES), in ten shards per device run side by side;
#   pybench  the Python package's benchmark (`python -m kasmina.bench`: the layer through PyTorch
#            against `kasmina bench` in the same process, torch.compile of the reference, CUDA-graph
#            steps at the small shape).
# The PyTorch peer and the Python parts need the package's wheel in .device: build it here with
#   maturin build --release -m kasmina-py/Cargo.toml -o .device
# Usage: bash benches/device-run.sh cuda|checks|sanitize|profile|startup|goals|tests|pytests|pybench|randomized
set -uo pipefail
out=${OUT:-device-out}; mkdir -p "$out"
r() { bash .device/run.sh "$@"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
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
  # SASS of the Hopper modules: the CUBIN the backend compiled into its kernel cache (the
  # payload after the entry's header, see kasmina_cuda::cache), disassembled.
  KASMINA_CUDA_PATH=hopper KASMINA_CUDA_CACHE=/tmp/kasmina-kc KASMINA_AUTOTUNE=off timeout 120 bash .device/run.sh \
    kasmina bench --backend cuda --shape 4096,4096,64 --dtype f32,bf16 --reps 2 >/dev/null 2>&1
  for e in /tmp/kasmina-kc/kasmina_hopper_*.cubin; do
    python3 - "$e" /tmp/h.cubin <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
k = struct.unpack_from("<I", b, 8)[0]
n = struct.unpack_from("<Q", b, 12 + k)[0]
open(sys.argv[2], "wb").write(b[12 + k + 8 + 32:][:n])
PY
    echo "$(basename "$e"):"; /usr/local/cuda/bin/cuobjdump -sass /tmp/h.cubin |
      grep -ohE 'UTMALDG[.A-Z0-9]*|UTMASTG[.A-Z0-9]*|SYNCS[.A-Z0-9_]*' | sort | uniq -c
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
startup)
  # Wall time of whole processes, from exec to exit. Kernel cache in a fresh folder each round;
  # the autotune cache is kept apart so the second process also reads its winners.
  python3 -c 'import numpy as np; np.save("/tmp/x.npy", np.random.default_rng(0).standard_normal((32, 768), dtype=np.float32))'
  $bin/kasmina state new --hidden 768 --seeds 16 --force /tmp/s.safetensors >/dev/null
  export KASMINA_AUTOTUNE_CACHE=/tmp/startup-autotune.json
  rm -rf /tmp/kc-startup "$KASMINA_AUTOTUNE_CACHE"
  for run in cold warm warm; do
    s0=$EPOCHREALTIME
    KASMINA_CUDA_CACHE=/tmp/kc-startup $bin/kasmina forward --state /tmp/s.safetensors --input /tmp/x.npy \
      --output /tmp/y.npy --device cuda 2>&1 | tail -3
    echo "forward $run: $(since "$s0") s"
  done 2>&1 | tee "$out/startup.txt"
  s0=$EPOCHREALTIME
  KASMINA_CUDA_CACHE=off $bin/kasmina forward --state /tmp/s.safetensors --input /tmp/x.npy --output /tmp/y.npy \
    --device cuda >/dev/null 2>&1
  echo "forward, kernel cache off: $(since "$s0") s" | tee -a "$out/startup.txt"
  ls -la /tmp/kc-startup | tee -a "$out/startup.txt"
  unset KASMINA_AUTOTUNE_CACHE
  rm -rf /tmp/kc-conf ~/.cache/kasmina
  for run in cold warm; do
    s0=$EPOCHREALTIME
    KASMINA_CUDA_CACHE=/tmp/kc-conf timeout 400 $bin/kasmina conformance --device cuda --quick > "$out/conformance-$run.txt" 2>&1
    echo "conformance --quick $run: rc=$? $(since "$s0") s; $(tail -1 "$out/conformance-$run.txt")"
  done 2>&1 | tee -a "$out/startup.txt"
  ;;
goals)
  # The default CUDA bench table in one call: `kasmina bench --backend cuda` (big and small shapes, both
  # dtypes and mixes, Auto family), then the PyTorch peer. The GPU tests are the `tests` part.
  export KASMINA_AUTOTUNE_CACHE=/tmp/kasmina-autotune.json
  timeout 300 bash .device/run.sh kasmina bench --backend cuda --json "$out/bench-cuda.json" 2>&1 |
    tee "$out/bench-cuda.txt" | grep -E "^cuda"
  PYTHONUNBUFFERED=1 timeout 150 python3 benches/peers/torch_kasmina.py 2>&1 | tee "$out/torch-peer.txt" | tail -12
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
randomized)
  # The randomized conformance group at full size (1000 cases, generator seeds 1000-1999) on
  # CUDA and on the GPU through Vulkan (wgpu:0), each cut into ten shards by the first three
  # digits of the seed (`--filter randomized/seed=10` ... `=19`), all twenty run side by side.
  # The Vulkan loader and environment of .device/run.sh, set up once for all twenty.
  for f in .device/gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json XDG_RUNTIME_DIR=/tmp \
    __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json \
    KASMINA_REQUIRE_GPU=1 KASMINA_AUTOTUNE_CACHE=/tmp/kasmina-autotune.json
  for dev in ${RANDOMIZED_DEVICES:-cuda wgpu:0}; do
    for k in 0 1 2 3 4 5 6 7 8 9; do
      timeout "${RANDOMIZED_TIMEOUT:-560}" $bin/kasmina conformance --device "$dev" \
        --filter "randomized/seed=1$k" --json "$out/randomized-${dev%%:*}-$k.json" \
        > "$out/randomized-${dev%%:*}-$k.txt" 2>&1 &
    done
  done
  wait
  python3 - "$out" <<'PY'
import glob, json, sys
for dev in ("cuda", "wgpu"):
    if not glob.glob(f"{sys.argv[1]}/randomized-{dev}-*"):
        continue
    rows, shards = [], 0
    for f in sorted(glob.glob(f"{sys.argv[1]}/randomized-{dev}-*.json")):
        shards += 1
        rows += [r for r in json.load(open(f))["results"] if r["case"].startswith("randomized/seed=")]
    bad = [r for r in rows if not r["passed"]]
    print(f"{dev}: {len(rows)} randomized rows from {shards} shards, {len(rows) - len(bad)} passed, {len(bad)} failed")
    for r in bad[:10]:
        print("  FAILED", r["case"], r["detail"][:300])
PY
  ;;
*) echo "usage: bash benches/device-run.sh cuda|checks|sanitize|profile|startup|goals|tests|pytests|pybench|randomized" >&2
   exit 2 ;;
esac
