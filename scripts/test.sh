#!/usr/bin/env bash
# The whole test set-up on a fresh Debian/Ubuntu machine: installs what the tests
# need (Mesa's lavapipe, a Vulkan device on the CPU, for the wgpu backend; maturin,
# pytest, numpy, torch, ruff, scikit-learn and matplotlib from the Python package
# registry, for the Python package and its digits experiment), then checks formatting and lints, packages the
# library crates, and runs every test of the workspace,
# then builds and installs the Python package from this tree and runs its tests.
# Tests that need a GPU this machine lacks (CUDA) skip with a printed reason,
# unless KASMINA_REQUIRE_GPU=1.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing mesa-vulkan-drivers (lavapipe) for the wgpu tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    echo "note: Mesa's lavapipe is not installed and cannot be installed here (not root);"
    echo "      the wgpu tests will skip unless another adapter is found."
  fi
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# Every library crate packages (manifest and file list; no upload), and the library facade pulls
# in none of the command's dependencies.
cargo package --quiet --no-verify --allow-dirty \
  -p kasmina-core -p kasmina-cpu -p kasmina-wgpu -p kasmina-cuda -p kasmina-conformance -p kasmina
# The facade builds with no backend at all (its features pick them).
cargo check --quiet -p kasmina --no-default-features
if cargo tree -p kasmina -e normal --prefix none | grep -E '^(clap|indicatif|npyz|kasmina-benches|kasmina-conformance) '; then
  echo "the kasmina library depends on a crate of the command (above)" >&2
  exit 1
fi
# The oldest toolchain the workspace declares (`rust-version`) builds every crate and target.
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
if command -v rustup >/dev/null && rustup toolchain install "$msrv" --profile minimal >/dev/null 2>&1; then
  cargo +"$msrv" check --quiet --workspace --all-targets --features kasmina/wgpu,kasmina/cuda --target-dir target/msrv
else
  echo "note: Rust $msrv could not be installed with rustup here; the minimum-version check did not run"
fi
cargo test --workspace --release

# The Python package (kasmina-py): PyTorch's Linux wheel brings CUDA's libraries (about 5 GB,
# a few minutes to fetch); the tests run on the CPU here and skip their CUDA cases.
pip=(python3 -m pip install --quiet --disable-pip-version-check)
python3 -c 'import maturin, pytest, numpy, torch, ruff, sklearn, matplotlib' 2>/dev/null ||
  "${pip[@]}" maturin pytest numpy torch ruff scikit-learn matplotlib
python3 -m ruff format --check kasmina-py
python3 -m ruff check kasmina-py
# With NVRTC from PyTorch's wheel (no GPU needed), the CUDA unit tests also compile every kernel
# module and take the kernel cache through a real compile.
nvrtc=$(python3 -c 'import glob, nvidia, os; print(next((os.path.dirname(f) for p in nvidia.__path__ for f in sorted(glob.glob(os.path.join(p, "**", "libnvrtc.so*"), recursive=True))), ""))' 2>/dev/null || true)
if [ -n "$nvrtc" ]; then
  LD_LIBRARY_PATH="$nvrtc${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo test --release -p kasmina-cuda --lib
else
  echo "note: no NVRTC library found; the CUDA kernel-compile tests skipped"
fi
"${pip[@]}" --no-build-isolation --no-deps --force-reinstall ./kasmina-py
cargo build --release -p kasmina-cli   # the `kasmina` command the Python tests compare with
KASMINA_CLI="$PWD/target/release/kasmina" python3 -m pytest -q kasmina-py/tests
